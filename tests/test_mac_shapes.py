"""The default shapes MACs are counted at follow from the graph (issue 14): a dynamic model whose position
table or patch layout cannot run at the representative 224 / 128 is counted at the largest sizes shape
evaluation shows it runs at, the report says why, and the independent counter (ONNX Runtime) runs there
and agrees."""

from __future__ import annotations

import numpy as np
import onnx

import spa
from spa.analysis.cost import shape_refusals
from spa.analysis.metrics import refusals_at
from spa.api import load, macs
from spa.runtime.feeds import graph_of, runnable_shapes
from spa.runtime.session import session
from tests import import_fixtures as fx
from tests.macs_reference import independent_macs
from tests.oracle import GraphBuilder


def tiny_vit(patch: int = 16, tokens: int = 16, dim: int = 8) -> onnx.ModelProto:
    """A patch embedding (stride ``patch``) over a dynamic image plus a ``[1, tokens, dim]`` position table:
    only ``(H/p)(W/p) = tokens`` runs (64×64 for 16 tokens of 16×16 patches)."""
    b = GraphBuilder(opset=13)
    x = b.input("pixel_values", [1, 3, "H", "W"])
    y = b.op("Conv", [x, b.weight(dim, 3, patch, patch)], strides=[patch, patch])
    flat = b.op("Transpose", [b.op("Reshape", [y, b.const(np.array([1, dim, -1], np.int64))])], perm=[0, 2, 1])
    h = b.op("Add", [flat, b.weight(1, tokens, dim)])
    b.output(str(b.op("MatMul", [h, b.weight(dim, dim)])))
    return b.build()


def tiny_text(positions: int = 48, vocab: int = 1000, dim: int = 8) -> onnx.ModelProto:
    """Word embeddings (``vocab`` rows) plus position embeddings ``Gather(table[positions, dim], Range(S))``."""
    b = GraphBuilder(opset=13)
    ids = b.input("input_ids", [1, "S"], onnx.TensorProto.INT64)
    n = b.op("Gather", [b.op("Shape", [ids]), b.const(np.array(1, np.int64))], axis=0)
    pos = b.op("Range", [b.const(np.array(0, np.int64)), n, b.const(np.array(1, np.int64))])
    h = b.op("Add", [b.op("Gather", [b.weight(vocab, dim), ids]), b.op("Gather", [b.weight(positions, dim), pos])])
    b.output(str(b.op("MatMul", [h, b.weight(dim, dim)])))
    return b.build()


def test_vit_position_table_fixes_the_image_size() -> None:
    m = tiny_vit()
    mg = load(m)
    refused = refusals_at(mg, {"pixel_values": (1, 3, 224, 224)})
    assert refused and "Add" in refused[0]
    r = macs(m)
    assert r["mac_shapes"] == {"pixel_values": [1, 3, 64, 64]}
    assert "224/128 cannot run" in str(r["mac_shapes_from"]) and "image height/width 64" in str(r["mac_shapes_from"])
    assert r["macs"] == independent_macs(m, r["mac_shapes"])  # type: ignore[arg-type]


def test_a_vit_exported_at_384_is_counted_at_384() -> None:
    """24×24 patches of 16: only 384×384 runs (the ladder tries smaller sizes, then larger)."""
    m = tiny_vit(tokens=576)
    r = macs(m)
    assert r["mac_shapes"] == {"pixel_values": [1, 3, 384, 384]}
    assert r["macs"] == independent_macs(m, r["mac_shapes"])  # type: ignore[arg-type]


def test_position_table_bounds_the_sequence() -> None:
    m = tiny_text(positions=48)
    r = macs(m)
    assert r["mac_shapes"] == {"input_ids": [1, 32]}  # 128 and 64 read past the 48 positions
    assert "table of 48 rows" in str(r["mac_shapes_from"])
    assert r["macs"] == independent_macs(m, r["mac_shapes"])  # type: ignore[arg-type]


def test_a_large_table_keeps_the_representative_default() -> None:
    m = tiny_text(positions=512)
    r = macs(m)
    assert r["mac_shapes"] == {"input_ids": [1, 128]}
    assert str(r["mac_shapes_from"]).startswith("representative default") and "cannot run" not in str(
        r["mac_shapes_from"])


def test_reshape_that_cannot_take_its_input_is_refused() -> None:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, "N", 6])
    b.output(str(b.op("Reshape", [x, b.const(np.array([1, 4, -1], np.int64))])))
    mg = load(b.build())
    assert refusals_at(mg, {"x": (1, 2, 6)}) == []  # 12 elements: [1, 4, 3]
    refused = refusals_at(mg, {"x": (1, 5, 6)})  # 30 elements are no [1, 4, k]
    assert any("cannot view (1, 5, 6) as (1, 4, -1)" in r for r in refused)
    assert shape_refusals(mg) != []  # the graph's own dynamic N counts as 1: 6 elements


def test_prune_report_counts_at_the_derived_shapes() -> None:
    r = spa.prune(tiny_vit(dim=16), ratio=0.5)
    assert r.report["mac_shapes"] == {"pixel_values": [1, 3, 64, 64]}
    assert int(r.report["macs_before"]) == independent_macs(tiny_vit(dim=16), {"pixel_values": [1, 3, 64, 64]})  # type: ignore[call-overload]


def _pruned_fraction(shapes: dict[str, tuple[int, ...]] | None) -> tuple[float, dict[str, list[int]]]:
    m = fx.dynamic_sequence_attention()
    r = spa.prune(m, target_macs=0.5, **({"shapes": shapes} if shapes else {}))
    at = {k: list(v) for k, v in r.report["mac_shapes"].items()}  # type: ignore[attr-defined]
    return independent_macs(r.model, at) / independent_macs(m, at), at


def test_target_macs_counts_at_the_reported_shapes() -> None:
    """A dynamic-sequence attention block: budgeted at S = 1 its ``S²`` products were free and
    ``--target-macs 0.5`` left 0.626 of the MACs at the reported S = 128; now ≤ 0.5 at the shapes reported."""
    fraction, at = _pruned_fraction(None)
    assert at == {"x": [1, 128, 16]}
    assert fraction <= 0.5 + 0.005
    fraction, at = _pruned_fraction({"x": (1, 48, 16)})  # --shape: the budget follows it too
    assert at == {"x": [1, 48, 16]} and fraction <= 0.5 + 0.005


def test_runnable_shapes_rule_out_sizes_from_the_graph_before_running() -> None:
    """A text detector adds a ×32 downsampled-then-upsampled map to its input's: 8×8 cannot run. Without
    the graph, ONNX Runtime is run at 8 (refused) then 32; with it, 8 is ruled out by shape evaluation and
    the one run is at 32."""
    m = fx.text_detector()
    runs: list[tuple[int, ...]] = []
    sess = session(m)
    real = sess.run

    def counting(names, feeds, *args):  # type: ignore[no-untyped-def]
        runs.append(feeds["x"].shape)
        return real(names, feeds, *args)

    sess.run = counting  # type: ignore[method-assign]
    assert runnable_shapes(sess)["x"] == (2, 3, 32, 32)
    assert runs == [(2, 3, 8, 8), (2, 3, 32, 32)]
    runs.clear()
    assert runnable_shapes(sess, graph=lambda: graph_of(m))["x"] == (2, 3, 32, 32)
    assert runs == [(2, 3, 32, 32)]
