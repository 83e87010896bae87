"""The layers that *read* a group's channels, seen as matrices.

Data-aware criteria look at a group through its consumers: every weight slot of the group with the
``consumer`` role belongs to a Conv, Gemm or MatMul whose input activation carries the channels. A
:class:`Consumer` presents that layer as ``y = W x`` with ``W`` of shape [outputs, input features]:

* Conv ``[M, C/g, k...]``: ``W = w.reshape(M, C/g·Πk)``; a channel owns its ``Πk`` columns; the input
  is unfolded with im2col (:class:`~spa.rules.views.ConvUnfold`). A grouped conv is ``g``
  diagonal *blocks*, each reading its own ``C/g`` input channels; depthwise convs have no consumer
  slot (their channels couple input to output) and never appear here.
* Gemm / MatMul with a 2-D weight: the contraction axis of the weight is the column axis; the
  activation's contraction axis holds the features, every other axis is a sample.

Each op's view is built by its rule (:meth:`~spa.rules.base.ChannelRule.matrix_view`; the value types
live in :mod:`spa.rules.views`; ConvTranspose with one group: its input positions as samples, rows =
output channel × tap); an op without one (grouped ConvTranspose, a batched MatMul weight, ...) yields
a *reason* instead, and the criterion falls back to magnitude for that consumer and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.rules.base import Role
from spa.rules.views import Bias, Block, Consumer, ConvUnfold, ViewResult

__all__ = ["Bias", "Block", "Consumer", "ConvUnfold", "Fallback", "ViewResult", "Views", "fallback_errors",
           "group_consumers"]


@dataclass(frozen=True)
class Fallback:
    """A consumer slot no view handles: scored by magnitude (``H = I``)."""

    weight: str
    axis: int
    labels: np.ndarray
    reason: str


#: the consumers of every group, by group id
Views = dict[int, list[Consumer | Fallback]]


def group_consumers(analysis: Analysis, gid: int) -> list[Consumer | Fallback]:
    """Every consumer of group ``gid``: a :class:`Consumer` view, or a :class:`Fallback` with the reason."""
    tensors = analysis.model.graph.tensors()
    out: list[Consumer | Fallback] = []
    for slot, labels in analysis.labels(gid).items():
        if Role.CONSUMER not in analysis.roles_of(slot):
            continue
        users = list(tensors[slot.tensor].outputs) if slot.tensor in tensors else []
        if not users:
            out.append(Fallback(slot.tensor, slot.axis, labels, f"no node reads '{slot.tensor}'"))
        for node in users:
            rule = analysis.rule_for(node)
            res = (rule.matrix_view(analysis.context(node), slot, labels) if rule is not None
                   else f"no matrix view of {node.op} '{node.name}'")
            out.append(res if isinstance(res, Consumer) else Fallback(slot.tensor, slot.axis, labels, res))
    return out


def fallback_errors(analysis: Analysis, fb: Fallback, channels: int) -> np.ndarray:
    """Σ w² over the consumer slice of every channel (the OBS error with ``H = I``)."""
    w = np.asarray(analysis.weight(fb.weight), dtype=np.float64)
    per = np.square(np.moveaxis(w, fb.axis, 0)).reshape(w.shape[fb.axis], -1).sum(axis=1)
    acc = np.zeros(channels)
    np.add.at(acc, fb.labels, per)
    return acc
