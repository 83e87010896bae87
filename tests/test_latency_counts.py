"""``--round-to latency`` (the default): channel counts chosen with the per-layer latency table.

Every test here runs on the fake table of ``tests/conftest.py`` (MAC-proportional, 25 % dearer off the
8-channel block), so nothing depends on this machine's speed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.errors import UsageError
from spa.latency import lut
from spa.latency.counts import SPAN, STEPS, candidates, simd_block
from spa.options import PruneOptions
from tests.oracle import GraphBuilder, assert_oracle

SHAPE = (1, 3, 16, 16)


def _cnn(width: int = 40, depthwise: bool = True) -> onnx.ModelProto:
    """Stem, a (depthwise-)separable block with a residual, a wide 3x3 conv, pooling and a Gemm head."""
    b = GraphBuilder(opset=13)
    x = b.input("x", list(SHAPE))
    s = b.op("Relu", [b.bn(b.conv(x, 3, width), width)])
    d = b.op("Relu", [b.conv(s, width, width, group=width if depthwise else 1)])  # type: ignore[arg-type]
    s = b.op("Add", [s, b.conv(d, width, width, k=1)])  # type: ignore[list-item]
    h = b.op("Relu", [b.conv(s, width, 3 * width, stride=2)])  # type: ignore[arg-type]
    h = b.op("Relu", [b.conv(h, 3 * width, 3 * width)])  # type: ignore[arg-type]
    p = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item]
    b.output(b.op("Gemm", [p, b.weight(10, 3 * width), b.const(np.zeros(10, np.float32))], transB=1))  # type: ignore[arg-type]
    return b.build()


def test_round_to_option_values() -> None:
    assert PruneOptions().round_to == "latency"
    assert PruneOptions(round_to="LATENCY").round_to == "latency"
    assert PruneOptions(round_to="auto").round_to == "auto"
    assert PruneOptions(round_to="8").round_to == 8 and PruneOptions(round_to=16.0).round_to == 16
    for bad in (0, -2, "fast", 2.5, True):
        with pytest.raises(UsageError, match="round_to"):
            PruneOptions(round_to=bad)  # type: ignore[arg-type]


def test_candidates_stay_near_and_aligned() -> None:
    assert candidates(37, 64, 16) == [24, 32, 37, 40, 48, 56, 64]
    assert candidates(37, 64, 16, aligned_only=True) == [32, 48]
    assert candidates(6, 12, 16) == [6, 12]                   # a group within one block: exact or whole
    for k in (10, 50, 100, 333, 1000):
        c = candidates(k, 2 * k, 16)
        assert k in c and all(abs(m - k) <= min(k * SPAN, STEPS * 16) + 16 for m in c), (k, c)
    assert simd_block(["CUDAExecutionProvider"]) == 8 and simd_block() in (8, 16)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_latency_counts_keep_the_budget_and_are_faster(ratio: float) -> None:
    model = _cnn()
    exact = spa.prune(model, ratio=ratio, round_to=1)
    chosen = spa.prune(model, ratio=ratio)
    macs0 = exact.report["macs_before"]
    d = abs(chosen.report["macs_after"] - exact.report["macs_after"]) / macs0  # type: ignore[operator]
    assert d <= 0.03, d
    counts = chosen.report["latency_counts"]
    assert isinstance(counts, dict) and counts["table_ms_chosen"] <= counts["table_ms_exact"]
    pred = chosen.report["predicted_latency"]
    assert isinstance(pred, dict) and 0 < pred["fraction"] < 1 and pred["efficiency"] > 0
    assert exact.report["predicted_latency"] is None  # no table was opened for exact counts


def test_depthwise_groups_are_whole_simd_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spa.latency.counts.cpu_flags", lambda: frozenset({"avx2"}))
    result = assert_oracle(_cnn(width=40), ratio=0.45)
    dw = next(n for n in result.model.graph.node if n.op_type == "Conv"
              and any(a.name == "group" and a.i > 1 for a in n.attribute))
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group % 8 == 0, group


@pytest.mark.parametrize("opset", [13, 17])
def test_mask_oracle_with_latency_counts(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 12, 12])
    a = b.op("Relu", [b.conv(x, 3, 36)])
    c = b.op("Relu", [b.conv(a, 36, 36, group=36)])  # type: ignore[arg-type]
    y = b.conv(b.op("Add", [a, b.conv(c, 36, 36, k=1)]), 36, 20)  # type: ignore[list-item, arg-type]
    b.output(y)
    assert_oracle(b.build(), ratio=0.4)


def test_second_prune_measures_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    fake = lut.measure_layer

    def counting(cfg, providers, threads=1):  # type: ignore[no-untyped-def]
        calls.append(cfg.key)
        return fake(cfg, providers, threads)

    monkeypatch.setattr(lut, "measure_layer", counting)
    first = spa.prune(_cnn(), ratio=0.5, latency_cache=tmp_path)
    assert calls and first.report["latency_counts"]["moved"] > 0  # type: ignore[index]
    calls.clear()
    again = spa.prune(_cnn(), ratio=0.5, latency_cache=tmp_path)
    assert calls == [] and again.plan == first.plan


@pytest.mark.parametrize("change", ["ort_version", "format"])
def test_stale_cache_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str) -> None:
    spa.prune(_cnn(), ratio=0.5, latency_cache=tmp_path)
    (path,) = tmp_path.iterdir()
    data = json.loads(path.read_text())
    if change == "format":
        data["format"] = lut.FORMAT - 1
    else:
        data["device"] = asdict(lut.Device(**data["device"])) | {"ort_version": "0.0"}
    data["entries"] = dict.fromkeys(data["entries"], 1000000.0)  # would make every layer absurdly slow
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="spa.latency.lut"):
        result = spa.prune(_cnn(), ratio=0.5, latency_cache=tmp_path)
    assert "rebuilding" in caplog.text
    assert result.report["latency_counts"]["table_ms_original"] < 1e5  # type: ignore[index]
    assert json.loads(path.read_text())["format"] == lut.FORMAT


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_concat_groups_keep_an_even_share_per_producer_block(zoo_export, exporter: str) -> None:  # type: ignore[no-untyped-def]
    from spa.reorder.blocks import channel_blocks

    result = assert_oracle(str(zoo_export("densenet", exporter)), ratio=0.5)
    checked = 0
    for gp in result.plan.groups:
        blocks = channel_blocks(result.analysis, gp.group)
        ids = sorted(set(blocks.tolist()) - {-1})
        if len(ids) < 2:
            continue
        removed = np.zeros(len(blocks), dtype=bool)
        removed[list(gp.removed)] = True
        for b in ids:
            n = int(np.sum(blocks == b))
            kept = n - int(np.sum(removed[blocks == b]))
            assert kept % (8 if n >= 16 else 2) == 0 or kept in (1, n), (gp.group, b, n, kept)
        checked += 1
    assert checked


def test_a_budget_search_reuses_the_chooser_without_stale_latencies() -> None:
    """One chooser serves every plan of a --target-latency/--target-macs search: same choices as fresh ones."""
    from spa.analysis.groups import analyze_graph
    from spa.latency.counts import LatencyCounts
    from spa.plan import make_plan

    analysis = analyze_graph(spa.load(_cnn()))
    scores = {g.id: np.arange(g.channels, dtype=float) for g in analysis.prunable}
    shared = LatencyCounts(analysis)
    for r in (0.3, 0.6, 0.45):
        plan = make_plan(analysis, scores, r, round_to="latency")
        assert shared(plan, scores) == LatencyCounts(analysis)(plan, scores)


@pytest.mark.parametrize("ratio", [0.4, 0.6])
def test_local_search_lowers_latency_per_mac_inside_the_band(ratio: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pair/single-move search after the greedy fill never ends with a higher table latency per MAC
    than the fill alone, and keeps the MACs within [exact - MACS_UNDER, exact + MACS_BAND]."""
    from spa.latency import counts as C

    model = _cnn()
    exact = spa.prune(model, ratio=ratio, round_to=1)
    monkeypatch.setattr(C, "ROUNDS", 0)
    greedy = spa.prune(model, ratio=ratio).report["latency_counts"]
    monkeypatch.setattr(C, "ROUNDS", 4)
    searched = spa.prune(model, ratio=ratio).report["latency_counts"]
    assert isinstance(greedy, dict) and isinstance(searched, dict)
    per_mac = [r["table_ms_chosen"] / r["macs_chosen"] for r in (greedy, searched)]  # type: ignore[operator]
    assert per_mac[1] <= per_mac[0] * (1 + 1e-3), per_mac
    macs0 = exact.report["macs_before"]
    lo = searched["macs_exact"] - C.MACS_UNDER * macs0  # type: ignore[operator]
    hi = searched["macs_exact"] + C.MACS_BAND * macs0  # type: ignore[operator]
    assert lo - 1 <= searched["macs_chosen"] <= hi + 1 or searched["macs_chosen"] == greedy["macs_chosen"]


def _padded_layer_ms(cfg, providers, threads=1):  # type: ignore[no-untyped-def]
    """A table whose kernels pad every channel count up to a multiple of 32 (two 16-channel SIMD blocks):
    16 channels cost what 32 cost, so the second block is free."""
    from tests.conftest import fake_layer_ms

    ms = fake_layer_ms(cfg, providers, threads)
    chans = [c for c in ((cfg.inputs[0][1], cfg.output[1]) if len(cfg.output) > 1 else ()) if c > 0]
    for c in chans:
        ms *= (32 * -(-c // 32)) / c
    return ms


@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.5])
def test_free_channels_add_macs_but_no_table_latency(ratio: float, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """Where the table says the next count costs nothing (here: kernels that pad to 32 channels, on
    16-channel blocks), groups grow past the budget, up to FREE_MACS of the original's MACs above the
    exact plan; the predicted latency stays what it was without them and never above the exact counts',
    and the pruned model still matches its masked twin."""
    from spa.latency import counts as C

    monkeypatch.setattr(lut, "measure_layer", _padded_layer_ms)
    monkeypatch.setattr("spa.latency.counts.cpu_flags", lambda: frozenset({"avx512f"}))  # 16-channel blocks
    model = _cnn(width=44)
    exact = spa.prune(model, ratio=ratio, round_to=1)
    monkeypatch.setattr(C, "FREE_MACS", 0.0)
    bounded = spa.prune(model, ratio=ratio, latency_cache=tmp_path).report["latency_counts"]
    monkeypatch.setattr(C, "FREE_MACS", 0.1)  # this small CNN's free step (a 16-channel block) is 0.06 of its MACs
    result = assert_oracle(model, ratio=ratio, latency_cache=tmp_path)
    free = result.report["latency_counts"]
    assert isinstance(bounded, dict) and isinstance(free, dict)
    macs0 = float(exact.report["macs_before"])  # type: ignore[arg-type]
    assert free["macs_chosen"] > bounded["macs_chosen"]                       # channels were added ...
    assert free["table_ms_chosen"] <= bounded["table_ms_chosen"] + 1e-4       # ... at no predicted cost
    assert free["table_ms_chosen"] <= free["table_ms_exact"]
    assert free["macs_chosen"] <= free["macs_exact"] + C.FREE_MACS * macs0 + 1  # type: ignore[operator]
    assert result.report["macs_after"] == free["macs_chosen"]


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_chosen_counts_are_whole_simd_blocks_or_exact(ratio: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FINE_STEP 0 (the default) a moved count is a multiple of the SIMD block, or the group's full
    width; otherwise it stays the criterion's exact count — never an off-block multiple of 8."""
    monkeypatch.setattr("spa.latency.counts.cpu_flags", lambda: frozenset({"avx512f"}))  # 16-channel blocks
    result = spa.prune(_cnn(width=72, depthwise=False), ratio=ratio)
    record = result.report["latency_counts"]
    assert isinstance(record, dict) and record["moved"] > 0
    width = {g["id"]: g["channels_before"] for g in result.report["groups"]}  # type: ignore[union-attr]
    for row in record["counts"]:
        assert row["chosen"] % 16 == 0 or row["chosen"] in (row["exact"], width[row["group"]]), row


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("width", [40, 72])
def test_the_fill_keeps_the_better_of_the_narrow_and_the_wide_span(ratio: float, width: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The greedy fill is run over the full candidate span and over each NARROW_FILLS span; the kept
    result's table latency per MAC is no higher than either fill's alone."""
    from spa.latency import counts as C

    monkeypatch.setattr(C, "FREE_MACS", 0.0)
    model = _cnn(width=width, depthwise=False)

    def per_mac() -> float:
        rec = spa.prune(model, ratio=ratio).report["latency_counts"]
        assert isinstance(rec, dict)
        return float(rec["table_ms_chosen"]) / float(rec["macs_chosen"])  # type: ignore[arg-type]

    both = per_mac()
    (span, steps), = C.NARROW_FILLS
    monkeypatch.setattr(C, "NARROW_FILLS", ())
    wide = per_mac()
    monkeypatch.setattr(C, "SPAN", span)
    monkeypatch.setattr(C, "STEPS", steps)
    narrow = per_mac()
    assert both <= min(wide, narrow) * (1 + 1e-9), (both, wide, narrow)


def test_sensitivity_allocated_counts_stay_near_the_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """When measured sensitivity chose the per-group ratios, the latency chooser moves a count at most
    ALLOCATED_SPAN (a quarter, two blocks) from it; a plain --ratio prune keeps the wide span."""
    from spa.calibration import ArraySource
    from spa.latency.counts import ALLOCATED_SPAN

    monkeypatch.setattr("spa.latency.counts.cpu_flags", lambda: frozenset({"avx512f"}))  # 16-channel blocks
    model = _cnn(width=72, depthwise=False)
    src = ArraySource({"x": np.random.default_rng(0).standard_normal((16, *SHAPE[1:])).astype(np.float32)},
                      batch_size=8, name="toy")
    allocated = spa.prune(model, target_macs=0.5, calibration=src, reconstruct="oneshot", realign=False)
    assert isinstance(allocated.report["allocation"], dict)
    record = allocated.report["latency_counts"]
    assert isinstance(record, dict) and record["span"] == list(ALLOCATED_SPAN)
    span, steps = ALLOCATED_SPAN
    for row in record["counts"]:
        reach = max(span * row["exact"], 16)  # candidates keep at least the nearest blocks either side
        assert abs(row["chosen"] - row["exact"]) <= min(reach, steps * 16) or row["chosen"] == row["exact"], row
    plain = spa.prune(model, ratio=0.5).report["latency_counts"]
    assert isinstance(plain, dict) and plain["span"] == [SPAN, STEPS]
