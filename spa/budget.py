"""Resource budgets: estimate MACs and parameters of a plan without surgery, and solve for a ratio.

For a node whose cost depends on channel counts (Conv, ConvTranspose, Gemm, MatMul) the pruned cost is
its original cost times the kept fraction along each pruned axis of its weight (or, for a MatMul of
two activations, of its operands' contraction and free axes). Parameters are counted exactly: every
initializer keeps ``Π kept/size`` of its elements over its pruned axes. :func:`solve_ratio` bisects the
uniform/global ratio until the estimate meets a MACs or parameter target.

Latency targets are solved above, in :mod:`spa.latency.solve` (they measure in ONNX Runtime); the
pruned layer shapes they predict from come from :func:`kept_sizes`, the plan-to-shapes map
:func:`estimate` uses.

>>> _fraction({}, "w", 4)
1.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.analysis.metrics import count_macs, count_params, node_macs
from spa.errors import PlanError
from spa.plan import Plan
from spa.rules.base import Slot
from spa.surgery.apply import kept_indices
from spa.graph.weights import is_float

log = logging.getLogger(__name__)


def _fraction(kept: dict[Slot, float], tensor: str, rank: int) -> float:
    f = 1.0
    for a in range(rank):
        f *= kept.get(Slot(tensor, a), 1.0)
    return f


@dataclass(frozen=True)
class Estimate:
    """Estimated cost of a plan."""

    macs: int
    params: int


def kept_sizes(analysis: Analysis, plan: Plan) -> dict[Slot, tuple[int, int]]:
    """``(kept, size)`` element counts of every slot the plan prunes (weights and activations).

    The one mapping from a plan to pruned shapes that needs no surgery: a tensor's pruned shape is its
    shape with ``kept`` in place of ``size`` along each listed axis. Used by :func:`estimate` and by the
    latency lookup table (:mod:`spa.latency.layers`).
    """
    kept = kept_indices(analysis, plan)
    return {s: (len(kept[s]), len(labels)) for gp in plan.groups
            for s, labels in analysis.classes[gp.group].items() if s in kept}


def kept_fractions(analysis: Analysis, plan: Plan) -> dict[Slot, float]:
    """Kept fraction of every slot the plan prunes (see :func:`kept_sizes`)."""
    return {s: k / max(1, n) for s, (k, n) in kept_sizes(analysis, plan).items()}


def node_fraction(node: gs.Node, fractions: dict[Slot, float]) -> float:
    """Fraction of a Conv/ConvTranspose/Gemm/MatMul node's MACs left by a plan's kept ``fractions``.

    The cost scales with the kept fraction along each pruned axis of its weight (or, for a MatMul of
    two activations, of its operands' contraction and free axes).
    """
    if node.op in ("Conv", "ConvTranspose", "Gemm") or isinstance(node.inputs[1], gs.Constant):
        w = node.inputs[1]
        # every channel axis of the weight scales the cost (depthwise: its size-1 axis never prunes)
        return _fraction(fractions, w.name, len(w.shape or ()))
    a, b = node.inputs[0], node.inputs[1]
    return _fraction(fractions, a.name, len(a.shape or ())) * fractions.get(
        Slot(b.name, len(b.shape or (0,)) - 1), 1.0)


def estimate(analysis: Analysis, plan: Plan) -> Estimate:
    """MACs and parameters after applying ``plan`` (parameters exact, MACs exact for Conv/Gemm/MatMul)."""
    fractions = kept_fractions(analysis, plan)
    graph = analysis.model.graph
    macs = 0.0
    for node in graph.nodes:
        m = node_macs(node)
        if m:
            macs += m * node_fraction(node, fractions)
    params = 0.0
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and is_float(t):
            n = int(np.prod(t.shape)) if t.shape else 1
            params += n * _fraction(fractions, t.name, len(t.shape or ()))
    return Estimate(int(round(macs)), int(round(params)))


def resolve_target(value: float, total: int, what: str) -> int:
    """A target given as a fraction (0 < v <= 1) or an absolute count (v > 1)."""
    if value <= 0:
        raise PlanError(f"--target-{what} must be positive, got {value}")
    return int(value * total) if value <= 1 else int(value)


def solve_ratio(
    analysis: Analysis,
    make: Callable[[float], Plan],
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    tol: float = 1e-3,
) -> Plan:
    """The plan with the smallest ratio whose estimate meets every given target.

    Args:
        analysis: the groups.
        make: builds a plan for a ratio (all other options fixed).
        target_macs: fraction of the original MACs (<= 1) or an absolute count.
        target_params: fraction of the original parameters (<= 1) or an absolute count.
        tol: ratio resolution of the bisection.

    Raises:
        PlanError: the target cannot be met even at the largest ratio.
    """
    macs0, params0 = count_macs(analysis.model), count_params(analysis.model)
    tm = resolve_target(target_macs, macs0, "macs") if target_macs is not None else None
    tp = resolve_target(target_params, params0, "params") if target_params is not None else None

    def ok(plan: Plan) -> bool:
        e = estimate(analysis, plan)
        return (tm is None or e.macs <= tm) and (tp is None or e.params <= tp)

    lo, hi = 0.0, 0.99
    best = make(hi)
    if not ok(best):
        e = estimate(analysis, best)
        raise PlanError(
            f"target cannot be met: even removing 99% of prunable channels leaves {e.macs} MACs and "
            f"{e.params} parameters (targets: MACs {tm}, params {tp}); relax the target or check `spa analyze`"
        )
    if ok(make(lo)):
        return make(lo)
    while hi - lo > tol:
        mid = (lo + hi) / 2
        plan = make(mid)
        if ok(plan):
            hi, best = mid, plan
        else:
            lo = mid
    return best
