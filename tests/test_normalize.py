"""Loading and normalisation: Constant-node weights, pass-throughs, opsets, dynamic batch, IR version."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import spa
from tests.oracle import GraphBuilder, assert_oracle


def _conv_chain(opset: int, batch: int | str = 1) -> GraphBuilder:
    b = GraphBuilder(opset=opset)
    x = b.input("x", [batch, 3, 6, 6])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    b.output(b.conv(h, 8, 4))  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize("opset", [11, 13, 15, 17, 19, 21, 23])
def test_opsets_from_11_to_newest(opset: int) -> None:
    assert_oracle(_conv_chain(opset).build())


def test_dynamic_batch_prunes() -> None:
    r = assert_oracle(_conv_chain(13, batch="N").build())
    assert r.report["num_pruned"] == 1


def test_weights_in_constant_nodes_are_pruned_like_initializers() -> None:
    """paddle2onnx stores weights in Constant nodes."""
    m = _conv_chain(13).build()
    nodes = []
    for init in m.graph.initializer:
        nodes.append(helper.make_node("Constant", [], [init.name], value=init))
    del m.graph.initializer[:]
    rest = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + rest)
    onnx.checker.check_model(m)
    r = assert_oracle(m)
    assert not any(n.op_type == "Constant" for n in r.model.graph.node)


def test_identity_and_dropout_are_bypassed() -> None:
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    h = b.op("Identity", [b.conv(x, 3, 8)])
    h = b.op("Dropout", [b.op("Relu", [h])])  # type: ignore[list-item]
    b.output(b.conv(h, 8, 4))  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert not any(n.op_type in ("Identity", "Dropout") for n in r.model.graph.node)


def test_old_opset_is_converted() -> None:
    m = _conv_chain(11).build()
    m.opset_import[0].version = 9
    r = assert_oracle(m)
    assert r.report["converted_from_opset"] == 9
    assert r.model.opset_import[0].version == 13


def test_output_loads_in_onnxruntime_even_when_input_ir_is_newer() -> None:
    m = _conv_chain(17).build()
    m.ir_version = 14  # what onnx.helper.make_model writes; ONNX Runtime 1.31 refuses it
    r = spa.prune(m, ratio=0.5)
    assert r.model.ir_version <= 13
    from spa.runtime.session import session

    session(r.model)


def test_initializers_listed_as_inputs_are_still_weights() -> None:
    """Old exporters list initializers among graph inputs."""
    m = _conv_chain(11).build()
    for init in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    r = assert_oracle(m)
    assert r.report["num_pruned"] == 1


def test_computed_reshape_target_is_folded() -> None:
    """Shape → Gather → Concat targets become constants that the Reshape rule can rewrite."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 4, 4])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    shp = b.op("Shape", [h])
    n = b.op("Gather", [shp, b.const(np.array(0, dtype=np.int64))], axis=0)
    n1 = b.op("Unsqueeze", [n, b.const(np.array([0], dtype=np.int64))])
    target = b.op("Concat", [n1, b.const(np.array([-1], dtype=np.int64))], axis=0)
    f = b.op("Reshape", [h, target])
    b.output(b.op("MatMul", [f, b.weight(8 * 16, 5)]), [1, 5])  # type: ignore[arg-type]
    r = assert_oracle(b.build())
    assert r.report["num_pruned"] == 1


def test_input_model_is_not_modified() -> None:
    m = _conv_chain(13).build()
    before = m.SerializeToString()
    spa.prune(m, ratio=0.5, emit_masked=True)
    assert m.SerializeToString() == before


def test_unused_initializer_with_constant_of_shape() -> None:
    b = _conv_chain(13)
    b.inits.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    assert_oracle(b.build())
