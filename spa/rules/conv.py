"""Conv and ConvTranspose (1D/2D/3D), plain, depthwise and grouped.

Index maps (``C`` input channels, ``M`` output channels, ``g`` groups, ``cg = C/g``, ``mg = M/g``):

* ``g == 1``: the weight decouples input and output: input channel ``c`` is weight column ``c``
  (a *consumer* slice), output channel ``m`` is weight row ``m`` (a *producer* slice) and bias ``m``.
* depthwise-like (``cg == 1``): input channel ``c`` feeds output channels ``c*mg .. c*mg+mg-1``; they
  are one channel and ``group`` becomes the new input channel count.
* grouped (``cg > 1``): groups must stay equal-sized, so a channel is an *in-group position*: position
  ``j`` is input channels ``{i*cg + j}`` of every group ``i`` (and likewise for outputs). ``group`` is
  unchanged.

>>> import numpy as np
>>> _positions(6, 3).tolist()   # 6 channels in groups of 3: positions
[0, 1, 2, 0, 1, 2]
"""

from __future__ import annotations

import numpy as np

from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    Member,
    NodeContext,
    Relation,
    RewriteContext,
    Role,
    Slot,
    static,
)


def _positions(n: int, per_group: int) -> np.ndarray:
    return np.arange(n) % per_group


def _self_positions(t: str, axis: int, n: int, per_group: int) -> Link:
    """Couple every channel of a slot with the same in-group position of the first group."""
    return Link(Slot(t, axis), Slot(t, axis), np.arange(n), _positions(n, per_group))


class ConvRule(ChannelRule):
    """Conv: weight [M, C/g, k...], bias [M]."""

    op_types = ("Conv",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        sx, sw = ctx.shape(x), ctx.shape(w)
        if x is None or w is None or y is None or sx is None or sw is None or ctx.rank(y) is None:
            return ctx.barrier_all(f"Conv '{ctx.node.name}': shapes unknown")
        g = int(ctx.attr("group", 1))
        c, m = static(sx[1]), static(sw[0])
        cg = static(sw[1])
        if c is None or m is None or cg is None:
            return ctx.barrier_all(f"Conv '{ctx.node.name}': channel counts unknown")
        role_in, role_out = (Role.CONSUMER, Role.PRODUCER) if ctx.is_const(w) else (None, None)
        rels: list[Relation] = [Link(Slot(x.name, 0), Slot(y.name, 0)), Link(Slot(w.name, 0), Slot(y.name, 1))]
        if role_out:
            rels.append(Member(Slot(w.name, 0), role_out))
        if b is not None:
            rels += [Link(Slot(b.name, 0), Slot(y.name, 1)), Member(Slot(b.name, 0), Role.PARAM)]
        if g == 1:
            rels.append(Link(Slot(x.name, 1), Slot(w.name, 1)))
            if role_in:
                rels.append(Member(Slot(w.name, 1), role_in))
        elif cg == 1:
            mg = m // g
            rels.append(Link(Slot(x.name, 1), Slot(y.name, 1), np.repeat(np.arange(c), mg), np.arange(m)))
        else:
            rels.append(Link(Slot(x.name, 1), Slot(w.name, 1), np.arange(c), _positions(c, cg)))
            if role_in:
                rels.append(Member(Slot(w.name, 1), role_in))
            rels.append(_self_positions(y.name, 1, m, m // g))
        if cg != 1 and not ctx.is_weight(w):  # a run-time weight: no slice of it to zero in the masked twin
            reason = f"Conv '{ctx.node.name}' contracts its input channels with a weight computed at run time"
            rels += [Barrier(x.name, 1, reason), Barrier(w.name, 1, reason)]
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x, w = ctx.input(0), ctx.input(1)
        g = int(ctx.attr("group", 1))
        sw = ctx.shape(w)
        if g > 1 and sw is not None and static(sw[1]) == 1:
            kept = rw.kept(x, 1)
            if kept is not None:
                ctx.node.attrs["group"] = int(len(kept))


class ConvTransposeRule(ChannelRule):
    """ConvTranspose: weight [C, M/g, k...], bias [M]."""

    op_types = ("ConvTranspose",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        sx, sw = ctx.shape(x), ctx.shape(w)
        if x is None or w is None or y is None or sx is None or sw is None or ctx.rank(y) is None:
            return ctx.barrier_all(f"ConvTranspose '{ctx.node.name}': shapes unknown")
        g = int(ctx.attr("group", 1))
        c, mg = static(sx[1]), static(sw[1])
        if c is None or mg is None:
            return ctx.barrier_all(f"ConvTranspose '{ctx.node.name}': channel counts unknown")
        m, cg = mg * g, c // g
        const = ctx.is_const(w)
        rels: list[Relation] = [Link(Slot(x.name, 0), Slot(y.name, 0)), Link(Slot(x.name, 1), Slot(w.name, 0))]
        if const:
            rels.append(Member(Slot(w.name, 0), Role.CONSUMER))
        if b is not None:
            rels += [Link(Slot(b.name, 0), Slot(y.name, 1)), Member(Slot(b.name, 0), Role.PARAM)]
        if g == 1:
            rels.append(Link(Slot(y.name, 1), Slot(w.name, 1)))
            if const:
                rels.append(Member(Slot(w.name, 1), Role.PRODUCER))
        elif cg == 1:
            rels.append(Link(Slot(x.name, 1), Slot(y.name, 1), np.repeat(np.arange(c), mg), np.arange(m)))
        else:
            rels.append(_self_positions(x.name, 1, c, cg))
            rels.append(Link(Slot(y.name, 1), Slot(w.name, 1), np.arange(m), _positions(m, mg)))
            if const:
                rels.append(Member(Slot(w.name, 1), Role.PRODUCER))
        if cg != 1 and not ctx.is_weight(w):  # a run-time weight: no slice of it to zero in the masked twin
            reason = f"ConvTranspose '{ctx.node.name}' contracts its input channels with a weight computed at run time"
            rels += [Barrier(x.name, 1, reason), Barrier(w.name, 0, reason)]
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x = ctx.input(0)
        g = int(ctx.attr("group", 1))
        sx = ctx.shape(x)
        if g > 1 and sx is not None and static(sx[1]) == g:
            kept = rw.kept(x, 1)
            if kept is not None:
                ctx.node.attrs["group"] = int(len(kept))
        if "output_shape" in ctx.node.attrs:
            pass  # spatial only: unaffected by channel pruning
