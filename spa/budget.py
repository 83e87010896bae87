"""Resource budgets: estimate MACs and parameters of a plan without surgery, and solve for a ratio.

For a node whose cost depends on channel counts (Conv, ConvTranspose, Gemm, MatMul) the pruned cost is
its original cost times the kept fraction along each pruned axis of its weight (or, for a MatMul of
two activations, of its operands' contraction and free axes). Parameters are counted exactly: every
initializer keeps ``Π kept/size`` of its elements over its pruned axes. :func:`solve_ratio` bisects the
uniform/global ratio until the estimate meets a MACs or parameter target.

>>> _fraction({}, "w", 4)
1.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.bench.metrics import count_macs, count_params, node_macs
from spa.errors import PlanError
from spa.plan import Plan
from spa.rules.base import Slot
from spa.surgery.apply import kept_indices
from spa.graph.weights import is_float


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


def estimate(analysis: Analysis, plan: Plan) -> Estimate:
    """MACs and parameters after applying ``plan`` (parameters exact, MACs exact for Conv/Gemm/MatMul)."""
    fractions = {s: len(k) / max(1, len(analysis.classes[g][s]))
                 for g in {gp.group for gp in plan.groups}
                 for s, k in kept_indices(analysis, plan).items() if s in analysis.classes[g]}
    graph = analysis.model.graph
    macs = 0.0
    for node in graph.nodes:
        m = node_macs(node)
        if not m:
            continue
        if node.op in ("Conv", "ConvTranspose", "Gemm") or isinstance(node.inputs[1], gs.Constant):
            w = node.inputs[1]
            # every channel axis of the weight scales the cost (depthwise: its size-1 axis never prunes)
            f = _fraction(fractions, w.name, len(w.shape or ()))
        else:
            a, b = node.inputs[0], node.inputs[1]
            f = _fraction(fractions, a.name, len(a.shape or ())) * fractions.get(
                Slot(b.name, len(b.shape or (0,)) - 1), 1.0)
        macs += m * f
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


def solve_latency(
    analysis: Analysis,
    make: Callable[[float], Plan],
    build: Callable[[Plan], object],
    target: float,
    *,
    providers: list[str] | None = None,
    threads: int = 1,
    iters: int = 20,
    steps: int = 6,
) -> tuple[Plan, dict[str, float]]:
    """The smallest ratio whose *measured* latency meets ``target``.

    Each candidate is pruned and timed in ONNX Runtime alternately with the original, so the measured
    quantity is the latency ratio pruned/original (robust to machine noise); the target is a fraction
    of the original latency (<= 1) or milliseconds (> 1, converted with the original's median).

    Args:
        analysis: the groups.
        make: builds a plan for a ratio.
        build: turns a plan into an ONNX ModelProto (pruned, unchecked).
        target: fraction of the original latency, or milliseconds.
        providers: ONNX Runtime providers (CPU by default).
        threads: intra-op threads.
        iters: timed runs per measurement.
        steps: bisection steps.

    Returns:
        The plan and a record of the measurements.

    Raises:
        PlanError: the target cannot be met at the largest ratio.
    """
    from spa.bench.latency import time_models

    if target <= 0:
        raise PlanError(f"--target-latency must be positive, got {target}")
    original = analysis.model.to_onnx()

    def ratio_of(plan: Plan) -> tuple[float, float]:
        t = time_models([original, build(plan)], providers=providers, threads=threads, warmup=3, iters=iters)
        return t[1].median_ms / t[0].median_ms, t[0].median_ms

    hi_plan = make(0.95)
    hi_ratio, base_ms = ratio_of(hi_plan)
    goal = target if target <= 1 else target / base_ms
    record = {"original_ms": base_ms, "target_fraction": goal}
    if hi_ratio > goal:
        raise PlanError(
            f"latency target cannot be met: removing 95% of prunable channels gives {hi_ratio:.2f}x the "
            f"original latency ({base_ms:.2f} ms), target {goal:.2f}x; relax the target")
    lo, hi, best, best_ratio = 0.0, 0.95, hi_plan, hi_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = make(mid)
        r, _ = ratio_of(plan)
        if r <= goal:
            hi, best, best_ratio = mid, plan, r
        else:
            lo = mid
    record |= {"ratio": best.ratio, "measured_fraction": best_ratio, "measured_ms": best_ratio * base_ms}
    return best, record
