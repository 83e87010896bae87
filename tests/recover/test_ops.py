"""The torch executor of ``spa recover`` against ONNX Runtime: node by node on single-op graphs (the op table's
attribute handling), and whole graphs (exporter fixtures, the demo CNN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.errors import UnsupportedModelError
from spa.graph.io import load_model
from spa.runtime.feeds import random_inputs
from spa.runtime.session import session

torch = pytest.importorskip("torch")
from spa.recover.executor import GraphModule, trainable_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def assert_matches_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> None:
    sess = session(model)
    feeds = feeds or random_inputs(sess, seed=0, batch=2)
    want = sess.run(None, feeds)
    with torch.no_grad():
        got = GraphModule(model)({k: torch.from_numpy(v) for k, v in feeds.items()})
    for g, w in zip(got, want):
        g = g.numpy()
        assert g.shape == w.shape
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        assert np.max(np.abs(g.astype(np.float64) - w), initial=0.0) <= 1e-4 * scale


def one_node(op: str, x_shape: list[int], inits: dict[str, np.ndarray] | None = None, opset: int = 17,
             extra_inputs: tuple[str, ...] = (), **attrs: object) -> onnx.ModelProto:
    inits = inits or {}
    names = ["x", *extra_inputs]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


rng = np.random.default_rng(0)
W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
B = rng.standard_normal(6).astype(np.float32)
I64 = np.int64

CASES = {
    "conv_asym_pads": one_node("Conv", [2, 4, 9, 9], {"w": W, "b": B}, extra_inputs=("w", "b"),
                               pads=[0, 1, 1, 2], strides=[2, 2]),
    "conv_same_upper": one_node("Conv", [2, 4, 8, 8], {"w": W}, extra_inputs=("w",), auto_pad="SAME_UPPER",
                                strides=[2, 2]),
    "conv_grouped_dilated": one_node("Conv", [2, 4, 9, 9], {"w": W[:, :2]}, extra_inputs=("w",), group=2,
                                     dilations=[2, 2], pads=[2, 2, 2, 2]),
    "convtranspose": one_node("ConvTranspose", [2, 6, 5, 5], {"w": W, "b": B[:4]}, extra_inputs=("w", "b"),
                              strides=[2, 2], pads=[1, 0, 1, 0], output_padding=[1, 1]),
    "gemm_trans": one_node("Gemm", [5, 3], {"w": rng.standard_normal((4, 3)).astype(np.float32),
                                            "c": rng.standard_normal(4).astype(np.float32)},
                           extra_inputs=("w", "c"), transB=1, alpha=0.5, beta=2.0),
    "maxpool_ceil_pads": one_node("MaxPool", [2, 3, 9, 9], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                  ceil_mode=1),
    "maxpool_asym": one_node("MaxPool", [2, 3, 8, 8], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
    "avgpool_exclude": one_node("AveragePool", [2, 3, 9, 9], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_include": one_node("AveragePool", [2, 3, 9, 9], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                count_include_pad=1),
    "resize_nearest_asym": one_node("Resize", [1, 2, 4, 5], {"r": np.zeros(0, np.float32),
                                                             "s": np.array([1, 1, 2, 2], np.float32)},
                                    extra_inputs=("r", "s"), mode="nearest", nearest_mode="floor",
                                    coordinate_transformation_mode="asymmetric"),
    "resize_linear_half": one_node("Resize", [1, 2, 4, 5], {"r": np.zeros(0, np.float32),
                                                            "s": np.array([1, 1, 2, 1.5], np.float32)},
                                   extra_inputs=("r", "s"), mode="linear"),
    "resize_linear_sizes_ac": one_node("Resize", [1, 2, 4, 5], {"r": np.zeros(0, np.float32),
                                                                "s": np.zeros(0, np.float32),
                                                                "z": np.array([1, 2, 7, 9], I64)},
                                       extra_inputs=("r", "s", "z"), mode="linear",
                                       coordinate_transformation_mode="align_corners"),
    "pad_reflect": one_node("Pad", [1, 2, 5, 5], {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)},
                            extra_inputs=("p",), mode="reflect"),
    "pad_edge": one_node("Pad", [1, 2, 5, 5], {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)},
                         extra_inputs=("p",), mode="edge"),
    "pad_const": one_node("Pad", [1, 2, 5, 5], {"p": np.array([0, 1, 1, 2, 0, 0, 2, 1], I64),
                                               "v": np.array(1.5, np.float32)}, extra_inputs=("p", "v")),
    "slice_neg_step": one_node("Slice", [3, 8], {"s": np.array([-1], I64), "e": np.array([-9], I64),
                                                 "a": np.array([1], I64), "t": np.array([-2], I64)},
                               extra_inputs=("s", "e", "a", "t")),
    "slice_clamped": one_node("Slice", [3, 8], {"s": np.array([1, 2], I64), "e": np.array([100, -1], I64)},
                              extra_inputs=("s", "e")),
    "gather_neg": one_node("Gather", [3, 8], {"i": np.array([[-1, 0], [2, 1]], I64)}, extra_inputs=("i",), axis=1),
    "softmax_opset11": one_node("Softmax", [2, 3, 4], opset=11, axis=1),
    "logsoftmax": one_node("LogSoftmax", [2, 3, 4], axis=-2),
    "layernorm": one_node("LayerNormalization", [2, 3, 4], {"g": rng.standard_normal(4).astype(np.float32),
                                                             "b": rng.standard_normal(4).astype(np.float32)},
                          extra_inputs=("g", "b"), epsilon=1e-3),
    "instancenorm": one_node("InstanceNormalization", [2, 3, 4, 4], {"g": B[:3], "b": B[3:]}, extra_inputs=("g", "b")),
    "batchnorm": one_node("BatchNormalization", [2, 3, 4, 4], {"g": B[:3], "b": B[3:], "m": B[:3] * 0.1,
                                                               "v": np.abs(B[3:]) + 0.5},
                          extra_inputs=("g", "b", "m", "v")),
    "reducemean_18": one_node("ReduceMean", [2, 3, 4], {"a": np.array([1, -1], I64)}, opset=18, extra_inputs=("a",),
                              keepdims=0),
    "reducesum_13": one_node("ReduceSum", [2, 3, 4], {"a": np.array([1], I64)}, opset=13, extra_inputs=("a",)),
    "reducemax_attr": one_node("ReduceMax", [2, 3, 4], opset=13, axes=[2]),
    "hardsigmoid": one_node("HardSigmoid", [2, 5], alpha=0.3, beta=0.4),
    "hardswish": one_node("HardSwish", [2, 5]),
    "leakyrelu": one_node("LeakyRelu", [2, 5], alpha=0.2),
    "elu": one_node("Elu", [2, 5], alpha=0.7),
    "gelu_tanh": one_node("Gelu", [2, 5], opset=20, approximate="tanh"),
    "clip_inputs": one_node("Clip", [2, 5], {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)},
                            extra_inputs=("lo", "hi")),
    "clip_attrs_opset6": one_node("Clip", [2, 5], opset=6, min=-0.5, max=0.7),
    "split_uneven": one_node("Split", [2, 7], opset=18, axis=1, num_outputs=1),
    "transpose": one_node("Transpose", [2, 3, 4], perm=[2, 0, 1]),
    "flatten": one_node("Flatten", [2, 3, 4, 5], axis=2),
    "expand": one_node("Expand", [3, 1], {"s": np.array([2, 3, 4], I64)}, extra_inputs=("s",)),
    "tile": one_node("Tile", [2, 3], {"r": np.array([2, 1], I64)}, extra_inputs=("r",)),
    "prelu": one_node("PRelu", [2, 3, 4], {"s": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1)},
                      extra_inputs=("s",)),
    "pow": one_node("Pow", [2, 3], {"e": np.array(2.0, np.float32)}, extra_inputs=("e",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnx_runtime(name: str) -> None:
    model = CASES[name]
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    if name == "pow":
        x = np.abs(x)
    assert_matches_ort(model, {"x": x})


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/fixtures").glob("*.onnx"))
                         + ["models/demo_cnn.onnx"])
def test_graph_matches_onnx_runtime(path: str) -> None:
    assert_matches_ort(load_model(ROOT / path))


def test_unsupported_op_is_one_line_naming_node_and_op() -> None:
    model = one_node("Hardmax", [2, 3])
    model.graph.node[0].name = "hm"
    with pytest.raises(UnsupportedModelError, match=r"node 'hm' \(op Hardmax\)") as err:
        GraphModule(model)
    assert "\n" not in str(err.value)


def test_trainable_initializers_are_weights_not_shapes_or_statistics() -> None:
    bn = CASES["batchnorm"]
    assert trainable_names(bn) == ["g", "b", "m"]  # the running variance stays fixed (it must stay > 0)
    assert trainable_names(CASES["resize_linear_half"]) == []
    assert trainable_names(CASES["conv_asym_pads"]) == ["w", "b"]


def test_scalars_of_elementwise_ops_stay_fixed() -> None:
    model = one_node("Add", [2, 3], {"eps": np.array(1e-5, np.float32)}, extra_inputs=("eps",))
    assert trainable_names(model) == []  # a LayerNorm epsilon must not be trained (ORT fuses it, eps >= 0)
    model = one_node("Add", [2, 3], {"b": np.ones(3, np.float32)}, extra_inputs=("b",))
    assert trainable_names(model) == ["b"]
