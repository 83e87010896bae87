"""Elementwise ops: unary activations and broadcasting n-ary arithmetic.

Unary ops map every axis of the input to the same axis of the output. Broadcasting ops (Add, Mul, ...,
PRelu, Where) align inputs from the right (numpy rules): an input axis whose size equals the output's is
the same channel; an input axis of size 1 against a larger output axis is broadcast and couples nothing.
Per-channel constants (bias vectors, BN decomposed into Mul/Add, PReLU slopes) are linked and sliced.
Trilu (causal masks) keeps the leading axes and blocks its two matrix axes (which elements survive
depends on their positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    norm_axis,
    same_dim,
    static,
)
from spa.rules.moments import Result, Walk, broadcast_transfer, unary_transfer

UNARY_OPS: tuple[str, ...] = (
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Mish",
    "Softplus", "Softsign", "Elu", "Selu", "Celu", "ThresholdedRelu", "Shrink", "Swish",
    "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Cast", "CastLike", "Not", "IsNaN", "IsInf", "Identity", "Dropout",
)

BROADCAST_OPS: tuple[str, ...] = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Mod",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
)


class UnaryRule(ChannelRule):
    """Identity on every axis between input 0 and each output (Dropout's mask too)."""

    op_types = UNARY_OPS

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Activations (ReLU closed form, others by quadrature); Identity and Dropout unchanged."""
        return unary_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x = ctx.input(0)
        r = ctx.rank(x)
        if x is None or r is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': input shape unknown")
        rels: list[Relation] = []
        for out in ctx.node.outputs:
            if out.name and ctx.rank(out) == r:
                rels += [Link(Slot(x.name, a), Slot(out.name, a)) for a in range(r)]
        return rels


def broadcast_links(ctx: NodeContext, inputs: Sequence[gs.Tensor | None], out: gs.Tensor | None) -> list[Relation]:
    """Links between each input and ``out`` under numpy broadcasting; constants become PARAM members."""
    so = ctx.shape(out)
    if out is None or so is None:
        return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': output shape unknown")
    r = len(so)
    rels: list[Relation] = []
    for t in inputs:
        if t is None:
            continue
        st = ctx.shape(t)
        if st is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape of '{t.name}' unknown")
        shift = r - len(st)
        for ai, di in enumerate(st):
            ao = ai + shift
            do = so[ao]
            if static(di) == 1 and static(do) != 1:
                continue  # broadcast along this axis: no coupling
            if same_dim(di, do):
                rels.append(Link(Slot(t.name, ai), Slot(out.name, ao)))
                if ctx.is_const(t):
                    rels.append(Member(Slot(t.name, ai), Role.PARAM))
            else:
                reason = f"{ctx.node.op} '{ctx.node.name}': cannot tell broadcasting of '{t.name}' axis {ai}"
                rels += [Barrier(t.name, ai, reason), Barrier(out.name, ao, reason)]
    return rels


class BroadcastRule(ChannelRule):
    """Broadcasting n-ary ops: all non-broadcast input axes share the output's slot."""

    op_types = BROADCAST_OPS

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """PRelu, and Add/Sub/Mul/Div: affine maps with per-channel constants, sums of independent
        activations, ``x·act(x)`` gates."""
        return broadcast_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        out = ctx.output(0)
        if out is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}' has no output")
        return broadcast_links(ctx, [ctx.input(k) for k in range(len(ctx.node.inputs))], out)


class TriluRule(ChannelRule):
    """Trilu: leading (batch) axes are identity; the last two axes are position-dependent barriers."""

    op_types = ("Trilu",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None or r < 2:
            return ctx.barrier_all(f"Trilu '{ctx.node.name}': shape unknown")
        reason = f"Trilu '{ctx.node.name}' keeps a triangle: its last two axes are positional"
        rels: list[Relation] = [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(r - 2)]
        for a in (norm_axis(-2, r), norm_axis(-1, r)):
            rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
        k = ctx.input(1)
        if k is not None:
            rels.append(Barrier(k.name, None, reason))
        return rels
