"""ONNX Runtime contrib ops (com.microsoft): fused elementwise ops prune, fused attention/norms block."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import helper

import spa
from spa.rules.contrib import ContribFusedAttentionRule
from spa.rules.defaults import default_registry
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _dims, _group

OPSETS = [13, 17]
MS = "com.microsoft"
B, S, D, F = 2, 5, 12, 16


def _row(result, weight: str, axis: int) -> dict:  # type: ignore[no-untyped-def]
    rows = [r for r in result.report["groups"] if f"{weight}[{axis}]" in r["weights"]]
    assert len(rows) == 1, f"{weight}[{axis}] in {len(rows)} groups"
    return rows[0]


def _ms(b: GraphBuilder, op: str, inputs: Sequence[str], shape: Sequence[int], n_out: int = 1,
        shapes: Sequence[Sequence[int]] = (), **attrs: object) -> list[str]:
    """A com.microsoft node; its outputs' shapes are declared (ONNX shape inference does not know it)."""
    outs = [b.name(op.lower() + "_") for _ in range(n_out)]
    b.nodes.append(helper.make_node(op, list(inputs), outs, name=b.name(op), domain=MS, **attrs))
    for o, s in zip(outs, [shape, *shapes]):
        b.value_info.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, list(s)))  # type: ignore[attr-defined]
    return outs


def _builder(opset: int) -> GraphBuilder:
    b = GraphBuilder(opset=opset)
    b.value_info = []  # type: ignore[attr-defined]
    return b


def _model(b: GraphBuilder) -> onnx.ModelProto:
    """The builder's graph importing com.microsoft, with the declared value_info (outputs need shapes)."""
    m = helper.make_model(
        helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits, value_info=b.value_info),  # type: ignore[attr-defined]
        opset_imports=[helper.make_opsetid("", b.opset), helper.make_opsetid(MS, 1)],
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _out(b: GraphBuilder, y: str, shape: Sequence[int]) -> None:
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, list(shape)))


def _bias(b: GraphBuilder, n: int) -> str:
    return b.const((b.rng.standard_normal(n) * 0.5).astype(np.float32), "bias")


def _gelu_mlp(opset: int, op: str, bias: bool) -> tuple[onnx.ModelProto, str, str, str | None]:
    """x[B,S,D] @ W1[D,F] -> <op>(h[, bias[F]]) -> @ W2[F,D]."""
    b = _builder(opset)
    x = b.input("x", [B, S, D])
    w1, w2 = b.weight(D, F), b.weight(F, D)
    h = b.op("MatMul", [x, w1])
    bias_name = _bias(b, F) if bias else None
    (g,) = _ms(b, op, [h] + ([bias_name] if bias_name else []), [B, S, F])  # type: ignore[list-item]
    y = b.op("MatMul", [g, w2])
    _out(b, y, [B, S, D])  # type: ignore[arg-type]
    return _model(b), w1, w2, bias_name


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("op", "bias"), [("BiasGelu", True), ("Gelu", False)])
def test_contrib_gelu_is_identity_with_bias_sliced(opset: int, op: str, bias: bool) -> None:
    model, w1, w2, bias_name = _gelu_mlp(opset, op, bias)
    r = assert_oracle(model)
    row = _row(r, w1, 1)
    assert f"{w2}[0]" in row["weights"]
    assert row["channels_before"] == F and row["channels_after"] == F // 2
    dims = _dims(r)
    assert dims[w1] == [D, F // 2] and dims[w2] == [F // 2, D]
    if bias_name:
        assert f"{bias_name}[0]" in row["weights"] and dims[bias_name] == [F // 2]
    node = next(n for n in r.model.graph.node if n.op_type == op)
    assert node.domain == MS
    vi = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in r.model.graph.value_info}
    assert vi[node.output[0]] == [B, S, F // 2]  # the declared shape follows the plan


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_fast_gelu_rule(opset: int, bias: bool) -> None:
    model, w1, _, bias_name = _gelu_mlp(opset, "FastGelu", bias)
    r = assert_oracle(model)
    assert _row(r, w1, 1)["channels_after"] == F // 2
    if bias_name:
        assert _dims(r)[bias_name] == [F // 2]


def test_contrib_rules_are_registered_in_their_domain() -> None:
    assert default_registry().lookup(MS, "FastGelu", 17) is not None
    assert default_registry().lookup(MS, "BiasGelu", 17) is not None
    assert default_registry().lookup("", "BiasGelu", 17) is None  # the domain is part of the key


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("use_sum", [False, True])
def test_skip_layer_norm_blocks_hidden_only(opset: int, use_sum: bool) -> None:
    """SkipLayerNormalization: the hidden axis is blocked with a reason; the MLP after it prunes."""
    b = _builder(opset)
    x = b.input("x", [B, S, D])
    w0, w1, w2 = b.weight(D, D), b.weight(D, F), b.weight(F, D)
    h = b.op("MatMul", [x, w0])
    gamma = b.const(np.linspace(0.5, 1.5, D).astype(np.float32), "gamma")
    beta = _bias(b, D)
    n_out = 4 if use_sum else 1
    outs = _ms(b, "SkipLayerNormalization", [h, x, gamma, beta], [B, S, D], n_out=n_out,
               shapes=[[B, S, 1], [B, S, 1], [B, S, D]], epsilon=1e-5)
    m = b.op("Relu", [b.op("MatMul", [outs[0], w1])])  # type: ignore[list-item]
    y = b.op("MatMul", [m, w2])
    if use_sum:
        y = b.op("Add", [y, outs[3]])
    _out(b, y, [B, S, D])  # type: ignore[arg-type]
    model = _model(b)
    a = spa.analyze(model)
    hidden = _group(a, w0, 1)
    assert not hidden.prunable
    assert any("SkipLayerNormalization" in reason and "hidden axis" in reason for reason in hidden.reasons)
    r = assert_oracle(model)
    assert _row(r, w1, 1)["channels_after"] == F // 2
    assert _dims(r)[w0] == [D, D] and _dims(r)[w2] == [F // 2, D]


def _mlp(b: GraphBuilder, x: str) -> tuple[str, str, str]:
    """x[B,S,D] @ W0[D,F] -> Relu -> @ W1[F,D]: a prunable group before the fused op."""
    w0, w1 = b.weight(D, F), b.weight(F, D)
    h = b.op("MatMul", [b.op("Relu", [b.op("MatMul", [x, w0])]), w1])  # type: ignore[list-item]
    return h, w0, w1  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
def test_fused_attention_is_blocked(opset: int) -> None:
    """com.microsoft Attention (packed QKV weight, num_heads): blocked with a reason; the MLP prunes."""
    b = _builder(opset)
    x = b.input("x", [B, S, D])
    h, w0, w1 = _mlp(b, x)
    wqkv, bqkv = b.weight(D, 3 * D), _bias(b, 3 * D)
    (att,) = _ms(b, "Attention", [h, wqkv, bqkv], [B, S, D], num_heads=2)
    wo = b.weight(D, 4)
    y = b.op("MatMul", [att, wo])
    _out(b, y, [B, S, 4])  # type: ignore[arg-type]
    model = _model(b)
    a = spa.analyze(model)
    assert not any(m.tensor == wqkv for g in a.groups for m in g.members)  # read only by the kernel
    for t, axis in ((w1, 1), (wo, 0)):
        g = _group(a, t, axis)
        assert not g.prunable
        assert any("fused attention" in reason and "Attention" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)
    assert _row(r, w0, 1)["channels_after"] == F // 2
    assert _dims(r)[wqkv] == [D, 3 * D]


@pytest.mark.parametrize("opset", OPSETS)
def test_multi_head_attention_is_blocked(opset: int) -> None:
    """com.microsoft MultiHeadAttention fed by separate Q/K/V projections: the projections are blocked."""
    b = _builder(opset)
    x = b.input("x", [B, S, D])
    h, w0, _ = _mlp(b, x)
    wq, wk, wv = b.weight(D, D), b.weight(D, D), b.weight(D, D)
    q, k, v = (b.op("MatMul", [h, w]) for w in (wq, wk, wv))
    (att,) = _ms(b, "MultiHeadAttention", [q, k, v], [B, S, D], num_heads=2)  # type: ignore[list-item]
    y = b.op("MatMul", [att, b.weight(D, 4)])
    _out(b, y, [B, S, 4])  # type: ignore[arg-type]
    model = _model(b)
    a = spa.analyze(model)
    for w in (wq, wk, wv):
        g = _group(a, w, 1)
        assert not g.prunable and any("MultiHeadAttention" in reason for reason in g.reasons)
    r = assert_oracle(model)
    assert _row(r, w0, 1)["channels_after"] == F // 2
    assert _dims(r)[wq][1] == D  # its rows may prune with the MLP output (h is not blocked)


@pytest.mark.parametrize("op", ContribFusedAttentionRule.op_types)
def test_every_fused_attention_op_blocks_what_it_touches(op: str) -> None:
    """Analysis only (many of these kernels need CUDA or extra inputs): every touched axis is blocked."""
    b = _builder(17)
    x = b.input("x", [B, S, D])
    w = b.weight(D, D)
    q = b.op("MatMul", [x, w])
    (att,) = _ms(b, op, [q], [B, S, D], num_heads=2)  # type: ignore[list-item]
    _out(b, b.op("MatMul", [att, b.weight(D, 3)]), [B, S, 3])  # type: ignore[arg-type]
    m = helper.make_model(
        helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits, value_info=b.value_info),  # type: ignore[attr-defined]
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
    )
    m.ir_version = 8
    g = _group(spa.analyze(m), w, 1)
    assert not g.prunable
    assert any(op in reason and "ONNX Runtime fused attention" in reason for reason in g.reasons), g.reasons
