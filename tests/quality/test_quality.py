"""Statistics re-alignment and sensitivity-allocated budgets: the mask oracle, option checks, and that
they do what they claim on toy models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa
from spa.calibration import ArraySource
from spa.errors import UsageError
from spa.options import PruneOptions
from spa.quality.probe import distortion
from spa.runtime.session import session
from tests.criteria.test_criteria import small_cnn
from tests.oracle import GraphBuilder, assert_oracle


def data(shape: tuple[int, ...], n: int = 48, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource({"x": rng.standard_normal((n, *shape)).astype(np.float32)}, batch_size=16, name="toy")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)  # the toy models' batch is fixed to 1
    return np.concatenate([np.asarray(sess.run(None, {"x": x[i:i + 1]})[0]) for i in range(len(x))])


@pytest.mark.parametrize("criterion", ["l2", "obs", "flap"])
@pytest.mark.parametrize("variance", [True, False])
def test_realign_oracle(criterion: str, variance: bool) -> None:
    r = assert_oracle(small_cnn(), 0.5, criterion, calibration=data((3, 8, 8)), realign=True,
                      realign_variance=variance, round_to=1, reconstruct="oneshot")
    rec = r.report["realign"]
    assert isinstance(rec, dict) and rec["layers"] >= 3 and rec["levels"] >= 2, rec


def test_realign_restores_the_mean_of_each_layer() -> None:
    """After re-alignment (mean only) the pruned model's output mean matches the original's per channel."""
    model = small_cnn()
    src = data((3, 8, 8), n=64)
    x = np.asarray(src.arrays["x"])
    ref = run(spa.load(model).to_onnx(), x)
    off = spa.prune(model, ratio=0.5, criterion="l2", calibration=src, realign=False, round_to=1)
    on = spa.prune(model, ratio=0.5, criterion="l2", calibration=src, realign=True, realign_variance=False,
                   round_to=1)
    err_off = np.abs(run(off.model, x).mean(0) - ref.mean(0)).max()
    err_on = np.abs(run(on.model, x).mean(0) - ref.mean(0)).max()
    assert err_on < 1e-3 * max(1.0, np.abs(ref).max()) and err_on < err_off


def two_branch() -> onnx.ModelProto:
    """x → conv A (16) → relu → conv → out_a; x → conv B (16) → relu → conv → out_b, summed: branch B's output
    is scaled 10× so its channels matter far more than A's."""
    b = GraphBuilder(opset=13, seed=3)
    x = b.input("x", [1, 4, 6, 6])
    a = b.op("Relu", [b.conv(x, 4, 16)])
    a = b.conv(a, 16, 4)
    c = b.op("Relu", [b.conv(x, 4, 16)])
    c = b.op("Mul", [b.conv(c, 16, 4), b.const(np.float32(10.0))])
    b.output(b.op("Add", [a, c]))
    return b.build()


def test_allocation_oracle_and_report() -> None:
    r = assert_oracle(small_cnn(), 0.5, "obs", calibration=data((3, 8, 8)), target_macs=0.6,
                      allocate="sensitivity", realign=True, round_to=1)
    alloc = r.report["allocation"]
    assert isinstance(alloc, dict)
    assert alloc["probes"] == 3 * len(alloc["groups"]) or alloc["cached"]
    for g in alloc["groups"]:
        assert len(g["sensitivity"]) == 3 and 0.0 <= g["ratio"] < 1.0
    assert alloc["measured_distortion"] >= 0 and alloc["predicted_distortion"] >= 0
    assert r.report["macs_after"] <= 0.6 * r.report["macs_before"] + 1  # type: ignore[operator]


def test_allocation_beats_uniform_when_one_group_is_more_sensitive(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    model = two_branch()
    src = data((4, 6, 6), n=64)
    x = np.asarray(data((4, 6, 6), n=64, seed=1).arrays["x"])  # held-out inputs
    ref = [run(spa.load(model).to_onnx(), x)]
    common = {"calibration": src, "target_macs": 0.6, "criterion": "l2", "realign": False, "round_to": 1}
    uni = spa.prune(model, allocate="uniform", **common)  # type: ignore[arg-type]
    sens = spa.prune(model, allocate="sensitivity", **common)  # type: ignore[arg-type]
    assert sens.report["macs_after"] <= 0.6 * sens.report["macs_before"] + 1  # type: ignore[operator]
    d_uni, d_sens = distortion(ref, [run(uni.model, x)]), distortion(ref, [run(sens.model, x)])
    assert d_sens < 0.7 * d_uni, (d_sens, d_uni)
    groups = {g["label"]: g for g in sens.report["allocation"]["groups"]}  # type: ignore[index]
    assert len(groups) == 2
    # cached: the second run probes nothing
    again = spa.prune(model, allocate="sensitivity", **common)  # type: ignore[arg-type]
    assert again.report["allocation"]["probes"] == 0  # type: ignore[index]


def test_defaults_follow_the_data() -> None:
    o = PruneOptions(calibration="x.npz", target_macs=0.5).resolved()
    assert (o.criterion, o.realign, o.allocate) == ("obs", True, "sensitivity")
    o = PruneOptions(calibration="x.npz").resolved()
    assert (o.criterion, o.realign, o.allocate) == ("obs", True, "uniform")
    o = PruneOptions(calibration="random", target_macs=0.5).resolved()
    assert (o.criterion, o.realign, o.allocate) == ("l2", False, "uniform")
    o = PruneOptions(criterion="l2", calibration="x.npz", realign=False).resolved()
    assert (o.criterion, o.realign) == ("l2", False)


def test_no_data_note_in_the_report() -> None:
    r = spa.prune(small_cnn(), ratio=0.3)
    assert "cannot be protected without data" in str(r.report["quality_note"])
    assert r.report["criterion"] == "l2"


@pytest.mark.parametrize("bad", [{"allocate": "best"}, {"sensitivity_levels": (0.5, 1.0)}, {"probe_samples": 0},
                                 {"realign": True}, {"allocate": "sensitivity"}])
def test_option_validation(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        PruneOptions(**bad)  # type: ignore[arg-type]
