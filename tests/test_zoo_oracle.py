"""Every architecture in models/, exported by both PyTorch exporters, pruned at 25 % and 50 %.

Each pruned model must be valid, have fewer MACs, keep output names/shapes, and pass the mask oracle.
Also the legacy export with BatchNorm folded into Conv (what a deployment export usually looks like).
Exports come from the session cache in ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import spa
from models.registry import TINY_MODELS
from tests.oracle import assert_oracle

EXPORTERS = ["legacy", "dynamo"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_zoo_prunes_exactly(zoo_export, name: str, exporter: str, ratio: float) -> None:  # type: ignore[no-untyped-def]
    result = assert_oracle(str(zoo_export(name, exporter)), ratio)
    assert result.report["macs_after"] < result.report["macs_before"]
    groups = result.report["groups"]
    assert any(g["channels_after"] < g["channels_before"] for g in groups)  # type: ignore[union-attr,index]


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_zoo_folded_bn_prunes_exactly(zoo_export, name: str) -> None:  # type: ignore[no-untyped-def]
    assert_oracle(str(zoo_export(name, "legacy", keep_bn=False)), 0.5)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_zoo_exporters_agree_on_groups(zoo_export, name: str) -> None:  # type: ignore[no-untyped-def]
    """Both exporters' graphs of one architecture expose the same prunable channel counts."""
    counts = {e: sorted(g.channels for g in spa.analyze(str(zoo_export(name, e))).prunable) for e in EXPORTERS}
    assert counts["legacy"] == counts["dynamo"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["regnety", "resnext"])
def test_zoo_whole_groups_prune_exactly(zoo_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """Grouped convolutions pruned by whole groups (fewer groups, same width) pass the mask oracle, and
    every grouped Conv keeps its group width."""
    import onnx

    from spa.rules.conv import whole_group_rules
    from spa.rules.defaults import DEFAULT_RULES
    from spa.rules.registry import RuleRegistry

    path = str(zoo_export(name, exporter))
    result = assert_oracle(path, 0.5, round_to=1, registry=RuleRegistry(whole_group_rules(DEFAULT_RULES)))

    def widths(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
        init = {i.name: list(i.dims) for i in model.graph.initializer}
        out = {}
        for n in model.graph.node:
            g = next((a.i for a in n.attribute if a.name == "group"), 1)
            w = init.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
            if w is not None and w[1] > 1:
                out[n.name] = (g, w[1])
        return out

    before = {k: v for k, v in widths(spa.load(path).to_onnx()).items() if v[0] > 1}
    after = widths(result.model)
    assert before
    assert all(after[k][1] == w for k, (_, w) in before.items())          # same group width
    assert sum(after[k][0] for k in before) < sum(g for g, _ in before.values())  # fewer groups


@pytest.mark.parametrize("name", ["regnety", "resnext"])
def test_zoo_grouped_mode_by_default(zoo_export, name: str) -> None:  # type: ignore[no-untyped-def]
    """The default (``--round-to latency``) compares in-group and whole-group pruning on the table and
    says which it took; either passes the oracle and keeps the exact plan's MACs within the slack."""
    path = str(zoo_export(name, "legacy"))
    result = assert_oracle(path, 0.5)
    exact = spa.prune(path, ratio=0.5, round_to=1)
    record = result.report["grouped_convs"]
    assert isinstance(record, dict) and record["mode"] in ("in_group", "whole_groups")
    macs0 = float(result.report["macs_before"])  # type: ignore[arg-type]
    assert abs(float(result.report["macs_after"]) - float(exact.report["macs_after"])) / macs0 < 0.03  # type: ignore[arg-type]
