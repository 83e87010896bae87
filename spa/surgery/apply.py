"""Apply a :class:`~spa.plan.Plan` to a model.

* :func:`prune_model` — every rule whose node touches a pruned slot rewrites its attributes and
  size constants (``group``, Reshape/Split/Slice/Resize constants) first, with the original shapes
  still known; then every initializer slot of a pruned group is sliced; then shapes are inferred anew.
* :func:`masked_twin` — the same architecture with every removed channel's *consumer* weight slices
  zeroed (the mask oracle's reference): on any input it must compute what the pruned model computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.errors import CouplingError, SpaError, UsageError
from spa.graph.model import ModelGraph
from spa.graph.weights import release
from spa.plan import GroupPlan, Plan
from spa.reorder.blocks import channel_blocks, exported_order
from spa.reorder.unconstrained import consumer_sites
from spa.rules.base import NodeContext, RewriteContext, Role, Slot, TwinContext
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)


def _rank(gp: GroupPlan) -> np.ndarray:
    """Position of every channel in the exported layout (index order unless the plan reorders)."""
    rank = np.arange(gp.channels)
    if gp.order:
        rank = np.full(gp.channels, gp.channels)
        rank[list(gp.order)] = np.arange(len(gp.order))
    return rank


def kept_indices(analysis: Analysis, plan: Plan) -> dict[Slot, np.ndarray]:
    """Kept element indices of every slot of every group the plan prunes, in exported order.

    Shared slots keep every channel not removed; an unconstrained consumer's weight slot keeps only the
    channels it reads (``slice``/``gather`` modes). Elements are ordered by the plan's channel layout,
    which only permutes channels inside the group's movable blocks (see :mod:`spa.reorder.blocks`).
    """
    kept: dict[Slot, np.ndarray] = {}
    for gp in plan.groups:
        removed = np.zeros(gp.channels, dtype=bool)
        removed[list(gp.removed)] = True
        rank = _rank(gp)
        block = channel_blocks(analysis, gp.group) if gp.order else None
        own = {Slot(c.tensor, c.axis): c for c in gp.consumers if c.mode != "zero"}
        for slot, labels in analysis.labels(gp.group).items():
            if slot in own:
                allowed = np.zeros(gp.channels, dtype=bool)
                allowed[list(own[slot].kept)] = True
            else:
                allowed = ~removed
            idx = np.flatnonzero(allowed[labels])
            # index order unless the plan lays channels out anew (inside movable blocks only)
            kept[slot] = exported_order(labels, idx, rank, block) if block is not None else idx
    return kept


def _zeroed(analysis: Analysis, plan: Plan, kept: dict[Slot, np.ndarray]) -> dict[Slot, np.ndarray]:
    """Per consumer weight slot in ``zero`` mode: positions (in kept order) whose weights are zeroed."""
    out: dict[Slot, np.ndarray] = {}
    for gp in plan.groups:
        for c in gp.consumers:
            if c.mode != "zero":
                continue
            slot = Slot(c.tensor, c.axis)
            labels = analysis.labels(gp.group)[slot][kept[slot]]
            out[slot] = np.flatnonzero(~np.isin(labels, list(c.kept)))
    return out


def _narrow_inputs(mg: ModelGraph, analysis: Analysis, plan: Plan, kept: dict[Slot, np.ndarray]) -> None:
    """Insert a Slice or Gather in front of each unconstrained consumer that reads a subset."""
    nodes = {n.name: n for n in mg.graph.nodes}
    tensors = mg.graph.tensors()
    for gp in plan.groups:
        sites = {(s.weight.tensor, s.weight.axis): s for s in consumer_sites(analysis, gp.group)}
        for c in gp.consumers:
            if c.mode == "zero":
                continue
            site = sites[(c.tensor, c.axis)]
            src = site.source
            labels = analysis.labels(gp.group)[src][kept[src]]
            pos = np.flatnonzero(np.isin(labels, list(c.kept)))
            if len(pos) == len(labels):
                continue  # it reads every kept element in exported order: nothing to narrow
            x = tensors[src.tensor]
            node = nodes[c.node]
            shape = list(x.shape) if x.shape is not None else None
            if shape is not None:
                shape[src.axis] = len(pos)
            out = gs.Variable(f"{x.name}__spa_{c.mode}_{node.name}", dtype=x.dtype, shape=shape)
            axis = gs.Constant(f"{out.name}_axes", np.asarray([src.axis], dtype=np.int64))
            if c.mode == "slice" and pos[-1] - pos[0] + 1 == len(pos):
                starts = gs.Constant(f"{out.name}_starts", np.asarray([pos[0]], dtype=np.int64))
                ends = gs.Constant(f"{out.name}_ends", np.asarray([pos[-1] + 1], dtype=np.int64))
                sel = gs.Node("Slice", name=f"{out.name}_node", inputs=[x, starts, ends, axis], outputs=[out])
            else:
                idx = gs.Constant(f"{out.name}_indices", pos.astype(np.int64))
                sel = gs.Node("Gather", name=f"{out.name}_node", attrs={"axis": src.axis}, inputs=[x, idx],
                              outputs=[out])
            mg.graph.nodes.append(sel)
            for k, t in enumerate(node.inputs):
                if t is x:
                    node.inputs[k] = out
    if any(c.mode != "zero" for gp in plan.groups for c in gp.consumers):
        mg.graph.toposort()


_HookContext = TypeVar("_HookContext", RewriteContext, TwinContext)


def _run_hook(hook: Callable[[NodeContext, _HookContext], None], ctx: NodeContext, hctx: _HookContext,
              what: str) -> None:
    """Call a rule's rewrite or twin hook; an unexpected failure becomes a :class:`CouplingError` naming the node.

    :class:`~spa.errors.SpaError` subclasses pass through unchanged.
    """
    try:
        hook(ctx, hctx)
    except SpaError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise CouplingError(
            f"{ctx.op} '{ctx.node.name}': {what} failed: {type(exc).__name__}: {exc}; run `spa analyze` on the model "
            "to see the groups through this node, and report the model (with that output) if the rule is spa's"
        ) from exc


def _apply_updates(mg: ModelGraph, updates: dict[str, np.ndarray] | None) -> None:
    tensors = mg.graph.tensors()
    for name, value in (updates or {}).items():
        t = tensors.get(name)
        if not isinstance(t, gs.Constant):
            raise UsageError(f"weight update for '{name}', which is not a constant initializer of the model: a "
                             "criterion's compensate() may only update the weights of the analysed graph")
        t.values = np.asarray(value, dtype=np.asarray(t.values).dtype).reshape(t.shape)


def prune_model(analysis: Analysis, plan: Plan, registry: RuleRegistry | None = None,
                updates: dict[str, np.ndarray] | None = None) -> ModelGraph:
    """The pruned model (a new :class:`ModelGraph`; the analysed one is not modified).

    Args:
        analysis: the analysis the plan was made from.
        plan: the plan.
        registry: rules for the rewrite hooks (default rules when None).
        updates: full-size replacement values of weights (from a compensating criterion), applied
            before slicing.
    """
    registry = registry or default_registry()
    mg = analysis.model.copy()
    _apply_updates(mg, updates)
    kept = kept_indices(analysis, plan)
    touched = {s.tensor for s in kept}
    sizes = {s: len(k) for s, k in kept.items()}
    rw = RewriteContext(kept.get, sizes.get, mg.graph)
    for node in list(mg.graph.nodes):
        names = {t.name for t in list(node.inputs) + list(node.outputs) if t is not None}
        if names & touched:
            rule = registry.lookup(node.domain or "", node.op, mg.opset)
            if rule is not None:
                _run_hook(rule.rewrite, NodeContext(node, mg.opset), rw, "rewriting after pruning")
    if rw.added:  # private copies of shared size vectors
        mg.graph.cleanup().toposort()
    tensors = mg.graph.tensors()
    zeroed = _zeroed(analysis, plan, kept)
    for slot, k in kept.items():
        t = tensors.get(slot.tensor)
        if isinstance(t, gs.Constant):
            if len(k) != t.shape[slot.axis] or np.any(k[1:] < k[:-1]):
                source = np.asarray(t.values)
                t.values = np.take(source, k, axis=slot.axis)
                release(source)
            if slot in zeroed and len(zeroed[slot]):
                _zero(t, slot.axis, zeroed[slot], analysis)
        elif t is not None and t.shape is not None and slot.axis < len(t.shape):
            # activation shapes follow from the plan; the checker re-infers and compares them
            shape = list(t.shape)
            shape[slot.axis] = len(k)
            t.shape = shape
    _narrow_inputs(mg, analysis, plan, kept)
    return mg


def _neutral(t: gs.Constant, values: np.ndarray, analysis: Analysis) -> np.ndarray | int:
    """The value that contributes nothing: 0, or what a reader's rule says
    (:meth:`~spa.rules.base.ChannelRule.neutral_value`: the zero point of a DequantizeLinear)."""
    for node in t.outputs:
        rule = analysis.rule_for(node)
        fill = rule.neutral_value(analysis.context(node), t, values) if rule is not None else None
        if fill is not None:
            return fill
    return 0


def _zero(t: gs.Constant, axis: int, drop: np.ndarray, analysis: Analysis) -> None:
    """Make the ``drop`` slices of ``t`` along ``axis`` contribute nothing (0, or the zero point)."""
    values = np.array(t.values, copy=True)
    index: list[slice | np.ndarray] = [slice(None)] * values.ndim
    index[axis] = drop
    fill = _neutral(t, values, analysis)
    values[tuple(index)] = fill[tuple(index)] if isinstance(fill, np.ndarray) else fill
    t.values = values


def _twin_hooks(mg: ModelGraph, kept: dict[Slot, np.ndarray], registry: RuleRegistry) -> None:
    """Let the rules of nodes that read pruned activations restrict their statistics to kept channels."""
    touched = {s.tensor for s in kept}
    tw = TwinContext(mg.graph, kept.get)
    count = len(mg.graph.nodes)
    for node in list(mg.graph.nodes):
        if not any(t is not None and t.name in touched for t in node.inputs):
            continue
        rule = registry.lookup(node.domain or "", node.op, mg.opset)
        if rule is not None:
            _run_hook(rule.twin, NodeContext(node, mg.opset), tw, "restricting its statistics in the masked twin")
    if len(mg.graph.nodes) != count:
        mg.graph.cleanup().toposort()


def twin_kept(analysis: Analysis, plan: Plan) -> dict[Slot, np.ndarray]:
    """:func:`kept_indices`, with every zero-mode consumer's weight slot keeping only the channels it
    reads (it reads everything kept but uses its own channels): what the masked twin keeps unzeroed."""
    kept = kept_indices(analysis, plan)
    for gp in plan.groups:
        for c in gp.consumers:
            if c.mode == "zero":
                slot = Slot(c.tensor, c.axis)
                labels = analysis.labels(gp.group)[slot]
                kept[slot] = np.flatnonzero(np.isin(labels, list(c.kept)))
    return kept


def masked_twin(analysis: Analysis, plan: Plan, updates: dict[str, np.ndarray] | None = None,
                registry: RuleRegistry | None = None) -> ModelGraph:
    """Same architecture, removed channels zeroed at their consumers (and statistics over hidden channels
    restricted to the kept ones, see :meth:`~spa.rules.base.ChannelRule.twin`).

    Args:
        analysis: the analysis the plan was made from.
        plan: the plan.
        updates: replacement weight values (from a compensating criterion) applied before masking.
        registry: rules for the twin hooks (default rules when None).
    """
    mg = analysis.model.copy()
    _apply_updates(mg, updates)
    tensors = mg.graph.tensors()
    kept = twin_kept(analysis, plan)
    for slot, k in kept.items():
        t = tensors.get(slot.tensor)
        if not isinstance(t, gs.Constant) or Role.CONSUMER not in analysis.roles_of(slot):
            continue
        drop = np.setdiff1d(np.arange(t.shape[slot.axis]), k)
        if len(drop):
            _zero(t, slot.axis, drop, analysis)
    _twin_hooks(mg, kept, registry or default_registry())
    return mg
