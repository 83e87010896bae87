"""Complete tensor shapes that ONNX shape inference leaves unknown.

ONNX shape inference does not resolve some patterns exporters emit all the time:

* ``x.view(x.size(0), -1)`` with a dynamic batch: ``Reshape(h, Concat(Gather(Shape(h), 0), [-1]))``
  gives ``(N, unk)`` — the ``-1`` is not solved against the symbolic batch — and below Reshape-14 even
  an explicit tail is not propagated;
* shape-preserving ops without an inference function in the installed onnx (GroupNormalization-21).

:func:`complete_shapes` fills these in on the model's ``value_info``; the caller re-runs inference so the
shapes flow downstream.

>>> _solve_minus_one([("N", 1), (6, 1), (3, 1), (3, 1)], ["N", -1])
['N', 54]
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None

#: ops whose single output has their first input's shape
SHAPE_PRESERVING = {"GroupNormalization", "LayerNormalization", "InstanceNormalization", "BatchNormalization",
                    "LpNormalization", "MeanVarianceNormalization", "Softmax", "LogSoftmax",
                    # com.microsoft contrib ops ORT's optimizer emits (onnx has no inference for them)
                    "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "SkipLayerNormalization",
                    "SkipSimplifiedLayerNormalization"}


def _dims(vi: onnx.ValueInfoProto) -> list[Dim] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else
            (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None) for d in tt.shape.dim]


def _solve_minus_one(inp: list[tuple[Dim, int]], spec: list[Dim | int]) -> list[Dim] | None:
    """Resolve one -1 in ``spec`` against the input dims (symbols must cancel)."""
    in_static = int(np.prod([d for d, _ in inp if isinstance(d, int)], dtype=np.int64))
    in_syms = Counter(d for d, _ in inp if isinstance(d, str))
    if any(d is None for d, _ in inp):
        return None
    out_syms = Counter(d for d in spec if isinstance(d, str))
    if out_syms != in_syms or sum(1 for d in spec if d == -1) > 1:
        return None
    known = int(np.prod([d for d in spec if isinstance(d, int) and d != -1], dtype=np.int64))
    if -1 in spec:
        if known == 0 or in_static % known:
            return None
        return [in_static // known if d == -1 else d for d in spec]
    return list(spec)


class _Model:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.shapes: dict[str, list[Dim] | None] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.shapes[vi.name] = _dims(vi)
        self.consts: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.shapes[init.name] = list(init.dims)
            if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and int(np.prod(init.dims)) <= 64:
                self.consts[init.name] = numpy_helper.to_array(init)
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def trace_dims(self, name: str) -> list[Dim | int] | None:
        """Values of a small 1-D int tensor: ints, or symbolic dims traced through Shape/Gather."""
        if name in self.consts:
            return [int(v) for v in self.consts[name].reshape(-1)]
        node = self.producer.get(name)
        if node is None:
            return None
        op = node.op_type
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            return self.trace_dims(node.input[0])
        if op == "Concat":
            out: list[Dim | int] = []
            for i in node.input:
                part = self.trace_dims(i)
                if part is None:
                    return None
                out += part
            return out
        if op == "Shape":
            s = self.shapes.get(node.input[0])
            if s is None:
                return None
            attrs = {a.name: a.i for a in node.attribute}
            r = len(s)
            start, end = attrs.get("start", 0), attrs.get("end", r)
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            return list(s[max(start, 0): min(end, r)])  # type: ignore[arg-type]
        if op == "Slice" and len(node.input) > 2 and node.input[1] in self.consts and node.input[2] in self.consts:
            src = self.trace_dims(node.input[0])
            steps = self.consts.get(node.input[4]) if len(node.input) > 4 else None
            if src is None or (steps is not None and int(steps.reshape(-1)[0]) != 1):
                return None
            s0, e0 = int(self.consts[node.input[1]].reshape(-1)[0]), int(self.consts[node.input[2]].reshape(-1)[0])
            return src[slice(s0, e0)]
        if op == "Gather" and len(node.input) > 1 and node.input[1] in self.consts:
            src = self.trace_dims(node.input[0])
            if src is None:
                return None
            idx = self.consts[node.input[1]].reshape(-1)
            return [src[int(i)] for i in idx]
        return None


def complete_shapes(model: onnx.ModelProto) -> bool:
    """Fill unknown output shapes of Reshape and shape-preserving ops in ``model.graph.value_info``.

    Returns:
        Whether any shape was added.
    """
    m = _Model(model)
    by_name = {vi.name: vi for vi in model.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.input) + list(model.graph.value_info)}
    changed = False
    for node in model.graph.node:
        if not node.output or node.output[0] in outputs:
            continue
        out = node.output[0]
        have = m.shapes.get(out)
        if have is not None and all(d is not None for d in have):
            continue
        new: list[Dim] | None = None
        if node.op_type in SHAPE_PRESERVING and node.input:
            new = m.shapes.get(node.input[0])
            if new is not None and any(d is None for d in new):
                new = None
        elif node.op_type == "Reshape" and len(node.input) > 1:
            s_in = m.shapes.get(node.input[0])
            spec = m.trace_dims(node.input[1])
            if s_in is not None and spec is not None:
                allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
                spec = [s_in[b] if (d == 0 and not allowzero and b < len(s_in)) else d for b, d in enumerate(spec)]
                if all(d is not None for d in spec):
                    new = _solve_minus_one([(d, 1) for d in s_in], spec)  # type: ignore[misc]
        if new is None:
            continue
        vi = by_name.get(out)
        if vi is None:
            vi = model.graph.value_info.add()
            vi.name = out
            by_name[out] = vi
        vi.type.tensor_type.elem_type = elem.get(node.input[0], onnx.TensorProto.FLOAT) or onnx.TensorProto.FLOAT
        vi.type.tensor_type.ClearField("shape")
        shape = vi.type.tensor_type.shape
        for d in new:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            elif d is not None:
                dim.dim_value = int(d)
        m.shapes[out] = list(new)
        elem[out] = vi.type.tensor_type.elem_type
        changed = True
    return changed
