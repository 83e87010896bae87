#!/usr/bin/env python
"""How fast is spa itself? Time each phase of pruning on models of growing size.

For every model (the zoo's ``TINY_MODELS`` and ``LARGE_MODELS`` from ``models/registry.py``, plus a
ResNet sweep over depth (~50 to ~1000 ONNX nodes) and width), the script

1. exports it once with ``models.export.export_onnx`` (legacy exporter by default, BatchNorm kept) into a
   temporary folder — export time is *not* measured;
2. starts a **fresh worker process** per model (no torch imported there) that times spa's phases
   separately, ``--repeat`` times, and reports the median of each:

   * ``load+normalize``: :func:`spa.graph.io.load_model` + :func:`spa.graph.normalize.normalize`;
   * ``analyze``: :func:`spa.analysis.groups.analyze_graph`;
   * ``score+plan``: :func:`spa.criteria.score_groups` (``--criterion``, default l2) +
     :func:`spa.plan.make_plan` (``--ratio``, default 0.5);
   * ``surgery``: :func:`spa.surgery.prune_model` + ``ModelGraph.to_onnx()``;
   * ``total``: one end-to-end ``spa.prune(path, ratio=ratio, criterion=criterion, check=False)`` call, timed on its own
     (it repeats all phases; it is not the sum of the columns above, though close to it).

   Before timing, the worker prunes a small built-in model once, so one-time costs (lazy imports,
   first-call caches) are not charged to the first model.

Memory: **peak RSS** of the worker process — the OS high-water mark of the whole process (Python heap,
numpy arrays and protobuf's C++ objects alike): ``VmHWM`` from ``/proc/self/status``, reset after the
warm-up through ``/proc/self/clear_refs`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where /proc is
missing; on Linux that one is inherited across fork+exec, so it would show the parent's peak). ``base MB``
is the RSS just before the model is loaded (interpreter + imports + warm-up), so ``peak - base`` is what
the model cost. Not tracemalloc: it misses protobuf's C++ allocations and slows the timed code.

Usage::

    python tools/bench_prune_speed.py                 # full set, median of 3, tools/results/...json
    python tools/bench_prune_speed.py --quick         # 2 small models, 1 run (the smoke test)
    python tools/bench_prune_speed.py --repeat 5 --only 'resnet*' --json out.json

The table is printed with rich; ``--json`` (default ``tools/results/bench_prune_speed.json``) holds
every run's numbers plus the machine and package versions.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_JSON = ROOT / "tools" / "results" / "bench_prune_speed.json"
PHASES = ("load_normalize", "analyze", "score_plan", "surgery")
PHASE_TITLES = {"load_normalize": "load+norm s", "analyze": "analyze s", "score_plan": "score+plan s",
                "surgery": "surgery s"}


# -- the models --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """One model to benchmark: a name, a family (for the growth fit) and a torch factory."""

    name: str
    family: str
    build: Callable[[], tuple[Any, tuple[int, ...]]]


def _resnet(block: str, layers: list[int], width: int, size: int) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build() -> tuple[Any, tuple[int, ...]]:
        from models.common import init_weights
        from models.resnet import BasicBlock, Bottleneck, ResNet

        cls = Bottleneck if block == "bottleneck" else BasicBlock
        net = ResNet(cls, layers, width=width, num_classes=1000)
        return init_weights(net, seed=0), (1, 3, size, size)  # BN drawn, not calibrated: speed only

    return build


#: ResNet (bottleneck, width 16) with more and more blocks: ~55 to ~1000 ONNX nodes.
DEPTHS: dict[str, list[int]] = {
    "d4": [1, 1, 1, 1],
    "d8": [2, 2, 2, 2],
    "d16": [3, 4, 6, 3],  # the ResNet-50 layout
    "d33": [3, 4, 23, 3],  # ResNet-101
    "d50": [3, 8, 36, 3],  # ResNet-152
    "d94": [3, 24, 64, 3],
}
#: The ResNet-50 layout at growing width (width 64 is the real ResNet-50, in LARGE_MODELS).
WIDTHS = (16, 32)


def model_specs(quick: bool) -> list[Spec]:
    """The benchmark set (``quick``: two small models for the smoke test)."""
    from models.registry import LARGE_MODELS, TINY_MODELS

    if quick:
        return [Spec("tiny/resnet_basic", "tiny", TINY_MODELS["resnet_basic"]),
                Spec("resnet-d4-w16", "resnet-depth", _resnet("bottleneck", DEPTHS["d4"], 16, 64))]
    specs = [Spec(f"tiny/{name}", "tiny", f) for name, f in TINY_MODELS.items()]
    specs += [Spec(f"resnet-{d}-w16", "resnet-depth", _resnet("bottleneck", layers, 16, 64))
              for d, layers in DEPTHS.items()]
    specs += [Spec(f"resnet50-w{w}", "resnet-width", _resnet("bottleneck", DEPTHS["d16"], w, 224))
              for w in WIDTHS]
    specs += [Spec(f"large/{name}", "large", f) for name, f in LARGE_MODELS.items()]
    return specs


def export(spec: Spec, folder: Path, exporter: str) -> Path:
    """Export ``spec`` to ``folder`` (reused when already there)."""
    path = folder / (spec.name.replace("/", "__") + f".{exporter}.onnx")
    if path.exists():
        return path
    from models.export import export_onnx

    module, shape = spec.build()
    export_onnx(module, shape, path, exporter=exporter, verify=False)  # type: ignore[arg-type]
    return path


# -- the worker: one model, fresh process --------------------------------------------------------------

def _proc_status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    """Current RSS (falls back to the peak where /proc is missing)."""
    return _proc_status_mb("VmRSS") or _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak RSS of this process since exec (or since :func:`_reset_peak`).

    ``VmHWM`` where available: ``ru_maxrss`` is inherited from the parent across fork+exec on Linux, so
    in a worker started by a parent that holds torch it would report the parent's peak.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _warmup() -> None:
    """Prune a tiny conv chain once so first-call costs are not charged to the measured model."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    import spa

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1] * 4)]
    graph = helper.make_graph(nodes, "warmup", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                              [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    spa.prune(model, ratio=0.5, check=False)


def run_worker(path: Path, repeat: int, ratio: float, criterion: str) -> dict[str, Any]:
    """Time spa's phases on one model in this process; return medians, all runs and peak RSS."""
    import numpy as np

    import spa
    from spa.analysis.groups import analyze_graph
    from spa.criteria import score_groups
    from spa.graph.io import load_model
    from spa.graph.normalize import normalize
    from spa.plan import make_plan
    from spa.surgery import prune_model

    _warmup()
    gc.collect()
    base_mb = _rss_mb()
    peak_reset = _reset_peak()
    runs: list[dict[str, float]] = []
    info: dict[str, Any] = {}
    for _ in range(repeat):
        t = [time.perf_counter()]
        proto = load_model(path)
        t.append(time.perf_counter())
        mg = normalize(proto)
        t.append(time.perf_counter())
        analysis = analyze_graph(mg)
        t.append(time.perf_counter())
        scores = score_groups(analysis, criterion, 0)
        plan = make_plan(analysis, scores, ratio, criterion=criterion)
        t.append(time.perf_counter())
        pruned = prune_model(analysis, plan).to_onnx()
        t.append(time.perf_counter())
        if not info:
            info = {
                "nodes": len(proto.graph.node),
                "nodes_normalized": len(mg.graph.nodes),
                "params": int(sum(int(np.prod(i.dims)) for i in proto.graph.initializer)),
                "groups": len(analysis.groups),
                "prunable_groups": len(analysis.prunable),
                "pruned_groups": len(plan.groups),
                "nodes_pruned_model": len(pruned.graph.node),
            }
        del proto, mg, analysis, scores, plan, pruned
        gc.collect()
        t0 = time.perf_counter()
        spa.prune(path, ratio=ratio, criterion=criterion, check=False)
        t1 = time.perf_counter()
        gc.collect()
        runs.append({"load": t[1] - t[0], "normalize": t[2] - t[1], "load_normalize": t[2] - t[0],
                     "analyze": t[3] - t[2], "score_plan": t[4] - t[3], "surgery": t[5] - t[4],
                     "phase_sum": t[5] - t[0], "total": t1 - t0})
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    return info | {"median": median, "min": best, "runs": runs, "peak_rss_mb": round(_peak_rss_mb(), 1),
                   "base_rss_mb": round(base_mb, 1), "peak_since": "warm-up" if peak_reset else "exec"}


def measure(path: Path, repeat: int, ratio: float, criterion: str, timeout: float) -> dict[str, Any]:
    """Run :func:`run_worker` for ``path`` in a fresh Python process (honest peak RSS per model)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), "--repeat", str(repeat),
           "--ratio", str(ratio), "--criterion", criterion]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        return {"error": f"worker exited {res.returncode}: {tail}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- reporting ---------------------------------------------------------------------------------------

def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def growth(rows: list[dict[str, Any]], family: str = "resnet-depth") -> dict[str, float] | None:
    """Least-squares fit ``total = c * nodes^k`` over one family (k ~ 1: linear in the node count)."""
    import numpy as np

    pts = [(r["nodes"], r["median"]["total"]) for r in rows if r.get("family") == family and "median" in r]
    if len(pts) < 3:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    k, logc = np.polyfit(x, y, 1)
    per_node = [t / n * 1e3 for n, t in pts]
    return {"family": family, "exponent": round(float(k), 3), "coef_s": float(np.exp(logc)),
            "ms_per_node_min": round(min(per_node), 3), "ms_per_node_max": round(max(per_node), 3),
            "nodes_min": min(p[0] for p in pts), "nodes_max": max(p[0] for p in pts)}


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any], fit: dict[str, float] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the whole table
    table = Table(title=f"spa prune speed: ratio {meta['ratio']}, {meta['criterion']}, median of "
                        f"{meta['repeat']} (exporter {meta['exporter']}, {meta['machine']})")
    table.add_column("model")
    for col in ("nodes", "params", *PHASE_TITLES.values(), "total s", "peak MB", "base MB"):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], *["-"] * 9)
            continue
        m = r["median"]
        table.add_row(r["name"], str(r["nodes"]), _human(r["params"]), *(f"{m[p]:.3f}" for p in PHASES),
                      f"[bold]{m['total']:.3f}", f"{r['peak_rss_mb']:.0f}", f"{r['base_rss_mb']:.0f}")
    console.print(table)
    for r in rows:
        if "error" in r:
            console.print(f"[red]{r['name']}: {r['error']}")
    if fit:
        console.print(f"growth over {fit['family']} ({fit['nodes_min']}..{fit['nodes_max']} nodes): "
                      f"total ~ nodes^{fit['exponent']:.2f}, {fit['ms_per_node_min']:.2f}.."
                      f"{fit['ms_per_node_max']:.2f} ms per node")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("spa", "onnx", "onnxruntime", "onnx_graphsurgeon", "numpy", "torch"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small models, one run (smoke test)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per model; the median is reported "
                        "(default 3, or 1 with --quick)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--only", metavar="GLOB", action="append", help="benchmark only matching model names")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--models-dir", type=Path, help="keep/reuse exported models here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model's worker")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be >= 1")

    if args.worker:
        print(json.dumps(run_worker(args.worker, repeat, args.ratio, args.criterion)))
        return 0

    specs = model_specs(args.quick)
    if args.only:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, g) for g in args.only)]
        if not specs:
            parser.error(f"--only {args.only} matches no model")
    with tempfile.TemporaryDirectory(prefix="spa_bench_") as tmp:
        folder = args.models_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        for spec in specs:
            t0 = time.perf_counter()
            try:
                path = export(spec, folder, args.exporter)
            except Exception as exc:  # noqa: BLE001 - an export failure is reported, the rest still runs
                rows.append({"name": spec.name, "family": spec.family, "error": f"export failed: {exc}"})
                print(f"{spec.name}: export failed: {exc}", file=sys.stderr)
                continue
            t1 = time.perf_counter()
            row = {"name": spec.name, "family": spec.family, "export_s": round(t1 - t0, 2),
                   "file_mb": round(path.stat().st_size / 2**20, 2)}
            row |= measure(path, repeat, args.ratio, args.criterion, args.timeout)
            rows.append(row)
            total = row["median"]["total"] if "median" in row else float("nan")
            print(f"{spec.name}: {row.get('nodes', '?')} nodes, total {total:.3f} s", file=sys.stderr)
    meta = {"spa_bench": "bench_prune_speed", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick, "repeat": repeat, "ratio": args.ratio, "criterion": args.criterion,
            "exporter": args.exporter, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "platform": platform.platform(), "versions": _versions(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "memory": "peak RSS (VmHWM, reset after warm-up) of a fresh worker process per model; "
                      "base = RSS before load",
            "total": "spa.prune(path, ratio=ratio, criterion=criterion, check=False), timed separately from the phases"}
    fit = growth(rows)
    print_table(rows, meta, fit)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_name(args.json.name + ".tmp")
    tmp_json.write_text(json.dumps({"meta": meta, "growth": fit, "rows": rows}, indent=2) + "\n")
    tmp_json.replace(args.json)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
