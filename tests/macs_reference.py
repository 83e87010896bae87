"""An independent MAC counter (no spa code): run the model in ONNX Runtime with every intermediate tensor
exposed as an output, so the shapes are those of an actual run, and apply simple formulas: Conv
``numel(y)·Πw.shape[1:]``, ConvTranspose ``numel(x)·Πw.shape[1:]``, Gemm/MatMul ``numel(y)·K`` (and their
integer/QLinear twins), Einsum ``Π`` of the distinct index sizes. Used by ``tests/test_macs.py`` and
``tools/bench_exporters.py`` (which counts the model as ONNX Runtime runs it, ``folded=True``: a Conv over
a value computed only from static shapes is a constant, run once at load).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def _feeds(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = list(shapes[vi.name]) if shapes and vi.name in shapes else [
            d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        out[vi.name] = (rng.integers(0, 2, dims) if dt.kind in "iu" else rng.standard_normal(dims)).astype(dt)
    return out


def _runtime_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    del m.graph.value_info[:]
    for name in dict.fromkeys(o for n in m.graph.node for o in n.output if o and o not in have):
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    shapes = {o.name: tuple(np.asarray(v).shape) for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}
    shapes |= {i.name: tuple(i.dims) for i in model.graph.initializer}
    return shapes | {k: v.shape for k, v in feeds.items()}


def _einsum(equation: str, shapes: list[tuple[int, ...]]) -> int:
    sizes: dict[str, int] = {}
    for term, s in zip(equation.replace(" ", "").split("->")[0].split(","), shapes):
        pre, _, post = term.partition("...")
        n = len(s) - len(pre) - len(post)
        named = list(zip(pre, s)) + list(zip(post, s[len(s) - len(post):])) + [
            (f"@{n - k}", s[len(pre) + k]) for k in range(n)]
        for c, d in named:
            sizes[c] = max(sizes.get(c, 1), int(d))
    return int(np.prod(list(sizes.values()), dtype=np.int64))


def ort_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as ONNX Runtime's basic graph optimisations leave it: every subgraph whose value does not
    depend on the inputs' values (weights, shapes that are static in the model) is folded into a constant
    and costs nothing at run time — a position encoding computed from the static input size and projected
    by a Conv (timm EdgeNeXt's ``pos_embd.token_projection``) runs once, at load, not per inference."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def independent_macs(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, *,
                     folded: bool = False) -> int:
    """MACs of one run of ``model`` (inputs of ``shapes``; unset dynamic dims 1) from runtime shapes;
    ``folded``: of the model as ONNX Runtime runs it, input-independent subgraphs folded (:func:`ort_folded`)."""
    if folded:
        model = ort_folded(model)
    shp = _runtime_shapes(model, _feeds(model, shapes))
    total = 0
    for n in model.graph.node:
        ins = [shp.get(i, ()) for i in n.input]
        y = shp.get(n.output[0], ()) if n.output else ()
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        op = n.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            total += int(np.prod(y)) * int(np.prod(ins[3 if op == "QLinearConv" else 1][1:]))
        elif op == "ConvTranspose":
            total += int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
        elif op == "Gemm":
            total += int(np.prod(y)) * ins[0][0 if attrs.get("transA", 0) else 1]
        elif op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            total += int(np.prod(y)) * ins[0][-1]
        elif op == "Einsum":
            eq = attrs["equation"]
            total += _einsum(eq.decode() if isinstance(eq, bytes) else eq, ins)
    return total
