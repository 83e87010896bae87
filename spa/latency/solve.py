"""Solve a latency target (``--target-latency``): the smallest pruning ratio whose latency meets it.

:func:`solve_latency` bisects on the latency *predicted* from a per-layer lookup table
(:mod:`spa.latency.lut`; the pruned layer shapes come from :func:`spa.budget.kept_sizes`, the same
plan-to-shapes map :func:`spa.budget.estimate` uses), measures the chosen plan against the original
(:mod:`spa.latency.measure`), and when the measurement misses the target recalibrates the prediction with
it and searches again (bounded). MACs and parameter targets are solved in :mod:`spa.budget`.

The lookup-table search (``method="lut"``, the default) predicts latency from micro-benchmarks cached on
disk per provider + device, measured only for the layer shapes the search visits, and the original's
latency measured once. Latency is not monotone in the channel counts — vector-aligned counts run much
faster (on the CPU provider a ResNet-50 pruned by 10 % was slower than the original, one pruned by 50 %
ran in 0.27 of its time, one pruned by 40 % in 0.54) — so the search scans the ratio in steps of 0.05 for
the first one whose prediction meets the goal and bisects only between it and the step before (``steps``
times). The chosen plan is then pruned and timed alternately with the original; when the measured
fraction is not within ``[goal - tol, goal]`` the prediction is recalibrated with the measurement
(:func:`spa.latency.fit_sensitivity`) and the search redone, at most ``corrections`` times (the grid's
predictions are reused: only the calibration changes). The answer is the smallest measured ratio whose
measured fraction meets the goal (else the fastest measured plan); the record says which, with every
attempt. ``method="measure"`` bisects on whole-model measurements instead (one per step; slow, and it
assumes latency falls monotonically with the ratio).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from spa.analysis.groups import Analysis
from spa.errors import PlanError, UsageError
from spa.latency import measure
from spa.latency.lut import LatencyTable
from spa.latency.predict import LatencyPredictor, fit_sensitivity, predicted_fraction
from spa.plan import Plan

log = logging.getLogger(__name__)


#: ratio the latency search never goes beyond
MAX_LATENCY_RATIO = 0.95
#: the lookup-table search first scans this many equal steps of the ratio up to MAX_LATENCY_RATIO
LATENCY_GRID = 19
LATENCY_METHODS = ("lut", "measure")
#: the lookup-table search aims this far (a fraction of the original latency) below the goal
MARGIN = 0.01
#: grid steps tried above the largest measured ratio when no measured plan meets the goal
EXTRA_STEPS = 2


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

    ``method="lut"`` (default) searches the ratio on the latency predicted from a per-layer lookup table,
    then measures the chosen plan and corrects the prediction; ``method="measure"`` bisects on
    whole-model measurements (see :mod:`spa.latency.solve` for how and why).

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
    problem = _Problem(analysis, make, build, target, list(providers or ["CPUExecutionProvider"]), threads, iters)
    start = time.perf_counter()
    if method == "measure":
        plan, record = _solve_measured(problem, 6 if steps is None else steps)
    else:
        plan, record = _solve_lut(problem, 5 if steps is None else steps, cache_dir, tol, corrections)
    record["solve_s"] = round(time.perf_counter() - start, 3)
    return plan, record


@dataclass(frozen=True)
class _Problem:
    """What a latency search works on: the groups, plan and model builders, the target and how to time."""

    analysis: Analysis
    make: Callable[[float], Plan]
    build: Callable[[Plan], object]
    target: float
    providers: list[str]
    threads: int
    iters: int

    def measure(self, original: object, plan: Plan) -> tuple[float, float]:
        """(pruned / original latency, original ms) of ``plan`` built and timed against ``original``."""
        return _measure(original, self.build(plan), self.providers, self.threads, self.iters)

    def goal(self, base_ms: float) -> float:
        """The target as a fraction of the original latency (milliseconds above 1 are divided by ``base_ms``)."""
        return self.target if self.target <= 1 else self.target / base_ms


def _measure(original: object, pruned: object, providers: list[str], threads: int, iters: int) -> tuple[float, float]:
    """(pruned / original latency, original ms), timed alternately (:func:`spa.latency.measure.compare`)."""
    c = measure.compare(original, pruned, providers=providers, threads=threads, iters=iters)  # type: ignore[arg-type]
    return c.fraction, c.original_ms


def _unreachable(measured: float, base_ms: float, goal: float) -> PlanError:
    return PlanError(
        f"latency target cannot be met: removing {MAX_LATENCY_RATIO:.0%} of prunable channels gives "
        f"{measured:.2f}x the original latency ({base_ms:.2f} ms), target {goal:.2f}x; relax the target")


def _solve_measured(problem: _Problem, steps: int) -> tuple[Plan, dict[str, object]]:
    """Bisect the ratio on measured latency ratios pruned/original (one whole-model timing per step)."""
    original = problem.analysis.model.to_onnx()
    hi_plan = problem.make(MAX_LATENCY_RATIO)
    hi_ratio, base_ms = problem.measure(original, hi_plan)
    problem = replace(problem, iters=measure.rounds(problem.iters, base_ms))
    goal = problem.goal(base_ms)
    if hi_ratio > goal:
        raise _unreachable(hi_ratio, base_ms, goal)
    lo, hi, best, best_ratio = 0.0, MAX_LATENCY_RATIO, hi_plan, hi_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = problem.make(mid)
        r, _ = problem.measure(original, plan)
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
        return {"why": self.why, "ratio": self.plan.ratio, "sensitivity": round(self.sensitivity, 4),
                "predicted_fraction": round(predicted_fraction(self.x, self.sensitivity), 4),
                "measured_fraction": round(self.measured, 4), "original_ms": round(self.original_ms, 4)}


#: the ratios the lookup-table search scans first: LATENCY_GRID equal steps up to MAX_LATENCY_RATIO
_GRID = [MAX_LATENCY_RATIO * i / LATENCY_GRID for i in range(LATENCY_GRID + 1)]


@dataclass
class _LutSearch:
    """The lookup-table search: table predictions per ratio, the measured trials and the calibration.

    A plan's predicted fraction is ``predicted_fraction(x, sensitivity)`` with ``x = L(plan) / L0`` the
    table's layer-latency fraction (:mod:`spa.latency.predict`); ``x`` does not depend on the
    calibration, so the plans and their ``x`` are cached per ratio.
    """

    problem: _Problem
    original: object
    pred: LatencyPredictor
    goal: float
    steps: int
    sensitivity: float = 1.0  # proportional until a measurement says otherwise (see spa.latency.predict)
    trials: list[_Trial] = field(default_factory=list)
    points: dict[float, tuple[Plan, float]] = field(default_factory=dict)  # ratio -> (plan, x)

    def point(self, r: float) -> tuple[Plan, float]:
        """The plan at ratio ``r`` and its table fraction ``x`` (made once)."""
        if r not in self.points:
            plan = self.problem.make(r)
            self.points[r] = (plan, self.pred.x(plan))
        return self.points[r]

    def meets(self, r: float) -> bool:
        """Whether the predicted fraction at ratio ``r`` is at most the goal (less :data:`MARGIN`: a plan
        predicted exactly at the goal misses it half the time)."""
        return predicted_fraction(self.point(r)[1], self.sensitivity) <= self.goal - MARGIN

    def trial(self, plan: Plan, x: float, why: str) -> _Trial:
        """Prune and time ``plan`` against the original; record it."""
        m, orig_ms = self.problem.measure(self.original, plan)
        self.trials.append(_Trial(why, plan, x, self.sensitivity, m, orig_ms))
        return self.trials[-1]

    def refit(self) -> float:
        """The sensitivity fitted to every trial (unchanged when every measured plan is the original)."""
        try:
            return fit_sensitivity([(t.x, t.measured) for t in self.trials])
        except ValueError:  # every measured plan is the original
            return self.sensitivity

    def search(self) -> tuple[Plan, float]:
        """The first grid ratio predicted to meet the goal, refined by ``steps`` bisections between it and
        the grid step before (ratio 0 when the first step meets it, the last grid ratio when none does)."""
        first = next((i for i, r in enumerate(_GRID) if self.meets(r)), None)
        if first is None or first == 0:
            return self.point(_GRID[-1] if first is None else 0.0)
        lo, hi = _GRID[first - 1], _GRID[first]
        for _ in range(self.steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.meets(mid) else (mid, hi)
        return self.point(hi)

    def check_reachable(self, base_ms: float) -> None:
        """When the largest ratio is predicted to miss the goal, measure it: raise if it really misses,
        else recalibrate with it."""
        top = self.point(_GRID[-1])
        if predicted_fraction(top[1], self.sensitivity) > self.goal:  # predicted unreachable: make sure
            t = self.trial(*top, f"reachability at ratio {MAX_LATENCY_RATIO}")
            if t.measured > self.goal:
                raise _unreachable(t.measured, base_ms, self.goal)
            self.sensitivity = self.refit()

    def correct(self, tol: float, corrections: int) -> None:
        """Search, measure, recalibrate: until a measured fraction lies in ``[goal - tol, goal]``, the
        search lands on a plan already measured, or ``corrections`` recalibrated searches are done. When
        no measured plan meets the goal then (latency is not monotone in the ratio, and a busy machine
        adds noise), the next grid ratios above the largest measured one are tried, at most
        :data:`EXTRA_STEPS` of them."""
        for k in range(corrections + 1):
            plan, x = self.search()
            if any(t.plan.ratio == plan.ratio for t in self.trials):
                break  # the recalibrated search lands on a plan already measured
            if self.goal - tol <= self.trial(plan, x, "search" if k == 0 else f"correction {k}").measured <= self.goal:
                break
            self.sensitivity = self.refit()
        for k in range(EXTRA_STEPS):
            if any(t.measured <= self.goal for t in self.trials):
                break
            r = min(MAX_LATENCY_RATIO, max(t.plan.ratio for t in self.trials) + MAX_LATENCY_RATIO / LATENCY_GRID)
            if any(t.plan.ratio == r for t in self.trials):
                break
            self.trial(*self.point(r), f"step {k + 1} above the measured plans")

    def record(self, table: LatencyTable, base_ms: float) -> dict[str, object]:
        """The record's search fields: original latency, goal, final sensitivity, the table's use."""
        return {
            "original_ms": base_ms, "target_fraction": self.goal, "sensitivity": round(self.sensitivity, 4),
            "lut": {"file": str(table.path), "provider": table.device.provider, "device": table.device.name,
                    "threads": self.problem.threads, "layers": len(self.pred.original),
                    "original_layers_ms": round(self.pred.original_layers_ms, 4),
                    "hits": table.hits, "measured": table.measured},
        }


def _solve_lut(problem: _Problem, steps: int, cache_dir: str | os.PathLike[str] | None, tol: float,
               corrections: int) -> tuple[Plan, dict[str, object]]:
    """Bisect on the table-predicted latency, then measure and correct (see :func:`solve_latency`)."""
    original = problem.analysis.model.to_onnx()
    table = LatencyTable.open(problem.providers, problem.threads, cache_dir)
    try:
        base_ms, shapes = measure.baseline(original, providers=problem.providers, threads=problem.threads,
                                           iters=problem.iters)
        problem = replace(problem, iters=measure.rounds(problem.iters, base_ms))
        pred = LatencyPredictor.build(problem.analysis, table, shapes)
        if pred.original_layers_ms <= 0:
            log.warning("no layer of this model could be benchmarked alone; measuring whole models instead")
            plan, record = _solve_measured(problem, 6)
            return plan, record | {"note": "no tabulated layers; fell back to whole-model measurements"}
        search = _LutSearch(problem, original, pred, problem.goal(base_ms), steps)
        search.check_reachable(base_ms)
        search.correct(tol, corrections)
        return _choose(search.trials, search.goal, tol, search.record(table, base_ms))
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
