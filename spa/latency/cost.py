"""Choose how each unconstrained consumer reads its channels, by measured cost.

A consumer that reads a subset of a shared tensor either copies it (Slice or Gather, then a smaller
Conv/Gemm/MatMul) or reads the whole tensor with zero weights for the channels it dropped (no copy,
more MACs). Which is cheaper depends on the provider and the shapes, so ``auto`` measures both on tiny
single-op ONNX models in ONNX Runtime on the target provider (CPU by default; ``spa prune --provider``),
one thread, and caches the timings on disk: one file per provider + device (the naming of
:class:`spa.latency.lut.Device`) under ``$SPA_CACHE_DIR/consumer_costs/`` (default ``~/.cache/spa``),
keyed by the op and the shapes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from spa.analysis.groups import Analysis
from spa.errors import UsageError
from spa.latency.lut import CPU, Device, cache_root
from spa.plan import ConsumerKeep, Plan
from spa.reorder.unconstrained import consumer_sites
from spa.rules.base import Slot
from spa.rules.views import Consumer
from spa.runtime.session import session
from spa.surgery.apply import kept_indices

log = logging.getLogger(__name__)

MODES = ("layout", "gather", "zero", "auto")


def _cache_path(providers: Sequence[str]) -> Path:
    """This provider + device's cost file (shared naming with the latency tables)."""
    return cache_root() / "consumer_costs" / Device.here(providers, 1).file_name


def _time(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: Sequence[str], runs: int = 15) -> float:
    sess = session(model, threads=1, providers=list(providers))
    for _ in range(3):
        sess.run(None, feeds)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def _weight_axis(analysis: Analysis, node: gs.Node, weight: Slot) -> int | None:
    """The axis of input 1 (a constant) through which ``node`` reads its input 0, from the node's rule's
    matrix view (:meth:`~spa.rules.base.ChannelRule.matrix_view`); None when the rule has no such view."""
    rule = analysis.rule_for(node)
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if rule is None or not isinstance(w, gs.Constant) or w.name != weight.tensor:
        return None
    labels = np.arange(int(w.shape[weight.axis])) if weight.axis < len(w.shape) else np.zeros(0, dtype=np.int64)
    view = rule.matrix_view(analysis.context(node), weight, labels)
    return view.axis if isinstance(view, Consumer) and view.input == node.inputs[0].name else None


def _consumer_model(node: gs.Node, in_shape: list[int], channels: int, select: np.ndarray | None,
                    axis: int, waxis: int | None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """A one-consumer model reading ``in_shape`` (optionally narrowed by ``select`` on ``axis``) through
    axis ``waxis`` of its weight (:func:`_weight_axis`; None: not measurable this way)."""
    w = node.inputs[1]
    if not isinstance(w, gs.Constant) or waxis is None:
        return None
    wshape = list(w.shape)
    n_in = len(select) if select is not None else channels
    wshape[waxis] = n_in
    nodes, inits = [], [helper.make_tensor("w", TensorProto.FLOAT, wshape, np.zeros(int(np.prod(wshape)), np.float32))]
    x = "x"
    if select is not None:
        contiguous = len(select) and select[-1] - select[0] + 1 == len(select)
        if contiguous:
            inits += [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                      (("s", int(select[0])), ("e", int(select[-1]) + 1), ("a", axis))]
            nodes.append(helper.make_node("Slice", ["x", "s", "e", "a"], ["xs"]))
        else:
            inits.append(helper.make_tensor("i", TensorProto.INT64, [len(select)], select.tolist()))
            nodes.append(helper.make_node("Gather", ["x", "i"], ["xs"], axis=axis))
        x = "xs"
    attrs = {k: v for k, v in node.attrs.items() if k in ("strides", "pads", "dilations", "kernel_shape", "transB",
                                                           "auto_pad")}
    nodes.append(helper.make_node(node.op, [x, "w"], ["y"], **attrs))
    g = helper.make_graph(nodes, "cost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, {"x": np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)}


def choose_modes(analysis: Analysis, plan: Plan, mode: str, providers: Sequence[str] | None = None) -> Plan:
    """Set every consumer's read mode (``layout`` keeps what the layout gives: Slice or Gather); ``auto``
    measures on ``providers`` (CPU by default)."""
    if mode not in MODES:
        raise UsageError(f"unknown consumer mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "layout" or not any(gp.consumers for gp in plan.groups):
        return plan
    if mode in ("gather", "zero"):
        return replace(plan, groups=tuple(
            replace(gp, consumers=tuple(replace(c, mode=mode if mode == "zero" or c.mode != "slice" else "slice")
                                        for c in gp.consumers)) for gp in plan.groups))
    return _auto(analysis, plan, list(providers or [CPU]))


def _auto(analysis: Analysis, plan: Plan, providers: list[str]) -> Plan:
    cache_file = _cache_path(providers)
    try:
        cache: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    except (OSError, ValueError):
        cache = {}
    nodes = {n.name: n for n in analysis.model.graph.nodes}
    tensors = analysis.model.graph.tensors()
    kept = kept_indices(analysis, plan)
    groups = []
    for gp in plan.groups:
        sites = {(s.weight.tensor, s.weight.axis): s for s in consumer_sites(analysis, gp.group)}
        cons: list[ConsumerKeep] = []
        for c in gp.consumers:
            site = sites[(c.tensor, c.axis)]
            src = site.source
            shape = [int(d) if isinstance(d, (int, np.integer)) else 1 for d in tensors[src.tensor].shape]
            n_union = len(kept[src])
            labels = analysis.labels(gp.group)[src][kept[src]]
            select = np.flatnonzero(np.isin(labels, list(c.kept)))
            shape[src.axis] = n_union
            costs = {}
            for m in ("zero", c.mode):
                key = json.dumps([nodes[c.node].op, shape, src.axis, m,
                                  len(select) if m != "zero" else n_union,
                                  {k: str(v) for k, v in sorted(nodes[c.node].attrs.items())},
                                  list(tensors[c.tensor].shape)])
                if key not in cache:
                    built = _consumer_model(nodes[c.node], shape, n_union, None if m == "zero" else select, src.axis,
                                            _weight_axis(analysis, nodes[c.node], Slot(c.tensor, c.axis)))
                    if built is None:
                        break
                    cache[key] = _time(*built, providers)
                costs[m] = cache[key]
            best = min(costs, key=costs.get) if len(costs) == 2 else c.mode  # type: ignore[arg-type]
            log.debug("%s: %s", c.node, costs)
            cons.append(replace(c, mode=best))
        groups.append(replace(gp, consumers=tuple(cons)))
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError as exc:
        log.warning("could not write the consumer cost cache: %s", exc)
    return replace(plan, groups=tuple(groups))
