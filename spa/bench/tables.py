"""Rich tables for ``spa bench`` and ``spa sweep`` (the CLI prints them; the JSON has everything).

>>> human(1234567)
'1.23M'
>>> human(None)
'-'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def human(n: float | None) -> str:
    """``1.23M``-style number (``-`` for None)."""
    if n is None:
        return "-"
    x = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(x) < 1000:
            return f"{x:.3g}{unit}"
        x /= 1000
    return f"{x:.3g}P"


def wide_console(console: Console, width: int = 132) -> Console:
    """``console`` on a terminal; else (pipes, logs, tests, where rich assumes 80 columns) one ``width`` wide."""
    if console.is_terminal:
        return console
    return Console(width=max(console.width, width), highlight=False)


def _x(v: float | None, suffix: str = "x") -> str:
    return f"{v:.2f}{suffix}" if v is not None else "-"


def bench_table(report: Mapping[str, Any]) -> Table:
    """One row per model × batch: MACs, params, size, latency, throughput and the three ratios.

    Compact enough for 100 columns (p99, mean, std and the rest are in the JSON).
    """
    title = (f"ONNX Runtime {report['onnxruntime_version']} {report['provider']}"
             f"{' fp16' if report.get('fp16') else ''}, {report['threads'] or 'default'} thread(s), "
             f"{report['iters']} alternating runs after {report['warmup']} warm-up")
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1))
    cols = ("model", "batch", "MACs", "params", "size", "median ms", "p90 ms", "samples/s", "speedup", "ideal",
            "effic.")
    for c in cols:
        if c == "model":
            table.add_column(c, overflow="fold", ratio=1, min_width=12)
        else:
            table.add_column(c, justify="right", no_wrap=True)
    last_batch = None
    for r in report["models"]:
        if last_batch is not None and r["batch"] != last_batch:
            table.add_section()
        last_batch = r["batch"]
        table.add_row(str(r["model"]), str(r["batch"]), human(r["macs"]), human(r["params"]),
                      human(r["size_bytes"]) + "B", f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                      human(r["throughput_sps"]), _x(r["speedup"]), _x(r["ideal_speedup"]),
                      _x(r["latency_efficiency"], ""))
    table.caption = ("speedup: vs the first model at the same batch; ideal: MACs ratio; "
                     "effic. (latency efficiency): speedup / ideal")
    return table


def profile_tables(report: Mapping[str, Any]) -> list[Table]:
    """For each profiled model × batch: its top nodes and the time per op type."""
    tables = []
    for r in report["models"]:
        prof = r.get("profile")
        if not prof:
            continue
        overhead = ""
        if prof.get("run_ms"):
            overhead = f", {prof['node_ms']:.3f} of {prof['run_ms']:.3f} ms per run in kernels"
        t = Table(title=f"profile: {r['model']} batch {r['batch']} ({prof['runs']} runs{overhead})")
        for c in ("node", "op type", "ms/run", "median", "% time", "count"):
            t.add_column(c, justify="left" if c in ("node", "op type") else "right", overflow="fold")
        for n in prof["top_nodes"]:
            t.add_row(n["node"], n["op_type"], f"{n['ms_per_run']:.4f}", f"{n['median_ms']:.4f}", f"{n['pct']:.1f}",
                      str(n["count"]))
        t.add_section()
        for o in prof["op_types"][:8]:
            t.add_row(f"[dim]all {o['nodes']} node(s)", f"[bold]{o['op_type']}", f"{o['ms_per_run']:.4f}",
                      f"{o['median_ms']:.4f}", f"{o['pct']:.1f}", str(o["count"]))
        tables.append(t)
    base = report["models"][0] if report["models"] else None
    for r in report["models"]:
        diff = r.get("profile_diff")
        if diff and base is not None:
            tables.append(profile_diff_table(r, base, diff))
    return tables


def profile_diff_table(row: Mapping[str, Any], base: Mapping[str, Any], diff: Sequence[Mapping[str, Any]]) -> Table:
    """Where the time moved from the first model to ``row``'s, op type by op type (median ms per run)."""
    macs = row["macs"] / base["macs"] if base.get("macs") and row.get("macs") else None
    t = Table(title=f"where the time moved: {base['model']} -> {row['model']} batch {row['batch']}"
                    + (f" (MACs x{macs:.3f})" if macs is not None else ""))
    for c in ("op type", "before ms", "after ms", "change ms", "after/before", "% of change"):
        t.add_column(c, justify="left" if c == "op type" else "right")
    for d in diff:
        ratio = d["ratio"]
        flag = "[bold red]" if ratio is None or (macs is not None and ratio > macs + 0.25) else ""
        t.add_row(f"{flag}{d['op_type']}", f"{d['base_ms']:.4f}", f"{d['ms']:.4f}", f"{d['delta_ms']:+.4f}",
                  f"{flag}{ratio:.3f}" if ratio is not None else f"{flag}new", f"{d['share']:.1f}")
    t.caption = "red: op types that shrank much less than the MACs (or appeared): where efficiency is lost"
    return t


def sweep_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """One row per ratio (and criterion, when several were swept): MACs/params kept, latency, the three
    ratios and the fidelity."""
    table = Table(title=title)
    several = len({r.get("criterion") for r in rows if r.get("criterion")}) > 1
    for c in ("ratio", *(["criterion"] if several else []), "params", "MACs", "median ms", "speedup",
              "ideal (MACs)", "efficiency", "cosine", "top-1 agree"):
        table.add_column(c, justify="right")
    for r in rows:
        first = [f"{r['ratio']:.3g}", *([str(r.get("criterion") or "-")] if several else [])]
        if r.get("error"):
            table.add_row(*first, *(["-"] * 6), "[red]" + str(r["error"])[:40], "")
            continue
        cos, top1 = r.get("cosine"), r.get("top1_agreement")
        table.add_row(*first, human(r["params"]), human(r["macs"]), f"{r['median_ms']:.3f}",
                      _x(r["speedup"]), _x(r["ideal_speedup"]), _x(r["latency_efficiency"], ""),
                      f"{cos:.4f}" if cos is not None else "-", f"{top1:.3f}" if top1 is not None else "-")
    return table
