"""How two runs of the same outputs compare, element by element (the mask oracle and ``tools/fuzz.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
