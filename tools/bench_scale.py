#!/usr/bin/env python3
"""Scale benchmark: spa on LLaMA-style decoders of 125 M, 350 M and 1 B parameters.

For each size, ``tools/make_llm.py`` writes the model (external data; cached in ``--workdir``), then a
fresh ``spa prune --ratio 0.25`` process removes 25 % of every prunable group — the MLP channels and
the (grouped-query) attention heads — and writes the result with external data. Reported per model:
parameters, file size, wall time of the prune process, its peak RSS (``ru_maxrss`` of the child) and
the ratio peak RSS / model size. A second table times the analysis alone on decoders of growing depth
(same width), to show how the cost grows with the node count.

    python tools/bench_scale.py                      # 125m, 350m, 1b (writes ~6 GB under /tmp/spa_scale)
    python tools/bench_scale.py --sizes 125m --depths 2,4,8
    python tools/bench_scale.py --prune-hidden --depths ""   # also 25 % of the hidden size
    python tools/bench_scale.py --probe --depths ""          # sensitivity-probed --target-macs 0.75
    python tools/bench_scale.py --probe --sizes 125m --probe-scope model --json /tmp/p.json   # whole-model probes

With ``--probe`` the prune is ``--target-macs 0.75 --allocate sensitivity`` on calibration data (16
random token sequences: what is measured is the probing's cost, not its quality), criterion ``l2``, so
the time and peak RSS are those of probing every group alone at the sensitivity levels in ONNX Runtime.
``--criterion obs`` measures the calibrated default instead (it holds a d×d second-moment matrix per
consumer, and every probe is compensated). ``--probe-scope`` picks
where probes are measured (``auto``: locally, at each group's residual Add, for models over 256 MB of
weights — every size here; ``model``: at the logits, a forward pass per probe).

Writes ``tools/results/bench_scale.json`` (``bench_scale_hidden.json`` with ``--prune-hidden``,
``bench_scale_probe.json`` with ``--probe``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _make(preset: str, out: Path, extra: list[str] | None = None) -> None:
    if not out.exists():
        subprocess.run([PY, str(ROOT / "tools" / "make_llm.py"), "--preset", preset, "-o", str(out), *(extra or [])],
                       check=True, stderr=subprocess.DEVNULL)


def _size(path: Path) -> int:
    return path.stat().st_size + (path.with_name(path.name + ".data").stat().st_size
                                  if path.with_name(path.name + ".data").exists() else 0)


def _vocab_seq(src: Path) -> tuple[int, int]:
    """Vocabulary size (the embedding table's rows) and sequence length of a make_llm decoder."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    seq = m.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    vocab = m.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    return int(vocab), int(seq)


def _child(code: str) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter (no sensitivity cache: probes are measured, not read back);
    wall seconds, peak RSS in bytes, stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spa_scale_cache_") as cache:
        home = Path(os.environ.get("SPA_CACHE_DIR", Path.home() / ".cache" / "spa")) / "latency"
        if home.is_dir():  # the latency table is kept: it is measured once per machine, not per prune
            shutil.copytree(home, Path(cache) / "latency")
        env = dict(os.environ, SPA_CACHE_DIR=cache)
        proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far: run the sizes in increasing order
    return wall, max(peak, before) * 1024.0, proc.stdout


PRUNE = """
import json, time, spa
t0 = time.perf_counter()
r = spa.prune({src!r}, ratio=0.25, check=False, prune_hidden={hidden!r})
t1 = time.perf_counter()
r.save({dst!r}, external_data=True)
t2 = time.perf_counter()
print(json.dumps({{"prune_s": t1 - t0, "save_s": t2 - t1, "params_before": r.report["params_before"],
                  "params_after": r.report["params_after"], "groups_pruned": r.report["num_pruned"],
                  "groups_prunable": r.report["num_prunable"]}}))
"""

PROBE = """
import json, time, numpy as np, spa
from spa.calibration.data import ArraySource
ids = np.random.default_rng(0).integers(0, {vocab}, size=(16, {seq}), dtype=np.int64)
t0 = time.perf_counter()
r = spa.prune({src!r}, target_macs=0.75, criterion={criterion!r}, allocate="sensitivity", realign=False, check=False,
              calibration=ArraySource({{"input_ids": ids}}, batch_size=4, name="random tokens"), probe_samples=16,
              probe_scope={scope!r})
t1 = time.perf_counter()
r.save({dst!r}, external_data=True)
t2 = time.perf_counter()
alloc = r.report.get("allocation") or {{}}
print(json.dumps({{"prune_s": t1 - t0, "save_s": t2 - t1, "params_before": r.report["params_before"],
                  "params_after": r.report["params_after"], "groups_pruned": r.report["num_pruned"],
                  "groups_prunable": r.report["num_prunable"], "probed_groups": len(alloc.get("groups", [])),
                  "macs_fraction": r.report["macs_after"] / r.report["macs_before"],
                  "probe_scope": alloc.get("scope"), "probe_s": alloc.get("seconds"), "probes": alloc.get("probes"),
                  "predicted_distortion": alloc.get("predicted_distortion"),
                  "measured_distortion": alloc.get("measured_distortion")}}))
"""

ANALYZE = """
import json, time, spa
t0 = time.perf_counter(); mg = spa.load({src!r}); t1 = time.perf_counter()
a = spa.analyze(mg); t2 = time.perf_counter()
print(json.dumps({{"nodes": len(mg.graph.nodes), "load_s": t1 - t0, "analyze_s": t2 - t1, "groups": len(a.groups)}}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="125m,350m,1b")
    ap.add_argument("--depths", default="2,4,8,16,32", help="layers for the node-count scaling table")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/spa_scale"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--prune-hidden", action="store_true", help="also prune 25 %% of the hidden size")
    ap.add_argument("--probe", action="store_true",
                    help="--target-macs 0.75 with sensitivity probes on 16 random token sequences (probing cost)")
    ap.add_argument("--probe-scope", default="auto", choices=["auto", "model", "local"],
                    help="with --probe: where probes are measured (auto: locally above 256 MB of weights)")
    ap.add_argument("--criterion", default="l2",
                    help="with --probe: the criterion (l2; obs: calibrated OBS scores and compensation, the default "
                         "with data — second moments of every consumer's inputs)")
    args = ap.parse_args(argv)
    name = ("bench_scale_probe.json" if args.probe else
            "bench_scale_hidden.json" if args.prune_hidden else "bench_scale.json")
    args.json = args.json or ROOT / "tools" / "results" / name
    console = Console()
    rows = []
    for preset in args.sizes.split(","):
        src = args.workdir / preset / "model.onnx"
        src.parent.mkdir(parents=True, exist_ok=True)
        _make(preset, src)
        dst = args.workdir / preset / "pruned.onnx"
        if args.probe:
            vocab, seq = _vocab_seq(src)
            code = PROBE.format(src=str(src), dst=str(dst), vocab=vocab, seq=seq, scope=args.probe_scope,
                                criterion=args.criterion)
        else:
            code = PRUNE.format(src=str(src), dst=str(dst), hidden=args.prune_hidden)
        wall, peak, out = _child(code)
        info = json.loads(out.strip().splitlines()[-1])
        size = _size(src)
        rows.append({"model": preset, "size_bytes": size, "wall_s": wall, "peak_rss_bytes": peak,
                     "rss_over_size": peak / size, "pruned_size_bytes": _size(dst)} | info)
        for f in dst.parent.glob("pruned.onnx*"):
            f.unlink()
    what = "MLP channels + attention heads" + (" + hidden size" if args.prune_hidden else "")
    how = "--target-macs 0.75 --allocate sensitivity (probes)" if args.probe else "--ratio 0.25"
    t = Table(title=f"spa prune {how} ({what}) on LLaMA-style decoders, external data")
    for col in ("model", "params", "size GiB", "prune s", "save s", "wall s", "peak RSS GiB", "RSS/size",
                "params after"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["model"], f"{r['params_before'] / 1e6:.0f}M", f"{r['size_bytes'] / 2**30:.2f}",
                  f"{r['prune_s']:.1f}",
                  f"{r['save_s']:.1f}", f"{r['wall_s']:.1f}", f"{r['peak_rss_bytes'] / 2**30:.2f}",
                  f"{r['rss_over_size']:.2f}", f"{r['params_after'] / 1e6:.0f}M")
    console.print(t)
    depth_rows = []
    for depth in [int(d) for d in args.depths.split(",") if d]:
        src = args.workdir / f"depth{depth}" / "model.onnx"
        src.parent.mkdir(parents=True, exist_ok=True)
        _make("tiny", src, ["--layers", str(depth), "--hidden", "256", "--heads", "8", "--kv-heads", "2", "--ffn",
                            "512"])
        _, _, out = _child(ANALYZE.format(src=str(src)))
        depth_rows.append({"layers": depth} | json.loads(out.strip().splitlines()[-1]))
    t2 = Table(title="analysis cost vs node count (decoder width 256, growing depth)")
    for col in ("layers", "nodes", "load+normalize s", "analyze s", "analyze ms / node"):
        t2.add_column(col, justify="right")
    for r in depth_rows:
        t2.add_row(str(r["layers"]), str(r["nodes"]), f"{r['load_s']:.2f}", f"{r['analyze_s']:.2f}",
                   f"{1e3 * r['analyze_s'] / r['nodes']:.2f}")
    console.print(t2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "prune_hidden": args.prune_hidden,
                                     "probe": args.probe, "criterion": args.criterion if args.probe else None,
                                     "prune": rows, "scaling": depth_rows},
                                    indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
