"""The Python API: :func:`load`, :func:`analyze`, :func:`prune`, :func:`verify`.

>>> import spa
>>> sorted(spa.__all__)[:3]
['Analysis', 'Group', 'PruneResult']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from spa.analysis.groups import Analysis, analyze_graph
from spa.analysis.cost import count_macs
from spa.bench.metrics import count_params
from spa.budget import solve_latency, solve_ratio
from spa.calibration import load_calibration
from spa.criteria import CriterionContext, get_criterion
from spa.criteria.reduce import options as reduce_options
from spa.errors import UsageError, ValidationError
from spa.graph.io import PROTOBUF_LIMIT, load_model
from spa.graph.save import graph_bytes, save_graph
from spa.graph.model import ModelGraph
from spa.graph.normalize import normalize
from spa.plan import Plan, make_plan
from spa.reorder.cost import choose_modes
from spa.reorder.unconstrained import copies, unconstrain
from spa.surgery import kept_indices, masked_twin, prune_model
from spa.validate.oracle import DEFAULT_ATOL, DEFAULT_RTOL, VerifyResult, compare_models
from spa.validate.runtime import session
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
        return normalize(model)
    proto = load_model(model, external=False)
    return normalize(proto, base_dir=Path(model).parent)


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
            row["kept_per_weight"] = {f"{s.tensor}[{s.axis}]": int(len(k)) for s, k in kept.items()
                                      if analysis.classes[g.id].get(s) is not None}
        rows.append(row)
    return rows


def prune(
    model: ModelInput,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    global_rank: bool = False,
    max_ratio: float = 0.9,
    round_to: int = 1,
    min_channels: int = 1,
    ignore: Sequence[str] = (),
    seed: int = 0,
    emit_masked: bool = False,
    check: bool = True,
    calibration: object | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    overrides: Sequence[tuple[str, float]] = (),
    calib_samples: int | None = None,
    calib_batch: int | None = None,
    calib_preprocess: str | None = None,
    reduction: str | None = None,
    normalize: str | None = None,
    criterion_options: Mapping[str, object] | None = None,
    unconstrained: bool = False,
    reorder: bool = True,
    consumer_mode: str = "layout",
    prune_heads: bool = True,
    head_ratio: float | None = None,
    prune_hidden: bool = False,
    hidden_ratio: float | None = None,
    prune_head_dim: bool = False,
    target_latency: float | None = None,
    providers: list[str] | None = None,
    latency_cache: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune a model.

    Args:
        model: path, ModelProto or ModelGraph (not modified).
        ratio: fraction of channels to remove in [0, 1).
        criterion: a name from :data:`spa.criteria.CRITERIA`: ``l1``, ``l2``, ``random``, ``bn``, ``lamp``,
            ``obspa`` (data-free), ``obs``, ``wanda``, ``flap`` (these three need ``calibration``).
        global_rank: rank channels across groups.
        max_ratio: with ``global_rank``, the most one group may lose.
        round_to: keep channel counts multiples of this.
        min_channels: keep at least this many channels per group.
        ignore: glob patterns of node/tensor names to leave alone.
        seed: seed for random criteria.
        emit_masked: also build the masked twin (for the mask oracle).
        check: run the ONNX checker and load the result in ONNX Runtime.
        calibration: calibration data for data-driven criteria: a path (``.npz`` with one array per
            input, ``.npy``, or a folder of PNG/JPEG images), ``"random"``, arrays, or a source from
            :mod:`spa.calibration`.
        target_macs: instead of ``ratio``, remove channels until MACs fall to this fraction of the
            original (<= 1) or this absolute count (> 1).
        target_params: the same for parameters.
        overrides: (glob, ratio) pairs: groups touching matching names use that ratio.
        prune_heads: prune attention-head groups (``False``: leave every head).
        head_ratio: ratio for attention-head groups (default: ``ratio``).
        prune_hidden: also prune the hidden size (the residual stream of a transformer: groups of kind
            ``hidden``, coupled through LayerNorm/RMSNorm, whose statistics then run over the kept
            channels). Off by default: it changes every normalisation's statistics.
        hidden_ratio: ratio for hidden-size groups (default: ``ratio``).
        prune_head_dim: in every attention block where it is legal, prune V's head_dim (the same dims of
            every head: V's columns and the output projection's rows, groups of kind ``head_dim``) instead
            of the block's heads; blocks where it is not keep their heads (``analysis.notes`` says why).
        target_latency: instead of ``ratio``: the smallest ratio whose latency in ONNX Runtime is at most
            this fraction of the original's (<= 1) or these milliseconds; searched on a per-layer latency
            lookup table, then measured against the original (see ``report["target_latency"]``).
        providers: ONNX Runtime providers that ``target_latency`` and ``consumer_mode="auto"`` measure on
            (CPU by default).
        progress: called with a short description at the start of each stage (the CLI shows it).
        latency_cache: folder of the per-layer latency tables ``target_latency`` measures and reuses
            (default ``$SPA_CACHE_DIR/latency`` or ``~/.cache/spa/latency``).
        unconstrained: UPSCALE-style: consumers of a shared tensor keep their own channel subsets.
        reorder: with ``unconstrained``, lay channels out so consumer subsets are contiguous.
        consumer_mode: with ``unconstrained``, how a consumer reads its subset: ``layout`` (Slice when
            contiguous, else Gather), ``gather``, ``zero`` (full input, zeroed weights) or ``auto``
            (the cheaper of copy and extra MACs, measured in ONNX Runtime).
        calib_samples: use at most this many calibration samples.
        calib_batch: calibration samples per ONNX Runtime run.
        calib_preprocess: image preprocessing, e.g. ``"size=224x224,mean=0.485/0.456/0.406,std=..."``
            (see :meth:`spa.calibration.Preprocess.parse`).
        reduction: how a criterion combines a group's members: ``sum`` (default), ``mean``, ``max``.
        normalize: how scores are normalised per group: ``mean`` (default), ``lamp``, ``zscore``, ``none``.
        criterion_options: further criterion options (e.g. ``damp``, ``obspa_h``; see each criterion).

    Returns:
        A :class:`PruneResult` with the pruned ModelProto, the plan and a JSON report.
    """
    stage = progress or (lambda _what: None)
    crit = get_criterion(criterion)
    stage("loading")
    mg = load(model)
    stage(f"analysing {len(mg.graph.nodes)} nodes")
    analysis = analyze_graph(mg, hidden=prune_hidden, head_dim=prune_head_dim)
    options = dict(criterion_options or {}) | {k: v for k, v in (("reduction", reduction), ("normalize", normalize))
                                                if v is not None}
    source = load_calibration(calibration, samples=calib_samples, batch_size=calib_batch,
                              preprocess=calib_preprocess, seed=seed)
    cctx = CriterionContext(seed=seed, calibration=source, options=options)
    reduce_options(cctx)  # reject unknown names before any work
    stage(f"scoring {len(analysis.prunable)} groups ({criterion})")
    scores = crit.score(analysis, cctx)

    kinds: dict[str, float | None] = {}
    if not prune_heads:
        kinds["head"] = None
    elif head_ratio is not None:
        kinds["head"] = head_ratio
    if hidden_ratio is not None:
        if not prune_hidden:
            raise UsageError("hidden_ratio (--hidden-ratio) needs prune_hidden (--prune-hidden)")
        kinds["hidden"] = hidden_ratio

    def plan_for(r: float) -> Plan:
        return make_plan(analysis, scores, r, criterion=criterion, global_rank=global_rank,
                         max_ratio=max_ratio, round_to=round_to, min_channels=min_channels, ignore=ignore,
                         overrides=overrides, kind_ratio=kinds)

    latency_record: dict[str, object] | None = None
    stage("planning" + (" (measuring latencies)" if target_latency is not None else ""))
    if target_latency is not None:
        plan, latency_record = solve_latency(
            analysis, plan_for, lambda p: prune_model(analysis, p).to_onnx(), target_latency, providers=providers,
            cache_dir=latency_cache)
    elif target_macs is not None or target_params is not None:
        plan = solve_ratio(analysis, plan_for, target_macs=target_macs, target_params=target_params)
    else:
        plan = plan_for(ratio)
    if unconstrained:
        plan = unconstrain(analysis, plan, reorder=reorder)
        plan = choose_modes(analysis, plan, consumer_mode, providers=providers)
    stage(f"pruning {len(plan.groups)} groups")
    updates = crit.compensate(analysis, plan, cctx)
    pruned_mg = prune_model(analysis, plan, updates=updates)
    result_protos: dict[str, onnx.ModelProto] = {}
    if check and graph_bytes(pruned_mg) < PROTOBUF_LIMIT // 2:
        pruned = pruned_mg.to_onnx()
        onnx_check = _onnx_check(pruned, mg)
        stage("checking (ONNX checker, ONNX Runtime)")
        ort_check = _ort_check(pruned, mg)
        result_protos["model"] = pruned
    else:
        onnx_check = ort_check = "not run"
    if emit_masked:
        stage("building the masked twin")
    masked = masked_twin(analysis, plan, updates) if emit_masked else None
    report: dict[str, object] = {
        "spa_version": __version__,
        "criterion": criterion,
        "ratio": plan.ratio,
        "target_macs": target_macs,
        "target_params": target_params,
        "seed": seed,
        "global": global_rank,
        "round_to": round_to,
        "macs_before": count_macs(mg),
        "macs_after": count_macs(pruned_mg),
        "params_before": count_params(mg),
        "params_after": count_params(pruned_mg),
        "num_groups": len(analysis.groups),
        "num_prunable": len(analysis.prunable),
        "num_pruned": len(plan.groups),
        "unconstrained": unconstrained,
        "prune_hidden": prune_hidden,
        "prune_head_dim": prune_head_dim,
        "analysis_notes": analysis.notes,
        "consumer_reads": copies(plan),
        "onnx_check": onnx_check,
        "ort_check": ort_check,
        "target_latency": latency_record,
        "prunable_param_fraction": round(analysis.prunable_param_fraction(), 6),
        "criterion_options": options,
        "calibration": source.describe() if source is not None else None,
        "criterion_notes": list(cctx.notes),
        "compensated_weights": sorted(updates),
        "groups": _group_report(analysis, plan),
    }
    return PruneResult(pruned_mg, plan, analysis, report, masked, _protos=result_protos)


def _onnx_check(pruned: onnx.ModelProto, original: ModelGraph) -> str:
    """Run the ONNX checker on the pruned model. A failure is an error unless the checker rejects the input
    too (ONNX Runtime ops it does not know, e.g. ``SimplifiedLayerNormalization``, which spa accepted because
    ONNX Runtime loads the input): then ONNX Runtime's load is the check, and the report says so."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
        return "ok"
    except Exception as exc:
        try:
            onnx.checker.check_model(original.to_onnx(), full_check=True)
        except Exception as orig_exc:
            reason = str(orig_exc).splitlines()[0]
            log.warning("the ONNX checker rejects the pruned model as it rejects the input (%s)", reason)
            return f"skipped: the ONNX checker rejects the input too ({reason})"
        raise ValidationError(f"pruned model fails the ONNX checker: {exc}") from exc


def _ort_check(pruned: onnx.ModelProto, original: ModelGraph) -> str:
    """Load the pruned model in ONNX Runtime; if ORT cannot load even the original (custom ops, kernels
    it lacks), say the check was skipped instead of failing."""
    try:
        session(pruned)
        return "ok"
    except ValidationError as exc:
        try:
            session(original.to_onnx())
        except ValidationError as orig_exc:
            log.warning("ONNX Runtime check skipped: it cannot load the input either (%s)", orig_exc)
            return f"skipped: ONNX Runtime cannot load the input either ({orig_exc})"
        raise exc


def verify(
    pruned: ModelInput,
    reference: ModelInput,
    *,
    trials: int = 3,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> VerifyResult:
    """Compare a pruned model with its masked twin (the mask oracle) or any reference model."""

    def as_model(m: ModelInput) -> onnx.ModelProto | str | os.PathLike[str]:
        return m.to_onnx() if isinstance(m, ModelGraph) else m

    return compare_models(as_model(pruned), as_model(reference), trials=trials, seed=seed,
                          rtol=rtol, atol=atol, shapes=shapes)


def bench(models: Sequence[str | os.PathLike[str]], **options: Any) -> dict[str, Any]:
    """Benchmark model files in ONNX Runtime (the Python face of ``spa bench``).

    Args:
        models: paths; the first is the baseline for speedups.
        **options: fields of :class:`spa.bench.report.BenchOptions` (``provider``, ``batches``, ``shapes``,
            ``warmup``, ``iters``, ``threads``, ``fp16``, ``profile``, ``seed``).

    Returns:
        The JSON-ready report documented in ``docs/bench.md``.
    """
    from spa.bench.report import BenchOptions, bench_models

    return bench_models([str(m) for m in models], BenchOptions(**options))
