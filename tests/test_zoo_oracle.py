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
