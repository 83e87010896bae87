"""Moments of Gaussian channels pushed through activations (for the data-free ``obspa`` criterion).

A channel that leaves a BatchNormalization is modelled as ``N(β, γ²)``. Through a ReLU its mean and
variance have a closed form (the rectified Gaussian): with ``σ = √var``, ``α = μ/σ``,

    E[max(0, X)]  = μ Φ(α) + σ φ(α)
    E[max(0, X)²] = (μ² + σ²) Φ(α) + μ σ φ(α)

Other activations are integrated numerically with Gauss–Hermite quadrature (:func:`gaussian_moments`).
:data:`ACTIVATIONS` maps each supported op to its elementwise function, built from the node's
attributes and constant inputs.

The rules transfer moments through their ops with the functions below (each rule's
:meth:`~spa.rules.base.ChannelRule.moments` hook picks one): a BatchNormalization or
InstanceNormalization output is ``N(β, γ²)`` per channel; activations as above, including
``Mul(x, act(x))`` gates (SiLU/Swish); ops that keep channels in place (pooling, resizing, padding)
leave them unchanged — an approximation: pooling lowers the variance and max-pooling raises the mean;
Flatten / Reshape / Squeeze merging ``[N, C, *S]`` into ``[N, C·ΠS]`` repeat each channel's moments over
its ``ΠS`` features; Add/Sub/Mul/Div with a per-channel constant shift/scale them (``E[x+k] = μ+k``,
``Var[kx] = k²σ²``); Add/Sub of two activations add them as independent (``Var[a±b] = σa² + σb²``);
Concat on the axis concatenates them.

>>> m, v = relu_moments(np.array([0.0]), np.array([1.0]))
>>> round(float(m[0]), 4), round(float(v[0]), 4)   # 1/√(2π), 1/2 − 1/(2π)
(0.3989, 0.3408)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.rules.base import static

Fn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Moments:
    """Per-element mean and variance along one axis of a tensor."""

    mean: np.ndarray
    var: np.ndarray


#: moments, or why they cannot be estimated
Result = Moments | str
#: the walker a transfer asks for the moments of one of its inputs along an axis
Walk = Callable[[gs.Tensor, int], Result]
#: how one op transforms moments: (node, its output, the axis, the walker) → result
Transfer = Callable[[gs.Node, gs.Tensor, int, Walk], Result]
_erf = np.vectorize(math.erf, otypes=[np.float64])
QUADRATURE_POINTS = 64


@functools.lru_cache(maxsize=4)
def _hermite(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1."""
    x, w = np.polynomial.hermite_e.hermegauss(points)
    return x, w / w.sum()


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF Φ."""
    return np.asarray(0.5 * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0))), dtype=np.float64)


def norm_pdf(x: np.ndarray) -> np.ndarray:
    """Standard normal density φ."""
    x = np.asarray(x, dtype=np.float64)
    return np.asarray(np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi), dtype=np.float64)


def relu_moments(mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``max(0, X)`` for ``X ~ N(mu, var)`` (elementwise, closed form)."""
    mu = np.asarray(mu, dtype=np.float64)
    sd = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 0.0))
    safe = np.where(sd > 0, sd, 1.0)
    a = mu / safe
    cdf, pdf = norm_cdf(a), norm_pdf(a)
    m1 = np.where(sd > 0, mu * cdf + sd * pdf, np.maximum(mu, 0.0))
    m2 = np.where(sd > 0, (mu * mu + sd * sd) * cdf + mu * sd * pdf, np.maximum(mu, 0.0) ** 2)
    return m1, np.maximum(m2 - m1 * m1, 0.0)


def gaussian_moments(f: Fn, mu: np.ndarray, var: np.ndarray, points: int = QUADRATURE_POINTS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``f(X)`` for ``X ~ N(mu, var)`` by Gauss–Hermite quadrature."""
    x, w = _hermite(points)
    mu = np.asarray(mu, dtype=np.float64)[..., None]
    sd = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 0.0))[..., None]
    y = f(mu + sd * x)
    m1 = y @ w
    m2 = (y * y) @ w
    return m1, np.maximum(m2 - m1 * m1, 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _const_input(node: gs.Node, k: int) -> float | None:
    if k < len(node.inputs) and isinstance(node.inputs[k], gs.Constant) and node.inputs[k].name:
        return float(np.asarray(node.inputs[k].values).reshape(-1)[0])
    return None


def _clip(node: gs.Node) -> Fn:
    lo = _const_input(node, 1)
    hi = _const_input(node, 2)
    lo = float(node.attrs.get("min", -np.inf)) if lo is None else lo
    hi = float(node.attrs.get("max", np.inf)) if hi is None else hi
    return lambda x: np.clip(x, lo, hi)


def _attr(node: gs.Node, name: str, default: float) -> float:
    return float(node.attrs.get(name, default))


def _gelu(node: gs.Node) -> Fn:
    if node.attrs.get("approximate", "none") == "tanh":
        return lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return lambda x: x * norm_cdf(x)


def _leaky_relu(node: gs.Node) -> Fn:
    a = _attr(node, "alpha", 0.01)
    return lambda x: np.where(x >= 0, x, a * x)


def _elu(node: gs.Node, alpha: float = 1.0, gamma: float = 1.0) -> Fn:
    a, g = _attr(node, "alpha", alpha), _attr(node, "gamma", gamma)
    return lambda x: g * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))


def _hard_sigmoid(node: gs.Node) -> Fn:
    a, b = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    return lambda x: np.clip(a * x + b, 0, 1)


#: elementwise activation functions, built from the node (attributes, constant inputs)
ACTIVATIONS: dict[str, Callable[[gs.Node], Fn]] = {
    "Sigmoid": lambda n: _sigmoid,
    "Tanh": lambda n: np.tanh,
    "LeakyRelu": _leaky_relu,
    "Elu": _elu,
    "Selu": lambda n: _elu(n, 1.67326319217681884765625, 1.05070102214813232421875),
    "Softplus": lambda n: (lambda x: np.logaddexp(0.0, x)),
    "Softsign": lambda n: (lambda x: x / (1 + np.abs(x))),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n: (lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Mish": lambda n: (lambda x: x * np.tanh(np.logaddexp(0.0, x))),
    "Gelu": _gelu,
    "Clip": _clip,
    "Abs": lambda n: np.abs,
    "Neg": lambda n: np.negative,
}


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
    return np.array(np.broadcast_to(v.reshape(-1), (size,)), dtype=np.float64)


def _through(f: Fn | None, m: Moments) -> Moments:
    """Moments of ``f(x)`` elementwise (``f`` None: ReLU, in closed form)."""
    return Moments(*(relu_moments(m.mean, m.var) if f is None else gaussian_moments(f, m.mean, m.var)))


def norm_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    gamma, beta = (node.inputs[k] if len(node.inputs) > k else None for k in (1, 2))
    if axis != 1 or not isinstance(gamma, gs.Constant) or not isinstance(beta, gs.Constant):
        return f"{node.op} '{node.name}' has no constant per-channel parameters on axis {axis}"
    g = np.asarray(gamma.values, dtype=np.float64).reshape(-1)
    return Moments(np.asarray(beta.values, dtype=np.float64).reshape(-1), g * g)


def relu_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m = walk(node.inputs[0], axis)
    return m if isinstance(m, str) else _through(None, m)


def activation_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m = walk(node.inputs[0], axis)
    return m if isinstance(m, str) else _through(ACTIVATIONS[node.op](node), m)


def prelu_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    m, slope = walk(node.inputs[0], axis), node.inputs[1]
    if isinstance(m, str):
        return m
    rank = _rank(out)
    a = _axis_vector(slope.values, rank, axis, len(m.mean)) if isinstance(slope, gs.Constant) and rank else None
    if a is None:
        return f"PRelu '{node.name}': slope is not per-channel on axis {axis}"
    col = a[:, None]  # one slope per channel, broadcast over the quadrature points
    return _through(lambda x: np.where(x >= 0, x, col * x), m)


def same_axis_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    if axis != 1:
        return f"{node.op} '{node.name}': moments kept on the channel axis only"
    return walk(node.inputs[0], axis)


def merge_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
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


def binary_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
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
            return ma if isinstance(ma, str) else mb
        if len(ma.mean) != len(mb.mean):
            return f"{node.op} '{node.name}': broadcast on axis {axis}"
        sign = 1.0 if node.op == "Add" else -1.0
        return Moments(ma.mean + sign * mb.mean, ma.var + mb.var)
    return f"{node.op} '{node.name}' combines two activations"


def concat_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    rank = _rank(out)
    cat = int(node.attrs.get("axis", 0))
    if rank is None or (cat + rank if cat < 0 else cat) != axis:
        return f"Concat '{node.name}' is not on axis {axis}"
    parts = [walk(t, axis) for t in node.inputs]
    bad = next((p for p in parts if isinstance(p, str)), None)
    if bad is not None:
        return bad
    return Moments(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]))  # type: ignore[union-attr]


def unary_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    """ReLU in closed form, the other activations of :data:`ACTIVATIONS` by quadrature, Identity and
    Dropout (inference) unchanged; any other unary op is a reason."""
    if node.op == "Relu":
        return relu_transfer(node, out, axis, walk)
    if node.op in ACTIVATIONS:
        return activation_transfer(node, out, axis, walk)
    if node.op in ("Identity", "Dropout"):
        return same_axis_transfer(node, out, axis, walk)
    return no_transfer(node)


def broadcast_transfer(node: gs.Node, out: gs.Tensor, axis: int, walk: Walk) -> Result:
    """PRelu with a per-channel slope; Add/Sub/Mul/Div (affine maps, independent sums, gates)."""
    if node.op == "PRelu":
        return prelu_transfer(node, out, axis, walk)
    if node.op in ("Add", "Sub", "Mul", "Div"):
        return binary_transfer(node, out, axis, walk)
    return no_transfer(node)


def no_transfer(node: gs.Node) -> str:
    """The reason when an op has no moment transfer (the walk stops there)."""
    return f"no BatchNormalization before {node.op} '{node.name}'"
