"""Elementwise rules: unary activations, PRelu, broadcasting arithmetic, residuals, SE gating, Keras BN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _row

OPSETS = [11, 17]


def _sandwich(opset: int, mid: str, bias: bool = True, c: int = 8, **attrs: object) -> tuple[GraphBuilder, str]:
    """conv(3->c) -> <mid op> -> conv(c->4); returns the builder and the first conv's weight."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, c, bias=bias)
    h = b.op(mid, [h], **attrs)  # type: ignore[assignment]
    y, _ = _conv(b, h, c, 4, k=1, bias=bias)
    b.output(y)
    return b, w


# op -> (oldest opset that has it, attributes)
UNARY: dict[str, tuple[int, dict[str, object]]] = {
    "Relu": (1, {}),
    "LeakyRelu": (1, {"alpha": 0.1}),
    "Sigmoid": (1, {}),
    "HardSigmoid": (1, {"alpha": 0.3, "beta": 0.4}),
    "HardSwish": (14, {}),
    "Tanh": (1, {}),
    "Erf": (9, {}),
    "Mish": (18, {}),
    "Softplus": (1, {}),
    "Elu": (1, {"alpha": 0.7}),
    "Selu": (1, {}),
}


def _unary_cases() -> list[tuple[str, int]]:
    cases = []
    for op, (first, _) in UNARY.items():
        opsets = sorted({max(o, first) for o in OPSETS})
        if len(opsets) == 1:  # an op newer than the last default opset: test it and the next one
            opsets.append(opsets[0] + 1)
        cases += [(op, opset) for opset in opsets]
    return cases


@pytest.mark.parametrize(("op", "opset"), _unary_cases())
def test_unary_activation_is_identity(op: str, opset: int) -> None:
    b, w = _sandwich(opset, op, bias=opset % 2 == 1, **UNARY[op][1])
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_before"] == 8 and row["channels_after"] == 4
    assert r.report["num_pruned"] == 1


@pytest.mark.parametrize("opset", [20, 21])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(opset: int, approximate: str) -> None:
    b, w = _sandwich(opset, "Gelu", approximate=approximate)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_clip_with_bounds(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    lo, hi = b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))
    h = b.op("Clip", [h, lo, hi])  # type: ignore[assignment]
    h = b.op("Clip", [h, "", hi])  # type: ignore[assignment]  # optional min omitted
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_cast_round_trip(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Cast", [h], to=onnx.TensorProto.DOUBLE)  # type: ignore[assignment]
    h = b.op("Relu", [h])  # type: ignore[assignment]
    h = b.op("Cast", [h], to=onnx.TensorProto.FLOAT)  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)])
def test_prelu_per_channel_slope_is_sliced(opset: int, shape: tuple[int, ...]) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    slope = b.const(np.linspace(0.05, 0.4, 8, dtype=np.float32).reshape(shape), "slope")
    h = b.op("PRelu", [h, slope])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    assert f"{slope}[{len(shape) - 3}]" in _row(r, w)["weights"]
    new = {i.name: i for i in r.model.graph.initializer}[slope]
    assert new.dims[len(shape) - 3] == 4


def _per_channel(op: str, rng: np.random.Generator, c: int) -> np.ndarray:
    if op in ("Div",):  # keep away from zero
        return (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(np.float32)
    if op == "Pow":  # base or exponent: Sigmoid output and constant both positive, so no NaN
        return rng.uniform(0.5, 3.0, c).astype(np.float32)
    return rng.standard_normal(c).astype(np.float32)


BROADCAST_CASES = [(op, False) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")] + [
    (op, True) for op in ("Sub", "Div", "Pow")  # constant on the left of a non-commutative op
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("op", "const_first"), BROADCAST_CASES)
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (8, 1, 1)])
def test_broadcast_per_channel_constant(opset: int, op: str, shape: tuple[int, ...], const_first: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Sigmoid", [h])  # type: ignore[assignment]
    k = b.const(_per_channel(op, b.rng, 8).reshape(shape), "k")
    h = b.op(op, [k, h] if const_first else [h, k])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_after"] == 4
    axis = len(shape) - 3
    assert f"{k}[{axis}]" in row["weights"]
    assert {i.name: i for i in r.model.graph.initializer}[k].dims[axis] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_scalar_constant_couples_nothing(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Mul", [h, b.const(np.array([0.5], np.float32))])  # type: ignore[assignment]
    h = b.op("Add", [h, b.const(np.array(1.0, np.float32))])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_residual_add_of_two_conv_branches(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    stem, w0 = _conv(b, x, 3, 8, bias=bias)
    stem = b.op("Relu", [stem])  # type: ignore[assignment]
    left, wl = _conv(b, stem, 8, 8, bias=bias)
    right, wr = _conv(b, stem, 8, 8, k=1, bias=bias)
    h = b.op("Relu", [b.op("Add", [left, right])])
    # identity residual: the block output is added to its own input
    inner, wi = _conv(b, h, 8, 8, bias=bias)  # type: ignore[arg-type]
    h2 = b.op("Add", [h, b.op("Relu", [inner])])
    y, _ = _conv(b, h2, 8, 4, k=1, bias=bias)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, wl)
    assert row == _row(r, wr) == _row(r, wi)  # one coupled group
    assert {f"{wl}[0]", f"{wr}[0]", f"{wi}[0]", f"{wi}[1]"} <= set(row["weights"])
    assert row["channels_after"] == 4
    assert _row(r, w0)["channels_after"] == 4
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[wl][0] == dims[wr][0] == dims[wi][0] == dims[wi][1] == 4


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_se_gating(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=bias)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    s = b.op("GlobalAveragePool", [h])
    s, w_red = _conv(b, s, 8, 4, k=1, bias=bias)  # type: ignore[arg-type]
    s = b.op("Relu", [s])  # type: ignore[assignment]
    s, w_exp = _conv(b, s, 4, 8, k=1, bias=bias)  # type: ignore[arg-type]
    s = b.op("Sigmoid", [s])  # type: ignore[assignment]
    g = b.op("Mul", [h, s])
    y, _ = _conv(b, g, 8, 4, k=1, bias=bias)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    main = _row(r, w)
    assert main == _row(r, w_exp)  # gate channels are the feature channels
    assert f"{w_red}[1]" in main["weights"]
    assert main["channels_before"] == 8 and main["channels_after"] == 4
    hidden = _row(r, w_red)
    assert hidden["channels_before"] == 4 and hidden["channels_after"] == 2
    assert r.report["num_pruned"] == 2


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_keras_bn_channels_last(opset: int, bias: bool) -> None:
    """tf2onnx-style: NHWC via Transpose, BN decomposed into Mul/Add with [C] constants, back to NCHW."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=bias)
    t = b.op("Transpose", [h], perm=[0, 2, 3, 1])
    scale = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "scale")
    shift = b.const(b.rng.standard_normal(8).astype(np.float32), "shift")
    t = b.op("Add", [b.op("Mul", [t, scale]), shift])  # type: ignore[list-item]
    t = b.op("Relu", [t])  # type: ignore[assignment]
    h = b.op("Transpose", [t], perm=[0, 3, 1, 2])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1, bias=bias)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert {f"{scale}[0]", f"{shift}[0]"} <= set(row["weights"])
    assert row["channels_after"] == 4
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[scale] == dims[shift] == [4]


@pytest.mark.parametrize("opset", OPSETS)
def test_mismatched_broadcast_is_not_mispruned(opset: int) -> None:
    """A [C, 1] constant against NCHW aligns with H, not C: the channel is untouched by it."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 6)
    k = b.const(b.rng.standard_normal((6, 1)).astype(np.float32), "k")  # broadcasts over (H, W): H == 6
    h = b.op("Add", [h, k])  # type: ignore[assignment]
    y, _ = _conv(b, h, 6, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert f"{k}[0]" not in row["weights"]
    assert row["channels_after"] == 3
    assert list({i.name: i for i in r.model.graph.initializer}[k].dims) == [6, 1]


@pytest.mark.parametrize("opset", OPSETS)
def test_where_with_per_channel_condition(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    cond = b.const((np.arange(8) % 3 == 0).reshape(1, 8, 1, 1), "cond")
    other = b.const(b.rng.standard_normal((8, 1, 1)).astype(np.float32), "other")
    h = b.op("Where", [cond, h, other])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert {f"{cond}[1]", f"{other}[0]"} <= set(row["weights"]) and row["channels_after"] == 4
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[cond] == [1, 4, 1, 1] and dims[other] == [4, 1, 1]


@pytest.mark.parametrize("opset", OPSETS)
def test_sum_and_mean_of_three_branches(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    outs, ws = [], []
    for k in (1, 3, 5):
        o, w = _conv(b, x, 3, 8, k=k)
        outs.append(o)
        ws.append(w)
    h = b.op("Mean", [b.op("Sum", outs[:2]), outs[2]])
    y, _ = _conv(b, h, 8, 4, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, ws[0]) == _row(r, ws[1]) == _row(r, ws[2])
    assert _row(r, ws[0])["channels_after"] == 4
