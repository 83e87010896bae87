"""Conv and ConvTranspose (1D/2D/3D), plain, depthwise and grouped.

Index maps (``C`` input channels, ``M`` output channels, ``g`` groups, ``cg = C/g``, ``mg = M/g``):

* ``g == 1``: the weight decouples input and output: input channel ``c`` is weight column ``c``
  (a *consumer* slice), output channel ``m`` is weight row ``m`` (a *producer* slice) and bias ``m``.
* depthwise-like (``cg == 1``): input channel ``c`` feeds output channels ``c*mg .. c*mg+mg-1``; they
  are one channel and ``group`` becomes the new input channel count.
* grouped (``cg > 1``): groups must stay equal-sized, so a channel is an *in-group position*: position
  ``j`` is input channels ``{i*cg + j}`` of every group ``i`` (and likewise for outputs). ``group`` is
  unchanged.
* grouped, whole groups (``ConvRule(whole_groups=True)``): a channel is one *group* instead: group
  ``i``'s input channels ``i*cg .. i*cg+cg-1`` and output channels ``i*mg .. i*mg+mg-1`` go together,
  so pruning leaves fewer groups of the same width (``group`` shrinks, the weight loses the removed
  groups' rows). Which of the two is faster is the latency table's call (:mod:`spa.latency.counts`).

>>> import numpy as np
>>> _positions(6, 3).tolist()   # 6 channels in groups of 3: positions
[0, 1, 2, 0, 1, 2]
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
    RewriteContext,
    Role,
    Slot,
    all_axes,
    attr_value,
    dims_product,
    static,
)
from spa.rules.views import Consumer, conv_transpose_view, conv_view

#: Conv/ConvTranspose attributes that change the computation (the latency-table key)
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape", "pads",
               "strides")


def _positions(n: int, per_group: int) -> np.ndarray:
    return np.arange(n) % per_group


def _self_positions(t: str, axis: int, n: int, per_group: int) -> Link:
    """Couple every channel of a slot with the same in-group position of the first group."""
    return Link(Slot(t, axis), Slot(t, axis), np.arange(n), _positions(n, per_group))


def conv_channels(t: gs.Tensor) -> int | None:
    """The input channel count a Conv reading ``t`` directly requires (weight ``[M, C/g, …]``), or None:
    what a dynamic channel axis of a graph input (optimum's ``pixel_values``) must be."""
    for node in t.outputs:
        if node.op == "Conv" and node.inputs and node.inputs[0] is t and len(node.inputs) > 1:
            w = node.inputs[1]
            if isinstance(w, gs.Constant) and len(w.shape) > 1:
                return int(w.shape[1]) * int(node.attrs.get("group", 1))
    return None


class ConvRule(ChannelRule):
    """Conv: weight [M, C/g, k...], bias [M].

    Args:
        whole_groups: a grouped Conv (``1 < group``, ``C/g > 1``) is pruned by whole groups (fewer groups,
            same width) rather than by in-group positions (same groups, narrower).
    """

    op_types = ("Conv",)

    def __init__(self, whole_groups: bool = False) -> None:
        self.whole_groups = whole_groups

    def __repr__(self) -> str:
        return f"ConvRule(whole_groups={self.whole_groups})"

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        sx, sw = ctx.shape(x), ctx.shape(w)
        if x is None or w is None or y is None or sx is None or sw is None or ctx.rank(y) is None:
            return ctx.barrier_all(f"Conv '{ctx.node.name}': shapes unknown")
        g = ctx.int_attr("group", 1)
        c, m = static(sx[1]), static(sw[0])
        cg = static(sw[1])
        if c is None and cg is not None:  # a dynamic channel axis (optimum's pixel_values): C = (C/g)·g
            c = cg * g
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
        elif self.whole_groups:  # group i: inputs i*cg.., outputs i*mg.. are one channel
            mg = m // g
            rels.append(Link(Slot(x.name, 1), Slot(y.name, 1), np.arange(c), (np.arange(c) // cg) * mg))
            rels.append(Link(Slot(y.name, 1), Slot(y.name, 1), np.arange(m), (np.arange(m) // mg) * mg))
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
        g = ctx.int_attr("group", 1)
        sw = ctx.shape(w)
        cg = static(sw[1]) if sw is not None else None
        if g > 1 and cg is not None and (cg == 1 or self.whole_groups):
            kept = rw.kept(x, 1)
            if kept is not None:
                ctx.node.attrs["group"] = len(kept) // cg

    def aligned_slots(self, ctx: NodeContext) -> tuple[Slot, ...]:
        """A depthwise or grouped Conv's input and output channels: its NCHWc kernels need whole blocks
        (not when pruned by whole groups: the group width stays, only the number of groups changes)."""
        x, y, w = ctx.input(0), ctx.output(0), ctx.input(1)
        if ctx.int_attr("group", 1) <= 1 or x is None or y is None:
            return ()
        sw = ctx.shape(w)
        if self.whole_groups and sw is not None and static(sw[1]) != 1:
            return ()
        return (Slot(x.name, 1), Slot(y.name, 1))

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """See :func:`spa.rules.views.conv_view`."""
        return conv_view(ctx.node, slot, labels)

    def cost(self, ctx: NodeContext) -> Cost | None:
        """``numel(y) · (C/g) · Πk`` (see :func:`conv_cost`)."""
        return conv_cost(ctx)

    def latency_key(self, ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[tuple[str, AttrValue], ...] | None:
        """See :func:`conv_latency_key`."""
        return conv_latency_key(ctx, in_shapes, out_shape, transpose=False)


class ConvTransposeRule(ChannelRule):
    """ConvTranspose: weight [C, M/g, k...], bias [M]."""

    op_types = ("ConvTranspose",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        sx, sw = ctx.shape(x), ctx.shape(w)
        if x is None or w is None or y is None or sx is None or sw is None or ctx.rank(y) is None:
            return ctx.barrier_all(f"ConvTranspose '{ctx.node.name}': shapes unknown")
        g = ctx.int_attr("group", 1)
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
        g = ctx.int_attr("group", 1)
        sx = ctx.shape(x)
        if g > 1 and sx is not None and static(sx[1]) == g:
            kept = rw.kept(x, 1)
            if kept is not None:
                ctx.node.attrs["group"] = len(kept)
        if "output_shape" in ctx.node.attrs:
            pass  # spatial only: unaffected by channel pruning

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """See :func:`spa.rules.views.conv_transpose_view`."""
        return conv_transpose_view(ctx.node, slot, labels)

    def cost(self, ctx: NodeContext) -> Cost | None:
        """``numel(x) · (M/g) · Πk`` (see :func:`conv_cost`)."""
        return conv_cost(ctx, transpose=True)

    def latency_key(self, ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[tuple[str, AttrValue], ...] | None:
        """See :func:`conv_latency_key`."""
        return conv_latency_key(ctx, in_shapes, out_shape, transpose=True)


def conv_cost(ctx: NodeContext, x_index: int = 0, w_index: int = 1, *, transpose: bool = False,
              scale: bool = True) -> Cost | None:
    """MACs of a (transposed) convolution.

    Conv, weight ``[M, C/g, k...]``: every output element ``y[n, m, p]`` sums ``C/g · Πk`` products, so
    ``MACs = N·M·ΠH_out · (C/g)·Πk = numel(y) · Π w.shape[1:]``.

    ConvTranspose, weight ``[C, M/g, k...]``: every input element scatters into ``M/g · Πk`` outputs, so
    ``MACs = N·C·ΠH_in · (M/g)·Πk = numel(x) · Π w.shape[1:]``.

    The MACs scale with the kept fraction of every axis of the weight (its channel axes ``M`` and ``C/g``
    — a depthwise weight's size-1 axis and its kernel axes are never pruned): ``scale`` False for the
    quantised operators, whose axes are all blocked.
    """
    x, w, y = ctx.input(x_index), ctx.input(w_index), ctx.output(0)
    sx, sw, sy = ctx.shape(x), ctx.shape(w), ctx.shape(y)
    if x is None or w is None or sx is None or sw is None or sy is None:
        return None
    per = dims_product(sw[1:2]) * dims_product(sw[2:])
    macs = (dims_product(sx) if transpose else dims_product(sy)) * per
    return Cost(macs, all_axes(w, ctx.shape(w)) if scale else ())


def conv_latency_key(ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                     out_shape: tuple[int, ...], *, transpose: bool) -> tuple[tuple[str, AttrValue], ...]:
    """Conv/ConvTranspose attributes that change the computation, defaults filled in, sorted.

    ``group`` is recomputed at the (pruned) shapes: Conv ``g = C / (C/g)`` (input channels over the
    weight's axis 1), ConvTranspose ``g = M / (M/g)`` (output channels over the weight's axis 1) — a
    depthwise layer keeps one group per kept channel. ``kernel_shape`` is dropped (the weight's shape
    says it); ``pads`` defaults to zeros unless ``auto_pad`` is set (ONNX forbids both).
    """
    node = ctx.node
    group = int(node.attrs.get("group", 1))
    if group > 1 and not transpose and len(in_shapes[0]) > 1:
        group = max(1, in_shapes[0][1] // max(1, in_shapes[1][1]))
    elif group > 1 and transpose and len(out_shape) > 1:
        group = max(1, out_shape[1] // max(1, in_shapes[1][1]))
    d = len(in_shapes[0]) - 2
    attrs: dict[str, AttrValue] = {"dilations": (1,) * d, "strides": (1,) * d}
    attrs |= {k: attr_value(v) for k, v in node.attrs.items() if k in _CONV_ATTRS}
    attrs["group"] = group
    attrs.pop("kernel_shape", None)
    if attrs.get("auto_pad", "NOTSET") in ("NOTSET", ""):
        attrs.pop("auto_pad", None)
        attrs.setdefault("pads", (0,) * (2 * d))
    else:
        attrs.pop("pads", None)
    return tuple(sorted(attrs.items()))


def whole_group_rules(rules: Sequence[ChannelRule]) -> tuple[ChannelRule, ...]:
    """``rules`` with every :class:`ConvRule` replaced by one that prunes grouped convolutions by whole
    groups."""
    return tuple(ConvRule(whole_groups=True) if type(r) is ConvRule else r for r in rules)


def has_grouped_conv(graph_nodes: Sequence[object]) -> bool:
    """Whether any Conv among ``graph_nodes`` (onnx-graphsurgeon nodes) is grouped but not depthwise
    (``1 < group`` and more than one input channel per group): where whole groups are an option."""
    for node in graph_nodes:
        if getattr(node, "op", None) != "Conv" or int(getattr(node, "attrs", {}).get("group", 1)) <= 1:
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None  # type: ignore[attr-defined]
        shape = getattr(w, "shape", None)
        if shape is not None and len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 1:
            return True
    return False
