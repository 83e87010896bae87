"""Calibration data and the statistics collected from it.

* :mod:`~spa.calibration.data` — sources: ``.npz`` / ``.npy`` files (streamed), arrays, seeded random
  inputs;
* :mod:`~spa.calibration.images` — folders of PNG/JPEG images with preprocessing;
* :mod:`~spa.calibration.load` — :func:`load_calibration`, which resolves what the user gave into a source;
* :mod:`~spa.calibration.runner` — ONNX Runtime runs (sessions from :mod:`spa.runtime`) with intermediate tensors
  exposed as outputs;
* :mod:`~spa.calibration.stats` — streaming float64 accumulators (per-feature moments, ``XᵀX``
  with im2col unfolding for convolutions);
* :mod:`~spa.calibration.synthetic` — a model copy whose BatchNorms use batch statistics, so random
  inputs give activations with the trained per-channel moments (data-free statistics).
"""

from spa.calibration.data import (
    ArraySource,
    CalibrationError,
    CalibrationSource,
    NpySource,
    NpzSource,
    RandomSource,
)
from spa.calibration.images import ImageFolderSource, Preprocess
from spa.calibration.load import load_calibration
from spa.calibration.runner import BatchRun, run_batches
from spa.calibration.stats import ConvUnfold, FeatureMoments, SecondMoment, collect, dense_rows
from spa.calibration.synthetic import batch_norm_model

__all__ = [
    "ArraySource", "BatchRun", "CalibrationError", "CalibrationSource", "ConvUnfold", "FeatureMoments",
    "batch_norm_model",
    "ImageFolderSource", "NpySource", "NpzSource", "Preprocess", "RandomSource", "SecondMoment",
    "collect", "dense_rows", "load_calibration", "run_batches",
]
