"""``spa bench``: the JSON report's fields and their relations, batches, profiling, fp16, provider errors.

Timings are noisy: only structure and relations are asserted, never a speed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import onnx
import pytest

from spa.bench.fp16 import fp16_converter_name
from spa.runtime.providers import CUDA, TRT, usable
from tests.bench.conftest import one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[2]
FAST = ("--iters", "3", "--warmup", "1")


def doc_fields(section: str) -> set[str]:
    """Field names of one table of docs/bench.md (rows ``| `name` | ...`` under the ``### section`` heading)."""
    text = (ROOT / "docs" / "bench.md").read_text()
    body = text.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", body, flags=re.MULTILINE))


def bench_json(capsys: pytest.CaptureFixture[str], *args: object) -> dict:
    code, _, err = run_cli(capsys, "bench", *args, *FAST, "--json", "b.json")
    assert code == 0, err
    return json.loads(Path("b.json").read_text())


def test_json_fields_and_relations(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["static"], small_models["static_p"], "--provider", "cpu")
    assert set(data) == doc_fields("Top level")  # every field documented, nothing undocumented
    assert data["provider"] == "CPUExecutionProvider" and data["device"] == "cpu" and data["io_binding"]
    assert data["iters"] == 3 and data["warmup"] == 1 and data["threads"] == 1 and data["fp16"] is False
    rows = data["models"]
    assert [r["model"] for r in rows] == [str(small_models["static"]), str(small_models["static_p"])]
    for r in rows:
        assert set(r) == doc_fields("Entries (`models[]`)") - {"profile", "profile_diff"}
        assert r["runs"] == 3 and r["batch"] == 1 and r["input_shapes"] == {"x": [1, 3, 16, 16]}
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["macs"] > 0 and r["params"] > 0 and r["size_bytes"] == Path(r["model"]).stat().st_size
        assert r["macs_per_sample"] == r["macs"]
        # both are rounded in the JSON: a 0.03 ms median carries ~1e-3 relative rounding error
        assert r["throughput_sps"] == pytest.approx(1e3 / r["median_ms"], rel=1e-2)
        assert r["session_providers"][0] == "CPUExecutionProvider"
    base, pruned = rows
    assert base["speedup"] == 1 and base["ideal_speedup"] == 1 and base["latency_efficiency"] == 1
    assert pruned["macs"] < base["macs"] and pruned["params"] < base["params"]
    assert pruned["ideal_speedup"] == pytest.approx(base["macs"] / pruned["macs"], abs=1e-4)
    assert pruned["speedup"] == pytest.approx(base["median_ms"] / pruned["median_ms"], rel=1e-3)
    assert pruned["latency_efficiency"] == pytest.approx(pruned["speedup"] / pruned["ideal_speedup"], rel=1e-3)


def test_table_on_screen(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", small_models["static"], small_models["static_p"], *FAST)
    assert code == 0, err
    assert "provider: " in out
    for word in ("median ms", "speedup", "ideal", "effic.", "static_p.onnx"):
        assert word in out


def test_batch_list_one_row_per_model_and_batch(small_models: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["dynamic"], small_models["dynamic_p"], "--batch", "1,3", "--provider",
                      "cpu")
    rows = data["models"]
    assert data["batches"] == [1, 3]
    assert [(Path(r["model"]).stem, r["batch"]) for r in rows] == [
        ("dynamic", 1), ("dynamic_p", 1), ("dynamic", 3), ("dynamic_p", 3)]
    for r in rows:
        assert r["input_shapes"]["x"][0] == r["batch"]
        assert r["macs_per_sample"] * r["batch"] == pytest.approx(r["macs"])
    by = {(Path(r["model"]).stem, r["batch"]): r for r in rows}
    assert by[("dynamic", 3)]["macs"] == 3 * by[("dynamic", 1)]["macs"]  # MACs counted at the timed shape
    for b in (1, 3):  # speedups are against the first model at the same batch
        assert by[("dynamic", b)]["speedup"] == 1
        assert by[("dynamic_p", b)]["ideal_speedup"] == pytest.approx(
            by[("dynamic", b)]["macs"] / by[("dynamic_p", b)]["macs"], abs=1e-4)


def test_static_batch_mismatch_is_a_clear_error(small_models: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", small_models["static"], "--batch", "1,4", *FAST)
    assert code == 1
    one_line_error(err, "static batch", "'x'", "4")
    assert "median" not in out  # failed before timing anything


@pytest.mark.parametrize("bad", ["0", "a,b", "2,-1"])
def test_bad_batch_values(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, _, err = run_cli(capsys, "bench", small_models["dynamic"], "--batch", bad)
    assert code == 1
    one_line_error(err, "--batch")


def test_shape_option_sets_spatial_dims(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = small_models["dynamic"]
    data = bench_json(capsys, model, "--shape", "x=2x3x16x16")
    assert data["models"][0]["batch"] == 2 and data["models"][0]["input_shapes"] == {"x": [2, 3, 16, 16]}
    code, _, err = run_cli(capsys, "bench", model, "--shape", "nope=1x3x16x16", *FAST)
    assert code == 1
    one_line_error(err, "nope", "no such input")


def test_profile_lists_the_models_ops(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["static"], small_models["static_p"], "--profile", "--provider", "cpu")
    model_ops = {n.op_type for n in onnx.load(small_models["static"]).graph.node}
    model_nodes = {n.name for n in onnx.load(small_models["static"]).graph.node}
    for r in data["models"]:
        prof = r["profile"]
        assert set(prof) == doc_fields("`profile`")
        assert prof["runs"] == 20 and prof["node_ms"] > 0 and prof["run_ms"] >= prof["node_ms"]
        types = {o["op_type"] for o in prof["op_types"]}
        assert {"Conv", "Concat", "Gemm"} <= types <= model_ops | {"ReorderInput", "ReorderOutput", "FusedConv",
                                                                  "FusedGemm", "MemcpyToHost", "MemcpyFromHost"}
        assert sum(o["pct"] for o in prof["op_types"]) == pytest.approx(100, abs=0.5)
        assert sum(o["nodes"] for o in prof["op_types"]) >= len(prof["top_nodes"])
        for n in prof["top_nodes"]:
            assert n["count"] % 20 == 0 and 0 <= n["pct"] <= 100 and n["op_type"] in types
        # node names are ORT's, derived from the model's (a fused Conv+Relu is named after the Relu)
        assert any(any(n["node"].startswith(m) for m in model_nodes) for n in prof["top_nodes"])
    base, pruned = data["models"]
    assert "profile_diff" not in base
    diff = pruned["profile_diff"]
    assert {d["op_type"] for d in diff} >= {o["op_type"] for o in base["profile"]["op_types"]}
    assert sum(d["share"] for d in diff) == pytest.approx(100, abs=1.0)
    code, out, err = run_cli(capsys, "bench", small_models["static"], "--profile", *FAST)
    assert code == 0, err
    assert "profile: " in out and "Conv" in out and "where the time moved" not in out
    code, out, err = run_cli(capsys, "bench", small_models["static"], small_models["static_p"], "--profile", *FAST)
    assert code == 0, err
    assert "where the time moved" in out


@pytest.mark.skipif(fp16_converter_name() is None, reason="no float16 converter installed")
def test_fp16_runs_on_cpu(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["static"], small_models["static_p"], "--fp16", "--provider", "cpu")
    assert data["fp16"] is True
    assert all(r["median_ms"] > 0 for r in data["models"])
    assert data["models"][1]["ideal_speedup"] > 1


def test_fp16_without_converter_is_a_clear_error(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", None)
    code, _, err = run_cli(capsys, "bench", small_models["static"], "--fp16", *FAST)
    assert code == 1
    one_line_error(err, "--fp16", "onnxconverter-common")


@pytest.mark.skipif(usable(CUDA)[0], reason="a CUDA device is present")
def test_cuda_without_gpu_fails_in_one_line(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", small_models["static"], "--provider", "cuda", *FAST)
    assert code == 1 and not out
    one_line_error(err, "--provider cuda", "use --provider cpu")


@pytest.mark.skipif(usable(TRT)[0], reason="TensorRT is usable here")
def test_tensorrt_unusable_fails_in_one_line(small_models: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", small_models["static"], "--provider", "tensorrt", *FAST)
    assert code == 1 and not out
    one_line_error(err, "--provider tensorrt")


@pytest.mark.skipif(usable(CUDA)[0], reason="a CUDA device is present")
def test_auto_falls_back_to_cpu_and_says_why(small_models: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["static"])
    assert data["provider"] == "CPUExecutionProvider" and data["provider_requested"] == "auto"
    if CUDA in __import__("onnxruntime").get_available_providers():
        assert "cuda" in data["provider_note"]


def test_bad_counts(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("--iters", "0"), ("--warmup", "-1"), ("--threads", "-2")):
        code, _, err = run_cli(capsys, "bench", small_models["static"], *args)
        assert code == 1
        one_line_error(err, args[0])


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "auto"])
def test_cuda_io_binding(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str], provider: str) -> None:
    data = bench_json(capsys, small_models["dynamic"], small_models["dynamic_p"], "--provider", provider,
                      "--batch", "1,8", "--profile")
    assert data["provider"] in (CUDA, TRT) and data["device"] == "cuda"
    assert len(data["models"]) == 4
    for r in data["models"]:
        assert r["session_providers"][0] == data["provider"] and r["median_ms"] > 0
        assert r["profile"]["op_types"]


@pytest.mark.gpu
@pytest.mark.skipif(fp16_converter_name() is None, reason="no float16 converter installed")
def test_cuda_fp16(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = bench_json(capsys, small_models["static"], small_models["static_p"], "--provider", "cuda", "--fp16")
    assert data["provider"] == CUDA and data["fp16"] is True


def test_shape_cannot_change_static_dims(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "bench", small_models["static"], "--shape", "x=1x3x32x32", *FAST)
    assert code == 1
    one_line_error(err, "--shape x", "static (16)")


def test_model_that_fails_at_run_time(capsys: pytest.CaptureFixture[str]) -> None:
    """A dynamic input whose graph hard-codes batch 1 (a Reshape constant): a clear error, exit 4."""
    import numpy as np

    from tests.oracle import GraphBuilder

    b = GraphBuilder(opset=13)
    x = b.input("x", ["N", 4])
    b.output(b.op("Reshape", [x, b.const(np.array([1, 4], np.int64))]))  # type: ignore[arg-type]
    onnx.save(b.build(), "r.onnx")
    code, out, err = run_cli(capsys, "bench", "r.onnx", "--batch", "2", *FAST)
    assert code == 4 and "median" not in out
    one_line_error(err, "r.onnx", "cannot run", "x=2x4")
