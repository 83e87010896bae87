"""Models that hit spa's import walls (issue 14), built from code so tests and ``tools/bench_exporters.py``
share them: a PP-OCR-style text-line classifier with paddle2onnx's ``-1`` placeholder dims, float CNN and
MLP twins for ``quantize_dynamic``, an opset-15 model whose ``If`` branches feed the main graph, and an
opset-9 CNN.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.oracle import GraphBuilder

#: ONNX Runtime 1.x loads IR versions up to 10 everywhere spa runs
IR_VERSION = 8


def _hardswish(b: GraphBuilder, x: str) -> str:
    # paddle2onnx writes hard_swish as x * HardSigmoid(x) (alpha 1/6, beta 0.5)
    return b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])  # type: ignore[list-item,return-value]


def _se(b: GraphBuilder, x: str, c: int) -> str:
    s = b.op("GlobalAveragePool", [x])
    s = b.op("Relu", [b.conv(s, c, c // 4, k=1)])  # type: ignore[arg-type]
    s = b.op("HardSigmoid", [b.conv(s, c // 4, c, k=1)], alpha=0.2, beta=0.5)  # type: ignore[arg-type]
    return b.op("Mul", [x, s])  # type: ignore[list-item,return-value]


def ppocr_classifier(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """A PP-OCR-style text-line direction classifier (MobileNetV3-small-like) as paddle2onnx writes it:
    input ``[-1, 3, 48, 192]``, every intermediate tensor declared in ``value_info`` with ``-1`` for the
    batch (and a ``0`` here and there), Softmax over two classes."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", ["N", 3, 48, 192])
    h = _hardswish(b, b.bn(b.conv(x, 3, 8, stride=2, bias=False), 8))
    h = b.op("Relu", [b.bn(b.conv(h, 8, 8, k=3, group=8, bias=False), 8)])  # type: ignore[assignment]
    h = _se(b, h, 8)
    h = b.bn(b.conv(h, 8, 16, k=1, bias=False), 16)
    h = _hardswish(b, b.bn(b.conv(h, 16, 24, stride=2, bias=False), 24))
    h = _hardswish(b, b.bn(b.conv(h, 24, 24, k=3, group=24, bias=False), 24))
    h = b.bn(b.conv(h, 24, 16, k=1, bias=False), 16)
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # type: ignore[assignment]
    h = _hardswish(b, b.bn(b.conv(h, 16, 32, k=1, bias=False), 32))
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item,assignment]
    logits = b.op("Gemm", [h, b.weight(32, 2), b.const(np.zeros(2, np.float32), "fcb")])
    b.output(str(b.op("Softmax", [logits], axis=1)))
    m = b.build()
    inferred = onnx.shape_inference.infer_shapes(m)
    del m.graph.value_info[:]
    for k, vi in enumerate(inferred.graph.value_info):  # paddle2onnx: -1 for the batch, sometimes 0
        vi = onnx.ValueInfoProto.FromString(vi.SerializeToString())
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = -1 if k % 5 else 0
        m.graph.value_info.append(vi)
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    m.producer_name = "paddle2onnx"
    m.ir_version = IR_VERSION
    return m


def float_cnn(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A small float CNN (Conv-Relu stack, a residual Add, pooling, a Gemm head) to quantize."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, 3, 16, 16])
    h = b.op("Relu", [b.conv(x, 3, 16)])
    r = b.op("Relu", [b.conv(h, 16, 16)])  # type: ignore[arg-type]
    h = b.op("Add", [h, b.conv(r, 16, 16)])  # type: ignore[list-item, arg-type]
    h = b.op("Relu", [b.conv(h, 16, 24, stride=2)])  # type: ignore[arg-type]
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item]
    h = b.op("MatMul", [h, b.weight(24, 32)])  # type: ignore[list-item]
    b.output(str(b.op("MatMul", [b.op("Relu", [h]), b.weight(32, 5)])))  # type: ignore[list-item]
    return b.build()


def float_mlp(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A two-hidden-layer MLP over tokens (``[1, 6, 16]``): MatMul + Add bias, GELU-free (Relu)."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, 6, 16])
    h = x
    for cin, cout in ((16, 32), (32, 24)):
        h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.weight(cin, cout)]),  # type: ignore[list-item]
                                       b.const(b.rng.standard_normal(cout).astype(np.float32), "b")])])
    b.output(str(b.op("MatMul", [h, b.weight(24, 8)])))
    return b.build()


def if_model(opset: int = 15, seed: int = 0, *, shape_condition: bool = False) -> onnx.ModelProto:
    """Conv stack → an ``If`` whose branches read an outer-scope tensor and return two outputs each;
    both feed the main graph, which continues with more Convs — the shape of torch 2.3's export of a
    voice-activity model. The condition is a graph input, or (``shape_condition``) computed from the
    input's shape, so it folds to a constant."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    if shape_condition:
        width = b.op("Gather", [b.op("Shape", [x]), b.const(np.array(3, np.int64))], axis=0)
        flag = b.op("Greater", [width, b.const(np.array(4, np.int64))])
    else:
        flag = b.input("flag", [], TensorProto.BOOL)
    h = b.op("Relu", [b.conv(x, 3, 8)])
    h2 = b.op("Relu", [b.conv(h, 8, 8)])  # type: ignore[arg-type]
    scale = b.const(np.float32(2.0), "scale")

    def branch(name: str, op: str) -> onnx.GraphProto:
        # Identity of an outer tensor and a computed constant: what normalisation used to drop
        c = helper.make_node("Constant", [], [f"{name}_c"],
                             value=numpy_helper.from_array(np.float32(0.5 if op == "Mul" else 1.5)))
        n1 = helper.make_node(op, [h2, scale], [f"{name}_a"])
        n2 = helper.make_node("Identity", [f"{name}_a"], [f"{name}_out0"])
        n3 = helper.make_node("Mul", [h2, f"{name}_c"], [f"{name}_out1"])
        outs = [helper.make_tensor_value_info(f"{name}_out{k}", TensorProto.FLOAT, None) for k in range(2)]
        return helper.make_graph([c, n1, n2, n3], name, [], outs)

    o0, o1 = b.op("If", [flag], 2, then_branch=branch("then", "Mul"), else_branch=branch("else", "Add"))
    s = b.op("Add", [o0, o1])
    y = b.conv(b.op("Relu", [b.conv(s, 8, 12)]), 12, 4)  # type: ignore[arg-type]
    b.output(y)
    return b.build()


def old_opset_cnn(opset: int = 9, seed: int = 0) -> onnx.ModelProto:
    """A Conv/BN/Relu/MaxPool/Gemm classifier written at an old opset (7, 8 or 9)."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, 3, 12, 12])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # type: ignore[assignment]
    h = b.op("Relu", [b.bn(b.conv(h, 8, 16), 16)])  # type: ignore[arg-type]
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item]
    b.output(str(b.op("Gemm", [h, b.weight(16, 4), b.const(np.zeros(4, np.float32), "fcb")])))
    return b.build()


def unconvertible_old_opset() -> onnx.ModelProto:
    """An opset-8 model with the experimental ``ImageScaler`` (dropped in opset 10): onnx.version_converter
    has no adapter for it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    g = helper.make_graph([helper.make_node("ImageScaler", ["x"], ["y"], scale=2.0)], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    return m


def dynamic_quantized(float_model: onnx.ModelProto, folder: str, *, per_channel: bool) -> onnx.ModelProto:
    """``float_model`` quantized with ONNX Runtime's ``quantize_dynamic`` (int8 weights; ConvInteger /
    MatMulInteger fed by DynamicQuantizeLinear), written through files in ``folder``."""
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(folder) / "float.onnx", Path(folder) / f"dynq{int(per_channel)}.onnx"
    onnx.save(float_model, src)
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return onnx.load(str(dst))


def text_detector(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A DB-style text detector with dynamic H, W: five stride-2 convs, a ×32 Resize back to the input
    resolution and an Add with the full-resolution features — it runs only at H, W multiples of 32."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", ["N", 3, "H", "W"])
    f0 = b.op("Relu", [b.conv(x, 3, 8)])
    h = f0
    for _ in range(5):
        h = b.op("Relu", [b.conv(h, 8, 8, stride=2)])  # type: ignore[arg-type]
    scales = b.const(np.array([1, 1, 32, 32], np.float32), "scales")
    up = b.op("Resize", [h, "", scales], mode="nearest")  # type: ignore[list-item]
    s = b.op("Add", [f0, up])  # type: ignore[list-item]
    b.output(str(b.op("Sigmoid", [b.conv(s, 8, 1, k=1)])))  # type: ignore[arg-type]
    return b.build()


def dynamic_sequence_attention(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """One self-attention block over a dynamic sequence (``[1, S, 16]``, one head): counted at S = 1 its
    attention costs nothing."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, "S", 16])
    q, k, v = (b.op("MatMul", [x, b.weight(16, 16)]) for _ in range(3))
    scores = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)  # type: ignore[list-item]
    h = b.op("MatMul", [scores, v])  # type: ignore[list-item]
    b.output(str(b.op("MatMul", [b.op("Relu", [b.op("MatMul", [h, b.weight(16, 32)])]), b.weight(32, 16)])))  # type: ignore[list-item]
    return b.build()
