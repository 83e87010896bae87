"""Unconstrained (UPSCALE-style) pruning of multi-consumer groups.

In a constrained plan every slot of a group drops the same channels. When a group's channels are read
by several consumer weights (the blocks of a residual stage all read the residual stream; branches
read a shared tensor), that forces every consumer to give up the same channels. Unconstrained:

1. every consumer keeps the same *number* of channels as the constrained plan, chosen by its own
   weight slice (the L2 norm of its columns for that channel);
2. the shared tensors (producers, activations, per-channel parameters) keep the *union* of what the
   consumers read — a channel is removed from the producers only when no consumer needs it;
3. each consumer whose subset differs from the union reads it through a Slice (if its channels are
   contiguous in the exported layout), a Gather, or keeps the whole union with zero weights for the
   channels it dropped (no copy, more MACs) — see :mod:`spa.reorder.cost` for the choice;
4. with reordering, the kept channels of the shared tensors are laid out so that as many consumer
   subsets as possible are contiguous (:func:`spa.reorder.layout.contiguous_order`).

Only consumers linked to their input by an identity map (plain Conv, Gemm, MatMul) take part; grouped
convolutions and the rest read the union. Reordering is applied to groups whose slots are each one
element per channel (no Concat/Split/Flatten inside), where permuting every slot alike is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.plan import ConsumerKeep, GroupPlan, Plan, _keep_every_slot
from spa.reorder.layout import contiguous_order
from spa.rules.base import Link, Role, Slot


@dataclass(frozen=True)
class ConsumerSite:
    """A consumer weight slot, its node, and the activation slot it reads."""

    weight: Slot
    node: str
    source: Slot


def consumer_sites(analysis: Analysis, gid: int) -> list[ConsumerSite]:
    """Consumers of a group that can read their own subset (identity-linked, single node)."""
    cg = analysis.channel_graph
    assert cg is not None
    members = set(analysis.classes[gid])
    by_node_link: dict[tuple[str, Slot], Link] = {}
    for link, node in cg.links:
        by_node_link[(node, link.a)] = link
        by_node_link[(node, link.b)] = link
    sites = []
    tensors = analysis.model.graph.tensors()
    for slot in analysis.classes[gid]:
        info = cg.slots.get(slot)
        if info is None or not info.const:
            continue
        consumers = [n for n, r in info.roles if r is Role.CONSUMER]
        if len(consumers) != 1 or len(info.roles) != 1:
            continue
        node = consumers[0]
        link = by_node_link.get((node, slot))
        if link is None or link.ia is not None or link.ib is not None:
            continue
        other = link.b if link.a == slot else link.a
        if other not in members or isinstance(tensors.get(other.tensor), gs.Constant):
            continue
        sites.append(ConsumerSite(slot, node, other))
    return sites


def _column_norms(analysis: Analysis, gid: int, slot: Slot) -> np.ndarray:
    w = np.asarray(analysis.model.graph.tensors()[slot.tensor].values)
    others = tuple(a for a in range(w.ndim) if a != slot.axis)
    per_elem = np.sqrt(np.square(w).sum(axis=others, dtype=np.float64))
    scores = np.zeros(analysis.groups[gid].channels)
    np.add.at(scores, analysis.classes[gid][slot], per_elem)
    return scores


def _bijective(analysis: Analysis, gid: int) -> bool:
    n = analysis.groups[gid].channels
    return all(len(lab) == n and len(np.unique(lab)) == n for lab in analysis.classes[gid].values())


def unconstrain(analysis: Analysis, plan: Plan, *, reorder: bool = True) -> Plan:
    """Turn a constrained plan into an unconstrained one (consumers keep their own subsets).

    Args:
        analysis: the groups.
        plan: a constrained plan (its per-group kept counts are kept per consumer).
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
        keep_n = gp.kept
        subsets: list[set[int]] = []
        for site in sites:
            s = _column_norms(analysis, gp.group, site.weight)
            order = np.lexsort((np.arange(len(s)), -s))
            subsets.append(set(order[:keep_n].tolist()))
        union = set().union(*subsets)
        removed = set(range(gp.channels)) - union
        removed = _keep_every_slot(removed, analysis.classes[gp.group], np.zeros(gp.channels))
        kept = [c for c in range(gp.channels) if c not in removed]
        layout: list[int] = kept
        if reorder and _bijective(analysis, gp.group):
            layout = contiguous_order(kept, subsets)
        consumers = []
        rank = {c: i for i, c in enumerate(layout)}
        for site, sub in zip(sites, subsets):
            if sub == set(kept):
                continue
            # contiguity of the consumer's *elements* in its input's exported order (a slot may hold
            # several elements per channel, or channels interleaved: channel contiguity is not enough)
            labels = analysis.classes[gp.group][site.source]
            idx = np.flatnonzero(np.isin(labels, kept))
            if layout != kept:
                idx = idx[np.lexsort((idx, np.array([rank[int(c)] for c in labels[idx]])))]
            pos = np.flatnonzero(np.isin(labels[idx], list(sub)))
            mode = "slice" if len(pos) and pos[-1] - pos[0] + 1 == len(pos) else "gather"
            consumers.append(ConsumerKeep(site.weight.tensor, site.weight.axis, site.node,
                                          tuple(sorted(sub)), mode))
        groups.append(replace(gp, removed=tuple(sorted(removed)), consumers=tuple(consumers),
                              order=tuple(layout) if layout != kept else ()))
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
