"""Keeping the task without training: statistics re-alignment, sensitivity-allocated budgets.

* :mod:`spa.quality.reconstruct` — sequential reconstruction: every layer that reads pruned channels
  re-solved (ridge least squares) against the original's outputs given the pruned model's own inputs,
  in topological order;
* :mod:`spa.quality.realign` — after pruning, match each compensated layer's output mean (and variance)
  per channel to the original model's on calibration data, folded into its weights and bias;
* :mod:`spa.quality.sensitivity` — each group's output distortion when pruned alone at a few levels
  (masked twins run in ONNX Runtime, cached per model + data), and a greedy allocation of a MACs /
  parameter budget on marginal damage per MAC.

Both return weight updates / plans the surgery applies to the pruned model *and* its masked twin, so
the mask oracle holds.
"""

from spa.quality.probe import ProbeData, distortion, probe_data
from spa.quality.realign import realign
from spa.quality.reconstruct import reconstruct
from spa.quality.sensitivity import Allocation, allocate, sensitivity_curves

__all__ = ["Allocation", "ProbeData", "allocate", "distortion", "probe_data", "realign", "reconstruct",
           "sensitivity_curves"]
