"""Resize, Pad, Expand and Tile: unchanged axes are identity, size constants are rewritten."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _group, _i64, _row

OPSETS = [11, 17]


def _inits(result) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}


def _f32(b: GraphBuilder, v: list[float]) -> str:
    return b.const(np.array(v, np.float32), "scales")


def _resize(b: GraphBuilder, x: str, how: str, c: int, hw: int, mode: str) -> str:
    """Upsample [1, c, hw, hw] by 2 with scales, full sizes, or (opset >= 18) sizes over axes [2, 3]."""
    roi = b.const(np.zeros(0, np.float32), "roi")
    empty = b.const(np.zeros(0, np.float32), "noscales")
    attrs: dict[str, object] = {"mode": mode}
    if mode == "nearest":
        attrs |= {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    if how == "scales":
        ins = [x, roi, _f32(b, [1, 1, 2, 2])]
    elif how == "sizes":
        ins = [x, roi, empty, _i64(b, [1, c, 2 * hw, 2 * hw])]
    elif how == "sizes-axes":
        ins, attrs = [x, "", "", _i64(b, [2 * hw, 2 * hw])], attrs | {"axes": [2, 3]}
    else:  # only (C, H) listed: x is [1, c, hw, 2 * hw]
        ins, attrs = [x, "", "", _i64(b, [c, 2 * hw])], attrs | {"axes": [1, 2]}
    return b.op("Resize", ins, **attrs)  # type: ignore[return-value]


RESIZE_CASES = [(11, "scales"), (11, "sizes"), (13, "scales"), (13, "sizes"), (18, "sizes-axes"),
                (19, "sizes-axes-c")]


@pytest.mark.parametrize(("opset", "how"), RESIZE_CASES)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_fpn_resize_add(opset: int, how: str, mode: str) -> None:
    """Top-down FPN: upsample the coarse map and add the lateral map; both producers are coupled."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 8, 8])
    lateral, wl = _conv(b, x, 3, 8, k=1)
    if how == "sizes-axes-c":  # [1, 8, 4, 8]
        coarse, wc = _conv(b, x, 3, 8)
        coarse = b.op("MaxPool", [coarse], kernel_shape=[2, 1], strides=[2, 1])  # type: ignore[assignment]
    else:
        coarse, wc = _conv(b, x, 3, 8, stride=2)  # [1, 8, 4, 4]
    up = _resize(b, coarse, how, 8, 4, mode)
    h = b.op("Relu", [b.op("Add", [up, lateral])])
    y, wy = _conv(b, h, 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, wl)
    assert row == _row(r, wc) and f"{wy}[1]" in row["weights"]
    assert row["channels_after"] == 4
    resize = next(n for n in r.model.graph.node if n.op_type == "Resize")
    if how.startswith("sizes"):
        value = _inits(r)[resize.input[3]].tolist()
        assert value == {"sizes": [1, 4, 8, 8], "sizes-axes": [8, 8], "sizes-axes-c": [4, 8]}[how]


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_of_channel_axis_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 4)
    h, w = _conv(b, b.op("Relu", [h]), 4, 4)  # type: ignore[arg-type]
    up = b.op("Resize", [h, b.const(np.zeros(0, np.float32)), _f32(b, [1, 2, 1, 1])], mode="nearest")
    y, _ = _conv(b, up, 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    assert any("Resize" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 2


def _pad(b: GraphBuilder, x: str, pads: list[int], mode: str = "constant", axes: list[int] | None = None) -> str:
    ins = [x, _i64(b, pads, "pads")]
    if mode == "constant":
        ins.append(b.const(np.array(0.5, np.float32), "pv"))
    if axes is not None:
        ins += [""] * (3 - len(ins)) + [_i64(b, axes, "axes")]
    return b.op("Pad", ins, mode=mode)  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_spatial_axes(opset: int, mode: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=mode != "edge")
    p = _pad(b, b.op("Relu", [h]), [0, 0, 1, 2, 0, 0, 2, 1], mode)  # type: ignore[arg-type]
    y, wy = _conv(b, p, 8, 2)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    assert f"{wy}[1]" in _row(r, w)["weights"]


@pytest.mark.parametrize("opset", [18, 19])
def test_pad_with_axes_input(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    p = _pad(b, h, [1, 1, 1, 1], axes=[-2, -1])
    y, _ = _conv(b, p, 8, 2)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_pad_of_channel_axis_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w = _conv(b, b.op("Relu", [h]), 8, 6)  # type: ignore[arg-type]
    p = _pad(b, h, [0, 1, 0, 0, 0, 1, 0, 0])  # [1, 8, 6, 6]: channel padding (ResNet shortcut option A)
    y, _ = _conv(b, p, 8, 2, k=1)
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    pad = next(n.name for n in model.graph.node if n.op_type == "Pad")
    assert any(pad in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w)["channels_after"] == 6


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("target", [[1, 8, 6, 6], [1, 1, 6, 6], [8, 1, 1]])
def test_expand_channel_gate(opset: int, target: list[int]) -> None:
    """SE-style gate [1, C, 1, 1] expanded over space before the Mul; Expand's shape is rewritten."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    s, ws = _conv(b, b.op("GlobalAveragePool", [h]), 8, 8, k=1)  # type: ignore[arg-type]
    e = b.op("Expand", [b.op("Sigmoid", [s]), _i64(b, target, "shape")])
    y, _ = _conv(b, b.op("Mul", [h, e]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row == _row(r, ws) and row["channels_after"] == 4
    expand = next(n for n in r.model.graph.node if n.op_type == "Expand")
    new = _inits(r)[expand.input[1]].tolist()
    assert new == [4 if v == 8 else v for v in target]


@pytest.mark.parametrize("opset", OPSETS)
def test_expand_over_channels(opset: int) -> None:
    """A one-channel spatial map expanded to every channel: the expanded axis follows its consumer."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    m, _ = _conv(b, h, 8, 1)  # [1, 1, 6, 6]
    e = b.op("Expand", [b.op("Sigmoid", [m]), _i64(b, [1, 8, 6, 6], "shape")])
    y, _ = _conv(b, b.op("Mul", [h, e]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    expand = next(n for n in r.model.graph.node if n.op_type == "Expand")
    assert _inits(r)[expand.input[1]].tolist() == [1, 4, 6, 6]


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_spatial(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 3, 3])
    h, w = _conv(b, x, 3, 8)
    t = b.op("Tile", [b.op("Relu", [h]), _i64(b, [1, 1, 2, 2], "reps")])
    y, _ = _conv(b, t, 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_of_channel_axis_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 3, 3])
    h, w0 = _conv(b, x, 3, 8)
    h, w = _conv(b, b.op("Relu", [h]), 8, 4)  # type: ignore[arg-type]
    t = b.op("Tile", [h, _i64(b, [1, 2, 1, 1], "reps")])  # output channel c is input channel c % 4
    y, _ = _conv(b, t, 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    assert any("Tile" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_over_channels_from_one(opset: int) -> None:
    """A one-channel map tiled to every channel: free axis, ``repeats`` rewritten to the new count."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    m, _ = _conv(b, h, 8, 1)
    t = b.op("Tile", [b.op("Sigmoid", [m]), _i64(b, [1, 8, 1, 1], "reps")])
    y, _ = _conv(b, b.op("Mul", [h, t]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    tile = next(n for n in r.model.graph.node if n.op_type == "Tile")
    assert _inits(r)[tile.input[1]].tolist() == [1, 4, 1, 1]
