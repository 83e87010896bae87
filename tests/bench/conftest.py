"""Fixtures of the bench tests: small models (static and dynamic batch) and their pruned versions.

Tests marked ``gpu`` run only where a CUDA device really works (:func:`spa.runtime.providers.cuda_device_present`
creates a tiny CUDA session); elsewhere they are skipped, never faked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.runtime.providers import cuda_device_present
from tests.oracle import GraphBuilder


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not cuda_device_present():
        pytest.skip("needs a usable CUDA device (none here)")


def small_cnn(batch: int | str = 1) -> onnx.ModelProto:
    """Conv stem, two-branch Concat, Transpose, pooling and Gemm head (4 prunable groups)."""
    b = GraphBuilder(opset=13, seed=3)
    x = b.input("x", [batch, 3, 16, 16])
    a = b.op("Relu", [b.conv(x, 3, 16)])
    c1 = b.op("Relu", [b.conv(a, 16, 12, k=1)])  # type: ignore[arg-type]
    c2 = b.op("Relu", [b.conv(a, 16, 8)])  # type: ignore[arg-type]
    cat = b.op("Concat", [c1, c2], axis=1)  # type: ignore[list-item]
    h = b.op("Relu", [b.conv(cat, 20, 24, stride=2)])  # type: ignore[arg-type]
    t = b.op("Transpose", [h], perm=[0, 1, 3, 2])  # type: ignore[list-item]
    f = b.op("Flatten", [b.op("GlobalAveragePool", [t])])  # type: ignore[list-item]
    y = b.op("Gemm", [f, b.weight(10, 24), b.const(np.zeros(10, np.float32), "b")], transB=1)  # type: ignore[list-item]
    b.output(y)  # type: ignore[arg-type]
    return b.build()


@pytest.fixture(scope="session")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``static``/``dynamic`` (batch 1 / batch ``N``) and their 50 % pruned versions ``*_p``."""
    d = tmp_path_factory.mktemp("bench_models")
    out: dict[str, Path] = {}
    for name, model in (("static", small_cnn(1)), ("dynamic", small_cnn("N"))):
        out[name] = d / f"{name}.onnx"
        onnx.save(model, out[name])
        out[f"{name}_p"] = d / f"{name}_p.onnx"
        spa.prune(str(out[name]), ratio=0.5).save(out[f"{name}_p"])
    return out


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``spa ARGS`` in-process: (exit code, stdout, stderr)."""
    from spa.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> str:
    """Assert ``err`` is one ``spa: error:`` line containing ``needles``; return it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("spa: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]
