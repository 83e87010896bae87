"""Sequential reconstruction: re-solve every layer that reads pruned channels against the original
layer's outputs, given the *pruned* model's own inputs, in topological order (OBC / SparseGPT style).

For a layer seen as ``y = W x`` (a :class:`~spa.criteria.consumers.Consumer`: Conv unfolded, one block
per conv group; Gemm / MatMul with a 2-D weight), ``x`` its input in the original model and ``x̂`` its
input in the pruned model (everything upstream already pruned *and* reconstructed), ``S`` the kept
input columns, the new weights solve the ridge problem

    W'_S, d = argmin  Σ‖W x − W'_S x̂_S − d‖²  +  λ‖W'_S − W_S‖²  +  λ₁‖d‖²

— regularised towards the original kept columns (not towards 0: directions the calibration data never
excites keep their weights), with ``d`` a per-output shift the layer's bias (or the running mean of the
BatchNorm after it) absorbs, when it has one. With ``x̂ = [x̂_S; 1]`` (the ones row only when ``d`` is
solved), ``H = E[x̂ x̂ᵀ]``, ``T = E[(W x) x̂ᵀ]`` and ``D = diag(λ, …, λ, λ₁)``, the closed form is

    [W'_S, d] = (T + [W_S, 0] D) (H + D)⁻¹,    λ = damp · mean(diag H_SS),  λ₁ = damp

When upstream nothing changed (``x̂ = x``) this is exactly the one-shot OBS update
``W_S + W_M H_MS (H_SS + λI)⁻¹`` (:mod:`spa.criteria.obs_math`); otherwise it also corrects the error the
layers before it left behind instead of letting it compound. ``H`` and ``T`` are accumulated in float64
over the calibration batches (memory: the statistics, never the activations).

Layers are solved in *levels*: a level holds the layers none of whose inputs depends on a layer of the
same or a later level. Per level the masked twin carrying every earlier solution runs in ONNX Runtime
next to the original model, batch by batch on the same calibration data (two passes per level); the
layers a reconstructed layer feeds are re-solved too, even when they lost no column of their own (their
inputs drifted). The solutions are written as full-size weights (removed columns 0), so the pruned model
and its masked twin carry the same values and the mask oracle holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from spa.analysis.groups import Analysis
from spa.calibration.data import CalibrationError, CalibrationSource
from spa.calibration.runner import run_batches
from spa.calibration.stats import CHUNK_ELEMENTS
from spa.criteria.base import Updates
from spa.criteria.calibrated import MAX_FEATURES, add_to_bias, weight
from spa.criteria.consumers import Consumer, group_consumers
from spa.criteria.obs_math import DEFAULT_DAMP, damping
from spa.plan import Plan
from spa.rules.base import Slot
from spa.rules.registry import RuleRegistry
from spa.surgery import masked_twin, twin_kept


@dataclass
class _Block:
    """The statistics of one row block (one conv group) of a layer: sums of ``x̂x̂ᵀ``, ``(Wx)x̂ᵀ``, ``|Wx|²``."""

    rows: slice
    features: np.ndarray  # the block's columns of the unfolded input (original layout)
    cols: np.ndarray  # the kept columns of the block's matrix
    w0: np.ndarray  # the original weight of the block [rows, columns]
    intercept: bool
    hh: np.ndarray = field(init=False)
    ty: np.ndarray = field(init=False)
    yy: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        k = len(self.cols) + int(self.intercept)
        self.hh = np.zeros((k, k))
        self.ty = np.zeros((self.w0.shape[0], k))

    def update(self, rows_orig: np.ndarray, rows_hat: np.ndarray) -> None:
        """Add one chunk of unfolded original / pruned inputs (same samples, same row order)."""
        y = rows_orig[:, self.features].astype(np.float64) @ self.w0.T
        xh = rows_hat[:, self.features[self.cols]].astype(np.float64)
        if self.intercept:
            xh = np.hstack([xh, np.ones((len(xh), 1))])
        self.hh += xh.T @ xh
        self.ty += y.T @ xh
        self.yy += float(np.einsum("ij,ij->", y, y))
        self.count += len(xh)


@dataclass
class _Layer:
    """One layer to reconstruct: its view, kept matrix columns, level and statistics."""

    view: Consumer
    keep: np.ndarray  # bool per matrix column
    level: int = 0
    blocks: list[_Block] = field(default_factory=list)

    def start(self, analysis: Analysis) -> None:
        """Fresh statistics (the original weight as the target)."""
        w0 = self.view.matrix(weight(analysis, self.view.weight))
        cols = np.flatnonzero(self.keep)
        self.blocks = [_Block(b.rows, b.features, cols, w0[b.rows], self.view.bias is not None)
                       for b in self.view.blocks]

    def update(self, x_orig: np.ndarray, x_hat: np.ndarray) -> None:
        """Add one batch of this layer's input in the original and in the pruned model (chunked)."""
        c = self.view
        if x_orig.shape != x_hat.shape:
            raise CalibrationError(f"{c.op} '{c.node}': its input has shape {x_hat.shape} in the pruned model's "
                                   f"twin and {x_orig.shape} in the original")
        if not len(x_orig):
            return
        per_sample = max(c.rows_of(x_orig[:1]).shape[0], 1) * c.features
        step = max(1, CHUNK_ELEMENTS // per_sample)
        for i in range(0, len(x_orig), step):
            ro, rh = c.rows_of(x_orig[i:i + step]), c.rows_of(x_hat[i:i + step])
            for b in self.blocks:
                b.update(ro, rh)


def _error(b: _Block, a: np.ndarray) -> float:
    """``Σ‖Wx − a x̂‖² / Σ‖Wx‖²`` from the statistics (``a``: [rows, kept (+1)])."""
    sq = b.yy - 2.0 * float(np.sum(a * b.ty)) + float(np.sum((a @ b.hh) * a))
    return max(sq, 0.0) / b.yy if b.yy > 0 else 0.0


def solve_block(b: _Block, damp: float = DEFAULT_DAMP) -> np.ndarray:
    """``[W'_S, d] = (T + [W_S, 0] D)(H + D)⁻¹`` of one block (see the module docstring)."""
    n = max(b.count, 1)
    h, t = b.hh / n, b.ty / n
    k = len(b.cols)
    d = np.full(h.shape[0], damping(h[:k, :k], damp) if k else damp)
    if b.intercept:
        d[-1] = damp
    reg = np.zeros_like(t)
    reg[:, :k] = b.w0[:, b.cols]
    rhs = t + reg * d
    a = h + np.diag(d)
    try:
        return np.linalg.solve(a, rhs.T).T  # type: ignore[no-any-return]
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs.T, rcond=None)[0].T  # type: ignore[no-any-return]


def _apply(analysis: Analysis, layer: _Layer, updates: Updates, damp: float) -> dict[str, object]:
    """Solve every block of ``layer`` and write its weight (and bias shift) into ``updates``."""
    c = layer.view
    w = weight(analysis, c.weight, updates)
    cur = c.matrix(w)
    new = np.zeros_like(cur)
    shift = np.zeros(cur.shape[0])
    cols = np.flatnonzero(layer.keep)
    before = after = total = 0.0
    for b in layer.blocks:
        a = solve_block(b, damp)
        old = np.zeros_like(a)
        old[:, :len(cols)] = cur[b.rows][:, cols]
        before += _error(b, old) * b.yy
        after += _error(b, a) * b.yy
        total += b.yy
        new[b.rows, cols] = a[:, :len(cols)]
        if b.intercept:
            shift[b.rows] = a[:, -1]
    updates[c.weight] = c.unmatrix(new, w).astype(np.asarray(w).dtype)
    if c.bias is not None:  # the shift replaces any the criterion made: start from the original bias
        updates[c.bias.name] = np.array(weight(analysis, c.bias.name), copy=True)
        add_to_bias(analysis, c, shift, updates)
    return {"node": c.node, "op": c.op, "level": layer.level, "columns": int(layer.keep.size),
            "kept_columns": int(layer.keep.sum()), "bias": c.bias is not None,
            "error_before": round(before / total, 6) if total else 0.0,
            "error_after": round(after / total, 6) if total else 0.0}


def layers(analysis: Analysis, plan: Plan, max_features: int = MAX_FEATURES) -> tuple[list[_Layer], list[str]]:
    """The layers to reconstruct, in graph order with their levels, and why others are skipped: every
    consumer that loses input columns, and every consumer downstream of one (its inputs drift)."""
    kept = twin_kept(analysis, plan)
    found: dict[str, _Layer] = {}
    skipped: list[str] = []
    for gid in analysis.labelled_groups():
        for c in group_consumers(analysis, gid):
            if not isinstance(c, Consumer) or c.node in found:
                continue
            if c.shared or c.features > max_features:
                why = "its weight is shared" if c.shared else f"it reads {c.features} unfolded features"
                skipped.append(f"{c.op} '{c.node}': {why} (limit {max_features})" if not c.shared
                               else f"{c.op} '{c.node}': {why}")
                continue
            w = weight(analysis, c.weight)
            el = np.ones(w.shape[c.axis], dtype=bool)
            slot = Slot(c.weight, c.axis)
            if slot in kept:
                el[:] = False
                el[kept[slot]] = True
            found[c.node] = _Layer(c, el[np.arange(c.matrix(w).shape[1]) // c.taps])
    return _levels(analysis, found), sorted(set(skipped))


def _levels(analysis: Analysis, found: dict[str, _Layer]) -> list[_Layer]:
    """Assign levels (graph order) and keep the layers that lose columns or read a changed one's output."""
    level: dict[str, int] = {}
    dirty: dict[str, bool] = {}
    out: list[_Layer] = []
    for node in analysis.model.graph.nodes:
        ins = [t.name for t in node.inputs if t is not None]
        lv = max((level.get(t, 0) for t in ins), default=0)
        changed = any(dirty.get(t, False) for t in ins)
        layer = found.get(node.name)
        if layer is not None and (changed or not layer.keep.all()):
            layer.level = lv
            out.append(layer)
            lv, changed = lv + 1, True
        for t in node.outputs:
            level[t.name], dirty[t.name] = lv, changed
    return out


def _accumulate(original: onnx.ModelProto, twin: onnx.ModelProto, source: CalibrationSource, at: list[_Layer],
                threads: int) -> int:
    """Run both models over ``source`` batch by batch, feeding each layer's input pair; the samples seen."""
    taps = list(dict.fromkeys(layer.view.input for layer in at))
    runs = zip(run_batches(original, source, taps, threads=threads, progress=False, desc="reconstruction"),
               run_batches(twin, source, taps, threads=threads, progress=False, desc="reconstruction"))
    seen = 0
    for ro, rt in runs:
        if ro.samples != rt.samples:
            raise CalibrationError(f"the calibration data ({source.describe()}) gave different batches to two "
                                   "runs; reconstruction needs a source that reads the same samples every time")
        for layer in at:
            layer.update(np.asarray(ro.values[layer.view.input]), np.asarray(rt.values[layer.view.input]))
        seen += ro.samples
    return seen


def reconstruct(analysis: Analysis, plan: Plan, updates: Updates | None, source: CalibrationSource,
                registry: RuleRegistry | None = None, *, damp: float = DEFAULT_DAMP,
                max_features: int = MAX_FEATURES, threads: int = 1,
                progress: Callable[[str], None] | None = None) -> tuple[Updates, dict[str, object]]:
    """Sequential reconstruction of every layer that lost inputs or reads drifted ones (module docstring).

    Args:
        analysis, plan: the prune.
        updates: the criterion's compensation (kept for the layers not reconstructed; replaced for the
            others, which are solved from the original weights).
        source: the calibration data (read twice per level; it must give the same batches every time).
        registry: rules for the masked twin.
        damp: ``λ = damp · mean(diag H)``.
        max_features: layers reading more unfolded features are skipped (``H`` is features²).
        threads: ONNX Runtime threads.
        progress: called once per level.

    Returns:
        The updates and a record for the report: ``layers``, ``levels``, ``ort_passes``, ``samples``,
        ``damp``, ``seconds``, ``skipped`` and per layer its relative output error
        ``Σ‖Wx − W'x̂‖² / Σ‖Wx‖²`` on the calibration data before (its weights as the criterion left
        them) and after.
    """
    t0 = time.perf_counter()
    out: Updates = dict(updates or {})
    todo, skipped = layers(analysis, plan, max_features)
    levels = sorted({layer.level for layer in todo})
    original = analysis.model.to_onnx() if todo else None
    per_layer: list[dict[str, object]] = []
    samples = passes = 0
    for i, lv in enumerate(levels):
        if progress is not None:
            progress(f"reconstructing: level {i + 1}/{len(levels)}")
        at = [layer for layer in todo if layer.level == lv]
        for layer in at:
            layer.start(analysis)
        twin = masked_twin(analysis, plan, out, registry).to_onnx()
        samples = _accumulate(original, twin, source, at, threads)  # type: ignore[arg-type]
        passes += 2
        per_layer += [_apply(analysis, layer, out, damp) for layer in at]
    record: dict[str, object] = {"layers": len(todo), "levels": len(levels), "ort_passes": passes,
                                 "samples": samples, "damp": damp, "seconds": round(time.perf_counter() - t0, 3),
                                 "skipped": skipped, "per_layer": per_layer}
    return out, record
