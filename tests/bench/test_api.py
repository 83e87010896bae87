"""``spa.bench`` mirrors ``spa bench``."""

from __future__ import annotations

from pathlib import Path

import onnx

import spa
from tests.oracle import GraphBuilder


def test_bench_api_times_both_models(tmp_path: Path) -> None:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.conv(b.op("Relu", [b.conv(x, 3, 16)]), 16, 4))  # type: ignore[arg-type]
    src = tmp_path / "m.onnx"
    onnx.save(b.build(), str(src))
    spa.prune(str(src), ratio=0.5).save(tmp_path / "p.onnx")
    report = spa.bench([src, tmp_path / "p.onnx"], iters=3, warmup=1, provider="cpu")
    rows = report["models"]
    assert len(rows) == 2
    assert rows[1]["macs"] < rows[0]["macs"]
    assert rows[0]["speedup"] == 1.0
