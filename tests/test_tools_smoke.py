"""Smoke test of the benchmark tools: they run end to end and write sane JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")  # the benchmark exports its models from PyTorch


def test_bench_prune_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_prune_speed.py"), "--quick", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True and data["meta"]["repeat"] == 1
    rows = data["rows"]
    assert len(rows) >= 2
    for row in rows:
        assert "error" not in row, row
        assert row["nodes"] > 0 and row["params"] > 0
        assert row["pruned_groups"] > 0
        med = row["median"]
        for phase in ("load_normalize", "analyze", "score_plan", "surgery", "total"):
            assert 0 < med[phase] < 60, (row["name"], phase, med[phase])
        assert row["peak_rss_mb"] >= row["base_rss_mb"] > 0
    assert "model" in res.stdout and "total" in res.stdout  # the rich table
