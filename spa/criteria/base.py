"""The criterion interface.

A criterion scores every channel of every prunable group (higher = more important) and may, once the
plan is known, *compensate*: return updated values of surviving weights (e.g. the OBS update of a
consumer's remaining columns, or a bias correction). Updates are full-size arrays keyed by initializer
name; surgery applies them before slicing, and the masked twin carries them too, so the mask oracle
still holds for compensating criteria.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx

    from spa.analysis.groups import Analysis
    from spa.calibration.data import CalibrationSource
    from spa.executors import Executor
    from spa.plan import Plan

Scores = dict[int, np.ndarray]
Updates = dict[str, np.ndarray]
#: ``(analysis, model proto, calibration source, "taylor" | "snip") -> raw per-channel scores``: the
#: gradient saliency the layer above (``spa.api``) injects from the torch executor (``spa.recover.saliency``)
GradientScorer = Callable[["Analysis", "onnx.ModelProto", "CalibrationSource", str], Scores]


@dataclass
class CriterionContext:
    """Inputs a criterion may use besides the analysis.

    Attributes:
        seed: seed for anything random.
        calibration: calibration data (criterion-specific object), or None when data-free.
        options: free-form criterion options (e.g. reduction, damping).
        notes: messages the criterion wants in the report (e.g. fallbacks it took).
        cache: private memo a criterion shares between :meth:`Criterion.score` and
            :meth:`Criterion.compensate` (e.g. calibration statistics), so data is read once.
        executor: where calibration statistics are computed (None: in this process, one pass).
        shapes: the input shapes the user stated (``--shape``, batch first), which synthetic inputs take;
            None: sizes the model is found to run at.
        gradients: the gradient saliency the gradient criteria (``taylor``, ``snip``) call; criteria sit
            below the torch executor, so :mod:`spa.api` injects it (None: not available here).
    """

    seed: int = 0
    calibration: object | None = None
    options: dict[str, object] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] | None = None
    notes: list[str] = field(default_factory=list)
    cache: dict[str, object] = field(default_factory=dict, repr=False)
    executor: Executor | None = field(default=None, repr=False)
    gradients: GradientScorer | None = field(default=None, repr=False)

    def note(self, message: str) -> None:
        """Add ``message`` to :attr:`notes` once."""
        if message not in self.notes:
            self.notes.append(message)


class Criterion(Protocol):
    """What every criterion provides."""

    @property
    def name(self) -> str:
        """The registry name."""

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        """A score per channel of every prunable group."""

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        """Updated weights after removal (empty for non-compensating criteria)."""
