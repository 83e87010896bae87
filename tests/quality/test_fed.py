"""Weight-fed sensitivity probes (spa/quality/fed.py): one ONNX Runtime session for every probe gives the
curves that exporting each masked twin gives, and falls back where a twin cannot be fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.quality import fed as fed_mod
from tests.criteria.test_criteria import small_cnn
from tests.quality.test_quality import data, two_branch


def _curves(model: object, source: object, criterion: str) -> tuple[dict[str, list[float]], dict[str, object]]:
    r = spa.prune(model, target_macs=0.6, criterion=criterion, calibration=source, allocate="sensitivity")  # type: ignore[arg-type]
    alloc = r.report["allocation"]
    assert isinstance(alloc, dict)
    return {g["label"]: g["sensitivity"] for g in alloc["groups"]}, alloc  # type: ignore[index]


@pytest.mark.parametrize("criterion", ["l2", "obs"])
@pytest.mark.parametrize("make", [small_cnn, two_branch], ids=["cnn", "two_branch"])
def test_weight_fed_probes_equal_exported_twins(make, criterion: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path / "a"))
    model = make()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    source = data(tuple(shape[1:]))
    fast, rec = _curves(model, source, criterion)
    assert rec["weight_fed"] == rec["probes"], rec  # every probe ran in the one weight-fed session
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path / "b"))
    monkeypatch.setattr(fed_mod.FedModel, "build", classmethod(lambda cls, *a, **k: None))
    slow, rec2 = _curves(model, source, criterion)
    assert rec2["weight_fed"] == 0
    assert fast.keys() == slow.keys()
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-5, atol=1e-9)


def test_a_twin_that_changes_the_graph_is_not_fed() -> None:
    """A twin with other nodes, or a changed constant that is not fed, is refused (the caller exports it)."""
    import onnx_graphsurgeon as gs

    mg = spa.load(small_cnn())
    source = data(tuple(d.dim_value for d in small_cnn().graph.input[0].type.tensor_type.shape.dim[1:]))
    from spa.quality.probe import probe_data

    fed = fed_mod.FedModel.build(mg, probe_data(mg.to_onnx(), source, 8))
    assert fed is not None and fed.weights
    twin = mg.copy()
    assert fed.changed(twin) == {}
    name = next(iter(fed.weights))
    t = next(t for t in twin.graph.tensors().values() if t.name == name)
    assert isinstance(t, gs.Constant)
    t.values = np.zeros_like(t.values)
    assert list(fed.changed(twin) or {}) == [name]
    twin.graph.nodes.append(gs.Node("Identity", inputs=[twin.graph.outputs[0]], outputs=[gs.Variable("extra")]))
    assert fed.changed(twin) is None


@pytest.mark.parametrize("make", [small_cnn, two_branch], ids=["cnn", "two_branch"])
def test_weight_fed_calibration_statistics_give_the_same_prune(make, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Large models collect obs statistics weight-fed (no export, no ONNX Runtime copy of the weights): the
    same scores and compensated weights as the exported model's statistics, to float rounding."""
    from spa.calibration import runner

    model = make()
    source = data(tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]))
    kw = {"ratio": 0.5, "criterion": "obs", "calibration": source, "reconstruct": "oneshot", "realign": False}
    exported = spa.prune(model, **kw)
    fed_runs: list[int] = []
    real = runner.weight_fed

    def spy(mg):  # type: ignore[no-untyped-def]
        fed_runs.append(1)
        return real(mg)

    monkeypatch.setattr(runner, "weight_fed", spy)
    monkeypatch.setattr("spa.graph.save.LARGE_BYTES", 0)
    fed = spa.prune(model, **kw)
    assert fed_runs
    assert [gp.removed for gp in fed.plan.groups] == [gp.removed for gp in exported.plan.groups]
    a = {i.name: onnx.numpy_helper.to_array(i) for i in exported.model.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in fed.model.graph.initializer}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5)
