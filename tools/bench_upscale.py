#!/usr/bin/env python3
"""UPSCALE benchmark: constrained vs unconstrained (naive export) vs unconstrained + reordered.

For residual and concat-heavy architectures from ``models/`` (ResNet-50-like, DenseNet-121-like,
MobileNetV2-like, EfficientNet-like at 224x224), exported with the legacy exporter, prunes at 30 % and
50 % with l2 in four modes:

* ``constrained``  — every consumer of a shared tensor drops the same channels;
* ``naive``        — unconstrained, channels in index order (most consumers read through a Gather);
* ``reordered``    — unconstrained, channels laid out so consumer subsets are contiguous (Slice);
* ``reordered+auto`` — as above, each consumer choosing copy vs zeroed weights by measured cost.

Reported per model × ratio × mode: MACs (fraction of the original), number of Gather/Slice copies
(and how many contiguous index runs the Gathers read: reordering inside a Concat's producer blocks
shortens them even where a consumer cannot become one Slice), ONNX Runtime CPU latency (1 thread, all
variants timed in one alternating run), speedup, ideal speedup (MACs ratio), latency efficiency
(speedup / ideal) and fidelity (cosine similarity of the outputs with the original on seeded random
inputs). A summary per model × ratio compares ``reordered`` with ``naive`` (latency ratio, copies).
Writes ``tools/results/bench_upscale.json``.

``--criteria l2,obs`` adds the calibrated OBS criterion (random calibration data, ``--calib-samples``);
it is off by default because it costs about 25 s per prune on DenseNet-121 (32 prunes per run).

    python tools/bench_upscale.py                   # all four models (several minutes)
    python tools/bench_upscale.py --models resnet50 --ratios 0.5 --iters 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "constrained": {},
    "naive": {"unconstrained": True, "reorder": False},
    "reordered": {"unconstrained": True, "reorder": True},
    "reordered+auto": {"unconstrained": True, "reorder": True, "consumer_mode": "auto"},
}


def _cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    x = np.concatenate([np.ravel(v) for v in a]).astype(np.float64)
    y = np.concatenate([np.ravel(v) for v in b]).astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _gather_runs(model: object) -> int:
    """Contiguous index runs over all Gathers that narrow a consumer's input (1 per Slice-able read)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}  # type: ignore[attr-defined]
    runs = 0
    for node in model.graph.node:  # type: ignore[attr-defined]
        if node.op_type == "Gather" and "__spa_" in node.output[0] and node.input[1] in inits:
            idx = numpy_helper.to_array(inits[node.input[1]])
            runs += 1 + int(np.count_nonzero(np.diff(idx) != 1))
    return runs


def _summary(rows: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """Reordered vs naive per model x criterion x ratio: latency ratio and copies."""
    out = []
    for r in rows:
        if r["mode"] != "reordered":
            continue
        naive = next(n for n in rows if n["mode"] == "naive" and
                     (n["model"], n["criterion"], n["ratio"]) == (r["model"], r["criterion"], r["ratio"]))
        out.append({
            "model": r["model"], "criterion": r["criterion"], "ratio": r["ratio"],
            "reordered_over_naive_ms": r["median_ms"] / naive["median_ms"],
            "gathers": [naive["gathers"], r["gathers"]], "slices": [naive["slices"], r["slices"]],
            "gather_runs": [naive["gather_runs"], r["gather_runs"]],
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,densenet121,mobilenetv2_full,efficientnet_b0_like")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--criteria", default="l2", help="comma-separated criteria (obs: random calibration data)")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "bench_upscale.json")
    args = ap.parse_args(argv)

    import spa
    from models.export import export_onnx
    from models.registry import LARGE_MODELS
    from spa.runtime.feeds import random_inputs
    from spa.runtime.session import session
    from spa.runtime.timing import time_models

    console = Console(width=160)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, shape = LARGE_MODELS[name]()
            src = Path(tmp) / f"{name}.onnx"
            export_onnx(model, shape, src, exporter="legacy", verify=False)
            ref = session(str(src))
            feeds = random_inputs(ref, seed=0, batch=1)
            ref_out = ref.run(None, feeds)
            for crit, ratio in [(c, float(r)) for c in args.criteria.split(",") for r in args.ratios.split(",")]:
                paths, results = [str(src)], []
                calib = {"calibration": "random", "calib_samples": args.calib_samples} if crit == "obs" else {}
                for mode, kw in MODES.items():
                    r = spa.prune(str(src), ratio=ratio, criterion=crit, check=False, **calib, **kw)  # type: ignore[arg-type]
                    out = Path(tmp) / f"{name}_{crit}_{ratio}_{mode.replace('+', '_')}.onnx"
                    r.save(out)
                    paths.append(str(out))
                    results.append((mode, r))
                timings = time_models(paths, threads=1, warmup=args.warmup, iters=args.iters)
                base_ms, base_macs = timings[0].median_ms, results[0][1].report["macs_before"]
                for (mode, r), t, path in zip(results, timings[1:], paths[1:]):
                    ops = [n.op_type for n in r.model.graph.node]
                    out = session(path).run(None, feeds)
                    speed = base_ms / t.median_ms
                    ideal = base_macs / r.report["macs_after"]
                    rows.append({
                        "model": name, "criterion": crit, "ratio": ratio, "mode": mode,
                        "macs_fraction": r.report["macs_after"] / base_macs,
                        "gathers": ops.count("Gather"), "slices": ops.count("Slice"),
                        "copies": ops.count("Gather") + ops.count("Slice"), "gather_runs": _gather_runs(r.model),
                        "consumer_reads": r.report.get("consumer_reads"),
                        "original_ms": base_ms, "median_ms": t.median_ms, "p90_ms": t.p90_ms,
                        "speedup": speed, "ideal_speedup": ideal, "latency_efficiency": speed / ideal,
                        "fidelity_cosine": _cosine(out, ref_out),
                    })
                    console.print(f"{name} {crit} {ratio} {mode}: {t.median_ms:.2f} ms (orig {base_ms:.2f}), "
                                  f"efficiency {speed / ideal:.2f}")
    table = Table(title="UPSCALE modes, ONNX Runtime CPU 1 thread (one alternating run per model x ratio)")
    for col in ("model", "crit", "ratio", "mode", "MACs", "Gather", "Slice", "runs", "ms", "speedup", "ideal",
                "efficiency", "cosine"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], r["criterion"], f"{r['ratio']:.1f}", r["mode"], f"{r['macs_fraction']:.3f}",
                      str(r["gathers"]), str(r["slices"]), str(r["gather_runs"]), f"{r['median_ms']:.2f}",
                      f"{r['speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x", f"{r['latency_efficiency']:.2f}",
                      f"{r['fidelity_cosine']:.4f}")
    console.print(table)
    summary = _summary(rows)
    verdict = Table(title="reordered vs naive unconstrained export (latency ratio < 1: reordered faster)")
    for col in ("model", "crit", "ratio", "ms ratio", "Gather naive->reordered", "Slice", "Gather runs"):
        verdict.add_column(col, justify="right")
    for v in summary:
        verdict.add_row(v["model"], v["criterion"], f"{v['ratio']:.1f}", f"{v['reordered_over_naive_ms']:.3f}",
                        "{} -> {}".format(*v["gathers"]), "{} -> {}".format(*v["slices"]),
                        "{} -> {}".format(*v["gather_runs"]))
    console.print(verdict)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"iters": args.iters, "warmup": args.warmup, "threads": 1,
                                     "models": args.models.split(","), "criteria": args.criteria.split(","),
                                     "rows": rows, "summary": summary}, indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
