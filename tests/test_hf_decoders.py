"""Hugging Face decoders as optimum and torch's dynamo exporter write them: every family prunes its heads.

The fixtures (``tests/fixtures/hf``, built by ``tools/make_hf_fixtures.py`` from the real libraries with
random weights; no extra needed here): LLaMA, Mistral, Qwen2, Phi-3 and Gemma (grouped-query attention,
4 query heads over 2 KV heads, rotary embeddings), GPT-2 (fused ``c_attn`` + Split, ``Conv1D``) and
GPT-NeoX (fused ``query_key_value`` viewed as ``(B, S, H, 3·Dh)``, partial rotary), two layers each.

For every file: the analysis shows one head group per layer (a KV head with its query heads under GQA),
whose producers are Q, K and V's head columns and whose consumer is the output projection's rows;
``spa.prune(ratio=0.5)`` halves the heads, lowers the MACs, and the pruned model equals its masked twin
(the mask oracle) on token ids at several batch and sequence sizes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import onnx
import pytest

import spa
from spa.analysis.groups import Group

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
HEADS, KV_HEADS, DH, LAYERS = 4, 2, 8, 2
GQA = ("llama", "mistral", "qwen2", "phi3", "gemma")
MHA = ("gpt2", "gpt_neox")
EXPORTERS = ("optimum", "dynamo")
CASES = [f"{f}_{e}" for f in GQA + MHA for e in EXPORTERS]


def _path(case: str) -> str:
    return str(FIXTURES / f"{case}.onnx")


@cache
def _pruned(case: str) -> spa.PruneResult:
    return spa.prune(_path(case), ratio=0.5, emit_masked=True)


def _heads(a: spa.Analysis) -> list[Group]:
    return [g for g in a.prunable if g.kind == "head"]


def _kv(case: str) -> int:
    return KV_HEADS if case.split("_")[0] in GQA else HEADS


def test_every_fixture_is_there_with_its_provenance() -> None:
    for case in CASES + ["llama_optimum-past", "gpt2_optimum-past"]:
        path = FIXTURES / f"{case}.onnx"
        assert path.stat().st_size < 1_000_000, case
        m = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in m.metadata_props}
        family, exporter = case.rsplit("_", 1)
        assert meta["family"] == family and meta["exporter"] == exporter, case
        assert meta["transformers"] and meta["torch"] and meta["optimum-onnx"], case
        assert m.graph.input[0].name == "input_ids"


@pytest.mark.parametrize("case", CASES)
def test_heads_are_prunable_groups(case: str) -> None:
    """One head group per layer: a KV head with its query heads (GQA) or one head (MHA)."""
    a = spa.analyze(_path(case))
    heads = _heads(a)
    assert len(heads) == LAYERS, [(g.label, g.channels, g.reasons[:2]) for g in a.groups if g.kind == "head"]
    for g in heads:
        assert g.channels == _kv(case)
        weights = [m for m in g.members if m.kind == "weight"]
        producers = [m.size for m in weights if any(r.endswith(":producer") for r in m.roles)]
        consumers = [m.size for m in weights if any(r.endswith(":consumer") for r in m.roles)]
        assert sum(producers) == (HEADS + 2 * _kv(case)) * DH  # type: ignore[arg-type]  # Q, K, V head columns
        assert consumers == [HEADS * DH]  # the output projection's rows


@pytest.mark.parametrize("case", CASES)
def test_prune_halves_the_heads_exactly(case: str) -> None:
    r = _pruned(case)
    assert r.masked is not None
    heads = [g for g in r.report["groups"] if g["kind"] == "head"]  # type: ignore[union-attr,index]
    assert len(heads) == LAYERS
    assert all(g["channels_after"] == _kv(case) // 2 for g in heads)  # type: ignore[index]
    assert r.report["macs_after"] < r.report["macs_before"]  # type: ignore[operator]
    onnx.checker.check_model(r.model, full_check=True)
    res = spa.verify(r.model, r.masked)
    assert res.ok, res.to_json()


@pytest.mark.parametrize("shape", [(1, 5), (3, 11)])
@pytest.mark.parametrize("case", CASES)
def test_oracle_at_other_batch_and_sequence_sizes(case: str, shape: tuple[int, int]) -> None:
    """The pruned model keeps its dynamic batch and sequence: the oracle holds at other sizes too
    (every input — ids, attention mask, position ids — is ``[batch, sequence]``)."""
    r = _pruned(case)
    shapes = {i.name: shape for i in r.model.graph.input}
    res = spa.verify(r.model, r.masked, shapes=shapes)  # type: ignore[arg-type]
    assert res.ok, res.to_json()


# -- with a KV cache (optimum's text-generation-with-past) ---------------------------------------------------
def _cache_shapes(model: onnx.ModelProto, batch: int, new: int, past: int) -> dict[str, tuple[int, ...]]:
    """Consistent feeds: ids and positions ``[B, new]``, the mask over ``past + new``, caches ``[B, kv, past, Dh]``."""
    from spa.runtime.feeds import input_specs

    shapes: dict[str, tuple[int, ...]] = {}
    for s in input_specs(model):
        if s.name == "attention_mask":
            shapes[s.name] = (batch, past + new)
        elif s.name.startswith("past_key_values"):
            shapes[s.name] = (batch,) + tuple(d if isinstance(d, int) else past for d in s.shape[1:])
        else:
            shapes[s.name] = (batch, new)
    return shapes


def test_gqa_with_a_kv_cache_prunes_query_heads_within_their_groups() -> None:
    """The KV heads are in the cache (graph inputs and outputs: the model's interface), so they stay,
    named by the cache input; the query heads sharing a KV head prune (one of the two per KV head), and
    the pruned model equals its masked twin with caches of several lengths (empty included)."""
    path = _path("llama_optimum-past")
    a = spa.analyze(path)
    heads = _heads(a)
    assert len(heads) == LAYERS and all(g.channels == HEADS // KV_HEADS for g in heads)
    for g in heads:  # Wq's columns and Wo's rows only: K and V are fixed by the cache
        sizes = sorted(m.size for m in g.members if m.kind == "weight")  # type: ignore[type-var]
        assert sizes == [HEADS * DH, HEADS * DH]
    blocked = [r for g in a.groups if not g.prunable for r in g.reasons]
    assert any(r.startswith("graph input 'past_key_values.") for r in blocked)
    r = spa.prune(path, ratio=0.5, emit_masked=True)
    assert r.masked is not None
    assert r.report["macs_after"] < r.report["macs_before"]  # type: ignore[operator]
    for batch, new, past in ((2, 3, 5), (1, 4, 0), (3, 1, 7)):
        res = spa.verify(r.model, r.masked, shapes=_cache_shapes(r.model, batch, new, past))
        assert res.ok, res.to_json()


def test_mha_with_a_kv_cache_keeps_its_heads_and_says_why() -> None:
    """GPT-2 with a cache: every head is a KV head, so the heads stay, and the reason names the cache
    tensors (export with task ``text-generation``, without past key values, to prune them); the MLPs
    prune exactly."""
    path = _path("gpt2_optimum-past")
    a = spa.analyze(path)
    assert not _heads(a)
    c_attn = [g for g in a.groups if any(m.tensor.endswith("attn.c_attn.weight") and m.axis == 1 for m in g.members)]
    assert len(c_attn) == LAYERS
    for g in c_attn:
        assert not g.prunable
        assert any(r.startswith(("graph input 'past_key_values.", "graph output 'present.")) for r in g.reasons)
    r = spa.prune(path, ratio=0.5, emit_masked=True)
    assert r.masked is not None
    for batch, new, past in ((2, 3, 5), (1, 4, 0)):
        res = spa.verify(r.model, r.masked, shapes=_cache_shapes(r.model, batch, new, past))
        assert res.ok, res.to_json()
