"""``lamp``: layer-adaptive magnitude pruning scores (Lee et al., LAMP, ICLR 2021), per channel.

A channel's squared magnitude ``s_c = Σ w²`` over every producer and consumer slice of the group is
divided by the sum of the squared magnitudes of the channels that are at least as large in the same
group: ``lamp(c) = s_c / Σ_{s_d ≥ s_c} s_d``. Within a group the order is that of ``l2``; across
groups (``--global``) the largest channel of every group scores 1, which keeps small layers alive.
(``ctx.options["normalize"]`` replaces the LAMP normalisation when given.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.magnitude import _per_element, weight_slices
from spa.criteria.reduce import finish
from spa.plan import Plan


@dataclass(frozen=True)
class LAMP:
    """LAMP-normalised squared magnitude."""

    name: str = "lamp"

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        members: dict[int, list[np.ndarray]] = {}
        for gid in analysis.labelled_groups():
            channels = analysis.groups[gid].channels
            slices = []
            for slot, labels, w in weight_slices(analysis, gid):
                acc = np.zeros(channels)
                np.add.at(acc, labels, _per_element(w, slot.axis, "l2"))
                slices.append(acc)
            members[gid] = slices or [np.zeros(channels)]
        return finish(members, ctx, default_normalize="lamp")

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}
