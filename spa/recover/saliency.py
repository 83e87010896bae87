"""Gradient saliency of every channel of every prunable group: the ``taylor`` and ``snip`` criteria.

The model runs in torch through :class:`~spa.recover.executor.GraphModule` with a *gate* ``m`` (value 1) per
sample and channel multiplied into every place a group's channels leave the group: each input of a node
that reads one of the group's activation slots and writes none of them (a consumer conv/linear, the
output projection after attention heads, ...). Zeroing ``m_c`` is the masked twin's removal of channel
``c``, so ``∂L/∂m_c = Σ_{gated elements e of c} ∂L/∂a_e · a_e`` is the first-order change of the loss
when the channel is removed (every path from the channel to the loss crosses exactly one gate: the
first edge leaving the group).

With ``L_n`` the loss of sample ``n`` and ``g_{n,c} = ∂L_n/∂m_{n,c}`` (``N`` calibration samples):

* ``taylor`` (first-order Taylor, Molchanov et al. 2017/2019): ``I_c = (1/N) Σ_n |g_{n,c}|`` — the
  expected magnitude of the loss change per sample (absolute per sample, so opposite signs do not cancel);
* ``snip`` (connection sensitivity, Lee et al. 2019, on a channel mask): ``S_c = |Σ_n g_{n,c}| / N`` —
  ``|∂L/∂m_c · m_c|`` of the loss over the whole calibration set.

A gated tensor whose first axis is not the batch (``N``) gets one gate per batch instead of per sample
(its gradient is shared equally by the batch's samples).

The loss needs no labels. The distillation loss against the unpruned model itself is at its minimum
there (gradient 0), so the loss is the model's own prediction's: per sample, for every float output,
cross-entropy against its own argmax (pseudo-labels: ``-log softmax(y)[argmax y]`` over axis 1 of a
``[N, C, ...]`` output with ``C ≥ 2``, averaged over positions) — its gradient measures how much a channel
supports the decision the model makes; other outputs use ``½ Σ y² / mean(y²)`` (a scale-free energy).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from spa.analysis.groups import Analysis
from spa.calibration.data import CalibrationSource
from spa.errors import UsageError
from spa.recover.backend import require, torch
from spa.recover.executor import GraphModule
from spa.recover.train import student_batched
from spa.rules.base import Slot
from spa.runtime.feeds import input_specs

KINDS = ("taylor", "snip")


@dataclass(frozen=True)
class Gate:
    """One gated edge: the input ``index`` of the node at ``position`` carries group ``group``'s channels
    along ``axis``; ``labels[i]`` is the channel of element ``i``."""

    position: int
    index: int
    group: int
    axis: int
    labels: np.ndarray


def gates(analysis: Analysis, module: GraphModule) -> list[Gate]:
    """Every edge where a labelled group's channels leave the group (see the module docstring)."""
    out = []
    for gid in analysis.labelled_groups():
        labels = analysis.labels(gid)
        acts = {m.tensor: (m.axis, labels[Slot(m.tensor, m.axis)]) for m in analysis.groups[gid].members
                if m.kind == "activation" and Slot(m.tensor, m.axis) in labels}
        for pos, node in enumerate(module.nodes):
            if any(o in acts for o in node.output):
                continue
            for k, name in enumerate(node.input):
                if name in acts:
                    axis, lab = acts[name]
                    out.append(Gate(pos, k, gid, axis, np.asarray(lab, dtype=np.int64)))
    return out


def _loss(outputs: list[Any]) -> Any:
    """Σ_n L_n: pseudo-label cross-entropy over axis 1 of class-like outputs, a scale-free energy otherwise."""
    total = torch.zeros((), dtype=torch.float32)
    for y in outputs:
        if not (hasattr(y, "is_floating_point") and y.is_floating_point()) or y.dim() == 0:
            continue
        y = y.float()
        if y.dim() >= 2 and y.shape[1] >= 2:
            logp = torch.log_softmax(y, dim=1)
            own = logp.detach().argmax(dim=1, keepdim=True)
            per = -logp.gather(1, own).reshape(len(y), -1).mean(dim=1)
        else:
            scale = (y.detach() ** 2).mean().clamp_min(1e-12)
            per = 0.5 * (y ** 2).reshape(len(y), -1).sum(dim=1) / scale
        total = total + per.sum()
    return total


class _Gates:
    """The gate tensors of one batch (``[N, channels]`` per group, value 1) and the hooks that apply them."""

    def __init__(self, analysis: Analysis, found: list[Gate], n: int) -> None:
        self.n = n
        self.m = {gid: torch.ones((n, analysis.groups[gid].channels), requires_grad=True)
                  for gid in {g.group for g in found}}
        self.found = found

    def hook(self, g: Gate) -> Any:
        def apply(x: Any) -> Any:
            if not (hasattr(x, "is_floating_point") and x.is_floating_point()) or x.shape[g.axis] != len(g.labels):
                return x
            lab = torch.from_numpy(g.labels)
            shape = [1] * x.dim()
            if x.dim() > 1 and g.axis != 0 and x.shape[0] == self.n:  # one gate per sample
                shape[0], shape[g.axis] = self.n, len(g.labels)
                mult = self.m[g.group][:, lab]
            else:  # one gate for the batch: its gradient shared by the samples
                shape[g.axis] = len(g.labels)
                mult = self.m[g.group].mean(dim=0)[lab]
            return x * mult.reshape(shape).to(x.dtype)
        return apply


def _batches(source: CalibrationSource, model: onnx.ModelProto, module: GraphModule) -> Iterator[dict[str, Any]]:
    """The calibration batches as torch tensors; one sample at a time when the graph does not run a batch as
    it runs its samples (a fixed-batch export's Reshape)."""
    batched: bool | None = None
    for batch in source.batches(input_specs(model)):
        feeds = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in batch.items()}
        if batched is None:
            batched = student_batched(module, feeds, ())
        if batched:
            yield feeds
        else:
            yield from ({k: v[i:i + 1] for k, v in feeds.items()} for i in range(len(next(iter(feeds.values())))))


def channel_saliency(analysis: Analysis, model: onnx.ModelProto, source: CalibrationSource,
                     kind: str) -> dict[int, np.ndarray]:
    """Per labelled group, the raw ``taylor`` or ``snip`` score of every channel (formulas in the module
    docstring); groups no gate reaches are left out (the criterion falls back for them).

    Args:
        analysis: the groups of ``model``.
        model: the analysed (normalised) model as a ModelProto; its tensor names are the analysis's.
        source: calibration inputs.
        kind: ``taylor`` or ``snip``.
    """
    require(f"criterion '{kind}'")
    if kind not in KINDS:
        raise UsageError(f"unknown gradient criterion '{kind}'; choose one of {', '.join(KINDS)}")
    module = GraphModule(model, trainable=[])
    found = gates(analysis, module)
    sums: dict[int, np.ndarray] = {}
    count = 0
    for feeds in _batches(source, model, module):
        n = len(next(iter(feeds.values())))
        state = _Gates(analysis, found, n)
        module.input_hooks = {(g.position, g.index): state.hook(g) for g in found}
        _loss(module(feeds)).backward()
        for gid, m in state.m.items():
            grad = m.grad.double().numpy() if m.grad is not None else np.zeros(tuple(m.shape))
            part = np.abs(grad).sum(axis=0) if kind == "taylor" else grad.sum(axis=0)
            sums[gid] = sums.get(gid, 0.0) + part
        count += n
    module.input_hooks = {}
    if count == 0:
        raise UsageError(f"{source.describe()}: the data holds no samples")
    return {gid: np.abs(s) / count for gid, s in sums.items()}
