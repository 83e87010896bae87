"""Statistics re-alignment: after pruning, give every layer that lost inputs the output statistics it had.

For each *consumer* of a pruned group (a Conv, Gemm or MatMul whose input lost channels; see
:mod:`spa.criteria.consumers`) the pre-activation output ``y`` (per output channel ``j``) of the pruned
model drifts from the original's. Re-alignment measures both on calibration data and applies the
affine map that restores the original's first two moments,

    y'_j = s_j · (y_j − μ̂_j) + μ_j,     s_j = σ_j / σ̂_j   (clipped to [1/4, 4]; 1 with ``variance=False``)

folded into the layer: row ``j`` of ``W`` (and its own bias) is scaled by ``s_j`` and the bias takes
``μ_j − s_j μ̂_j`` — the effect of re-estimating BatchNorm statistics after pruning (adaptive BN,
EagleEye), also on BatchNorm-folded exports, and with ``variance=False`` the bias correction of FLAP /
data-free quantisation generalised to every consumer (``Δb = E[y] − E[ŷ]``, which is
``W_kept·(E[x] − E[x̂]) + W_removed·E[x_removed]``). A layer whose output has no constant bias to absorb
the shift (nor a BatchNorm right after, whose running mean takes it) is left alone and noted.

Layers are corrected in topological *levels*: a level holds the consumers none of whose inputs depends
on another consumer of the same or a later level, and each level is measured on the masked twin carrying
every earlier level's correction — one ONNX Runtime pass over the probe samples per level, plus one pass
of the original model. The updates are full-size weights, so the pruned model and its masked twin carry
the same values (the mask oracle holds). After sequential reconstruction (:mod:`spa.quality.reconstruct`)
only the layers it could not solve are re-aligned: a least-squares fit already matches the output mean,
and restoring the variance it gives up would amplify what the pruned inputs can no longer explain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.calibration.stats import Accumulator, FeatureMoments, collect
from spa.criteria.base import Updates
from spa.criteria.calibrated import add_to_bias, weight
from spa.criteria.consumers import Consumer, group_consumers
from spa.plan import Plan
from spa.quality.probe import ProbeData
from spa.rules.registry import RuleRegistry
from spa.surgery import masked_twin

#: the largest / smallest variance ratio applied (a channel the pruning nearly silenced is not blown up)
MAX_SCALE = 4.0


@dataclass
class _Target:
    """One layer to re-align: its view, output tensor and channel axis, Gemm's alpha, its level."""

    view: Consumer
    output: str
    axis: int
    alpha: float
    bn_bias: bool
    level: int = 0


def targets(analysis: Analysis, plan: Plan, exclude: Collection[str] = ()) -> tuple[list[_Target], list[str]]:
    """The layers re-alignment corrects (in graph order, with levels) and why others are skipped; the
    nodes in ``exclude`` (already reconstructed) are left out silently."""
    nodes = {n.name: n for n in analysis.model.graph.nodes}
    found: dict[str, _Target] = {}
    skipped: list[str] = []
    for gp in plan.groups:
        for c in group_consumers(analysis, gp.group):
            if not isinstance(c, Consumer) or c.node in found or c.node not in nodes or c.node in exclude:
                continue
            node = nodes[c.node]
            axis = c.output_axis
            if c.shared or axis is None or c.bias is None:
                why = ("its weight is shared" if c.shared else "its output layout is not handled" if axis is None
                       else "it has no constant bias (nor a BatchNorm after it) to absorb a shift")
                skipped.append(f"{c.op} '{c.node}': {why}")
                continue
            found[c.node] = _Target(c, node.outputs[0].name, axis, c.alpha, c.bias.running_mean)
    level: dict[str, int] = {}
    for node in analysis.model.graph.nodes:
        lv = max((level.get(t.name, 0) for t in node.inputs if t is not None), default=0)
        if node.name in found:
            found[node.name].level = lv
            lv += 1
        for t in node.outputs:
            level[t.name] = lv
    order = {n.name: i for i, n in enumerate(analysis.model.graph.nodes)}
    return sorted(found.values(), key=lambda t: order[t.view.node]), skipped


def _moments(model: object, data: ProbeData, outs: list[_Target], threads: int) -> dict[str, FeatureMoments]:
    accs: dict[str, list[Accumulator]] = {}
    moments: dict[str, FeatureMoments] = {}
    for t in outs:
        if t.output not in moments:
            moments[t.output] = FeatureMoments(t.axis)
            accs.setdefault(t.output, []).append(moments[t.output])
    collect(model, data.source, accs, desc="re-aligning statistics", threads=threads)  # type: ignore[arg-type]
    return moments


def _align(analysis: Analysis, t: _Target, orig: FeatureMoments, now: FeatureMoments, variance: bool,
           updates: Updates) -> None:
    """Fold the moment-matching affine map of ``t``'s output into its weight and bias (in ``updates``)."""
    c = t.view
    w = weight(analysis, c.weight, updates)
    wm = c.matrix(w)
    mu, mu_hat = orig.mean, now.mean
    if len(mu) != wm.shape[0] or len(mu_hat) != wm.shape[0]:
        return
    s = np.ones_like(mu)
    if variance:
        var, var_hat = orig.var, now.var
        ok = (var_hat > 1e-12) & (var > 1e-12)
        s[ok] = np.clip(np.sqrt(var[ok] / var_hat[ok]), 1.0 / MAX_SCALE, MAX_SCALE)
    updates[c.weight] = c.unmatrix(wm * s[:, None], w).astype(np.asarray(w).dtype)
    if c.bias is not None and not t.bn_bias:  # an own bias is part of y: scale it too
        b = np.asarray(weight(analysis, c.bias.name, updates), dtype=np.float64)
        updates[c.bias.name] = (b * s).astype(np.asarray(weight(analysis, c.bias.name)).dtype)
    add_to_bias(analysis, c, (mu - s * mu_hat) / t.alpha, updates)


def realign(analysis: Analysis, plan: Plan, updates: Updates | None, data: ProbeData,
            registry: RuleRegistry | None = None, *, variance: bool = True, threads: int = 1,
            exclude: Collection[str] = (),
            progress: Callable[[str], None] | None = None) -> tuple[Updates, dict[str, object]]:
    """Re-align the output statistics of every layer that lost inputs (see the module docstring).

    Args:
        analysis, plan: the prune.
        updates: the criterion's compensation (kept; re-alignment acts on top of it).
        data: the probe samples (:func:`spa.quality.probe.probe_data`).
        registry: rules for the masked twin.
        variance: also match the variance (else the mean only).
        threads: ONNX Runtime threads.
        exclude: nodes to leave alone (those sequential reconstruction already fitted: matching their
            variance afterwards would undo the least-squares fit's shrinkage and amplify noise).
        progress: called once per level.

    Returns:
        The updates (the criterion's and re-alignment's together) and a record for the report:
        ``layers``, ``levels``, ``samples``, ``variance``, ``seconds``, ``skipped``.
    """
    t0 = time.perf_counter()
    out: Updates = dict(updates or {})
    todo, skipped = targets(analysis, plan, exclude)
    levels = sorted({t.level for t in todo})
    if todo:
        orig = _moments(analysis.model.to_onnx(), data, todo, threads)
        for i, lv in enumerate(levels):
            if progress is not None:
                progress(f"re-aligning statistics: level {i + 1}/{len(levels)}")
            at = [t for t in todo if t.level == lv]
            twin = masked_twin(analysis, plan, out, registry).to_onnx()
            now = _moments(twin, data, at, threads)
            for t in at:
                _align(analysis, t, orig[t.output], now[t.output], variance, out)
    record: dict[str, object] = {"layers": len(todo), "levels": len(levels), "samples": data.samples,
                                 "variance": variance, "seconds": round(time.perf_counter() - t0, 3),
                                 "skipped": skipped}
    return out, record
