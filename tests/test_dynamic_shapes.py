"""Shapes ONNX inference loses on computed size vectors, and the pruning that needs them.

* :class:`spa.graph.symbolic.ShapeVectors` evaluates shape arithmetic symbolically (ints, symbols,
  unknowns) — ``Where(Equal(s, -1), 1, s)``, ConstantOfShape, arithmetic, (Un)Squeeze, Cast, Expand
  and Tile of vectors;
* :func:`spa.graph.shapes.complete_shapes` fills the outputs of Expand / Tile / Slice whose shape,
  repeats or ends are computed, and proves ``cos[:seq]`` has ``seq`` rows only where a broadcast
  forces it;
* the Tile rule treats provably constant computed repeats as constants and blocks the rest.

Every pruning case goes through the mask oracle at two opsets; the legacy-style GQA attention also at
two sequence lengths.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import spa
from spa.analysis.metrics import representative_shapes
from spa.graph.model import infer_shapes
from spa.graph.normalize import normalize
from spa.graph.symbolic import shape_vector
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _group, _i64, _row, _unsqueeze

OPSETS = [11, 17]
D, H, KV, DH, ROWS = 16, 4, 2, 4, 8  # hidden, query heads, KV heads, head_dim, RoPE/mask table rows


def _gather(b: GraphBuilder, shape: str, k: int) -> str:
    """``Unsqueeze(Gather(shape, k))``: one entry of a shape vector as a 1-vector (legacy exporter)."""
    return _unsqueeze(b, b.op("Gather", [shape, b.const(np.array(k, np.int64), "idx")], axis=0), [0])  # type: ignore[arg-type]


def _slice_rows(b: GraphBuilder, table: str, end: str, axis: int = 0) -> str:
    """``table[:end]`` along ``axis`` with a computed ``end`` (a 1-vector)."""
    return b.op("Slice", [table, _i64(b, [0], "starts"), end, _i64(b, [axis], "axes"),  # type: ignore[return-value]
                          _i64(b, [1], "steps")])


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    infer_shapes(m)
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else
                            (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None)
                            for d in vi.type.tensor_type.shape.dim]
    return out


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


# -- symbolic evaluation of shape vectors -----------------------------------------------------------------
def _vector(build, opset: int = 17) -> list[int | str | None] | None:  # type: ignore[no-untyped-def]
    """Build ``y = build(b, Shape(x))`` for x: [B, 2, T, 8] and evaluate ``y`` on the unfolded graph."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", 2, "T", 8])
    y = b.op("Cast", [build(b, b.op("Shape", [x]))], to=onnx.TensorProto.INT64)
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.INT64, None))  # type: ignore[arg-type]
    mg = normalize(b.build(), fold=False)
    return shape_vector(mg.tensors()[y])  # type: ignore[index]


VECTOR_CASES = {
    "shape": (lambda b, s: s, ["B", 2, "T", 8]),
    "where_equal_minus_one": (lambda b, s: b.op("Where", [b.op("Equal", [s, _i64(b, [-1] * 4)]),
                                                          _i64(b, [1] * 4), s]), ["B", 2, "T", 8]),
    "equal_unknown": (lambda b, s: b.op("Where", [b.op("Equal", [s, _i64(b, [3] * 4)]), _i64(b, [1] * 4), s]),
                      [None, 2, None, 8]),  # B == 3 is not decidable: never guessed
    "constant_of_shape": (lambda b, s: b.op("ConstantOfShape", [b.op("Shape", [s])],  # type: ignore[list-item]
                                            value=helper.make_tensor("v", onnx.TensorProto.INT64, [1], [1])),
                          [1, 1, 1, 1]),
    "mul_add": (lambda b, s: b.op("Add", [b.op("Mul", [s, _i64(b, [1, 2, 1, 0])]), _i64(b, [0, 1, 0, 3])]),  # type: ignore[list-item]
                ["B", 5, "T", 3]),
    "sub_cancels": (lambda b, s: b.op("Sub", [s, s]), [0, 0, 0, 0]),
    "div": (lambda b, s: b.op("Div", [s, _i64(b, [1, 2, 1, 3])]), ["B", 1, "T", 2]),
    "gather_squeeze_unsqueeze": (lambda b, s: _unsqueeze(b, b.op("Squeeze", [_gather(b, s, 2), _i64(b, [0])]), [0]),  # type: ignore[list-item]
                                 ["T"]),
    "concat_cast": (lambda b, s: b.op("Cast", [b.op("Concat", [_gather(b, s, 3), _gather(b, s, 0)], axis=0)],  # type: ignore[list-item]
                                      to=onnx.TensorProto.INT32), [8, "B"]),
    "expand_tile": (lambda b, s: b.op("Concat", [b.op("Expand", [_gather(b, s, 1), _i64(b, [3])]),  # type: ignore[list-item]
                                                 b.op("Tile", [_gather(b, s, 2), _i64(b, [2])])], axis=0),  # type: ignore[list-item]
                    [2, 2, 2, "T", "T"]),
    "slice": (lambda b, s: b.op("Slice", [s, _i64(b, [1]), _i64(b, [-1]), _i64(b, [0])]), [2, "T"]),
}


@pytest.mark.parametrize("case", sorted(VECTOR_CASES))
def test_shape_vectors_are_evaluated_symbolically(case: str) -> None:
    build, expect = VECTOR_CASES[case]
    assert _vector(build) == expect


# -- completing shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_expand_with_where_equal_shape(opset: int) -> None:
    """Legacy ``repeat_kv``: ``Expand(x, Where(Equal(s, -1), 1, s))`` with ``s`` from Shape pieces."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", KV, 1, "T", DH])
    shape = b.op("Shape", [x])
    s = b.op("Reshape", [b.op("Concat", [_gather(b, shape, 0), _i64(b, [KV, 2]), _gather(b, shape, 3),  # type: ignore[list-item]
                                         _i64(b, [DH])], axis=0), _i64(b, [-1])])
    ones = b.op("ConstantOfShape", [b.op("Shape", [s])],  # type: ignore[list-item]
                value=helper.make_tensor("v", onnx.TensorProto.INT64, [1], [1]))
    y = b.op("Expand", [x, b.op("Where", [b.op("Equal", [s, _i64(b, [-1] * 5)]), ones, s])])  # type: ignore[list-item]
    b.outputs.append(helper.make_tensor_value_info(b.op("Relu", [y]), onnx.TensorProto.FLOAT, None))  # type: ignore[arg-type]
    assert _shapes(b.build())[y] == ["B", KV, 2, "T", DH]


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_with_computed_repeats(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", 4, D])
    cls = b.weight(1, 1, D)
    y = b.op("Tile", [cls, b.op("Concat", [_gather(b, b.op("Shape", [x]), 0), _i64(b, [1, 1])], axis=0)])  # type: ignore[arg-type]
    b.outputs.append(helper.make_tensor_value_info(b.op("Relu", [y]), onnx.TensorProto.FLOAT, None))  # type: ignore[arg-type]
    assert _shapes(b.build())[y] == ["B", 1, D]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("rows", "consumer", "expect"), [
    (ROWS, "Mul", "T"),  # broadcast against x's T: every successful run has T <= ROWS
    (ROWS, "Relu", f"min(T,{ROWS})"),  # nothing proves T <= ROWS: the row count stays min(T, ROWS)
    (1, "Mul", None),  # min(T, 1) broadcasts against T for any T: nothing to learn
])
def test_slice_with_computed_end(opset: int, rows: int, consumer: str, expect: str | None) -> None:
    """``cos[:seq]`` with ``seq = Shape(x)[1]``: the row count is ``T`` only where a broadcast proves it."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["B", "T", DH])
    table = b.weight(rows, DH)
    cos = _slice_rows(b, table, _gather(b, b.op("Shape", [x]), 1))
    y = b.op("Mul", [x, cos]) if consumer == "Mul" else b.op("Relu", [cos])
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None))  # type: ignore[arg-type]
    assert _shapes(b.build())[cos] == [expect, DH]


# -- pruning through them ---------------------------------------------------------------------------------
def _legacy_gqa(opset: int, layers: int = 1) -> tuple[onnx.ModelProto, list[dict[str, str]]]:
    """Residual GQA attention layers as the legacy exporter writes them with dynamic batch and sequence.

    Head Reshapes with computed targets, RoPE tables sliced ``cos[:T]`` with a computed end, a causal
    mask table sliced on both axes, and ``repeat_kv`` as ``Expand(k, Where(Equal(s, -1), 1, s))``; every
    layer reads the sizes from its own input, so each layer's shapes hang on the layer before.
    """
    b = GraphBuilder(opset=opset)
    h = b.input("x", ["B", "T", D])
    cos_table = b.const(np.cos(np.arange(ROWS * DH).reshape(ROWS, DH)).astype(np.float32), "cos")
    sin_table = b.const(np.sin(np.arange(ROWS * DH).reshape(ROWS, DH)).astype(np.float32), "sin")
    causal = b.const(np.triu(np.ones((ROWS, ROWS), bool), 1), "mask")
    ws = []
    for _ in range(layers):
        x = h
        w = {"q": b.weight(D, H * DH), "k": b.weight(D, KV * DH), "v": b.weight(D, KV * DH),
             "o": b.weight(H * DH, D)}
        ws.append(w)
        shape = b.op("Shape", [x])
        bt = [_gather(b, shape, 0), _gather(b, shape, 1)]  # type: ignore[arg-type]
        t = _gather(b, shape, 1)  # type: ignore[arg-type]
        cos, sin = _slice_rows(b, cos_table, t), _slice_rows(b, sin_table, t)

        def heads(name: str, n: int) -> str:
            r = b.op("Reshape", [b.op("MatMul", [x, w[name]]),  # noqa: B023 - called inside this iteration
                                 b.op("Concat", bt + [_i64(b, [n, DH])], axis=0)])  # type: ignore[list-item] # noqa: B023
            return b.op("Transpose", [r], perm=[0, 2, 1, 3])  # type: ignore[return-value]

        def rope(q: str) -> str:
            half = [b.op("Slice", [q, _i64(b, [s]), _i64(b, [e]), _i64(b, [3])])
                    for s, e in ((0, DH // 2), (DH // 2, DH))]
            rot = b.op("Concat", [b.op("Neg", [half[1]]), half[0]], axis=3)  # type: ignore[list-item]
            return b.op("Add", [b.op("Mul", [q, cos]), b.op("Mul", [rot, sin])])  # type: ignore[list-item,return-value] # noqa: B023

        def repeat_kv(kv: str) -> str:
            hs = b.op("Shape", [kv])
            s = b.op("Reshape", [b.op("Concat", [_gather(b, hs, 0), _i64(b, [KV, H // KV]), _gather(b, hs, 2),  # type: ignore[arg-type,list-item]
                                                 _i64(b, [DH])], axis=0), _i64(b, [-1])])
            e = b.op("Expand", [_unsqueeze(b, kv, [2]), b.op("Where", [b.op("Equal", [s, _i64(b, [-1] * 5)]),  # type: ignore[list-item]
                                                                     _i64(b, [1] * 5), s])])
            target = b.op("Concat", [_gather(b, hs, 0), _i64(b, [H]), _gather(b, hs, 2), _i64(b, [DH])], axis=0)  # type: ignore[arg-type,list-item]
            return b.op("Reshape", [e, target])  # type: ignore[list-item,return-value]

        q, k, v = rope(heads("q", H)), repeat_kv(rope(heads("k", KV))), repeat_kv(heads("v", KV))
        scores = b.op("Div", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),  # type: ignore[list-item]
                              b.const(np.array(np.sqrt(DH), np.float32), "scale")])
        mask = _slice_rows(b, _slice_rows(b, causal, t, 0), t, 1)
        scores = b.op("Where", [mask, b.const(np.array(-1e9, np.float32), "neg"), scores])  # type: ignore[list-item]
        o = b.op("Transpose", [b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])], perm=[0, 2, 1, 3])  # type: ignore[list-item]
        flat = b.op("Reshape", [o, b.op("Concat", bt + [_i64(b, [H * DH])], axis=0)])  # type: ignore[list-item]
        h = b.op("Add", [x, b.op("MatMul", [flat, w["o"]])])  # type: ignore[assignment,list-item]
    b.outputs.append(helper.make_tensor_value_info(h, onnx.TensorProto.FLOAT, ["B", "T", D]))
    return b.build(), ws


@pytest.mark.parametrize("opset", OPSETS)
def test_legacy_gqa_with_dynamic_sequence_prunes_heads(opset: int) -> None:
    model, (w,) = _legacy_gqa(opset)
    a = spa.analyze(model)
    g = _group(a, w["q"], 1)
    assert g.prunable and g.channels == KV, g.reasons
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert after[w["q"]].shape == (D, H // 2 * DH) and after[w["k"]].shape == (D, DH)
    assert after[w["o"]].shape == (H // 2 * DH, D)
    for n in r.model.graph.node:
        if n.op_type == "Expand":  # the computed repeat_kv shapes are now constants for the kept KV head
            assert after[n.input[1]].tolist() == [1, KV // 2, H // KV, 1, DH]
    for shape in ((1, 3, D), (3, 7, D)):  # the oracle at other batch sizes and sequence lengths
        res = spa.verify(r.model, r.masked, shapes={"x": shape})  # type: ignore[arg-type]
        assert res.ok, res.to_json()
        import onnxruntime as ort

        sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"x": np.zeros(shape, np.float32)})[0].shape == shape


def test_deep_legacy_gqa_prunes_every_layer() -> None:
    """Twelve layers, each reading its sizes from its own input: every layer's heads prune."""
    layers = 12
    model, ws = _legacy_gqa(17, layers)
    a = spa.analyze(model)
    for w in ws:
        g = _group(a, w["q"], 1)
        assert g.prunable and g.channels == KV, g.reasons
    r = assert_oracle(model, 0.5)
    after = _inits(r.model)
    assert all(after[w["q"]].shape == (D, H // 2 * DH) for w in ws)
    res = spa.verify(r.model, r.masked, shapes={"x": (2, 5, D)})  # type: ignore[arg-type]
    assert res.ok, res.to_json()


def _tile_map(b: GraphBuilder, reps) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A one-channel map of a dynamic-batch conv net tiled over the 8 channels with ``reps(b, m)``."""
    x = b.input("x", ["N", 3, 6, 6])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    w = b.nodes[-2].input[1]
    m = b.op("Sigmoid", [b.conv(h, 8, 1)])  # type: ignore[arg-type]
    t = b.op("Tile", [m, reps(b, m)])  # type: ignore[arg-type]
    y = b.conv(b.op("Mul", [h, t]), 8, 2, k=1)  # type: ignore[arg-type]
    b.outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["N", 2, 6, 6]))
    return w, t


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_repeats_proven_constant(opset: int) -> None:
    """Repeats ``Where(Equal(Shape(m), -1), 1, [1, 8, 1, 1])``: computed (Shape of a dynamic batch) but
    provably constant, so the tiled axis is free and the repeats become the constant ``[1, 4, 1, 1]``."""
    b = GraphBuilder(opset=opset)
    w, _ = _tile_map(b, lambda b, m: b.op("Where", [b.op("Equal", [b.op("Shape", [m]), _i64(b, [-1] * 4)]),
                                                   _i64(b, [1] * 4), _i64(b, [1, 8, 1, 1])]))
    model = b.build()
    assert _group(spa.analyze(model), w, 0).prunable
    r = assert_oracle(model)
    assert _row(r, w)["channels_after"] == 4
    tile = next(n for n in r.model.graph.node if n.op_type == "Tile")
    assert _inits(r.model)[tile.input[1]].tolist() == [1, 4, 1, 1]


@pytest.mark.parametrize("opset", OPSETS)
def test_tile_repeats_not_provable_block_with_a_reason(opset: int) -> None:
    """Repeats ``Shape(m) / Shape(m) * [1, 8, 1, 1]``: ``N / N`` is not provably 1 (N could be 0), so the
    repeats cannot be rewritten: the tiled channels are blocked, with the Tile named in the reason."""
    b = GraphBuilder(opset=opset)
    w, _ = _tile_map(b, lambda b, m: b.op("Mul", [b.op("Div", [b.op("Shape", [m]), b.op("Shape", [m])]),
                                                 _i64(b, [1, 8, 1, 1])]))
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    assert any("Tile" in reason for reason in g.reasons), g.reasons
    assert_oracle(model, expect_pruned=False)


def test_dynamic_channel_axis_of_an_image_input_is_the_convs() -> None:
    """optimum declares ``pixel_values`` as ``[batch, num_channels, height, width]``, all dynamic: the channel
    axis is counted at the first Conv's input channels (3), not the sequence default (128)."""
    b = GraphBuilder(opset=17)
    x = b.input("pixel_values", ["batch", "num_channels", "height", "width"])
    b.output(b.conv(x, 3, 4))
    m = b.build()
    assert representative_shapes(normalize(m))["pixel_values"] == (1, 3, 224, 224)


@pytest.mark.parametrize("opset", [13, 17])
def test_probing_never_reads_a_downsampled_dynamic_size_as_a_constant(opset: int) -> None:
    """A stride-4 patch embedding maps 13 and 14 both to 3: the probes must not make width/4 a constant 3
    (a pruned optimum ConvNeXt-V2 then declared ``[batch, ?, 3, C]`` and ONNX Runtime refused to run it)."""
    b = GraphBuilder(opset=opset)
    x = b.input("pixel_values", ["batch", "num_channels", "height", "width"])
    h = b.op("Relu", [b.conv(x, 3, 8, k=4, stride=4)])
    h = b.op("Transpose", [h], perm=[0, 2, 3, 1])  # channels last, as HF ConvNeXt's GRN
    h = b.op("MatMul", [h, b.weight(8, 16)])  # type: ignore[list-item]
    b.output(b.op("MatMul", [b.op("Relu", [h]), b.weight(16, 4)]))  # type: ignore[arg-type, list-item]
    m = b.build()
    mg = spa.load(m)
    spa.analyze(mg)
    for t in mg.graph.tensors().values():
        shape = getattr(t, "shape", None)
        if t.name != "pixel_values" and shape is not None and len(shape) == 4 and not hasattr(t, "values"):
            assert 3 not in list(shape)[1:3], (t.name, shape)
    r = spa.prune(m, ratio=0.5, emit_masked=True)
    assert r.report["mac_shapes"]["pixel_values"] == [1, 3, 224, 224]  # type: ignore[index]
    for hw in (64, 96):
        assert spa.verify(r.model, r.masked, shapes={"pixel_values": (1, 3, hw, hw)}).ok  # type: ignore[arg-type]
