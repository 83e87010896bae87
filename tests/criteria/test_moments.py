"""Gaussian moments through activations (closed form and quadrature) against Monte Carlo, the graph
walk that estimates channel moments from BatchNorm parameters, and the batch-statistics model that
makes synthetic activations."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from spa.calibration import RandomSource, run_batches
from spa.calibration.synthetic import batch_norm_model
from spa.criteria.propagate import tensor_moments
from spa.criteria.reduce import normalize, reduce_members
from spa.errors import UsageError
from spa.rules.moments import ACTIVATIONS, Moments, gaussian_moments, relu_moments
from tests.oracle import GraphBuilder

MU = np.array([-2.0, -0.5, 0.0, 0.3, 1.5])
VAR = np.array([0.5, 1.0, 2.0, 0.1, 4.0])


def _monte_carlo(f, n: int = 100_000):  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).standard_normal((n, 1)) * np.sqrt(VAR) + MU
    y = f(x)
    return y.mean(axis=0), y.var(axis=0)


def test_rectified_gaussian_matches_monte_carlo() -> None:
    mean, var = relu_moments(MU, VAR)
    mc_mean, mc_var = _monte_carlo(lambda x: np.maximum(x, 0), n=400_000)
    np.testing.assert_allclose(mean, mc_mean, atol=6e-3)
    np.testing.assert_allclose(var, mc_var, atol=1e-2)
    m0, v0 = relu_moments(np.array([1.0, -1.0]), np.zeros(2))  # degenerate: no variance
    assert m0.tolist() == [1.0, 0.0] and v0.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "Gelu", "Softplus", "Elu"])
def test_quadrature_matches_monte_carlo(op: str) -> None:
    f = ACTIVATIONS[op](gs.Node(op, attrs={}))
    mean, var = gaussian_moments(f, MU, VAR)
    mc_mean, mc_var = _monte_carlo(f)
    np.testing.assert_allclose(mean, mc_mean, atol=2e-2)
    np.testing.assert_allclose(var, mc_var, atol=3e-2, rtol=2e-2)


def _chain() -> tuple[gs.Graph, dict[str, gs.Tensor]]:
    b = GraphBuilder(opset=13, seed=0)
    x = b.input("x", [1, 3, 4, 4])
    y = b.bn(b.conv(x, 3, 4), 4)
    r = b.op("Relu", [y])
    p = b.op("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2])
    s = b.op("Mul", [p, b.const(np.full((4, 1, 1), 2.0, np.float32))])
    c = b.op("Clip", [y, b.const(np.float32(0)), b.const(np.float32(6))])
    f = b.op("Flatten", [s])
    b.output(f)
    b.output(c)
    g = gs.import_onnx(onnx.shape_inference.infer_shapes(b.build()))
    return g, g.tensors()


def test_graph_walk_from_batchnorm() -> None:
    g, t = _chain()
    bn = next(n for n in g.nodes if n.op == "BatchNormalization")
    gamma, beta = np.asarray(bn.inputs[1].values, np.float64), np.asarray(bn.inputs[2].values, np.float64)
    relu_mean, relu_var = relu_moments(beta, gamma**2)
    flat = tensor_moments(next(v for k, v in t.items() if k.startswith("flatten")), 1)
    assert isinstance(flat, Moments) and len(flat.mean) == 16  # 4 channels x 2x2 positions
    np.testing.assert_allclose(flat.mean[::4], 2 * relu_mean)
    np.testing.assert_allclose(flat.var[::4], 4 * relu_var)
    clip = tensor_moments(next(v for k, v in t.items() if k.startswith("clip")), 1)
    mc_mean, _ = _monte_carlo_clip(beta, gamma)
    np.testing.assert_allclose(clip.mean, mc_mean, atol=2e-2)  # type: ignore[union-attr]
    assert tensor_moments(t["x"], 1) == "'x' is a graph input"
    conv_out = bn.inputs[0]
    assert "no BatchNormalization before" in tensor_moments(conv_out, 1)  # type: ignore[operator]


def _monte_carlo_clip(beta: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((100_000, 1)) * np.abs(gamma) + beta
    y = np.clip(x, 0, 6)
    return y.mean(axis=0), y.var(axis=0)


def test_batch_statistics_model_reproduces_bn_moments() -> None:
    g = GraphBuilder(opset=13, seed=4)
    x = g.input("x", [1, 3, 6, 6])
    y = g.bn(g.conv(x, 3, 5), 5)
    g.output(g.op("Relu", [y]))
    model = g.build()
    synth = batch_norm_model(model)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    gamma, beta = inits[bn.input[1]], inits[bn.input[2]]
    runs = list(run_batches(synth, RandomSource(samples=64, batch_size=32), [bn.output[0]], check_batching=False))
    for run in runs:
        v = run.values[bn.output[0]]
        np.testing.assert_allclose(v.mean(axis=(0, 2, 3)), beta, atol=1e-4)
        np.testing.assert_allclose(v.std(axis=(0, 2, 3)), np.abs(gamma), rtol=1e-3)


def test_reductions_and_normalisers() -> None:
    a, b = np.array([1.0, 4.0, 2.0]), np.array([3.0, 0.0, 2.0])
    assert reduce_members([a, b], "sum").tolist() == [4.0, 4.0, 4.0]
    assert reduce_members([a, b], "mean").tolist() == [2.0, 2.0, 2.0]
    assert normalize(a, "mean").mean() == pytest.approx(1.0)
    z = normalize(a, "zscore")
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    assert normalize(a, "lamp").tolist() == pytest.approx([1 / 7, 1.0, 2 / 6])
    assert normalize(np.zeros(3), "mean").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(UsageError):
        normalize(a, "softmax")

