"""Calibration samples kept in memory for repeated runs, and the output distortion measure.

>>> ref = [np.array([[1.0, 2.0], [3.0, 4.0]])]
>>> distortion(ref, ref)
0.0
>>> round(distortion(ref, [np.array([[1.0, 2.0], [3.0, 5.0]])]), 3)
0.25
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from spa.calibration.data import ArraySource, CalibrationError, CalibrationSource
from spa.calibration.runner import run_batches
from spa.runtime.feeds import input_specs

#: calibration samples the probes and re-alignment use by default
PROBE_SAMPLES = 64


@dataclass
class ProbeData:
    """Up to ``samples`` calibration samples in memory, and a hash of them (cache key)."""

    source: ArraySource
    samples: int
    digest: str
    #: the original model's outputs on these samples, once a probe run has computed them (reused for the
    #: report's measured distortion: a large model is not exported and run again for it)
    reference: list[np.ndarray] | None = None


def probe_data(model: onnx.ModelProto, source: CalibrationSource, samples: int = PROBE_SAMPLES,
               batch_size: int = 16) -> ProbeData:
    """The first ``samples`` samples of ``source`` as an in-memory source (read once).

    Raises:
        CalibrationError: the source yields no sample.
    """
    specs = input_specs(model)
    parts: dict[str, list[np.ndarray]] = {}
    n = 0
    for feeds in source.batches(specs):
        take = min(samples - n, len(next(iter(feeds.values()))) if feeds else 0)
        for k, v in feeds.items():
            parts.setdefault(k, []).append(np.asarray(v[:take]))
        n += take
        if n >= samples:
            break
    if not n:
        raise CalibrationError(f"the calibration data ({source.describe()}) has no sample")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return ProbeData(ArraySource(arrays, None, batch_size, f"{source.describe()} (first {n})"), n, h.hexdigest()[:16])


@dataclass(frozen=True)
class Delta:
    """A model sent as the difference from a base model the receiver already has: the model with the
    initializers equal to the base's left out (``shared``), and the order of all its initializers."""

    model: bytes
    order: tuple[str, ...]
    shared: frozenset[str]

    @classmethod
    def of(cls, model: onnx.ModelProto, base: Mapping[str, bytes]) -> Delta:
        """``model`` less the initializers whose serialisation equals ``base[name]``."""
        stripped = onnx.ModelProto()
        stripped.CopyFrom(model)
        inits = list(stripped.graph.initializer)
        shared = frozenset(i.name for i in inits if base.get(i.name) == i.SerializeToString())
        del stripped.graph.initializer[:]
        stripped.graph.initializer.extend(i for i in inits if i.name not in shared)
        return cls(stripped.SerializeToString(), tuple(i.name for i in inits), shared)

    def restore(self, base: bytes) -> onnx.ModelProto:
        """The model again, the left-out initializers taken from the serialised ``base`` (same order)."""
        model = onnx.load_from_string(self.model)
        by_name = {i.name: i for i in model.graph.initializer}
        if self.shared:
            by_name |= {i.name: i for i in onnx.load_from_string(base).graph.initializer if i.name in self.shared}
        inits = [by_name[n] for n in self.order]
        del model.graph.initializer[:]
        model.graph.initializer.extend(inits)
        return model


def outputs(model: onnx.ModelProto, data: ProbeData, threads: int = 1) -> list[np.ndarray]:
    """The model's outputs over the probe samples (concatenated along the batch)."""
    names = [o.name for o in model.graph.output]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for run in run_batches(model, data.source, outputs=True, progress=False, threads=threads):
        for n in names:
            got[n].append(np.asarray(run.values[n], dtype=np.float64))
    return [np.concatenate(v) if v and np.ndim(v[0]) else v[0] for v in got.values()]


def distortion(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Output distortion: per output, ``Σ(y - y₀)² / Σ(y₀ - ȳ₀)²`` (ȳ₀ the mean over the batch), averaged."""
    values = []
    for r, g in zip(reference, got):
        r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        if r.shape != g.shape or not r.size:
            continue
        spread = float(np.sum(np.square(r - r.mean(axis=0, keepdims=True)))) if r.ndim else 0.0
        err = float(np.sum(np.square(g - r)))
        values.append(err / spread if spread > 1e-12 else err / max(float(np.sum(np.square(r))), 1e-12))
    return float(np.mean(values)) if values else 0.0


def agree(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    """The same outputs: shapes equal, values within float32 rounding of the largest (rtol 1e-4, atol
    1e-5 · max(1, max|a|))."""
    return len(a) == len(b) and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=1e-4, atol=1e-5 * max(1.0, float(np.max(np.abs(x)))))
        for x, y in zip(a, b))
