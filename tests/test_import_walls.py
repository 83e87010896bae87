"""Issue 14's import walls: placeholder dims, dynamic quantization, control flow, old opsets, shapes.

Every rewrite goes through the mask oracle (:func:`tests.oracle.assert_oracle`) at several opsets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

import spa
import spa.graph.normalize as normalize_module
from spa import api
from spa.cli import main
from spa.errors import UnsupportedModelError, UsageError, ValidationError
from spa.runtime.feeds import runnable_shapes
from spa.runtime.session import session
from tests.import_fixtures import (
    dynamic_quantized,
    dynamic_sequence_attention,
    float_cnn,
    float_mlp,
    if_model,
    old_opset_cnn,
    ppocr_classifier,
    text_detector,
    unconvertible_old_opset,
)
from tests.macs_reference import independent_macs
from tests.oracle import assert_oracle

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "models" / "demo_cnn.onnx"


# -- 1. -1 and 0 dims in value_info ------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17])
def test_ppocr_classifier_with_placeholder_dims_prunes(opset: int) -> None:
    m = ppocr_classifier(opset)
    dims = [d.dim_value for vi in m.graph.value_info for d in vi.type.tensor_type.shape.dim[:1]]
    assert -1 in dims and 0 in dims  # as paddle2onnx writes them
    r = assert_oracle(m)
    assert r.report["num_pruned"] == r.report["num_prunable"] >= 5
    assert r.report["macs_after"] < 0.5 * r.report["macs_before"]  # type: ignore[operator]
    session(r.model)
    batch = r.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value")  # unknown, not -1


def test_placeholder_dims_never_reach_shape_inference() -> None:
    m = ppocr_classifier()
    m.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = -1  # a channel dim too
    a = spa.analyze(m)
    assert a.prunable


# -- 6. CLI: -q / -v after the subcommand -------------------------------------------------------------------

def test_quiet_and_verbose_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(ppocr_classifier(), src)
    assert main(["prune", str(src), "-q", "-o", str(tmp_path / "q.onnx")]) == 0
    assert capsys.readouterr().out == ""  # quiet: no summary table
    assert main(["prune", str(src), "-o", str(tmp_path / "n.onnx")]) == 0
    assert capsys.readouterr().out  # the summary table
    assert main(["analyze", str(src), "-v", "-q"]) == 0
    assert main(["-q", "analyze", str(src)]) == 0
    assert capsys.readouterr().out == ""


# -- 4. old opsets are converted, checked against the original, then pruned ----------------------------------

@pytest.mark.parametrize("opset", [7, 8, 9, 10])
def test_old_opset_is_converted_and_prunes(opset: int) -> None:
    r = assert_oracle(old_opset_cnn(opset))
    assert r.report["converted_from_opset"] == opset
    assert r.model.opset_import[0].version == 13
    assert r.report["num_pruned"] == 2
    session(r.model)


def test_current_opset_reports_no_conversion() -> None:
    assert spa.prune(old_opset_cnn(13)).report["converted_from_opset"] is None


def test_unconvertible_old_opset_is_refused_in_one_line() -> None:
    with pytest.raises(UnsupportedModelError, match=r"opset 8 .*version_converter cannot convert"):
        spa.analyze(unconvertible_old_opset())


def test_conversion_that_changes_outputs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = normalize_module.convert_opset

    def wrong(model: onnx.ModelProto, target: int = 13) -> onnx.ModelProto:
        converted = real(model, target)
        w = next(t for t in converted.graph.initializer if len(t.dims) == 4)
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))  # a converter bug
        return converted

    monkeypatch.setattr(normalize_module, "convert_opset", wrong)
    with pytest.raises(UnsupportedModelError, match=r"converting opset 9 to 13 .* changes output"):
        spa.analyze(old_opset_cnn(9))


# -- 3. control flow: subgraph outputs survive normalisation; the output check never skips wrongly --------------

@pytest.mark.parametrize("opset", [13, 15, 17])
def test_if_branches_feeding_the_main_graph_prune_outside(opset: int) -> None:
    m = if_model(opset)
    r = assert_oracle(m)
    assert r.report["ort_check"] == "ok"
    assert [n.op_type for n in r.model.graph.node].count("If") == 1
    a = spa.analyze(m)
    assert any("If" in reason for g in a.groups if not g.prunable for reason in g.reasons)
    assert r.report["num_pruned"] == 2  # the Convs before and after the If


@pytest.mark.parametrize("opset", [13, 15, 17])
def test_if_with_a_constant_condition_is_inlined(opset: int) -> None:
    r = assert_oracle(if_model(opset, shape_condition=True))
    assert r.report["ort_check"] == "ok"
    assert not any(n.op_type == "If" for n in r.model.graph.node)
    assert r.report["num_pruned"] == 3


def _graphsurgeon_flattening(graph: gs.Graph) -> bool:
    """What normalisation did before: graphsurgeon's own If flattening, which loses a branch output."""
    graph.fold_constants(error_ok=True, flatten_subgraphs=True)
    graph.cleanup()
    return True


def test_an_output_onnxruntime_refuses_is_a_validation_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = if_model(15, shape_condition=True)
    session(m)  # the input loads
    monkeypatch.setattr(normalize_module, "fold_constants", _graphsurgeon_flattening)
    with pytest.raises(ValidationError, match="pruned model fails the ONNX checker"):
        spa.prune(m)  # the checker catches it first: the input as given passes it
    broken = spa.prune(m, check=False).model
    with pytest.raises(ValidationError, match="does not load in ONNX Runtime, though the input does"):
        api._ort_check(broken, m)
    src, out = tmp_path / "if.onnx", tmp_path / "out.onnx"
    onnx.save(m, src)
    assert main(["prune", str(src), "-o", str(out)]) == 4
    assert "fails the ONNX checker" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValidationError, match="though the input does"):
        api._ort_check(broken, str(src))


def _fixture_files(tmp: Path) -> list[Path]:
    built = {"ppocr_cls": ppocr_classifier(), "if_input": if_model(15), "if_shape": if_model(15, shape_condition=True),
             "opset9": old_opset_cnn(9)}
    for name, m in built.items():
        onnx.save(m, tmp / f"{name}.onnx")
    return sorted(FIXTURES.glob("*.onnx")) + [DEMO] + [tmp / f"{n}.onnx" for n in built]


def test_prune_never_exits_0_with_an_output_onnxruntime_cannot_load(tmp_path: Path) -> None:
    for src in _fixture_files(tmp_path):
        out = tmp_path / f"pruned_{src.name}"
        code = main(["-q", "prune", str(src), "-o", str(out), "--force"])
        if code == 0:
            session(str(out))  # raises if ONNX Runtime refuses it
        else:
            assert code in (2, 3, 4), (src.name, code)
            assert not out.exists(), src.name


# -- 2. dynamic-quantized models (ConvInteger / MatMulInteger fed by DynamicQuantizeLinear) -----------------------

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_dynamic_quantized_model_prunes_like_its_float_twin(
        family: str, per_channel: bool, opset: int, tmp_path: Path) -> None:
    float_model = (float_cnn if family == "cnn" else float_mlp)(opset)
    q = dynamic_quantized(float_model, str(tmp_path), per_channel=per_channel)
    ops = {n.op_type for n in q.graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"ConvInteger", "MatMulInteger"}
    r = assert_oracle(q)  # pruned == masked twin (removed weight slices at the zero point)
    f = spa.prune(float_model)
    assert r.report["num_prunable"] == f.report["num_prunable"]
    assert r.report["num_pruned"] == f.report["num_pruned"] > 0
    assert r.report["macs_before"] == f.report["macs_before"]  # counted as the float twin
    assert r.report["macs_after"] == f.report["macs_after"]
    assert r.report["ort_check"] == "ok"
    ints = {i.name: list(i.dims) for i in r.model.graph.initializer}
    for node in r.model.graph.node:  # the int8 weights and per-channel zero points were sliced
        if node.op_type in ("ConvInteger", "MatMulInteger") and len(node.input) > 3 and ints.get(node.input[3]):
            w, zp = ints[node.input[1]], ints[node.input[3]]
            assert zp[0] == (w[0] if node.op_type == "ConvInteger" else w[-1])


def test_dynamic_quantize_twin_masks_the_removed_channels(tmp_path: Path) -> None:
    """Without the DynamicQuantizeLinear twin hook the masked twin would quantise over removed channels
    too (another scale), and the oracle would not be exact."""
    q = dynamic_quantized(float_cnn(13), str(tmp_path), per_channel=True)
    r = spa.prune(q, emit_masked=True)
    assert r.masked is not None
    dql = [n for n in r.masked.graph.node if n.op_type == "DynamicQuantizeLinear"]
    producers = {o: n.op_type for n in r.masked.graph.node for o in n.output}
    assert any(producers.get(n.input[0]) == "Mul" and "__spa_twin" in n.input[0] for n in dql)


# -- 5. shapes: sizes the model accepts, --shape, MACs at stated shapes ---------------------------------------

def test_verify_and_random_calibration_find_sizes_a_text_detector_accepts() -> None:
    m = text_detector()
    sess = session(m)
    assert runnable_shapes(sess)["x"] == (2, 3, 32, 32)  # 8 is refused: H, W multiples of 32
    for criterion, calib in (("l2", None), ("obspa", None), ("obs", "random")):
        r = spa.prune(m, criterion=criterion, calibration=calib, emit_masked=True)
        assert r.report["num_pruned"] == 5
        assert r.masked is not None
        assert spa.verify(r.model, r.masked).ok


def test_runnable_shapes_keep_given_and_static_sizes() -> None:
    sess = session(ppocr_classifier())
    assert runnable_shapes(sess, batch=3)["x"] == (3, 3, 48, 192)
    assert runnable_shapes(sess, {"x": (1, 3, 48, 192)})["x"] == (1, 3, 48, 192)


def _close(spa_count: object, reference: int) -> None:
    assert isinstance(spa_count, int) and reference > 0
    assert abs(spa_count - reference) <= 0.01 * reference, (spa_count, reference)


def test_macs_are_counted_at_stated_shapes(tmp_path: Path) -> None:
    m = text_detector()
    r = spa.prune(m)
    assert r.report["mac_shapes"] == {"x": [1, 3, 224, 224]}
    assert str(r.report["mac_shapes_from"]).startswith("representative default")
    _close(r.report["macs_before"], independent_macs(m, {"x": [1, 3, 224, 224]}))
    _close(r.report["macs_after"], independent_macs(r.model, {"x": [1, 3, 224, 224]}))
    r = spa.prune(m, shapes={"x": (1, 3, 640, 640)})
    assert (r.report["mac_shapes"], r.report["mac_shapes_from"]) == ({"x": [1, 3, 640, 640]}, "--shape")
    _close(r.report["macs_before"], independent_macs(m, {"x": [1, 3, 640, 640]}))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((4, 3, 96, 96)).astype(np.float32))
    r = spa.prune(m, criterion="obs", calibration=str(data))
    assert (r.report["mac_shapes"], r.report["mac_shapes_from"]) == ({"x": [1, 3, 96, 96]}, "calibration data")
    _close(r.report["macs_before"], independent_macs(m, {"x": [1, 3, 96, 96]}))
    with pytest.raises(UsageError, match="--shape y"):
        spa.prune(m, shapes={"y": (1, 3, 32, 32)})


def test_dynamic_sequence_attention_is_counted_at_a_real_sequence() -> None:
    m = dynamic_sequence_attention()
    counted = api.macs(m)
    assert counted["mac_shapes"] == {"x": [1, 128, 16]}
    _close(counted["macs"], independent_macs(m, {"x": [1, 128, 16]}))
    at_one = api.macs(m, {"x": (1, 1, 16)})["macs"]
    assert isinstance(at_one, int) and at_one * 100 < counted["macs"]  # type: ignore[operator]


def test_shape_on_analyze_and_prune_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "td.onnx"
    onnx.save(text_detector(), src)
    assert main(["analyze", str(src), "--shape", "x=1x3x640x640", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mac_shapes"] == {"x": [1, 3, 640, 640]} and data["mac_shapes_from"] == "--shape"
    assert main(["prune", str(src), "-q", "-o", str(tmp_path / "p.onnx"), "--shape", "x=1x3x320x320",
                 "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mac_shapes"] == {"x": [1, 3, 320, 320]}
    _close(report["macs_after"], independent_macs(onnx.load(str(tmp_path / "p.onnx")), {"x": [1, 3, 320, 320]}))


# -- 7. tools/bench_exporters.py -------------------------------------------------------------------------------

def test_bench_exporters_runs_without_the_zoo(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_exporters.py"), "--no-zoo", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["models"] == s["pruned_ok"] == s["oracle_exact"] == s["macs_within_1pct"] >= 17
