"""`spa prune` with calibration data: --calib/--calib-samples/--calib-batch, --eval, fidelity in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from spa.cli import main
from tests.criteria.test_criteria import small_cnn


def test_prune_with_calibration_writes_fidelity(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(), model)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32))
    report = tmp_path / "r.json"
    rc = main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--criterion", "obs", "--calib",
               str(tmp_path / "calib.npz"), "--calib-samples", "8", "--calib-batch", "3", "--report", str(report),
               "--reduction", "max"])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["calibration"].endswith("calib.npz") and data["compensated_weights"]
    assert data["criterion_options"] == {"reduction": "max"}
    fid = data["fidelity"]
    assert fid["samples"] == 8
    out = next(iter(fid["outputs"].values()))
    assert 0.0 < out["cosine"] <= 1.0 + 1e-9 and out["top1_agreement"] is not None


def test_prune_usage_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(), model)
    assert main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--criterion", "obs"]) == 1
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--criterion", "wanda",
                 "--calib", str(tmp_path / "missing.npz")]) == 1
    assert "no such calibration file" in capsys.readouterr().err
    assert main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--criterion", "obspa",
                 "--eval", "random", "--calib-samples", "4"]) == 0
