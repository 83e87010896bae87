"""``spa sweep``: ratio parsing, the files it writes, fidelity labels, refusing to overwrite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from spa import sweep as sweep_mod
from spa.bench.plot import plotting_available
from spa.errors import UsageError
from tests.bench.conftest import one_line_error, run_cli

FAST = ("--iters", "3", "--warmup", "1", "--provider", "cpu")


@pytest.mark.parametrize(("spec", "ratios"), [
    ("0.1:0.7:0.1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    ("0.5", [0.5]),
    ("0.5,0.25,0.5", [0.25, 0.5]),
    ("0.2:0.3:0.5", [0.2]),
])
def test_parse_ratios(spec: str, ratios: list[float]) -> None:
    assert sweep_mod.parse_ratios(spec) == ratios


@pytest.mark.parametrize("spec", ["", "0:1", "a:b:c", "0.1:0.5:0", "1.0", "0.5,1.2", "-0.1:0.3:0.1"])
def test_parse_ratios_rejects(spec: str) -> None:
    with pytest.raises(UsageError, match="--ratios"):
        sweep_mod.parse_ratios(spec)


def test_sweep_writes_csv_json_and_png(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = small_models["static"]
    code, out, err = run_cli(capsys, "sweep", model, "--ratios", "0.25,0.5", "-o", "sw", *FAST)
    assert code == 0, err
    assert "random-inputs" in out
    assert json.loads(Path("sw/sweep.json").read_text())["executor"]["name"] == "local"  # the default
    data = json.loads(Path("sw/sweep.json").read_text())
    rows = data["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.25, 0.5]
    assert rows[0]["model"] == str(model) and rows[0]["speedup"] == 1 and rows[0]["cosine"] == 1
    assert data["fidelity_source"] == "random-inputs" and data["criterion"] == "l2"
    assert data["bench"]["provider"] == "CPUExecutionProvider" and "models" not in data["bench"]
    for r in rows[1:]:
        assert Path(r["model"]).is_file() and r["fidelity_source"] == "random-inputs"
        assert -1 <= r["cosine"] <= 1 and 0 <= r["top1_agreement"] <= 1
        assert r["macs"] < rows[0]["macs"]
        assert r["ideal_speedup"] == pytest.approx(rows[0]["macs"] / r["macs"], abs=1e-4)
        assert r["latency_efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"], rel=1e-3)
    assert rows[2]["macs"] < rows[1]["macs"]
    with open("sw/sweep.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [float(line["ratio"]) for line in lines] == [0.0, 0.25, 0.5]
    assert list(lines[0]) == list(sweep_mod.CSV_FIELDS)
    assert int(lines[2]["macs"]) == rows[2]["macs"]
    assert Path("sw/pareto.png").exists() == plotting_available()
    if plotting_available():
        assert Path("sw/pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert data["files"]["png"] == str(Path("sw") / "pareto.png")

    code, _, err = run_cli(capsys, "sweep", model, "--ratios", "0.25,0.5", "-o", "sw", *FAST)
    assert code == 1
    one_line_error(err, "exists", "--force")
    code, _, err = run_cli(capsys, "-q", "sweep", model, "--ratios", "0.5", "-o", "sw", "--force", *FAST)
    assert code == 0, err
    assert json.loads(Path("sw/sweep.json").read_text())["executor"]["name"] == "serial"  # one point: no pool


def test_sweep_without_matplotlib(small_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    # `spa.bench` is also the name of the Python API function: patch the module object itself
    monkeypatch.setattr(importlib.import_module("spa.bench.plot"), "plotting_available", lambda: False)
    opts = sweep_mod.SweepOptions(ratios=[0.5], bench=sweep_mod.BenchOptions(provider="cpu", iters=2, warmup=0))
    res = sweep_mod.run_sweep(str(small_models["dynamic"]), "out", opts)
    assert res["files"]["png"] is None and not Path("out/pareto.png").exists()
    assert Path("out/sweep.csv").is_file() and len(res["rows"]) == 2


def test_sweep_fidelity_on_data(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    if sweep_mod.data_fidelity is None:
        pytest.skip("spa.validate.fidelity is not available")
    np.savez("calib.npz", x=np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32))
    code, _, err = run_cli(capsys, "-q", "sweep", small_models["dynamic"], "--ratios", "0.5", "-o", "sw",
                           "--eval", "calib.npz", "--executor", "serial", *FAST)
    assert code == 0, err
    data = json.loads(Path("sw/sweep.json").read_text())
    assert data["fidelity_source"].startswith("data:")
    row = data["rows"][1]
    assert -1 <= row["cosine"] <= 1 and 0 <= row["top1_agreement"] <= 1 and row["rel_l2"] >= 0


def test_random_fidelity_of_identical_models(small_models: dict[str, Path]) -> None:
    m = str(small_models["static"])
    fid = sweep_mod.random_fidelity(m, m, samples=3)
    assert fid["cosine"] == pytest.approx(1.0) and fid["top1_agreement"] == 1.0
    assert fid["source"] == sweep_mod.RANDOM_FIDELITY


def test_sweep_bad_inputs(small_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "sweep", "missing.onnx", "-o", "sw")
    assert code == 2
    one_line_error(err, "missing.onnx")
    code, _, err = run_cli(capsys, "sweep", small_models["static"], "-o", "sw", "--ratios", "0.9:0.1:0.1")
    assert code == 1
    one_line_error(err, "--ratios")
    Path("afile").write_text("x")
    code, _, err = run_cli(capsys, "sweep", small_models["static"], "-o", "afile", "--ratios", "0.5", *FAST)
    assert code in (1, 2)
    assert err.strip().startswith("spa: error:") and len(err.strip().splitlines()) == 1
