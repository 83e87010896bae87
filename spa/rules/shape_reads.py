"""Which run-time sizes a computed size vector holds, and reads that stay right after pruning.

PyTorch's ``x.view(-1, x.size(-1))`` (Hugging Face's ``Conv1D`` in GPT-2: ``x.view(size_out)`` after an
``addmm``) exports as ``Reshape(x, Concat([-1], Unsqueeze(Squeeze(Slice(Shape(x), -1)))))``. The
``Shape`` reads the size of a channel axis, which normally makes that axis a barrier: the value could
feed anything. Here it only tells the Reshape to keep that axis's size: whatever the axis is pruned to,
the Reshape reads the new size at run time and maps the axis to itself. Such a read is *self-consistent*.

:func:`entry_sources` traces each entry of a size vector back to the ``(tensor, axis)`` whose size it
is (through Shape, Gather, Slice, Squeeze, Unsqueeze, Cast, Identity, Concat and a flattening Reshape;
constants and anything else are None). :func:`self_consistent_reads` says whether every use of a
``Shape`` output ends in such an entry of a Reshape of the same tensor, whose input axis the Reshape
pairs one to one with the entry's output axis (the pairing comes from the caller, which knows the
Reshape's blocks).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import shape_of

#: (tensor name, axis) whose run-time size one vector entry holds; None for a constant or anything else
Source = tuple[str, int] | None
#: the input → output axis pairs a Reshape maps one to one (None when its shapes do not pair)
Pairs = Callable[[gs.Node], set[tuple[int, int]] | None]

#: ops that move entries of a size vector without computing new values (their input 0 is the vector)
_VECTOR_MOVES = ("Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Identity", "Concat", "Reshape")


def _ints(t: gs.Tensor | None) -> list[int] | None:
    if isinstance(t, gs.Constant):
        return [int(v) for v in np.asarray(t.values).reshape(-1)]
    return None


def _length(t: gs.Tensor) -> int | None:
    s = shape_of(t)
    if s is None or len(s) > 1:
        return None
    if not s:
        return 1
    return s[0] if isinstance(s[0], int) else None


def entry_sources(t: gs.Tensor | None, depth: int = 0) -> list[Source] | None:
    """For each entry of the small int vector ``t``, the ``(tensor, axis)`` whose size it is (or None).

    None when the vector's length is unknown. A scalar is a vector of one entry.

    >>> x = gs.Variable("x", shape=["B", 8, 16])
    >>> s = gs.Variable("s", shape=[3]); _ = gs.Node("Shape", inputs=[x], outputs=[s])
    >>> g = gs.Variable("g", shape=[1])
    >>> ends = [gs.Constant(n, np.array([v])) for n, v in (("a", -1), ("b", 99))]
    >>> _ = gs.Node("Slice", inputs=[s] + ends, outputs=[g])
    >>> c = gs.Variable("c", shape=[2])
    >>> _ = gs.Node("Concat", attrs={"axis": 0}, inputs=[gs.Constant("m", np.array([-1])), g], outputs=[c])
    >>> entry_sources(c)
    [None, ('x', 2)]
    """
    if t is None or depth > 32:
        return None
    if isinstance(t, gs.Constant):
        return [None] * int(np.asarray(t.values).size)
    n = _length(t)
    if len(t.inputs) != 1:
        return None if n is None else [None] * n
    node = t.inputs[0]
    got = _trace(node, depth)
    if got is not None and (n is None or len(got) == n):
        return got
    return None if n is None else [None] * n


def _trace(node: gs.Node, depth: int) -> list[Source] | None:
    op, ins = node.op, node.inputs
    if op == "Shape":
        s = shape_of(ins[0])
        if s is None:
            return None
        r = len(s)
        start, end = int(node.attrs.get("start", 0)), int(node.attrs.get("end", r))
        return [(ins[0].name, a) for a in range(r)[slice(start, end)]]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
        return entry_sources(ins[0], depth + 1)
    if op == "Concat":
        out: list[Source] = []
        for piece in ins:
            got = entry_sources(piece, depth + 1)
            if got is None:
                return None
            out += got
        return out
    src = entry_sources(ins[0], depth + 1) if ins else None
    if src is None:
        return None
    if op == "Gather" and int(node.attrs.get("axis", 0)) in (0, -1):
        idx = _ints(ins[1]) if len(ins) > 1 else None
        return [src[i] for i in idx] if idx is not None and all(-len(src) <= i < len(src) for i in idx) else None
    if op == "Slice" and len(ins) >= 3:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3].name else [0]
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4].name else [1]
        if starts is None or ends is None or axes not in ([0], [-1]) or steps is None or len(steps) != 1:
            return None
        if not steps[0]:
            return None
        return src[slice(starts[0], ends[0], steps[0])]
    return None


def self_read_ok(reshape: gs.Node, pairs: Pairs) -> bool:
    """Every entry of the Reshape's target that holds a size of its own input ``x`` holds the size of an
    axis the Reshape maps one to one onto that entry's output axis."""
    src = entry_sources(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if src is None:
        return False
    x = reshape.inputs[0].name
    mine = [(b, s[1]) for b, s in enumerate(src) if s is not None and s[0] == x]
    if not mine:
        return False
    paired = pairs(reshape)
    return paired is not None and all((a, b) in paired for b, a in mine)


def _restores(reshape: gs.Node, x: gs.Tensor) -> bool:
    """Every entry of the Reshape's target that reads a size reads ``x``'s size of the same axis (the
    Reshape gives its input back ``x``'s shape)."""
    src = entry_sources(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    return src is not None and all(s is None or (s[0] == x.name and s[1] == b) for b, s in enumerate(src))


def self_consistent_reads(shape_out: gs.Tensor, x: gs.Tensor, pairs: Pairs,
                          mirror: Callable[[gs.Node], gs.Tensor | None] | None = None) -> bool:
    """Whether every use of ``shape_out`` (``Shape(x)``) ends, through ops that only move vector entries,
    in the target of a Reshape of ``x`` whose entries read ``x``'s sizes self-consistently — or of a
    Reshape that gives back ``x``'s shape to a tensor with ``x``'s channels (``mirror(reshape) is x``:
    the closing Reshape of a decomposed GroupNorm of ``x``)."""
    stack, seen = [shape_out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for c in t.outputs:
            if c.op == "Reshape" and len(c.inputs) > 1 and c.inputs[1] is t:
                if c.inputs[0] is x and self_read_ok(c, pairs):
                    continue
                if mirror is not None and mirror(c) is x and _restores(c, x):
                    continue
                return False
            if c.op in _VECTOR_MOVES and (c.op == "Concat" or (c.inputs and c.inputs[0] is t)):
                stack.extend(c.outputs)
                continue
            return False
    return True
