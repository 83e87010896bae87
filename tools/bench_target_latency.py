#!/usr/bin/env python3
"""``--target-latency`` benchmark: the lookup-table search (cold and warm cache) against whole-model bisection.

For the ResNet-50-like and MobileNetV2-like models of ``models/`` (224x224, legacy exporter, l2
criterion), and each latency target (a fraction of the original's latency), runs
:func:`spa.latency.solve.solve_latency` three ways:

* ``lut cold`` — the per-layer lookup table in an empty cache folder (every layer shape the search
  visits is micro-benchmarked);
* ``lut warm`` — the same search again on that folder;
* ``measure``  — the old method: bisection on whole-model measurements, one per step.

Reported per row: wall time of the solve, micro-benchmarks run, whole-model timings run, the chosen
ratio, the predicted latency fraction (lut), the fraction the solver measured, and a re-measurement
of every chosen plan against the original in one alternating run afterwards (ONNX Runtime CPU, one
intra-op thread; median of per-round ratios, :mod:`spa.latency.measure`). Writes
``tools/results/bench_target_latency.json``.

    python tools/bench_target_latency.py                          # both models, targets 0.7 and 0.5
    python tools/bench_target_latency.py --models mobilenetv2_full --targets 0.5 --iters 10
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROVIDERS = ["CPUExecutionProvider"]


def _curve(name: str, analysis: object, make: object, build: object, cache: Path, ratios: list[float],
           iters: int) -> dict[str, object]:
    """Table prediction (sensitivity 1: the fraction of summed layer latency) against a measurement."""
    from spa.budget import estimate
    from spa.latency import LatencyPredictor, LatencyTable, measure

    table = LatencyTable.open(PROVIDERS, 1, cache)
    pred = LatencyPredictor.build(analysis, table, {"input": (1, 3, 224, 224)})  # type: ignore[arg-type]
    macs0 = estimate(analysis, make(0.0)).macs  # type: ignore[arg-type,operator]
    original = analysis.model.to_onnx()  # type: ignore[attr-defined]
    points = []
    for r in ratios:
        plan = make(r)  # type: ignore[operator]
        c = measure.compare(original, build(plan), providers=PROVIDERS, threads=1, iters=iters)  # type: ignore[operator]
        points.append({"ratio": r, "macs_fraction": estimate(analysis, plan).macs / macs0,  # type: ignore[arg-type]
                       "predicted": pred.x(plan), "measured": c.fraction})
    table.save()
    err = float(np.mean([abs(p["predicted"] - p["measured"]) for p in points]))
    macs_err = float(np.mean([abs(p["macs_fraction"] - p["measured"]) for p in points]))
    return {"model": name, "points": points, "mean_abs_error": err, "macs_mean_abs_error": macs_err}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2_full")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--iters", type=int, default=20, help="rounds per whole-model timing in the solvers")
    ap.add_argument("--verify-iters", type=int, default=30, help="rounds of the final re-measurement")
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--curve", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                    help="ratios at which to compare the table's prediction with a measurement ('' to skip)")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "bench_target_latency.json")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import spa
    from models.export import export_onnx
    from models.registry import LARGE_MODELS
    from spa.criteria import CriterionContext, get_criterion
    from spa.latency import measure
    from spa.latency.lut import cpu_name
    from spa.latency.solve import solve_latency
    from spa.plan import Plan, make_plan
    from spa.surgery import prune_model

    console = Console(width=170)
    rows: list[dict[str, object]] = []
    curves: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, shape = LARGE_MODELS[name]()
            src = Path(tmp) / f"{name}.onnx"
            export_onnx(model, shape, src, exporter="legacy", verify=False)
            analysis = spa.analyze(str(src))
            scores = get_criterion("l2").score(analysis, CriterionContext(seed=0))

            def make(r: float) -> Plan:
                return make_plan(analysis, scores, r, criterion="l2", round_to=args.round_to)  # noqa: B023

            def build(p: Plan) -> object:
                return prune_model(analysis, p).to_onnx()  # noqa: B023

            for target in [float(t) for t in args.targets.split(",")]:
                cache = Path(tmp) / f"lut_{name}_{target}"
                runs = []
                for label, kw in (("lut cold", {"cache_dir": cache}), ("lut warm", {"cache_dir": cache}),
                                  ("measure", {"method": "measure"})):
                    t0 = time.perf_counter()
                    plan, rec = solve_latency(analysis, make, build, target, providers=PROVIDERS, threads=1,
                                              iters=args.iters, **kw)  # type: ignore[arg-type]
                    wall = time.perf_counter() - t0
                    runs.append((label, plan, rec, wall))
                    console.print(f"{name} target {target} {label}: ratio {plan.ratio:.3f}, measured "
                                  f"{rec['measured_fraction']:.3f}, {wall:.1f} s")
                original = analysis.model.to_onnx()
                chosen = [original, *(build(p) for _, p, _, _ in runs)]
                samples = measure.paired_samples(chosen, providers=PROVIDERS, threads=1,  # type: ignore[arg-type]
                                                 iters=args.verify_iters)
                base = np.asarray(samples[0])
                for (label, plan, rec, wall), s in zip(runs, samples[1:]):
                    lut = rec.get("lut") or {}
                    rows.append({
                        "model": name, "target": target, "method": label, "solve_s": round(wall, 2),
                        "micro_benchmarks": lut.get("measured", 0) if isinstance(lut, dict) else 0,
                        "lut_hits": lut.get("hits", 0) if isinstance(lut, dict) else 0,
                        "whole_model_timings": (1 + len(rec["attempts"])) if "attempts" in rec  # type: ignore[arg-type]
                        else rec.get("measurements"),
                        "ratio": round(plan.ratio, 4),
                        "predicted_fraction": rec.get("predicted_fraction"),
                        "measured_fraction": round(float(rec["measured_fraction"]), 4),  # type: ignore[arg-type]
                        "remeasured_fraction": round(float(np.median(np.asarray(s) / base)), 4),
                        "status": rec.get("status", ""),
                        "corrections": rec.get("corrections"),
                        "original_ms": round(float(np.median(base)), 3),
                        "record": rec,
                    })
            if args.curve:
                curves.append(_curve(name, analysis, make, build, Path(tmp) / f"lut_{name}_curve",
                                     [float(r) for r in args.curve.split(",")], args.iters))
    table = Table(title="--target-latency on ONNX Runtime CPU, 1 thread: lookup table (cold/warm cache) vs "
                        "whole-model bisection")
    for col in ("model", "target", "method", "solve s", "micro-bench", "whole-model runs", "ratio", "predicted",
                "measured", "re-measured", "status"):
        table.add_column(col, justify="right")
    for r in rows:
        pred = r["predicted_fraction"]
        table.add_row(str(r["model"]), f"{r['target']:.2f}", str(r["method"]), f"{r['solve_s']:.1f}",
                      str(r["micro_benchmarks"]), str(r["whole_model_timings"]), f"{r['ratio']:.3f}",
                      f"{pred:.3f}" if isinstance(pred, float) else "-", f"{r['measured_fraction']:.3f}",
                      f"{r['remeasured_fraction']:.3f}", str(r["status"] or "-"))
    console.print(table)
    for c in curves:
        ctable = Table(title=f"{c['model']}: table prediction vs measured")
        for col in ("ratio", "MACs", "predicted", "measured"):
            ctable.add_column(col, justify="right")
        for p in c["points"]:  # type: ignore[attr-defined]
            ctable.add_row(f"{p['ratio']:.2f}", f"{p['macs_fraction']:.3f}", f"{p['predicted']:.3f}",
                           f"{p['measured']:.3f}")
        console.print(ctable)
        console.print(f"{c['model']}: mean |predicted - measured| {c['mean_abs_error']:.3f} (MACs fraction as the "
                      f"prediction: {c['macs_mean_abs_error']:.3f})")
    meta = {"cpu": cpu_name(), "machine": platform.machine(), "onnxruntime": ort.__version__, "threads": 1,
            "iters": args.iters, "verify_iters": args.verify_iters, "round_to": args.round_to,
            "criterion": "l2", "exporter": "legacy"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows, "curves": curves}, indent=2, default=str))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
