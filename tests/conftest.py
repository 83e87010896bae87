"""Shared fixtures: a session-wide cache of zoo exports (dynamo exports are slow, export once), and a
fake per-layer latency table for every test not marked ``real_latency``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from spa.latency import lut
from spa.latency.layers import LayerConfig

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


def fake_layer_ms(cfg: LayerConfig, providers: Sequence[str], threads: int = 1) -> float:
    """A deterministic stand-in for a micro-benchmark: milliseconds proportional to the layer's MACs,
    25 % dearer when a channel count is off the 8-channel block (what NCHWc kernels show)."""
    if cfg.op in ("Conv", "ConvTranspose"):
        macs = float(np.prod(cfg.output) * np.prod(cfg.inputs[1][1:]))
        channels = (cfg.inputs[0][1], cfg.output[1]) if len(cfg.output) > 1 else ()
    else:
        attrs = dict(cfg.attrs)
        k = cfg.inputs[0][-2] if attrs.get("transA") else cfg.inputs[0][-1]
        macs = float(np.prod(cfg.output) * k)
        channels = (k, cfg.output[-1])
    off = any(c % 8 for c in channels)
    return macs / 1e6 * (1.25 if off else 1.0) + 1e-4


@pytest.fixture(autouse=True)
def _fake_latency_table(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never time layers (``--round-to latency`` is the default): a fake table in a private cache,
    unless the test is marked ``real_latency``."""
    if request.node.get_closest_marker("real_latency") is not None:
        return
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "spa_fake_cache"))
    monkeypatch.setattr(lut, "measure_layer", fake_layer_ms)
