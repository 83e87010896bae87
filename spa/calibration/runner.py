"""Run a model in ONNX Runtime over a calibration source, exposing intermediate tensors.

:func:`run_batches` adds the requested *taps* (intermediate tensors) as extra graph outputs, feeds the
source batch by batch and yields each batch's feeds and tap values; nothing is kept between batches.

Exported models often fix the batch dimension to 1. Then the runner tries a copy whose inputs have a
symbolic batch dimension and checks it once on the first two samples against sample-by-sample runs of
the original; if that fails (e.g. a Reshape constant bakes in the batch) it falls back to running one
sample at a time. A progress bar (rich, on stderr) shows while a terminal is attached.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from spa.calibration.data import CalibrationError, CalibrationSource, RandomSource
from spa.graph.model import ModelGraph
from spa.runtime.fed import weight_fed
from spa.runtime.feeds import PROBE_DIMS, InputSpec, find_runnable_shapes, graph_of, input_specs
from spa.runtime.session import session

log = logging.getLogger(__name__)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def tapped_model(model: onnx.ModelProto, taps: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs also include ``taps`` (graph inputs and outputs are skipped)."""
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    types = _elem_types(model)
    produced = {o for n in model.graph.node for o in n.output}
    for t in dict.fromkeys(taps):
        if t in present:
            continue
        if t not in produced:
            raise CalibrationError(f"tensor '{t}' is not produced by any node; cannot collect statistics on it")
        out.graph.output.append(helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None))
    return out


def _with_dynamic_batch(model: onnx.ModelProto, weights: Collection[str] = ()) -> onnx.ModelProto:
    out = copy.deepcopy(model)
    del out.graph.value_info[:]
    inits = {i.name for i in out.graph.initializer} | set(weights)
    for vi in list(out.graph.input) + list(out.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "spa_batch"
    return out


def static_batch(specs: Sequence[InputSpec]) -> int | None:
    """The fixed batch size of the inputs (None when dynamic)."""
    sizes = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    return min(sizes) if sizes else None


@dataclass
class BatchRun:
    """One batch: the number of samples, the feeds and the tapped tensors (and outputs)."""

    samples: int
    feeds: dict[str, np.ndarray]
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _progress(show: bool):  # type: ignore[no-untyped-def]
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True,
                    disable=not (show and sys.stderr.isatty() and console.is_terminal))


@dataclass
class _Sessions:
    """The sessions of one calibration run and the tensors it fetches.

    ``fixed`` runs the tapped model as exported; ``dynamic``, when not None, runs its copy with a
    symbolic batch dimension (dropped when the batched check fails).
    """

    source: CalibrationSource
    fetch: list[str]
    fixed: ort.InferenceSession
    dynamic: ort.InferenceSession | None = None
    #: a weight-fed model's weights, added to every run's feeds (:mod:`spa.runtime.fed`)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def run(self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The fetched tensors of one run of ``sess``.

        Raises:
            CalibrationError: ONNX Runtime rejects the feeds (its first message line, and the source).
        """
        try:
            return sess.run(self.fetch, feeds | self.weights)  # type: ignore[no-any-return]
        except Exception as exc:
            raise CalibrationError(f"ONNX Runtime failed on the calibration data ({self.source.describe()}): "
                                   f"{str(exc).splitlines()[0]}") from exc

    def per_sample(self, feeds: dict[str, np.ndarray], n: int, step: int) -> list[np.ndarray]:
        """The fetched tensors of the first ``n - n % step`` samples, run ``step`` at a time on the fixed
        session and concatenated along the batch axis (scalars are taken from the first run).

        Raises:
            CalibrationError: fewer than ``step`` samples.
        """
        parts = [self.run(self.fixed, {k: v[i:i + step] for k, v in feeds.items()})
                 for i in range(0, n - n % step, step)]
        if not parts:
            raise CalibrationError(f"the model's batch size is fixed to {step}; a batch of {n} samples is too small")
        return [np.concatenate([p[j] for p in parts]) if np.ndim(parts[0][j]) else parts[0][j]
                for j in range(len(self.fetch))]

    def batched_ok(self, feeds: dict[str, np.ndarray], n: int) -> bool:
        """Whether the dynamic-batch copy gives, on the first two samples, what sample-by-sample runs give
        (same shapes, ``allclose`` with rtol 1e-4, atol 1e-5); any failure means no."""
        if self.dynamic is None:
            return False
        try:
            probe = {k: v[:2] for k, v in feeds.items()}
            quiet = ort.RunOptions()
            quiet.log_severity_level = 4  # an expected failure, not an error to print
            got = self.dynamic.run(self.fetch, probe | self.weights, quiet)
            want = self.per_sample(probe, min(n, 2), 1)
            return all(np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-4, atol=1e-5)
                       for a, b in zip(got, want))
        except Exception as exc:  # noqa: BLE001
            log.debug("dynamic batch check raised %s", exc)
            return False

    def values(self, feeds: dict[str, np.ndarray], static: int | None
               ) -> tuple[int, dict[str, np.ndarray], list[np.ndarray]]:
        """One batch run: its sample count, feeds and fetched tensors.

        With the dynamic copy the batch runs at once; a model whose static batch differs from the
        batch's size runs ``static`` samples at a time, dropping the ``n % static`` left over.
        """
        n = len(next(iter(feeds.values()))) if feeds else 0
        if self.dynamic is not None:
            return n, feeds, self.run(self.dynamic, feeds)
        if static is not None and static != n:
            values = self.per_sample(feeds, n, static)
            n = n - n % static
            return n, {k: v[:n] for k, v in feeds.items()}, values
        return n, feeds, self.run(self.fixed, feeds)


def _sessions(tapped: onnx.ModelProto, source: CalibrationSource, fetch: list[str], static: int | None,
              threads: int, weights: dict[str, np.ndarray]) -> _Sessions:
    """The fixed session, and a dynamic-batch one when the batch is fixed to 1 and the source batches
    more (None when that copy does not load)."""
    sessions = _Sessions(source, fetch, session(tapped, threads=threads), weights=weights)
    if static == 1 and source.batch_size > 1:
        try:
            sessions.dynamic = session(_with_dynamic_batch(tapped, weights), threads=threads)
        except Exception as exc:  # noqa: BLE001 - any failure means: run sample by sample
            log.debug("dynamic-batch copy does not load (%s); running one sample at a time", exc)
    return sessions


def _fitted(source: RandomSource, sess: ort.InferenceSession, model: onnx.ModelProto) -> RandomSource:
    """``source`` with sample shapes the model runs at (:func:`~spa.runtime.feeds.find_runnable_shapes`).

    Raises:
        CalibrationError: the model has dynamic sizes and none of those tried runs.
    """
    fitted = find_runnable_shapes(sess, batch=1, seed=source.seed, graph=lambda: graph_of(model))
    if fitted is None:
        spec = next(s for s in input_specs(sess) if any(not (isinstance(d, int) and d >= 0) for d in s.shape[1:]))
        dims = ",".join(str(d) if isinstance(d, int) and d >= 0 else "1" if k == 0 else "?"
                        for k, d in enumerate(spec.shape))
        raise CalibrationError(
            f"no size spa tried ({', '.join(map(str, PROBE_DIMS))}) for the dynamic dimensions of input "
            f"'{spec.name}' runs the model on random inputs: give the sizes it runs at with --shape "
            f"{spec.name}={dims} (shapes= in Python) or real data with --calib")
    return dataclasses.replace(source, shapes={k: v[1:] for k, v in fitted.items() if v})


@dataclass
class _Plan:
    """What one calibration run fetches, and its sessions."""

    specs: list[InputSpec]
    wanted: list[str]
    fetch: list[str]
    static: int | None
    sessions: _Sessions
    source: CalibrationSource


def _fed(model: onnx.ModelProto | ModelGraph, source: CalibrationSource
         ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model to run and the weights to feed it: a :class:`ModelGraph` runs weight-fed (no copy of its
    weights, :func:`spa.runtime.fed.weight_fed`) — unless the source is random data still to be fitted to
    the model's sizes, which needs the plain model."""
    if not isinstance(model, ModelGraph):
        return model, {}
    if isinstance(source, RandomSource) and source.shapes is None:
        return model.to_onnx(), {}
    fed, weights = weight_fed(model)
    return fed.to_onnx(), weights


def _plan(model: onnx.ModelProto | ModelGraph, source: CalibrationSource, taps: Sequence[str], outputs: bool,
          threads: int) -> _Plan:
    """The tensors to fetch, the sessions, and the source (a random source given shapes the model accepts)."""
    model, weights = _fed(model, source)
    specs = [s for s in input_specs(model) if s.name not in weights]
    input_names = {s.name for s in specs}
    own = [o.name for o in model.graph.output] if outputs else []
    wanted = list(dict.fromkeys(list(taps) + own))
    fetch = [t for t in wanted if t not in input_names]
    static = static_batch(specs)
    sessions = _sessions(tapped_model(model, fetch), source, fetch, static, threads, weights)
    if isinstance(source, RandomSource) and source.shapes is None:  # sizes the model accepts, not always 8
        source = _fitted(source, sessions.fixed, model)
    return _Plan(list(specs), wanted, fetch, static, sessions, source)


def _shard(source: CalibrationSource, specs: Sequence[InputSpec], batch_range: tuple[int, int]
           ) -> Iterator[dict[str, np.ndarray]]:
    """The batches ``start <= k < stop``: sources with ``batches_from`` (arrays, ``.npy``, image folders)
    start there without reading the earlier ones; others are read from the start and skipped."""
    start, stop = batch_range
    skip_to = getattr(source, "batches_from", None)
    batches = skip_to(specs, start) if callable(skip_to) else itertools.islice(source.batches(specs), start, None)
    return itertools.islice(batches, max(stop - start, 0))


def batch_mode(model: onnx.ModelProto | ModelGraph, source: CalibrationSource, taps: Sequence[str] = (), *,
               threads: int = 1) -> bool:
    """Whether :func:`run_batches` runs the batches at once (True) or a fixed-batch model's samples one at a
    time (False): the check it makes on the first batch, made ahead so that shards of one data set run in
    other processes (``batched=``) all do what one pass would."""
    plan = _plan(model, source, taps, False, threads)
    if plan.sessions.dynamic is None:
        return True
    feeds = next(iter(plan.source.batches(plan.specs)), None)
    return feeds is not None and plan.sessions.batched_ok(feeds, len(next(iter(feeds.values()))) if feeds else 0)


def run_batches(
    model: onnx.ModelProto | ModelGraph,
    source: CalibrationSource,
    taps: Sequence[str] = (),
    *,
    outputs: bool = False,
    desc: str = "calibration",
    threads: int = 1,
    progress: bool = True,
    check_batching: bool = True,
    batch_range: tuple[int, int] | None = None,
    batched: bool | None = None,
) -> Iterator[BatchRun]:
    """Run ``model`` over ``source``, yielding every batch's feeds and the values of ``taps``.

    Args:
        model: the model (not modified); a :class:`ModelGraph` runs weight-fed, without a copy of its
            weights (:mod:`spa.runtime.fed`).
        source: the calibration data.
        taps: tensor names to expose; graph inputs are taken from the feeds.
        outputs: also return the model's own outputs in :attr:`BatchRun.values`.
        desc: progress bar label.
        threads: ONNX Runtime intra-op threads.
        progress: show a progress bar (only ever on a terminal; one bar may be live at a time).
        check_batching: compare a batched run of a fixed-batch model with per-sample runs before
            trusting it; turn off for models whose samples interact (batch-statistics BatchNorm).
        batch_range: run only the batches ``start <= k < stop`` of the source (a shard).
        batched: the outcome of that check decided ahead (:func:`batch_mode`); None: check here.

    Raises:
        CalibrationError: the data does not fit the model or ONNX Runtime rejects it.
    """
    plan = _plan(model, source, taps, outputs, threads)
    sessions, input_names = plan.sessions, {s.name for s in plan.specs}
    total = plan.source.count(plan.specs)
    batches = plan.source.batches(plan.specs) if batch_range is None else _shard(plan.source, plan.specs, batch_range)
    if batch_range is not None:
        total = None
    checked = not check_batching or batched is not None
    if batched is False:
        sessions.dynamic = None
    with _progress(progress) as bar:
        task = bar.add_task(desc, total=total)
        for feeds in batches:
            if sessions.dynamic is not None and not checked:
                checked = True
                if not sessions.batched_ok(feeds, len(next(iter(feeds.values()))) if feeds else 0):
                    log.info("the model does not run batched; calibrating one sample at a time")
                    sessions.dynamic = None
            n, feeds, values = sessions.values(feeds, plan.static)
            got_values = dict(zip(plan.fetch, values))
            got_values.update({t: feeds[t] for t in plan.wanted if t in input_names})
            yield BatchRun(n, feeds, got_values)
            bar.advance(task, n)
