"""Half-precision copies of models for ``spa bench --fp16``.

Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped with ONNX Runtime), or
onnxconverter-common's converter when that module is missing, with ``keep_io_types=True``: inputs and
outputs stay float32, so the same feeds drive the float32 and float16 models.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import onnx

from spa.errors import UsageError


def _converter() -> tuple[Callable[..., onnx.ModelProto], str]:
    try:
        # optional extra
        from onnxruntime.transformers.float16 import convert_float_to_float16
        return convert_float_to_float16, "onnxruntime.transformers.float16"
    except ImportError:
        pass
    try:
        # optional extra
        from onnxconverter_common.float16 import convert_float_to_float16 as occ_convert
        return occ_convert, "onnxconverter_common.float16"
    except ImportError:
        raise UsageError("--fp16 needs onnxruntime.transformers (part of the onnxruntime package) or "
                         "onnxconverter-common; install one: pip install onnxconverter-common") from None


def fp16_converter_name() -> str | None:
    """The module that :func:`to_fp16` will use, or None when neither is installed."""
    try:
        return _converter()[1]
    except UsageError:
        return None


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs (``model`` is not modified).

    Raises:
        UsageError: no converter is installed, or the conversion fails.
    """
    convert, name = _converter()
    kwargs: dict[str, Any] = {"keep_io_types": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values truncated to fp16" for every small weight
            return convert(model, **kwargs)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise UsageError(f"--fp16: {name} could not convert the model: {reason}"
                         ) from exc
