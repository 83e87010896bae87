"""``taylor`` and ``snip``: gradient criteria (calibrated; need the ``recover`` extra, torch).

A channel's score is the first-order change of a label-free loss when the channel is removed, measured
by a gate ``m_c = 1`` multiplied into the channel where it leaves its group: per sample ``n``,
``g_{n,c} = ∂L_n/∂m_c = Σ_e ∂L_n/∂a_e · a_e`` over the channel's gated elements ``e``.

* ``taylor`` (Molchanov et al. 2017/2019): ``(1/N) Σ_n |g_{n,c}|``;
* ``snip`` (Lee et al. 2019, a channel mask): ``|Σ_n g_{n,c}| / N``.

The loss (pseudo-label cross-entropy on class-like outputs) and the gates are defined in
:mod:`spa.recover.saliency`, which runs the model in torch. Criteria sit below the torch executor in the
layers, so the executor is handed in as ``ctx.gradients`` by :mod:`spa.api` (dependency inversion);
this module reduces nothing (the gate already sums a channel over the whole group) and normalises as the
other criteria do. A group no gate reaches (its channels never leave it before an output) gets its l2
score, noted. Compensates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from spa.analysis.groups import Analysis
from spa.criteria import calibrated
from spa.criteria.base import CriterionContext, Scores, Updates
from spa.criteria.magnitude import magnitude_scores
from spa.criteria.reduce import normalize, options
from spa.errors import UsageError
from spa.plan import Plan


@dataclass(frozen=True)
class Gradient:
    """``taylor`` or ``snip`` scores from the injected gradient saliency."""

    name: str

    def score(self, analysis: Analysis, ctx: CriterionContext) -> Scores:
        src = calibrated.required_source(ctx, self.name)
        if ctx.gradients is None:
            raise UsageError(f"criterion '{self.name}' needs the torch executor: prune through spa.prune "
                             "(the CLI or the Python API), with pip install 'spa[recover]'")
        raw = ctx.gradients(analysis, calibrated.model_proto(analysis, ctx), src, self.name)
        _, norm = options(ctx)
        missing = [gid for gid in analysis.labelled_groups() if gid not in raw]
        if missing:
            ctx.note(f"{self.name}: {len(missing)} group(s) no gradient reaches scored by l2 magnitude")
            raw = raw | {gid: s for gid, s in magnitude_scores(analysis, "l2").items() if gid in missing}
        return {gid: normalize(raw[gid], norm) for gid in analysis.labelled_groups()}

    def compensate(self, analysis: Analysis, plan: Plan, ctx: CriterionContext) -> Updates:
        return {}
