"""Which ONNX Runtime execution provider can really run here.

The ``onnxruntime-gpu`` wheel *lists* the CUDA and TensorRT providers whether or not a GPU (or the
CUDA/cuDNN/TensorRT libraries) is present, and a session asked for them silently falls back to the
CPU. So a provider counts as usable only if a tiny session created with it keeps it first in
``sess.get_providers()``. The probe's native log noise is swallowed; the first reason ONNX Runtime
gave (a missing library, no device) is kept for the error message.

>>> choose_provider("cpu").providers
['CPUExecutionProvider']
>>> choose_provider("cpu").device
'cpu'
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from spa.errors import UsageError, ValidationError
from spa.runtime.session import session

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
#: ``--provider`` names and the provider list each asks for (fallbacks after the first).
PROVIDERS: dict[str, list[str]] = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Provider:
    """The provider chosen for a benchmark.

    Attributes:
        requested: what the user asked for (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
        providers: the list given to every session; the first one runs the model.
        note: why this one (``auto``: what was not usable and why); empty when nothing to say.
    """

    requested: str
    providers: list[str]
    note: str = ""

    @property
    def name(self) -> str:
        """The provider that runs the model (``CPUExecutionProvider``, ...)."""
        return self.providers[0]

    @property
    def device(self) -> str:
        """Where inputs and outputs live for io-binding: ``cuda`` or ``cpu``."""
        return "cpu" if self.name == CPU else "cuda"


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Swallow everything written to stdout/stderr (native and Python) meanwhile; the text goes in the list."""
    text: list[str] = []
    py_out, py_err = io.StringIO(), io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as tmp:
        saved: list[tuple[int, int]] = []
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
            except OSError:
                pass
        try:
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield text
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))
            text.append(py_out.getvalue() + py_err.getvalue())


def _tiny_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "spa_probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _reason(text: str) -> str:
    """The most telling line of ONNX Runtime's complaint (missing library, no device)."""
    text = _ANSI.sub("", text)
    lib = re.search(r"with error: (\S+): cannot open shared object file", text)
    if lib:
        return f"{lib.group(1)} not found"
    for pattern in (r"with error: ([^\n]+)", r"(CUDA failure [^\n]+)", r"(no CUDA-capable device[^\n]*)",
                    r"(Failed to create \w+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()[:200]
    return ""


@functools.cache
def probe(providers: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """Create a tiny session with ``providers``; return the providers it really uses and ORT's complaint."""
    if not set(providers) & set(ort.get_available_providers()):
        return (CPU,), "not built into this onnxruntime package"
    with _captured() as text:
        try:
            sess = session(_tiny_model(), providers)
            used, err = tuple(sess.get_providers()), ""
        except ValidationError as exc:  # a provider that throws instead of falling back
            cause = exc.__cause__ or exc
            used, err = (), str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return used, err or _reason("".join(text))


def usable(provider: str) -> tuple[bool, str]:
    """Whether ``provider`` (an ORT provider name) really runs here, and if not ONNX Runtime's reason."""
    if provider == CPU:
        return True, ""
    chain = tuple(PROVIDERS["tensorrt" if provider == TRT else "cuda"])
    if provider not in ort.get_available_providers():
        return False, "not built into this onnxruntime package"
    used, reason = probe(chain)
    return bool(used) and used[0] == provider, reason


def cuda_device_present() -> bool:
    """Whether a CUDA device is usable (not merely the CUDA provider compiled in)."""
    return usable(CUDA)[0]


def choose_provider(name: str) -> Provider:
    """Resolve ``auto|cpu|cuda|tensorrt`` to the providers a benchmark uses.

    ``auto`` takes TensorRT, else CUDA, else the CPU, by what really works here. An explicit GPU
    provider that does not work raises :class:`~spa.errors.UsageError` (one line, with ORT's reason).
    """
    if name == "cpu":
        return Provider(name, [CPU])
    if name == "auto":
        skipped: list[str] = []
        for key, prov in (("tensorrt", TRT), ("cuda", CUDA)):
            ok, reason = usable(prov)
            if ok:
                return Provider(name, PROVIDERS[key], "not usable here: " + "; ".join(skipped) if skipped else "")
            skipped.append(f"{key}: {reason or 'not usable'}")
        return Provider(name, [CPU], "not usable here: " + "; ".join(skipped))
    if name not in PROVIDERS:
        raise UsageError(f"unknown provider '{name}'; choose auto, cpu, cuda or tensorrt")
    ok, reason = usable(PROVIDERS[name][0])
    if not ok:
        what = "no usable CUDA GPU" if name == "cuda" else "TensorRT is not usable"
        raise UsageError(f"--provider {name}: {what} here" + (f" (ONNX Runtime: {reason})" if reason else "")
                         + "; use --provider cpu or auto")
    return Provider(name, PROVIDERS[name])


def resolve_provider(name: str) -> list[str]:
    """Provider list for a name (see :func:`choose_provider`)."""
    return choose_provider(name).providers
