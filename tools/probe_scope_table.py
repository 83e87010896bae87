#!/usr/bin/env python
"""Local vs whole-model sensitivity probes, compared on the trained models of ``tools/bench_quality.py``.

Reads a ``bench_quality`` JSON that has the rows ``obs + alloc`` (probes measured at the model's outputs)
and ``obs + alloc (local probes)`` (``--probe-scope local``: at each group's cut) and prints, per model and
MAC target: the Spearman rank correlation of the groups' sensitivities (at every probed level, pooled),
the share of groups whose allocated ratio is the same, both retentions and both probing times. Writes the
table as JSON.

    python tools/bench_quality.py --variants "obs + alloc,obs + alloc (local probes)" \\
        --json tools/results/bench_quality_probe_scope.json
    python tools/probe_scope_table.py tools/results/bench_quality_probe_scope.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

WHOLE, LOCAL = "obs + alloc", "obs + alloc (local probes)"


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties by order of appearance; NaN when either side is constant)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per MAC target of one model."""
    rows = []
    whole, local = result["rows"].get(WHOLE), result["rows"].get(LOCAL)
    if not whole or not local:
        return rows
    for target, w in whole["distortion"].items():
        lo = local["distortion"].get(target)
        if not lo or "curves" not in w or "curves" not in lo:
            continue
        labels = [k for k in w["curves"] if k in lo["curves"]]
        a = [x for k in labels for x in w["curves"][k]]
        b = [x for k in labels for x in lo["curves"][k]]
        same = sum(w["ratios"].get(k) == lo["ratios"].get(k) for k in labels) / max(len(labels), 1)
        rows.append({"model": result["model"], "target": float(target), "groups": len(labels),
                     "spearman": spearman(a, b), "same_ratio": same,
                     "retention_model": whole["retention"][target], "retention_local": local["retention"][target],
                     "probe_s_model": w.get("probe_seconds"), "probe_s_local": lo.get("probe_seconds")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "probe_scope.json")
    args = ap.parse_args(argv)
    data = json.loads(args.results.read_text())
    rows = [r for res in data["results"] for r in compare(res)]
    t = Table(title="sensitivity probes: local (at each group's cut) vs whole model (at the outputs)")
    for col in ("model", "MACs", "groups", "Spearman", "same ratio", "retention model", "retention local",
                "probe s model", "probe s local"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["model"], f"{r['target']:.1f}", str(r["groups"]), f"{r['spearman']:.2f}", f"{r['same_ratio']:.2f}",
                  f"{r['retention_model']:.3f}", f"{r['retention_local']:.3f}", f"{r['probe_s_model']}",
                  f"{r['probe_s_local']}")
    Console().print(t)
    summary = {"mean_spearman": float(np.nanmean([r["spearman"] for r in rows])) if rows else None,
               "mean_retention_model": float(np.mean([r["retention_model"] for r in rows])) if rows else None,
               "mean_retention_local": float(np.mean([r["retention_local"] for r in rows])) if rows else None}
    Console().print(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"source": str(args.results), "rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
