"""Build the demo CNN (``models/demo_cnn.onnx``) with ``onnx.helper`` + numpy only (no torch).

A small ResNet-like classifier for ``1x3x64x64`` input, 10 classes, opset 17,
IR version 8, ~1.3 MB of float32 weights drawn from ``numpy.random.default_rng(0)``.
It exercises the structures a channel pruner must handle::

    stem      Conv3x3/2 3->48 + BN + Relu                        (32x32)
    res1      [Conv3x3 + BN + Relu, Conv3x3 + BN] + identity Add, Relu
    res_dw    [Conv1x1 48->96 + BN + Relu, depthwise Conv3x3 (group 96) + BN + Relu,
               Conv1x1 96->48 + BN] + identity Add, Relu
    down1     Conv3x3/2 48->96 + BN + Relu                       (16x16)
    cat       Concat([Conv1x1 96->48 + BN + Relu, Conv3x3 96->48 + BN + Relu]) -> 96,
              then Conv1x1 96->96 + BN + Relu
    se        x * Sigmoid(Conv1x1 24->96(Relu(Conv1x1 96->24(GlobalAveragePool(x)))))
    down2     Conv3x3/2 96->192 + BN + Relu                      (8x8)
    head      GlobalAveragePool -> Flatten -> Gemm 192->10 ("logits")

Run ``python models/make_demo.py [OUT]`` (default: ``models/demo_cnn.onnx``
next to this file); the result is checked with ``onnx.checker`` (full check)
and, if installed, run once with ONNX Runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
INPUT_SHAPE = (1, 3, 64, 64)
NUM_CLASSES = 10
C1, C2, C3 = 48, 96, 192
DEFAULT_OUT = Path(__file__).resolve().parent / "demo_cnn.onnx"


class _Builder:
    """Accumulates nodes and initializers; every layer helper returns its output name."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
    ) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin // group, k, k))
        inputs = [x, self._init(f"{name}.weight", w)]
        if bias:
            inputs.append(self._init(f"{name}.bias", self.rng.normal(0.0, 0.05, size=cout)))
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                group=group,
                dilations=[1, 1],
            )
        )
        return name

    def bn(self, x: str, name: str, ch: int) -> str:
        scale = self.rng.uniform(0.5, 1.5, size=ch)
        shift = self.rng.normal(0.0, 0.1, size=ch)
        mean = self.rng.normal(0.0, 0.1, size=ch)
        var = self.rng.uniform(0.5, 1.5, size=ch)
        params = (("scale", scale), ("bias", shift), ("mean", mean), ("var", var))
        inputs = [x] + [self._init(f"{name}.{suffix}", arr) for suffix, arr in params]
        self.nodes.append(
            helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-5, momentum=0.9)
        )
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def cbr(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        relu: bool = True,
    ) -> str:
        """Conv (no bias) -> BatchNormalization -> optional Relu."""
        y = self.bn(self.conv(x, f"{name}.conv", cin, cout, k, stride, group), f"{name}.bn", cout)
        return self.op("Relu", [y], f"{name}.relu") if relu else y


def build_demo_model(seed: int = 0) -> onnx.ModelProto:
    """Return the demo CNN as an ``onnx.ModelProto`` (deterministic for a given ``seed``)."""
    b = _Builder(seed)
    x = b.cbr("input", "stem", 3, C1, 3, stride=2)

    # res1: basic residual block with identity shortcut.
    y = b.cbr(x, "res1.a", C1, C1, 3)
    y = b.cbr(y, "res1.b", C1, C1, 3, relu=False)
    x = b.op("Relu", [b.op("Add", [y, x], "res1.add")], "res1.relu")

    # res_dw: inverted residual with a depthwise conv.
    y = b.cbr(x, "res_dw.expand", C1, 2 * C1, 1)
    y = b.cbr(y, "res_dw.dw", 2 * C1, 2 * C1, 3, group=2 * C1)
    y = b.cbr(y, "res_dw.project", 2 * C1, C1, 1, relu=False)
    x = b.op("Relu", [b.op("Add", [y, x], "res_dw.add")], "res_dw.relu")

    x = b.cbr(x, "down1", C1, C2, 3, stride=2)

    # cat: two branches concatenated along channels, then fused by a 1x1 conv.
    ya = b.cbr(x, "cat.branch_a", C2, C2 // 2, 1)
    yb = b.cbr(x, "cat.branch_b", C2, C2 // 2, 3)
    x = b.op("Concat", [ya, yb], "cat.concat", axis=1)
    x = b.cbr(x, "cat.fuse", C2, C2, 1)

    # se: squeeze-excitation gating.
    s = b.op("GlobalAveragePool", [x], "se.pool")
    s = b.op("Relu", [b.conv(s, "se.reduce", C2, C2 // 4, 1, bias=True)], "se.relu")
    s = b.op("Sigmoid", [b.conv(s, "se.expand", C2 // 4, C2, 1, bias=True)], "se.gate")
    x = b.op("Mul", [x, s], "se.mul")

    x = b.cbr(x, "down2", C2, C3, 3, stride=2)

    # head
    x = b.op("GlobalAveragePool", [x], "head.pool")
    x = b.op("Flatten", [x], "head.flatten", axis=1)
    w = b._init("head.fc.weight", b.rng.normal(0.0, 0.05, size=(NUM_CLASSES, C3)))
    bias = b._init("head.fc.bias", b.rng.normal(0.0, 0.01, size=NUM_CLASSES))
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["logits"], name="head.fc", transB=1))

    graph = helper.make_graph(
        b.nodes,
        "demo_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [INPUT_SHAPE[0], NUM_CLASSES])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="spa.models.make_demo",
        doc_string="Seeded ResNet-like demo CNN (residual, depthwise, concat, SE) for structured pruning.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    """Write the demo model (``argv[0]`` or :data:`DEFAULT_OUT`) and sanity-check it."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    model = build_demo_model()
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    msg = f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, {n_params} params)"
    try:
        import onnxruntime as ort
    except ImportError:
        print(msg + "; onnxruntime not installed, skipped run")
        return 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    (logits,) = sess.run(None, {"input": x})
    print(msg + f"; ORT logits shape {logits.shape}, max |logit| {np.abs(logits).max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
