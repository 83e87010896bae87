#!/usr/bin/env python
"""Local vs whole-model sensitivity probes on the fixture zoo: does ``--probe-scope local`` run on every
exporter's graphs, how often does it fall back, and how does it rank groups against whole-model probes?

Every model is pruned twice (``--target-macs 0.7``, ``l2``, ``--allocate sensitivity`` on 4 random-normal
samples, exact counts), once per scope. Per model: the seconds of each, the groups probed locally and
the fallbacks (probes measured whole because a region could not run them), and the Spearman rank
correlation of the groups' sensitivities (every level pooled; models with at least 3 groups). The
fixtures have random weights and the inputs are random: this checks coverage and agreement of the two
measures, not task quality (``tools/probe_scope_table.py`` does that on trained models).

    python tools/probe_scope_zoo.py                       # tests/fixtures, tests/fixtures/hf, tests/fixtures/timm
    python tools/probe_scope_zoo.py --glob "/tmp/timm_zoo/*.onnx" --json /tmp/zoo.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import spa  # noqa: E402

DEFAULT_GLOBS = ("tests/fixtures/*.onnx", "tests/fixtures/hf/*.onnx", "tests/fixtures/timm/*.onnx")


def probe(path: str, scope: str) -> dict[str, Any]:
    """One prune with sensitivity probes of ``scope``: seconds, curves and the allocation record."""
    t0 = time.perf_counter()
    try:
        r = spa.prune(path, target_macs=0.7, criterion="l2", allocate="sensitivity", calibration="random",
                      realign=False, probe_samples=4, probe_scope=scope, check=False, round_to=1)
    except spa.SpaError as exc:
        return {"error": str(exc).splitlines()[0][:200]}
    a = r.report.get("allocation") or {}
    return {"seconds": round(time.perf_counter() - t0, 2), "curves": [g["sensitivity"] for g in a.get("groups", [])],
            "local_groups": a.get("local_groups"), "model_groups": a.get("model_groups"),
            "fallbacks": a.get("local_fallbacks")}


def spearman(a: list[list[float]], b: list[list[float]]) -> float | None:
    """Rank correlation of the pooled curves (None under 3 groups or for constant curves)."""
    if len(a) < 3 or len(a) != len(b):
        return None
    x, y = np.array([v for c in a for v in c]), np.array([v for c in b for v in c])
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if np.std(rx) and np.std(ry) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glob", action="append", help="model files (repeatable; default: the test fixtures)")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "probe_scope_zoo.json")
    args = ap.parse_args(argv)
    files = sorted({f for g in (args.glob or DEFAULT_GLOBS) for f in glob.glob(str(ROOT / g) if not
                                                                                 os.path.isabs(g) else g)})
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa_probe_zoo_") as cache:
        os.environ["SPA_CACHE_DIR"] = cache  # probes measured, not read back
        for f in files:
            row: dict[str, Any] = {"model": os.path.relpath(f, ROOT), "model_scope": probe(f, "model"),
                                   "local_scope": probe(f, "local")}
            m, lo = row["model_scope"], row["local_scope"]
            row["spearman"] = spearman(m["curves"], lo["curves"]) if "curves" in m and "curves" in lo else None
            rows.append(row)
    t = Table(title="sensitivity probes: --probe-scope local vs model (fixtures, random weights and inputs)")
    for col in ("model", "groups", "local", "fallbacks", "s model", "s local", "Spearman"):
        t.add_column(col, justify="right")
    for r in rows:
        m, lo = r["model_scope"], r["local_scope"]
        if "error" in lo or "error" in m:
            t.add_row(Path(r["model"]).name, "-", "-", "-", "-", "-", (lo.get("error") or m.get("error"))[:40])
            continue
        t.add_row(Path(r["model"]).name, str(len(lo["curves"])), str(lo["local_groups"]), str(lo["fallbacks"]),
                  f"{m['seconds']:.2f}", f"{lo['seconds']:.2f}",
                  "-" if r["spearman"] is None else f"{r['spearman']:.2f}")
    console = Console()
    console.print(t)
    ran = [r for r in rows if "curves" in r["local_scope"]]
    rho = [r["spearman"] for r in rows if r["spearman"] is not None]
    summary = {"models": len(rows), "ran_local": len(ran),
               "errors_local_only": sum("error" in r["local_scope"] and "error" not in r["model_scope"] for r in rows),
               "fallbacks": sum(r["local_scope"]["fallbacks"] or 0 for r in ran),
               "groups_local": sum(r["local_scope"]["local_groups"] or 0 for r in ran),
               "groups_whole": sum(r["local_scope"]["model_groups"] or 0 for r in ran),
               "spearman_median": float(np.median(rho)) if rho else None,
               "spearman_min": float(np.min(rho)) if rho else None, "spearman_models": len(rho)}
    console.print(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "python tools/probe_scope_zoo.py", "summary": summary, "rows": rows},
                                    indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
