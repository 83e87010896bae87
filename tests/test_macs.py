"""spa's MAC count (:mod:`spa.analysis.cost`) against an independent count from real runtime shapes.

The independent counter runs the model in ONNX Runtime with every intermediate tensor exposed as an
output (so the shapes are those of an actual run, not of shape inference) and applies its own simple
formulas: Conv ``numel(y)·Πw.shape[1:]``, ConvTranspose ``numel(x)·Πw.shape[1:]``, Gemm/MatMul
``numel(y)·K``, Einsum ``Π`` of the distinct index sizes. spa must agree within 1 % on every zoo model
(both exporters), the exporter fixtures, the demo CNN and small inline graphs — at static shapes and, for
dynamic ones, at the same concrete shapes (:func:`spa.analysis.metrics.set_input_shapes`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.analysis.cost import count_macs
from spa.analysis.metrics import set_input_shapes
from tests.macs_reference import independent_macs

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*.onnx")) + [ROOT / "models" / "demo_cnn.onnx"]
EXPORTERS = ["legacy", "dynamo"]


def _close(spa_count: int, reference: int) -> None:
    assert reference > 0
    assert abs(spa_count - reference) <= 0.01 * reference, (spa_count, reference)


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a symbolic batch ``N`` on every input and output, inferred shapes forgotten."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in [v for v in m.graph.input if v.name not in inits] + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del m.graph.value_info[:]
    return m


def _input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    return {vi.name: [batch] + [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim][1:]
            for vi in model.graph.input if vi.name not in inits}


# -- zoo, fixtures ------------------------------------------------------------------------------------------

def _zoo_names() -> list[str]:
    try:
        from models.registry import TINY_MODELS
    except ImportError:  # no torch
        return []
    return sorted(TINY_MODELS)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_macs_match_runtime_shapes(zoo_export, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = zoo_export(name, exporter)
    model = onnx.load(str(path))
    _close(count_macs(spa.load(str(path))), independent_macs(model))
    dyn = _dynamic_batch(model)  # the same graph with a symbolic batch, counted at batch 1
    _close(count_macs(set_input_shapes(spa.load(dyn), _input_shapes(model, 1))), independent_macs(model))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_macs_match_runtime_shapes(path: Path) -> None:
    model = onnx.load(str(path))
    _close(count_macs(spa.load(str(path))), independent_macs(model))  # dynamic dims: 1 on both sides
    for batch in (1, 3):
        shapes = _input_shapes(model, batch)
        try:
            reference = independent_macs(model, shapes)
        except Exception:  # noqa: BLE001 - a graph with its batch baked in: only batch 1 runs
            continue
        _close(count_macs(set_input_shapes(spa.load(str(path)), shapes)), reference)


# -- inline graphs ------------------------------------------------------------------------------------------

def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int | str]]], output: str,
           inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _w(*shape: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape)


def _attention() -> onnx.ModelProto:
    """Q·Kᵀ and scores·V of two activations (2 heads of 8 over 6 tokens, hidden 16)."""
    shape = np.asarray([1, 6, 2, 8], np.int64)
    nodes = [helper.make_node("MatMul", ["x", w], [o]) for w, o in (("wq", "q0"), ("wk", "k0"), ("wv", "v0"))]
    for t in ("q", "k", "v"):
        nodes += [helper.make_node("Reshape", [f"{t}0", "shape"], [f"{t}1"]),
                  helper.make_node("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["q2", "k2"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v2"], ["c"]),
              helper.make_node("Transpose", ["c"], ["c1"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["c1", "back"], ["c2"]), helper.make_node("MatMul", ["c2", "wo"], ["y"])]
    return _model(nodes, [("x", [1, 6, 16])], "y", {"wq": _w(16, 16), "wk": _w(16, 16), "wv": _w(16, 16),
                                                   "wo": _w(16, 16), "shape": shape, "back": np.asarray([1, 6, 16])})


def _fix_int(m: onnx.ModelProto) -> onnx.ModelProto:
    for i in m.graph.initializer:
        if i.name in ("shape", "back"):
            i.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(i).astype(np.int64), i.name))
    return m


INLINE = {
    "attention": lambda: _fix_int(_attention()),
    "einsum": lambda: _model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="bhqd,bhkd->bhqk")],
                             [("a", [2, 3, 5, 4]), ("b", [2, 3, 7, 4])], "y", {}),
    "einsum_ellipsis": lambda: _model([helper.make_node("Einsum", ["a", "w"], ["y"], equation="...i,ij->...j")],
                                      [("a", [2, 5, 4])], "y", {"w": _w(4, 6)}),
    "grouped_conv": lambda: _model([helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])],
                                   [("x", [1, 8, 9, 9])], "y", {"w": _w(12, 2, 3, 3)}),
    "depthwise_conv": lambda: _model([helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2])],
                                     [("x", [2, 8, 9, 9])], "y", {"w": _w(8, 1, 3, 3)}),
    "conv_transpose_groups": lambda: _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])],
        [("x", [1, 4, 5, 5])], "y", {"w": _w(4, 3, 3, 3)}),
    "gemm_trans": lambda: _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1)],
                                 [("a", [7, 3])], "y", {"b": _w(5, 7), "c": _w(5)}),
    "batched_matmul": lambda: _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                                     [("a", [2, 1, 4, 6]), ("b", [3, 6, 5])], "y", {}),
    "matmul_vector": lambda: _model([helper.make_node("MatMul", ["a", "w"], ["y"])], [("a", [6])], "y",
                                    {"w": _w(6, 4)}),
}


@pytest.mark.parametrize("name", sorted(INLINE))
def test_inline_macs_match_runtime_shapes(name: str) -> None:
    model = INLINE[name]()
    _close(count_macs(spa.load(model)), independent_macs(model))
    dyn = _dynamic_batch(model)
    shapes = _input_shapes(model, 1) | dict(_input_shapes(model, 1).items())
    for vi in model.graph.input:  # the static shapes, given again to the symbolic-batch graph
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    _close(count_macs(set_input_shapes(spa.load(dyn), shapes)), independent_macs(model))


def test_exact_formulas() -> None:
    """The closed forms of the rules' docstrings on the inline graphs."""
    def macs(name: str) -> int:
        return count_macs(spa.load(INLINE[name]()))

    assert macs("grouped_conv") == 1 * 12 * 9 * 9 * 2 * 9           # N·M·ΠHout·(C/g)·Πk
    assert macs("conv_transpose_groups") == 1 * 4 * 5 * 5 * 3 * 9   # N·C·ΠHin·(M/g)·Πk
    assert macs("gemm_trans") == 3 * 5 * 7                          # M·N·K
    assert macs("einsum") == 2 * 3 * 5 * 7 * 4                      # Π distinct indices
    assert macs("batched_matmul") == 3 * 2 * 4 * 5 * 6              # broadcast batch · M·N·K
    assert macs("attention") == 4 * 6 * 16 * 16 + 2 * (2 * 6 * 6 * 8)  # 4 projections + q·kᵀ + p·v


# -- a Conv over an input-independent value (timm EdgeNeXt's positional encoding) -------------------------

def _shape_derived_conv(static: bool) -> onnx.ModelProto:
    """``y = Conv(x) + Conv(ConstantOfShape(Shape(x)))``: the second Conv reads a value computed from the
    input's *shape* only — with static shapes a constant, folded at load (by spa and by ONNX Runtime), as
    EdgeNeXt's ``pos_embd.token_projection`` Conv over its sine encoding of the static feature-map size."""
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Conv", ["ones", "w2"], ["pos"], name="pos_conv"),
             helper.make_node("Conv", ["x", "w1"], ["h"], name="conv"),
             helper.make_node("Add", ["h", "pos"], ["y"])]
    shape: list[int | str] = [1, 4, 8, 8] if static else [1, 4, "H", "W"]
    g = helper.make_graph(nodes, "pos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_input_independent_conv_costs_nothing_when_folded() -> None:
    """Static shapes: the positional Conv is a constant, run once at load — spa counts what runs per
    inference, as ONNX Runtime runs it (the folded reference); the unfolded count is twice that. Dynamic
    shapes: nothing folds and both Convs count."""
    m = _shape_derived_conv(static=True)
    per_conv = 8 * 8 * 4 * 4
    assert independent_macs(m) == 2 * per_conv
    assert independent_macs(m, folded=True) == per_conv
    assert spa.api.macs(m)["macs"] == per_conv
    d = _shape_derived_conv(static=False)
    at = {"x": [1, 4, 8, 8]}
    assert spa.api.macs(d, shapes={"x": (1, 4, 8, 8)})["macs"] == independent_macs(d, at, folded=True) == 2 * per_conv
