"""Weight-fed models: a graph's float weights as graph inputs, fed at run time.

ONNX Runtime copies every initializer of a model it loads (from the serialised bytes, then into its own
arena, and again when it pre-packs a MatMul/Conv weight), so a session costs several times the model's
size. A *weight-fed* copy turns every float constant of at least :data:`MIN_FED` elements into a graph
input; the session holds no weights, and each run feeds the original arrays — zero-copy views of the
loaded or memory-mapped values (ONNX Runtime reads CPU numpy inputs in place). The outputs are the
model's, up to the float rounding of optimisations that need constant weights (Conv+BatchNorm fusion).

>>> MIN_FED
16
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import ModelGraph

#: float initializers with at least this many elements are fed (smaller ones, e.g. Resize scales or a
#: Clip bound, stay constants: some kernels need them at load time)
MIN_FED = 16


def fed_kind(t: gs.Constant) -> bool:
    """A float constant of at least :data:`MIN_FED` elements and rank >= 1."""
    shape = t.shape if t.shape is not None else ()
    return np.dtype(t.dtype).kind == "f" and int(np.prod(shape, dtype=np.int64)) >= MIN_FED and len(shape) >= 1


def weight_fed(mg: ModelGraph) -> tuple[ModelGraph, dict[str, np.ndarray]]:
    """A copy of ``mg`` whose fed weights are graph inputs (appended after its own inputs), and those
    weights by name (the original's arrays, not copies). ``mg`` is not modified."""
    fed = mg.copy()
    weights: dict[str, np.ndarray] = {}
    outputs = {t.name for t in fed.graph.outputs}
    for t in list(fed.graph.tensors().values()):
        if not isinstance(t, gs.Constant) or t.name in outputs or not fed_kind(t):
            continue
        v = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
        for node in list(t.outputs):
            for i, x in enumerate(node.inputs):
                if x is t:
                    node.inputs[i] = v
        fed.graph.inputs.append(v)
        weights[t.name] = np.asarray(t.values)
    return fed, weights
