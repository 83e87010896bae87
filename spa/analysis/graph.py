"""Build the graph of channel slots from the rules' relations.

Every node's rule returns links, members, barriers and choices (see :mod:`spa.rules.base`). This module

1. runs the rules over the graph (an op without a rule, a node with subgraphs, or a rule that fails
   turns every axis it touches into a barrier — the run never crashes on an op it does not know);
2. adds *coverage barriers*: any axis of a node's input or output that its rule did not map is
   blocked, so a rule can only be incomplete in the safe direction;
3. blocks every axis of graph inputs and outputs;
4. resolves choices in topological order with a union-find over slots: a choice keeps the option
   whose slot is owned by a weight and not blocked, else an unblocked one with the most channels
   (a channel shuffle's split then keeps the fine C/g factor), else its first, and blocks the rest;
5. with ``head_dim`` (head-dim pruning), re-resolves the choices of every attention block (see
   :func:`_head_dim_blocks`);
6. returns a :class:`ChannelGraph` whose networkx graph has slots as nodes and links as edges.

Head-dim pruning. A slot belongs to one group, so an attention block prunes either its heads or its
``head_dim``. The default resolution links the hidden axis to the head factor ``H`` of each
``[.., H, Dh]`` split or merge (Q, K, V and the context before the output projection); the *attention
block* is every choice whose kept option ends in a component tagged ``"head"``. In head-dim mode each
such choice keeps the factor just inside the head factor instead (``Dh``): Q and K end up blocked
(``Q·Kᵀ`` contracts their ``Dh``; they also lose their heads), while V's columns and the output
projection's rows become one group of ``Dh`` channels of kind ``head_dim`` (channel ``d`` is the ``d``-th
dim of every head, so every head keeps the same ``Dh'`` and the Reshapes stay rectangular). A block
whose switched options own no weight or stay blocked (a fused QKV projection or a
``reshape(B, N, 3, H, Dh)`` ties V's ``Dh`` to Q/K's) keeps its default resolution, i.e. its heads, and
the analysis notes why (:attr:`ChannelGraph.notes`). Any resolution is sound — options not kept are
blocked — so this only chooses which coupling the block offers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import ModelGraph, shape_of
from spa.rules.base import (
    Barrier,
    Choice,
    Explanation,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    Statistic,
    Tag,
    static,
)
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)


@dataclass
class SlotInfo:
    """What the analysis knows about one slot."""

    slot: Slot
    size: int | None
    const: bool
    order: tuple[int, int]
    roles: set[tuple[str, Role]] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    @property
    def owned(self) -> bool:
        """A weight slice that reads or writes the channel."""
        return self.const and any(r in (Role.PRODUCER, Role.CONSUMER) for _, r in self.roles)


@dataclass
class ChannelGraph:
    """Slots, the links between them (with the node that made each), and the networkx view."""

    slots: dict[Slot, SlotInfo]
    links: list[tuple[Link, str]]
    nx_graph: nx.Graph
    node_of_slot: dict[Slot, set[str]]
    notes: list[str] = field(default_factory=list)  # what head-dim mode could not do, and why


def _subgraph_outer_names(node: gs.Node) -> set[str]:
    names: set[str] = set()
    for sub in node.subgraphs(recursive=True) if hasattr(node, "subgraphs") else []:
        inner = {t.name for t in sub.inputs}
        for n in sub.nodes:
            for t in n.inputs:
                if t.name and t.name not in inner:
                    names.add(t.name)
    return names


def _relations_for(node: gs.Node, registry: RuleRegistry, opset: int) -> list[Relation]:
    ctx = NodeContext(node, opset)
    label = f"{node.op} '{node.name}'"
    if node.attrs and any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        rels = ctx.barrier_all(f"{label} has subgraphs (control flow)")
        return rels + [Barrier(n, None, f"used inside the subgraph of {label}") for n in _subgraph_outer_names(node)]
    domain = node.domain or ""
    rule = registry.lookup(domain, node.op, opset)
    if rule is None:
        where = f" in domain '{domain}'" if domain else ""
        return ctx.barrier_all(f"no channel rule for op {node.op}{where} ('{node.name}')")
    try:
        return rule.relate(ctx)
    except Exception as exc:  # noqa: BLE001 - a buggy or surprised rule must not crash the run: block and say why
        log.warning("rule %r failed on %s: %s", rule, label, exc)
        return ctx.barrier_all(f"rule for {label} failed: {type(exc).__name__}: {exc}")


#: what a Statistic's barrier reason tells the user when hidden-size pruning is off
HIDDEN_HINT = " (pass --prune-hidden to prune these channels together, statistics over the kept ones)"


def _mentioned_axes(rels: list[Relation]) -> set[Slot]:
    seen: set[Slot] = set()
    for r in rels:
        if isinstance(r, Link):
            seen |= {r.a, r.b}
        elif isinstance(r, Statistic):
            seen.add(r.slot)
        elif isinstance(r, Choice):
            for o in r.options:
                seen |= {o.a, o.b}
    return seen


@dataclass
class _SlotTable:
    """The slots met while running the rules: their :class:`SlotInfo`, the nodes that touch each, and
    reasons that block every axis of a tensor (applied to its slots at the end)."""

    tensors: dict[str, gs.Tensor]
    order: dict[str, int]
    hidden: bool
    slots: dict[Slot, SlotInfo] = field(default_factory=dict)
    node_of_slot: dict[Slot, set[str]] = field(default_factory=lambda: defaultdict(set))
    tensor_reasons: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    links: list[tuple[Link, str]] = field(default_factory=list)
    choices: list[tuple[Choice, str]] = field(default_factory=list)

    @classmethod
    def of(cls, graph: gs.Graph, hidden: bool) -> _SlotTable:
        """An empty table; tensors are numbered in order of first appearance (graph inputs first)."""
        order: dict[str, int] = {}
        for t in graph.inputs:
            order.setdefault(t.name, len(order))
        for node in graph.nodes:
            for t in list(node.inputs) + list(node.outputs):
                if t.name:
                    order.setdefault(t.name, len(order))
        return cls(graph.tensors(), order, hidden)

    def info(self, s: Slot) -> SlotInfo:
        """The slot's record, made on first use (size from the tensor's shape, None when dynamic)."""
        si = self.slots.get(s)
        if si is None:
            t = self.tensors.get(s.tensor)
            shape = shape_of(t) if t is not None else None
            size = static(shape[s.axis]) if shape is not None and 0 <= s.axis < len(shape) else None
            si = SlotInfo(s, size, isinstance(t, gs.Constant), (self.order.get(s.tensor, len(self.order)), s.axis))
            self.slots[s] = si
        return si

    def touch(self, s: Slot, name: str) -> SlotInfo:
        """The slot's record, noting that node ``name`` relates it."""
        self.node_of_slot[s].add(name)
        return self.info(s)

    def add(self, r: Relation, name: str) -> None:
        """Record one relation that node ``name``'s rule returned."""
        if isinstance(r, Link):
            self.links.append((r, name))
            self.touch(r.a, name), self.touch(r.b, name)
        elif isinstance(r, Member):
            self.touch(r.slot, name).roles.add((name, r.role))
        elif isinstance(r, Barrier):
            if r.axis is None:
                self.tensor_reasons[r.tensor].append(r.reason)
            else:
                self.info(Slot(r.tensor, r.axis)).reasons.append(r.reason)
        elif isinstance(r, Choice):
            self.choices.append((r, name))
            for o in r.options:
                self.info(o.a), self.info(o.b)
        elif isinstance(r, Tag):
            self.info(r.slot).kinds.add(r.kind)
        elif isinstance(r, Statistic):
            si = self.touch(r.slot, name)
            if r.local:
                return
            si.kinds.add("hidden")
            if not self.hidden:
                si.reasons.append(r.reason + HIDDEN_HINT)

    def block_unmapped(self, node: gs.Node, name: str, rels: list[Relation]) -> None:
        """Coverage barriers: every axis of the node's inputs and outputs its rule did not relate (and
        every axis of a tensor whose shape is unknown) is blocked."""
        mentioned = _mentioned_axes(rels)
        for t in list(node.inputs) + list(node.outputs):
            shape = shape_of(t) if t is not None and t.name else None
            if shape is None:
                if t is not None and t.name:
                    self.tensor_reasons[t.name].append(f"shape of '{t.name}' unknown at {node.op} '{name}'")
                continue
            for a in range(len(shape)):
                if Slot(t.name, a) not in mentioned:
                    self.info(Slot(t.name, a)).reasons.append(f"{node.op} '{name}' does not map axis {a} of '{t.name}'")

    def block_io(self, graph: gs.Graph) -> None:
        """Block graph inputs and outputs, then give every slot its tensor's whole-tensor reasons."""
        for t in graph.inputs:
            self.tensor_reasons[t.name].append(f"graph input '{t.name}'")
        for t in graph.outputs:
            self.tensor_reasons[t.name].append(f"graph output '{t.name}'")
        for s, si in self.slots.items():
            if s.tensor in self.tensor_reasons:
                si.reasons.extend(self.tensor_reasons[s.tensor])


def build_channel_graph(mg: ModelGraph, registry: RuleRegistry, *, hidden: bool = False,
                        head_dim: bool = False) -> ChannelGraph:
    """Run the rules and build the slot graph (choices resolved).

    Args:
        mg: the normalised model.
        registry: the rules.
        hidden: treat :class:`~spa.rules.base.Statistic` slots as prunable ``hidden`` channels (masked
            statistics) instead of barriers.
        head_dim: in every attention block where it is legal, link V and the output projection through
            the ``head_dim`` factor (a group of kind ``head_dim``) instead of the heads (see the module
            docstring).
    """
    table = _SlotTable.of(mg.graph, hidden)
    for node in mg.graph.nodes:
        rels = _relations_for(node, registry, mg.opset)
        name = node.name or node.op
        for r in rels:
            table.add(r, name)
        table.block_unmapped(node, name, rels)
    table.block_io(mg.graph)
    chosen, notes = _resolve_choices(table.slots, table.links, table.choices, head_dim=head_dim)
    g = nx.Graph()
    g.add_nodes_from(table.slots)
    for link, _ in table.links + chosen:
        g.add_edge(link.a, link.b)
    return ChannelGraph(table.slots, table.links + chosen, g, dict(table.node_of_slot), notes)


#: appended to the reason on a head option that head-dim mode did not keep
HEAD_DIM_HINT = " (--prune-head-dim: this attention block prunes its head_dim instead of its heads)"


@dataclass
class _Resolution:
    """One resolution of the choices: the links kept, the option kept per choice, the slots to block
    (with their reasons) and the final union-find with owned/blocked flags per component root."""

    chosen: list[tuple[Link, str]]
    picked: dict[int, int]
    blocks: list[tuple[Slot, str]]
    uf: nx.utils.UnionFind
    owned: dict[Slot, bool]
    blocked: dict[Slot, bool]

    def prunable(self, s: Slot) -> bool:
        """The component of ``s`` owns a weight and nothing blocks it (as far as links and choices say)."""
        root = self.uf[s]
        return self.owned[root] and not self.blocked[root]


def _resolve(
    slots: dict[Slot, SlotInfo], links: list[tuple[Link, str]], choices: list[tuple[Choice, str]],
    forced: dict[int, int] | None = None, switched: frozenset[int] = frozenset(),
) -> _Resolution:
    """Resolve every choice; ``forced`` maps a choice's index to the option it must keep, and the
    options the ``switched`` choices (head-dim mode) do not keep say so in their reason."""
    forced = forced or {}
    uf = nx.utils.UnionFind(slots)
    for link, _ in links:
        uf.union(link.a, link.b)
    owned: dict[Slot, bool] = defaultdict(bool)
    blocked: dict[Slot, bool] = defaultdict(bool)
    for s, si in slots.items():
        owned[uf[s]] |= si.owned
        blocked[uf[s]] |= bool(si.reasons)

    def union(a: Slot, b: Slot) -> None:
        ra, rb = uf[a], uf[b]
        o, bl = owned[ra] or owned[rb], blocked[ra] or blocked[rb]
        uf.union(a, b)
        owned[uf[a]], blocked[uf[a]] = o, bl

    def preference(o: Link) -> tuple[int, int, int]:
        """Owned and unblocked first, then unblocked with the most channels, then rule order."""
        root = uf[o.a]
        size = slots[o.a].size or 0
        return (0 if owned[root] and not blocked[root] else 1, 0 if not blocked[root] else 1, -size)

    def decided(i: int, choice: Choice) -> bool:
        """Evidence decides: an option is owned and unblocked, or only one option is unblocked."""
        if i in forced or any(owned[uf[o.a]] and not blocked[uf[o.a]] for o in choice.options):
            return True
        return sum(not blocked[uf[o.a]] for o in choice.options) == 1

    chosen: list[tuple[Link, str]] = []
    picked: dict[int, int] = {}
    blocks: list[tuple[Slot, str]] = []
    pending = list(enumerate(choices))
    while pending:
        # resolve every choice the evidence decides (each resolution adds evidence), and only then
        # fall back to the size heuristic on the first undecided one, in topological order
        k = next((j for j, (i, (c, _)) in enumerate(pending) if decided(i, c)), 0)
        i, (choice, name) = pending.pop(k)
        if i in forced:
            pick = choice.options[forced[i]]
        else:
            pick = min(choice.options, key=preference)  # min is stable: ties keep the rule's order
        reason = choice.reason + (HEAD_DIM_HINT if i in switched else "")
        for j, o in enumerate(choice.options):
            if o is pick:
                union(o.a, o.b)
                chosen.append((o, name))
                picked[i] = j
            else:
                blocks.append((o.a, reason))
                blocked[uf[o.a]] = True
    return _Resolution(chosen, picked, blocks, uf, owned, blocked)


def _resolve_choices(
    slots: dict[Slot, SlotInfo], links: list[tuple[Link, str]], choices: list[tuple[Choice, str]],
    *, head_dim: bool = False,
) -> tuple[list[tuple[Link, str]], list[str]]:
    """Resolve the choices (see the module docstring), record the blocked options' reasons on their
    slots, and return the links kept and the notes of head-dim mode."""
    res = _resolve(slots, links, choices)
    notes: list[str] = []
    if head_dim:
        res, notes = _head_dim_blocks(slots, links, choices, res)
    for s, reason in res.blocks:
        slots[s].reasons.append(reason)
    return res.chosen, notes


def _head_dim_blocks(
    slots: dict[Slot, SlotInfo], links: list[tuple[Link, str]], choices: list[tuple[Choice, str]],
    default: _Resolution,
) -> tuple[_Resolution, list[str]]:
    """Switch every attention block whose ``head_dim`` can carry channels from its heads to its
    ``head_dim`` (module docstring); the others keep ``default``'s resolution and get a note."""
    kinds: dict[Slot, set[str]] = defaultdict(set)
    for s, si in slots.items():
        kinds[default.uf[s]] |= si.kinds
    blocks: dict[Slot, dict[int, int]] = {}  # head component -> {choice: the option inside its head factor}
    for i, (choice, _) in enumerate(choices):
        k = default.picked[i]
        root = default.uf[choice.options[k].a]
        if "head" in kinds[root] and k + 1 < len(choice.options):
            blocks.setdefault(root, {})[i] = k + 1
    notes: list[str] = []
    res = default
    while blocks:
        forced = {i: k for b in blocks.values() for i, k in b.items()}
        trial = _resolve(slots, links, choices, forced, frozenset(forced))
        failed = [r for r, b in blocks.items()
                  if not any(trial.prunable(choices[i][0].options[k].a) for i, k in b.items())]
        if not failed:
            res = trial
            break
        for r in failed:
            notes.append(_refusal(slots, choices, trial, blocks.pop(r)))
    # switch only the choices whose head_dim carries channels (V, the output projection); the others
    # (Q, K, GQA's repeat) keep their default option, so Q/K stay in the (now blocked) head group
    keep = {r: {i: k for i, k in b.items() if res.prunable(choices[i][0].options[k].a)} for r, b in blocks.items()}
    if keep != blocks:
        narrow = _resolve(slots, links, choices, {i: keep[r].get(i, default.picked[i])
                                                  for r, b in blocks.items() for i in b},
                          frozenset(i for b in keep.values() for i in b))
        if all(narrow.prunable(choices[i][0].options[k].a) for b in keep.values() for i, k in b.items()):
            res, blocks = narrow, keep
    for b in blocks.values():  # the blocks that switched (empty when none could)
        for i, k in b.items():
            s = choices[i][0].options[k].a
            if res.prunable(s):
                slots[s].kinds.add("head_dim")
    for note in notes:
        log.warning("%s", note)
    return res, notes


def _shared_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share (node names of one layer share a long prefix)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _refusal(slots: dict[Slot, SlotInfo], choices: list[tuple[Choice, str]], trial: _Resolution,
             block: dict[int, int]) -> str:
    """Why an attention block's ``head_dim`` cannot carry channels (its heads stay prunable).

    The reason comes from the component holding most of the block's switched options (V's split and the
    merge before the output projection share one; Q's and K's are alone), preferring a barrier's reason
    to a choice's; where a rule explained its barrier (:class:`~spa.rules.base.Explanation`, e.g. rotary
    embeddings), the explanation whose node name shares the longest prefix with the block's nodes comes
    first, then the first plain reason.
    """
    counts: dict[Slot, int] = defaultdict(int)
    for i, k in block.items():
        counts[trial.uf[choices[i][0].options[k].a]] += 1
    root = max(counts, key=lambda r: counts[r])  # ties: the first switched option's component
    own = {reason for choice, _ in choices for reason in (choice.reason, choice.reason + HEAD_DIM_HINT)}
    reasons = [r for s, si in slots.items() if trial.uf[s] == root for r in si.reasons]
    reasons += [r for s, r in trial.blocks if trial.uf[s] == root]
    names = sorted({choices[i][1] for i in block})
    told = sorted((r for r in reasons if isinstance(r, Explanation)),
                  key=lambda r: -max(_shared_prefix(r.node, n) for n in names))
    plain = [r for r in reasons if not isinstance(r, Explanation)]
    plain = [r for r in plain if r not in own] or plain
    why = "; ".join(told[:1] + plain[:1])
    nodes = ", ".join(f"'{n}'" for n in names)
    return (f"head_dim of the attention block at {nodes} cannot be pruned (it is coupled to an axis that must "
            f"stay: {why or 'no weight carries it'}); its heads stay prunable")


def element_classes(
    members: list[SlotInfo], links: list[Link]
) -> tuple[int, dict[Slot, np.ndarray]]:
    """Partition the elements of a group's slots into channels (connected element classes).

    Uses pointer-jumping union (Shiloach–Vishkin style) over numpy arrays, so groups with tens of
    thousands of elements are labelled in a few vectorised rounds.

    Args:
        members: the group's slots, in the order whose first slot numbers the channels.
        links: the links inside the group.

    Returns:
        (number of channels, channel index of every element of every slot).

    >>> a = SlotInfo(Slot("a", 1), 4, False, (0, 1)); b = SlotInfo(Slot("b", 1), 2, False, (1, 1))
    >>> n, cls = element_classes([a, b], [Link(a.slot, b.slot, np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]))])
    >>> n, cls[a.slot].tolist(), cls[b.slot].tolist()
    (2, [0, 0, 1, 1], [0, 1])
    """
    offsets: dict[Slot, int] = {}
    total = 0
    for m in members:
        offsets[m.slot] = total
        total += int(m.size or 0)
    sizes = {m.slot: int(m.size or 0) for m in members}
    src, dst = [], []
    for link in links:
        ia = np.arange(sizes[link.a]) if link.ia is None else np.asarray(link.ia, dtype=np.int64)
        ib = np.arange(sizes[link.b]) if link.ib is None else np.asarray(link.ib, dtype=np.int64)
        if len(ia) != len(ib) or (len(ia) and (ia.max() >= sizes[link.a] or ib.max() >= sizes[link.b])):
            raise ValueError(f"index map between {link.a} and {link.b} does not fit their sizes")
        src.append(offsets[link.a] + ia)
        dst.append(offsets[link.b] + ib)
    parent = np.arange(total, dtype=np.int64)
    if src:
        ga, gb = np.concatenate(src), np.concatenate(dst)
        while True:
            pa, pb = parent[ga], parent[gb]
            diff = pa != pb
            if not diff.any():
                break
            lo, hi = np.minimum(pa[diff], pb[diff]), np.maximum(pa[diff], pb[diff])
            np.minimum.at(parent, hi, lo)
            while True:
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt
    _, labels = np.unique(parent, return_inverse=True)
    n = int(labels.max()) + 1 if total else 0
    return n, {m.slot: labels[offsets[m.slot]: offsets[m.slot] + sizes[m.slot]] for m in members}
