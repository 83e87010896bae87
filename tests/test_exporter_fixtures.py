"""Graphs from the non-PyTorch exporters (issue #3): Keras 3, tf2onnx, jax2onnx, paddle2onnx.

The fixtures in ``tests/fixtures/`` were written by ``tools/fixtures/make_<exporter>_fixture.py``, each
in its exporter's own throw-away venv (TensorFlow, JAX, Paddle are not test dependencies); see the
scripts for versions. Each file's ``metadata_props`` records exporter, versions and seed.

For every fixture: ``spa.analyze`` must find the expected prunable groups (every conv output group of
the CNNs, the FFN hidden size of the attention block), and pruning at 25 % / 50 % must pass the mask
oracle. For the channels-last Flatten → Dense fixtures, the Dense rows kept must be exactly the rows of
the kept channels under the NHWC stride (channel ``c`` owns rows ``c, c+C, c+2C, ...``).

Where the exporter's graph carries a quirk that spa does not handle yet, the as-exported test is
``xfail(strict=True)`` with the repro named in the reason, and a *sanitised* copy (the quirk removed in
memory, nothing else changed) is tested too, so the exporter's other idioms stay covered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import spa
from tests.oracle import assert_oracle

FIXTURES = Path(__file__).parent / "fixtures"

# -- fixtures ------------------------------------------------------------------------------------------------


def _strip_value_info(m: onnx.ModelProto) -> onnx.ModelProto:
    """jax2onnx's stale value_info dropped (shape inference recomputes every intermediate shape)."""
    del m.graph.value_info[:]
    return m


@dataclass(frozen=True)
class Fixture:
    """What a fixture must show: the channel counts of its prunable groups, and how many of them are
    conv output groups (a group holding some Conv weight's output axis).

    ``known_*``: the spa failure that makes that test fail today (it is then ``xfail(strict=True)``).
    """

    file: str
    prunable: tuple[int, ...]  # sorted channel counts of the prunable groups
    conv_groups: int  # distinct prunable groups that own a Conv output axis
    convs: int  # Conv nodes, each of whose output axis must be prunable
    sanitise: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
    known_analyze: str | None = None
    known_oracle: str | None = None
    known_sanitised: str | None = None

    def model(self, sanitised: bool) -> onnx.ModelProto:
        m = onnx.load(str(FIXTURES / self.file))
        if sanitised and self.sanitise is not None:
            m = self.sanitise(m)
        return m


FIX = {
    # residual stream (stem, res_b, depthwise), res_a, pw, head: every conv output is prunable
    "keras_cnn": Fixture("keras_cnn.onnx", (16, 16, 24, 32), 4, 6),
    # the FFN hidden size and V's head_dim with the output projection's rows (V's Dh never meets Q·Kᵀ;
    # the dims of the B·H merge are read off two probes, spa.analysis.probe); heads merged into the
    # dynamic batch and the LayerNorm-coupled hidden size are not prunable
    "keras_attention": Fixture("keras_attention.onnx", (16, 64), 0, 0),
    # residual stream (+ depthwise), res_a, pw (NHWC Flatten), fc1 hidden
    "tf2onnx_cnn": Fixture("tf2onnx_cnn.onnx", (16, 16, 32, 32), 3, 5),
    "jax2onnx_cnn": Fixture("jax2onnx_cnn.onnx", (16, 16, 32, 32), 3, 5, _strip_value_info),
    # residual stream (+ depthwise), res_a, pw (NCHW flatten), fc1 hidden
    "paddle2onnx_cnn": Fixture("paddle2onnx_cnn.onnx", (16, 16, 32, 32), 3, 5),
}


def _xfail_if(known: str | None) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=known)] if known else []


def _params(attr: str | None, only_sanitisable: bool = False) -> list[object]:
    return [pytest.param(k, id=k, marks=_xfail_if(getattr(f, attr) if attr else None))
            for k, f in FIX.items() if not only_sanitisable or f.sanitise is not None]


def _check_groups(fx: Fixture, m: onnx.ModelProto) -> None:
    analysis = spa.analyze(m)
    got = tuple(sorted(g.channels for g in analysis.prunable))
    blocked = {g.label: g.reasons[:2] for g in analysis.groups if not g.prunable}
    assert got == fx.prunable, f"prunable channel counts {got} != {fx.prunable}; blocked: {blocked}"
    conv_weights = {n.inputs[1].name for n in analysis.model.graph.nodes if n.op == "Conv"}
    assert len(conv_weights) == fx.convs
    owner = {(mem.tensor, mem.axis): g for g in analysis.groups for mem in g.members}
    assert all(owner[(w, 0)].prunable for w in conv_weights), "a conv output group is blocked"
    assert len({owner[(w, 0)].id for w in conv_weights}) == fx.conv_groups


# -- provenance -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FIX))
def test_fixture_is_small_and_documented(name: str) -> None:
    path = FIXTURES / FIX[name].file
    assert path.stat().st_size < 1_000_000
    m = onnx.load(str(path))
    assert m.ir_version <= 10
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["spa.fixture"] == name and meta["spa.exporter"] and meta["spa.seed"] == "0"
    script = Path(__file__).parents[1] / "tools" / "fixtures" / f"make_{name.split('_')[0]}_fixture.py"
    assert script.is_file(), script


# -- as exported ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", _params("known_analyze"))
def test_analyze_finds_expected_groups(name: str) -> None:
    fx = FIX[name]
    _check_groups(fx, fx.model(sanitised=False))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("name", _params("known_oracle"))
def test_oracle(name: str, ratio: float) -> None:
    fx = FIX[name]
    assert_oracle(fx.model(sanitised=False), ratio)


# -- the quirk removed in memory: the exporter's other idioms must work --------------------------------

@pytest.mark.parametrize("name", _params(None, only_sanitisable=True))
def test_sanitised_analyze_finds_expected_groups(name: str) -> None:
    fx = FIX[name]
    _check_groups(fx, fx.model(sanitised=True))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("name", _params("known_sanitised", only_sanitisable=True))
def test_sanitised_oracle(name: str, ratio: float) -> None:
    fx = FIX[name]
    result = assert_oracle(fx.model(sanitised=True), ratio)
    pruned = sum(1 for g in result.report["groups"] if g["channels_after"] < g["channels_before"])  # type: ignore[union-attr,index]
    assert pruned == len(fx.prunable)


# -- Keras MultiHeadAttention heads (tf2onnx's Einsum lowering) --------------------------------------------

def _keras_attention_batch_one() -> onnx.ModelProto:
    """keras_attention with its batch dimension fixed to 1 (in memory; nothing else changed)."""
    m = FIX["keras_attention"].model(sanitised=False)
    for t in list(m.graph.input) + list(m.graph.output):
        d = t.type.tensor_type.shape.dim[0]
        d.ClearField("dim_param")
        d.dim_value = 1
    del m.graph.value_info[:]
    return m


def test_keras_heads_merged_into_a_dynamic_batch_are_blocked_with_a_reason() -> None:
    """tf2onnx lowers Keras' einsum attention by merging the head axis into the batch axis
    (``Reshape([B·H, S, Dh])`` from ``ReduceProd(Shape[0:2])``): with a symbolic batch the merged axis has
    no static channel map, so the heads stay (blocked, with the Reshape named), never mis-pruned."""
    a = spa.analyze(FIX["keras_attention"].model(sanitised=False))
    heads = [g for g in a.groups if g.channels == 2]
    assert heads == [] or not any(g.prunable for g in heads)
    blocked = [g for g in a.groups if not g.prunable and any("Reshape" in r for r in g.reasons)]
    assert blocked


def test_keras_heads_prune_with_a_static_batch() -> None:
    """The same graph with batch 1: the 2 heads (Q/K/V columns with their [H, Dh] biases, output rows)
    are one prunable group next to the FFN, and both prune exactly."""
    m = _keras_attention_batch_one()
    a = spa.analyze(m)
    assert sorted(g.channels for g in a.prunable) == [2, 64]
    r = assert_oracle(m, 0.5)
    dims = {t.name: list(t.dims) for t in r.model.graph.initializer}
    heads = next(g for g in r.report["groups"] if g["channels_before"] == 2)  # type: ignore[union-attr,index]
    assert heads["channels_after"] == 1  # type: ignore[index]
    q = next(n for n in dims if n.endswith("query_1/Reshape:0"))
    assert dims[q] == [32, 16]  # one head of 16 dims left


# -- channels-last Flatten -> Dense: the stride map ---------------------------------------------------

def _weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in spa.load(m).to_onnx().graph.initializer}


def _kept(result: spa.PruneResult, weight_axis: str) -> list[int]:
    for g in result.report["groups"]:  # type: ignore[union-attr]
        if weight_axis in g["weights"]:  # type: ignore[index,operator]
            return list(g["kept"])  # type: ignore[index]
    raise AssertionError(f"no group holds {weight_axis}")


@dataclass(frozen=True)
class DenseAfterFlatten:
    fixture: str
    conv_weight: str  # the conv whose channels are flattened
    dense_weight: str  # [features, hidden] weight right after the Flatten
    channels: int
    spatial: int  # H*W after pooling
    channels_last: bool
    sanitised: bool = False
    known_set: str | None = None  # known failure of the kept-row *set* check
    known_order: str | None = None  # known failure of the kept-row *order* check

    def channel_of_row(self) -> np.ndarray:
        rows = np.arange(self.channels * self.spatial)
        return rows % self.channels if self.channels_last else rows // self.spatial


CASES = {
    "tf2onnx_nhwc": DenseAfterFlatten("tf2onnx_cnn", "tf2onnx_cnn/pw_conv/Conv2D_weights_fused_bn",
                                      "tf2onnx_cnn/fc1/MatMul/ReadVariableOp:0", 32, 64, True),
    "jax2onnx_nhwc_sanitised": DenseAfterFlatten("jax2onnx_cnn", "kernel_oih_4", "const_25", 32, 64, True,
                                                 sanitised=True),
    "jax2onnx_nhwc": DenseAfterFlatten("jax2onnx_cnn", "kernel_oih_4", "const_25", 32, 64, True),
    "paddle2onnx_nchw": DenseAfterFlatten("paddle2onnx_cnn", "conv2d_4.w_0", "linear_0.w_0", 32, 64, False),
}


def _cases(attr: str) -> list[object]:
    return [pytest.param(c, id=k, marks=_xfail_if(getattr(c, attr))) for k, c in CASES.items()]


def _prune_dense(case: DenseAfterFlatten, ratio: float) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """(original Dense weight, pruned Dense weight, kept conv channels, kept Dense columns)."""
    m = FIX[case.fixture].model(case.sanitised)
    w0 = _weights(m)[case.dense_weight]
    result = spa.prune(m, ratio=ratio, criterion="l2")
    w1 = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}[case.dense_weight]
    kept_c = _kept(result, f"{case.conv_weight}[0]")
    kept_h = _kept(result, f"{case.dense_weight}[1]")
    assert 0 < len(kept_c) < case.channels and 0 < len(kept_h) < w0.shape[1]
    assert w1.shape == (len(kept_c) * case.spatial, len(kept_h))
    return w0, w1, kept_c, kept_h


@pytest.mark.parametrize("case", _cases("known_set"))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_flatten_dense_keeps_rows_of_kept_channels(case: DenseAfterFlatten, ratio: float) -> None:
    """Removing channel c removes exactly Dense rows c, c+C, c+2C, ... (channels-last) or c*HW ... c*HW+HW-1."""
    w0, w1, kept_c, kept_h = _prune_dense(case, ratio)
    index = {w0[r, kept_h].tobytes(): r for r in range(w0.shape[0])}
    assert len(index) == w0.shape[0], "rows not unique: cannot identify them"
    present = {index[row.tobytes()] for row in w1}
    c, hw = case.channels, case.spatial
    removed = set(range(c)) - set(kept_c)
    gone = set(range(c * hw)) - present
    if case.channels_last:
        assert gone == {k + j * c for k in removed for j in range(hw)}
    else:
        assert gone == {k * hw + j for k in removed for j in range(hw)}
    assert np.array_equal(np.isin(case.channel_of_row(), kept_c), np.isin(np.arange(c * hw), sorted(present)))


@pytest.mark.parametrize("case", _cases("known_order"))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_flatten_dense_rows_stay_in_flat_order(case: DenseAfterFlatten, ratio: float) -> None:
    """The pruned Dense weight is the original one with the removed rows/columns deleted, order unchanged."""
    w0, w1, kept_c, kept_h = _prune_dense(case, ratio)
    kept_rows = np.flatnonzero(np.isin(case.channel_of_row(), kept_c))
    np.testing.assert_array_equal(w1, w0[kept_rows][:, kept_h])
    assert_oracle(FIX[case.fixture].model(case.sanitised), ratio)


# -- Keras token-id encoder: the hidden size is internal to the graph (embedding tables) -----------------

ENCODER = FIXTURES / "keras_encoder.onnx"
_E = "keras_encoder_1/"
TOK_EMB = _E + "tok_emb_1/GatherV2/ReadVariableOp:0"  # [64, 32] token table
POS_EMB = _E + "pos_emb_1/table_1/GatherV2:0"  # [16, 32] position table (tf2onnx folds the arange lookup)
#: the weight axes that carry the 32-wide residual stream
ENCODER_HIDDEN = {
    (TOK_EMB, 1), (POS_EMB, 1),
    (_E + "mha_1/query_1/Reshape:0", 0), (_E + "mha_1/key_1/Reshape:0", 0), (_E + "mha_1/value_1/Reshape:0", 0),
    (_E + "mha_1/attention_output_1/Reshape_1:0", 1),
    (_E + "mha_1/attention_output_1/BiasAdd/ReadVariableOp:0", 0),
    (_E + "ln1_1/Reshape:0", 2), (_E + "ln1_1/Reshape_1:0", 2),
    (_E + "ln2_1/Reshape:0", 2), (_E + "ln2_1/Reshape_1:0", 2),
    (_E + "ffn_up_1/Cast/ReadVariableOp:0", 0), (_E + "ffn_down_1/Cast/ReadVariableOp:0", 1),
    (_E + "ffn_down_1/BiasAdd/ReadVariableOp:0", 0), (_E + "logits_1/Cast/ReadVariableOp:0", 0),
}


def _owner(a: spa.Analysis, tensor: str, axis: int) -> spa.Group:
    return next(g for g in a.groups if any(m.tensor == tensor and m.axis == axis for m in g.members))


def test_keras_encoder_is_small_and_documented() -> None:
    """Token ids in (int, ``[B, 16]``), provenance stamped, written by make_keras_fixture.py."""
    assert ENCODER.stat().st_size < 1_000_000
    m = onnx.load(str(ENCODER))
    assert m.ir_version <= 10
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["spa.fixture"] == "keras_encoder" and meta["spa.exporter"] and meta["spa.seed"] == "0"
    assert meta["keras"] and meta["tensorflow"] and meta["tf2onnx"]
    (inp,) = m.graph.input
    assert inp.type.tensor_type.elem_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [16]
    script = Path(__file__).parents[1] / "tools" / "fixtures" / "make_keras_fixture.py"
    assert "keras_encoder" in script.read_text()


def test_keras_encoder_default_analysis_finds_the_ffn() -> None:
    """Without prune_hidden the FFN and V's head_dim (with the output projection's rows) are prunable;
    the hidden group is blocked by the LayerNorm statistics (naming --prune-hidden); the heads and Q/K's
    head_dim are blocked by tf2onnx's head-into-batch Reshape / the attention MatMul, as in keras_attention."""
    a = spa.analyze(ENCODER)
    assert sorted(g.channels for g in a.prunable) == [16, 64]
    hidden = _owner(a, TOK_EMB, 1)
    assert not hidden.prunable and hidden.channels == 32
    assert any("prune-hidden" in r for r in hidden.reasons)


def test_keras_encoder_hidden_size_is_prunable_with_prune_hidden() -> None:
    """prune_hidden: one prunable 32-channel hidden group from the embedding tables to the classifier rows."""
    a = spa.analyze(ENCODER, prune_hidden=True)
    assert sorted(g.channels for g in a.prunable) == [16, 32, 64]
    hidden = _owner(a, TOK_EMB, 1)
    assert hidden.prunable and hidden.channels == 32 and hidden.kind == "hidden"
    weights = {(m.tensor, m.axis) for m in hidden.members if m.kind == "weight"}
    assert ENCODER_HIDDEN <= weights, ENCODER_HIDDEN - weights


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_keras_encoder_oracle_with_prune_hidden(ratio: float) -> None:
    """Both the hidden size and the FFN prune exactly (spa.verify's int feeds are ids 0..3, inside the
    vocabulary of 64); the token table keeps its 64 rows and loses columns."""
    r = assert_oracle(str(ENCODER), ratio, prune_hidden=True)
    dims = {t.name: list(t.dims) for t in r.model.graph.initializer}
    kept = round(32 * (1 - ratio))
    assert dims[TOK_EMB] == [64, kept] and dims[POS_EMB] == [16, kept]
    assert dims[_E + "logits_1/Cast/ReadVariableOp:0"] == [kept, 4]
    if ratio == 0.5:
        assert dims[TOK_EMB] == [64, 16]
    from typing import cast

    groups = cast("list[dict[str, int]]", r.report["groups"])
    changed = sorted((g["channels_before"], g["channels_after"]) for g in groups
                     if g["channels_after"] < g["channels_before"])
    assert changed == [(16, round(16 * (1 - ratio))), (32, kept), (64, round(64 * (1 - ratio)))]
