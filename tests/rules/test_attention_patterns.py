"""Transformer idioms on tiny inline graphs: attention heads, GQA ``repeat_kv``, RoPE, embeddings, masks.

Each test builds the pattern the way the PyTorch exporters write it and goes through the mask oracle.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import spa
from spa.graph.normalize import normalize
from spa.rules.base import NodeContext, Slot, Tag
from spa.rules.gemm_matmul import MatMulRule
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _group, _i64, _unsqueeze

OPSETS = [13, 17]
D, S, DH = 16, 6, 4  # hidden, sequence, head_dim


def _row(result, weight: str, axis: int) -> dict:  # type: ignore[no-untyped-def]
    rows = [r for r in result.report["groups"] if f"{weight}[{axis}]" in r["weights"]]
    assert len(rows) == 1, f"{weight}[{axis}] in {len(rows)} groups"
    return rows[0]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _slice(b: GraphBuilder, x: str, start: int, end: int, axis: int) -> str:
    return b.op("Slice", [x, _i64(b, [start], "starts"), _i64(b, [end], "ends"),  # type: ignore[return-value]
                          _i64(b, [axis], "axes")])


def _heads(b: GraphBuilder, t: str, h: int) -> str:
    """[1, S, h*DH] -> view(1, S, h, DH) -> transpose(1, 2) -> [1, h, S, DH]."""
    r = b.op("Reshape", [t, _i64(b, [1, S, h, DH])])
    return b.op("Transpose", [r], perm=[0, 2, 1, 3])  # type: ignore[return-value]


def _rope(b: GraphBuilder, t: str) -> str:
    """t * cos + rotate_half(t) * sin on the head_dim axis (Slice / Neg / Concat)."""
    x1, x2 = _slice(b, t, 0, DH // 2, 3), _slice(b, t, DH // 2, DH, 3)
    rot = b.op("Concat", [b.op("Neg", [x2]), x1], axis=3)  # type: ignore[list-item]
    ang = np.outer(np.arange(S), 1.0 / 10000 ** (np.arange(0, DH, 2) / DH))
    ang = np.concatenate([ang, ang], axis=-1)
    cos, sin = b.const(np.cos(ang).astype(np.float32), "cos"), b.const(np.sin(ang).astype(np.float32), "sin")
    return b.op("Add", [b.op("Mul", [t, cos]), b.op("Mul", [rot, sin])])  # type: ignore[list-item,return-value]


def _repeat_kv(b: GraphBuilder, t: str, kv: int, n_rep: int, how: str) -> str:
    """[1, kv, S, DH] -> [1, kv*n_rep, S, DH]: KV head j serves query heads j*n_rep .. j*n_rep+n_rep-1."""
    u = _unsqueeze(b, t, [2])  # [1, kv, 1, S, DH]
    if how == "expand":  # HF repeat_kv, legacy export
        e = b.op("Expand", [u, _i64(b, [1, kv, n_rep, S, DH])])
        return b.op("Reshape", [e, _i64(b, [1, kv * n_rep, S, DH])])  # type: ignore[return-value]
    if how == "expand-ones":  # dynamo's repeat_interleave: broadcast shape with ones, -1 for the heads
        e = b.op("Expand", [u, _i64(b, [1, 1, n_rep, 1, 1])])
        return b.op("Reshape", [e, _i64(b, [1, -1, S, DH])])  # type: ignore[return-value]
    e = b.op("Tile", [u, _i64(b, [1, 1, n_rep, 1, 1], "reps")])  # legacy repeat_interleave
    return b.op("Reshape", [e, _i64(b, [1, -1, S, DH])])  # type: ignore[return-value]


def _attend(b: GraphBuilder, q: str, k: str, v: str, h: int, mask: str | None = None) -> str:
    """softmax(q kᵀ / sqrt(DH) [+ mask]) v, transpose(1, 2), reshape to [1, S, h*DH]."""
    s = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])  # type: ignore[list-item]
    s = b.op("Mul", [s, b.const(np.array(DH ** -0.5, np.float32), "scale")])  # type: ignore[list-item]
    if mask == "where":
        tril = b.const(np.tril(np.ones((S, S), dtype=bool)), "tril")
        s = b.op("Where", [tril, s, b.const(np.array(-1e9, np.float32), "neg")])  # type: ignore[list-item]
    elif mask == "add":
        s = b.op("Add", [s, b.const(np.triu(np.full((S, S), -1e9, np.float32), 1), "causal")])  # type: ignore[list-item]
    p = b.op("Softmax", [s], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3])  # type: ignore[list-item]
    return b.op("Reshape", [o, _i64(b, [1, S, h * DH])])  # type: ignore[return-value]


def _gqa(opset: int, heads: int, kv: int, how: str = "expand", rope: bool = False, mask: str | None = None,
         cache: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """One LLaMA-style attention layer with grouped-query attention; returns the model and its weights."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, S, D])
    w = {"q": b.weight(D, heads * DH), "k": b.weight(D, kv * DH), "v": b.weight(D, kv * DH),
         "o": b.weight(heads * DH, D)}
    q, k, v = (_heads(b, b.op("MatMul", [x, w[n]]), hh)  # type: ignore[arg-type]
               for n, hh in (("q", heads), ("k", kv), ("v", kv)))
    if rope:
        q, k = _rope(b, q), _rope(b, k)
    if cache:  # present key/value outputs (a KV cache): KV heads must keep their count
        b.output(k)
        b.output(v)
    n_rep = heads // kv
    ctx = _attend(b, q, _repeat_kv(b, k, kv, n_rep, how), _repeat_kv(b, v, kv, n_rep, how), heads, mask)
    y = b.op("Add", [x, b.op("MatMul", [ctx, w["o"]])])  # type: ignore[list-item]
    b.output(y)  # type: ignore[arg-type]
    return b.build(), w


def _kept_heads(original: np.ndarray, pruned: np.ndarray, axis: int) -> list[int]:
    """Which DH-wide head blocks of ``original`` (along ``axis``) survive in ``pruned``, in order."""
    o = np.moveaxis(original, axis, 0).reshape(-1, DH, *np.delete(original.shape, axis))
    p = np.moveaxis(pruned, axis, 0).reshape(-1, DH, *np.delete(pruned.shape, axis))
    return [next(h for h in range(len(o)) if np.array_equal(o[h], blk)) for blk in p]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("how", ["expand", "expand-ones", "tile"])
@pytest.mark.parametrize(("heads", "kv"), [(4, 2), (8, 2), (6, 3)])
def test_gqa_kv_head_takes_its_query_heads(opset: int, how: str, heads: int, kv: int) -> None:
    """A KV head is removed together with exactly the n_rep query heads that read it."""
    model, w = _gqa(opset, heads, kv, how)
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert g.prunable, g.reasons
    assert g.channels == kv  # one channel per KV head, even when n_rep > kv
    assert g.kind == "head"
    assert {f"{w['k']}", f"{w['v']}", f"{w['o']}"} <= {m.tensor for m in g.members}
    r = assert_oracle(model, 0.5)
    n_rep, kept = heads // kv, kv - round(0.5 * kv)
    before, after = _inits(model), _inits(r.model)
    assert after[w["k"]].shape == (D, kept * DH) and after[w["v"]].shape == (D, kept * DH)
    assert after[w["q"]].shape == (D, kept * n_rep * DH)  # kept_kv × n_rep × Dh
    assert after[w["o"]].shape == (kept * n_rep * DH, D)
    kv_kept = _kept_heads(before[w["k"]], after[w["k"]], 1)
    assert _kept_heads(before[w["v"]], after[w["v"]], 1) == kv_kept
    q_kept = _kept_heads(before[w["q"]], after[w["q"]], 1)
    assert q_kept == [j * n_rep + i for j in kv_kept for i in range(n_rep)]
    assert _kept_heads(before[w["o"]], after[w["o"]], 0) == q_kept
    shapes = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Reshape"]
    assert [1, S, kept * n_rep, DH] in shapes and [1, S, kept, DH] in shapes  # head counts rewritten
    assert [1, S, kept * n_rep * DH] in shapes
    if how == "expand":
        assert [1, kept * n_rep, S, DH] in shapes
        expands = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Expand"]
        assert expands == [[1, kept, n_rep, S, DH]] * 2


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("how", ["expand", "tile"])
@pytest.mark.parametrize(("heads", "kv"), [(4, 2), (8, 2)])
def test_gqa_with_kv_cache_prunes_query_heads_within_groups(opset: int, how: str, heads: int, kv: int) -> None:
    """KV cache outputs block the KV heads; the n_rep factor then carries the query heads (exactly)."""
    model, w = _gqa(opset, heads, kv, how, rope=True, cache=True)
    a = spa.analyze(model)
    kv_group = _group(a, w["k"], 1)
    assert not kv_group.prunable and any("graph output" in r for r in kv_group.reasons)
    n_rep = heads // kv
    g = _group(a, w["q"], 1)
    assert g.prunable and g.channels == n_rep and g.kind == "head", (g.channels, g.reasons)
    r = assert_oracle(model, 0.5)
    kept_rep = n_rep - round(0.5 * n_rep)
    before, after = _inits(model), _inits(r.model)
    assert after[w["k"]].shape == (D, kv * DH)
    q_kept = _kept_heads(before[w["q"]], after[w["q"]], 1)
    assert len(q_kept) == kv * kept_rep
    assert len({h % n_rep for h in q_kept}) == kept_rep  # the same positions in every KV group
    assert [h // n_rep for h in q_kept] == sorted(j for j in range(kv) for _ in range(kept_rep))
    if how == "expand":
        expands = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Expand"]
        assert expands == [[1, kv, kept_rep, S, DH]] * 2
    else:
        tiles = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Tile"]
        assert tiles == [[1, 1, kept_rep, 1, 1]] * 2


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("mask", [None, "where", "add"])
def test_rope_blocks_head_dim_and_keeps_heads(opset: int, mask: str | None) -> None:
    """Rotary embeddings (Slice/Neg/Concat on head_dim): head_dim never prunes, heads do."""
    model, w = _gqa(opset, 4, 4, rope=True, mask=mask)
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert g.prunable and g.channels == 4
    cg = a.channel_graph
    assert cg is not None
    q_proj = next(n for n in a.model.graph.nodes if n.op == "MatMul" and n.inputs[1].name == w["q"])
    q_heads = q_proj.outputs[0].outputs[0].outputs[0].outputs[0]  # MatMul -> Reshape -> Transpose
    comp = [cg.slots[s] for s in nx.node_connected_component(cg.nx_graph, Slot(q_heads.outputs[0].name, 3))]
    reasons = [reason for si in comp for reason in si.reasons]
    assert reasons, "head_dim of Q must be blocked with a reason"
    assert not any(si.owned for si in comp)  # no weight slice follows head_dim
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[w["q"]].shape == (D, 2 * DH)
    cos = [n for n in r.model.graph.node if n.op_type == "Mul" and n.input[1].startswith("cos")]
    assert all(after[n.input[1]].shape == (S, DH) for n in cos)  # rotary tables keep head_dim


@pytest.mark.parametrize("opset", OPSETS)
def test_matmul_tags_attention_heads(opset: int) -> None:
    """Activation x activation MatMuls of rank 4 tag their head axis; weight MatMuls tag nothing."""
    model, _w = _gqa(opset, 4, 2)
    mg = normalize(model)
    tags: dict[str, list[Tag]] = {}
    for n in mg.graph.nodes:
        if n.op == "MatMul":
            rels = MatMulRule().relate(NodeContext(n, mg.opset))
            tags[n.name] = [r for r in rels if isinstance(r, Tag)]
    with_weight = [n.name for n in mg.graph.nodes if n.op == "MatMul" and hasattr(n.inputs[1], "values")]
    assert all(not tags[n] for n in with_weight)
    scores = [n for n in mg.graph.nodes if n.op == "MatMul" and n.name not in with_weight]
    assert len(scores) == 2
    for n in scores:
        assert {t.slot for t in tags[n.name] if t.slot.tensor == n.outputs[0].name} == {Slot(n.outputs[0].name, 1)}
        assert all(t.kind == "head" and t.slot.axis == 1 for t in tags[n.name])
    assert spa.analyze(mg).groups  # the analysis ignores tags


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("tied", [False, True])
def test_embedding_table_slices_with_the_hidden_size(opset: int, tied: bool) -> None:
    """Gather(table[V, D], ids): the table's D axis is the output's last axis; a tied LM head shares it."""
    b = GraphBuilder(opset=opset)
    ids = b.input("ids", [S], onnx.TensorProto.INT64)
    vocab = 10
    table = b.weight(vocab, D)
    e = b.op("Gather", [table, ids], axis=0)  # [S, D]
    w1, w2 = b.weight(D, 24), b.weight(24, D)
    h = b.op("Add", [e, b.op("MatMul", [b.op("Relu", [b.op("MatMul", [e, w1])]), w2])])  # type: ignore[list-item]
    if tied:
        y = b.op("Gemm", [h, table], transB=1)  # logits = h @ tableᵀ
    else:
        y = b.op("MatMul", [h, b.weight(D, vocab)])
    b.output(y)  # type: ignore[arg-type]
    model = b.build()
    a = spa.analyze(model)
    g = _group(a, table, 1)
    assert g.prunable, g.reasons
    assert {w1, w2} <= {m.tensor for m in g.members}  # the whole residual stream
    if tied:  # the vocabulary axis produces the logits, a graph output
        assert not _group(a, table, 0).prunable
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[table].shape == (vocab, D // 2)
    assert after[w1].shape == (D // 2, 24 // 2) and after[w2].shape == (24 // 2, D // 2)


@pytest.mark.parametrize("opset", [14, 17])
def test_trilu_keeps_leading_axes(opset: int) -> None:
    """Trilu on [1, C, H, W] features: channels map through, the matrix axes are positional."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 5, 5])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    w1 = b.nodes[-2].input[1]
    t = b.op("Trilu", [h, _i64(b, [1], "k")], upper=0)
    y = b.conv(t, 8, 4, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build(), 0.5)
    assert _row(r, w1, 0)["channels_after"] == 4


@pytest.mark.parametrize("opset", [14, 17])
def test_trilu_over_channels_is_blocked(opset: int) -> None:
    """Trilu whose last axis is the channel: which channels survive depends on the row: blocked."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 8, D])
    w1, w2 = b.weight(D, 8), b.weight(8, 4)
    h = b.op("Trilu", [b.op("MatMul", [x, w1])], upper=1)
    b.output(b.op("MatMul", [h, w2]))  # type: ignore[arg-type]
    model = b.build()
    g = _group(spa.analyze(model), w1, 1)
    assert not g.prunable and any("Trilu" in reason for reason in g.reasons), g.reasons
    assert_oracle(model, 0.5, expect_pruned=False)


def _dynamic_attention(opset: int, heads: int, kv: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    """GQA attention with symbolic batch and sequence, as dynamo writes it.

    The head Reshapes share one computed target ``Concat(Shape(x)[0], Shape(x)[1], h, DH)`` (with
    ``allowzero=1``), the ``repeat_kv`` Expand shape is computed too, and the causal mask is a Trilu of a
    computed square.
    """
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", "T", D])
    w = {"q": b.weight(D, heads * DH), "k": b.weight(D, kv * DH), "v": b.weight(D, kv * DH),
         "o": b.weight(heads * DH, D)}
    shape = b.op("Shape", [x])
    bt = _slice(b, shape, 0, 2, 0)  # [B, T]
    t1 = _slice(b, shape, 1, 2, 0)  # [T]
    one = _i64(b, [1], "one")
    n_rep = heads // kv

    def heads_of(name: str, h: int) -> str:
        target = b.op("Concat", [bt, _i64(b, [h, DH], "hd")], axis=0)
        r = b.op("Reshape", [b.op("MatMul", [x, w[name]]), target], allowzero=1)  # type: ignore[list-item]
        return b.op("Transpose", [r], perm=[0, 2, 1, 3])  # type: ignore[return-value]

    kv_target = b.op("Concat", [bt, _i64(b, [kv, DH], "hd")], axis=0)  # shared by the K and V reshapes
    q = heads_of("q", heads)
    k, v = ((b.op("Transpose", [b.op("Reshape", [b.op("MatMul", [x, w[n]]), kv_target], allowzero=1)],  # type: ignore[list-item]
                  perm=[0, 2, 1, 3])) for n in ("k", "v"))
    b_ = _slice(b, shape, 0, 1, 0)
    exp_shape = b.op("Concat", [b_, _i64(b, [kv, n_rep], "kr"), t1, _i64(b, [DH], "dh")], axis=0)
    rep_target = b.op("Concat", [b_, _i64(b, [heads], "h"), t1, _i64(b, [DH], "dh")], axis=0)

    def repeat(t: str) -> str:
        e = b.op("Expand", [_unsqueeze(b, t, [2]), exp_shape])
        return b.op("Reshape", [e, rep_target], allowzero=1)  # type: ignore[return-value]

    s = b.op("MatMul", [q, b.op("Transpose", [repeat(k)], perm=[0, 1, 3, 2])])  # type: ignore[arg-type,list-item]
    square = b.op("Concat", [t1, t1], axis=0)
    ones = b.op("ConstantOfShape", [square], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0]))
    upper = b.op("Trilu", [ones, one], upper=1)  # 1 above the diagonal
    s = b.op("Add", [s, b.op("Mul", [upper, b.const(np.array(-1e9, np.float32), "neg")])])  # type: ignore[list-item]
    p = b.op("Softmax", [s], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [p, repeat(v)])], perm=[0, 2, 1, 3])  # type: ignore[arg-type,list-item]
    flat = b.op("Reshape", [o, b.op("Concat", [bt, _i64(b, [heads * DH], "hd")], axis=0)], allowzero=1)
    y = b.op("MatMul", [flat, w["o"]])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["B", "T", D]))  # type: ignore[arg-type]
    return b.build(), w


@pytest.mark.parametrize("opset", [14, 17])
def test_gqa_with_dynamic_batch_and_sequence(opset: int) -> None:
    """Computed (and shared) Reshape targets and Expand shapes become constants for the pruned heads."""
    heads, kv = 4, 2
    model, w = _dynamic_attention(opset, heads, kv)
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert g.prunable and g.channels == kv, g.reasons
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[w["q"]].shape == (D, heads // 2 * DH) and after[w["k"]].shape == (D, DH)
    consts = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Reshape" and n.input[1] in after]
    assert sorted(consts) == [[0, 0, 1, DH], [0, heads // 2, -1, DH]]  # the shared targets, now constant
    pieces = [after[i].tolist() for n in r.model.graph.node if n.op_type == "Concat" for i in n.input if i in after]
    assert [heads // 2, DH] in pieces and [heads // 2 * DH] in pieces  # unshared targets: pieces rewritten
    for n in r.model.graph.node:
        if n.op_type == "Expand":
            assert after[n.input[1]].tolist() == [1, kv // 2, heads // kv, 1, DH]  # symbolic axes: 1
    import onnxruntime as ort

    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, D), (3, 5, D)):  # still dynamic after pruning
        out = sess.run(None, {"x": np.zeros(shape, np.float32)})[0]
        assert out.shape == shape


@pytest.mark.parametrize("opset", [14, 17])
def test_window_partition_with_symbolic_batch(opset: int) -> None:
    """(B, 2, 4, 2, 4, C) -> (?, 16, C): the symbolic head of the shape is a barrier, C still maps."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", 8, 8, D])
    w1, w2 = b.weight(D, 24), b.weight(24, D)
    h = b.op("Relu", [b.op("MatMul", [x, w1])])  # [B, 8, 8, 24]
    v = b.op("Reshape", [h, _i64(b, [-1, 2, 4, 2, 4, 24])])
    p = b.op("Transpose", [v], perm=[0, 1, 3, 2, 4, 5])
    win = b.op("Reshape", [p, _i64(b, [-1, 16, 24])])  # [B*4, 16, 24]
    y = b.op("MatMul", [win, w2])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [None, 16, D]))  # type: ignore[arg-type]
    model = b.build()
    g = _group(spa.analyze(model), w1, 1)
    assert g.prunable, g.reasons
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[w2].shape == (12, D)
    shapes = [after[n.input[1]].tolist() for n in r.model.graph.node if n.op_type == "Reshape"]
    assert shapes == [[-1, 2, 4, 2, 4, 12], [-1, 16, 12]]


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("op", ["Expand", "Tile"])
def test_class_token_broadcast_over_dynamic_batch(opset: int, op: str) -> None:
    """ViT's ``cls.expand(B, -1, -1)`` with a symbolic batch: the computed batch entry is a barrier (on
    the batch axis only); the hidden axis maps, the class token is sliced and the constant piece of the
    computed shape (or the repeats) is rewritten. The batch size is read with ``Shape(x)[:1]`` (a Slice
    of the shape vector: only axis 0 is read)."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", 4, 3])
    w0, w1 = b.weight(3, D), b.weight(D, 2)
    tokens = b.op("MatMul", [x, w0])  # [B, 4, D]
    batch = _slice(b, b.op("Shape", [tokens]), 0, 1, 0)  # type: ignore[arg-type]
    cls = b.weight(1, 1, D)
    tail = [1, D] if op == "Expand" else [1, 1]
    sizes = b.op("Concat", [batch, _i64(b, tail, "tail")], axis=0)
    c = b.op(op, [cls, sizes])  # [B, 1, D]
    h = b.op("Relu", [b.op("Concat", [c, tokens], axis=1)])  # type: ignore[list-item]
    y = b.op("MatMul", [h, w1])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["B", 5, 2]))  # type: ignore[arg-type]
    model = b.build()
    g = _group(spa.analyze(model), w0, 1)
    assert g.prunable, g.reasons
    assert cls in {m.tensor for m in g.members}
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[cls].shape == (1, 1, D // 2) and after[w1].shape == (D // 2, 2)
    pieces = [after[i].tolist() for n in r.model.graph.node if n.op_type == "Concat" for i in n.input if i in after]
    assert ([1, D // 2] if op == "Expand" else [1, 1]) in pieces
    import onnxruntime as ort

    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((3, 4, 3), np.float32)})[0].shape == (3, 5, 2)


@pytest.mark.parametrize("opset", [14, 17])
def test_shape_sliced_for_the_batch_reads_only_the_batch(opset: int) -> None:
    """``h.reshape(h.shape[:1] + (-1,))``: Slice(Shape(h), 0, 1) reads axis 0 only; channels still prune."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["N", 3, 4, 4])
    h = b.op("Relu", [b.conv(x, 3, 6)])
    w = b.nodes[-2].input[1]
    batch = _slice(b, b.op("Shape", [h]), 0, 1, 0)  # type: ignore[arg-type]
    f = b.op("Reshape", [h, b.op("Concat", [batch, _i64(b, [-1])], axis=0)])  # type: ignore[list-item]
    wf = b.weight(6 * 16, 4)
    y = b.op("MatMul", [f, wf])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["N", 4]))  # type: ignore[arg-type]
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert g.prunable, g.reasons
    r = assert_oracle(model, 0.5)
    assert _inits(r.model)[wf].shape == (3 * 16, 4)
