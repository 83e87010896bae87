"""What Hugging Face decoders exported by optimum and torch's dynamo exporter need, on tiny inline graphs.

* ``x.view(-1, x.size(-1))`` (GPT-2's ``Conv1D``): a ``Shape`` reads a channel axis only to keep its
  size in a Reshape of the same tensor — self-consistent, so the channels stay prunable
  (:mod:`spa.rules.shape_reads`).
* A computed Reshape target shared by several Reshapes (dynamo's ``Concat(B, S, 96)`` for every layer's
  fused QKV) whose constant piece must change: each Reshape gets a private copy of the Concat.
* Batch and sequence lost at the attention mask (``Range`` over a computed length): the merge before the
  output projection cannot pair ``(?, ?, H, Dh)`` with ``(B, S, ?)`` until the dims are read off two
  concrete evaluations (:mod:`spa.analysis.probe`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import spa
from spa.rules.base import Slot
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _group, _i64, _unsqueeze

OPSETS = [11, 13, 17]
D, F, DH = 8, 12, 4


def _squeeze(b: GraphBuilder, x: str, axes: list[int]) -> str:
    if b.opset < 13:
        return b.op("Squeeze", [x], axes=axes)  # type: ignore[return-value]
    return b.op("Squeeze", [x, _i64(b, axes, "axes")])  # type: ignore[return-value]


def _size(b: GraphBuilder, x: str, start: int, end: int) -> str:
    """``Shape(x)[start:end]`` (a 1-D vector) by a Slice of the shape."""
    return b.op("Slice", [b.op("Shape", [x]), _i64(b, [start], "st"), _i64(b, [end], "en"),  # type: ignore[list-item]
                          _i64(b, [0], "ax")])  # type: ignore[return-value]


def _conv1d(b: GraphBuilder, x: str, w: str, out: int) -> str:
    """HF ``Conv1D``: ``addmm(b, x.view(-1, x.size(-1)), W).view(x.size()[:-1] + (out,))``."""
    last = _unsqueeze(b, _squeeze(b, _size(b, x, -1, 2**62), [0]), [0])
    flat = b.op("Reshape", [x, b.op("Concat", [_i64(b, [-1], "m1"), last], axis=0)])  # type: ignore[list-item]
    y = b.op("Gemm", [flat, w, b.const(b.rng.standard_normal(out).astype(np.float32), "bias")])  # type: ignore[list-item]
    target = b.op("Concat", [_size(b, x, 0, 2), _i64(b, [out], "out")], axis=0)
    return b.op("Reshape", [y, target])  # type: ignore[return-value]


@pytest.mark.parametrize("opset", OPSETS)
def test_conv1d_mlp_prunes(opset: int) -> None:
    """GPT-2's MLP: ``c_fc`` → ReLU → ``c_proj``, both HF ``Conv1D`` (with static channel sizes the size
    reads fold to constants when the model is normalised); the F hidden units prune, batch and sequence
    stay dynamic."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", "S", D])
    w1, w2 = b.weight(D, F), b.weight(F, D)
    h = b.op("Relu", [_conv1d(b, x, w1, F)])
    b.output(_conv1d(b, h, w2, D), ["B", "S", D])  # type: ignore[arg-type]
    model = b.build()
    g = _group(spa.analyze(model), w1, 1)
    assert g.prunable and g.channels == F, g.reasons
    r = assert_oracle(model, 0.5)
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[w1] == [D, F // 2] and dims[w2] == [F // 2, D]
    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, D), (4, 2, D)):
        assert sess.run(None, {"x": np.zeros(shape, np.float32)})[0].shape == shape


@pytest.mark.parametrize("opset", OPSETS)
def test_shared_computed_target_gets_a_private_copy(opset: int) -> None:
    """Two layers reshape their ``[B·S, F]`` Gemm outputs back with one shared ``Concat(B, S, F)``; it
    cannot become a constant (two symbols to restore), so each Reshape gets its own copy with ``F``
    rewritten, and the batch and sequence stay dynamic."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", "S", D])
    target = b.op("Concat", [_size(b, x, 0, 2), _i64(b, [F], "f")], axis=0)
    w = []
    h = x
    for _ in range(2):
        w1, w2 = b.weight(D, F), b.weight(F, D)
        w += [w1, w2]
        flat = b.op("Reshape", [h, _i64(b, [-1, D], "flat")])
        up = b.op("Reshape", [b.op("Gemm", [flat, w1]), target])  # type: ignore[list-item]
        h = b.op("Add", [h, b.op("MatMul", [b.op("Relu", [up]), w2])])  # type: ignore[list-item]
    b.output(h, ["B", "S", D])  # type: ignore[arg-type]
    model = b.build()
    a = spa.analyze(model)
    for wt in (w[0], w[2]):
        g = _group(a, wt, 1)
        assert g.prunable and g.channels == F, g.reasons
    r = assert_oracle(model, 0.5)
    concats = [n for n in r.model.graph.node if n.op_type == "Concat"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in r.model.graph.initializer}
    pieces = [inits[i].tolist() for n in concats for i in n.input if i in inits]
    assert pieces.count([F // 2]) == 2, pieces  # one private target per layer
    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, D), (2, 5, D)):
        assert sess.run(None, {"x": np.zeros(shape, np.float32)})[0].shape == shape
    for shape in ((1, 3, D), (3, 2, D)):
        assert spa.verify(r.model, r.masked, shapes={"x": shape}).ok  # type: ignore[arg-type]


def _masked_attention(opset: int, heads: int, proj: str = "matmul") -> tuple[onnx.ModelProto, dict[str, str]]:
    """Attention as optimum writes it with dynamic axes: every target from ``Shape`` (``(B, S, -1, Dh)``
    and the merge ``(B, S, -1)``), and a causal mask from ``Range`` over the computed sequence length,
    which ONNX shape inference cannot size: the scores lose batch and sequence, and the merged heads
    their size. The output projection is a MatMul (``proj="matmul"``), GPT-2's ``Conv1D`` reading that
    size back (``"conv1d"``), or a MatMul whose output is divided by that size (``"scaled"``)."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", "S", D])
    w = {n: b.weight(D, heads * DH) for n in "qkv"}
    w["o"] = b.weight(heads * DH, D)
    bs = _size(b, x, 0, 2)

    def split_heads(n: str) -> str:
        target = b.op("Concat", [bs, _i64(b, [-1, DH], "hd")], axis=0)
        r = b.op("Reshape", [b.op("MatMul", [x, w[n]]), target])  # type: ignore[list-item]
        return b.op("Transpose", [r], perm=[0, 2, 1, 3])  # type: ignore[return-value]

    q, k, v = (split_heads(n) for n in "qkv")
    s = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])  # type: ignore[list-item]
    n = b.op("Cast", [_squeeze(b, _size(b, x, 1, 2), [0])], to=onnx.TensorProto.INT64)
    pos = b.op("Range", [b.const(np.array(0, np.int64), "zero"), n, b.const(np.array(1, np.int64), "one")])  # type: ignore[list-item]
    rows, cols = _unsqueeze(b, pos, [1]), _unsqueeze(b, pos, [0])  # type: ignore[arg-type]
    allowed = b.op("Not", [b.op("Greater", [cols, rows])])  # type: ignore[list-item]  # cols <= rows
    mask = b.op("Where", [allowed, b.const(np.array(0.0, np.float32), "z"),  # type: ignore[list-item]
                          b.const(np.array(-1e9, np.float32), "ninf")])
    p = b.op("Softmax", [b.op("Add", [s, mask])], axis=-1)  # type: ignore[list-item]
    o = b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3])  # type: ignore[list-item]
    merged = b.op("Reshape", [o, b.op("Concat", [bs, _i64(b, [-1], "m1")], axis=0)])  # type: ignore[list-item]
    if proj == "conv1d":
        y = _conv1d(b, merged, w["o"], D)  # type: ignore[arg-type]
    else:
        y = b.op("MatMul", [merged, w["o"]])  # type: ignore[assignment]
    if proj == "scaled":
        size = b.op("Cast", [_size(b, merged, -1, 2**62)], to=onnx.TensorProto.FLOAT)  # type: ignore[arg-type]
        y = b.op("Div", [y, size])  # type: ignore[assignment,list-item]
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["B", "S", D]))  # type: ignore[arg-type]
    return b.build(), w


@pytest.mark.parametrize("proj", ["matmul", "conv1d"])
@pytest.mark.parametrize("opset", OPSETS)
def test_heads_behind_a_mask_symbolic_inference_cannot_size(opset: int, proj: str) -> None:
    """optimum's LLaMA (MatMul) and GPT-2 (``Conv1D``: ``x.view(-1, x.size(-1))`` reads the merged heads'
    size only to keep it) attention: the heads prune, exactly at several batch and sequence sizes."""
    model, w = _masked_attention(opset, heads=4, proj=proj)
    if proj == "conv1d":  # the read survives normalisation (the size is unknown to inference)
        assert any(n.op_type == "Shape" for n in spa.load(model).to_onnx().graph.node)
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert g.prunable and g.kind == "head" and g.channels == 4, g.reasons
    r = assert_oracle(model, 0.5)
    dims = {i.name: list(i.dims) for i in r.model.graph.initializer}
    assert dims[w["q"]] == [D, 2 * DH] and dims[w["o"]] == [2 * DH, D]
    for shape in ((1, 3, D), (3, 6, D)):
        res = spa.verify(r.model, r.masked, shapes={"x": shape})  # type: ignore[arg-type]
        assert res.ok, res.to_json()


@pytest.mark.parametrize("opset", OPSETS)
def test_size_read_for_arithmetic_still_blocks(opset: int) -> None:
    """The merged heads' size read and used as a number (``y / x.size(-1)``) is not a self-consistent
    read: the heads stay, and the reason names the Shape."""
    model, w = _masked_attention(opset, heads=4, proj="scaled")
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert not g.prunable
    assert a.channel_graph is not None
    reasons = [r for s in a.channel_graph.slots.values() for r in s.reasons]
    assert any("Shape" in r and "reads the size of axis 2" in r for r in reasons)


@pytest.mark.parametrize("opset", OPSETS)
def test_concat_along_a_dynamic_axis_maps_the_others(opset: int) -> None:
    """A KV cache's ``Concat(past, new)`` along the (dynamic) sequence axis: no offsets exist on that axis,
    but the channel axis is the same in both inputs and the output, so it prunes (both producers' columns
    and the consumer's rows), and the sequence axis is blocked with the Concat named."""
    b = GraphBuilder(opset=opset)
    x, old = b.input("x", ["B", "S", D]), b.input("old", ["B", "P", D])
    w1, w0, w2 = b.weight(D, F), b.weight(D, F), b.weight(F, D)
    cat = b.op("Concat", [b.op("MatMul", [old, w0]), b.op("MatMul", [x, w1])], axis=1)  # type: ignore[list-item]
    b.output(b.op("MatMul", [b.op("Relu", [cat]), w2]), ["B", "Q", D])  # type: ignore[arg-type,list-item]
    model = b.build()
    a = spa.analyze(model)
    g = _group(a, w1, 1)
    assert g.prunable and g.channels == F, g.reasons
    assert {(m.tensor, m.axis) for m in g.members if m.kind == "weight"} == {(w1, 1), (w0, 1), (w2, 0)}
    assert a.channel_graph is not None
    assert any("Concat" in r and "axis 1 unknown" in r for r in a.channel_graph.slots[Slot(cat, 1)].reasons)  # type: ignore[arg-type]
    r = assert_oracle(model, 0.5)
    for s, p in ((1, 3), (2, 0)):
        res = spa.verify(r.model, r.masked, shapes={"x": (2, s, D), "old": (2, p, D)})
        assert res.ok, res.to_json()
