"""spa.graph.io: loading (bad files, external data and its safety) and atomic saving."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper

import spa
from spa.errors import InvalidModelError, UsageError
from spa.graph import io as spa_io
from spa.graph.io import check_paths, load_model, save_model
from tests.oracle import GraphBuilder


def _model(width: int = 16) -> onnx.ModelProto:
    """conv(3->width) -> relu -> conv(width->4): one prunable group of ``width`` channels."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, width)])
    b.output(b.conv(h, width, 4))  # type: ignore[arg-type]
    return b.build()


def _weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_with_location(folder: Path, location: str, data_file: Path) -> Path:
    """Write ``folder/m.onnx`` whose tensors point at ``location`` (data actually stored in ``data_file``)."""
    m = _model()
    external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True, location="x.data",
                                                        size_threshold=0)
    external_data_helper.write_external_data_tensors(m, str(folder))
    os.replace(folder / "x.data", data_file)
    for t in external_data_helper._get_all_tensors(m):
        if external_data_helper.uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


# -- loading -----------------------------------------------------------------------------------------

def test_load_plain(tmp_path: Path) -> None:
    m = _model()
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    loaded = load_model(p)
    assert loaded.SerializeToString() == m.SerializeToString()


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="directory"):
        load_model(tmp_path)


def test_load_text_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(InvalidModelError, match=r"notes\.onnx"):
        load_model(p)


def test_load_truncated(tmp_path: Path) -> None:
    whole = _model().SerializeToString()
    p = tmp_path / "half.onnx"
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidModelError, match=r"half\.onnx"):
        load_model(p)


def test_load_empty(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(InvalidModelError, match=r"empty\.onnx"):
        load_model(p)


def test_external_data_round_trip(tmp_path: Path) -> None:
    m = _model()
    p = tmp_path / "ext.onnx"
    save_model(m, p, external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    stored = onnx.load(str(p), load_external_data=False)
    assert any(external_data_helper.uses_external_data(t) for t in stored.graph.initializer)
    assert p.stat().st_size < (tmp_path / "ext.onnx.data").stat().st_size
    loaded = load_model(p)
    want, got = _weights(m), _weights(loaded)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(want[k], got[k])
    # and the loaded model prunes like the in-memory one
    r1, r2 = spa.prune(p, ratio=0.5), spa.prune(m, ratio=0.5)
    assert r1.model.SerializeToString() == r2.model.SerializeToString()
    assert not [n for n in _listing(tmp_path) if n.endswith(".tmp")]


def test_external_data_written_by_onnx(tmp_path: Path) -> None:
    """A model saved by ``onnx.save(..., save_as_external_data=True)`` (the usual exporter path) loads."""
    m = _model()
    p = tmp_path / "m.onnx"
    onnx.save(onnx.load_from_string(m.SerializeToString()), p, save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    got = _weights(load_model(p))
    for k, v in _weights(m).items():
        np.testing.assert_array_equal(v, got[k])


def test_external_data_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "ext.onnx"
    save_model(_model(), p, external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(InvalidModelError, match=r"ext\.onnx.*ext\.onnx\.data.*missing"):
        load_model(p)


def test_external_data_parent_escape_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    p = _write_with_location(inner, "../x.data", tmp_path / "x.data")
    assert (tmp_path / "x.data").is_file()  # the data is there: refusing is about safety, not absence
    with pytest.raises(InvalidModelError, match="outside the model folder"):
        load_model(p)


def test_external_data_absolute_path_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    target = tmp_path / "abs.data"
    p = _write_with_location(inner, str(target), target)
    assert target.is_file()
    with pytest.raises(InvalidModelError, match="outside the model folder"):
        load_model(p)


def test_external_data_symlink_escape_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    p = _write_with_location(inner, "x.data", tmp_path / "real.data")
    (inner / "x.data").symlink_to(tmp_path / "real.data")
    with pytest.raises(InvalidModelError, match="outside the model folder"):
        load_model(p)


def test_external_data_in_subfolder_allowed(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    p = _write_with_location(tmp_path, "weights/x.data", tmp_path / "weights" / "x.data")
    got = _weights(load_model(p))
    for k, v in _weights(_model()).items():
        np.testing.assert_array_equal(v, got[k])


# -- saving ------------------------------------------------------------------------------------------

def test_save_atomic_leaves_no_temp(tmp_path: Path) -> None:
    save_model(_model(), tmp_path / "out.onnx")
    assert _listing(tmp_path) == ["out.onnx"]
    save_model(_model(), tmp_path / "ext.onnx", external_data=True)
    assert _listing(tmp_path) == ["ext.onnx", "ext.onnx.data", "out.onnx"]


def test_save_refuses_existing_without_force(tmp_path: Path) -> None:
    p = tmp_path / "out.onnx"
    p.write_bytes(b"old")
    with pytest.raises(UsageError, match="--force"):
        save_model(_model(), p, force=False)
    assert p.read_bytes() == b"old"
    save_model(_model(), p, force=True)
    assert onnx.load(str(p)).graph.node


def test_save_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        save_model(_model(), tmp_path / "nodir" / "out.onnx")
    assert _listing(tmp_path) == []


def test_save_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_model(_model(), tmp_path / "out.onnx")
        save_model(_model(), tmp_path / "ext.onnx", external_data=True)
    finally:
        os.umask(old)
    for name in ("out.onnx", "ext.onnx", "ext.onnx.data"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_save_external_data_with_only_small_tensors(tmp_path: Path) -> None:
    """--external-data on a model whose tensors are all below the threshold still writes a valid model."""
    m = _model(width=2)
    save_model(m, tmp_path / "tiny.onnx", external_data=True)
    assert not [n for n in _listing(tmp_path) if n.endswith(".tmp")]
    got = _weights(load_model(tmp_path / "tiny.onnx"))
    for k, v in _weights(m).items():
        np.testing.assert_array_equal(v, got[k])


def test_save_does_not_modify_model(tmp_path: Path) -> None:
    m = _model()
    before = m.SerializeToString()
    save_model(m, tmp_path / "ext.onnx", external_data=True)
    assert m.SerializeToString() == before


@pytest.mark.parametrize("external", [False, True])
def test_save_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        external: bool) -> None:
    """Disk full in the middle of the write: the old output survives untouched, no temp file remains."""
    dest = tmp_path / "out.onnx"
    save_model(_model(width=8), dest, external_data=external)
    before = {n: _sha(tmp_path / n) for n in _listing(tmp_path)}
    real_open = open

    class _Full:
        def __init__(self, *a: object, **k: object) -> None:
            self.fh = real_open(*a, **k)  # type: ignore[call-overload]

        def __enter__(self) -> _Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spa_io, "open", _Full, raising=False)
    with pytest.raises(UsageError, match=r"could not write .*out\.onnx.*No space left"):
        save_model(_model(width=16), dest, external_data=external)
    monkeypatch.undo()
    assert {n: _sha(tmp_path / n) for n in _listing(tmp_path)} == before


def test_save_failure_at_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(spa_io.os, "replace", boom)
    with pytest.raises(UsageError, match="could not write"):
        save_model(_model(), tmp_path / "out.onnx")
    monkeypatch.undo()
    assert _listing(tmp_path) == []


# -- check_paths -------------------------------------------------------------------------------------

def test_check_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "m.onnx"
    inp.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for same in (inp, Path("m.onnx"), Path("./m.onnx"), tmp_path / "sub" / ".." / "m.onnx"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(UsageError, match="is the input"):
            check_paths(inp, same, force=True)
    link = tmp_path / "link.onnx"
    link.symlink_to(inp)
    with pytest.raises(UsageError, match="is the input"):
        check_paths(inp, link, force=True)
    other = tmp_path / "o.onnx"
    check_paths(inp, other, force=False)
    other.write_bytes(b"y")
    with pytest.raises(UsageError, match="--force"):
        check_paths(inp, other, force=False)
    check_paths(inp, other, force=True)
    with pytest.raises(UsageError, match="does not exist"):
        check_paths(inp, tmp_path / "nodir" / "o.onnx", force=True)


@pytest.mark.parametrize("criterion", ["obs", "l2"])
def test_external_data_model_prunes_with_calibration(tmp_path: Path, criterion: str) -> None:
    """Calibrated criteria, sensitivity probes and re-alignment run the model in ONNX Runtime from an
    in-memory export: weights memory-mapped from an external-data file must export as plain data (a
    regression: the export kept graphsurgeon's imported EXTERNAL location with no file, and ORT refused
    it with "Missing 'location'")."""
    from spa.calibration.data import ArraySource

    m = _model()
    p = tmp_path / "m.onnx"
    onnx.save(onnx.load_from_string(m.SerializeToString()), p, save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    r = spa.prune(str(p), target_macs=0.6, criterion=criterion, allocate="sensitivity",
                  calibration=ArraySource({"x": x}, batch_size=8), emit_masked=True)
    assert r.report["macs_after"] < r.report["macs_before"]  # type: ignore[operator]
    assert isinstance(r.report["allocation"], dict)
    import onnxruntime as ort

    outs = [ort.InferenceSession(mm.SerializeToString()).run(None, {"x": x[:1]})[0] for mm in (r.model, r.masked)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
