"""Symbolic evaluation of shape vectors: the small int tensors that shape arithmetic computes.

Exporters compute Reshape targets, Expand shapes, Tile repeats and Slice ends at run time from
``Shape`` ops. :class:`ShapeVectors` evaluates such a vector as far as it is provable: an entry is an
int (the same in every run), a symbol (a dimension's ``dim_param``, always >= 0) or None (unknown).
Shape, Size, Gather, Slice, Concat, Reshape, (Un)Squeeze, Cast, Not, Equal/Less/Greater, And/Or,
Where, Add/Sub/Mul/Div/Max/Min, ConstantOfShape, Expand and Tile of vectors (rank 0 or 1) are
evaluated; e.g. ``Where(Equal(s, -1), 1, s)`` is ``s`` because a dimension is never -1, and
``Mul(s, 1)`` is ``s`` for a symbol. Anything else is unknown, never guessed.

The evaluator reads the graph through a :class:`GraphView` (ModelProto in
:mod:`spa.graph.shapes`, onnx-graphsurgeon here: :func:`shape_vector`, for the rules).

>>> broadcast_dim("B", 1), broadcast_dim(1, 8), broadcast_dim("T", "T"), broadcast_dim("B", "T")
('B', 8, 'T', None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

Dim = int | str | None

#: longest vector evaluated (shape vectors are short; this bounds ConstantOfShape/Tile/Expand)
MAX_LEN = 64

_BOOL, _INT, _FLOAT = "bool", "int", "float"
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
              onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}


def broadcast_dim(a: Dim, b: Dim) -> Dim:
    """One axis of a numpy broadcast, for runs that succeed (two ints > 1 that differ: None)."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        return None
    if isinstance(a, int):
        return a  # b (a symbol or unknown) is 1 or a
    if isinstance(b, int):
        return b
    return None


# -- symbolic evaluation of shape vectors ---------------------------------------------------------------
H = TypeVar("H")


class GraphView(Protocol[H]):
    """What :class:`ShapeVectors` reads of a graph; ``H`` is a tensor handle (a name, a gs tensor)."""

    def key(self, h: H) -> str:
        """A unique name of the tensor."""

    def const(self, h: H) -> np.ndarray | None:
        """The value of a constant tensor, None for computed ones."""

    def shape(self, h: H) -> Sequence[Dim] | None:
        """The tensor's shape (None: rank unknown)."""

    def producer(self, h: H) -> tuple[str, list[H | None], dict[str, Any]] | None:
        """The producing node as (op type, inputs (None for absent ones), attributes), None for none."""


@dataclass(frozen=True)
class _Vec:
    """A small tensor of rank 0 or 1: its entries and their kind (bool/int/float; floats only exact)."""

    values: tuple[Dim, ...]
    rank: int
    kind: str = _INT


def _from_array(a: np.ndarray) -> _Vec | None:
    a = np.asarray(a)
    if a.ndim > 1 or a.size > MAX_LEN:
        return None
    if a.dtype == np.bool_:
        return _Vec(tuple(int(v) for v in a.reshape(-1)), a.ndim, _BOOL)
    if np.issubdtype(a.dtype, np.integer):
        return _Vec(tuple(int(v) for v in a.reshape(-1)), a.ndim, _INT)
    if np.issubdtype(a.dtype, np.floating):
        flat = a.reshape(-1)
        if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
            return None
        return _Vec(tuple(int(v) for v in flat), a.ndim, _FLOAT)
    return None


def _ints(v: _Vec | None) -> list[int] | None:
    if v is None or not all(isinstance(d, int) for d in v.values):
        return None
    return list(v.values)  # type: ignore[arg-type]


def _tdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _add(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return b if a == 0 else a if b == 0 else None


def _sub(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if b == 0:
        return a
    return 0 if a is not None and a == b else None


def _mul(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 0 or b == 0:
        return 0
    return b if a == 1 else a if b == 1 else None


def mul_dim(a: Dim, b: Dim) -> Dim:
    """A product of two sizes (Tile: a dim times its repeats), as far as it is provable."""
    return _mul(a, b, _INT)


def _div(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        if b == 0 or (kind == _FLOAT and a % b):
            return None
        return _tdiv(a, b)
    return a if b == 1 else None


def _max(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    if a is not None and a == b:
        return a
    return b if a == 0 and isinstance(b, str) else a if b == 0 and isinstance(a, str) else None  # dims >= 0


def _min(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if a is not None and a == b:
        return a
    return 0 if (a == 0 and isinstance(b, str)) or (b == 0 and isinstance(a, str)) else None


def _equal(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if a is not None and a == b:
        return 1
    if (isinstance(a, str) and isinstance(b, int) and b < 0) or (isinstance(b, str) and isinstance(a, int) and a < 0):
        return 0  # a dimension is never negative
    return None


def _less(a: Dim, b: Dim, kind: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return int(a < b)
    if isinstance(a, str) and isinstance(b, int) and b <= 0:
        return 0
    if isinstance(b, str) and isinstance(a, int) and a < 0:
        return 1
    return None


def _greater(a: Dim, b: Dim, kind: str) -> Dim:
    return _less(b, a, kind)


def _and(a: Dim, b: Dim, kind: str) -> Dim:
    if a == 0 or b == 0:
        return 0
    return 1 if a == 1 and b == 1 else None


def _or(a: Dim, b: Dim, kind: str) -> Dim:
    if a == 1 or b == 1:
        return 1
    return 0 if a == 0 and b == 0 else None


#: binary element functions and whether they return bool
_BINARY: dict[str, tuple[Callable[[Dim, Dim, str], Dim], bool]] = {
    "Add": (_add, False), "Sub": (_sub, False), "Mul": (_mul, False), "Div": (_div, False),
    "Max": (_max, False), "Min": (_min, False), "Equal": (_equal, True), "Less": (_less, True),
    "Greater": (_greater, True), "And": (_and, True), "Or": (_or, True),
}


def _broadcast(vecs: Sequence[_Vec]) -> list[tuple[Dim, ...]] | None:
    """Entries of rank-0/1 operands aligned under broadcasting; None when the lengths do not broadcast."""
    n = max(len(v.values) for v in vecs)
    if any(len(v.values) not in (1, n) for v in vecs):
        return None
    return [tuple(v.values[i] if len(v.values) == n else v.values[0] for v in vecs) for i in range(n)]


class ShapeVectors(Generic[H]):
    """Evaluates small integer tensors (shape arithmetic) of a graph symbolically.

    >>> class V:  # a two-node graph: s = Shape(x); y = Where(Equal(s, -1), 1, s)
    ...     nodes = {"s": ("Shape", ["x"], {}), "e": ("Equal", ["s", "m1"], {}), "y": ("Where", ["e", "one", "s"], {})}
    ...     consts = {"m1": np.array([-1, -1]), "one": np.array([1, 1])}
    ...     def key(self, h): return h
    ...     def const(self, h): return self.consts.get(h)
    ...     def shape(self, h): return {"x": ["B", 8]}.get(h)
    ...     def producer(self, h): return self.nodes.get(h)
    >>> ShapeVectors(V()).value("y")
    ['B', 8]
    """

    def __init__(self, view: GraphView[H]) -> None:
        self.view = view
        self._memo: dict[str, _Vec | None] = {}
        self._depth = 0

    def value(self, h: H | None) -> list[Dim] | None:
        """Entries of ``h`` (rank 0 or 1): ints, symbols and None (unknown); None when not evaluable."""
        v = self._eval(h)
        return None if v is None else list(v.values)

    def ints(self, h: H | None) -> list[int] | None:
        """Entries of ``h`` when every one is a known int (a constant in all runs), else None."""
        return _ints(self._eval(h))

    # -- evaluation ------------------------------------------------------------------------------------
    def _eval(self, h: H | None) -> _Vec | None:
        if h is None:
            return None
        key = self.view.key(h)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None  # guards cycles
        if self._depth > 200:
            return None
        self._depth += 1
        try:
            out = self._compute(h)
        finally:
            self._depth -= 1
        if out is not None and len(out.values) > MAX_LEN:
            out = None
        self._memo[key] = out
        return out

    def _compute(self, h: H) -> _Vec | None:
        c = self.view.const(h)
        if c is not None:
            return _from_array(c)
        p = self.view.producer(h)
        if p is None:
            return None
        op, ins, attrs = p
        if op in _BINARY:
            fn, boolean = _BINARY[op]
            return self._elementwise(ins[:2], lambda e, k: fn(e[0], e[1], k), boolean)
        handler = self._HANDLERS.get(op)
        return handler(self, ins, attrs) if handler is not None else None

    def _elementwise(self, ins: Sequence[H | None], fn: Callable[[tuple[Dim, ...], str], Dim],
                     boolean: bool) -> _Vec | None:
        vecs = [self._eval(i) for i in ins]
        if any(v is None for v in vecs) or not vecs:
            return None
        vs: list[_Vec] = vecs  # type: ignore[assignment]
        rows = _broadcast(vs)
        if rows is None:
            return None
        kind = _BOOL if boolean else (_FLOAT if any(v.kind == _FLOAT for v in vs) else _INT)
        return _Vec(tuple(fn(r, kind) for r in rows), max(v.rank for v in vs), kind)

    def _input_ints(self, ins: Sequence[H | None], k: int, attrs: dict[str, Any], name: str) -> list[int] | None:
        """An int list given as attribute ``name`` (older opsets) or as input ``k``."""
        if name in attrs and attrs[name] is not None:
            v = attrs[name]
            return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if k < len(ins) and ins[k] is not None:
            return self.ints(ins[k])
        return None

    def _identity(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        return self._eval(ins[0])

    def _cast(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, to = self._eval(ins[0]), attrs.get("to")
        if v is None:
            return None
        if to == onnx.TensorProto.BOOL:
            return _Vec(tuple(int(d != 0) if isinstance(d, int) else None for d in v.values), v.rank, _BOOL)
        if to in _FLOAT_TYPES:
            return _Vec(v.values, v.rank, _FLOAT)
        if to in _INT_TYPES:
            return _Vec(v.values, v.rank, _INT)
        return None

    def _not(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        return self._elementwise(ins[:1], lambda e, k: 1 - e[0] if isinstance(e[0], int) else None, True)

    def _where(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        def pick(e: tuple[Dim, ...], kind: str) -> Dim:
            c, a, b = e
            if c is None:
                return a if a is not None and a == b else None
            return a if c else b

        vecs = [self._eval(i) for i in ins[1:3]]
        out = self._elementwise(ins[:3], pick, False)
        if out is None or any(v is None for v in vecs):
            return None
        kind = _FLOAT if any(v.kind == _FLOAT for v in vecs) else (  # type: ignore[union-attr]
            _BOOL if all(v.kind == _BOOL for v in vecs) else _INT)  # type: ignore[union-attr]
        return _Vec(out.values, out.rank, kind)

    def _shape(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        s = self.view.shape(ins[0]) if ins[0] is not None else None
        if s is None:
            return None
        r = len(s)
        start, end = int(attrs.get("start", 0)), int(attrs.get("end", r))
        start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
        return _Vec(tuple(s[max(start, 0): min(end, r)]), 1)

    def _size(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        s = self.view.shape(ins[0]) if ins[0] is not None else None
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return _Vec((int(np.prod(s, dtype=np.int64)),), 0)  # type: ignore[arg-type]

    def _gather(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        src, idx = self._eval(ins[0]), self._eval(ins[1]) if len(ins) > 1 else None
        if src is None or idx is None or src.rank != 1 or int(attrs.get("axis", 0)) not in (0, -1):
            return None
        n, out = len(src.values), []
        for i in idx.values:
            if not isinstance(i, int) or not -n <= i < n:
                return None
            out.append(src.values[i])
        return _Vec(tuple(out), idx.rank, src.kind)

    def _unsqueeze(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, axes = self._eval(ins[0]), self._input_ints(ins, 1, attrs, "axes")
        if v is None or v.rank != 0 or axes not in ([0], [-1]):
            return None
        return _Vec(v.values, 1, v.kind)

    def _squeeze(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, axes = self._eval(ins[0]), self._input_ints(ins, 1, attrs, "axes")
        if v is None or v.rank != 1 or len(v.values) != 1 or axes not in (None, [0], [-1]):
            return None
        return _Vec(v.values, 0, v.kind)

    def _concat(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        if int(attrs.get("axis", 0)) not in (0, -1):
            return None
        parts = [self._eval(i) for i in ins]
        if not parts or any(p is None or p.rank != 1 for p in parts):
            return None
        kinds = {p.kind for p in parts}  # type: ignore[union-attr]
        return _Vec(tuple(d for p in parts for d in p.values), 1,  # type: ignore[union-attr]
                    kinds.pop() if len(kinds) == 1 else _INT)

    def _reshape(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, t = self._eval(ins[0]), self.ints(ins[1]) if len(ins) > 1 else None
        if v is None or t is None:
            return None
        if t == [] and len(v.values) == 1:
            return _Vec(v.values, 0, v.kind)
        if len(t) == 1 and (t[0] in (-1, len(v.values)) or (t[0] == 0 and v.rank == 1 and not attrs.get("allowzero"))):
            return _Vec(v.values, 1, v.kind)
        return None

    def _slice(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v = self._eval(ins[0])
        if v is None or v.rank != 1:
            return None
        starts = self._input_ints(ins, 1, attrs, "starts")
        ends = self._input_ints(ins, 2, attrs, "ends")
        given = "axes" in attrs or (len(ins) > 3 and ins[3] is not None)
        axes = self._input_ints(ins, 3, attrs, "axes") if given else [0]
        steps = self._input_ints(ins, 4, attrs, "steps") if len(ins) > 4 and ins[4] is not None else [1]
        if starts is None or ends is None or axes not in ([0], [-1]) or steps is None or len(starts) != 1 \
                or len(ends) != 1 or len(steps) != 1 or steps[0] == 0:
            return None
        return _Vec(v.values[slice(starts[0], ends[0], steps[0])], 1, v.kind)

    def _constant_of_shape(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        shape = self.ints(ins[0])
        value = attrs.get("value")
        fill = _from_array(_tensor_value(value)) if value is not None else _Vec((0,), 1, _FLOAT)
        if shape is None or len(shape) > 1 or fill is None or len(fill.values) != 1:
            return None
        n = shape[0] if shape else 1
        if not 0 <= n <= MAX_LEN:
            return None
        return _Vec(fill.values * n, len(shape), fill.kind)

    def _expand(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, shape = self._eval(ins[0]), self.ints(ins[1]) if len(ins) > 1 else None
        if v is None or shape is None or len(shape) > 1:
            return None
        if not shape:
            return v
        n = shape[0]
        if n == 1 or n == len(v.values):
            return _Vec(v.values, 1, v.kind)
        if len(v.values) == 1 and 0 <= n <= MAX_LEN:
            return _Vec(v.values * n, 1, v.kind)
        return None

    def _tile(self, ins: list, attrs: dict) -> _Vec | None:  # type: ignore[type-arg]
        v, reps = self._eval(ins[0]), self.ints(ins[1]) if len(ins) > 1 else None
        if v is None or v.rank != 1 or reps is None or len(reps) != 1 or not 0 <= reps[0] * len(v.values) <= MAX_LEN:
            return None
        return _Vec(v.values * reps[0], 1, v.kind)

    _HANDLERS: ClassVar[dict[str, Callable[[ShapeVectors[Any], list, dict], _Vec | None]]] = {  # type: ignore[type-arg]
        "Identity": _identity, "Cast": _cast, "Not": _not, "Where": _where, "Shape": _shape, "Size": _size,
        "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat,
        "Reshape": _reshape, "Slice": _slice, "ConstantOfShape": _constant_of_shape, "Expand": _expand,
        "Tile": _tile,
    }


def _tensor_value(v: object) -> np.ndarray:
    """An attribute tensor (TensorProto or graphsurgeon Constant) as an array."""
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    return np.asarray(getattr(v, "values", v))


class _GsView:
    """:class:`GraphView` over onnx-graphsurgeon tensors."""

    def key(self, h: gs.Tensor) -> str:
        return str(h.name)

    def const(self, h: gs.Tensor) -> np.ndarray | None:
        if isinstance(h, gs.Constant) and int(np.prod(h.shape)) <= MAX_LEN:
            return np.asarray(h.values)
        return None

    def shape(self, h: gs.Tensor) -> list[Dim] | None:
        if h.shape is None:
            return None
        return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) else None)
                for d in h.shape]

    def producer(self, h: gs.Tensor) -> tuple[str, list[gs.Tensor | None], dict[str, Any]] | None:
        if isinstance(h, gs.Constant) or len(h.inputs) != 1:
            return None
        n = h.inputs[0]
        if n.domain not in ("", "ai.onnx", None):
            return None
        return n.op, [t if t is not None and t.name else None for t in n.inputs], dict(n.attrs)


def shape_vector(t: gs.Tensor | None) -> list[Dim] | None:
    """The entries of a small int tensor of a graphsurgeon graph, evaluated symbolically.

    Ints are the same in every run, strings are symbolic dimensions, None entries are unknown; None when
    the tensor is not a shape-like vector spa can evaluate. Used where a rule needs a computed size
    vector (Tile ``repeats``): only an all-int result may be treated as a constant.
    """
    return ShapeVectors(_GsView()).value(t)
