"""Latency of ONNX models in ONNX Runtime.

Models are timed in the same process, alternating run by run after a warm-up, so that machine noise
hits all of them alike. CPU uses the CPU execution provider with a stated thread count; CUDA and
TensorRT are used only when a device is really present (the GPU wheel lists them even without one).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import UsageError
from spa.validate.runtime import random_inputs, session

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def cuda_device_present() -> bool:
    """Whether a CUDA device is usable (not merely the CUDA provider compiled in)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")) or bool(
        os.environ.get("SPA_ASSUME_CUDA"))


def resolve_provider(name: str) -> list[str]:
    """Provider list for a name (auto: TensorRT > CUDA > CPU by what is present)."""
    if name == "auto":
        if cuda_device_present():
            chosen = ["CUDAExecutionProvider"]
            if "TensorrtExecutionProvider" in ort.get_available_providers():
                chosen = ["TensorrtExecutionProvider"] + chosen
            return chosen + ["CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    if name not in PROVIDERS:
        raise UsageError(f"unknown provider '{name}'; choose auto, cpu, cuda or tensorrt")
    if name != "cpu" and not cuda_device_present():
        raise UsageError(f"provider '{name}' needs a CUDA GPU and none is present; use --provider cpu")
    chosen = [PROVIDERS[name]] + (["CUDAExecutionProvider"] if name == "tensorrt" else [])
    return chosen if name == "cpu" else chosen + ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one model, in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    p99_ms: float
    runs: int

    def to_json(self) -> dict[str, float]:
        """JSON-serialisable dict."""
        return {k: round(float(v), 5) for k, v in self.__dict__.items()}


def time_models(
    models: list[onnx.ModelProto | str],
    *,
    providers: list[str] | None = None,
    threads: int = 1,
    warmup: int = 10,
    iters: int = 50,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[Timing]:
    """Time several models alternately on the same random inputs."""
    sessions = [session(m, threads=threads, providers=providers) for m in models]
    feeds = random_inputs(sessions[0], seed=seed, shapes=shapes, batch=1)
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(iters):
        for k, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            samples[k].append((time.perf_counter() - t0) * 1e3)
    out = []
    for xs in samples:
        a = np.asarray(xs)
        out.append(Timing(float(np.median(a)), float(a.mean()), float(a.std()), float(np.percentile(a, 90)),
                          float(np.percentile(a, 99)), len(a)))
    return out
