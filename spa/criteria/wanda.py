"""``wanda``: weight magnitude times input activation norm (Sun et al., Wanda, 2023), per channel.

For every consumer of a group, a column's score is ``Σ_rows |W[r, j]| · ‖x_j‖`` where ``‖x_j‖`` is the
root mean square of the column's input channel over the calibration data (every sample and spatial
position); a channel sums its columns (all kernel taps of a conv), and the group reduces over its
consumers (``sum`` by default). Needs calibration data; compensates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.criteria import calibrated
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.consumers import Consumer, Fallback, Views
from spa.criteria.obs import per_consumer
from spa.criteria.reduce import finish
from spa.plan import Plan


def column_scores(c: Consumer, wm: np.ndarray, per_element: np.ndarray, channels: int,
                  square: bool = False) -> np.ndarray:
    """Σ over rows of ``|W|·v`` (or ``W²·v`` when ``square``), per channel, ``v`` per input element."""
    out = np.zeros(channels)
    for block in c.blocks:
        w = wm[block.rows]
        mag = np.square(w) if square else np.abs(w)
        np.add.at(out, c.col_labels, mag.sum(axis=0) * per_element[block.elements])
    return out


def magnitude_members(analysis: Analysis, fb: Fallback, channels: int, square: bool) -> np.ndarray:
    """Σ|w| (or Σw²) of a fallback consumer's slice, per channel."""
    w = np.asarray(analysis.weight(fb.weight), dtype=np.float64)
    mag = np.square(w) if square else np.abs(w)
    per = np.moveaxis(mag, fb.axis, 0).reshape(w.shape[fb.axis], -1).sum(axis=1)
    out = np.zeros(channels)
    np.add.at(out, fb.labels, per)
    return out


def activation_weighted(analysis: Analysis, ctx: CriterionContext, who: str, views: Views,
                        per_element: Callable[[Consumer], np.ndarray], *, square: bool) -> dict[int, list[np.ndarray]]:
    """Per group, every consumer's :func:`column_scores` with the input statistic ``per_element(c)`` (a
    fallback consumer: its weight magnitudes; a group without consumers: the l2 fallback)."""
    return per_consumer(analysis, ctx, who, views,
                        lambda c, wm, channels: column_scores(c, wm, per_element(c), channels, square=square),
                        lambda fb, channels: magnitude_members(analysis, fb, channels, square=square))


@dataclass(frozen=True)
class Wanda:
    """|W| · RMS(x) summed over a channel's consumer columns."""

    name: str = "wanda"

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        views = calibrated.consumers(analysis, ctx, self.name)
        real = [c for vs in views.values() for c in vs if isinstance(c, Consumer)]
        src = calibrated.required_source(ctx, self.name)
        stats = calibrated.feature_moments(analysis, ctx, self.name, real, src)
        members = activation_weighted(analysis, ctx, self.name, views,
                                      lambda c: stats[(c.input, c.input_axis)].rms, square=False)
        return finish(members, ctx)

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}
