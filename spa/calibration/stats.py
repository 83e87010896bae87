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

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx

from spa.calibration.data import CalibrationError, CalibrationSource
from spa.calibration.runner import run_batches
from spa.rules.views import ConvUnfold, dense_rows

__all__ = ["Accumulator", "ConvUnfold", "FeatureMoments", "SecondMoment", "collect", "dense_rows"]

#: rows·features of one float64 chunk when accumulating XᵀX (about 32 MB)
CHUNK_ELEMENTS = 4_000_000


class Accumulator(Protocol):
    """Consumes one tapped tensor per batch."""

    def update(self, x: np.ndarray) -> None:
        """Add one batch."""


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


def collect(
    model: onnx.ModelProto,
    source: CalibrationSource,
    accumulators: Mapping[str, Sequence[Accumulator]],
    *,
    desc: str = "calibration statistics",
    threads: int = 1,
    check_batching: bool = True,
) -> int:
    """Run ``model`` over ``source`` once, feeding each tapped tensor to its accumulators.

    ``check_batching`` is passed to :func:`~spa.calibration.runner.run_batches`.

    Returns:
        The number of samples seen.
    """
    seen = 0
    for run in run_batches(model, source, list(accumulators), desc=desc, threads=threads,
                           check_batching=check_batching):
        for name, accs in accumulators.items():
            for acc in accs:
                try:
                    acc.update(run.values[name])
                except CalibrationError as exc:
                    raise CalibrationError(f"calibration tensor '{name}': {exc}") from None
        seen += run.samples
    return seen
