"""Every architecture in models/, exported by both PyTorch exporters, pruned at 25 % and 50 %.

Each pruned model must be valid, have fewer MACs, keep output names/shapes, and pass the mask oracle.
Exports are made once per test session (dynamo is slow) into a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from models.export import export_onnx  # noqa: E402
from models.registry import TINY_MODELS  # noqa: E402
from tests.oracle import assert_oracle  # noqa: E402

EXPORTERS = ["legacy", "dynamo"]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Lazily exported models, cached for the session."""
    cache: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("zoo")

    class _Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, key: tuple[str, str]) -> Path:
            name, exporter = key
            model, shape = TINY_MODELS[name]()
            path = folder / f"{name}_{exporter}.onnx"
            export_onnx(model, shape, path, exporter=exporter)
            self[key] = path
            return path

    return _Lazy(cache)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_zoo_prunes_exactly(exported: dict[tuple[str, str], Path], name: str, exporter: str, ratio: float) -> None:
    path = exported[(name, exporter)]
    result = assert_oracle(str(path), ratio)
    assert result.report["macs_after"] < result.report["macs_before"]
    pruned_groups = [g for g in result.report["groups"] if g["channels_after"] != g["channels_before"]]  # type: ignore[union-attr]
    assert pruned_groups


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_zoo_exporters_agree_on_groups(exported: dict[tuple[str, str], Path], name: str) -> None:
    """Both exporters' graphs of one architecture expose the same prunable channel counts."""
    import spa

    counts = {}
    for exporter in EXPORTERS:
        a = spa.analyze(str(exported[(name, exporter)]))
        counts[exporter] = sorted(g.channels for g in a.prunable)
    assert counts["legacy"] == counts["dynamo"]
