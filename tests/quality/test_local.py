"""Local sensitivity probes (spa/quality/local.py): the cut is the nearest common post-dominator, the
region's sub-graph reproduces the model's value there, a probe's local distortion equals the distortion
of that tensor computed through the whole model, and the local curves rank groups like whole-model ones."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

import spa
from spa.calibration.data import ArraySource
from spa.quality import local as local_mod
from spa.quality.fed import FedModel
from spa.quality.local import LocalProbes, NodeGraph
from spa.quality.probe import distortion, probe_data

ROOT = Path(__file__).resolve().parents[2]


def residual_model() -> onnx.ModelProto:
    """x → MatMul(W1) → Relu → MatMul(W2) → Add(x) → MatMul(W3) → y: a residual block and a head."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [8, 8], rng.standard_normal(64).astype(np.float32))
             for n in ("W1", "W2", "W3")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["o"], name="mm2"),
             helper.make_node("Add", ["o", "x"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "W3"], ["y"], name="head")]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def _fed(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> FedModel:
    mg = spa.load(model)
    fed = FedModel.build(mg, probe_data(mg.interface(), ArraySource(arrays, batch_size=4, name="t"), 16))
    assert fed is not None and fed.graph is not None
    return fed


def test_cut_is_the_residual_add_and_the_region_the_block() -> None:
    fed = _fed(residual_model(), {"x": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)})
    nodes = NodeGraph.build(fed.graph.graph)  # type: ignore[union-attr]
    names = [n.name for n in fed.graph.graph.nodes]  # type: ignore[union-attr]
    region = nodes.region(["W1"], fed.weights)
    assert region is not None
    assert [names[i] for i in region.nodes] == ["mm1", "relu", "mm2", "add"]
    assert region.cut == ("s",) and region.frontier == ("x",) and set(region.weights) == {"W1", "W2"}
    # the head's weight: nothing after it but the output, so the cut is the model's output
    head = nodes.region(["W3"], fed.weights)
    assert head is not None and head.cut == ("y",) and [names[i] for i in head.nodes] == ["head"]
    assert head.frontier == ("s",)
    assert nodes.region(["not-a-weight"], fed.weights) is None


def test_local_distortion_equals_the_cut_through_the_whole_model() -> None:
    """The sub-graph's value at the cut under a probe is the whole model's value of that tensor."""
    x = np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32)
    fed = _fed(residual_model(), {"x": x})
    probes = LocalProbes.build(fed)
    assert probes is not None
    region = probes.nodes.region(["W1"], fed.weights)
    assert region is not None
    probes.cache = probes.reference(region.tensors)
    w1 = fed.weights["W1"].copy()
    w1[:, :3] = 0.0  # three channels of the block removed
    got = probes.damages(region, [{"W1": w1}, None])
    sess = fed.session_with(["s"])
    ref = np.concatenate([sess.run(["s"], b | fed.weights)[0] for b in fed.batches])  # type: ignore[attr-defined]
    new = np.concatenate([sess.run(["s"], b | fed.weights | {"W1": w1})[0] for b in fed.batches])  # type: ignore[attr-defined]
    assert got[1] == 0.0
    assert got[0] == pytest.approx(distortion([ref], [new]), rel=1e-6)
    assert got[0] > 0.0
    # a probe changing a weight outside its region is not measured here (the caller probes it whole)
    assert probes.damages(region, [{"W3": fed.weights["W3"] * 0}]) == [None]
    assert probes.fallbacks == 1


def _decoder(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_llm
    finally:
        sys.path.pop(0)
    cfg = make_llm.Config(**make_llm.PRESETS["tiny"] | {"layers": 3})
    path = tmp / "decoder.onnx"
    model, _ = make_llm.build(cfg, path)
    path.write_bytes(model.SerializeToString())
    return path


def _prune(path: Path, scope: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp / scope))
    ids = np.random.default_rng(0).integers(0, 256, size=(12, 16), dtype=np.int64)
    r = spa.prune(str(path), target_macs=0.7, criterion="l2", allocate="sensitivity", realign=False,
                  calibration=ArraySource({"input_ids": ids}, batch_size=4, name="tokens"), probe_samples=12,
                  probe_scope=scope)
    alloc = r.report["allocation"]
    assert isinstance(alloc, dict)
    return alloc


def test_local_probes_on_a_decoder_rank_like_whole_model_probes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = _decoder(tmp_path)
    whole = _prune(path, "model", tmp_path, monkeypatch)
    local = _prune(path, "local", tmp_path, monkeypatch)
    assert whole["scope"] == "model" and local["scope"] == "local"
    assert local["local_groups"] == len(local["groups"]) and local["local_fallbacks"] == 0  # type: ignore[arg-type]
    a = np.array([g["sensitivity"][1] for g in whole["groups"]])  # type: ignore[union-attr,index]
    b = np.array([g["sensitivity"][1] for g in local["groups"]])  # type: ignore[union-attr,index]
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = float(np.corrcoef(rank(a), rank(b))[0, 1])
    assert spearman >= 0.8, (a, b)
    assert np.all(b > 0)


def test_chunked_reference_passes_give_the_same_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _decoder(tmp_path)
    one = _prune(path, "local", tmp_path / "one", monkeypatch)
    monkeypatch.setattr(local_mod, "CACHE_BYTES", 1)  # every region its own chunk
    many = _prune(path, "local", tmp_path / "many", monkeypatch)
    assert [g["sensitivity"] for g in one["groups"]] == [g["sensitivity"] for g in many["groups"]]  # type: ignore[union-attr]


def test_plan_distortion_equals_the_exported_pruned_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large models measure the report's distortion on the masked twin, weight-fed: the same number the
    exported pruned model gives (the mask oracle)."""
    from spa import api

    path = _decoder(tmp_path)
    exported = _prune(path, "local", tmp_path / "a", monkeypatch)
    monkeypatch.setattr("spa.graph.save.LARGE_BYTES", 0)  # every model is large
    called: list[int] = []
    real = api.plan_distortion

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        called.append(1)
        return real(*a, **k)

    monkeypatch.setattr(api, "plan_distortion", spy)
    fed = _prune(path, "local", tmp_path / "b", monkeypatch)
    assert called
    assert fed["measured_distortion"] == pytest.approx(exported["measured_distortion"], rel=1e-4, abs=1e-7)


def test_probe_scope_is_validated() -> None:
    from spa.errors import UsageError
    from spa.options import PruneOptions

    with pytest.raises(UsageError, match="probe_scope"):
        PruneOptions(probe_scope="everywhere")


def test_gs_variables_without_types_take_them_from_the_example() -> None:
    fed = _fed(residual_model(), {"x": np.zeros((16, 8), np.float32)})
    nodes = NodeGraph.build(fed.graph.graph)  # type: ignore[union-attr]
    region = nodes.region(["W1"], fed.weights)
    assert region is not None
    t = fed.graph.graph.tensors()["s"]  # type: ignore[union-attr]
    assert isinstance(t, gs.Variable)
    t.dtype, t.shape = None, None
    sub = local_mod.sub_model(fed.graph, region, {"x": np.zeros((4, 8), np.float32), "s": np.zeros((4, 8), np.float32)})  # type: ignore[arg-type]
    assert t.dtype == np.float32 and list(t.shape) == [4, 8]
    assert [o.name for o in sub.to_onnx().graph.output] == ["s"]
