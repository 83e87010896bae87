"""PruneOptions: one frozen, validated value; the API takes it (or its fields), the CLI builds it once, and a
user's own rule registry prunes through :func:`spa.prune`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.errors import UsageError
from spa.options import PruneOptions
from spa.rules.base import ChannelRule, NodeContext, Relation, identity_links
from spa.rules.defaults import DEFAULT_RULES
from spa.rules.registry import RuleRegistry
from tests.oracle import GraphBuilder


def _cnn() -> onnx.ModelProto:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 16)])
    b.output(b.conv(h, 16, 4))  # type: ignore[arg-type]
    return b.build()


@pytest.mark.parametrize(("changes", "match"), [
    ({"ratio": 1.0}, r"ratio \(--ratio\) must be in \[0, 1\)"),
    ({"ratio": -0.1}, "ratio"),
    ({"round_to": 0}, "round_to"),
    ({"min_channels": 0}, "min_channels"),
    ({"max_ratio": 1.0}, "max_ratio"),
    ({"consumer_mode": "fastest"}, "consumer_mode"),
    ({"hidden_ratio": 0.3}, "needs prune_hidden"),
    ({"head_ratio": 1.5}, "head_ratio"),
    ({"overrides": [("fc*", 2.0)]}, "override ratio of 'fc\\*'"),
    ({"target_latency": 0.5, "target_macs": 0.5}, "one budget"),
])
def test_invalid_options_are_refused_when_made(changes: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        PruneOptions(**changes)  # type: ignore[arg-type]


def test_options_are_frozen_and_replace_validates() -> None:
    o = PruneOptions(ratio=0.3, ignore=["a*"], overrides=[("fc*", 0)], criterion_options={"damp": 0.1})
    assert o.ignore == ("a*",) and o.overrides == (("fc*", 0.0),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.ratio = 0.4  # type: ignore[misc]
    with pytest.raises(TypeError):
        o.criterion_options["damp"] = 1.0  # type: ignore[index]
    assert o.replace(ratio=0.4).ratio == 0.4 and o.ratio == 0.3
    with pytest.raises(UsageError, match="unknown prune option"):
        o.replace(ratoi=0.4)
    with pytest.raises(UsageError, match="ratio"):
        o.replace(ratio=2.0)
    assert o.to_json()["criterion_options"] == {"damp": 0.1}


def test_budget_and_kind_ratios() -> None:
    assert PruneOptions().budget == "ratio"
    assert PruneOptions(target_macs=0.5).budget == "macs"
    assert PruneOptions(target_params=0.5).budget == "params"
    assert PruneOptions(target_latency=0.5).budget == "latency"
    assert PruneOptions(prune_heads=False).kind_ratios() == {"head": None}
    assert PruneOptions(head_ratio=0.25, prune_hidden=True, hidden_ratio=0.5).kind_ratios() == {
        "head": 0.25, "hidden": 0.5}


def test_recipe_loads_into_options(tmp_path: Path) -> None:
    """The TOML recipe ``spa prune --config`` reads is also a PruneOptions (CLI-only keys skipped)."""
    cfg = tmp_path / "prune.toml"
    cfg.write_text('ratio = 0.4\nround-to = 8\nglobal = true\ncalib = "random"\nreport = "r.json"\n'
                   '[[override]]\npattern = "w1"\nratio = 0.0\n')
    o = PruneOptions.from_toml(cfg)
    assert (o.ratio, o.round_to, o.global_rank, o.calibration, o.overrides) == (0.4, 8, True, "random",
                                                                                (("w1", 0.0),))
    cfg.write_text("ratio = 0.4\nrato = 0.5\n")
    with pytest.raises(UsageError, match=r"unknown prune option.*rato"):
        PruneOptions.from_toml(cfg)
    with pytest.raises(UsageError, match=r"missing\.toml"):
        PruneOptions.from_toml(tmp_path / "missing.toml")


def test_prune_takes_options_or_fields_alike() -> None:
    m = _cnn()
    a = spa.prune(m, PruneOptions(ratio=0.5, criterion="l1", seed=3))
    b = spa.prune(m, ratio=0.5, criterion="l1", seed=3)
    c = spa.prune(m, PruneOptions(ratio=0.25), ratio=0.5, criterion="l1", seed=3)  # fields override
    assert a.model.SerializeToString() == b.model.SerializeToString() == c.model.SerializeToString()
    with pytest.raises(UsageError, match="unknown prune option"):
        spa.prune(m, ration=0.5)


class GridSampleRule(ChannelRule):
    """A user's rule for an op spa has no rule for: GridSample moves pixels, every channel alike."""

    op_types = ("GridSample",)
    min_opset = 16

    def relate(self, ctx: NodeContext) -> list[Relation]:
        return identity_links(ctx.node.inputs[0].name, ctx.node.outputs[0].name, [(1, 1)])


def _grid_model() -> onnx.ModelProto:
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 16)])
    grid = b.const(np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 2)).astype(np.float32), "grid")
    s = b.op("GridSample", [h, grid])  # type: ignore[list-item]
    b.output(b.conv(s, 16, 4))  # type: ignore[arg-type]
    return b.build()


def test_user_rule_registry_prunes_through_the_api() -> None:
    m = _grid_model()
    default = spa.prune(m, ratio=0.5)
    assert not default.plan.groups  # GridSample blocks the only hidden group without the user's rule
    assert any("GridSample" in r for g in default.analysis.groups for r in g.reasons)
    registry = RuleRegistry([*DEFAULT_RULES, GridSampleRule()])
    result = spa.prune(m, PruneOptions(ratio=0.5, emit_masked=True), registry=registry)
    assert result.plan.groups and result.report["params_after"] < result.report["params_before"]  # type: ignore[operator]
    assert result.masked is not None and spa.verify(result.model, result.masked).ok
