"""Fidelity report: how closely a pruned model follows the original on real data.

Both models run over the same data (a calibration source: ``.npz``/``.npy``/image folder/random),
batch by batch; per output the report gives

* ``cosine``: the mean over samples of the cosine similarity between the two outputs of a sample;
* ``rel_l2``: ``‖pruned − original‖ / ‖original‖`` over the whole data set;
* ``top1_agreement``: for 2-D ``[N, classes]`` outputs, the fraction of samples whose arg-max agree
  (None for other outputs).

>>> _cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [1.0, -1.0]])).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from spa.calibration.data import CalibrationSource
from spa.calibration.load import load_calibration
from spa.calibration.runner import run_batches
from spa.errors import ValidationError
from spa.graph.io import load_model

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both = (na > 0) & (nb > 0)
    return np.where(both, dot / np.where(both, na * nb, 1.0), (na == nb).astype(np.float64))


@dataclass
class _Acc:
    cos_sum: float = 0.0
    diff_sq: float = 0.0
    ref_sq: float = 0.0
    agree: int = 0
    samples: int = 0
    classes: bool = True
    shape_error: str | None = None

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            self.shape_error = f"shape {list(got.shape)} differs from the original's {list(ref.shape)}"
            return
        if ref.ndim == 0 or not ref.size:
            return
        r, g = ref.astype(np.float64), got.astype(np.float64)
        self.cos_sum += float(_cosines(r, g).sum())
        self.diff_sq += float(np.sum((r - g) ** 2))
        self.ref_sq += float(np.sum(r * r))
        self.samples += len(r)
        self.classes = self.classes and ref.ndim == 2 and ref.shape[1] > 1
        if self.classes:
            self.agree += int(np.sum(np.argmax(r, axis=1) == np.argmax(g, axis=1)))

    def to_json(self) -> dict[str, object]:
        if self.shape_error:
            return {"error": self.shape_error}
        n = max(self.samples, 1)
        rel = float(np.sqrt(self.diff_sq / self.ref_sq)) if self.ref_sq > 0 else float(self.diff_sq > 0)
        return {"cosine": self.cos_sum / n, "rel_l2": rel,
                "top1_agreement": (self.agree / n) if self.classes and self.samples else None}


def fidelity(
    original: ModelLike,
    pruned: ModelLike,
    data: object,
    *,
    samples: int | None = None,
    batch_size: int | None = None,
    preprocess: object | None = None,
    threads: int = 1,
) -> dict[str, object]:
    """Compare ``pruned`` with ``original`` on ``data`` (see :func:`~spa.calibration.load_calibration`).

    Returns:
        ``{"data": description, "samples": n, "outputs": {name: {cosine, rel_l2, top1_agreement}}}``.

    Raises:
        ValidationError: the models' outputs differ in name.
        CalibrationError: the data does not fit the model.
    """
    src: CalibrationSource | None = load_calibration(data, samples=samples, batch_size=batch_size,
                                                     preprocess=preprocess)
    if src is None:
        raise ValidationError("fidelity needs data: give an evaluation set (--eval) or calibration data")
    ref_model = original if isinstance(original, onnx.ModelProto) else load_model(original)
    new_model = pruned if isinstance(pruned, onnx.ModelProto) else load_model(pruned)
    names = [o.name for o in ref_model.graph.output]
    if names != [o.name for o in new_model.graph.output]:
        raise ValidationError(f"output names differ: {names} vs {[o.name for o in new_model.graph.output]}")
    accs = {n: _Acc() for n in names}
    seen = 0
    runs = zip(run_batches(ref_model, src, outputs=True, desc="fidelity", threads=threads),
               run_batches(new_model, src, outputs=True, threads=threads, progress=False))
    for a, b in runs:
        for n in names:
            accs[n].update(np.asarray(a.values[n]), np.asarray(b.values[n]))
        seen += a.samples
    return {"data": src.describe(), "samples": seen, "outputs": {n: acc.to_json() for n, acc in accs.items()}}
