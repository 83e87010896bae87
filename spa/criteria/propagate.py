"""Estimate the per-channel mean and variance of a tensor from the graph alone (no data).

:func:`tensor_moments` walks back from a tensor to the nearest normalisation: a BatchNormalization
(or InstanceNormalization) output is ``N(β, γ²)`` per channel. On the way forward again each op
transforms the moments with the rule :data:`RULES` holds for it:

* activations: ReLU in closed form, the others by quadrature (:mod:`spa.criteria.moments`), including
  ``Mul(x, act(x))`` gates (SiLU/Swish);
* ops that keep channels in place (pooling, resizing, padding): unchanged — an approximation: pooling
  lowers the variance and max-pooling raises the mean;
* Flatten / Reshape / Squeeze merging ``[N, C, *S]`` into ``[N, C·ΠS]``: each channel's moments
  repeated over its ``ΠS`` features;
* Add/Sub/Mul/Div with a per-channel constant: shifted/scaled; Add/Sub of two activations: independent
  sums; Concat on the axis: concatenated.

Anything else (a Conv without BN, a graph input, an SE gate) yields a *reason* string instead, and the
caller falls back to statistics from data.

>>> import onnx_graphsurgeon as gs
>>> x = gs.Variable("x", shape=[1, 2, 4, 4])
>>> y, z = gs.Variable("y", shape=[1, 2, 4, 4]), gs.Variable("z", shape=[1, 2, 4, 4])
>>> c = lambda name, v: gs.Constant(name, np.asarray(v, dtype=np.float32))
>>> bn = gs.Node("BatchNormalization", inputs=[x, c("g", [2, 1]), c("b", [0, 1]), c("m", [0, 0]), c("v", [1, 1])],
...              outputs=[y])
>>> relu = gs.Node("Relu", inputs=[y], outputs=[z])
>>> m = tensor_moments(z, 1)
>>> m.mean.round(3).tolist(), tensor_moments(x, 1)
([0.798, 1.083], "'x' is a graph input")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.criteria.moments import ACTIVATIONS, Fn, gaussian_moments, relu_moments
from spa.rules.base import static


@dataclass(frozen=True)
class Moments:
    """Per-element mean and variance along one axis of a tensor."""

    mean: np.ndarray
    var: np.ndarray


Result = Moments | str
Walk = Callable[[gs.Tensor, int], Result]
Rule = Callable[[gs.Node, gs.Tensor, int, Walk], Result]


def _rank(t: gs.Tensor) -> int | None:
    return None if t.shape is None else len(t.shape)


def _axis_vector(value: np.ndarray, rank: int, axis: int, size: int) -> np.ndarray | None:
    """A constant broadcast against a tensor of ``rank``, as one value per element of ``axis``."""
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return np.full(size, float(v.reshape(-1)[0]))
    if v.ndim > rank:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    if any(d != 1 for k, d in enumerate(shape) if k != axis) or shape[axis] not in (1, size):
        return None
    return np.broadcast_to(v.reshape(-1), (size,)).copy()


def _through(f: Fn | None, m: Moments) -> Moments:
    """Moments of ``f(x)`` elementwise (``f`` None: ReLU, in closed form)."""
    return Moments(*(relu_moments(m.mean, m.var) if f is None else gaussian_moments(f, m.mean, m.var)))


def _norm(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    gamma, beta = (node.inputs[k] if len(node.inputs) > k else None for k in (1, 2))
    if axis != 1 or not isinstance(gamma, gs.Constant) or not isinstance(beta, gs.Constant):
        return f"{node.op} '{node.name}' has no constant per-channel parameters on axis {axis}"
    g = np.asarray(gamma.values, dtype=np.float64).reshape(-1)
    return Moments(np.asarray(beta.values, dtype=np.float64).reshape(-1), g * g)


def _relu(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m = walk(node.inputs[0], axis)
    return m if isinstance(m, str) else _through(None, m)


def _activation(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m = walk(node.inputs[0], axis)
    return m if isinstance(m, str) else _through(ACTIVATIONS[node.op](node), m)


def _prelu(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m, slope = walk(node.inputs[0], axis), node.inputs[1]
    if isinstance(m, str):
        return m
    rank = _rank(out)
    a = _axis_vector(slope.values, rank, axis, len(m.mean)) if isinstance(slope, gs.Constant) and rank else None
    if a is None:
        return f"PRelu '{node.name}': slope is not per-channel on axis {axis}"
    col = a[:, None]  # one slope per channel, broadcast over the quadrature points
    return _through(lambda x: np.where(x >= 0, x, col * x), m)


def _same_axis(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    if axis != 1:
        return f"{node.op} '{node.name}': moments kept on the channel axis only"
    return walk(node.inputs[0], axis)


def _merge(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    x = node.inputs[0]
    sx = None if x.shape is None else [static(d) for d in x.shape]
    so = None if out.shape is None else [static(d) for d in out.shape]
    if axis != 1 or sx is None or so is None or len(sx) < 2 or len(so) != 2 or None in sx[1:]:
        return f"{node.op} '{node.name}': not a merge of [N, C, ...] into [N, features]"
    per = int(np.prod([int(d or 0) for d in sx[2:]], dtype=np.int64))
    if so[1] is not None and so[1] != sx[1] * per:  # type: ignore[operator]
        return f"{node.op} '{node.name}': not a merge of [N, C, ...] into [N, features]"
    m = walk(x, 1)
    return m if isinstance(m, str) else Moments(np.repeat(m.mean, per), np.repeat(m.var, per))


def _binary(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    a, b = node.inputs[0], node.inputs[1]
    rank = _rank(out)
    if rank is None:
        return f"{node.op} '{node.name}': rank unknown"
    ca, cb = isinstance(a, gs.Constant), isinstance(b, gs.Constant)
    if ca and cb:
        return f"{node.op} '{node.name}': constant"
    if not ca and not cb:
        return _two_activations(node, a, b, axis, walk)
    x, c = (b, a) if ca else (a, b)
    m = walk(x, axis)
    if isinstance(m, str):
        return m
    k = _axis_vector(c.values, rank, axis, len(m.mean))
    if k is None:
        return f"{node.op} '{node.name}': constant is not per-channel on axis {axis}"
    if node.op == "Add":
        return Moments(m.mean + k, m.var)
    if node.op == "Sub":
        return Moments(k - m.mean if ca else m.mean - k, m.var)
    if node.op == "Mul":
        return Moments(m.mean * k, m.var * k * k)
    if node.op == "Div" and not ca and np.all(k != 0):
        return Moments(m.mean / k, m.var / (k * k))
    return f"{node.op} '{node.name}': not an affine map of its input"


def _two_activations(node: gs.Node, a: gs.Tensor, b: gs.Tensor, axis: int, walk: Walk) -> Result:
    if node.op == "Mul":
        for x, g in ((a, b), (b, a)):
            gate = g.inputs[0] if g.inputs else None
            if gate is not None and gate.op in ACTIVATIONS and gate.inputs[0] is x:
                m = walk(x, axis)
                if isinstance(m, str):
                    return m
                act = ACTIVATIONS[gate.op](gate)
                return _through(lambda v: v * act(v), m)  # noqa: B023 - called before the loop moves on
        return f"Mul '{node.name}' multiplies two activations (a gate)"
    if node.op in ("Add", "Sub"):
        ma, mb = walk(a, axis), walk(b, axis)
        if isinstance(ma, str) or isinstance(mb, str):
            return ma if isinstance(ma, str) else mb  # type: ignore[return-value]
        if len(ma.mean) != len(mb.mean):
            return f"{node.op} '{node.name}': broadcast on axis {axis}"
        sign = 1.0 if node.op == "Add" else -1.0
        return Moments(ma.mean + sign * mb.mean, ma.var + mb.var)
    return f"{node.op} '{node.name}' combines two activations"


def _concat(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    rank = _rank(out)
    cat = int(node.attrs.get("axis", 0))
    if rank is None or (cat + rank if cat < 0 else cat) != axis:
        return f"Concat '{node.name}' is not on axis {axis}"
    parts = [walk(t, axis) for t in node.inputs]
    bad = next((p for p in parts if isinstance(p, str)), None)
    if bad is not None:
        return bad
    return Moments(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]))  # type: ignore[union-attr]


_SAME_AXIS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample", "Pad",
              "Identity", "Dropout", "LpPool", "GlobalLpPool")

#: how each op transforms per-channel moments
RULES: dict[str, Rule] = {
    "BatchNormalization": _norm,
    "InstanceNormalization": _norm,
    "Relu": _relu,
    "PRelu": _prelu,
    **dict.fromkeys(ACTIVATIONS, _activation),
    **dict.fromkeys(_SAME_AXIS, _same_axis),
    "Flatten": _merge,
    "Reshape": _merge,
    "Squeeze": _merge,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Concat": _concat,
}


def tensor_moments(tensor: gs.Tensor, axis: int, memo: dict[tuple[str, int], Result] | None = None) -> Result:
    """Per-element mean and variance of ``tensor`` along ``axis``, or why they cannot be estimated."""
    memo = {} if memo is None else memo

    def walk(t: gs.Tensor, ax: int) -> Result:
        key = (t.name, ax)
        if key not in memo:
            memo[key] = f"cycle at '{t.name}'"
            if isinstance(t, gs.Constant):
                memo[key] = f"'{t.name}' is a constant"
            elif not t.inputs:
                memo[key] = f"'{t.name}' is a graph input"
            else:
                node = t.inputs[0]
                rule = RULES.get(node.op)
                memo[key] = (rule(node, t, ax, walk) if rule is not None
                             else f"no BatchNormalization before {node.op} '{node.name}'")
        return memo[key]

    return walk(tensor, axis)
