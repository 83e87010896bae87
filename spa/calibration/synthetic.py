"""Synthetic activations for data-free statistics: BatchNorm layers that use the batch's own statistics.

A trained network's BatchNormalization layers remember what its activations look like on real data:
per channel, the BN output has mean ``β`` and standard deviation ``|γ|``. :func:`batch_norm_model`
rewrites a copy of the model so that every inference-mode BatchNormalization normalises its input with
the *batch's* mean and variance (over every axis but the channel axis) instead of the running ones:

    y = γ · (x − mean_batch(x)) / √(var_batch(x) + ε) + β

Fed with seeded random inputs, the copy produces activations whose per-channel first and second
moments after every BN match the trained ones, while the correlations between channels and between
neighbouring positions come from the network's own filters. Statistics collected on them stand in
for calibration data (``obspa``). The rewritten nodes keep the BN output names, so taps on the
original tensors still work.

>>> from onnx import helper, TensorProto, numpy_helper
>>> import numpy as np
>>> inits = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("g", "b", "m", "v")]
>>> g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3, 3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2, 3, 3])], inits)
>>> m = batch_norm_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
>>> sorted({n.op_type for n in m.graph.node})
['Add', 'Div', 'Mul', 'ReduceMean', 'Reshape', 'Sqrt', 'Sub']
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from spa.graph.model import infer_shapes
from spa.rules.base import NodeContext
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry


def _ranks_and_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    ranks, types = {}, {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
        types[vi.name] = tt.elem_type or onnx.TensorProto.FLOAT
    return ranks, types


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@functools.lru_cache(maxsize=1)
def _registry() -> RuleRegistry:
    return default_registry()


def _running_stats(node: onnx.NodeProto, opset: int) -> bool:
    """Whether the default rules say ``node`` normalises with stored running statistics (BatchNormalization)."""
    rule = _registry().lookup(node.domain, node.op_type, opset)
    return rule is not None and rule.running_stats(NodeContext(gs.Node(node.op_type, node.name), opset))


def batch_norm_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose inference BatchNormalizations use batch statistics.

    A BN whose input rank is unknown, or that runs in training mode already, is left as it is.
    """
    out = copy.deepcopy(model)
    graph = out.graph
    ranks, types = _ranks_and_types(model)
    opset = _opset(model)
    if any(_running_stats(n, opset) and n.input[0] not in ranks for n in model.graph.node):
        ranks, types = _ranks_and_types(infer_shapes(copy.deepcopy(model)))
    axes_as_input = _opset(model) >= 18
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(model.graph.node):
        rank = ranks.get(node.input[0]) if _running_stats(node, opset) else None
        floating = types.get(node.input[0], onnx.TensorProto.FLOAT) in _FLOAT_TYPES
        if (rank is None or rank < 2 or not floating or len(node.input) < 5
                or (len(node.output) > 1 and any(node.output[1:]))):
            nodes.append(node)
            continue
        p = f"__spa_bn{k}_"
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        axes = [0, *range(2, rank)]
        graph.initializer.extend([
            numpy_helper.from_array(np.array(axes, dtype=np.int64), p + "axes"),
            numpy_helper.from_array(np.array([1, -1] + [1] * (rank - 2), dtype=np.int64), p + "shape"),
            numpy_helper.from_array(np.array(eps, dtype=helper.tensor_dtype_to_np_dtype(
                types.get(node.input[0], onnx.TensorProto.FLOAT))), p + "eps"),
        ])

        def mean(src: str, dst: str) -> onnx.NodeProto:
            if axes_as_input:
                return helper.make_node("ReduceMean", [src, p + "axes"], [dst], keepdims=1)  # noqa: B023
            return helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1)  # noqa: B023

        x, gamma, beta = node.input[0], node.input[1], node.input[2]
        nodes += [
            mean(x, p + "mean"),
            helper.make_node("Sub", [x, p + "mean"], [p + "centred"]),
            helper.make_node("Mul", [p + "centred", p + "centred"], [p + "square"]),
            mean(p + "square", p + "var"),
            helper.make_node("Add", [p + "var", p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "centred", p + "std"], [p + "normed"]),
            helper.make_node("Reshape", [gamma, p + "shape"], [p + "gamma"]),
            helper.make_node("Reshape", [beta, p + "shape"], [p + "beta"]),
            helper.make_node("Mul", [p + "normed", p + "gamma"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "beta"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return out
