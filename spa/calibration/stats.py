"""Streaming statistics of intermediate tensors, accumulated in float64.

* :class:`FeatureMoments` — per element of one axis: count, Σx, Σx² (mean, variance, RMS), reduced
  over every other axis (batch and spatial positions).
* :class:`SecondMoment` — ``H = XᵀX / n`` of the rows of a 2-D view of the tensor: the features of a
  dense layer's input, or the im2col unfolding of a convolution's input (:class:`ConvUnfold`, one row
  per output position, columns ordered channel-major then kernel taps, matching a Conv weight
  ``[M, C, k...]`` reshaped to ``[M, C·Πk]``).

:func:`collect` runs the model once over the calibration data and feeds every tap's value to its
accumulators, batch by batch: memory is bounded by the statistics, not by the data set.

>>> u = ConvUnfold(kernel=(2,), strides=(1,), dilations=(1,), pads=(0, 0))
>>> u.rows(np.arange(6.0).reshape(1, 2, 3)).tolist()   # 1 sample, 2 channels, length 3
[[0.0, 1.0, 3.0, 4.0], [1.0, 2.0, 4.0, 5.0]]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx

from spa.calibration.data import CalibrationError, CalibrationSource
from spa.calibration.runner import batch_mode, run_batches
from spa.executors import Executor, one_blas_thread
from spa.graph.model import ModelGraph
from spa.rules.views import ConvUnfold, dense_rows
from spa.runtime.feeds import input_specs

__all__ = ["Accumulator", "ConvUnfold", "FeatureMoments", "SecondMoment", "collect", "dense_rows"]

log = logging.getLogger(__name__)

#: rows·features of one float64 chunk when accumulating XᵀX (about 32 MB)
CHUNK_ELEMENTS = 4_000_000
#: batches per shard: the unit of the fixed-order reduction (and of a task with an executor)
SHARD_BATCHES = 8


class Accumulator(Protocol):
    """Consumes one tapped tensor per batch; additive, so partial sums over shards of the data merge."""

    def update(self, x: np.ndarray) -> None:
        """Add one batch."""

    def fresh(self) -> Accumulator:
        """An empty accumulator of the same statistics."""

    def merge(self, other: Accumulator) -> None:
        """Add another accumulator's sums (from :meth:`fresh`) to this one's."""


class FeatureMoments:
    """Count, Σx and Σx² per element of ``axis`` over every other axis."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.count = 0
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x), self.axis, -1)
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        s, q = x.sum(axis=0), np.einsum("ij,ij->j", x, x)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.count += x.shape[0]

    def fresh(self) -> FeatureMoments:
        """Empty, same axis."""
        return FeatureMoments(self.axis)

    def merge(self, other: Accumulator) -> None:
        """``count``, ``Σx``, ``Σx²`` added."""
        if not isinstance(other, FeatureMoments) or other.sum is None or other.sumsq is None:
            return
        self.sum = other.sum.copy() if self.sum is None else self.sum + other.sum
        self.sumsq = other.sumsq.copy() if self.sumsq is None else self.sumsq + other.sumsq
        self.count += other.count

    @property
    def mean(self) -> np.ndarray:
        """Per-element mean."""
        if self.sum is None:
            raise _no_data()
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        """Per-element (population) variance."""
        if self.sumsq is None:
            raise _no_data()
        return np.maximum(self.sumsq / max(self.count, 1) - self.mean**2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        """Per-element root mean square (the Wanda ‖x‖ up to the constant √n)."""
        if self.sumsq is None:
            raise _no_data()
        return np.sqrt(self.sumsq / max(self.count, 1))


def _no_data() -> CalibrationError:
    return CalibrationError("no calibration batch reached this tensor, so it has no statistics: check that the "
                            "calibration data has at least one sample for every model input")


class SecondMoment:
    """``XᵀX / n`` (and the column means) of the rows ``to_rows(x)`` of every batch.

    With ``groups > 1`` the features split into that many equal contiguous blocks (the groups of a
    grouped conv) and only the diagonal blocks of ``XᵀX`` are accumulated. With ``max_rows`` a batch
    that unfolds to more rows contributes a seeded uniform sample of ``max_rows`` of them (an unbiased
    estimate of the same ``XᵀX / n`` at a fraction of the cost; synthetic statistics use it).
    """

    def __init__(self, to_rows: Callable[[np.ndarray], np.ndarray], features: int, groups: int = 1,
                 max_rows: int | None = None) -> None:
        if features % groups:
            raise ValueError(f"{features} features do not split into {groups} groups")
        self.to_rows = to_rows
        self.features = features
        self.groups = groups
        self.max_rows = max_rows
        self._rng = np.random.default_rng(0)
        size = features // groups
        self.xtx = np.zeros((groups, size, size), dtype=np.float64)
        self.colsum = np.zeros(features, dtype=np.float64)
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not len(x):
            return
        per_sample = max(self.to_rows(x[:1]).shape[0], 1) * self.features
        step = max(1, CHUNK_ELEMENTS // per_sample)
        row_chunk = max(1, CHUNK_ELEMENTS // self.features)
        size = self.features // self.groups
        for i in range(0, len(x), step):
            rows = self._sampled(self.to_rows(x[i:i + step]), len(x[i:i + step]) / len(x))
            if rows.ndim != 2 or rows.shape[1] != self.features:
                raise CalibrationError(
                    f"it has {rows.shape[-1] if rows.ndim else 0} features at run time where the model's declared "
                    f"shapes give {self.features}: the shapes are inconsistent; re-export the model or drop its "
                    "value_info")
            for j in range(0, rows.shape[0], row_chunk):
                r = rows[j:j + row_chunk].astype(np.float64)
                for g in range(self.groups):
                    rg = r[:, g * size:(g + 1) * size]
                    self.xtx[g] += rg.T @ rg
                self.colsum += r.sum(axis=0)
                self.count += r.shape[0]

    def fresh(self) -> SecondMoment:
        """Empty, same unfolding, features and groups."""
        return SecondMoment(self.to_rows, self.features, self.groups, self.max_rows)

    def merge(self, other: Accumulator) -> None:
        """``XᵀX``, the column sums and the row count added."""
        if isinstance(other, SecondMoment):
            self.xtx += other.xtx
            self.colsum += other.colsum
            self.count += other.count
    def _sampled(self, rows: np.ndarray, share: float) -> np.ndarray:
        """``rows`` (a ``share`` of the batch's), or a seeded sample of ``⌈share · max_rows⌉`` of them."""
        if self.max_rows is None or rows.ndim != 2:
            return rows
        keep = max(1, math.ceil(share * self.max_rows))
        if rows.shape[0] <= keep:
            return rows
        return rows[np.sort(self._rng.choice(rows.shape[0], keep, replace=False))]

    def block(self, g: int) -> np.ndarray:
        """Diagonal block ``g`` of ``H = XᵀX / n`` (float64, symmetric)."""
        h = self.xtx[g] / max(self.count, 1)
        return (h + h.T) / 2

    @property
    def matrix(self) -> np.ndarray:
        """``H = XᵀX / n`` (block-diagonal when ``groups > 1``)."""
        if self.groups == 1:
            return self.block(0)
        size = self.features // self.groups
        h = np.zeros((self.features, self.features))
        for g in range(self.groups):
            h[g * size:(g + 1) * size, g * size:(g + 1) * size] = self.block(g)
        return h

    @property
    def mean(self) -> np.ndarray:
        """Column means of X."""
        return self.colsum / max(self.count, 1)


Accumulators = Mapping[str, Sequence[Accumulator]]


def _fresh(accumulators: Accumulators) -> dict[str, list[Accumulator]]:
    return {name: [acc.fresh() for acc in accs] for name, accs in accumulators.items()}


def _merge(into: Accumulators, part: Accumulators) -> None:
    for name, accs in into.items():
        for acc, other in zip(accs, part[name]):
            acc.merge(other)


def _update(accumulators: Accumulators, values: Mapping[str, np.ndarray]) -> None:
    for name, accs in accumulators.items():
        for acc in accs:
            try:
                acc.update(values[name])
            except CalibrationError as exc:
                raise CalibrationError(f"calibration tensor '{name}': {exc}") from None


def collect(
    model: onnx.ModelProto | ModelGraph,
    source: CalibrationSource,
    accumulators: Accumulators,
    *,
    desc: str = "calibration statistics",
    threads: int = 1,
    check_batching: bool = True,
    executor: Executor | None = None,
) -> int:
    """Run ``model`` over ``source`` once, feeding each tapped tensor to its accumulators.

    The sums are reduced in a fixed order, whoever computes them: the batches are cut into shards of
    :data:`SHARD_BATCHES`, each shard's sums start from zero and are added batch by batch, and the shard
    sums are added to the accumulators in shard order, ``S = ((S₀ + s₁) + s₂) + …`` in float64; every
    product runs on one BLAS thread (:func:`one_blas_thread`). With an
    ``executor`` of several workers the shards run as its tasks (the model and the empty accumulators
    shipped once); the result is bit-identical to the single pass.

    ``check_batching`` is passed to :func:`~spa.calibration.runner.run_batches`. A :class:`ModelGraph` runs
    weight-fed (no copy of its weights) in this process, in one pass.

    Returns:
        The number of samples seen.
    """
    if executor is not None and executor.workers > 1 and isinstance(model, onnx.ModelProto):
        sharded = _collect_sharded(model, source, accumulators, threads, check_batching, executor)
        if sharded is not None:
            return sharded
    seen, in_shard = 0, 0
    part = _fresh(accumulators)
    for run in run_batches(model, source, list(accumulators), desc=desc, threads=threads,
                           check_batching=check_batching):
        with one_blas_thread():
            _update(part, run.values)
        seen += run.samples
        in_shard += 1
        if in_shard == SHARD_BATCHES:
            _merge(accumulators, part)
            part, in_shard = _fresh(accumulators), 0
    if in_shard:
        _merge(accumulators, part)
    return seen


@dataclass(frozen=True)
class _ShardJob:
    """What every shard task needs: shipped once."""

    model: bytes
    source: CalibrationSource
    empty: dict[str, list[Accumulator]]
    threads: int
    check_batching: bool
    batched: bool | None


def _collect_shard(job: _ShardJob, batch_range: tuple[int, int]) -> tuple[dict[str, list[Accumulator]], int]:
    """One shard's sums (from zero) and sample count: the task of :func:`_collect_sharded`."""
    part = _fresh(job.empty)
    seen = 0
    for run in run_batches(onnx.load_from_string(job.model), job.source, list(part), threads=job.threads,
                           progress=False, check_batching=job.check_batching, batch_range=batch_range,
                           batched=job.batched):
        with one_blas_thread():
            _update(part, run.values)
        seen += run.samples
    return part, seen


def _collect_sharded(model: onnx.ModelProto, source: CalibrationSource, accumulators: Accumulators, threads: int,
                     check_batching: bool, executor: Executor) -> int | None:
    """The shards of :func:`collect` as ``executor`` tasks, merged in shard order; None when the data's size
    is unknown, it is one shard, or the model does not serialise (over 2 GB): then one pass here."""
    count = source.count(input_specs(model))
    if count is None or count <= SHARD_BATCHES * source.batch_size:
        return None
    try:
        blob = model.SerializeToString()
    except ValueError:
        log.info("the model is over 2 GB: calibration statistics in this process")
        return None
    batches = -(-count // source.batch_size)
    shards = [(k, min(k + SHARD_BATCHES, batches)) for k in range(0, batches, SHARD_BATCHES)]
    batched = batch_mode(model, source, list(accumulators), threads=threads) if check_batching else None
    job = _ShardJob(blob, source, _fresh(accumulators), threads, check_batching, batched)
    log.info("calibration statistics: %d shards on %s (%d workers)", len(shards), executor.name, executor.workers)
    seen = 0
    for part, n in executor.map(_collect_shard, shards, shared=job):
        _merge(accumulators, part)
        seen += n
    return seen
