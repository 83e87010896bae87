"""``spa sweep``: prune at several ratios, benchmark every result against the original, trace the front.

For each ratio the model is pruned with :func:`spa.prune` and saved in the output folder; then the
original and all pruned models are timed in *one* alternating run (:func:`spa.bench.report.bench_models`)
so their latencies are comparable. Each row also gets a fidelity: with ``--calib``/``--eval`` data and
:mod:`spa.validate.fidelity` available, the mean output cosine and top-1 agreement on that data;
otherwise the output cosine similarity (and arg-max agreement) on seeded random inputs, labelled
``random-inputs`` (it says how much the function changed, not how accurate the model is).
Results: ``sweep.csv``, ``sweep.json`` and, when matplotlib is installed, ``pareto.png``.

The prunes — every criterion of a comma list × every ratio — are independent tasks on an executor
(:mod:`spa.executors`: a local process pool by default, or Ray): the model is shipped once, each task
returns its pruned model, which is written as it completes (the model, then its row in ``points/``, both
atomically), so ``resume`` continues an interrupted sweep from the finished points. The per-layer latency
table of ``round_to="latency"`` is this machine's, replayed by the tasks (:func:`spa.latency.lut.replaying`):
layers it lacks are measured here and their points rerun. The benchmark and the fidelity always run here,
never on a worker. Whichever executor prunes, the pruned models are the same bytes.

>>> parse_ratios("0.1:0.7:0.2")
[0.1, 0.3, 0.5, 0.7]
>>> parse_ratios("0.25,0.5")
[0.25, 0.5]
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from spa.api import prune
from spa.bench import plot
from spa.bench.report import BenchOptions, bench_models
from spa.errors import SpaError, UsageError
from spa.executors import Executor, make_executor, one_blas_thread
from spa.graph.io import atomic_path, load_model, save_model
from spa.latency import lut
from spa.latency.lut import LatencyTable
from spa.options import check_executor
from spa.runtime.feeds import input_shapes, make_feeds
from spa.runtime.session import session
from spa.version import __version__

data_fidelity: Callable[..., dict[str, Any]] | None
try:  # fidelity on real data is optional: used when this spa has it
    from spa.validate.fidelity import fidelity as data_fidelity
except ImportError:  # pragma: no cover - depends on the installed spa
    data_fidelity = None

log = logging.getLogger(__name__)
CSV_FIELDS = ("ratio", "criterion", "model", "params", "macs", "size_bytes", "batch", "median_ms", "p90_ms",
              "p99_ms", "mean_ms", "std_ms", "throughput_sps", "speedup", "ideal_speedup", "latency_efficiency",
              "cosine", "top1_agreement", "rel_l2", "fidelity_source", "num_pruned", "error")
RANDOM_FIDELITY = "random-inputs"
#: the folder (in the output folder) of the finished points' rows, what ``--resume`` continues from
POINTS = "points"
#: rounds of measuring the latency layers the tasks lacked (each round reruns only the points that lacked some)
MEASURE_ROUNDS = 3
#: a sweep point: (criterion, ratio)
Point = tuple[str, float]


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
    criterion: str = "l2"  # one criterion or a comma list (l1,l2): every ratio is pruned with each
    bench: BenchOptions = field(default_factory=lambda: BenchOptions(warmup=10, iters=100))
    calib: str | None = None
    eval_data: str | None = None
    samples: int | None = None
    seed: int = 0
    force: bool = False
    prune_kwargs: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    resume: bool = False

    @property
    def criteria(self) -> list[str]:
        """The criteria swept, in the order given."""
        return list(dict.fromkeys(c.strip() for c in self.criterion.split(",") if c.strip())) or ["l2"]


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


def _point_name(stem: str, criterion: str, ratio: float, several: bool) -> str:
    return f"{stem}.{criterion}.r{ratio:.3f}" if several else f"{stem}.r{ratio:.3f}"


def _prepare_output(model: str, out_dir: str | os.PathLike[str], opts: SweepOptions
                    ) -> tuple[Path, dict[Point, Path]]:
    """Check the options, the model and the output folder, create it; the pruned model's path per point.

    Raises:
        UsageError: more than one batch size; ``out_dir`` is a file; an output exists and neither ``force``
            nor ``resume`` is on.
    """
    if opts.bench.batches and len(opts.bench.batches) > 1:
        raise UsageError("spa sweep times one batch size; give a single --batch")
    if opts.force and opts.resume:
        raise UsageError("--force starts the sweep over and --resume continues it: give one")
    check_executor(opts.executor, opts.workers)
    load_model(model)  # a clear error for a bad input before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file; give a folder")
    stem, several = Path(model).stem, len(opts.criteria) > 1
    pruned_paths = {(c, r): out / f"{_point_name(stem, c, r, several)}.onnx"
                    for c in opts.criteria for r in opts.ratios}
    targets = [out / "sweep.csv", out / "sweep.json", out / "pareto.png", *pruned_paths.values()]
    existing = [t for t in targets if t.exists()]
    if existing and not (opts.force or opts.resume):
        raise UsageError(f"{existing[0]} exists; pass --resume to continue the sweep in {out} or --force to "
                         "start it over")
    (out / POINTS).mkdir(parents=True, exist_ok=True)
    return out, pruned_paths


@dataclass(frozen=True)
class _SweepJob:
    """What every prune task needs, shipped once: the model, the prune settings and (``round_to="latency"``)
    the per-layer latency entries of this machine, which the tasks replay instead of measuring."""

    model: bytes | str  # the serialized model, or (over 2 GB) its path, which every worker must see
    seed: int
    calib: str | None
    prune_kwargs: dict[str, Any]
    latency: dict[str, float | None] | None
    dests: dict[Point, str]  # where a worker writes a pruned model over 2 GB itself (a shared folder)


def _prune_point(job: _SweepJob, point: Point) -> dict[str, Any]:
    """One prune task: ``{"model": bytes, "num_pruned"}``, ``{"error"}``, or ``{"missing": layer configs}``
    when the latency entries lack layers the count choice asked for (measured by the driver, then rerun)."""
    criterion, ratio = point
    with contextlib.ExitStack() as stack:
        stack.enter_context(one_blas_thread())  # the same bits on every executor (compensating criteria)
        replay = stack.enter_context(lut.replaying(job.latency)) if job.latency is not None else None
        try:
            model = onnx.load_from_string(job.model) if isinstance(job.model, bytes) else job.model
            res = prune(model, ratio=ratio, criterion=criterion, seed=job.seed, calibration=job.calib,
                        **job.prune_kwargs)
            if replay is not None and replay.missing:
                return {"missing": list(replay.missing.values())}
            try:
                return {"model": res.model.SerializeToString(), "num_pruned": res.report["num_pruned"]}
            except (ValueError, EncodeError):  # over 2 GB: written here, with external data
                res.save(job.dests[point])
                return {"saved": job.dests[point], "num_pruned": res.report["num_pruned"]}
        except SpaError as exc:
            return {"error": str(exc)}


def _point_key(digest: str, point: Point, opts: SweepOptions) -> str:
    """What decides a point's result: a finished point is reused by ``--resume`` only when this matches."""
    text = json.dumps([digest, point[0], point[1], opts.seed, opts.calib, sorted(opts.prune_kwargs.items())],
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _finished(paths: Mapping[Point, Path], keys: Mapping[Point, str]) -> dict[Point, dict[str, Any]]:
    """The rows of points an earlier run finished with the same settings (their point file and model exist)."""
    done = {}
    for point, path in paths.items():
        record = path.parent / POINTS / f"{path.stem}.json"
        try:
            row = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if row.get("key") == keys[point] and (row.get("error") or path.is_file()):
            done[point] = row
    return done


def _write_point(point: Point, result: Mapping[str, Any], path: Path, key: str) -> dict[str, Any]:
    """Save a finished point: its pruned model, then its row (both atomically, so a row means a whole model)."""
    row: dict[str, Any] = {"criterion": point[0], "ratio": point[1], "key": key}
    if "error" in result:
        row |= {"model": None, "error": result["error"]}
    else:
        if "model" in result:
            save_model(onnx.load_from_string(result["model"]), path, force=True)
        row |= {"model": str(path), "num_pruned": result["num_pruned"]}
    _write_text(path.parent / POINTS / f"{path.stem}.json", json.dumps(row) + "\n")
    return row


def _model_payload(model: str) -> tuple[bytes | str, str]:
    """What the tasks get of the model — its serialization, or over 2 GB its absolute path — and a digest of
    it (the ``--resume`` key)."""
    try:
        blob = load_model(model).SerializeToString()
    except (ValueError, EncodeError):  # over 2 GB: the workers read the file (and its external data) themselves
        h = hashlib.sha256()
        with open(model, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        return str(Path(model).resolve()), h.hexdigest()
    return blob, hashlib.sha256(blob).hexdigest()


def _latency_table(opts: SweepOptions) -> LatencyTable | None:
    """This machine's per-layer latency table when the counts are chosen by latency (else None)."""
    kw = opts.prune_kwargs
    if str(kw.get("round_to", "latency")) != "latency":
        return None
    providers = kw.get("providers")
    return LatencyTable.open(list(providers) if providers else None, 1, kw.get("latency_cache"))


def _prune_rows(model: str, pruned_paths: Mapping[Point, Path], opts: SweepOptions,
                executor: Executor) -> list[dict[str, Any]]:
    """Prune and save the model at every point (criterion × ratio) on the executor, each point written as it
    completes; one row each after the original's (ratio 0); a point that fails keeps its row with the error.
    With ``resume``, points an earlier run finished are not pruned again. Layers the tasks found missing
    from the latency table are measured here, then their points run again."""
    blob, digest = _model_payload(model)
    keys = {p: _point_key(digest, p, opts) for p in pruned_paths}
    done = _finished(pruned_paths, keys) if opts.resume else {}
    if done:
        log.info("resuming: %d of %d points already finished", len(done), len(pruned_paths))
    table = _latency_table(opts)
    calib = str(Path(opts.calib).resolve()) if opts.calib and Path(opts.calib).exists() else opts.calib
    todo = [p for p in pruned_paths if p not in done]
    for _ in range(MEASURE_ROUNDS):
        if not todo:
            break
        job = _SweepJob(blob, opts.seed, calib, dict(opts.prune_kwargs),
                        dict(table.entries) if table is not None else None,
                        {p: str(path.resolve()) for p, path in pruned_paths.items()})
        missing: dict[str, Any] = {}

        def finish(i: int, result: dict[str, Any], todo: list[Point] = todo,
                   missing: dict[str, Any] = missing) -> None:
            if "missing" in result:
                missing.update({cfg.key: cfg for cfg in result["missing"]})
            else:
                done[todo[i]] = _write_point(todo[i], result, pruned_paths[todo[i]], keys[todo[i]])

        executor.map(_prune_point, todo, shared=job, on_result=finish)
        _measure(table, missing.values())
        todo = [p for p in todo if p not in done]
    for p in todo:  # never reached in practice: the second round finds every layer measured
        done[p] = {"criterion": p[0], "ratio": p[1], "model": None,
                   "error": f"the latency table still lacks layers after {MEASURE_ROUNDS} rounds of measuring"}
    rows: list[dict[str, Any]] = [{"ratio": 0.0, "criterion": None, "model": model, "num_pruned": 0}]
    return rows + [{k: v for k, v in done[p].items() if k != "key"} for p in pruned_paths if p in done]


def _measure(table: LatencyTable | None, configs: Iterable[Any]) -> None:
    """Measure, here, the layers the tasks lacked, and save the table."""
    configs = list(configs)
    if table is None or not configs:
        return
    log.info("measuring %d layer(s) of the latency table on this machine", len(configs))
    for cfg in configs:
        table.layer_ms(cfg)
    table.save()


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


def run_sweep(model: str, out_dir: str | os.PathLike[str], opts: SweepOptions,
              executor: Executor | None = None) -> dict[str, Any]:
    """Prune ``model`` at every ratio into ``out_dir``, benchmark, measure fidelity, write the results.

    The prunes run on ``executor`` (default: the one ``opts.executor`` names); the benchmark and the
    fidelity run in this process.

    Returns:
        The ``sweep.json`` content: settings, ``rows`` (ratio 0 is the original), ``files``.

    Raises:
        UsageError: bad options; an output exists and ``force`` is off.
    """
    out, pruned_paths = _prepare_output(model, out_dir, opts)
    if executor is None:
        kind = "serial" if opts.executor == "local" and len(pruned_paths) == 1 else opts.executor  # no pool for one
        with make_executor(kind, address=opts.ray_address, workers=opts.workers) as made:
            rows = _prune_rows(model, pruned_paths, opts, made)
            ran_on = {"name": made.name, "workers": made.workers}
    else:
        rows = _prune_rows(model, pruned_paths, opts, executor)
        ran_on = {"name": executor.name, "workers": executor.workers}
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
        "executor": ran_on,  # where the prunes ran; the benchmark and the fidelity ran in this process
        "fidelity_source": fid_src,
        "bench": {k: v for k, v in report.items() if k != "models"},
        "rows": rows,
        "files": files,
    }
    files["png"] = _pareto(model, out, rows, report, opts, fid_src)
    _write_text(out / "sweep.csv", to_csv(rows))
    _write_text(out / "sweep.json", json.dumps(result, indent=2, default=str) + "\n")
    return result
