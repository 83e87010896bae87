"""Apply a :class:`~spa.plan.Plan` to a model.

* :func:`prune_model` — every rule whose node touches a pruned slot rewrites its attributes and
  size constants (``group``, Reshape/Split/Slice/Resize constants) first, with the original shapes
  still known; then every initializer slot of a pruned group is sliced; then shapes are inferred anew.
* :func:`masked_twin` — the same architecture with every removed channel's *consumer* weight slices
  zeroed (the mask oracle's reference): on any input it must compute what the pruned model computes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.graph.model import ModelGraph
from spa.graph.weights import release
from spa.plan import Plan
from spa.rules.base import NodeContext, RewriteContext, Role, Slot
from spa.rules.defaults import default_registry
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)


def kept_indices(analysis: Analysis, plan: Plan) -> dict[Slot, np.ndarray]:
    """Kept element indices of every slot of every group the plan prunes."""
    kept: dict[Slot, np.ndarray] = {}
    for gp in plan.groups:
        removed = np.zeros(gp.channels, dtype=bool)
        removed[list(gp.removed)] = True
        for slot, labels in analysis.classes[gp.group].items():
            kept[slot] = np.flatnonzero(~removed[labels])
    return kept


def _apply_updates(mg: ModelGraph, updates: dict[str, np.ndarray] | None) -> None:
    tensors = mg.graph.tensors()
    for name, value in (updates or {}).items():
        t = tensors[name]
        assert isinstance(t, gs.Constant), f"update for non-constant '{name}'"
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
    rw = RewriteContext(kept.get, sizes.get)
    for node in mg.graph.nodes:
        names = {t.name for t in list(node.inputs) + list(node.outputs) if t is not None}
        if names & touched:
            rule = registry.lookup(node.domain or "", node.op, mg.opset)
            if rule is not None:
                rule.rewrite(NodeContext(node, mg.opset), rw)
    tensors = mg.graph.tensors()
    for slot, k in kept.items():
        t = tensors.get(slot.tensor)
        if isinstance(t, gs.Constant):
            if len(k) != t.shape[slot.axis]:
                source = np.asarray(t.values)
                t.values = np.take(source, k, axis=slot.axis)
                release(source)
        elif t is not None and t.shape is not None and slot.axis < len(t.shape):
            # activation shapes follow from the plan; the checker re-infers and compares them
            shape = list(t.shape)
            shape[slot.axis] = int(len(k))
            t.shape = shape
    return mg


def masked_twin(analysis: Analysis, plan: Plan, updates: dict[str, np.ndarray] | None = None) -> ModelGraph:
    """Same architecture, removed channels zeroed at their consumers.

    Args:
        analysis: the analysis the plan was made from.
        plan: the plan.
        updates: replacement weight values (from a compensating criterion) applied before masking.
    """
    mg = analysis.model.copy()
    _apply_updates(mg, updates)
    tensors = mg.graph.tensors()
    for slot, k in kept_indices(analysis, plan).items():
        t = tensors.get(slot.tensor)
        if not isinstance(t, gs.Constant) or Role.CONSUMER not in analysis.roles.get(slot, set()):
            continue
        n = t.shape[slot.axis]
        drop = np.setdiff1d(np.arange(n), k)
        if len(drop):
            values = np.array(t.values, copy=True)
            index = [slice(None)] * values.ndim
            index[slot.axis] = drop  # type: ignore[call-overload]
            values[tuple(index)] = 0
            t.values = values
    return mg
