#!/usr/bin/env python
"""Wall time of a sweep's prunes: in this process, a local process pool, and Ray — and the projection.

The sweep is ``--ratios`` (default 6: 0.1…0.6) × ``--criteria`` (default l1, l2) on a small CNN
(``models/demo_cnn.onnx``): 12 independent prune tasks. The same sweep runs

* ``serial``: :class:`spa.executors.SerialExecutor`, every prune in this process;
* ``local``: :class:`spa.executors.LocalPoolExecutor` with ``--workers`` (default 2) spawned processes;
* ``ray``: :class:`spa.executors.RayExecutor` on a Ray instance started here with ``--workers`` CPUs.

Timed per executor: ``start`` (making the executor: ``ray.init`` for Ray; the pool spawns its workers
lazily, so their start is inside ``prunes``), ``prunes`` (the map over the 12 points, each pruned model
written as it completes) and ``total`` = start + prunes. The benchmark step of ``spa sweep`` is not
timed here: it always runs in the driver, whichever executor prunes. ``again, warm`` maps the same
tasks a second time on the started executor (workers already up, spa imported): the steady state of
a long sweep. Before the timed runs an untimed
serial run warms the per-layer latency table (``--round-to latency``, the default) and the imports.
Every executor's pruned models are compared byte for byte with the serial run's (``identical``).

Projection: with ``c`` the measured cost of one task (serial prunes / tasks) and ``o`` an executor's
fixed overhead (its total at ``--workers`` minus ``c·⌈tasks/workers⌉``), ``T(N) = o + c·⌈tasks/N⌉`` for
``N`` workers — tasks are equal-sized and independent, so they run in ``⌈tasks/N⌉`` waves; the model
ignores the driver's per-result cost (writing the pruned model) and assumes one CPU per task.

Usage::

    python tools/bench_sweep.py                      # tools/results/bench_sweep.json
    python tools/bench_sweep.py --no-ray --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from spa import sweep as sweep_mod  # noqa: E402
from spa.executors import make_executor  # noqa: E402

DEFAULT_JSON = ROOT / "tools" / "results" / "bench_sweep.json"


def _opts(args: argparse.Namespace, executor: str) -> sweep_mod.SweepOptions:
    return sweep_mod.SweepOptions(ratios=sweep_mod.parse_ratios(args.ratios), criterion=args.criteria,
                                  executor=executor, workers=args.workers, force=True)


def _run(args: argparse.Namespace, kind: str, out: Path) -> dict[str, Any]:
    """One timed sweep of the prunes on ``kind``: start, prunes, total (s), the pruned models' bytes."""
    opts = _opts(args, kind)
    _, paths = sweep_mod._prepare_output(args.model, out, opts)
    t0 = time.perf_counter()
    executor = make_executor(kind, workers=args.workers)
    t1 = time.perf_counter()
    try:
        rows = sweep_mod._prune_rows(args.model, paths, opts, executor)
        t2 = time.perf_counter()
        _, again = sweep_mod._prepare_output(args.model, out.with_name(out.name + "_warm"), opts)
        sweep_mod._prune_rows(args.model, again, opts, executor)  # the same tasks on the started workers
        t3 = time.perf_counter()
    finally:
        executor.close()
    errors = [r["error"] for r in rows if r.get("error")]
    models = {p.name: p.read_bytes() for p in sorted(paths.values()) if p.is_file()}
    return {"executor": kind, "workers": 1 if kind == "serial" else args.workers, "tasks": len(paths),
            "start_s": round(t1 - t0, 3), "prunes_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
            "prunes_warm_s": round(t3 - t2, 3),
            "errors": errors, "_models": models}


TASK_MEMORY = r"""
import json, sys, resource
from pathlib import Path
from spa import sweep as s
from spa.graph.io import load_model

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

model, criterion, ratio = sys.argv[1], sys.argv[2], float(sys.argv[3])
job = s._SweepJob(load_model(model).SerializeToString(), 0, None, {"round_to": 1}, None)
s._prune_point(job, (criterion, 0.5))  # warm-up: lazy imports and first-call caches
Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
base = rss_mb()
s._prune_point(job, (criterion, ratio))
peak = next(int(l.split()[1]) / 1024 for l in Path("/proc/self/status").read_text().splitlines()
            if l.startswith("VmHWM"))
print(json.dumps({"base_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
                  "model_mb": round(len(job.model) / 2**20, 2)}))
"""


def _task_memory(args: argparse.Namespace) -> dict[str, Any] | None:
    """Peak RSS of one prune task (a worker's working set) in a fresh process, over its RSS before the task
    (interpreter, spa and ONNX Runtime imported, the shared model held); Linux only."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    crit = args.criteria.split(",")[0]
    ratio = sweep_mod.parse_ratios(args.ratios)[-1]
    res = subprocess.run([sys.executable, "-c", TASK_MEMORY, args.model, crit, str(ratio)], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=600)
    if res.returncode:
        return {"error": res.stderr.strip().splitlines()[-1:]}
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    out["task_mb"] = round(out["peak_rss_mb"] - out["base_rss_mb"], 1)
    out["note"] = f"one prune task ({crit}, ratio {ratio}, --round-to 1), fresh process, after a warm-up task"
    return out


def _projection(cost: float, tasks: int, runs: list[dict[str, Any]], ns: list[int]) -> list[dict[str, Any]]:
    """``T(N) = o + c·⌈tasks/N⌉`` per executor, ``o`` from its measured run."""
    out = []
    for run in runs:
        if run["executor"] == "serial":
            continue
        overhead = max(run["total_s"] - cost * math.ceil(tasks / run["workers"]), 0.0)
        out.append({"executor": run["executor"], "overhead_s": round(overhead, 3),
                    "projected_s": {str(n): round(overhead + cost * math.ceil(tasks / n), 2) for n in ns}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "demo_cnn.onnx"))
    ap.add_argument("--ratios", default="0.1:0.6:0.1")
    ap.add_argument("--criteria", default="l1,l2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="Skip the Ray run.")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args(argv)
    kinds = ["serial", "local"] + ([] if args.no_ray else ["ray"])
    with tempfile.TemporaryDirectory() as tmp:
        _run(args, "serial", Path(tmp) / "warmup")  # latency table and imports, untimed
        runs = [_run(args, kind, Path(tmp) / kind) for kind in kinds]
    reference = runs[0]["_models"]
    for run in runs:
        run["identical"] = run.pop("_models") == reference
    tasks = runs[0]["tasks"]
    cost = runs[0]["prunes_s"] / tasks
    ns = [1, 2, 4, 8, 16, 32, 64]
    projection = _projection(cost, tasks, runs, ns)
    serial_total = runs[0]["total_s"]
    for run in runs:
        run["speedup"] = round(serial_total / run["total_s"], 2) if run["total_s"] else None
    table = Table(title=f"spa sweep prunes: {Path(args.model).name}, {tasks} tasks "
                        f"({args.ratios} × {args.criteria}), {os.cpu_count()} CPUs")
    for col in ("executor", "workers", "start s", "prunes s", "total s", "speedup", "again, warm s", "identical"):
        table.add_column(col, justify="right" if col not in ("executor", "identical") else "left")
    for run in runs:
        table.add_row(run["executor"], str(run["workers"]), f"{run['start_s']:.2f}", f"{run['prunes_s']:.2f}",
                      f"{run['total_s']:.2f}", f"{run['speedup']}", f"{run['prunes_warm_s']:.2f}",
                      str(run["identical"]))
    proj = Table(title=f"projection T(N) = o + c·⌈{tasks}/N⌉, c = {cost:.3f} s per task (measured serially)")
    proj.add_column("executor")
    proj.add_column("o s", justify="right")
    for n in ns:
        proj.add_column(f"N={n}", justify="right")
    for p in projection:
        proj.add_row(p["executor"], f"{p['overhead_s']:.2f}", *(f"{p['projected_s'][str(n)]:.2f}" for n in ns))
    memory = _task_memory(args)
    console = Console(width=140)
    console.print(table)
    console.print(proj)
    if memory and "task_mb" in memory:
        console.print(f"memory per task: {memory['task_mb']} MB over a worker's {memory['base_rss_mb']} MB "
                      f"(peak {memory['peak_rss_mb']} MB; model {memory['model_mb']} MB)")
    result = {"meta": {"model": args.model, "ratios": args.ratios, "criteria": args.criteria, "tasks": tasks,
                       "workers": args.workers, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                       "platform": platform.platform(), "python": platform.python_version(),
                       "timed": "prunes only (the sweep's benchmark step runs in the driver for every executor)",
                       "projection_model": "T(N) = o + c*ceil(tasks/N); c = serial prunes / tasks; o = measured "
                                           "total at --workers minus c*ceil(tasks/workers)"},
              "cost_per_task_s": round(cost, 4), "runs": runs, "projection": projection,
              "task_memory": memory}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["identical"] and not r["errors"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
