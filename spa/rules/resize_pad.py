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
import onnx_graphsurgeon as gs

from spa.graph.symbolic import shape_vector
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    NodeContext,
    Relation,
    RewriteContext,
    Slot,
    graph_changed,
    norm_axis,
    same_dim,
    size_spec,
    static,
)
from spa.rules.moments import Result, Walk, same_axis_transfer
from spa.rules.norm import group_norm_view
from spa.rules.reshape_transpose import pairs_of
from spa.rules.shape_reads import self_consistent_reads


def _same_size_links(ctx: NodeContext) -> list[Relation]:
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if x is None or y is None or sx is None or sy is None or len(sx) != len(sy):
        return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shapes unknown")
    return [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(len(sx)) if same_dim(sx[a], sy[a])]


def _rewrite_size_input(ctx: NodeContext, rw: RewriteContext, index: int, axes: list[int] | None = None,
                        value: np.ndarray | None = None) -> None:
    """Write the new sizes of pruned output axes into constant input ``index``.

    Entry ``a`` describes output axis ``axes[a]`` when ``axes`` is given, else the axes are aligned
    from the right (Expand's shape may be shorter than the output rank). Entries 1 and -1 are kept
    (an Expand entry 1 means "the input's size"). ``value`` replaces a computed input by a constant.
    """
    t = ctx.input(index)
    v = ctx.const(t) if value is None else value
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
    if value is not None:
        ctx.node.inputs[index] = gs.Constant(f"{ctx.node.name or id(ctx.node)}__spa_shape", new.astype(np.int64))
        return
    rw.set_const_input(ctx.node, index, new)


def static_expand_shape(ctx: NodeContext) -> np.ndarray | None:
    """A constant Expand shape equivalent to a computed one, from the inferred shapes; None if none.

    Output axis ``b`` gets its static size, or ``1`` ("the input's size") when the aligned input axis
    has the same symbolic size (dynamic batch/sequence). Dynamo exports with dynamic axes compute the
    shape of GQA's ``repeat_kv`` expand as ``Concat(Shape(x)[0], [2], [2], Shape(x)[1], [8])``.
    """
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None or len(sy) < len(sx):
        return None
    shift = len(sy) - len(sx)
    out: list[int] = []
    for b, d in enumerate(sy):
        a = b - shift
        if static(d) is not None:
            out.append(int(d))  # type: ignore[arg-type]
        elif a >= 0 and same_dim(sx[a], d):
            out.append(1)
        else:
            return None
    return np.asarray(out, dtype=np.int64)


class ResizeRule(ChannelRule):
    """Resize / Upsample: unscaled axes are identity; constant ``sizes`` are rewritten."""

    op_types = ("Resize", "Upsample")

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Unchanged on the channel axis."""
        return same_axis_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        rels = _same_size_links(ctx)
        if ctx.node.op == "Resize" and ctx.input(3) is not None and not ctx.is_const(ctx.input(3)):
            y = ctx.output(0)
            sy = ctx.shape(y)
            for r in list(rels):  # links exist only when the output's shape is known
                if isinstance(r, Link) and y is not None and sy is not None and static(sy[r.b.axis]) not in (None, 1):
                    rels.append(Barrier(y.name, r.b.axis, f"Resize '{ctx.node.name}' sizes computed at run time"))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        if ctx.node.op == "Resize" and ctx.input(3) is not None:
            axes = ctx.attr("axes")
            listed = [int(a) for a in axes] if isinstance(axes, (list, tuple)) and axes else None
            _rewrite_size_input(ctx, rw, 3, listed)


class PadRule(ChannelRule):
    """Pad: unpadded axes are identity (padding a channel axis is a barrier)."""

    op_types = ("Pad",)

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Unchanged on the channel axis (padding values are not modelled)."""
        return same_axis_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        return _same_size_links(ctx)


def tile_repeats(ctx: NodeContext) -> tuple[list[int | None], gs.Node | None, bool, bool] | None:
    """Tile ``repeats`` entry by entry: :func:`size_spec`, or else the symbolically evaluated vector.

    Returned as ``(entries, concat, editable, evaluated)``. A computed vector that is not a Concat is
    evaluated by :func:`spa.graph.symbolic.shape_vector`: when every entry is a provable int it is
    treated as a constant (``evaluated``: the rewrite replaces it with a constant); otherwise its
    non-int entries are None (run-time values) and it is not editable. None when it cannot be evaluated.
    """
    spec = size_spec(ctx, 1)
    if spec is not None:
        return spec[0], spec[1], spec[2], False
    vec = shape_vector(ctx.input(1))
    if vec is None:
        return None
    if all(isinstance(v, int) for v in vec):
        return [int(v) for v in vec], None, True, True  # type: ignore[arg-type]
    return [v if isinstance(v, int) else None for v in vec], None, False, False


def _write_spec(ctx: NodeContext, rw: RewriteContext, index: int, new: list[int | None]) -> None:
    """Write ``new`` back: into the constant input, or into the constant pieces of its Concat."""
    spec = size_spec(ctx, index)
    if spec is None:
        raise graph_changed(ctx, f"input {index} neither constant nor a Concat of constants")
    _, concat, _ = spec
    rw.set_vector(ctx.node, index, new, concat)


class ExpandTileRule(ChannelRule):
    """Expand / Tile: axes left unchanged are identity; Expand's shape / Tile's repeats are rewritten.

    A computed Expand shape is replaced, when a pruned axis needs it, by the constant
    :func:`static_expand_shape`. Otherwise a shape or repeats built by a ``Concat`` is read entry by
    entry (:func:`size_spec`): an axis whose entry is computed at run time is a barrier, constant
    entries are rewritten in the Concat (an axis whose entry needs rewriting in a Concat shared with
    other nodes is a barrier too). Tile repeats computed otherwise are evaluated symbolically
    (:func:`tile_repeats`): provably constant ones are treated as a constant and replaced by one when
    rewritten; in others each run-time entry is a barrier and nothing can be rewritten. Anything else
    computed at run time blocks the node.
    """

    op_types = ("Expand", "Tile")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        sx, sy = ctx.shape(x), ctx.shape(y)
        if x is None or y is None or sx is None or sy is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shapes unknown")
        if ctx.node.op == "Tile":
            return self._tile(ctx, x, y, sx)
        spec = None
        if not ctx.is_const(ctx.input(1)) and static_expand_shape(ctx) is None:
            spec = size_spec(ctx, 1)
            if spec is None or len(spec[0]) > len(sy):
                return ctx.barrier_all(f"Expand '{ctx.node.name}' shape computed at run time")
        shift = len(sy) - len(sx)
        rels: list[Relation] = [Link(Slot(y.name, b), Slot(y.name, b)) for b in range(shift)]  # new leading: free
        for a in range(len(sx)):
            if static(sx[a]) == 1 and static(sy[a + shift]) != 1:
                rels.append(Link(Slot(y.name, a + shift), Slot(y.name, a + shift)))  # broadcast: free
            elif same_dim(sx[a], sy[a + shift]):
                rels.append(Link(Slot(x.name, a), Slot(y.name, a + shift)))
        if spec is not None:
            values, _, editable = spec
            off = len(sy) - len(values)
            for e, v in enumerate(values):
                b = e + off
                if v is None:
                    rels.append(Barrier(y.name, b, f"Expand '{ctx.node.name}' shape entry {e} computed at run time"))
                elif v not in (1, -1) and not editable:
                    rels.append(Barrier(y.name, b, f"Expand '{ctx.node.name}' shape entry {e} sits in a "
                                                   "computed shape shared with other nodes"))
        return rels

    @staticmethod
    def _tile(ctx: NodeContext, x, y, sx) -> list[Relation]:  # type: ignore[no-untyped-def]
        spec = tile_repeats(ctx)
        if spec is None or len(spec[0]) != len(sx):
            return ctx.barrier_all(f"Tile '{ctx.node.name}' repeats computed at run time")
        reps, concat, editable, _ = spec
        where = "shared with other nodes" if concat is not None else "spa cannot rewrite"
        rels: list[Relation] = []
        for a in range(len(sx)):
            r = reps[a]
            if r is None:
                reason = f"Tile '{ctx.node.name}' repeats of axis {a} computed at run time"
                rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
            elif r == 1:
                rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
            elif static(sx[a]) == 1:  # copies of one value: free, sized by `repeats`
                rels.append(Link(Slot(y.name, a), Slot(y.name, a)))
                if not editable:
                    rels.append(Barrier(y.name, a, f"Tile '{ctx.node.name}' repeats of axis {a} sit in a "
                                                   f"computed vector {where}"))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        y = ctx.output(0)
        if y is None or y.shape is None:
            return
        if ctx.node.op == "Expand":
            if ctx.is_const(ctx.input(1)):
                _rewrite_size_input(ctx, rw, 1)
                return
            if all(rw.kept(y, b) is None for b in range(len(y.shape))):
                return
            value = static_expand_shape(ctx)
            if value is not None:
                _rewrite_size_input(ctx, rw, 1, value=value)
                return
            spec = size_spec(ctx, 1)
            if spec is None:
                raise graph_changed(ctx, "shape input neither constant nor a Concat of constants")
            values = list(spec[0])
            off = len(y.shape) - len(values)
            for e, v in enumerate(values):
                kept = rw.kept(y, e + off)
                if kept is not None and v is not None and v not in (1, -1):
                    values[e] = len(kept)
            _write_spec(ctx, rw, 1, values)
            return
        # Tile: the repeats of a size-1 input axis are that axis's new size
        sx, repeats = ctx.shape(ctx.input(0)), tile_repeats(ctx)
        if sx is None or repeats is None or len(repeats[0]) != len(sx):
            return
        reps, concat, _, evaluated = list(repeats[0]), repeats[1], repeats[2], repeats[3]
        changed = False
        for a in range(len(sx)):
            kept = rw.kept(y, a)
            if kept is not None and static(sx[a]) == 1 and reps[a] is not None and reps[a] != len(kept):
                reps[a] = len(kept)
                changed = True
        if evaluated:  # a computed vector proven constant: the new repeats replace it
            if changed:
                ctx.node.inputs[1] = gs.Constant(f"{ctx.node.name or id(ctx.node)}__spa_repeats",
                                                 np.asarray(reps, dtype=np.int64))
            return
        if changed or concat is None:
            rw.set_vector(ctx.node, 1, reps, concat)


def _group_norm_input(reshape: gs.Node) -> gs.Tensor | None:
    """The input of the decomposed GroupNorm that ``reshape`` closes (its output has that input's channels)."""
    view = group_norm_view(reshape)
    return view.first.inputs[0] if view is not None and view.last is reshape else None


class ShapeRule(ChannelRule):
    """Shape: the axes whose sizes are read become barriers (only those actually used, when known).

    The other axes are self-linked: mapped, but coupled to nothing. Sizes read only to be kept — every
    use ends in the target of a Reshape of the same tensor that maps the read axis onto itself
    (:func:`spa.rules.shape_reads.self_consistent_reads`) — are not barriers: the Reshape reads the
    pruned size at run time.
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
            start = ctx.int_attr("start", 0)
            end = ctx.int_attr("end", r)
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            axes = list(range(max(start, 0), min(end, r)))
            # sizes read only to keep them (``x.view(-1, x.size(-1))``) stay right after pruning
            read = set() if self_consistent_reads(y, x, pairs_of, _group_norm_input) else self._read_axes(y, axes)
        reason = f"{ctx.node.op} '{ctx.node.name}' reads the size of axis"
        # Axes whose size is not read must still count as mapped, or the analysis's coverage check
        # blocks them ("does not map axis"), which made every ``x.view(x.size(0), -1)`` block the
        # channels it flattens. A self-link mentions the axis without coupling it to anything.
        free: list[Relation] = [Link(Slot(x.name, a), Slot(x.name, a)) for a in range(r) if a not in read]
        return [Barrier(x.name, a, f"{reason} {a}") for a in sorted(read)] + free + [
            Barrier(y.name, None, "shape value")]

    def shape_value(self, ctx: NodeContext) -> np.ndarray | None:
        """Shape: ``shape(x)[start:end]``; Size: ``Π shape(x)`` (int64), when that shape is concrete."""
        sx = ctx.shape(ctx.input(0))
        if sx is None or any(static(d) is None or int(d) < 0 for d in sx):  # type: ignore[arg-type]
            return None
        dims = [int(d) for d in sx]  # type: ignore[arg-type]
        if ctx.node.op == "Size":
            return np.asarray(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
        r = len(dims)
        start, end = ctx.int_attr("start", 0), ctx.int_attr("end", r)
        return np.asarray(dims[slice(start, end)], dtype=np.int64)

    @staticmethod
    def _read_axes(y, axes: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
        """Axes of the shape vector that consumers actually read.

        Understood readers: Gather with constant indices and Slice with constant starts/ends (axis 0),
        also behind a Cast (tf2onnx casts shape vectors). Anything else reads every axis.
        """
        read: set[int] = set()
        for consumer in y.outputs:
            if consumer.op == "Cast" and consumer.outputs:
                read |= ShapeRule._read_axes(consumer.outputs[0], axes)
                continue
            if consumer.inputs and consumer.inputs[0] is y and len(consumer.inputs) > 2 and consumer.op == "Slice":
                starts = getattr(consumer.inputs[1], "values", None)
                ends = getattr(consumer.inputs[2], "values", None)
                steps = getattr(consumer.inputs[4], "values", None) if len(consumer.inputs) > 4 else None
                if (starts is not None and ends is not None
                        and (steps is None or int(np.asarray(steps).reshape(-1)[0]) == 1)):
                    s0, e0 = int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
                    read |= set(axes[slice(s0, e0)])
                    continue
            if consumer.op == "Gather" and consumer.inputs[0] is y and len(consumer.inputs) > 1:
                idx = consumer.inputs[1]
                values = getattr(idx, "values", None)
                if values is not None:
                    read |= {axes[int(i)] for i in np.asarray(values).reshape(-1)}
                    continue
            return set(axes)
        return read

