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

``DynamicQuantizeLinear`` (per-tensor, computed scale) is identity between ``x`` and ``y``.

``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger`` and ORT's ``com.microsoft``
QOperator kernels hold their weights quantised inside one node with scales that spa does not rewrite:
every axis they touch is blocked, with a reason that says how to get a QDQ model instead.

>>> from spa.rules.base import Slot
>>> [r.slot for r in _param_links("s", 0, "y", 1, const=True) if isinstance(r, Member)]
[Slot(tensor='s', axis=0)]
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import Dim
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Cost,
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
from spa.rules.conv import conv_cost
from spa.rules.gemm_matmul import matmul_cost

MS_DOMAIN = "com.microsoft"

#: quantised operators of the default domain (QOperator format)
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
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
        """Counted like the float twin (the data input is 0, the weight input 1 or — with the scales and
        zero points between — 3): ``ConvInteger``/``QLinearConv`` as Conv (``numel(y)·(C/g)·Πk``),
        ``MatMulInteger``/``QLinearMatMul`` as MatMul (``numel(y)·K``). Every axis is blocked, so the
        MACs scale with nothing. The contrib kernels are not counted."""
        op = ctx.node.op
        if self.domain != "" or op not in QOPERATOR_OPS:
            return None
        w_index = 3 if op.startswith("QLinear") else 1
        if op.endswith(("Conv", "ConvInteger")):
            return conv_cost(ctx, 0, w_index, scale=False)
        return matmul_cost(ctx, 0, w_index, scale=False)


class MsQOperatorRule(QOperatorRule):
    """ORT's quantised contrib kernels: barriers with the way out."""

    op_types = MS_QOPERATOR_OPS
    domain = MS_DOMAIN
