"""Layers seen as matrices: the value types of :meth:`ChannelRule.matrix_view` and the shared helpers.

Data-aware criteria look at a group through its consumers: every weight slot of the group with the
``consumer`` role belongs to a Conv, Gemm or MatMul whose input activation carries the channels. A
:class:`Consumer` presents that layer as ``y = W x`` with ``W`` of shape [outputs, input features]:

* Conv ``[M, C/g, k...]``: ``W = w.reshape(M, C/g·Πk)``; a channel owns its ``Πk`` columns; the input
  is unfolded with im2col (:class:`ConvUnfold`). A grouped conv is ``g`` diagonal *blocks*, each reading
  its own ``C/g`` input channels; depthwise convs have no consumer slot (their channels couple input
  to output) and never appear here.
* Gemm / MatMul with a 2-D weight: the contraction axis of the weight is the column axis; the
  activation's contraction axis holds the features, every other axis is a sample.

Each op's view is built by its rule (:meth:`~spa.rules.base.ChannelRule.matrix_view`, with the
helpers here); an op without one yields a *reason* instead.

>>> u = ConvUnfold(kernel=(2,), strides=(1,), dilations=(1,), pads=(0, 0))
>>> u.rows(np.arange(6.0).reshape(1, 2, 3)).tolist()   # 1 sample, 2 channels, length 3
[[0.0, 1.0, 3.0, 4.0], [1.0, 2.0, 4.0, 5.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.rules.base import Slot, static


@dataclass(frozen=True)
class ConvUnfold:
    """im2col for an N-d convolution: kernel, strides, dilations, pads ``(begin..., end...)``."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str = "NOTSET"

    @property
    def taps(self) -> int:
        """Kernel positions per channel."""
        return int(np.prod(self.kernel))

    def _pads(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        d = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for s, k, st, dl in zip(spatial, self.kernel, self.strides, self.dilations):
                total = max((math.ceil(s / st) - 1) * st + (k - 1) * dl + 1 - s, 0)
                small, big = total // 2, total - total // 2
                out.append((small, big) if self.auto_pad == "SAME_UPPER" else (big, small))
            return out
        if self.auto_pad == "VALID":
            return [(0, 0)] * d
        return [(self.pads[i], self.pads[i + d]) for i in range(d)]

    def rows(self, x: np.ndarray) -> np.ndarray:
        """``x`` [N, C, *spatial] → [N·Π(out spatial), C·Π(kernel)]."""
        d = len(self.kernel)
        c = x.shape[1]
        pads = self._pads(x.shape[2:])
        xp = np.pad(x, [(0, 0), (0, 0), *pads])
        eff = tuple((k - 1) * dl + 1 for k, dl in zip(self.kernel, self.dilations))
        win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + d)))
        index = ((slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.strides)
                 + tuple(slice(None, None, dl) for dl in self.dilations))
        win = win[index]  # [N, C, *out, *kernel]
        order = (0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))
        rows: np.ndarray = win.transpose(order).reshape(-1, c * self.taps)
        return rows


@dataclass(frozen=True)
class DenseRows:
    """Rows of a dense layer's input: ``axis`` holds the features, every other axis is a sample (a value,
    not a closure, so statistics accumulators that hold it can be sent to other processes)."""

    axis: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.moveaxis(x, self.axis, -1)
        return x.reshape(-1, x.shape[-1])


def dense_rows(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rows of a dense layer's input: ``axis`` holds the features, every other axis is a sample."""
    return DenseRows(axis)


@dataclass(frozen=True)
class Block:
    """Rows of ``W`` that read one set of input features (one conv group; everything for dense).

    Attributes:
        rows: the output rows of the block.
        features: index of every column of the block in the unfolded input (the ``H`` index).
        elements: index of every column's input channel/feature along the activation's feature axis.
    """

    rows: slice
    features: np.ndarray
    elements: np.ndarray


@dataclass(frozen=True)
class Bias:
    """A constant added to the consumer's output along its last axis: ``Δbias = scale · Δy``."""

    name: str
    scale: float
    running_mean: bool = False  # the running mean of a BatchNormalization after the layer, not its own bias


@dataclass(frozen=True)
class Consumer:
    """One layer reading a group's channels, as ``y = W x``.

    Attributes:
        node: the node's name.
        op: its op type.
        weight: the weight initializer's name.
        axis: the weight's consumer axis.
        labels: the group channel of every element of that axis.
        input: the activation tensor the layer reads.
        input_axis: the activation's feature (channel) axis.
        features: size of the unfolded input (``H`` is features × features).
        taps: columns per weight-axis element (conv kernel size, else 1).
        blocks: the row/feature blocks (several for a grouped conv).
        unfold: im2col parameters for a conv, None for dense layers.
        bias: where a shift of the output can be absorbed: the layer's own constant bias, else the
            running mean of a BatchNormalization that alone reads the output; None when neither.
        shared: whether the weight is used by other nodes too (then it is never updated).
        output_axis: the axis of the node's output that ``W``'s rows index (Conv: 1; a dense layer read
            through its right operand: -1), None when the rows are not an output axis of their own.
        alpha: the factor on ``W x`` in the output (Gemm's ``alpha``; 1 otherwise).
    """

    node: str
    op: str
    weight: str
    axis: int
    labels: np.ndarray
    input: str
    input_axis: int
    features: int
    taps: int
    blocks: tuple[Block, ...]
    unfold: ConvUnfold | None
    bias: Bias | None
    shared: bool
    output_axis: int | None = None
    alpha: float = 1.0

    @property
    def col_labels(self) -> np.ndarray:
        """The group channel of every column of ``W`` (one block's columns)."""
        return np.repeat(self.labels, self.taps)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as [outputs, columns] (float64)."""
        w = np.asarray(w, dtype=np.float64)
        if self.unfold is not None:
            return w.reshape(w.shape[0], -1)
        moved = np.moveaxis(w, self.axis, -1)
        return moved.reshape(-1, moved.shape[-1])

    def unmatrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Back to the weight's own layout (shape of ``like``)."""
        if self.unfold is not None:
            return m.reshape(like.shape)
        moved = np.moveaxis(np.asarray(like), self.axis, -1).shape
        return np.moveaxis(m.reshape(moved), -1, self.axis)

    def rows_of(self, x: np.ndarray) -> np.ndarray:
        """Unfold an input batch into rows of features."""
        if self.unfold is not None:
            return self.unfold.rows(x)
        return dense_rows(self.input_axis)(x)

    @property
    def stats_key(self) -> tuple[object, ...]:
        """Consumers with equal keys share their input statistics."""
        return (self.input, self.input_axis, self.unfold, len(self.blocks))


ViewResult = Consumer | str
View = Callable[[gs.Node, Slot, np.ndarray], ViewResult]


def _const(t: gs.Tensor | None) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _sole_user(t: gs.Tensor) -> bool:
    return len(t.outputs) <= 1


def _shape(t: gs.Tensor | None) -> list[int | None] | None:
    if t is None or t.shape is None:
        return None
    return [static(d) for d in t.shape]


def conv_view(node: gs.Node, slot: Slot, labels: np.ndarray) -> ViewResult:
    """Conv ``[M, C/g, k...]`` as ``g`` blocks of ``W = w.reshape(M, C/g·Πk)`` over the im2col unfolding
    of its input (``C·Πk`` features); its bias, else a BatchNormalization right after, absorbs shifts."""
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    sx, wv = _shape(x), _const(w)
    if sx is None or wv is None or slot.axis != 1 or len(sx) < 3 or sx[1] is None:
        return f"Conv '{node.name}': input shape unknown, cannot unfold"
    g = int(node.attrs.get("group", 1))
    d = wv.ndim - 2
    kernel = tuple(int(k) for k in (node.attrs.get("kernel_shape") or wv.shape[2:]))
    unfold = ConvUnfold(kernel, tuple(int(s) for s in node.attrs.get("strides") or [1] * d),
                        tuple(int(s) for s in node.attrs.get("dilations") or [1] * d),
                        tuple(int(p) for p in node.attrs.get("pads") or [0] * (2 * d)),
                        str(node.attrs.get("auto_pad", "NOTSET")))
    taps, cg, m = unfold.taps, wv.shape[1], wv.shape[0]
    if cg * g != sx[1] or m % g:
        return f"Conv '{node.name}': group layout unclear"
    mg = m // g
    blocks = tuple(Block(slice(i * mg, (i + 1) * mg), np.arange(i * cg * taps, (i + 1) * cg * taps),
                         i * cg + np.arange(cg * taps) // taps) for i in range(g))
    bias = last_axis_bias(b, m, 1.0) if b is not None else bn_after(node, m)
    return Consumer(node.name, node.op, w.name, 1, labels, x.name, 1, sx[1] * taps, taps, blocks, unfold, bias,
                    not _sole_user(w), output_axis=1)


def conv_transpose_view(node: gs.Node, slot: Slot, labels: np.ndarray) -> ViewResult:
    """ConvTranspose ``[C, M, k...]`` (one group) read through its input channels: every input position
    ``p`` adds ``W x_p`` to the outputs, ``W = w`` moved to ``[M·Πk, C]`` (rows: output channel × tap),
    so the layer is ``y_p = W x_p`` with the input's positions as samples (the contributions before they
    are summed into overlapping output positions). No bias: a shift per (channel, tap) is no bias shift."""
    x, w = node.inputs[0], node.inputs[1]
    wv = _const(w)
    g = int(node.attrs.get("group", 1))
    if wv is None or slot.axis != 0 or wv.ndim < 3:
        return f"no matrix view of ConvTranspose '{node.name}': weight not constant"
    if g != 1:
        return f"no matrix view of ConvTranspose '{node.name}' with group {g}"
    c = wv.shape[0]
    block = Block(slice(0, int(np.prod(wv.shape[1:]))), np.arange(c), np.arange(c))
    return Consumer(node.name, node.op, w.name, 0, labels, x.name, 1, c, 1, (block,), None, None,
                    not _sole_user(w))


def dense_view(node: gs.Node, w: gs.Tensor, slot: Slot, labels: np.ndarray, x: gs.Tensor, x_axis: int,
               bias: Bias | None, output_axis: int | None = None, alpha: float = 1.0) -> ViewResult:
    wv = _const(w)
    if wv is None or wv.ndim != 2:
        return f"{node.op} '{node.name}': weight is not a 2-D constant"
    k = wv.shape[slot.axis]
    rows = wv.shape[1 - slot.axis]
    block = Block(slice(0, rows), np.arange(k), np.arange(k))
    return Consumer(node.name, node.op, w.name, slot.axis, labels, x.name, x_axis, k, 1, (block,), None, bias,
                    not _sole_user(w), output_axis, alpha)


def last_axis_bias(t: gs.Tensor | None, rows: int, scale: float) -> Bias | None:
    """``t`` as a bias of ``rows`` entries on the last axis read by nothing else, else None."""
    v = _const(t)
    if t is None or v is None or v.ndim < 1 or v.shape[-1] != rows or not _sole_user(t):
        return None
    return Bias(t.name, scale)


def bn_after(node: gs.Node, rows: int, scale: float = 1.0) -> Bias | None:
    """The running mean of a BatchNormalization that alone reads the node's output (channels on axis 1).

    A shift ``δ`` of the node's output (``scale`` times a shift of ``W x``: Gemm's ``alpha``) is the same
    as lowering that BN's running mean by ``δ``, so a layer without a bias of its own (conv-BN) can
    still be compensated without changing the graph.
    """
    y = node.outputs[0]
    users = y.outputs
    if len(users) != 1 or users[0].op != "BatchNormalization" or users[0].inputs[0] is not y:
        return None
    if node.op != "Conv" and (y.shape is None or len(y.shape) != 2):
        return None
    bn = users[0]
    found = last_axis_bias(bn.inputs[3], rows, -scale) if len(bn.inputs) > 3 else None
    return Bias(found.name, found.scale, running_mean=True) if found is not None else None


def gemm_view(node: gs.Node, slot: Slot, labels: np.ndarray) -> ViewResult:
    """Gemm ``alpha·A'B' + beta·C`` read through a constant ``B`` (features: ``A``'s contraction axis;
    ``C`` absorbs shifts scaled by ``alpha/beta``) or a constant ``A`` (features: ``B``'s)."""
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if slot.tensor == b.name and not isinstance(a, gs.Constant):
        rows = np.asarray(b.values).shape[1 - slot.axis]
        if c is not None:
            bias = last_axis_bias(c, rows, alpha / beta) if beta else None
        else:
            bias = bn_after(node, rows, alpha)
        return dense_view(node, b, slot, labels, a, 0 if ta else 1, bias, -1, alpha)
    if slot.tensor == a.name and not isinstance(b, gs.Constant):
        return dense_view(node, a, slot, labels, b, 1 if tb else 0, None)
    return f"Gemm '{node.name}': both operands are constant"


def matmul_view(node: gs.Node, slot: Slot, labels: np.ndarray) -> ViewResult:
    """MatMul with a 2-D constant ``B`` (features: ``A``'s last axis; a following ``Add`` of a constant
    absorbs shifts) or a 2-D constant ``A`` (features: ``B``'s second-to-last axis)."""
    a, b = node.inputs[0], node.inputs[1]
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None:
        return f"MatMul '{node.name}': shapes unknown"
    if slot.tensor == b.name and not isinstance(a, gs.Constant):
        if len(sb) != 2:
            return f"MatMul '{node.name}': batched weight"
        y = node.outputs[0]
        users = y.outputs
        add = users[0] if len(users) == 1 and users[0].op == "Add" else None
        other = None if add is None else next((t for t in add.inputs if t is not y), None)
        rows = int(sb[1] or 0)
        bias = last_axis_bias(other, rows, 1.0) if add is not None else bn_after(node, rows)
        return dense_view(node, b, slot, labels, a, len(sa) - 1, bias, -1)
    if slot.tensor == a.name and not isinstance(b, gs.Constant):
        if len(sa) != 2 or len(sb) < 2:
            return f"MatMul '{node.name}': batched weight"
        return dense_view(node, a, slot, labels, b, len(sb) - 2, None)
    return f"MatMul '{node.name}': both operands are constant"


