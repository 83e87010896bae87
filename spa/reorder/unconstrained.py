"""Unconstrained (UPSCALE-style) pruning of multi-consumer groups.

In a constrained plan every slot of a group drops the same channels. When a group's channels are read
by several consumer weights (the blocks of a residual stage all read the residual stream; branches
read a shared tensor), that forces every consumer to give up the same channels. Unconstrained:

1. every consumer keeps the same *number* of channels as the constrained plan leaves in its input
   (in a Concat group a consumer reads only some of the group's channels: it keeps as many of *those*
   as the constrained plan does), chosen by its own weight slice (the L2 norm of its columns);
2. the shared tensors (producers, activations, per-channel parameters) keep the *union* of what the
   consumers read — a channel is removed from the producers only when no consumer needs it (channels
   no consumer site can read keep the constrained plan's decision);
3. each consumer whose subset differs from the union reads it through a Slice (if its channels are
   contiguous in the exported layout), a Gather, or keeps the whole union with zero weights for the
   channels it dropped (no copy, more MACs) — see :mod:`spa.latency.cost` for the choice;
4. with reordering, the kept channels of the shared tensors are laid out so that as many consumer
   subsets as possible are contiguous: channels are permuted inside every *movable block* of the group
   (:func:`spa.reorder.blocks.channel_blocks`: the whole group when every slot holds every channel;
   each producer's block when a Concat builds the shared tensor, the block order staying fixed), by
   :func:`spa.reorder.layout.block_orders`. Channels in frozen blocks keep index order.

Only consumers linked to their input by an identity map (plain Conv, Gemm, MatMul) take part; grouped
convolutions and the rest read the union.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.errors import UsageError
from spa.plan import ConsumerKeep, GroupPlan, Plan, _keep_every_slot
from spa.reorder.blocks import channel_blocks, exported_order
from spa.reorder.layout import FIXED_IN, FIXED_OUT, block_orders
from spa.rules.base import Link, Role, Slot


@dataclass(frozen=True)
class ConsumerSite:
    """A consumer weight slot, its node, and the activation slot it reads."""

    weight: Slot
    node: str
    source: Slot


def consumer_sites(analysis: Analysis, gid: int) -> list[ConsumerSite]:
    """Consumers of a group that can read their own subset (identity-linked, single node)."""
    if not analysis.has_channel_graph:
        raise UsageError("unconstrained pruning needs the analysis' channel graph: analyse with "
                         "spa.analysis.groups.analyze_graph, which keeps it")
    members = set(analysis.labels(gid))
    by_node_link: dict[tuple[str, Slot], Link] = {}
    for link, node in analysis.links():
        by_node_link[(node, link.a)] = link
        by_node_link[(node, link.b)] = link
    sites = []
    tensors = analysis.model.graph.tensors()
    for slot in analysis.labels(gid):
        info = analysis.slot_info(slot)
        if info is None or not info.const:
            continue
        consumers = [n for n, r in info.roles if r is Role.CONSUMER]
        if len(consumers) != 1 or len(info.roles) != 1:
            continue
        node = consumers[0]
        found = by_node_link.get((node, slot))
        if found is None or found.ia is not None or found.ib is not None:
            continue
        other = found.b if found.a == slot else found.a
        if other not in members or isinstance(tensors.get(other.tensor), gs.Constant):
            continue
        sites.append(ConsumerSite(slot, node, other))
    return sites


def _column_norms(analysis: Analysis, gid: int, slot: Slot) -> np.ndarray:
    w = np.asarray(analysis.weight(slot.tensor))
    others = tuple(a for a in range(w.ndim) if a != slot.axis)
    per_elem = np.sqrt(np.square(w).sum(axis=others, dtype=np.float64))
    scores = np.zeros(analysis.groups[gid].channels)
    np.add.at(scores, analysis.labels(gid)[slot], per_elem)
    return scores


def _layout(analysis: Analysis, gid: int, kept: list[int], sources: list[Slot],
            subsets: list[set[int]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Channel rank of the reordered layout and the group's blocks, or None when nothing moves."""
    n = analysis.groups[gid].channels
    block = channel_blocks(analysis, gid)
    kept_arr = np.asarray(kept, dtype=np.int64)
    movable = np.unique(block[kept_arr])
    movable = movable[movable >= 0]
    if not len(movable):
        return None
    members = {int(b): kept_arr[block[kept_arr] == b].tolist() for b in movable}
    is_kept = np.zeros(n, dtype=bool)
    is_kept[kept_arr] = True
    reads: list[tuple[list[int], set[int]]] = []
    for src, sub in zip(sources, subsets):
        labels = analysis.labels(gid)[src]
        lab = labels[is_kept[labels]]
        inside = np.zeros(n, dtype=bool)
        inside[list(sub)] = True
        key = np.where(block[lab] >= 0, block[lab], np.where(inside[lab], FIXED_IN, FIXED_OUT))
        starts = np.ones(len(key), dtype=bool)
        starts[1:] = key[1:] != key[:-1]
        reads.append((key[starts].tolist(), sub))
    orders = block_orders(members, reads)
    if all(orders[b] == members[b] for b in members):
        return None
    rank = np.arange(n) + n  # frozen channels: index order (never compared with a movable block's)
    pos = 0
    for b in sorted(orders):
        rank[orders[b]] = np.arange(pos, pos + len(orders[b]))
        pos += len(orders[b])
    return rank, block


def unconstrain(analysis: Analysis, plan: Plan, *, reorder: bool = True) -> Plan:
    """Turn a constrained plan into an unconstrained one (consumers keep their own subsets).

    Args:
        analysis: the groups.
        plan: a constrained plan (each consumer keeps as many channels as it leaves in its input).
        reorder: lay kept channels out so consumer subsets are contiguous where the group allows it.

    Returns:
        A plan whose multi-consumer groups carry :class:`ConsumerKeep` entries (mode ``slice`` when
        contiguous, else ``gather``) and, with ``reorder``, an exported channel order.
    """
    groups: list[GroupPlan] = []
    for gp in plan.groups:
        sites = consumer_sites(analysis, gp.group)
        if len(sites) < 2:
            groups.append(gp)
            continue
        cls = analysis.labels(gp.group)
        was_removed = np.zeros(gp.channels, dtype=bool)
        was_removed[list(gp.removed)] = True
        subsets: list[set[int]] = []
        reads: list[np.ndarray] = []
        for site in sites:
            present = np.unique(cls[site.weight])  # the channels this consumer reads at all
            keep_n = int(np.count_nonzero(~was_removed[present]))
            s = _column_norms(analysis, gp.group, site.weight)[present]
            subsets.append(set(present[np.lexsort((present, -s))][:keep_n].tolist()))
            reads.append(present)
        covered = np.zeros(gp.channels, dtype=bool)
        covered[np.concatenate(reads)] = True
        union = set().union(*subsets)
        removed = {c for c in range(gp.channels) if (c not in union if covered[c] else was_removed[c])}
        removed = _keep_every_slot(removed, cls, np.zeros(gp.channels))
        kept = [c for c in range(gp.channels) if c not in removed]
        layout = _layout(analysis, gp.group, kept, [s.source for s in sites], subsets) if reorder else None
        order: tuple[int, ...] = ()
        if layout is not None:
            rank, block = layout
            ordered = sorted(kept, key=lambda c: (rank[c], c))
            order = tuple(ordered) if ordered != kept else ()
        consumers = []
        for site, sub, present in zip(sites, subsets, reads):
            if sub >= set(present.tolist()) - removed:
                continue  # reads every kept channel of its input: nothing to narrow
            # contiguity of the consumer's *elements* in its input's exported order (a slot may hold
            # several elements per channel, or channels interleaved: channel contiguity is not enough)
            labels = cls[site.source]
            idx = np.flatnonzero(np.isin(labels, kept))
            if order:
                idx = exported_order(labels, idx, rank, block)
            pos = np.flatnonzero(np.isin(labels[idx], list(sub)))
            mode = "slice" if len(pos) and pos[-1] - pos[0] + 1 == len(pos) else "gather"
            consumers.append(ConsumerKeep(site.weight.tensor, site.weight.axis, site.node,
                                          tuple(sorted(sub)), mode))
        groups.append(replace(gp, removed=tuple(sorted(removed)), consumers=tuple(consumers), order=order))
    return replace(plan, groups=tuple(groups))


def copies(plan: Plan) -> dict[str, int]:
    """How many consumers read through a Slice, a Gather, or zeroed weights."""
    out = {"slice": 0, "gather": 0, "zero": 0}
    for gp in plan.groups:
        for c in gp.consumers:
            out[c.mode] += 1
    return out


def with_modes(plan: Plan, modes: Iterable[tuple[int, str, str]]) -> Plan:
    """A copy of ``plan`` with consumer modes replaced: (group id, weight tensor, mode)."""
    table = {(g, t): m for g, t, m in modes}
    groups = []
    for gp in plan.groups:
        cons = tuple(replace(c, mode=table.get((gp.group, c.tensor), c.mode)) for c in gp.consumers)
        groups.append(replace(gp, consumers=cons))
    return replace(plan, groups=tuple(groups))
