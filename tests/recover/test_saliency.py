"""Gradient criteria ``taylor`` and ``snip``: prunes pass the mask oracle, a channel the graph multiplies by
zero downstream scores lowest, and without torch or without data the error is one line naming the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.analysis.groups import analyze_graph
from spa.calibration import ArraySource, RandomSource
from spa.errors import UsageError
from tests.criteria.test_criteria import small_cnn
from tests.oracle import GraphBuilder, assert_oracle

pytest.importorskip("torch")
from spa.recover.saliency import channel_saliency

CALIB = RandomSource(samples=16, batch_size=8, seed=0)
GRADIENT = ("taylor", "snip")


@pytest.mark.parametrize("criterion", GRADIENT)
def test_small_cnn_oracle(criterion: str) -> None:
    r = assert_oracle(small_cnn(), 0.5, criterion, calibration=CALIB)
    assert r.report["criterion"] == criterion


@pytest.mark.parametrize("criterion", GRADIENT)
@pytest.mark.parametrize("name", ["mobilenetv2", "bert"])
def test_zoo_models_oracle(zoo_export, name: str, criterion: str) -> None:  # type: ignore[no-untyped-def]
    """Depthwise convs and residuals (MobileNetV2); attention heads and MLPs of a 2-layer encoder (BERT)."""
    path = zoo_export(name, "legacy")
    src = RandomSource(samples=8, batch_size=4, seed=0) if name != "bert" else None
    assert_oracle(str(path), 0.5, criterion, calibration=src or _token_data(path))


def _token_data(path: Path) -> ArraySource:
    """Random inputs of a token model (whatever dtype and shape its inputs declare, batch 4 of 8)."""
    m = onnx.load(str(path))
    rng = np.random.default_rng(0)
    feeds = {}
    for i in m.graph.input:
        dims = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = (rng.integers(0, 50, (8, *dims[1:])) if dtype.kind in "iu"
                         else rng.standard_normal((8, *dims[1:]))).astype(dtype)
    return ArraySource(feeds, batch_size=4, name="tokens")


def dead_channel_model(dead: int = 2) -> onnx.ModelProto:
    """conv(3→6) → ReLU → ×mask (0 on channel ``dead``) → conv(6→4) → GAP → flatten → linear 10: the dead
    channel's producer rows are the largest, so magnitude ranks it first."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 8, 8])
    w = b.rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    w[dead] *= 10.0
    y = b.op("Relu", [b.op("Conv", [x, b.const(w, "w"), b.const(np.zeros(6, np.float32), "b")], pads=[1] * 4)])
    mask = np.ones((1, 6, 1, 1), np.float32)
    mask[0, dead] = 0.0
    y = b.op("Mul", [y, b.const(mask, "mask")])
    y = b.op("Relu", [b.conv(str(y), 6, 4)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    b.output(str(b.op("Gemm", [y, b.weight(10, 4), b.const(np.zeros(10, np.float32))], transB=1)))
    return b.build()


@pytest.mark.parametrize("criterion", GRADIENT)
def test_dead_channel_scores_last(criterion: str) -> None:
    model = dead_channel_model(dead=2)
    analysis = analyze_graph(spa.load(model))
    gid = next(g.id for g in analysis.prunable if g.channels == 6)
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    raw = channel_saliency(analysis, analysis.model.to_onnx(), ArraySource({"x": x}, batch_size=8), criterion)
    assert raw[gid][2] == 0.0 and np.all(np.delete(raw[gid], 2) > 0)
    l2 = spa.prune(model, ratio=1 / 6, criterion="l2", round_to=1)
    assert 2 in l2.report["groups"][gid]["kept"]  # type: ignore[index]  # magnitude keeps it ...
    grad = spa.prune(model, ratio=1 / 6, criterion=criterion, round_to=1, calibration=ArraySource({"x": x}))
    assert 2 not in grad.report["groups"][gid]["kept"]  # type: ignore[index]  # ... the gradient removes it


def test_snip_cancels_signs_taylor_does_not() -> None:
    """Per sample |g| averaged (taylor) is never below |Σ g| / N (snip), channel by channel."""
    model = small_cnn()
    analysis = analyze_graph(spa.load(model))
    proto = analysis.model.to_onnx()
    t = channel_saliency(analysis, proto, CALIB, "taylor")
    s = channel_saliency(analysis, proto, CALIB, "snip")
    assert t.keys() == s.keys() and t
    for gid in t:
        assert np.all(t[gid] >= s[gid] - 1e-9)
    assert any(np.any(t[gid] > s[gid] * 1.01) for gid in t)


@pytest.mark.parametrize("criterion", GRADIENT)
def test_needs_calibration_data(criterion: str) -> None:
    with pytest.raises(UsageError, match="needs calibration data"):
        spa.prune(small_cnn(), ratio=0.5, criterion=criterion)


@pytest.mark.parametrize("criterion", GRADIENT)
def test_without_torch_one_line_error(criterion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(UsageError, match=r"needs PyTorch: pip install 'spa\[recover\]'") as info:
        spa.prune(small_cnn(), ratio=0.5, criterion=criterion, calibration=CALIB)
    assert criterion in str(info.value) and "\n" not in str(info.value)
