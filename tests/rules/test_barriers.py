"""Barriers: unknown and custom ops, control flow, graph outputs, shared weights, the rule registry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import helper

import spa
from spa.rules.base import ChannelRule, Link, NodeContext, Relation, Slot
from spa.rules.defaults import DEFAULT_RULES, default_registry
from spa.rules.elementwise import UnaryRule
from spa.rules.registry import DuplicateRuleError, RuleRegistry
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _group, _row

OPSETS = [11, 17]


def _around(opset: int, middle) -> tuple[onnx.ModelProto, list[str], str]:  # type: ignore[no-untyped-def]
    """conv0 -> Relu -> conv1 -> <middle(b, h)> -> conv2 -> Relu -> conv3; returns model, weights, middle node."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 8)
    h, w1 = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    h, c = middle(b, h)
    name = b.nodes[-1].name
    h, w2 = _conv(b, h, c, 8)
    y, _ = _conv(b, b.op("Relu", [h]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    return b.build(), [w0, w1, w2], name


def _depth_to_space(b: GraphBuilder, h: str) -> tuple[str, int]:
    d = b.op("DepthToSpace", [h], blocksize=2, mode="CRD")  # [1, 2, 8, 8]: no spa rule for it
    return b.op("SpaceToDepth", [d], blocksize=2), 8  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
def test_op_without_rule_blocks_its_tensors(opset: int) -> None:
    assert default_registry().lookup("", "SpaceToDepth", opset) is None  # precondition of this test
    model, (w0, w1, w2), name = _around(opset, _depth_to_space)
    a = spa.analyze(model)
    g1, g2 = _group(a, w1, 0), _group(a, w2, 1)
    assert not g1.prunable and any("DepthToSpace" in reason for reason in g1.reasons), g1.reasons
    assert not g2.prunable and any(name in reason and "no channel rule" in reason for reason in g2.reasons)
    r = assert_oracle(model)  # the rest still prunes, exactly
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w2)["channels_after"] == 4
    assert _row(r, w1)["channels_after"] == 8
    assert r.report["num_pruned"] == 2


def _custom(b: GraphBuilder, h: str) -> tuple[str, int]:
    b.nodes.append(helper.make_node("QuickGelu", [h], ["custom_out"], name="my_custom", domain="com.microsoft"))
    return "custom_out", 8


@pytest.mark.parametrize("opset", OPSETS)
def test_custom_domain_op_in_the_middle(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 8)
    h, w1 = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    h, _ = _custom(b, h)
    h, w2 = _conv(b, h, 8, 8)
    y, _ = _conv(b, b.op("Relu", [h]), 8, 2, k=1)  # type: ignore[arg-type]
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [1, 2, 4, 4]))
    m = _with_contrib(b, [helper.make_tensor_value_info("custom_out", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    a = spa.analyze(m)
    g1 = _group(a, w1, 0)
    assert not g1.prunable and any("my_custom" in reason for reason in g1.reasons)
    r = assert_oracle(m)
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w2)["channels_after"] == 4


def _with_contrib(b: GraphBuilder, value_info: Sequence[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    """The builder's model importing the com.microsoft domain (GraphBuilder.build checks only ai.onnx)."""
    m = helper.make_model(
        helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits, value_info=list(value_info)),
        opset_imports=[helper.make_opsetid("", b.opset), helper.make_opsetid("com.microsoft", 1)],
    )
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("opset", OPSETS)
def test_custom_domain_op_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 8)
    h, w1 = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    h, _ = _custom(b, h)
    b.outputs.append(helper.make_tensor_value_info(h, onnx.TensorProto.FLOAT, [1, 8, 4, 4]))
    m = _with_contrib(b)
    a = spa.analyze(m)
    g1 = _group(a, w1, 0)
    assert not g1.prunable
    assert any("QuickGelu" in reason and "com.microsoft" in reason and "my_custom" in reason
               for reason in g1.reasons), g1.reasons
    r = assert_oracle(m)  # ORT runs the contrib op; the conv before it still prunes
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w1)["channels_after"] == 8
    assert any(n.domain == "com.microsoft" for n in r.model.graph.node)


def _if(b: GraphBuilder, h: str, cond_shape: list[int]) -> tuple[str, int]:
    cond = b.input("cond", cond_shape, onnx.TensorProto.BOOL)
    then_g = helper.make_graph([helper.make_node("Relu", [h], ["then_out"])], "then", [],
                               [helper.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [h], ["else_out"])], "else", [],
                               [helper.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    return b.op("If", [cond], then_branch=then_g, else_branch=else_g), 8  # type: ignore[return-value]




@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("cond_shape", [[1], pytest.param([])])
def test_if_with_subgraph_is_blocked(opset: int, cond_shape: list[int]) -> None:
    model, (w0, w1, w2), name = _around(opset, lambda b, h: _if(b, h, cond_shape))
    a = spa.analyze(model)
    g1 = _group(a, w1, 0)  # read inside the subgraphs
    assert not g1.prunable and any(name in reason and "subgraph" in reason for reason in g1.reasons), g1.reasons
    g2 = _group(a, w2, 1)  # the If output
    assert not g2.prunable and any(name in reason for reason in g2.reasons)
    r = assert_oracle(model)
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w1)["channels_after"] == 8
    assert _row(r, w2)["channels_after"] == 4
    assert sum(n.op_type == "If" for n in r.model.graph.node) == 1


@pytest.mark.parametrize("opset", OPSETS)
def test_graph_outputs_are_not_prunable(opset: int) -> None:
    """A feature map that is both a graph output and read by the next layer keeps its channels."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 4, 4])
    h, w0 = _conv(b, x, 3, 8)
    feat = b.op("Relu", [h])
    b.output(feat)  # type: ignore[arg-type]
    h2, w1 = _conv(b, feat, 8, 8)  # type: ignore[arg-type]
    y, _ = _conv(b, b.op("Relu", [h2]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    model = b.build()
    a = spa.analyze(model)
    g0 = _group(a, w0, 0)
    assert not g0.prunable and any("graph output" in reason and feat in reason for reason in g0.reasons)
    last = _group(a, y, 1)
    assert not last.prunable and any("graph output" in reason for reason in last.reasons)
    r = assert_oracle(model)
    assert _row(r, w1)["channels_after"] == 4
    assert _row(r, w0)["channels_after"] == 8


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_weight_shared_by_two_convs(opset: int, layout: str) -> None:
    """One initializer used by two Convs couples both convs' channels; both are pruned consistently."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 5, 5])
    h, w0 = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    shared = b.weight(8, 8, 3, 3)
    bias_a, bias_b = (b.const(b.rng.standard_normal(8).astype(np.float32), "bias") for _ in range(2))
    a_out = b.op("Conv", [h, shared, bias_a], pads=[1, 1, 1, 1])
    if layout == "parallel":
        b_out = b.op("Conv", [h, shared, bias_b], pads=[1, 1, 1, 1])
        h = b.op("Add", [b.op("Relu", [a_out]), b.op("Sigmoid", [b_out])])  # type: ignore[list-item]
    else:
        h = b.op("Conv", [b.op("Relu", [a_out]), shared, bias_b], pads=[1, 1, 1, 1])  # type: ignore[list-item]
    y, wy = _conv(b, b.op("Relu", [h]), 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    convs = [n for n in r.model.graph.node if n.op_type == "Conv"]
    assert sum(shared in n.input for n in convs) == 2  # still one shared initializer
    assert dims[bias_a] == dims[bias_b] == [dims[shared][0]]
    assert dims[shared][0] < 8
    if layout == "sequential":  # rows and columns of one weight are the same channels
        assert _row(r, shared, 0) == _row(r, shared, 1) == _row(r, w0)
        assert dims[shared][:2] == [4, 4] and dims[w0][0] == 4
    else:
        assert _row(r, shared, 1) == _row(r, w0)
        assert dims[shared][:2] == [4, 4]
    assert dims[wy][1] == dims[shared][0]


class _Relu2(ChannelRule):
    op_types = ("Relu",)
    min_opset = 14

    def relate(self, ctx: NodeContext) -> list[Relation]:
        x, y = ctx.input(0), ctx.output(0)
        return [Link(Slot(x.name, 1), Slot(y.name, 1))]  # type: ignore[union-attr]


def test_registry_duplicate_registration_raises() -> None:
    reg = RuleRegistry([UnaryRule()])
    with pytest.raises(DuplicateRuleError, match="Relu"):
        reg.register(_Relu2())  # overlaps UnaryRule's opset range
    with pytest.raises(DuplicateRuleError):
        RuleRegistry(list(DEFAULT_RULES) + [DEFAULT_RULES[0]])


def test_registry_disjoint_opsets_coexist() -> None:
    old = UnaryRule()
    old.max_opset = 13
    reg = RuleRegistry([old, _Relu2()])
    assert reg.lookup("", "Relu", 13) is old
    assert isinstance(reg.lookup("ai.onnx", "Relu", 17), _Relu2)
    assert reg.lookup("com.example", "Relu", 17) is None
    ops = default_registry().op_types()
    assert ops == sorted(set(ops)) and ("", "Conv") in ops
