"""Concrete input shapes and seeded random inputs for a benchmark run.

Every input gets a concrete shape: ``--shape NAME=...`` when given, else the declared shape with
dynamic dimensions set to 1 (the first) or 8 (the others); a requested batch size then replaces the
first dimension. A model whose first dimension is static and differs from the requested batch cannot
be timed at that batch: :func:`input_shapes` says so instead of feeding it a wrong shape.

>>> _concrete("m.onnx", "x", ["N", 3, 8, 8], None, 4)
(4, 3, 8, 8)
>>> _concrete("m.onnx", "x", [1, 3, 8, 8], None, None)
(1, 3, 8, 8)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from spa.errors import UsageError
from spa.validate.runtime import random_inputs

Shapes = dict[str, tuple[int, ...]]
DYNAMIC_DIM = 8


def _concrete(model: str, name: str, declared: Sequence[object], given: tuple[int, ...] | None,
              batch: int | None) -> tuple[int, ...]:
    if given is not None:
        if len(given) != len(declared):
            raise UsageError(f"--shape {name}: {len(given)} dimensions given, {model} declares {len(declared)}")
        dims = list(given)
        for k, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d > 0 and d != g and not (k == 0 and batch is not None):
                raise UsageError(f"--shape {name}: dimension {k} of {model}'s input is static ({d}), got {g}")
    else:
        dims = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else DYNAMIC_DIM)
                for k, d in enumerate(declared)]
    if batch is not None and dims:
        first = declared[0] if declared else None
        if isinstance(first, int) and first > 0 and first != batch:
            raise UsageError(f"{model}: input '{name}' has a static batch dimension of {first}, so it cannot run "
                             f"with batch {batch}; re-export it with a dynamic first dimension or use --batch {first}")
        dims[0] = batch
    return tuple(int(d) for d in dims)


def input_shapes(sess: ort.InferenceSession, model: str, *, batch: int | None = None,
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> Shapes:
    """Concrete shape of every input of ``sess`` (``model`` names it in errors).

    Raises:
        UsageError: ``shapes`` names an unknown input or has the wrong rank; a static batch differs
            from ``batch``.
    """
    names = [i.name for i in sess.get_inputs()]
    unknown = sorted(set(shapes or {}) - set(names))
    if unknown:
        raise UsageError(f"--shape {unknown[0]}: {model} has no such input (inputs: {', '.join(names)})")
    return {i.name: _concrete(model, i.name, list(i.shape), (shapes or {}).get(i.name), batch)
            for i in sess.get_inputs()}


def batch_of(shapes: Shapes) -> int:
    """The batch size of a feed: the first dimension of the first input that has one (else 1)."""
    return next((s[0] for s in shapes.values() if s), 1)


def make_feeds(sess: ort.InferenceSession, shapes: Shapes, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of the given shapes (the same seed gives the same data to every model)."""
    return random_inputs(sess, seed=seed, shapes=shapes)
