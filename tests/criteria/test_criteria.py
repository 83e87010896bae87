"""Every criterion through the mask oracle (a small built CNN and a tiny exported zoo model), and what
each one computes: |γ|, LAMP, OBS compensation, bias compensation, options, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.analysis.groups import analyze_graph
from spa.calibration import ArraySource, RandomSource
from spa.criteria import CRITERIA, CriterionContext, get_criterion
from spa.errors import UsageError
from spa.plan import make_plan
from spa.runtime.session import session
from spa.surgery import prune_model
from tests.oracle import GraphBuilder, assert_oracle

ALL = ("l1", "l2", "random", "bn", "lamp", "obs", "obspa", "wanda", "flap")
GRADIENT = ("taylor", "snip")  # need torch: tests/recover/test_saliency.py
CALIB = RandomSource(samples=16, batch_size=8, seed=0)
FAST = {"synthetic_samples": 32}  # obspa's synthetic statistics: fewer random inputs than the default 128


def small_cnn(opset: int = 13, group: int = 1) -> onnx.ModelProto:
    """conv-BN-ReLU, bias-less conv-BN-ReLU, residual, (grouped) conv, pooling, Flatten → MatMul + Add."""
    b = GraphBuilder(opset=opset, seed=1)
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    z = b.op("Relu", [b.bn(b.conv(y, 8, 8, bias=False), 8)])
    y = b.op("Add", [y, z])
    y = b.op("Relu", [b.conv(y, 8, 12, group=group)])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Clip", [b.bn(b.conv(y, 12, 16, k=1), 16), b.const(np.float32(0)), b.const(np.float32(6))])
    y = b.op("Flatten", [y])
    y = b.op("MatMul", [y, b.weight(16 * 16, 10, scale=0.1)])
    b.output(b.op("Add", [y, b.const(np.zeros(10, np.float32))]))
    return b.build()


def test_registry_lists_every_criterion() -> None:
    assert set(ALL) | set(GRADIENT) == set(CRITERIA)


@pytest.mark.parametrize("criterion", ALL)
def test_small_cnn_oracle(criterion: str) -> None:
    r = assert_oracle(small_cnn(), 0.5, criterion, calibration=CALIB, criterion_options=FAST)
    if criterion in ("obs", "obspa", "flap"):
        assert r.report["compensated_weights"], "a compensating criterion compensated nothing"


@pytest.mark.parametrize("criterion", ["obs", "obspa", "wanda", "flap"])
def test_grouped_conv_blocks_oracle(criterion: str) -> None:
    """A grouped conv consumer is seen as one block per group (its own H, update and bias)."""
    r = assert_oracle(small_cnn(group=2), 0.5, criterion, calibration=CALIB, criterion_options=FAST)
    assert r.report["compensated_weights"] or criterion == "wanda"


@pytest.fixture(scope="module")
def tiny_zoo_model(zoo_export) -> Path:  # type: ignore[no-untyped-def]
    return zoo_export("mobilenetv2", "legacy")  # depthwise convs, residuals, BN, ReLU6


@pytest.mark.parametrize("criterion", ALL)
def test_tiny_zoo_model_oracle(tiny_zoo_model: Path, criterion: str) -> None:
    r = assert_oracle(str(tiny_zoo_model), 0.5, criterion, calibration=CALIB, criterion_options=FAST)
    if criterion in ("obs", "obspa", "flap"):
        assert r.report["compensated_weights"]


@pytest.mark.parametrize("criterion", ["obs", "wanda", "flap"])
def test_calibrated_criteria_need_data(criterion: str) -> None:
    with pytest.raises(UsageError, match="needs calibration data"):
        spa.prune(small_cnn(), ratio=0.5, criterion=criterion)


def test_bn_scores_are_abs_gamma() -> None:
    b = GraphBuilder(opset=13, seed=2)
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.bn(b.conv(x, 3, 6), 6)])
    b.output(b.conv(b.op("Relu", [b.conv(y, 6, 5)]), 5, 2))  # the second group has no BN
    analysis = spa.analyze(b.build())
    ctx = CriterionContext(options={"normalize": "none"})
    scores = get_criterion("bn").score(analysis, ctx)
    tensors = analysis.model.graph.tensors()
    bn = next(n for n in analysis.model.graph.nodes if n.op == "BatchNormalization")
    gid = next(g.id for g in analysis.prunable if bn.name in g.nodes)
    np.testing.assert_allclose(scores[gid], np.abs(np.asarray(tensors[bn.inputs[1].name].values)))
    assert any("has no BatchNormalization; scored by l2" in n for n in ctx.notes)


def test_lamp_largest_channel_scores_one() -> None:
    analysis = spa.analyze(small_cnn())
    scores = get_criterion("lamp").score(analysis, CriterionContext())
    l2 = get_criterion("l2").score(analysis, CriterionContext())
    for gid, s in scores.items():
        assert s.max() == pytest.approx(1.0)
        assert list(np.argsort(s, kind="stable")) == list(np.argsort(l2[gid], kind="stable"))


def test_reduction_and_normalisation_options() -> None:
    r = spa.prune(small_cnn(), ratio=0.5, criterion="obspa", reduction="max", normalize="zscore",
                  criterion_options=FAST)
    assert r.report["criterion_options"] == FAST | {"reduction": "max", "normalize": "zscore"}
    with pytest.raises(UsageError, match="unknown reduction"):
        spa.prune(small_cnn(), ratio=0.5, criterion="l2", reduction="median")
    with pytest.raises(UsageError, match="unknown normalisation"):
        spa.prune(small_cnn(), ratio=0.5, criterion="l2", normalize="softmax")


def _dense_model(mean_shift: float) -> onnx.ModelProto:
    """x → MatMul(W1) + b1 → Relu → MatMul(W2) + b2: the second layer reads non-zero-mean channels."""
    b = GraphBuilder(opset=13, seed=3)
    x = b.input("x", [1, 12])
    h = b.op("Add", [b.op("MatMul", [x, b.weight(12, 16)]), b.const(np.full(16, mean_shift, np.float32))])
    h = b.op("Relu", [h])
    b.output(b.op("Add", [b.op("MatMul", [h, b.weight(16, 6)]), b.const(np.zeros(6, np.float32))]))
    return b.build()


def _prune_with(model: onnx.ModelProto, criterion: str, data: np.ndarray, compensate: bool,
                options: dict[str, object] | None = None) -> onnx.ModelProto:
    analysis = analyze_graph(spa.load(model))
    ctx = CriterionContext(calibration=ArraySource({"x": data}, batch_size=64), options=options or {})
    crit = get_criterion(criterion)
    plan = make_plan(analysis, crit.score(analysis, ctx), 0.5)
    updates = crit.compensate(analysis, plan, ctx) if compensate else {}
    return prune_model(analysis, plan, updates=updates).to_onnx()


def _outputs(model: onnx.ModelProto, data: np.ndarray) -> np.ndarray:
    sess = session(model)
    return np.concatenate([sess.run(None, {"x": data[i:i + 1]})[0] for i in range(len(data))])


def test_obs_compensation_reconstructs_the_layer_output() -> None:
    model = _dense_model(0.5)
    data = np.random.default_rng(0).standard_normal((256, 12)).astype(np.float32)
    ref = _outputs(model, data)
    err = {comp: np.linalg.norm(_outputs(_prune_with(model, "obs", data, comp), data) - ref) for comp in (False, True)}
    assert err[True] < 0.7 * err[False]


@pytest.mark.parametrize(("criterion", "options"), [("flap", {}), ("obspa", {"obspa_h": "diag"}),
                                                    ("obs", {"obs_intercept": True})])
def test_bias_compensation_keeps_the_mean_output(criterion: str, options: dict[str, object]) -> None:
    model = _dense_model(1.0)
    data = np.random.default_rng(1).standard_normal((512, 12)).astype(np.float32)
    ref = _outputs(model, data).mean(axis=0)
    got = _outputs(_prune_with(model, criterion, data, True, options), data).mean(axis=0)
    plain = _outputs(_prune_with(model, criterion, data, False, options), data).mean(axis=0)
    if criterion == "obspa":  # moments measured on random data (no BN): exact only for that data's mean
        assert np.linalg.norm(got - ref) < 0.5 * np.linalg.norm(plain - ref)
    else:
        np.testing.assert_allclose(got, ref, atol=1e-4 * (1 + np.abs(ref).max()))
        assert np.linalg.norm(plain - ref) > 1e-2


def test_obspa_modes_and_notes() -> None:
    r = spa.prune(small_cnn(), ratio=0.5, criterion="obspa", criterion_options=FAST)
    assert any("no BatchNorm right upstream" in n for n in r.report["criterion_notes"])  # type: ignore[union-attr]
    r = spa.prune(small_cnn(), ratio=0.5, criterion="obspa", criterion_options={"obspa_h": "diag"})
    assert r.report["compensated_weights"]
    with pytest.raises(UsageError, match="obspa_h"):
        spa.prune(small_cnn(), ratio=0.5, criterion="obspa", criterion_options={"obspa_h": "exact"})


@pytest.mark.parametrize("criterion", ["obs", "obspa"])
def test_same_seed_same_bytes(criterion: str) -> None:
    model = _dense_model(0.5)
    a = spa.prune(model, ratio=0.5, criterion=criterion, calibration=CALIB,
                  criterion_options=FAST).model.SerializeToString()
    b = spa.prune(model, ratio=0.5, criterion=criterion, calibration=CALIB,
                  criterion_options=FAST).model.SerializeToString()
    assert a == b


def test_consumer_without_matrix_view_falls_back_with_a_note() -> None:
    b = GraphBuilder(opset=13, seed=6)
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.conv(x, 3, 6)])
    y = b.op("ConvTranspose", [y, b.weight(6, 2, 2, 2)], strides=[2, 2], group=2)
    b.output(b.conv(b.op("Relu", [y]), 4, 2))
    r = assert_oracle(b.build(), 0.5, "obs", calibration=CALIB)
    assert any("no matrix view of ConvTranspose" in n and "with group 2" in n
               for n in r.report["criterion_notes"])  # type: ignore[union-attr]


def test_oversize_inputs_fall_back_to_magnitude() -> None:
    r = assert_oracle(small_cnn(), 0.5, "obs", calibration=CALIB, criterion_options={"max_features": 40})
    notes = r.report["criterion_notes"]
    assert any("(limit 40)" in n and "scored by weight magnitude" in n for n in notes)  # type: ignore[union-attr]
