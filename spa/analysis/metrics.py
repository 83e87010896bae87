"""MACs and parameter counts from shapes.

MACs (multiply–accumulates) are counted for the ops that dominate compute: Conv, ConvTranspose,
Gemm and MatMul. Dynamic dimensions count as 1 (one sample).

>>> _prod([2, 3, None, "N"])
6
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import ModelGraph, infer_shapes, shape_of
from spa.graph.weights import is_float


def _prod(dims: Iterable[object]) -> int:
    p = 1
    for d in dims:
        p *= int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1
    return p


def node_macs(node: gs.Node) -> int:
    """MACs of one node (0 for ops that are not counted or whose shapes are unknown)."""
    op = node.op
    if op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
        x, w, y = shape_of(node.inputs[0]), shape_of(node.inputs[1]), shape_of(node.outputs[0])
        if x is None or w is None or y is None:
            return 0
        k = _prod(w[2:])
        if op == "Conv":
            return _prod(y) * _prod(w[1:2]) * k
        return _prod(x) * _prod(w[1:2]) * k
    if op in ("Gemm", "MatMul"):
        a, y = shape_of(node.inputs[0]), shape_of(node.outputs[0])
        if a is None or y is None or not a:
            return 0
        if op == "Gemm":
            if len(a) != 2:  # an invalid Gemm (ONNX Runtime refuses it at run time): nothing to count
                return 0
            kdim = a[0] if int(node.attrs.get("transA", 0)) else a[1]
        else:
            kdim = a[-1]
        return _prod(y) * _prod([kdim])
    return 0


def count_macs(mg: ModelGraph) -> int:
    """Total MACs of the graph."""
    return sum(node_macs(n) for n in mg.graph.nodes)


def count_params(mg: ModelGraph) -> int:
    """Number of floating-point weight elements (initializers)."""
    total = 0
    for t in mg.graph.tensors().values():
        if isinstance(t, gs.Constant) and is_float(t):
            total += _prod(t.shape) if t.shape else 1
    return total


def set_input_shapes(mg: ModelGraph, shapes: Mapping[str, Sequence[int]]) -> ModelGraph:
    """Give ``mg``'s graph inputs these concrete shapes and infer every other shape again (in place).

    Every intermediate and output shape is re-inferred from the new inputs (nothing kept from before),
    so :func:`count_macs` then counts the MACs of one run at exactly those shapes (batch included).
    """
    for t in mg.graph.inputs:
        if t.name in shapes:
            t.shape = [int(d) for d in shapes[t.name]]
    model = mg.to_onnx()
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    infer_shapes(model)
    dims: dict[str, list[int | str | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    inputs = {id(t) for t in mg.graph.inputs}
    for name, t in mg.graph.tensors().items():
        if isinstance(t, gs.Variable) and id(t) not in inputs:
            t.shape = dims.get(name)
    return mg
