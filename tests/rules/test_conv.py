"""Conv and ConvTranspose rules: plain, depthwise, grouped; 1D/2D/3D; with and without bias."""

from __future__ import annotations

import pytest

import spa
from spa.analysis.groups import analyze_graph
from spa.rules.conv import whole_group_rules
from spa.rules.defaults import DEFAULT_RULES, default_registry
from spa.rules.registry import RuleRegistry
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _group

OPSETS = [11, 17]


def _chain(opset: int, group: int, cin: int = 8, mid: int = 8, bias: bool = True, dims: int = 2) -> GraphBuilder:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, cin] + [6] * dims)
    h = b.conv(x, cin, mid, bias=bias, dims=dims)
    h = b.op("Relu", [h])
    h = b.conv(h, mid, mid, group=group, bias=bias, dims=dims)  # type: ignore[arg-type]
    h = b.op("Relu", [h])
    y = b.conv(h, mid, 4, k=1, bias=bias, dims=dims)  # type: ignore[arg-type]
    b.output(y)
    return b


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_plain_conv_chain(opset: int, bias: bool, dims: int) -> None:
    r = assert_oracle(_chain(opset, 1, bias=bias, dims=dims).build())
    assert r.report["num_pruned"] == 2


@pytest.mark.parametrize("opset", OPSETS)
def test_depthwise_shrinks_group(opset: int) -> None:
    r = assert_oracle(_chain(opset, group=8).build(), 0.5)
    dw = [n for n in r.model.graph.node
          if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(dw) == 1
    assert next(a.i for a in dw[0].attribute if a.name == "group") == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_depthwise_multiplier(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h = b.op("Relu", [b.conv(x, 3, 6)])
    h = b.conv(h, 6, 12, group=6)  # type: ignore[arg-type]
    b.output(b.conv(b.op("Relu", [h]), 12, 2, k=1))  # type: ignore[arg-type]
    r = assert_oracle(b.build(), 0.5)
    groups = [a.i for n in r.model.graph.node for a in n.attribute if a.name == "group"]
    assert 3 in groups


@pytest.mark.parametrize("opset", OPSETS)
def test_grouped_conv_keeps_groups_equal(opset: int) -> None:
    r = assert_oracle(_chain(opset, group=4, mid=16).build(), 0.5)
    for n in r.model.graph.node:
        g = next((a.i for a in n.attribute if a.name == "group"), 1)
        if g > 1:
            assert g == 4


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [1, 2])
def test_grouped_conv_whole_groups(opset: int, bias: bool, dims: int) -> None:
    """``ConvRule(whole_groups=True)``: fewer groups of the same width; the removed groups' inputs and
    outputs go with them (the producer before, the consumer after)."""
    r = assert_oracle(_chain(opset, group=4, mid=16, bias=bias, dims=dims).build(), 0.5, round_to=1,
                      registry=RuleRegistry(whole_group_rules(DEFAULT_RULES)))
    grouped = [n for n in r.model.graph.node if n.op_type == "Conv"
               and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    assert len(grouped) == 1
    assert next(a.i for a in grouped[0].attribute if a.name == "group") == 2
    w = next(i for i in r.model.graph.initializer if i.name == grouped[0].input[1])
    assert list(w.dims[:2]) == [8, 4]  # 2 groups x 4 outputs, still 4 inputs per group


def test_whole_groups_analysis_counts_groups() -> None:
    """One channel per group: a group's input and output channels of the grouped Conv are one element,
    so its input side (the first conv's outputs) and output side (the last conv's inputs) are one group
    of 4 (in-group positions: two groups of 4 positions each)."""
    mg = spa.load(_chain(17, group=4, mid=16).build())
    whole = analyze_graph(mg, RuleRegistry(whole_group_rules(DEFAULT_RULES)))
    positions = analyze_graph(mg, default_registry())
    assert [g.channels for g in whole.prunable] == [4]
    assert [g.channels for g in positions.prunable] == [4, 4]


def test_conv_with_unknown_channel_count_is_blocked() -> None:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, "C", 6, 6])
    w = b.input("w", [4, "C", 3, 3])
    h = b.op("Conv", [x, w])
    b.output(b.conv(b.op("Relu", [h]), 4, 2))  # type: ignore[arg-type]
    a = spa.analyze(b.build())
    assert not any(g.prunable for g in a.groups if any(m.tensor == "w" for m in g.members))


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_weight_computed_at_run_time_blocks_the_contraction(opset: int, op: str) -> None:
    """A Conv/ConvTranspose whose weight is an activation (found by the fuzzer: ``Conv(x, relu(...))``):
    nothing in the masked twin could zero the contracted channels, so they are blocked."""
    from tests.rules.helpers import _group

    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 4, 5, 5])
    h = b.op("Relu", [b.conv(x, 4, 6, k=1)])  # [1, 6, 5, 5]
    shape = (2, 6, 1, 1) if op == "Conv" else (6, 2, 1, 1)  # Conv: [M, C, k, k]; ConvTranspose: [C, M, k, k]
    w = b.op("Mul", [b.weight(*shape), b.input("scale", [1])])  # a weight scaled at run time
    y = b.op(op, [h, w])  # type: ignore[list-item]
    b.output(b.conv(y, 2, 2, k=1))  # type: ignore[arg-type]
    model = b.build()
    a = spa.analyze(model)
    g = _group(a, model.graph.node[0].input[1], 0)
    assert not g.prunable and any("computed at run time" in r for r in g.reasons), g.reasons
    assert_oracle(model, 0.5, expect_pruned=False)


@pytest.mark.parametrize("opset", [13, 17])
def test_dynamic_input_channel_axis(opset: int) -> None:
    """optimum declares ``pixel_values`` as ``[batch, num_channels, height, width]``: the stem Conv's input
    channel count is its weight's, so its output channels still prune (ResNet: the whole residual stream)."""
    b = GraphBuilder(opset=opset)
    x = b.input("pixel_values", ["batch", "num_channels", 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    w1 = b.nodes[-2].input[1]
    b.output(b.conv(h, 8, 4), ["batch", 4, 8, 8])  # type: ignore[arg-type]
    m = b.build()
    assert _group(spa.analyze(m), w1, 0).prunable
    r = spa.prune(m, ratio=0.5, emit_masked=True)
    assert spa.verify(r.model, r.masked, shapes={"pixel_values": (2, 3, 8, 8)}).ok
