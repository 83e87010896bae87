"""``spa bench``: time several models side by side and assemble the report (schema: ``docs/bench.md``).

For every requested batch size, all models are timed in one alternating run on the same seeded random
inputs (:mod:`spa.runtime.timing`), after their MACs at exactly those input shapes are counted
(:mod:`spa.analysis.metrics`). Each entry then gets its speedup against the first model at the same
batch, the *ideal* speedup (MACs ratio) and their ratio, the *latency efficiency*: 1 means the graph
delivers all of the theoretical gain, less means copies, layouts or tiny layers eat it.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from spa.analysis.cost import count_macs
from spa.analysis.metrics import count_params, set_input_shapes
from spa.bench.fp16 import to_fp16
from spa.bench.profile import profile_diff, profile_runs
from spa.errors import InvalidModelError, SpaError, UsageError
from spa.graph.io import load_model
from spa.graph.model import ModelGraph
from spa.graph.normalize import normalize
from spa.runtime.feeds import batch_of, input_shapes, make_feeds
from spa.runtime.providers import Provider, choose_provider
from spa.runtime.session import ModelLike, session
from spa.runtime.timing import Runner, time_runners
from spa.version import __version__

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    """How to benchmark (the ``spa bench`` options)."""

    provider: str = "auto"
    batches: list[int] | None = None
    shapes: dict[str, tuple[int, ...]] | None = None
    warmup: int = 20
    iters: int = 200
    threads: int = 1
    fp16: bool = False
    profile: bool = False
    profile_runs: int = 20
    profile_top: int = 10
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`~spa.errors.UsageError` for out-of-range values."""
        if self.iters < 1:
            raise UsageError(f"--iters must be at least 1, got {self.iters}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads < 0:
            raise UsageError(f"--threads must be >= 0 (0 = ONNX Runtime's default), got {self.threads}")
        for b in self.batches or []:
            if b < 1:
                raise UsageError(f"--batch sizes must be >= 1, got {b}")


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a model: the ``.onnx`` file plus every external data file it names."""
    p = Path(path)
    total = p.stat().st_size
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - a file onnx cannot read has no external data to count
        return total
    seen: set[str] = set()
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                f = p.parent / entry.value
                if f.is_file():
                    total += f.stat().st_size
    return total


@dataclass
class _Model:
    path: str
    source: ModelLike  # what sessions load: the path, or the float16 copy
    graph: ModelGraph | None  # for MACs (None when spa cannot read it)
    params: int | None
    size_bytes: int
    session: ort.InferenceSession


def _prepare(path: str, provider: Provider, opts: BenchOptions) -> _Model:
    proto = load_model(path)  # clear per-file errors before ONNX Runtime sees the file
    graph: ModelGraph | None
    try:
        graph = normalize(proto)
    except InvalidModelError:
        raise
    except SpaError as exc:  # still timeable; MACs/params unknown
        log.warning("%s: MACs and parameters not counted: %s", path, exc)
        graph = None
    source: ModelLike = to_fp16(proto) if opts.fp16 else path
    del proto
    sess = session(source, provider.providers, threads=opts.threads)
    return _Model(path, source, graph, count_params(graph) if graph else None, file_size(path), sess)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def _row(m: _Model, batch: int | None, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A model's report entry before timing: batch, input shapes, MACs (total and per sample: MACs / batch),
    parameters, file size and the session's providers."""
    macs = count_macs(set_input_shapes(m.graph, shapes)) if m.graph is not None else None
    b = batch if batch is not None else batch_of(shapes)
    return {"model": m.path, "batch": b, "input_shapes": {k: list(v) for k, v in shapes.items()},
            "macs": macs, "macs_per_sample": round(macs / b, 2) if macs is not None else None,
            "params": m.params, "size_bytes": m.size_bytes,
            "session_providers": list(m.session.get_providers())}


def _add_speedups(row: dict[str, Any], median_ms: float, base: dict[str, Any]) -> None:
    """Add throughput (samples/s = batch * 1000 / median ms, from the unrounded median), speedup (base
    median / median), ideal speedup (base MACs / MACs) and latency efficiency (speedup / ideal speedup)
    to a timed row."""
    row["throughput_sps"] = round(row["batch"] * 1e3 / median_ms, 3) if median_ms > 0 else None
    row["speedup"] = _ratio(base["median_ms"], row["median_ms"])
    row["ideal_speedup"] = _ratio(base["macs"], row["macs"])
    row["latency_efficiency"] = _ratio(row["speedup"], row["ideal_speedup"])


@dataclass(frozen=True)
class _Bench:
    """One benchmark: the prepared models, where they run, the options and every model's input shapes."""

    models: list[_Model]
    provider: Provider
    opts: BenchOptions
    shapes: dict[tuple[int | None, str], dict[str, tuple[int, ...]]]  # (batch, path) -> input shapes

    def batch(self, batch: int | None) -> list[dict[str, Any]]:
        """Time every model at one batch size (one alternating run on seeded inputs); their entries,
        with speedups against the first model and, when asked, a profile each."""
        rows, runners, feeds_of = [], [], []
        for m in self.models:
            shapes = self.shapes[(batch, m.path)]
            feeds = make_feeds(m.session, shapes, self.opts.seed)
            runners.append(Runner(m.session, feeds, self.provider.device, m.path))
            rows.append(_row(m, batch, shapes))
            feeds_of.append(feeds)
        log.info("timing %d model(s) at batch %s", len(rows), batch)
        timings = time_runners(runners, warmup=self.opts.warmup, iters=self.opts.iters)
        for m, row, t, feeds in zip(self.models, rows, timings, feeds_of):
            row.update(t.to_json())
            _add_speedups(row, t.median_ms, rows[0])
            if self.opts.profile:
                row["profile"] = self.profile(m, feeds)
                if row is not rows[0] and rows[0].get("profile"):
                    row["profile_diff"] = profile_diff(rows[0]["profile"], row["profile"])
        return rows

    def profile(self, m: _Model, feeds: dict[str, np.ndarray]) -> Any:
        """ONNX Runtime's per-operator profile of one model (:func:`spa.bench.profile.profile_runs`)."""
        o = self.opts
        return profile_runs(m.source, self.provider.providers, feeds, device=self.provider.device,
                            threads=o.threads, warmup=min(max(o.warmup, 1), 5), runs=o.profile_runs,
                            top=o.profile_top)


def _settings(provider: Provider, opts: BenchOptions) -> dict[str, Any]:
    """The report's header: versions, provider, device, options and host."""
    return {
        "schema_version": SCHEMA_VERSION,
        "spa_version": __version__,
        "onnxruntime_version": ort.__version__,
        "provider": provider.name,
        "provider_requested": provider.requested,
        "providers": provider.providers,
        "provider_note": provider.note,
        "device": provider.device,
        "io_binding": True,
        "threads": opts.threads,
        "warmup": opts.warmup,
        "iters": opts.iters,
        "seed": opts.seed,
        "fp16": opts.fp16,
        "batches": opts.batches,
        "shapes": {k: list(v) for k, v in (opts.shapes or {}).items()} or None,
        "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }


def bench_models(models: Sequence[str], options: BenchOptions | None = None) -> dict[str, Any]:
    """Benchmark ``models`` (paths; the first is the baseline) and return the JSON-ready report.

    Raises:
        UsageError: bad options, an unusable provider, a static batch that differs from a requested one.
        InvalidModelError: a file is not a readable model.
        ValidationError: ONNX Runtime cannot load a model.
    """
    opts = options or BenchOptions()
    opts.check()
    if not models:
        raise UsageError("no models to benchmark")
    provider = choose_provider(opts.provider)
    prepared = [_prepare(str(m), provider, opts) for m in models]
    batches: list[int | None] = list(opts.batches) if opts.batches else [None]
    # every shape first: a static batch that cannot run fails before any timing
    shapes = {(b, m.path): input_shapes(m.session, m.path, batch=b, shapes=opts.shapes)
              for b in batches for m in prepared}
    bench = _Bench(prepared, provider, opts, shapes)
    return _settings(provider, opts) | {"models": [row for batch in batches for row in bench.batch(batch)]}
