"""What the data-aware criteria share: the calibration source, the consumers of every group, and the
statistics of their inputs — computed once per prune and kept in ``ctx.cache`` so that ``score`` and
``compensate`` read the data a single time.

``ctx.calibration`` is anything :func:`~spa.calibration.load_calibration` accepts (``spa.prune`` resolves
it first). Options read from ``ctx.options``: ``damp`` (OBS damping, default 0.01), ``max_features``
(largest unfolded input an ``H`` is built for, default 8192), ``threads`` (ONNX Runtime threads,
default 1), ``synthetic_samples`` (random inputs for synthetic statistics, default 128),
``synthetic_spectrum`` (their ``1/f^s`` exponent on image and signal inputs, default 1; 0: white noise),
``synthetic_rows`` (unfolded rows per synthetic batch each ``H`` is accumulated from, default 4096).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import onnx

from spa.analysis.groups import Analysis
from spa.calibration.data import CalibrationError, CalibrationSource, RandomSource
from spa.calibration.load import load_calibration
from spa.calibration.stats import Accumulator, FeatureMoments, SecondMoment, collect
from spa.calibration.synthetic import batch_norm_model
from spa.criteria.base import CriterionContext
from spa.criteria.consumers import Consumer, Fallback, Views, group_consumers
from spa.errors import UsageError
from spa.graph.save import is_large
from spa.plan import Plan
from spa.rules.conv import conv_channels

MAX_FEATURES = 8192
SYNTHETIC_SAMPLES = 128
SYNTHETIC_BATCH = 32
#: amplitude-spectrum exponent of synthetic image/signal inputs (``1/f``: natural images)
SYNTHETIC_SPECTRUM = 1.0
#: unfolded input rows per synthetic batch an ``H`` is accumulated from (a seeded sample of the positions)
SYNTHETIC_ROWS = 4096


def source(ctx: CriterionContext, who: str, *, required: bool = True) -> CalibrationSource | None:
    """The calibration source of ``ctx`` (resolved once).

    Raises:
        UsageError: ``required`` and no calibration data was given.
    """
    if "source" not in ctx.cache:
        ctx.cache["source"] = load_calibration(ctx.calibration, seed=ctx.seed)
    src = ctx.cache["source"]
    if src is None and required:
        raise UsageError(f"criterion '{who}' needs calibration data: give --calib PATH (a .npz, .npy or image "
                         "folder) or --calib random for synthetic inputs (calibration= in Python)")
    return src  # type: ignore[return-value]


def required_source(ctx: CriterionContext, who: str) -> CalibrationSource:
    """The calibration source of ``ctx``.

    Raises:
        UsageError: no calibration data was given.
    """
    src = source(ctx, who)
    if src is None:  # source() raises first; this states it for the type checker
        raise UsageError(f"criterion '{who}' needs calibration data: give --calib PATH or --calib random")
    return src


def fallback_source(ctx: CriterionContext) -> CalibrationSource:
    """The user's calibration data if any, else seeded random inputs."""
    return source(ctx, "", required=False) or RandomSource(samples=32, batch_size=8, seed=ctx.seed,
                                                           shapes=sample_shapes(ctx))


def sample_shapes(ctx: CriterionContext) -> dict[str, tuple[int, ...]] | None:
    """The user's input shapes (``--shape``) without their batch axis, for random inputs (None: not given)."""
    return {k: tuple(v[1:]) for k, v in ctx.shapes.items() if len(v)} if ctx.shapes else None


def model_proto(analysis: Analysis, ctx: CriterionContext) -> onnx.ModelProto:
    """The analysed (normalised) model as a ModelProto, exported once."""
    if "model" not in ctx.cache:
        ctx.cache["model"] = analysis.model.to_onnx()
    return ctx.cache["model"]  # type: ignore[return-value]


def consumers(analysis: Analysis, ctx: CriterionContext, who: str) -> Views:
    """The consumers of every prunable group; oversize or unhandled ones become fallbacks (noted)."""
    key = "consumers"
    if key not in ctx.cache:
        limit = int(ctx.options.get("max_features") or MAX_FEATURES)  # type: ignore[call-overload]
        out: Views = {}
        for gid in analysis.labelled_groups():
            views = []
            for c in group_consumers(analysis, gid):
                if isinstance(c, Consumer) and c.features > limit:
                    c = Fallback(c.weight, c.axis, c.labels,
                                 f"{c.op} '{c.node}' reads {c.features} unfolded features (limit {limit})")
                views.append(c)
            out[gid] = views
        ctx.cache[key] = out
    result: Views = ctx.cache[key]  # type: ignore[assignment]
    for views in result.values():
        for c in views:
            if isinstance(c, Fallback):
                ctx.note(f"{who}: {c.reason}: weight '{c.weight}' scored by weight magnitude, not compensated")
    return result


def collect_stats(analysis: Analysis, ctx: CriterionContext, src: CalibrationSource,
                  accs: dict[str, list[Accumulator]], desc: str, *, synthetic: bool = False) -> None:
    """Run the model once over ``src`` feeding ``accs`` (``synthetic``: the batch-statistics copy)."""
    if not accs:
        return
    threads = int(ctx.options.get("threads") or 1)  # type: ignore[call-overload]
    if synthetic:
        if "synthetic_model" not in ctx.cache:
            ctx.cache["synthetic_model"] = batch_norm_model(model_proto(analysis, ctx))
        model = ctx.cache["synthetic_model"]
    else:  # a large model runs weight-fed from its (memory-mapped) weights: no export, no copies
        model = analysis.model if is_large(analysis.model) else model_proto(analysis, ctx)
    collect(model, src, accs, desc=desc, threads=threads, check_batching=not synthetic,  # type: ignore[arg-type]
            executor=ctx.executor)


def synthetic_source(analysis: Analysis, ctx: CriterionContext) -> RandomSource:
    """Seeded random inputs for synthetic statistics (``synthetic_samples``, default 128, batches of 32).

    Signal inputs — images (rank 4) and the inputs a Conv reads — get ``1/f^s`` noise, ``s`` the option
    ``synthetic_spectrum`` (default :data:`SYNTHETIC_SPECTRUM`; 0: white noise everywhere): natural images and
    signals have most of their energy at low spatial frequencies, and white noise drives a trained
    network's filters far from the activations its data gives (``tools/bench_quality.py``: a BN-folded
    U-Net kept 0.44 of its mean IoU at MACs 0.7 with white noise, 0.97 with ``1/f``).
    """
    samples = int(ctx.options.get("synthetic_samples") or SYNTHETIC_SAMPLES)  # type: ignore[call-overload]
    raw = ctx.options.get("synthetic_spectrum")
    exponent = SYNTHETIC_SPECTRUM if raw is None else float(raw)  # type: ignore[arg-type]
    signals = {t.name: exponent for t in analysis.model.graph.inputs
               if len(t.shape or ()) == 4 or (len(t.shape or ()) == 3 and conv_channels(t) is not None)}
    return RandomSource(samples=samples, batch_size=min(SYNTHETIC_BATCH, samples), seed=ctx.seed,
                        shapes=sample_shapes(ctx), spectrum=signals)


def second_moments(analysis: Analysis, ctx: CriterionContext, who: str, views: Iterable[Consumer], *,
                   synthetic: bool = False) -> dict[tuple[object, ...], SecondMoment]:
    """``XᵀX/n`` of every consumer's (unfolded) input, keyed by :attr:`Consumer.stats_key`.

    On the calibration data, or (``synthetic``) on seeded random inputs through the model with its
    BatchNorms normalising by batch statistics (:mod:`spa.calibration.synthetic`).
    """
    name = "synthetic_moments" if synthetic else "second_moments"
    rows = int(ctx.options.get("synthetic_rows") or SYNTHETIC_ROWS) if synthetic else None  # type: ignore[call-overload]
    cache: dict[tuple[object, ...], SecondMoment] = ctx.cache.setdefault(name, {})  # type: ignore[assignment]
    accs: dict[str, list[Accumulator]] = {}
    for c in views:
        if c.stats_key not in cache:
            cache[c.stats_key] = SecondMoment(c.rows_of, c.features, len(c.blocks), rows)
            accs.setdefault(c.input, []).append(cache[c.stats_key])
    if accs:
        src = synthetic_source(analysis, ctx) if synthetic else required_source(ctx, who)
        try:
            collect_stats(analysis, ctx, src, accs, f"{who}: input statistics", synthetic=synthetic)
        except CalibrationError:
            if not synthetic:
                raise
            # a graph with the batch fixed in a Reshape runs one sample at a time only
            ctx.note(f"{who}: the model does not run batched; synthetic statistics use one sample per run")
            for c in views:
                if c.stats_key in cache and any(a is cache[c.stats_key] for a in accs.get(c.input, [])):
                    fresh = SecondMoment(c.rows_of, c.features, len(c.blocks), rows)
                    accs[c.input] = [fresh if a is cache[c.stats_key] else a for a in accs[c.input]]
                    cache[c.stats_key] = fresh
            single = replace(src, batch_size=1)  # type: ignore[type-var]
            collect_stats(analysis, ctx, single, accs, f"{who}: input statistics", synthetic=synthetic)
    return cache


def feature_moments(analysis: Analysis, ctx: CriterionContext, who: str, views: Iterable[Consumer],
                    src: CalibrationSource) -> dict[tuple[str, int], FeatureMoments]:
    """Per-feature mean/variance/RMS of every consumer's input, keyed by (tensor, feature axis)."""
    cache: dict[tuple[str, int], FeatureMoments] = ctx.cache.setdefault("feature_moments", {})  # type: ignore[assignment]
    accs: dict[str, list[Accumulator]] = {}
    for c in views:
        key = (c.input, c.input_axis)
        if key not in cache:
            cache[key] = FeatureMoments(c.input_axis)
            accs.setdefault(c.input, []).append(cache[key])
    collect_stats(analysis, ctx, src, accs, f"{who}: channel statistics")
    return cache


def weight(analysis: Analysis, name: str, updates: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Current value of an initializer (an earlier update if there is one)."""
    if updates and name in updates:
        return updates[name]
    return np.asarray(analysis.weight(name))


def pruned_consumers(plan: Plan, views: Views) -> Iterator[tuple[Consumer, np.ndarray]]:
    """Every consumer view of a pruned group that loses columns, with those columns."""
    for gp in plan.groups:
        removed = removed_mask(gp.channels, gp.removed)
        for c in views.get(gp.group, []):
            if isinstance(c, Consumer):
                cols = np.flatnonzero(removed[c.col_labels])
                if cols.size:
                    yield c, cols


def removed_mask(channels: int, removed: Iterable[int]) -> np.ndarray:
    """Boolean mask of the removed channels."""
    mask = np.zeros(channels, dtype=bool)
    mask[list(removed)] = True
    return mask


def add_to_bias(analysis: Analysis, c: Consumer, delta: np.ndarray, updates: dict[str, np.ndarray]) -> None:
    """Absorb a shift ``delta`` (one value per output row) of the consumer's output into its bias."""
    if c.bias is None:
        raise UsageError(f"{c.op} '{c.node}' has no bias to absorb the removed channels' shift: check "
                         "`consumer.bias is not None` before calling add_to_bias (see spa.criteria.flap)")
    b = np.array(weight(analysis, c.bias.name, updates), dtype=np.float64, copy=True)
    b += c.bias.scale * delta  # broadcast along the last axis
    updates[c.bias.name] = b.astype(np.asarray(weight(analysis, c.bias.name)).dtype)


def removed_mean_shift(c: Consumer, wm: np.ndarray, mean: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """What the removed columns ``cols`` add to the output on average: ``W[:, cols] · E[x_cols]``.

    ``mean`` holds the mean of every input element along the feature axis (per channel for a conv).
    """
    delta = np.zeros(wm.shape[0])
    for block in c.blocks:
        delta[block.rows] = wm[block.rows][:, cols] @ mean[block.elements][cols]
    return delta
