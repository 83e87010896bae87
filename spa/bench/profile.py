"""Where a model spends its time: ONNX Runtime profiling, summarised.

:func:`profile_runs` runs a model in a session with ``SessionOptions.enable_profiling`` and
:func:`summarize_profile` reads the trace ONNX Runtime writes (Chrome trace JSON: one ``"Node"``
event ``<node>_kernel_time`` per node execution, with ``args.op_name`` and ``args.provider``; one
``"Session"`` event ``model_run`` per run). Node names and op types are those of the graph ONNX
Runtime really runs, after its fusions and layout changes: a fused Conv+Relu shows as one ``Conv``,
and the CPU provider's NCHWc layout adds ``ReorderInput``/``ReorderOutput`` copies — exactly what a
pruned model that is not faster should be inspected for (copies, Gather, Concat, Transposes).

>>> events = [
...     {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
...     {"cat": "Node", "name": "c1_kernel_time", "ts": 1, "dur": 60, "args": {"op_name": "Conv"}},
...     {"cat": "Node", "name": "t_kernel_time", "ts": 70, "dur": 20, "args": {"op_name": "Transpose"}},
... ]
>>> s = summarize_profile(events, top=5)
>>> [(r["op_type"], r["node"], r["pct"]) for r in s["top_nodes"]]
[('Conv', 'c1', 75.0), ('Transpose', 't', 25.0)]
>>> s["runs"], s["run_ms"], s["node_ms"]
(1, 0.1, 0.08)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa.runtime.session import ModelLike, session
from spa.runtime.timing import Runner

KERNEL_SUFFIX = "_kernel_time"


def _node_events(events: Sequence[Mapping[str, Any]], skip_runs: int) -> tuple[list[Mapping[str, Any]], int, float]:
    """Kernel events of the runs after the first ``skip_runs``; the number of runs kept and their total µs."""
    runs = sorted((float(e.get("ts", 0)), float(e.get("dur", 0))) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX)]
    if not runs:  # a trace without run markers: keep every node event
        return nodes, 0, 0.0
    kept = runs[skip_runs:] if skip_runs < len(runs) else runs
    start = kept[0][0]
    return [e for e in nodes if float(e.get("ts", 0)) >= start], len(kept), sum(d for _, d in kept)


Trace = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any]


def summarize_profile(trace: Trace, *, top: int = 10, skip_runs: int = 0) -> dict[str, Any]:
    """Summarise an ONNX Runtime profile (a path, the parsed event list, or ``{"traceEvents": [...]}``).

    Returns:
        ``runs``: runs summarised; ``run_ms``: mean wall time of a run (ms); ``node_ms``: mean time per
        run inside node kernels (ms, the rest is framework overhead); ``top_nodes``: the ``top`` nodes
        by total kernel time, each ``{node, op_type, provider, ms_per_run, median_ms, pct, count}``;
        ``op_types``: every op type, each ``{op_type, ms_per_run, median_ms, pct, count, nodes}``.
        ``ms_per_run`` is the mean time per run, ``median_ms`` the same from each node's median
        execution (robust to a run preempted on a busy machine), ``pct`` the share of the summed
        kernel time, ``count`` the kernel executions over all summarised runs.
    """
    data: Any = json.loads(Path(trace).read_text()) if isinstance(trace, (str, os.PathLike)) else trace
    if isinstance(data, Mapping):  # Chrome's object form: {"traceEvents": [...]}
        data = data.get("traceEvents", [])
    events = [e for e in data if isinstance(e, Mapping)]
    nodes, n_runs, run_us = _node_events(events, skip_runs)
    per_node: dict[str, dict[str, Any]] = {}
    for e in nodes:
        args = e.get("args") or {}
        name = str(e["name"])[: -len(KERNEL_SUFFIX)]
        row = per_node.setdefault(name, {"node": name, "op_type": str(args.get("op_name", "?")),
                                         "provider": str(args.get("provider", "")), "us": 0.0, "count": 0,
                                         "durs": []})
        row["us"] += float(e.get("dur", 0))
        row["durs"].append(float(e.get("dur", 0)))
        row["count"] += 1
    total_us = sum(r["us"] for r in per_node.values())
    runs = n_runs or max((r["count"] for r in per_node.values()), default=1)
    for r in per_node.values():  # median execution × executions per run
        r["med_us"] = float(np.median(r.pop("durs"))) * r["count"] / runs

    def finish(row: dict[str, Any]) -> dict[str, Any]:
        us = row.pop("us")
        row["ms_per_run"] = round(us / runs / 1e3, 4)
        row["median_ms"] = round(row.pop("med_us") / 1e3, 4)
        row["pct"] = round(100.0 * us / total_us, 2) if total_us else 0.0
        return row

    by_type: dict[str, dict[str, Any]] = {}
    for r in per_node.values():
        t = by_type.setdefault(r["op_type"], {"op_type": r["op_type"], "us": 0.0, "med_us": 0.0, "count": 0,
                                              "nodes": 0})
        t["us"] += r["us"]
        t["med_us"] += r["med_us"]
        t["count"] += r["count"]
        t["nodes"] += 1
    ranked = sorted(per_node.values(), key=lambda r: (-r["us"], r["node"]))
    types = sorted(by_type.values(), key=lambda r: (-r["us"], r["op_type"]))
    return {
        "runs": runs,
        "run_ms": round(run_us / max(n_runs, 1) / 1e3, 4) if n_runs else None,
        "node_ms": round(total_us / runs / 1e3, 4),
        "top_nodes": [finish(dict(r)) for r in ranked[:top]],
        "op_types": [finish(dict(t)) for t in types],
    }


def profile_diff(base: Mapping[str, Any], other: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Where the time moved between two profiles (:func:`summarize_profile`), op type by op type.

    One row per op type in either, largest change first: ``op_type``, ``base_ms`` and ``ms`` (median
    time per run), ``delta_ms``, ``ratio`` (``ms / base_ms``; None for an op type new in ``other``) and
    ``share`` (this op type's part of the total change, in %). An op type whose ratio is far above the
    model's MACs fraction (or that appears only after pruning: ``Gather``, ``ReorderInput``) is where an
    efficiency is lost.

    >>> a = {"op_types": [{"op_type": "Conv", "median_ms": 4.0}, {"op_type": "Relu", "median_ms": 1.0}]}
    >>> b = {"op_types": [{"op_type": "Conv", "median_ms": 2.0}, {"op_type": "Gather", "median_ms": 0.5}]}
    >>> [(r["op_type"], r["delta_ms"], r["ratio"]) for r in profile_diff(a, b)]
    [('Conv', -2.0, 0.5), ('Relu', -1.0, 0.0), ('Gather', 0.5, None)]
    """
    before = {str(o["op_type"]): float(o["median_ms"]) for o in base.get("op_types", [])}
    after = {str(o["op_type"]): float(o["median_ms"]) for o in other.get("op_types", [])}
    total = sum(after.values()) - sum(before.values())
    rows = []
    for op in sorted(set(before) | set(after)):
        b, a = before.get(op, 0.0), after.get(op, 0.0)
        rows.append({"op_type": op, "base_ms": round(b, 4), "ms": round(a, 4), "delta_ms": round(a - b, 4),
                     "ratio": round(a / b, 3) if b > 0 else None,
                     "share": round(100.0 * (a - b) / total, 1) if abs(total) > 1e-12 else 0.0})
    return sorted(rows, key=lambda r: (-abs(r["delta_ms"]), r["op_type"]))


def profile_runs(model: ModelLike, providers: Sequence[str], feeds: Mapping[str, np.ndarray], *,
                 device: str = "cpu", threads: int = 1, warmup: int = 3, runs: int = 20,
                 top: int = 10) -> dict[str, Any]:
    """Profile ``runs`` runs of ``model`` after ``warmup`` (at least 1, not summarised) in a profiling session."""
    warmup = max(warmup, 1)
    with tempfile.TemporaryDirectory(prefix="spa_profile_") as tmp:
        sess = session(model, providers, threads=threads, profile_prefix=os.path.join(tmp, "profile"))
        run = Runner(sess, feeds, device)  # runs once: part of the (skipped) warm-up
        for _ in range(warmup - 1 + runs):
            run()
        path = sess.end_profiling()
        return summarize_profile(path, top=top, skip_runs=warmup)
