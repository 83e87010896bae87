"""ONNX operators as torch functions: the op table of the recover executor.

Each entry takes ``(inputs, attrs, opset)`` — the node's input tensors (``None`` for an empty input
name), its attributes as plain Python values and the model's default-domain opset — and returns the
node's outputs as a list. Integer tensors (shapes, indices) stay torch ``int64`` tensors, so shape
arithmetic runs in the same graph walk. ``tests/recover/test_ops.py`` checks every entry against ONNX
Runtime node by node.

The table lives here rather than in a rule hook: it is only needed by ``spa recover`` (the ``recover``
extra: torch), and keeping torch out of ``spa.rules`` keeps the core layers torch-free.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import onnx

from spa.errors import UnsupportedModelError
from spa.recover.backend import torch

Tensor = Any
Op = Callable[[list[Any], dict[str, Any], int], list[Any]]

_DTYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
           onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
           onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT16: "int16",
           onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool"}


def torch_dtype(elem_type: int) -> Any:
    """The torch dtype of an ONNX element type."""
    if elem_type not in _DTYPES:
        raise UnsupportedModelError(f"element type {onnx.TensorProto.DataType.Name(elem_type)} has no torch dtype")
    return getattr(torch, _DTYPES[elem_type])


def _ints(t: Any) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _nnf() -> Any:
    return torch.nn.functional


# ---------------------------------------------------------------- elementwise
def _unary(fn: Callable[[Tensor], Tensor]) -> Op:
    return lambda i, a, o: [fn(i[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    return lambda i, a, o: [fn(i[0], i[1])]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
        out = i[0]
        for t in i[1:]:
            out = fn(out, t)
        return [out]
    return run


def _div(x: Tensor, y: Tensor) -> Tensor:
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _pow(x: Tensor, y: Tensor) -> Tensor:
    return torch.pow(x, y.to(x.dtype) if x.is_floating_point() else y)


def _clip(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    if lo is not None:
        x = torch.clamp(x, min=float(lo) if not isinstance(lo, torch.Tensor) else lo.to(x.dtype))
    if hi is not None:
        x = torch.clamp(x, max=float(hi) if not isinstance(hi, torch.Tensor) else hi.to(x.dtype))
    return [x]


def _gelu(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [_nnf().gelu(i[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")]


def _softmax_like(fn: Callable[..., Tensor]) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
        x = i[0]
        if o >= 13:
            return [fn(x, dim=a.get("axis", -1))]
        axis = _axis(a.get("axis", 1), x.dim())  # before opset 13: coerced to 2-D at axis
        flat = x.reshape(int(math.prod(x.shape[:axis])), -1)
        return [fn(flat, dim=1).reshape(x.shape)]
    return run


def _cast(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [i[0].to(torch_dtype(a["to"]))]


def _where(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, y = i[1], i[2]
    if x.dtype != y.dtype:
        y = y.to(x.dtype)
    return [torch.where(i[0].bool().to(x.device), x, y.to(x.device))]


# ---------------------------------------------------------------- conv / linear
def _conv_pads(a: dict[str, Any], x: Tensor, kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for d in range(n):
            size = x.shape[2 + d]
            out = -(-size // strides[d])
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size)
            small, big = total // 2, total - total // 2
            pads[d], pads[d + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _pad_input(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Symmetric pads as a list for torch, or the input padded when begin != end."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    spec: list[int] = []
    for d in reversed(range(n)):
        spec += [pads[d], pads[d + n]]
    return _nnf().pad(x, spec, value=value), [0] * n


def _conv(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    n = x.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    x, pad = _pad_input(x, _conv_pads(a, x, kernel, strides, dil))
    fn = (_nnf().conv1d, _nnf().conv2d, _nnf().conv3d)[n - 1]
    return [fn(x, w, b, stride=strides, padding=pad, dilation=dil, groups=a.get("group", 1))]


def _conv_transpose(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    n = x.dim() - 2
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    outpad = list(a.get("output_padding", [0] * n))
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise UnsupportedModelError("ConvTranspose with output_shape or SAME auto_pad")
    pads = list(a.get("pads", [0] * (2 * n)))
    fn = (_nnf().conv_transpose1d, _nnf().conv_transpose2d, _nnf().conv_transpose3d)[n - 1]
    y = fn(x, w, b, stride=strides, padding=0, output_padding=outpad, groups=a.get("group", 1), dilation=dil)
    idx: list[slice] = [slice(None), slice(None)]
    for d in range(n):
        full = (x.shape[2 + d] - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1 + outpad[d]
        idx.append(slice(pads[d], full - pads[d + n]))
    return [y[tuple(idx)]]


def _gemm(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, w = i[0], i[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return [y]


# ---------------------------------------------------------------- normalisation
def _batch_norm(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, scale, bias, mean, var = i[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
    return [(x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)]


def _instance_norm(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [_nnf().instance_norm(i[0], weight=i[1], bias=i[2], eps=a.get("epsilon", 1e-5))]


def _layer_norm(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    axis = _axis(a.get("axis", -1), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * i[1]
    if len(i) > 2 and i[2] is not None:
        y = y + i[2]
    return [y]


# ---------------------------------------------------------------- pooling
def _pool(kind: str) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
        x = i[0]
        n = x.dim() - 2
        kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        pads = _conv_pads(a, x, kernel, strides, dil)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            x, pad = _pad_input(x, pads, value=-math.inf)
            fn = (_nnf().max_pool1d, _nnf().max_pool2d, _nnf().max_pool3d)[n - 1]
            return [fn(x, kernel, strides, pad, dilation=dil, ceil_mode=ceil)]
        if any(d != 1 for d in dil):
            raise UnsupportedModelError("AveragePool with dilations")
        include = bool(a.get("count_include_pad", 0))
        sym = pads[:n] == pads[n:] and all(pads[d] <= kernel[d] // 2 for d in range(n))
        if not sym:
            if not include:
                raise UnsupportedModelError("AveragePool with asymmetric pads excluding the padding")
            x, pad = _pad_input(x, pads)
        else:
            pad = pads[:n]
        fn = (_nnf().avg_pool1d, _nnf().avg_pool2d, _nnf().avg_pool3d)[n - 1]
        return [fn(x, kernel, strides, pad, ceil_mode=ceil, count_include_pad=include)]
    return run


def _global(fn: Callable[..., Tensor]) -> Op:
    return lambda i, a, o: [fn(i[0], tuple(range(2, i[0].dim())))]


def _gmax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return x.amax(dim=dims, keepdim=True)


def _gavg(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return x.mean(dim=dims, keepdim=True)


# ---------------------------------------------------------------- shape ops
def _reshape(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    shape = _ints(i[1]) if len(i) > 1 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    axis = _axis(a.get("axis", 1), x.dim())
    return [x.reshape(int(math.prod(x.shape[:axis])), int(math.prod(x.shape[axis:])))]


def _transpose(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    return [x.permute(*a.get("perm", list(reversed(range(x.dim())))))]


def _axes(i: list[Any], a: dict[str, Any], pos: int = 1) -> list[int] | None:
    if len(i) > pos and i[pos] is not None:
        return _ints(i[pos])
    return list(a["axes"]) if "axes" in a else None


def _squeeze(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    axes = _axes(i, a)
    if axes is None:
        return [x.squeeze()] if x.dim() else [x]
    keep = [s for k, s in enumerate(x.shape) if k not in {_axis(v, x.dim()) for v in axes}]
    return [x.reshape(keep)]


def _unsqueeze(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    axes = _axes(i, a) or []
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for ax in sorted(_axis(v, rank) for v in axes):
        shape.insert(ax, 1)
    return [x.reshape(shape)]


def _concat(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    ts = [t for t in i if t is not None]
    return [torch.cat(ts, dim=a["axis"])]


def _split(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    axis = a.get("axis", 0)
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else list(a.get("split", []))
    if not sizes:
        n = a.get("num_outputs", a.get("_outputs", 1))
        dim = x.shape[axis]
        size = -(-dim // n)
        sizes = [min(size, dim - k * size) for k in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def _slice(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    if o < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.dim())
        dim = x.shape[ax]
        if st > 0:
            s = min(max(s + dim if s < 0 else s, 0), dim)
            e = min(max(e + dim if e < 0 else e, 0), dim)
            x = x.narrow(ax, s, max(0, e - s))[(slice(None),) * ax + (slice(None, None, st),)]
        else:
            s = min(max(s + dim if s < 0 else s, -1), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            idx = torch.arange(s, e, st, device=x.device)
            x = x.index_select(ax, idx)
    return [x]


def _gather(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, idx = i[0], i[1]
    axis = _axis(a.get("axis", 0), x.dim())
    idx = idx.long().to(x.device)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


def _shape(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    shape = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(shape))
    return [torch.tensor(shape[start:end], dtype=torch.int64)]


def _expand(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(i[1])))
    return [x.expand(shape)]


def _tile(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [i[0].repeat(*_ints(i[1]))]


def _constant_of_shape(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    value = a.get("value")
    if value is None:
        return [torch.zeros(_ints(i[0]), dtype=torch.float32)]
    return [torch.full(_ints(i[0]), value.reshape(-1)[0].item(), dtype=value.dtype)]


def _range(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype)]


def _identity(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [i[0]]


def _dropout(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    return [i[0], torch.ones_like(i[0], dtype=torch.bool)]


# ---------------------------------------------------------------- resize / pad
def _resize(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = a.get("nearest_mode", "round_prefer_floor")
    if o < 11:
        scales = _ints_f(i[1])
        sizes = None
    else:
        scales = _ints_f(i[2]) if len(i) > 2 and i[2] is not None and i[2].numel() else None
        sizes = _ints(i[3]) if len(i) > 3 and i[3] is not None and i[3].numel() else None
    if sizes is None:
        if scales is None:
            raise UnsupportedModelError("Resize without scales or sizes")
        if scales[:2] != [1.0, 1.0]:
            raise UnsupportedModelError("Resize scaling the batch or channel axis")
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
    elif list(sizes[:2]) != list(x.shape[:2]):
        raise UnsupportedModelError("Resize changing the batch or channel axis")
    size = list(sizes[2:])
    n = x.dim() - 2
    F = _nnf()
    # given scales set the coordinate mapping (ONNX: x_in = (x_out + 0.5) / scale - 0.5), not size / in
    how: dict[str, Any]
    if scales is not None and not (len(i) > 3 and i[3] is not None and i[3].numel()):
        how = {"scale_factor": scales[2:], "recompute_scale_factor": False}
    else:
        how = {"size": size}
    if mode == "nearest":
        if ctm == "asymmetric" and nearest_mode == "floor":
            return [F.interpolate(x, mode="nearest", **how)]
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest_mode in ("round_prefer_floor",
                                                                           "round_prefer_ceil"):
            return [F.interpolate(x, mode="nearest-exact", **how)]
        if ctm == "asymmetric" and all(s % d == 0 for s, d in zip(size, x.shape[2:])):
            return [F.interpolate(x, size=size, mode="nearest")]  # integer factors: every rounding agrees
        raise UnsupportedModelError(f"Resize nearest with {ctm}/{nearest_mode}")
    if mode == "linear":
        torch_mode = ("linear", "bilinear", "trilinear")[n - 1]
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return [F.interpolate(x, mode=torch_mode, align_corners=False, **how)]
        if ctm == "align_corners":
            return [F.interpolate(x, size=size, mode=torch_mode, align_corners=True)]
        raise UnsupportedModelError(f"Resize linear with {ctm}")
    raise UnsupportedModelError(f"Resize mode {mode}")


def _ints_f(t: Any) -> list[float] | None:
    if t is None or (isinstance(t, torch.Tensor) and t.numel() == 0):
        return None
    return [float(v) for v in t.reshape(-1).tolist()]


def _pad(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x = i[0]
    mode = a.get("mode", "constant")
    if o < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = _ints(i[1])
        value = float(i[2].item()) if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
        axes = ([_axis(v, x.dim()) for v in _ints(i[3])] if len(i) > 3 and i[3] is not None
                else list(range(x.dim())))
    n = len(axes)
    full = [0] * (2 * x.dim())
    for k, ax in enumerate(axes):
        full[ax], full[ax + x.dim()] = pads[k], pads[k + n]
    first = next((d for d in range(x.dim()) if full[d] or full[d + x.dim()]), x.dim())
    spec: list[int] = []
    for d in reversed(range(first, x.dim())):
        spec += [full[d], full[d + x.dim()]]
    if not spec:
        return [x]
    if mode == "constant":
        return [_nnf().pad(x, spec, value=value)]
    if mode not in ("reflect", "edge"):
        raise UnsupportedModelError(f"Pad mode {mode}")
    if first < 2 and x.dim() > 2:
        raise UnsupportedModelError(f"Pad mode {mode} on the batch or channel axis")
    return [_nnf().pad(x, spec, mode="reflect" if mode == "reflect" else "replicate")]


# ---------------------------------------------------------------- reductions
def _reduce(fn: Callable[..., Tensor], axes_input_from: int) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
        x = i[0]
        axes = _ints(i[1]) if o >= axes_input_from and len(i) > 1 and i[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=tuple(_axis(v, x.dim()) for v in axes), keepdim=keep)]
    return run


def _argmax(fn: Callable[..., Tensor]) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
        return [fn(i[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))]
    return run


def _prod(x: Tensor, dim: tuple[int, ...], keepdim: bool) -> Tensor:
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _sum_sq(x: Tensor, dim: tuple[int, ...], keepdim: bool) -> Tensor:
    return (x * x).sum(dim=dim, keepdim=keepdim)


def _l2(x: Tensor, dim: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.sqrt((x * x).sum(dim=dim, keepdim=keepdim))


def _prelu(i: list[Any], a: dict[str, Any], o: int) -> list[Any]:
    x, slope = i[0], i[1]
    return [torch.where(x >= 0, x, x * slope)]


@functools.cache
def op_table() -> dict[str, Op]:
    """ONNX op type -> torch implementation (imports torch)."""
    F = torch.nn.functional
    return {
        "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
        "Pow": _binary(_pow), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
        "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Reciprocal": _unary(torch.reciprocal),
        "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos),
        "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh), "Erf": _unary(torch.erf),
        "Softplus": _unary(F.softplus), "Sign": _unary(torch.sign), "Not": _unary(torch.logical_not),
        "LeakyRelu": lambda i, a, o: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
        "Elu": lambda i, a, o: [F.elu(i[0], a.get("alpha", 1.0))],
        "Selu": lambda i, a, o: [a.get("gamma", 1.0507009873554805) * torch.where(
            i[0] > 0, i[0], a.get("alpha", 1.6732632423543772) * (torch.exp(i[0]) - 1))],
        "HardSigmoid": lambda i, a, o: [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)],
        "HardSwish": _unary(F.hardswish), "Mish": _unary(F.mish),
        "Clip": _clip, "Gelu": _gelu, "PRelu": _prelu,
        "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax),
        "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _binary(torch.matmul),
        "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm, "LayerNormalization": _layer_norm,
        "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
        "GlobalAveragePool": _global(_gavg), "GlobalMaxPool": _global(_gmax),
        "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Squeeze": _squeeze,
        "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
        "Shape": _shape, "Expand": _expand, "Tile": _tile, "ConstantOfShape": _constant_of_shape, "Range": _range,
        "Cast": _cast, "Identity": _identity, "Dropout": _dropout,
        "Resize": _resize, "Pad": _pad,
        "ReduceMean": _reduce(torch.mean, 18), "ReduceSum": _reduce(torch.sum, 13),
        "ReduceMax": _reduce(torch.amax, 18), "ReduceMin": _reduce(torch.amin, 18),
        "ReduceProd": _reduce(_prod, 18), "ReduceSumSquare": _reduce(_sum_sq, 18), "ReduceL2": _reduce(_l2, 18),
        "ArgMax": _argmax(torch.argmax), "ArgMin": _argmax(torch.argmin),
        "Where": _where, "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
        "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
        "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
        "Min": _variadic(torch.minimum), "Max": _variadic(torch.maximum), "Sum": _variadic(torch.add),
        "Mean": lambda i, a, o: [torch.stack(torch.broadcast_tensors(*i)).mean(0)],
        "Einsum": lambda i, a, o: [torch.einsum(a["equation"], *i)],
    }

#: (op type, input positions) whose float initializers ``spa recover`` trains; every other initializer
#: (running variances, shape vectors, Resize scales, Clip bounds...) stays fixed
TRAINABLE_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "PRelu": (1,), "Einsum": tuple(range(8)),
}
