"""Data-free pruning (``obspa`` without ``--calib``) on models that run only at particular input sizes.

Synthetic statistics run the model on random inputs; a model with dynamic H, W must get sizes it accepts
(a U-Net whose skip Concat after a ×32 Resize needs multiples of 32, a face-proposal net of valid
convolutions that needs 12 × 12 at least), ``--shape`` when the user states them, and a one-line error
naming the input and the fix when no size spa tries runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa
from spa.analysis.groups import analyze_graph
from spa.calibration.data import CalibrationError
from spa.latency.counts import input_shapes_of
from spa.runtime.feeds import find_runnable_shapes
from spa.runtime.session import session
from tests.oracle import GraphBuilder, assert_oracle


def _cbr(b: GraphBuilder, x: str, cin: int, cout: int, *, stride: int = 1, pad: bool = True) -> str:
    """conv 3×3 (no bias) → BatchNorm → ReLU; ``pad=False``: a valid convolution (size − 2)."""
    y = b.op("Conv", [x, b.weight(cout, cin, 3, 3)], pads=[1 if pad else 0] * 4, strides=[stride] * 2)
    return b.op("Relu", [b.bn(y, cout)])  # type: ignore[list-item,return-value]


def unet32() -> onnx.ModelProto:
    """Full-resolution features, five stride-2 blocks, ×32 nearest Resize, Concat with the skip: H, W
    multiples of 32 only."""
    b = GraphBuilder(opset=13, seed=0)
    x = b.input("x", ["N", 3, "H", "W"])
    f0 = _cbr(b, x, 3, 8)
    h, c = f0, 8
    for _ in range(5):
        h, c = _cbr(b, h, c, 12, stride=2), 12
    up = b.op("Resize", [h, "", b.const(np.array([1, 1, 32, 32], np.float32), "scales")], mode="nearest")
    cat = b.op("Concat", [up, f0], axis=1)  # type: ignore[list-item]
    b.output(b.conv(_cbr(b, cat, 20, 8), 8, 2, k=1))  # type: ignore[arg-type]
    return b.build()


def pnet() -> onnx.ModelProto:
    """MTCNN P-Net-like: valid 3×3 conv, 2×2 max-pool, two valid 3×3 convs, 1×1 head — 12 × 12 at least."""
    b = GraphBuilder(opset=13, seed=1)
    x = b.input("x", ["N", 3, "H", "W"])
    h = b.op("MaxPool", [_cbr(b, x, 3, 10, pad=False)], kernel_shape=[2, 2], strides=[2, 2])
    h = _cbr(b, _cbr(b, h, 10, 16, pad=False), 16, 32, pad=False)  # type: ignore[arg-type]
    b.output(b.conv(h, 32, 2, k=1))
    return b.build()


def fixed20() -> onnx.ModelProto:
    """Dynamic H, W declared, but a Flatten → MatMul that fits only 20 × 20 (no size spa tries)."""
    b = GraphBuilder(opset=13, seed=2)
    x = b.input("x", ["N", 1, "H", "W"])
    h = b.op("Flatten", [_cbr(b, _cbr(b, x, 1, 8), 8, 8)], axis=1)
    b.output(b.op("MatMul", [h, b.weight(8 * 20 * 20, 4)]))  # type: ignore[arg-type]
    return b.build()


@pytest.mark.parametrize("mode", ["synthetic", "diag"])
@pytest.mark.parametrize(("build", "size"), [(unet32, 32), (pnet, 32)])
def test_data_free_obspa_prunes_models_that_need_particular_sizes(build, size, mode) -> None:  # type: ignore[no-untyped-def]
    m = build()
    fitted = find_runnable_shapes(session(m), batch=1)
    assert fitted is not None and fitted["x"] == (1, 3, size, size)  # 8 is refused
    r = assert_oracle(m, 0.5, "obspa", round_to=1, criterion_options={"obspa_h": mode})
    assert r.report["calibration"] is None
    assert r.report["num_pruned"] >= 3


def test_latency_counts_are_looked_up_at_sizes_with_positive_shapes() -> None:
    # at 1×1 (the table's default for dynamic sizes) a valid-conv net's tensors have negative sizes
    assert input_shapes_of(analyze_graph(spa.load(pnet())))["x"] == (1, 3, 32, 32)
    assert input_shapes_of(analyze_graph(spa.load(unet32())))["x"] == (1, 3, 1, 1)  # Resize ×32 of 1 is 32: fine
    r = spa.prune(pnet(), ratio=0.5, criterion="obspa", round_to="latency")
    assert r.report["num_pruned"] >= 3


@pytest.mark.parametrize(("criterion", "calibration"), [("obspa", None), ("obs", "random")])
def test_no_runnable_size_is_one_line_naming_the_input_and_shape(criterion: str, calibration: str | None) -> None:
    with pytest.raises(CalibrationError) as err:
        spa.prune(fixed20(), ratio=0.5, criterion=criterion, calibration=calibration, round_to=1)
    msg = str(err.value)
    assert "\n" not in msg and "--shape x=1,1,?,?" in msg and "--calib" in msg


@pytest.mark.parametrize(("criterion", "calibration"), [("obspa", None), ("obs", "random")])
def test_stated_shapes_reach_the_synthetic_inputs(criterion: str, calibration: str | None) -> None:
    r = spa.prune(fixed20(), ratio=0.5, criterion=criterion, calibration=calibration, round_to=1,
                  shapes={"x": (1, 1, 20, 20)}, emit_masked=True)
    assert r.report["num_pruned"] == 1
    assert r.masked is not None
    assert spa.verify(r.model, r.masked, shapes={"x": (2, 1, 20, 20)}).ok


def test_synthetic_inputs_are_1_over_f_noise_on_images_and_white_elsewhere() -> None:
    from spa.criteria.base import CriterionContext
    from spa.criteria.calibrated import synthetic_source
    from spa.runtime.feeds import input_specs

    b = GraphBuilder(opset=13, seed=3)
    img, seq = b.input("img", ["N", 3, 32, 32]), b.input("tokens", ["N", 8, 16])
    b.output(b.conv(img, 3, 4))
    b.output(b.op("MatMul", [seq, b.weight(16, 4)]))  # type: ignore[arg-type]
    m = b.build()
    analysis = analyze_graph(spa.load(m))
    specs = input_specs(m)

    def neighbour_corr(options: dict[str, object]) -> dict[str, float]:
        feed = next(synthetic_source(analysis, CriterionContext(options=options)).batches(specs))
        return {k: float(np.corrcoef(v[..., :-1].ravel(), v[..., 1:].ravel())[0, 1]) for k, v in feed.items()}

    default = neighbour_corr({})
    assert default["img"] > 0.5 and abs(default["tokens"]) < 0.1  # a MatMul's tokens stay white
    assert abs(neighbour_corr({"synthetic_spectrum": 0.0})["img"]) < 0.1


def test_row_sampled_second_moment_estimates_the_full_one() -> None:
    from spa.calibration.stats import SecondMoment

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((6, 6))
    x = rng.standard_normal((4, 50_000, 6)) @ mix  # 4 samples of 50k rows each
    full, sampled = SecondMoment(lambda a: a.reshape(-1, 6), 6), SecondMoment(lambda a: a.reshape(-1, 6), 6, 1, 8192)
    full.update(x)
    sampled.update(x)
    assert sampled.count == 8192 and full.count == 200_000
    rel = np.abs(sampled.matrix - full.matrix).max() / np.abs(full.matrix).max()
    assert 0 < rel < 0.05


def test_no_data_note_points_to_obspa_unless_it_is_in_use() -> None:
    l2 = spa.prune(pnet(), ratio=0.3, round_to=1).report
    assert l2["criterion"] == "l2" and "--criterion obspa" in str(l2["quality_note"])
    obspa = spa.prune(pnet(), ratio=0.3, round_to=1, criterion="obspa").report
    note = str(obspa["quality_note"])
    assert "cannot be protected without data" in note and "--criterion obspa" not in note and "\n" not in note
