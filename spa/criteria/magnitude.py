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

from collections.abc import Callable

import numpy as np

from spa.analysis.groups import Analysis
from spa.errors import UsageError
from spa.rules.base import Role

Scores = dict[int, np.ndarray]


def _per_element(w: np.ndarray, axis: int, kind: str) -> np.ndarray:
    """Per index along ``axis``: Σ|w| (l1) or Σw² (l2) over the other axes."""
    w = np.asarray(w)
    others = tuple(a for a in range(w.ndim) if a != axis)
    v = np.abs(w) if kind == "l1" else np.square(w)
    return np.asarray(v.sum(axis=others, dtype=np.float64))


def _magnitude(analysis: Analysis, kind: str) -> Scores:
    tensors = analysis.model.graph.tensors()
    out: Scores = {}
    for gid, cls in analysis.classes.items():
        n = analysis.groups[gid].channels
        acc = np.zeros(n, dtype=np.float64)
        for slot, labels in cls.items():
            roles = analysis.roles.get(slot, set())
            if not ({Role.PRODUCER, Role.CONSUMER} & roles):
                continue
            values = getattr(tensors[slot.tensor], "values", None)
            if values is None:
                continue
            np.add.at(acc, labels, _per_element(np.asarray(values), slot.axis, kind))
        out[gid] = acc if kind == "l1" else np.sqrt(acc)
    return out


def l1(analysis: Analysis, seed: int = 0) -> Scores:
    """Σ|w| over every weight slice of each channel."""
    return _magnitude(analysis, "l1")


def l2(analysis: Analysis, seed: int = 0) -> Scores:
    """L2 norm over every weight slice of each channel."""
    return _magnitude(analysis, "l2")


def random(analysis: Analysis, seed: int = 0) -> Scores:
    """Seeded uniform scores."""
    rng = np.random.default_rng(seed)
    return {gid: rng.random(analysis.groups[gid].channels) for gid in sorted(analysis.classes)}


CRITERIA: dict[str, Callable[[Analysis, int], Scores]] = {"l1": l1, "l2": l2, "random": random}


def score_groups(analysis: Analysis, criterion: str = "l2", seed: int = 0) -> Scores:
    """Scores for every prunable group.

    Raises:
        UsageError: unknown criterion.
    """
    try:
        fn = CRITERIA[criterion]
    except KeyError:
        raise UsageError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}") from None
    return fn(analysis, seed)
