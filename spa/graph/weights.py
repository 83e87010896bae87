"""Weights without copies: memory-mapped external data and weight-less exports.

* :class:`MappedValues` — a graphsurgeon ``LazyValues`` whose ``load()`` returns a read-only numpy view
  of the external-data file (``mmap``), so a multi-gigabyte model is never read into memory as a whole:
  pages are read when a criterion or the surgery touches them, and :func:`release` hands them back.
* :func:`stubbed` — a context in which every large constant is replaced by a data-less stand-in, so
  the graph can be exported for shape inference in milliseconds whatever its size.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

#: constants larger than this are exported as stand-ins for shape inference
STUB_BYTES = 4096


class _MapCache:
    """One read-only mapping per external-data file."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def get(self, path: str) -> mmap.mmap:
        m = self._maps.get(path)
        if m is None:
            with open(path, "rb") as fh:
                m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = m
        return m


_MAPS = _MapCache()


class MappedValues(LazyValues):  # type: ignore[misc]
    """Lazily mapped values of an initializer stored in an external-data file."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        super().__init__(tensor)
        info = {e.key: e.value for e in tensor.external_data}
        self.path = str(base_dir / info["location"])
        self.offset = int(info.get("offset", 0) or 0)
        self.length = int(info["length"]) if info.get("length") else None

    def load(self) -> np.ndarray:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        count = int(np.prod(self.shape, dtype=np.int64))
        buf = _MAPS.get(self.path)
        if self.offset + count * np.dtype(dtype).itemsize > len(buf):
            raise ValueError(f"external data of '{self.tensor.name}' runs past the end of {self.path}")
        values: np.ndarray = np.frombuffer(buf, dtype=dtype, count=count, offset=self.offset).reshape(self.shape)
        return values


def attach_external(graph: gs.Graph, base_dir: Path) -> int:
    """Replace lazily imported external initializers by :class:`MappedValues`; returns how many."""
    n = 0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) and not isinstance(t._values, MappedValues):
            proto = t._values.tensor
            if isinstance(proto, onnx.TensorProto) and external_data_helper.uses_external_data(proto):
                t._values = MappedValues(proto, base_dir)
                n += 1
    return n


def release(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (no-op for ordinary arrays)."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if isinstance(base, mmap.mmap) and hasattr(base, "madvise") and array.nbytes:
        start = array.__array_interface__["data"][0]
        buf_start = np.frombuffer(base, dtype=np.uint8, count=1).__array_interface__["data"][0]
        page = mmap.PAGESIZE
        off = ((start - buf_start) // page) * page
        length = min(len(base) - off, array.nbytes + (start - buf_start - off))
        try:
            base.madvise(mmap.MADV_DONTNEED, off, length)
        except (OSError, ValueError):
            pass


def onnx_dtype(t: gs.Constant) -> int:
    """ONNX element type of a constant (graphsurgeon keeps the ONNX enum for types numpy lacks, e.g. bf16)."""
    if isinstance(t.dtype, (int, np.integer)):
        return int(t.dtype)
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def is_float(t: gs.Constant) -> bool:
    """Whether a constant holds floating-point weights (bf16 included), without loading it."""
    return onnx_dtype(t) in _FLOAT_TYPES


def itemsize(t: gs.Constant) -> int:
    """Bytes per element of a constant, without loading it."""
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype(t))).itemsize)


def _stub(t: gs.Constant) -> onnx.TensorProto:
    proto = onnx.TensorProto()
    proto.name = t.name
    proto.data_type = onnx_dtype(t)
    proto.dims.extend(int(d) for d in t.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    e = proto.external_data.add()
    e.key, e.value = "location", "__spa_stub__"
    return proto


def nbytes(t: gs.Constant) -> int:
    """Size of a constant's data in bytes, without loading it."""
    return int(np.prod(t.shape, dtype=np.int64)) * itemsize(t) if t.shape is not None else 0


@contextmanager
def stubbed(graph: gs.Graph) -> Iterator[None]:
    """Within the context, large constants export as data-less stand-ins (for shape inference)."""
    saved: list[tuple[gs.Constant, object]] = []
    try:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and nbytes(t) > STUB_BYTES:
                saved.append((t, t._values))
                t._values = LazyValues(_stub(t))
        yield
    finally:
        for t, v in saved:
            t._values = v


@contextmanager
def mapped_as_arrays(graph: gs.Graph) -> Iterator[None]:
    """Within the context, memory-mapped constants are plain (mapped) arrays, so an export copies their
    bytes into the proto instead of pointing at the input's external-data file."""
    saved: list[tuple[gs.Constant, object, object]] = []
    try:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and isinstance(t._values, MappedValues):
                saved.append((t, t._values, t.data_location))
                t._values = t._values.load()
                # graphsurgeon copies a constant's imported data_location (EXTERNAL) onto the exported
                # tensor: the proto would claim external data with no location, which ORT refuses
                t.data_location = None
        yield
    finally:
        for t, v, loc in saved:
            t._values = v
            t.data_location = loc


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a model file plus its external-data files."""
    p = Path(path)
    total = p.stat().st_size
    model = onnx.load(str(p), load_external_data=False)
    seen = set()
    for t in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc and loc not in seen and (p.parent / loc).exists():
                seen.add(loc)
                total += (p.parent / loc).stat().st_size
    return total
