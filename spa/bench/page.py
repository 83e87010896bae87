"""One self-contained HTML page of a prune report, a recover run and/or a sweep (``--html``, ``spa report``).

The page consumes only the JSON reports (``spa prune --report``, ``spa verify --json``, ``spa recover --json``,
``sweep.json``):

* summary — parameters and MACs before → after, ratio or target, criterion, the shapes MACs were
  counted at, the ONNX and ONNX Runtime checks, predicted latency and fidelity when present;
* channels per group, in graph order, as bars: kept ``after/before`` of each group's ``before``;
* with a sensitivity allocation: each group's curve (distortion when the group alone loses 25/50/75 %
  of its channels) with the chosen ratio, and the predicted distortion ``Σ_g damage_g(r_g)`` against
  the one measured on the pruned model;
* the mask oracle's verdict (``spa verify``) per output;
* recover's loss per step; a sweep's Pareto plot (latency against MACs) and its rows.

Everything is inline: CSS in a ``<style>``, figures as base64 PNG ``data:`` URIs, no script and no
external URL; every text from a report (node names come from user models) is escaped. Plots need
matplotlib (``pip install 'spa[plot]'``); without it the page keeps its tables and CSS bars and says
so. The file is written atomically.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spa.bench import plot
from spa.errors import UsageError
from spa.graph.io import atomic_path
from spa.quality.sensitivity import damage
from spa.version import __version__

log = logging.getLogger(__name__)
Report = Mapping[str, Any]
NO_PLOTS = "plots need matplotlib: pip install 'spa[plot]' (this page has the tables and bars only)"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
td.b{width:40%;text-align:left}.bar{position:relative;background:#e4e4e4;height:.9em;min-width:2px}
.bar>span{position:absolute;left:0;top:0;bottom:0;background:#3b7dd8}
.bar.fixed>span{background:#9a9a9a}
.note{color:#8a5a00;background:#fff6e0;padding:.4em .6em;border-left:3px solid #e0a000}
.dim{color:#777}img{max-width:100%;height:auto}
"""


def _e(value: object) -> str:
    """HTML-escaped text of ``value`` (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def _num(n: object) -> str:
    """A count with a K/M/G/T suffix (3 significant digits); '-' for None."""
    if n is None:
        return "-"
    x = float(n)  # type: ignore[arg-type]
    for unit in ("", "K", "M", "G", "T"):
        if abs(x) < 1000:
            return f"{x:.3g}{unit}"
        x /= 1000
    return f"{x:.3g}P"


def _img(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inline as a base64 ``data:`` URI."""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _figure(make: Callable[[], bytes], alt: str) -> str:
    """The figure ``make`` draws, or '' without matplotlib (the page says so once, at the top)."""
    return _img(make(), alt) if plot.plotting_available() else ""


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A table; the first ``left`` columns are left-aligned names. Cells are escaped."""
    th = "".join(f'<th class="{"l" if k < left else ""}">{_e(h)}</th>' for k, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if k < left else ""}">{_e(c)}</td>' for k, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _before_after(rep: Report, key: str) -> list[object]:
    """``key`` before, after and after/before."""
    b, a = rep.get(f"{key}_before"), rep.get(f"{key}_after")
    frac = f"{float(a) / float(b):.3f}" if a is not None and b else "-"
    return [key.upper() if key == "macs" else key, _num(b), _num(a), frac]


def _summary(rep: Report) -> str:
    """Parameters and MACs before → after, then one row per setting or check the report has."""
    out = _table(["", "before", "after", "after/before"], [_before_after(rep, "params"), _before_after(rep, "macs")])
    shapes = rep.get("mac_shapes") or {}
    items = [("input", rep.get("input")), ("output", rep.get("output")), ("criterion", rep.get("criterion")),
             ("ratio", "per group (sensitivity allocation)" if rep.get("allocation") else rep.get("ratio")),
             ("target MACs", rep.get("target_macs")),
             ("target params", rep.get("target_params")), ("target latency", rep.get("target_latency")),
             ("MACs counted at", ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())
              + (f" ({rep['mac_shapes_from']})" if rep.get("mac_shapes_from") else "")),
             ("groups", f"{rep.get('num_groups')} found, {rep.get('num_prunable')} prunable, "
                        f"{rep.get('num_pruned')} pruned"),
             ("ONNX check", rep.get("onnx_check")), ("ONNX Runtime check", rep.get("ort_check")),
             ("calibration", rep.get("calibration")), ("spa", rep.get("spa_version"))]
    lat = rep.get("predicted_latency") or {}
    if lat:
        items.append(("predicted latency (latency table)", f"{lat.get('table_ms_original')} ms → "
                      f"{lat.get('table_ms_pruned')} ms (×{lat.get('fraction')}; MACs ×{lat.get('macs_fraction')}"
                      f", efficiency {lat.get('efficiency')})"))
    out += _table(["setting", "value"], [(k, v) for k, v in items if v not in (None, "")], left=2)
    if rep.get("quality_note"):
        out += f'<p class="note">{_e(rep["quality_note"])}</p>'
    return out + _fidelity(rep.get("fidelity"))


def _fidelity(fid: Report | None) -> str:
    """The fidelity of the pruned model against the original, one row per output."""
    if not fid:
        return ""
    rows = []
    for name, o in (fid.get("outputs") or {}).items():
        if "error" in o:
            rows.append([name, o["error"], "", ""])
            continue
        rows.append([name, f"{o.get('cosine', 0):.6f}", f"{o.get('rel_l2', 0):.4g}",
                     "-" if o.get("top1_agreement") is None else f"{o['top1_agreement']:.4f}"])
    return (f"<h3>Fidelity vs the original on {_e(fid.get('data'))} ({_e(fid.get('samples'))} samples)</h3>"
            + _table(["output", "cosine", "rel L2", "top-1 agreement"], rows))


def _bar(before: int, after: int, widest: int, fixed: bool) -> str:
    """A grey bar ``before / widest`` of the column wide (the group's channels), coloured over the kept
    ``after / before`` of it (grey-on-grey: not prunable)."""
    outer = 100.0 * before / widest if widest else 0.0
    pct = 100.0 * after / before if before else 0.0
    return (f'<div class="bar{" fixed" if fixed else ""}" style="width:{outer:.1f}%">'
            f'<span style="width:{pct:.1f}%"></span></div>')


def _channels(groups: Sequence[Report]) -> str:
    """One row per channel group in graph order: label, before → after, kept %, bar (grey: not prunable)."""
    rows = []
    widest = max([int(g.get("channels_before") or 0) for g in groups] or [0])
    for g in sorted(groups, key=lambda g: int(g.get("id", 0))):
        b, a = int(g.get("channels_before") or 0), int(g.get("channels_after") or 0)
        fixed = not g.get("prunable")
        why = f'<br><span class="dim">{_e(g.get("blocked_reason") or "not prunable")}</span>' if fixed else ""
        rows.append(f'<tr><td>{_e(g.get("id"))}</td><td class="l">{_e(g.get("label"))}{why}</td>'
                    f'<td>{_e(g.get("kind", ""))}</td><td>{b}</td><td>{a}</td>'
                    f'<td>{(100.0 * a / b if b else 0):.0f}%</td><td class="b">{_bar(b, a, widest, fixed)}</td></tr>')
    head = "".join(f'<th class="{"l" if h == "group" else ""}">{h}</th>'
                   for h in ("id", "group", "kind", "before", "after", "kept", "channels kept"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _allocation(alloc: Report) -> str:
    """Sensitivity curves with the chosen ratios; predicted distortion per group and in total vs measured.

    A group's predicted distortion at its chosen ratio ``r`` is ``damage(curve, levels, r)`` (piecewise
    linear through (0, 0)); the allocation's prediction is their sum, the measured one is the output
    distortion ``Σ(y - y₀)² / Σ(y₀ - ȳ₀)²`` of the pruned model on the probe samples."""
    levels = [float(x) for x in alloc.get("levels") or []]
    groups = list(alloc.get("groups") or [])
    pred = [damage([float(c) for c in g["sensitivity"]], levels, float(g["ratio"])) for g in groups]
    total_p, total_m = float(alloc.get("predicted_distortion") or 0.0), float(alloc.get("measured_distortion") or 0.0)
    out = (f"<p>Each group pruned alone at {', '.join(f'{x:.0%}' for x in levels)} of its channels "
           f"({_e(alloc.get('probes'))} probes, {_e(alloc.get('seconds'))} s"
           f"{'; curves from the cache' if alloc.get('cached') else ''}). Predicted output distortion "
           f"<b>{total_p:.6g}</b>, measured <b>{total_m:.6g}</b>.</p>")
    out += _figure(lambda: plot.sensitivity_png(groups, levels), "sensitivity curves")
    if len(groups) > plot.MAX_PANELS and plot.plotting_available():
        out += (f'<p class="dim">the first {plot.MAX_PANELS} of {len(groups)} groups are plotted (below: the '
                f"{plot.MAX_PANELS} largest predicted terms); all are in the table</p>")
    top = sorted(range(len(groups)), key=lambda k: -pred[k])[:plot.MAX_PANELS]  # the largest terms
    top.sort()
    out += _figure(lambda: plot.distortion_png([str(groups[k]["label"]) for k in top], [pred[k] for k in top],
                                               total_p, total_m), "predicted vs measured distortion")
    rows = [[g["label"], f"{float(g['ratio']):.3f}", *(f"{float(c):.4g}" for c in g["sensitivity"]), f"{p:.4g}"]
            for g, p in zip(groups, pred)]
    return out + _table(["group", "chosen ratio", *(f"distortion @ {x:.0%}" for x in levels), "predicted"], rows)


def _recover(rec: Report) -> str:
    """recover's summary and its loss per step."""
    losses = [float(x) for x in rec.get("losses") or []]
    items = [("pruned", rec.get("pruned")), ("teacher", rec.get("teacher")), ("output", rec.get("output")),
             ("steps", rec.get("steps")), ("start step", rec.get("start_step")), ("device", rec.get("device")),
             ("wall time (s)", rec.get("wall_s")), ("trainable initializers", rec.get("trainable_initializers")),
             ("losses", ", ".join(f"{k}: {v}" for k, v in (rec.get("loss_kinds") or {}).items())),
             ("loss, mean of the first 10 steps", rec.get("loss_first")),
             ("loss, mean of the last 10 steps", rec.get("loss_last"))]
    out = _table(["", "value"], [(k, v) for k, v in items if v not in (None, "")], left=2)
    if losses:
        out += _figure(lambda: plot.loss_png(losses, int(rec.get("start_step") or 0)), "recover loss curve")
    return out


def _sweep(sw: Report) -> str:
    """The sweep's Pareto plot (latency against MACs) and its rows."""
    rows = list(sw.get("rows") or [])
    bench = sw.get("bench") or {}
    title = f"{Path(str(sw.get('model', ''))).name}: {sw.get('criterion')} sweep, {bench.get('provider')}, " \
            f"{bench.get('threads')} thread(s)"
    out = f"<p>{_e(title)}; fidelity: {_e(sw.get('fidelity_source') or '-')}</p>"
    out += _figure(lambda: plot.pareto_png(rows, title=title, fidelity_label=str(sw.get("fidelity_source") or "")),
                   "sweep pareto plot")
    cols = ("ratio", "params", "macs", "median_ms", "speedup", "ideal_speedup", "latency_efficiency", "cosine",
            "top1_agreement", "num_pruned", "error")
    table = [[r.get("ratio"), _num(r.get("params")), _num(r.get("macs")),
              *("-" if r.get(c) is None else r.get(c) for c in cols[3:])] for r in rows]
    return out + _table(list(cols), table, left=0)


def _verify(ver: Report) -> str:
    """The mask oracle's verdict (``spa verify --json``): pruned against its masked twin, per output."""
    ok = bool(ver.get("ok"))
    rows = [[o.get("name"), f"{float(o.get('max_abs', 0)):.3g}", f"{float(o.get('max_rel', 0)):.3g}",
             f"{float(o.get('cosine', 0)):.6f}", "yes" if o.get("ok") else "NO"] for o in ver.get("outputs") or []]
    verdict = "agree" if ok else "DIFFER"
    return (f"<p>{_e(ver.get('pruned'))} and {_e(ver.get('reference'))} <b>{verdict}</b> on "
            f"{_e(ver.get('trials'))} random inputs.</p>" + _table(["output", "max |diff|", "max rel", "cosine", "ok"],
                                                                  rows))


def report_kind(report: Report) -> str:
    """``prune``, ``recover``, ``sweep`` or ``verify``: which JSON report this is (by the keys each one has).

    Raises:
        UsageError: none of them.
    """
    if "rows" in report and "ratios" in report:
        return "sweep"
    if "losses" in report and "loss_kinds" in report:
        return "recover"
    if "groups" in report and "macs_before" in report:
        return "prune"
    if "reference" in report and "ok" in report and "outputs" in report:
        return "verify"
    raise UsageError("not a report of spa prune --report, spa verify --json, spa recover --json or spa sweep "
                     "(sweep.json); give one of those JSON files")


def render(*, prune: Report | None = None, verify: Report | None = None, recover: Report | None = None,
           sweep: Report | None = None, title: str = "") -> str:
    """The page (a string) of the reports given; at least one."""
    if prune is None and verify is None and recover is None and sweep is None:
        raise UsageError("no report to render: give a prune report, a verify result, a recover summary or a sweep")
    name = title or str((prune or {}).get("input") or (sweep or {}).get("model")
                        or (recover or verify or {}).get("pruned") or "report")
    parts = [f"<h1>spa: {_e(name)}</h1>"]
    if not plot.plotting_available():
        parts.append(f'<p class="note">{_e(NO_PLOTS)}</p>')
    if prune is not None:
        parts += ["<h2>Summary</h2>", _summary(prune)]
    if verify is not None:
        parts += ["<h2>Mask oracle (spa verify)</h2>", _verify(verify)]
    if prune is not None:
        parts += ["<h2>Channels per group (graph order)</h2>", _channels(prune.get("groups") or [])]
        if prune.get("allocation"):
            parts += ["<h2>Sensitivity allocation</h2>", _allocation(prune["allocation"])]
    if recover is not None:
        parts += ["<h2>Recover (distillation)</h2>", _recover(recover)]
    if sweep is not None:
        parts += ["<h2>Sweep</h2>", _sweep(sweep)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>spa: {_e(name)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(parts)
            + f'\n<p class="dim">made by spa {_e(__version__)}</p>\n</body></html>\n')


def write_html(path: str | os.PathLike[str], **reports: Any) -> Path:
    """Render the reports (:func:`render`'s keywords) into ``path`` atomically.

    Raises:
        UsageError: no report, or the file cannot be written.
    """
    text = render(**reports)
    if not plot.plotting_available():
        log.info("%s", NO_PLOTS)
    dest = Path(path)
    try:
        with atomic_path(dest, suffix=".html") as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"could not write {dest}: {exc.strerror or exc}") from exc
    return dest
