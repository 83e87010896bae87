"""``flap``: fluctuation-based scores with bias compensation (An et al., FLAP, AAAI 2024), per channel.

A column's *fluctuation* score is ``Var(x_j) · Σ_rows W[r, j]²`` — how much the layer's output moves
when the input channel moves — with the variance over every calibration sample and spatial position;
a channel sums its columns, the group reduces over its consumers. Removing a channel then loses only
its fluctuation if its *mean* contribution is kept: :meth:`FLAP.compensate` adds
``Σ_{j removed} W[:, j] · E[x_j]`` to the consumer's bias. A consumer without a constant bias is
left uncompensated (adding a bias input is a graph change) and noted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.criteria import calibrated
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.consumers import Consumer
from spa.criteria.reduce import finish
from spa.criteria.wanda import activation_weighted
from spa.plan import Plan


def compensate_means(analysis: Analysis, plan: Plan, ctx: CriterionContext, who: str,
                     means: dict[tuple[str, int], np.ndarray]) -> Updates:
    """Bias updates moving every removed channel's mean contribution into its consumers' biases.

    ``means`` maps a consumer's (input tensor, feature axis) to the mean of every input element.
    """
    views = calibrated.consumers(analysis, ctx, who)
    updates: Updates = {}
    for c, cols in calibrated.pruned_consumers(plan, views):
        if c.bias is None:
            ctx.note(f"{who}: {c.op} '{c.node}' has no constant bias of its own; its removed channels' "
                     "mean is not compensated (adding a bias needs a graph change)")
            continue
        wm = c.matrix(calibrated.weight(analysis, c.weight, updates))
        delta = calibrated.removed_mean_shift(c, wm, means[(c.input, c.input_axis)], cols)
        calibrated.add_to_bias(analysis, c, delta, updates)
    return updates


@dataclass(frozen=True)
class FLAP:
    """Fluctuation scores, removed means moved into the bias."""

    name: str = "flap"

    def _stats(self, analysis: Analysis, ctx: CriterionContext):  # type: ignore[no-untyped-def]
        views = calibrated.consumers(analysis, ctx, self.name)
        real = [c for vs in views.values() for c in vs if isinstance(c, Consumer)]
        src = calibrated.required_source(ctx, self.name)
        return views, calibrated.feature_moments(analysis, ctx, self.name, real, src)

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        views, stats = self._stats(analysis, ctx)
        members = activation_weighted(analysis, ctx, self.name, views,
                                      lambda c: stats[(c.input, c.input_axis)].var, square=True)
        return finish(members, ctx)

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        _, stats = self._stats(analysis, ctx)
        return compensate_means(analysis, plan, ctx, self.name, {k: v.mean for k, v in stats.items()})
