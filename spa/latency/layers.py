"""Per-layer configurations of a model (original or pruned by a plan) and their one-node benchmark models.

A *cost-bearing* node is one whose rule declares a latency key (:meth:`ChannelRule.latency_key`: Conv,
ConvTranspose, Gemm, MatMul) and whose shapes are known; its latency depends only on its
:class:`LayerConfig`: the op, the concrete shape of every input (batch and channel counts included),
which inputs are weights (initializers, which ONNX Runtime pre-packs), the attributes that change the
computation (the rule's key: kernel, strides, pads, dilations, group, ...) and the element type. Cheap
ops around them (BatchNormalization, activations, Add, pooling) are not tabulated: the latency model of
:mod:`spa.latency.predict` accounts for them as a residual.

A plan changes configurations without surgery: every tensor's pruned shape is its concrete shape with
the kept element count of each pruned axis (:func:`spa.budget.kept_sizes`); a grouped Conv's ``group``
follows from its pruned input and weight (depthwise: one group per kept channel; the rule recomputes it).

>>> cfg = LayerConfig("Conv", "float32", ((1, 8, 4, 4), (16, 8, 3, 3)), (False, True),
...                   (("dilations", (1, 1)), ("group", 1), ("pads", (1, 1, 1, 1)), ("strides", (1, 1))),
...                   (1, 16, 4, 4))
>>> cfg.key
'["Conv","float32",[[1,8,4,4],[16,8,3,3]],[false,true],[["dilations",[1,1]],["group",1],["pads",[1,1,1,1]],["strides",[1,1]]]]'
>>> model, feeds = benchmark_model(cfg)
>>> [i.name for i in model.graph.input], feeds["x0"].shape
(['x0'], (1, 8, 4, 4))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from spa.graph.model import ModelGraph, infer_shapes
from spa.rules.base import AttrValue, ChannelRule, NodeContext, Slot
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry

#: opset and IR version of the one-node models (ONNX Runtime 1.31 refuses the IR version onnx 1.23 writes)
OPSET, IR_VERSION = 17, 8

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerConfig:
    """Everything a cost-bearing node's latency depends on.

    Attributes:
        op: ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.
        dtype: element type of the inputs (numpy name, e.g. ``float32``).
        inputs: concrete shape of each input (batch first).
        weights: whether each input is an initializer.
        attrs: the computation's attributes, sorted by name, defaults filled in.
        output: concrete output shape (follows from the rest; not part of the key).
    """

    op: str
    dtype: str
    inputs: tuple[Shape, ...]
    weights: tuple[bool, ...]
    attrs: tuple[tuple[str, AttrValue], ...]
    output: Shape

    @property
    def key(self) -> str:
        """A stable string naming this configuration (the lookup table's key)."""
        return json.dumps([self.op, self.dtype, [list(s) for s in self.inputs], list(self.weights),
                           [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.attrs]],
                          separators=(",", ":"))


def _tabulating_rule(node: gs.Node, opset: int, registry: RuleRegistry) -> ChannelRule | None:
    """The node's rule when it declares a latency key (:meth:`ChannelRule.latency_key`), else None."""
    rule = registry.lookup(node.domain or "", node.op, opset)
    return rule if rule is not None and type(rule).latency_key is not ChannelRule.latency_key else None


def cost_nodes(mg: ModelGraph, registry: RuleRegistry | None = None) -> list[gs.Node]:
    """The nodes whose latency the table covers (their rule declares a latency key), in graph order."""
    registry = registry or default_registry()
    return [n for n in mg.graph.nodes if len(n.inputs) >= 2 and _tabulating_rule(n, mg.opset, registry) is not None]


def concrete_shapes(mg: ModelGraph, inputs: Mapping[str, Sequence[int]]) -> dict[str, Shape]:
    """The concrete shape of every tensor when the graph inputs have the shapes ``inputs``.

    Static models are read as they are; a model with dynamic dimensions is shape-inferred anew (on a
    copy) with the given input shapes, the ones ONNX Runtime is timed with.
    """
    graph = mg.graph
    static = all(tuple(t.shape or ()) == tuple(inputs.get(t.name, ())) for t in graph.inputs)
    if static:
        return {name: tuple(int(d) for d in t.shape) for name, t in graph.tensors().items()
                if t.shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in t.shape)}
    model = mg.interface()  # shapes only: large weights as data-less stand-ins
    for vi in model.graph.input:
        if vi.name in inputs:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, inputs[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    infer_shapes(model)
    out: dict[str, Shape] = {name: tuple(int(d) for d in t.shape) for name, t in graph.tensors().items()
                             if isinstance(t, gs.Constant)}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return out


def _pruned(name: str, shape: Shape, sizes: Mapping[Slot, tuple[int, int]]) -> Shape:
    return tuple(sizes[Slot(name, a)][0] if Slot(name, a) in sizes else d for a, d in enumerate(shape))


def layer_configs(
    mg: ModelGraph,
    shapes: Mapping[str, Shape],
    sizes: Mapping[Slot, tuple[int, int]] | None = None,
    registry: RuleRegistry | None = None,
) -> dict[str, LayerConfig]:
    """The configuration of every cost-bearing node with known shapes, by node name.

    Args:
        mg: the (original) model.
        shapes: concrete shape of every tensor (:func:`concrete_shapes`).
        sizes: ``(kept, size)`` per pruned slot (:func:`spa.budget.kept_sizes`); ``None``: the original.
        registry: the rules that say which nodes are tabulated and their attributes (default rules).
    """
    sizes = sizes or {}
    registry = registry or default_registry()
    out: dict[str, LayerConfig] = {}
    for node in cost_nodes(mg, registry):
        cfg = node_config(node, mg.opset, shapes, sizes, registry)
        if cfg is not None:
            out[node.name] = cfg
    return out


def node_config(node: gs.Node, opset: int, shapes: Mapping[str, Shape],
                sizes: Mapping[Slot, tuple[int, int]], registry: RuleRegistry) -> LayerConfig | None:
    """The configuration of one cost-bearing node at the pruned ``sizes`` (None: shapes unknown, no latency
    key, or an element type numpy lacks)."""
    ins = list(node.inputs)
    if any(not t.name or t.name not in shapes for t in ins) or node.outputs[0].name not in shapes:
        return None
    in_shapes = tuple(_pruned(t.name, shapes[t.name], sizes) for t in ins)
    y = node.outputs[0]
    out_shape = _pruned(y.name, shapes[y.name], sizes)
    rule = _tabulating_rule(node, opset, registry)
    attrs = rule.latency_key(NodeContext(node, opset), in_shapes, out_shape) if rule is not None else None
    if attrs is None:
        return None
    try:
        dtype = np.dtype(ins[0].dtype if ins[0].dtype is not None else np.float32).name
    except TypeError:  # an element type numpy lacks (bfloat16, float8): left to the residual
        return None
    return LayerConfig(node.op, dtype, in_shapes, tuple(isinstance(t, gs.Constant) for t in ins), attrs, out_shape)


def benchmark_model(cfg: LayerConfig, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node ONNX model computing ``cfg`` and seeded random feeds for its graph inputs.

    Weights become initializers with random values (so ONNX Runtime pre-packs them as in the real
    model); activations become graph inputs named ``x0``, ``x1``, ...
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(cfg.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    names, inits, graph_inputs = [], [], []
    feeds: dict[str, np.ndarray] = {}
    for i, (shape, is_weight) in enumerate(zip(cfg.inputs, cfg.weights)):
        value = (rng.random(shape, dtype=np.float32) - 0.5).astype(dtype, copy=False)
        if is_weight:
            name = f"w{i}"
            inits.append(numpy_helper.from_array(value, name))
        else:
            name = f"x{i}"
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
            feeds[name] = value
        names.append(name)
    node = helper.make_node(cfg.op, names, ["y"])
    node.attribute.extend(helper.make_attribute(k, list(v) if isinstance(v, tuple) else v) for k, v in cfg.attrs)
    graph = helper.make_graph([node], "spa_layer", graph_inputs,
                              [helper.make_tensor_value_info("y", elem, list(cfg.output))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, feeds
