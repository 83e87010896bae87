"""Shared test helpers: tiny graph builders and the one mask-oracle assertion every rewrite test uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

import spa
from spa.api import PruneResult

IR_VERSION = 8


@dataclass
class GraphBuilder:
    """Builds a small ONNX graph with seeded random weights.

    >>> b = GraphBuilder(opset=13)
    >>> x = b.input("x", [1, 3, 8, 8])
    >>> y = b.conv(x, 3, 4)
    >>> b.output(y)
    >>> m = b.build(); m.ir_version
    8
    """

    opset: int = 13
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, name: str, shape: Sequence[int | str], elem: int = onnx.TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str] | None = None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def weight(self, *shape: int, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        outs = [self.name(op_type.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # common layers -----------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             stride: int = 1, dims: int = 2) -> str:
        w = self.weight(cout, cin // group, *([k] * dims))
        ins = [x, w] + ([self.const(self.rng.standard_normal(cout).astype(np.float32), "b")] if bias else [])
        return self.op("Conv", ins, pads=[k // 2] * (2 * dims), group=group, strides=[stride] * dims)  # type: ignore[return-value]

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.standard_normal(c), r.standard_normal(c) * 0.1, r.uniform(0.5, 2, c)]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.op("BatchNormalization", [x] + names)  # type: ignore[return-value]

    def build(self) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = IR_VERSION
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in m.graph.output:
            if o.name in known and known[o.name].type.tensor_type.HasField("shape"):
                o.CopyFrom(known[o.name])
        onnx.checker.check_model(m, full_check=True)
        return m


def assert_oracle(
    model: onnx.ModelProto | str,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    expect_pruned: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    **kwargs: object,
) -> PruneResult:
    """Prune, then require: valid model, same outputs/shapes, MACs not increased, pruned == masked twin.

    Returns the :class:`~spa.api.PruneResult` for further structural assertions.
    """
    result = spa.prune(model, ratio=ratio, criterion=criterion, emit_masked=True, **kwargs)  # type: ignore[arg-type]
    onnx.checker.check_model(result.model, full_check=True)
    assert result.masked is not None
    if expect_pruned:
        assert result.plan.groups, "expected something to be pruned"
        assert result.report["params_after"] < result.report["params_before"]  # type: ignore[operator]
    assert result.report["macs_after"] <= result.report["macs_before"]  # type: ignore[operator]
    original = spa.load(model).to_onnx()
    assert [o.name for o in result.model.graph.output] == [o.name for o in original.graph.output]
    res = spa.verify(result.model, result.masked, rtol=rtol, atol=_scaled_atol(result, atol))
    assert res.ok, f"mask oracle failed: {res.to_json()}"
    ref = spa.verify(result.model, original, trials=1, rtol=1e30, atol=1e30)
    for d in ref.diffs:  # same output shapes as the original
        assert d.max_abs != float("inf"), f"output {d.name} changed shape"
    return result


def _scaled_atol(result: PruneResult, atol: float) -> float:
    """atol relative to the masked twin's output magnitude (deep nets have large activations)."""
    from spa.runtime.feeds import random_inputs, runnable_shapes
    from spa.runtime.session import session

    sess = session(result.masked)  # type: ignore[arg-type]
    outs = sess.run(None, random_inputs(sess, seed=0, shapes=runnable_shapes(sess)))  # sizes it accepts
    scale = max((float(np.max(np.abs(o))) for o in outs if np.asarray(o).size), default=1.0)
    return atol * max(1.0, scale)
