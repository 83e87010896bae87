"""A folder of PNG/JPEG images as calibration data (read with Pillow, one batch at a time).

Files are taken in sorted path order (sub-folders included), the first ``samples`` of them. Each image
is converted to RGB (or grayscale for one-channel inputs), resized to the model input's spatial size
(or :attr:`Preprocess.size`), scaled, normalised with ``(x·scale − mean) / std`` per channel, put in
the channel order (RGB/BGR) and layout (NCHW/NHWC) the model expects. Layout ``None`` infers it from
the input shape: NCHW when axis 1 has 1 or 3 channels, NHWC when the last axis does.

>>> Preprocess.parse("size=32x48,mean=0.5,std=0.25,layout=nhwc,order=bgr")
Preprocess(size=(32, 48), mean=(0.5,), std=(0.25,), scale=0.00392156862745098, layout='NHWC', order='BGR')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spa.calibration.data import DEFAULT_BATCH, CalibrationError, _check_counts
from spa.runtime.feeds import InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Preprocess:
    """How images become model inputs.

    Attributes:
        size: (height, width) to resize to; None = the model input's static spatial size.
        mean, std: per-channel (or one for all) normalisation after scaling, in the model's order.
        scale: multiplies the 0..255 pixel values first (default 1/255).
        layout: "NCHW", "NHWC" or None (inferred from the input shape).
        order: "RGB" or "BGR".
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    layout: str | None = None
    order: str = "RGB"

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in ("NCHW", "NHWC"):
            raise CalibrationError(f"preprocess layout must be NCHW or NHWC, got {self.layout!r}")
        if self.order not in ("RGB", "BGR"):
            raise CalibrationError(f"preprocess channel order must be RGB or BGR, got {self.order!r}")
        if any(s == 0 for s in self.std):
            raise CalibrationError("preprocess std must not be 0")

    @classmethod
    def parse(cls, spec: str) -> Preprocess:
        """Parse ``key=value`` pairs separated by commas; lists use ``/``.

        Keys: ``size`` (HxW), ``mean``, ``std`` (e.g. ``0.485/0.456/0.406``), ``scale``,
        ``layout`` (nchw|nhwc), ``order`` (rgb|bgr).

        Raises:
            CalibrationError: unknown key or malformed value.
        """
        kw: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            try:
                if not sep:
                    raise ValueError("expected key=value")
                if key == "size":
                    h, w = (int(v) for v in value.lower().split("x"))
                    kw["size"] = (h, w)
                elif key in ("mean", "std"):
                    kw[key] = tuple(float(v) for v in value.split("/"))
                elif key == "scale":
                    kw["scale"] = float(value)
                elif key in ("layout", "order"):
                    kw[key] = value.strip().upper()
                else:
                    raise ValueError("unknown key; use size, mean, std, scale, layout, order")
            except ValueError as exc:
                raise CalibrationError(f"preprocess option '{part}': {exc}") from None
        return cls(**kw)  # type: ignore[arg-type]


def _pillow():  # type: ignore[no-untyped-def]
    try:
        from PIL import Image  # optional extra (pillow)
    except ImportError:
        raise CalibrationError(
            "reading calibration images needs Pillow: pip install pillow (or give a .npz/.npy instead)"
        ) from None
    return Image


def _layout(spec: InputSpec, pre: Preprocess) -> tuple[str, int, tuple[int, int] | None]:
    """(layout, channels, static (H, W) or None) of an image input."""
    shape = spec.shape
    if len(shape) != 4:
        raise CalibrationError(f"input '{spec.name}' has rank {len(shape)}; image folders feed 4-D image inputs")
    layout = pre.layout
    if layout is None:
        if shape[1] in (1, 3):
            layout = "NCHW"
        elif shape[3] in (1, 3):
            layout = "NHWC"
        else:
            raise CalibrationError(
                f"input '{spec.name}' shape {list(shape)}: cannot tell NCHW from NHWC; set layout=nchw|nhwc"
            )
    c_axis, hw = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    channels = shape[c_axis]
    if channels not in (1, 3):
        raise CalibrationError(f"input '{spec.name}' has {channels} channels on its {layout} channel axis; "
                               "images give 1 (grayscale) or 3 (colour)")
    h, w = shape[hw[0]], shape[hw[1]]
    static = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    return layout, int(channels), static


@dataclass
class ImageFolderSource:
    """PNG/JPEG images under a folder, preprocessed for a single-input image model."""

    path: Path
    preprocess: Preprocess = Preprocess()
    samples: int | None = None
    batch_size: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        _check_counts(self.samples, self.batch_size)
        self.path = Path(self.path)
        self._files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._files:
            raise CalibrationError(f"{self.path}: no PNG or JPEG images in this folder")

    def describe(self) -> str:
        return f"{self.path} ({len(self._files)} images)"

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        n = len(self._files)
        return min(n, self.samples) if self.samples else n

    def _load(self, file: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
        image_mod = _pillow()
        try:
            with image_mod.open(file) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), image_mod.BILINEAR)
                arr = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{file}: cannot read this image ({exc})") from None
        arr = arr.reshape(size[0], size[1], channels)
        if self.preprocess.order == "BGR" and channels == 3:
            arr = arr[..., ::-1]
        pre = self.preprocess
        mean = np.asarray(pre.mean, dtype=np.float32)
        std = np.asarray(pre.std, dtype=np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise CalibrationError(f"preprocess mean/std need 1 or {channels} values")
        return (arr * np.float32(pre.scale) - mean) / std  # H, W, C

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        return self.batches_from(inputs, 0)

    def batches_from(self, inputs: Sequence[InputSpec], first: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from batch ``first`` on, the earlier images not decoded (a shard of ``collect``)."""
        _pillow()
        if len(inputs) != 1:
            raise CalibrationError(f"{self.path}: image folders feed single-input models only; this model has "
                                   f"inputs {', '.join(s.name for s in inputs)}")
        spec = inputs[0]
        layout, channels, static = _layout(spec, self.preprocess)
        size = self.preprocess.size or static
        if size is None:
            raise CalibrationError(f"input '{spec.name}' has a dynamic image size; set size=HxW")
        if static is not None and size != static:
            raise CalibrationError(f"preprocess size {size[0]}x{size[1]} differs from input '{spec.name}' "
                                   f"size {static[0]}x{static[1]}")
        files = self._files[: self.count(inputs)]
        for start in range(first * self.batch_size, len(files), self.batch_size):
            batch = np.stack([self._load(f, channels, size) for f in files[start:start + self.batch_size]])
            if layout == "NCHW":
                batch = batch.transpose(0, 3, 1, 2)
            yield {spec.name: np.ascontiguousarray(batch, dtype=spec.dtype)}
