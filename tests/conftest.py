"""Shared fixtures: a session-wide cache of zoo exports (dynamo exports are slow, export once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ZooExport = Callable[..., Path]


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory: pytest.TempPathFactory) -> ZooExport:
    """``zoo_export(name, exporter, keep_bn=True)`` → path of the exported tiny model (cached)."""
    pytest.importorskip("torch")
    from models.export import export_onnx
    from models.registry import TINY_MODELS

    folder = tmp_path_factory.mktemp("zoo")
    cache: dict[tuple[str, str, bool], Path] = {}

    def get(name: str, exporter: str, keep_bn: bool = True) -> Path:
        key = (name, exporter, keep_bn)
        if key not in cache:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model, shape = TINY_MODELS[name]()
                path = folder / f"{name}_{exporter}_{'bn' if keep_bn else 'fold'}.onnx"
                export_onnx(model, shape, path, exporter=exporter, keep_bn=keep_bn, verify=False)  # type: ignore[arg-type]
            finally:
                torch.set_num_threads(threads)
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture(scope="session")
def model_export(zoo_export: ZooExport, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``model_export(name, exporter)`` → a zoo model (as :func:`zoo_export`) or a token-id transformer
    (``models.transformers.TOKEN_MODELS`` / ``HIDDEN_TOKEN_MODELS``), exported once per session."""
    pytest.importorskip("torch")
    from models.transformers import HIDDEN_TOKEN_MODELS, TOKEN_MODELS, export_token_model

    token = {**TOKEN_MODELS, **HIDDEN_TOKEN_MODELS}
    folder = tmp_path_factory.mktemp("tokens")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if name not in token:
            return zoo_export(name, exporter)
        if (name, exporter) not in cache:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model, shape = token[name]()
                cache[(name, exporter)] = export_token_model(model, shape, folder / f"{name}_{exporter}.onnx",
                                                             exporter=exporter)  # type: ignore[arg-type]
            finally:
                torch.set_num_threads(threads)
        return cache[(name, exporter)]

    return get
