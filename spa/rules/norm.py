"""Normalisation layers.

Per-channel normalisations (BatchNormalization, InstanceNormalization) are identity maps whose
parameters are sliced with the channel. Normalisations whose statistics run *over* an axis
(GroupNormalization's channel axis, LpNormalization, MeanVarianceNormalization, LRN, LayerNormalization
over several axes) are barriers on that axis: removing a channel there changes every other channel's
output.

LayerNormalization and RMSNormalization over one (the last) axis are the transformer's hidden size: that
axis is a :class:`~spa.rules.base.Statistic` — a barrier by default; with hidden-size pruning the axis
maps to the output and to the scale/bias, and the masked twin decomposes the node into statistics over
the kept channels only (what the pruned node computes over its narrower axis):
``d = x - x·(m/D')``, ``y = d / sqrt((d·d)·(m/D') + eps) · scale + bias`` (RMS: no centring), with the
reductions written as MatMuls against the column ``m/D'`` so the twin needs no opset-specific op.

One such LayerNorm is *local* (prunable by default, ``Statistic.local``): the spatial gating unit of gMLP
(``u, v = chunk(x); u * proj_tokens(LayerNorm(v))``) normalises the gate half of its MLP's own channels —
a LayerNorm whose input is one part of a Split/Slice and whose output, after a token-mixing chain
(Transpose/MatMul/Gemm/Add/Conv/Reshape), multiplies another part of the same tensor. Over the kept
channels it is the same gate of the pruned MLP; it does not touch the model's hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.graph.model import Dim, shape_of
from spa.rules.base import (
    Barrier,
    ChannelRule,
    Link,
    Member,
    NodeContext,
    Relation,
    Role,
    Slot,
    Statistic,
    TwinContext,
    norm_axis,
)
from spa.rules.moments import Result, Walk, norm_transfer


def _identity_except(ctx: NodeContext, blocked: set[int], reason: str) -> list[Relation]:
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if x is None or y is None or r is None:
        return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape unknown")
    rels: list[Relation] = []
    for a in range(r):
        if a in blocked:
            rels += [Barrier(x.name, a, reason), Barrier(y.name, a, reason)]
        else:
            rels.append(Link(Slot(x.name, a), Slot(y.name, a)))
    return rels


@dataclass(frozen=True)
class GroupNormView:
    """A GroupNorm written as ``Reshape([N, C, *S] → [N, G, L]) → InstanceNormalization → Reshape(→ [N, C, *S])``
    (PyTorch's ``F.group_norm`` as both exporters write it; the per-channel affine follows as Mul/Add).

    Channel ``c`` of ``[N, C, *S]`` is group ``c // cg`` at in-group position ``p = c % cg`` (``cg = C/G``);
    in ``[N, G, L]`` it is the run ``p·inner … p·inner + inner - 1`` of axis 2 (``inner = ΠS``). Pruning keeps
    the groups equal-sized — the same in-group positions go from every group, as for a grouped Conv — so
    ``G`` never changes and the statistics of each group run over its kept channels (a *local* statistic).

    >>> v = GroupNormView(None, None, None, channels=6, groups=3, inner=2)   # type: ignore[arg-type]
    >>> v.positions.tolist(), v.element_positions.tolist()
    ([0, 1, 0, 1, 0, 1], [0, 0, 1, 1])
    """

    first: gs.Node
    norm: gs.Node
    last: gs.Node
    channels: int
    groups: int
    inner: int

    @property
    def per_group(self) -> int:
        return self.channels // self.groups

    @property
    def positions(self) -> np.ndarray:
        """The in-group position of each channel."""
        return np.arange(self.channels) % self.per_group

    @property
    def element_positions(self) -> np.ndarray:
        """The in-group position of each element of axis 2 of ``[N, G, L]``."""
        return np.repeat(np.arange(self.per_group), self.inner)


def _static(shape: tuple[Dim, ...] | None) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return [int(d) for d in shape]  # type: ignore[arg-type]


def group_norm_view(node: gs.Node) -> GroupNormView | None:
    """The decomposed GroupNorm ``node`` (either Reshape or the InstanceNormalization) is part of, or None."""
    if node.op == "Reshape":
        out, src = node.outputs[0] if node.outputs else None, node.inputs[0] if node.inputs else None
        if out is not None and len(out.outputs) == 1 and out.outputs[0].op == "InstanceNormalization":
            norm = out.outputs[0]
        elif src is not None and len(src.inputs) == 1 and src.inputs[0].op == "InstanceNormalization":
            norm = src.inputs[0]
        else:
            return None
    elif node.op == "InstanceNormalization":
        norm = node
    else:
        return None
    t, u = norm.inputs[0], norm.outputs[0]
    if len(t.inputs) != 1 or t.inputs[0].op != "Reshape" or len(u.outputs) != 1 or u.outputs[0].op != "Reshape":
        return None
    first, last = t.inputs[0], u.outputs[0]
    if len(t.outputs) != 1 or any(o.name for o in norm.outputs[1:]):
        return None
    si, sm, so = _static(shape_of(first.inputs[0])), _static(shape_of(t)), _static(shape_of(last.outputs[0]))
    if si is None or sm is None or so is None or si != so or len(si) < 3 or len(sm) != 3 or sm[0] != si[0]:
        return None
    c, g, inner = si[1], sm[1], int(np.prod(si[2:]))
    if g <= 0 or c % g or c // g < 2 or sm[2] != (c // g) * inner:
        return None
    return GroupNormView(first, norm, last, c, g, inner)


def group_norm_reshape_relations(ctx: NodeContext, view: GroupNormView) -> list[Relation]:
    """The Reshapes of a decomposed GroupNorm: channels of ``[N, C, *S]`` ↔ runs of axis 2 of ``[N, G, L]``,
    every channel coupled with the same in-group position of the first group (groups stay equal-sized)."""
    x, y = ctx.input(0), ctx.output(0)
    if x is None or y is None:
        return ctx.barrier_all(f"Reshape '{ctx.node.name}' without data")
    full, grouped = (x, y) if ctx.node is view.first else (y, x)
    ch, pos = np.arange(view.channels), view.positions
    return [Link(Slot(x.name, 0), Slot(y.name, 0)),
            Link(Slot(full.name, 1), Slot(full.name, 1), ch, pos),
            Link(Slot(full.name, 1), Slot(grouped.name, 2), view.element_positions,
                 np.arange(view.per_group * view.inner))]


class PerChannelNormRule(ChannelRule):
    """BatchNormalization (inference) and InstanceNormalization: parameters [C] on axis 1.

    An InstanceNormalization inside a decomposed GroupNorm (:func:`group_norm_view`) normalises axis 2 of
    ``[N, G, L]``, which holds channels: a local :class:`~spa.rules.base.Statistic` restricted to the kept
    channels in the masked twin.
    """

    op_types = ("BatchNormalization", "InstanceNormalization")

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """A normalisation output is ``N(β, γ²)`` per channel (γ, β constant, channels on axis 1)."""
        return norm_transfer(ctx.node, out, axis, walk)

    def running_stats(self, ctx: NodeContext) -> bool:
        """BatchNormalization (inference): ``γ`` is input 1, the running mean and variance inputs 3 and 4."""
        return ctx.op == "BatchNormalization"

    def relate(self, ctx: NodeContext) -> list[Relation]:
        if any(o.name and o.outputs for o in ctx.node.outputs[1:]):
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}' runs in training mode")
        rels = _identity_except(ctx, set(), "")
        y = ctx.output(0)
        if y is None or ctx.rank(ctx.input(0)) is None:
            return rels
        view = group_norm_view(ctx.node) if ctx.op == "InstanceNormalization" else None
        if view is not None:
            rels.append(Statistic(Slot(ctx.node.inputs[0].name, 2), f"InstanceNormalization '{ctx.node.name}' "
                                  "normalises each group of a GroupNorm over its channels", local=True))
        elif ctx.op == "InstanceNormalization":  # statistics over axes 2…: channels merged into them must stay
            x = ctx.node.inputs[0]
            rels += [Barrier(x.name, a, f"InstanceNormalization '{ctx.node.name}' normalises over axis {a}")
                     for a in range(2, ctx.rank(x) or 0)]
        for k in range(1, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is not None:
                rels.append(Link(Slot(p.name, 0), Slot(y.name, 1)))
                if ctx.is_const(p):
                    rels.append(Member(Slot(p.name, 0), Role.PARAM))
        return rels


    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """A GroupNorm's InstanceNormalization: group statistics over the kept channels only."""
        view = group_norm_view(ctx.node) if ctx.op == "InstanceNormalization" else None
        x, y = ctx.input(0), ctx.output(0)
        if view is None or x is None or y is None:
            return
        m = tw.mask(x, 2, view.per_group * view.inner)
        if m is None:
            return
        normed = masked_normalise(tw, x, m, float(ctx.node.attrs.get("epsilon", 1e-5)), centre=True)
        scale, bias = ctx.const(ctx.input(1)), ctx.const(ctx.input(2))
        if scale is None or bias is None:
            return
        finish_affine(tw, ctx.node, normed, tw.constant(scale.reshape(-1, 1), x),
                      tw.constant(bias.reshape(-1, 1), x), y)


def _normalised_axis(ctx: NodeContext) -> int | None:
    """The single normalised axis of a Layer/RMSNormalization node (None: several axes or unknown rank)."""
    r = ctx.rank(ctx.input(0))
    if r is None or r < 2:
        return None
    axis = norm_axis(ctx.int_attr("axis", -1), r)
    return axis if axis == r - 1 else None


_TOKEN_MIXING = ("Transpose", "MatMul", "Gemm", "Add", "Conv", "Reshape", "Identity")


def _source(t: gs.Tensor) -> tuple[gs.Node, gs.Tensor] | None:
    """The Split/Slice that produced ``t`` and the tensor it cuts, or None."""
    if len(t.inputs) != 1 or t.inputs[0].op not in ("Split", "Slice"):
        return None
    node = t.inputs[0]
    return node, node.inputs[0]


def gates_sibling(x: gs.Tensor, y: gs.Tensor, depth: int = 6) -> bool:
    """``x`` is one part of a Split/Slice and ``y``, through a single-consumer token-mixing chain,
    multiplies another part of the same tensor (gMLP's spatial gating unit)."""
    src = _source(x)
    if src is None:
        return False
    split, whole = src
    t = y
    for _ in range(depth):
        if len(t.outputs) != 1:
            return False
        node = t.outputs[0]
        if node.op == "Mul":
            others = [i for i in node.inputs if i is not t]
            if len(others) != 1 or others[0] is x:
                return False
            other = _source(others[0])
            return other is not None and (other[0] is split or other[1] is whole)
        if node.op not in _TOKEN_MIXING or not node.outputs:
            return False
        t = node.outputs[0]
    return False


class HiddenNormRule(ChannelRule):
    """LayerNormalization / RMSNormalization over the last axis: a Statistic (hidden size).

    Also ``SimplifiedLayerNormalization``, ONNX Runtime's RMSNorm, which its transformer optimizer writes
    in the default domain (the ONNX checker does not know it; ONNX Runtime runs it).

    Several normalised axes are left to :class:`StatsOverAxisRule` (barriers).
    """

    op_types = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        axis = _normalised_axis(ctx)
        if axis is None:
            return StatsOverAxisRule().relate(ctx)
        op, name = ctx.node.op, ctx.node.name
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            return ctx.barrier_all(f"{op} '{name}': missing input or output")
        extra = [o for o in ctx.node.outputs[1:] if o.name]
        if extra:  # Mean / InvStdDev outputs (training) carry the statistics themselves
            return ctx.barrier_all(f"{op} '{name}' outputs its statistics")
        r = axis + 1
        rels: list[Relation] = [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(r)]
        rels.append(Statistic(Slot(x.name, axis),
                              f"{op} '{name}' normalises over axis {axis}: channels there are not independent",
                              local=op == "LayerNormalization" and gates_sibling(x, y)))
        for k in range(1, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is None:
                continue
            pr = ctx.rank(p)
            if pr is None or not ctx.is_const(p):
                rels.append(Barrier(p.name, None, f"{op} '{name}': scale/bias computed at run time"))
                continue
            shape = ctx.shape(p) or ()
            for a in range(pr):  # broadcast against the trailing axes: only the last one is a channel axis
                if a == pr - 1 and shape[a] != 1:
                    rels.append(Link(Slot(p.name, a), Slot(y.name, axis)))
                else:
                    rels.append(Barrier(p.name, a, f"{op} '{name}': broadcast axis of scale/bias"))
            rels.append(Member(Slot(p.name, pr - 1), Role.PARAM))
        return rels

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """Replace the node by its decomposition with statistics over the kept channels."""
        axis = _normalised_axis(ctx)
        x, y = ctx.input(0), ctx.output(0)
        if axis is None or x is None or y is None:
            return
        d = (ctx.shape(x) or ())[axis]
        m = tw.mask(x, axis, int(d)) if isinstance(d, int) else None
        if m is None:
            return
        node = ctx.node
        normed = masked_normalise(tw, x, m, float(node.attrs.get("epsilon", 1e-5)),
                                  centre=node.op == "LayerNormalization")
        finish_affine(tw, node, normed, ctx.input(1), ctx.input(2), y)


def masked_normalise(tw: TwinContext, x: gs.Tensor, m: np.ndarray, eps: float, *, centre: bool) -> gs.Variable:
    """``(x - mean) / sqrt(var + eps)`` (``centre``; else ``x / sqrt(mean(x²) + eps)``) over the last axis,
    statistics over the elements where ``m`` is True only: the reductions are MatMuls with ``m / D'``."""
    col = tw.constant((m / m.sum()).reshape(-1, 1), x)
    centred: gs.Tensor = x
    if centre:
        centred = tw.op("Sub", [x, tw.op("MatMul", [x, col], x)], x)
    var = tw.op("MatMul", [tw.op("Mul", [centred, centred], x), col], x)
    return tw.op("Div", [centred, tw.op("Sqrt", [tw.op("Add", [var, tw.constant(np.asarray(eps), x)], x)], x)], x)


def finish_affine(tw: TwinContext, node: gs.Node, normed: gs.Tensor, scale: gs.Tensor | None,
                  bias: gs.Tensor | None, y: gs.Variable) -> None:
    """Write ``normed * scale + bias`` into ``y`` and detach ``node`` (its replacement is complete)."""
    out = tw.op("Mul", [normed, scale], normed) if scale is not None else normed
    node.outputs.clear()
    node.inputs.clear()
    tw.op("Add" if bias is not None else "Identity", [out, bias] if bias is not None else [out], normed, out=y)


class StatsOverAxisRule(ChannelRule):
    """Ops whose statistics run over some axes: those axes are barriers, the rest identity."""

    op_types = ("GroupNormalization", "LpNormalization", "MeanVarianceNormalization", "LRN")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op = ctx.node.op
        r = ctx.rank(ctx.input(0))
        if r is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': shape unknown")
        if op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
            axis = norm_axis(ctx.int_attr("axis", -1), r)
            blocked = set(range(axis, r))
        elif op == "MeanVarianceNormalization":
            blocked = {norm_axis(a, r) for a in ctx.ints_attr("axes", [0, 2, 3])}
        elif op == "LpNormalization":
            blocked = {norm_axis(ctx.int_attr("axis", -1), r)}
        else:  # GroupNormalization, LRN: statistics across channels
            blocked = {1}
        reason = f"{op} '{ctx.node.name}' normalises over axis {sorted(blocked)}: channels there are not independent"
        rels = _identity_except(ctx, blocked, reason)
        for k in range(1, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is not None:
                rels.append(Barrier(p.name, None, reason))
        for o in ctx.node.outputs[1:]:
            if o.name:
                rels.append(Barrier(o.name, None, reason))
        return rels
