"""Concat, Split, Slice and Gather on the channel axis: offset maps and rewritten sizes/starts/indices."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import spa
from tests.oracle import GraphBuilder, assert_oracle
from tests.rules.helpers import _conv, _dims, _group, _row

OPSETS = [11, 17]
INT64_MAX = np.iinfo(np.int64).max


def _node(result, op: str):  # type: ignore[no-untyped-def]
    nodes = [n for n in result.model.graph.node if n.op_type == op]
    assert len(nodes) == 1
    return nodes[0]


# --- Concat -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False])
def test_concat_of_two_branches(opset: int, bias: bool) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    left, wl = _conv(b, x, 3, 6, bias=bias)
    right, wr = _conv(b, x, 3, 4, k=1, bias=bias)
    h = b.op("Relu", [b.op("Concat", [left, right], axis=1)])
    y, wy = _conv(b, h, 10, 2, k=1, bias=bias)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    # one group (the Concat output is a single slot) of 6 + 4 channels, still distinct channels
    row = _row(r, wl)
    assert row == _row(r, wr)
    assert row["channels_before"] == 10 and row["channels_after"] in (5, 6)  # 6: a branch kept alive
    dims = _dims(r)
    assert dims[wl][0] + dims[wr][0] == dims[wy][1] == row["channels_after"]
    assert dims[wl][0] >= 1 and dims[wr][0] >= 1


@pytest.mark.parametrize("opset", OPSETS)
def test_concat_with_negative_axis(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    left, _wl = _conv(b, x, 3, 4)
    right, _wr = _conv(b, x, 3, 6)
    h = b.op("Concat", [left, right], axis=-3)
    y, wy = _conv(b, h, 10, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    assert _dims(r)[wy][1] == 5


@pytest.mark.parametrize("opset", OPSETS)
def test_cascaded_concats(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    a, wa = _conv(b, x, 3, 4)
    c, wc = _conv(b, x, 3, 6)
    d, wd = _conv(b, x, 3, 2, k=1)
    inner = b.op("Concat", [c, d], axis=1)
    outer = b.op("Concat", [a, inner], axis=1)  # [a(4) | c(6) | d(2)]
    y, wy = _conv(b, b.op("Relu", [outer]), 12, 3, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, wa)
    assert row == _row(r, wc) == _row(r, wd)
    assert row["channels_before"] == 12 and 6 <= row["channels_after"] <= 8
    dims = _dims(r)
    assert dims[wa][0] + dims[wc][0] + dims[wd][0] == dims[wy][1] == row["channels_after"]
    assert min(dims[wa][0], dims[wc][0], dims[wd][0]) >= 1


@pytest.mark.parametrize("opset", OPSETS)
def test_same_tensor_concatenated_twice(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 4)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    cat = b.op("Concat", [h, h], axis=1)  # channel i is also channel 4 + i
    y, wy = _conv(b, cat, 8, 3, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_before"] == 4 and row["channels_after"] == 2
    assert f"{wy}[1]" in row["weights"]
    assert _dims(r)[wy][1] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_densenet_growth(opset: int) -> None:
    """Each layer reads the concatenation of all previous feature maps."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    feats, width, growth = [], 0, 4
    h, w0 = _conv(b, x, 3, 6)
    stem = b.op("Relu", [h])
    feats.append(stem)
    width = 6
    layer_weights = []
    for _ in range(3):
        cat = b.op("Concat", feats, axis=1) if len(feats) > 1 else feats[0]
        y, wl = _conv(b, cat, width, growth)  # type: ignore[arg-type]
        layer_weights.append(wl)
        feats.append(b.op("Relu", [y]))
        width += growth
    head, wh = _conv(b, b.op("Concat", feats, axis=1), width, 2, k=1)  # type: ignore[arg-type]
    b.output(head)
    r = assert_oracle(b.build())
    row = _row(r, w0)  # every feature map reaches the head's Concat: one group of 6 + 3*4 channels
    assert all(_row(r, wl) == row for wl in layer_weights)
    assert row["channels_before"] == 18 and row["channels_after"] == 9
    dims = _dims(r)
    # each layer reads exactly the kept channels of every earlier feature map
    kept = [dims[w0][0]] + [dims[wl][0] for wl in layer_weights]
    assert [dims[wl][1] for wl in layer_weights] == [sum(kept[: i + 1]) for i in range(3)]
    assert dims[wh][1] == sum(kept) == 9


@pytest.mark.parametrize("opset", OPSETS)
def test_concat_with_constant_input(opset: int) -> None:
    """A constant concatenated with features: its channels are sliced with the coupled group."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 4)
    k = b.const(b.rng.standard_normal((1, 2, 6, 6)).astype(np.float32), "k")
    cat = b.op("Concat", [h, k], axis=1)
    y, wy = _conv(b, cat, 6, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert f"{k}[1]" in row["weights"]
    assert row["channels_before"] == 6 and row["channels_after"] in (3, 4)
    dims = _dims(r)
    assert dims[w][0] + dims[k][1] == dims[wy][1] == row["channels_after"]
    assert dims[k][1] >= 1


# --- Split --------------------------------------------------------------------------------------------
def _split(b: GraphBuilder, x: str, sizes: list[int] | None, n: int, form: str) -> list[str]:
    """Split on axis 1: ``form`` is "attr" (opset < 13), "input" (>= 13), "num_outputs" (>= 18) or "equal"."""
    if form == "attr":
        return b.op("Split", [x], n_out=n, axis=1, split=sizes)  # type: ignore[return-value]
    if form == "input":
        sizes_in = b.const(np.array(sizes, np.int64), "split")
        return b.op("Split", [x, sizes_in], n_out=n, axis=1)  # type: ignore[return-value]
    if form == "num_outputs":
        return b.op("Split", [x], n_out=n, axis=1, num_outputs=n)  # type: ignore[return-value]
    return b.op("Split", [x], n_out=n, axis=1)  # type: ignore[return-value]


SPLIT_CASES = [
    (11, "attr", [4, 4]), (11, "attr", [2, 6]), (11, "equal", None),
    (13, "input", [4, 4]), (13, "input", [6, 2]), (13, "equal", None),
    (18, "input", [3, 5]), (18, "num_outputs", None),
]


@pytest.mark.parametrize(("opset", "form", "sizes"), SPLIT_CASES)
def test_split_into_two_heads(opset: int, form: str, sizes: list[int] | None) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    parts = _split(b, b.op("Relu", [h]), sizes, 2, form)  # type: ignore[arg-type]
    sizes = sizes or [4, 4]
    ya, wa = _conv(b, parts[0], sizes[0], 2, k=1)
    yb, wb = _conv(b, parts[1], sizes[1], 2, k=1)
    b.output(b.op("Add", [ya, yb]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    row = _row(r, w)
    assert row["channels_after"] in (4, 5)  # 5: a split output would have lost every channel
    dims = _dims(r)
    kept_a, kept_b = dims[wa][1], dims[wb][1]
    assert kept_a + kept_b == dims[w][0] == row["channels_after"] and kept_a >= 1 and kept_b >= 1
    split = _node(r, "Split")
    attr = {a.name: a for a in split.attribute}
    if form == "attr":
        assert list(attr["split"].ints) == [kept_a, kept_b]
    elif len(split.input) > 1:
        value = {i.name: i for i in r.model.graph.initializer}[split.input[1]]
        assert numpy_helper.to_array(value).tolist() == [kept_a, kept_b]
    if kept_a != kept_b:  # an implicit equal split must have become explicit
        assert "num_outputs" not in attr and (opset < 13 or len(split.input) > 1)


@pytest.mark.parametrize(("opset", "form"), [(11, "attr"), (13, "input"), (18, "num_outputs")])
def test_split_into_three_unequal(opset: int, form: str) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 9)
    sizes = [2, 3, 4] if form != "num_outputs" else None
    parts = _split(b, h, sizes, 3, form)
    sizes = sizes or [3, 3, 3]
    ys, ws = [], []
    for p, s in zip(parts, sizes):
        y, wp = _conv(b, p, s, 2, k=1)
        ys.append(y)
        ws.append(wp)
    b.output(b.op("Sum", ys))  # type: ignore[arg-type]
    r = assert_oracle(b.build(), 0.4)
    dims = _dims(r)
    row = _row(r, w)
    assert row["channels_before"] == 9 and row["channels_after"] in (5, 6, 7)
    assert sum(dims[wp][1] for wp in ws) == dims[w][0] == row["channels_after"]
    assert min(dims[wp][1] for wp in ws) >= 1


# --- Slice --------------------------------------------------------------------------------------------
def _slice(b: GraphBuilder, x: str, starts: int, ends: int, step: int | None = None, axis: int = 1) -> str:
    ins = [x, b.const(np.array([starts], np.int64), "st"), b.const(np.array([ends], np.int64), "en"),
           b.const(np.array([axis], np.int64), "ax")]
    if step is not None:
        ins.append(b.const(np.array([step], np.int64), "sp"))
    return b.op("Slice", ins)  # type: ignore[return-value]


SLICE_CASES = [(2, 6), (0, 5), (-5, -1), (-6, INT64_MAX), (3, INT64_MAX), (-INT64_MAX, 4)]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize(("start", "end"), SLICE_CASES)
def test_slice_channel_range(opset: int, start: int, end: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    s = _slice(b, h, start, end, step=1 if opset == 13 else None)
    n = len(range(8)[slice(max(start, -8), min(end, 8))])
    ys, _ = _conv(b, s, n, 2, k=1)
    yf, wf = _conv(b, h, 8, 2, k=1)  # the full tensor is read too
    b.output(b.op("Add", [ys, yf]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    assert _dims(r)[wf][1] == 4


@pytest.mark.parametrize("opset", [11, 13])
def test_slice_on_spatial_axis_keeps_channels_free(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    s = _slice(b, h, 1, -1, axis=2)
    y, _ = _conv(b, s, 8, 2, k=1)
    b.output(y)
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("step", [2, -1])
def test_slice_with_step_is_blocked(opset: int, step: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w0 = _conv(b, x, 3, 8)
    h, w = _conv(b, b.op("Relu", [h]), 8, 8)  # type: ignore[arg-type]
    s = _slice(b, h, 0 if step > 0 else -1, INT64_MAX if step > 0 else -INT64_MAX, step=step)
    y, _ = _conv(b, s, 4 if step == 2 else 8, 2, k=1)
    b.output(y)
    model = b.build()
    g = _group(spa.analyze(model), w, 0)
    assert not g.prunable
    node = next(n.name for n in model.graph.node if n.op_type == "Slice")
    assert any(node in reason and "step" in reason for reason in g.reasons), g.reasons
    r = assert_oracle(model)  # no crash, and the rest still prunes
    assert _row(r, w0)["channels_after"] == 4
    assert _row(r, w)["channels_after"] == 8


# --- Gather -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("indices", [[0, 2, 5, 7], [7, 1, 3], [-1, 0, 4, 4]])
def test_gather_constant_indices_on_channels(opset: int, indices: list[int]) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    h = b.op("Relu", [h])  # type: ignore[assignment]
    g = b.op("Gather", [h, b.const(np.array(indices, np.int64), "idx")], axis=1)
    yg, _ = _conv(b, g, len(indices), 2, k=1)  # type: ignore[arg-type]
    yf, wf = _conv(b, h, 8, 2, k=1)
    b.output(b.op("Add", [yg, yf]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert _row(r, w)["channels_after"] == 4
    assert _dims(r)[wf][1] == 4


@pytest.mark.parametrize("opset", OPSETS)
def test_gather_scalar_index_on_channels_is_blocked(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    g = b.op("Gather", [h, b.const(np.array(2, np.int64), "idx")], axis=1)  # [1, 6, 6]
    g = b.op("Unsqueeze", [g], axes=[1]) if opset < 13 else b.op(  # type: ignore[assignment]
        "Unsqueeze", [g, b.const(np.array([1], np.int64))])
    y, _ = _conv(b, g, 1, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    grp = _group(spa.analyze(b.build()), w, 0)
    assert not grp.prunable
    assert any("Gather" in reason for reason in grp.reasons), grp.reasons


@pytest.mark.parametrize(("opset", "form"), [(11, "equal"), (13, "equal"), (18, "num_outputs")])
def test_implicit_equal_split_becomes_explicit(opset: int, form: str) -> None:
    """The first half of the channels is tiny, so pruning leaves the halves unequal: sizes must be written."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8, bias=False)
    init = next(i for i in b.inits if i.name == w)
    value = numpy_helper.to_array(init).copy()
    value[:4] *= 1e-3
    init.CopyFrom(numpy_helper.from_array(value, w))
    parts = _split(b, h, None, 2, form)
    ya, wa = _conv(b, parts[0], 4, 2, k=1)
    yb, wb = _conv(b, parts[1], 4, 2, k=1)
    b.output(b.op("Add", [ya, yb]))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    dims = _dims(r)
    assert (dims[wa][1], dims[wb][1]) == (1, 4)  # one channel of the tiny half is kept alive
    split = _node(r, "Split")
    if opset < 13:
        assert [a.ints for a in split.attribute if a.name == "split"] == [[1, 4]]
    else:
        sizes = {i.name: i for i in r.model.graph.initializer}[split.input[1]]
        assert numpy_helper.to_array(sizes).tolist() == [1, 4]
        assert all(a.name != "num_outputs" for a in split.attribute)


@pytest.mark.parametrize("opset", [11, 13])
def test_slice_channel_and_spatial_in_one_node(opset: int) -> None:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    h, w = _conv(b, x, 3, 8)
    ins = [b.op("Relu", [h]), b.const(np.array([1, -5], np.int64), "st"),
           b.const(np.array([7, INT64_MAX], np.int64), "en"), b.const(np.array([-3, 2], np.int64), "ax")]
    s = b.op("Slice", ins)  # channels 1..6, rows 1..5
    y, ws = _conv(b, s, 6, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    r = assert_oracle(b.build())
    kept = _dims(r)[w][0]
    assert _row(r, w)["channels_after"] == kept
    slice_node = _node(r, "Slice")
    inits = {i.name: numpy_helper.to_array(i) for i in r.model.graph.initializer}
    starts, ends = inits[slice_node.input[1]].tolist(), inits[slice_node.input[2]].tolist()
    assert starts[1] == -5 and ends[1] == INT64_MAX  # the spatial slice is untouched
    assert ends[0] - starts[0] == _dims(r)[ws][1]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("implicit_axes", [False, True])
def test_slice_with_computed_end_keeps_other_axes_free(opset: int, implicit_axes: bool) -> None:
    """``table[:, :, :Shape(other)[2]]``: the sliced axis is blocked, the channel axis still prunes."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 3, 6, 6])
    other = b.input("other", [1, 1, "n", 1])
    h, w = _conv(b, x, 3, 8)
    end = b.op("Slice", [b.op("Shape", [other]), b.const(np.asarray([2], np.int64)),
                         b.const(np.asarray([3], np.int64))])
    if implicit_axes:  # starts/ends over every axis up to 3: only the last one is a real cut
        zeros = b.const(np.asarray([0, 0, 0], np.int64))
        ends = b.op("Concat", [b.const(np.asarray([INT64_MAX, INT64_MAX], np.int64)), end], axis=0)
        s = b.op("Slice", [h, zeros, ends])
    else:
        s = b.op("Slice", [h, b.const(np.asarray([0], np.int64)), end, b.const(np.asarray([2], np.int64))])
    y, _ = _conv(b, s, 8, 2, k=1)  # type: ignore[arg-type]
    b.output(y)
    model = b.build()
    a = spa.analyze(model)
    assert _group(a, w, 0).prunable
    r = assert_oracle(model)
    assert _row(r, w)["channels_after"] == 4
