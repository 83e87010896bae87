"""Run models in ONNX Runtime on seeded random inputs and compare outputs.

:func:`random_inputs` makes a feed for every graph input: dynamic dimensions become small concrete
sizes (the first axis ``batch``, others ``dim``, or what ``shapes`` says), floats are standard normal,
integers small and non-negative, booleans fair coins.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import ValidationError
from spa.graph.io import PROTOBUF_LIMIT, model_size_bytes, save_model


def session(model: onnx.ModelProto | str | os.PathLike[str], threads: int = 1,
            providers: list[str] | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]
    try:
        if isinstance(model, onnx.ModelProto):
            if model_size_bytes(model) > PROTOBUF_LIMIT:
                tmp = tempfile.mkdtemp(prefix="spa_")
                path = os.path.join(tmp, "model.onnx")
                save_model(model, path, external_data=True)
                return ort.InferenceSession(path, opts, providers=providers)
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        return ort.InferenceSession(str(model), opts, providers=providers)
    except Exception as exc:
        raise ValidationError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from exc


def input_specs(sess: ort.InferenceSession) -> list[tuple[str, list[object], str]]:
    """(name, shape, type string) of each input."""
    return [(i.name, list(i.shape), i.type) for i in sess.get_inputs()]


def random_inputs(
    sess: ort.InferenceSession,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
    batch: int = 2,
    dim: int = 8,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every input of ``sess``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape, typ in input_specs(sess):
        if shapes and name in shapes:
            concrete = list(shapes[name])
        else:
            concrete = [d if isinstance(d, int) and d >= 0 else (batch if k == 0 else dim)
                        for k, d in enumerate(shape)]
        if "float16" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float16)
        elif "double" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float64)
        elif "float" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float32)
        elif "bool" in typ:
            feeds[name] = np.asarray(rng.random(concrete) < 0.5, dtype=bool)
        elif "int" in typ:
            dt = np.int64 if "int64" in typ else np.int32
            feeds[name] = np.asarray(rng.integers(0, 4, size=concrete), dtype=dt)
        else:
            raise ValidationError(f"input '{name}' has type {typ}; spa cannot make random data for it")
    return feeds


@dataclass(frozen=True)
class OutputDiff:
    """How two runs of one output compare."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable dict."""
        return {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "cosine": self.cosine, "ok": self.ok}


def compare_outputs(names: list[str], a: list[np.ndarray], b: list[np.ndarray],
                    rtol: float, atol: float) -> list[OutputDiff]:
    """Compare two lists of outputs element-wise: ``|a-b| <= atol·scale + rtol·|b|``.

    ``scale`` is ``max(1, max|b|)`` of that output: float32 sums over thousands of terms carry rounding
    errors proportional to the output's magnitude, wherever a single element happens to be near zero.
    """
    diffs = []
    for name, x, y in zip(names, a, b):
        x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x64.shape != y64.shape:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), 0.0, False))
            continue
        d = np.abs(x64 - y64)
        max_abs = float(d.max()) if d.size else 0.0
        max_rel = float((d / np.maximum(np.abs(y64), 1e-12)).max()) if d.size else 0.0
        nx_, ny_ = np.linalg.norm(x64), np.linalg.norm(y64)
        cos = float(np.dot(x64.ravel(), y64.ravel()) / (nx_ * ny_)) if nx_ and ny_ else float(nx_ == ny_)
        scale = max(1.0, float(np.abs(y64).max())) if y64.size else 1.0
        ok = bool(np.all(d <= atol * scale + rtol * np.abs(y64)))
        diffs.append(OutputDiff(name, max_abs, max_rel, cos, ok))
    return diffs
