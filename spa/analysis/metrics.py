"""Parameter counts and shape helpers; MACs come from the one counter, :mod:`spa.analysis.cost`.

MACs (multiply–accumulates) are counted by each op's rule (Conv, ConvTranspose, Gemm, MatMul, Einsum,
the quantised twins) through :func:`spa.analysis.cost.count_macs`. Dynamic dimensions count as 1 (one
sample); :func:`set_input_shapes` re-infers every shape so that MACs are counted at other concrete shapes,
and :func:`macs_at` counts at given input shapes without changing the graph. When nobody says which
shapes, :func:`representative_shapes` states a default: batch 1, the height and width of an image input
224, every other dynamic dimension (a sequence) 128.

>>> representative_dim(0, 4), representative_dim(2, 4), representative_dim(1, 2)
(1, 224, 128)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_graphsurgeon as gs

from spa.analysis.cost import count_macs
from spa.graph.model import ModelGraph, infer_shapes, shape_of
from spa.graph.weights import is_float
from spa.rules.base import dims_product
from spa.rules.conv import conv_channels


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


#: what :func:`representative_shapes` says it did (the prune report's ``mac_shapes_from``)
REPRESENTATIVE = "representative default: dynamic batch 1, image height/width 224, other dynamic dims 128"


def representative_dim(axis: int, rank: int) -> int:
    """The size a dynamic dimension is counted at when nobody says: the first axis (batch) 1, axes 2 and
    3 of a rank-4 input (an image's height and width) 224, any other (a sequence) 128."""
    if axis == 0:
        return 1
    return 224 if rank == 4 and axis >= 2 else 128


def representative_shapes(mg: ModelGraph) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of ``mg``'s inputs: static dimensions as declared, dynamic ones
    :func:`representative_dim` — except a dynamic channel axis (1) of an input read by a Conv, which is
    the Conv's input channel count (optimum declares ``pixel_values`` as ``[B, C, H, W]`` all dynamic)."""
    out: dict[str, tuple[int, ...]] = {}
    for t in mg.graph.inputs:
        shape = shape_of(t) or ()
        channels = conv_channels(t) if len(shape) > 2 and not isinstance(shape[1], int) else None
        out[t.name] = tuple(d if isinstance(d, int) else channels if k == 1 and channels else
                            representative_dim(k, len(shape)) for k, d in enumerate(shape))
    return out


def macs_at(mg: ModelGraph, shapes: Mapping[str, Sequence[int]]) -> int:
    """MACs of one run of ``mg`` at these input shapes; ``mg``'s own shapes are restored afterwards."""
    declared = {t.name: shape_of(t) for t in mg.graph.inputs}
    if all(tuple(shapes.get(n, ())) == s for n, s in declared.items()):
        return count_macs(mg)  # already concrete at exactly these shapes
    saved = {id(t): (t, None if t.shape is None else list(t.shape))
             for t in mg.graph.tensors().values() if isinstance(t, gs.Variable)}
    try:
        return count_macs(set_input_shapes(mg, shapes))
    finally:
        for t, shape in saved.values():
            t.shape = shape
