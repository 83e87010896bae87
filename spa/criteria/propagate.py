"""Estimate the per-channel mean and variance of a tensor from the graph alone (no data).

:func:`tensor_moments` walks back from a tensor to the nearest normalisation: a BatchNormalization
(or InstanceNormalization) output is ``N(β, γ²)`` per channel. On the way forward again each node's rule
transforms the moments (:meth:`spa.rules.base.ChannelRule.moments`; the transfers and their maths are in
:mod:`spa.rules.moments`): activations in closed form or by quadrature, pooling/resizing/padding
unchanged, Flatten/Reshape merges repeated, affine maps with per-channel constants, independent sums,
``x·act(x)`` gates, Concat.

Anything else (a Conv without BN, a graph input, an SE gate) yields a *reason* string instead, and the
caller falls back to statistics from data.

>>> import numpy as np
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

import onnx_graphsurgeon as gs

from spa.rules.base import NodeContext
from spa.rules.defaults import default_registry
from spa.rules.moments import Moments, Result
from spa.rules.registry import RuleRegistry

__all__ = ["Moments", "Result", "tensor_moments"]


def tensor_moments(tensor: gs.Tensor, axis: int, memo: dict[tuple[str, int], Result] | None = None, *,
                   registry: RuleRegistry | None = None, opset: int = 17) -> Result:
    """Per-element mean and variance of ``tensor`` along ``axis``, or why they cannot be estimated.

    Walks back to the nearest normalisation; each node's rule transfers the moments of its inputs to its
    output (:meth:`~spa.rules.base.ChannelRule.moments`); ``memo`` is shared across calls on one graph.
    """
    memo = {} if memo is None else memo
    registry = registry or default_registry()

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
                rule = registry.lookup(node.domain or "", node.op, opset)
                memo[key] = (rule.moments(NodeContext(node, opset), t, ax, walk) if rule is not None
                             else f"no BatchNormalization before {node.op} '{node.name}'")
        return memo[key]

    return walk(tensor, axis)
