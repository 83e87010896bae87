"""Concat, Split, Slice and Gather along a channel axis.

* Concat: input ``k``'s channel ``i`` is output channel ``offset_k + i``; other axes identity (also when a
  size on the concat axis is unknown — a KV cache's past ++ new along the sequence —, the concat axis
  then blocked).
* Split: output ``k``'s channel ``i`` is input channel ``offset_k + i``; split sizes are rewritten.
* Slice (step 1): output channel ``j`` is input channel ``start + j``; starts/ends are rewritten to the
  compacted positions. Input channels outside the slice are free. Steps other than 1 are barriers.
* Gather with constant 1-D indices: output ``j`` is input ``indices[j]``; indices are rewritten.

>>> _clamp_range(2, 2**62, 10)
(2, 10)
>>> _clamp_range(-3, -1, 10)
(7, 9)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.symbolic import shape_vector
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Explanation,
    Link,
    Member,
    NodeContext,
    Relation,
    RewriteContext,
    Role,
    Slot,
    graph_changed,
    norm_axis,
    static,
)
from spa.rules.moments import Result, Walk, concat_transfer


def _clamp_range(start: int, end: int, n: int) -> tuple[int, int]:
    """Normalise Slice start/end (step 1) against a dimension of size ``n``."""
    s = start + n if start < 0 else start
    e = end + n if end < 0 else end
    s, e = min(max(s, 0), n), min(max(e, 0), n)
    return s, max(s, e)


def _others(x: str, y: str, r: int, skip: int) -> list[Relation]:
    return [Link(Slot(x, a), Slot(y, a)) for a in range(r) if a != skip]


def _producer(t: gs.Tensor | None) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None


def _rotated_half(node: gs.Node) -> str | None:
    """The tensor ``x`` of RoPE's rotate-half ``Concat(Neg(Slice(x, h:)), Slice(x, :h))`` (HF's
    ``rotate_half``, every exporter), else None."""
    if len(node.inputs) != 2:
        return None
    neg, right = _producer(node.inputs[0]), _producer(node.inputs[1])
    if neg is None or right is None or neg.op != "Neg" or right.op != "Slice" or not right.inputs:
        return None
    left = _producer(neg.inputs[0]) if neg.inputs else None
    if left is None or left.op != "Slice" or not left.inputs or left.inputs[0] is not right.inputs[0]:
        return None
    return str(right.inputs[0].name)


class ConcatRule(ChannelRule):
    """Concat: offset maps on the concat axis."""

    op_types = ("Concat",)

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Concatenated along the concat axis (other axes: a reason)."""
        return concat_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        y = ctx.output(0)
        r = ctx.rank(y)
        if y is None or r is None:
            return ctx.barrier_all(f"Concat '{ctx.node.name}': shape unknown")
        ax = norm_axis(ctx.int_attr("axis", 0), r)
        ins = [ctx.input(k) for k in range(len(ctx.node.inputs))]
        shapes = [ctx.shape(t) for t in ins]
        unknown = next((k for k, st in enumerate(shapes) if st is None or static(st[ax]) is None), None)
        if unknown is not None:
            # a KV cache (past ++ new along the sequence): the concat axis has no offsets, the others
            # are still the same channels in every input and the output
            if any(t is None or st is None or len(st) != r for t, st in zip(ins, shapes)):
                return ctx.barrier_all(f"Concat '{ctx.node.name}': shape of input {unknown} unknown")
            reason = f"Concat '{ctx.node.name}': size of input {unknown} on axis {ax} unknown"
            rels: list[Relation] = [Barrier(y.name, ax, reason)]
            for t in ins:
                rels.append(Barrier(t.name, ax, reason))  # type: ignore[union-attr]
                rels += _others(t.name, y.name, r, ax)  # type: ignore[union-attr]
            return rels
        rels = []
        off = 0
        for t, st in zip(ins, shapes):
            n = int(st[ax])  # type: ignore[arg-type,index]
            if n:
                rels.append(Link(Slot(t.name, ax), Slot(y.name, ax), np.arange(n), off + np.arange(n)))  # type: ignore[union-attr]
            rels += _others(t.name, y.name, r, ax)  # type: ignore[union-attr]
            if ctx.is_const(t):
                rels += [Member(Slot(t.name, a), Role.PARAM) for a in range(r)]  # type: ignore[union-attr]
            off += n
        rotated = _rotated_half(ctx.node)
        if rotated is not None:
            rels.append(Barrier(y.name, ax, Explanation(
                f"Concat '{ctx.node.name}' rotates half of '{rotated}' (rotary embeddings: dims i and i+{off // 2} "
                "are a pair, mixed by a cos/sin table): spa prunes no rotary pairs, so this head_dim stays — it "
                "could only lose whole pairs, from Q, K and the cos/sin table together; prune the heads instead, or "
                "V's head_dim alone where V has its own projection (not one fused with Q and K) and no KV-cache "
                "input", ctx.node.name)))
        return rels


class SplitRule(ChannelRule):
    """Split: offset maps; sizes rewritten (attribute before opset 13, input after)."""

    op_types = ("Split",)

    def _sizes(self, ctx: NodeContext, n: int) -> list[int] | None:
        sizes = ctx.ints("split", 1 if ctx.opset >= 13 else None)
        if sizes is None:
            if ctx.input(1) is not None:
                return None
            k = len(ctx.node.outputs)
            chunk = -(-n // k)
            sizes = [min(chunk, n - i * chunk) for i in range(k)]
        return sizes

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x = ctx.input(0)
        sx = ctx.shape(x)
        if x is None or sx is None:
            return ctx.barrier_all(f"Split '{ctx.node.name}': shape unknown")
        r = len(sx)
        ax = norm_axis(ctx.int_attr("axis", 0), r)
        n = static(sx[ax])
        sizes = None if n is None else self._sizes(ctx, n)
        if sizes is None or sum(sizes) != n:
            return ctx.barrier_all(f"Split '{ctx.node.name}': split sizes unknown")
        rels: list[Relation] = []
        off = 0
        for out, s in zip(ctx.node.outputs, sizes):
            if out.name and s:
                rels.append(Link(Slot(out.name, ax), Slot(x.name, ax), np.arange(s), off + np.arange(s)))
                rels += _others(x.name, out.name, r, ax)
            off += s
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x = ctx.input(0)
        sx = ctx.shape(x)
        if x is None or sx is None:
            raise graph_changed(ctx, "input or input shape missing")
        ax = norm_axis(ctx.int_attr("axis", 0), len(sx))
        if rw.kept(x, ax) is None:
            return
        old = self._sizes(ctx, int(sx[ax]))  # type: ignore[arg-type]
        if old is None:
            raise graph_changed(ctx, "split sizes not constant")
        new = [rw.new_size(o, ax, s) for o, s in zip(ctx.node.outputs, old)]
        value = np.asarray(new, dtype=np.int64)
        if ctx.opset < 13:
            ctx.node.attrs["split"] = [int(v) for v in new]
        elif ctx.input(1) is not None:
            rw.set_const_input(ctx.node, 1, value)
        else:
            ctx.node.inputs.append(gs.Constant(f"{ctx.node.name}__spa_split", value))
            ctx.node.attrs.pop("num_outputs", None)


class SliceRule(ChannelRule):
    """Slice with constant starts/ends/axes/steps."""

    op_types = ("Slice",)

    def _params(self, ctx: NodeContext, r: int) -> list[tuple[int, int, int, int]] | None:
        """(axis, start, end, step) per sliced axis, or None when computed at run time."""
        if ctx.opset < 10:
            starts, ends = ctx.ints("starts", None), ctx.ints("ends", None)
            axes, steps = ctx.ints("axes", None), None
        else:
            starts, ends = ctx.ints("", 1), ctx.ints("", 2)
            axes = ctx.ints("", 3) if ctx.input(3) is not None else None
            steps = ctx.ints("", 4) if ctx.input(4) is not None else None
            if (ctx.input(3) is not None and axes is None) or (ctx.input(4) is not None and steps is None):
                return None
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        return [(norm_axis(a, r), s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        sx = ctx.shape(x)
        if x is None or y is None or sx is None:
            return ctx.barrier_all(f"Slice '{ctx.node.name}': shape unknown")
        r = len(sx)
        params = self._params(ctx, r)
        if params is None:
            return self._computed(ctx, x, y, r)
        sliced = {p[0]: p for p in params}
        rels: list[Relation] = []
        for a in range(r):
            if a not in sliced:
                rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
                continue
            _, s, e, step = sliced[a]
            n = static(sx[a])
            if step != 1 or n is None:
                reason = f"Slice '{ctx.node.name}' on axis {a} has step {step} or unknown size"
                rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
                continue
            s, e = _clamp_range(s, e, n)
            if e > s:
                rels.append(Link(Slot(y.name, a), Slot(x.name, a), np.arange(e - s), s + np.arange(e - s)))
        return rels

    def _computed(self, ctx: NodeContext, x: gs.Tensor, y: gs.Tensor, r: int) -> list[Relation]:
        """Starts/ends (or steps) computed at run time (``cos[:seq]``): the sliced axes are blocked, the
        others map through — possible when the axes are known (constant, or implied by ``starts``'s length)."""
        name = ctx.node.name
        if ctx.opset < 10:
            return ctx.barrier_all(f"Slice '{name}': starts/ends computed at run time")
        if ctx.input(3) is not None:
            axes = ctx.ints("", 3)
        else:
            ss = ctx.shape(ctx.input(1))
            n = static(ss[0]) if ss is not None and len(ss) == 1 else None
            axes = list(range(n)) if n is not None else None
        if axes is None:
            return ctx.barrier_all(f"Slice '{name}': starts/ends and axes computed at run time")
        starts, ends = shape_vector(ctx.input(1)), shape_vector(ctx.input(2))
        steps = shape_vector(ctx.input(4)) if ctx.input(4) is not None else [1] * len(axes)
        sx = ctx.shape(x) or ()
        def whole(k: int, a: int) -> bool:
            """Entry ``k`` provably keeps all of axis ``a`` (start 0, step 1, end >= its size)."""
            n = static(sx[a])
            if starts is None or ends is None or steps is None or n is None:
                return False
            if k >= min(len(starts), len(ends), len(steps)):
                return False
            end = ends[k]
            return starts[k] == 0 and steps[k] == 1 and isinstance(end, int) and end >= n

        sliced = {a for k, a in enumerate(norm_axis(a, r) for a in axes) if not whole(k, a)}
        rels: list[Relation] = []
        for a in range(r):
            if a in sliced:
                reason = f"Slice '{name}' on axis {a}: starts/ends computed at run time"
                rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
            else:
                rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x = ctx.input(0)
        sx = ctx.shape(x)
        if x is None or sx is None:
            raise graph_changed(ctx, "input or input shape missing")
        params = self._params(ctx, len(sx))
        if params is None:  # computed starts/ends: only unsliced axes can be pruned, nothing to rewrite
            return
        starts, ends = [], []
        for a, s, e, _ in params:
            kept = rw.kept(x, a)
            if kept is None:
                starts.append(s)
                ends.append(e)
                continue
            cs, ce = _clamp_range(s, e, int(sx[a]))  # type: ignore[arg-type]
            new_s = int(np.searchsorted(kept, cs))
            new_e = int(np.searchsorted(kept, ce))
            starts.append(new_s)
            ends.append(new_e)
        if ctx.opset < 10:
            ctx.node.attrs["starts"], ctx.node.attrs["ends"] = starts, ends
        else:
            rw.set_const_input(ctx.node, 1, np.asarray(starts))
            rw.set_const_input(ctx.node, 2, np.asarray(ends))


class GatherRule(ChannelRule):
    """Gather with constant 1-D indices selects channels; anything else blocks the gathered axis."""

    op_types = ("Gather",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, idx, y = ctx.input(0), ctx.input(1), ctx.output(0)
        sx, si = ctx.shape(x), ctx.shape(idx)
        if x is None or y is None or sx is None or si is None:
            return ctx.barrier_all(f"Gather '{ctx.node.name}': shape unknown")
        r, q = len(sx), len(si)
        ax = norm_axis(ctx.int_attr("axis", 0), r)
        rels: list[Relation] = [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(ax)]
        rels += [Link(Slot(x.name, a), Slot(y.name, a + q - 1)) for a in range(ax + 1, r)]
        values = ctx.const(idx)
        n = static(sx[ax])
        if values is None or q != 1 or n is None:
            rels.append(Barrier(x.name, ax, f"Gather '{ctx.node.name}' selects along axis {ax} with "
                                            "run-time or scalar indices"))
            return rels
        v = np.where(values < 0, values + n, values).astype(np.int64)
        rels.append(Link(Slot(y.name, ax), Slot(x.name, ax), np.arange(len(v)), v))
        return rels

    def refuses(self, ctx: NodeContext, values: Mapping[str, np.ndarray]) -> str | None:
        """Indices past the ``P`` rows (along ``axis``) of the constant table they read: known index values
        outside ``[-P, P)``, or run-time indices with an axis longer than ``P`` — position ids ``0..S-1``
        of a sequence longer than its position table. (A vocabulary is far larger than any representative
        sequence, so a word-embedding lookup is not refused at real sizes; a toy vocabulary smaller than the
        sequence only makes the chosen size smaller.)"""
        x, idx = ctx.input(0), ctx.input(1)
        sx, si = ctx.shape(x), ctx.shape(idx)
        if not ctx.is_const(x) or idx is None or ctx.is_const(idx) or not sx or not si:
            return None
        rows = static(sx[norm_axis(ctx.int_attr("axis", 0), len(sx))])
        known = values.get(idx.name)
        if known is not None and known.size:
            reach = int(max(known.max() + 1, -known.min()))
        else:
            reach = max((int(d) for d in si if isinstance(d, (int, np.integer))), default=0)
        if rows is None or reach <= rows:
            return None
        return (f"Gather '{ctx.node.name}' reads {reach} positions from a table of {rows} rows "
                f"(use a sequence of at most {rows})")

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x, idx = ctx.input(0), ctx.input(1)
        sx = ctx.shape(x)
        if x is None or sx is None:
            raise graph_changed(ctx, "input or input shape missing")
        ax = norm_axis(ctx.int_attr("axis", 0), len(sx))
        kept_in = rw.kept(x, ax)
        if kept_in is None:
            return
        values = ctx.const(idx)
        if values is None:
            raise graph_changed(ctx, "indices not constant")
        n = int(sx[ax])  # type: ignore[arg-type]
        v = np.where(values < 0, values + n, values)
        kept_out = rw.kept(ctx.output(0), ax)
        if kept_out is not None:
            v = v[kept_out]
        rw.set_const_input(ctx.node, 1, np.searchsorted(kept_in, v))
