"""``obspa``: data-free OBS — input statistics without calibration data.

Two ways to get each consumer's input second moment ``H`` without data (``ctx.options["obspa_h"]``):

* ``synthetic`` (default): seeded random inputs — ``1/f`` noise on image and signal inputs, white noise
  elsewhere (:func:`~spa.criteria.calibrated.synthetic_source`), at the sizes ``--shape`` gives or else the
  first the model runs at (a text detector's multiples of 32, a face-proposal net's 12 × 12 minimum) — run
  through a copy of the model whose BatchNorms normalise with the batch's own statistics
  (:mod:`spa.calibration.synthetic`). Every BN output then
  has the per-channel mean ``β`` and variance ``γ²`` the trained network saw on its data, while the
  correlations between channels and between neighbouring positions come from the network's own
  filters. ``H = XᵀX/n`` of the consumers' unfolded inputs is collected on these activations, and the
  criterion is OBS (:class:`~spa.criteria.obs.Surgeon`) *with an intercept*: for consumers that can
  absorb a shift of their output (their own bias, or the running mean of the BatchNorm that alone reads
  their output) scores and update use the centred ``H − μμᵀ``, and the bias takes ``(W − W')·μ``.
* ``diag`` (closed form, no run at all): ``μ`` and ``σ²`` per channel from the BN parameters pushed
  through the activations (:mod:`spa.criteria.propagate`), ``H ≈ diag(σ²) + μμᵀ`` (replicated over the
  ``k×k`` taps of a conv), scores in closed form
  (:func:`~spa.criteria.obs_math.diag_rank1_channel_errors`), and compensation moves the removed
  channels' mean contribution ``Σ_{c removed} Σ_taps W[:, c, taps]·μ_c`` into the bias.

Why ``synthetic`` is the default: with a diagonal ``H`` the kept channels cannot stand in for the
removed ones, so only the mean is compensated and accuracy without fine-tuning falls almost as fast
as with ``l2`` (see ``tools/bench_criteria.py``); most of what OBS recovers comes from correlations,
across channels and across kernel taps, which the synthetic activations carry.

On a BatchNorm-folded export (no running statistics anywhere) the synthetic activations are all the
criterion has: ``1/f`` inputs, whose energy sits at low spatial frequencies like natural images', keep
them close to what the data gives, where white noise drives the first filters far from it
(``tools/bench_quality.py --fold-bn``: the folded U-Net keeps 0.97 of its mean IoU at MACs 0.7 with
``1/f`` inputs, 0.44 with white noise, 0.36 with ``l2``).

In both modes a consumer input with no BatchNorm statistics right upstream (a graph input, a conv
without BN, an SE gate) is noted; ``synthetic`` then uses whatever the random inputs produce there
(not matched to the trained statistics), ``diag`` measures ``μ, σ²`` on the calibration data when
given, else on seeded random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.analysis.groups import Analysis
from spa.criteria import calibrated
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.consumers import Consumer, Views
from spa.criteria.flap import compensate_means
from spa.criteria.obs import Surgeon, per_consumer
from spa.criteria.obs_math import DEFAULT_DAMP, diag_rank1_channel_errors
from spa.criteria.propagate import tensor_moments
from spa.criteria.reduce import finish
from spa.errors import UsageError
from spa.plan import Plan
from spa.rules.moments import Moments

MODES = ("synthetic", "diag")


@dataclass(frozen=True)
class ObsPA:
    """Data-free OBS."""

    name: str = "obspa"

    def _mode(self, ctx: CriterionContext) -> str:
        mode = str(ctx.options.get("obspa_h") or "synthetic")
        if mode not in MODES:
            raise UsageError(f"obspa_h must be one of {', '.join(MODES)}, got '{mode}'")
        return mode

    def _graph_moments(self, analysis: Analysis, ctx: CriterionContext, views: Views
                       ) -> tuple[dict[tuple[str, int], Moments], dict[tuple[str, int], Consumer]]:
        """BN-derived moments of every consumer input, and the inputs that have none (noted)."""
        tensors = analysis.model.graph.tensors()
        memo: dict[tuple[str, int], object] = {}
        found: dict[tuple[str, int], Moments] = {}
        missing: dict[tuple[str, int], Consumer] = {}
        for c in (c for vs in views.values() for c in vs if isinstance(c, Consumer)):
            key = (c.input, c.input_axis)
            if key in found or key in missing:
                continue
            if c.input not in tensors:  # e.g. a tensor of a subgraph's outer scope
                missing[key] = c
                continue
            m = tensor_moments(tensors[c.input], c.input_axis, memo, registry=analysis.registry,  # type: ignore[arg-type]
                               opset=analysis.model.opset)
            if isinstance(m, Moments):
                found[key] = m
            else:
                missing[key] = c
                ctx.note(f"{self.name}: no BatchNorm statistics for the input of {c.op} '{c.node}' ({m})")
        return found, missing

    def _surgeon(self, analysis: Analysis, ctx: CriterionContext, views: Views) -> Surgeon:
        if "obspa_checked" not in ctx.cache:
            ctx.cache["obspa_checked"] = True
            _, missing = self._graph_moments(analysis, ctx, views)
            if missing:
                ctx.note(f"{self.name}: {len(missing)} consumer input(s) with no BatchNorm right upstream: their "
                         "synthetic statistics are not matched to the trained ones")
        real = [c for vs in views.values() for c in vs if isinstance(c, Consumer)]
        stats = calibrated.second_moments(analysis, ctx, self.name, real, synthetic=True)
        return Surgeon(self.name, stats, intercept=True)

    def _diag_moments(self, analysis: Analysis, ctx: CriterionContext, views: Views
                      ) -> dict[tuple[str, int], Moments]:
        if "obspa_moments" not in ctx.cache:
            out, missing = self._graph_moments(analysis, ctx, views)
            if missing:
                src = calibrated.fallback_source(ctx)
                ctx.note(f"{self.name}: {len(missing)} consumer input(s) measured on {src.describe()} instead")
                stats = calibrated.feature_moments(analysis, ctx, self.name, list(missing.values()), src)
                out.update({k: Moments(stats[k].mean, stats[k].var) for k in missing})
            ctx.cache["obspa_moments"] = out
        return ctx.cache["obspa_moments"]  # type: ignore[return-value]

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        views = calibrated.consumers(analysis, ctx, self.name)
        if self._mode(ctx) == "synthetic":
            return finish(self._surgeon(analysis, ctx, views).members(analysis, ctx, views), ctx)
        moments = self._diag_moments(analysis, ctx, views)
        damp = float(ctx.options.get("damp") or DEFAULT_DAMP)  # type: ignore[arg-type]

        def errors(c: Consumer, wm: np.ndarray, channels: int) -> np.ndarray:
            m = moments[(c.input, c.input_axis)]
            e = np.zeros(channels)
            for block in c.blocks:
                mu, var = m.mean[block.elements], m.var[block.elements]
                lam = damp * float(np.mean(var + mu * mu)) or damp
                e += diag_rank1_channel_errors(wm[block.rows], var + lam, mu, c.col_labels, channels)
            return e

        return finish(per_consumer(analysis, ctx, self.name, views, errors), ctx)

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        views = calibrated.consumers(analysis, ctx, self.name)
        if self._mode(ctx) == "synthetic":
            return self._surgeon(analysis, ctx, views).updates(analysis, plan, ctx, views)
        moments = self._diag_moments(analysis, ctx, views)
        return compensate_means(analysis, plan, ctx, self.name, {k: m.mean for k, m in moments.items()})
