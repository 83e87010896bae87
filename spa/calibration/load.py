"""What the user gave as calibration data (a path, arrays, ``"random"``, a source) turned into a source."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from spa.calibration.data import (
    DEFAULT_BATCH,
    ArraySource,
    CalibrationError,
    CalibrationSource,
    NpySource,
    NpzSource,
    RandomSource,
)
from spa.calibration.images import ImageFolderSource, Preprocess


def load_calibration(
    data: object,
    *,
    samples: int | None = None,
    batch_size: int | None = None,
    preprocess: object | None = None,
    seed: int = 0,
) -> CalibrationSource | None:
    """Turn what the user gave into a calibration source.

    Args:
        data: None; a source (returned with ``samples``/``batch_size`` applied when given); the string
            ``"random"``; a path to a ``.npz``, a ``.npy`` or a folder of PNG/JPEG images; a numpy array
            (single-input models) or a mapping ``{input name: array}``.
        samples: use at most this many samples (default: all of a file, 32 random ones).
        batch_size: samples per ONNX Runtime run (default 16).
        preprocess: image preprocessing (a :class:`~spa.calibration.images.Preprocess` or its string
            form, see :meth:`~spa.calibration.images.Preprocess.parse`); images only.
        seed: seed of random data.

    Raises:
        CalibrationError: unknown format, missing path, bad counts.
    """
    if data is None:
        return None
    batch = batch_size or DEFAULT_BATCH
    if isinstance(data, (str, os.PathLike)) and str(data) == "random":
        return RandomSource(samples=32 if samples is None else samples,
                            batch_size=8 if batch_size is None else batch_size, seed=seed)
    if isinstance(data, np.ndarray):
        return ArraySource({"": data}, samples, batch, "array")
    if isinstance(data, Mapping):
        return ArraySource({str(k): v for k, v in data.items()}, samples, batch, "arrays")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise CalibrationError(f"{path}: no such calibration file or folder")
        if preprocess is not None and not path.is_dir():
            raise CalibrationError(f"{path}: preprocessing options apply to image folders only")
        if path.is_dir():
            pre = Preprocess.parse(preprocess) if isinstance(preprocess, str) else preprocess
            if pre is not None and not isinstance(pre, Preprocess):
                raise CalibrationError(f"preprocess must be a Preprocess or its string form, got {type(pre).__name__}")
            return ImageFolderSource(path, pre or Preprocess(), samples, batch)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return NpzSource(path, samples, batch)
        if suffix == ".npy":
            return NpySource(path, samples, batch)
        raise CalibrationError(
            f"{path}: unknown calibration format '{suffix or path.name}'; use a .npz (one array per input), "
            "a .npy (single-input models) or a folder of PNG/JPEG images"
        )
    if hasattr(data, "batches") and hasattr(data, "count"):
        changes = {k: v for k, v in (("samples", samples), ("batch_size", batch_size)) if v is not None}
        if changes and dataclasses.is_dataclass(data) and not isinstance(data, type):
            return dataclasses.replace(data, **changes)  # type: ignore[return-value]
        return data  # type: ignore[return-value]
    raise CalibrationError(f"cannot use a {type(data).__name__} as calibration data")
