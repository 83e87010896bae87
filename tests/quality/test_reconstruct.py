"""Sequential reconstruction: the algebra, the mask oracle on every layer kind it solves (Conv plain,
grouped, depthwise neighbours, Gemm/MatMul, ConvTranspose, BN-folded exports of both torch exporters),
that it lowers the output distortion against one-shot OBS, the options and the CLI flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.calibration import ArraySource
from spa.cli import main
from spa.criteria.obs_math import damped_inverse, obs_update
from spa.errors import UsageError
from spa.options import PruneOptions
from spa.quality.probe import distortion
from spa.quality.reconstruct import _Block, solve_block
from tests.criteria.test_criteria import small_cnn
from tests.oracle import GraphBuilder, assert_oracle
from tests.quality.test_quality import data, run

SEQ = {"reconstruct": "sequential", "realign": False, "round_to": 1}


def _block(w: np.ndarray, x: np.ndarray, x_hat: np.ndarray, cols: np.ndarray, intercept: bool) -> _Block:
    prior = np.hstack([w[:, cols], np.zeros((len(w), int(intercept)))])
    b = _Block(slice(0, w.shape[0]), np.arange(w.shape[1]), cols, w, prior, intercept)
    b.update(0, x[0::2], x_hat[0::2])
    b.update(1, x[1::2], x_hat[1::2])
    return b


def test_without_upstream_change_it_is_the_obs_update() -> None:
    """x̂ = x, no intercept: the ridge solution towards W_S is the one-shot OBS update damped with the same λ."""
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((5, 8)), rng.standard_normal((200, 8)) @ rng.standard_normal((8, 8))
    cols = np.array([0, 2, 3, 6])
    got, _ = solve_block(_block(w, x, x, cols, False), 0.01, (1.0,))
    h = x.T @ x / len(x)
    lam = 0.01 * np.mean(np.diag(h)[cols])  # λ from the kept columns' diagonal
    hinv = damped_inverse(h, lam / np.mean(np.diag(h)))
    want = obs_update(w, hinv, np.setdiff1d(np.arange(8), cols))[:, cols]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_with_drifted_inputs_it_is_least_squares_with_intercept() -> None:
    """With a tiny damping the solution is the least-squares fit of W x from [x̂_S, 1]."""
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((4, 6)), rng.standard_normal((300, 6))
    x_hat = 0.7 * x + 0.3 * rng.standard_normal(x.shape) + 0.5
    cols = np.array([1, 2, 4, 5])
    got, _ = solve_block(_block(w, x, x_hat, cols, True), 1e-10, (1.0,))
    design = np.hstack([x_hat[:, cols], np.ones((len(x), 1))])
    want = np.linalg.lstsq(design, x @ w.T, rcond=None)[0].T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("criterion", ["obs", "l2"])
def test_oracle_small_cnn(opset: int, group: int, criterion: str) -> None:
    """Conv (plain / grouped, with bias, BN after, residual) and MatMul + Add: all reconstructed."""
    r = assert_oracle(small_cnn(opset, group), 0.5, criterion, calibration=data((3, 8, 8)), **SEQ)
    rec = r.report["reconstruction"]
    assert isinstance(rec, dict) and rec["layers"] == 4 and rec["ort_passes"] == 2 * rec["levels"], rec
    ops = {p["op"] for p in rec["per_layer"]}  # type: ignore[index]
    assert ops == {"Conv", "MatMul"} and r.report["reconstruct"] == "sequential"


def _gemm_model(opset: int) -> onnx.ModelProto:
    """Gemm (transB) → Relu → Gemm (alpha/beta) → Relu → MatMul (3-D activations) + Add."""
    b = GraphBuilder(opset=opset, seed=4)
    x = b.input("x", [1, 12])
    y = b.op("Relu", [b.op("Gemm", [x, b.weight(16, 12), b.const(np.ones(16, np.float32))], transB=1)])
    y = b.op("Relu", [b.op("Gemm", [y, b.weight(16, 10), b.const(np.zeros(10, np.float32))], alpha=0.5, beta=2.0)])
    y = b.op("Reshape", [y, b.const(np.array([1, 2, 5], np.int64))])
    y = b.op("MatMul", [y, b.weight(5, 6)])
    b.output(b.op("Add", [y, b.const(np.ones(6, np.float32))]))
    return b.build()


@pytest.mark.parametrize("opset", [11, 13])
def test_oracle_gemm_matmul(opset: int) -> None:
    r = assert_oracle(_gemm_model(opset), 0.5, "obs", calibration=data((12,)), **SEQ)
    rec = r.report["reconstruction"]
    assert isinstance(rec, dict) and {p["op"] for p in rec["per_layer"]} >= {"Gemm"}, rec  # type: ignore[index]


def _conv_transpose_model(depthwise: bool) -> onnx.ModelProto:
    """Conv → Relu → [depthwise Conv → Relu] → ConvTranspose (stride 2, overlapping k=3) → Relu → Conv."""
    b = GraphBuilder(opset=13, seed=6)
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.conv(x, 3, 8)])
    if depthwise:
        y = b.op("Relu", [b.conv(y, 8, 8, group=8)])
    y = b.op("ConvTranspose", [y, b.weight(8, 4, 3, 3), b.const(np.ones(4, np.float32))], strides=[2, 2],
             pads=[1, 1, 1, 1], output_padding=[1, 1])
    b.output(b.conv(b.op("Relu", [y]), 4, 2))
    return b.build()


@pytest.mark.parametrize("depthwise", [False, True])
def test_oracle_conv_transpose_and_depthwise(depthwise: bool) -> None:
    r = assert_oracle(_conv_transpose_model(depthwise), 0.5, "obs", calibration=data((3, 6, 6)), **SEQ)
    rec = r.report["reconstruction"]
    assert isinstance(rec, dict) and "ConvTranspose" in {p["op"] for p in rec["per_layer"]}, rec  # type: ignore[index]


@pytest.mark.parametrize(("name", "exporter"), [("mobilenetv2", "legacy"), ("resnext", "legacy"),
                                                ("unet", "dynamo")])
def test_oracle_bn_folded_exports(zoo_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """BN folded into the convs at export (depthwise, grouped, upsampling): biases take the shifts."""
    path = zoo_export(name, exporter, keep_bn=False)
    src = data((3, 32, 32), n=16)
    r = assert_oracle(str(path), 0.3, "obs", calibration=src, **SEQ)
    rec = r.report["reconstruction"]
    assert isinstance(rec, dict) and rec["layers"] >= 3, rec
    assert any(p["bias"] for p in rec["per_layer"]), rec  # type: ignore[index]


def test_sequential_lowers_the_distortion_of_oneshot() -> None:
    """On held-out inputs, the pruned model's output distortion with sequential reconstruction is well
    below one-shot OBS's (which is below no compensation at all)."""
    model = small_cnn()
    src = data((3, 8, 8), n=64)
    x = data((3, 8, 8), n=64, seed=1).arrays["x"]
    ref = run(spa.load(model).to_onnx(), np.asarray(x))
    got = {}
    for mode in ("none", "oneshot", "sequential"):
        r = spa.prune(model, ratio=0.5, criterion="obs", calibration=src, reconstruct=mode, realign=False,
                      round_to=1)
        got[mode] = distortion([ref], [run(r.model, np.asarray(x))])
    assert got["sequential"] < 0.85 * got["oneshot"] and got["oneshot"] < got["none"], got


def test_per_layer_errors_fall() -> None:
    """On the calibration data each layer's error is at most the criterion's, and well below it overall."""
    r = spa.prune(small_cnn(), ratio=0.5, criterion="obs", calibration=data((3, 8, 8)), **SEQ)
    rec = r.report["reconstruction"]
    assert isinstance(rec, dict)
    layers = rec["per_layer"]
    for p in layers:  # type: ignore[union-attr]
        assert p["error_after"] <= p["error_before"] + 1e-9, p  # the ridge fit never loses to its prior
    assert sum(p["error_after"] for p in layers) < 0.9 * sum(p["error_before"] for p in layers), layers  # type: ignore[union-attr]


def test_defaults_and_validation() -> None:
    assert PruneOptions(calibration="x.npz").resolved().reconstruct == "sequential"
    assert PruneOptions(calibration="x.npz", criterion="l2").resolved().reconstruct == "oneshot"
    assert PruneOptions(calibration="random").resolved().reconstruct == "oneshot"
    assert PruneOptions(calibration="x.npz", reconstruct="none").resolved().reconstruct == "none"
    with pytest.raises(UsageError, match="reconstruct"):
        PruneOptions(reconstruct="twice")
    with pytest.raises(UsageError, match="needs calibration data"):
        PruneOptions(reconstruct="sequential")


def test_none_makes_no_update() -> None:
    r = spa.prune(small_cnn(), ratio=0.5, criterion="obs", calibration=data((3, 8, 8)), reconstruct="none",
                  round_to=1, realign=False)
    assert r.report["compensated_weights"] == [] and r.report["reconstruction"] is None


def test_cli_flag(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(np.float32))
    reports = {}
    for mode in ("oneshot", "sequential", None):
        rep = tmp_path / f"{mode}.json"
        args = ["prune", str(model), "-o", str(tmp_path / f"{mode}.onnx"), "--calib", str(calib), "--ratio", "0.5",
                "--round-to", "1", "--no-realign", "--report", str(rep)] + (["--reconstruct", mode] if mode else [])
        assert main(args) == 0
        reports[mode] = json.loads(rep.read_text())
    assert reports["oneshot"]["reconstruct"] == "oneshot" and reports["oneshot"]["reconstruction"] is None
    assert reports[None]["reconstruct"] == "sequential"  # the default for obs with real data
    assert reports["sequential"]["reconstruction"]["layers"] == 4
    assert main(["prune", str(model), "-o", str(tmp_path / "x.onnx"), "--reconstruct", "sequential"]) == 1
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["prune", str(model), "-o", str(tmp_path / "y.onnx"), "--reconstruct", "twice"]) != 0


def test_array_source_is_read_the_same_twice() -> None:
    """The two runs per level see identical batches (the in-memory source is deterministic)."""
    src = ArraySource({"x": np.arange(24, dtype=np.float32).reshape(6, 4)}, batch_size=4, name="t")
    from spa.runtime.feeds import InputSpec

    spec = [InputSpec("x", (1, 4), np.dtype(np.float32))]
    a = [b["x"] for b in src.batches(spec)]
    assert all(np.array_equal(p, q) for p, q in zip(a, (b["x"] for b in src.batches(spec))))


@pytest.mark.parametrize("mode", ["layout", "zero"])
def test_oracle_unconstrained(mode: str) -> None:
    """UPSCALE consumers that keep their own channels (sliced, or zeroed in the full input)."""
    r = assert_oracle(small_cnn(), 0.5, "obs", calibration=data((3, 8, 8)), unconstrained=True, consumer_mode=mode,
                      **SEQ)
    assert isinstance(r.report["reconstruction"], dict) and r.report["reconstruction"]["layers"] >= 3


def test_realign_leaves_reconstructed_layers_alone() -> None:
    """With both on (the default with data), re-alignment only touches layers reconstruction skipped."""
    r = assert_oracle(small_cnn(), 0.5, "obs", calibration=data((3, 8, 8)), round_to=1,
                      criterion_options={"max_features": 80})  # the 256-input MatMul is not reconstructed
    rec, ra = r.report["reconstruction"], r.report["realign"]
    assert isinstance(rec, dict) and isinstance(ra, dict), (rec, ra)
    assert {p["op"] for p in rec["per_layer"]} == {"Conv"} and ra["layers"] == 1, (rec, ra)  # type: ignore[index]


def test_large_models_default_to_oneshot_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a large model (spa.graph.save.is_large) the obs default is one-shot compensation; an explicit
    sequential is kept."""
    src = data((3, 8, 8))
    assert spa.prune(small_cnn(), ratio=0.5, calibration=src).report["reconstruct"] == "sequential"
    monkeypatch.setattr("spa.graph.save.LARGE_BYTES", 0)
    r = spa.prune(small_cnn(), ratio=0.5, calibration=src)
    assert r.report["criterion"] == "obs" and r.report["reconstruct"] == "oneshot"
    assert r.report["reconstruction"] is None
    forced = spa.prune(small_cnn(), ratio=0.5, calibration=src, reconstruct="sequential")
    assert forced.report["reconstruct"] == "sequential" and forced.report["reconstruction"] is not None
