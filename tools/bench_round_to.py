#!/usr/bin/env python3
"""``--round-to`` benchmark: does keeping channel counts multiples of N make pruned models faster?

For ResNet-50-like and MobileNetV2-like models from ``models/`` (224x224, legacy export), prunes with l2
at 30 % and 50 % with ``round_to`` 1, 4, 8 and 16 (``--round-to auto`` is 16 on CPU, 8 when CUDA is
usable), and times every variant together with the original in one alternating run (ONNX Runtime, 1
thread by default, CPU unless ``--provider``). Reported per model × ratio × N: MACs fraction, median
latency, speedup over the original, ideal speedup (MACs ratio) and latency efficiency (speedup / ideal).

    python tools/bench_round_to.py                             # both models (a few minutes)
    python tools/bench_round_to.py --models mobilenetv2_full --ratios 0.5 --iters 40

Writes ``tools/results/bench_round_to.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import spa
    from models.export import export_onnx
    from models.registry import LARGE_MODELS
    from spa.analysis.cost import count_macs
    from spa.runtime.providers import choose_provider
    from spa.runtime.timing import time_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2_full")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--multiples", default="1,4,8,16")
    ap.add_argument("--iters", type=int, default=60, help="alternating rounds (each runs every variant once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--provider", default="cpu", help="auto, cpu, cuda or tensorrt")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "bench_round_to.json")
    args = ap.parse_args(argv)
    provider = choose_provider(args.provider)
    console = Console()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="spa_round_to_") as tmp:
        for name in args.models.split(","):
            src = Path(tmp) / f"{name}.onnx"
            model, shape = LARGE_MODELS[name]()
            export_onnx(model, shape, src, exporter="legacy", verify=False)
            macs0 = count_macs(spa.load(str(src)))
            for ratio in [float(r) for r in args.ratios.split(",")]:
                variants = []
                for n in [int(m) for m in args.multiples.split(",")]:
                    result = spa.prune(str(src), ratio=ratio, criterion="l2", round_to=n, check=False)
                    path = Path(tmp) / f"{name}_{ratio}_{n}.onnx"
                    result.save(path)
                    variants.append((n, path, result.report["macs_after"]))
                timings = time_models([str(src)] + [str(p) for _, p, _ in variants], providers=provider.providers,
                                      threads=args.threads, warmup=5, iters=args.iters)
                base = timings[0].median_ms
                for (n, _, macs), t in zip(variants, timings[1:]):
                    ideal = macs0 / macs  # type: ignore[operator]
                    speedup = base / t.median_ms
                    rows.append({"model": name, "ratio": ratio, "round_to": n, "macs_fraction": macs / macs0,  # type: ignore[operator]
                                 "original_ms": base, "median_ms": t.median_ms, "speedup": speedup,
                                 "ideal_speedup": ideal, "latency_efficiency": speedup / ideal})
                console.print(f"{name} @ {ratio}: done")
    table = Table(title=f"--round-to N, l2, ONNX Runtime {provider.providers[0]}, {args.threads} thread(s), "
                        f"{args.iters} alternating rounds")
    for col in ("model", "ratio", "N", "MACs frac", "original ms", "pruned ms", "speedup", "ideal", "efficiency"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["model"]), f"{r['ratio']:.2f}", str(r["round_to"]), f"{r['macs_fraction']:.3f}",
                      f"{r['original_ms']:.2f}", f"{r['median_ms']:.2f}", f"{r['speedup']:.2f}",
                      f"{r['ideal_speedup']:.2f}", f"{r['latency_efficiency']:.2f}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"provider": provider.providers[0], "threads": args.threads,
                                     "iters": args.iters, "rows": rows}, indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
