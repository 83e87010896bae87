"""Resize/Upsample, Pad, Expand and Tile: ops that change some axes' sizes and copy the others.

An axis whose size the op leaves unchanged (scale 1, no padding, no expansion, repeat 1) is identity;
the others are not linked (and become barriers). Size-valued constants (Resize ``sizes``, Expand
``shape``) are rewritten for pruned axes.

An Expand/Tile output axis broadcast from a size-1 input axis (a one-channel map expanded over every
channel) holds copies of one value: it is *free* — self-linked so the coverage check does not block
it, coupled only through its consumers — and its size (Expand ``shape`` / Tile ``repeats``) is
rewritten. Resize ``sizes`` given for a subset of axes (``axes`` attribute, opset >= 18) are
rewritten through that list, not by right-alignment.
"""

from __future__ import annotations

import numpy as np

from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    NodeContext,
    Relation,
    RewriteContext,
    Slot,
    norm_axis,
    same_dim,
    static,
)


def _same_size_links(ctx: NodeContext) -> list[Relation]:
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if x is None or y is None or sx is None or sy is None or len(sx) != len(sy):
        return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shapes unknown")
    return [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(len(sx)) if same_dim(sx[a], sy[a])]


def _rewrite_size_input(ctx: NodeContext, rw: RewriteContext, index: int, axes: list[int] | None = None) -> None:
    """Write the new sizes of pruned output axes into constant input ``index``.

    Entry ``a`` describes output axis ``axes[a]`` when ``axes`` is given, else the axes are aligned
    from the right (Expand's shape may be shorter than the output rank). Entries 1 and -1 are kept
    (an Expand entry 1 means "the input's size").
    """
    t = ctx.input(index)
    v = ctx.const(t)
    y = ctx.output(0)
    if v is None or y is None or v.size == 0:
        return
    new = v.reshape(-1).copy()
    rank = len(y.shape)
    shift = rank - len(new)
    for a in range(len(new)):
        kept = rw.kept(y, norm_axis(axes[a], rank) if axes is not None else a + shift)
        if kept is not None and new[a] not in (1, -1):
            new[a] = len(kept)
    rw.set_const_input(ctx.node, index, new)


class ResizeRule(ChannelRule):
    """Resize / Upsample: unscaled axes are identity; constant ``sizes`` are rewritten."""

    op_types = ("Resize", "Upsample")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        rels = _same_size_links(ctx)
        if ctx.node.op == "Resize" and ctx.input(3) is not None and not ctx.is_const(ctx.input(3)):
            y = ctx.output(0)
            assert y is not None
            for r in list(rels):
                if isinstance(r, Link) and static(ctx.shape(y)[r.b.axis]) not in (None, 1):  # type: ignore[index]
                    rels.append(Barrier(y.name, r.b.axis, f"Resize '{ctx.node.name}' sizes computed at run time"))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        if ctx.node.op == "Resize" and ctx.input(3) is not None:
            axes = ctx.attr("axes")
            _rewrite_size_input(ctx, rw, 3, [int(a) for a in axes] if axes else None)  # type: ignore[union-attr]


class PadRule(ChannelRule):
    """Pad: unpadded axes are identity (padding a channel axis is a barrier)."""

    op_types = ("Pad",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        return _same_size_links(ctx)


class ExpandTileRule(ChannelRule):
    """Expand / Tile: axes left unchanged are identity; Expand's shape constant is rewritten."""

    op_types = ("Expand", "Tile")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        sx, sy = ctx.shape(x), ctx.shape(y)
        if x is None or y is None or sx is None or sy is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shapes unknown")
        if ctx.node.op == "Expand" and not ctx.is_const(ctx.input(1)):
            return ctx.barrier_all(f"Expand '{ctx.node.name}' shape computed at run time")
        if ctx.node.op == "Tile":
            reps = ctx.const(ctx.input(1))
            if reps is None:
                return ctx.barrier_all(f"Tile '{ctx.node.name}' repeats computed at run time")
            rels: list[Relation] = []
            for a in range(len(sx)):
                if int(reps[a]) == 1:
                    rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
                elif static(sx[a]) == 1:  # copies of one value: free, sized by `repeats`
                    rels.append(Link(Slot(y.name, a), Slot(y.name, a)))
            return rels
        shift = len(sy) - len(sx)
        rels = [Link(Slot(y.name, b), Slot(y.name, b)) for b in range(shift)]  # new leading axes: free
        for a in range(len(sx)):
            if static(sx[a]) == 1 and static(sy[a + shift]) != 1:
                rels.append(Link(Slot(y.name, a + shift), Slot(y.name, a + shift)))  # broadcast: free
            elif same_dim(sx[a], sy[a + shift]):
                rels.append(Link(Slot(x.name, a), Slot(y.name, a + shift)))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        if ctx.node.op == "Expand":
            _rewrite_size_input(ctx, rw, 1)
        else:  # Tile: the repeats of a size-1 input axis are that axis's new size
            sx, reps, y = ctx.shape(ctx.input(0)), ctx.const(ctx.input(1)), ctx.output(0)
            if sx is None or reps is None or y is None:
                return
            new = reps.reshape(-1).copy()
            for a in range(len(sx)):
                kept = rw.kept(y, a)
                if kept is not None and static(sx[a]) == 1:
                    new[a] = len(kept)
            rw.set_const_input(ctx.node, 1, new)


class ShapeRule(ChannelRule):
    """Shape: the axes whose sizes are read become barriers (only those actually used, when known).

    The other axes are self-linked: mapped, but coupled to nothing.
    """

    op_types = ("Shape", "Size")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape unknown")
        if ctx.node.op == "Size":
            read = set(range(r))
        else:
            start = int(ctx.attr("start", 0))
            end = int(ctx.attr("end", r))
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            axes = list(range(max(start, 0), min(end, r)))
            read = self._read_axes(y, axes)
        reason = f"{ctx.node.op} '{ctx.node.name}' reads the size of axis"
        # Axes whose size is not read must still count as mapped, or the analysis's coverage check
        # blocks them ("does not map axis"), which made every ``x.view(x.size(0), -1)`` block the
        # channels it flattens. A self-link mentions the axis without coupling it to anything.
        free: list[Relation] = [Link(Slot(x.name, a), Slot(x.name, a)) for a in range(r) if a not in read]
        return [Barrier(x.name, a, f"{reason} {a}") for a in sorted(read)] + free + [
            Barrier(y.name, None, "shape value")]

    @staticmethod
    def _read_axes(y, axes: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
        """Axes of the shape vector that consumers actually read (Gather with constant indices)."""
        read: set[int] = set()
        for consumer in y.outputs:
            if consumer.op == "Gather" and consumer.inputs[0] is y and len(consumer.inputs) > 1:
                idx = consumer.inputs[1]
                values = getattr(idx, "values", None)
                if values is not None:
                    read |= {axes[int(i)] for i in np.asarray(values).reshape(-1)}
                    continue
            return set(axes)
        return read
