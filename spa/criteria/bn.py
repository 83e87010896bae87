"""``bn``: the BatchNormalization scale |γ| of each channel (Liu et al., Network Slimming, 2017).

A group's BN scales are the ``param`` slots that are input 1 of a node normalising with running
statistics (its rule's :meth:`~spa.rules.base.ChannelRule.running_stats`: BatchNormalization); a group
with several (a residual stream) reduces them (``sum`` by default). Groups without a BN fall back to
``l2`` and say so in ``ctx.notes``.

>>> import numpy as np
>>> abs_gamma(np.array([-2.0, 0.5]), np.array([1, 0]), 2).tolist()
[0.5, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.obs import l2_fallback
from spa.criteria.reduce import finish
from spa.plan import Plan
from spa.rules.base import Role


def abs_gamma(gamma: np.ndarray, labels: np.ndarray, channels: int) -> np.ndarray:
    """Σ |γ| per channel."""
    acc = np.zeros(channels)
    np.add.at(acc, labels, np.abs(np.asarray(gamma, dtype=np.float64)))
    return acc


def _running_stats(analysis: Analysis, node: gs.Node) -> bool:
    """Whether ``node`` normalises with running statistics (its rule says so: BatchNormalization)."""
    rule = analysis.rule_for(node)
    return rule is not None and rule.running_stats(analysis.context(node))


@dataclass(frozen=True)
class BNScale:
    """|γ| of the group's BatchNormalization layers."""

    name: str = "bn"

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        tensors = analysis.model.graph.tensors()
        members: dict[int, list[np.ndarray]] = {}
        for gid in analysis.labelled_groups():
            classes = analysis.labels(gid)
            channels = analysis.groups[gid].channels
            found = []
            for slot, labels in classes.items():
                t = tensors.get(slot.tensor)
                if Role.PARAM not in analysis.roles_of(slot) or t is None:
                    continue
                if any(len(n.inputs) > 1 and n.inputs[1] is t and _running_stats(analysis, n) for n in t.outputs):
                    found.append(abs_gamma(np.asarray(t.values), labels, channels))
            members[gid] = found or [l2_fallback(analysis, ctx, self.name, gid, "has no BatchNormalization")]
        return finish(members, ctx)

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}
