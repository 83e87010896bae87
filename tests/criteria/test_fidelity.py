"""The fidelity report: cosine, relative L2 and top-1 agreement of pruned vs original outputs."""

from __future__ import annotations

import numpy as np
import pytest

import spa
from spa.calibration import ArraySource
from spa.errors import ValidationError
from spa.validate.fidelity import fidelity
from tests.oracle import GraphBuilder


def _classifier() -> object:
    b = GraphBuilder(opset=13, seed=5)
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv(y, 8, 8)])])])
    b.output(b.op("Gemm", [y, b.weight(4, 8), b.const(np.zeros(4, np.float32))], transB=1))
    b.output(y)
    return b.build()


def test_identical_models_agree_fully() -> None:
    model = _classifier()
    rep = fidelity(model, model, "random", samples=12, batch_size=5)
    assert rep["samples"] == 12
    outs = rep["outputs"]
    assert len(outs) == 2  # type: ignore[arg-type]
    for _name, o in outs.items():  # type: ignore[union-attr]
        assert o["cosine"] == pytest.approx(1.0) and o["rel_l2"] == pytest.approx(0.0, abs=1e-7)
    logits = next(o for o in outs.values() if o["top1_agreement"] is not None)  # type: ignore[union-attr]
    assert logits["top1_agreement"] == 1.0


def test_pruned_model_report() -> None:
    model = _classifier()
    data = np.random.default_rng(0).standard_normal((20, 3, 6, 6)).astype(np.float32)
    pruned = spa.prune(model, ratio=0.5, criterion="obs", calibration=ArraySource({"x": data})).model
    rep = fidelity(model, pruned, {"x": data})
    for o in rep["outputs"].values():  # type: ignore[union-attr]
        if "error" in o:
            continue
        assert -1.0 <= o["cosine"] <= 1.0 and o["rel_l2"] >= 0.0
    with pytest.raises(ValidationError, match="needs data"):
        fidelity(model, pruned, None)
