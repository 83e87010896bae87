"""``pareto.png`` of ``spa sweep``: latency against MACs, coloured by fidelity (needs matplotlib).

matplotlib is optional (``pip install 'spa[plot]'``); :func:`plotting_available` says whether it is
installed, and :func:`pareto_plot` uses the non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spa.graph.io import atomic_path


def plotting_available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def pareto_plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = "",
                fidelity_label: str = "") -> Path:
    """Scatter median latency (ms) against MACs (G) of each sweep row; colour = output cosine.

    The original (ratio 0) is drawn as a black star with the ideal line through it (latency falling in
    proportion to the MACs); each point is labelled with its ratio. The file is written atomically.
    """
    import matplotlib  # optional extra (spa[plot])

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # optional extra (spa[plot])

    pts = [r for r in rows if r.get("median_ms") is not None and r.get("macs") is not None]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    try:
        xs = [r["macs"] / 1e9 for r in pts]
        ys = [r["median_ms"] for r in pts]
        cos = [r.get("cosine") for r in pts]
        if pts and all(c is not None for c in cos):
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
        dest = Path(path)
        with atomic_path(dest, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        return dest
    finally:
        plt.close(fig)
