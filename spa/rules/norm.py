"""Normalisation layers.

Per-channel normalisations (BatchNormalization, InstanceNormalization) are identity maps whose
parameters are sliced with the channel. Normalisations whose statistics run *over* an axis
(LayerNormalization, GroupNormalization's channel axis, LpNormalization, MeanVarianceNormalization,
LRN) are barriers on that axis: removing a channel there changes every other channel's output.
"""

from __future__ import annotations

from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    Tag,
    norm_axis,
)


def _identity_except(ctx: NodeContext, blocked: set[int], reason: str) -> list[Relation]:
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if x is None or y is None or r is None:
        return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape unknown")
    rels: list[Relation] = []
    for a in range(r):
        if a in blocked:
            rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
        else:
            rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
    return rels


class PerChannelNormRule(ChannelRule):
    """BatchNormalization (inference) and InstanceNormalization: parameters [C] on axis 1."""

    op_types = ("BatchNormalization", "InstanceNormalization")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        if any(o.name and o.outputs for o in ctx.node.outputs[1:]):
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}' runs in training mode")
        rels = _identity_except(ctx, set(), "")
        y = ctx.output(0)
        if y is None or ctx.rank(ctx.input(0)) is None:
            return rels
        for k in range(1, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is not None:
                rels.append(Link(Slot(p.name, 0), Slot(y.name, 1)))
                if ctx.is_const(p):
                    rels.append(Member(Slot(p.name, 0), Role.PARAM))
        return rels


class StatsOverAxisRule(ChannelRule):
    """Ops whose statistics run over some axes: those axes are barriers, the rest identity."""

    op_types = ("LayerNormalization", "GroupNormalization", "LpNormalization", "MeanVarianceNormalization",
                "LRN")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op = ctx.node.op
        r = ctx.rank(ctx.input(0))
        if r is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': shape unknown")
        if op == "LayerNormalization":
            axis = norm_axis(int(ctx.attr("axis", -1)), r)
            blocked = set(range(axis, r))
        elif op == "MeanVarianceNormalization":
            blocked = {norm_axis(int(a), r) for a in ctx.attr("axes", [0, 2, 3])}  # type: ignore[union-attr]
        elif op == "LpNormalization":
            blocked = {norm_axis(int(ctx.attr("axis", -1)), r)}
        else:  # GroupNormalization, LRN: statistics across channels
            blocked = {1}
        reason = f"{op} '{ctx.node.name}' normalises over axis {sorted(blocked)}: channels there are not independent"
        rels = _identity_except(ctx, blocked, reason)
        x = ctx.input(0)
        if op == "LayerNormalization" and x is not None:
            rels += [Tag(Slot(x.name, a), "hidden") for a in blocked]
        for k in range(1, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is not None:
                rels.append(Barrier(p.name, None, reason))
        for o in ctx.node.outputs[1:]:
            if o.name:
                rels.append(Barrier(o.name, None, reason))
        return rels
