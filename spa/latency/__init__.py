"""Latency budgets from a per-layer lookup table (``--target-latency``).

* :mod:`spa.latency.layers` — the configuration of each Conv/ConvTranspose/Gemm/MatMul of a model,
  original or pruned by a plan, and the one-node model that benchmarks it;
* :mod:`spa.latency.lut` — the lookup table: micro-benchmarks in ONNX Runtime, cached on disk per
  provider + device;
* :mod:`spa.latency.predict` — a plan's predicted latency fraction, calibrated by measurements;
* :mod:`spa.latency.measure` — a pruned model's measured latency fraction (alternating runs);
* :mod:`spa.latency.solve` — :func:`~spa.latency.solve.solve_latency`, which searches the pruning ratio
  with these;
* :mod:`spa.latency.cost` — the consumer mode ``auto`` of unconstrained pruning: each consumer's copy or
  zero-weight read, timed on tiny models.
"""

from spa.latency import measure
from spa.latency.layers import LayerConfig, benchmark_model, layer_configs
from spa.latency.lut import Device, LatencyTable, default_cache_dir
from spa.latency.predict import LatencyPredictor, fit_sensitivity, predicted_fraction

__all__ = ["Device", "LatencyPredictor", "LatencyTable", "LayerConfig", "benchmark_model", "default_cache_dir",
           "fit_sensitivity", "layer_configs", "measure", "predicted_fraction"]
