"""Pooling and reduction rules: spatial pooling/reductions are identity on channels, channel reductions block."""

from __future__ import annotations

import numpy as np
import pytest

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _group, _row

OPSETS = [11, 17]


POOLS: dict[str, dict[str, object]] = {
    "MaxPool": {"kernel_shape": [2, 2], "strides": [2, 2]},
    "AveragePool": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    "LpPool": {"kernel_shape": [2, 2], "p": 2},
    "GlobalAveragePool": {},
    "GlobalMaxPool": {},
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("pool", list(POOLS))
def test_pooling_is_identity_on_channels(opset: int, pool: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 8, 8])
    h, w = _conv(b, x, 3, 8, bias=opset == 11)
    h = b.op(pool, [b.op("Relu", [h])], **POOLS[pool])  # type: ignore[assignment]
    y, w2 = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    assert f"{w2}[1]" in _row(r, w)["weights"]


@pytest.mark.parametrize("opset", OPSETS)
def test_maxpool_with_used_indices_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 8, 8])
    h, w = _conv(b, x, 3, 8)
    pooled, idx = b.op("MaxPool", [h], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    y, _ = _conv(b, pooled, 8, 4, k=1)
    b.output(y)
    b.output(idx)
    b.outputs[-1].type.tensor_type.elem_type = 7  # int64 indices
    g = _group(spa.analyze(b.build()), w, 0)
    assert not g.prunable
    assert any("Indices" in reason for reason in g.reasons)


def _reduce(b: GraphBuilder, op: str, x: str, axes: list[int], keepdims: int) -> str:
    """A Reduce* node, axes as attribute or input depending on the opset."""
    as_input = b.opset >= (13 if op == "ReduceSum" else 18)
    if as_input:
        return b.op(op, [x, b.const(np.array(axes, np.int64), "axes")], keepdims=keepdims)  # type: ignore[return-value]
    return b.op(op, [x], axes=axes, keepdims=keepdims)  # type: ignore[return-value]


REDUCE_OPSETS = [11, 13, 18]


@pytest.mark.parametrize("opset", REDUCE_OPSETS)
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_spatial_axes(opset: int, op: str, keepdims: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = _reduce(b, op, b.op("Relu", [h]), [2, -1], keepdims)  # type: ignore[arg-type]
    if keepdims:  # [1, 8, 1, 1] -> 1x1 conv head
        y, w2 = _conv(b, h, 8, 4, k=1)
        head_axis = 1
    else:  # [1, 8] -> Gemm head (weight [4, 8], transB)
        w2 = b.weight(4, 8)
        y = b.op("Gemm", [h, w2, b.const(np.zeros(4, np.float32))], transB=1)  # type: ignore[assignment]
        head_axis = 1
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_before"] == 8 and row["channels_after"] == 4
    assert f"{w2}[{head_axis}]" in row["weights"]


@pytest.mark.parametrize("opset", REDUCE_OPSETS)
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_channel_axis_is_blocked(opset: int, op: str, keepdims: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    s = _reduce(b, op, h, [1], keepdims)
    if not keepdims:
        s = b.op("Unsqueeze", [s], axes=[1]) if opset < 13 else b.op(  # type: ignore[assignment]
            "Unsqueeze", [s, b.const(np.array([1], np.int64))])
    y, _ = _conv(b, s, 1, 2, k=1)
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    node = next(n.name for n in model.graph.node if n.op_type == op)
    assert any(node in reason and "reduces over axis 1" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)  # the first conv is untouched by the reduction and still prunes
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w)["channels_after"] == 8


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_over_channels_is_blocked(opset: int, op: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    h = b.op(op, [h], axis=1)  # type: ignore[assignment]
    y, _w2 = _conv(b, h, 8, 4, k=1)
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    assert any(op in reason and "axis" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w)["channels_after"] == 8


@pytest.mark.parametrize("opset", [13, 17])
def test_softmax_over_spatial_axis_keeps_channels_free(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Softmax", [h], axis=-1)  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", REDUCE_OPSETS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_channels_last_global_pool(opset: int, keepdims: int) -> None:
    """tf2onnx-style global pool: NHWC ReduceMean over (H, W); the channel moves to axis 1 or stays at 3."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    t = b.op("Transpose", [b.op("Relu", [h])], perm=[0, 2, 3, 1])
    p = _reduce(b, "ReduceMean", t, [1, 2], keepdims)  # type: ignore[arg-type]
    if keepdims:  # [1, 1, 1, 8]
        p = b.op("Flatten", [p], axis=1)  # type: ignore[assignment]
    w2 = b.weight(8, 4)
    b.output(b.op("MatMul", [p, w2]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert f"{w2}[0]" in row["weights"] and row["channels_after"] == 4
