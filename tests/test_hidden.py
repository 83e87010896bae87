"""Hidden-size pruning (``--prune-hidden``, issue #3): the residual stream of a transformer.

The hidden size is coupled through every residual Add, every LayerNorm/RMSNorm (fused op or the
decomposed ReduceMean/Pow/Sqrt/Div pattern, or tf2onnx's GlobalAveragePool moments), the embedding
tables (their columns), position embeddings and the final norm. Off by default: the analysis then
blocks it with a reason that names the flag. With the flag, the group is prunable and of kind
``hidden``; the pruned normalisations compute their statistics over the kept channels, and the masked
twin does the same over the full width (its LayerNorms decomposed with masked statistics). Every test
ends in the mask oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import spa
from spa.analysis.groups import Analysis, Group
from spa.cli import main
from tests.oracle import GraphBuilder, assert_oracle

# -- synthetic graphs: every normalisation idiom at several opsets -----------------------------------------

D, S, F = 12, 5, 20  # hidden, sequence, MLP width


def _layer_norm(b: GraphBuilder, x: str, style: str) -> str:
    """A normalisation over the last axis of ``x`` ([1, S, D]) written in one exporter idiom."""
    g = b.const((b.rng.uniform(0.5, 1.5, D)).astype(np.float32), "g")
    beta = b.const(b.rng.standard_normal(D).astype(np.float32), "beta")
    eps = b.const(np.asarray(1e-5, dtype=np.float32), "eps")

    def reduce_mean(t: str) -> str:
        if b.opset >= 18:
            return b.op("ReduceMean", [t, b.const(np.asarray([-1], dtype=np.int64), "axes")])  # type: ignore[return-value]
        return b.op("ReduceMean", [t], axes=[-1])  # type: ignore[return-value]

    if style == "fused":
        return b.op("LayerNormalization", [x, g, beta], axis=-1, epsilon=1e-5)  # type: ignore[return-value]
    if style == "rms_fused":
        return b.op("RMSNormalization", [x, g], axis=-1, epsilon=1e-5)  # type: ignore[return-value]
    if style == "decomposed":  # torch legacy < opset 17: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div
        d = b.op("Sub", [x, reduce_mean(x)])
        var = reduce_mean(b.op("Pow", [d, b.const(np.asarray(2.0, dtype=np.float32), "two")]))  # type: ignore[arg-type]
        y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, eps])])])
        return b.op("Add", [b.op("Mul", [y, g]), beta])  # type: ignore[return-value]
    if style == "rms":  # LLaMA: x * rsqrt(mean(x^2) + eps) * w
        ms = reduce_mean(b.op("Mul", [x, x]))  # type: ignore[arg-type]
        return b.op("Mul", [b.op("Mul", [x, b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, eps])])])]), g])  # type: ignore[return-value]
    if style == "l2":  # x / ||x||_2 * g (ReduceL2)
        kw: dict[str, object] = {} if b.opset >= 18 else {"axes": [-1]}
        ins = [x] + ([b.const(np.asarray([-1], dtype=np.int64), "axes")] if b.opset >= 18 else [])
        n = b.op("ReduceL2", ins, **kw)
        return b.op("Mul", [b.op("Div", [x, b.op("Add", [n, eps])]), g])  # type: ignore[return-value]
    if style == "gap":  # tf2onnx moments: GlobalAveragePool over [B, S, D] (its "spatial" axis is D)
        mean = b.op("GlobalAveragePool", [x])
        d = b.op("Sub", [x, mean])
        var = b.op("GlobalAveragePool", [b.op("Mul", [d, d])])
        y = b.op("Mul", [d, b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, eps])])])])
        return b.op("Add", [b.op("Mul", [y, g]), beta])  # type: ignore[return-value]
    raise ValueError(style)


def _block_net(style: str | list[str], opset: int, seed: int = 0, post_norm: list[bool] | None = None
               ) -> onnx.ModelProto:
    """in-projection → pre-norm (or post-norm) residual MLP blocks → final norm → head: a stream with one
    hidden group. ``style``: one idiom for every norm, or one per block plus the final one."""
    styles = [style] * 3 if isinstance(style, str) else style
    post = post_norm or [False] * (len(styles) - 1)
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, S, 7])
    h = b.op("Add", [b.op("MatMul", [x, b.weight(7, D)]), b.const(b.rng.standard_normal(D).astype(np.float32))])
    for st_, is_post in zip(styles[:-1], post):
        n = h if is_post else _layer_norm(b, h, st_)  # type: ignore[arg-type]
        u = b.op("Relu", [b.op("MatMul", [n, b.weight(D, F)])])
        h = b.op("Add", [h, b.op("MatMul", [u, b.weight(F, D)])])
        if is_post:
            h = _layer_norm(b, h, st_)  # type: ignore[arg-type]
    out = b.op("MatMul", [_layer_norm(b, h, styles[-1]), b.weight(D, 3)])  # type: ignore[arg-type]
    b.output(out)  # type: ignore[arg-type]
    return b.build()


def _hidden(a: Analysis) -> list[Group]:
    return [g for g in a.groups if g.kind == "hidden"]


STYLES = [("fused", 17), ("fused", 18), ("rms_fused", 23), ("decomposed", 13), ("decomposed", 18),
          ("rms", 13), ("rms", 18), ("l2", 13), ("l2", 18), ("gap", 13), ("gap", 17)]


@pytest.mark.parametrize(("style", "opset"), STYLES, ids=[f"{s}-op{o}" for s, o in STYLES])
def test_every_norm_idiom_prunes_the_hidden_size_exactly(style: str, opset: int) -> None:
    m = _block_net(style, opset)
    blocked = _hidden(spa.analyze(m))
    assert len(blocked) == 1 and blocked[0].channels == D and not blocked[0].prunable
    assert any("--prune-hidden" in r for r in blocked[0].reasons), blocked[0].reasons
    hidden = _hidden(spa.analyze(m, prune_hidden=True))
    assert len(hidden) == 1 and hidden[0].prunable and hidden[0].channels == D
    r = assert_oracle(m, 0.5, prune_hidden=True)
    pruned = {gp.group: gp for gp in r.plan.groups}
    assert len(pruned[hidden[0].id].removed) == D // 2
    weights = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert any(w.shape == (7, D // 2) for w in weights.values())  # in-projection columns sliced
    assert any(w.shape == (D // 2,) for w in weights.values())  # norm scale sliced


_OPSET_STYLES = {13: ["decomposed", "rms", "l2", "gap"], 18: ["fused", "decomposed", "rms", "l2", "gap"],
                 23: ["fused", "rms_fused", "decomposed", "rms", "gap"]}


@st.composite
def _streams(draw: st.DrawFn) -> tuple[onnx.ModelProto, float, float | None, str]:
    opset = draw(st.sampled_from(sorted(_OPSET_STYLES)))
    blocks = draw(st.integers(1, 3))
    styles = draw(st.lists(st.sampled_from(_OPSET_STYLES[opset]), min_size=blocks + 1, max_size=blocks + 1))
    post = draw(st.lists(st.booleans(), min_size=blocks, max_size=blocks))
    model = _block_net(styles, opset, seed=draw(st.integers(0, 3)), post_norm=post)
    return (model, draw(st.sampled_from([0.25, 0.5, 0.75])), draw(st.sampled_from([None, 0.25, 0.6])),
            draw(st.sampled_from(["l1", "l2", "random"])))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=_streams())
def test_random_streams_of_mixed_norm_idioms_pass_the_oracle(case: tuple[onnx.ModelProto, float, float | None, str]
                                                             ) -> None:
    """Random depth, mixed idioms (fused, RMS, decomposed, L2, tf2onnx moments), pre/post-norm, opsets."""
    model, ratio, hidden_ratio, criterion = case
    r = assert_oracle(model, ratio, criterion, prune_hidden=True, hidden_ratio=hidden_ratio)
    hidden = _hidden(r.analysis)
    assert len(hidden) == 1 and hidden[0].prunable
    assert any(gp.group == hidden[0].id for gp in r.plan.groups)


def test_hidden_is_off_by_default_and_ratio_is_separate() -> None:
    m = _block_net("fused", 17)
    default = spa.prune(m, ratio=0.5)
    assert all(default.analysis.groups[gp.group].kind != "hidden" for gp in default.plan.groups)
    r = assert_oracle(m, 0.5, prune_hidden=True, hidden_ratio=0.25)
    removed = {r.analysis.groups[gp.group].kind: len(gp.removed) for gp in r.plan.groups}
    assert removed == {"hidden": D // 4, "channel": F // 2}
    assert r.report["prune_hidden"] is True
    with pytest.raises(spa.errors.UsageError, match="prune-hidden"):
        spa.prune(m, ratio=0.5, hidden_ratio=0.25)


def test_statistics_are_over_the_kept_channels() -> None:
    """The pruned LayerNorm normalises over the kept channels: its output has zero mean and unit variance
    over them (not the statistics of the original width)."""
    import onnxruntime as ort

    m = _block_net("fused", 17)
    r = spa.prune(m, ratio=0.5, prune_hidden=True)
    g = r.model.graph
    ln = next(n for n in g.node if n.op_type == "LayerNormalization")
    one = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for name in ln.input[1:]:
        one[name] = np.ones_like(one[name]) if name == ln.input[1] else np.zeros_like(one[name])
    probe = onnx.ModelProto()
    probe.CopyFrom(r.model)
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in one.items())
    probe.graph.output.append(onnx.helper.make_tensor_value_info(ln.output[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, S, 7)).astype(np.float32)
    y = sess.run([ln.output[0]], {"x": x})[0]
    assert y.shape[-1] == D // 2
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-3)


def test_keepdims_zero_and_multiple_reduced_axes() -> None:
    """A ReduceMean with keepdims=0 and one over (S, D) at once: masked over the pruned axis only."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, S, 7])
    h = b.op("MatMul", [x, b.weight(7, D)])
    m0 = b.op("ReduceMean", [h], axes=[-1], keepdims=0)  # [1, S]
    m1 = b.op("ReduceMean", [h], axes=[1, 2], keepdims=1)  # [1, 1, 1]
    y = b.op("Add", [b.op("MatMul", [b.op("Sub", [h, m1]), b.weight(D, 4)]),
                     b.op("Unsqueeze", [m0, b.const(np.asarray([2], dtype=np.int64), "axes")])])
    b.output(y)  # type: ignore[arg-type]
    m = b.build()
    assert not spa.analyze(m).prunable
    r = assert_oracle(m, 0.5, prune_hidden=True)
    assert [r.analysis.groups[gp.group].kind for gp in r.plan.groups] == ["hidden"]


def test_max_reductions_and_softmax_still_block() -> None:
    """A ReduceMax or Softmax over the hidden axis is not a maskable statistic: blocked even with the flag."""
    for op in ("ReduceMax", "Softmax"):
        b = GraphBuilder(opset=13)
        x = b.input("x", [1, S, 7])
        h = b.op("MatMul", [x, b.weight(7, D)])
        t = b.op(op, [h], **({"axes": [-1]} if op == "ReduceMax" else {"axis": -1}))
        b.output(b.op("MatMul", [b.op("Mul", [h, t]), b.weight(D, 3)]))  # type: ignore[arg-type]
        a = spa.analyze(b.build(), prune_hidden=True)
        assert not a.prunable, op


# -- real exports: both PyTorch exporters ------------------------------------------------------------

torch = pytest.importorskip("torch")

from models.transformers import (  # noqa: E402
    HIDDEN,
    HIDDEN_TOKEN_MODELS,
    TOKEN_MODELS,
    VOCAB,
)

EXPORTERS = ["legacy", "dynamo"]
TOKEN = {**TOKEN_MODELS, **HIDDEN_TOKEN_MODELS}


@pytest.fixture
def hidden_export(model_export):  # type: ignore[no-untyped-def]
    return model_export


# every model whose hidden size is internal (BERT: the classifier with embeddings; the plain encoder
# takes [B, S, D] features as its graph input, so its hidden size is fixed by the caller)
MODELS = ["bert_cls", "vit", "swin", "convnext", "llama", "llama_tied"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_transformer_hidden_size_prunes_exactly(hidden_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = str(hidden_export(name, exporter))
    hidden = _hidden(spa.analyze(path, prune_hidden=True))
    assert [g.channels for g in hidden] == [HIDDEN] and hidden[0].prunable, [g.reasons for g in hidden]
    r = assert_oracle(path, 0.5, prune_hidden=True)
    kinds = {r.analysis.groups[gp.group].kind for gp in r.plan.groups}
    assert "hidden" in kinds
    gp = next(gp for gp in r.plan.groups if gp.group == hidden[0].id)
    assert len(gp.removed) == HIDDEN // 2
    # every normalisation's scale was sliced with the stream (no full-width [HIDDEN] parameter left)
    weights = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    norms = [n for n in r.model.graph.node if n.op_type in ("LayerNormalization", "RMSNormalization")]
    for n in norms:
        if n.input[1] in weights and weights[n.input[1]].shape[-1] not in (HIDDEN // 2, 2 * HIDDEN, 4 * HIDDEN):
            raise AssertionError(f"{n.name}: scale {weights[n.input[1]].shape}")
    if name in TOKEN:  # the embedding table keeps its rows and loses half its columns
        assert any(w.shape == (VOCAB, HIDDEN // 2) for w in weights.values())


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_llama_hidden_with_heads_mlp_and_obs(hidden_export, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """Hidden, heads and MLP together, with the calibrated OBS criterion (surviving weights updated)."""
    r = assert_oracle(str(hidden_export("llama", exporter)), 0.5, "obs", prune_hidden=True, calibration="random",
                      calib_samples=4)
    assert {r.analysis.groups[gp.group].kind for gp in r.plan.groups} == {"hidden", "head", "channel"}
    assert r.report["compensated_weights"]


def test_cli_prune_hidden_then_verify(hidden_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    src = str(hidden_export("llama", "dynamo"))
    assert main(["analyze", src, "--json", "-"]) == 0
    blocked = json.loads(capsys.readouterr().out)
    assert main(["analyze", src, "--prune-hidden", "--json", "-"]) == 0
    opened = json.loads(capsys.readouterr().out)
    assert opened["num_prunable"] == blocked["num_prunable"] + 1
    assert [g["kind"] for g in opened["groups"] if g["kind"] == "hidden" and g["prunable"]] == ["hidden"]
    out, masked = tmp_path / "p.onnx", tmp_path / "m.onnx"
    assert main(["prune", src, "--ratio", "0.5", "--prune-hidden", "--hidden-ratio", "0.25", "-o", str(out),
                 "--emit-masked", str(masked), "--report", str(tmp_path / "r.json")]) == 0
    assert main(["verify", str(out), str(masked)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["prune_hidden"] is True
    rows = [g for g in report["groups"] if g["kind"] == "hidden"]
    assert len(rows) == 1 and rows[0]["channels_after"] == HIDDEN - HIDDEN // 4
    assert main(["prune", src, "--hidden-ratio", "0.25", "-o", str(tmp_path / "x.onnx")]) != 0


def test_keras_attention_fixture_hidden_size() -> None:
    """Keras 3 → tf2onnx idioms: LayerNorm moments as GlobalAveragePool over [B, S, D], gamma/beta as
    [1, 1, D] constants, Tensordot Reshape([-1, D]) before the FFN. The fixture's hidden size is its graph
    input, so a projection is put in front (in memory; nothing else changed) to make the stream internal."""
    from onnx import helper

    m = onnx.load(str(Path(__file__).parent / "fixtures" / "keras_attention.onnx"))
    g = m.graph
    inp = g.input[0]
    batch = inp.type.tensor_type.shape.dim[0].dim_param
    w = np.random.default_rng(0).standard_normal((8, D_KERAS)).astype(np.float32) * 0.3
    g.initializer.append(numpy_helper.from_array(w, "spa_test_proj"))
    g.node.insert(0, helper.make_node("MatMul", ["features", "spa_test_proj"], [inp.name], name="spa_test_proj"))
    g.input.remove(inp)
    g.input.insert(0, helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [batch, 16, 8]))
    assert not _hidden(spa.analyze(m))[0].prunable
    hidden = _hidden(spa.analyze(m, prune_hidden=True))
    assert [h.channels for h in hidden] == [D_KERAS] and hidden[0].prunable
    r = assert_oracle(m, 0.5, prune_hidden=True)
    assert {r.analysis.groups[gp.group].kind: len(gp.removed) for gp in r.plan.groups}["hidden"] == D_KERAS // 2
    weights = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert weights["spa_test_proj"].shape == (8, D_KERAS // 2)


D_KERAS = 32


# -- ONNX Runtime's fused normalisations (transformer optimizer output) ----------------------------------

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize(("op", "bias", "use_sum"), [("SkipLayerNormalization", False, False),
                                                     ("SkipLayerNormalization", True, True),
                                                     ("SkipSimplifiedLayerNormalization", True, False),
                                                     ("SkipSimplifiedLayerNormalization", False, True)])
def test_ort_fused_norms_prune_the_hidden_size(opset: int, op: str, bias: bool, use_sum: bool) -> None:
    from tests.rules.test_contrib import _builder, _model, _ms, _out

    b = _builder(opset)
    x = b.input("x", [2, S, 7])
    w_in, w_up, w_down, w_head = b.weight(7, D), b.weight(D, F), b.weight(F, D), b.weight(D, 3)
    h = b.op("MatMul", [x, w_in])
    up = b.op("MatMul", [b.op("Relu", [b.op("MatMul", [h, w_up])]), w_down])
    gamma = b.const(np.linspace(0.5, 1.5, D).astype(np.float32), "gamma")
    vec = [b.const(b.rng.standard_normal(D).astype(np.float32), "v") for _ in range(2)]
    ins = [up, h, gamma] + ([vec[0]] if op == "SkipLayerNormalization" else []) + ([vec[1]] if bias else [])
    n_out = 4 if use_sum else 1
    outs = _ms(b, op, ins, [2, S, D], n_out=n_out, shapes=[[2, S, 1], [2, S, 1], [2, S, D]], epsilon=1e-5)
    if use_sum:  # name only the sum among the optional outputs
        b.nodes[-1].output[1] = b.nodes[-1].output[2] = ""
    y = b.op("MatMul", [outs[0], w_head])
    if use_sum:
        y = b.op("Add", [y, b.op("MatMul", [outs[3], w_head])])
    _out(b, y, [2, S, 3])  # type: ignore[arg-type]
    m = _model(b)
    assert not _hidden(spa.analyze(m))[0].prunable
    hidden = _hidden(spa.analyze(m, prune_hidden=True))
    assert [h.channels for h in hidden] == [D] and hidden[0].prunable, [h.reasons for h in hidden]
    r = assert_oracle(m, 0.5, prune_hidden=True)
    dims = {t.name: list(t.dims) for t in r.model.graph.initializer}
    assert dims[w_in] == [7, D // 2] and dims[w_head] == [D // 2, 3] and dims[gamma] == [D // 2]


@pytest.mark.parametrize("opset", [13, 17])
def test_ort_simplified_layer_norm_in_the_default_domain(opset: int) -> None:
    """ORT's transformer optimizer writes RMSNorm as ``SimplifiedLayerNormalization`` in the default domain.
    The ONNX checker rejects it (ONNX Runtime runs it), in the input and in the output alike: spa prunes the
    hidden size through it, reports the checker as skipped for that reason, and the mask oracle holds."""
    from onnx import helper

    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, S, 7])
    w_in, w_up, w_head = b.weight(7, D), b.weight(D, F), b.weight(F, 3)
    gamma = b.const(np.linspace(0.5, 1.5, D).astype(np.float32), "gamma")
    b.nodes.append(helper.make_node("SimplifiedLayerNormalization", [b.op("MatMul", [x, w_in]), gamma], ["normed"],  # type: ignore[list-item]
                                    name="sln", axis=-1, epsilon=1e-5))
    y = b.op("MatMul", [b.op("Relu", [b.op("MatMul", ["normed", w_up])]), w_head])  # type: ignore[list-item]
    b.output(y, [2, S, 3])  # type: ignore[arg-type]
    graph = helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits,
                              value_info=[helper.make_tensor_value_info("normed", onnx.TensorProto.FLOAT, [2, S, D])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m, full_check=True)
    assert not _hidden(spa.analyze(m))[0].prunable
    r = spa.prune(m, ratio=0.5, emit_masked=True, prune_hidden=True)
    assert str(r.report["onnx_check"]).startswith("skipped: the ONNX checker rejects the input too")
    assert r.report["ort_check"] == "ok"
    assert {r.analysis.groups[gp.group].kind: len(gp.removed) for gp in r.plan.groups} == {"hidden": D // 2,
                                                                                           "channel": F // 2}
    assert r.masked is not None and spa.verify(r.model, r.masked).ok
    dims = {t.name: list(t.dims) for t in r.model.graph.initializer}
    assert dims[w_in] == [7, D // 2] and dims[gamma] == [D // 2]
