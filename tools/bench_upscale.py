#!/usr/bin/env python3
"""UPSCALE benchmark: constrained vs unconstrained (naive export) vs unconstrained + reordered.

For residual and concat-heavy architectures from ``models/`` (ResNet-50-like, DenseNet-121-like,
MobileNetV2-like, EfficientNet-like at 224x224), exported with the legacy exporter, prunes at 30 % and
50 % with l2 in four modes:

* ``constrained``  — every consumer of a shared tensor drops the same channels;
* ``naive``        — unconstrained, channels in index order (most consumers read through a Gather);
* ``reordered``    — unconstrained, channels laid out so consumer subsets are contiguous (Slice);
* ``reordered+auto`` — as above, each consumer choosing copy vs zeroed weights by measured cost.

Reported per model × ratio × mode: MACs (fraction of the original), number of Gather/Slice reads,
ONNX Runtime CPU latency (1 thread, all variants timed in one alternating run), speedup, ideal speedup
(MACs ratio), latency efficiency (speedup / ideal) and fidelity (cosine similarity of the outputs with
the original on seeded random inputs). Writes ``tools/results/bench_upscale.json``.

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,densenet121,mobilenetv2_full,efficientnet_b0_like")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "bench_upscale.json")
    args = ap.parse_args(argv)

    import spa
    from models.export import export_onnx
    from models.registry import LARGE_MODELS
    from spa.bench.latency import time_models
    from spa.validate.runtime import random_inputs, session

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
            for ratio in [float(r) for r in args.ratios.split(",")]:
                paths, results = [str(src)], []
                for mode, kw in MODES.items():
                    r = spa.prune(str(src), ratio, "l2", check=False, **kw)  # type: ignore[arg-type]
                    out = Path(tmp) / f"{name}_{ratio}_{mode.replace('+', '_')}.onnx"
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
                        "model": name, "ratio": ratio, "mode": mode,
                        "macs_fraction": r.report["macs_after"] / base_macs,
                        "gathers": ops.count("Gather"), "slices": ops.count("Slice"),
                        "consumer_reads": r.report.get("consumer_reads"),
                        "original_ms": base_ms, "median_ms": t.median_ms, "p90_ms": t.p90_ms,
                        "speedup": speed, "ideal_speedup": ideal, "latency_efficiency": speed / ideal,
                        "fidelity_cosine": _cosine(out, ref_out),
                    })
                    console.print(f"{name} {ratio} {mode}: {t.median_ms:.2f} ms (orig {base_ms:.2f}), "
                                  f"efficiency {speed / ideal:.2f}")
    table = Table(title="UPSCALE modes, ONNX Runtime CPU 1 thread (one alternating run per model x ratio)")
    for col in ("model", "ratio", "mode", "MACs", "Gather", "Slice", "ms", "speedup", "ideal", "efficiency", "cosine"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['ratio']:.1f}", r["mode"], f"{r['macs_fraction']:.3f}", str(r["gathers"]),
                      str(r["slices"]), f"{r['median_ms']:.2f}", f"{r['speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x",
                      f"{r['latency_efficiency']:.2f}", f"{r['fidelity_cosine']:.4f}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"iters": args.iters, "threads": 1, "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
