"""A per-layer latency lookup table, measured by micro-benchmarks and cached on disk per provider + device.

Each entry is what one :class:`~spa.latency.layers.LayerConfig` costs per run, measured alone as a
one-node ONNX model in ONNX Runtime (io-binding, ``threads`` intra-op threads, two warm-up runs, then
up to ten timed runs, fewer once 0.1 s have passed; the fastest counts). On the CPU provider the cost is the layer's
profiled
kernel time: ONNX Runtime wraps an isolated NCHWc-eligible conv in ``ReorderInput``/``ReorderOutput``
copies that a whole model only pays where the layout changes, and a session run has a fixed cost of
its own; counting either would make wide, vector-aligned layers look dearer than they are inside the
model (on MobileNetV2 they doubled the table's 1x1 convs). On GPU providers the cost is the run's wall
time minus an empty run's. Entries are measured lazily, the first time a configuration is looked up,
so a table grows with the channel counts a budget search actually visits; a second search on the
same model is served from the cache alone.

The cache is one JSON file per provider + device under ``$SPA_CACHE_DIR/latency/`` (default
``~/.cache/spa/latency/``, the cache root :mod:`spa.latency.cost` uses too). The device is the CPU
model (or the GPU's name for CUDA/TensorRT), the ONNX Runtime version, the thread count and a digest
of the measuring code (:func:`measurement_method`), so a table measured elsewhere, or by another
version of the micro-benchmark, is never reused. Writes are atomic (temporary file + rename) and merge with
what another process wrote meanwhile; a corrupt file is rebuilt with a warning.

>>> Device("CPUExecutionProvider", "Some CPU", "1.0", 1).file_name.startswith("cpu-")
True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from spa.errors import ValidationError
from spa.graph.io import atomic_path
from spa.latency.layers import IR_VERSION, LayerConfig, benchmark_model
from spa.runtime.session import session
from spa.runtime.timing import Runner
from spa.version import __version__

log = logging.getLogger(__name__)

#: version of the cache file layout; a file with another version is rebuilt
FORMAT = 2
CPU = "CPUExecutionProvider"


def cache_root() -> Path:
    """spa's cache folder: ``$SPA_CACHE_DIR``, else ``~/.cache/spa``."""
    return Path(os.environ.get("SPA_CACHE_DIR", Path.home() / ".cache" / "spa"))


def default_cache_dir() -> Path:
    """Where latency tables live unless told otherwise: ``<cache root>/latency``."""
    return cache_root() / "latency"


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def gpu_name() -> str:
    """The first GPU's name as ``nvidia-smi`` reports it (``CUDA device`` when it cannot be asked)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
        return out[0].strip() if out else "CUDA device"
    except (OSError, subprocess.SubprocessError):
        return "CUDA device"


@dataclass(frozen=True)
class Device:
    """What a table's timings hold for: provider, device name, ONNX Runtime version, threads, and how
    they were measured (:func:`measurement_method`)."""

    provider: str
    name: str
    ort_version: str
    threads: int
    method: str = ""

    @classmethod
    def here(cls, providers: Sequence[str], threads: int) -> Device:
        """This machine running ``providers[0]`` with ``threads`` intra-op threads, measured by this spa."""
        provider = providers[0]
        return cls(provider, cpu_name() if provider == CPU else gpu_name(), ort.__version__, threads,
                   measurement_method())

    @property
    def file_name(self) -> str:
        """The cache file's name: a short provider name and a digest of the whole description."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        short = self.provider.removesuffix("ExecutionProvider").lower() or "provider"
        return f"{short}-{digest}.json"


@functools.cache
def measurement_method() -> str:
    """A digest of the code that measures a layer (the benchmark model, the timing and the profile
    reading): a table measured another way — an older or newer spa, a changed micro-benchmark — lands in
    another file and is never mixed with this one's entries (the spa version where the source is not
    readable)."""
    parts = []
    for fn in (measure_layer, measure_overhead, _timed_runs, kernel_ms_per_run, benchmark_model):
        try:
            parts.append(inspect.getsource(fn))
        except (OSError, TypeError):
            parts.append(f"{fn.__qualname__}@{__version__}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def _io_device(providers: Sequence[str]) -> str:
    return "cpu" if providers[0] == CPU else "cuda"


#: copies ONNX Runtime's CPU provider adds around an isolated NCHWc conv; in a whole model they sit
#: only where the layout changes, so they are not part of a layer's cost
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})


def _timed_runs(run: Callable[[], object], *, warmup: int, min_runs: int, max_runs: int,
                budget_s: float) -> list[float]:
    """Milliseconds of timed calls of ``run`` after ``warmup`` untimed ones; stops at ``max_runs`` or,
    after ``min_runs``, once ``budget_s`` seconds of timed runs have passed."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(samples) < max_runs and (len(samples) < min_runs or clock() - start < budget_s):
        t0 = clock()
        run()
        samples.append((clock() - t0) * 1e3)
    return samples


def kernel_ms_per_run(events: Sequence[Mapping[str, Any]], skip: int = 0) -> list[float]:
    """Per profiled run (after the first ``skip``), the milliseconds spent in node kernels other than
    layout copies (:data:`LAYOUT_OPS`), from an ONNX Runtime profile's events.

    >>> ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 50},
    ...       {"cat": "Node", "name": "c_kernel_time", "ts": 5, "dur": 30, "args": {"op_name": "Conv"}},
    ...       {"cat": "Node", "name": "r_kernel_time", "ts": 36, "dur": 9, "args": {"op_name": "ReorderOutput"}}]
    >>> kernel_ms_per_run(ev)
    [0.03]
    """
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip:]
    nodes = sorted(((e["ts"], e["dur"]) for e in events if e.get("cat") == "Node"
                    and str(e.get("name", "")).endswith("_kernel_time")
                    and (e.get("args") or {}).get("op_name") not in LAYOUT_OPS), key=lambda t: t[0])
    out = []
    for r in runs:
        lo, hi = r["ts"], r["ts"] + r["dur"]
        out.append(sum(d for ts, d in nodes if lo <= ts <= hi) / 1e3)
    return out


@functools.cache
def measure_overhead(providers: tuple[str, ...], threads: int = 1) -> float:
    """Milliseconds of a session run that does (almost) nothing: an Identity on one float (fastest run)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "spa_overhead", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    runner = Runner(session(model, providers, threads=threads), {"x": np.zeros(1, np.float32)},
                    _io_device(providers), "overhead")
    return min(_timed_runs(runner, warmup=10, min_runs=50, max_runs=200, budget_s=0.05))


def measure_layer(cfg: LayerConfig, providers: Sequence[str], threads: int = 1, *, max_runs: int = 10,
                  budget_s: float = 0.1) -> float | None:
    """Milliseconds one run of ``cfg`` costs; ``None`` if ONNX Runtime cannot run it alone.

    On the CPU provider this is the profiled kernel time of the layer's own nodes (ONNX Runtime's
    profiler; layout copies and the session's fixed cost left out). On GPU providers, whose kernels run
    asynchronously, it is the wall time of a run (inputs and outputs bound on the device) minus that of
    an Identity model. Either way the fastest run counts: other processes only ever add time, and a
    table whose entries were measured under different loads would compare layers unfairly (on a busy
    2-core machine, medians made a ResNet-50's layers sum to 51 ms in one table and 73 ms in another).
    """
    model, feeds = benchmark_model(cfg)
    cpu = providers[0] == CPU
    with tempfile.TemporaryDirectory(prefix="spa_lut_") as tmp:
        try:
            sess = session(model, providers, threads=threads,
                                profile_prefix=os.path.join(tmp, "layer") if cpu else None)
            runner = Runner(sess, feeds, _io_device(providers), cfg.op)  # runs once
        except ValidationError as exc:
            log.debug("cannot benchmark %s: %s", cfg.key, exc)
            return None
        warmup = 2
        wall = _timed_runs(runner, warmup=warmup, min_runs=3, max_runs=max_runs, budget_s=budget_s)
        if not cpu:
            return max(0.0, min(wall) - measure_overhead(tuple(providers), threads))
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = kernel_ms_per_run(events, skip=1 + warmup)
    return min(kernels) if kernels else None


def _read(path: Path, device: Device) -> dict[str, Any] | None:
    """The cache file's content, ``None`` when absent; raises ValueError when unusable."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise ValueError("unknown layout")
    if data.get("device") != asdict(device):
        raise ValueError("written for another device")
    return data


@dataclass
class Replay:
    """Per-layer entries measured by another process (the one that will serve the model): a table opened
    while replaying answers from them and never measures; the layers it lacks are recorded in
    ``missing`` (and read as ``None``) so that process can measure them and run the task again."""

    entries: dict[str, float | None]
    missing: dict[str, LayerConfig] = field(default_factory=dict)


_REPLAY: Replay | None = None


@contextlib.contextmanager
def replaying(entries: Mapping[str, float | None]) -> Iterator[Replay]:
    """Tables opened inside answer from ``entries`` only (see :class:`Replay`)."""
    global _REPLAY
    previous, _REPLAY = _REPLAY, Replay(dict(entries))
    try:
        yield _REPLAY
    finally:
        _REPLAY = previous


@dataclass
class LatencyTable:
    """Per-layer latencies (ms) for one provider + device, measured lazily and cached in ``path``.

    Attributes:
        path: the cache file.
        device: what the timings hold for.
        providers: the ONNX Runtime provider list the micro-benchmarks run with.
        entries: milliseconds by :attr:`LayerConfig.key` (``None``: ONNX Runtime could not run it).
        hits: lookups answered from the table since it was opened.
        measured: micro-benchmarks run since it was opened.
        on_measure: called with ``measured`` after each micro-benchmark (a progress display).
    """

    path: Path
    device: Device
    providers: list[str]
    entries: dict[str, float | None] = field(default_factory=dict)
    hits: int = 0
    measured: int = 0
    on_measure: Callable[[int], None] | None = None
    replay: Replay | None = None

    @classmethod
    def open(cls, providers: Sequence[str] | None = None, threads: int = 1,
             cache_dir: str | os.PathLike[str] | None = None) -> LatencyTable:
        """The table of this machine for ``providers`` (CPU by default), loaded from ``cache_dir``."""
        providers = list(providers or [CPU])
        device = Device.here(providers, threads)
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / device.file_name
        table = cls(path, device, providers)
        if _REPLAY is not None:
            table.entries, table.replay = dict(_REPLAY.entries), _REPLAY
            return table
        try:
            data = _read(path, device)
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("latency cache %s is unusable (%s); rebuilding it", path, exc)
            data = None
        if data is not None:
            table.entries = {str(k): (float(v) if v is not None else None) for k, v in data["entries"].items()}
        return table

    def layer_ms(self, cfg: LayerConfig) -> float | None:
        """The latency of ``cfg`` (measured now if not in the table); ``None`` when ONNX Runtime cannot
        run it alone."""
        key = cfg.key
        if key in self.entries:
            self.hits += 1
        elif self.replay is not None:
            self.replay.missing[key] = cfg
            self.entries[key] = None
        else:
            self.entries[key] = measure_layer(cfg, self.providers, self.device.threads)
            self.measured += 1
            if self.on_measure is not None:
                self.on_measure(self.measured)
        return self.entries[key]

    def save(self) -> None:
        """Write the table atomically, merged with entries another process saved meanwhile (nothing to do
        when this one measured nothing)."""
        if not self.measured:
            return
        entries = dict(self.entries)
        try:
            on_disk = _read(self.path, self.device)
        except (OSError, ValueError):
            on_disk = None
        if on_disk is not None:
            entries = dict(on_disk["entries"]) | entries
        data = {"format": FORMAT, "device": asdict(self.device), "entries": dict(sorted(entries.items()))}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                json.dump(data, f, indent=0)
        except OSError as exc:
            log.warning("could not write the latency cache %s: %s", self.path, exc)
