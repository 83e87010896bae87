"""Resource budgets: estimate MACs and parameters of a plan without surgery, and solve for a ratio.

For a node whose cost depends on channel counts (Conv, ConvTranspose, Gemm, MatMul) the pruned cost is
its original cost times the kept fraction along each pruned axis of its weight (or, for a MatMul of
two activations, of its operands' contraction and free axes). Parameters are counted exactly: every
initializer keeps ``Π kept/size`` of its elements over its pruned axes. :func:`solve_ratio` bisects the
uniform/global ratio until the estimate meets a MACs or parameter target.

:func:`solve_latency` does the same for latency: it bisects on the latency *predicted* from a per-layer
lookup table (:mod:`spa.latency`; the pruned layer shapes come from :func:`kept_sizes`, the same
plan-to-shapes map :func:`estimate` uses), measures the chosen plan against the original, and when
the measurement misses the target recalibrates the prediction with it and searches again (bounded).

>>> _fraction({}, "w", 4)
1.0
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.analysis.cost import count_macs, node_cost, node_costs
from spa.bench.metrics import count_params
from spa.errors import PlanError, UsageError
from spa.plan import Plan
from spa.rules.base import Slot
from spa.rules.registry import RuleRegistry
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


def node_fraction(node: gs.Node, fractions: dict[Slot, float], opset: int = 17,
                  registry: RuleRegistry | None = None) -> float:
    """Fraction of a node's MACs left by a plan's kept ``fractions``: the product of the kept fractions of
    the slots its rule's :class:`~spa.rules.base.Cost` scales with (1.0 for a node without MACs)."""
    cost = node_cost(node, opset, registry)
    return cost.kept(fractions) / cost.macs if cost is not None and cost.macs else 1.0


def estimate(analysis: Analysis, plan: Plan) -> Estimate:
    """MACs and parameters after applying ``plan`` (parameters exact; MACs exact for every op whose rule
    counts them: each node's :meth:`~spa.rules.base.Cost.kept`)."""
    fractions = kept_fractions(analysis, plan)
    graph = analysis.model.graph
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
    macs0, params0 = count_macs(analysis.model, analysis.registry), count_params(analysis.model)
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


#: ratio the latency search never goes beyond
MAX_LATENCY_RATIO = 0.95
#: the lookup-table search first scans this many equal steps of the ratio up to MAX_LATENCY_RATIO
LATENCY_GRID = 19
LATENCY_METHODS = ("lut", "measure")


def solve_latency(
    analysis: Analysis,
    make: Callable[[float], Plan],
    build: Callable[[Plan], object],
    target: float,
    *,
    providers: list[str] | None = None,
    threads: int = 1,
    iters: int = 20,
    steps: int | None = None,
    method: str = "lut",
    cache_dir: str | os.PathLike[str] | None = None,
    tol: float = 0.03,
    corrections: int = 2,
) -> tuple[Plan, dict[str, object]]:
    """The smallest ratio whose latency meets ``target`` (a fraction of the original's, or milliseconds).

    ``method="lut"`` (default) searches the ratio on the latency *predicted* from a per-layer lookup
    table (:mod:`spa.latency`: micro-benchmarks cached on disk per provider + device, measured only for
    the layer shapes the search visits) and the original's latency measured once. Latency is not
    monotone in the channel counts — vector-aligned counts run much faster (on the CPU provider a
    ResNet-50 pruned by 10 % was slower than the original, one pruned by 50 % ran in 0.27 of its
    time, one pruned by 40 % in 0.54) — so the search scans the ratio in steps of 0.05 for the first
    one whose prediction meets the goal and bisects only between it and the step before (``steps``
    times). The chosen plan is then pruned and timed alternately with the original; when the measured
    fraction is not within ``[goal - tol, goal]`` the prediction is recalibrated with the measurement
    (:func:`spa.latency.fit_sensitivity`) and the search redone, at most ``corrections`` times (the
    grid's predictions are reused: only the calibration changes). The answer is the smallest measured
    ratio whose measured fraction meets the goal (else the fastest measured plan); the record says
    which, with every attempt. ``method="measure"`` bisects on whole-model measurements instead (one per
    step; slow, and it assumes latency falls monotonically with the ratio).

    Args:
        analysis: the groups.
        make: builds a plan for a ratio.
        build: turns a plan into an ONNX ModelProto (pruned, unchecked).
        target: fraction of the original latency (<= 1), or milliseconds (> 1, converted with the
            original's measured median).
        providers: ONNX Runtime providers (CPU by default).
        threads: intra-op threads (for the table and the measurements).
        iters: least rounds per whole-model comparison (more for a small model: about 2 s of timing,
            see :func:`spa.latency.measure.rounds`).
        steps: bisection steps (default 5 for ``lut``, within one grid step; 6 for ``measure``).
        method: ``lut`` or ``measure``.
        cache_dir: folder of the lookup tables (default ``$SPA_CACHE_DIR/latency`` or
            ``~/.cache/spa/latency``).
        tol: how far below the goal a measured fraction may be before the search is corrected.
        corrections: at most this many recalibrated searches after the first measurement.

    Returns:
        The plan and a JSON-ready record of the prediction and the measurements.

    Raises:
        PlanError: the target is not positive or cannot be met at the largest ratio.
        UsageError: unknown ``method``.
    """
    if target <= 0:
        raise PlanError(f"--target-latency must be positive, got {target}")
    if method not in LATENCY_METHODS:
        raise UsageError(f"unknown latency method '{method}'; choose one of {', '.join(LATENCY_METHODS)}")
    providers = list(providers or ["CPUExecutionProvider"])
    start = time.perf_counter()
    if method == "measure":
        plan, record = _solve_measured(analysis, make, build, target, providers=providers, threads=threads,
                                       iters=iters, steps=6 if steps is None else steps)
    else:
        plan, record = _solve_lut(analysis, make, build, target, providers=providers, threads=threads,
                                  iters=iters, steps=5 if steps is None else steps, cache_dir=cache_dir, tol=tol,
                                  corrections=corrections)
    record["solve_s"] = round(time.perf_counter() - start, 3)
    return plan, record


def _measure(original: object, pruned: object, providers: list[str], threads: int, iters: int) -> tuple[float, float]:
    """(pruned / original latency, original ms), timed alternately (:func:`spa.latency.measure.compare`)."""
    from spa.latency import measure

    c = measure.compare(original, pruned, providers=providers, threads=threads, iters=iters)  # type: ignore[arg-type]
    return c.fraction, c.original_ms


def _unreachable(measured: float, base_ms: float, goal: float) -> PlanError:
    return PlanError(
        f"latency target cannot be met: removing {MAX_LATENCY_RATIO:.0%} of prunable channels gives "
        f"{measured:.2f}x the original latency ({base_ms:.2f} ms), target {goal:.2f}x; relax the target")


def _solve_measured(analysis: Analysis, make: Callable[[float], Plan], build: Callable[[Plan], object],
                    target: float, *, providers: list[str], threads: int, iters: int,
                    steps: int) -> tuple[Plan, dict[str, object]]:
    """Bisect the ratio on measured latency ratios pruned/original (one whole-model timing per step)."""
    from spa.latency import measure

    original = analysis.model.to_onnx()
    hi_plan = make(MAX_LATENCY_RATIO)
    hi_ratio, base_ms = _measure(original, build(hi_plan), providers, threads, iters)
    iters = measure.rounds(iters, base_ms)
    goal = target if target <= 1 else target / base_ms
    if hi_ratio > goal:
        raise _unreachable(hi_ratio, base_ms, goal)
    lo, hi, best, best_ratio = 0.0, MAX_LATENCY_RATIO, hi_plan, hi_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = make(mid)
        r, _ = _measure(original, build(plan), providers, threads, iters)
        if r <= goal:
            hi, best, best_ratio = mid, plan, r
        else:
            lo = mid
    return best, {"method": "measure", "original_ms": base_ms, "target_fraction": goal, "ratio": best.ratio,
                  "measured_fraction": best_ratio, "measured_ms": best_ratio * base_ms,
                  "measurements": steps + 1}


@dataclass(frozen=True)
class _Trial:
    """One plan of the latency search, pruned and timed against the original."""

    why: str
    plan: Plan
    x: float  # table latency fraction L(plan) / L0
    sensitivity: float  # of the latency model when the plan was chosen
    measured: float
    original_ms: float

    def to_json(self) -> dict[str, object]:
        from spa.latency import predicted_fraction

        return {"why": self.why, "ratio": self.plan.ratio, "sensitivity": round(self.sensitivity, 4),
                "predicted_fraction": round(predicted_fraction(self.x, self.sensitivity), 4),
                "measured_fraction": round(self.measured, 4), "original_ms": round(self.original_ms, 4)}


def _solve_lut(analysis: Analysis, make: Callable[[float], Plan], build: Callable[[Plan], object],
               target: float, *, providers: list[str], threads: int, iters: int, steps: int,
               cache_dir: str | os.PathLike[str] | None, tol: float,
               corrections: int) -> tuple[Plan, dict[str, object]]:
    """Bisect on the table-predicted latency, then measure and correct (see :func:`solve_latency`)."""
    from spa.latency import LatencyPredictor, LatencyTable, fit_sensitivity, measure, predicted_fraction

    original = analysis.model.to_onnx()
    table = LatencyTable.open(providers, threads, cache_dir)
    try:
        base_ms, shapes = measure.baseline(original, providers=providers, threads=threads, iters=iters)
        iters = measure.rounds(iters, base_ms)
        pred = LatencyPredictor.build(analysis, table, shapes)
        goal = target if target <= 1 else target / base_ms
        l0 = pred.original_layers_ms
        if l0 <= 0:
            log.warning("no layer of this model could be benchmarked alone; measuring whole models instead")
            plan, record = _solve_measured(analysis, make, build, target, providers=providers, threads=threads,
                                           iters=iters, steps=6)
            return plan, record | {"note": "no tabulated layers; fell back to whole-model measurements"}
        sensitivity = 1.0  # proportional until a measurement says otherwise (see spa.latency.predict)
        trials: list[_Trial] = []

        def trial(plan: Plan, x: float, why: str) -> _Trial:
            m, orig_ms = _measure(original, build(plan), providers, threads, iters)
            trials.append(_Trial(why, plan, x, sensitivity, m, orig_ms))
            return trials[-1]

        def refit() -> float:
            try:
                return fit_sensitivity([(t.x, t.measured) for t in trials])
            except ValueError:  # every measured plan is the original
                return sensitivity

        points: dict[float, tuple[Plan, float]] = {}  # ratio -> (plan, x); x does not depend on calibration

        def point(r: float) -> tuple[Plan, float]:
            if r not in points:
                plan = make(r)
                points[r] = (plan, pred.x(plan))
            return points[r]

        def meets(r: float) -> bool:
            return predicted_fraction(point(r)[1], sensitivity) <= goal

        def search() -> tuple[Plan, float]:
            first = next((i for i, r in enumerate(grid) if meets(r)), None)
            if first is None or first == 0:
                return point(grid[-1] if first is None else 0.0)
            lo, hi = grid[first - 1], grid[first]
            for _ in range(steps):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if meets(mid) else (mid, hi)
            return point(hi)

        grid = [MAX_LATENCY_RATIO * i / LATENCY_GRID for i in range(LATENCY_GRID + 1)]
        top = point(grid[-1])
        if predicted_fraction(top[1], sensitivity) > goal:  # predicted unreachable: make sure
            t = trial(*top, f"reachability at ratio {MAX_LATENCY_RATIO}")
            if t.measured > goal:
                raise _unreachable(t.measured, base_ms, goal)
            sensitivity = refit()
        for k in range(corrections + 1):
            plan, x = search()
            if any(t.plan.ratio == plan.ratio for t in trials):
                break  # the recalibrated search lands on a plan already measured
            if goal - tol <= trial(plan, x, "search" if k == 0 else f"correction {k}").measured <= goal:
                break
            sensitivity = refit()
        return _choose(trials, goal, tol, {
            "original_ms": base_ms, "target_fraction": goal, "sensitivity": round(sensitivity, 4),
            "lut": {"file": str(table.path), "provider": table.device.provider, "device": table.device.name,
                    "threads": threads, "layers": len(pred.original), "original_layers_ms": round(l0, 4),
                    "hits": table.hits, "measured": table.measured},
        })
    finally:
        table.save()


def _choose(trials: list[_Trial], goal: float, tol: float,
            extra: dict[str, object]) -> tuple[Plan, dict[str, object]]:
    """The smallest measured ratio meeting the goal, else the fastest measured plan; with the record."""
    meeting = [t for t in trials if t.measured <= goal]
    best = min(meeting, key=lambda t: t.plan.ratio) if meeting else min(trials, key=lambda t: t.measured)
    status = "met" if meeting else ("within tolerance" if best.measured <= goal + tol else "missed")
    if status != "met":
        log.warning("latency target %.3f: the best measured plan gives %.3f of the original latency (%s)",
                    goal, best.measured, status)
    row = best.to_json()
    return best.plan, {"method": "lut", "status": status, "ratio": best.plan.ratio,
                       "predicted_fraction": row["predicted_fraction"], "measured_fraction": best.measured,
                       "measured_ms": best.measured * best.original_ms,
                       "corrections": sum(t.why.startswith("correction") for t in trials),
                       "attempts": [t.to_json() for t in trials]} | extra
