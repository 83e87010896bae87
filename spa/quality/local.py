"""Local sensitivity probes: each group's damage measured where its effect first joins the rest of the
network, on a sub-graph run from cached activations (``--probe-scope local``; ``auto`` for large models).

A group pruned alone changes the weights of a few nodes ``C`` (its consumers, and what compensation
touches). Every path from ``C`` to the model's outputs runs through each of their common *strict
post-dominators*; ``P`` is the nearest one that merges the changed signal with another (reads a float
activation not computed from the change: the residual Add after a decoder block's output projection,
a ResNet block's Add, a Concat), or the model's outputs when there is none (a plain chain of layers).
The model's outputs under the probe are a function of ``P``'s output alone, and ``P`` measures every
group against the signal its branch joins. The probe is measured there: ``d = Σ(t - t₀)² / Σ(t₀ - t̄₀)²``,
``t`` and ``t₀`` ``P``'s output with and without the probe over the probe samples
(:func:`spa.quality.probe.distortion`).
Only the *region* ``S`` — the nodes on paths from ``C`` to ``P`` — is run: its inputs from outside (the
*frontier* ``F``: activations computed upstream, graph inputs) come from one reference pass of the
original model, kept in memory; its weights are fed (:class:`spa.quality.fed.FedModel`).

This is a proxy: the layers after ``P`` (normalisations, nonlinearities, later blocks) may damp or
amplify the error, which the whole-model probe (``--probe-scope model``) sees and this one does not.
``tools/bench_probe_scope.py`` measures how the two rank groups. A region whose sub-graph does not
reproduce the reference at ``P`` with the original weights (or a probe that changes weights outside
its region) is probed through the whole model instead.

Cost: one reference pass, then per group ``levels × |S|`` — for a decoder about ``levels`` forward
passes in all, against ``levels × groups`` for whole-model probes. Memory: the cached ``F`` and ``P``
tensors over the probe samples, in chunks of at most :data:`CACHE_BYTES` (one reference pass each),
and one region's weights at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import ModelGraph
from spa.quality.fed import FedModel
from spa.quality.probe import agree, distortion
from spa.runtime.session import session

log = logging.getLogger(__name__)

#: the most bytes of cached frontier and cut activations held at once (a larger set of regions is
#: probed in chunks, each with its own reference pass)
CACHE_BYTES = 1 << 30
#: the virtual node every graph output flows into (post-dominators are dominators towards it)
_SINK = -1


@dataclass(frozen=True)
class Region:
    """The sub-graph a probe of some weights runs: node indices (in graph order), the frontier tensors
    it reads from outside, the fed weights it reads, and the cut tensors (``P``'s outputs) it ends at."""

    nodes: tuple[int, ...]
    frontier: tuple[str, ...]
    weights: tuple[str, ...]
    cut: tuple[str, ...]

    @property
    def tensors(self) -> tuple[str, ...]:
        """The tensors a probe of the region reads from the reference pass: frontier and cut."""
        return (*self.frontier, *self.cut)


@dataclass
class NodeGraph:
    """A graph's data flow between nodes and its post-dominator tree.

    Attributes:
        graph: the (weight-fed) graph.
        flow: ``i → j`` when node ``j`` reads an output of node ``i``; ``i → _SINK`` for graph outputs.
        ipdom: every node's immediate post-dominator (absent: the node does not reach an output).
        readers: per tensor name, the nodes that read it.
        index: node position by ``id(node)``.
    """

    graph: gs.Graph
    flow: nx.DiGraph
    ipdom: dict[int, int]
    readers: dict[str, list[int]] = field(default_factory=dict)
    index: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, graph: gs.Graph) -> NodeGraph:
        """The node flow and post-dominators of ``graph`` (dominators of the reversed flow from the sink)."""
        flow = nx.DiGraph()
        flow.add_node(_SINK)
        index = {id(n): i for i, n in enumerate(graph.nodes)}
        outputs = {id(t) for t in graph.outputs}
        readers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.nodes):
            flow.add_node(i)
            for t in node.inputs:
                readers.setdefault(t.name, []).append(i)
            for t in node.outputs:
                for consumer in t.outputs:
                    if id(consumer) in index:
                        flow.add_edge(i, index[id(consumer)])
                if id(t) in outputs:
                    flow.add_edge(i, _SINK)
        ipdom = {k: v for k, v in nx.immediate_dominators(flow.reverse(copy=False), _SINK).items() if k != v}
        return cls(graph, flow, ipdom, readers, index)

    def chain(self, node: int) -> list[int]:
        """``node``'s strict post-dominators, nearest first (ending at the sink)."""
        out: list[int] = []
        while node in self.ipdom:
            node = self.ipdom[node]
            out.append(node)
        return out

    def cut_of(self, nodes: Sequence[int], below: set[int], fed: Mapping[str, np.ndarray]) -> int | None:
        """Where a change at ``nodes`` is measured: the nearest common strict post-dominator that *merges*
        the changed signal with another one (reads a float activation from outside ``below``, the nodes
        downstream of the change: a residual Add, a Concat), else the sink. None: no node reaches an output.
        Stopping at a merge measures every group against the signal it joins (the residual stream of a
        decoder block), not against its own branch."""
        chains = [self.chain(n) for n in nodes if n in self.ipdom]
        if not chains:
            return None
        others = [set(c) for c in chains[1:]]
        common = [p for p in chains[0] if all(p in s for s in others)]
        return next((p for p in common if p != _SINK and self._merges(p, below, fed)), _SINK)

    def _merges(self, node: int, below: set[int], fed: Mapping[str, np.ndarray]) -> bool:
        """Whether ``node`` reads a float activation produced outside ``below`` (or a graph input)."""
        for t in self.graph.nodes[node].inputs:
            if not t.name or isinstance(t, gs.Constant) or t.name in fed:
                continue
            dtype = np.dtype(t.dtype) if t.dtype is not None and not isinstance(t.dtype, int) else None
            if dtype is not None and dtype.kind != "f":
                continue
            made_by = [self.index[id(p)] for p in t.inputs if id(p) in self.index]
            if not made_by or not set(made_by) & below:
                return True
        return False

    def region(self, weights: Iterable[str], fed: Mapping[str, np.ndarray]) -> Region | None:
        """The region of a probe changing ``weights`` (None: they are read by no node that reaches an
        output)."""
        changed = sorted({i for w in weights for i in self.readers.get(w, ())})
        live = [i for i in changed if i in self.ipdom]
        below = set(live).union(*(nx.descendants(self.flow, i) for i in live))
        cut = self.cut_of(live, below, fed)
        if cut is None:
            return None
        above = set(self.flow.nodes) if cut == _SINK else nx.ancestors(self.flow, cut) | {cut}
        members = sorted((below & above) - {_SINK})
        nodes = [self.graph.nodes[i] for i in members]
        made = {t.name for n in nodes for t in n.outputs}
        frontier, used = _inputs(nodes, made, fed)
        cut_names = tuple(t.name for t in self.graph.outputs) if cut == _SINK else \
            tuple(t.name for t in self.graph.nodes[cut].outputs)
        return Region(tuple(members), frontier, used, cut_names)


def _inputs(nodes: Sequence[gs.Node], made: set[str], fed: Mapping[str, np.ndarray]
            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The frontier (variables read and not made by ``nodes``; constants stay in the sub-graph) and the
    fed weights ``nodes`` read, each in first-use order."""
    frontier: dict[str, None] = {}
    used: dict[str, None] = {}
    for n in nodes:
        for t in n.inputs:
            if not t.name or t.name in made or isinstance(t, gs.Constant):
                continue
            (used if t.name in fed else frontier)[t.name] = None
    return tuple(frontier), tuple(used)


def sub_model(fed_graph: ModelGraph, region: Region, example: Mapping[str, np.ndarray]) -> ModelGraph:
    """The region as a model of its own: the frontier and its weights as inputs, the cut as outputs.
    ``example`` holds a value of every frontier and cut tensor: tensors whose type shape inference left
    open take it from there."""
    tensors = fed_graph.graph.tensors()
    for name, value in example.items():
        t = tensors[name]
        if isinstance(t, gs.Variable) and (t.dtype is None or t.shape is None):
            t.dtype, t.shape = value.dtype, list(value.shape)
    graph = gs.Graph(nodes=[fed_graph.graph.nodes[i] for i in region.nodes],
                     inputs=[tensors[n] for n in (*region.frontier, *region.weights)],
                     outputs=[tensors[n] for n in region.cut], opset=fed_graph.graph.opset,
                     import_domains=fed_graph.graph.import_domains)
    return replace(fed_graph, graph=graph)


@dataclass
class LocalProbes:
    """Regions of a weight-fed model and the reference values their probes are measured against."""

    fed: FedModel
    nodes: NodeGraph
    threads: int = 1
    #: the reference value of every cached tensor, one array per probe run
    cache: dict[str, list[np.ndarray]] = field(default_factory=dict)
    fallbacks: int = 0

    @classmethod
    def build(cls, fed: FedModel, threads: int = 1) -> LocalProbes | None:
        """Local probes over ``fed`` (None when it keeps no graph to cut)."""
        if fed.graph is None:
            return None
        return cls(fed, NodeGraph.build(fed.graph.graph), threads)

    def reference(self, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """One pass of the original over the probe samples, fetching ``names`` (intermediate tensors or
        graph inputs), one array per probe run."""
        fetch = [n for n in names if n not in self.fed.batches[0]]
        sess = self.fed.session_with(fetch, self.threads)
        got: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feeds in self.fed.batches:
            values = dict(zip(fetch, sess.run(fetch, feeds | self.fed.weights))) if fetch else {}  # type: ignore[attr-defined]
            for n in names:
                got[n].append(np.asarray(feeds[n] if n in feeds else values[n]))
        return got

    def chunks(self, regions: Sequence[Region]) -> Iterator[list[int]]:
        """Indices of ``regions`` in runs whose cached tensors fit :data:`CACHE_BYTES` (sizes read off
        one reference run of the first probe sample)."""
        names = sorted({n for r in regions for n in r.tensors})
        first = self.fed.one_run(names, self.threads)
        size = {n: first[n].nbytes * len(self.fed.batches) for n in names}
        chunk: list[int] = []
        held: set[str] = set()
        for k, r in enumerate(regions):
            new = set(r.tensors) - held
            if chunk and sum(size[n] for n in held | new) > CACHE_BYTES:
                yield chunk
                chunk, held = [], set()
                new = set(r.tensors)
            chunk.append(k)
            held |= new
        if chunk:
            yield chunk

    def damages(self, region: Region, probes: Sequence[object]) -> list[float | None]:
        """The distortion at the region's cut of every probe (a dict of changed weights; None: nothing
        changed, distortion 0); None for a probe the region cannot run (anything else, weights changed
        outside the region, or a region that does not reproduce the reference) — probe it whole."""
        if self.fed.graph is None:
            return [None] * len(probes)
        try:
            model = sub_model(self.fed.graph, region, {n: self.cache[n][0] for n in region.tensors})
            sess = session(model.to_onnx(), threads=self.threads)
        except Exception as exc:  # noqa: BLE001 - a sub-graph ONNX Runtime refuses is probed whole
            log.info("the local probe at %s does not load (%s): probed whole", region.cut[0], exc)
            self.fallbacks += len(probes)
            return [None] * len(probes)
        reference = [np.concatenate([np.asarray(v, dtype=np.float64) for v in self.cache[n]]) for n in region.cut]

        def run(changed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            weights = {w: changed.get(w, self.fed.weights[w]) for w in region.weights}
            got: list[list[np.ndarray]] = [[] for _ in region.cut]
            for k in range(len(self.fed.batches)):
                feeds = {n: self.cache[n][k] for n in region.frontier} | weights
                for i, v in enumerate(sess.run(list(region.cut), feeds)):  # type: ignore[attr-defined]
                    got[i].append(np.asarray(v, dtype=np.float64))
            return [np.concatenate(v) for v in got]

        if not agree(reference, run({})):
            log.info("the local probe at %s does not reproduce the model there: probed whole", region.cut[0])
            self.fallbacks += len(probes)
            return [None] * len(probes)
        allowed = set(region.weights)
        out: list[float | None] = []
        for p in probes:
            ok = p is None or (isinstance(p, dict) and set(p) <= allowed)
            out.append(None if not ok else 0.0 if p is None else distortion(reference, run(p)))  # type: ignore[arg-type]
            self.fallbacks += not ok
        return out
