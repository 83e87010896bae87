"""Quantisation: QDQ nodes map channels through; quantised operators (QOperator format) are barriers.

A QDQ model keeps float operators and wraps their inputs in ``QuantizeLinear`` → ``DequantizeLinear``
pairs (and its weights in a ``DequantizeLinear`` of an int8 initializer). Channels flow through both:

* data input ↔ output: identity on every axis (quantisation is elementwise);
* a *per-axis* ``scale`` / ``zero_point`` (1-D, quantised along attribute ``axis``) is linked to that
  axis and is a ``param`` member: it is sliced with the channel it scales;
* a *per-tensor* (scalar) scale / zero point couples nothing;
* *blocked* quantisation (``block_size`` > 0, opset 21+: scale of the input's rank, one scale per block
  of the quantised axis) maps every other axis and blocks the quantised one (removing a channel would
  shift the blocks);
* a *constant* data input — the int8 weight behind a ``DequantizeLinear``, or a float weight behind a
  ``QuantizeLinear`` — is linked to the output axis by axis, so the quantised weight, its scales and
  zero points are sliced together. A rule sees one node: it cannot tell which axis the op using the
  dequantised weight reads (consumer) and which it writes (producer), so every axis of the constant is
  a ``consumer`` member. That is safe: the masked twin then also zeroes the removed channels' producer
  rows, and a removed channel never reaches an output of the masked twin anyway. Axes of size 1 and
  kernel axes (2 and up of a constant of rank >= 3) are linked but are not members: they never carry
  channels (a float Conv weight's kernel axes are not members either).

``DynamicQuantizeLinear`` (per-tensor, computed scale) is identity between ``x`` and ``y``. Its scale
comes from ``min(0, min x)`` and ``max(0, max x)`` over the whole tensor, so the masked twin multiplies
the removed channels of ``x`` by 0 first (:meth:`DynamicQuantizeRule.twin`): the pruned model, which does
not have them, then quantises with exactly the same scale and zero point.

``ConvInteger`` and ``MatMulInteger`` (what ONNX Runtime's ``quantize_dynamic`` writes, fed by
``DynamicQuantizeLinear``) compute ``Σ (x - x_zp)·(w - w_zp)`` in integers: they couple channels as their
float twins Conv and MatMul do, a per-output-channel ``w_zero_point`` is a ``param`` member sliced with
its channel, and a removed input channel's weight slice is set to the zero point in the masked twin
(:meth:`~spa.rules.base.ChannelRule.neutral_value`), so its products are 0. Their MACs are the float
twins' and scale with the kept channels. The float scale of the result (``Mul`` by
``x_scale · w_scale``, per channel for per-channel quantisation) is an ordinary elementwise ``Mul``.

``QLinearConv``, ``QLinearMatMul`` and ORT's ``com.microsoft`` QOperator kernels hold their weights
quantised inside one node with output scales that spa does not rewrite: every axis they touch is
blocked, with a reason that says how to get a QDQ model instead.

>>> from spa.rules.base import Slot
>>> [r.slot for r in _param_links("s", 0, "y", 1, const=True) if isinstance(r, Member)]
[Slot(tensor='s', axis=0)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import Dim
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Choice,
    Cost,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    Statistic,
    Tag,
    TwinContext,
    norm_axis,
    same_dim,
    static,
)
from spa.rules.conv import ConvRule, conv_cost
from spa.rules.gemm_matmul import MatMulRule, matmul_cost
from spa.rules.views import Consumer

MS_DOMAIN = "com.microsoft"

#: quantised operators of the default domain (QOperator format) that stay barriers
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul")
#: ORT's quantised contrib kernels (com.microsoft)
MS_QOPERATOR_OPS = (
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat",
    "QLinearWhere", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearReduceMean", "QGemm",
    "QLinearConvTranspose", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "MatMulBnb4",
    "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QOrderedMatMul", "QOrderedLayerNormalization",
)

_QDQ_HINT = "quantize in QDQ format instead (quant_format=QuantFormat.QDQ) or prune before quantizing"


def _param_links(tensor: str, t_axis: int, out: str, o_axis: int, *, const: bool) -> list[Relation]:
    """A per-channel vector linked to ``out``'s axis; a constant one is a ``param`` member."""
    rels: list[Relation] = [Link(Slot(tensor, t_axis), Slot(out, o_axis))]
    if const:
        rels.append(Member(Slot(tensor, t_axis), Role.PARAM))
    return rels


def _weight_axes(shape: tuple[Dim, ...]) -> list[int]:
    """Axes of a quantised constant that may carry channels: not of size 1, and not kernel axes.

    Conv/ConvTranspose kernels (rank >= 3) carry channels on their first two axes only; the others are
    spatial and never prunable, so they are not made members (which would report them as blocked groups).

    >>> _weight_axes((16, 8, 3, 3)), _weight_axes((1, 8, 1, 1)), _weight_axes((8, 4))
    ([0, 1], [1], [0, 1])
    """
    axes = range(len(shape)) if len(shape) <= 2 else range(2)
    return [a for a in axes if static(shape[a]) != 1]


class QuantizeDequantizeRule(ChannelRule):
    """QuantizeLinear / DequantizeLinear (``x, scale[, zero_point] -> y``)."""

    op_types: tuple[str, ...] = ("QuantizeLinear", "DequantizeLinear")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, scale, zp, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        label = f"{ctx.node.op} '{ctx.node.name}'"
        sx, sy = ctx.shape(x), ctx.shape(y)
        if x is None or y is None or sx is None or sy is None or len(sx) != len(sy):
            return ctx.barrier_all(f"{label}: shapes unknown")
        r = len(sx)
        rels: list[Relation] = [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(r)]
        if ctx.is_const(x):
            rels += [Member(Slot(x.name, a), Role.CONSUMER) for a in _weight_axes(sx)]
        block = ctx.int_attr("block_size", 0)
        axis = ctx.int_attr("axis", 1)
        for q in (scale, zp):
            if q is None:
                continue
            sq = ctx.shape(q)
            if sq is None:
                return ctx.barrier_all(f"{label}: shape of '{q.name}' unknown")
            if len(sq) == 0 or (len(sq) == 1 and static(sq[0]) == 1 and block == 0):
                continue  # per-tensor (ONNX Runtime treats a one-element vector so too): couples nothing
            if r == 0 or not -r <= axis < r:
                return ctx.barrier_all(f"{label}: axis {axis} out of range for rank {r}")
            ax = norm_axis(axis, r)
            if len(sq) == 1 and block == 0:
                if not same_dim(sq[0], sx[ax]):
                    return ctx.barrier_all(
                        f"{label}: '{q.name}' has {sq[0]} entries but axis {ax} of '{x.name}' has {sx[ax]}")
                rels += _param_links(q.name, 0, y.name, ax, const=ctx.is_const(q))
            elif len(sq) == r:
                reason = f"{label} quantises blocks along axis {ax}: removing a channel would shift the blocks"
                rels += [Barrier(x.name, ax, reason), Barrier(y.name, ax, reason), Barrier(q.name, ax, reason)]
                for a in range(r):
                    if a != ax and same_dim(sq[a], sx[a]):
                        rels += _param_links(q.name, a, y.name, a, const=ctx.is_const(q))
            else:
                return ctx.barrier_all(f"{label}: scale/zero point '{q.name}' of rank {len(sq)} not understood")
        return rels


    def neutral_value(self, ctx: NodeContext, t: gs.Constant, values: np.ndarray) -> np.ndarray | int | None:
        """DequantizeLinear of ``t``: ``(q - zero_point)·scale`` is 0 at ``q = zero_point`` — the scalar,
        the per-axis vector broadcast along ``axis``, or a full-shape (blocked) zero point; 0 without one."""
        if ctx.node.op != "DequantizeLinear" or ctx.node.inputs[0] is not t:
            return None
        zp = ctx.node.inputs[2] if len(ctx.node.inputs) > 2 and isinstance(ctx.node.inputs[2], gs.Constant) else None
        if zp is None:
            return 0
        z = np.asarray(zp.values)
        if z.ndim == 0 or z.size == 1:
            return int(z.reshape(-1)[0])
        if z.ndim == 1:  # per-axis zero point along the DequantizeLinear's axis
            axis = int(ctx.node.attrs.get("axis", 1)) % values.ndim
            shape = [1] * values.ndim
            shape[axis] = z.shape[0]
            return np.broadcast_to(z.reshape(shape), values.shape)
        return np.broadcast_to(z, values.shape) if z.shape == values.shape else 0


class DynamicQuantizeRule(ChannelRule):
    """DynamicQuantizeLinear (``x -> y, y_scale, y_zero_point``): per-tensor, identity between x and y."""

    op_types = ("DynamicQuantizeLinear",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None or ctx.rank(y) != r:
            return ctx.barrier_all(f"DynamicQuantizeLinear '{ctx.node.name}': shapes unknown")
        return [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(r)]

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """Zero the removed elements of ``x`` before quantising: the scale is computed over the whole
        tensor (and always spans 0), so the twin then quantises exactly as the pruned model does."""
        x = ctx.input(0)
        shape = ctx.shape(x)
        if x is None or shape is None:
            return
        mask: np.ndarray | None = None
        for axis, d in enumerate(shape):
            if not isinstance(d, int):
                continue
            m = tw.mask(x, axis, d)
            if m is None:
                continue
            view = [1] * len(shape)
            view[axis] = d
            mask = m.reshape(view) if mask is None else mask & m.reshape(view)
        if mask is not None:
            ctx.node.inputs[0] = tw.op("Mul", [x, tw.constant(mask.astype(np.float32), x)], x)


def _mentions(rel: Relation, name: str) -> bool:
    """Whether a relation touches tensor ``name``."""
    if isinstance(rel, Link):
        return name in (rel.a.tensor, rel.b.tensor)
    if isinstance(rel, Barrier):
        return rel.tensor == name
    if isinstance(rel, Choice):
        return any(_mentions(o, name) for o in rel.options)
    if isinstance(rel, (Member, Tag, Statistic)):
        return rel.slot.tensor == name
    return False


def _zero_point(ctx: NodeContext, zp: gs.Tensor | None, out: str, o_axis: int, what: str) -> list[Relation] | str:
    """A zero point of a ConvInteger/MatMulInteger: per-tensor couples nothing; a vector is linked to
    ``out``'s axis ``o_axis`` (a ``param`` member when constant); anything else is a reason."""
    if zp is None:
        return []
    sz = ctx.shape(zp)
    if sz is None:
        return f"shape of {what} '{zp.name}' unknown"
    if len(sz) == 0 or (len(sz) == 1 and static(sz[0]) == 1):
        return []
    if len(sz) == 1 and o_axis >= 0:
        return _param_links(zp.name, 0, out, o_axis, const=ctx.is_const(zp))
    return f"{what} '{zp.name}' of shape {list(sz)} not understood"


def _with_zero_points(ctx: NodeContext, rels: list[Relation], out: str,
                      zero_points: Sequence[tuple[gs.Tensor | None, int, str]]) -> list[Relation]:
    """``rels`` plus the links of each ``(zero point, output axis, name)`` (:func:`_zero_point`); a zero
    point of a shape not understood blocks the whole node, naming it."""
    for zp, axis, what in zero_points:
        more = _zero_point(ctx, zp, out, axis, what)
        if isinstance(more, str):
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': {more}")
        rels += more
    return rels


def _integer_neutral(ctx: NodeContext, t: gs.Constant, values: np.ndarray, axis: int) -> np.ndarray | int | None:
    """The weight ``w`` (input 1) of ConvInteger/MatMulInteger contributes nothing at ``w = w_zero_point``:
    the scalar, or the per-channel vector broadcast along ``axis`` of ``w``; 0 without a zero point."""
    if len(ctx.node.inputs) < 2 or ctx.node.inputs[1] is not t:
        return None
    zp = ctx.node.inputs[3] if len(ctx.node.inputs) > 3 else None
    if zp is None or not zp.name:
        return 0
    if not isinstance(zp, gs.Constant):
        return None
    z = np.asarray(zp.values)
    if z.size == 1:
        return int(z.reshape(-1)[0])
    shape = [1] * values.ndim
    shape[axis % values.ndim] = z.size
    return np.broadcast_to(z.reshape(shape), values.shape)


class ConvIntegerRule(ConvRule):
    """ConvInteger (``x, w[, x_zero_point, w_zero_point] -> y`` int32): channels as the float Conv; a
    per-output-channel ``w_zero_point`` is linked to ``y``'s channel axis."""

    op_types = ("ConvInteger",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x_zp, w_zp, y = ctx.input(2), ctx.input(3), ctx.output(0)
        rels = ConvRule.relate(self, ctx)  # reads input 2 as a bias: drop what it said about x_zero_point
        if x_zp is not None:  # x_zero_point is a scalar (the spec's ConvInteger): nothing of it is channelled
            rels = [r for r in rels if not _mentions(r, x_zp.name)]
        if y is None:
            return rels
        return _with_zero_points(ctx, rels, y.name, ((x_zp, -1, "x_zero_point"), (w_zp, 1, "w_zero_point")))

    def neutral_value(self, ctx: NodeContext, t: gs.Constant, values: np.ndarray) -> np.ndarray | int | None:
        """A weight slice set to ``w_zero_point`` (per output channel: along axis 0)."""
        return _integer_neutral(ctx, t, values, 0)

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """None: the weight holds integers whose float value needs the scales of another node."""
        return f"ConvInteger '{ctx.node.name}' holds quantized weights"


class MatMulIntegerRule(MatMulRule):
    """MatMulInteger (``a, b[, a_zero_point, b_zero_point] -> y`` int32): channels as the float MatMul;
    a per-column ``b_zero_point`` is linked to ``y``'s last axis."""

    op_types = ("MatMulInteger",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        rels = MatMulRule.relate(self, ctx)
        a_zp, b_zp, y = ctx.input(2), ctx.input(3), ctx.output(0)
        ry = ctx.rank(y)
        if y is None or ry is None:
            return rels
        return _with_zero_points(ctx, rels, y.name, ((a_zp, -1, "a_zero_point"), (b_zp, ry - 1, "b_zero_point")))

    def neutral_value(self, ctx: NodeContext, t: gs.Constant, values: np.ndarray) -> np.ndarray | int | None:
        """A weight slice set to ``b_zero_point`` (per column: along the last axis)."""
        return _integer_neutral(ctx, t, values, -1)

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """None: the weight holds integers whose float value needs the scales of another node."""
        return f"MatMulInteger '{ctx.node.name}' holds quantized weights"


class MsQuantizeDequantizeRule(QuantizeDequantizeRule):
    """ORT's ``com.microsoft`` QuantizeLinear / DequantizeLinear (16-bit types): same semantics."""

    domain = MS_DOMAIN


class QOperatorRule(ChannelRule):
    """Quantised operators of the default domain: barriers with the way out."""

    op_types: tuple[str, ...] = QOPERATOR_OPS

    def relate(self, ctx: NodeContext) -> list[Relation]:
        reason = f"{ctx.node.op} '{ctx.node.name}' is a quantized operator (QOperator format); {_QDQ_HINT}"
        rels: list[Relation] = []
        for t in list(ctx.node.inputs) + list(ctx.node.outputs):
            if t is None or not t.name:
                continue
            shape = ctx.shape(t)
            # per axis, so this reason is listed before the generic "does not map axis" ones
            rels += [Barrier(t.name, None, reason)] if shape is None else \
                [Barrier(t.name, a, reason) for a in range(len(shape))]
        return rels

    def cost(self, ctx: NodeContext) -> Cost | None:
        """Counted like the float twin (the data input is 0, the weight input — with the scales and zero
        points between — 3): ``QLinearConv`` as Conv (``numel(y)·(C/g)·Πk``), ``QLinearMatMul`` as MatMul
        (``numel(y)·K``). Every axis is blocked, so the MACs scale with nothing. The contrib kernels are
        not counted."""
        op = ctx.node.op
        if self.domain != "" or op not in QOPERATOR_OPS:
            return None
        if op == "QLinearConv":
            return conv_cost(ctx, 0, 3, scale=False)
        return matmul_cost(ctx, 0, 3, scale=False)


class MsQOperatorRule(QOperatorRule):
    """ORT's quantised contrib kernels: barriers with the way out."""

    op_types = MS_QOPERATOR_OPS
    domain = MS_DOMAIN
