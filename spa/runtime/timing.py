"""Timing ONNX models in ONNX Runtime: io-binding runners and alternating runs.

Models are timed in the same process, alternating run by run after a warm-up (the order rotates every
round), so machine noise hits all of them alike. Every run goes through io-binding: inputs are bound
once as OrtValues on the provider's device (``cuda`` for CUDA/TensorRT) and outputs stay there, so
host↔device copies are not timed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from spa.errors import ValidationError
from spa.runtime.feeds import input_shapes, make_feeds
from spa.runtime.session import ModelLike, session

__all__ = ["Runner", "Timing", "alternate", "time_models", "time_runners"]


class Runner:
    """One session with its inputs bound on ``device`` (``cpu`` or ``cuda``); calling it runs once.

    Construction runs the model once, so a model that cannot run on these inputs fails here with a
    :class:`~spa.errors.ValidationError` naming it, not in the middle of the timing loop.
    """

    def __init__(self, sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], device: str = "cpu",
                 name: str = "model") -> None:
        self.sess = sess
        self.binding = sess.io_binding()
        # keep the arrays and OrtValues alive: a CPU OrtValue shares the numpy buffer
        self._arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        self._values = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in self._arrays.items()}
        for key, value in self._values.items():
            self.binding.bind_ortvalue_input(key, value)
        for out in sess.get_outputs():
            self.binding.bind_output(out.name, device)
        try:
            self()
        except Exception as exc:  # ORT raises its own exception types
            shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in self._arrays.items())
            raise ValidationError(f"{name}: ONNX Runtime cannot run it on inputs {shapes}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc

    def __call__(self) -> None:
        # Run() synchronises the provider's stream before returning, so the time covers the GPU work
        self.sess.run_with_iobinding(self.binding)


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one model, in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    runs: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Timing:
        """Statistics of a list of run times."""
        a = np.asarray(samples_ms, dtype=np.float64)
        return cls(float(np.median(a)), float(a.mean()), float(a.std()), float(np.percentile(a, 90)),
                   float(np.percentile(a, 99)), float(a.min()), len(a))

    def to_json(self) -> dict[str, float]:
        """JSON-serialisable dict (times rounded to 0.1 µs)."""
        return {k: (int(v) if k == "runs" else round(float(v), 4)) for k, v in self.__dict__.items()}


def alternate(runners: Sequence[Runner], *, warmup: int = 20, iters: int = 200) -> list[list[float]]:
    """Warm each runner up, then run ``iters`` rounds, each running every runner once in a rotating order;
    ``samples[k][i]`` is runner ``k``'s milliseconds in round ``i``."""
    for r in runners:
        for _ in range(warmup):
            r()
    samples: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    clock = time.perf_counter
    for i in range(iters):
        for j in range(n):
            k = (i + j) % n
            t0 = clock()
            runners[k]()
            samples[k].append((clock() - t0) * 1e3)
    return samples


def time_runners(runners: Sequence[Runner], *, warmup: int = 20, iters: int = 200) -> list[Timing]:
    """Warm each runner up, then time ``iters`` alternating rounds (see :func:`alternate`)."""
    return [Timing.of(xs) for xs in alternate(runners, warmup=warmup, iters=iters)]


def time_models(
    models: Sequence[ModelLike],
    *,
    providers: Sequence[str] | None = None,
    threads: int = 1,
    warmup: int = 20,
    iters: int = 200,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
) -> list[Timing]:
    """Time several models alternately on the same seeded random inputs (see :mod:`spa.runtime.feeds`)."""
    providers = list(providers or ["CPUExecutionProvider"])
    device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
    runners = []
    for m in models:
        sess = session(m, providers, threads=threads)
        name = m if isinstance(m, (str, os.PathLike)) else "model"
        feeds = make_feeds(sess, input_shapes(sess, str(name), batch=batch, shapes=shapes), seed)
        runners.append(Runner(sess, feeds, device, str(name)))
    return time_runners(runners, warmup=warmup, iters=iters)
