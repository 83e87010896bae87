"""CLI recipes: --config TOML, --dry-run, budgets, unconstrained export and head options."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from spa.cli import main
from tests.oracle import GraphBuilder


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    s = b.op("Relu", [b.conv(x, 3, 16)])
    for _ in range(2):
        h = b.op("Relu", [b.conv(s, 16, 8)])  # type: ignore[arg-type]
        s = b.op("Add", [s, b.conv(h, 8, 16)])  # type: ignore[arg-type,list-item]
    b.output(b.conv(s, 16, 4, k=1))  # type: ignore[arg-type]
    path = tmp_path / "m.onnx"
    onnx.save(b.build(), str(path))
    return path


def _report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def test_dry_run_writes_no_model(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", str(model), "--ratio", "0.5", "--dry-run"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] is True and data["plan"]["groups"]
    assert not list(tmp_path.glob("*.pruned*"))
    assert data["macs_after"] < data["macs_before"]


def test_config_sets_defaults_and_overrides(model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "prune.toml"
    cfg.write_text('ratio = 0.5\nround_to = 4\n[[override]]\npattern = "w1"\nratio = 0.0\n')
    rep = tmp_path / "r.json"
    assert main(["-q", "prune", str(model), "--config", str(cfg), "-o", str(tmp_path / "p.onnx"),
                 "--report", str(rep)]) == 0
    r = _report(rep)
    assert r["round_to"] == 4 and r["ratio"] == 0.5
    first = next(g for g in r["groups"] if "w1[0]" in g["weights"])
    assert first["channels_after"] == first["channels_before"]
    assert all(g["channels_after"] % 4 == 0 for g in r["groups"] if g["prunable"])


def test_command_line_wins_over_config(model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "prune.toml"
    cfg.write_text("ratio = 0.5\n")
    rep = tmp_path / "r.json"
    assert main(["-q", "prune", str(model), "--config", str(cfg), "--ratio", "0.25", "-o",
                 str(tmp_path / "p.onnx"), "--report", str(rep)]) == 0
    assert _report(rep)["ratio"] == 0.25


@pytest.mark.parametrize("content", ["ratioo = 0.5\n", "[[override]]\nratio = 0.1\n", "not toml ="])
def test_bad_config_is_a_usage_error(model: Path, tmp_path: Path, content: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    assert main(["prune", str(model), "--config", str(cfg), "-o", str(tmp_path / "p.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("spa: error: --config") and "\n" not in err
    assert not (tmp_path / "p.onnx").exists()


def test_target_macs_from_cli(model: Path, tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    assert main(["-q", "prune", str(model), "--target-macs", "0.5", "-o", str(tmp_path / "p.onnx"),
                 "--report", str(rep)]) == 0
    r = _report(rep)
    assert r["macs_after"] <= 0.5 * r["macs_before"]


def test_unconstrained_cli_and_verify(model: Path, tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    p, k = tmp_path / "p.onnx", tmp_path / "k.onnx"
    assert main(["-q", "prune", str(model), "--unconstrained", "--ratio", "0.5", "-o", str(p),
                 "--emit-masked", str(k), "--report", str(rep)]) == 0
    assert sum(_report(rep)["consumer_reads"].values()) >= 1
    assert main(["-q", "verify", str(model), str(p), "--masked", str(k)]) == 0


def test_missing_output_without_dry_run(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", str(model), "--ratio", "0.5"]) == 1
    assert "--output" in capsys.readouterr().err
