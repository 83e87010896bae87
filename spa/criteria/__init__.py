"""Importance criteria: a score per channel of every prunable group (higher = more important).

The registry below lists every criterion explicitly; :func:`get_criterion` looks one up by name.
"""

from __future__ import annotations

from spa.analysis.groups import Analysis
from spa.criteria.base import Criterion, CriterionContext, Scores, Updates
from spa.criteria.magnitude import Magnitude, RandomScores
from spa.errors import UsageError

CRITERIA: dict[str, Criterion] = {
    "l1": Magnitude("l1"),
    "l2": Magnitude("l2"),
    "random": RandomScores(),
}


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``.

    Raises:
        UsageError: unknown name.
    """
    try:
        return CRITERIA[name]
    except KeyError:
        raise UsageError(f"unknown criterion '{name}'; choose one of {', '.join(CRITERIA)}") from None


def score_groups(analysis: Analysis, criterion: str = "l2", seed: int = 0,
                 calibration: object | None = None) -> Scores:
    """Scores of every prunable group under the criterion called ``criterion``."""
    return get_criterion(criterion).score(analysis, CriterionContext(seed=seed, calibration=calibration))


__all__ = ["score_groups", "CRITERIA", "Criterion", "CriterionContext", "Scores", "Updates", "get_criterion"]
