"""Group reduction and score normalisation, shared by the criteria.

A criterion scores each *member* of a group (a weight slice, a consumer layer, a BN scale) per
channel; :func:`reduce_members` combines the members (``sum``, ``mean`` or ``max``), then
:func:`normalize` makes groups comparable for global ranking:

* ``mean``: divide by the group's mean score;
* ``lamp``: LAMP — each score divided by the sum of the scores larger than or equal to it in its group
  (Lee et al., 2021), so the largest channel of every group scores 1;
* ``zscore``: subtract the group's mean, divide by its standard deviation;
* ``none``: leave the scores as they are.

The options come from ``ctx.options["reduction"]`` and ``ctx.options["normalize"]`` (defaults
``sum`` and the criterion's own default, usually ``mean``).

>>> normalize(np.array([1.0, 3.0, 2.0, 2.0]), "lamp").round(3).tolist()
[0.125, 1.0, 0.286, 0.286]
>>> reduce_members([np.array([1.0, 2.0]), np.array([3.0, 0.0])], "max").tolist()
[3.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spa.criteria.base import CriterionContext
from spa.errors import UsageError

REDUCTIONS = ("sum", "mean", "max")
NORMALIZERS = ("mean", "lamp", "zscore", "none")


def reduce_members(members: Sequence[np.ndarray], how: str = "sum") -> np.ndarray:
    """Combine per-member channel scores (all of one length) into one score per channel."""
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in members])
    if how == "sum":
        return stack.sum(axis=0)
    if how == "mean":
        return stack.mean(axis=0)
    if how == "max":
        return stack.max(axis=0)
    raise UsageError(f"unknown reduction '{how}'; choose one of {', '.join(REDUCTIONS)}")


def _lamp(s: np.ndarray) -> np.ndarray:
    ordered = np.sort(s)
    suffix = np.cumsum(ordered[::-1])[::-1]  # suffix[i] = sum of ordered[i:]
    first = np.searchsorted(ordered, s, side="left")  # ties: sum over every score >= s
    denom = suffix[first]
    return np.divide(s, denom, out=np.zeros_like(s), where=denom > 0)


def normalize(scores: np.ndarray, how: str = "mean") -> np.ndarray:
    """Normalise one group's channel scores."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return s
    if how == "mean":
        m = float(np.mean(s)) if s.size else 0.0
        return s / m if m > 0 else s
    if how == "lamp":
        return _lamp(s)
    if how == "zscore":
        sd = float(np.std(s)) if s.size else 0.0
        return (s - np.mean(s)) / sd if sd > 0 else s - np.mean(s)
    raise UsageError(f"unknown normalisation '{how}'; choose one of {', '.join(NORMALIZERS)}")


def options(ctx: CriterionContext, default_normalize: str = "mean") -> tuple[str, str]:
    """(reduction, normalisation) from ``ctx.options``, validated.

    Raises:
        UsageError: an unknown name.
    """
    red = str(ctx.options.get("reduction") or "sum")
    norm = str(ctx.options.get("normalize") or default_normalize)
    if red not in REDUCTIONS:
        raise UsageError(f"unknown reduction '{red}'; choose one of {', '.join(REDUCTIONS)}")
    if norm not in NORMALIZERS:
        raise UsageError(f"unknown normalisation '{norm}'; choose one of {', '.join(NORMALIZERS)}")
    return red, norm


def finish(members: dict[int, list[np.ndarray]], ctx: CriterionContext,
           default_normalize: str = "mean") -> dict[int, np.ndarray]:
    """Reduce and normalise every group's member scores with the options in ``ctx``."""
    red, norm = options(ctx, default_normalize)
    return {gid: normalize(reduce_members(ms, red), norm) for gid, ms in members.items() if ms}
