"""Normalisation rules: per-channel norms are pruned with their parameters; norms over channels block."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _group, _row


@pytest.mark.parametrize("opset", [11, 15, 17])
@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_params_sliced(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=bias)
    h = b.op("Relu", [b.bn(h, 8)])  # type: ignore[assignment]
    bn_params = list(b.nodes[-2].input[1:])
    y, _ = _conv(b, h, 8, 4, k=1, bias=bias)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_before"] == 8 and row["channels_after"] == 4
    assert {f"{p}[0]" for p in bn_params} <= set(row["weights"])
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert all(dims[p] == [4] for p in bn_params)


@pytest.mark.parametrize("opset", [11, 17])
def test_batchnorm_between_two_prunable_layers(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w1 = _conv(b, x, 3, 8, bias=False)
    h = b.op("Relu", [b.bn(h, 8)])  # type: ignore[assignment]
    h, w2 = _conv(b, h, 8, 6, bias=False)
    h = b.op("Relu", [b.bn(h, 6)])  # type: ignore[assignment]
    y, _ = _conv(b, h, 6, 2, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert (_row(r, w1)["channels_after"], _row(r, w2)["channels_after"]) == (4, 3)
    assert r.report["num_pruned"] == 2


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("bias", [True, False])
def test_instance_norm_params_sliced(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=bias)
    scale = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "in_scale")
    shift = b.const(b.rng.standard_normal(8).astype(np.float32), "in_bias")
    h = b.op("InstanceNormalization", [h, scale, shift], epsilon=1e-5)  # type: ignore[assignment]
    h = b.op("Relu", [h])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 4, k=1, bias=bias)
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert {f"{scale}[0]", f"{shift}[0]"} <= set(row["weights"])
    assert row["channels_after"] == 4
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[scale] == dims[shift] == [4]


def _stats_over_channels(op: str, opset: int) -> tuple[onnx.ModelProto, list[str], str]:
    """conv0 -> Relu -> conv1 -> <norm over the channel axis> -> conv2 -> Relu -> conv3.

    Returns the model, the weights of conv0..conv2 (conv1's channels are blocked, conv0's and conv2's
    are prunable) and the norm node's name.
    """
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w1 = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    if op == "LayerNormalization-NHWC":  # transformer/ConvNeXt style: LN over the last (channel) axis
        t = b.op("Transpose", [h], perm=[0, 2, 3, 1])
        gamma = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "ln_g")
        beta = b.const(b.rng.standard_normal(8).astype(np.float32), "ln_b")
        t = b.op("LayerNormalization", [t, gamma, beta], axis=-1)  # type: ignore[assignment]
        norm = b.nodes[-1].name
        h = b.op("Transpose", [t], perm=[0, 3, 1, 2])  # type: ignore[assignment]
    elif op == "LayerNormalization":  # over (C, H, W) of NCHW
        gamma = b.const(b.rng.uniform(0.5, 1.5, (8, 6, 6)).astype(np.float32), "ln_g")
        h = b.op("LayerNormalization", [h, gamma], axis=1)  # type: ignore[assignment]
        norm = b.nodes[-1].name
    else:  # GroupNormalization (opset >= 21: scale/bias per channel; the opset-18 form is deprecated)
        gamma = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "gn_g")
        beta = b.const(b.rng.standard_normal(8).astype(np.float32), "gn_b")
        h = b.op("GroupNormalization", [h, gamma, beta], num_groups=4)  # type: ignore[assignment]
        norm = b.nodes[-1].name
    h, w2 = _conv(b, h, 8, 8)
    y, _ = _conv(b, b.op("Relu", [h]), 8, 4, k=1)  # type: ignore[arg-type]
    # explicit output shape: onnx has no shape inference for GroupNormalization
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [1, 4, 6, 6]))
    return b.build(), [w0, w1, w2], norm


NORM_CASES = [("LayerNormalization-NHWC", 17), ("LayerNormalization-NHWC", 18), ("LayerNormalization", 17),
              ("GroupNormalization", 21), ("GroupNormalization", 22)]



@pytest.mark.parametrize(("op", "opset"), NORM_CASES)
def test_norm_over_channels_is_blocked(op: str, opset: int) -> None:
    model, (w0, w1, _), norm = _stats_over_channels(op, opset)
    g = _group(spa.analyze(model), w1, 0)
    assert not g.prunable
    assert any(f"{op.split('-')[0]} '{norm}' normalises over axis" in reason for reason in g.reasons), g.reasons
    assert f"{w1}[0]" in g.label
    # what comes before the norm still prunes, exactly, and the blocked group keeps every channel
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w1)["channels_after"] == 8
    assert {i.name: list(i.dims) for i in r.model.graph.initializer}[w1][0] == 8


@pytest.mark.parametrize(
    ("op", "opset"), [pytest.param(o, v, marks=()) for o, v in NORM_CASES]
)
def test_layers_after_norm_over_channels_still_prune(op: str, opset: int) -> None:
    model, (_w0, _w1, w2), _ = _stats_over_channels(op, opset)
    r = assert_oracle(model)
    assert _row(r, w2)["channels_before"] == 8 and _row(r, w2)["channels_after"] == 4
    assert r.report["num_pruned"] == 2


@pytest.mark.parametrize("opset", [11, 17])
def test_lrn_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w1 = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    h = b.op("LRN", [h], size=3)  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 2, k=1)
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w1, 0)
    assert not g.prunable and any("LRN" in reason for reason in g.reasons)
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4 and _row(r, w1)["channels_after"] == 8


@pytest.mark.parametrize("opset", [11, 12])  # MVN-13 fails onnx's own full check (function body inference)
def test_mean_variance_normalization_over_spatial_axes(opset: int) -> None:
    """MVN's default axes (0, 2, 3) leave the channels independent: prunable."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("MeanVarianceNormalization", [h])  # type: ignore[assignment]
    y, _ = _conv(b, h, 8, 2, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
