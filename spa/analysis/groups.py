"""Groups of coupled channels: connected components of the slot graph.

A :class:`Group` is what the user sees (``spa analyze``) and what the plan prunes: a set of slots whose
channels must be removed together, its channel count, and — if it cannot be pruned — every reason why.
Only groups that own weights are reported; components made only of spatial axes or shape vectors are
not channel groups.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.graph import ChannelGraph, SlotInfo, build_channel_graph, element_classes
from spa.analysis.probe import probe_shapes
from spa.graph.model import ModelGraph
from spa.graph.weights import is_float
from spa.rules.base import ChannelRule, Link, NodeContext, Role, Slot, lead
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)


#: a group whose slots hold more elements than this is not labelled (element maps would not fit in memory;
#: real models stay far below: a 1 B-parameter decoder's hidden group holds a few million)
MAX_GROUP_ELEMENTS = 1 << 26

#: group kinds from rule tags, most specific first (a group with any head slot is a head group;
#: ``head_dim`` is set by the analysis on V/output-projection groups in head-dim mode)
KIND_PRIORITY = ("head", "head_dim", "hidden")


@dataclass(frozen=True)
class GroupMember:
    """One slot of a group."""

    tensor: str
    axis: int
    size: int | None
    kind: str  # "weight" or "activation"
    roles: tuple[str, ...]  # "node:role" for weights


@dataclass(frozen=True)
class Group:
    """A set of coupled channels."""

    id: int
    channels: int
    prunable: bool
    reasons: tuple[str, ...]
    members: tuple[GroupMember, ...]
    nodes: tuple[str, ...]
    kind: str = "channel"

    @property
    def label(self) -> str:
        """A short human name: the first weight that produces the channels, else the first slot."""
        for m in self.members:
            if any(r.endswith(":producer") for r in m.roles):
                return f"{m.tensor}[{m.axis}]"
        m = self.members[0]
        return f"{m.tensor}[{m.axis}]"

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["label"] = self.label
        return d


@dataclass
class Analysis:
    """The result of :func:`analyze_graph`: groups plus what surgery needs (element → channel maps)."""

    model: ModelGraph
    groups: list[Group]
    classes: dict[int, dict[Slot, np.ndarray]] = field(default_factory=dict)
    roles: dict[Slot, set[Role]] = field(default_factory=dict)
    channel_graph: ChannelGraph | None = None
    hidden: bool = False
    head_dim: bool = False
    registry: RuleRegistry = field(default_factory=default_registry)

    def rule_for(self, node: gs.Node) -> ChannelRule | None:
        """The rule of :attr:`registry` that handles ``node`` at the model's opset (None: no rule)."""
        return self.registry.lookup(node.domain or "", node.op, self.model.opset)

    def context(self, node: gs.Node) -> NodeContext:
        """The :class:`~spa.rules.base.NodeContext` a rule of this analysis sees for ``node``."""
        return NodeContext(node, self.model.opset)

    # named views: what the layers above read, instead of the raw fields ------------------------------
    def labels(self, gid: int) -> dict[Slot, np.ndarray]:
        """The channel of every element of every slot of group ``gid`` (empty for a blocked group):
        ``labels(gid)[slot][i]`` is the channel that element ``i`` of ``slot`` belongs to."""
        return self.classes.get(gid, {})

    def labelled_groups(self) -> list[int]:
        """Ids of the groups whose channels are labelled (the prunable ones), in order."""
        return sorted(self.classes)

    def roles_of(self, slot: Slot) -> frozenset[Role]:
        """The roles the slot's weight plays (producer, consumer, param); empty for activations."""
        return frozenset(self.roles.get(slot, ()))

    def tensor(self, name: str) -> gs.Tensor | None:
        """The model's tensor called ``name`` (None when there is none)."""
        return self.model.graph.tensors().get(name)

    def weight(self, name: str) -> np.ndarray:
        """The values of the initializer ``name``."""
        t = self.model.graph.tensors()[name]
        if not isinstance(t, gs.Constant):
            raise KeyError(f"'{name}' is not an initializer")
        return np.asarray(t.values)

    @property
    def has_channel_graph(self) -> bool:
        """Whether the slot graph is kept (:func:`analyze_graph` keeps it; unconstrained pruning needs it)."""
        return self.channel_graph is not None

    def links(self) -> list[tuple[Link, str]]:
        """Every channel link with the name of the node whose rule made it (empty without a channel graph)."""
        return list(self.channel_graph.links) if self.channel_graph is not None else []

    def slot_info(self, slot: Slot) -> SlotInfo | None:
        """What the analysis knows about one slot (size, weight or activation, roles), None if unseen."""
        return self.channel_graph.slots.get(slot) if self.channel_graph is not None else None

    @property
    def notes(self) -> list[str]:
        """What the analysis could not do as asked, and why (e.g. an attention block whose head_dim
        cannot be pruned with ``head_dim=True``)."""
        return list(self.channel_graph.notes) if self.channel_graph is not None else []

    @property
    def prunable(self) -> list[Group]:
        """Groups that may be pruned."""
        return [g for g in self.groups if g.prunable]

    def prunable_param_fraction(self) -> float:
        """Fraction of all weight elements that sit in some prunable group's weights."""
        graph = self.model.graph
        consts = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
        total = sum(int(np.prod(t.shape)) for t in consts.values() if is_float(t))
        touched = {m.tensor for g in self.prunable for m in g.members if m.kind == "weight"}
        part = sum(int(np.prod(consts[n].shape)) for n in touched if n in consts)
        return part / total if total else 0.0

    def to_json(self) -> dict[str, object]:
        """Summary for reports."""
        return {
            "groups": [g.to_json() for g in self.groups],
            "num_groups": len(self.groups),
            "num_prunable": len(self.prunable),
            "prunable_channels": sum(g.channels for g in self.prunable),
            "prunable_param_fraction": round(self.prunable_param_fraction(), 6),
        } | ({"notes": self.notes} if self.notes else {})


def _dedupe(items: list[str], limit: int = 8) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for s in items:
        seen.setdefault(s, None)
    out = list(seen)
    return tuple(out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else []))


def analyze_graph(mg: ModelGraph, registry: RuleRegistry | None = None, *, hidden: bool = False,
                  head_dim: bool = False) -> Analysis:
    """Find every group of coupled channels in a normalised model.

    Args:
        mg: the normalised model (see :func:`spa.graph.normalize.normalize`).
        registry: rules to use (default: :func:`spa.rules.defaults.default_registry`).
        hidden: hidden-size pruning: channels that normalisation statistics run over (LayerNorm, RMSNorm,
            their decomposed ReduceMean forms) stay prunable, as groups of kind ``hidden``.
        head_dim: head-dim pruning: in every attention block where it is legal, V's columns and the
            output projection's rows form a group of kind ``head_dim`` (``Dh`` channels, the same dims
            of every head) instead of the block's head group; blocks where it is not keep their heads
            (see :attr:`Analysis.notes`).

    Returns:
        The :class:`Analysis`.
    """
    registry = registry or default_registry()
    probe_shapes(mg, registry)
    cg = build_channel_graph(mg, registry, hidden=hidden, head_dim=head_dim)
    links_by_slot: dict[Slot, list[Link]] = {}
    for link, _ in cg.links:
        links_by_slot.setdefault(link.a, []).append(link)
    groups: list[Group] = []
    classes: dict[int, dict[Slot, np.ndarray]] = {}
    roles: dict[Slot, set[Role]] = {}
    for comp in _components(cg):
        infos: list[SlotInfo] = [cg.slots[s] for s in comp]
        # activation slots first so channel numbers follow the first activation's channel order
        infos.sort(key=lambda si: (si.const, si.order))
        comp_set = set(comp)
        links = [lk for s in comp for lk in links_by_slot.get(s, []) if lk.b in comp_set]
        n_channels, cls, reasons = _channels(infos, links)
        group = _group(len(groups), infos, n_channels, reasons, cg)
        groups.append(group)
        if group.prunable:
            classes[group.id] = cls
        for si in infos:
            roles[si.slot] = {r for _, r in si.roles}
    log.debug("%d groups, %d prunable", len(groups), sum(g.prunable for g in groups))
    return Analysis(mg, groups, classes, roles, cg, hidden, head_dim, registry)


def _components(cg: ChannelGraph) -> list[list[Slot]]:
    """The connected components of the slot graph that own a weight, each sorted by slot order, in the
    order of their first activation slot (of their first slot when they hold only weights)."""
    components = [sorted(c, key=lambda s: cg.slots[s].order) for c in nx.connected_components(cg.nx_graph)]
    components = [c for c in components if any(cg.slots[s].owned for s in c)]
    components.sort(key=lambda c: min(cg.slots[s].order for s in c if not cg.slots[s].const)
                    if any(not cg.slots[s].const for s in c) else cg.slots[c[0]].order)
    return components


def _channels(infos: list[SlotInfo], links: list[Link]) -> tuple[int, dict[Slot, np.ndarray], list[str]]:
    """A component's channel count, its element → channel labels per slot and every reason it cannot be
    pruned (its slots' reasons, a dynamic axis, too many elements, inconsistent maps, < 2 channels)."""
    reasons = lead(r for si in infos for r in si.reasons)
    widest = max((si.size or 0) for si in infos)
    n_channels, cls = widest, dict[Slot, np.ndarray]()
    if any(si.size is None for si in infos):
        reasons.append("a coupled axis has a dynamic size")
    elif sum(si.size or 0 for si in infos) > MAX_GROUP_ELEMENTS:
        reasons.append(f"its axes hold more than {MAX_GROUP_ELEMENTS} elements in all (a corrupt shape?)")
    else:
        try:
            n_channels, cls = element_classes(infos, links)
        except ValueError as exc:
            reasons.append(f"inconsistent channel maps: {exc}")
            n_channels, cls = widest, {}
    if not reasons and n_channels < 2:
        reasons.append("fewer than two independent channels")
    return n_channels, cls, reasons


def _group(gid: int, infos: list[SlotInfo], n_channels: int, reasons: list[str], cg: ChannelGraph) -> Group:
    """The :class:`Group` of one component: members, the nodes that touch it, its kind."""
    members = tuple(
        GroupMember(si.slot.tensor, si.slot.axis, si.size, "weight" if si.const else "activation",
                    tuple(sorted(f"{n}:{r.value}" for n, r in si.roles)))
        for si in infos
    )
    nodes = sorted({n for si in infos for n in cg.node_of_slot.get(si.slot, ())})
    kinds = {k for si in infos for k in si.kinds}
    kind = next((k for k in KIND_PRIORITY if k in kinds), "channel")
    return Group(gid, n_channels, not reasons, _dedupe(reasons), members, tuple(nodes), kind)
