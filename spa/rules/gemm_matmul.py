"""Gemm and MatMul.

A weight initializer decouples its two axes like a 1x1 Conv: the contraction axis is a *consumer*
slice of the input channel, the other axis a *producer* slice of the output channel. A following bias
Add is handled by the broadcasting rule. A MatMul of two activations (attention scores ``q @ kᵀ``, the
context ``p @ v``) couples batch and free axes — that is how the heads of Q, K, V and O become one
group — and its contraction axis is a barrier. When such a MatMul has rank >= 4, its batch axes after
the first are attention heads: they are tagged ``"head"`` (:class:`~spa.rules.base.Tag`) for reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from spa.rules.base import (
    AttrValue,
    Barrier,
    ChannelRule,
    Cost,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    Tag,
    all_axes,
    attr_value,
    dims_product,
    same_dim,
    static,
)
from spa.rules.elementwise import broadcast_links
from spa.rules.views import Consumer, gemm_view, matmul_view

#: Gemm attributes that change the computation, with their defaults (the latency-table key)
_GEMM_DEFAULTS: dict[str, AttrValue] = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}


def gemm_cost(ctx: NodeContext, a_index: int = 0, b_index: int = 1, *, scale: bool = True) -> Cost | None:
    """MACs of ``Y[M, N] = A'[M, K] · B'[K, N]``: ``M·N·K = numel(y) · K`` (``K`` is ``A``'s axis 0 when
    ``transA``, else its axis 1). They scale with every axis of ``B`` (``K`` and ``N``); ``scale`` False
    for quantised operators, whose axes are all blocked."""
    a, b, y = ctx.input(a_index), ctx.input(b_index), ctx.output(0)
    sa, sy = ctx.shape(a), ctx.shape(y)
    if sa is None or sy is None or len(sa) != 2:  # an invalid Gemm (ONNX Runtime refuses it): nothing to count
        return None
    k = sa[0] if ctx.int_attr("transA", 0) else sa[1]
    return Cost(dims_product(sy) * dims_product([k]), all_axes(b, ctx.shape(b)) if scale and b is not None else ())


def matmul_cost(ctx: NodeContext, a_index: int = 0, b_index: int = 1, *, scale: bool = True) -> Cost | None:
    """MACs of a numpy-semantics MatMul: every output element sums ``K`` products (``K`` = ``A``'s last
    axis, broadcast batch axes included in ``numel(y)``): ``numel(y) · K``.

    With a constant ``B`` the MACs scale with every axis of ``B`` (``K`` and ``N``); otherwise — two
    activations, e.g. attention's ``q·kᵀ`` and ``p·v`` — with every axis of ``A`` (batch, heads, rows,
    ``K``) and ``B``'s last axis (``N``). ``scale`` False for quantised operators (all axes blocked).
    """
    a, b, y = ctx.input(a_index), ctx.input(b_index), ctx.output(0)
    sa, sy = ctx.shape(a), ctx.shape(y)
    if a is None or b is None or not sa or sy is None:
        return None
    macs = dims_product(sy) * dims_product([sa[-1]])
    if not scale:
        return Cost(macs)
    if isinstance(b, gs.Constant):
        return Cost(macs, all_axes(b, ctx.shape(b)))
    sb = ctx.shape(b)
    return Cost(macs, all_axes(a, sa) + (Slot(b.name, len(sb or (0,)) - 1),))


class GemmRule(ChannelRule):
    """Gemm: Y[M,N] = A'[M,K] B'[K,N] + C."""

    op_types = ("Gemm",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        a, b, c, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if a is None or b is None or y is None or ctx.rank(a) != 2 or ctx.rank(b) != 2:
            return ctx.barrier_all(f"Gemm '{ctx.node.name}': shapes unknown")
        ta, tb = ctx.int_attr("transA", 0), ctx.int_attr("transB", 0)
        a_m, a_k = (1, 0) if ta else (0, 1)
        b_k, b_n = (1, 0) if tb else (0, 1)
        rels: list[Relation] = [
            Link(Slot(a.name, a_m), Slot(y.name, 0)),
            Link(Slot(a.name, a_k), Slot(b.name, b_k)),
            Link(Slot(b.name, b_n), Slot(y.name, 1)),
        ]
        if ctx.is_const(b):
            rels += [Member(Slot(b.name, b_k), Role.CONSUMER), Member(Slot(b.name, b_n), Role.PRODUCER)]
        if ctx.is_const(a):
            rels += [Member(Slot(a.name, a_k), Role.CONSUMER), Member(Slot(a.name, a_m), Role.PRODUCER)]
        if not (ctx.is_weight(a) or ctx.is_weight(b)):  # no weight reads K: nothing to zero in the masked twin
            reason = f"Gemm '{ctx.node.name}' contracts two activations"
            rels += [Barrier(a.name, a_k, reason), Barrier(b.name, b_k, reason)]
        if c is not None:
            rels += [r for r in broadcast_links(ctx, [c], y) if not (isinstance(r, Link) and r.a.tensor == y.name)]
        return rels

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """See :func:`spa.rules.views.gemm_view`."""
        return gemm_view(ctx.node, slot, labels)

    def cost(self, ctx: NodeContext) -> Cost | None:
        """``M·N·K`` (see :func:`gemm_cost`)."""
        return gemm_cost(ctx)

    def latency_key(self, ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[tuple[str, AttrValue], ...] | None:
        """``alpha``, ``beta``, ``transA``, ``transB`` (defaults filled in)."""
        attrs = dict(_GEMM_DEFAULTS)
        attrs |= {k: attr_value(v) for k, v in ctx.node.attrs.items() if k in _GEMM_DEFAULTS}
        return tuple(sorted(attrs.items()))


class MatMulRule(ChannelRule):
    """MatMul with numpy semantics (1-D operands and broadcast batch dims)."""

    op_types = ("MatMul",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        a, b, y = ctx.input(0), ctx.input(1), ctx.output(0)
        sa, sb, sy = ctx.shape(a), ctx.shape(b), ctx.shape(y)
        if a is None or b is None or y is None or sa is None or sb is None or sy is None:
            return ctx.barrier_all(f"MatMul '{ctx.node.name}': shapes unknown")
        ra, rb, ry = len(sa), len(sb), len(sy)
        rels: list[Relation] = []
        ka, kb = ra - 1, (rb - 2 if rb >= 2 else 0)
        if ra >= 2:
            rels.append(Link(Slot(a.name, ra - 2), Slot(y.name, ry - (2 if rb >= 2 else 1))))
        if rb >= 2:
            rels.append(Link(Slot(b.name, rb - 1), Slot(y.name, ry - 1)))
        # batch dims, aligned from the right, broadcast-aware
        nb_y = ry - (1 if ra >= 2 else 0) - (1 if rb >= 2 else 0)
        const_a, const_b = ctx.is_const(a), ctx.is_const(b)
        heads = not (const_a or const_b) and ry >= 4
        if heads:
            rels += [Tag(Slot(y.name, ay), "head") for ay in range(1, nb_y)]
        for t, s, nb in ((a, sa, ra - 2), (b, sb, rb - 2)):
            for i in range(max(nb, 0)):
                ay = nb_y - nb + i
                if static(s[i]) == 1 and static(sy[ay]) != 1:
                    continue
                if same_dim(s[i], sy[ay]):
                    rels.append(Link(Slot(t.name, i), Slot(y.name, ay)))
                    if heads and ay >= 1:
                        rels.append(Tag(Slot(t.name, i), "head"))
                else:
                    rels.append(Barrier(t.name, i, f"MatMul '{ctx.node.name}': batch broadcast unclear"))
        if const_a or const_b or ctx.is_weight(a) or ctx.is_weight(b):
            rels.append(Link(Slot(a.name, ka), Slot(b.name, kb)))
            if const_b:
                rels.append(Member(Slot(b.name, kb), Role.CONSUMER))
                if rb >= 2:
                    rels.append(Member(Slot(b.name, rb - 1), Role.PRODUCER))
            if const_a:
                rels.append(Member(Slot(a.name, ka), Role.CONSUMER))
                if ra >= 2:
                    rels.append(Member(Slot(a.name, ra - 2), Role.PRODUCER))
        else:
            reason = f"MatMul '{ctx.node.name}' contracts two activations"
            rels += [Barrier(a.name, ka, reason), Barrier(b.name, kb, reason)]
        return rels

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """See :func:`spa.rules.views.matmul_view`."""
        return matmul_view(ctx.node, slot, labels)

    def cost(self, ctx: NodeContext) -> Cost | None:
        """``numel(y) · K`` (see :func:`matmul_cost`)."""
        return matmul_cost(ctx)

    def latency_key(self, ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[tuple[str, AttrValue], ...] | None:
        """No attributes: the shapes say everything."""
        return ()
