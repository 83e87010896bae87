"""Executors (serial, local process pool, Ray): results in input order, a killed worker survived, and the
same bits whichever runs the work — calibration statistics, a prune with sensitivity probes, a sweep.

The Ray tests (marked ``ray``) share one local Ray instance with 2 CPUs, started by a module fixture.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import spa
from spa import sweep as sweep_mod
from spa.calibration import ArraySource, FeatureMoments, SecondMoment, collect, dense_rows
from spa.calibration.stats import SHARD_BATCHES, ConvUnfold
from spa.errors import SpaError, UsageError
from spa.executors import Executor, ExecutorError, LocalPoolExecutor, SerialExecutor, make_executor
from spa.latency import lut
from spa.options import check_executor
from tests.bench.conftest import one_line_error, run_cli, small_cnn
from tests.conftest import fake_layer_ms
from tests.executor_tasks import KillOnce, _fail_on_three, _scale

ROOT = Path(__file__).resolve().parent.parent
#: the sweep CSV columns that are measured timings (they differ run to run, whoever prunes)
TIMED = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_sps", "speedup", "latency_efficiency"}


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """One local Ray instance (2 CPUs) for the module; its workers import spa and tests from this checkout."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class KillingExecutor:
    """An executor whose tasks kill their worker once, at ``item``."""

    def __init__(self, inner: Executor, item: object, marker: Path, always: bool = False) -> None:
        self.inner, self.item, self.marker, self.always = inner, item, marker, always
        self.name = inner.name

    @property
    def workers(self) -> int:
        return self.inner.workers

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None, *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        return self.inner.map(KillOnce(fn, self.item, self.marker, self.always), items, shared, on_result=on_result)


# -- the executors themselves -----------------------------------------------------------------------------------


def test_serial_and_pool_return_in_input_order(tmp_path: Path) -> None:
    seen: list[int] = []
    assert SerialExecutor().map(_scale, [3, 1, 2], shared=10, on_result=lambda i, _r: seen.append(i)) == [30, 10, 20]
    assert seen == [0, 1, 2]
    pool = LocalPoolExecutor(2)
    done: list[tuple[int, int]] = []
    assert pool.map(_scale, list(range(7)), shared=3, on_result=lambda i, r: done.append((i, r))) == \
        [3 * x for x in range(7)]
    assert sorted(done) == [(x, 3 * x) for x in range(7)]
    with pytest.raises(UsageError, match="three is refused"):  # the task's own error, as itself
        pool.map(_fail_on_three, [1, 2, 3])


def test_pool_survives_a_killed_worker(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    got = LocalPoolExecutor(2).map(KillOnce(_scale, 4, marker), list(range(6)), shared=5)
    assert got == [5 * x for x in range(6)]
    assert marker.is_file() and int(marker.read_text()) != os.getpid()  # a worker died, not this process


def test_executor_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExecutorError, match="serial, local, ray"):
        make_executor("threads")
    with pytest.raises(UsageError, match="at least 1"):
        LocalPoolExecutor(0)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'spa\[ray\]'"):
        check_executor("ray")
    with pytest.raises(ExecutorError, match=r"pip install 'spa\[ray\]'"):
        make_executor("ray")


def test_cli_executor_ray_without_ray(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn("N"), model)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, _, err = run_cli(capsys, "sweep", model, "-o", tmp_path / "sw", "--ratios", "0.5", "--executor", "ray")
    assert code != 0
    one_line_error(err, "pip install 'spa[ray]'")
    code, _, err = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--executor", "ray")
    assert code != 0
    one_line_error(err, "pip install 'spa[ray]'")


@pytest.mark.ray
def test_ray_order_errors_and_a_killed_worker(ray_instance: Any, tmp_path: Path) -> None:
    ex = make_executor("ray")
    assert ex.name == "ray" and ex.workers == 2
    assert ex.map(_scale, list(range(5)), shared=7) == [7 * x for x in range(5)]
    with pytest.raises(UsageError, match="three is refused"):
        ex.map(_fail_on_three, [1, 2, 3])
    marker = tmp_path / "killed"
    assert ex.map(KillOnce(_scale, 2, marker), list(range(5)), shared=2) == [2 * x for x in range(5)]
    assert marker.is_file()
    ex.close()
    assert ray_instance.is_initialized()  # an instance it did not start is left running


# -- the same bits from every executor ------------------------------------------------------------------------


def _calibration() -> ArraySource:
    """48 samples in batches of 4: 12 batches, so two shards of the fixed-order reduction."""
    x = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)
    return ArraySource({"x": x}, batch_size=4, name="toy")


def _statistics(executor: Executor | None) -> list[np.ndarray]:
    """XᵀX (dense and im2col), column sums and per-channel moments of small_cnn's input and first conv's output."""
    model = small_cnn(1)
    first = model.graph.node[0].output[0]
    big = ConvUnfold(kernel=(15, 15), strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0))  # 675 features:
    accs: dict[str, list[Any]] = {  # XᵀX big enough that a multi-threaded BLAS would sum it in another order
        "x": [SecondMoment(ConvUnfold(kernel=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1)).rows, 27),
              FeatureMoments(1), SecondMoment(big.rows, 675)],
        first: [SecondMoment(dense_rows(1), 16), FeatureMoments(1)],
    }
    assert collect(model, _calibration(), accs, executor=executor) == 48
    out = []
    for group in accs.values():
        sm, fm = group[:2]
        out += [sm.xtx, sm.colsum, np.array([sm.count]), fm.sum, fm.sumsq, np.array([fm.count])]
    return out + [accs["x"][2].xtx]


def _assert_same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)  # bit for bit, not allclose


def test_calibration_statistics_pool_equal_serial() -> None:
    assert 48 // 4 > SHARD_BATCHES  # more than one shard, or the test shows nothing
    serial = _statistics(None)
    _assert_same(serial, _statistics(LocalPoolExecutor(2)))
    x = np.asarray(_calibration().arrays["x"], dtype=np.float64)  # and they are the statistics
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 3)
    assert serial[5][0] == len(rows)
    np.testing.assert_allclose(serial[3], rows.sum(0), rtol=1e-10)
    np.testing.assert_allclose(serial[4], (rows**2).sum(0), rtol=1e-10)


@pytest.mark.ray
def test_calibration_statistics_ray_equal_serial(ray_instance: Any) -> None:
    _assert_same(_statistics(None), _statistics(make_executor("ray")))


def _prune_bytes(executor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, dict[str, Any]]:
    """obs scores (calibration statistics) and a sensitivity-allocated MACs budget (probes), on ``executor``;
    a fresh cache so the probes really run."""
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path / f"cache_{executor}"))
    res = spa.prune(small_cnn(1), criterion="obs", calibration=_calibration(), target_macs=0.6,
                    allocate="sensitivity", probe_samples=16, executor=executor, workers=2)
    alloc = res.report["quality"]["allocation"] if "quality" in res.report else res.report["allocation"]
    assert alloc["probes"] > 0 and alloc["cached"] is None
    return res.model.SerializeToString(), alloc


def test_prune_local_pool_equal_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial, a = _prune_bytes("serial", tmp_path, monkeypatch)
    pool, b = _prune_bytes("local", tmp_path, monkeypatch)
    assert b["executor"] == "local" and a["executor"] == "serial"
    assert pool == serial
    assert [g["sensitivity"] for g in a["groups"]] == [g["sensitivity"] for g in b["groups"]]


@pytest.mark.ray
def test_prune_ray_equal_serial(ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial, _ = _prune_bytes("serial", tmp_path, monkeypatch)
    on_ray, rec = _prune_bytes("ray", tmp_path, monkeypatch)
    assert rec["executor"] == "ray" and on_ray == serial


# -- sweeps -------------------------------------------------------------------------------------------------------


def _sweep(model: Path, out: Path, executor: str = "serial", *, run: Executor | None = None,
           resume: bool = False) -> dict[str, Any]:
    opts = sweep_mod.SweepOptions(ratios=[0.25, 0.5, 0.75], criterion="l1,l2", executor=executor, workers=2,
                                  bench=sweep_mod.BenchOptions(provider="cpu", iters=2, warmup=0), resume=resume)
    return sweep_mod.run_sweep(str(model), out, opts, executor=run)


def _untimed_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (Path(v).name if k == "model" and v else v) for k, v in r.items() if k not in TIMED} for r in rows]


def _pruned(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.r*.onnx"))}


@pytest.fixture(scope="module")
def sweep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep_model") / "cnn.onnx"
    onnx.save(small_cnn("N"), path)
    return path


@pytest.fixture(scope="module")
def serial_sweep(sweep_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The reference sweep, in this process; with the fake latency table the tests use (a module fixture is
    made before the autouse one of tests/conftest.py)."""
    out = tmp_path_factory.mktemp("serial_sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "spa_fake_cache"))
        mp.setattr(lut, "measure_layer", fake_layer_ms)
        res = _sweep(sweep_model, out)
    assert len(res["rows"]) == 7 and not any(r.get("error") for r in res["rows"])
    assert [(r["criterion"], r["ratio"]) for r in res["rows"][1:]] == \
        [(c, r) for c in ("l1", "l2") for r in (0.25, 0.5, 0.75)]
    yield out


def test_sweep_local_pool_equal_serial(sweep_model: Path, serial_sweep: Path, tmp_path: Path) -> None:
    _sweep(sweep_model, tmp_path / "pool", "local")
    assert len(_pruned(serial_sweep)) == 6 and _pruned(tmp_path / "pool") == _pruned(serial_sweep)
    assert _untimed_csv(tmp_path / "pool") == _untimed_csv(serial_sweep)


@pytest.mark.ray
def test_sweep_ray_equal_serial_with_a_killed_worker(ray_instance: Any, sweep_model: Path, serial_sweep: Path,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    with make_executor("ray") as ray_ex:
        _sweep(sweep_model, tmp_path / "ray", run=KillingExecutor(ray_ex, ("l2", 0.5), marker))
    assert marker.is_file()  # the worker pruning (l2, 0.5) died once; the task ran again
    assert _pruned(tmp_path / "ray") == _pruned(serial_sweep)
    assert _untimed_csv(tmp_path / "ray") == _untimed_csv(serial_sweep)


def test_sweep_resume_continues_from_the_finished_points(sweep_model: Path, serial_sweep: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted sweep: the pool's worker dies on one point each try, so the sweep fails with the other
    points written; --resume then prunes only the missing ones."""
    out = tmp_path / "sw"
    killing = KillingExecutor(LocalPoolExecutor(2, retries=1), ("l1", 0.75), tmp_path / "killed", always=True)
    with pytest.raises(SpaError, match="died"):
        _sweep(sweep_model, out, run=killing)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.r*.onnx")}
    assert 0 < len(written) < 6 and "cnn.l1.r0.750.onnx" not in written
    assert not (out / "sweep.csv").exists()
    code, _, err = run_cli(capsys, "sweep", sweep_model, "-o", out, "--ratios", "0.25,0.5,0.75",
                           "--criterion", "l1,l2", "--iters", "2", "--warmup", "0", "--provider", "cpu",
                           "--executor", "serial")
    assert code == 1
    one_line_error(err, "--resume", "--force")
    _sweep(sweep_model, out, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.r*.onnx") if p.name in written} == written
    assert _pruned(out) == _pruned(serial_sweep)
    assert _untimed_csv(out) == _untimed_csv(serial_sweep)


def test_latency_table_replay_never_measures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A worker's table answers from the driver's entries only and records what it lacks."""
    def no_timing(*_a: object, **_k: object) -> float:
        raise AssertionError("a replaying table measured a layer")

    monkeypatch.setattr(lut, "measure_layer", no_timing)
    known = lut.LayerConfig("Gemm", "float32", ((1, 8), (8, 4)), (False, True), (), (1, 4))
    unknown = lut.LayerConfig("Gemm", "float32", ((1, 8), (8, 6)), (False, True), (), (1, 6))
    with lut.replaying({known.key: 0.5}) as replay:
        table = lut.LatencyTable.open(None, 1, tmp_path)
        assert table.layer_ms(known) == 0.5
        assert table.layer_ms(unknown) is None
        table.save()
    assert list(replay.missing) == [unknown.key] and replay.missing[unknown.key] == unknown
    assert not list(tmp_path.iterdir())  # nothing written on the worker


def test_probe_delta_restores_the_twin() -> None:
    """A sensitivity probe's twin sent as a delta from the original comes back byte for byte."""
    from onnx import numpy_helper

    from spa.quality.probe import Delta

    base = small_cnn(1)
    twin = onnx.ModelProto()
    twin.CopyFrom(base)
    w = twin.graph.initializer[0]
    changed = numpy_helper.to_array(w).copy()
    changed.flat[0] += 1.0
    w.CopyFrom(numpy_helper.from_array(changed, w.name))
    delta = Delta.of(twin, {i.name: i.SerializeToString() for i in base.graph.initializer})
    assert w.name not in delta.shared and len(delta.shared) == len(base.graph.initializer) - 1
    assert len(delta.model) < base.ByteSize()
    assert delta.restore(base.SerializeToString()).SerializeToString() == twin.SerializeToString()


@pytest.mark.ray
def test_cli_sweep_on_ray(ray_instance: Any, sweep_model: Path, serial_sweep: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "cli"
    code, stdout, err = run_cli(capsys, "sweep", sweep_model, "-o", out, "--ratios", "0.25,0.5,0.75",
                                "--criterion", "l1,l2", "--iters", "2", "--warmup", "0", "--provider", "cpu",
                                "--executor", "ray", "--workers", "2")
    assert code == 0, err
    assert json.loads((out / "sweep.json").read_text())["executor"] == {"name": "ray", "workers": 2}
    assert "criterion" in stdout  # the table's criterion column (two criteria)
    assert _pruned(out) == _pruned(serial_sweep) and _untimed_csv(out) == _untimed_csv(serial_sweep)


def test_sources_start_a_shard_without_reading_the_batches_before(tmp_path: Path) -> None:
    """``batches_from(k)`` (arrays, .npy, image folders) gives what skipping k batches of ``batches`` gives."""
    pytest.importorskip("PIL")
    from PIL import Image

    from spa.calibration import ImageFolderSource, NpySource
    from spa.calibration.runner import _shard
    from spa.runtime.feeds import input_specs

    rng = np.random.default_rng(0)
    for k in range(11):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{k:02d}.png")
    np.save(tmp_path / "x.npy", rng.standard_normal((11, 3, 16, 16)).astype(np.float32))
    specs = input_specs(small_cnn("N"))
    for src in (ImageFolderSource(tmp_path, batch_size=2), NpySource(tmp_path / "x.npy", batch_size=2), _calibration()):
        every = list(src.batches(specs))
        for start, stop in ((0, 2), (3, 5), (4, 100)):
            got = list(_shard(src, specs, (start, stop)))
            assert len(got) == len(every[start:stop]) > 0
            for a, b in zip(got, every[start:stop]):
                assert np.array_equal(a["x"], b["x"])


def test_sweep_task_over_2gb_reads_and_writes_paths(sweep_model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A model too big for one protobuf goes to the tasks as its path, and its pruned model is written by the
    task itself (simulated: serialising a pruned model raises as protobuf does over 2 GB)."""
    from google.protobuf.message import EncodeError

    dest = tmp_path / "big.r0.500.onnx"
    job = sweep_mod._SweepJob(str(sweep_model), 0, None, {"round_to": 1}, None, {("l2", 0.5): str(dest)})
    direct = sweep_mod._prune_point(job, ("l2", 0.5))
    assert onnx.load_from_string(direct["model"]).graph.node  # a path is read like the bytes

    def too_big(self: onnx.ModelProto) -> bytes:
        raise EncodeError("Failed to serialize proto: over 2 GB")

    monkeypatch.setattr(spa.api.PruneResult, "model", property(lambda self: _Unserializable()))

    class _Unserializable:
        SerializeToString = too_big

    res = sweep_mod._prune_point(job, ("l2", 0.5))
    assert res == {"saved": str(dest), "num_pruned": direct["num_pruned"]}
    assert dest.read_bytes() == direct["model"]
