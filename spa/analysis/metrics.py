"""Parameter counts and shape helpers; MACs come from the one counter, :mod:`spa.analysis.cost`.

MACs (multiply–accumulates) are counted by each op's rule (Conv, ConvTranspose, Gemm, MatMul, Einsum,
the quantised twins) through :func:`spa.analysis.cost.count_macs`. Dynamic dimensions count as 1 (one
sample); :func:`set_input_shapes` re-infers every shape so that MACs are counted at other concrete shapes,
and :func:`macs_at` counts at given input shapes without changing the graph. When nobody says which
shapes, :func:`representative` states a default: batch 1, the height and width of an image input
224, every other dynamic dimension (a sequence) 128 — or, where shape evaluation shows the graph cannot
run there (a position table, a window layout), the largest smaller sizes it can.

>>> representative_dim(0, 4), representative_dim(2, 4), representative_dim(1, 2)
(1, 224, 128)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx_graphsurgeon as gs

from spa.analysis.cost import count_macs, node_costs, shape_refusals
from spa.graph.model import ModelGraph, infer_shapes, shape_of
from spa.graph.weights import is_float
from spa.rules.base import Cost, dims_product
from spa.rules.conv import conv_channels
from spa.rules.registry import RuleRegistry


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
    model = mg.interface()  # shapes only: large weights as data-less stand-ins
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


#: what :func:`representative` says it did when the first sizes run (the prune report's ``mac_shapes_from``)
REPRESENTATIVE = "representative default: dynamic batch 1, image height/width 224, other dynamic dims 128"
#: image heights/widths and sequence lengths :func:`representative` tries, in order: smaller ones first (a
#: tiny position table), then larger (a ViT exported at 384 runs only there)
IMAGE_SIZES = (224, 192, 160, 128, 96, 64, 32, 256, 288, 320, 384, 448, 512)
SEQUENCE_SIZES = (128, 64, 32, 16, 256, 512)


def representative_dim(axis: int, rank: int, image: int = 224, sequence: int = 128) -> int:
    """The size a dynamic dimension is counted at when nobody says: the first axis (batch) 1, axes 2 and
    3 of a rank-4 input (an image's height and width) ``image``, any other (a sequence) ``sequence``."""
    if axis == 0:
        return 1
    return image if rank == 4 and axis >= 2 else sequence


def representative_shapes(mg: ModelGraph, image: int = 224, sequence: int = 128) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of ``mg``'s inputs: static dimensions as declared, dynamic ones
    :func:`representative_dim` — except a dynamic channel axis (1) of an input read by a Conv, which is
    the Conv's input channel count (optimum declares ``pixel_values`` as ``[B, C, H, W]`` all dynamic)."""
    out: dict[str, tuple[int, ...]] = {}
    for t in mg.graph.inputs:
        shape = shape_of(t) or ()
        channels = conv_channels(t) if len(shape) > 2 and not isinstance(shape[1], int) else None
        out[t.name] = tuple(d if isinstance(d, int) else channels if k == 1 and channels else
                            representative_dim(k, len(shape), image, sequence) for k, d in enumerate(shape))
    return out


def refusals_at(mg: ModelGraph, shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """:func:`spa.analysis.cost.shape_refusals` with ``mg``'s inputs at ``shapes`` (restored afterwards)."""
    saved = [(t, t.shape) for t in mg.graph.inputs]
    try:
        for t in mg.graph.inputs:
            if t.name in shapes:
                t.shape = [int(d) for d in shapes[t.name]]
        return shape_refusals(mg)
    finally:
        for t, shape in saved:
            t.shape = shape


def _smallest_refusal(mg: ModelGraph, sizes: Sequence[int], at: Callable[[int], Mapping[str, Sequence[int]]]
                      ) -> int:
    """The first of ``sizes`` at which nothing refuses, else the one with the fewest refusals (earliest wins)."""
    best, fewest = sizes[0], None
    for size in sizes:
        n = len(refusals_at(mg, at(size)))
        if n == 0:
            return size
        if fewest is None or n < fewest:
            best, fewest = size, n
    return best


def representative(mg: ModelGraph) -> tuple[dict[str, tuple[int, ...]], str]:
    """The default shapes MACs are counted at and a line saying how they were chosen.

    First :func:`representative_shapes` (images 224, sequences 128). When shape evaluation shows the graph
    cannot run there (:func:`spa.analysis.cost.shape_refusals`: a ``[1, 17, D]`` ViT position table fixes
    the image at ``(H/p)(W/p) = 16`` patches, a 64-row position table the sequence at ≤ 64, a window
    layout exported for one image size), the image size is the first of :data:`IMAGE_SIZES` (sequence
    128) at which nothing refuses, then the sequence the first of :data:`SEQUENCE_SIZES` — the fewest
    refusals when every size has some.
    """
    first = refusals_at(mg, representative_shapes(mg))
    if not first:
        return representative_shapes(mg), REPRESENTATIVE
    image = _smallest_refusal(mg, IMAGE_SIZES, lambda size: representative_shapes(mg, size, 128))
    sequence = _smallest_refusal(mg, SEQUENCE_SIZES, lambda size: representative_shapes(mg, image, size))
    left = refusals_at(mg, representative_shapes(mg, image, sequence))
    note = (f"representative default: dynamic batch 1, image height/width {image}, other dynamic dims {sequence} "
            f"(224/128 cannot run: {first[0]})" + (f"; still refused: {left[0]}" if left else ""))
    return representative_shapes(mg, image, sequence), note


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


def costs_at(mg: ModelGraph, shapes: Mapping[str, Sequence[int]] | None,
             registry: RuleRegistry | None = None) -> dict[int, Cost]:
    """Every MAC-counted node's :class:`~spa.rules.base.Cost` (by ``id(node)``) at these input shapes — the
    shapes the report counts at, so a MACs budget keeps what the report shows (a dynamic sequence counted
    at 1 would make attention's ``S²`` terms free); None: the graph's own shapes (dynamic dims 1).
    ``mg``'s own shapes are restored afterwards."""
    if shapes is None:
        return node_costs(mg, registry)
    saved = {id(t): (t, None if t.shape is None else list(t.shape))
             for t in mg.graph.tensors().values() if isinstance(t, gs.Variable)}
    try:
        return dict(node_costs(set_input_shapes(mg, shapes), registry))
    finally:
        for t, shape in saved.values():
            t.shape = shape
