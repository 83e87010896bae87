"""UPSCALE-style unconstrained pruning: per-consumer subsets, union kept, Slice/Gather/zero reads,
channel reordering — all checked by the mask oracle."""

from __future__ import annotations

import numpy as np
import pytest

import spa
from spa.reorder.layout import contiguous, contiguous_order
from tests.oracle import GraphBuilder, assert_oracle

MODES = ["layout", "gather", "zero", "auto"]


def _residual_stage(blocks: int = 3, c: int = 16) -> GraphBuilder:
    """A residual stream read by several blocks' first convs (the UPSCALE case)."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    s = b.op("Relu", [b.bn(b.conv(x, 3, c), c)])
    for _ in range(blocks):
        h = b.op("Relu", [b.conv(s, c, c // 2)])  # type: ignore[arg-type]
        h = b.conv(h, c // 2, c)  # type: ignore[arg-type]
        s = b.op("Relu", [b.op("Add", [s, h])])  # type: ignore[list-item]
    b.output(b.conv(s, c, 4, k=1))  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_residual_stage_is_exact(mode: str, ratio: float, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    r = assert_oracle(_residual_stage().build(), ratio, unconstrained=True, consumer_mode=mode)
    reads = r.report["consumer_reads"]
    assert sum(reads.values()) > 0  # type: ignore[union-attr]
    if mode == "zero":
        assert reads["slice"] == reads["gather"] == 0  # type: ignore[index]
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Gather") == reads["gather"] and ops.count("Slice") == reads["slice"]  # type: ignore[index]


def test_union_is_kept_and_consumers_read_their_own() -> None:
    m = _residual_stage().build()
    r = spa.prune(m, 0.5, unconstrained=True)
    con = spa.prune(m, 0.5)
    stream = next(gp for gp in r.plan.groups if gp.consumers)
    same = next(gp for gp in con.plan.groups if gp.group == stream.group)
    # the union keeps at least as many channels as each consumer, and each consumer keeps the same count
    assert stream.kept >= same.kept
    for c in stream.consumers:
        assert len(c.kept) == same.kept
        assert set(c.kept) <= set(range(stream.channels)) - set(stream.removed)


def test_reordering_makes_fewer_copies() -> None:
    m = _residual_stage(blocks=4).build()
    naive = spa.prune(m, 0.5, unconstrained=True, reorder=False).report["consumer_reads"]
    ordered = spa.prune(m, 0.5, unconstrained=True, reorder=True).report["consumer_reads"]
    assert ordered["gather"] <= naive["gather"]  # type: ignore[index]
    assert ordered["slice"] >= naive["slice"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "mobilenetv2", "densenet", "fpn", "unet"])
def test_zoo_unconstrained_reordered(zoo_export, name: str) -> None:  # type: ignore[no-untyped-def]
    assert_oracle(str(zoo_export(name, "legacy")), 0.5, unconstrained=True)


def test_layout_two_overlapping_sets() -> None:
    order = contiguous_order(list(range(8)), [{0, 1, 2, 3, 4}, {3, 4, 5, 6, 7}, {3, 4}])
    assert sorted(order) == list(range(8))
    for s in ({0, 1, 2, 3, 4}, {3, 4, 5, 6, 7}, {3, 4}):
        assert contiguous(order, s)


def test_layout_cannot_always_win_but_stays_a_permutation() -> None:
    rng = np.random.default_rng(0)
    kept = list(range(20))
    sets = [set(rng.choice(20, 10, replace=False).tolist()) for _ in range(4)]
    order = contiguous_order(kept, sets)
    assert sorted(order) == kept
