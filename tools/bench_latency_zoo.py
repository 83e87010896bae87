#!/usr/bin/env python3
"""Latency efficiency on six CNNs at 50 %: exact counts, the default (``--round-to latency``), the latency
target, and Torch-Pruning as the peer — all timed in one alternating run per model.

Models (224x224, ``models/``, legacy exporter): ResNet-50, MobileNetV2, DenseNet-121, EfficientNet-B0,
ResNeXt-50-32x4d, RegNet-Y-400MF. Variants per model:

* ``exact``: ``spa prune --ratio 0.5 --round-to 1`` (l2);
* ``default``: ``spa prune --ratio 0.5`` (``--round-to latency``);
* ``before`` (with ``--before SPAN:STEPS:FREE_MACS:FINE_STEP``): the default with the count chooser's
  constants (:mod:`spa.latency.counts`) set so — ``0.25:2:0:8`` is the chooser before the wider span,
  free channels and block-only steps — to compare old and new in one alternating run;
* ``target``: ``spa prune --target-latency 0.5`` (defaults otherwise);
* ``torch-pruning``: Torch-Pruning's ``MetaPruner`` with ``MagnitudeImportance(p=2)`` at
  ``pruning_ratio=0.5`` (classifier left alone) on the same torch module, exported with the same exporter.

Each model's variants are timed together with the original (ONNX Runtime CPU, 1 intra-op thread by
default, batch 1, alternating rounds; ratios come from one run). Reported: MACs fraction, median latency,
latency fraction, efficiency (speedup ÷ MACs ratio = MACs fraction ÷ latency fraction) and latency per
MAC relative to the peer's. Then ``spa sweep`` on ``models/demo_cnn.onnx`` at 0.3..0.7 with the defaults.

    python tools/bench_latency_zoo.py                      # all six + the demo sweep (many minutes)
    python tools/bench_latency_zoo.py --models mobilenetv2_full --iters 30 --no-sweep
    python tools/bench_latency_zoo.py --before 0.25:2:0:8  # also time the chooser's earlier settings

The latency table is spa's cache (``$SPA_CACHE_DIR``); point ``SPA_CACHE_DIR`` at a folder of its own
for a run whose table only this code measured (a cache shared with other spa versions can hold entries
measured differently).

Writes ``tools/results/bench_latency_zoo.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = "resnet50,mobilenetv2_full,densenet121,efficientnet_b0_like,resnext50_32x4d,regnety_400mf"


def torch_pruning_export(model: object, shape: tuple[int, ...], path: Path, ratio: float) -> str | None:
    """Prune ``model`` (a copy) with Torch-Pruning (L2 magnitude, uniform ``ratio``) and export it; the
    reason when that fails."""
    import torch
    from torch import nn

    from models.export import export_onnx

    try:
        import torch_pruning as tp
    except ImportError:
        return "torch-pruning not installed (pip install torch-pruning)"
    m = copy.deepcopy(model)
    assert isinstance(m, nn.Module)
    x = torch.randn(*shape)
    ignored = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    try:
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
        export_onnx(m.eval(), shape, path, exporter="legacy", verify=False)
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a result, not a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _variant(name: str, src: Path, out: Path, **options: object) -> tuple[Path, dict[str, object]]:
    import spa

    t0 = time.perf_counter()
    result = spa.prune(str(src), check=False, **options)  # type: ignore[arg-type]
    result.save(out)
    report = dict(result.report) | {"prune_s": round(time.perf_counter() - t0, 1)}
    return out, report


@contextlib.contextmanager
def _chooser_settings(spec: str | None) -> Iterator[None]:
    """Within: the count chooser's ``SPAN:STEPS:FREE_MACS:FINE_STEP`` set to ``spec`` (None: unchanged)."""
    from spa.latency import counts

    if spec is None:
        yield
        return
    saved = counts.SPAN, counts.STEPS, counts.FREE_MACS, counts.FINE_STEP
    span, steps, free, fine = spec.split(":")
    counts.SPAN, counts.STEPS, counts.FREE_MACS, counts.FINE_STEP = float(span), int(steps), float(free), int(fine)
    try:
        yield
    finally:
        counts.SPAN, counts.STEPS, counts.FREE_MACS, counts.FINE_STEP = saved


def bench_model(name: str, tmp: Path, args: argparse.Namespace, console: Console) -> list[dict[str, object]]:
    import spa
    from models.export import export_onnx
    from models.registry import LARGE_MODELS
    from spa.analysis.cost import count_macs
    from spa.runtime.timing import time_models

    src = tmp / f"{name}.onnx"
    model, shape = LARGE_MODELS[name]()
    export_onnx(model, shape, src, exporter="legacy", verify=False)
    macs0 = count_macs(spa.load(str(src)))
    variants: list[tuple[str, Path, dict[str, object]]] = []
    for label, options in (("exact", {"ratio": args.ratio, "round_to": 1}),
                           ("default", {"ratio": args.ratio}),
                           ("before", {"ratio": args.ratio}),
                           ("target", {"target_latency": args.target})):
        if (label == "target" and args.no_target) or (label == "before" and not args.before):
            continue
        with _chooser_settings(args.before if label == "before" else None):
            path, report = _variant(label, src, tmp / f"{name}_{label}.onnx", **options)
        variants.append((label, path, report))
        console.print(f"  {name} {label}: pruned in {report['prune_s']} s")
    tp_path = tmp / f"{name}_tp.onnx"
    why = torch_pruning_export(model, shape, tp_path, args.ratio)
    if why is None:
        variants.append(("torch-pruning", tp_path, {}))
    else:
        console.print(f"  {name} torch-pruning: {why}")
    timings = time_models([str(src)] + [str(p) for _, p, _ in variants], threads=args.threads, warmup=5,
                          iters=args.iters)
    base = timings[0].median_ms
    rows: list[dict[str, object]] = []
    for (label, path, report), t in zip(variants, timings[1:]):
        macs = count_macs(spa.load(str(path)))
        lat = t.median_ms / base
        row: dict[str, object] = {"model": name, "variant": label, "macs_fraction": macs / macs0,
                                  "original_ms": base, "median_ms": t.median_ms, "latency_fraction": lat,
                                  "efficiency": (macs / macs0) / lat, "ms_per_gmac": t.median_ms / (macs / 1e9)}
        pred = report.get("predicted_latency")
        if isinstance(pred, dict):
            row["predicted_fraction"] = pred["fraction"]
        if report.get("prune_s") is not None:
            row["prune_s"] = report["prune_s"]
        rows.append(row)
    peer = next((r for r in rows if r["variant"] == "torch-pruning"), None)
    for r in rows:
        r["per_mac_vs_peer"] = (float(r["ms_per_gmac"]) / float(peer["ms_per_gmac"])  # type: ignore[arg-type]
                                if peer is not None else None)
    return rows


def demo_sweep(tmp: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    out = tmp / "sweep"
    cmd = [sys.executable, "-m", "spa.cli", "-q", "sweep", str(ROOT / "models" / "demo_cnn.onnx"), "-o", str(out),
           "--ratios", "0.3:0.7:0.1", "--provider", "cpu", "--threads", str(args.threads),
           "--iters", str(args.sweep_iters)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    data = json.loads((out / "sweep.json").read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    return [{k: r.get(k) for k in ("ratio", "macs", "median_ms", "speedup", "ideal_speedup", "latency_efficiency")}
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--target", type=float, default=0.5, help="--target-latency of the 'target' variant")
    ap.add_argument("--no-target", action="store_true", help="skip the --target-latency variant")
    ap.add_argument("--no-sweep", action="store_true", help="skip the demo sweep")
    ap.add_argument("--iters", type=int, default=40, help="alternating rounds (each runs every variant once)")
    ap.add_argument("--sweep-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--search-rounds", type=int, default=None,
                    help="local-search rounds of the latency count chooser (spa.latency.counts.ROUNDS; default: "
                         "spa's) and its candidate span (--search-span), to measure the search against the fill")
    ap.add_argument("--search-span", type=float, default=None)
    ap.add_argument("--before", default=None, metavar="SPAN:STEPS:FREE_MACS:FINE_STEP",
                    help="also time a 'before' variant: the defaults with the count chooser's SPAN, STEPS, "
                         "FREE_MACS and FINE_STEP set so (0.25:2:0:8: the settings before the wider span, free "
                         "channels and block-only steps)")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "bench_latency_zoo.json")
    args = ap.parse_args(argv)
    from spa.latency import counts

    if args.search_rounds is not None:
        counts.ROUNDS = args.search_rounds
    if args.search_span is not None:
        counts.SPAN = args.search_span
    console = Console()
    rows: list[dict[str, object]] = []
    sweep: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="spa_latency_zoo_") as tmp:
        for name in filter(None, args.models.split(",")):
            console.print(f"{name}:")
            rows += bench_model(name, Path(tmp), args, console)
        if not args.no_sweep:
            sweep = demo_sweep(Path(tmp), args)
    table = Table(title=f"l2 at --ratio {args.ratio}: ONNX Runtime CPU, {args.threads} thread(s), batch 1, "
                        f"{args.iters} alternating rounds per model")
    for col in ("model", "variant", "MACs frac", "orig ms", "ms", "latency frac", "efficiency", "ms/GMAC",
                "per MAC vs peer", "predicted"):
        table.add_column(col, justify="right")
    for r in rows:
        vs = r["per_mac_vs_peer"]
        table.add_row(str(r["model"]), str(r["variant"]), f"{r['macs_fraction']:.3f}", f"{r['original_ms']:.1f}",
                      f"{r['median_ms']:.1f}", f"{r['latency_fraction']:.3f}", f"{r['efficiency']:.2f}",
                      f"{r['ms_per_gmac']:.1f}", f"{vs:.2f}" if isinstance(vs, float) else "-",
                      f"{r['predicted_fraction']:.3f}" if "predicted_fraction" in r else "")
    console.print(table)
    summary: dict[str, object] = {}
    for variant in ("exact", "default", "before", "torch-pruning"):
        effs = [float(r["efficiency"]) for r in rows if r["variant"] == variant]  # type: ignore[arg-type]
        if effs:
            summary[variant] = {"mean_efficiency": sum(effs) / len(effs), "min_efficiency": min(effs)}
    targets = [r for r in rows if r["variant"] == "target"]
    if targets:  # --target-latency: the measured latency fraction each model reached
        summary["target"] = {"goal": args.target, "latency_fraction": {str(r["model"]): r["latency_fraction"]
                                                                       for r in targets},
                             "prune_s": {str(r["model"]): r.get("prune_s") for r in targets}}
    default = {str(r["model"]): r for r in rows if r["variant"] == "default"}
    exact = {str(r["model"]): r for r in rows if r["variant"] == "exact"}
    summary["macs_vs_exact"] = {m: float(default[m]["macs_fraction"]) - float(exact[m]["macs_fraction"])  # type: ignore[arg-type]
                                for m in default if m in exact}
    console.print(summary)
    if sweep:
        st = Table(title="spa sweep models/demo_cnn.onnx (defaults)")
        for col in ("ratio", "speedup", "ideal", "efficiency"):
            st.add_column(col, justify="right")
        for r in sweep:
            st.add_row(*(f"{float(r[k]):.2f}" if r.get(k) is not None else "-"  # type: ignore[arg-type]
                         for k in ("ratio", "speedup", "ideal_speedup", "latency_efficiency")))
        console.print(st)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "tools/bench_latency_zoo.py", *(argv or sys.argv[1:])])
    args.json.write_text(json.dumps({"command": command, "cpu_load": os.getloadavg(),
                                     "latency_cache": os.environ.get("SPA_CACHE_DIR") or "default",
                                     "search": {"rounds": counts.ROUNDS, "span": counts.SPAN, "steps": counts.STEPS,
                                                "free_macs": counts.FREE_MACS, "fine_step": counts.FINE_STEP},
                                     "threads": args.threads, "iters": args.iters, "ratio": args.ratio,
                                     "rows": rows, "summary": summary, "demo_sweep": sweep}, indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
