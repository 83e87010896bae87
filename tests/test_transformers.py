"""Tiny transformers (models/transformers.py) from both PyTorch exporters: heads, MLPs and GQA prune exactly.

For every model and exporter: the mask oracle at 50 %, the prunable groups (attention heads — one channel
per head, or per KV head under grouped-query attention — and MLP hidden units), the shape constants
rewritten with the new head counts, and a reason on everything that stays (hidden size behind
LayerNorm/RMSNorm, rotary head_dim, the classifier output).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from onnx import numpy_helper

import spa
from models.registry import TINY_MODELS
from models.transformers import (
    HIDDEN,
    LLAMA_HEAD_DIM,
    LLAMA_HEADS,
    LLAMA_INTER,
    LLAMA_KV_HEADS,
    SEQ,
    TOKEN_MODELS,
    export_token_model,
)
from spa.analysis.groups import Analysis, Group
from spa.rules.base import Slot
from tests.oracle import assert_oracle

EXPORTERS = ["legacy", "dynamo"]
FLOAT_MODELS = ["bert", "bert_fused_qkv", "vit", "swin", "convnext"]
ALL_MODELS = FLOAT_MODELS + sorted(TOKEN_MODELS)

# prunable channel counts (sorted), heads and head_dim of the attention groups, MLP width
EXPECT: dict[str, dict[str, object]] = {
    "bert": {"groups": [4, 4, 128, 128], "heads": 4, "dh": 8, "mlp": 128},
    "bert_fused_qkv": {"groups": [4, 4, 128, 128], "heads": 4, "dh": 8, "mlp": 128},
    "vit": {"groups": [4, 4, 128, 128], "heads": 4, "dh": 8, "mlp": 128},
    "swin": {"groups": [2, 2, 128, 128], "heads": 2, "dh": 16, "mlp": 128},
    "convnext": {"groups": [128, 128], "heads": 0, "dh": 0, "mlp": 128},
    "llama": {"groups": [LLAMA_KV_HEADS] * 2 + [LLAMA_INTER] * 2, "heads": LLAMA_KV_HEADS,
              "dh": LLAMA_HEAD_DIM, "mlp": LLAMA_INTER},
    "llama_tied": {"groups": [LLAMA_KV_HEADS] * 2 + [LLAMA_INTER] * 2, "heads": LLAMA_KV_HEADS,
                   "dh": LLAMA_HEAD_DIM, "mlp": LLAMA_INTER},
}
# Reshape targets the pruned model (half the heads) must contain
TARGETS: dict[str, list[list[int]]] = {
    "bert": [[1, SEQ, 2, 8], [1, SEQ, 16]],
    "bert_fused_qkv": [[1, SEQ, 2, 8], [1, SEQ, 16]],
    "vit": [[1, 17, 3, 2, 8], [1, 17, 16]],
    "swin": [[4, 16, 3, 1, 16], [4, 16, 16]],
    "convnext": [],
    # GQA: 1 of 2 KV heads kept -> 2 query heads (n_rep 2), 1 KV head
    "llama": [[1, SEQ, 2, 8], [1, SEQ, 1, 8], [1, SEQ, 16]],
    "llama_tied": [[1, SEQ, 2, 8], [1, SEQ, 1, 8], [1, SEQ, 16]],
}


@pytest.fixture(scope="session")
def token_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``token_export(name, exporter, dynamic=False)`` → path of an exported token-id model (cached)."""
    import torch

    folder = tmp_path_factory.mktemp("tokens")
    cache: dict[tuple[str, str, bool], Path] = {}

    def get(name: str, exporter: str, dynamic: bool = False) -> Path:
        key = (name, exporter, dynamic)
        if key not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model, shape = TOKEN_MODELS[name]()
                path = folder / f"{name}_{exporter}{'_dyn' if dynamic else ''}.onnx"
                export_token_model(model, shape, path, exporter=exporter, dynamic=dynamic)  # type: ignore[arg-type]
            finally:
                torch.set_num_threads(threads)
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture
def export(zoo_export, token_export) -> Callable[[str, str], Path]:  # type: ignore[no-untyped-def]
    def get(name: str, exporter: str) -> Path:
        return token_export(name, exporter) if name in TOKEN_MODELS else zoo_export(name, exporter)

    return get


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _reshape_targets(model: onnx.ModelProto) -> list[list[int]]:
    inits = _inits(model)
    return [inits[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in inits]


def _head_groups(a: Analysis, name: str) -> list[Group]:
    h = EXPECT[name]["heads"]
    return [g for g in a.prunable if g.channels == h]


def test_registered() -> None:
    assert set(FLOAT_MODELS) <= set(TINY_MODELS)
    for name in ALL_MODELS:
        model, _shape = (TOKEN_MODELS if name in TOKEN_MODELS else TINY_MODELS)[name]()
        assert not model.training and sum(p.numel() for p in model.parameters()) < 100_000
        again, _ = (TOKEN_MODELS if name in TOKEN_MODELS else TINY_MODELS)[name]()
        for p, q in zip(model.state_dict().values(), again.state_dict().values()):
            assert np.array_equal(p.numpy(), q.numpy())  # seeded


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_transformer_prunes_exactly(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = str(export(name, exporter))
    a = spa.analyze(path)
    assert sorted(g.channels for g in a.prunable) == EXPECT[name]["groups"]
    for g in a.groups:
        assert g.prunable or g.reasons, f"group {g.label} blocked without a reason"
    r = assert_oracle(path, 0.5)
    assert r.report["macs_after"] < r.report["macs_before"]  # type: ignore[operator]
    for target in TARGETS[name]:
        assert target in _reshape_targets(r.model), (target, _reshape_targets(r.model))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_mlp_groups(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """MLP hidden units (4·D, or SwiGLU's gate/up intermediate size) are groups: producers and consumer."""
    path = str(export(name, exporter))
    a = spa.analyze(path)
    width = EXPECT[name]["mlp"]
    groups = [g for g in a.prunable if g.channels == width]
    assert len(groups) == 2
    for g in groups:
        assert g.kind == "channel"
        roles = [r for m in g.members if m.kind == "weight" for r in m.roles]
        producers = [r for r in roles if r.endswith(":producer")]
        assert len(producers) == (2 if name.startswith("llama") else 1)  # gate + up, or fc1
        assert sum(r.endswith(":consumer") for r in roles) == 1
    r = spa.prune(path, ratio=0.5, round_to=1)  # exact counts (the default moves them by latency)
    shapes = [v.shape for v in _inits(r.model).values()]
    assert shapes.count((HIDDEN, width // 2)) == (4 if name.startswith("llama") else 2)
    assert shapes.count((width // 2, HIDDEN)) == 2


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["bert", "bert_fused_qkv", "vit", "swin"])
def test_attention_head_groups(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """One channel per head: Dh rows of every Q/K/V projection and Dh columns of the output projection."""
    path = str(export(name, exporter))
    a = spa.analyze(path)
    h, dh = EXPECT[name]["heads"], EXPECT[name]["dh"]
    groups = _head_groups(a, name)
    assert len(groups) == 2
    for g in groups:
        assert g.kind == "head"  # tagged by the MatMul rule (Q·Kᵀ and P·V)
        weights = [m for m in g.members if m.kind == "weight" and m.size is not None and m.size > h]
        producers = [m for m in weights if any(r.endswith(":producer") for r in m.roles)]
        consumers = [m for m in weights if any(r.endswith(":consumer") for r in m.roles)]
        fused = name != "bert"
        assert sorted(m.size for m in producers) == ([3 * h * dh] if fused else [h * dh] * 3)  # type: ignore[operator]
        assert [m.size for m in consumers] == [h * dh]  # type: ignore[operator]
    r = assert_oracle(path, 0.5)
    shapes = [v.shape for v in _inits(r.model).values()]
    kept = h // 2  # type: ignore[operator]
    assert shapes.count((HIDDEN, (3 if name != "bert" else 1) * kept * dh)) == (2 if name != "bert" else 6)  # type: ignore[operator]
    assert shapes.count((kept * dh, HIDDEN)) == 2  # type: ignore[operator]
    if name == "bert_fused_qkv":  # chunk (layer 0) and split (layer 1): Split sizes rewritten
        inits = _inits(r.model)
        splits = [n for n in r.model.graph.node if n.op_type == "Split"]
        assert splits
        for n in splits:
            sizes = inits[n.input[1]].tolist() if len(n.input) > 1 and n.input[1] in inits else \
                next(list(at.ints) for at in n.attribute if at.name == "split")
            assert sizes == [kept * dh] * 3  # type: ignore[operator]
    if name == "swin":  # the per-head relative-position bias [.., H, N, N] is sliced with the heads
        before = {n: v.shape for n, v in _inits(onnx.load(path)).items()}
        sliced = [n for n, v in _inits(r.model).items() if n in before and v.ndim == 4 and v.shape[1:] == (1, 16, 16)]
        assert sliced and all(before[n][1:] == (2, 16, 16) for n in sliced)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
def test_gqa_kv_heads_take_their_query_heads(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """A KV head is removed only together with the n_rep query heads that read it."""
    path = str(export(name, exporter))
    a = spa.analyze(path)
    n_rep, dh = LLAMA_HEADS // LLAMA_KV_HEADS, LLAMA_HEAD_DIM
    groups = _head_groups(a, name)
    assert len(groups) == 2
    for g in groups:
        assert g.channels == LLAMA_KV_HEADS and g.kind == "head"
        producers = sorted(m.size for m in g.members if m.kind == "weight"  # type: ignore[misc]
                           and any(r.endswith(":producer") for r in m.roles))
        assert producers == [LLAMA_KV_HEADS * dh] * 2 + [LLAMA_HEADS * dh]  # Wk, Wv, Wq
    r = assert_oracle(path, 0.5)
    before, after = _inits(onnx.load(path)), _inits(r.model)
    kept = LLAMA_KV_HEADS // 2
    for g in groups:
        wq = next(m.tensor for m in g.members if m.size == LLAMA_HEADS * dh and m.kind == "weight"
                  and any(x.endswith(":producer") for x in m.roles))
        wk = next(m.tensor for m in g.members if m.size == LLAMA_KV_HEADS * dh and m.kind == "weight"
                  and any(x.endswith(":producer") for x in m.roles))
        assert after[wq].shape == (HIDDEN, kept * n_rep * dh)  # kept_kv × n_rep × Dh
        assert after[wk].shape == (HIDDEN, kept * dh)
        kv_kept = [j for j in range(LLAMA_KV_HEADS)
                   if any(np.array_equal(before[wk][:, j * dh:(j + 1) * dh], after[wk][:, c * dh:(c + 1) * dh])
                          for c in range(kept))]
        q_blocks = [before[wq][:, (j * n_rep + i) * dh:(j * n_rep + i + 1) * dh] for j in kv_kept for i in range(n_rep)]
        np.testing.assert_array_equal(after[wq], np.concatenate(q_blocks, axis=1))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
def test_llama_blocked_axes_have_reasons(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """RMSNorm blocks the hidden size (with the embedding table in it); RoPE's head_dim never prunes."""
    path = str(export(name, exporter))
    a = spa.analyze(path)
    table = next(n.inputs[0].name for n in a.model.graph.nodes if n.op == "Gather" and hasattr(n.inputs[0], "values"))
    hidden = [g for g in a.groups if any(m.tensor == table and m.axis == 1 for m in g.members)]
    assert len(hidden) == 1 and hidden[0].channels == HIDDEN and not hidden[0].prunable
    assert any("ReduceMean" in reason for reason in hidden[0].reasons), hidden[0].reasons
    cg = a.channel_graph
    assert cg is not None
    rope_tables = {t.name for n in a.model.graph.nodes if n.op == "Mul" for t in n.inputs
                   if hasattr(t, "values") and tuple(t.shape) == (SEQ, LLAMA_HEAD_DIM)}
    assert len(rope_tables) >= 2  # cos and sin
    prunable_slots = {Slot(m.tensor, m.axis) for g in a.prunable for m in g.members}
    for t in rope_tables:
        comp = nx.node_connected_component(cg.nx_graph, Slot(t, 1))
        assert not comp & prunable_slots
        assert any(cg.slots[s].reasons for s in comp)  # blocked, with a reason
    r = assert_oracle(path, 0.5)
    after = _inits(r.model)
    assert all(after[t].shape == (SEQ, LLAMA_HEAD_DIM) for t in rope_tables if t in after)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", FLOAT_MODELS)
def test_hidden_size_is_blocked_by_layernorm(zoo_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    a = spa.analyze(str(zoo_export(name, exporter)))
    hidden = [g for g in a.groups if g.channels == HIDDEN]
    assert hidden and not any(g.prunable for g in hidden)
    assert all(any("LayerNormalization" in r or "ReduceMean" in r or "graph input" in r for r in g.reasons)
               for g in hidden)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
def test_llama_dynamic_batch_and_sequence(token_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """Symbolic batch and sequence: shared computed Reshape targets / Expand shapes, heads still prune.

    The legacy exporter writes ``repeat_kv`` as ``Expand(x, Where(Equal(s, -1), 1, s))`` with ``s`` built
    from ``Shape`` and slices the RoPE tables as ``cos[:seq]`` with a computed end; ONNX inference loses
    the shapes at both, :func:`spa.graph.shapes.complete_shapes` recovers them. The mask oracle holds at
    two sequence lengths (and batch sizes), with random token ids.
    """
    path = str(token_export(name, exporter, dynamic=True))
    a = spa.analyze(path)
    assert sorted(g.channels for g in a.prunable) == EXPECT[name]["groups"]
    r = assert_oracle(path, 0.5, round_to=1)  # exact counts: the shapes below are counted
    inits = _inits(r.model)
    kept, dh = LLAMA_KV_HEADS // 2, LLAMA_HEAD_DIM
    shapes = [v.shape for v in inits.values()]
    assert shapes.count((HIDDEN, kept * (LLAMA_HEADS // LLAMA_KV_HEADS) * dh)) == 2  # Wq of both layers
    assert shapes.count((HIDDEN, kept * dh)) == 4  # Wk, Wv of both layers
    rng = np.random.default_rng(0)
    import onnxruntime as ort

    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 3), (3, SEQ), (2, 5)):
        (logits,) = sess.run(None, {"input": rng.integers(0, 64, shape, dtype=np.int64)})
        assert logits.shape[:2] == shape
    for shape in ((1, 3), (2, 5)):  # the oracle (pruned == masked twin) at other sequence lengths
        res = spa.verify(r.model, r.masked, shapes={"input": shape})  # type: ignore[arg-type]
        assert res.ok, res.to_json()


def test_deep_legacy_llama_dynamic_sequence_prunes_every_layer(tmp_path: Path) -> None:
    """Eight layers from the legacy exporter with dynamic batch and sequence: each layer's shapes are
    recovered from the layer before, so shape completion must carry them down the whole graph (one
    round of whole-graph inference per layer would run out long before the last layer)."""
    import torch

    from models.transformers import LlamaDecoder

    layers = 8
    torch.manual_seed(5)
    model = LlamaDecoder(layers=layers, seq=32).eval()
    path = str(export_token_model(model, (1, 16), tmp_path / "deep.onnx", exporter="legacy", dynamic=True))
    a = spa.analyze(path)
    assert sorted(g.channels for g in a.prunable) == [LLAMA_KV_HEADS] * layers + [LLAMA_INTER] * layers
    r = assert_oracle(path, 0.5)
    for shape in ((1, 3), (2, 20)):
        res = spa.verify(r.model, r.masked, shapes={"input": shape})  # type: ignore[arg-type]
        assert res.ok, res.to_json()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bert_dynamic_batch(exporter: str, tmp_path: Path) -> None:
    from models.export import export_onnx

    model, shape = TINY_MODELS["bert"]()
    path = export_onnx(model, shape, tmp_path / "bert.onnx", exporter=exporter, dynamic_batch=True)  # type: ignore[arg-type]
    a = spa.analyze(str(path))
    assert sorted(g.channels for g in a.prunable) == EXPECT["bert"]["groups"]
    assert_oracle(str(path), 0.5)
