"""Load and save ONNX models safely.

* :func:`load_model` reads a path (external data included), refuses external-data locations that
  escape the model's folder, and turns every failure into an :class:`~spa.errors.InvalidModelError`
  that names the file and says what to do.
* :func:`save_model` writes atomically: a temporary file in the destination folder, then a rename, so a
  crash never leaves a half-written model behind. Models above 2 GB are written with external data.
* :func:`atomic_path` is that atomic write for every file spa writes (models, external data, JSON
  reports, CSV, plots, latency tables).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from spa.errors import InvalidModelError, UsageError

log = logging.getLogger(__name__)

#: Protobuf cannot serialise a single message above this size.
PROTOBUF_LIMIT = 2**31 - 1
#: The newest IR version ONNX Runtime 1.31 loads (onnx.helper.make_model writes 14).
MAX_IR_VERSION = 13


def _check_external_locations(model: onnx.ModelProto, base: Path, name: Path | str = "model") -> None:
    """Refuse external-data locations outside the model's folder (path traversal).

    Args:
        model: the model, loaded without its external data.
        base: the folder of the model file.
        name: the model file, named in error messages.
    """
    base_real = base.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
            raise InvalidModelError(
                f"{name}: tensor '{tensor.name}' points to external data '{loc}' outside the model folder; "
                "refusing to read it (move the data file next to the model)"
            )
        target = (base / loc)
        if target.is_symlink() or not target.resolve().is_relative_to(base_real):
            raise InvalidModelError(
                f"{name}: tensor '{tensor.name}' external data '{loc}' resolves outside the model folder; refusing"
            )
        if not target.exists():
            raise InvalidModelError(
                f"{name}: external data file '{target}' for tensor '{tensor.name}' is missing; "
                "copy it next to the model"
            )
        try:
            offset, length = int(info.get("offset") or 0), int(info.get("length") or 0)
        except ValueError:
            raise InvalidModelError(
                f"{name}: tensor '{tensor.name}' has a malformed external-data offset/length") from None
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise InvalidModelError(
                f"{name}: external data of tensor '{tensor.name}' lies outside '{loc}' "
                f"(offset {offset} + length {length} > {target.stat().st_size} bytes); the data file is truncated"
            )


def load_model(path: str | os.PathLike[str], *, external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, with its external data unless ``external`` is False.

    Args:
        path: the ``.onnx`` file.
        external: read external tensors into memory (False: leave them in their files; they are
            validated either way and can be memory-mapped later, see :mod:`spa.graph.weights`).

    Returns:
        The model.

    Raises:
        InvalidModelError: the file is missing, not ONNX, truncated, or its external data is unsafe.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidModelError(f"{p}: no such file")
    if p.is_dir():
        raise InvalidModelError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise InvalidModelError(
            f"{p}: not a readable ONNX model ({type(exc).__name__}); is the file truncated or another format?"
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(f"{p}: not an ONNX model (empty graph)")
    _check_external_locations(model, p.parent, p)
    if not external:
        return model
    try:
        external_data_helper.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise InvalidModelError(f"{p}: could not read external data ({exc})") from exc
    return model


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Approximate serialised size of a model, weights included."""
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()
    return total + 1_000_000


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path in its folder, then rename it over ``path``.

    The temporary file (``.<name>.<random><suffix>``) exists, empty, when the block starts; once the
    block returns it gets the mode a new file would get under the umask and replaces ``path``
    (``os.replace``). If the block deleted it, nothing is written. On any error it is removed and the
    error propagates, so ``path`` is either the old file or the complete new one.

    Raises:
        OSError: the temporary file cannot be created, written or renamed.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    force: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: the model to write (not modified).
        path: destination file.
        external_data: True to store weights in ``<name>.data`` beside it; None chooses automatically
            (external above 2 GB).
        force: overwrite an existing file.

    Returns:
        The destination path.
    """
    dest = Path(path)
    if dest.exists() and not force:
        raise UsageError(f"{dest} exists; pass --force to overwrite it")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.exists():
        raise UsageError(f"{dest}: folder '{folder}' does not exist")
    if external_data is None:
        external_data = model_size_bytes(model) > PROTOBUF_LIMIT
    data_name = dest.name + ".data"
    try:
        with atomic_path(dest) as tmp_path:
            if external_data:
                with atomic_path(folder / data_name) as tmp_data:
                    _write_external(model, tmp_path, tmp_data, data_name)
            else:
                with open(tmp_path, "wb") as fh:
                    fh.write(model.SerializeToString())
    except OSError as exc:
        raise UsageError(f"could not write {dest}: {exc.strerror or exc}") from exc
    log.debug("wrote %s", dest)
    return dest


def _set_locations(model: onnx.ModelProto, location: str) -> None:
    for t in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = location


def _write_external(model: onnx.ModelProto, tmp_model: Path, tmp_data: Path, data_name: str) -> None:
    """Write ``model`` to ``tmp_model`` with its weights in ``tmp_data``, referenced as ``data_name``.

    ``tmp_data`` is deleted when no tensor is above the size threshold (nothing to publish then).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    external_data_helper.convert_model_to_external_data(
        m, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
    )
    # write tensors into the temporary data file, then point the proto at the final name
    _set_locations(m, tmp_data.name)
    tmp_data.unlink()
    external_data_helper.write_external_data_tensors(m, str(tmp_data.parent))
    _set_locations(m, data_name)
    with open(tmp_model, "wb") as fh:
        fh.write(m.SerializeToString())


def check_paths(inp: Path, out: Path, *, force: bool) -> None:
    """Refuse an output path that would overwrite the input or an existing file."""
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise UsageError(f"output {out} is the input file; choose another output path")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{out}: folder '{parent}' is not writable")
