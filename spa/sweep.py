"""``spa sweep``: prune at several ratios, benchmark every result against the original, trace the front.

For each ratio the model is pruned with :func:`spa.prune` and saved in the output folder; then the
original and all pruned models are timed in *one* alternating run (:func:`spa.bench.report.bench_models`)
so their latencies are comparable. Each row also gets a fidelity: with ``--calib``/``--eval`` data and
:mod:`spa.validate.fidelity` available, the mean output cosine and top-1 agreement on that data;
otherwise the output cosine similarity (and arg-max agreement) on seeded random inputs, labelled
``random-inputs`` (it says how much the function changed, not how accurate the model is).
Results: ``sweep.csv``, ``sweep.json`` and, when matplotlib is installed, ``pareto.png``.

>>> parse_ratios("0.1:0.7:0.2")
[0.1, 0.3, 0.5, 0.7]
>>> parse_ratios("0.25,0.5")
[0.25, 0.5]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spa.api import prune
from spa.bench import plot
from spa.bench.report import BenchOptions, bench_models
from spa.errors import SpaError, UsageError
from spa.graph.io import atomic_path, load_model, save_model
from spa.runtime.feeds import input_shapes, make_feeds
from spa.runtime.session import session
from spa.version import __version__

data_fidelity: Callable[..., dict[str, Any]] | None
try:  # fidelity on real data is optional: used when this spa has it
    from spa.validate.fidelity import fidelity as data_fidelity
except ImportError:  # pragma: no cover - depends on the installed spa
    data_fidelity = None

log = logging.getLogger(__name__)
CSV_FIELDS = ("ratio", "model", "params", "macs", "size_bytes", "batch", "median_ms", "p90_ms", "p99_ms",
              "mean_ms", "std_ms", "throughput_sps", "speedup", "ideal_speedup", "latency_efficiency", "cosine",
              "top1_agreement", "rel_l2", "fidelity_source", "num_pruned", "error")
RANDOM_FIDELITY = "random-inputs"


def parse_ratios(spec: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma list; every ratio in (0, 1)."""
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            ratios = [round(start + k * step, 6) for k in range(max(n, 0))]
        else:
            ratios = [round(float(p), 6) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--ratios '{spec}': expected START:STOP:STEP (e.g. 0.1:0.7:0.1) or a list "
                         "(e.g. 0.25,0.5)") from None
    if not ratios:
        raise UsageError(f"--ratios '{spec}' gives no ratio")
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad:
        raise UsageError(f"--ratios: {bad[0]} is outside (0, 1)")
    return sorted(set(ratios))


@dataclass
class SweepOptions:
    """What to sweep and how (the ``spa sweep`` options)."""

    ratios: list[float]
    criterion: str = "l2"
    bench: BenchOptions = field(default_factory=lambda: BenchOptions(warmup=10, iters=100))
    calib: str | None = None
    eval_data: str | None = None
    samples: int | None = None
    seed: int = 0
    force: bool = False
    prune_kwargs: dict[str, Any] = field(default_factory=dict)


def random_fidelity(original: str, pruned: str, *, samples: int = 8, seed: int = 0,
                    shapes: Mapping[str, tuple[int, ...]] | None = None, threads: int = 1) -> dict[str, Any]:
    """Cosine similarity (and arg-max agreement for 2-D outputs) of the two models' first output on
    ``samples`` seeded random inputs (CPU)."""
    a, b = session(original, threads=threads), session(pruned, threads=threads)
    concrete = input_shapes(a, original, shapes=shapes)
    cos, agree, rows = [], 0, 0
    name = a.get_outputs()[0].name
    for k in range(samples):
        feeds = make_feeds(a, concrete, seed + k)
        ya = np.asarray(a.run([name], feeds)[0], dtype=np.float64)
        yb = np.asarray(b.run([name], feeds)[0], dtype=np.float64)
        if ya.shape != yb.shape:
            return {"cosine": None, "top1_agreement": None, "rel_l2": None, "source": RANDOM_FIDELITY,
                    "error": f"output '{name}' shape {list(yb.shape)} differs from {list(ya.shape)}"}
        na, nb = np.linalg.norm(ya), np.linalg.norm(yb)
        cos.append(float(ya.ravel() @ yb.ravel() / (na * nb)) if na and nb else float(na == nb))
        if ya.ndim == 2 and ya.shape[1] > 1:
            agree += int(np.sum(ya.argmax(1) == yb.argmax(1)))
            rows += ya.shape[0]
    return {"cosine": round(float(np.mean(cos)), 6), "top1_agreement": round(agree / rows, 4) if rows else None,
            "rel_l2": None, "source": RANDOM_FIDELITY, "output": name, "samples": samples}


def _fidelity(original: str, pruned: str, opts: SweepOptions) -> dict[str, Any]:
    data = opts.eval_data or opts.calib
    if data and data_fidelity is not None:
        rep = data_fidelity(original, pruned, data, samples=opts.samples, threads=max(opts.bench.threads, 1))
        name, first = next(iter(rep["outputs"].items()))
        return {"cosine": first.get("cosine"), "top1_agreement": first.get("top1_agreement"),
                "rel_l2": first.get("rel_l2"), "source": f"data: {rep['data']}", "output": name,
                "samples": rep["samples"]}
    if data:
        log.warning("spa.validate.fidelity is not available; fidelity on random inputs instead of %s", data)
    return random_fidelity(original, pruned, samples=opts.samples or 8, seed=opts.seed,
                           shapes=opts.bench.shapes, threads=max(opts.bench.threads, 1))


def _write_text(path: Path, text: str) -> None:
    """Atomic write (temporary file beside it, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV (columns :data:`CSV_FIELDS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def _prepare_output(model: str, out_dir: str | os.PathLike[str], opts: SweepOptions) -> tuple[Path, dict[float, Path]]:
    """Check the options, the model and the output folder, create it; the pruned model's path per ratio.

    Raises:
        UsageError: more than one batch size; ``out_dir`` is a file; an output exists and ``force`` is off.
    """
    if opts.bench.batches and len(opts.bench.batches) > 1:
        raise UsageError("spa sweep times one batch size; give a single --batch")
    load_model(model)  # a clear error for a bad input before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file; give a folder")
    stem = Path(model).stem
    pruned_paths = {r: out / f"{stem}.r{r:.3f}.onnx" for r in opts.ratios}
    targets = [out / "sweep.csv", out / "sweep.json", out / "pareto.png", *pruned_paths.values()]
    existing = [t for t in targets if t.exists()]
    if existing and not opts.force:
        raise UsageError(f"{existing[0]} exists; pass --force to overwrite the sweep in {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out, pruned_paths


def _prune_rows(model: str, pruned_paths: Mapping[float, Path], opts: SweepOptions) -> list[dict[str, Any]]:
    """Prune and save the model at every ratio: one row each after the original's (ratio 0); a ratio
    that fails keeps its row with the error and no model."""
    rows: list[dict[str, Any]] = [{"ratio": 0.0, "model": model, "num_pruned": 0}]
    for r in opts.ratios:
        log.info("pruning %s at ratio %.3f", model, r)
        try:
            res = prune(model, ratio=r, criterion=opts.criterion, seed=opts.seed, calibration=opts.calib,
                        **opts.prune_kwargs)
        except SpaError as exc:
            rows.append({"ratio": r, "model": None, "error": str(exc)})
            continue
        save_model(res.model, pruned_paths[r], force=True)
        rows.append({"ratio": r, "model": str(pruned_paths[r]), "num_pruned": res.report["num_pruned"]})
    return rows


def _add_fidelity(model: str, row: dict[str, Any], opts: SweepOptions) -> None:
    """Add a row's fidelity columns: exact for the original, else measured against it (:func:`_fidelity`)."""
    if row["ratio"] == 0.0:
        row.update({"cosine": 1.0, "top1_agreement": 1.0, "rel_l2": 0.0, "fidelity_source": "original"})
        return
    fid = _fidelity(model, str(row["model"]), opts)
    row.update({"cosine": fid.get("cosine"), "top1_agreement": fid.get("top1_agreement"),
                "rel_l2": fid.get("rel_l2"), "fidelity_source": fid["source"]})
    if fid.get("error"):
        row["fidelity_error"] = fid["error"]


def _bench_rows(model: str, rows: list[dict[str, Any]], opts: SweepOptions) -> dict[str, Any]:
    """Time every row that has a model in one alternating run and add its timings and fidelity; the
    benchmark report."""
    timed = [row for row in rows if row.get("model")]
    report = bench_models([str(row["model"]) for row in timed], opts.bench)
    for row, entry in zip(timed, report["models"]):
        row.update({k: v for k, v in entry.items() if k not in ("model", "session_providers")})
        _add_fidelity(model, row, opts)
    return report


def _pareto(model: str, out: Path, rows: list[dict[str, Any]], report: Mapping[str, Any], opts: SweepOptions,
            fid_src: str | None) -> str | None:
    """Plot ``pareto.png`` when matplotlib is installed (its path), else remove a stale one (None)."""
    if plot.plotting_available():
        plot.pareto_plot(rows, out / "pareto.png", title=f"{Path(model).name}: {opts.criterion} sweep, "
                    f"{report['provider']}, {report['threads']} thread(s)", fidelity_label=fid_src or "")
        return str(out / "pareto.png")
    log.info("matplotlib is not installed (pip install 'spa[plot]'): no pareto.png")
    (out / "pareto.png").unlink(missing_ok=True)  # never leave a stale plot of an earlier sweep
    return None


def run_sweep(model: str, out_dir: str | os.PathLike[str], opts: SweepOptions) -> dict[str, Any]:
    """Prune ``model`` at every ratio into ``out_dir``, benchmark, measure fidelity, write the results.

    Returns:
        The ``sweep.json`` content: settings, ``rows`` (ratio 0 is the original), ``files``.

    Raises:
        UsageError: bad options; an output exists and ``force`` is off.
    """
    out, pruned_paths = _prepare_output(model, out_dir, opts)
    rows = _prune_rows(model, pruned_paths, opts)
    report = _bench_rows(model, rows, opts)
    fid_src = next((r["fidelity_source"] for r in rows if r.get("fidelity_source") not in (None, "original")),
                   None)
    files = {"csv": str(out / "sweep.csv"), "json": str(out / "sweep.json"), "png": None}
    result: dict[str, Any] = {
        "schema_version": 1,
        "spa_version": __version__,
        "model": model,
        "criterion": opts.criterion,
        "ratios": opts.ratios,
        "seed": opts.seed,
        "fidelity_source": fid_src,
        "bench": {k: v for k, v in report.items() if k != "models"},
        "rows": rows,
        "files": files,
    }
    files["png"] = _pareto(model, out, rows, report, opts, fid_src)
    _write_text(out / "sweep.csv", to_csv(rows))
    _write_text(out / "sweep.json", json.dumps(result, indent=2, default=str) + "\n")
    return result
