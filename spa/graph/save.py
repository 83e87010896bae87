"""Write a :class:`~spa.graph.model.ModelGraph` to disk, streaming weights when they are large.

Small models are exported to one self-contained file. With external data (asked for, or needed
because the weights exceed the 2 GB protobuf limit) every large constant is written straight from its
(possibly memory-mapped) array into ``<name>.data``, one tensor at a time, and the graph is exported with
data-less references — so saving never holds a second copy of the weights. Both files are written to
temporary names and renamed into place, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from spa.errors import UsageError
from spa.graph.io import PROTOBUF_LIMIT, atomic_path, save_model
from spa.graph.model import ModelGraph
from spa.graph.weights import nbytes, onnx_dtype, release

log = logging.getLogger(__name__)

#: tensors at most this large stay inside the .onnx file
INLINE_BYTES = 1024
_ALIGN = 64


#: a model with more weight bytes than this is *large*: spa then avoids every copy of its weights — the
#: calibration statistics and the report's measured distortion run weight-fed (:mod:`spa.runtime.fed`),
#: sensitivity probes are local (:mod:`spa.quality.local`) and the default reconstruction is one-shot
#: (sequential reconstruction runs the model twice per layer level). On a 125 M-parameter decoder (500 MB)
#: the copying paths probed in 118 s at 4.0 GiB peak, the frugal ones in 15 s at 1.0 GiB, and with obs
#: scores and compensated probes in 54 s at 2.1 GiB (``tools/bench_scale.py --probe [--criterion obs]``)
LARGE_BYTES = 256 << 20


def graph_bytes(mg: ModelGraph) -> int:
    """Bytes of all constants (without loading them)."""
    return sum(nbytes(t) for t in mg.graph.tensors().values() if isinstance(t, gs.Constant))


def is_large(mg: ModelGraph) -> bool:
    """Whether ``mg`` has more than :data:`LARGE_BYTES` of weights."""
    return graph_bytes(mg) > LARGE_BYTES


def _ref(t: gs.Constant, location: str, offset: int, length: int) -> onnx.TensorProto:
    proto = onnx.TensorProto()
    proto.name = t.name
    proto.data_type = onnx_dtype(t)
    proto.dims.extend(int(d) for d in t.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = proto.external_data.add()
        e.key, e.value = k, v
    return proto


def save_graph(mg: ModelGraph, path: str | os.PathLike[str], *, external_data: bool | None = None,
               force: bool = True) -> Path:
    """Write ``mg`` to ``path`` atomically (external data streamed to ``<name>.data`` when used).

    Args:
        mg: the model.
        path: destination ``.onnx`` file.
        external_data: True to write weights to ``<name>.data``; None decides by size (> 2 GB).
        force: overwrite an existing file.
    """
    dest = Path(path)
    if dest.exists() and not force:
        raise UsageError(f"{dest} exists; pass --force to overwrite it")
    if external_data is None:
        external_data = graph_bytes(mg) > PROTOBUF_LIMIT - 64 * 2**20
    if not external_data:
        return save_model(mg.to_onnx(), dest, external_data=False, force=force)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{dest}: folder '{folder}' does not exist")
    data_name = dest.name + ".data"
    saved: list[tuple[gs.Constant, object]] = []
    try:
        # the data file is published first, then the model that references it
        with atomic_path(dest) as tmp_model, atomic_path(folder / data_name) as tmp_data:
            offset = 0
            with open(tmp_data, "wb") as fh:
                for t in mg.graph.tensors().values():
                    if not isinstance(t, gs.Constant) or nbytes(t) <= INLINE_BYTES:
                        continue
                    pad = (-offset) % _ALIGN
                    fh.write(b"\0" * pad)
                    offset += pad
                    arr = np.ascontiguousarray(t.values)
                    fh.write(arr.data.cast("B"))
                    saved.append((t, t._values))
                    t._values = LazyValues(_ref(t, data_name, offset, arr.nbytes))
                    offset += arr.nbytes
                    release(arr)
            model = mg._export()
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
    except OSError as exc:
        raise UsageError(f"could not write {dest}: {exc.strerror or exc}") from exc
    finally:
        for t, v in saved:
            t._values = v
    log.debug("wrote %s with external data %s", dest, data_name)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
