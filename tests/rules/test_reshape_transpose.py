"""Reshape, Flatten, Squeeze/Unsqueeze and Transpose: stride maps, channels-last, channel shuffle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _dims, _group, _i64, _row, _unsqueeze

OPSETS = [11, 17]


def _inits(result) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}


def _squeeze(b: GraphBuilder, x: str, axes: list[int]) -> str:
    if b.opset < 13:
        return b.op("Squeeze", [x], axes=axes)  # type: ignore[return-value]
    return b.op("Squeeze", [x, _i64(b, axes, "axes")])  # type: ignore[return-value]


C, H, W = 6, 3, 3  # conv features [1, C, H, W] flattened into C*H*W = 54 features


def _features(b: GraphBuilder, bias: bool = True) -> tuple[str, str]:
    x = b.input("x", [1, 3, H, W])
    h, w = _conv(b, x, 3, C, bias=bias)
    return b.op("Relu", [h]), w  # type: ignore[return-value]


def _flatten_to(b: GraphBuilder, h: str, how: str) -> str:
    if how == "flatten":
        return b.op("Flatten", [h], axis=1)  # type: ignore[return-value]
    if how == "reshape-1":
        return b.op("Reshape", [h, _i64(b, [1, -1])])  # type: ignore[return-value]
    return b.op("Reshape", [h, _i64(b, [1, C * H * W])])  # type: ignore[return-value]


def _check_stride_map(r, w: str, wf: str, axis: int) -> None:  # type: ignore[no-untyped-def]
    """The head's weight keeps exactly H*W features per kept channel, at the right positions."""
    row = _row(r, w)
    assert f"{wf}[{axis}]" in row["weights"]
    assert row["channels_before"] == C and row["channels_after"] == C // 2
    assert _dims(r)[wf][axis] == (C // 2) * H * W


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("how", ["flatten", "reshape-1", "reshape-explicit"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_flatten_to_gemm(opset: int, how: str, trans_b: int) -> None:
    b = GraphBuilder(opset=opset)
    h, w = _features(b, bias=trans_b == 1)
    f = _flatten_to(b, h, how)
    wf = b.weight(*((10, C * H * W) if trans_b else (C * H * W, 10)))
    y = b.op("Gemm", [f, wf, b.const(np.zeros(10, np.float32))], transB=trans_b)
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    _check_stride_map(r, w, wf, 1 if trans_b else 0)
    if how == "reshape-explicit":
        shape = next(n for n in r.model.graph.node if n.op_type == "Reshape").input[1]
        assert _inits(r)[shape].tolist() == [1, (C // 2) * H * W]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("how", ["flatten", "reshape-1", "reshape-explicit"])
def test_flatten_to_matmul(opset: int, how: str) -> None:
    b = GraphBuilder(opset=opset)
    h, w = _features(b)
    f = _flatten_to(b, h, how)
    wf = b.weight(C * H * W, 10)
    y = b.op("Add", [b.op("MatMul", [f, wf]), b.const(np.ones(10, np.float32))])
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    _check_stride_map(r, w, wf, 0)


@pytest.mark.parametrize("opset", OPSETS)
def test_flatten_stride_map_keeps_whole_channel_blocks(opset: int) -> None:
    """Removed channel c must remove rows c*H*W .. c*H*W + H*W - 1 of the head weight."""
    b = GraphBuilder(opset=opset)
    h, w = _features(b)
    wf = b.weight(C * H * W, 4)
    b.output(b.op("MatMul", [b.op("Flatten", [h], axis=1), wf]))  # type: ignore[list-item]
    model = b.build()
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    r = assert_oracle(model)
    kept = np.asarray(_row(r, w)["kept"])  # kept channel numbers (the group's first slot is the conv output)
    expect = original[wf].reshape(C, H * W, 4)[kept].reshape(-1, 4)
    np.testing.assert_array_equal(_inits(r)[wf], expect)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("how", ["flatten", "reshape"])
def test_channels_last_flatten_to_matmul(opset: int, how: str) -> None:
    """NHWC features flattened: the channel is the innermost factor (feature f is channel f % C)."""
    b = GraphBuilder(opset=opset)
    h, w = _features(b)
    t = b.op("Transpose", [h], perm=[0, 2, 3, 1])
    f = b.op("Flatten", [t], axis=1) if how == "flatten" else b.op("Reshape", [t, _i64(b, [1, -1])])
    wf = b.weight(C * H * W, 5)
    b.output(b.op("MatMul", [f, wf]))  # type: ignore[list-item]
    model = b.build()
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    r = assert_oracle(model)
    _check_stride_map(r, w, wf, 0)
    kept = np.asarray(_row(r, w)["kept"])
    np.testing.assert_array_equal(_inits(r)[wf], original[wf].reshape(H * W, C, 5)[:, kept].reshape(-1, 5))


def _shuffle(b: GraphBuilder, x: str, c: int, g: int, hw: int) -> str:
    r = b.op("Reshape", [x, _i64(b, [1, g, c // g, hw, hw])])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [t, _i64(b, [1, c, hw, hw])])  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("c", "g"), [(8, 2), (12, 3), (12, 4)])
def test_channel_shuffle_is_exact_or_blocked(opset: int, c: int, g: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 5, 5])
    h, w = _conv(b, x, 3, c)
    s = _shuffle(b, b.op("Relu", [h]), c, g, 5)  # type: ignore[arg-type]
    y, w2 = _conv(b, s, c, 4, k=1)
    b.output(y)
    model = b.build()
    grp = _group(spa.analyze(model), w, 0)
    if not grp.prunable:
        assert grp.reasons
        return
    r = assert_oracle(model)  # pruned exactly, never mis-pruned
    row = _row(r, w)
    assert f"{w2}[1]" in row["weights"]
    kept = _dims(r)[w][0]
    assert _dims(r)[w2][1] == kept < c
    reshapes = [n for n in r.model.graph.node if n.op_type == "Reshape"]
    values = [_inits(r)[n.input[1]].tolist() for n in reshapes]
    assert values[1] == [1, kept, 5, 5]
    assert values[0][1] * values[0][2] == kept


@pytest.mark.parametrize("opset", OPSETS)
def test_channel_shuffle_between_grouped_convs(opset: int) -> None:
    """ShuffleNet unit: grouped 1x1 conv -> shuffle -> depthwise 3x3 -> grouped 1x1."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 4, 5, 5])
    h = b.op("Relu", [b.conv(x, 4, 8, k=1, group=2)])
    s = _shuffle(b, h, 8, 2, 5)  # type: ignore[arg-type]
    d = b.conv(s, 8, 8, group=8)
    y = b.conv(d, 8, 4, k=1, group=2)
    b.output(y)
    model = b.build()
    spa.analyze(model)  # must not crash
    assert_oracle(model, expect_pruned=False)


@pytest.mark.parametrize("opset", OPSETS)
def test_squeeze_unsqueeze_around_1x1_head(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    h, w = _features(b)
    p = b.op("GlobalAveragePool", [h])
    s = _squeeze(b, p, [2, 3])  # type: ignore[arg-type]  # [1, C]
    u = _unsqueeze(b, s, [2, 3])  # [1, C, 1, 1]
    z, wz = _conv(b, u, C, 8, k=1)
    z = b.op("Relu", [z])  # type: ignore[assignment]
    y, wy = _conv(b, z, 8, 4, k=1)
    b.output(_squeeze(b, y, [2, 3]))
    r = assert_oracle(b.build())
    assert f"{wz}[1]" in _row(r, w)["weights"]
    assert _row(r, w)["channels_after"] == C // 2
    assert _row(r, wz)["channels_after"] == 4
    assert _dims(r)[wy][1] == 4




@pytest.mark.parametrize(
    ("opset", "tail"),
    [pytest.param(11, [-1]), pytest.param(11, [C * H * W]),
     pytest.param(13, [C * H * W]), pytest.param(17, [-1]),
     (14, [C * H * W]), (17, [C * H * W])],
)
def test_reshape_target_from_shape_and_constant(opset: int, tail: list[int]) -> None:
    """Dynamic batch: Reshape(h, Concat(Gather(Shape(h), 0), const)) keeps the batch and rewrites the rest."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["N", 3, H, W])
    h, w = _conv(b, x, 3, C)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    n = b.op("Gather", [b.op("Shape", [h]), _i64(b, [0], "idx")], axis=0)
    target = b.op("Concat", [n, _i64(b, tail)], axis=0)
    f = b.op("Reshape", [h, target])
    wf = b.weight(C * H * W, 4)
    y = b.op("MatMul", [f, wf])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["N", 4]))  # type: ignore[arg-type]
    model = b.build()
    grp = _group(spa.analyze(model), w, 0)
    assert grp.prunable, grp.reasons
    r = assert_oracle(model)
    _check_stride_map(r, w, wf, 0)
    concat = next(n for n in r.model.graph.node if n.op_type == "Concat")
    assert _inits(r)[concat.input[1]].tolist() == ([-1] if tail == [-1] else [(C // 2) * H * W])


@pytest.mark.parametrize("opset", OPSETS)
def test_transpose_round_trip(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    h, w = _features(b)
    t = b.op("Transpose", [h], perm=[0, 3, 2, 1])
    t = b.op("Sigmoid", [t])  # type: ignore[assignment]
    back = b.op("Transpose", [t], perm=[0, 3, 2, 1])
    y, _ = _conv(b, back, C, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == C // 2


@pytest.mark.parametrize("opset", OPSETS)
def test_reshape_regrouping_channels_is_blocked(opset: int) -> None:
    """[1, 6, 4, 4] -> [1, 4, 6, 4]: channels and rows regrouped (no block structure): blocked."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 6)
    h, w = _conv(b, b.op("Relu", [h]), 6, 6)  # type: ignore[arg-type]
    rs = b.op("Reshape", [h, _i64(b, [1, 4, 6, 4])])
    y, _ = _conv(b, rs, 4, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    model = b.build()
    grp = _group(spa.analyze(model), w, 0)
    assert not grp.prunable
    assert any("Reshape" in reason for reason in grp.reasons)
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 3
