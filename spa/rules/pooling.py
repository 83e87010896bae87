"""Pooling, reductions and normalising activations over an axis.

* Max/Average/Lp pooling and their Global forms: batch and channel axes are identity; spatial axes
  change size (not linked, hence barriers). MaxPool's ``Indices`` output encodes channel positions
  (flat ``((n*C + c)*H + h)*W + w``): if it is present, the node is a barrier. "Present" means named,
  not "has consumers": a rule cannot see whether a tensor is a graph output, and an Indices output that
  is only a graph output was otherwise missed (its values would silently change after pruning).
* Reduce*: axes not reduced are identity (shifted when ``keepdims=0``); reduced axes are barriers
  (a reduction over channels mixes them) — reducing spatial axes (SE blocks) is therefore fine. The
  reductions a decomposed LayerNorm/RMSNorm is made of (Mean, Sum, SumSquare, L1, L2) mark their reduced
  axes as :class:`~spa.rules.base.Statistic` instead: with hidden-size pruning the masked twin multiplies
  the input by the keep-mask and rescales a mean by ``D/D'`` — the pruned node reduces over ``D'``.
  One such statistic is *local* (prunable by default, see ``Statistic.local``): the mean over channels of
  per-channel norms, ConvNeXt-V2's global response normalisation ``x · ‖x‖_HW / mean_C(‖x‖_HW)`` — a
  ``ReduceMean`` over one axis of a ``ReduceL2``/``ReduceL1``/``Sqrt(ReduceSum…)`` output that is 1 on
  every other axis but the batch. Over the kept channels it is the same normalisation of the pruned MLP.
* Softmax/LogSoftmax/Hardmax, ArgMax/ArgMin, CumSum, TopK: the op's axis is a barrier.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.rules.base import Barrier, ChannelRule, Link, NodeContext, Relation, Slot, Statistic, TwinContext, norm_axis
from spa.rules.moments import Result, Walk, no_transfer, same_axis_transfer


def mask_reduction(ctx: NodeContext, tw: TwinContext, axes: set[int], *, mean: bool) -> None:
    """In the masked twin, make a reduction over ``axes`` of input 0 see only the kept elements:
    multiply the input by the keep-mask of each pruned axis; rescale a mean by ``D/D'``."""
    x, y = ctx.input(0), ctx.output(0)
    shape = ctx.shape(x)
    if x is None or y is None or shape is None:
        return
    r, masked, rescale = len(shape), x, 1.0
    for a in sorted(axes):
        d = shape[a]
        m = tw.mask(x, a, int(d)) if isinstance(d, int) else None
        if m is None:
            continue
        masked = tw.op("Mul", [masked, tw.constant(m.reshape((-1,) + (1,) * (r - 1 - a)), x)], x)
        rescale *= len(m) / float(m.sum())
    if masked is x:
        return
    ctx.node.inputs[0] = masked
    if mean:
        raw = gs.Variable(tw.fresh(y.name), dtype=y.dtype)
        ctx.node.outputs[0] = raw
        tw.op("Mul", [raw, tw.constant(np.asarray(rescale), x)], x, out=y)


#: global pools whose statistic over the spatial axes stays exact over kept elements (mean: rescaled)
_MASKABLE_POOLS = {"GlobalAveragePool": True, "GlobalLpPool": False}


class PoolRule(ChannelRule):
    """Pooling: axes 0 and 1 identity; the spatial axes of a global average/Lp pool are a Statistic.

    tf2onnx writes LayerNorm moments as GlobalAveragePool over ``[B, S, D]``: its "spatial" axis is the
    hidden size (see :class:`~spa.rules.base.Statistic`).
    """

    op_types = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
                "MaxRoiPool")

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Unchanged on the channel axis (an approximation: pooling lowers the variance, max-pooling raises
        the mean); MaxRoiPool (regions become the batch) is a reason."""
        if ctx.node.op == "MaxRoiPool":
            return no_transfer(ctx.node)
        return same_axis_transfer(ctx.node, out, axis, walk)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        if ctx.node.op == "MaxRoiPool":
            return ctx.barrier_all("MaxRoiPool 'rois' mixes batch entries")
        if ctx.output(1) is not None:  # consumed or a graph output: either way its values encode C
            return ctx.barrier_all(f"MaxPool '{ctx.node.name}' Indices output encodes channel positions")
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None or ctx.rank(x) is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape unknown")
        rels: list[Relation] = [Link(Slot(x.name, 0), Slot(y.name, 0)), Link(Slot(x.name, 1), Slot(y.name, 1))]
        r = ctx.rank(x) or 0
        if ctx.node.op in _MASKABLE_POOLS:
            rels += [Statistic(Slot(x.name, a), f"{ctx.node.op} '{ctx.node.name}' pools over axis {a}")
                     for a in range(2, r)]
        return rels

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """Global pools: statistics over the kept elements of pruned spatial axes."""
        op = ctx.node.op
        if op in _MASKABLE_POOLS:
            mask_reduction(ctx, tw, set(range(2, ctx.rank(ctx.input(0)) or 0)), mean=_MASKABLE_POOLS[op])


REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

#: reductions that stay exact over the kept channels when the removed ones are zeroed (mean: rescaled)
MASKABLE = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")

# opset from which each reduce op takes `axes` as an input rather than an attribute
_AXES_AS_INPUT = dict.fromkeys(REDUCE_OPS, 18) | {"ReduceSum": 13}


def _is_channel_norm(x: gs.Tensor, axis: int, shape: tuple[object, ...]) -> bool:
    """``x`` holds one spatial norm per channel on ``axis`` (1 on every other axis but the batch), made
    by a ReduceL2/ReduceL1 or the square root of a sum of squares (global response normalisation)."""
    if any(d != 1 for a, d in enumerate(shape) if a not in (0, axis)) or len(x.inputs) != 1:
        return False
    producer = x.inputs[0]
    if producer.op == "Sqrt" and len(producer.inputs[0].inputs) == 1:
        producer = producer.inputs[0].inputs[0]
        return producer.op in ("ReduceSum", "ReduceSumSquare")
    return producer.op in ("ReduceL2", "ReduceL1")


class ReduceRule(ChannelRule):
    """Reductions: non-reduced axes identity, reduced axes barriers."""

    op_types = REDUCE_OPS + ("ArgMax", "ArgMin")

    @staticmethod
    def _reduced(ctx: NodeContext) -> set[int] | None:
        """Reduced axes; None when computed at run time or the rank is unknown."""
        op, r = ctx.node.op, ctx.rank(ctx.input(0))
        if r is None:
            return None
        if op in ("ArgMax", "ArgMin"):
            axes: list[int] | None = [ctx.int_attr("axis", 0)]
        elif ctx.opset >= _AXES_AS_INPUT[op]:
            axes = ctx.ints("axes", 1) if ctx.input(1) is not None or "axes" in ctx.node.attrs else []
            if axes is None:
                return None
        else:
            axes = ctx.ints("axes", None) or []
        if not axes:
            if ctx.int_attr("noop_with_empty_axes", 0):
                return set()
            axes = list(range(r))
        return {norm_axis(a, r) for a in axes}

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op = ctx.node.op
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': shape unknown")
        reduced = self._reduced(ctx)
        if reduced is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': axes computed at run time")
        keep = bool(ctx.int_attr("keepdims", 1))
        reason = f"{op} '{ctx.node.name}' reduces over axis"
        rels: list[Relation] = []
        out_axis = 0
        for a in range(r):
            if a in reduced:
                if op in MASKABLE:
                    shape = ctx.shape(x)
                    local = (op == "ReduceMean" and len(reduced) == 1 and shape is not None
                             and _is_channel_norm(x, a, shape))
                    rels.append(Statistic(Slot(x.name, a), f"{reason} {a}", local=local))
                else:
                    rels.append(Barrier(x.name, a, f"{reason} {a}"))
                if keep:
                    out_axis += 1
                continue
            rels.append(Link(Slot(x.name, a), Slot(y.name, out_axis)))
            out_axis += 1
        return rels

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """Zero the removed channels before the reduction; rescale a mean by ``D/D'`` after it."""
        reduced = self._reduced(ctx)
        if ctx.node.op in MASKABLE and reduced:
            mask_reduction(ctx, tw, reduced, mean=ctx.node.op == "ReduceMean")


class AxisOpRule(ChannelRule):
    """Softmax-like and axis-wise ops: the op's axis is a barrier, others identity."""

    op_types = ("Softmax", "LogSoftmax", "Hardmax", "CumSum", "TopK")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op = ctx.node.op
        x = ctx.input(0)
        r = ctx.rank(x)
        if x is None or r is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': shape unknown")
        if op == "CumSum":
            ax = ctx.ints("", 1)
            if not ax:
                return ctx.barrier_all("CumSum axis computed at run time")
            blocked = {norm_axis(ax[0], r)}
        elif op in ("Softmax", "LogSoftmax", "Hardmax") and ctx.opset < 13:
            blocked = set(range(norm_axis(ctx.int_attr("axis", 1), r), r))  # coerced to 2-D
        else:
            blocked = {norm_axis(ctx.int_attr("axis", -1), r)}
        reason = f"{op} '{ctx.node.name}' works across axis {sorted(blocked)}"
        rels: list[Relation] = []
        for out in ctx.node.outputs:
            if not out.name:
                continue
            for a in range(r):
                if a in blocked:
                    rels += [Barrier(x.name, a, reason), Barrier(out.name, a, reason)]
                else:
                    rels.append(Link(Slot(x.name, a), Slot(out.name, a)))
        return rels
