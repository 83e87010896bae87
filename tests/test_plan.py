"""Budgets: ratio, global ranking, round_to, min_channels, ignore, slot minimums, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import spa
from spa.errors import UsageError
from tests.oracle import GraphBuilder, assert_oracle


def _net(widths: tuple[int, ...] = (16, 32, 8)) -> GraphBuilder:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    c = 3
    for w in widths:
        x = b.op("Relu", [b.conv(x, c, w)])  # type: ignore[assignment]
        c = w
    b.output(b.conv(x, c, 2, k=1))
    return b


def _kept(result: spa.PruneResult) -> dict[str, int]:
    return {g["label"]: g["channels_after"] for g in result.report["groups"] if g["prunable"]}  # type: ignore[union-attr,index]


def test_uniform_ratio_removes_round_r_c() -> None:
    r = assert_oracle(_net().build(), 0.25, round_to=1)  # exact counts (the default moves them by latency)
    assert sorted(_kept(r).values()) == [6, 12, 24]


@pytest.mark.parametrize("n", [4, 8])
def test_round_to(n: int) -> None:
    r = assert_oracle(_net((16, 30, 12)).build(), 0.4, round_to=n)
    for kept in _kept(r).values():
        assert kept % n == 0


def test_min_channels() -> None:
    r = assert_oracle(_net().build(), 0.9, min_channels=4)
    assert min(_kept(r).values()) >= 4


def test_never_prunes_a_group_to_zero() -> None:
    r = assert_oracle(_net((2, 2, 2)).build(), 0.99)
    assert min(_kept(r).values()) >= 1


def test_global_removes_the_requested_total() -> None:
    r = assert_oracle(_net().build(), 0.5, global_rank=True, round_to=1)  # exact counts
    before = sum(g["channels_before"] for g in r.report["groups"] if g["prunable"])  # type: ignore[union-attr,index]
    after = sum(_kept(r).values())
    assert before - after == round(0.5 * before)


def test_global_respects_max_ratio() -> None:
    r = assert_oracle(_net().build(), 0.8, global_rank=True, max_ratio=0.5)
    for g in r.report["groups"]:  # type: ignore[union-attr]
        if g["prunable"]:
            assert g["channels_after"] >= g["channels_before"] - int(0.5 * g["channels_before"])


def test_ignore_leaves_matching_group_alone() -> None:
    m = _net().build()
    a = spa.analyze(m)
    target = a.prunable[0]
    weight = next(mb.tensor for mb in target.members if mb.kind == "weight")
    r = assert_oracle(m, 0.5, ignore=[weight])
    row = next(g for g in r.report["groups"] if g["id"] == target.id)  # type: ignore[union-attr]
    assert row["channels_after"] == row["channels_before"]


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(UsageError):
        spa.prune(_net().build(), ratio=ratio)


def test_l2_removes_the_weakest_channels() -> None:
    b = _net((8,))
    m = b.build()
    # make output channel 3 of the first conv tiny everywhere (producer row and consumer column)
    inits = {i.name: i for i in m.graph.initializer}
    from onnx import numpy_helper

    w1 = numpy_helper.to_array(inits["w1"]).copy()
    w1[3] *= 1e-3
    inits["w1"].CopyFrom(numpy_helper.from_array(w1, "w1"))
    r = spa.prune(m, ratio=0.125)
    row = next(g for g in r.report["groups"] if g["prunable"])  # type: ignore[union-attr]
    assert 3 not in row["kept"]  # type: ignore[operator]


def test_random_criterion_depends_on_seed() -> None:
    m = _net().build()
    plans = {tuple(spa.prune(m, ratio=0.5, criterion="random", seed=s).plan.groups[0].removed) for s in range(4)}
    assert len(plans) > 1


def test_zero_ratio_is_identity() -> None:
    m = _net().build()
    r = spa.prune(m, ratio=0.0)
    assert not r.plan.groups
    res = spa.verify(r.model, m)
    assert res.ok


def test_slot_minimum_keeps_every_concat_input() -> None:
    """A Concat of a 1-channel and a 7-channel branch: the 1-channel branch may never vanish."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    a1 = b.conv(x, 3, 1)
    a2 = b.conv(x, 3, 7)
    w = b.rng.standard_normal((1, 3, 3, 3)).astype(np.float32) * 1e-6  # branch 1 is the weakest
    b.inits[[i.name for i in b.inits].index(b.nodes[0].input[1])].CopyFrom(
        __import__("onnx").numpy_helper.from_array(w, b.nodes[0].input[1]))
    cat = b.op("Concat", [a1, a2], axis=1)
    b.output(b.conv(b.op("Relu", [cat]), 8, 2))  # type: ignore[arg-type]
    r = assert_oracle(b.build(), 0.75)
    for init in r.model.graph.initializer:
        assert all(d > 0 for d in init.dims)


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_target_macs_fraction_is_met_and_estimate_is_exact(target: float) -> None:
    m = _net().build()
    r = assert_oracle(m, 0.0, target_macs=target)
    assert r.report["macs_after"] <= target * r.report["macs_before"]  # type: ignore[operator]
    # the smallest ratio that meets it: a slightly smaller ratio would not
    assert r.plan.ratio > 0


def test_target_params_absolute() -> None:
    m = _net().build()
    before = spa.prune(m, ratio=0.0).report["params_before"]
    r = assert_oracle(m, 0.0, target_params=int(before) // 3)  # type: ignore[call-overload]
    assert r.report["params_after"] <= int(before) // 3  # type: ignore[call-overload,operator]


def test_estimate_matches_surgery() -> None:
    from spa.budget import estimate

    m = _net().build()
    r = spa.prune(m, ratio=0.4)
    e = estimate(r.analysis, r.plan)
    assert e.params == r.report["params_after"]
    assert e.macs == r.report["macs_after"]


def test_impossible_target_is_a_clear_error() -> None:
    from spa.errors import PlanError

    with pytest.raises(PlanError, match="cannot be met"):
        spa.prune(_net().build(), ratio=0.0, target_params=10)


def test_override_ratio_per_pattern() -> None:
    m = _net().build()
    a = spa.analyze(m)
    first = next(mb.tensor for mb in a.prunable[0].members if mb.kind == "weight")
    r = assert_oracle(m, 0.5, overrides=[(first, 0.0)])
    row = next(g for g in r.report["groups"] if g["id"] == a.prunable[0].id)  # type: ignore[union-attr]
    assert row["channels_after"] == row["channels_before"]
    assert r.report["num_pruned"] == len(a.prunable) - 1


@pytest.mark.parametrize("method", ["lut", "measure"])
def test_target_latency_bisects_on_measured_ratio(method: str, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The solver keeps the smallest ratio whose measured latency ratio meets the target (whole-model
    timings and, for the lookup table, per-layer timings faked as proportional to MACs, so the test does
    not depend on the machine; tests/test_latency_lut.py covers the table itself)."""
    from spa.analysis.cost import count_macs
    from spa.latency import lut, measure

    def whole(models, **_kw):  # type: ignore[no-untyped-def]
        return [[count_macs(spa.load(m)) / 1e4] * 3 for m in models]

    def layer(cfg, providers, threads=1):  # type: ignore[no-untyped-def]
        return float(np.prod(cfg.output) * np.prod(cfg.inputs[1][1:])) / 1e6  # Conv MACs

    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure, "paired_samples", whole)
    monkeypatch.setattr(lut, "measure_layer", layer)
    import spa.latency.solve

    real = spa.latency.solve.solve_latency
    monkeypatch.setattr("spa.api.solve_latency", lambda *a, **kw: real(*a, **kw, method=method))
    m = _net().build()
    r = assert_oracle(m, 0.0, target_latency=0.5)
    rec = r.report["target_latency"]
    assert rec["method"] == method  # type: ignore[index]
    assert rec["measured_fraction"] <= 0.5  # type: ignore[index]
    assert r.report["macs_after"] <= 0.5 * r.report["macs_before"]  # type: ignore[operator]
    smaller = spa.prune(m, ratio=max(0.0, r.plan.ratio - 0.1))
    assert smaller.report["macs_after"] > 0.5 * smaller.report["macs_before"]  # type: ignore[operator]


def test_unreachable_latency_target(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spa.errors import PlanError

    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    with pytest.raises(PlanError):
        spa.prune(_net().build(), ratio=0.0, target_latency=1e-6)


@pytest.mark.parametrize("how", ["mean", "lamp", "zscore", "none"])
def test_global_ranking_uses_the_criterions_normalisation(how: str) -> None:
    """``--global`` compares scores as ``--normalize`` made them (the plan used to divide by the group mean
    again: LAMP was diluted and z-scores, whose mean is ~0, exploded). With ``none`` raw magnitudes
    compete, so a layer with tiny weights loses the most; normalised scores spread the loss."""
    from onnx import numpy_helper

    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    h = b.op("Relu", [b.conv(x, 3, 16)])
    w_small = b.inits[-2]  # the first conv's weight, scaled to 1 % below
    w_small.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w_small) * 0.01, w_small.name))
    h = b.op("Relu", [b.conv(h, 16, 16)])  # type: ignore[arg-type]
    b.output(b.conv(h, 16, 2, k=1))  # type: ignore[arg-type]
    r = assert_oracle(b.build(), 0.4, global_rank=True, max_ratio=0.9, normalize=how)
    after = sorted((g["label"], g["channels_after"]) for g in r.report["groups"] if g["prunable"])  # type: ignore[union-attr,index]
    small, large = after[0][1], after[1][1]
    assert small + large == 32 - round(0.4 * 32)
    if how == "none":
        assert small < large  # raw magnitudes: the tiny layer goes first
    else:
        assert 0 < small < 16 and 0 < large < 16  # comparable after normalisation: both lose channels
