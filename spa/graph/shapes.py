"""Complete tensor shapes that ONNX shape inference leaves unknown.

ONNX shape inference does not resolve some patterns exporters emit all the time:

* ``x.view(x.size(0), -1)`` with a dynamic batch: ``Reshape(h, Concat(Gather(Shape(h), 0), [-1]))``
  gives ``(N, unk)`` — the ``-1`` is not solved against the symbolic batch — and below Reshape-14 even
  an explicit tail is not propagated;
* shape-preserving ops without an inference function in the installed onnx (GroupNormalization-21);
* Expand / Tile / Slice / ConstantOfShape whose shape, repeats or ends are computed at run time, as the
  legacy PyTorch exporter writes them with dynamic axes: ``repeat_kv``'s
  ``Expand(x, Where(Equal(s, -1), 1, s))`` with ``s`` built from ``Shape``, and the RoPE cache's
  ``cos[:seq]`` (a Slice whose end is ``Shape(x)[1]``).

The size vectors are evaluated by :class:`spa.graph.symbolic.ShapeVectors` (ints, symbols, unknowns).

``cos[:seq]`` on a table of ``D`` rows has ``min(seq, D)`` rows, written as the symbol
``"min(seq,D)"``: nothing in the Slice proves ``seq <= D``. Where such a tensor is broadcast against a
tensor whose aligned dimension is ``seq`` (and ``D > 1``), every run that succeeds has ``seq <= D`` (else
``D`` and ``seq`` would be two different sizes, neither 1), so ``min(seq, D')`` is ``seq`` for every
``D' >= D``: the symbol is renamed ``seq`` everywhere.

:func:`complete_shapes` fills these in on the model's ``value_info`` and carries what it learnt
downstream in the same pass (ONNX's per-node inference on the nodes below a change), so a deep model
does not need one round of whole-graph inference per layer; the caller re-runs inference after it.

>>> _solve_minus_one([("N", 1), (6, 1), (3, 1), (3, 1)], ["N", -1])
['N', 54]
>>> _slice_dim(8, 0, "seq", 1), _slice_dim("seq", 0, 2**63 - 1, 1), _slice_dim("seq", 0, "seq", 1)
('min(seq,8)', 'seq', 'seq')
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from spa.graph.symbolic import MAX_LEN, Dim, ShapeVectors, broadcast_dim, mul_dim

#: ops whose single output has their first input's shape
SHAPE_PRESERVING = {"GroupNormalization", "LayerNormalization", "InstanceNormalization", "BatchNormalization",
                    "LpNormalization", "MeanVarianceNormalization", "Softmax", "LogSoftmax",
                    # com.microsoft contrib ops ORT's optimizer emits (onnx has no inference for them)
                    "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "SkipLayerNormalization",
                    "SkipSimplifiedLayerNormalization"}

#: ops that broadcast their inputs against each other (numpy rules): the evidence for ``min(s,D) == s``
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "And", "Or",
                "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "BitShift", "PRelu",
                "BitwiseAnd", "BitwiseOr", "BitwiseXor"}

#: a Slice end at least this large means "to the end" (no tensor axis has 2**31 elements)
TO_END = 2**31 - 1
_MIN = re.compile(r"^min\((?P<sym>[^(),]+),(?P<bound>\d+)\)$")
_CONSTANT_ATTRS = {"value", "value_int", "value_ints", "value_float", "value_floats"}
#: metadata key under which :func:`complete_shapes` keeps the bounds it proved between its passes
_BOUNDS_KEY = "spa.shape_bounds"


def _dims(vi: onnx.ValueInfoProto) -> list[Dim] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else
            (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None) for d in tt.shape.dim]


def _solve_minus_one(inp: list[tuple[Dim, int]], spec: list[Dim | int]) -> list[Dim] | None:
    """Resolve one -1 in ``spec`` against the input dims (symbols must cancel); without a -1 the
    output is ``spec`` itself, whatever is known of the input."""
    if -1 not in spec:
        return None if any(d is None for d in spec) else list(spec)
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


class _ProtoView:
    """:class:`GraphView` over a ModelProto (handles are tensor names)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.shapes: dict[str, list[Dim] | None] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.shapes[vi.name] = _dims(vi)
        self.consts: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.shapes[init.name] = list(init.dims)
            if int(np.prod(init.dims)) <= MAX_LEN and init.data_location != onnx.TensorProto.EXTERNAL:
                self.consts[init.name] = numpy_helper.to_array(init)
        self.nodes: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            for o in n.output:
                self.nodes[o] = n
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name in _CONSTANT_ATTRS:
                value = np.asarray(helper.get_attribute_value(n.attribute[0]))
                if n.attribute[0].name == "value":
                    value = numpy_helper.to_array(n.attribute[0].t)
                if value.size <= MAX_LEN:
                    self.consts[n.output[0]] = value

    def key(self, h: str) -> str:
        return h

    def const(self, h: str) -> np.ndarray | None:
        return self.consts.get(h)

    def shape(self, h: str) -> list[Dim] | None:
        return self.shapes.get(h)

    def producer(self, h: str) -> tuple[str, list[str | None], dict[str, Any]] | None:
        n = self.nodes.get(h)
        if n is None or n.domain not in ("", "ai.onnx"):
            return None
        return n.op_type, [i or None for i in n.input], {a.name: helper.get_attribute_value(a) for a in n.attribute}


# -- completing shapes -------------------------------------------------------------------------------------
def _min_marker(sym: str, bound: int) -> str:
    return f"min({sym},{bound})"


def _slice_dim(d: Dim, start: Dim, end: Dim, step: Dim) -> Dim:
    """Length of ``range(d)[start:end:step]`` as far as it is provable (``min(s,D)`` as a symbol)."""
    if not all(isinstance(v, int) for v in (start, step)) or step == 0:
        return None
    if isinstance(d, int) and isinstance(end, int):
        return len(range(d)[int(start):end:int(step)])  # type: ignore[arg-type]
    if start != 0 or step != 1 or d is None or end is None:
        return None
    if isinstance(end, int):
        if end >= TO_END:
            return d
        return _min_marker(d, end) if isinstance(d, str) and end > 1 and not _MIN.match(d) else None
    if end == d:
        return d
    if isinstance(d, int) and not _MIN.match(end):
        return _min_marker(end, d) if d > 1 else None
    m = _MIN.match(d) if isinstance(d, str) else None
    if m is not None and m["sym"] == end:
        return d  # min(s, min(s, D)) = min(s, D)
    return None


class _Completer:
    """Output shapes of the ops ONNX inference leaves unknown, from the evaluated shape vectors."""

    def __init__(self, view: _ProtoView) -> None:
        self.view = view
        self.vectors: ShapeVectors[str] = ShapeVectors(view)

    def shape_of(self, node: onnx.NodeProto) -> list[Dim] | None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") and op not in SHAPE_PRESERVING:
            return None
        if op in SHAPE_PRESERVING and node.input:
            new = self.view.shape(node.input[0])
            return None if new is None or any(d is None for d in new) else list(new)
        handler = self._OUTPUT.get(op)
        return handler(self, node) if handler is not None else None

    def _ins(self, node: onnx.NodeProto, k: int) -> str | None:
        return node.input[k] if k < len(node.input) and node.input[k] else None

    def _reshape(self, node: onnx.NodeProto) -> list[Dim] | None:
        s_in = self.view.shape(node.input[0])
        spec = self.vectors.value(self._ins(node, 1))
        if s_in is None or spec is None:
            return None
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        spec = [s_in[b] if (d == 0 and not allowzero and b < len(s_in)) else d for b, d in enumerate(spec)]
        if any(d is None for d in spec):
            return None
        return _solve_minus_one([(d, 1) for d in s_in], spec)

    def _expand(self, node: onnx.NodeProto) -> list[Dim] | None:
        sx, spec = self.view.shape(node.input[0]), self.vectors.value(self._ins(node, 1))
        if sx is None or spec is None:
            return None
        r = max(len(sx), len(spec))
        a = [1] * (r - len(sx)) + list(sx)
        b = [1] * (r - len(spec)) + list(spec)
        return [broadcast_dim(p, q) for p, q in zip(a, b)]

    def _tile(self, node: onnx.NodeProto) -> list[Dim] | None:
        sx, reps = self.view.shape(node.input[0]), self.vectors.value(self._ins(node, 1))
        if sx is None or reps is None or len(reps) != len(sx):
            return None
        return [mul_dim(d, r) for d, r in zip(sx, reps)]

    def _slice(self, node: onnx.NodeProto) -> list[Dim] | None:
        sx = self.view.shape(node.input[0])
        if sx is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        starts: list[Dim] | None
        ends: list[Dim] | None
        axes: list[Dim] | None
        steps: list[Dim] | None
        if "starts" in attrs:  # Slice-1
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = self.vectors.value(self._ins(node, 1)), self.vectors.value(self._ins(node, 2))
            if starts is None or ends is None:
                return None
            axes = self.vectors.value(self._ins(node, 3)) if self._ins(node, 3) else list(range(len(starts)))
            steps = self.vectors.value(self._ins(node, 4)) if self._ins(node, 4) else [1] * len(starts)
        if axes is None or steps is None or not len(starts) == len(ends) == len(axes) == len(steps):
            return None
        out = list(sx)
        r = len(sx)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            if not isinstance(ax, int) or not -r <= ax < r:
                return None
            a = ax + r if ax < 0 else ax
            out[a] = _slice_dim(sx[a], st, en, sp)
        return out

    def _constant_of_shape(self, node: onnx.NodeProto) -> list[Dim] | None:
        return self.vectors.value(self._ins(node, 0))

    _OUTPUT: ClassVar[dict[str, Callable[[_Completer, onnx.NodeProto], list[Dim] | None]]] = {
        "Reshape": _reshape, "Expand": _expand, "Tile": _tile, "Slice": _slice,
        "ConstantOfShape": _constant_of_shape,
    }


def _merge(have: list[Dim] | None, new: list[Dim]) -> list[Dim] | None:
    """``have`` with its unknown dims taken from ``new``; None when nothing is gained or they disagree."""
    if have is None:
        return new if any(d is not None for d in new) else None
    if len(have) != len(new):
        return None
    out: list[Dim] = []
    gained = False
    for h, n in zip(have, new):
        if h is None and n is not None:
            out.append(n)
            gained = True
        elif h is not None and n is not None and h != n:
            return None
        else:
            out.append(h)
    return out if gained else None


def _node_bounds(view: _ProtoView, node: onnx.NodeProto) -> dict[str, int]:
    """Upper bounds ``s <= D`` proven by one broadcasting node: a ``min(s,D)`` axis against an ``s`` axis."""
    bound: dict[str, int] = {}
    if node.op_type not in BROADCASTING or node.domain not in ("", "ai.onnx"):
        return bound
    shapes = [view.shape(i) for i in node.input if i]
    if len(shapes) < 2 or any(s is None for s in shapes):
        return bound
    for a in range(1, max(len(s) for s in shapes) + 1):  # type: ignore[arg-type]
        dims = {s[-a] for s in shapes if len(s) >= a}  # type: ignore[arg-type,index]
        for d in dims:
            m = _MIN.match(d) if isinstance(d, str) else None
            if m is not None and int(m["bound"]) > 1 and m["sym"] in dims:
                bound[m["sym"]] = min(bound.get(m["sym"], int(m["bound"])), int(m["bound"]))
    return bound


def _renamed(d: Dim, bound: dict[str, int]) -> Dim:
    m = _MIN.match(d) if isinstance(d, str) else None
    if m is not None and m["sym"] in bound and int(m["bound"]) >= bound[m["sym"]]:
        return m["sym"]
    return d


def _write(vi: onnx.ValueInfoProto, dims: Sequence[Dim]) -> None:
    vi.type.tensor_type.ClearField("shape")
    shape = vi.type.tensor_type.shape
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = int(d)


class _Pass:
    """One pass of :func:`complete_shapes` over a model (value_info, shapes and types kept in step)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.view = _ProtoView(model)
        self.completer = _Completer(self.view)
        self.by_name = {vi.name: vi for vi in model.graph.value_info}
        g = model.graph
        self.types: dict[str, onnx.TypeProto] = {
            vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}
        for init in model.graph.initializer:
            self.types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
        self.opsets = list(model.opset_import)
        self.opset = next((o.version for o in self.opsets if o.domain in ("", "ai.onnx")), 1)
        self.bound: dict[str, int] = _stored_bounds(model)
        self.dirty: set[str] = set()

    def put(self, name: str, dims: list[Dim], elem: int) -> None:
        vi = self.by_name.get(name)
        if vi is None:
            vi = self.model.graph.value_info.add()
            vi.name = name
            self.by_name[name] = vi
        if not vi.type.tensor_type.elem_type:
            vi.type.tensor_type.elem_type = elem or onnx.TensorProto.FLOAT
        dims = [_renamed(d, self.bound) for d in dims]
        _write(vi, dims)
        self.view.shapes[name] = list(dims)
        self.types[name] = vi.type
        self.dirty.add(name)
        self.completer.vectors = ShapeVectors(self.view)  # shapes changed: evaluate afresh

    def learn(self, node: onnx.NodeProto) -> None:
        """Take the bounds ``node`` proves and rename the ``min(s,D)`` dims they settle, everywhere."""
        new = {s: b for s, b in _node_bounds(self.view, node).items() if b < self.bound.get(s, b + 1)}
        if not new:
            return
        self.bound.update(new)
        _store_bounds(self.model, self.bound)
        for vi in list(self.model.graph.value_info) + list(self.model.graph.output):
            dims = self.view.shapes.get(vi.name)
            if dims and any(_renamed(d, self.bound) != d for d in dims):
                renamed = [_renamed(d, self.bound) for d in dims]
                _write(vi, renamed)
                self.view.shapes[vi.name] = renamed
                self.dirty.add(vi.name)
        self.completer.vectors = ShapeVectors(self.view)

    def onnx_infer(self, node: onnx.NodeProto) -> dict[str, list[Dim] | None]:
        """ONNX's inference of one node from the current input types (empty when it cannot run)."""
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return {}
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset if node.domain in ("", "ai.onnx") else
                                          next((o.version for o in self.opsets if o.domain == node.domain), 1),
                                          node.domain)
            types = {i: self.types[i] for i in node.input if i}
            data = {i: numpy_helper.from_array(np.asarray(self.view.consts[i]), i)
                    for i in node.input if i in self.view.consts}
            out = onnx.shape_inference.infer_node_outputs(schema, node, types, data, opset_imports=self.opsets)
        except Exception:  # noqa: BLE001 - no schema, a missing input type, an inference error: ONNX learns nothing here
            return {}
        return {name: _dims(helper.make_value_info(name, t)) for name, t in out.items()}

    def node(self, node: onnx.NodeProto, outputs: set[str]) -> None:
        self.learn(node)
        open_ = [o for o in node.output if o and o not in outputs
                 and not _complete(self.view.shapes.get(o))]
        if not open_:
            return
        if any(i in self.dirty for i in node.input):  # carry earlier completions down this node
            inferred = self.onnx_infer(node)
            for o in open_:
                dims = inferred.get(o)
                new = _merge(self.view.shapes.get(o), dims) if dims is not None else None
                if new is not None:
                    self.put(o, new, self.types[o].tensor_type.elem_type if o in self.types else 0)
        out = node.output[0]
        if out in open_ and not _complete(self.view.shapes.get(out)):
            computed = self.completer.shape_of(node)
            new = _merge(self.view.shapes.get(out), computed) if computed is not None else None
            if new is not None:
                self.put(out, new, _elem_of(node, self.types))


def _stored_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """The bounds earlier passes proved (kept in the metadata of the model being inferred)."""
    for p in model.metadata_props:
        if p.key == _BOUNDS_KEY:
            return {k: int(v) for k, v in json.loads(p.value).items()}
    return {}


def _store_bounds(model: onnx.ModelProto, bound: dict[str, int]) -> None:
    for p in model.metadata_props:
        if p.key == _BOUNDS_KEY:
            p.value = json.dumps(bound)
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = _BOUNDS_KEY, json.dumps(bound)


def _complete(dims: list[Dim] | None) -> bool:
    return dims is not None and all(d is not None for d in dims)


def _elem_of(node: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> int:
    """The element type of ``node``'s first output, for the ops :class:`_Completer` handles."""
    if node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return int(value.data_type) if value is not None else onnx.TensorProto.FLOAT
    t = types.get(node.input[0]) if node.input else None
    return int(t.tensor_type.elem_type) if t is not None else 0


def complete_shapes(model: onnx.ModelProto) -> bool:
    """Fill unknown tensor shapes in ``model.graph.value_info``, in one pass in node order.

    Handles shape-preserving ops without inference, Reshape with traced targets, and Expand / Tile /
    Slice / ConstantOfShape whose size vectors are computed (evaluated by
    :class:`~spa.graph.symbolic.ShapeVectors`); renames ``min(s,D)`` dims to ``s`` where a broadcast
    proves ``s <= D``; and runs ONNX's per-node inference on nodes below a completed tensor.

    Returns:
        Whether any shape was added or changed.
    """
    p = _Pass(model)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        p.node(node, outputs)
    if p.dirty:
        _forget_unknown(model)
    return bool(p.dirty)


def _forget_unknown(model: onnx.ModelProto) -> None:
    """Clear inference's placeholder symbols (``unk__N``) so that inference run again can refine them
    (it keeps a dim_param it finds rather than the one it infers)."""
    for vi in list(model.graph.value_info) + list(model.graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param.startswith("unk__"):
                dim.ClearField("dim_param")
