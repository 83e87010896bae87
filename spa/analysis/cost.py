"""Multiply–accumulates of a model: one counter, asking each node's rule (:meth:`ChannelRule.cost`).

The MACs of a node follow from its op and its shapes; the op knowledge (Conv: ``numel(y)·(C/g)·Πk``,
Gemm/MatMul: ``numel(y)·K``, Einsum: ``Π`` of its distinct index sizes, ...) lives on the rules.

**Which shapes.** A node whose input and output shapes are all concrete ints is counted at those shapes.
When some are not — a symbolic batch, or a size ONNX shape inference leaves unknown (a Reshape whose
target is computed from ``Shape`` by ops it does not fold, e.g. tf2onnx's ``ReduceProd`` of the batch and
head sizes in attention) — the graph is evaluated once at concrete input shapes (:func:`concrete_shapes`:
every dynamic input dimension set to 1, shape vectors evaluated, ONNX's per-node shape inference fed
with their values) and such nodes are counted at those shapes. So the count is the MACs of one run with
every dynamic input dimension 1 (one sample); :func:`spa.analysis.metrics.set_input_shapes` gives the
graph other concrete input shapes first. A node that still has unknown shapes counts its unknown
dimensions as 1 (and nothing when its shapes are missing altogether).

>>> from spa.rules.base import Cost
>>> Cost(8).kept({})
8.0
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from spa.graph.model import ModelGraph
from spa.rules.base import ChannelRule, Cost, NodeContext
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)

#: the largest tensor whose *value* the shape evaluation tracks (shape vectors are short)
MAX_VALUE = 4096

Shapes = dict[str, tuple[int, ...]]


def _concrete(shape: object) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)  # type: ignore[attr-defined]


def _counts(rule: ChannelRule) -> bool:
    """Whether the rule overrides :meth:`ChannelRule.cost` (the others count nothing)."""
    return type(rule).cost is not ChannelRule.cost


def _rule(node: gs.Node, opset: int, registry: RuleRegistry) -> ChannelRule | None:
    return registry.lookup(node.domain or "", node.op, opset)


def node_cost(node: gs.Node, opset: int, registry: RuleRegistry | None = None,
              shapes: Mapping[str, tuple[int, ...]] | None = None) -> Cost | None:
    """The :class:`Cost` of one node from its rule (None: no rule, no MACs or shapes unknown).

    A rule that fails on a malformed node counts nothing (and is logged): counting never crashes a run.
    """
    rule = _rule(node, opset, registry or default_registry())
    if rule is None or not _counts(rule):
        return None
    try:
        return rule.cost(NodeContext(node, opset, shapes))
    except Exception as exc:  # noqa: BLE001 - a surprised rule must not crash a report
        log.debug("cost of %s '%s' failed: %s", node.op, node.name, exc)
        return None


def node_macs(node: gs.Node, opset: int = 17, registry: RuleRegistry | None = None) -> int:
    """MACs of one node at the shapes stored on its tensors (unknown dimensions count as 1)."""
    cost = node_cost(node, opset, registry)
    return cost.macs if cost is not None else 0


def _complete(node: gs.Node) -> bool:
    return all(_concrete(t.shape) for t in list(node.inputs) + list(node.outputs) if t is not None and t.name)


#: by id(graph): (the graph, weakly; a signature of its inputs and nodes; the costs) — estimate() asks many
#: times per plan search; the few most recent graphs are kept
_CACHE: dict[int, tuple[weakref.ref[gs.Graph], object, dict[int, Cost]]] = {}
_CACHE_SIZE = 8


def node_costs(mg: ModelGraph, registry: RuleRegistry | None = None) -> dict[int, Cost]:
    """The :class:`Cost` of every MAC-counted node, keyed by ``id(node)`` (see the module docstring for
    which shapes are used). Cached per graph until its input shapes or node count change."""
    registry = registry or default_registry()
    graph = mg.graph
    signature = (id(registry), len(graph.nodes), tuple((t.name, tuple(t.shape or ())) for t in graph.inputs),
                 tuple(id(n) for n in graph.nodes))
    hit = _CACHE.get(id(graph))
    if hit is not None and hit[0]() is graph and hit[1] == signature:
        return hit[2]
    opset = mg.opset
    out: dict[int, Cost] = {}
    pending: list[gs.Node] = []
    for node in graph.nodes:
        rule = _rule(node, opset, registry)
        if rule is None or not _counts(rule):
            continue
        if _complete(node):
            cost = node_cost(node, opset, registry)
            if cost is not None:
                out[id(node)] = cost
        else:
            pending.append(node)
    if pending:
        shapes = concrete_shapes(mg, registry)
        for node in pending:
            cost = node_cost(node, opset, registry, shapes)
            if cost is not None:
                out[id(node)] = cost
    _CACHE[id(graph)] = (weakref.ref(graph), signature, out)
    while len(_CACHE) > _CACHE_SIZE:
        del _CACHE[next(iter(_CACHE))]
    return out


def count_macs(mg: ModelGraph, registry: RuleRegistry | None = None) -> int:
    """Total MACs of the graph (one run; every dynamic input dimension 1 — see the module docstring)."""
    return sum(c.macs for c in node_costs(mg, registry).values())


# -- concrete shapes ---------------------------------------------------------------------------------------

def _type(elem: int, shape: tuple[int, ...] | None) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(elem, list(shape) if shape is not None else None)


def _elem(t: gs.Tensor) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)) if t.dtype is not None else onnx.TensorProto.FLOAT
    except (TypeError, KeyError):
        return onnx.TensorProto.FLOAT


def _node_proto(node: gs.Node) -> onnx.NodeProto | None:
    attrs: dict[str, Any] = {}  # helper.make_node takes attribute values of any type
    for k, v in node.attrs.items():
        if isinstance(v, gs.Graph):
            return None
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if v is not None:
            attrs[k] = v
    return helper.make_node(node.op, [t.name if t is not None else "" for t in node.inputs],
                            [t.name for t in node.outputs], name=node.name, domain=node.domain or "", **attrs)


def _evaluate(proto: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray] | None:
    """Run one node on known input values with ONNX's reference evaluator (None when it cannot)."""
    ins = [n for n in proto.input if n]
    graph = helper.make_graph([proto], "spa_eval", [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), list(values[n].shape))
        for n in ins], [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in proto.output if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {n: values[n] for n in ins})]
    except Exception:  # noqa: BLE001 - an op the evaluator lacks: the value stays unknown
        return None


def concrete_shapes(mg: ModelGraph, registry: RuleRegistry | None = None, fill: int = 1) -> Shapes:
    """The concrete shape of every tensor this evaluation can prove, with each dynamic input dimension
    set to ``fill``.

    Nodes are visited in order. A node whose output follows from input shapes alone (its rule's
    :meth:`~spa.rules.base.ChannelRule.shape_value`: Shape, Size), or whose inputs all have known small
    values (shape arithmetic: Gather, Concat, ReduceProd, Cast, ...; at most :data:`MAX_VALUE` elements)
    is evaluated; every other node gets its output shapes from ONNX's per-node shape inference, given the
    concrete input shapes and the known small values (a Reshape's computed target). What cannot be
    proven is left out.
    """
    ev = _ShapeEval.seeded(mg, registry or default_registry(), fill)
    for node in mg.graph.nodes:
        ev.visit(node)
    return ev.shapes


def shape_refusals(mg: ModelGraph, registry: RuleRegistry | None = None) -> list[str]:
    """Why ``mg`` cannot run at its inputs' (concrete) shapes, one line per node: ONNX's shape inference
    finds a contradiction (``Add`` of ``[1, 197, D]`` and a ``[1, 17, D]`` position table), or the node's
    rule :meth:`~spa.rules.base.ChannelRule.refuses` (a Reshape target the input cannot take, positions
    past a table). Empty: nothing shows the shapes are wrong (which is no proof they run)."""
    ev = _ShapeEval.seeded(mg, registry or default_registry(), 1)
    ev.refused = []
    for node in mg.graph.nodes:
        ev.visit(node)
    return ev.refused


@dataclass
class _ShapeEval:
    """What :func:`concrete_shapes` knows so far: shapes, element types and small values by tensor."""

    registry: RuleRegistry
    opset: int
    imports: list[onnx.OperatorSetIdProto]
    shapes: Shapes = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: when a list, :meth:`visit` appends why nodes cannot run at these shapes (:func:`shape_refusals`)
    refused: list[str] | None = None

    @classmethod
    def seeded(cls, mg: ModelGraph, registry: RuleRegistry, fill: int) -> _ShapeEval:
        """Start from the constants (their values when small) and the graph inputs (dynamic dims = ``fill``)."""
        ev = cls(registry, mg.opset, [helper.make_opsetid(o.domain, o.version) for o in mg.opset_imports])
        for name, t in mg.graph.tensors().items():
            if isinstance(t, gs.Constant):
                ev.shapes[name] = tuple(int(d) for d in t.shape)
                ev.types[name] = _elem(t)
                if int(np.prod(t.shape)) <= MAX_VALUE:
                    ev.values[name] = np.asarray(t.values)
        for t in mg.graph.inputs:
            if t.shape is not None:
                ev.shapes[t.name] = tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else fill
                                          for d in t.shape)
            ev.types[t.name] = _elem(t)
        return ev

    def visit(self, node: gs.Node) -> None:
        """Learn the node's output shapes: from its rule's shape value, by evaluating it on known small
        values, or from ONNX's per-node shape inference; nothing when none of these can tell."""
        names = [t.name for t in node.inputs if t is not None and t.name]
        if any(n not in self.shapes for n in names):
            return
        rule = _rule(node, self.opset, self.registry)
        if self.refused is not None and rule is not None:
            why = rule.refuses(NodeContext(node, self.opset, self.shapes), self.values)
            if why is not None:
                self.refused.append(why)
        value = rule.shape_value(NodeContext(node, self.opset, self.shapes)) \
            if rule is not None and len(node.outputs) == 1 else None
        if value is not None:
            out = node.outputs[0].name
            self.values[out], self.shapes[out], self.types[out] = value, tuple(value.shape), onnx.TensorProto.INT64
            return
        proto = _node_proto(node)
        if proto is None:
            return
        if all(n in self.values for n in names) and self._evaluated(node, proto):
            return
        self._infer(node, proto, names)

    def _evaluated(self, node: gs.Node, proto: onnx.NodeProto) -> bool:
        """Run the node on its known input values; whether that gave every output."""
        results = _evaluate(proto, self.values, self.opset)
        if results is None or len(results) != len(node.outputs):
            return False
        for t, v in zip(node.outputs, results):
            self.shapes[t.name] = tuple(v.shape)
            self.types[t.name] = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype != object else _elem(t)
            if v.size <= MAX_VALUE:
                self.values[t.name] = v
        return True

    def _infer(self, node: gs.Node, proto: onnx.NodeProto, names: list[str]) -> None:
        """ONNX's shape inference for one node at the concrete input shapes (and known small values)."""
        try:
            schema = onnx.defs.get_schema(node.op, self.opset if not node.domain else 1, node.domain or "")
        except Exception as exc:  # noqa: BLE001 - no schema (a custom op): outputs stay unknown
            log.debug("no schema for %s '%s': %s", node.op, node.name, exc)
            return
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                schema, proto, {n: _type(self.types.get(n, onnx.TensorProto.FLOAT), self.shapes[n]) for n in names},
                {n: numpy_helper.from_array(self.values[n], n) for n in names if n in self.values}, None,
                self.imports)
        except Exception as exc:  # noqa: BLE001 - inference refused: outputs stay unknown
            log.debug("no shapes for %s '%s': %s", node.op, node.name, exc)
            if self.refused is not None and isinstance(exc, onnx.shape_inference.InferenceError):
                self.refused.append(f"{node.op} '{node.name}': {str(exc).splitlines()[0][:120]}")
            return
        for t in node.outputs:
            tp = inferred.get(t.name)
            if tp is None or not tp.tensor_type.HasField("shape"):
                continue
            dims = tp.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[t.name] = tuple(int(d.dim_value) for d in dims)
                self.types[t.name] = tp.tensor_type.elem_type or _elem(t)
