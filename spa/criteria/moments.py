"""Moments of Gaussian channels pushed through activations (for the data-free ``obspa`` criterion).

A channel that leaves a BatchNormalization is modelled as ``N(β, γ²)``. Through a ReLU its mean and
variance have a closed form (the rectified Gaussian): with ``σ = √var``, ``α = μ/σ``,

    E[max(0, X)]  = μ Φ(α) + σ φ(α)
    E[max(0, X)²] = (μ² + σ²) Φ(α) + μ σ φ(α)

Other activations are integrated numerically with Gauss–Hermite quadrature (:func:`gaussian_moments`).
:data:`ACTIVATIONS` maps each supported op to its elementwise function, built from the node's
attributes and constant inputs.

>>> m, v = relu_moments(np.array([0.0]), np.array([1.0]))
>>> round(float(m[0]), 4), round(float(v[0]), 4)   # 1/√(2π), 1/2 − 1/(2π)
(0.3989, 0.3408)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

Fn = Callable[[np.ndarray], np.ndarray]
_erf = np.vectorize(math.erf, otypes=[np.float64])
QUADRATURE_POINTS = 64


@functools.lru_cache(maxsize=4)
def _hermite(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1."""
    x, w = np.polynomial.hermite_e.hermegauss(points)
    return x, w / w.sum()


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF Φ."""
    return 0.5 * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def norm_pdf(x: np.ndarray) -> np.ndarray:
    """Standard normal density φ."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


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

