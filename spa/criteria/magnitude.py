"""Magnitude and random criteria at group level.

A channel's magnitude sums over *every* weight slice of the channel — producer rows and consumer
columns of every weight in the group (per-channel parameters such as BN statistics and biases are
left out: their scale says nothing about importance):

* ``l1``: Σ |w| over the slices;
* ``l2``: sqrt(Σ w²) over the slices;
* ``random``: uniform scores from the seeded generator (a baseline).

>>> import numpy as np
>>> _per_element(np.array([[3.0, 4.0], [0.0, 1.0]]), 0, "l2").tolist()
[25.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.reduce import normalize, options
from spa.graph.weights import release
from spa.plan import Plan
from spa.rules.base import Role


def _per_element(w: np.ndarray, axis: int, kind: str) -> np.ndarray:
    """Per index along ``axis``: Σ|w| (l1) or Σw² (l2) over the other axes."""
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):  # quantized weights: int8 squares overflow
        w = w.astype(np.float32)
    others = tuple(a for a in range(w.ndim) if a != axis)
    v = np.abs(w) if kind == "l1" else np.square(w)
    return np.asarray(v.sum(axis=others, dtype=np.float64))


def weight_slices(analysis: Analysis, gid: int, roles: set[Role] | None = None):  # type: ignore[no-untyped-def]
    """Yield (slot, channel labels, weight array) for the weights of a group with one of ``roles``."""
    tensors = analysis.model.graph.tensors()
    wanted = roles or {Role.PRODUCER, Role.CONSUMER}
    for slot, labels in analysis.labels(gid).items():
        if not (wanted & analysis.roles_of(slot)):
            continue
        values = getattr(tensors[slot.tensor], "values", None)
        if values is not None:
            yield slot, labels, np.asarray(values)


def magnitude_scores(analysis: Analysis, kind: str) -> Scores:
    """Σ|w| (``l1``) or the L2 norm (``l2``) over every producer/consumer slice of each channel."""
    out: Scores = {}
    for gid in analysis.labelled_groups():
        acc = np.zeros(analysis.groups[gid].channels, dtype=np.float64)
        for slot, labels, w in weight_slices(analysis, gid):
            np.add.at(acc, labels, _per_element(w, slot.axis, kind))
            release(w)
        out[gid] = acc if kind == "l1" else np.sqrt(acc)
    return out


@dataclass(frozen=True)
class Magnitude:
    """``l1`` or ``l2`` magnitude."""

    name: str

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        _, norm = options(ctx)
        return {gid: normalize(s, norm) for gid, s in magnitude_scores(analysis, self.name).items()}

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}


@dataclass(frozen=True)
class RandomScores:
    """Seeded uniform scores (a baseline)."""

    name: str = "random"

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        rng = np.random.default_rng(ctx.seed)
        _, norm = options(ctx)
        return {gid: normalize(rng.random(analysis.groups[gid].channels), norm) for gid in analysis.labelled_groups()}

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}
