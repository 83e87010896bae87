#!/usr/bin/env python
"""Fuzz spa's pipeline: every input must end in a valid pruned model or a clean :class:`spa.SpaError`.

Each case starts from a valid model — one of the hostile-input catalogue (``tests/test_hostile_inputs.py``:
QDQ, control flow, custom ops, fp16, ...) or a random CNN drawn by ``tests/graph_strategies.cnn_models``
(driven through hypothesis with a fixed seed, so a run is reproducible) — and applies 0–3 mutations:

* on the proto: drop a node / an initializer / a graph input or output, corrupt a shape dim, corrupt
  initializer dims, swap an op type (or its domain), set a random attribute, rewire an input (cycles and
  dangling names included), change the opset or IR version, change an element type, replace initializer
  values (NaN/inf/zeros/huge, random shape constants), duplicate a tensor name;
* on the serialised bytes (last): flip bytes, truncate.

Then it runs ``spa.analyze(path)`` and ``spa.prune(path, ...)`` with random options (ratio, criterion, global
ranking, round-to, masked twin, hidden-size pruning) in-process, with a per-case time limit (``--timeout``, SIGALRM),
and
classifies the case:

* ``success``: a pruned model that passes the ONNX checker (``spa.prune`` checks it and loads it in ONNX
  Runtime); when the masked twin was built and both models run, the mask oracle must hold too, else
  ``wrong``;
* ``clean_error``: a SpaError (``multiline`` counts those whose message is not one line);
* ``crash``: any other exception, or ``hang`` (over the time limit). Crashing inputs are saved under
  ``--out`` (``crashes/<signature>/case_<n>.onnx`` + ``.txt`` with the traceback and the case), at most
  three per signature (exception type + innermost spa frame);
* ``known``: a crash whose signature is in :data:`KNOWN_CRASHES` (a bug with a repro, not yet fixed).

The cases run in one worker process, in order; the supervisor (``main``) only waits for it. A native abort
(onnx's C++ code asserting, a segfault) or a hang inside native code kills the worker: the supervisor records
the case it was on as a ``crash`` (signature ``abort@<innermost spa frame>``, with the stack faulthandler
printed) or a ``hang``, and starts a new worker at the next case. Case ``k`` of a run is generated from
``default_rng([seed, k])`` alone, so any case can be reproduced on its own.

Usage::

    python tools/fuzz.py --cases 10000 --seed 0 --out /tmp/spa_fuzz      # tools/results/fuzz.json
    python tools/fuzz.py --cases 150 --seed 1 --out /tmp/f --json /tmp/f/fuzz.json --quiet

Prints a rich table (outcomes, outcomes per mutation, crash signatures) and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import faulthandler
import json
import os
import platform
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import spa  # noqa: E402

#: crash classes of known bugs with a pending fix: (signature regex, message regex) -> repro script.
#: A crash matching one is counted as ``known``, not ``crash``; remove an entry once its fix lands.
KNOWN_CRASHES: dict[tuple[str, str], str] = {
    # (exception@location regex, message regex) -> repro; none open: every class found so far is fixed
}
#: mask-oracle mismatches of known bugs: seed model -> repro script
KNOWN_WRONG: dict[str, str] = {}


def known_crash(sig: str, message: str) -> str | None:
    """The repro of the known crash class ``sig``/``message`` belongs to, or None."""
    for (sig_re, msg_re), repro in KNOWN_CRASHES.items():
        if re.match(sig_re, sig) and re.search(msg_re, message):
            return repro
    return None

OP_TYPES = (
    "Relu", "Sigmoid", "Conv", "ConvTranspose", "Add", "Mul", "Sub", "Div", "Concat", "Split", "Slice", "Gather",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gemm", "MatMul", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool",
    "ReduceMean", "ReduceSum", "Resize", "Pad", "Expand", "Tile", "Shape", "Cast", "Identity", "Dropout",
    "DepthToSpace", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "Einsum", "If", "Loop", "Where",
    "PRelu", "Clip", "Trilu", "TopK", "NoSuchOp",
)
ATTR_NAMES = ("axis", "axes", "group", "perm", "pads", "strides", "kernel_shape", "dilations", "keepdims",
              "transA", "transB", "block_size", "epsilon", "to", "mode", "split", "blocksize", "auto_pad",
              "num_outputs", "allowzero", "output_padding", "noop_with_empty_axes", "alpha", "beta")
ELEM_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32,
              TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16,
              TensorProto.FLOAT8E4M3FN, TensorProto.UNDEFINED, 999)
CRITERIA = ("l1", "l2", "l2", "random", "lamp", "bn", "obspa")


class CaseTimeout(BaseException):
    """Raised by the alarm (a BaseException, so ``except Exception`` inside spa does not swallow it)."""


# -- seeds -------------------------------------------------------------------------------------------

def catalogue_models() -> dict[str, onnx.ModelProto]:
    """The hostile-input catalogue's valid models."""
    from tests.test_hostile_inputs import seed_models

    return seed_models()


def random_models(n: int, seed: int) -> list[onnx.ModelProto]:
    """``n`` random CNNs from ``tests.graph_strategies.cnn_models``, reproducible for a seed."""
    if n <= 0:
        return []
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from tests.graph_strategies import cnn_models

    out: list[onnx.ModelProto] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cnn_models())
    def collect(gm: Any) -> None:
        out.append(gm.model)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    return out[:n]


# -- mutations ---------------------------------------------------------------------------------------

Rng = np.random.Generator
ProtoMutation = Callable[[onnx.ModelProto, Rng], str]
BytesMutation = Callable[[bytes, Rng], tuple[bytes, str]]


def _pick(rng: Rng, seq: Any) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _tensor_names(m: onnx.ModelProto) -> list[str]:
    names = [i.name for i in m.graph.input] + [i.name for i in m.graph.initializer]
    names += [o for n in m.graph.node for o in n.output]
    return names


def _value_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [v for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
            if v.type.HasField("tensor_type")]


def mut_drop_node(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.node:
        return "noop"
    k = int(rng.integers(len(m.graph.node)))
    op = m.graph.node[k].op_type
    del m.graph.node[k]
    return f"drop node {k} ({op})"


def mut_drop_initializer(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.initializer:
        return "noop"
    k = int(rng.integers(len(m.graph.initializer)))
    name = m.graph.initializer[k].name
    del m.graph.initializer[k]
    return f"drop initializer {name}"


def mut_drop_io(m: onnx.ModelProto, rng: Rng) -> str:
    field_ = m.graph.input if rng.random() < 0.5 and m.graph.input else m.graph.output
    if not field_:
        return "noop"
    k = int(rng.integers(len(field_)))
    name = field_[k].name
    del field_[k]
    return f"drop graph io {name}"


def mut_dim(m: onnx.ModelProto, rng: Rng) -> str:
    vis = [v for v in _value_infos(m) if v.type.tensor_type.HasField("shape")]
    if not vis:
        return "noop"
    v = _pick(rng, vis)
    shape = v.type.tensor_type.shape
    r = rng.random()
    if r < 0.1:
        v.type.tensor_type.ClearField("shape")
        return f"clear shape of {v.name}"
    if r < 0.2 or not shape.dim:
        shape.dim.add().dim_value = int(_pick(rng, [1, 2, 3]))
        return f"add a dim to {v.name}"
    if r < 0.3:
        del shape.dim[int(rng.integers(len(shape.dim)))]
        return f"remove a dim of {v.name}"
    d = shape.dim[int(rng.integers(len(shape.dim)))]
    value = _pick(rng, [0, 1, 2, 3, 5, 7, 64, -1, -7, "sym", "N", ""])
    if isinstance(value, str):
        d.dim_param = value
    else:
        d.dim_value = int(value)
    return f"dim of {v.name} -> {value!r}"


def mut_init_dims(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.initializer:
        return "noop"
    t = _pick(rng, m.graph.initializer)
    dims = list(t.dims)
    if dims and rng.random() < 0.5:
        rng.shuffle(dims)  # same element count, wrong layout
        how = "permuted"
    elif dims:
        k = int(rng.integers(len(dims)))
        dims[k] = int(_pick(rng, [0, 1, dims[k] + 1, max(dims[k] - 1, 0), 2 * dims[k]]))
        how = "changed"
    else:
        dims = [int(_pick(rng, [0, 1, 2]))]
        how = "scalar→vector"
    del t.dims[:]
    t.dims.extend(dims)
    return f"initializer {t.name} dims {how} -> {dims}"


def mut_swap_op(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.node:
        return "noop"
    n = _pick(rng, m.graph.node)
    if rng.random() < 0.15:
        n.domain = _pick(rng, ["my.ops", "com.microsoft", "ai.onnx.ml", "ai.onnx"])
        return f"{n.name} domain -> {n.domain}"
    old, n.op_type = n.op_type, _pick(rng, OP_TYPES)
    return f"{n.name} {old} -> {n.op_type}"


def mut_attr(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.node:
        return "noop"
    n = _pick(rng, m.graph.node)
    existing = [a.name for a in n.attribute]
    name = _pick(rng, existing) if existing and rng.random() < 0.6 else _pick(rng, ATTR_NAMES)
    kind = int(rng.integers(6))
    if kind == 0:
        value: Any = int(_pick(rng, [-3, -1, 0, 1, 2, 3, 4, 7, 16, 1 << 40]))
    elif kind == 1:
        value = [int(x) for x in rng.integers(-3, 9, size=int(rng.integers(0, 9)))]
    elif kind == 2:
        value = float(_pick(rng, [0.0, -1.0, 1e-5, 1e30, float("nan")]))
    elif kind == 3:
        value = str(_pick(rng, ["", "NOTSET", "SAME_UPPER", "VALID", "nearest", "linear", "DCR", "garbage"]))
    elif kind == 4:
        value = [float(x) for x in rng.uniform(-2, 4, size=int(rng.integers(0, 5)))]
    else:
        kept = [a for a in n.attribute if a.name != name]
        del n.attribute[:]
        n.attribute.extend(kept)
        return f"{n.name} remove attribute {name}"
    kept = [a for a in n.attribute if a.name != name]
    del n.attribute[:]
    if isinstance(value, list) and not value:  # an empty list has no inferable type
        attr = helper.make_attribute(name, value, attr_type=onnx.AttributeProto.INTS if kind == 1
                                     else onnx.AttributeProto.FLOATS)
    else:
        attr = helper.make_attribute(name, value)
    n.attribute.extend(kept + [attr])
    return f"{n.name}.{name} = {value!r}"


def mut_rewire(m: onnx.ModelProto, rng: Rng) -> str:
    nodes = [n for n in m.graph.node if n.input]
    if not nodes:
        return "noop"
    n = _pick(rng, nodes)
    k = int(rng.integers(len(n.input)))
    target = _pick(rng, _tensor_names(m) + ["", "does_not_exist"])
    n.input[k] = target
    return f"{n.name} input {k} -> {target!r}"


def mut_opset(m: onnx.ModelProto, rng: Rng) -> str:
    r = rng.random()
    if r < 0.6:
        v = int(_pick(rng, [1, 7, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                            onnx.defs.onnx_opset_version(), onnx.defs.onnx_opset_version() + 1, 100]))
        for imp in m.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = v
        return f"opset -> {v}"
    if r < 0.8:
        m.ir_version = int(_pick(rng, [0, 3, 4, 7, 8, 9, 10, 11, 12, 13, 100]))
        return f"ir_version -> {m.ir_version}"
    m.opset_import.append(helper.make_opsetid(_pick(rng, ["", "my.ops"]), int(_pick(rng, [1, 13, 1000]))))
    return "extra opset import"


def mut_dtype(m: onnx.ModelProto, rng: Rng) -> str:
    elem = int(_pick(rng, ELEM_TYPES))
    if m.graph.initializer and rng.random() < 0.4:
        t = _pick(rng, m.graph.initializer)
        t.data_type = elem
        return f"initializer {t.name} data_type -> {elem}"
    vis = _value_infos(m)
    if not vis:
        return "noop"
    v = _pick(rng, vis)
    v.type.tensor_type.elem_type = elem
    return f"{v.name} elem_type -> {elem}"


def mut_values(m: onnx.ModelProto, rng: Rng) -> str:
    if not m.graph.initializer:
        return "noop"
    t = _pick(rng, m.graph.initializer)
    try:
        arr = numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - an initializer onnx cannot decode is left alone
        return "noop"
    if arr.dtype.kind == "f":
        how = _pick(rng, ["nan", "inf", "zeros", "huge", "tiny", "one_nan"])
        new = arr.copy()
        if how == "nan":
            new[...] = np.nan
        elif how == "inf":
            new[...] = np.inf
        elif how == "zeros":
            new[...] = 0
        elif how == "huge":
            new = (new * 1e30).astype(arr.dtype)
        elif how == "tiny":
            new = (new * 1e-30).astype(arr.dtype)
        elif new.size:
            new.reshape(-1)[int(rng.integers(new.size))] = np.nan
    elif arr.dtype.kind in "iu":
        how = "random ints"
        info = np.iinfo(arr.dtype)
        lo, hi = max(int(info.min), -(1 << 40)), min(int(info.max), 1 << 40)
        pool = np.array([v for v in (-1, 0, 1, 2, 3, 7, -3, lo, hi) if lo <= v <= hi], dtype=arr.dtype)
        new = rng.choice(pool, size=arr.shape).astype(arr.dtype)
    else:
        return "noop"
    t.CopyFrom(numpy_helper.from_array(new, t.name))
    return f"initializer {t.name} values -> {how}"


def mut_duplicate_name(m: onnx.ModelProto, rng: Rng) -> str:
    nodes = [n for n in m.graph.node if n.output]
    names = _tensor_names(m)
    if not nodes or not names:
        return "noop"
    n = _pick(rng, nodes)
    target = _pick(rng, names)
    old = n.output[0]
    n.output[0] = target
    return f"{n.name} output {old} renamed to existing {target}"


def mut_flip_bytes(data: bytes, rng: Rng) -> tuple[bytes, str]:
    buf = bytearray(data)
    k = int(rng.integers(1, 21))
    for _ in range(k):
        pos = int(rng.integers(len(buf)))
        buf[pos] ^= 1 << int(rng.integers(8))
    return bytes(buf), f"flip {k} bits"


def mut_truncate(data: bytes, rng: Rng) -> tuple[bytes, str]:
    n = int(rng.integers(len(data)))
    return data[:n], f"truncate to {n}/{len(data)} bytes"


PROTO_MUTATIONS: dict[str, ProtoMutation] = {
    "drop_node": mut_drop_node, "drop_initializer": mut_drop_initializer, "drop_io": mut_drop_io,
    "dim": mut_dim, "init_dims": mut_init_dims, "swap_op": mut_swap_op, "attr": mut_attr, "rewire": mut_rewire,
    "opset": mut_opset, "dtype": mut_dtype, "values": mut_values, "duplicate_name": mut_duplicate_name,
}
BYTES_MUTATIONS: dict[str, BytesMutation] = {"flip_bytes": mut_flip_bytes, "truncate": mut_truncate}


# -- cases -------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One fuzz input and the options spa runs with."""

    index: int
    source: str
    mutations: list[str]
    steps: list[str]
    data: bytes
    options: dict[str, Any]


@dataclass
class Outcome:
    """What happened to one case."""

    index: int
    source: str
    mutations: list[str]
    kind: str  # success | clean_error | crash | hang | wrong | known
    seconds: float
    error_type: str = ""
    message: str = ""
    signature: str = ""
    oracle: str = ""  # checked | skipped:<why> | failed
    multiline: bool = False
    trace: str = field(default="", repr=False)


def make_case(index: int, seed: int, seeds: dict[str, onnx.ModelProto]) -> Case:
    """Case ``index`` of the run with ``seed``: pick a seed model, mutate it, pick options.

    Each case has its own generator (``default_rng([seed, index])``), so a run can resume at any index.
    """
    rng = np.random.default_rng([seed, index])
    name = _pick(rng, sorted(seeds))
    m = copy.deepcopy(seeds[name])
    mutations: list[str] = []
    steps: list[str] = []
    n_proto = 0 if rng.random() < 0.15 else int(rng.integers(1, 4))
    for _ in range(n_proto):
        kind = _pick(rng, sorted(PROTO_MUTATIONS))
        try:
            steps.append(PROTO_MUTATIONS[kind](m, rng))
        except Exception as exc:  # noqa: BLE001 - a mutation that cannot apply is simply skipped
            steps.append(f"{kind} skipped ({type(exc).__name__})")
        mutations.append(kind)
    data = m.SerializeToString()
    if n_proto == 0 or rng.random() < 0.12:
        if rng.random() < 0.6 and n_proto:
            kind = _pick(rng, sorted(BYTES_MUTATIONS))
            data, step = BYTES_MUTATIONS[kind](data, rng)
            mutations.append(kind)
            steps.append(step)
    options: dict[str, Any] = {
        "ratio": float(_pick(rng, [0.0, 0.25, 0.5, 0.5, 0.75, 0.9])),
        "criterion": str(_pick(rng, CRITERIA)),
        "global_rank": bool(rng.random() < 0.25),
        "round_to": int(_pick(rng, [1, 1, 1, 2, 4])),
        "seed": int(rng.integers(1000)),
        "emit_masked": bool(rng.random() < 0.7),
        "prune_hidden": bool(rng.random() < 0.3),
    }
    return Case(index, name, mutations, steps, data, options)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` after ``seconds`` (main thread, SIGALRM)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def signature(exc: BaseException) -> str:
    """Exception type + innermost frame inside spa/ (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    spa_dir = str(ROOT / "spa")
    inner = [f for f in frames if f.filename.startswith(spa_dir)] or frames
    where = ""
    if inner:
        f = inner[-1]
        where = f"{os.path.relpath(f.filename, ROOT)}:{f.name}"
    return f"{type(exc).__name__}@{where}"


def oracle_check(result: spa.PruneResult, timeout: float = 20.0) -> tuple[str, str]:
    """The mask oracle on seeded random inputs: ("checked"|"failed"|"skipped:...", detail).

    ONNX Runtime runs are stopped after ``timeout`` seconds through ``RunOptions.terminate`` (a mutated
    Loop trip count can make a model run for ever; SIGALRM cannot interrupt native code).
    """
    import threading

    import onnxruntime as ort

    from spa.runtime.compare import compare_outputs
    from spa.runtime.feeds import random_inputs
    from spa.runtime.session import session

    if result.masked is None:
        return "skipped:no masked twin", ""
    run_options = ort.RunOptions()
    timer = threading.Timer(timeout, lambda: setattr(run_options, "terminate", True))
    timer.daemon = True
    try:
        a, b = session(result.model), session(result.masked)
        for spec in b.get_inputs():
            dims = [d if isinstance(d, int) and d > 0 else 8 for d in spec.shape]
            if int(np.prod(dims, dtype=np.int64)) > 4_000_000:
                return "skipped:large input", ""
        feeds = random_inputs(b, seed=0)
        timer.start()
        ref = b.run(None, feeds, run_options)
        got = a.run(None, feeds, run_options)
    except spa.SpaError as exc:
        return "skipped:cannot run", str(exc)[:200]
    except Exception as exc:  # noqa: BLE001 - ORT cannot run this (odd types, run-time shape errors): no verdict
        if run_options.terminate:
            return "skipped:timeout", ""
        return "skipped:cannot run", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        timer.cancel()
    finite = [np.asarray(r) for r in ref if np.asarray(r).dtype.kind == "f"]
    if any(not np.all(np.isfinite(r)) for r in finite):
        return "skipped:non-finite outputs", ""
    scale = max((float(np.max(np.abs(r))) for r in finite if r.size), default=1.0)
    names = [o.name for o in b.get_outputs()]
    diffs = compare_outputs(names, got, ref, rtol=1e-3, atol=1e-4 * max(1.0, scale))
    bad = [d for d in diffs if not d.ok]
    if bad:
        return "failed", "; ".join(f"{d.name}: max_abs={d.max_abs:.3g}" for d in bad)
    return "checked", ""


def run_case(case: Case, workdir: Path, timeout: float) -> Outcome:
    """Run analyze + prune on one case and classify what happened."""
    path = workdir / "case.onnx"
    path.write_bytes(case.data)
    t0 = time.perf_counter()
    out = Outcome(case.index, case.source, case.mutations, "success", 0.0)
    try:
        with time_limit(timeout):
            try:
                spa.analyze(path)
            except spa.SpaError:
                pass  # prune meets the same error below and classifies it
            result = spa.prune(path, **case.options)
            if result.report["onnx_check"] == "ok":  # else the checker rejects the input too (spa says so)
                onnx.checker.check_model(result.model)
        if not case.options["emit_masked"]:
            out.oracle = "skipped:not asked"
        else:
            try:  # running the models is the oracle's business, not spa's: its own limit, no hang verdict
                with time_limit(timeout + 5):
                    out.oracle, detail = oracle_check(result, timeout)
            except CaseTimeout:
                out.oracle, detail = "skipped:timeout", ""
        if out.oracle == "failed":
            out.kind = "known" if case.source in KNOWN_WRONG else "wrong"
            out.message = detail
            out.signature = "mask oracle@" + ("random" if case.source.startswith("random_") else case.source)
    except spa.SpaError as exc:
        out.kind, out.error_type, out.message = "clean_error", type(exc).__name__, str(exc)
        out.multiline = "\n" in str(exc).strip() or not str(exc).strip()
    except CaseTimeout as exc:
        out.kind, out.error_type, out.message = "hang", "timeout", str(exc)
        out.signature = "hang@" + signature(exc).split("@", 1)[1]
        out.trace = "".join(traceback.format_exception(exc))
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - the fuzzer records every crash
        out.kind, out.error_type, out.message = "crash", type(exc).__name__, str(exc)[:2000]
        out.signature = signature(exc)
        out.trace = "".join(traceback.format_exception(exc))
        if known_crash(out.signature, out.message):
            out.kind = "known"
    out.seconds = time.perf_counter() - t0
    return out


def _slug(sig: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sig)[:120]


def save_crash(case: Case, outcome: Outcome, out_dir: Path) -> str | None:
    """Save the input and traceback of a crash (three per signature); returns the model path."""
    folder = out_dir / "crashes" / _slug(outcome.signature)
    if folder.exists() and len(list(folder.glob("*.onnx"))) >= 3:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"case_{case.index}.onnx"
    model.write_bytes(case.data)
    info = {"index": case.index, "source": case.source, "steps": case.steps, "options": case.options,
            "kind": outcome.kind, "signature": outcome.signature, "message": outcome.message}
    (folder / f"case_{case.index}.txt").write_text(
        json.dumps(info, indent=2) + "\n\n" + (outcome.trace or outcome.message) + "\n"
        + f"\nreproduce: import spa; spa.prune({str(model)!r}, **{case.options!r})\n")
    return str(model)


# -- the run -----------------------------------------------------------------------------------------
#
# The supervisor (``main``) starts one worker process that runs the cases in order and appends every
# outcome to ``<out>/outcomes.jsonl``. A native abort (onnx's C++ asserting, a segfault) or a hard hang in
# native code kills the worker: the supervisor then records the case it was on (``current_case.*``) as a
# crash, with the stack faulthandler printed, and starts a new worker at the next case.

OUTCOMES = "outcomes.jsonl"


def seed_pool(seed: int, random_pool: int) -> dict[str, onnx.ModelProto]:
    """The catalogue plus ``random_pool`` random CNNs."""
    seeds = dict(catalogue_models())
    for k, m in enumerate(random_models(random_pool, seed)):
        seeds[f"random_{k:03d}"] = m
    return seeds


def work(start: int, stop: int, seed: int, out_dir: Path, *, timeout: float, random_pool: int,
         abort_at: int = -1) -> None:
    """Run cases ``start .. stop-1`` in this process, appending outcomes to ``outcomes.jsonl``.

    ``abort_at``: abort the process at that case (tests the supervisor's recovery).
    """
    seeds = seed_pool(seed, random_pool)
    parent = os.getppid()
    faulthandler.enable()
    with tempfile.TemporaryDirectory(prefix="spa_fuzz_") as tmp, open(out_dir / OUTCOMES, "a") as log:
        for i in range(start, stop):
            if os.getppid() != parent:  # the supervisor is gone: stop too
                return
            case = make_case(i, seed, seeds)
            (out_dir / "current_case.onnx").write_bytes(case.data)
            (out_dir / "current_case.json").write_text(json.dumps(
                {"index": i, "source": case.source, "mutations": case.mutations, "steps": case.steps,
                 "options": case.options}))
            # a hang inside native code never returns to Python: dump every stack and exit
            faulthandler.dump_traceback_later(timeout * 3 + 30, exit=True)
            if i == abort_at:
                os.abort()
            outcome = run_case(case, Path(tmp), timeout)
            faulthandler.cancel_dump_traceback_later()
            if outcome.kind in ("crash", "hang", "wrong", "known"):
                save_crash(case, outcome, out_dir)
            row = {k: v for k, v in vars(outcome).items() if k != "trace"}
            log.write(json.dumps(row) + "\n")
            log.flush()


def _dead_worker_outcome(out_dir: Path, log_text: str) -> tuple[Outcome, Case] | None:
    """The case a dead worker was on, as a crash (native abort) or a hang, saved to ``crashes/``."""
    info_path, model_path = out_dir / "current_case.json", out_dir / "current_case.onnx"
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    dump = log_text[log_text.rfind("Fatal Python error") if "Fatal Python error" in log_text
                    else log_text.rfind("Timeout ("):]
    frames = re.findall(r'File "([^"]+)", line \d+ in (\w+)', dump)
    spa_frames = [(f, fn) for f, fn in frames if f.startswith(str(ROOT / "spa"))]
    where = ""
    if spa_frames or frames:
        f, fn = (spa_frames or frames)[0]  # faulthandler lists the innermost frame first
        where = f"{os.path.relpath(f, ROOT)}:{fn}"
    hang = "Timeout (" in dump and "Fatal Python error" not in dump
    if hang and any(fn == "oracle_check" for _, fn in frames):  # spa had finished; the oracle's run hung
        return (Outcome(info["index"], info["source"], info["mutations"], "success", 0.0,
                        oracle="skipped:timeout"),
                Case(info["index"], info["source"], info["mutations"], info["steps"], model_path.read_bytes(),
                     info["options"]))
    first = next((ln for ln in log_text.splitlines() if "Assertion" in ln or "Fatal Python error" in ln), "")
    outcome = Outcome(info["index"], info["source"], info["mutations"], "hang" if hang else "crash", 0.0,
                      error_type="hang (native)" if hang else "abort",
                      message=first.strip()[:500] or ("over the time limit" if hang else "process died"),
                      signature=("hang@" if hang else "abort@") + where, trace=dump[-6000:])
    if known_crash(outcome.signature, outcome.message):
        outcome.kind = "known"
    case = Case(info["index"], info["source"], info["mutations"], info["steps"], model_path.read_bytes(),
                info["options"])
    return outcome, case


def supervise(cases: int, seed: int, out_dir: Path, *, timeout: float, random_pool: int,
              progress: bool, abort_at: int = -1) -> list[dict[str, Any]]:
    """Run all cases in worker processes (one at a time), restarting after a native crash."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (OUTCOMES, "current_case.json", "current_case.onnx", "worker.log"):
        (out_dir / stale).unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    start = 0
    while start < cases:
        log_path = out_dir / "worker.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--start", str(start), "--cases", str(cases),
                 "--seed", str(seed), "--out", str(out_dir), "--timeout", str(timeout),
                 "--random-models", str(random_pool), "--max-memory-gb", str(_MEMORY_GB),
                 "--abort-at", str(abort_at)],
                stdout=log, stderr=subprocess.STDOUT)
            shown = 0
            while proc.poll() is None:
                time.sleep(1.0)
                done = _count_lines(out_dir / OUTCOMES)
                if progress and done // 100 > shown // 100:
                    print(f"[{done}/{cases}]", file=sys.stderr, flush=True)
                shown = done
        rows = [json.loads(ln) for ln in (out_dir / OUTCOMES).read_text().splitlines() if ln.strip()] \
            if (out_dir / OUTCOMES).exists() else []
        start = len(rows)
        if start >= cases:
            break
        dead = _dead_worker_outcome(out_dir, log_path.read_text(errors="replace"))
        if dead is None or dead[0].index != start:
            raise RuntimeError(f"fuzz worker died before case {start}; see {log_path}")
        outcome, case = dead
        if outcome.kind != "success":
            save_crash(case, outcome, out_dir)
            folder = out_dir / "crashes" / _slug(outcome.signature)
            (folder / f"case_{case.index}.log").write_text(log_path.read_text(errors="replace")[-20000:])
        with open(out_dir / OUTCOMES, "a") as fh:
            fh.write(json.dumps({k: v for k, v in vars(outcome).items() if k != "trace"}) + "\n")
        if progress:
            print(f"case {start}: worker died ({outcome.signature}); restarting", file=sys.stderr, flush=True)
        start += 1
    for stale in ("current_case.json", "current_case.onnx"):
        (out_dir / stale).unlink(missing_ok=True)
    return [json.loads(ln) for ln in (out_dir / OUTCOMES).read_text().splitlines() if ln.strip()]


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def summarize(rows: list[dict[str, Any]], *, cases: int, seed: int, timeout: float, random_pool: int,
              out_dir: Path, elapsed: float) -> dict[str, Any]:
    """The JSON summary of a run from its outcomes."""
    counts: Counter[str] = Counter(r["kind"] for r in rows)
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    errors: Counter[str] = Counter()
    oracle: Counter[str] = Counter(r["oracle"] for r in rows if r.get("oracle"))
    crashes: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        for mname in set(r["mutations"]) or {"none"}:
            by_mutation[mname][r["kind"]] += 1
        by_source["random" if r["source"].startswith("random_") else r["source"]][r["kind"]] += 1
        if r["kind"] == "clean_error":
            errors[f"{r['error_type']}: {_normalise(r['message'])}"] += 1
        if r["kind"] in ("crash", "hang", "wrong", "known"):
            entry = crashes.setdefault((r["kind"], r["signature"]), {
                "signature": r["signature"], "kind": r["kind"], "count": 0, "message": r["message"][:500],
                "cases": []})
            entry["count"] += 1
            if len(entry["cases"]) < 10:
                entry["cases"].append(r["index"])
    for entry in crashes.values():
        folder = out_dir / "crashes" / _slug(entry["signature"])
        entry["examples"] = sorted(str(p) for p in folder.glob("*.onnx")) if folder.exists() else []
        entry["repro"] = known_crash(entry["signature"], entry["message"]) or \
            KNOWN_WRONG.get(entry["signature"].split("@")[-1])
    multiline = [{"index": r["index"], "message": r["message"][:300]} for r in rows if r.get("multiline")]
    slowest = sorted(rows, key=lambda r: -r["seconds"])[:5]
    return {
        "command": "python tools/fuzz.py " + " ".join(a for a in sys.argv[1:]),
        "cases": cases,
        "seed": seed,
        "timeout_s": timeout,
        "random_pool": random_pool,
        "seed_models": sorted(catalogue_models()),
        "counts": {k: counts.get(k, 0) for k in ("success", "clean_error", "crash", "hang", "wrong", "known")},
        "multiline_errors": len(multiline),
        "multiline_examples": multiline[:20],
        "oracle": dict(oracle),
        "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "crashes": sorted(crashes.values(), key=lambda c: -c["count"]),
        "known_crashes": [{"signature": k[0], "message": k[1], "repro": v} for k, v in KNOWN_CRASHES.items()],
        "known_wrong": KNOWN_WRONG,
        "top_clean_errors": [{"message": k, "count": v} for k, v in errors.most_common(40)],
        "slowest": [{"seconds": round(r["seconds"], 3), "index": r["index"], "source": r["source"]} for r in slowest],
        "elapsed_s": round(elapsed, 1),
        "versions": {"python": platform.python_version(), "onnx": onnx.__version__, "numpy": np.__version__,
                     "spa": spa.__version__},
    }


def _normalise(message: str) -> str:
    """Group similar messages: names and numbers replaced."""
    msg = message.splitlines()[0] if message else ""
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\d+", "N", msg)
    return msg[:160]


def print_tables(summary: dict[str, Any]) -> None:
    """Rich tables of the outcomes."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    t = Table(title=f"spa fuzz: {summary['cases']} cases, seed {summary['seed']}, {summary['elapsed_s']} s")
    for col in ("outcome", "cases", "share"):
        t.add_column(col, justify="right" if col != "outcome" else "left")
    for k, v in summary["counts"].items():
        style = "red" if k in ("crash", "hang", "wrong") and v else ""
        t.add_row(f"[{style}]{k}" if style else k, str(v), f"{v / max(summary['cases'], 1):.1%}")
    console.print(t)
    kinds = list(summary["counts"])
    t = Table(title="outcomes per mutation")
    t.add_column("mutation")
    for k in kinds:
        t.add_column(k, justify="right")
    for mname, c in summary["by_mutation"].items():
        t.add_row(mname, *(str(c.get(k, 0)) for k in kinds))
    console.print(t)
    t = Table(title="mask oracle on successes")
    t.add_column("verdict")
    t.add_column("cases", justify="right")
    for k, v in sorted(summary["oracle"].items()):
        t.add_row(k, str(v))
    console.print(t)
    if summary["crashes"]:
        t = Table(title="crashes, hangs, wrong results (by signature)")
        for col in ("kind", "count", "signature", "message", "example"):
            t.add_column(col, overflow="fold")
        for c in summary["crashes"]:
            t.add_row(c["kind"], str(c["count"]), c["signature"], c["message"][:160],
                      c["examples"][0] if c["examples"] else "")
        console.print(t)
    t = Table(title="most frequent clean errors")
    t.add_column("count", justify="right")
    t.add_column("message", overflow="fold")
    for e in summary["top_clean_errors"][:15]:
        t.add_row(str(e["count"]), e["message"])
    console.print(t)


_MEMORY_GB = 6.0


def main(argv: list[str] | None = None) -> int:
    global _MEMORY_GB
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000, help="number of cases (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the whole run (default 0)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz",
                    help="folder for crashing inputs and the log (default build/fuzz)")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "results" / "fuzz.json", help="summary JSON")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case (default 20)")
    ap.add_argument("--random-models", type=int, default=40, help="random CNNs in the seed pool (default 40)")
    ap.add_argument("--max-memory-gb", type=float, default=_MEMORY_GB, help="address-space limit of the worker")
    ap.add_argument("--quiet", action="store_true", help="no progress, no tables")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--abort-at", type=int, default=-1, help=argparse.SUPPRESS)  # tests the recovery
    args = ap.parse_args(argv)
    _MEMORY_GB = args.max_memory_gb
    if args.worker:
        if args.max_memory_gb > 0:
            limit = int(args.max_memory_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import logging

        from onnx_graphsurgeon.logger import G_LOGGER

        logging.disable(logging.WARNING)  # rules that fail on mutated nodes log warnings: expected here
        G_LOGGER.severity = G_LOGGER.CRITICAL + 10  # graphsurgeon prints its own warnings to stdout
        work(args.start, args.cases, args.seed, args.out, timeout=args.timeout, random_pool=args.random_models,
             abort_at=args.abort_at)
        return 0
    t0 = time.perf_counter()
    rows = supervise(args.cases, args.seed, args.out, timeout=args.timeout, random_pool=args.random_models,
                     progress=not args.quiet, abort_at=args.abort_at)
    summary = summarize(rows, cases=args.cases, seed=args.seed, timeout=args.timeout,
                        random_pool=args.random_models, out_dir=args.out, elapsed=time.perf_counter() - t0)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if not args.quiet:
        print_tables(summary)
        print(f"summary: {args.json}; crashing inputs: {args.out / 'crashes'}")
    bad = sum(summary["counts"][k] for k in ("crash", "hang", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
