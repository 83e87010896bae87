"""Head-dim pruning on the V/O side (``--prune-head-dim``, issue #3).

With the flag, every attention block whose V ``head_dim`` can carry channels offers one group of kind
``head_dim`` instead of its heads: ``Dh`` channels, channel ``d`` being the ``d``-th dim of *every* head
(V's columns and bias, the output projection's rows), so every head keeps the same ``Dh'`` and the
``[B, S, H, Dh]`` Reshapes stay rectangular. Q and K stay whole (``Q·Kᵀ`` contracts their ``Dh``, RoPE
rotates it); the block's head group is then blocked, with a reason naming the flag. Blocks where V's
``head_dim`` is tied to Q/K's — a fused QKV projection (one weight axis for Q, K and V) or timm's
``reshape(B, N, 3, H, Dh)`` (one ``Dh`` axis for all three) — keep their heads, and the analysis says why
(``Analysis.notes``). Without the flag nothing changes. Every test ends in the mask oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import spa
from spa.analysis.groups import Analysis, Group
from spa.cli import main
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.test_attention_patterns import DH, D, S, _attend, _heads, _i64, _repeat_kv, _rope

EXPORTERS = ["legacy", "dynamo"]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _reshape_targets(model: onnx.ModelProto) -> list[list[int]]:
    inits = _inits(model)
    return [inits[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in inits]


def _group_of(a: Analysis, tensor: str, axis: int) -> Group:
    groups = [g for g in a.groups if any(m.tensor == tensor and m.axis == axis for m in g.members)]
    assert len(groups) == 1, f"{tensor}[{axis}] in {len(groups)} groups"
    return groups[0]


def _same_dims_in_every_head(before: np.ndarray, after: np.ndarray, axis: int, heads: int, dh: int) -> list[int]:
    """``after`` is ``before`` with the same dims kept in each of ``heads`` blocks of ``dh`` along ``axis``;
    returns the kept dims."""
    b = np.moveaxis(before, axis, 0)
    a = np.moveaxis(after, axis, 0)
    kept_dh = a.shape[0] // heads
    kept = [next(d for d in range(dh) if np.array_equal(b[d], a[i])) for i in range(kept_dh)]
    expected = [h * dh + d for h in range(heads) for d in kept]
    np.testing.assert_array_equal(a, b[expected])
    return kept


# -- synthetic attention blocks --------------------------------------------------------------------------

def _block(opset: int, heads: int = 4, kv: int = 4, *, bias: bool = True, rope: bool = False, how: str = "expand",
           fused: bool = False, v_output: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """x → Q/K/V projections (separate, or one fused MatMul + Split) → heads (GQA ``repeat_kv`` when
    ``kv < heads``, RoPE on Q/K) → attention → output projection → residual Add."""
    b = GraphBuilder(opset=opset, seed=opset + heads + kv)
    x = b.input("x", [1, S, D])

    def proj(n: int) -> tuple[str, str]:
        w = b.weight(D, n)
        y = b.op("MatMul", [x, w])
        if bias:
            y = b.op("Add", [y, b.const(b.rng.standard_normal(n).astype(np.float32), "bias")])  # type: ignore[list-item]
        return y, w  # type: ignore[return-value]

    w: dict[str, str] = {}
    sizes = [heads * DH, kv * DH, kv * DH]
    if fused:
        qkv, w["qkv"] = proj(sum(sizes))
        if opset >= 13:
            q, k, v = b.op("Split", [qkv, _i64(b, sizes, "split")], n_out=3, axis=-1)
        else:
            q, k, v = b.op("Split", [qkv], n_out=3, axis=-1, split=sizes)
    else:
        (q, w["q"]), (k, w["k"]), (v, w["v"]) = proj(sizes[0]), proj(sizes[1]), proj(sizes[2])
    q, k, v = _heads(b, q, heads), _heads(b, k, kv), _heads(b, v, kv)
    if rope:
        q, k = _rope(b, q), _rope(b, k)
    if v_output:  # V's heads and head_dim reach a graph output (a value cache): both must stay
        b.output(v)
    if heads > kv:
        k, v = _repeat_kv(b, k, kv, heads // kv, how), _repeat_kv(b, v, kv, heads // kv, how)
    w["o"] = b.weight(heads * DH, D)
    b.output(b.op("Add", [x, b.op("MatMul", [_attend(b, q, k, v, heads), w["o"]])]))  # type: ignore[arg-type,list-item]
    return b.build(), w


OPSETS = [11, 13, 17]
CASES = [(4, 4, True, False, "expand"), (4, 4, False, True, "expand"), (4, 2, False, True, "expand"),
         (8, 2, True, True, "tile"), (6, 3, True, False, "expand-ones")]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("heads", "kv", "bias", "rope", "how"), CASES)
def test_synthetic_head_dim_prunes_v_and_output_projection(opset: int, heads: int, kv: int, bias: bool, rope: bool,
                                                           how: str) -> None:
    model, w = _block(opset, heads, kv, bias=bias, rope=rope, how=how)
    default = spa.analyze(model)
    assert _group_of(default, w["v"], 1).kind == "head" and not any(g.kind == "head_dim" for g in default.groups)
    a = spa.analyze(model, prune_head_dim=True)
    assert a.notes == []
    g = _group_of(a, w["v"], 1)
    assert g.kind == "head_dim" and g.prunable and g.channels == DH, (g.kind, g.channels, g.reasons)
    assert _group_of(a, w["o"], 0).id == g.id
    heads_group = _group_of(a, w["q"], 1)  # Q and K keep their head coupling, now blocked with the flag named
    assert heads_group.kind == "head" and not heads_group.prunable
    assert any("--prune-head-dim" in r for r in heads_group.reasons), heads_group.reasons
    assert _group_of(a, w["k"], 1).id == heads_group.id
    r = assert_oracle(model, 0.5, prune_head_dim=True)
    before, after = _inits(model), _inits(r.model)
    half = DH // 2
    assert after[w["v"]].shape == (D, kv * half) and after[w["o"]].shape == (heads * half, D)
    assert after[w["q"]].shape == before[w["q"]].shape and after[w["k"]].shape == before[w["k"]].shape
    kept = _same_dims_in_every_head(before[w["v"]], after[w["v"]], 1, kv, DH)
    assert _same_dims_in_every_head(before[w["o"]], after[w["o"]], 0, heads, DH) == kept
    targets = _reshape_targets(r.model)
    assert [1, S, kv, half] in targets and [1, S, heads * half] in targets and [1, S, heads, DH] in targets
    if heads > kv and how == "expand":
        assert [1, heads, S, half] in targets
        expands = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Expand"]
        assert sorted(expands) == [[1, kv, heads // kv, S, half], [1, kv, heads // kv, S, DH]]  # V's, K's


@pytest.mark.parametrize("opset", [13, 17])
def test_synthetic_fused_qkv_keeps_its_heads_with_a_note(opset: int) -> None:
    """One weight axis carries Q, K and V: V's head_dim cannot leave Q/K's (contracted) behind."""
    model, w = _block(opset, 4, 2, fused=True)
    default = spa.analyze(model)
    a = spa.analyze(model, prune_head_dim=True)
    assert ([(g.kind, g.channels, g.prunable) for g in a.groups]
            == [(g.kind, g.channels, g.prunable) for g in default.groups])
    g = _group_of(a, w["qkv"], 1)
    assert g.kind == "head" and g.prunable and g.channels == 2
    assert len(a.notes) == 1 and "heads stay prunable" in a.notes[0] and "contracts two activations" in a.notes[0]
    assert a.to_json()["notes"] == a.notes and "notes" not in default.to_json()
    r = assert_oracle(model, 0.5, prune_head_dim=True)
    assert r.report["analysis_notes"] == a.notes and r.report["prune_head_dim"] is True
    assert _inits(r.model)[w["qkv"]].shape == (D, (2 + 1 + 1) * DH)  # half the KV heads, their query heads


@pytest.mark.parametrize("opset", [13, 17])
def test_synthetic_v_reaching_a_graph_output_stays(opset: int) -> None:
    """V's head_dim is a graph output: head_dim mode cannot switch the block; nothing in it prunes."""
    model, w = _block(opset, 4, 4, v_output=True)
    a = spa.analyze(model, prune_head_dim=True)
    assert not any(g.kind == "head_dim" for g in a.groups)
    assert len(a.notes) == 1 and "graph output" in a.notes[0], a.notes
    g = _group_of(a, w["v"], 1)
    assert g.kind == "head" and not g.prunable and "graph output" in " ".join(g.reasons)
    assert_oracle(model, 0.5, prune_head_dim=True, expect_pruned=False)


# -- the tiny transformers from both exporters ------------------------------------------------------------

torch = pytest.importorskip("torch")

from models.transformers import (  # noqa: E402
    HIDDEN,
    LLAMA_HEAD_DIM,
    LLAMA_HEADS,
    LLAMA_KV_HEADS,
    SEQ,
)

# heads, KV heads, head_dim; the Reshape targets (besides Q's) the pruned model must contain
SEPARATE: dict[str, tuple[int, int, int]] = {
    "bert": (4, 4, 8),
    "llama": (LLAMA_HEADS, LLAMA_KV_HEADS, LLAMA_HEAD_DIM),
    "llama_tied": (LLAMA_HEADS, LLAMA_KV_HEADS, LLAMA_HEAD_DIM),
}
FUSED = ["bert_fused_qkv", "vit", "swin"]


@pytest.fixture
def export(model_export):  # type: ignore[no-untyped-def]
    return model_export


def _producer(g: Group, size: int) -> str:
    return next(m.tensor for m in g.members if m.kind == "weight" and m.size == size
                and any(r.endswith(":producer") for r in m.roles))


def _consumer(g: Group, size: int) -> str:
    return next(m.tensor for m in g.members if m.kind == "weight" and m.size == size
                and any(r.endswith(":consumer") for r in m.roles))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(SEPARATE))
def test_transformer_head_dim_prunes_exactly(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = str(export(name, exporter))
    heads, kv, dh = SEPARATE[name]
    default = spa.analyze(path)
    a = spa.analyze(path, prune_head_dim=True)
    assert a.notes == []
    hd = [g for g in a.groups if g.kind == "head_dim"]
    assert len(hd) == 2 and all(g.prunable and g.channels == dh for g in hd), [(g.channels, g.reasons) for g in hd]
    # the head groups of these blocks are still reported, blocked, with the flag named
    head_groups = [g for g in a.groups if g.kind == "head"]
    assert len(head_groups) == 2 and not any(g.prunable for g in head_groups)
    assert all(any("--prune-head-dim" in r for r in g.reasons) for g in head_groups)
    # everything else is as without the flag (MLPs)
    others = sorted(g.channels for g in a.prunable if g.kind != "head_dim")
    assert others == sorted(g.channels for g in default.prunable if g.kind != "head")
    r = assert_oracle(path, 0.5, prune_head_dim=True)
    assert r.report["macs_after"] < r.report["macs_before"]  # type: ignore[operator]
    before, after = _inits(onnx.load(path)), _inits(r.model)
    half = dh // 2
    for g in hd:
        wv, wo = _producer(g, kv * dh), _consumer(g, heads * dh)
        assert after[wv].shape == (HIDDEN, kv * half)  # Dh/2 · H_kv columns of V gone
        assert after[wo].shape == (heads * half, HIDDEN)  # the same rows of the output projection
        kept = _same_dims_in_every_head(before[wv], after[wv], 1, kv, dh)
        assert _same_dims_in_every_head(before[wo], after[wo], 0, heads, dh) == kept
    for hg in head_groups:  # Q and K whole
        for m in hg.members:
            if m.kind == "weight" and m.tensor in before:
                assert after[m.tensor].shape == before[m.tensor].shape
    targets = _reshape_targets(r.model)
    assert [1, SEQ, kv, half] in targets and [1, SEQ, heads * half] in targets, targets
    assert [1, SEQ, heads, dh] in targets  # Q's split unchanged
    if kv < heads:  # repeat_kv's Reshape: [1, H, S, Dh/2] (expand) or [1, -1, S, Dh/2] (repeat_interleave)
        assert [1, heads, SEQ, half] in targets or [1, -1, SEQ, half] in targets, targets


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", FUSED)
def test_fused_qkv_transformers_keep_their_heads(export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """BERT with one fused QKV Linear, timm's ViT/Swin ``reshape(B, N, 3, H, Dh)``: V's head_dim is tied
    to Q/K's, so head-dim mode leaves these blocks to head pruning and says so, once per block."""
    path = str(export(name, exporter))
    default = spa.analyze(path)
    a = spa.analyze(path, prune_head_dim=True)
    assert ([(g.kind, g.channels, g.prunable) for g in a.groups]
            == [(g.kind, g.channels, g.prunable) for g in default.groups])
    assert len(a.notes) == 2 and all("head_dim" in n and "heads stay prunable" in n for n in a.notes), a.notes
    r = assert_oracle(path, 0.5, prune_head_dim=True)
    assert {r.analysis.groups[gp.group].kind for gp in r.plan.groups} == {"head", "channel"}


def test_head_dim_with_hidden_size(export) -> None:  # type: ignore[no-untyped-def]
    """Both opt-ins at once: head_dim, hidden and MLP groups prune together, exactly."""
    path = str(export("llama", "dynamo"))
    r = assert_oracle(path, 0.5, prune_head_dim=True, prune_hidden=True)
    kinds = sorted(r.analysis.groups[gp.group].kind for gp in r.plan.groups)
    assert kinds == ["channel", "channel", "head_dim", "head_dim", "hidden"]


# -- the command line --------------------------------------------------------------------------------------

def test_cli_prune_head_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = _block(17, 4, 2, rope=True)
    src = tmp_path / "attn.onnx"
    onnx.save(model, str(src))
    assert main(["analyze", str(src), "--json", "-"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [g["kind"] for g in plain["groups"] if g["prunable"]] == ["head"] and "notes" not in plain
    assert main(["analyze", str(src), "--prune-head-dim", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(g["kind"], g["channels"]) for g in data["groups"] if g["prunable"]] == [("head_dim", DH)]
    out, masked, rep = tmp_path / "p.onnx", tmp_path / "m.onnx", tmp_path / "r.json"
    assert main(["prune", str(src), "--ratio", "0.5", "--prune-head-dim", "-o", str(out), "--emit-masked",
                 str(masked), "--report", str(rep)]) == 0
    assert main(["verify", str(out), str(masked)]) == 0
    report = json.loads(rep.read_text())
    assert report["prune_head_dim"] is True and report["analysis_notes"] == []
    rows = [g for g in report["groups"] if g["kind"] == "head_dim"]
    assert len(rows) == 1 and rows[0]["channels_after"] == DH // 2
    capsys.readouterr()
    assert main(["prune", str(src), "--prune-head-dim", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prune_head_dim"] is True


# -- rotary embeddings: the reason names the rotate-half node ----------------------------------------------

@pytest.mark.parametrize("case", ["phi3_optimum", "gpt_neox_optimum"])
def test_fused_qkv_with_rotary_says_rotary_pairs_block_head_dim(case: str) -> None:
    """A fused QKV projection ties V's head_dim to Q/K's, which RoPE rotates: each block's note names
    its own layer's rotate-half Concat and what would make head_dim prunable; the heads stay prunable."""
    path = Path(__file__).parent / "fixtures" / "hf" / f"{case}.onnx"
    plain = spa.analyze(str(path))
    a = spa.analyze(str(path), prune_head_dim=True)
    assert len(a.notes) == 2 and not any(g.kind == "head_dim" for g in a.groups)
    assert [g.prunable for g in a.groups] == [g.prunable for g in plain.groups]  # the reason changes nothing else
    for layer, note in enumerate(a.notes):
        assert f"layers.{layer}/" in note.split("cannot be pruned")[1].split("rotates half")[0]  # its own Concat
        assert "rotary embeddings" in note and "whole pairs, from Q, K and the cos/sin table" in note
