"""Parameter counts and shape helpers; MACs come from the one counter, :mod:`spa.analysis.cost`.

MACs (multiply–accumulates) are counted by each op's rule (Conv, ConvTranspose, Gemm, MatMul, Einsum,
the quantised twins) through :func:`spa.analysis.cost.count_macs`. Dynamic dimensions count as 1 (one
sample); :func:`set_input_shapes` re-infers every shape so that MACs are counted at other concrete shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_graphsurgeon as gs

from spa.graph.model import ModelGraph, infer_shapes
from spa.graph.weights import is_float
from spa.rules.base import dims_product


def count_params(mg: ModelGraph) -> int:
    """Number of floating-point weight elements (initializers)."""
    total = 0
    for t in mg.graph.tensors().values():
        if isinstance(t, gs.Constant) and is_float(t):
            total += dims_product(t.shape) if t.shape else 1
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
