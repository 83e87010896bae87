"""``obs``: Optimal Brain Surgeon scores and weight compensation from calibration data.

For every consumer of a group (see :mod:`spa.criteria.consumers`) the calibration run collects
``H = XᵀX/n`` of its unfolded input (:mod:`spa.calibration.stats`). A channel's score in that consumer
is the OBS error of removing its columns alone, ``E(M_c) = tr(W[:,M_c] (H⁻¹[M_c,M_c])⁻¹ W[:,M_c]ᵀ)``
(:mod:`spa.criteria.obs_math`); the group score reduces over consumers (``sum`` by default) and the
plan removes the lowest. After the plan, :meth:`OBS.compensate` updates each consumer's surviving
columns jointly for all removed channels, ``W ← W − W[:,M] (H⁻¹[M,M])⁻¹ H⁻¹[M,:]`` — the
least-squares reconstruction of the layer's original output from the kept inputs. ``H`` is damped
with ``λ = damp · mean(diag H)`` (``ctx.options["damp"]``, default 0.01).

Biases are left alone unless ``ctx.options["obs_intercept"]`` is set: then, for consumers that can
absorb a shift of their output (a bias of their own, or the running mean of the BatchNorm that alone
reads their output), scores and update use the *centred* ``H − μμᵀ`` and the bias takes the mean of
what the update changed, ``(W − W')·μ`` — least squares with an intercept.

Consumers without a matrix view (grouped ConvTranspose, batched MatMul weights, inputs too large to unfold)
are scored by magnitude (``H = I``) and not updated; groups without any consumer fall back to ``l2``.
Both are reported in ``ctx.notes``. The helpers here are shared with the data-free ``obspa``, which
collects the same statistics on synthetic inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.calibration.stats import SecondMoment
from spa.criteria import calibrated
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.consumers import Consumer, Fallback, Views, fallback_errors
from spa.criteria.magnitude import magnitude_scores
from spa.criteria.obs_math import DEFAULT_DAMP, channel_errors, damped_inverse, obs_update
from spa.criteria.reduce import finish
from spa.plan import Plan

Stats = dict[tuple[object, ...], SecondMoment]


def l2_fallback(analysis: Analysis, ctx: CriterionContext, who: str, gid: int,
                why: str = "has no consumer layer") -> np.ndarray:
    """The ``l2`` magnitude score of group ``gid`` (noted in ``ctx`` with ``why``)."""
    cache: dict[str, object] = ctx.cache
    if "l2" not in cache:
        cache["l2"] = magnitude_scores(analysis, "l2")
    ctx.note(f"{who}: group {gid} ({analysis.groups[gid].label}) {why}; scored by l2")
    return cache["l2"][gid]  # type: ignore[index,no-any-return]


#: a consumer's score of every channel of its group: (consumer, its weight as ``W``, channels) → scores
ConsumerScore = Callable[[Consumer, np.ndarray, int], np.ndarray]


def per_consumer(analysis: Analysis, ctx: CriterionContext, who: str, views: Views, each: ConsumerScore,
                 fallback: Callable[[Fallback, int], np.ndarray] | None = None) -> dict[int, list[np.ndarray]]:
    """Per group, ``each(c, W, channels)`` of every consumer ``c`` (``W`` its weight seen as ``y = W x``),
    ``fallback(fb, channels)`` of every consumer without a view (default: the OBS error with ``H = I``,
    :func:`~spa.criteria.consumers.fallback_errors`); a group without consumers gets the l2 score."""
    out: dict[int, list[np.ndarray]] = {}
    for gid, vs in views.items():
        channels = analysis.groups[gid].channels
        parts = []
        for c in vs:
            if isinstance(c, Fallback):
                parts.append(fallback(c, channels) if fallback is not None else fallback_errors(analysis, c, channels))
            else:
                parts.append(each(c, c.matrix(calibrated.weight(analysis, c.weight)), channels))
        out[gid] = parts or [l2_fallback(analysis, ctx, who, gid)]
    return out


@dataclass(frozen=True)
class Surgeon:
    """OBS scores and updates for one set of input statistics.

    Attributes:
        who: the criterion name (for notes and cache keys).
        stats: ``H`` accumulators keyed by :attr:`Consumer.stats_key`.
        intercept: centre ``H`` and move the mean of the change into the bias where one can take it.
    """

    who: str
    stats: Stats
    intercept: bool

    def _centred(self, c: Consumer) -> bool:
        return self.intercept and c.bias is not None

    def hinv(self, ctx: CriterionContext, c: Consumer, g: int) -> np.ndarray:
        """Damped ``H⁻¹`` (centred when :meth:`_centred`) of block ``g`` of ``c``'s input, cached."""
        cache: dict[tuple[object, ...], np.ndarray] = ctx.cache.setdefault(f"{self.who}_hinv", {})  # type: ignore[assignment]
        key = (c.stats_key, g, self._centred(c))
        if key not in cache:
            sm = self.stats[c.stats_key]
            h = sm.block(g)
            if self._centred(c):
                mu = sm.mean[c.blocks[g].features]
                h = h - np.outer(mu, mu)
            cache[key] = damped_inverse(h, float(ctx.options.get("damp") or DEFAULT_DAMP))  # type: ignore[arg-type]
        return cache[key]

    def members(self, analysis: Analysis, ctx: CriterionContext,
                views: Views) -> dict[int, list[np.ndarray]]:
        """Per group, every consumer's OBS error of each channel removed alone (summed over its blocks)."""

        def errors(c: Consumer, wm: np.ndarray, channels: int) -> np.ndarray:
            e = np.zeros(channels)
            for g, block in enumerate(c.blocks):
                e += channel_errors(wm[block.rows], self.hinv(ctx, c, g), c.col_labels, channels)
            return e

        return per_consumer(analysis, ctx, self.who, views, errors)

    def updates(self, analysis: Analysis, plan: Plan, ctx: CriterionContext,
                views: Views) -> Updates:
        """The OBS update of every consumer of every pruned group (and bias shifts with ``intercept``)."""
        updates: Updates = {}
        for c, cols in calibrated.pruned_consumers(plan, views):
            if c.shared:
                ctx.note(f"{self.who}: weight '{c.weight}' is shared by several nodes; not compensated")
                continue
            w = calibrated.weight(analysis, c.weight, updates)
            wm = c.matrix(w)
            new = wm.copy()
            delta = np.zeros(wm.shape[0])
            for g, block in enumerate(c.blocks):
                new[block.rows] = obs_update(wm[block.rows], self.hinv(ctx, c, g), cols)
                if self._centred(c):
                    mu = self.stats[c.stats_key].mean[block.features]
                    delta[block.rows] = (wm[block.rows] - new[block.rows]) @ mu
            if self._centred(c):
                calibrated.add_to_bias(analysis, c, delta, updates)
            updates[c.weight] = c.unmatrix(new, w).astype(np.asarray(w).dtype)
        return updates


@dataclass(frozen=True)
class OBS:
    """Calibrated Optimal Brain Surgeon."""

    name: str = "obs"

    def _surgeon(self, analysis: Analysis, ctx: CriterionContext) -> tuple[Surgeon, Views]:
        views = calibrated.consumers(analysis, ctx, self.name)
        real = [c for vs in views.values() for c in vs if isinstance(c, Consumer)]
        stats = calibrated.second_moments(analysis, ctx, self.name, real)
        return Surgeon(self.name, stats, bool(ctx.options.get("obs_intercept"))), views

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        surgeon, views = self._surgeon(analysis, ctx)
        return finish(surgeon.members(analysis, ctx, views), ctx)

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        surgeon, views = self._surgeon(analysis, ctx)
        return surgeon.updates(analysis, plan, ctx, views)
