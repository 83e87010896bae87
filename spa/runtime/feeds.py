"""The inputs of a model: their specs, concrete shapes and seeded random feeds.

:func:`input_specs` lists the inputs of a ModelProto or of a session. :func:`random_inputs` makes a feed
for every input of a session: dynamic dimensions become small concrete sizes (the first axis ``batch``,
others ``dim``, or what ``shapes`` says), floats are standard normal, integers 0 or 1 (a valid token id,
token type, attention-mask value and position of any model: BERT's ``token_type_ids`` index a table of
two rows), booleans fair coins.

For a benchmark run, every input gets a concrete shape: ``--shape NAME=...`` when given, else the declared shape with
dynamic dimensions set to 1 (the first) or 8 (the others); a requested batch size then replaces the
first dimension. A model whose first dimension is static and differs from the requested batch cannot
be timed at that batch: :func:`input_shapes` says so instead of feeding it a wrong shape.

>>> _concrete("m.onnx", "x", ["N", 3, 8, 8], None, 4)
(4, 3, 8, 8)
>>> _concrete("m.onnx", "x", [1, 3, 8, 8], None, None)
(1, 3, 8, 8)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from spa.analysis.metrics import refusals_at
from spa.errors import UsageError, ValidationError
from spa.graph.model import ModelGraph

Shapes = dict[str, tuple[int, ...]]
log = logging.getLogger(__name__)

DYNAMIC_DIM = 8
#: sizes tried, in order, for the dynamic non-batch dimensions of a model's inputs by :func:`runnable_shapes`
#: (text detectors need multiples of 32, face-proposal nets at least 12, FPNs a multiple of their stride)
PROBE_DIMS = (8, 32, 64, 128, 224, 320, 640)

#: numpy dtypes of ONNX Runtime's input type strings
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(bool)": "bool", "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
              "tensor(uint32)": "uint32", "tensor(uint64)": "uint64"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (ints, or str/None for dynamic dims) and numpy dtype.

    ``type`` is ONNX Runtime's type string when the spec comes from a session (else empty); an input
    whose type numpy cannot hold (strings, bfloat16, ...) has ``dtype`` object.
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype
    type: str = ""

    @property
    def sample_shape(self) -> tuple[int | str | None, ...]:
        """The shape of one sample (the shape without its first, batch axis)."""
        return self.shape[1:]


def input_specs(model: onnx.ModelProto | ort.InferenceSession) -> list[InputSpec]:
    """The inputs of ``model``.

    Of a ModelProto: its real inputs (initializers listed as inputs are left out). Of a session: every
    input ONNX Runtime reports.
    """
    if isinstance(model, ort.InferenceSession):
        return [InputSpec(i.name, tuple(i.shape), np.dtype(_ORT_TYPES.get(i.type, "object")), i.type)
                for i in model.get_inputs()]
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: tuple[int | str | None, ...] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype("float32")
        specs.append(InputSpec(vi.name, dims, dtype))
    return specs


def random_inputs(
    sess: ort.InferenceSession,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int = 2,
    dim: int = 8,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every input of ``sess``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in input_specs(sess):
        name, typ = spec.name, spec.type
        if shapes and name in shapes:
            concrete = list(shapes[name])
        else:
            concrete = [d if isinstance(d, int) and d >= 0 else (batch if k == 0 else dim)
                        for k, d in enumerate(spec.shape)]
        if "float16" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float16)
        elif "double" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float64)
        elif "float" in typ:
            feeds[name] = np.asarray(rng.standard_normal(concrete), dtype=np.float32)
        elif "bool" in typ:
            feeds[name] = np.asarray(rng.random(concrete) < 0.5, dtype=bool)
        elif "int" in typ:
            dt = np.int64 if "int64" in typ else np.int32
            feeds[name] = np.asarray(rng.integers(0, 2, size=concrete), dtype=dt)
        else:
            raise ValidationError(f"input '{name}' has type {typ}; spa cannot make random data for it")
    return feeds


def runnable_shapes(sess: ort.InferenceSession, shapes: Mapping[str, tuple[int, ...]] | None = None, *,
                    batch: int = 2, seed: int = 0, graph: Callable[[], ModelGraph | None] | None = None) -> Shapes:
    """Concrete input shapes ``sess`` really runs at.

    Shapes in ``shapes`` are kept; a dynamic first dimension is ``batch``; every other dynamic dimension
    takes the first size of :data:`PROBE_DIMS` at which ONNX Runtime runs the model on random inputs
    (one run per size tried; none when nothing is dynamic). With ``graph`` (the model's graph, built only
    when something is dynamic), a size at which shape evaluation shows the graph cannot run
    (:func:`spa.analysis.metrics.refusals_at`: a Concat of a ×32 downsampled and upsampled map with the
    original, a position table, a window layout) is not run but kept for last, so the first size tried
    is usually the one that runs. When no size runs, the first is returned and the caller's own run
    reports the error (:func:`find_runnable_shapes` returns None instead).
    """
    found = find_runnable_shapes(sess, shapes, batch=batch, seed=seed, graph=graph)
    if found is None:
        specs = input_specs(sess)
        return {s.name: tuple(shapes[s.name]) if shapes and s.name in shapes else
                tuple(d if isinstance(d, int) and d >= 0 else (batch if k == 0 else DYNAMIC_DIM)
                      for k, d in enumerate(s.shape)) for s in specs}
    return found


def find_runnable_shapes(sess: ort.InferenceSession, shapes: Mapping[str, tuple[int, ...]] | None = None, *,
                         batch: int = 2, seed: int = 0, graph: Callable[[], ModelGraph | None] | None = None
                         ) -> Shapes | None:
    """:func:`runnable_shapes`, or None when the model has dynamic sizes and none of :data:`PROBE_DIMS` runs."""
    specs = input_specs(sess)

    def dynamic(d: object) -> bool:
        return not (isinstance(d, int) and d >= 0)

    def at(dim: int) -> Shapes:
        return {s.name: tuple(shapes[s.name]) if shapes and s.name in shapes else
                tuple(d if isinstance(d, int) and d >= 0 else (batch if k == 0 else dim)
                      for k, d in enumerate(s.shape)) for s in specs}

    if not any(dynamic(d) for s in specs if not (shapes and s.name in shapes) for d in s.shape[1:]):
        return at(DYNAMIC_DIM)
    return _first_running(sess, [at(dim) for dim in PROBE_DIMS], seed, graph() if graph is not None else None)


def graph_of(model: object) -> ModelGraph | None:
    """``model``'s graph for :func:`runnable_shapes` (no folding, no copy of a ModelGraph): a ModelGraph
    as it is, a ModelProto imported; None for anything else or a graph onnx-graphsurgeon cannot import
    (the sizes are then found by running alone)."""
    if isinstance(model, ModelGraph):
        return model
    if not isinstance(model, onnx.ModelProto):
        return None
    try:
        return ModelGraph.from_graph(gs.import_onnx(model), model)
    except Exception as exc:  # noqa: BLE001 - only a hint: without it the sizes are tried by running
        log.debug("no graph for runnable_shapes: %s", exc)
        return None


def _first_running(sess: ort.InferenceSession, candidates: list[Shapes], seed: int,
                   graph: ModelGraph | None) -> Shapes | None:
    """The first of ``candidates`` ONNX Runtime runs; those ``graph``'s shape evaluation refuses are tried last."""
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a refused size is expected here: no ONNX Runtime error log
    deferred: list[Shapes] = []

    def runs(candidate: Shapes) -> bool:
        try:
            sess.run(None, random_inputs(sess, seed=seed, shapes=candidate), quiet)
        except Exception:  # noqa: BLE001 - ONNX Runtime refuses a size with untyped errors: try the next one
            return False
        return True

    for candidate in candidates:
        refused = refusals_at(graph, candidate) if graph is not None else []
        if refused:
            log.debug("not running at %s: %s", candidate, refused[0])
            deferred.append(candidate)
        elif runs(candidate):
            return candidate
    return next((c for c in deferred if runs(c)), None)


def _concrete(model: str, name: str, declared: Sequence[object], given: tuple[int, ...] | None,
              batch: int | None) -> tuple[int, ...]:
    if given is not None:
        if len(given) != len(declared):
            raise UsageError(f"--shape {name}: {len(given)} dimensions given, {model} declares {len(declared)}")
        dims = list(given)
        for k, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d > 0 and d != g and not (k == 0 and batch is not None):
                raise UsageError(f"--shape {name}: dimension {k} of {model}'s input is static ({d}), got {g}")
    else:
        dims = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else DYNAMIC_DIM)
                for k, d in enumerate(declared)]
    if batch is not None and dims:
        first = declared[0] if declared else None
        if isinstance(first, int) and first > 0 and first != batch:
            raise UsageError(f"{model}: input '{name}' has a static batch dimension of {first}, so it cannot run "
                             f"with batch {batch}; re-export it with a dynamic first dimension or use --batch {first}")
        dims[0] = batch
    return tuple(int(d) for d in dims)


def input_shapes(sess: ort.InferenceSession, model: str, *, batch: int | None = None,
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> Shapes:
    """Concrete shape of every input of ``sess`` (``model`` names it in errors).

    Raises:
        UsageError: ``shapes`` names an unknown input or has the wrong rank; a static batch differs
            from ``batch``.
    """
    names = [i.name for i in sess.get_inputs()]
    unknown = sorted(set(shapes or {}) - set(names))
    if unknown:
        raise UsageError(f"--shape {unknown[0]}: {model} has no such input (inputs: {', '.join(names)})")
    return {i.name: _concrete(model, i.name, list(i.shape), (shapes or {}).get(i.name), batch)
            for i in sess.get_inputs()}


def batch_of(shapes: Shapes) -> int:
    """The batch size of a feed: the first dimension of the first input that has one (else 1)."""
    return next((s[0] for s in shapes.values() if s), 1)


def make_feeds(sess: ort.InferenceSession, shapes: Shapes, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of the given shapes (the same seed gives the same data to every model)."""
    return random_inputs(sess, seed=seed, shapes=shapes)
