"""The profile summariser on a canned ONNX Runtime trace (warm-up run skipped, per-node and per-op totals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spa.bench.profile import summarize_profile


def _run(ts: int, kernels: list[tuple[str, str, int]]) -> list[dict]:
    """One run's events as ORT writes them: fences, kernel times, SequentialExecutor and model_run spans."""
    events, t = [], ts + 2
    for name, op, dur in kernels:
        args = {"op_name": op, "provider": "CPUExecutionProvider", "node_index": "0"}
        events.append({"cat": "Node", "pid": 1, "tid": 1, "dur": 0, "ts": t, "ph": "X",
                       "name": f"{name}_fence_before", "args": {"op_name": op}})
        events.append({"cat": "Node", "pid": 1, "tid": 1, "dur": dur, "ts": t + 1, "ph": "X",
                       "name": f"{name}_kernel_time", "args": args})
        events.append({"cat": "Node", "pid": 1, "tid": 1, "dur": 0, "ts": t + dur + 1, "ph": "X",
                       "name": f"{name}_fence_after", "args": {"op_name": op}})
        t += dur + 2
    total = t - ts + 3
    events.append({"cat": "Session", "pid": 1, "tid": 1, "dur": total - 2, "ts": ts + 1, "ph": "X",
                   "name": "SequentialExecutor::Execute", "args": {}})
    events.append({"cat": "Session", "pid": 1, "tid": 1, "dur": total, "ts": ts, "ph": "X",
                   "name": "model_run", "args": {}})
    return events


KERNELS = [("stem.relu_nchwc", "Conv", 400), ("ReorderOutput_token_1", "ReorderOutput", 50),
           ("cat.concat", "Concat", 100), ("t.transpose", "Transpose", 150), ("head.fc", "Gemm", 300)]


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    events = [{"cat": "Session", "pid": 1, "tid": 1, "dur": 5000, "ts": 0, "ph": "X",
               "name": "session_initialization", "args": {}}]
    # a slow warm-up run (every kernel 100x), then three steady runs
    events += _run(10_000, [(n, op, d * 100) for n, op, d in KERNELS])
    for k in range(3):
        events += _run(200_000 + 10_000 * k, KERNELS)
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(events))
    return p


def test_summary_skips_warmup_and_ranks_nodes(trace: Path) -> None:
    s = summarize_profile(trace, top=3, skip_runs=1)
    assert s["runs"] == 3
    assert s["node_ms"] == pytest.approx(1.0)  # 400+50+100+150+300 µs per run
    assert s["run_ms"] > s["node_ms"]
    assert [(n["node"], n["op_type"]) for n in s["top_nodes"]] == [
        ("stem.relu_nchwc", "Conv"), ("head.fc", "Gemm"), ("t.transpose", "Transpose")]
    top = s["top_nodes"][0]
    assert top == {"node": "stem.relu_nchwc", "op_type": "Conv", "provider": "CPUExecutionProvider",
                   "count": 3, "ms_per_run": 0.4, "median_ms": 0.4, "pct": 40.0}
    ops = {o["op_type"]: o for o in s["op_types"]}
    assert set(ops) == {"Conv", "ReorderOutput", "Concat", "Transpose", "Gemm"}
    assert ops["ReorderOutput"]["pct"] == 5.0 and ops["Concat"]["count"] == 3 and ops["Gemm"]["nodes"] == 1
    assert sum(o["pct"] for o in s["op_types"]) == pytest.approx(100)


def test_summary_keeps_everything_without_skip(trace: Path) -> None:
    s = summarize_profile(json.loads(trace.read_text()), top=10)
    assert s["runs"] == 4
    assert s["top_nodes"][0]["count"] == 4
    assert s["node_ms"] == pytest.approx((1000 * 100 + 3 * 1000) / 4 / 1e3)
    # the slow first run inflates the mean, not the median
    assert s["top_nodes"][0]["ms_per_run"] == pytest.approx((40_000 + 3 * 400) / 4 / 1e3)
    assert s["top_nodes"][0]["median_ms"] == pytest.approx(0.4)
    assert {o["op_type"]: o["median_ms"] for o in s["op_types"]}["Gemm"] == pytest.approx(0.3)


def test_summary_of_trace_without_run_markers() -> None:
    events = [{"cat": "Node", "name": "a_kernel_time", "ts": 1, "dur": 30, "args": {"op_name": "Gather"}},
              {"cat": "Node", "name": "a_kernel_time", "ts": 50, "dur": 10, "args": {"op_name": "Gather"}},
              {"cat": "Node", "name": "b_fence_after", "ts": 70, "dur": 0, "args": {"op_name": "Add"}}]
    s = summarize_profile({"traceEvents": events})
    assert s["runs"] == 2 and s["run_ms"] is None
    assert s["op_types"] == [{"op_type": "Gather", "count": 2, "nodes": 1, "ms_per_run": 0.02, "median_ms": 0.02,
                              "pct": 100.0}]


def test_empty_trace() -> None:
    s = summarize_profile([])
    assert s["top_nodes"] == [] and s["op_types"] == [] and s["node_ms"] == 0
