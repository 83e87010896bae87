"""Turn scores and a budget into a :class:`Plan`: which channels of which group to remove.

Budgets:

* uniform (default): every prunable group removes ``round(ratio * C)`` of its ``C`` channels, the
  lowest-scoring ones;
* global (``global_rank=True``): the lowest ``ratio`` of all prunable channels are removed, at most
  ``max_ratio`` of any group. Scores are compared as the criterion normalised them per group
  (``--normalize``: by the group's mean by default, LAMP for ``lamp``; see :mod:`spa.criteria.reduce`) —
  the plan does not normalise them again.

Then, per group: kept counts are rounded to multiples of ``round_to``, never below ``min_channels``
(nor below 1), and every slot keeps at least one element (a Concat input or Split output may not
vanish).

>>> _round_kept(37, 64, 8), _round_kept(3, 64, 8), _round_kept(5, 6, 8)
(40, 8, 6)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from spa.analysis.groups import Analysis, Group
from spa.errors import UsageError


@dataclass(frozen=True)
class ConsumerKeep:
    """Unconstrained pruning: the channels one consumer weight reads, and how its input is narrowed.

    Attributes:
        tensor, axis: the consumer's weight slot (e.g. a Conv weight's axis 1).
        node: the consumer node.
        kept: channels (group channel indices) this consumer reads — a subset of the group's kept ones.
        mode: ``slice`` (its channels are contiguous in the exported layout), ``gather`` (a copy of the
            selected channels) or ``zero`` (it reads every kept channel; weights of the others are zero).
    """

    tensor: str
    axis: int
    node: str
    kept: tuple[int, ...]
    mode: str = "gather"


@dataclass(frozen=True)
class GroupPlan:
    """Channels removed from one group (channel indices, sorted).

    Attributes:
        group: the group id.
        channels: its channel count.
        removed: channels removed from every slot (constrained) or from the shared tensors
            (unconstrained: those no consumer reads).
        consumers: unconstrained only: what each consumer reads.
        order: exported channel order of the kept channels (UPSCALE reordering); empty = index order.
            Only the order *inside* each movable block counts (:mod:`spa.reorder.blocks`): a channel
            never moves across a Concat's producer blocks, and frozen blocks keep index order.
    """

    group: int
    channels: int
    removed: tuple[int, ...]
    consumers: tuple[ConsumerKeep, ...] = ()
    order: tuple[int, ...] = ()

    @property
    def kept(self) -> int:
        """Channels left."""
        return self.channels - len(self.removed)


@dataclass(frozen=True)
class Plan:
    """What to remove, and the options that produced it."""

    groups: tuple[GroupPlan, ...]
    ratio: float
    criterion: str
    global_rank: bool
    round_to: int | str
    ignored: tuple[int, ...]

    def removed(self, gid: int) -> tuple[int, ...]:
        """Removed channels of a group (empty when untouched)."""
        for gp in self.groups:
            if gp.group == gid:
                return gp.removed
        return ()

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable dict."""
        return {
            "ratio": self.ratio,
            "criterion": self.criterion,
            "global": self.global_rank,
            "round_to": self.round_to,
            "ignored_groups": list(self.ignored),
            "groups": [asdict(g) | {"kept": g.kept} for g in self.groups],
            "unconstrained": any(g.consumers for g in self.groups),
        }


def _round_kept(kept: int, channels: int, round_to: int) -> int:
    if round_to <= 1:
        return kept
    if channels <= round_to:
        return channels
    return min(channels, max(round_to, int(round(kept / round_to)) * round_to))


def _matches(group: Group, patterns: Sequence[str]) -> bool:
    names = [m.tensor for m in group.members] + list(group.nodes)
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _keep_every_slot(removed: set[int], classes: dict, scores: np.ndarray) -> set[int]:  # type: ignore[type-arg]
    """Restore the best removed channel of any slot that would lose all its elements."""
    changed = True
    while changed:
        changed = False
        for labels in classes.values():
            present = set(np.unique(labels).tolist())
            if present and present <= removed:
                best = max(present, key=lambda c: (scores[c], -c))
                removed.discard(best)
                changed = True
    return removed


def _rounding(round_to: int | str) -> int:
    """The multiple counts are rounded to here: ``round_to`` itself, or 1 for ``"latency"`` (the exact
    counts, which :mod:`spa.latency.counts` then moves by the latency table)."""
    if isinstance(round_to, str):
        if round_to != "latency":
            raise UsageError(f"--round-to must be an integer or 'latency' here, got {round_to!r}")
        return 1
    return round_to


def _check_options(ratio: float, round_to: int, min_channels: int, max_ratio: float) -> None:
    """Refuse a ratio outside [0, 1), a ``round_to`` or ``min_channels`` below 1, a ``max_ratio`` outside (0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--ratio must be in [0, 1), got {ratio}")
    if round_to < 1 or min_channels < 1:
        raise UsageError("--round-to and --min-channels must be >= 1")
    if not 0.0 < max_ratio < 1.0:
        raise UsageError(f"--max-ratio must be in (0, 1), got {max_ratio}")


def _ignored_groups(analysis: Analysis, ignore: Sequence[str],
                    kind_ratio: Mapping[str, float | None]) -> tuple[int, ...]:
    """Ids of the prunable groups left alone: matched by an ``ignore`` pattern, or of a kind whose ratio is None."""
    return tuple(g.id for g in analysis.prunable
                 if (ignore and _matches(g, ignore)) or (g.kind in kind_ratio and kind_ratio[g.kind] is None))


def _override_ratios(candidates: Sequence[Group], overrides: Sequence[tuple[str, float]],
                     kind_ratio: Mapping[str, float | None]) -> dict[int, float]:
    """The ratio of every group that does not follow the budget: the first matching pattern's, else its kind's.

    Raises:
        UsageError: an override or kind ratio outside [0, 1).
    """
    override_ratio: dict[int, float] = {}
    for pattern, r in overrides:
        if not 0.0 <= r < 1.0:
            raise UsageError(f"override '{pattern}': ratio must be in [0, 1), got {r}")
        for g in candidates:
            if g.id not in override_ratio and _matches(g, [pattern]):
                override_ratio[g.id] = r
    for g in candidates:
        r_kind = kind_ratio.get(g.kind)
        if r_kind is not None and g.id not in override_ratio:
            if not 0.0 <= r_kind < 1.0:
                raise UsageError(f"ratio for {g.kind} groups must be in [0, 1), got {r_kind}")
            override_ratio[g.id] = r_kind
    return override_ratio


def _kept_count(channels: int, ratio: float) -> int:
    """Channels a group of ``C`` keeps when it removes its own share: ``C - round(ratio * C)``."""
    return channels - int(round(ratio * channels))


def _global_kept(active: Sequence[Group], scores: Mapping[int, np.ndarray], ratio: float, max_ratio: float,
                 min_channels: int) -> dict[int, int]:
    """Channels each group keeps under one global ranking.

    The budget is ``round(ratio * sum C)`` channels, taken lowest score first (ties: group id, then
    channel index) while a group has lost fewer than ``min(int(max_ratio * C), C - min_channels)``.
    """
    entries = []
    for g in active:
        entries += [(float(v), g.id, c) for c, v in enumerate(scores[g.id])]
    entries.sort()
    budget = int(round(ratio * sum(g.channels for g in active)))
    cap = {g.id: min(int(max_ratio * g.channels), g.channels - min_channels) for g in active}
    taken = {g.id: 0 for g in active}
    for _, gid, _c in entries:
        if budget <= 0:
            break
        if taken[gid] < cap[gid]:
            taken[gid] += 1
            budget -= 1
    return {g.id: g.channels - taken[g.id] for g in active}


def _removed_channels(group: Group, target: int, scores: np.ndarray, classes: dict,  # type: ignore[type-arg]
                      round_to: int, min_channels: int) -> set[int]:
    """The channels one group removes when it should keep ``target``.

    The kept count is rounded (:func:`_round_kept`) and clamped to ``[max(min_channels, 1), C]``; the
    lowest-scoring channels go (ties: lower index first), every slot keeps an element, and with
    ``round_to > 1`` the best removed channels come back until the kept count is a multiple again.
    """
    kept = _round_kept(target, group.channels, round_to)
    kept = min(group.channels, max(kept, min_channels, 1))
    order = np.lexsort((np.arange(len(scores)), scores))  # ascending score, ties by index
    removed = set(order[: group.channels - kept].tolist())
    removed = _keep_every_slot(removed, classes, scores)
    if round_to > 1:  # restoring a slot's channel may break the multiple: restore up to the next one
        by_score = sorted(removed, key=lambda c: (-scores[c], c))
        while by_score and (group.channels - len(removed)) % round_to:
            removed.discard(by_score.pop(0))
    return removed


def make_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    ratio: float,
    *,
    criterion: str = "l2",
    global_rank: bool = False,
    max_ratio: float = 0.9,
    round_to: int | str = 1,
    min_channels: int = 1,
    ignore: Sequence[str] = (),
    overrides: Sequence[tuple[str, float]] = (),
    kind_ratio: Mapping[str, float | None] | None = None,
) -> Plan:
    """Decide the channels to remove.

    Args:
        analysis: the groups.
        scores: channel scores per prunable group (higher is more important).
        ratio: fraction of channels to remove, in [0, 1).
        criterion: name recorded in the plan.
        global_rank: rank across groups instead of per group.
        max_ratio: with ``global_rank``, the most any one group may lose.
        round_to: keep channel counts multiples of this (``"latency"``: exact counts here, recorded as
            ``latency`` for :func:`spa.latency.counts.choose_counts` to move).
        min_channels: keep at least this many channels per group.
        ignore: glob patterns of node or tensor names whose groups are left alone.
        overrides: (glob, ratio) pairs: matching groups use that ratio (uniformly, outside any
            global ranking); the first matching pattern wins.
        kind_ratio: per group kind (``"head"``, ...): the ratio for groups of that kind, or None to
            leave them alone (``--no-prune-heads``). Pattern overrides take precedence.

    Raises:
        UsageError: ratio out of range or invalid options.
    """
    multiple = _rounding(round_to)
    _check_options(ratio, multiple, min_channels, max_ratio)
    kinds = dict(kind_ratio or {})
    ignored = _ignored_groups(analysis, ignore, kinds)
    candidates = [g for g in analysis.prunable if g.id not in ignored and g.id in scores]
    override_ratio = _override_ratios(candidates, overrides, kinds)
    active = [g for g in candidates if g.id not in override_ratio]
    target_kept = {g.id: _kept_count(g.channels, override_ratio[g.id]) for g in candidates if g.id in override_ratio}
    if global_rank:
        target_kept |= _global_kept(active, scores, ratio, max_ratio, min_channels)
    else:
        target_kept |= {g.id: _kept_count(g.channels, ratio) for g in active}
    plans = []
    for g in candidates:
        removed = _removed_channels(g, target_kept[g.id], scores[g.id], analysis.labels(g.id), multiple, min_channels)
        if removed:
            plans.append(GroupPlan(g.id, g.channels, tuple(sorted(removed))))
    return Plan(tuple(plans), ratio, criterion, global_rank, round_to, ignored)


def removed_for_count(analysis: Analysis, gid: int, kept: int, scores: np.ndarray,
                      min_channels: int = 1) -> tuple[int, ...]:
    """The channels group ``gid`` removes when it keeps ``kept`` (its lowest-scoring ones; every slot
    keeps an element, so the count kept may come out higher), sorted."""
    group = analysis.groups[gid]
    return tuple(sorted(_removed_channels(group, kept, scores, analysis.labels(gid), 1, min_channels)))


def with_removed(plan: Plan, removed: Mapping[int, tuple[int, ...]]) -> Plan:
    """``plan`` with the removed channels of some groups replaced (a group removing nothing is dropped)."""
    groups = []
    for gp in plan.groups:
        r = removed.get(gp.group, gp.removed)
        if r:
            groups.append(GroupPlan(gp.group, gp.channels, tuple(r), gp.consumers, gp.order))
    return Plan(tuple(groups), plan.ratio, plan.criterion, plan.global_rank, plan.round_to, plan.ignored)
