"""Bad and odd inputs: every one ends in a correct pruned model or a clean one-line :class:`spa.SpaError`.

Each case is a small generated model. "Correct" means the mask oracle holds (``tests.oracle.assert_oracle``,
or ONNX's reference evaluator where ONNX Runtime has no kernel); "clean" means a SpaError subclass whose
message is one line, names what is wrong and says what to do — never a traceback or another exception.

Covered: an empty graph, an opset newer than the installed onnx, custom-domain ops, several inputs and
outputs, symbolic dims everywhere, nothing prunable, control flow (If/Loop/Scan reading outer-scope
tensors), QDQ models (per-channel and per-tensor weights, activations, blocked quantisation, Q→DQ of
float weights, DynamicQuantizeLinear), QOperator models, float16/bfloat16 models, and an initializer
shared by two nodes in different roles. (Models above 2 GB are covered by the external-data tests.)

The models are built by the ``*_model`` functions here; ``tools/fuzz.py`` mutates them too
(:func:`seed_models`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import spa
from spa.cli import main
from spa.rules.base import Slot
from tests.oracle import GraphBuilder, assert_oracle

F = TensorProto.FLOAT


# -- helpers -----------------------------------------------------------------------------------------

def clean_error(fn: Callable[[], object], kind: type[spa.SpaError] = spa.SpaError, *needles: str) -> str:
    """Run ``fn``; require a SpaError of ``kind`` with a one-line message containing ``needles``."""
    with pytest.raises(spa.SpaError) as info:
        fn()
    assert isinstance(info.value, kind), f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    assert "\n" not in msg.strip(), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``spa ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spa: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {i.name: list(i.dims) for i in model.graph.initializer}


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def group_of(analysis: spa.Analysis, tensor: str, axis: int) -> spa.Group:
    found = [g for g in analysis.groups if any(m.tensor == tensor and m.axis == axis for m in g.members)]
    assert len(found) == 1, f"{tensor}[{axis}] in {len(found)} groups"
    return found[0]


def make(b: GraphBuilder, value_info: list[onnx.ValueInfoProto] | None = None,
         domains: tuple[tuple[str, int], ...] = (), ir: int = 8) -> onnx.ModelProto:
    """The builder's graph as a model without GraphBuilder.build's checks (custom domains, odd types)."""
    m = helper.make_model(
        helper.make_graph(b.nodes, "hostile", b.inputs, b.outputs, b.inits, value_info=value_info or []),
        opset_imports=[helper.make_opsetid("", b.opset)] + [helper.make_opsetid(d, v) for d, v in domains])
    m.ir_version = ir
    return m


def chain(b: GraphBuilder, x: str, cin: int, widths: tuple[int, ...]) -> str:
    """Conv3x3 + Relu for each width (the last without Relu)."""
    h = x
    for k, c in enumerate(widths):
        h = b.conv(h, cin, c)
        if k < len(widths) - 1:
            h = str(b.op("Relu", [h]))
        cin = c
    return h


def cnn_model(opset: int = 13) -> onnx.ModelProto:
    """x → conv8 → relu → conv8 → relu → conv4: two prunable groups."""
    b = GraphBuilder(opset=opset)
    b.output(chain(b, b.input("x", [1, 3, 8, 8]), 3, (8, 8, 4)))
    return b.build()


# -- empty graph, opsets -----------------------------------------------------------------------------

def empty_model() -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_empty_graph_file_is_an_invalid_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "empty.onnx"
    onnx.save(empty_model(), p)
    clean_error(lambda: spa.prune(p), spa.errors.InvalidModelError, "empty.onnx", "empty graph")
    for args in (["analyze", p], ["prune", p, "-o", tmp_path / "out.onnx"]):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line_error(err, "empty.onnx", "empty graph")
    assert not (tmp_path / "out.onnx").exists()


def test_empty_graph_proto_is_an_invalid_model() -> None:
    clean_error(lambda: spa.prune(empty_model()), spa.errors.InvalidModelError, "empty graph")
    clean_error(lambda: spa.analyze(empty_model()), spa.errors.InvalidModelError, "empty graph")


def test_graph_without_nodes_prunes_nothing() -> None:
    """An input wired straight to the output: a valid model with nothing to do."""
    x = helper.make_tensor_value_info("x", F, [1, 3])
    m = helper.make_model(helper.make_graph([], "pass", [x], [x]), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    assert spa.analyze(m).groups == []
    r = spa.prune(m)
    assert r.report["num_pruned"] == 0 and r.report["params_after"] == 0
    onnx.checker.check_model(r.model, full_check=True)


def test_opset_newer_than_onnx_knows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = cnn_model()
    newest = onnx.defs.onnx_opset_version()
    m.opset_import[0].version = newest + 1
    clean_error(lambda: spa.analyze(m), spa.errors.UnsupportedModelError, f"opset {newest + 1}", "upgrade onnx")
    p = tmp_path / "new.onnx"
    onnx.save(m, p)
    code, _, err = cli(capsys, "prune", p, "-o", tmp_path / "out.onnx")
    assert code == 3
    one_line_error(err, f"opset {newest + 1}", "upgrade onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_no_default_domain_opset() -> None:
    m = cnn_model()
    m.opset_import[0].domain = "my.ops"
    clean_error(lambda: spa.prune(m), spa.errors.InvalidModelError, "opset")


def test_custom_domain_opset_version_is_not_checked() -> None:
    """Only the ai.onnx opset is bounded: a custom domain at version 1000 is just imported."""
    m = cnn_model()
    m.opset_import.append(helper.make_opsetid("my.ops", 1000))
    assert_oracle(m)


# -- custom-domain ops -------------------------------------------------------------------------------

class Frob(OpRun):
    """``my.ops::Frob(x) = 2x + 1``: a custom op ONNX Runtime does not know (reference evaluator only)."""

    op_domain = "my.ops"

    def _run(self, x):  # type: ignore[no-untyped-def]
        return (x * 2 + 1,)


def custom_op_model() -> onnx.ModelProto:
    """conv8 → relu → my.ops::Frob → conv8 → relu → conv8 → relu → conv4."""
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    b.nodes.append(helper.make_node("Frob", [str(h)], ["frob"], name="frob_node", domain="my.ops"))
    b.output(chain(b, "frob", 8, (8, 8, 4)), [1, 4, 8, 8])
    return make(b, [helper.make_tensor_value_info("frob", F, [1, 8, 8, 8])], (("my.ops", 1),))


def reference_oracle(pruned: onnx.ModelProto, masked: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     new_ops: tuple[type[OpRun], ...] = (), tol: float = 1e-4) -> None:
    """The mask oracle through ONNX's reference evaluator (for ops/types ONNX Runtime cannot run)."""
    a = ReferenceEvaluator(pruned, new_ops=list(new_ops)).run(None, feeds)
    b = ReferenceEvaluator(masked, new_ops=list(new_ops)).run(None, feeds)
    for x, y in zip(a, b):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x64.shape == y64.shape
        np.testing.assert_allclose(x64, y64, rtol=tol, atol=tol * max(1.0, float(np.abs(y64).max())))


def test_custom_domain_op_is_a_barrier_and_the_rest_prunes() -> None:
    m = custom_op_model()
    a = spa.analyze(m)
    before = group_of(a, "frob", 1)
    assert not before.prunable
    assert any("Frob" in r and "my.ops" in r and "frob_node" in r for r in before.reasons), before.reasons
    assert sum(g.prunable for g in a.groups) == 2  # the two groups after the custom op
    r = spa.prune(m, check=False, emit_masked=True)
    onnx.checker.check_model(r.model)
    assert r.report["num_pruned"] == 2
    assert dims(r.model)[next(n for n in dims(m) if dims(m)[n] == [8, 3, 3, 3])][0] == 8  # before Frob: intact
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert r.masked is not None
    reference_oracle(r.model, r.masked, {"x": x}, (Frob,))


def test_custom_domain_op_unknown_to_onnxruntime_skips_the_runtime_check() -> None:
    """ONNX Runtime cannot load the input either: the check is skipped and the report says so."""
    r = spa.prune(custom_op_model())
    assert r.report["num_pruned"] == 2
    assert str(r.report["ort_check"]).startswith("skipped") and "Frob" in str(r.report["ort_check"])
    assert spa.prune(cnn_model()).report["ort_check"] == "ok"


def test_custom_domain_op_prunes_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(), p)
    code, _, err = cli(capsys, "-q", "prune", p, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))
    assert json.loads((tmp_path / "r.json").read_text())["ort_check"].startswith("skipped")


# -- several inputs and outputs, symbolic dims, nothing prunable -------------------------------------

def multi_io_model() -> onnx.ModelProto:
    """Two image inputs merged by a residual Add, an int64 token input, three outputs of three kinds."""
    b = GraphBuilder(opset=13)
    a_in, b_in = b.input("a", [1, 3, 8, 8]), b.input("b", [1, 5, 8, 8])
    ids = b.input("ids", [1, 4], TensorProto.INT64)
    s = b.op("Add", [b.op("Relu", [b.conv(a_in, 3, 8)]), b.op("Relu", [b.conv(b_in, 5, 8)])])
    b.output(chain(b, str(s), 8, (8, 2)))
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv(str(s), 8, 6)])])])
    b.output(str(b.op("MatMul", [pooled, b.weight(6, 3)])))
    b.output(str(b.op("Gather", [b.weight(10, 4), ids], axis=0)))
    return b.build()


def test_several_inputs_and_outputs() -> None:
    m = multi_io_model()
    r = assert_oracle(m)
    assert r.report["num_pruned"] == 3  # residual stream, the conv before the 2-channel output, the 6-wide head
    assert [i.name for i in r.model.graph.input] == ["a", "b", "ids"]
    for before, after in zip(m.graph.output, r.model.graph.output):
        assert before.type == after.type  # same names, types and shapes


def symbolic_model(flatten_spatial: bool = False) -> onnx.ModelProto:
    """Batch, H and W symbolic from input to output."""
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [chain(b, b.input("x", ["N", 3, "H", "W"]), 3, (8, 8))])
    if flatten_spatial:  # [N, 8*H*W]: the channel stride is dynamic
        b.output(str(b.op("Flatten", [h])))
    else:
        f = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
        b.output(str(b.op("Gemm", [f, b.weight(5, 8)], transB=1)))
    return b.build()


def test_symbolic_dims_everywhere() -> None:
    m = symbolic_model()
    r = assert_oracle(m)
    assert r.report["num_pruned"] == 2
    dims_of = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims_of(r.model.graph.input[0]) == ["N", 3, "H", "W"]
    assert dims_of(r.model.graph.output[0]) == ["N", 5]


def test_flatten_over_symbolic_spatial_dims_is_a_barrier() -> None:
    m = symbolic_model(flatten_spatial=True)
    a = spa.analyze(m)
    last = [g for g in a.groups if g.channels == 8][-1]
    assert not last.prunable and any("Flatten" in reason for reason in last.reasons), last.reasons
    r = assert_oracle(m)
    assert r.report["num_pruned"] == 1


def weightless_model() -> onnx.ModelProto:
    b = GraphBuilder(opset=13)
    b.output(str(b.op("Sigmoid", [b.op("Relu", [b.input("x", [1, 3, 4, 4])])])))
    return b.build()


def softmax_blocked_model() -> onnx.ModelProto:
    """Every group ends in a Softmax over channels or a graph input/output: nothing is prunable."""
    b = GraphBuilder(opset=13)
    h = b.op("Softmax", [b.conv(b.input("x", [1, 3, 4, 4]), 3, 8)], axis=1)
    b.output(b.conv(str(h), 8, 4))
    return b.build()


@pytest.mark.parametrize("build", [weightless_model, softmax_blocked_model])
def test_nothing_prunable_exits_zero_with_a_message(build: Callable[[], onnx.ModelProto], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "m.onnx"
    onnx.save(build(), p)
    code, out, err = cli(capsys, "prune", p, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "nothing was pruned" in out and "no prunable channel groups" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["num_prunable"] == 0 and rep["params_after"] == rep["params_before"]
    code, out, err = cli(capsys, "analyze", p)
    assert code == 0, err


# -- control flow with outer-scope tensors -----------------------------------------------------------

def loop_model() -> onnx.ModelProto:
    """A Loop body reads an outer activation and an outer weight that a main-graph Conv also uses."""
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [chain(b, b.input("x", [1, 3, 8, 8]), 3, (8, 8))])
    shared = b.weight(8, 8, 3, 3)
    main_out = b.op("Conv", [h, shared], pads=[1] * 4)
    body = helper.make_graph(
        [helper.make_node("Conv", [str(h), shared], ["c"], pads=[1] * 4),
         helper.make_node("Add", ["acc_in", "c"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", F, [1, 8, 8, 8])])
    trip, cond = b.const(np.array(2, np.int64), "trip"), b.const(np.array(True), "cond")
    acc = b.op("Loop", [trip, cond, str(main_out)], body=body)
    b.output(chain(b, str(acc), 8, (8, 4)), [1, 4, 8, 8])
    return b.build()


def scan_model() -> onnx.ModelProto:
    """A Scan over the rows of a reshaped feature map, with an outer-scope bias inside its body."""
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [chain(b, b.input("x", [1, 3, 8, 8]), 3, (8, 8))])
    rows = b.op("Reshape", [h, b.const(np.array([8, 64], np.int64), "s")])
    bias = b.weight(64)
    body = helper.make_graph(
        [helper.make_node("Add", ["st_in", "row"], ["s1"]), helper.make_node("Add", ["s1", bias], ["st_out"]),
         helper.make_node("Identity", ["st_out"], ["scan_out"])],
        "scan_body",
        [helper.make_tensor_value_info("st_in", F, [64]), helper.make_tensor_value_info("row", F, [64])],
        [helper.make_tensor_value_info("st_out", F, [64]), helper.make_tensor_value_info("scan_out", F, [64])])
    st, so = b.op("Scan", [b.const(np.zeros(64, np.float32), "init"), str(rows)], n_out=2, body=body,
                  num_scan_inputs=1)
    b.output(st, [64])
    b.output(so, [8, 64])
    b.output(chain(b, str(b.op("Relu", [b.conv(str(h), 8, 8)])), 8, (8, 4)), [1, 4, 8, 8])
    return b.build()


def nested_if_model() -> onnx.ModelProto:
    """An If nested in a Loop body, whose branch runs a Conv with an outer-scope weight of the main graph."""
    b = GraphBuilder(opset=13)
    cond_in = b.input("flag", [], TensorProto.BOOL)
    h = b.op("Relu", [chain(b, b.input("x", [1, 3, 8, 8]), 3, (8, 8))])
    w = b.weight(8, 8, 1, 1)
    then_g = helper.make_graph([helper.make_node("Conv", ["acc_in", w], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", F, [1, 8, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Relu", ["acc_in"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", F, [1, 8, 8, 8])])
    body = helper.make_graph(
        [helper.make_node("If", [cond_in], ["acc_out"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", F, [1, 8, 8, 8])])
    acc = b.op("Loop", [b.const(np.array(2, np.int64), "trip"), b.const(np.array(True), "c"), str(h)], body=body)
    main_out = b.op("Relu", [b.op("Conv", [b.op("Relu", [b.conv(str(h), 8, 8)]), w])])  # w used outside too
    b.output(str(b.op("Add", [acc, main_out])), [1, 8, 8, 8])
    return b.build()


def test_loop_reading_outer_tensors() -> None:
    m = loop_model()
    a = spa.analyze(m)
    shared = next(n.input[1] for n in m.graph.node if n.op_type == "Conv" and len(n.input) == 2)
    g = group_of(a, shared, 0)
    assert not g.prunable and any("Loop" in r for r in g.reasons), g.reasons
    r = assert_oracle(m)
    assert r.report["num_pruned"] >= 1
    assert dims(r.model)[shared] == [8, 8, 3, 3]  # read inside the body: intact
    body = next(n for n in r.model.graph.node if n.op_type == "Loop").attribute[0].g
    assert sorted(n.op_type for n in body.node) == ["Add", "Conv", "Identity"]


def test_scan_reading_outer_tensors() -> None:
    m = scan_model()
    a = spa.analyze(m)
    assert any(not g.prunable and any("Scan" in r for r in g.reasons) for g in a.groups)
    r = assert_oracle(m)
    assert r.report["num_pruned"] >= 2


def test_if_nested_in_loop_with_an_outer_weight() -> None:
    m = nested_if_model()
    w = next(n.input[1] for n in m.graph.node if n.op_type == "Conv" and len(n.input) == 2)
    a = spa.analyze(m)
    for axis in (0, 1):
        g = group_of(a, w, axis)
        assert not g.prunable and any("subgraph" in r for r in g.reasons), g.reasons
    r = assert_oracle(m)
    assert dims(r.model)[w] == [8, 8, 1, 1]
    assert r.report["num_pruned"] == 1  # the conv after it
    assert r.report["num_pruned"] == 1  # the stem conv only


# -- QDQ models --------------------------------------------------------------------------------------

def _quantize(w: np.ndarray, axis: int | None, zp: int, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, scale, zero_point): per-channel along ``axis`` or per-tensor (``axis`` None)."""
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if axis is None:
        scale = np.asarray(np.abs(w).max() / 127, np.float32)
        shaped = scale
    else:
        others = tuple(a for a in range(w.ndim) if a != axis)
        scale = (np.abs(w).max(axis=others) / 127).astype(np.float32)
        shaped = np.expand_dims(scale, others)
    q = np.clip(np.round(w / shaped) + zp, lo, hi).astype(dtype)
    return q, scale, np.full(scale.shape, zp, dtype)


def dq_weight(b: GraphBuilder, shape: tuple[int, ...], axis: int | None = 0, zp: int = 0,
              dtype: type = np.int8) -> str:
    """A DequantizeLinear of a constant quantised weight."""
    q, s, z = _quantize((b.rng.standard_normal(shape) * 0.5).astype(np.float32), axis, zp, dtype)
    attrs = {} if axis is None else {"axis": axis}
    return str(b.op("DequantizeLinear", [b.const(q, "wq"), b.const(s, "ws"), b.const(z, "wz")], **attrs))


def qdq(b: GraphBuilder, x: str, scale: float = 0.05, zp: int = 0, dtype: type = np.int8) -> str:
    """QuantizeLinear → DequantizeLinear of an activation with per-tensor scalars."""
    s, z = b.const(np.asarray(scale, np.float32), "as"), b.const(np.asarray(zp, dtype), "az")
    return str(b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, s, z]), s, z]))


def qdq_cnn_model(opset: int = 13, axis: int | None = 0, act: bool = True, zp: int = 0,
                  dtype: type = np.int8) -> onnx.ModelProto:
    """QDQ CNN: quantised input and activations (per-tensor), DQ weights (per-channel or per-tensor)."""
    b = GraphBuilder(opset=opset)
    h = b.input("x", [1, 3, 8, 8])
    for k, (cin, cout, kk) in enumerate(((3, 8, 3), (8, 8, 3), (8, 4, 1))):
        h = qdq(b, h) if act else h
        bias = b.const(b.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")
        h = str(b.op("Conv", [h, dq_weight(b, (cout, cin, kk, kk), axis, zp, dtype), bias], pads=[kk // 2] * 4))
        if k < 2:
            h = str(b.op("Relu", [h]))
    b.output(h)
    return b.build()


def _quant_params(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """DequantizeLinear of a constant: output name → (q, scale, zero point)."""
    values = inits(model)
    return {n.output[0]: tuple(values[i] for i in n.input[:3])  # type: ignore[misc]
            for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in values}


QDQ_TOL = {"rtol": 1e-3, "atol": 1e-3}


@pytest.mark.parametrize("opset", [13, 19, 21])
def test_qdq_per_channel_weights_are_sliced_with_their_scales(opset: int) -> None:
    m = qdq_cnn_model(opset)
    r = assert_oracle(m, **QDQ_TOL)  # type: ignore[arg-type]
    assert r.report["num_pruned"] == 2
    for q, s, z in _quant_params(r.model).values():
        assert s.shape == z.shape == (q.shape[0],)  # per-channel scale/zp sliced with the weight rows
    qs = [q.shape for q, _, _ in _quant_params(r.model).values()]
    assert qs == [(4, 3, 3, 3), (4, 4, 3, 3), (4, 4, 1, 1)]
    # activation QDQ pairs pass through with their per-tensor scalars untouched
    before, after = inits(m), inits(r.model)
    for n in r.model.graph.node:
        if n.op_type == "QuantizeLinear":
            for i in n.input[1:]:
                assert after[i].shape == () and after[i] == before[i]
    assert sorted(n.op_type for n in r.model.graph.node) == sorted(n.op_type for n in m.graph.node)


def test_qdq_per_channel_values_follow_the_kept_channels() -> None:
    """Row k of the pruned int8 weight is the kept row's, with its own scale: dequantised weights are a slice."""
    m = qdq_cnn_model(act=False)
    r = spa.prune(m, ratio=0.5)
    kept = next(g["kept"] for g in r.report["groups"] if g["channels_before"] == 8 and g["kept"])
    (q0, s0, _), (q1, s1, _) = next(iter(_quant_params(m).values())), next(iter(_quant_params(r.model).values()))
    np.testing.assert_array_equal(q1, q0[kept])
    np.testing.assert_array_equal(s1, s0[kept])


def test_qdq_per_tensor_weights_keep_their_scalars() -> None:
    m = qdq_cnn_model(axis=None)
    r = assert_oracle(m, **QDQ_TOL)  # type: ignore[arg-type]
    assert r.report["num_pruned"] == 2
    for _q, s, z in _quant_params(r.model).values():
        assert s.shape == z.shape == ()
    assert [q.shape[0] for q, _, _ in _quant_params(r.model).values()] == [4, 4, 4]


def qdq_dense_model(opset: int = 13) -> onnx.ModelProto:
    """MatMul with per-column int8 weights (axis=1), a Gemm whose float weight is quantised in the graph
    (QuantizeLinear → DequantizeLinear, per row), an int32 bias behind a DequantizeLinear, DynamicQuantizeLinear
    on the input, and a per-channel (axis=1) activation QDQ."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 6])
    dq_x = b.op("DequantizeLinear", b.op("DynamicQuantizeLinear", [x], n_out=3))
    h = b.op("Relu", [b.op("MatMul", [dq_x, dq_weight(b, (6, 10), axis=1)])])
    s_act = b.const(np.full(10, 0.05, np.float32), "as")
    z_act = b.const(np.zeros(10, np.int8), "az")
    h = b.op("DequantizeLinear", [b.op("QuantizeLinear", [h, s_act, z_act], axis=1), s_act, z_act], axis=1)
    w2 = b.weight(5, 10)
    s2, z2 = b.const(np.full(5, 0.01, np.float32), "s2"), b.const(np.zeros(5, np.int8), "z2")
    w2_dq = b.op("DequantizeLinear", [b.op("QuantizeLinear", [w2, s2, z2], axis=0), s2, z2], axis=0)
    # an int32 bias with the conventional scale (input scale × weight scale), as ONNX Runtime's QDQ fusions assume
    bias = b.op("DequantizeLinear", [b.const(np.arange(5, dtype=np.int32) * 200, "bq"),
                                     b.const(np.float32(0.05 * 0.01), "bs")])
    b.output(str(b.op("Gemm", [h, w2_dq, bias], transB=1)))
    return b.build()


@pytest.mark.parametrize("opset", [13, 21])
def test_qdq_dense_layers(opset: int) -> None:
    m = qdq_dense_model(opset)
    r = assert_oracle(m, **QDQ_TOL)  # type: ignore[arg-type]
    d = dims(r.model)
    assert r.report["num_pruned"] == 1
    wq = next(n for n in d if n.startswith("wq"))
    assert d[wq] == [6, 5] and d[next(n for n in d if n.startswith("ws"))] == [5]  # columns and their scales
    assert d[next(n for n in d if n.startswith("as"))] == [5]  # per-channel activation scale sliced
    assert d[next(n for n in d if n.startswith("w") and d[n][0] == 5 and len(d[n]) == 2)] == [5, 5]


def test_qdq_per_channel_scales_pruned_to_one_channel() -> None:
    """Down to one channel the per-axis scales become one-element vectors (per-tensor to ONNX Runtime, which
    then fuses the QDQ Gemm): still the masked twin's result, given the conventional bias scale."""
    r = assert_oracle(qdq_dense_model(), 0.9, **QDQ_TOL)  # type: ignore[arg-type]
    assert dims(r.model)[next(n for n in dims(r.model) if n.startswith("as"))] == [1]


def blocked_model() -> onnx.ModelProto:
    """Opset 21 blocked quantisation: one scale per 2 rows (axis 0) of a MatMul weight."""
    b = GraphBuilder(opset=21)
    q = np.round(b.rng.standard_normal((8, 12)) / 0.02).clip(-128, 127).astype(np.int8)
    wd = b.op("DequantizeLinear", [b.const(q, "wq"), b.const(np.full((4, 12), 0.02, np.float32), "ws")],
              axis=0, block_size=2)
    h = b.op("Relu", [b.op("MatMul", [b.input("x", [2, 8]), wd])])
    b.output(str(b.op("MatMul", [h, b.weight(12, 3)])))
    return b.build()


def test_blocked_quantisation_blocks_its_axis_only() -> None:
    m = blocked_model()
    wq = next(i.name for i in m.graph.initializer if i.name.startswith("wq"))
    g = group_of(spa.analyze(m), wq, 0)
    assert not g.prunable and any("blocks along axis 0" in r for r in g.reasons), g.reasons
    r = assert_oracle(m, **QDQ_TOL)  # type: ignore[arg-type]
    assert dims(r.model)[wq] == [8, 6]
    assert dims(r.model)[next(i for i in dims(r.model) if i.startswith("ws"))] == [4, 6]


@pytest.mark.parametrize("axis", [None, 0])
def test_qdq_asymmetric_weights(axis: int | None) -> None:
    assert_oracle(qdq_cnn_model(axis=axis, act=False, zp=100, dtype=np.uint8), **QDQ_TOL)  # type: ignore[arg-type]


def test_qdq_magnitude_scores_are_finite() -> None:
    from spa.criteria import CriterionContext, get_criterion

    a = spa.analyze(qdq_cnn_model(act=False))
    for gid, s in get_criterion("l2").score(a, CriterionContext(seed=0)).items():
        assert np.all(np.isfinite(s)), (gid, s)


def qoperator_model() -> onnx.ModelProto:
    """Float convs around QLinearConv, ConvInteger, QLinearMatMul and MatMulInteger."""
    b = GraphBuilder(opset=13)
    s, z = b.const(np.float32(0.05), "s"), b.const(np.uint8(128), "z")
    h = b.op("Relu", [chain(b, b.input("x", [1, 3, 8, 8]), 3, (8, 8))])
    wq = b.const(b.rng.integers(-50, 50, (8, 8, 3, 3)).astype(np.int8), "qw")
    ws, wz = b.const(np.full(8, 0.01, np.float32), "qs"), b.const(np.zeros(8, np.int8), "qz")
    qc = b.op("QLinearConv", [b.op("QuantizeLinear", [h, s, z]), s, z, wq, ws, wz, s, z], pads=[1] * 4)
    b.nodes[-1].name = "qconv"
    h = b.op("Relu", [chain(b, str(b.op("DequantizeLinear", [qc, s, z])), 8, (8, 8))])
    ci = b.op("ConvInteger", [b.op("QuantizeLinear", [h, s, z]),
                              b.const(b.rng.integers(0, 255, (8, 8, 1, 1)).astype(np.uint8), "ciw"), z, z])
    h = b.op("Relu", [chain(b, str(b.op("Cast", [ci], to=F)), 8, (8,))])
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    mw = b.const(b.rng.integers(0, 255, (8, 6)).astype(np.uint8), "mw")
    qm = b.op("QLinearMatMul", [b.op("QuantizeLinear", [f, s, z]), s, z, mw, s, z, s, z])
    mi = b.op("MatMulInteger", [qm, b.const(b.rng.integers(0, 255, (6, 4)).astype(np.uint8), "miw"), z, z])
    b.output(str(b.op("Cast", [mi], to=F)))
    return b.build()


def test_qoperator_ops_are_barriers_with_a_reason() -> None:
    """QLinearConv/QLinearMatMul are barriers; ConvInteger/MatMulInteger prune like Conv/MatMul (issue 14)."""
    m = qoperator_model()
    a = spa.analyze(m)
    assert a.channel_graph is not None
    for node in m.graph.node:
        if node.op_type in ("QLinearConv", "QLinearMatMul"):
            info = a.channel_graph.slots[Slot(node.input[0], 1)]  # the quantised input's channel axis
            assert any(node.op_type in r and "QOperator" in r and "QDQ" in r for r in info.reasons), info.reasons
    for op in ("QLinearConv", "QLinearMatMul"):  # the float convs before them are blocked
        assert any(not g.prunable and g.reasons[0].startswith(op) for g in a.groups), op
    r = assert_oracle(m, **QDQ_TOL)  # type: ignore[arg-type]
    assert r.report["num_pruned"] == 4  # and the groups on both sides of the ConvInteger


def test_qoperator_reason_in_cli_analyze_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "q.onnx"
    onnx.save(qoperator_model(), p)
    code, out, err = cli(capsys, "analyze", p, "--json", "-")
    assert code == 0, err
    reasons = [r for g in json.loads(out)["groups"] for r in g["reasons"]]
    assert any("QLinearConv 'qconv'" in r and "QOperator" in r for r in reasons)


# -- float16 / bfloat16 ------------------------------------------------------------------------------

def half_model(elem: int, opset: int) -> onnx.ModelProto:
    """conv → relu → conv → relu → per-channel Mul → conv, weights and activations in ``elem``."""
    b = GraphBuilder(opset=opset)

    def w(*shape: int) -> str:
        arr = (b.rng.standard_normal(shape) * 0.3).astype(np.float32)
        if elem == TensorProto.BFLOAT16:
            raw = arr.astype(ml_dtypes.bfloat16).view(np.uint16).tobytes()
            b.inits.append(helper.make_tensor(b.name("w"), elem, shape, raw, raw=True))
            return b.inits[-1].name
        return b.const(arr.astype(np.float16), "w")

    h = b.input("x", [1, 3, 8, 8], elem)
    for cin, cout in ((3, 8), (8, 8)):
        h = str(b.op("Relu", [b.op("Conv", [h, w(cout, cin, 3, 3), w(cout)], pads=[1] * 4)]))
    y = str(b.op("Conv", [b.op("Mul", [h, w(8, 1, 1)]), w(4, 8, 1, 1)]))
    b.outputs.append(helper.make_tensor_value_info(y, elem, [1, 4, 8, 8]))
    m = make(b)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("opset", [13, 17])
def test_float16_model(opset: int) -> None:
    m = half_model(TensorProto.FLOAT16, opset)
    r = assert_oracle(m, rtol=1e-2, atol=1e-2)
    assert r.report["num_pruned"] == 2
    assert {i.data_type for i in r.model.graph.initializer} == {TensorProto.FLOAT16}
    assert r.model.graph.input[0].type == m.graph.input[0].type


def test_bfloat16_model_is_pruned_with_the_runtime_check_skipped() -> None:
    """ONNX Runtime's CPU provider has no bfloat16 Conv: the checker runs, the ORT load check is skipped."""
    r = spa.prune(half_model(TensorProto.BFLOAT16, 22))
    assert r.report["num_pruned"] == 2
    assert str(r.report["ort_check"]).startswith("skipped")
    onnx.checker.check_model(r.model, full_check=True)


def test_bfloat16_model_mask_oracle_with_the_reference_evaluator() -> None:
    m = half_model(TensorProto.BFLOAT16, 22)
    r = spa.prune(m, check=False, emit_masked=True)
    onnx.checker.check_model(r.model, full_check=True)
    assert r.report["num_pruned"] == 2
    assert {i.data_type for i in r.model.graph.initializer} == {TensorProto.BFLOAT16}
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(ml_dtypes.bfloat16)
    assert r.masked is not None
    reference_oracle(r.model, r.masked, {"x": x}, tol=5e-2)


# -- one initializer in two roles --------------------------------------------------------------------

def shared_roles_model(kind: str) -> onnx.ModelProto:
    """One initializer used by two nodes in different roles.

    * ``conv_mul``: a Conv weight [8, 8, 1, 1] that is also a Mul constant on a pooled [1, 8, 1, 1] map;
    * ``bias_scale``: a Conv bias [8] that is also the per-channel scale (Mul) of another branch;
    * ``weight_add``: a MatMul weight [8, 8] that is also added to the MatMul's own output.
    """
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    if kind == "conv_mul":
        w = b.weight(8, 8, 1, 1)
        y = b.op("Relu", [b.op("Conv", [h, w])])
        g = b.op("Mul", [b.op("GlobalAveragePool", [h]), w])  # [8, 8, 1, 1]: W scaled by the pooled channels
        b.output(chain(b, str(y), 8, (8, 4)), [1, 4, 8, 8])
        b.output(str(b.op("ReduceSum", [g], keepdims=0)), [])
    elif kind == "bias_scale":
        bias = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32), "bias")
        y = b.op("Relu", [b.op("Conv", [h, b.weight(8, 8, 3, 3), bias], pads=[1] * 4)])
        z = b.op("Relu", [b.conv(str(h), 8, 8)])
        scaled = b.op("Mul", [b.op("Transpose", [z], perm=[0, 2, 3, 1]), bias])  # bias scales z's channels
        merged = b.op("Add", [y, b.op("Transpose", [scaled], perm=[0, 3, 1, 2])])
        b.output(b.conv(str(merged), 8, 4), [1, 4, 8, 8])
    else:
        w = b.weight(8, 8)
        f = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # [1, 8]
        mm = b.op("MatMul", [f, w])  # [1, 8]
        y = b.op("Add", [b.op("Unsqueeze", [mm, b.const(np.array([0], np.int64), "ax")]), w])  # [1, 8, 8]
        b.output(str(b.op("MatMul", [b.op("Relu", [y]), b.weight(8, 3)])), [1, 8, 3])
    return b.build()


@pytest.mark.parametrize("kind", ["conv_mul", "bias_scale", "weight_add"])
def test_initializer_shared_in_two_roles(kind: str) -> None:
    m = shared_roles_model(kind)
    spa.analyze(m)
    r = assert_oracle(m, expect_pruned=False)
    before, after = dims(m), dims(r.model)
    assert set(after) <= set(before) | {n for n in after if "__spa_" in n}
    # a shared initializer stays one tensor, consistent with every node that reads it
    shared = [n for n in before if sum(n in node.input for node in m.graph.node) > 1]
    for name in shared:
        assert name in after and sum(name in node.input for node in r.model.graph.node) > 1


def test_conv_weight_shared_with_mul_is_blocked_or_consistent() -> None:
    m = shared_roles_model("conv_mul")
    w = next(n.input[1] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in
             {i.input[1] for i in m.graph.node if i.op_type == "Mul"})
    a = spa.analyze(m)
    for axis in (0, 1):
        g = group_of(a, w, axis)
        assert not g.prunable, g  # its axes reach a graph output through the Mul
    r = assert_oracle(m)
    assert dims(r.model)[w] == [8, 8, 1, 1]
    assert r.report["num_pruned"] == 1  # the conv after it


# -- the catalogue, for tools/fuzz.py ----------------------------------------------------------------

def seed_models() -> dict[str, onnx.ModelProto]:
    """Every valid model of this catalogue by name (fuzzing starts from them)."""
    return {
        "cnn": cnn_model(), "cnn17": cnn_model(17), "custom_op": custom_op_model(), "multi_io": multi_io_model(),
        "symbolic": symbolic_model(), "symbolic_flatten": symbolic_model(True), "weightless": weightless_model(),
        "softmax_blocked": softmax_blocked_model(), "loop": loop_model(), "scan": scan_model(),
        "nested_if": nested_if_model(), "qdq_cnn": qdq_cnn_model(), "qdq_cnn21": qdq_cnn_model(21),
        "qdq_per_tensor": qdq_cnn_model(axis=None), "qdq_asym": qdq_cnn_model(axis=0, act=False, zp=100,
                                                                             dtype=np.uint8),
        "qdq_dense": qdq_dense_model(), "blocked": blocked_model(), "qoperator": qoperator_model(),
        "fp16": half_model(TensorProto.FLOAT16, 13), "bf16": half_model(TensorProto.BFLOAT16, 22),
        "shared_conv_mul": shared_roles_model("conv_mul"), "shared_bias_scale": shared_roles_model("bias_scale"),
        "shared_weight_add": shared_roles_model("weight_add"),
    }


def test_seed_models_are_valid() -> None:
    for name, m in seed_models().items():
        onnx.checker.check_model(m, full_check=True), name


# -- crash classes found by tools/fuzz.py (session 2) ---------------------------------------------------

def test_invalid_gemm_rank_counts_no_macs() -> None:
    """A Gemm fed a rank-4 tensor (ONNX Runtime refuses it at run time) used to raise IndexError."""
    import onnx_graphsurgeon as gs

    from spa.analysis.cost import node_macs

    x = gs.Variable("x", np.float32, [1, 8, 1, 1])
    w = gs.Constant("w", np.zeros((4, 8), np.float32))
    y = gs.Variable("y", np.float32, [1, 4])
    assert node_macs(gs.Node("Gemm", inputs=[x, w], outputs=[y], attrs={"transB": 1})) == 0


def test_batch_statistics_copy_skips_non_float_batch_norms() -> None:
    """obspa's synthetic statistics rewrite float BatchNorms only (a string-typed input crashed it)."""
    from spa.calibration.synthetic import batch_norm_model

    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 4, 4], elem=TensorProto.STRING)
    b.output(b.bn(x, 3))  # type: ignore[arg-type]
    m = helper.make_model(helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    out = batch_norm_model(m)
    assert [n.op_type for n in out.graph.node] == ["BatchNormalization"]


def test_absurd_axis_sizes_block_instead_of_exhausting_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupt size constant gave a slot of 2**40 elements and the analysis tried to allocate terabytes;
    a group above ``MAX_GROUP_ELEMENTS`` is now blocked with a reason (lowered here to hit it)."""
    from spa.analysis import groups

    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 4, 4])
    b.output(b.conv(b.op("Relu", [b.conv(x, 3, 8)]), 8, 2))  # type: ignore[arg-type]
    m = b.build()
    assert spa.analyze(m).prunable
    monkeypatch.setattr(groups, "MAX_GROUP_ELEMENTS", 10)
    a = spa.analyze(m)
    assert not a.prunable
    assert any("more than 10 elements" in r for g in a.groups for r in g.reasons)


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("zp", [0, 3])
def test_qdq_weights_read_pruned_channels(opset: int, zp: int) -> None:
    """A QDQ MatMul/Gemm weight (DequantizeLinear of int8, or of QuantizeLinear of float) *reading* a pruned
    channel: its rows are sliced with their per-row scales and zeroed to the zero point in the masked twin,
    so the contraction is not a barrier (two real activations still are)."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 6])
    h = b.op("Relu", [b.op("MatMul", [x, b.weight(6, 10)])])
    h = b.op("Relu", [b.op("MatMul", [h, dq_weight(b, (10, 8), axis=0, zp=zp)])])  # type: ignore[list-item]
    w = b.weight(4, 8)
    s, z = b.const(np.full(4, 0.01, np.float32), "s2"), b.const(np.zeros(4, np.int8), "z2")
    w_dq = b.op("DequantizeLinear", [b.op("QuantizeLinear", [w, s, z], axis=0), s, z], axis=0)
    b.output(str(b.op("Gemm", [h, w_dq], transB=1)))
    m = b.build()
    r = assert_oracle(m, 0.5, **QDQ_TOL)  # type: ignore[arg-type]
    d = dims(r.model)
    assert r.report["num_pruned"] == 2
    assert d[next(n for n in d if n.startswith("wq"))] == [5, 4]  # int8 rows (read) and columns (written)
    assert d[w] == [4, 4]  # the float weight quantised in the graph: its columns read the pruned channels


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_resize_scales_are_refused_before_onnx_runtime(bad: float) -> None:
    """ONNX Runtime aborts the whole process (a C++ assertion) loading a Resize with NaN scales: spa refuses
    the model first, with a one-line InvalidModelError naming the node (fuzzer, seed 31)."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 4, 4])
    h = b.conv(x, 3, 8)
    scales = b.const(np.asarray([1, 1, 2, 2], np.float32), "scales")
    b.output(b.conv(b.op("Resize", [h, "", scales], mode="nearest"), 8, 2))  # type: ignore[arg-type]
    m = b.build()
    next(t for t in m.graph.initializer if t.name == scales).CopyFrom(
        numpy_helper.from_array(np.asarray([1, 1, bad, bad], np.float32), scales))
    with pytest.raises(spa.errors.InvalidModelError, match="non-finite scales"):
        spa.prune(m, ratio=0.5)


def test_masked_statistics_need_a_numpy_type() -> None:
    """A tensor of an ONNX type numpy cannot compute in (float8) gets a clean UnsupportedModelError when the
    masked twin needs statistics over it, not a TypeError (fuzzer, seed 31)."""
    import onnx_graphsurgeon as gs

    from spa.rules.base import TwinContext

    tw = TwinContext(gs.Graph(), lambda _slot: None)
    with pytest.raises(spa.errors.UnsupportedModelError, match="numpy cannot compute in"):
        tw.constant(np.ones(3), gs.Variable("f8", dtype=TensorProto.FLOAT8E4M3FN, shape=[3]))
    assert tw.constant(np.ones(3), gs.Variable("f16", dtype=np.float16, shape=[3])).values.dtype == np.float16
