"""Channel counts chosen by latency (``--round-to latency``, the default).

The criterion says how many channels each group keeps (``k``, exact counts: ``--round-to 1``). Exact
counts are rarely the fastest: ONNX Runtime's CPU kernels work on blocks of channels (NCHWc: 8 with
AVX2, 16 with AVX-512), GEMMs on register tiles, CUDA tensor cores on multiples of 8, so 72 channels can
cost what 80 cost, and a depthwise convolution off the block falls back to a slow kernel. This module
moves each group's count to a nearby one that the per-layer latency table (:mod:`spa.latency.lut`) says
is cheaper, while the budget stays where the exact counts put it:

1. **Candidates.** Per pruned channel group (attention-head and hidden-size groups keep their exact
   counts): ``k`` itself and the multiples of the SIMD block around
   it, at most :data:`STEPS` blocks either side and within :data:`SPAN` of ``k`` (always at least the
   nearest multiple below and above). Groups feeding a depthwise or grouped convolution (the rules'
   :meth:`~spa.rules.base.ChannelRule.aligned_slots`) keep only counts whose slots are whole blocks —
   the hardware rule, not a preference. A candidate's channels are the criterion's best ``k'``
   (:func:`spa.plan.removed_for_count`).
2. **Greedy fill.** Every group starts at its smallest candidate; then, repeatedly, the move of one group
   to a larger candidate with the least added table latency per added MAC is taken (a move that saves
   latency first), as long as the model's MACs stay within the exact plan's (plus :data:`MACS_SLACK` of
   the original's). So the MACs budget goes where it costs the least time: a group whose next block is
   almost free grows, one whose extra channels are dear shrinks.
   In a Concat group (DenseNet, Inception, FPN: :func:`spa.reorder.blocks.channel_blocks` finds one block
   per producer) a candidate count is shared out evenly: every producer block keeps the same fraction of
   its channels, in whole SIMD blocks (8 in blocks under two SIMD blocks; :func:`block_removed`), so the
   BatchNormalization/ReLU over the concatenated tensor stay in ONNX Runtime's NCHWc layout (an off-block
   concat leaves them as plain kernels with layout reorders around them: DenseNet-121 lost 7 % of its
   time there) and every consumer's input is a sum of regular
   counts rather than whatever the criterion's global ranking left of each block.
3. **Local search** (:data:`ROUNDS` > 0; off by default). The fill never takes a step back, so it misses
   swaps ("this group a block down, that one a block up"). :meth:`_Problem.improve` lowers the table
   latency per MAC ``T/M`` — the inverse of the efficiency — by single moves and by pairs of moves (one
   group's, and another's that brings the MACs back), first improvement, with the MACs within
   [exact − :data:`MACS_UNDER`, exact + :data:`MACS_BAND`] of the original's. It finds what the table
   promises (the demo model at ``--ratio 0.4``: table latency 0.52 → 0.41 at the same MACs; one loaded
   ``spa sweep`` measured efficiency 0.90 where the default gives 0.76), but on large CNNs the table's
   per-layer sum misses in-network effects and the search chases its errors (see :data:`ROUNDS`), so it
   stays off until the table models them. With the wider :data:`SPAN` and the narrow fill beside it the
   fill finds most of it: on the demo model at 0.3..0.7 (one alternating run, load 4) the search gave
   efficiency 0.91 / 0.93 / 0.80 / 0.69 / 0.56 against the fill's 0.90 / 0.91 / 0.80 / 0.69 / 0.56 —
   within the timing noise.
4. **Free channels.** The fill stops at the MACs budget; then groups grow on while a move's added table
   latency is nothing (at most :data:`FREE_NOISE` of the touched layers'), up to :data:`FREE_MACS` of the
   original's MACs above the exact plan: a count that the kernel pads to the next block anyway, or a
   move that removes a layout change, gives capacity (accuracy) at no cost in speed. (The demo at
   ``--ratio 0.3``: MACs 0.507 → 0.526 of the original's, measured latency 0.582 → 0.587 of the
   original's in the same loaded run, within its noise; at 0.4..0.7 it added at most 0.003.)
5. **Never worse.** If the table predicts the exact counts faster (it never should), they are kept.

Only the table is consulted (layers measured on first use, then cached per provider + device), so a
second prune on the same machine measures nothing. The result records, per group, the exact and the
chosen count, and the predicted table latency of both.

>>> candidates(37, 64, block=16)
[24, 32, 37, 40, 48, 56, 64]
>>> candidates(37, 64, block=16, aligned_only=True)
[32, 48]
>>> candidates(5, 12, block=16)
[5, 12]
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.cost import node_costs
from spa.analysis.groups import Analysis
from spa.latency.layers import LayerConfig, Shape, concrete_shapes, cost_nodes, node_config
from spa.latency.lut import CPU, LatencyTable
from spa.plan import Plan, removed_for_count, with_removed
from spa.reorder.blocks import channel_blocks
from spa.rules.base import NodeContext, Slot
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry
from spa.runtime.feeds import PROBE_DIMS

log = logging.getLogger(__name__)

#: how far (a fraction of the exact count) a chosen count may move. 0.5 (with :data:`STEPS` 4) lets the
#: fill move the MACs budget from the layers that are dear per MAC (early high-resolution, depthwise,
#: thin ones) to cheap ones. ``python tools/bench_latency_zoo.py --before 0.25:2:0:8`` (a latency table
#: of its own; three runs, two on a loaded machine, one quiet): on the six CNNs at ``--ratio 0.5`` mean
#: efficiency 0.83 / 0.83 / 0.86 → 0.89 / 0.88 / 0.91, lowest 0.77 / 0.75 / 0.78 → 0.80 / 0.80 / 0.80
#: (SPAN 0.25, STEPS 2, steps of 8, no free channels → now), MACs the same (within +0.005 of the exact
#: plan's). In earlier alternating runs (one model each), wider (0.75, 6 blocks) measured higher on five
#: (MobileNetV2 0.94, EfficientNet-B0 0.95) and lower on DenseNet-121 (0.83 against 0.85), but leaves a
#: group as little as a quarter of what the criterion asked for: a larger departure from the criterion's
#: allocation than the efficiency goal needs. Candidates step by the SIMD block only: with 16-channel
#: blocks the multiples of 8 between them were never better (those runs: ResNet-50 0.997 against 0.993,
#: RegNet-Y 0.819 against 0.816, MobileNetV2 0.868 against 0.851): an off-block count costs layout
#: copies in the network that no table entry holds (:data:`FINE_STEP`)
SPAN = 0.5
#: SIMD blocks considered either side of the exact count
STEPS = 4
#: MACs the chosen counts may add over the exact plan's, as a fraction of the original's
MACS_SLACK = 0.005
#: when the fill ends more than this (a fraction of the original's MACs) below the exact plan, it grows
#: on, up to :data:`MACS_OVER` above it: coarse blocks must not turn into a budget overshoot downwards
MACS_UNDER, MACS_OVER = 0.01, 0.02
#: the local search after the fill keeps MACs within this (a fraction of the original's) above the exact plan
MACS_BAND = 0.01
#: local-search rounds after the greedy fill (each tries every single move and every compensated pair).
#: Off by default: with it (and SPAN 0.5) ResNet-50's efficiency was 0.94 and DenseNet-121's 0.71 against
#: 0.98 and 0.77 without, MobileNetV2's 0.82 against 0.79 — the search follows the table's errors where the
#: per-layer sum misses in-network effects (``python tools/bench_latency_zoo.py --search-rounds 4
#: --search-span 0.5``: ``tools/results/bench_latency_zoo_search.json`` against ``bench_latency_zoo.json``)
ROUNDS = 0
#: a finer candidate step than the SIMD block (channels; 0: none). It was 8 (multiples of 8 between
#: 16-channel AVX-512 blocks); measured never better, see :data:`SPAN`
FINE_STEP = 0
#: (span, SIMD blocks) of the narrower fills run besides the full one (:data:`SPAN`, :data:`STEPS`); the
#: result with the lowest table latency per MAC is kept. The fill is greedy, so a wider choice can end
#: worse: the demo model at ``--ratio 0.3`` (table latency 0.679 ms with SPAN 0.5 against 0.613 with 0.25:
#: a group left at an off-block count that the narrower fill moved onto a block)
NARROW_FILLS: tuple[tuple[float, int], ...] = ((0.25, 2),)
#: (span, SIMD blocks) when the per-group ratios come from measured sensitivity (``--allocate
#: sensitivity``): moving a count far from what the allocation chose undoes it — on the five trained
#: models of ``tools/bench_quality.py`` at ``--target-macs 0.5`` the wide span kept a U-Net's mean IoU at
#: 0.941 of the original's, this one 0.993 (exact counts 0.981), DWCNN 0.987 / 0.991
ALLOCATED_SPAN: tuple[float, int] = NARROW_FILLS[0]
#: free channels: after the fill, groups grow further while the table says the move costs no time —
#: added latency at most :data:`FREE_NOISE` of the touched layers' — up to this many MACs (a fraction of
#: the original's) above the exact plan: capacity at no cost in speed
FREE_MACS = 0.02
#: a move's added table latency, as a fraction of the latency of the layers it touches, that still
#: counts as no time. 0: only moves the table predicts cost nothing (or save time); allowing 0.02 or
#: 0.05 (the table's repeat noise) grew no model of the zoo further and the demo only at ``--ratio
#: 0.3`` (one run: efficiency 0.85 → 0.88, within the timing noise), so nothing beyond zero is trusted
FREE_NOISE = 0.0


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def simd_block(providers: Sequence[str] | None = None) -> int:
    """Channels per SIMD block of the target: ONNX Runtime's NCHWc block on the CPU provider (16 with
    AVX-512, 8 otherwise), 8 on GPU providers (fp16 tensor cores)."""
    if providers and providers[0] != CPU:
        return 8
    return 16 if "avx512f" in cpu_flags() else 8


def candidates(k: int, channels: int, block: int, *, aligned_only: bool = False, floor: int = 1,
               step: int = 8, span: float | None = None, steps: int | None = None) -> list[int]:
    """Kept counts considered for a group asking for ``k`` of ``channels`` (sorted).

    Multiples of ``block`` and of ``step`` within ``span`` (default :data:`SPAN`) of ``k`` and ``steps``
    (default :data:`STEPS`) blocks of it,
    the nearest multiple of ``block`` below and above, ``channels`` when within reach, and ``k`` itself
    unless ``aligned_only``. A group no larger than one block keeps exact counts. (``block`` and ``step``
    count the group's elements: a whole-group channel of a grouped convolution is 8 channels wide, so
    its 16-channel SIMD block is 2 elements.)

    >>> candidates(4, 6, 2, step=1)
    [2, 3, 4, 5, 6]
    """
    if channels <= block:
        return sorted({k, channels} if not aligned_only else {channels})
    span = SPAN if span is None else span
    reach = (STEPS if steps is None else steps) * block
    lo = max(floor, math.floor(k * (1 - span)), k - reach)
    hi = min(channels, math.ceil(k * (1 + span)), k + reach)
    grid = [block] if aligned_only else sorted({block, step})
    out = {m for g in grid for m in range(g * math.ceil(lo / g), hi + 1, g) if m >= max(floor, 1)}
    below = block * (k // block)
    out |= {m for m in (below, below + block) if max(floor, 1) <= m <= channels}
    if not out or hi >= channels - (0 if aligned_only else block // 2):
        out.add(channels)
    if not aligned_only:
        out.add(k)
    return sorted(out)


@dataclass
class _Option:
    """One candidate count of one group: its removed channels and the slot sizes they leave."""

    kept: int
    removed: tuple[int, ...]
    sizes: dict[Slot, tuple[int, int]]
    #: the chooser's id of this (group, removed) choice: layer and MAC costs cached by it across plans
    uid: int = -1


@dataclass
class CountChooser:
    """Chooses latency-cheap channel counts for plans of one analysed model (see the module docstring).

    Attributes:
        analysis: the groups (its model is the original).
        table: the per-layer latency table.
        shapes: concrete shape of every tensor at the timed input shapes.
        block: the SIMD block (:func:`simd_block`).
        registry: the rules (latency keys, aligned slots).
        min_channels: the smallest count a group may keep.
        max_ratio: the largest share of its channels a group may lose (``--max-ratio`` with global
            ranking; 1: no cap beyond ``min_channels``).
        span: (span, SIMD blocks) of the candidates (None: :data:`SPAN`, :data:`STEPS`).
    """

    analysis: Analysis
    table: LatencyTable
    shapes: Mapping[str, Shape]
    block: int
    registry: RuleRegistry
    min_channels: int = 1
    max_ratio: float = 1.0
    span: tuple[float, int] | None = None
    _nodes: dict[str, gs.Node] = field(default_factory=dict)
    _aligned: frozenset[Slot] = frozenset()
    #: costs cached across the plans of one search: layer ms and MAC factors by (layer or term, the
    #: fixed sizes around it, the ids of the touching groups' choices); options by (group, count, scores)
    layer_cache: dict[tuple[object, ...], float] = field(default_factory=dict)
    option_cache: dict[tuple[int, int, int], _Option | None] = field(default_factory=dict)
    _ids: dict[tuple[object, ...], int] = field(default_factory=dict)

    def uid(self, key: tuple[object, ...]) -> int:
        """A small id for a hashable choice (interned, so cache keys stay short)."""
        return self._ids.setdefault(key, len(self._ids))

    @classmethod
    def build(cls, analysis: Analysis, table: LatencyTable, input_shapes: Mapping[str, Sequence[int]],
              *, block: int | None = None, registry: RuleRegistry | None = None,
              min_channels: int = 1, max_ratio: float = 1.0, span: tuple[float, int] | None = None
              ) -> CountChooser:
        """A chooser for ``analysis`` timed at ``input_shapes`` (block: :func:`simd_block` of the table's
        provider unless given)."""
        registry = registry or default_registry()
        mg = analysis.model
        shapes = concrete_shapes(mg, input_shapes)
        chooser = cls(analysis, table, shapes, block or simd_block(table.providers), registry, min_channels,
                      max_ratio, span)
        chooser._nodes = {n.name: n for n in cost_nodes(mg, registry)}
        aligned: set[Slot] = set()
        for node in mg.graph.nodes:
            rule = registry.lookup(node.domain or "", node.op, mg.opset)
            if rule is not None:
                aligned |= set(rule.aligned_slots(NodeContext(node, mg.opset)))
        chooser._aligned = frozenset(aligned)
        return chooser

    @property
    def narrow_fills(self) -> tuple[tuple[float, int], ...]:
        """The :data:`NARROW_FILLS` spans narrower than this chooser's own (a fill over the same span twice
        is the same fill)."""
        own = self.span[0] if self.span else SPAN
        return tuple(f for f in NARROW_FILLS if f[0] < own)

    # -- options of one group ---------------------------------------------------------------------------

    def _options(self, gid: int, exact: int, scores: np.ndarray) -> tuple[list[_Option], list[set[int]]]:
        """The group's candidate options (by kept count), and per :attr:`narrow_fills` entry the indices of
        those inside its narrower span."""
        labels = self.analysis.labels(gid)
        channels = self.analysis.groups[gid].channels
        hard = [s for s in labels if s in self._aligned]
        # channels per element in every slot (a whole-group channel of a grouped Conv: the group width)
        unit = max(1, min((len(lab) for lab in labels.values()), default=channels) // max(1, channels))
        grouped = unit > 1 and self.block % unit == 0
        block = self.block // unit or 1 if grouped else self.block
        step = (FINE_STEP // unit or 1 if grouped else FINE_STEP) if FINE_STEP else block
        floor = max(self.min_channels, channels - math.floor(self.max_ratio * channels))
        counts = candidates(exact, channels, block, aligned_only=bool(hard), floor=floor, step=step,
                            span=self.span[0] if self.span else None, steps=self.span[1] if self.span else None)
        narrow = [{exact, *candidates(exact, channels, block, aligned_only=bool(hard), floor=floor, step=step,
                                      span=sp, steps=st)} for sp, st in self.narrow_fills]
        wanted: dict[tuple[int, ...], set[int]] = {}  # removed channels -> the counts that asked for them
        blocks = channel_blocks(self.analysis, gid)
        per_block = len(set(blocks.tolist()) - {-1}) > 1 and not hard
        out: list[_Option] = []
        seen: set[tuple[int, ...]] = set()
        digest = hash(scores.tobytes())
        for k in counts:
            key = (gid, k, digest)
            if key not in self.option_cache:
                self.option_cache[key] = self._option(gid, k, scores, blocks if per_block else None, hard)
            opt = self.option_cache[key]
            if opt is not None:
                wanted.setdefault(opt.removed, set()).add(k)
            if opt is None or opt.removed in seen:
                continue
            seen.add(opt.removed)
            out.append(opt)
        if not out or (all(o.kept != exact for o in out) and not hard):
            removed = removed_for_count(self.analysis, gid, exact, scores, self.min_channels)
            gone = np.asarray(removed, dtype=np.int64)
            sizes = {s: (int(np.count_nonzero(~np.isin(lab, gone))), len(lab)) for s, lab in labels.items()}
            out.append(_Option(channels - len(removed), removed, sizes, self.uid((gid, removed))))
            wanted.setdefault(removed, set()).add(exact)
        if not out:
            raise ValueError(f"group {gid}: no candidate count")
        out.sort(key=lambda o: o.kept)
        tiers = [{i for i, o in enumerate(out) if wanted[o.removed] & ks} for ks in narrow]
        return out, [t or set(range(len(out))) for t in tiers]

    def _option(self, gid: int, k: int, scores: np.ndarray, blocks: np.ndarray | None, hard: Sequence[Slot]
                ) -> _Option | None:
        """Group ``gid`` keeping ``k`` channels, shared evenly over its producer ``blocks`` when given
        (None: it breaks a hardware rule of ``hard`` slots)."""
        labels = self.analysis.labels(gid)
        channels = self.analysis.groups[gid].channels
        if k >= channels:
            removed: tuple[int, ...] = ()
        elif blocks is not None:
            removed = block_removed(blocks, k, scores, self.block)
        else:
            removed = removed_for_count(self.analysis, gid, k, scores, self.min_channels)
        gone = np.asarray(removed, dtype=np.int64)
        sizes = {s: (int(np.count_nonzero(~np.isin(lab, gone))), len(lab)) for s, lab in labels.items()}
        if hard and any(sizes[s][0] % self.block and sizes[s][0] != sizes[s][1] for s in hard):
            return None
        return _Option(channels - len(removed), removed, sizes, self.uid((gid, removed)))

    # -- the choice -------------------------------------------------------------------------------------

    def choose(self, plan: Plan, scores: Mapping[int, np.ndarray],
               progress: Callable[[str], None] | None = None) -> tuple[Plan, dict[str, object]]:
        """``plan`` (exact counts) with every constrained group's count chosen by latency; and a record
        (per group: exact and chosen count; predicted table latency and MACs of both)."""
        groups = [gp for gp in plan.groups if not gp.consumers and gp.group in scores
                  and self.analysis.groups[gp.group].kind == "channel"]  # heads and the hidden size stay exact
        if not groups:
            return plan, {"block": self.block, "groups": 0, "moved": 0}
        built = {gp.group: self._options(gp.group, gp.kept, scores[gp.group]) for gp in groups}
        opts = {g: o for g, (o, _) in built.items()}
        exact_sizes = _exact_sizes(self.analysis, plan)
        problem = _Problem.build(self, opts, exact_sizes, {gp.group: gp.kept for gp in plan.groups})
        exact_state = dict.fromkeys(opts, -1)  # -1: the plan's own (exact) channels
        exact_ms, exact_macs = problem.total(exact_state)
        fills = [problem.fill_to(exact_macs, None, progress)]
        fills += [problem.fill_to(exact_macs, {g: t[i] for g, (_, t) in built.items()}, progress)
                  for i in range(len(self.narrow_fills))]
        state = min(fills, key=lambda st: problem.rank(st, exact_macs))
        band = (exact_macs - MACS_UNDER * problem.macs0, exact_macs + MACS_BAND * problem.macs0)
        state = problem.improve(state, band, progress)
        if FREE_MACS > 0:
            state = problem.fill(state, exact_macs + FREE_MACS * problem.macs0, progress, free=FREE_NOISE)
        chosen_ms, chosen_macs = problem.total(state)
        if chosen_ms > exact_ms:
            log.info("latency-chosen counts predicted slower than the exact ones (%.3f > %.3f ms); kept exact",
                     chosen_ms, exact_ms)
            return plan, problem.record(exact_state, exact_state, exact_ms, exact_ms, exact_macs, exact_macs)
        new = with_removed(plan, {g: opts[g][i].removed for g, i in state.items()})
        return new, problem.record(exact_state, state, exact_ms, chosen_ms, exact_macs, chosen_macs)

    def original_ms(self) -> float:
        """Table latency of the original's tabulated layers."""
        return sum(ms for name in self._nodes if (ms := self.layer_ms(name, {})) is not None)

    def layer_ms(self, name: str, sizes: Mapping[Slot, tuple[int, int]]) -> float | None:
        """Table latency of layer ``name`` at pruned ``sizes`` (None: not tabulated)."""
        node = self._nodes[name]
        cfg: LayerConfig | None = node_config(node, self.analysis.model.opset, self.shapes, sizes, self.registry)
        if cfg is None:
            return None
        return self.table.layer_ms(cfg)


def block_removed(blocks: np.ndarray, kept: int, scores: np.ndarray, simd: int = 8) -> tuple[int, ...]:
    """A Concat group's removed channels when every producer block keeps the same share ``kept / C`` of
    its channels, in multiples of ``simd`` (of 8 in blocks under ``2·simd`` channels, of 2 under 16; at
    least one), its best-scored.

    >>> blocks = np.array([0] * 32 + [1] * 16 + [2] * 6)
    >>> gone = block_removed(blocks, 27, np.arange(54.0))
    >>> [int(np.sum(blocks[list(gone)] == b)) for b in range(3)], gone[-2:]   # removed per block
    ([16, 8, 2], (48, 49))
    """
    share = kept / len(blocks)
    removed: list[int] = []
    for b in np.unique(blocks):
        idx = np.flatnonzero(blocks == b)
        n = len(idx)
        step = simd if n >= 2 * simd else 8 if n >= 16 else 2
        k = min(n, max(1, step * int(round(share * n / step)))) if b >= 0 else n - int(round((1 - share) * n))
        k = max(1, k)
        order = idx[np.lexsort((idx, -scores[idx]))]  # best first, ties by index
        removed += order[k:].tolist()
    return tuple(sorted(removed))


def _exact_sizes(analysis: Analysis, plan: Plan) -> dict[int, dict[Slot, tuple[int, int]]]:
    out: dict[int, dict[Slot, tuple[int, int]]] = {}
    for gp in plan.groups:
        gone = np.asarray(gp.removed, dtype=np.int64)
        out[gp.group] = {s: (int(np.count_nonzero(~np.isin(lab, gone))), len(lab))
                         for s, lab in analysis.labels(gp.group).items()}
    return out


@dataclass
class _Problem:
    """The greedy fill's bookkeeping: which layers and MAC terms each group touches."""

    chooser: CountChooser
    opts: dict[int, list[_Option]]
    exact: dict[int, dict[Slot, tuple[int, int]]]
    fixed: dict[Slot, tuple[int, int]]
    layers: dict[str, tuple[int, ...]]          # tabulated layer -> groups touching it
    mac_terms: list[tuple[int, tuple[Slot, ...], tuple[int, ...]]]  # (MACs, scaled slots, groups)
    by_group_layers: dict[int, list[str]]
    by_group_macs: dict[int, list[int]]
    macs0: float
    exact_kept: dict[int, int]
    #: per layer / MAC term: the fixed (not chosen) slot sizes it reads, and their cache key
    layer_fixed: dict[str, tuple[dict[Slot, tuple[int, int]], int]]
    term_fixed: list[tuple[dict[Slot, tuple[int, int]], int]]
    #: the chooser id of each group's exact (the plan's own) choice
    exact_uid: dict[int, int]
    #: layer latency by (layer, option index of each group touching it): option lists are this plan's
    cache: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    #: MAC term by (term, option index of each group scaling it)
    mac_cache: dict[tuple[int, tuple[int, ...]], float] = field(default_factory=dict)

    @classmethod
    def build(cls, chooser: CountChooser, opts: dict[int, list[_Option]],
              exact: dict[int, dict[Slot, tuple[int, int]]], exact_kept: dict[int, int]) -> _Problem:
        analysis = chooser.analysis
        owner: dict[str, set[int]] = {}
        slot_owner: dict[Slot, int] = {}
        for g in opts:
            for s in analysis.labels(g):
                owner.setdefault(s.tensor, set()).add(g)
                slot_owner[s] = g
        fixed = {s: v for g, sizes in exact.items() if g not in opts for s, v in sizes.items()}
        layers: dict[str, tuple[int, ...]] = {}
        for name, node in chooser._nodes.items():
            touching: set[int] = set()
            for t in list(node.inputs) + list(node.outputs):
                touching |= owner.get(t.name, set())
            layers[name] = tuple(sorted(touching))
        terms = []
        macs0 = 0.0
        for cost in node_costs(analysis.model, chooser.registry).values():
            macs0 += cost.macs
            gs_ = tuple(sorted({slot_owner[s] for s in cost.scaled_by if s in slot_owner}))
            terms.append((cost.macs, tuple(cost.scaled_by), gs_))
        by_layers: dict[int, list[str]] = {g: [] for g in opts}
        for name, gs_ in layers.items():
            for g in gs_:
                by_layers[g].append(name)
        by_macs: dict[int, list[int]] = {g: [] for g in opts}
        for i, (_m, _s, gs_) in enumerate(terms):
            for g in gs_:
                by_macs[g].append(i)
        layer_fixed = {}
        for name, node in chooser._nodes.items():
            names = {t.name for t in list(node.inputs) + list(node.outputs)}
            near = {sl: v for sl, v in fixed.items() if sl.tensor in names}
            layer_fixed[name] = (near, chooser.uid(("fixed", name, tuple(sorted(near.items(), key=repr)))))
        term_fixed = []
        for i, (_m, scaled, _g) in enumerate(terms):
            near = {sl: fixed[sl] for sl in scaled if sl in fixed}
            term_fixed.append((near, chooser.uid(("term", i, tuple(sorted(near.items(), key=repr))))))
        exact_uid = {g: chooser.uid(("exact", g, tuple(sorted(exact[g].items(), key=repr)))) for g in opts}
        return cls(chooser, opts, exact, fixed, layers, terms, by_layers, by_macs, macs0, exact_kept,
                   layer_fixed, term_fixed, exact_uid)

    def _sizes(self, state: Mapping[int, int], groups: Sequence[int], fixed: Mapping[Slot, tuple[int, int]]
               ) -> dict[Slot, tuple[int, int]]:
        sizes = dict(fixed)
        for g in groups:
            i = state[g]
            sizes |= self.exact[g] if i < 0 else self.opts[g][i].sizes
        return sizes

    def _uids(self, state: Mapping[int, int], groups: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.exact_uid[g] if state[g] < 0 else self.opts[g][state[g]].uid for g in groups)

    def _layer(self, name: str, state: Mapping[int, int]) -> float:
        groups = self.layers[name]
        key = (name, tuple(state[g] for g in groups))
        hit = self.cache.get(key)
        if hit is None:
            fixed, fid = self.layer_fixed[name]
            shared = (name, fid, self._uids(state, groups))
            hit = self.chooser.layer_cache.get(shared)
            if hit is None:
                ms = self.chooser.layer_ms(name, self._sizes(state, groups, fixed))
                hit = self.chooser.layer_cache[shared] = ms if ms is not None else 0.0
            self.cache[key] = hit
        return hit

    def _macs(self, i: int, state: Mapping[int, int]) -> float:
        macs, scaled, groups = self.mac_terms[i]
        if not groups:
            return float(macs)
        key = (i, tuple(state[g] for g in groups))
        hit = self.mac_cache.get(key)
        if hit is None:
            fixed, fid = self.term_fixed[i]
            shared = (i, fid, self._uids(state, groups))
            hit = self.chooser.layer_cache.get(shared)
            if hit is None:
                sizes = self._sizes(state, groups, fixed)
                f = 1.0
                for s in scaled:
                    if s in sizes:
                        k, n = sizes[s]
                        f *= k / max(1, n)
                hit = self.chooser.layer_cache[shared] = macs * f
            self.mac_cache[key] = hit
        return hit

    def total(self, state: Mapping[int, int]) -> tuple[float, float]:
        """(table ms, MACs) of the model with these choices."""
        ms = sum(self._layer(n, state) for n in self.layers)
        macs = sum(self._macs(i, state) for i in range(len(self.mac_terms)))
        return ms, macs

    def delta(self, state: dict[int, int], g: int, j: int) -> tuple[float, float]:
        """(added ms, added MACs) of moving group ``g`` to option ``j``."""
        new = dict(state)
        new[g] = j
        dms = sum(self._layer(n, new) - self._layer(n, state) for n in self.by_group_layers[g])
        dmacs = sum(self._macs(i, new) - self._macs(i, state) for i in self.by_group_macs[g])
        return dms, dmacs

    def fill_to(self, exact_macs: float, allowed: Mapping[int, set[int]] | None,
                progress: Callable[[str], None] | None) -> dict[int, int]:
        """The greedy fill from every group's smallest (``allowed``) option up to the exact plan's MACs
        plus :data:`MACS_SLACK` (growing on to :data:`MACS_OVER` above it when it ends more than
        :data:`MACS_UNDER` below)."""
        m0 = self.macs0
        state = {g: min(allowed[g]) if allowed else 0 for g in self.opts}
        state = self.fill(state, exact_macs + MACS_SLACK * m0, progress, allowed=allowed)
        if self.total(state)[1] < exact_macs - MACS_UNDER * m0:
            state = self.fill(state, exact_macs + MACS_OVER * m0, progress, until=exact_macs - MACS_UNDER * m0,
                              allowed=allowed)
        return state

    def rank(self, state: Mapping[int, int], exact_macs: float) -> tuple[bool, float]:
        """Sort key of a fill's result: one that reached the budget (MACs at least the exact plan's less
        :data:`MACS_UNDER`) first, then the lower table latency per MAC."""
        ms, macs = self.total(state)
        return macs < exact_macs - MACS_UNDER * self.macs0, _per_mac((ms, macs))

    def fill(self, state: dict[int, int], budget: float, progress: Callable[[str], None] | None,
             until: float = math.inf, free: float | None = None,
             allowed: Mapping[int, set[int]] | None = None) -> dict[int, int]:
        """Greedy: take the cheapest move (least ms per added MAC) that keeps MACs within ``budget``
        (stopping once MACs reach ``until``). With ``free``, only moves whose added table latency is at
        most ``free`` times the current latency of the layers the group touches are taken (free channels);
        with ``allowed``, only those options of each group."""
        _, macs = self.total(state)
        moves: dict[int, list[tuple[float, float]]] = {}

        def refresh(g: int) -> None:
            moves[g] = [self.delta(state, g, j) for j in range(len(self.opts[g]))]

        for g in self.opts:
            refresh(g)
        neighbours = self.neighbours()
        steps = 0
        while macs < until:
            best: tuple[float, int, int] | None = None
            for g, ds in moves.items():
                for j in range(state[g] + 1, len(ds)):
                    if allowed is not None and j not in allowed[g]:
                        continue
                    dms, dmacs = ds[j]
                    if macs + dmacs > budget or (free is not None and dms > free * self.group_ms(state, g)):
                        continue
                    key = dms / dmacs if dmacs > 0 else (-math.inf if dms < 0 else math.inf)
                    if key == math.inf:
                        continue
                    if best is None or key < best[0]:
                        best = (key, g, j)
            if best is None:
                break
            _, g, j = best
            macs += moves[g][j][1]
            state[g] = j
            steps += 1
            for h in neighbours[g]:
                refresh(h)
            if progress is not None and steps % 10 == 0:
                progress(f"choosing channel counts ({steps} moves, {self.chooser.table.measured} layers measured)")
        return state

    def group_ms(self, state: Mapping[int, int], g: int) -> float:
        """Table latency of the layers group ``g`` touches."""
        return sum(self._layer(n, state) for n in self.by_group_layers[g])

    def neighbours(self) -> dict[int, set[int]]:
        """Per group, the groups whose move costs depend on its choice (shared layers or MAC terms)."""
        return {g: {h for n in self.by_group_layers[g] for h in self.layers[n]}
                | {h for i in self.by_group_macs[g] for h in self.mac_terms[i][2]} for g in self.opts}

    def improve(self, state: dict[int, int], band: tuple[float, float],
                progress: Callable[[str], None] | None = None) -> dict[int, int]:
        """Local search after the greedy fill: table latency per MAC ``T/M`` (the inverse of the
        efficiency) is lowered by single moves and by pairs (one group's move, and another group's that
        brings the MACs back) that keep the MACs inside ``band``; first improvement, at most
        :data:`ROUNDS` passes. The greedy adds MACs where they are cheapest but never takes a step back,
        so it misses a swap such as "this group one block down, that one a block up", which the pairs
        find. A state outside ``band`` (the fill could not reach it) accepts any move into it."""
        ms, macs = self.total(state)
        near = self.neighbours()
        moves = _Moves.build(self, state)
        for _ in range(ROUNDS):
            better = False
            for g in self.opts:
                for j in range(len(self.opts[g])):
                    if j == state[g]:
                        continue
                    dms, dmacs = self.delta(state, g, j)
                    best = self._best_partner(state, g, j, (ms + dms, macs + dmacs), band, moves, near[g])
                    if best is None or not _better(best[:2], (ms, macs), band):
                        continue
                    state[g] = j
                    changed = near[g]
                    if best[2] >= 0:
                        state[best[2]] = best[3]
                        changed = changed | near[best[2]]
                    ms, macs = self.total(state)
                    moves.refresh(self, state, changed)
                    better = True
            if progress is not None:
                progress(f"refining channel counts ({self.chooser.table.measured} layers measured)")
            if not better:
                break
        return state

    def _best_partner(self, state: dict[int, int], g: int, j: int, after: tuple[float, float],
                      band: tuple[float, float], moves: _Moves, near: set[int]
                      ) -> tuple[float, float, int, int] | None:
        """The best (ms, MACs, partner group, its option) after moving ``g`` to ``j`` (``after``: the
        model's ms and MACs then): alone when its MACs stay in ``band``, else with the one other group's
        move that keeps them there at the least latency per MAC (partner -1: none). Partners that share
        nothing with ``g`` use the cached move costs; ``near`` ones are re-costed with ``g`` moved."""
        lo, hi = band
        ms, macs = after
        best = (ms, macs, -1, -1) if lo <= macs <= hi else None
        far = ~np.isin(moves.group, list(near | {g}))
        m2 = macs + moves.dmacs[far]
        t2 = ms + moves.dms[far]
        ok = (m2 >= lo) & (m2 <= hi)
        if ok.any():
            i = int(np.argmin(np.where(ok, t2 / np.maximum(m2, 1.0), np.inf)))
            cand = (float(t2[i]), float(m2[i]), int(moves.group[far][i]), int(moves.option[far][i]))
            if best is None or _per_mac(cand[:2]) < _per_mac(best[:2]):
                best = cand
        moved = dict(state)
        moved[g] = j
        for h in near - {g}:
            for k in range(len(self.opts[h])):
                if k == moved[h]:
                    continue
                dms, dmacs = self.delta(moved, h, k)
                cand = (ms + dms, macs + dmacs, h, k)
                if lo <= cand[1] <= hi and (best is None or _per_mac(cand[:2]) < _per_mac(best[:2])):
                    best = cand
        return best

    def record(self, exact: Mapping[int, int], state: Mapping[int, int], exact_ms: float, chosen_ms: float,
               exact_macs: float, chosen_macs: float) -> dict[str, object]:
        """The choice's record for the report."""
        rows = [{"group": g, "exact": self.exact_kept[g],
                 "chosen": self.exact_kept[g] if i < 0 else self.opts[g][i].kept} for g, i in state.items()]
        return {"block": self.chooser.block, "span": list(self.chooser.span or (SPAN, STEPS)), "groups": len(rows),
                "moved": sum(r["exact"] != r["chosen"] for r in rows),
                "table_ms_exact": round(exact_ms, 4), "table_ms_chosen": round(chosen_ms, 4),
                "macs_exact": int(exact_macs), "macs_chosen": int(chosen_macs), "counts": rows}


def _per_mac(point: tuple[float, float]) -> float:
    """Table latency per MAC of a (ms, MACs) point."""
    return point[0] / max(point[1], 1.0)


def _better(new: tuple[float, float], old: tuple[float, float], band: tuple[float, float]) -> bool:
    """``new`` (ms, MACs) beats ``old``: less latency per MAC, or in ``band`` where ``old`` is not."""
    inside = band[0] <= old[1] <= band[1]
    return _per_mac(new) < _per_mac(old) * (1 - 1e-6) or (not inside and band[0] <= new[1] <= band[1])


@dataclass
class _Moves:
    """Every group's move costs (added ms, added MACs) from one state, flattened for the pair search."""

    per_group: dict[int, np.ndarray]
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    option: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dmacs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def build(cls, problem: _Problem, state: Mapping[int, int]) -> _Moves:
        moves = cls({})
        moves.refresh(problem, state, set(problem.opts))
        return moves

    def refresh(self, problem: _Problem, state: Mapping[int, int], groups: set[int]) -> None:
        """Re-cost the moves of ``groups`` from ``state`` and re-flatten."""
        for h in groups:
            st = dict(state)
            self.per_group[h] = np.array([problem.delta(st, h, k) for k in range(len(problem.opts[h]))],
                                         dtype=np.float64).reshape(-1, 2)
        order = sorted(self.per_group)
        self.group = np.concatenate([np.full(len(self.per_group[h]), h, np.int64) for h in order])
        self.option = np.concatenate([np.arange(len(self.per_group[h]), dtype=np.int64) for h in order])
        flat = np.concatenate([self.per_group[h] for h in order])
        self.dms, self.dmacs = flat[:, 0], flat[:, 1]


def input_shapes_of(analysis: Analysis) -> dict[str, tuple[int, ...]]:
    """The graph inputs' shapes with every dynamic non-batch dimension the smallest of ``1`` and
    :data:`~spa.runtime.feeds.PROBE_DIMS` at which shape inference gives every tensor a positive size
    (what the table is looked up at; the batch is 1). A face-proposal net of valid convolutions needs
    ``12 × 12`` at least: at ``1 × 1`` its tensors would have negative sizes."""
    def at(dim: int) -> dict[str, tuple[int, ...]]:
        return {t.name: tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else (1 if k == 0 else dim)
                              for k, d in enumerate(t.shape or ())) for t in analysis.model.graph.inputs}

    dynamic = any(not (isinstance(d, (int, np.integer)) and d > 0)
                  for t in analysis.model.graph.inputs for d in (t.shape or ())[1:])
    for dim in (1, *PROBE_DIMS) if dynamic else (1,):
        try:
            shapes = concrete_shapes(analysis.model, at(dim))
        except Exception as exc:  # noqa: BLE001 - ONNX shape inference refuses a size: try the next one
            log.debug("no concrete shapes at %d (%s)", dim, exc)
            continue
        if all(d > 0 for s in shapes.values() for d in s):
            return at(dim)
    return at(1)


@dataclass
class LatencyCounts:
    """``--round-to latency`` for one prune: opens the table on first use, applies
    :meth:`CountChooser.choose` to every plan a budget search makes, and keeps the last record.

    Attributes:
        analysis: the groups.
        providers: the provider the table is for (None: CPU).
        cache_dir: the table's folder (None: the default).
        registry: the rules.
        min_channels: the smallest count a group may keep.
        max_ratio: the largest share of its channels a group may lose (1: no cap).
        progress: told what is happening (measuring layers, choosing).
        span: the candidates' (span, SIMD blocks) (None: :data:`SPAN`, :data:`STEPS`; the API passes
            :data:`ALLOCATED_SPAN` when the ratios come from measured sensitivity).
        records: each choice's record (with ``table_ms_original``), by the plan it returned.
    """

    analysis: Analysis
    providers: Sequence[str] | None = None
    cache_dir: str | os.PathLike[str] | None = None
    registry: RuleRegistry | None = None
    min_channels: int = 1
    progress: Callable[[str], None] | None = None
    max_ratio: float = 1.0
    span: tuple[float, int] | None = None
    records: list[tuple[Plan, dict[str, object]]] = field(default_factory=list)
    _chooser: CountChooser | None = None

    def __call__(self, plan: Plan, scores: Mapping[int, np.ndarray]) -> Plan:
        """``plan`` with latency-chosen counts."""
        if self._chooser is None:
            if self.progress is not None:
                self.progress("reading the latency table (layers not in it are measured once, then cached)")
            table = LatencyTable.open(list(self.providers) if self.providers else None, 1, self.cache_dir)
            if self.progress is not None:
                say = self.progress
                table.on_measure = lambda n: say(f"measuring the latency table: {n} layer(s) so far")
            self._chooser = CountChooser.build(self.analysis, table, input_shapes_of(self.analysis),
                                               registry=self.registry, min_channels=self.min_channels,
                                               max_ratio=self.max_ratio, span=self.span)
        new, record = self._chooser.choose(plan, scores, self.progress)
        self.records.append((new, record | {"table_ms_original": round(self._chooser.original_ms(), 4)}))
        return new

    def record_for(self, plan: Plan) -> dict[str, object]:
        """The record of the choice that returned ``plan`` (empty when none did)."""
        return next((r for p, r in self.records if p is plan), {})

    def save(self) -> None:
        """Write what the table measured (nothing when unused)."""
        if self._chooser is not None:
            self._chooser.table.save()
