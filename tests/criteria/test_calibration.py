"""Calibration data: loaders (npz/npy/image folders/random), their errors, batching of fixed-batch
models, and the im2col unfolding the OBS statistics rely on."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from spa.calibration import (
    ArraySource,
    CalibrationError,
    ConvUnfold,
    ImageFolderSource,
    NpzSource,
    Preprocess,
    RandomSource,
    load_calibration,
    run_batches,
)
from spa.errors import SpaError
from spa.runtime.feeds import InputSpec, input_specs
from spa.runtime.session import session
from tests.oracle import GraphBuilder

SPEC = InputSpec("x", (1, 3, 4, 4), np.dtype("float32"))


def _collect(src, specs=(SPEC,)):  # type: ignore[no-untyped-def]
    return list(src.batches(list(specs)))


@pytest.mark.parametrize(("compressed", "fortran"), [(False, False), (True, False), (False, True)])
def test_npz_streams_in_batches(tmp_path: Path, compressed: bool, fortran: bool) -> None:
    data = np.random.default_rng(0).standard_normal((11, 3, 4, 4)).astype(np.float32)
    if fortran:
        data = np.asfortranarray(data)
    path = tmp_path / "calib.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=data)
    src = load_calibration(path, samples=9, batch_size=4)
    assert isinstance(src, NpzSource)
    batches = _collect(src)
    assert [len(b["x"]) for b in batches] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), data[:9])
    assert src.count([SPEC]) == 9


def test_npy_is_for_single_input_models(tmp_path: Path) -> None:
    data = np.ones((5, 3, 4, 4), dtype=np.float64)
    np.save(tmp_path / "c.npy", data)
    src = load_calibration(str(tmp_path / "c.npy"), batch_size=2)
    batches = _collect(src)
    assert [b["x"].dtype for b in batches] == [np.float32] * 3  # cast to the input's type
    with pytest.raises(CalibrationError, match="single-input"):
        _collect(src, [SPEC, InputSpec("y", (1, 2), np.dtype("float32"))])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.savez(p / "a.npz", wrong=np.zeros((2, 3, 4, 4)), other=np.zeros((2, 1))), "no array named 'x'"),
        (lambda p: np.savez(p / "a.npz", x=np.zeros((2, 3, 5, 4))), r"expected \[samples, 3x4x4\]"),
        (lambda p: np.savez(p / "a.npz", x=np.zeros((0, 3, 4, 4))), "holds no samples"),
        (lambda p: (p / "a.npz").write_text("not a zip"), "not a readable .npz"),
        (lambda p: (p / "a.csv").write_text("1,2"), "unknown calibration format"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(CalibrationError, match=message) as info:
        _collect(load_calibration(path))
    assert isinstance(info.value, SpaError) and info.value.exit_code == 1
    assert str(path) in str(info.value)


def test_missing_path_and_bad_counts() -> None:
    with pytest.raises(CalibrationError, match="no such calibration file"):
        load_calibration("/nonexistent/calib.npz")
    with pytest.raises(CalibrationError, match="samples must be >= 1"):
        load_calibration("random", samples=0)
    with pytest.raises(CalibrationError, match="batch size must be >= 1"):
        ArraySource({"x": np.zeros((2, 3, 4, 4))}, batch_size=0)


def test_random_source_is_seeded() -> None:
    a = _collect(RandomSource(samples=5, batch_size=2, seed=3))
    b = _collect(RandomSource(samples=5, batch_size=2, seed=3))
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert [len(x["x"]) for x in a] == [2, 2, 1]


def _write_images(folder: Path, n: int, size: tuple[int, int] = (6, 5)) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    _write_images(tmp_path / "imgs" / "sub", 3)
    src = load_calibration(tmp_path / "imgs", batch_size=2, preprocess="mean=0.5,std=0.25,order=bgr")
    assert isinstance(src, ImageFolderSource)
    batches = _collect(src)
    assert [b["x"].shape for b in batches] == [(2, 3, 4, 4), (1, 3, 4, 4)]
    first = sorted((tmp_path / "imgs").rglob("*.*"))[0]
    with Image.open(first) as im:
        ref = np.asarray(im.convert("RGB").resize((4, 4), Image.BILINEAR), dtype=np.float32)
    want = ((ref / 255.0 - 0.5) / 0.25)[..., ::-1].transpose(2, 0, 1)
    np.testing.assert_allclose(batches[0]["x"][0], want, rtol=1e-5, atol=1e-5)
    nhwc = InputSpec("x", (1, 4, 4, 3), np.dtype("float32"))
    got = _collect(load_calibration(tmp_path / "imgs", samples=1), [nhwc])
    assert got[0]["x"].shape == (1, 4, 4, 3)


def test_image_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no PNG or JPEG"):
        load_calibration(tmp_path / "empty")
    with pytest.raises(CalibrationError, match="unknown key"):
        Preprocess.parse("colour=red")
    with pytest.raises(CalibrationError, match="layout"):
        Preprocess.parse("layout=nchwc")
    with pytest.raises(CalibrationError, match="image folders only"):
        np.save(tmp_path / "a.npy", np.zeros((1, 3, 4, 4)))
        load_calibration(tmp_path / "a.npy", preprocess="size=4x4")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL")
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_pil)
        with pytest.raises(CalibrationError, match="needs Pillow"):
            _collect(load_calibration(tmp_path / "imgs"))
    pytest.importorskip("PIL")
    with pytest.raises(CalibrationError, match="cannot read this image"):
        _collect(load_calibration(tmp_path / "imgs"))


def _fixed_batch_model(reshape_batch: bool) -> onnx.ModelProto:
    """Conv → (Flatten | Reshape to [1, -1]) → MatMul with a static batch of 1."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 4, 4])
    y = b.conv(x, 3, 2)
    if reshape_batch:
        y = b.op("Reshape", [y, b.const(np.array([1, 32], dtype=np.int64))])
    else:
        y = b.op("Flatten", [y])
    b.output(b.op("MatMul", [y, b.weight(32, 5)]))
    return b.build()


@pytest.mark.parametrize("reshape_batch", [False, True])
def test_fixed_batch_models_run_batched_or_per_sample(reshape_batch: bool) -> None:
    model = _fixed_batch_model(reshape_batch)
    specs = input_specs(model)
    data = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    out_name = model.graph.output[0].name
    runs = list(run_batches(model, ArraySource({"x": data}, batch_size=4), outputs=True))
    got = np.concatenate([r.values[out_name] for r in runs])
    sess = session(model)
    want = np.concatenate([sess.run(None, {"x": data[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sum(r.samples for r in runs) == 5 and specs[0].shape[0] == 1


@pytest.mark.parametrize(
    ("attrs", "shape"),
    [
        ({"pads": [1, 1, 1, 1]}, (2, 3, 6, 6)),
        ({"pads": [0, 1, 2, 0], "strides": [2, 1]}, (2, 3, 7, 6)),
        ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (1, 3, 6, 7)),
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 3, 5, 6)),
        ({"auto_pad": "SAME_LOWER"}, (1, 3, 4, 5)),
        ({"pads": [1, 2], "strides": [2]}, (2, 3, 9)),
        ({"pads": [1, 0, 1, 1, 0, 1]}, (1, 3, 4, 3, 5)),
    ],
)
def test_unfold_matches_onnx_conv(attrs: dict, shape: tuple[int, ...]) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    d = len(shape) - 2
    w = rng.standard_normal((4, 3, *[3] * d)).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3] * d, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    y = session(model).run(None, {"x": x})[0]
    unfold = ConvUnfold((3,) * d, tuple(attrs.get("strides", [1] * d)), tuple(attrs.get("dilations", [1] * d)),
                        tuple(attrs.get("pads", [0] * 2 * d)), attrs.get("auto_pad", "NOTSET"))
    rows = unfold.rows(x)  # [N·out positions, C·taps]
    got = np.moveaxis((rows @ w.reshape(4, -1).T).reshape(shape[0], *y.shape[2:], 4), -1, 1)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_sources_and_arrays_resolve_with_overrides() -> None:
    src = load_calibration(RandomSource(samples=10, batch_size=4), samples=3, batch_size=2)
    assert isinstance(src, RandomSource) and (src.samples, src.batch_size) == (3, 2)
    arr = np.zeros((5, 3, 4, 4), dtype=np.float32)
    assert [len(b["x"]) for b in _collect(load_calibration(arr, batch_size=2))] == [2, 2, 1]
    with pytest.raises(CalibrationError, match="cannot use a int"):
        load_calibration(3)
