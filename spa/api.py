"""The Python API: :func:`load`, :func:`analyze`, :func:`prune`, :func:`verify`.

>>> import spa
>>> sorted(spa.__all__)[:3]
['Analysis', 'Group', 'PruneResult']
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.analysis.groups import Analysis, analyze_graph
from spa.analysis.metrics import costs_at, count_params, macs_at, representative, representative_shapes
from spa.bench.report import BenchOptions, bench_models
from spa.budget import estimate, solve_ratio
from spa.calibration import load_calibration
from spa.calibration.data import CalibrationSource, RandomSource
from spa.criteria import Criterion, CriterionContext, Scores, Updates, get_criterion
from spa.criteria.calibrated import MAX_FEATURES, model_proto
from spa.criteria.obs_math import DEFAULT_DAMP
from spa.criteria.reduce import options as reduce_options
from spa.errors import SpaError, UnsupportedModelError, UsageError, ValidationError
from spa.executors import Executor, make_executor
from spa.graph.io import PROTOBUF_LIMIT, load_model, save_model
from spa.graph.model import ModelGraph
from spa.graph.normalize import normalize
from spa.graph.save import LARGE_BYTES, graph_bytes, is_large, save_graph
from spa.latency.cost import choose_modes
from spa.latency.counts import ALLOCATED_SPAN, LatencyCounts
from spa.latency.solve import solve_latency
from spa.options import PruneOptions, coerce
from spa.plan import Plan, make_plan
from spa.quality import (
    Allocation,
    ProbeData,
    allocate,
    distortion,
    probe_data,
    realign,
    reconstruct,
    sensitivity_curves,
)
from spa.quality.probe import outputs as probe_outputs
from spa.quality.sensitivity import damage, plan_distortion, single_plan
from spa.recover.saliency import channel_saliency
from spa.recover.train import RecoverOptions, RecoverResult
from spa.recover.train import recover as _recover
from spa.reorder.unconstrained import copies, unconstrain
from spa.rules.conv import has_grouped_conv, whole_group_rules
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry
from spa.runtime.feeds import InputSpec
from spa.runtime.providers import cuda_device_present
from spa.runtime.session import session
from spa.surgery import kept_indices, masked_twin, prune_model
from spa.validate.oracle import verify  # re-exported: spa.verify, the mask oracle
from spa.version import __version__

log = logging.getLogger(__name__)

ModelInput = str | os.PathLike[str] | onnx.ModelProto | ModelGraph


def load(model: ModelInput) -> ModelGraph:
    """Load (if a path) and normalise a model.

    From a path, external-data weights stay on disk and are memory-mapped, so large models are not
    read into memory as a whole.
    """
    if isinstance(model, ModelGraph):
        return model
    if isinstance(model, onnx.ModelProto):
        return _check_conversion(normalize(model), model)
    proto = load_model(model, external=False)
    return _check_conversion(normalize(proto, base_dir=Path(model).parent), model)


def _check_conversion(mg: ModelGraph, original: onnx.ModelProto | str | os.PathLike[str]) -> ModelGraph:
    """A model normalisation converted from an old opset must compute what the original computes: both
    run in ONNX Runtime on random inputs, else :class:`UnsupportedModelError`."""
    if mg.converted_from_opset is None:
        return mg
    what = f"converting opset {mg.converted_from_opset} to {mg.opset} (onnx.version_converter)"
    try:
        res = verify(mg, original, trials=2, rtol=1e-4, atol=1e-5)
    except ValidationError as exc:
        raise UnsupportedModelError(f"{what} could not be checked in ONNX Runtime: {exc}; re-export the model "
                                    "at opset 11 or newer") from exc
    if not res.ok:
        worst = max(res.diffs, key=lambda d: d.max_abs)
        raise UnsupportedModelError(f"{what} changes output '{worst.name}' (max abs diff {worst.max_abs:.3g}); "
                                    "re-export the model at opset 11 or newer")
    return mg


def analyze(model: ModelInput, *, prune_hidden: bool = False, prune_head_dim: bool = False) -> Analysis:
    """Find the coupled channel groups of a model.

    Args:
        model: a path, a ModelProto or a normalised :class:`ModelGraph`.
        prune_hidden: report the hidden size (channels LayerNorm/RMSNorm statistics run over) as
            prunable groups of kind ``hidden`` instead of blocking it.
        prune_head_dim: in every attention block where it is legal, report V's head_dim (with the output
            projection's rows) as a group of kind ``head_dim`` instead of the block's heads.
    """
    return analyze_graph(load(model), hidden=prune_hidden, head_dim=prune_head_dim)


def mac_shapes(model: ModelInput, shapes: Mapping[str, Sequence[int]] | None = None,
               calibration: CalibrationSource | None = None) -> tuple[dict[str, tuple[int, ...]], str]:
    """The input shapes MACs are counted at, and where they come from: ``shapes`` (``--shape``) when
    given, else the first batch of ``calibration`` data (one sample; not random data), else the declared
    shapes when all are static, else :func:`spa.analysis.metrics.representative` (sizes the graph can run at).

    Raises:
        UsageError: ``shapes`` names an input the model does not have, or has the wrong rank.
    """
    mg = load(model)
    default = representative_shapes(mg)
    if shapes:
        unknown = sorted(set(shapes) - set(default))
        if unknown:
            raise UsageError(f"--shape {unknown[0]}: the model has no such input (inputs: {', '.join(default)})")
        for name, dims in shapes.items():
            if len(dims) != len(default[name]):
                raise UsageError(f"--shape {name}: {len(dims)} dimensions given, the model's input has "
                                 f"{len(default[name])}")
        return default | {k: tuple(int(d) for d in v) for k, v in shapes.items()}, "--shape"
    if calibration is not None and not isinstance(calibration, RandomSource):
        specs = [InputSpec(t.name, tuple(t.shape or ()), np.dtype(t.dtype or np.float32)) for t in mg.graph.inputs]
        try:
            batch = next(iter(calibration.batches(specs)))
            return default | {k: (1, *v.shape[1:]) for k, v in batch.items() if k in default}, "calibration data"
        except Exception as exc:  # noqa: BLE001 - the criterion reports bad data itself: count at the default
            log.debug("no shapes from the calibration data (%s)", exc)
    dynamic = any(not isinstance(d, int) for t in mg.graph.inputs for d in (t.shape or ()))
    return representative(mg) if dynamic else (default, "declared")


def macs(model: ModelInput, shapes: Mapping[str, Sequence[int]] | None = None,
         calibration: CalibrationSource | None = None) -> dict[str, object]:
    """MACs of one run of ``model`` and the input shapes they were counted at (see :func:`mac_shapes`):
    ``{"macs", "mac_shapes", "mac_shapes_from"}``."""
    mg = load(model)
    at, source = mac_shapes(mg, shapes, calibration)
    return {"macs": macs_at(mg, at), "mac_shapes": {k: list(v) for k, v in at.items()}, "mac_shapes_from": source}


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        graph: the pruned model (``model`` exports it to a ModelProto on first use).
        plan: what was removed.
        analysis: the groups of the original model.
        report: the JSON report.
        masked_graph: the masked twin, when asked for (``masked`` exports it).
    """

    graph: ModelGraph
    plan: Plan
    analysis: Analysis
    report: dict[str, object]
    masked_graph: ModelGraph | None = None
    extra: dict[str, object] = field(default_factory=dict)
    _protos: dict[str, onnx.ModelProto] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> onnx.ModelProto:
        """The pruned model as a self-contained ModelProto (weights copied in; < 2 GB)."""
        if "model" not in self._protos:
            self._protos["model"] = self.graph.to_onnx()
        return self._protos["model"]

    @property
    def masked(self) -> onnx.ModelProto | None:
        """The masked twin as a ModelProto, or None."""
        if self.masked_graph is None:
            return None
        if "masked" not in self._protos:
            self._protos["masked"] = self.masked_graph.to_onnx()
        return self._protos["masked"]

    def save(self, path: str | os.PathLike[str], *, external_data: bool | None = None,
             force: bool = True) -> Path:
        """Write the pruned model atomically (weights streamed to ``<name>.data`` when external)."""
        return save_graph(self.graph, path, external_data=external_data, force=force)

    def save_masked(self, path: str | os.PathLike[str], *, external_data: bool | None = None,
                    force: bool = True) -> Path:
        """Write the masked twin atomically."""
        if self.masked_graph is None:
            raise UsageError("the masked twin was not built: prune with emit_masked=True")
        return save_graph(self.masked_graph, path, external_data=external_data, force=force)


def _group_report(analysis: Analysis, plan: Plan) -> list[dict[str, object]]:
    kept = kept_indices(analysis, plan)
    rows = []
    for g in analysis.groups:
        removed = plan.removed(g.id)
        row: dict[str, object] = {
            "id": g.id,
            "label": g.label,
            "kind": g.kind,
            "channels_before": g.channels,
            "channels_after": g.channels - len(removed),
            "prunable": g.prunable,
            "blocked_reason": None if g.prunable else "; ".join(g.reasons),
            "kept": sorted(set(range(g.channels)) - set(removed)) if g.prunable else None,
            "weights": sorted({f"{m.tensor}[{m.axis}]" for m in g.members if m.kind == "weight"}),
        }
        if removed:
            row["kept_per_weight"] = {f"{s.tensor}[{s.axis}]": len(k) for s, k in kept.items()
                                      if analysis.labels(g.id).get(s) is not None}
        rows.append(row)
    return rows


def prune(
    model: ModelInput,
    options: PruneOptions | None = None,
    registry: RuleRegistry | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **changes: Any,
) -> PruneResult:
    """Prune a model.

    Args:
        model: path, ModelProto or ModelGraph (not modified).
        options: what to remove and how (:class:`~spa.options.PruneOptions`; default: its defaults).
        registry: the channel rules to analyse and rewrite with (default:
            :func:`spa.rules.defaults.default_registry`); a user's own rules prune through it.
        progress: called with a short description at the start of each stage (the CLI shows it).
        **changes: :class:`~spa.options.PruneOptions` fields that override ``options``, e.g.
            ``spa.prune("m.onnx", ratio=0.3, criterion="obs", calibration="data.npz")``.

    Returns:
        A :class:`PruneResult` with the pruned graph, the plan, the analysis and a JSON report.

    Raises:
        UsageError: an unknown or invalid option (before any work).
    """
    given = coerce(options, changes)
    opts = given.resolved()
    stage = progress or (lambda _what: None)
    crit = get_criterion(opts.criterion)
    stage("loading")
    mg = load(model)
    opts = _sized(opts, given, mg)
    analysis, scores, registry, grouped, cctx = _analyse_and_score(mg, opts, registry, crit, stage)
    data = _probe_data(analysis, opts, cctx)
    alloc = _allocation(analysis, scores, opts, cctx, data, registry, stage)
    stage("planning" + (" (measuring latencies)" if opts.target_latency is not None else ""))
    plan_opts = opts if not grouped or grouped["mode"] != "whole_groups" else replace(opts, ratio=grouped["ratio"])
    source = cctx.calibration
    at = mac_shapes(mg, opts.shapes, source if isinstance(source, CalibrationSource) else None)
    plan, latency_record, counts_record = _solve_plan(analysis, scores, plan_opts, registry, stage, alloc, at[0])
    stage(f"pruning {len(plan.groups)} groups")
    updates, quality = _compensate(analysis, plan, crit, cctx, opts, registry, stage)
    if opts.realign and data is not None:  # statistics re-alignment: more weight updates, on calibration data
        rec = quality["reconstruction"]
        done = [str(p["node"]) for p in rec["per_layer"]] if isinstance(rec, dict) else []
        updates, quality["realign"] = realign(analysis, plan, updates, data, registry,
                                              variance=opts.realign_variance, exclude=done, progress=stage)
    pruned_mg = prune_model(analysis, plan, registry, updates=updates)
    checks, protos = _check(pruned_mg, model, opts.check, stage)
    if opts.emit_masked:
        stage("building the masked twin")
    masked = masked_twin(analysis, plan, updates, registry) if opts.emit_masked else None
    report = _report(opts, analysis, plan, mg, pruned_mg, cctx, updates, at) | checks
    report |= {"target_latency": latency_record}
    report |= _predicted_latency(report, counts_record) | {"grouped_convs": grouped}
    report |= _quality_report(quality, opts, analysis, plan, alloc, data,
                              lambda d: _measured(analysis, plan, updates, registry, d, cctx,
                                                  lambda: protos.get("model") or pruned_mg.to_onnx()))
    return PruneResult(pruned_mg, plan, analysis, report, masked, _protos=protos)


def _sized(opts: PruneOptions, given: PruneOptions, mg: ModelGraph) -> PruneOptions:
    """``opts`` for this model's size: for a large model (:func:`spa.graph.save.is_large`) a default
    sequential reconstruction becomes ``oneshot`` (said in one line; ``--reconstruct sequential`` keeps it):
    it runs the original and the masked twin once per topological level."""
    if given.reconstruct is None and opts.reconstruct == "sequential" and is_large(mg):
        log.info("sequential reconstruction is off by default for a model over %d MB (it runs the model twice "
                 "per layer level): one-shot compensation instead; --reconstruct sequential to force it",
                 LARGE_BYTES >> 20)
        return replace(opts, reconstruct="oneshot")
    return opts


def _compensate(analysis: Analysis, plan: Plan, crit: Criterion, cctx: CriterionContext, opts: PruneOptions,
                registry: RuleRegistry | None, stage: Callable[[str], None]) -> tuple[Updates, dict[str, object]]:
    """The weight updates ``opts.reconstruct`` asks for (``none``: nothing; ``oneshot``: the criterion's;
    ``sequential``: :func:`spa.quality.reconstruct` on top of the criterion's) and the report's
    ``reconstruction`` record (None unless sequential) with the other quality records to fill."""
    quality: dict[str, object] = {"reconstruct": opts.reconstruct, "reconstruction": None, "realign": None,
                                  "allocation": None, "quality_note": None}
    if opts.reconstruct == "none":
        return {}, quality
    updates = crit.compensate(analysis, plan, cctx)
    if opts.reconstruct == "sequential" and isinstance(cctx.calibration, CalibrationSource):
        o = cctx.options
        updates, quality["reconstruction"] = reconstruct(
            analysis, plan, updates, cctx.calibration, registry, damp=float(o.get("damp") or DEFAULT_DAMP),  # type: ignore[arg-type]
            max_features=int(o.get("max_features") or MAX_FEATURES), threads=int(o.get("threads") or 1),  # type: ignore[call-overload]
            progress=stage)
    return updates, quality


def _analyse_and_score(mg: ModelGraph, opts: PruneOptions, registry: RuleRegistry | None, crit: Criterion,
                       stage: Callable[[str], None]
                       ) -> tuple[Analysis, Scores, RuleRegistry | None, GroupedChoice, CriterionContext]:
    """The channel groups and the criterion's scores; with grouped convolutions and latency-chosen counts,
    of whichever analysis (in-group or whole-group pruning) :func:`_grouped_conv_mode` picks — also the
    rules, the comparison and the criterion context (its cached statistics belong to that analysis)."""
    stage(f"analysing {len(mg.graph.nodes)} nodes")
    analysis = analyze_graph(mg, registry, hidden=opts.prune_hidden, head_dim=opts.prune_head_dim)
    cctx = _criterion_context(opts)
    stage(f"scoring {len(analysis.prunable)} groups ({opts.criterion})")
    scores = crit.score(analysis, cctx)

    def fresh_score(a: Analysis) -> tuple[Scores, CriterionContext]:
        ctx = _criterion_context(opts)
        return crit.score(a, ctx), ctx

    analysis, scores, registry, grouped, whole_ctx = _grouped_conv_mode(mg, analysis, scores, opts, registry,
                                                                        fresh_score, stage)
    return analysis, scores, registry, grouped, whole_ctx or cctx


#: the one line said when no data protects the task
NO_DATA_NOTE = ("task quality cannot be protected without data: give --calib with a few dozen of the model's inputs "
                "(an image folder, or an .npz/.npy of input arrays) for obs scores, sensitivity-allocated budgets "
                "and statistics re-alignment")
#: what :data:`NO_DATA_NOTE` adds when the criterion is not the data-free OBS already
OBSPA_HINT = "; without data, --criterion obspa (OBS on synthetic inputs, slower than l2) keeps more of the task"


def no_data_note(criterion: str) -> str:
    """The one line said when no data protects the task (with the ``obspa`` hint unless it is in use)."""
    return NO_DATA_NOTE + ("" if criterion == "obspa" else OBSPA_HINT)


def _probe_data(analysis: Analysis, opts: PruneOptions, cctx: CriterionContext) -> ProbeData | None:
    """The calibration samples re-alignment and sensitivity probes run on (None when neither is asked)."""
    if not (opts.realign or opts.allocate == "sensitivity") or not isinstance(cctx.calibration, CalibrationSource):
        return None
    return probe_data(analysis.model.interface(), cctx.calibration, opts.probe_samples)


def _allocation(analysis: Analysis, scores: Scores, opts: PruneOptions, cctx: CriterionContext,
                data: ProbeData | None, registry: RuleRegistry | None,
                stage: Callable[[str], None]) -> Allocation | None:
    """Sensitivity curves of every group the budget spreads over, and the greedy allocation path."""
    if opts.allocate != "sensitivity" or data is None:
        return None
    crit = get_criterion(opts.criterion)
    fixed = _fixed_plan(analysis, scores, opts)
    skip = set(fixed.ignored) | {gp.group for gp in fixed.groups}
    groups = [g.id for g in analysis.prunable if g.id in scores and g.id not in skip]
    curves, record = sensitivity_curves(
        analysis, scores, data, groups, criterion=opts.criterion, registry=registry,
        compensate=lambda p: crit.compensate(analysis, p, cctx), levels=opts.sensitivity_levels,
        min_channels=opts.min_channels, cache_extra=repr(sorted(cctx.options.items())), progress=stage,
        executor=cctx.executor, scope=opts.probe_scope)
    stage("allocating the budget by sensitivity")
    alloc = allocate(analysis, scores, curves, levels=opts.sensitivity_levels,
                     measure="params" if opts.budget == "params" else "macs", max_ratio=opts.max_ratio,
                     min_channels=opts.min_channels, base=fixed)
    alloc.record = record
    return alloc


def _fixed_plan(analysis: Analysis, scores: Scores, opts: PruneOptions) -> Plan:
    """The groups the budget does not spread over: ignored ones, and those an override or kind ratio sets."""
    return make_plan(analysis, scores, 0.0, criterion=opts.criterion, min_channels=opts.min_channels,
                     ignore=opts.ignore, overrides=opts.overrides, kind_ratio=opts.kind_ratios())


def _measured(analysis: Analysis, plan: Plan, updates: Updates, registry: RuleRegistry | None, data: ProbeData,
              cctx: CriterionContext, pruned: Callable[[], onnx.ModelProto]) -> float:
    """The pruned model's output distortion on the probe samples: for a large model on its masked twin in
    the weight-fed session (no copy of the model), else on the exported pruned model."""
    if is_large(analysis.model):
        found = plan_distortion(analysis, plan, updates, registry, data)
        if found is not None:
            return found
    reference = data.reference if data.reference is not None else probe_outputs(model_proto(analysis, cctx), data)
    return distortion(reference, probe_outputs(pruned(), data))


def _quality_report(quality: dict[str, object], opts: PruneOptions, analysis: Analysis, plan: Plan,
                    alloc: Allocation | None, data: ProbeData | None, measure: Callable[[ProbeData], float]
                    ) -> dict[str, object]:
    """The report's ``realign``, ``allocation`` (per group: chosen ratio, sensitivity curve; predicted and
    measured output distortion, ``measure``) and ``quality_note`` (the one line said when no data was
    given)."""
    if not opts.has_data:
        quality["quality_note"] = no_data_note(opts.criterion)
        log.info("%s", quality["quality_note"])
    if alloc is not None and data is not None:
        chosen = {gp.group: len(gp.removed) / gp.channels for gp in plan.groups}
        predicted = sum(damage(curve, alloc.levels, chosen.get(gid, 0.0)) for gid, curve in alloc.curves.items())
        measured = measure(data)
        quality["allocation"] = alloc.record | {
            "levels": list(alloc.levels), "predicted_distortion": round(predicted, 6),
            "measured_distortion": round(measured, 6),
            "groups": [{"id": gid, "label": analysis.groups[gid].label, "ratio": round(chosen.get(gid, 0.0), 4),
                        "sensitivity": [round(x, 6) for x in curve]}
                       for gid, curve in alloc.curves.items()]}
    return quality


@functools.cache
def _executor(kind: str, address: str | None, workers: int | None) -> Executor:
    """One executor per setting for the process's life: a local pool's workers stay warm between prunes,
    a Ray connection is made once."""
    return make_executor(kind, address=address, workers=workers)


def _criterion_context(opts: PruneOptions) -> CriterionContext:
    """The criterion's inputs: calibration data, seed and options (unknown option names refused here,
    before any work)."""
    options = dict(opts.criterion_options) | {k: v for k, v in (("reduction", opts.reduction),
                                                                 ("normalize", opts.normalize)) if v is not None}
    source = load_calibration(opts.calibration, samples=opts.calib_samples, batch_size=opts.calib_batch,
                              preprocess=opts.calib_preprocess, seed=opts.seed)
    if isinstance(source, RandomSource) and source.shapes is None and opts.shapes:  # --calib random --shape
        source = replace(source, shapes={k: tuple(v[1:]) for k, v in opts.shapes.items()})
    executor = None if opts.executor == "serial" else _executor(opts.executor, opts.ray_address, opts.workers)
    cctx = CriterionContext(seed=opts.seed, calibration=source, options=options, shapes=opts.shapes,
                            executor=executor, gradients=channel_saliency)
    reduce_options(cctx)
    return cctx


def _solve_plan(analysis: Analysis, scores: Scores, opts: PruneOptions, registry: RuleRegistry | None = None,
                stage: Callable[[str], None] | None = None, alloc: Allocation | None = None,
                at: Mapping[str, Sequence[int]] | None = None,
                ) -> tuple[Plan, dict[str, object] | None, dict[str, object]]:
    """The plan the budget asks for (a ratio, a MACs/params target or a latency target), with channel
    counts chosen by latency (``round_to="latency"``), made unconstrained when asked; also the latency
    search's record (None without ``target_latency``) and the count choice's (empty unless
    ``round_to="latency"``). A MACs target counts at ``at`` (the report's ``mac_shapes``)."""
    kinds = opts.kind_ratios()
    providers = list(opts.providers) if opts.providers is not None else None
    round_to = opts.round_to if opts.round_to != "auto" else (8 if cuda_device_present() else 16)
    say = (lambda what: stage(f"planning: {what}")) if stage is not None else None
    counts = LatencyCounts(analysis, providers, opts.latency_cache, registry, opts.min_channels, say,
                           max_ratio=opts.max_ratio if opts.global_rank else 1.0,
                           span=ALLOCATED_SPAN if alloc is not None else None)

    def plan_for(r: float) -> Plan:
        plan = make_plan(analysis, scores, r, criterion=opts.criterion, global_rank=opts.global_rank,
                         max_ratio=opts.max_ratio, round_to=round_to, min_channels=opts.min_channels,
                         ignore=opts.ignore, overrides=opts.overrides, kind_ratio=kinds)
        return counts(plan, scores) if round_to == "latency" else plan

    uniform_for = plan_for
    if alloc is not None:  # the budget follows the sensitivity path: r in [0, 0.99] is a position on it
        fixed = _fixed_plan(analysis, scores, opts)

        def plan_for(r: float) -> Plan:
            ratios, _ = alloc.at(r / 0.99)
            plan = single_plan(analysis, scores, ratios, opts.criterion, opts.min_channels, base=fixed)
            return counts(plan, scores) if round_to == "latency" else plan

    record: dict[str, object] | None = None
    try:
        if opts.target_latency is not None:
            plan, record = solve_latency(analysis, plan_for, lambda p: prune_model(analysis, p, registry).to_onnx(),
                                         opts.target_latency, providers=providers, cache_dir=opts.latency_cache)
        elif opts.target_macs is not None or opts.target_params is not None:
            plan = solve_ratio(analysis, plan_for, target_macs=opts.target_macs, target_params=opts.target_params,
                               shapes=at)
        elif alloc is not None:  # the MACs the uniform ratio would leave, spread by sensitivity
            costs = costs_at(analysis.model, at, analysis.registry)
            plan = solve_ratio(analysis, plan_for, target_macs=max(2, estimate(analysis, uniform_for(opts.ratio),
                                                                               costs).macs), shapes=at)
        else:
            plan = plan_for(opts.ratio)
    finally:
        counts.save()
    counts_record = counts.record_for(plan)
    if opts.unconstrained:
        plan = unconstrain(analysis, plan, reorder=opts.reorder)
        plan = choose_modes(analysis, plan, opts.consumer_mode, providers=providers)
    return plan, record, counts_record


#: the whole-group vs in-group comparison of :func:`_grouped_conv_mode` (None: nothing compared)
GroupedChoice = dict[str, Any] | None


def _grouped_conv_mode(mg: ModelGraph, analysis: Analysis, scores: Scores, opts: PruneOptions,
                       registry: RuleRegistry | None, score: Callable[[Analysis], tuple[Scores, CriterionContext]],
                       stage: Callable[[str], None]
                       ) -> tuple[Analysis, Scores, RuleRegistry | None, GroupedChoice, CriterionContext | None]:
    """With ``round_to="latency"`` and grouped (not depthwise) convolutions: whether to prune them by
    in-group positions (same groups, narrower) or by whole groups (fewer groups, same width), whichever
    the latency table predicts faster at the same MACs (those of the exact in-group plan at
    ``opts.ratio``). Returns the analysis, scores and rules to prune with, the comparison (None when
    there was nothing to compare; its ``ratio`` is the whole-group ratio with those MACs, what a ``ratio``
    budget plans at), and the criterion context of the whole-group analysis when that one is chosen (its
    statistics belong to that analysis; None: keep the caller's)."""
    if opts.round_to != "latency" or opts.unconstrained or not has_grouped_conv(mg.graph.nodes):
        return analysis, scores, registry, None, None
    stage("comparing grouped convolutions pruned by whole groups")
    whole_reg = RuleRegistry(whole_group_rules((registry or default_registry()).rules()))
    whole = analyze_graph(mg, whole_reg, hidden=opts.prune_hidden, head_dim=opts.prune_head_dim)
    whole_scores, whole_ctx = score(whole)
    providers = list(opts.providers) if opts.providers is not None else None

    def exact(a: Analysis, s: Scores, r: float) -> Plan:
        return make_plan(a, s, r, criterion=opts.criterion, global_rank=opts.global_rank, max_ratio=opts.max_ratio,
                         round_to=1, min_channels=opts.min_channels, ignore=opts.ignore, overrides=opts.overrides,
                         kind_ratio=opts.kind_ratios())

    width_plan = exact(analysis, scores, opts.ratio)
    try:
        whole_plan = solve_ratio(whole, lambda r: exact(whole, whole_scores, r),
                                 target_macs=float(estimate(analysis, width_plan).macs), tol=0.005)
    except SpaError:
        return analysis, scores, registry, None, None
    ms: list[float] = []
    for a, s, reg, p in ((analysis, scores, registry, width_plan), (whole, whole_scores, whole_reg, whole_plan)):
        counts = LatencyCounts(a, providers, opts.latency_cache, reg, opts.min_channels)
        try:
            ms.append(float(counts.record_for(counts(p, s)).get("table_ms_chosen", math.inf)))  # type: ignore[arg-type]
        finally:
            counts.save()
    record: dict[str, Any] = {"mode": "whole_groups" if ms[1] < ms[0] else "in_group", "ratio": whole_plan.ratio,
                                 "table_ms_in_group": round(ms[0], 4), "table_ms_whole_groups": round(ms[1], 4)}
    if ms[1] < ms[0]:
        return whole, whole_scores, whole_reg, record, whole_ctx
    return analysis, scores, registry, record, None


def _predicted_latency(report: dict[str, object], counts: dict[str, object]) -> dict[str, object]:
    """The report's ``latency_counts`` (what ``--round-to latency`` chose) and ``predicted_latency``: the
    per-layer table's latency of the pruned graph's layers as a fraction of the original's, and the
    efficiency it implies (MACs fraction ÷ latency fraction; 1 = every MAC removed saves its share of
    time). Both None when no table was used (``--round-to`` an integer)."""
    if not counts or not counts.get("table_ms_original"):
        return {"latency_counts": None, "predicted_latency": None}
    original = float(counts["table_ms_original"])  # type: ignore[arg-type]
    pruned = float(counts.get("table_ms_chosen", original))  # type: ignore[arg-type]
    macs = float(report["macs_after"]) / max(1.0, float(report["macs_before"]))  # type: ignore[arg-type]
    fraction = pruned / original
    return {"latency_counts": counts,
            "predicted_latency": {"table_ms_original": original, "table_ms_pruned": pruned,
                                  "fraction": round(fraction, 4), "macs_fraction": round(macs, 4),
                                  "efficiency": round(macs / fraction, 4) if fraction > 0 else None}}


def _check(pruned: ModelGraph, original: ModelInput, check: bool,
           stage: Callable[[str], None]) -> tuple[dict[str, object], dict[str, onnx.ModelProto]]:
    """The ONNX checker's and ONNX Runtime's verdicts on the pruned model (``"not run"`` when not asked
    or when the model is too large to check in memory), and the exported proto to reuse. ``original``
    is the model as the caller gave it (a path, a proto), never its normalised graph: a check is only
    skipped when the *input* fails it."""
    if not check or graph_bytes(pruned) >= PROTOBUF_LIMIT // 2:
        return {"onnx_check": "not run", "ort_check": "not run"}, {}
    proto = pruned.to_onnx()
    onnx_check = _onnx_check(proto, original)
    stage("checking (ONNX checker, ONNX Runtime)")
    return {"onnx_check": onnx_check, "ort_check": _ort_check(proto, original)}, {"model": proto}


def _report(opts: PruneOptions, analysis: Analysis, plan: Plan, original: ModelGraph, pruned: ModelGraph,
            cctx: CriterionContext, updates: Updates, counted_at: tuple[dict[str, tuple[int, ...]], str],
            ) -> dict[str, object]:
    """The JSON report of one prune (its keys are documented in ``docs/cli.md``); MACs counted at
    ``counted_at`` (:func:`mac_shapes`: the shapes and where they come from)."""
    source = cctx.calibration
    at, shapes_from = counted_at
    return {
        "spa_version": __version__,
        "criterion": opts.criterion,
        "ratio": plan.ratio,
        "target_macs": opts.target_macs,
        "target_params": opts.target_params,
        "seed": opts.seed,
        "global": opts.global_rank,
        "round_to": opts.round_to,
        "converted_from_opset": original.converted_from_opset,
        "macs_before": macs_at(original, at),
        "macs_after": macs_at(pruned, at),
        "mac_shapes": {k: list(v) for k, v in at.items()},
        "mac_shapes_from": shapes_from,
        "params_before": count_params(original),
        "params_after": count_params(pruned),
        "num_groups": len(analysis.groups),
        "num_prunable": len(analysis.prunable),
        "num_pruned": len(plan.groups),
        "unconstrained": opts.unconstrained,
        "prune_hidden": opts.prune_hidden,
        "prune_head_dim": opts.prune_head_dim,
        "analysis_notes": analysis.notes,
        "consumer_reads": copies(plan),
        "onnx_check": "not run",
        "ort_check": "not run",
        "target_latency": None,
        "prunable_param_fraction": round(analysis.prunable_param_fraction(), 6),
        "criterion_options": dict(cctx.options),
        "calibration": source.describe() if isinstance(source, CalibrationSource) else None,
        "criterion_notes": list(cctx.notes),
        "compensated_weights": sorted(updates),
        "groups": _group_report(analysis, plan),
    }


def _as_given(model: ModelInput) -> onnx.ModelProto | str | os.PathLike[str]:
    """What the checks load as the input: the file or proto as given (a ModelGraph exported)."""
    return model.to_onnx() if isinstance(model, ModelGraph) else model


def _onnx_check(pruned: onnx.ModelProto, original: ModelInput) -> str:
    """Run the ONNX checker on the pruned model. A failure is an error unless the checker rejects the input
    too (ONNX Runtime ops it does not know, e.g. ``SimplifiedLayerNormalization``, which spa accepted because
    ONNX Runtime loads the input): then ONNX Runtime's load is the check, and the report says so."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
        return "ok"
    except Exception as exc:
        try:
            given = _as_given(original)
            onnx.checker.check_model(given if isinstance(given, onnx.ModelProto) else os.fspath(given),
                                     full_check=True)
        except Exception as orig_exc:  # noqa: BLE001 - the checker raises several types; any failure is the answer
            reason = str(orig_exc).splitlines()[0]
            log.warning("the ONNX checker rejects the pruned model as it rejects the input (%s)", reason)
            return f"skipped: the ONNX checker rejects the input too ({reason})"
        raise ValidationError(f"pruned model fails the ONNX checker: {exc}") from exc


def _ort_check(pruned: onnx.ModelProto, original: ModelInput) -> str:
    """Load the pruned model in ONNX Runtime; if ORT cannot load even the input as given (custom ops,
    kernels it lacks), say the check was skipped instead of failing. A pruned model ONNX Runtime refuses
    while it loads the input is a :class:`ValidationError`."""
    try:
        session(pruned)
        return "ok"
    except ValidationError as exc:
        try:
            session(_as_given(original))
        except ValidationError as orig_exc:
            log.warning("ONNX Runtime check skipped: it cannot load the input either (%s)", orig_exc)
            return f"skipped: ONNX Runtime cannot load the input either ({orig_exc})"
        raise ValidationError(f"the pruned model does not load in ONNX Runtime, though the input does: "
                              f"{str(exc).removeprefix('ONNX Runtime cannot load the model: ')}") from exc


def bench(models: Sequence[str | os.PathLike[str]], **options: Any) -> dict[str, Any]:
    """Benchmark model files in ONNX Runtime (the Python face of ``spa bench``).

    Args:
        models: paths; the first is the baseline for speedups.
        **options: fields of :class:`spa.bench.report.BenchOptions` (``provider``, ``batches``, ``shapes``,
            ``warmup``, ``iters``, ``threads``, ``fp16``, ``profile``, ``seed``).

    Returns:
        The JSON-ready report documented in ``docs/bench.md``.
    """
    return bench_models([str(m) for m in models], BenchOptions(**options))


def recover(
    student: onnx.ModelProto | str | os.PathLike[str],
    teacher: onnx.ModelProto | str | os.PathLike[str],
    data: object,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    **options: Any,
) -> RecoverResult:
    """Recover a pruned model's accuracy by distillation from the model it was pruned from.

    Trains only the float initializers of ``student`` (weights, biases, normalisation scales) to match
    ``teacher``'s outputs on ``data`` (as ``--calib``: a path to an ``.npz``/``.npy``/image folder,
    arrays, ``"random"``); the result is ``student`` node for node. Needs the ``recover`` extra (torch).

    Args:
        student: the pruned model (path or ModelProto; never modified).
        teacher: the original model.
        data: training inputs (no labels needed).
        output: write the recovered model here (atomically); must differ from both inputs.
        progress: called after each step with ``(step, steps, loss)``.
        **options: fields of :class:`~spa.recover.train.RecoverOptions` (``steps``, ``lr``, ``batch``,
            ``labels``, ``task_loss``, ``device``, ``seed``, ``checkpoint``, ``resume``, ...).

    Returns:
        a :class:`~spa.recover.train.RecoverResult` (``.model``, ``.losses``, ``.to_json()``).
    """
    try:
        opts = RecoverOptions(**options)
    except TypeError as exc:
        raise UsageError(f"spa.recover: {exc}") from None
    if output is not None:
        out = Path(output).resolve()
        for given in (student, teacher):
            if isinstance(given, (str, os.PathLike)) and Path(given).resolve() == out:
                raise UsageError(f"the output {output} is an input; choose another path")
    s = student if isinstance(student, onnx.ModelProto) else load_model(student)
    t = teacher if isinstance(teacher, onnx.ModelProto) else load_model(teacher)
    result = _recover(s, t, data, opts, progress=progress)
    if output is not None:
        save_model(result.model, output)
    return result
