"""Patterns of timm architectures (issue 14) that used to block and now prune, through the mask oracle:

* global response normalisation (ConvNeXt-V2): ``x + γ·(x·N(x)) + β`` with ``N(x) = ‖x‖_HW / mean_C ‖x‖_HW``
  — the channel mean of per-channel norms is a *local* statistic, restricted to the kept channels;
* gMLP's spatial gating unit: ``u, v = chunk(h); u · proj_tokens(LayerNorm(v))`` — the LayerNorm over the
  gate half normalises the MLP's own channels, not the model's hidden size.

The look-alikes that must stay blocked stay blocked: a mean over channels of the activation itself (a
decomposed LayerNorm), a LayerNorm whose output does not gate a sibling chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _group, _i64

OPSETS = [13, 17, 18]
LN_OPSETS = [17, 18, 20]  # LayerNormalization is opset 17


def _reduce(b: GraphBuilder, op: str, x: str, axes: list[int]) -> str:
    """A Reduce* node with keepdims=1 and ``axes`` as an attribute or (opset 18, ReduceSum 13) an input."""
    as_input = b.opset >= 18 or (op == "ReduceSum" and b.opset >= 13)
    if as_input:
        return b.op(op, [x, _i64(b, axes, "axes")], keepdims=1)  # type: ignore[return-value]
    return b.op(op, [x], axes=axes, keepdims=1)  # type: ignore[return-value]


def _grn(b: GraphBuilder, x: str, c: int, norm: str) -> str:
    """timm's GlobalResponseNorm (channels first): x + bias + weight·(x·Nx)."""
    if norm == "l2":
        gx = _reduce(b, "ReduceL2", x, [2, 3])
    else:  # x.pow(2).sum((2, 3)).sqrt()
        gx = b.op("Sqrt", [_reduce(b, "ReduceSum", b.op("Mul", [x, x]), [2, 3])])  # type: ignore[list-item]
    mean = _reduce(b, "ReduceMean", gx, [1])  # type: ignore[arg-type]
    nx = b.op("Div", [gx, b.op("Add", [mean, b.const(np.float32(1e-6))])])  # type: ignore[list-item]
    gamma = b.const(b.rng.standard_normal((1, c, 1, 1)).astype(np.float32), "gamma")
    beta = b.const(b.rng.standard_normal((1, c, 1, 1)).astype(np.float32), "beta")
    scaled = b.op("Mul", [gamma, b.op("Mul", [x, nx])])  # type: ignore[list-item]
    return b.op("Add", [x, b.op("Add", [beta, scaled])])  # type: ignore[return-value,list-item]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("norm", ["l2", "sqrt_sum"])
def test_global_response_norm_prunes(opset: int, norm: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 4, 6, 6])
    h, w1 = _conv(b, x, 4, 16, k=1)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    h = _grn(b, h, 16, norm)
    y, w2 = _conv(b, h, 16, 4, k=1)
    b.output(y)
    m = b.build()
    g = _group(spa.analyze(m), w1, 0)
    assert g.prunable and g.kind == "channel", g.reasons
    r = assert_oracle(m)
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[w1][0] == 8 and dims[w2][1] == 8


@pytest.mark.parametrize("opset", OPSETS)
def test_mean_over_channels_of_the_activation_stays_blocked(opset: int) -> None:
    """``x - mean_C(x)`` (a decomposed LayerNorm) mixes channels: blocked, with the --prune-hidden hint."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 4, 6, 6])
    h, w1 = _conv(b, x, 4, 16, k=1)
    h = b.op("Sub", [h, _reduce(b, "ReduceMean", h, [1])])  # type: ignore[assignment]
    y, _ = _conv(b, h, 16, 4, k=1)
    b.output(y)
    g = _group(spa.analyze(b.build()), w1, 0)
    assert not g.prunable and "--prune-hidden" in g.reasons[0]


def _layernorm(b: GraphBuilder, x: str, c: int) -> str:
    scale = b.const(b.rng.uniform(0.5, 1.5, c).astype(np.float32), "ln_s")
    bias = b.const(b.rng.standard_normal(c).astype(np.float32), "ln_b")
    return b.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)  # type: ignore[return-value]


def _chunk(b: GraphBuilder, h: str, c: int, how: str) -> tuple[str, str]:
    if how == "split":
        if b.opset >= 18:
            u, v = b.op("Split", [h], n_out=2, axis=2, num_outputs=2)
        elif b.opset >= 13:
            u, v = b.op("Split", [h, _i64(b, [c, c], "split")], n_out=2, axis=2)
        else:
            u, v = b.op("Split", [h], n_out=2, axis=2, split=[c, c])
        return u, v  # type: ignore[return-value]
    axes = _i64(b, [2], "axes")
    u = b.op("Slice", [h, _i64(b, [0], "st"), _i64(b, [c], "en"), axes])
    v = b.op("Slice", [h, _i64(b, [c], "st"), _i64(b, [2 * c], "en"), axes])
    return u, v  # type: ignore[return-value]


def _gmlp_block(b: GraphBuilder, x: str, d: int, c: int, tokens: int, how: str, gate: bool = True
                ) -> tuple[str, str, str]:
    """fc1 (d → 2c), GELU-ish, u, v = chunk; u · Transpose(MatMul_tokens(Transpose(LN(v)))) + bias; fc2."""
    w1 = b.weight(d, 2 * c)
    h = b.op("Add", [b.op("MatMul", [x, w1]), b.const(b.rng.standard_normal(2 * c).astype(np.float32))])
    h = b.op("Sigmoid", [h])  # type: ignore[list-item]
    u, v = _chunk(b, h, c, how)  # type: ignore[arg-type]
    v = _layernorm(b, v, c)
    t = b.op("Transpose", [v], perm=[0, 2, 1])
    t = b.op("MatMul", [t, b.weight(tokens, tokens)])  # type: ignore[list-item]
    t = b.op("Add", [t, b.const(b.rng.standard_normal(tokens).astype(np.float32))])  # type: ignore[list-item]
    t = b.op("Transpose", [t], perm=[0, 2, 1])  # type: ignore[list-item]
    g = b.op("Mul", [u, t] if gate else [t, t])  # type: ignore[list-item]
    w2 = b.weight(c, d)
    return b.op("MatMul", [g, w2]), w1, w2  # type: ignore[return-value,list-item]


@pytest.mark.parametrize("opset", LN_OPSETS)
@pytest.mark.parametrize("how", ["split", "slice"])
def test_spatial_gating_unit_prunes(opset: int, how: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 5, 8])
    y, w1, w2 = _gmlp_block(b, x, 8, 12, 5, how)
    b.output(y)
    m = b.build()
    g = _group(spa.analyze(m), w1, 1)
    assert g.prunable and g.kind == "channel", g.reasons
    r = assert_oracle(m)
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[w1][1] == 12 and dims[w2][0] == 6


@pytest.mark.parametrize("opset", LN_OPSETS)
def test_layernorm_that_gates_nothing_stays_blocked(opset: int) -> None:
    """The same block with ``t · t`` instead of ``u · t``: the LayerNorm is an ordinary hidden-size norm."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 5, 8])
    y, w1, _ = _gmlp_block(b, x, 8, 12, 5, "split", gate=False)
    b.output(y)
    a = spa.analyze(b.build())
    blocked = [g for g in a.groups if not g.prunable and any(m.tensor == w1 for m in g.members)]
    assert any("--prune-hidden" in r for g in blocked for r in g.reasons)


def _group_norm(b: GraphBuilder, x: str, c: int, groups: int, target: str) -> str:
    """``F.group_norm`` as the exporters write it: Reshape [N, G, -1], InstanceNormalization, Reshape back
    (to ``Shape(x)``: legacy; to a constant: dynamo), then the per-channel affine."""
    t = b.op("Reshape", [x, _i64(b, [0, groups, -1])])
    t = b.op("InstanceNormalization", [t, b.const(np.ones(groups, np.float32)),  # type: ignore[list-item]
                                       b.const(np.zeros(groups, np.float32))], epsilon=1e-5)
    back = b.op("Shape", [x]) if target == "shape" else _i64(b, [1, c, 6, 6])
    y = b.op("Reshape", [t, back])  # type: ignore[list-item]
    y = b.op("Mul", [y, b.const(b.rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32))])  # type: ignore[list-item]
    return b.op("Add", [y, b.const(b.rng.standard_normal((c, 1, 1)).astype(np.float32))])  # type: ignore[return-value,list-item]


@pytest.mark.parametrize("opset", [13, 15, 17])
@pytest.mark.parametrize("target", ["shape", "constant"])
def test_group_norm_prunes_the_same_positions_in_every_group(opset: int, target: str) -> None:
    """ResNetV2-BiT's GroupNorm (32 groups there, 4 here): channels prune evenly per group, G stays."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w1 = _conv(b, x, 3, 16)
    h = b.op("Relu", [_group_norm(b, h, 16, 4, target)])  # type: ignore[assignment]
    y, w2 = _conv(b, h, 16, 4)
    b.output(y, [1, 4, 6, 6])
    m = b.build()
    g = _group(spa.analyze(m), w1, 0)
    assert g.prunable and g.channels == 4, g.reasons  # 4 in-group positions
    r = assert_oracle(m)
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[w1][0] == 8 and dims[w2][1] == 8


@pytest.mark.parametrize("opset", [13, 17])
def test_group_norm_on_a_residual_stream(opset: int) -> None:
    """Pre-activation ResNetV2: the GroupNorm reads the residual stream; the stream prunes per position."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    s, w0 = _conv(b, x, 3, 8)
    h = b.op("Relu", [_group_norm(b, s, 8, 2, "shape")])
    h, _ = _conv(b, h, 8, 8)  # type: ignore[arg-type]
    s = b.op("Add", [s, h])  # type: ignore[assignment]
    y, _ = _conv(b, b.op("Relu", [_group_norm(b, s, 8, 2, "constant")]), 8, 4)  # type: ignore[arg-type]
    b.output(y, [1, 4, 6, 6])
    m = b.build()
    assert _group(spa.analyze(m), w0, 0).prunable
    assert_oracle(m)


@pytest.mark.parametrize("opset", [13, 17])
def test_instance_norm_over_merged_channels_is_blocked(opset: int) -> None:
    """Channels merged into an InstanceNormalization's normalised axis (not a GroupNorm spa recognises:
    a Relu before the Reshape back) are blocked with the node named; they used to prune, inexactly."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w1 = _conv(b, x, 3, 8)
    t = b.op("Reshape", [h, _i64(b, [0, 1, -1])])
    t = b.op("InstanceNormalization", [t, b.const(np.ones(1, np.float32)),  # type: ignore[list-item]
                                       b.const(np.zeros(1, np.float32))], epsilon=1e-5)
    t = b.op("Reshape", [b.op("Relu", [t]), _i64(b, [1, 8, 6, 6])])  # type: ignore[list-item]
    y, _ = _conv(b, t, 8, 4)  # type: ignore[arg-type]
    b.output(y, [1, 4, 6, 6])
    g = _group(spa.analyze(b.build()), w1, 0)
    assert not g.prunable and any("InstanceNormalization" in r for r in g.reasons), g.reasons
