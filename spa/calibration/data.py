"""Calibration data sources: ``.npz``, ``.npy``, arrays in memory, seeded random inputs.

A source yields *feeds* — ``{input name: array}`` with the samples on the first axis — in batches of
``batch_size``, at most ``samples`` samples in all. Files are streamed: a ``.npy`` is memory-mapped
and a ``.npz`` member is read batch by batch from the zip stream, so memory is bounded by one batch,
not by the data set. Image folders live in :mod:`spa.calibration.images`.

Every problem with the data (missing file, unknown format, an array that does not fit the model's
input) raises :class:`CalibrationError`, a :class:`~spa.errors.UsageError` naming the file, the input
and what to do.

>>> src = RandomSource(samples=5, batch_size=2, seed=0)
>>> [b["x"].shape for b in src.batches([InputSpec("x", (1, 3, 4, 4), np.dtype("float32"))])]
[(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import numpy as np

from spa.errors import UsageError
from spa.runtime.feeds import InputSpec

DEFAULT_SAMPLES = 128
DEFAULT_BATCH = 16
#: size given to dynamic non-batch dimensions of random inputs when no shape is known
RANDOM_DIM = 8


class CalibrationError(UsageError):
    """Calibration data that cannot be used with the model (says which file/input and why)."""


@runtime_checkable
class CalibrationSource(Protocol):
    """What the statistics collector and the fidelity report read data from."""

    samples: int | None
    batch_size: int

    def describe(self) -> str:
        """A short human description (for notes and reports)."""

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        """How many samples :meth:`batches` will yield (None when unknown)."""

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for ``inputs``, samples on the first axis, ``batch_size`` at a time."""


def _check_counts(samples: int | None, batch_size: int) -> None:
    if samples is not None and samples < 1:
        raise CalibrationError(f"calibration samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise CalibrationError(f"calibration batch size must be >= 1, got {batch_size}")


def _check_array(where: str, spec: InputSpec, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise unless an array of ``shape``/``dtype`` (samples first) can feed ``spec``."""
    if dtype.kind not in "biuf":
        raise CalibrationError(f"{where}: array for input '{spec.name}' has dtype {dtype}; expected numbers")
    want = spec.sample_shape
    got = shape[1:]
    if len(shape) < 1 or len(got) != len(want) or any(
        isinstance(w, int) and w > 0 and w != g for w, g in zip(want, got)
    ):
        pretty = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in want)
        raise CalibrationError(
            f"{where}: array for input '{spec.name}' has shape {list(shape)}; expected [samples, {pretty}]"
            " (the first axis holds the samples)"
        )
    if shape[0] < 1:
        raise CalibrationError(f"{where}: array for input '{spec.name}' holds no samples")


def _match_names(where: str, names: Sequence[str], inputs: Sequence[InputSpec]) -> dict[str, str]:
    """Map each model input to an array name: same name, or the only array for a single-input model."""
    wanted = [s.name for s in inputs]
    if all(n in names for n in wanted):
        return {n: n for n in wanted}
    if len(inputs) == 1 and len(names) == 1:
        return {wanted[0]: names[0]}
    missing = [n for n in wanted if n not in names]
    raise CalibrationError(
        f"{where}: no array named {', '.join(repr(m) for m in missing)}; arrays must be named after the "
        f"model inputs ({', '.join(wanted)}), found {', '.join(names) or 'none'}"
    )


def _sample_count(where: str, counts: Mapping[str, int]) -> int:
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{where}: arrays hold different sample counts {dict(counts)}")
    return next(iter(counts.values()))


@dataclass
class ArraySource:
    """Arrays already in memory (or memory-mapped), one per model input, samples first.

    Attributes:
        arrays: ``{input name: array}``; a single array is accepted for a single-input model.
        samples: use at most this many samples (None: all).
        batch_size: samples per batch.
        name: what :meth:`describe` calls the data.
    """

    arrays: Mapping[str, np.ndarray]
    samples: int | None = None
    batch_size: int = DEFAULT_BATCH
    name: str = "arrays"

    def __post_init__(self) -> None:
        _check_counts(self.samples, self.batch_size)

    def describe(self) -> str:
        return self.name

    def _mapping(self, inputs: Sequence[InputSpec]) -> dict[str, str]:
        mapping = _match_names(self.name, list(self.arrays), inputs)
        for spec in inputs:
            a = self.arrays[mapping[spec.name]]
            _check_array(self.name, spec, tuple(np.shape(a)), np.asarray(a[:0]).dtype)
        return mapping

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        mapping = self._mapping(inputs)
        n = _sample_count(self.name, {k: len(self.arrays[v]) for k, v in mapping.items()})
        return min(n, self.samples) if self.samples else n

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        return self.batches_from(inputs, 0)

    def batches_from(self, inputs: Sequence[InputSpec], first: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from batch ``first`` on, the earlier ones not read (a shard of :func:`collect`)."""
        mapping = self._mapping(inputs)
        total = self.count(inputs) or 0
        for start in range(first * self.batch_size, total, self.batch_size):
            stop = min(total, start + self.batch_size)
            yield {s.name: np.asarray(self.arrays[mapping[s.name]][start:stop], dtype=s.dtype) for s in inputs}


def _npy_header(fh: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        raise CalibrationError(f"{where}: not a valid .npy array ({exc})") from None
    return tuple(shape), np.dtype(dtype), bool(fortran)


@dataclass
class _FileSource:
    """A data file read ``batch_size`` samples at a time, at most ``samples`` in all; checked and opened
    (:meth:`_open`) when created."""

    path: Path
    samples: int | None = None
    batch_size: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        _check_counts(self.samples, self.batch_size)
        self.path = Path(self.path)
        self._open()

    def _open(self) -> None:
        """Read what the source needs up front; raise :class:`CalibrationError` when the file is unreadable."""
        raise NotImplementedError

    def describe(self) -> str:
        return str(self.path)


@dataclass
class NpzSource(_FileSource):
    """A ``.npz`` file with one array per model input (named after it), samples first; streamed.

    Each member is read batch by batch from its (possibly compressed) zip stream, so only one batch of
    every input is in memory at a time.
    """

    def _open(self) -> None:
        """Read every member's ``.npy`` header."""
        try:
            with zipfile.ZipFile(self.path) as zf:
                members = [n for n in zf.namelist() if n.endswith(".npy")]
                self._headers = {}
                for m in members:
                    with zf.open(m) as fh:
                        self._headers[m[:-4]] = _npy_header(fh, f"{self.path}:{m}")
        except (zipfile.BadZipFile, OSError) as exc:
            raise CalibrationError(f"{self.path}: not a readable .npz file ({exc})") from None
        if not self._headers:
            raise CalibrationError(f"{self.path}: the .npz file holds no arrays")

    def _mapping(self, inputs: Sequence[InputSpec]) -> dict[str, str]:
        where = str(self.path)
        mapping = _match_names(where, list(self._headers), inputs)
        for spec in inputs:
            shape, dtype, _ = self._headers[mapping[spec.name]]
            _check_array(where, spec, shape, dtype)
        return mapping

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        mapping = self._mapping(inputs)
        n = _sample_count(str(self.path), {k: self._headers[v][0][0] for k, v in mapping.items()})
        return min(n, self.samples) if self.samples else n

    def _reader(self, zf: zipfile.ZipFile, stack: contextlib.ExitStack, member: str) -> Callable[[int], np.ndarray]:
        """A function returning the next ``n`` samples of one member, read from its zip stream."""
        shape, dtype, fortran = self._headers[member]
        fh = stack.enter_context(zf.open(member + ".npy"))
        if fortran:  # column-major: samples are not contiguous, read the array once
            data = np.lib.format.read_array(fh, allow_pickle=False)
            at = [0]

            def take_loaded(n: int) -> np.ndarray:
                at[0] += n
                return data[at[0] - n:at[0]]

            return take_loaded
        _npy_header(fh, str(self.path))
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

        def take(n: int) -> np.ndarray:
            return np.frombuffer(fh.read(n * row), dtype=dtype).reshape((n, *shape[1:]))

        return take

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        mapping = self._mapping(inputs)
        total = self.count(inputs) or 0
        with zipfile.ZipFile(self.path) as zf, contextlib.ExitStack() as stack:
            readers = {spec.name: self._reader(zf, stack, mapping[spec.name]) for spec in inputs}
            for start in range(0, total, self.batch_size):
                n = min(total, start + self.batch_size) - start
                yield {spec.name: np.asarray(readers[spec.name](n), dtype=spec.dtype) for spec in inputs}


@dataclass
class NpySource(_FileSource):
    """A ``.npy`` array (samples first) for a single-input model; memory-mapped."""

    def _open(self) -> None:
        """Memory-map the array."""
        try:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CalibrationError(f"{self.path}: not a readable .npy array ({exc})") from None

    def _source(self, inputs: Sequence[InputSpec]) -> ArraySource:
        if len(inputs) != 1:
            raise CalibrationError(
                f"{self.path}: a .npy file feeds single-input models only; this model has inputs "
                f"{', '.join(s.name for s in inputs)} — use a .npz with one array per input"
            )
        return ArraySource({inputs[0].name: self._array}, self.samples, self.batch_size, str(self.path))

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        return self._source(inputs).count(inputs)

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        return self._source(inputs).batches(inputs)

    def batches_from(self, inputs: Sequence[InputSpec], first: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from batch ``first`` on, the earlier ones not read."""
        return self._source(inputs).batches_from(inputs, first)


@dataclass
class RandomSource:
    """Seeded random inputs: standard normal floats, small non-negative integers, fair booleans.

    Dynamic non-batch dimensions take their size from ``shapes`` (``{input: sample shape}``), else
    :data:`RANDOM_DIM`. Meant for tests and for data-free criteria that need a fallback.

    ``spectrum`` (``{input: exponent}``) makes the floats of those inputs whose samples have a channel
    axis and positions (``[C, L]``, ``[C, H, W]``, or ``[H, W, C]`` when the last axis is 1, 3 or 4 and
    the first is not) spatially correlated, like natural signals: white noise whose amplitude spectrum
    over the position axes falls as ``1 / f^exponent`` (1: the ``1/f`` amplitude of natural images),
    standardised to mean 0 and variance 1 per sample (:func:`coloured_noise`).
    """

    samples: int | None = 32
    batch_size: int = 8
    seed: int = 0
    shapes: Mapping[str, tuple[int, ...]] | None = None
    spectrum: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _check_counts(self.samples, self.batch_size)

    def describe(self) -> str:
        coloured = {k: v for k, v in (self.spectrum or {}).items() if v}
        kind = ", ".join(f"1/f^{v:g} noise for '{k}'" for k, v in coloured.items())
        return f"random normal inputs{' (' + kind + ')' if kind else ''} (seed {self.seed})"

    def count(self, inputs: Sequence[InputSpec]) -> int | None:
        return self.samples or 32

    def batches(self, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        total = self.count(inputs) or 0
        for start in range(0, total, self.batch_size):
            n = min(total, start + self.batch_size) - start
            feed = {}
            for spec in inputs:
                sample = (tuple(self.shapes[spec.name]) if self.shapes and spec.name in self.shapes else
                          tuple(d if isinstance(d, int) and d > 0 else RANDOM_DIM for d in spec.sample_shape))
                shape = (n, *sample)
                exponent = (self.spectrum or {}).get(spec.name, 0.0)
                if spec.dtype.kind == "f" and exponent and len(sample) >= 2:
                    last = len(sample) == 3 and sample[-1] in (1, 3, 4) and sample[0] not in (1, 3, 4)
                    feed[spec.name] = coloured_noise(rng, shape, exponent, channels_last=last).astype(spec.dtype)
                elif spec.dtype.kind == "f":
                    feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                elif spec.dtype.kind == "b":
                    feed[spec.name] = rng.random(shape) < 0.5
                else:
                    feed[spec.name] = rng.integers(0, 4, size=shape).astype(spec.dtype)
            yield feed


def coloured_noise(rng: np.random.Generator, shape: tuple[int, ...], exponent: float, *,
                   channels_last: bool = False) -> np.ndarray:
    """Noise of ``shape`` ``[N, C, *positions]`` (``channels_last``: ``[N, *positions, C]``) whose
    amplitude spectrum over the position axes falls as ``1 / f^exponent`` (``f`` the radial frequency in
    cycles per sample, floored at one cycle per largest extent), standardised to mean 0 and variance 1
    per sample.

    >>> x = coloured_noise(np.random.default_rng(0), (2, 3, 16, 16), 1.0)
    >>> x.shape, bool(np.allclose(x.reshape(2, -1).std(axis=1), 1.0))
    ((2, 3, 16, 16), True)
    """
    axes = tuple(range(1, len(shape) - 1)) if channels_last else tuple(range(2, len(shape)))
    sizes = [shape[a] for a in axes]
    spec = np.fft.rfftn(rng.standard_normal(shape), axes=axes)
    grids = np.meshgrid(*[np.fft.fftfreq(n) for n in sizes[:-1]], np.fft.rfftfreq(sizes[-1]), indexing="ij")
    f = np.sqrt(sum(g * g for g in grids))
    f = np.expand_dims(f, -1) if channels_last else f  # broadcast over the trailing channel axis
    spec *= np.maximum(f, 1.0 / max(sizes)) ** -exponent
    x = np.fft.irfftn(spec, s=sizes, axes=axes)
    flat = x.reshape(shape[0], -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / (flat.std(axis=1, keepdims=True) + 1e-12)
    return flat.reshape(shape)
