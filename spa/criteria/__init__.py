"""Importance criteria: a score per channel of every prunable group (higher = more important).

The registry below lists every criterion explicitly; :func:`get_criterion` looks one up by name.

* ``l1``, ``l2``, ``random`` — weight magnitude over every slice of the channel, or a seeded baseline;
* ``bn`` — BatchNormalization |γ|; ``lamp`` — LAMP-normalised squared magnitude;
* ``obs`` (calibrated) — Optimal Brain Surgeon error with the OBS weight update as compensation;
* ``obspa`` (data-free) — OBS on synthetic activations that match the BatchNorm statistics, with
  weight and bias compensation (or, ``obspa_h=diag``, a closed form from BN moments, bias only);
* ``wanda`` (calibrated) — |W|·‖x‖; ``flap`` (calibrated) — fluctuation with bias compensation;
* ``taylor``, ``snip`` (calibrated, torch) — first-order loss change of removing the channel, per sample
  |∂L/∂m·m| averaged (Taylor) or of the whole set (SNIP), from the executor ``ctx.gradients``.
"""

from __future__ import annotations

from spa.analysis.groups import Analysis
from spa.criteria.base import Criterion, CriterionContext, GradientScorer, Scores, Updates
from spa.criteria.bn import BNScale
from spa.criteria.flap import FLAP
from spa.criteria.gradient import Gradient
from spa.criteria.lamp import LAMP
from spa.criteria.magnitude import Magnitude, RandomScores
from spa.criteria.obs import OBS
from spa.criteria.obspa import ObsPA
from spa.criteria.wanda import Wanda
from spa.errors import UsageError

CRITERIA: dict[str, Criterion] = {
    "l1": Magnitude("l1"),
    "l2": Magnitude("l2"),
    "random": RandomScores(),
    "bn": BNScale(),
    "lamp": LAMP(),
    "obs": OBS(),
    "obspa": ObsPA(),
    "wanda": Wanda(),
    "flap": FLAP(),
    "taylor": Gradient("taylor"),
    "snip": Gradient("snip"),
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


__all__ = ["score_groups", "CRITERIA", "Criterion", "CriterionContext", "GradientScorer", "Scores", "Updates",
           "get_criterion"]
