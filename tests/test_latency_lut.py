"""Latency budgets from the per-layer lookup table (spa.latency): keys, cache, prediction, the solver.

Most tests replace the two timing sources with deterministic fakes — ``spa.latency.lut.measure_layer``
(one layer alone) and ``spa.latency.measure.paired_samples`` (whole models, alternating) — with costs
proportional to MACs, so nothing asserts on the speed of this machine. One smoke test runs both for
real and asserts only the structure of what comes back.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.analysis.groups import analyze_graph
from spa.criteria import CriterionContext, get_criterion
from spa.errors import PlanError, UsageError
from spa.latency import LatencyPredictor, LatencyTable, layer_configs, lut, measure
from spa.latency.layers import LayerConfig, concrete_shapes
from spa.latency.solve import solve_latency
from spa.plan import Plan, make_plan
from spa.surgery import prune_model
from tests.oracle import GraphBuilder, assert_oracle

SHAPE = (1, 3, 16, 16)


def _cnn(width: int = 16) -> onnx.ModelProto:
    """Stem, a depthwise-separable block with a residual, a 3x3 conv, pooling and a Gemm head."""
    b = GraphBuilder(opset=13)
    x = b.input("x", list(SHAPE))
    s = b.op("Relu", [b.bn(b.conv(x, 3, width), width)])
    d = b.op("Relu", [b.conv(s, width, width, group=width)])  # type: ignore[arg-type]
    s = b.op("Add", [s, b.conv(d, width, width, k=1)])  # type: ignore[list-item]
    h = b.op("Relu", [b.conv(s, width, 2 * width, stride=2)])  # type: ignore[arg-type]
    p = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item]
    b.output(b.op("Gemm", [p, b.weight(10, 2 * width), b.const(np.zeros(10, np.float32))], transB=1))  # type: ignore[arg-type]
    return b.build()


def _macs(cfg: LayerConfig) -> float:
    """MACs of one layer configuration (the fake timings' unit)."""
    if cfg.op in ("Conv", "ConvTranspose"):
        return float(np.prod(cfg.output) * np.prod(cfg.inputs[1][1:]))
    attrs = dict(cfg.attrs)
    k = cfg.inputs[0][-2] if attrs.get("transA") else cfg.inputs[0][-1]
    return float(np.prod(cfg.output) * k)


def _fake_layer(cfg: LayerConfig, providers: Sequence[str], threads: int = 1) -> float:
    return _macs(cfg) / 1e6


def _fake_whole(models, **_kw):  # type: ignore[no-untyped-def]
    """Whole-model timings proportional to MACs: three identical rounds per model."""
    from spa.analysis.cost import count_macs

    return [[count_macs(spa.load(m)) / 1e4] * 3 for m in models]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    return tmp_path / "latency"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count micro-benchmarks (the real ones: each runs a one-node model in ONNX Runtime)."""
    calls: list[str] = []
    real = lut.measure_layer

    def wrapper(cfg: LayerConfig, providers: Sequence[str], threads: int = 1) -> float | None:
        calls.append(cfg.key)
        return real(cfg, providers, threads)

    monkeypatch.setattr(lut, "measure_layer", wrapper)
    return calls


def _setup(model: onnx.ModelProto) -> tuple[spa.Analysis, object]:
    analysis = analyze_graph(spa.load(model))
    scores = get_criterion("l2").score(analysis, CriterionContext(seed=0))

    def make(r: float) -> Plan:
        return make_plan(analysis, scores, r, criterion="l2")

    return analysis, make


def _solve(model: onnx.ModelProto, target: float, **kw: object) -> tuple[Plan, dict[str, object]]:
    analysis, make = _setup(model)
    return solve_latency(analysis, make, lambda p: prune_model(analysis, p).to_onnx(), target,  # type: ignore[arg-type]
                         **kw)  # type: ignore[arg-type]


# -- layer configurations --------------------------------------------------------------------------

def test_layer_keys_are_stable_and_follow_the_plan() -> None:
    m = _cnn()
    a1, a2 = analyze_graph(spa.load(m)), analyze_graph(spa.load(m))
    c1 = layer_configs(a1.model, concrete_shapes(a1.model, {"x": SHAPE}))
    c2 = layer_configs(a2.model, concrete_shapes(a2.model, {"x": SHAPE}))
    assert [c.key for c in c1.values()] == [c.key for c in c2.values()]
    assert sorted(c.op for c in c1.values()) == ["Conv"] * 4 + ["Gemm"]
    for c in c1.values():
        assert json.loads(c.key)[0] == c.op and json.loads(c.key)[2][0] == list(c.inputs[0])  # batch, channels

    analysis, make = _setup(m)
    from spa.budget import kept_sizes

    pruned = layer_configs(analysis.model, concrete_shapes(analysis.model, {"x": SHAPE}),
                           kept_sizes(analysis, make(0.5)))
    assert set(pruned) == set(c1)
    depthwise = next(n for n, c in c1.items() if dict(c.attrs)["group"] == 16)
    cfg = pruned[depthwise]
    assert cfg.inputs[0][1] == cfg.inputs[1][0] == dict(cfg.attrs)["group"] == 8  # one group per kept channel
    assert all(p.key != c1[n].key for n, p in pruned.items())
    model, _feeds = lut.benchmark_model(cfg)
    assert model.ir_version == 8
    onnx.checker.check_model(model, full_check=True)


def test_dynamic_batch_and_auto_pad(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamic dimensions take the timed input shapes; auto_pad convs benchmark without explicit pads."""
    b = GraphBuilder(opset=13)
    x = b.input("x", ["N", 3, 16, 16])
    h = b.op("Relu", [b.op("Conv", [x, b.weight(8, 3, 3, 3)], auto_pad="SAME_UPPER")])
    b.output(b.conv(h, 8, 4))  # type: ignore[arg-type]
    m = b.build()
    analysis = analyze_graph(spa.load(m))
    for batch in (1, 2):
        cfgs = layer_configs(analysis.model, concrete_shapes(analysis.model, {"x": (batch, 3, 16, 16)}))
        assert len(cfgs) == 2 and all(c.inputs[0][0] == batch and c.output[0] == batch for c in cfgs.values())
    same = next(c for c in cfgs.values() if "auto_pad" in dict(c.attrs))
    assert "pads" not in dict(same.attrs) and same.output == (2, 8, 16, 16)
    assert lut.measure_layer(same, ["CPUExecutionProvider"]) is not None  # ONNX Runtime runs it
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    r = assert_oracle(m, 0.0, target_latency=0.6)
    assert r.report["target_latency"]["status"] == "met"  # type: ignore[index]


# -- the table and its cache ------------------------------------------------------------------------

def test_cache_round_trips_and_is_keyed_by_provider_and_device(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    analysis = analyze_graph(spa.load(_cnn()))
    cfgs = list(layer_configs(analysis.model, concrete_shapes(analysis.model, {"x": SHAPE})).values())
    table = LatencyTable.open(threads=1)
    values = [table.layer_ms(c) for c in cfgs]
    assert table.measured == len({c.key for c in cfgs}) and table.path.parent == cache
    table.save()
    assert [p.name for p in cache.iterdir()] == [table.path.name]  # no temporary file left behind

    again = LatencyTable.open(threads=1)
    assert [again.layer_ms(c) for c in cfgs] == values and again.measured == 0 and again.hits == len(cfgs)
    assert LatencyTable.open(threads=2).path != table.path  # thread count is part of the device
    monkeypatch.setattr(lut.Device, "here", classmethod(
        lambda cls, providers, threads: cls(providers[0], "Another CPU", "1.0", threads)))
    other = LatencyTable.open(threads=1)
    assert other.path != table.path and other.entries == {}
    explicit = LatencyTable.open(threads=1, cache_dir=cache.parent / "elsewhere")
    assert explicit.path.parent == cache.parent / "elsewhere"


def test_a_table_measured_another_way_is_another_table(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries timed by other measuring code (an older spa, a changed micro-benchmark) are never mixed in."""
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    analysis = analyze_graph(spa.load(_cnn()))
    cfg = next(iter(layer_configs(analysis.model, concrete_shapes(analysis.model, {"x": SHAPE})).values()))
    table = LatencyTable.open(threads=1)
    table.layer_ms(cfg)
    table.save()
    before = lut.measurement_method.__wrapped__()
    monkeypatch.setattr(lut, "_timed_runs", _fake_layer)  # the timing code changed
    changed = lut.measurement_method.__wrapped__()
    assert changed != before
    monkeypatch.setattr(lut, "measurement_method", lambda: changed)
    other = LatencyTable.open(threads=1)
    assert other.path != table.path and other.entries == {}
    assert other.device.method == changed and table.device.method != changed


@pytest.mark.parametrize("content", ["{not json", '{"format": 2, "entries": []}', "[]"])
def test_corrupt_cache_is_rebuilt(cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                  content: str) -> None:
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    path = LatencyTable.open().path
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="spa.latency.lut"):
        table = LatencyTable.open()
    assert "rebuilding" in caplog.text and table.entries == {}
    analysis = analyze_graph(spa.load(_cnn()))
    cfg = next(iter(layer_configs(analysis.model, concrete_shapes(analysis.model, {"x": SHAPE})).values()))
    table.layer_ms(cfg)
    table.save()
    assert LatencyTable.open().entries == {cfg.key: _fake_layer(cfg, [])}


# -- prediction --------------------------------------------------------------------------------------

def test_predicted_latency_is_monotone_in_ratio(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    analysis, make = _setup(_cnn())
    pred = LatencyPredictor.build(analysis, LatencyTable.open(), {"x": SHAPE})
    xs = [pred.x(make(r)) for r in np.linspace(0, 0.9, 10)]
    assert xs[0] == 1.0 and xs[-1] < 0.2
    assert all(b <= a for a, b in itertools.pairwise(xs)), xs


@pytest.mark.real_latency
def test_real_micro_benchmarks_see_pruning(cache: Path) -> None:
    """The real table (no fakes): a heavily pruned plan's layers cost less than the original's."""
    analysis, make = _setup(_cnn(width=32))
    table = LatencyTable.open()
    pred = LatencyPredictor.build(analysis, table, {"x": SHAPE})
    assert all(v is not None and v >= 0 for v in pred.original_ms.values())
    assert pred.x(make(0.75)) < 1.0


# -- the solver --------------------------------------------------------------------------------------

@pytest.mark.real_latency
def test_second_solve_runs_no_micro_benchmark(cache: Path, counted: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    m = _cnn()
    plan1, rec1 = _solve(m, 0.6)
    assert counted and rec1["lut"]["measured"] == len(counted)  # type: ignore[index]
    n = len(counted)
    plan2, rec2 = _solve(m, 0.6)
    assert len(counted) == n and rec2["lut"]["measured"] == 0 and rec2["lut"]["hits"] > 0  # type: ignore[index]
    assert plan2.ratio == plan1.ratio


def test_target_latency_end_to_end(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Table and measurements agree (both MACs): the first search is right and no correction runs."""
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    r = assert_oracle(_cnn(), 0.0, target_latency=0.6)
    rec = r.report["target_latency"]
    assert rec["method"] == "lut" and rec["status"] == "met" and rec["corrections"] == 0  # type: ignore[index]
    assert rec["measured_fraction"] <= 0.6 and rec["predicted_fraction"] == pytest.approx(  # type: ignore[index]
        rec["measured_fraction"], abs=1e-3)  # type: ignore[index]
    assert r.report["macs_after"] <= 0.6 * r.report["macs_before"]  # type: ignore[operator]
    smaller = spa.prune(_cnn(), ratio=max(0.0, r.plan.ratio - 0.05))
    assert smaller.report["macs_after"] > 0.6 * smaller.report["macs_before"]  # type: ignore[operator]


def test_miscalibrated_table_is_corrected(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table that overstates every layer by a constant makes the first search prune too much; the
    measurement recalibrates the model and a corrective search comes back towards the target."""
    monkeypatch.setattr(lut, "measure_layer", lambda cfg, providers, threads=1: _macs(cfg) / 1e6 + 0.05)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    plan, rec = _solve(_cnn(), 0.6, tol=0.02)
    attempts = rec["attempts"]
    assert len(attempts) >= 2 and rec["corrections"] >= 1  # type: ignore[arg-type,operator]
    assert attempts[1]["sensitivity"] != attempts[0]["sensitivity"]  # type: ignore[index]
    assert attempts[1]["ratio"] < attempts[0]["ratio"]  # type: ignore[index]
    assert rec["status"] == "met" and rec["measured_fraction"] <= 0.6  # type: ignore[operator]
    assert plan.ratio == min(a["ratio"] for a in attempts if a["measured_fraction"] <= 0.6)  # type: ignore[index,operator]


def test_milliseconds_target_and_the_measure_method(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    m = _cnn()
    plan, rec = _solve(m, 0.6)
    base = rec["original_ms"]
    assert base > 1  # type: ignore[operator]
    plan_ms, rec_ms = _solve(m, 0.6 * base)  # type: ignore[operator]
    assert rec_ms["target_fraction"] == pytest.approx(0.6) and plan_ms.ratio == plan.ratio
    _plan_measure, rec_measure = _solve(m, 0.6, method="measure")
    assert rec_measure["method"] == "measure" and rec_measure["measured_fraction"] <= 0.6  # type: ignore[operator]
    with pytest.raises(UsageError, match="unknown latency method"):
        _solve(m, 0.6, method="guess")


def test_unreachable_target_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    with pytest.raises(PlanError, match="cannot be met"):
        _solve(_cnn(), 1e-4)


@pytest.mark.real_latency
def test_real_timings_smoke(tmp_path: Path) -> None:
    """Nothing faked: the record has every field and the pruned model passes the mask oracle (no
    assertion on the numbers, which depend on this machine)."""
    r = assert_oracle(_cnn(width=32), 0.0, target_latency=0.7, latency_cache=str(tmp_path))
    rec = r.report["target_latency"]
    assert rec["status"] in ("met", "within tolerance", "missed")  # type: ignore[index]
    for key in ("ratio", "predicted_fraction", "measured_fraction", "original_ms", "sensitivity", "attempts",
                "solve_s"):
        assert key in rec  # type: ignore[operator]
    assert rec["lut"]["measured"] > 0 and Path(rec["lut"]["file"]).parent == tmp_path  # type: ignore[index]
    assert 1 <= len(rec["attempts"]) <= 4  # type: ignore[arg-type]


def test_cli_latency_cache_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spa.cli import main

    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    src = tmp_path / "m.onnx"
    onnx.save(_cnn(), src)
    folder = tmp_path / "lut"
    code = main(["prune", str(src), "--target-latency", "0.6", "--latency-cache", str(folder), "--dry-run",
                 "--report", str(tmp_path / "r.json")])
    assert code == 0
    rec = json.loads((tmp_path / "r.json").read_text())["target_latency"]
    assert rec["status"] == "met" and Path(rec["lut"]["file"]).parent == folder
    assert len(list(folder.glob("cpu-*.json"))) == 1


def test_cli_provider_for_target_latency(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``spa prune --target-latency X --provider P``: CPU works end to end and records its provider; a GPU
    provider that does not work here is a one-line usage error (exit 1), not a silent CPU run."""
    from spa.cli import main
    from spa.runtime.providers import cuda_device_present

    monkeypatch.setattr(lut, "measure_layer", _fake_layer)
    monkeypatch.setattr(measure, "paired_samples", _fake_whole)
    src = tmp_path / "m.onnx"
    onnx.save(_cnn(), str(src))
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main(["prune", str(src), "--target-latency", "0.6", "--provider", "cpu", "-o", str(out),
                 "--report", str(rep)]) == 0
    record = json.loads(rep.read_text())["target_latency"]
    assert record["status"] == "met" and record["measured_fraction"] <= 0.6
    if not cuda_device_present():
        code = main(["prune", str(src), "--target-latency", "0.6", "--provider", "cuda", "-o", str(out), "--force"])
        assert code == 1
        assert "--provider cuda" in capsys.readouterr().err
