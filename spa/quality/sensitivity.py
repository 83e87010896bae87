"""Budgets allocated by measured sensitivity.

Each prunable group is pruned *alone* at a few levels (default 25/50/75 % of its channels, its
lowest-scoring ones, with the criterion's compensation) and the whole model's output distortion
(:func:`spa.quality.probe.distortion`) is measured on the probe samples in ONNX Runtime — one masked
twin per probe, the original's outputs computed once. The curves are cached per model + data +
criterion + levels under ``$SPA_CACHE_DIR/sensitivity`` (default ``~/.cache/spa``).

:func:`allocate` then orders the budget greedily on marginal damage per MAC (or parameter) saved: from
every group at ratio 0, repeatedly take the step (to any larger ratio on a 1/8 grid, so non-convex
curves are handled; a jump is walked one grid step at a time) with the least added distortion per
saved MAC, the distortion of a ratio read off the group's curve (piecewise linear through (0, 0),
monotone, extrapolated past the last level). The
result is a *path* of per-group ratios with growing savings; the caller picks the shortest prefix that
meets the budget with the exact plan estimate (:func:`spa.budget.solve_ratio` on the path position,
or the latency search).

Cost: ``groups × levels`` probes, each a masked-twin export and one ONNX Runtime pass over the probe
samples (64 by default) — about ``3·groups`` forward passes of 64 samples, plus ``groups × 7`` MAC
estimates (no surgery).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.budget import estimate
from spa.criteria.base import Updates
from spa.executors import Executor
from spa.graph.model import ModelGraph
from spa.graph.save import is_large
from spa.plan import GroupPlan, Plan, removed_for_count
from spa.quality.fed import FedModel
from spa.quality.local import LocalProbes, Region
from spa.quality.probe import Delta, ProbeData, agree, distortion, outputs
from spa.rules.registry import RuleRegistry
from spa.surgery import masked_twin

log = logging.getLogger(__name__)

LEVELS = (0.25, 0.5, 0.75)
#: the ratio grid of the allocation
GRID = tuple(k / 8 for k in range(1, 8))
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$SPA_CACHE_DIR/sensitivity`` (default ``~/.cache/spa/sensitivity``)."""
    return Path(os.environ.get("SPA_CACHE_DIR", Path.home() / ".cache" / "spa")) / "sensitivity"


def kept_for(channels: int, ratio: float, min_channels: int = 1) -> int:
    """Channels a group keeps at ``ratio``: ``C - round(ratio·C)``, at least ``min_channels`` (and 1)."""
    return min(channels, max(channels - int(round(ratio * channels)), min_channels, 1))


def single_plan(analysis: Analysis, scores: Mapping[int, np.ndarray], ratios: Mapping[int, float],
                criterion: str, min_channels: int = 1, base: Plan | None = None) -> Plan:
    """The plan removing ``ratios[g]`` of every listed group (lowest scores first), and ``base``'s groups
    that ``ratios`` does not list (overrides)."""
    groups = [gp for gp in (base.groups if base is not None else ()) if gp.group not in ratios]
    for gid, r in sorted(ratios.items()):
        if r <= 0:
            continue
        g = analysis.groups[gid]
        removed = removed_for_count(analysis, gid, kept_for(g.channels, r, min_channels), scores[gid], min_channels)
        if removed:
            groups.append(GroupPlan(gid, g.channels, removed))
    groups.sort(key=lambda gp: gp.group)
    return Plan(tuple(groups), base.ratio if base is not None else 0.0, criterion, False,
                base.round_to if base is not None else 1, base.ignored if base is not None else ())


def _cache_key(model_digest: str, data: ProbeData, criterion: str, levels: Sequence[float], min_channels: int,
               extra: str) -> str:
    text = json.dumps([CACHE_VERSION, model_digest, data.digest, data.samples, criterion, list(levels),
                       min_channels, extra])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cached(path: Path, groups: Sequence[int]) -> dict[int, list[float]] | None:
    """The stored curves of ``groups`` (None when the file lacks one, is missing or unreadable)."""
    try:
        if path.is_file():
            stored = json.loads(path.read_text())
            curves = {int(k): [float(x) for x in v] for k, v in stored["curves"].items()}
            if set(groups) <= set(curves):
                return {g: curves[g] for g in groups}
    except (OSError, ValueError, KeyError):  # a corrupt or unreadable cache is rebuilt
        return None
    return None


def _store(path: Path, levels: Sequence[float], curves: Mapping[int, list[float]]) -> None:
    """Write the curves to the cache (atomically; an unwritable cache is skipped)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"levels": list(levels), "curves": {str(k): v for k, v in curves.items()}}))
        os.replace(tmp, path)
    except OSError:
        pass


@dataclass(frozen=True)
class _ProbeJob:
    """What every probe task needs, shipped once: the original model, the probe samples and the
    original's outputs on them."""

    model: bytes
    data: ProbeData
    reference: list[np.ndarray]
    threads: int
    #: names this job's weight-fed session in a worker's cache
    key: str = ""


#: a worker's weight-fed sessions, by job key (a pool or Ray worker builds one per job, not per probe)
_FED: dict[str, FedModel | None] = {}

Probe = onnx.ModelProto | Delta | dict[str, np.ndarray] | None


def _probe_task(job: _ProbeJob, twin: Probe) -> float:
    """One probe: the output distortion of the masked twin (0 for an empty plan); a dict is the twin's
    changed weights, run in the job's weight-fed session (built once per worker)."""
    if twin is None:
        return 0.0
    if isinstance(twin, dict):
        if job.key not in _FED:
            proto = onnx.load_from_string(job.model)
            _FED.clear()
            _FED[job.key] = FedModel.build(ModelGraph.from_graph(gs.import_onnx(proto), proto), job.data,
                                           job.threads)
        fed = _FED[job.key]
        if fed is None:
            raise RuntimeError("the weight-fed probe session does not load in this worker")
        return distortion(job.reference, fed.outputs(twin))
    if isinstance(twin, Delta):
        twin = twin.restore(job.model)
    return distortion(job.reference, outputs(twin, job.data, job.threads))


def sensitivity_curves(analysis: Analysis, scores: Mapping[int, np.ndarray], data: ProbeData, groups: Sequence[int],
                       *, criterion: str, compensate: Callable[[Plan], Updates] | None = None,
                       registry: RuleRegistry | None = None, levels: Sequence[float] = LEVELS,
                       min_channels: int = 1, threads: int = 1, cache: bool = True, cache_extra: str = "",
                       progress: Callable[[str], None] | None = None, executor: Executor | None = None,
                       scope: str = "auto") -> tuple[dict[int, list[float]], dict[str, object]]:
    """The output distortion of every group in ``groups`` pruned alone at each of ``levels``.

    The masked twins are built here; with an ``executor`` of several workers their ONNX Runtime passes
    run as its tasks: the original model, the samples and the reference outputs are shipped once, each
    task gets its twin as a :class:`Delta` (the initializers that differ from the original's, and the
    graph). Every probe computes the same distortion wherever it runs. ``scope``: ``model`` measures at
    the outputs, ``local`` at each group's cut (:mod:`spa.quality.local`, in this process), ``auto`` locally
    for large models (:func:`spa.graph.save.is_large`), which are never exported (not large: run exported
    once to check the weight-fed session against).

    Returns:
        ``{group: [distortion at each level]}`` and a record (``probes``, ``seconds``, ``cached``, ``scope``).
    """
    t0 = time.perf_counter()
    spread = executor is not None and executor.workers > 1
    fed = FedModel.build(analysis.model, data, threads)
    large = is_large(analysis.model)
    local = fed is not None and (scope == "local" or (scope == "auto" and large))
    spread = spread and not local
    small = fed is None or spread or not large
    proto = analysis.model.to_onnx() if small else None
    path: Path | None = None
    if cache:
        key = _cache_key(_digest(proto, fed), data, criterion, levels, min_channels,
                         cache_extra + ("|local" if local else ""))
        path = cache_dir() / f"{key}.json"
        found = _cached(path, groups)
        if found is not None:
            return found, {"probes": 0, "seconds": round(time.perf_counter() - t0, 3), "cached": str(path),
                           "scope": "local" if local else "model"}
    fed = _with_reference(proto, fed, data, threads)
    job = _ProbeJob(b"", data, data.reference or [], threads)
    base = {i.name: i.SerializeToString() for i in proto.graph.initializer} if spread and proto else None
    twins = _Twins(analysis, scores, criterion, min_channels, compensate, registry, fed, base)
    extra: dict[str, object] = {}
    if local and fed is not None:
        found_all, extra = _local_distortions(twins, fed, job, groups, levels, progress)
    elif spread and executor is not None and proto is not None:
        items = list(twins.all(groups, levels, progress))
        job = replace(job, model=proto.SerializeToString(), key=f"{os.getpid()}-{time.time_ns()}")
        found_all = executor.map(_probe_task, items, shared=job)
        extra = {"weight_fed": sum(isinstance(p, dict) for p in items)}
    else:
        found_all, fed_runs = [], 0
        for probe in twins.all(groups, levels, progress):  # one twin at a time: never a list of model twins
            fed_runs += isinstance(probe, dict)
            found_all.append(_whole(job, fed, probe))
        extra = {"weight_fed": fed_runs}
    out = {gid: found_all[k * len(levels):(k + 1) * len(levels)] for k, gid in enumerate(groups)}
    if path is not None:
        _store(path, levels, out)
    return out, {"probes": len(found_all), "seconds": round(time.perf_counter() - t0, 3), "cached": None,
                 "executor": executor.name if spread and executor is not None else "serial",
                 "scope": "local" if local else "model"} | extra


def plan_distortion(analysis: Analysis, plan: Plan, updates: Updates | None, registry: RuleRegistry | None,
                    data: ProbeData, threads: int = 1) -> float | None:
    """The output distortion of ``plan`` (with ``updates``) over ``data``, measured on its masked twin in
    the weight-fed session: the twin's outputs equal the pruned model's (the mask oracle), and only the
    weights it changes are copied — the pruned model is never exported. None when the twin cannot be fed.
    """
    fed = FedModel.build(analysis.model, data, threads)
    changed = fed.changed(masked_twin(analysis, plan, updates, registry)) if fed is not None else None
    if fed is None or changed is None:
        return None
    reference = data.reference if data.reference is not None else fed.outputs({})
    return distortion(reference, fed.outputs(changed))


def _whole(job: _ProbeJob, fed: FedModel | None, probe: Probe) -> float:
    """A probe's distortion at the model's outputs (weight-fed when it is a dict of changed weights)."""
    if isinstance(probe, dict) and fed is not None:
        return distortion(job.reference, fed.outputs(probe))
    return _probe_task(job, probe)


def _with_reference(proto: onnx.ModelProto | None, fed: FedModel | None, data: ProbeData, threads: int
                    ) -> FedModel | None:
    """Set ``data.reference`` (the original's outputs on the samples) and return ``fed`` when its outputs
    agree with the exported model's (checked where ``proto`` is given), else None."""
    reference = outputs(proto, data, threads) if proto is not None else None
    if fed is not None:
        fed_reference = fed.outputs({})
        if reference is not None and not agree(reference, fed_reference):
            log.info("sensitivity probes rebuild each twin: the weight-fed model's outputs differ")
            fed = None
        reference = reference if reference is not None else fed_reference
    data.reference = reference
    return fed


@dataclass
class _Twins:
    """Builds the probes: the masked twin of one group pruned alone at one level, as the changed weights
    when ``fed`` can run it, else the exported twin (a :class:`Delta` against ``base`` when given)."""

    analysis: Analysis
    scores: Mapping[int, np.ndarray]
    criterion: str
    min_channels: int
    compensate: Callable[[Plan], Updates] | None
    registry: RuleRegistry | None
    fed: FedModel | None
    base: Mapping[str, bytes] | None

    def probe(self, gid: int, level: float, *, compensated: bool = True) -> Probe:
        """The probe of ``gid`` at ``level`` (None for an empty plan)."""
        plan = single_plan(self.analysis, self.scores, {gid: level}, self.criterion, self.min_channels)
        if not plan.groups:
            return None
        updates = self.compensate(plan) if self.compensate is not None and compensated else None
        twin = masked_twin(self.analysis, plan, updates, self.registry)
        changed = self.fed.changed(twin) if self.fed is not None else None
        if changed is not None:
            return changed
        return Delta.of(twin.to_onnx(), self.base) if self.base is not None else twin.to_onnx()

    def all(self, groups: Sequence[int], levels: Sequence[float], progress: Callable[[str], None] | None
            ) -> Iterator[Probe]:
        """Every probe in order (group by group, level by level)."""
        total, done = len(groups) * len(levels), 0
        for gid in groups:
            for level in levels:
                done += 1
                if progress is not None:
                    progress(f"sensitivity probe {done}/{total}: group {gid} at {int(round(level * 100))}%")
                yield self.probe(gid, level)


def _local_distortions(twins: _Twins, fed: FedModel, job: _ProbeJob, groups: Sequence[int],
                       levels: Sequence[float], progress: Callable[[str], None] | None
                       ) -> tuple[list[float], dict[str, object]]:
    """Every probe's distortion at its group's cut (:mod:`spa.quality.local`); a group without a region,
    or a probe its region cannot run, is measured at the model's outputs."""
    probes = LocalProbes.build(fed, job.threads)
    found: dict[int, list[float]] = {}
    regions: dict[int, Region] = {}
    for gid in groups if probes is not None else ():  # the weights the uncompensated top-level twin changes
        top = twins.probe(gid, max(levels), compensated=False)
        region = probes.nodes.region(top, fed.weights) if probes is not None and isinstance(top, dict) else None
        if region is not None:
            regions[gid] = region
    local = [g for g in groups if g in regions]
    if probes is not None and local:
        for chunk in probes.chunks([regions[g] for g in local]):
            probes.cache = probes.reference(sorted({n for k in chunk for n in regions[local[k]].tensors}))
            for k in chunk:
                if progress is not None:
                    progress(f"sensitivity probe {(len(found) + 1) * len(levels)}/{len(groups) * len(levels)}: "
                             f"group {local[k]} (local)")
                items = [twins.probe(local[k], level) for level in levels]
                got = probes.damages(regions[local[k]], items)
                found[local[k]] = [_whole(job, fed, p) if d is None else d for d, p in zip(got, items)]
            probes.cache = {}
    for gid in groups:
        if gid not in found:
            found[gid] = [_whole(job, fed, twins.probe(gid, level)) for level in levels]
    return [d for gid in groups for d in found[gid]], {
        "weight_fed": len(groups) * len(levels), "local_groups": len(local), "model_groups": len(groups) - len(local),
        "local_fallbacks": probes.fallbacks if probes is not None else 0}


def _digest(proto: onnx.ModelProto | None, fed: FedModel | None) -> str:
    """The probed model's cache digest: its serialisation, or (too large to serialise) the weight-fed
    graph's and every weight's bytes."""
    if proto is not None:
        return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    h = hashlib.blake2b(digest_size=32)
    h.update(repr(fed.ops if fed is not None else ()).encode())
    for name, w in sorted((fed.weights if fed is not None else {}).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(w).data.cast("B"))
    return h.hexdigest()


def damage(curve: Sequence[float], levels: Sequence[float], ratio: float) -> float:
    """A group's distortion at ``ratio``: piecewise linear through (0, 0) and its (monotone) curve,
    extrapolated with the last segment's slope.

    >>> damage([1.0, 2.0, 4.0], (0.25, 0.5, 0.75), 0.375), damage([1.0, 2.0, 4.0], (0.25, 0.5, 0.75), 0.875)
    (1.5, 5.0)
    """
    xs = [0.0, *levels]
    ys = list(np.maximum.accumulate([0.0, *(max(0.0, float(c)) for c in curve)]))
    if ratio <= xs[-1]:
        return float(np.interp(ratio, xs, ys))
    slope = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-9)
    return float(ys[-1] + slope * (ratio - xs[-1]))


@dataclass
class Allocation:
    """A greedy path of per-group ratios (savings growing along it) and what it was built from."""

    curves: dict[int, list[float]]
    levels: tuple[float, ...]
    path: list[dict[int, float]]
    predicted: list[float]
    record: dict[str, object] = field(default_factory=dict)

    def at(self, fraction: float) -> tuple[dict[int, float], float]:
        """The ratios ``fraction`` (0..1) along the path, and their predicted distortion (Σ curves)."""
        i = int(round(min(max(fraction, 0.0), 1.0) * (len(self.path) - 1)))
        return self.path[i], self.predicted[i]


def allocate(analysis: Analysis, scores: Mapping[int, np.ndarray], curves: Mapping[int, Sequence[float]],
             *, levels: Sequence[float] = LEVELS, measure: str = "macs", max_ratio: float = 0.9,
             min_channels: int = 1, base: Plan | None = None) -> Allocation:
    """The greedy path on marginal damage per MAC (``measure="params"``: per parameter) saved.

    Savings of a group at a ratio are the exact estimate of the plan pruning it alone (and ``base``'s
    fixed groups); along the path they add up approximately, so the caller checks the exact estimate.
    """
    grid = [r for r in GRID if r <= max_ratio + 1e-9]
    full = estimate(analysis, single_plan(analysis, scores, {}, "", min_channels, base))
    size = full.macs if measure == "macs" else full.params
    saving: dict[int, list[float]] = {}
    hurt: dict[int, list[float]] = {}
    for gid, curve in curves.items():
        e = [estimate(analysis, single_plan(analysis, scores, {gid: r}, "", min_channels, base)) for r in grid]
        saving[gid] = [0.0] + [float(size - (x.macs if measure == "macs" else x.params)) for x in e]
        hurt[gid] = [0.0] + [damage(curve, levels, r) for r in grid]
    ratios = [0.0, *grid]
    pos = dict.fromkeys(curves, 0)
    path = [dict.fromkeys(curves, 0.0)]
    predicted = [0.0]
    while True:
        best: tuple[float, int, int] | None = None
        for gid, i in pos.items():
            for j in range(i + 1, len(ratios)):
                gain = saving[gid][j] - saving[gid][i]
                if gain <= 0:
                    continue
                cost = (hurt[gid][j] - hurt[gid][i]) / gain
                if best is None or cost < best[0]:
                    best = (cost, gid, j)
        if best is None:
            break
        _, gid, j = best
        for k in range(pos[gid] + 1, j + 1):  # a jump is walked step by step: each step a possible prefix
            pos[gid] = k
            path.append({g: ratios[i] for g, i in pos.items()})
            predicted.append(sum(hurt[g][i] for g, i in pos.items()))
    return Allocation({g: list(c) for g, c in curves.items()}, tuple(levels), path, predicted)
