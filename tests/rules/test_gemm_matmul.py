"""Gemm and MatMul: weight rows/columns like a 1x1 Conv, bias Adds, 3-D tokens, activation x activation."""

from __future__ import annotations

import numpy as np
import pytest

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _dims, _group

OPSETS = [11, 17]


def _row(result, weight: str, axis: int) -> dict:  # type: ignore[no-untyped-def]
    rows = [r for r in result.report["groups"] if f"{weight}[{axis}]" in r["weights"]]
    assert len(rows) == 1, f"{weight}[{axis}] in {len(rows)} groups"
    return rows[0]


def _gemm(b: GraphBuilder, x: str, k: int, n: int, trans_b: int, bias: str | None) -> tuple[str, str]:
    """Gemm with weight [n, k] (transB=1) or [k, n]; bias None, "1d" ([n]) or "2d" ([1, n])."""
    w = b.weight(*((n, k) if trans_b else (k, n)))
    ins = [x, w]
    if bias:
        ins.append(b.const(b.rng.standard_normal(n if bias == "1d" else (1, n)).astype(np.float32), "c"))
    return b.op("Gemm", ins, transB=trans_b, alpha=0.5, beta=2.0 if bias else 1.0), w  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [None, "1d", "2d"])
def test_gemm_mlp(opset: int, trans_b: int, bias: str | None) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 12])
    h, w1 = _gemm(b, x, 12, 16, trans_b, bias)
    h, w2 = _gemm(b, b.op("Relu", [h]), 16, 10, 1 - trans_b, bias)  # type: ignore[arg-type]
    y, w3 = _gemm(b, b.op("Tanh", [h]), 10, 3, trans_b, bias)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    out1, in2 = (0 if trans_b else 1), (0 if trans_b else 1)  # w2 has the opposite transB
    row1 = _row(r, w1, out1)
    assert f"{w2}[{in2}]" in row1["weights"]
    assert row1["channels_before"] == 16 and row1["channels_after"] == 8
    assert _row(r, w2, 1 - in2)["channels_after"] == 5
    dims = _dims(r)
    assert dims[w1][out1] == 8 and dims[w2][in2] == 8 and dims[w3][1 - out1] == 5
    assert r.report["num_pruned"] == 2
    if bias:
        gemm1 = next(n for n in r.model.graph.node if n.op_type == "Gemm")
        assert dims[gemm1.input[2]][-1] == 8


@pytest.mark.parametrize("opset", OPSETS)
def test_gemm_with_scalar_bias(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 12])
    w1 = b.weight(16, 12)
    h = b.op("Gemm", [x, w1, b.const(np.array([0.5], np.float32))], transB=1)
    y, _ = _gemm(b, b.op("Relu", [h]), 16, 3, 1, "1d")  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w1, 0)["channels_after"] == 8


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_matmul_bias_add(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 12])
    w1, w2 = b.weight(12, 16), b.weight(16, 4)
    h = b.op("MatMul", [x, w1])
    if bias:
        bias1 = b.const(b.rng.standard_normal(16).astype(np.float32), "bias")
        h = b.op("Add", [bias1, h])  # bias on the left, as some exporters write it
    h = b.op("Relu", [h])
    y = b.op("MatMul", [h, w2])  # type: ignore[list-item]
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    row = _row(r, w1, 1)
    assert f"{w2}[0]" in row["weights"]
    assert row["channels_after"] == 8
    dims = _dims(r)
    assert dims[w1] == [12, 8] and dims[w2] == [8, 4]
    if bias:
        assert f"{bias1}[0]" in row["weights"] and dims[bias1] == [8]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("batch", [2, "B"])
def test_token_mlp_3d(opset: int, batch: int | str) -> None:
    """[B, T, C] activations: the hidden axis is the last one, batch and token axes pass through."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [batch, 5, 12])
    w1, w2 = b.weight(12, 24), b.weight(24, 12)
    h = b.op("Add", [b.op("MatMul", [x, w1]), b.const(np.zeros(24, np.float32) + 0.1)])
    h = b.op("Relu", [h])
    h = b.op("Add", [b.op("MatMul", [h, w2]), b.const(np.ones(12, np.float32))])
    y = b.op("MatMul", [b.op("Sigmoid", [h]), b.weight(12, 3)])
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert _row(r, w1, 1)["channels_after"] == 12
    assert _row(r, w2, 1)["channels_after"] == 6
    dims = _dims(r)
    assert dims[w1] == [12, 12] and dims[w2] == [12, 6]


@pytest.mark.parametrize("opset", OPSETS)
def test_matmul_weight_on_the_left(opset: int) -> None:
    """W @ x with x [C, N]: the weight's rows produce, its columns consume."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [12, 4])
    w1, w2 = b.weight(16, 12), b.weight(3, 16)
    h = b.op("Relu", [b.op("MatMul", [w1, x])])
    y = b.op("MatMul", [w2, h])
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    row = _row(r, w1, 0)
    assert f"{w2}[1]" in row["weights"]
    assert _dims(r)[w1] == [8, 12] and _dims(r)[w2] == [3, 8]


@pytest.mark.parametrize("opset", OPSETS)
def test_matmul_of_two_activations_blocks_contraction(opset: int) -> None:
    """Single-head attention: q @ k^T contracts two activations (blocked); the value path still prunes."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 5, 12])
    wq, wk, wv, wo = b.weight(12, 8), b.weight(12, 8), b.weight(12, 8), b.weight(8, 12)
    q, k, v = (b.op("MatMul", [x, w]) for w in (wq, wk, wv))
    s = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])  # type: ignore[list-item]
    s = b.op("Softmax", [s], axis=-1)  # type: ignore[assignment]
    o = b.op("MatMul", [s, v])  # type: ignore[list-item]
    y = b.op("MatMul", [o, wo])  # type: ignore[list-item]
    b.output(y)  # type: ignore[arg-type]
    model = b.build()
    a = spa.analyze(model)
    for w in (wq, wk):
        g = _group(a, w, 1)
        assert not g.prunable
        assert any("contracts two activations" in reason for reason in g.reasons), g.reasons
    assert _group(a, wv, 1).prunable
    r = assert_oracle(model)
    assert _row(r, wv, 1)["channels_after"] == 4
    assert _dims(r)[wo] == [4, 12]
    assert _dims(r)[wq] == [12, 8]


@pytest.mark.parametrize("opset", OPSETS)
def test_gemm_trans_a(opset: int) -> None:
    """A transposed activation [K, M] read with transA=1: its axis 0 is the contracted channel."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 12])
    h, w1 = _gemm(b, x, 12, 16, 1, "1d")
    t = b.op("Transpose", [b.op("Relu", [h])], perm=[1, 0])  # [16, 2]
    w2 = b.weight(16, 4)
    y = b.op("Gemm", [t, w2], transA=1)
    b.output(y)  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    row = _row(r, w1, 0)
    assert f"{w2}[0]" in row["weights"] and row["channels_after"] == 8
    assert _dims(r)[w2] == [8, 4]


@pytest.mark.parametrize("opset", OPSETS)
def test_matmul_1d_activation(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [12])
    w1, w2 = b.weight(12, 16), b.weight(16, 4)
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", [x, w1]), b.const(np.ones(16, np.float32))])])
    b.output(b.op("MatMul", [h, w2]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert _row(r, w1, 1)["channels_after"] == 8
    assert _dims(r)[w2] == [8, 4]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("same", [True, False])
def test_gemm_of_two_activations_blocks_the_contraction(opset: int, same: bool) -> None:
    """``Gemm(a, b, transB=1)`` with ``b`` an activation (``a @ a.T`` when ``same``): no weight reads the
    contracted channels, so the masked twin could not zero them — they are blocked (found by the fuzzer:
    the contraction was linked without a barrier and the oracle failed)."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h = b.conv(x, 3, 8)
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    other = flat if same else b.op("Flatten", [b.op("GlobalMaxPool", [h])], axis=1)
    y = b.op("Gemm", [flat, other], transB=1)  # type: ignore[list-item]
    b.output(b.op("Add", [y, b.op("Gemm", [flat, b.weight(4, 8)], transB=1)]))  # type: ignore[list-item]
    model = b.build()
    a = spa.analyze(model)
    w = model.graph.node[0].input[1]
    g = _group(a, w, 0)
    assert not g.prunable and any("contracts two activations" in r for r in g.reasons), g.reasons
    assert_oracle(model, 0.5, expect_pruned=False)
