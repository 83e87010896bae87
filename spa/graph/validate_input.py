"""Checks on an input model before spa touches it.

Corrupt or hand-edited files must end in a one-line :class:`~spa.errors.InvalidModelError` that says what
is wrong, never in a crash deep inside onnx, onnx-graphsurgeon or numpy (or an abort in onnx's C++ shape
inference). The checks are cheap and run on every model:

* every initializer's data matches its dims and type (external data is checked when it is mapped);
* no declared dimension is negative (onnx's shape inference aborts the process on some of them) —
  :func:`forget_placeholder_dims` first turns the ``-1`` (and, on intermediate tensors, ``0``) that
  exporters such as paddle2onnx write for "unknown" into unknown dimensions;
* constant Resize/Upsample scales and roi are finite (ONNX Runtime aborts the process on a NaN scale);
* the ONNX checker (structure, SSA, topological order, attribute types); a model the checker rejects
  but ONNX Runtime loads is accepted with a warning — exporters ship such models.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper, numpy_helper

from spa.errors import InvalidModelError

log = logging.getLogger(__name__)

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_initializers(model: onnx.ModelProto) -> None:
    """Refuse initializers whose stored data does not match their dims and type."""
    for t in model.graph.initializer:
        if any(d < 0 for d in t.dims):
            raise InvalidModelError(f"initializer '{t.name}' has a negative dimension {list(t.dims)}")
        if external_data_helper.uses_external_data(t) or t.data_type in (onnx.TensorProto.STRING, 0):
            continue
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            raise InvalidModelError(f"initializer '{t.name}' has an unknown data type {t.data_type}") from None
        if t.HasField("raw_data"):
            if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
                continue
            if len(t.raw_data) != n * itemsize:
                raise InvalidModelError(
                    f"initializer '{t.name}' holds {len(t.raw_data)} bytes but dims {list(t.dims)} need "
                    f"{n * itemsize}; the file is corrupt or was edited — re-export the model")
        else:
            stored = max((len(getattr(t, f)) for f in _TYPED_FIELDS), default=0)
            if stored and stored not in (n, 2 * n):  # complex types store two values per element
                raise InvalidModelError(
                    f"initializer '{t.name}' holds {stored} values but dims {list(t.dims)} need {n}; "
                    "the file is corrupt or was edited — re-export the model")


def forget_placeholder_dims(model: onnx.ModelProto) -> int:
    """Make placeholder dimensions unknown, in place; returns how many were changed.

    paddle2onnx (and some hand-written graphs) declare ``-1`` for a dimension they do not know, on
    graph inputs, outputs and ``value_info``, and ``0`` on intermediate tensors. Neither is a size:
    both become unknown (no ``dim_value``, no ``dim_param``), so shape inference recomputes them. A
    ``0`` on a graph input is left alone (an empty input is a size, whatever its use).

    >>> m = onnx.helper.make_model(onnx.helper.make_graph([], "g",
    ...     [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3])],
    ...     [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [0, 3])]))
    >>> forget_placeholder_dims(m), m.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    (2, False)
    """
    g = model.graph
    inputs = {vi.name for vi in g.input}
    changed = 0
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        placeholder_zero = vi.name not in inputs
        for d in tt.shape.dim:
            if d.HasField("dim_value") and (d.dim_value < 0 or (d.dim_value == 0 and placeholder_zero)):
                d.Clear()
                changed += 1
    if changed:
        log.info("%d placeholder dimensions (-1 or 0) declared in the model are treated as unknown", changed)
    return changed


def check_dims(model: onnx.ModelProto) -> None:
    """Refuse negative declared dimensions (onnx's shape inference can abort the process on them)."""
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            for axis, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value < 0:
                    raise InvalidModelError(
                        f"tensor '{vi.name}' declares dimension {d.dim_value} on axis {axis}; dimensions must be "
                        ">= 0 (fix or drop its value_info)")


def check_structure(model: onnx.ModelProto) -> None:
    """Run the ONNX checker; accept what it rejects only if ONNX Runtime loads the model."""
    if model.ByteSize() > 2**31 - 2**26 or any(
            external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        return  # external data: checked where it is mapped (offsets, lengths, locations)
    try:
        onnx.checker.check_model(model)
        return
    except Exception as exc:  # noqa: BLE001 - the checker raises ValidationError and, for odd protos, others
        reason = _one_line(str(exc))
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        # the one session outside spa.runtime (which sits above spa.graph): only "does ORT load it?"
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ONNX Runtime raises its own untyped errors: any refusal is the answer
        raise InvalidModelError(
            f"the model fails the ONNX checker ({reason}) and ONNX Runtime cannot load it either; "
            "re-export it or fix it with onnx.checker's message") from None
    log.warning("the ONNX checker rejects the input (%s), but ONNX Runtime loads it: going on", reason)


#: (op, input index) of size-like float constants that must be finite (ONNX Runtime aborts the process on
#: a NaN Resize scale while it loads the model: a C++ assertion, no exception to catch)
_FINITE_INPUTS = {("Resize", 1): "roi", ("Resize", 2): "scales", ("Upsample", 1): "scales"}


def check_finite_sizes(model: onnx.ModelProto) -> None:
    """Refuse non-finite constant Resize/Upsample scales or roi (they crash ONNX Runtime natively)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            what = _FINITE_INPUTS.get((node.op_type, k))
            if what is None or name not in inits or external_data_helper.uses_external_data(inits[name]):
                continue
            values = numpy_helper.to_array(inits[name])
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise InvalidModelError(
                    f"{node.op_type} '{node.name}' has non-finite {what} {values.tolist()} (initializer "
                    f"'{name}'); fix the constant or re-export the model")


def validate_input(model: onnx.ModelProto) -> None:
    """All input checks (see the module docstring)."""
    check_initializers(model)
    check_dims(model)
    check_finite_sizes(model)
    check_structure(model)
