"""Execute an ONNX graph in torch, its float initializers as trainable parameters.

:class:`GraphModule` walks the graph's nodes in topological order and runs each through the op table
of :mod:`spa.recover.ops`. It runs the graph *as written* (no normalisation), so the weights it trains
map one to one back onto the same initializers: :meth:`GraphModule.export` returns the input model with
only the trained initializers' values replaced. Which initializers train is
:data:`spa.recover.ops.TRAINABLE_INPUTS` (weights, biases, normalisation scales and shifts, constants of
Add/Sub/Mul): float32/float64 initializers every one of whose uses is such an input.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from spa.errors import UnsupportedModelError
from spa.recover.backend import torch
from spa.recover.ops import TRAINABLE_INPUTS, op_table

_TRAINABLE_DTYPES = (np.float32, np.float64)
_ELEMENTWISE = ("Add", "Sub", "Mul")


def _attr(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(v).copy())
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v


def _constant(node: onnx.NodeProto) -> Any:
    a = {x.name: _attr(x) for x in node.attribute}
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise UnsupportedModelError(f"Constant node '{node.name}': attribute {', '.join(a)} is not supported")


def _toposort(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    known = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            n = rest[0]
            missing = [i for i in n.input if i not in known]
            raise UnsupportedModelError(f"node '{n.name}' ({n.op_type}) reads {missing}, which no node makes")
        pending = rest
    return order


def trainable_names(model: onnx.ModelProto) -> list[str]:
    """The initializers ``spa recover`` trains, in initializer order: float32/float64, every use an input of
    :data:`~spa.recover.ops.TRAINABLE_INPUTS`, and not a single number read by Add/Sub/Mul."""
    scalars = {i.name for i in model.graph.initializer if int(np.prod(i.dims)) <= 1}
    uses: dict[str, list[bool]] = {}
    for n in model.graph.node:
        ok = TRAINABLE_INPUTS.get(n.op_type, ()) if n.domain in ("", "ai.onnx") else ()
        for k, name in enumerate(n.input):
            uses.setdefault(name, []).append(k in ok)
    for n in model.graph.node:  # a scalar of Add/Sub/Mul is structure (an epsilon, 1/sqrt(d)), not a weight
        if n.op_type in _ELEMENTWISE:
            for name in n.input:
                uses.setdefault(name, [])
                if name in scalars:
                    uses[name].append(False)
    outputs = {o.name for o in model.graph.output}
    names = []
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        if dtype in _TRAINABLE_DTYPES and uses.get(init.name) and all(uses[init.name]) and init.name not in outputs:
            names.append(init.name)
    return names


def check_supported(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedModelError` naming the first node the op table cannot run."""
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or (n.op_type not in op_table() and n.op_type != "Constant"):
            dom = f"{n.domain}." if n.domain else ""
            raise UnsupportedModelError(
                f"spa recover cannot run node '{n.name}' (op {dom}{n.op_type}) in torch; "
                "prune without it or open an issue with the model")


class GraphModule:
    """An ONNX model as a torch module: ``forward(feeds)`` returns the graph outputs in order.

    Args:
        model: the ONNX model (not modified).
        trainable: names of the initializers to train (default :func:`trainable_names`).
    """

    def __init__(self, model: onnx.ModelProto, trainable: Sequence[str] | None = None) -> None:
        check_supported(model)
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.nodes = _toposort(model.graph)
        self.trainable = list(trainable_names(model) if trainable is None else trainable)
        train = set(self.trainable)
        self.params: list[Any] = []
        self._slot: dict[str, tuple[str, int]] = {}
        fixed: list[torch.Tensor] = []
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            t = torch.from_numpy(np.array(arr, copy=True))
            if init.name in train:
                self._slot[init.name] = ("p", len(self.params))
                self.params.append(torch.nn.Parameter(t))
            else:
                self._slot[init.name] = ("b", len(fixed))
                fixed.append(t)
        self.fixed = fixed
        self.device = "cpu"
        self.output_names = [o.name for o in model.graph.output]
        self.input_names = [i.name for i in model.graph.input if i.name not in self._slot]
        self._attrs = [{a.name: _attr(a) for a in n.attribute} for n in self.nodes]
        for node, attrs in zip(self.nodes, self._attrs):
            if node.op_type == "Split":
                attrs["_outputs"] = len(node.output)
        #: ``(position in nodes, input index) -> f``: ``f`` maps what that node reads there (channel gates)
        self.input_hooks: dict[tuple[int, int], Callable[[Any], Any]] = {}

    def tensor(self, name: str) -> Any:
        kind, k = self._slot[name]
        return self.params[k] if kind == "p" else self.fixed[k]

    def parameters(self) -> list[Any]:
        """The trainable tensors (``torch.nn.Parameter``), in initializer order."""
        return list(self.params)

    def to(self, device: str) -> GraphModule:
        """Move every tensor to ``device``; returns self."""
        with torch.no_grad():
            self.params = [torch.nn.Parameter(p.detach().to(device)) for p in self.params]
        # float constants go to the device; integer ones (shape vectors, indices) stay on the CPU with the
        # shape arithmetic they feed
        self.fixed = [t.to(device) if t.is_floating_point() else t for t in self.fixed]
        self.device = device
        return self

    def __call__(self, feeds: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Any]:
        return self.forward(feeds, extra)

    def named_weights(self) -> dict[str, Any]:
        """The trainable initializers by name."""
        return {name: self.params[k] for name, (kind, k) in self._slot.items() if kind == "p"}

    def forward(self, feeds: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Any]:
        """Run the graph; returns its outputs (then the ``extra`` tensors) in order."""
        dev = self.device if self.device != "cpu" else None
        env: dict[str, Any] = {"": None}
        for name in self._slot:
            env[name] = self.tensor(name)
        for name in self.input_names:
            if name not in feeds:
                raise UnsupportedModelError(f"no data for model input '{name}'")
            env[name] = feeds[name]
        for pos, (node, attrs) in enumerate(zip(self.nodes, self._attrs)):
            if node.op_type == "Constant":
                t = _constant(node)
                env[node.output[0]] = t.to(dev) if dev is not None and t.is_floating_point() else t
                continue
            args = [env[i] for i in node.input]
            for k in range(len(args)) if self.input_hooks else ():
                hook = self.input_hooks.get((pos, k))
                if hook is not None:
                    args[k] = hook(args[k])
            try:
                outs = op_table()[node.op_type](args, attrs, self.opset)
            except UnsupportedModelError as exc:
                raise UnsupportedModelError(f"spa recover cannot run node '{node.name}' (op {node.op_type}): {exc}"
                                            ) from None
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UnsupportedModelError(
                    f"node '{node.name}' (op {node.op_type}) failed in torch: {first}") from None
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
        return [env[n] for n in [*self.output_names, *extra]]

    def export(self) -> onnx.ModelProto:
        """The input model with each trained initializer's value replaced (same name, shape and dtype)."""
        out = copy.deepcopy(self.model)
        weights = self.named_weights()
        for k, init in enumerate(out.graph.initializer):
            if init.name in weights:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                value = weights[init.name].detach().cpu().numpy().astype(dtype)
                out.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, init.name))
        return out
