"""Reshape, Flatten, Squeeze, Unsqueeze and Transpose.

Transpose permutes slots. The reshape family is decomposed into *blocks*: runs of consecutive input
axes and output axes with equal products (size-1 axes dropped).

* 1 → 1 block: identity.
* k → 1 (merge, e.g. Flatten of C×H×W): output element ``f`` belongs to factor ``i`` at index
  ``(f // inner_i) % size_i``. Exactly one factor can carry channels; the analysis picks the factor
  that owns weights (NCHW: C is outermost, NHWC: C is innermost) and blocks the others.
* 1 → k (split, e.g. C into groups×C/g for a channel shuffle): the same maps seen from the other side.
* k → m: barrier.

Reshape's target constant is rewritten with the new sizes (``-1`` entries are kept).

The two Reshapes of a decomposed GroupNorm (``[N, C, *S] → [N, G, L] → InstanceNormalization → [N, C, *S]``)
map channels to runs of ``L`` per in-group position instead (:func:`spa.rules.norm.group_norm_view`).

>>> _blocks((1, 8, 4, 4), (1, 128))   # size-1 axes carry no channels and are skipped
[((1, 2, 3), (1,))]
>>> _blocks((2, 12), (2, 3, 4))
[((0,), (0,)), ((1,), (1, 2))]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import Dim, shape_of
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Choice,
    Link,
    NodeContext,
    Relation,
    RewriteContext,
    Slot,
    dims_product,
    graph_changed,
    norm_axis,
    size_spec,
    static,
)
from spa.rules.moments import Result, Walk, merge_transfer
from spa.rules.norm import group_norm_reshape_relations, group_norm_view
from spa.rules.shape_reads import entry_sources

Block = tuple[tuple[int, ...], tuple[int, ...]]


def _pair_prefix(si: tuple[Dim, ...], so: tuple[Dim, ...]) -> tuple[list[Block], int, int]:
    """Pair blocks from the left until the end or the first axis that cannot be paired.

    Returns the blocks and the input/output positions where pairing stopped.
    """
    blocks: list[Block] = []
    i = j = 0
    while i < len(si) or j < len(so):
        if i < len(si) and static(si[i]) == 1:
            i += 1
            continue
        if j < len(so) and static(so[j]) == 1:
            j += 1
            continue
        if i >= len(si) or j >= len(so):
            break
        if static(si[i]) is None or static(so[j]) is None:
            if si[i] is not None and si[i] == so[j]:
                blocks.append(((i,), (j,)))
                i, j = i + 1, j + 1
                continue
            break
        ins, outs = [i], [j]
        pi, po = int(si[i]), int(so[j])  # type: ignore[arg-type]
        k, m = i + 1, j + 1
        ok = True
        while pi != po:
            if pi < po:
                if k >= len(si) or static(si[k]) is None:
                    ok = False
                    break
                pi *= int(si[k])  # type: ignore[arg-type]
                ins.append(k)
                k += 1
            else:
                if m >= len(so) or static(so[m]) is None:
                    ok = False
                    break
                po *= int(so[m])  # type: ignore[arg-type]
                outs.append(m)
                m += 1
        if not ok:
            break
        i, j = k, m
        # trailing size-1 axes inside the block are dropped by the size filter below
        blocks.append((tuple(a for a in ins if static(si[a]) != 1), tuple(b for b in outs if static(so[b]) != 1)))
    return blocks, i, j


def _blocks(si: tuple[Dim, ...], so: tuple[Dim, ...]) -> list[Block] | None:
    """Pair runs of input and output axes with equal products; None when they cannot be paired."""
    blocks, i, j = _pair_prefix(si, so)
    return blocks if i >= len(si) and j >= len(so) else None


def _pair(si: tuple[Dim, ...], so: tuple[Dim, ...]) -> tuple[list[Block], Block | None] | None:
    """Blocks paired from both ends, and the unpaired middle (a barrier), or None when nothing pairs.

    ``(batch, 2, 2, 16, 32) → (4*batch, 16, 32)`` (a dynamic window partition): the trailing
    ``16, 32`` pair exactly (equal suffix products mean equal prefix products: the flat index splits the
    same way on both sides), the symbolic ``batch, 2, 2 → 4*batch`` in the middle does not.

    >>> _pair(("B", 2, 2, 16, 32), ("4*B", 16, 32))
    ([((3,), (1,)), ((4,), (2,))], ((0, 1, 2), (0,)))
    """
    full = _blocks(si, so)
    if full is not None:
        return full, None
    left, i, j = _pair_prefix(si, so)
    rev, _, _ = _pair_prefix(tuple(reversed(si)), tuple(reversed(so)))
    right: list[Block] = []
    for ins, outs in rev:
        mi = tuple(sorted(len(si) - 1 - a for a in ins))
        mo = tuple(sorted(len(so) - 1 - b for b in outs))
        if (mi and mi[0] < i) or (mo and mo[0] < j):
            break
        right.append((mi, mo))
    end_i = min([b[0][0] for b in right if b[0]], default=len(si))
    end_j = min([b[1][0] for b in right if b[1]], default=len(so))
    mid_in = tuple(a for a in range(i, end_i) if static(si[a]) != 1)
    mid_out = tuple(b for b in range(j, end_j) if static(so[b]) != 1)
    if not mid_in or not mid_out or not (left or right):
        return None
    return left + list(reversed(right)), (mid_in, mid_out)


def _factor_index(sizes: list[int], k: int) -> np.ndarray:
    """For a flattened run of axes with ``sizes``, the index along axis ``k`` of each element."""
    inner = int(np.prod(sizes[k + 1:], dtype=np.int64))
    total = int(np.prod(sizes, dtype=np.int64))
    return (np.arange(total) // inner) % sizes[k]


def reshape_relations(ctx: NodeContext, x: gs.Tensor, y: gs.Tensor) -> list[Relation]:
    """Relations of any shape-only op from ``x`` to ``y`` (shapes from inference)."""
    si, so = ctx.shape(x), ctx.shape(y)
    op = f"{ctx.node.op} '{ctx.node.name}'"
    if si is None or so is None:
        return ctx.barrier_all(f"{op}: shapes unknown")
    paired = _pair(si, so)
    if paired is None:
        return ctx.barrier_all(f"{op}: cannot pair input axes {si} with output axes {so}")
    blocks, middle = paired
    rels: list[Relation] = []
    if middle is not None:
        reason = f"{op}: cannot pair input axes {list(middle[0])} with output axes {list(middle[1])} ({si} → {so})"
        rels += [Barrier(x.name, a, reason) for a in middle[0]] + [Barrier(y.name, b, reason) for b in middle[1]]
    for ins, outs in blocks:
        if len(ins) == 1 and len(outs) == 1:
            rels.append(Link(Slot(x.name, ins[0]), Slot(y.name, outs[0])))
        elif len(outs) == 1:
            sizes = [int(si[a]) for a in ins]  # type: ignore[arg-type]
            opts = tuple(Link(Slot(x.name, a), Slot(y.name, outs[0]), _factor_index(sizes, k), None)
                         for k, a in enumerate(ins))
            rels.append(Choice(opts, f"{op} merges axes {list(ins)}; only one of them can carry channels"))
        elif len(ins) == 1:
            sizes = [int(so[b]) for b in outs]  # type: ignore[arg-type]
            opts = tuple(Link(Slot(y.name, b), Slot(x.name, ins[0]), _factor_index(sizes, k), None)
                         for k, b in enumerate(outs))
            rels.append(Choice(opts, f"{op} splits axis {ins[0]}; only one factor can carry channels"))
        else:
            reason = f"{op} regroups axes {list(ins)} into {list(outs)}"
            rels += [Barrier(x.name, a, reason) for a in ins] + [Barrier(y.name, b, reason) for b in outs]
    return rels


def pairs_of(node: gs.Node) -> set[tuple[int, int]] | None:
    """The input → output axis pairs a Reshape-like node maps one to one (None when its shapes do not pair)."""
    si, so = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if si is None or so is None:
        return None
    paired = _pair(si, so)
    if paired is None:
        return None
    return {(ins[0], outs[0]) for ins, outs in paired[0] if len(ins) == 1 and len(outs) == 1}


def _self_reads(ctx: NodeContext) -> set[int]:
    """Output axes whose target entry is the run-time size of the input axis mapped onto them
    (``x.view(-1, x.size(-1))``: right whatever that axis is pruned to; see :mod:`spa.rules.shape_reads`)."""
    src = entry_sources(ctx.input(1))
    x, pairs = ctx.input(0), pairs_of(ctx.node)
    if src is None or x is None or pairs is None:
        return set()
    return {b for b, e in enumerate(src) if e is not None and e[0] == x.name and (e[1], b) in pairs}


def _private(ctx: NodeContext, concat: gs.Node | None) -> bool:
    """The target is built by ``concat`` directly (no Cast between), so a rewrite can give this Reshape a
    private copy of it when the Concat is shared with other nodes."""
    t = ctx.input(1)
    return concat is not None and t is not None and len(t.inputs) == 1 and t.inputs[0] is concat


def static_target(ctx: NodeContext, x: gs.Tensor, y: gs.Tensor) -> list[int] | None:
    """A constant Reshape target equivalent to a computed one, from the inferred shapes; None if none.

    Output axis ``b`` gets its static size, ``0`` ("copy input axis b", with ``allowzero=0``) when it
    has the same symbolic size as input axis ``b``, or ``-1`` (at most once). Dynamo exports share one
    computed ``Concat(Shape(x)[0], Shape(x)[1], 4, 8)`` between the Reshapes of every layer (with
    ``allowzero=1``); replacing it by ``[0, 0, 4, 8]`` with ``allowzero=0`` lets each Reshape be rewritten
    on its own. (A copied axis of size 0 is still 0, so dropping ``allowzero`` changes nothing.)

    >>> from types import SimpleNamespace as NS
    >>> ctx = NS(shape=lambda t: t.shape, attr=lambda n, d=None: d)
    >>> static_target(ctx, NS(shape=("B", "S", 32)), NS(shape=("B", "S", 4, 8)))
    [0, 0, 4, 8]
    """
    si, so = ctx.shape(x), ctx.shape(y)
    if si is None or so is None:
        return None
    target: list[int] = []
    for b, d in enumerate(so):
        if static(d) == 0:
            return None  # a literal 0 would read as "copy" without allowzero
        if static(d) is not None:
            target.append(int(d))  # type: ignore[arg-type]
        elif isinstance(d, str) and b < len(si) and si[b] == d:
            target.append(0)
        elif -1 not in target:
            target.append(-1)
        else:
            return None
    return target


class ReshapeRule(ChannelRule):
    """Reshape: block maps; the target constant is rewritten.

    A target computed at run time is traced through its ``Concat`` (constant pieces are rewritten,
    axes sized by run-time pieces are blocked); a computed target that is shared or not a ``Concat``
    is replaced by an equivalent constant (:func:`static_target`) when the shapes allow it.
    """

    op_types = ("Reshape",)

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """A merge of ``[N, C, *S]`` into ``[N, C·ΠS]`` repeats the moments of each channel over its ``ΠS`` features."""
        return merge_transfer(ctx.node, out, axis, walk)

    def refuses(self, ctx: NodeContext, values: Mapping[str, np.ndarray]) -> str | None:
        """The input's ``N = Πx`` elements cannot take the known target shape ``t``: with ``0`` copying
        the input's dim (``allowzero`` 0), ``Πt ≠ N`` without a ``-1``, or ``N`` not a multiple of the
        other dims' product with one (a window or patch layout exported for another image size)."""
        x, t = ctx.input(0), ctx.input(1)
        sx = ctx.shape(x)
        target = ctx.const(t) if t is not None and t.name not in values else values.get(t.name) if t else None
        if sx is None or target is None or not all(isinstance(d, (int, np.integer)) for d in sx):
            return None
        have = [int(d) for d in sx]  # type: ignore[arg-type]
        dims = [have[k] if v == 0 and not ctx.int_attr("allowzero", 0) and k < len(have) else int(v)
                for k, v in enumerate(np.asarray(target).reshape(-1))]
        n, rest = dims_product(have), dims_product(d for d in dims if d != -1)
        ok = (n % rest == 0) if -1 in dims and rest > 0 else rest == n
        return None if ok else f"Reshape '{ctx.node.name}' cannot view {tuple(have)} as {tuple(dims)}"

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            return ctx.barrier_all("Reshape without data")
        view = group_norm_view(ctx.node)
        rels = group_norm_reshape_relations(ctx, view) if view is not None else reshape_relations(ctx, x, y)
        spec = size_spec(ctx, 1)
        name = ctx.node.name
        if spec is None or not spec[2]:
            if static_target(ctx, x, y) is not None:
                return rels
            if spec is None or not _private(ctx, spec[1]):
                return rels + [Barrier(y.name, None, f"Reshape '{name}' target computed at run time (neither a "
                                                     "constant nor a Concat spa can rewrite)")]
        own = _self_reads(ctx)
        for b, v in enumerate(spec[0]):
            if v is None and b not in own:
                rels.append(Barrier(y.name, b, f"Reshape '{name}' target axis {b} computed at run time (not from "
                                               "the size of the input axis it maps)"))
        return rels

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        spec = size_spec(ctx, 1)
        so = ctx.shape(y)
        if x is None or y is None or so is None:
            raise graph_changed(ctx, "input, output or output shape missing")
        if all(rw.kept(y, b) is None for b in range(len(so))):
            return
        target = static_target(ctx, x, y) if spec is None or not spec[2] else None
        if target is not None:
            new_target = [v if v in (0, -1) or rw.kept(y, b) is None else rw.new_size(y, b, v)
                          for b, v in enumerate(target)]
            ctx.node.inputs[1] = gs.Constant(f"{ctx.node.name or id(ctx.node)}__spa_shape",
                                             np.asarray(new_target, dtype=np.int64))
            if "allowzero" in ctx.node.attrs:
                ctx.node.attrs["allowzero"] = 0
            return
        if spec is None or not (spec[2] or _private(ctx, spec[1])):
            raise graph_changed(ctx, "target shape neither constant nor static nor a Concat")
        values, concat, editable = spec
        new = []
        for b, v in enumerate(values):
            if v is None or v == -1 or rw.kept(y, b) is None:
                new.append(v)
            else:
                new.append(rw.new_size(y, b, int(so[b])))  # type: ignore[arg-type]
        rw.set_vector(ctx.node, 1, new, concat, private=not editable)


class ShapeOnlyRule(ChannelRule):
    """Flatten, Squeeze, Unsqueeze: block maps, nothing to rewrite (their attributes do not name sizes)."""

    op_types = ("Flatten", "Squeeze", "Unsqueeze")

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Flatten/Squeeze merging ``[N, C, *S]`` into ``[N, C·ΠS]``: the moments of each channel repeated
        over ``ΠS``."""
        return merge_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            return ctx.barrier_all(f"{ctx.node.op} without data")
        return reshape_relations(ctx, x, y)


class TransposeRule(ChannelRule):
    """Transpose: output axis ``i`` is input axis ``perm[i]``."""

    op_types = ("Transpose",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            return ctx.barrier_all(f"Transpose '{ctx.node.name}': shape unknown")
        perm = ctx.ints_attr("perm") or list(reversed(range(r)))
        return [Link(Slot(x.name, norm_axis(p, r)), Slot(y.name, i)) for i, p in enumerate(perm)]
