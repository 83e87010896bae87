"""The figures of spa: ``pareto.png`` of ``spa sweep`` and the plots of the ``--html`` pages (need matplotlib).

matplotlib is optional (``pip install 'spa[plot]'``); :func:`plotting_available` says whether it is
installed, and every figure uses the non-interactive Agg backend, so no display is needed. The
``*_png`` functions return PNG bytes (embedded in the pages of :mod:`spa.bench.html`).
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spa.graph.io import atomic_path
from spa.quality.sensitivity import damage

#: most panels of the sensitivity figure (the rest are listed in the page's table)
MAX_PANELS = 48


def plotting_available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib  # optional extra (spa[plot])

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # optional extra (spa[plot])

    return plt


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def _pareto_figure(rows: Sequence[Mapping[str, Any]], title: str, fidelity_label: str) -> Any:
    """Median latency (ms) against MACs (G) of each sweep row, coloured by the output cosine."""
    plt = _pyplot()
    pts = [r for r in rows if r.get("median_ms") is not None and r.get("macs") is not None]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    xs = [r["macs"] / 1e9 for r in pts]
    ys = [r["median_ms"] for r in pts]
    if pts and all(r.get("cosine") is not None for r in pts):
        sc = ax.scatter(xs, ys, c=[float(r["cosine"]) for r in pts], cmap="viridis", s=45, zorder=3)
        fig.colorbar(sc, ax=ax).set_label(f"output cosine vs original ({fidelity_label or 'fidelity'})")
    else:
        ax.scatter(xs, ys, s=45, zorder=3)
    ax.plot(xs, ys, color="0.7", lw=1, zorder=2)
    base = next((r for r in pts if r["ratio"] == 0.0 and r["macs"]), None)
    if base is not None:  # where latency would be if it fell with the MACs
        ideal_x = sorted(xs)
        ax.plot(ideal_x, [base["median_ms"] * x * 1e9 / base["macs"] for x in ideal_x], ls="--", lw=1,
                color="tab:red", alpha=0.6, zorder=1, label="ideal (latency ∝ MACs)")
    for r, x, y in zip(pts, xs, ys):
        if r["ratio"] == 0.0:
            ax.scatter([x], [y], marker="*", s=180, color="black", zorder=4, label="original")
        ax.annotate(f"{r['ratio']:.2g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("GMACs per run")
    ax.set_ylabel("median latency (ms)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    if base is not None:
        ax.legend(loc="upper left", fontsize=8)
    return fig


def pareto_plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "",
                fidelity_label: str = "") -> Path:
    """Scatter median latency (ms) against MACs (G) of each sweep row; colour = output cosine.

    The original (ratio 0) is drawn as a black star with the ideal line through it (latency falling in
    proportion to the MACs); each point is labelled with its ratio. The file is written atomically.
    """
    data = pareto_png(rows, title=title, fidelity_label=fidelity_label)
    dest = Path(path)
    with atomic_path(dest, suffix=".png") as tmp:
        tmp.write_bytes(data)
    return dest


def pareto_png(rows: Sequence[Mapping[str, Any]], *, title: str = "", fidelity_label: str = "") -> bytes:
    """The :func:`pareto_plot` figure as PNG bytes."""
    return _png(_pareto_figure(rows, title, fidelity_label))


def sensitivity_png(groups: Sequence[Mapping[str, Any]], levels: Sequence[float]) -> bytes:
    """Small multiples, one panel per group (the first :data:`MAX_PANELS`): the measured output
    distortion when the group alone loses ``levels`` of its channels, joined through (0, 0) as
    :func:`spa.quality.sensitivity.damage` reads it (dashed: extrapolated past the last level), and the
    chosen ratio as a red line with the predicted distortion there as a red dot. Each panel has its own y
    scale (the curves differ by orders of magnitude)."""
    plt = _pyplot()
    shown = list(groups)[:MAX_PANELS]
    cols = min(4, max(1, len(shown)))
    nrows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=90, squeeze=False)
    for ax, g in zip(axes.flat, shown):
        curve, r = [float(c) for c in g["sensitivity"]], float(g["ratio"])
        at_r = damage(curve, levels, r)
        ax.plot([0.0, *levels], [0.0, *curve], marker="o", ms=3, color="tab:blue")
        if levels and r > levels[-1]:
            ax.plot([levels[-1], r], [damage(curve, levels, levels[-1]), at_r], ls="--", color="tab:blue", lw=1)
        ax.axvline(r, color="tab:red", lw=1.5, label=f"chosen {r:.2f}")
        ax.plot([r], [at_r], "o", color="tab:red", ms=4)
        ax.set_title(str(g["label"])[:40], fontsize=7)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, max(0.0, at_r, *curve) * 1.1 or 1e-6)  # each panel its own scale
        ax.tick_params(labelsize=6)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.supxlabel("fraction of the group's channels removed", fontsize=8)
    fig.supylabel("output distortion", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def distortion_png(labels: Sequence[str], predicted: Sequence[float], total_predicted: float,
                   total_measured: float) -> bytes:
    """Left: each group's predicted distortion at its chosen ratio (the terms of the sum; the caller passes
    at most :data:`MAX_PANELS`). Right: the predicted total ``Σ_g damage_g(r_g)`` beside the distortion
    measured on the pruned model."""
    plt = _pyplot()
    fig, (ax, tot) = plt.subplots(1, 2, figsize=(10, 0.25 * max(len(labels), 8) + 1.2), dpi=90,
                                  gridspec_kw={"width_ratios": [3, 1]})
    ys = list(range(len(labels)))
    ax.barh(ys, list(predicted), color="tab:blue")
    ax.set_yticks(ys, [str(s)[:40] for s in labels], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("predicted distortion at the chosen ratio", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    tot.bar([0, 1], [total_predicted, total_measured], color=["tab:blue", "tab:orange"])
    tot.set_xticks([0, 1], ["predicted\n(sum)", "measured"], fontsize=8)
    tot.set_title("output distortion", fontsize=9)
    for x, v in ((0, total_predicted), (1, total_measured)):
        tot.annotate(f"{v:.4g}", (x, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def loss_png(losses: Sequence[float], start_step: int = 0) -> bytes:
    """The distillation loss per optimiser step (log scale when every loss is positive)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = [start_step + k + 1 for k in range(len(losses))]
    ax.plot(steps, list(losses), lw=1, color="tab:blue")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)
