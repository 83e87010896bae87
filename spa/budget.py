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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.cost import node_cost, node_costs
from spa.analysis.groups import Analysis
from spa.analysis.metrics import costs_at, count_params
from spa.errors import PlanError
from spa.graph.weights import is_float
from spa.plan import Plan
from spa.rules.base import Cost, Slot
from spa.rules.registry import RuleRegistry
from spa.surgery.apply import kept_indices

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
            for s, labels in analysis.labels(gp.group).items() if s in kept}


def kept_fractions(analysis: Analysis, plan: Plan) -> dict[Slot, float]:
    """Kept fraction of every slot the plan prunes (see :func:`kept_sizes`)."""
    return {s: k / max(1, n) for s, (k, n) in kept_sizes(analysis, plan).items()}


def node_fraction(node: gs.Node, fractions: dict[Slot, float], opset: int = 17,
                  registry: RuleRegistry | None = None) -> float:
    """Fraction of a node's MACs left by a plan's kept ``fractions``: the product of the kept fractions of
    the slots its rule's :class:`~spa.rules.base.Cost` scales with (1.0 for a node without MACs)."""
    cost = node_cost(node, opset, registry)
    return cost.kept(fractions) / cost.macs if cost is not None and cost.macs else 1.0


def estimate(analysis: Analysis, plan: Plan, costs: Mapping[int, Cost] | None = None) -> Estimate:
    """MACs and parameters after applying ``plan`` (parameters exact; MACs exact for every op whose rule
    counts them: each node's :meth:`~spa.rules.base.Cost.kept`), MACs from ``costs`` (by ``id(node)``,
    :func:`spa.analysis.metrics.costs_at` at the report's shapes) or at the graph's own shapes."""
    fractions = kept_fractions(analysis, plan)
    graph = analysis.model.graph
    if costs is None:
        costs = node_costs(analysis.model, analysis.registry)
    macs = 0.0
    for node in graph.nodes:
        cost = costs.get(id(node))
        if cost is not None and cost.macs:
            macs += cost.kept(fractions)
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
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Plan:
    """The plan with the smallest ratio whose estimate meets every given target.

    Args:
        analysis: the groups.
        make: builds a plan for a ratio (all other options fixed).
        target_macs: fraction of the original MACs (<= 1) or an absolute count.
        target_params: fraction of the original parameters (<= 1) or an absolute count.
        tol: ratio resolution of the bisection.
        shapes: input shapes to count MACs at (the report's ``mac_shapes``); None: the graph's own
            (dynamic dims 1).

    Raises:
        PlanError: the target cannot be met even at the largest ratio.
    """
    costs = costs_at(analysis.model, shapes, analysis.registry)
    macs0, params0 = sum(c.macs for c in costs.values()), count_params(analysis.model)
    tm = resolve_target(target_macs, macs0, "macs") if target_macs is not None else None
    tp = resolve_target(target_params, params0, "params") if target_params is not None else None

    def ok(plan: Plan) -> bool:
        e = estimate(analysis, plan, costs)
        return (tm is None or e.macs <= tm) and (tp is None or e.params <= tp)

    lo, hi = 0.0, 0.99
    best = make(hi)
    if not ok(best):
        e = estimate(analysis, best, costs)
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
