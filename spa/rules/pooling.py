"""Pooling, reductions and normalising activations over an axis.

* Max/Average/Lp pooling and their Global forms: batch and channel axes are identity; spatial axes
  change size (not linked, hence barriers). MaxPool's ``Indices`` output encodes channel positions
  (flat ``((n*C + c)*H + h)*W + w``): if it is present, the node is a barrier. "Present" means named,
  not "has consumers": a rule cannot see whether a tensor is a graph output, and an Indices output that
  is only a graph output was otherwise missed (its values would silently change after pruning).
* Reduce*: axes not reduced are identity (shifted when ``keepdims=0``); reduced axes are barriers
  (a reduction over channels mixes them) — reducing spatial axes (SE blocks) is therefore fine.
* Softmax/LogSoftmax/Hardmax, ArgMax/ArgMin, CumSum, TopK: the op's axis is a barrier.
"""

from __future__ import annotations

from spa.rules.base import Barrier, ChannelRule, Link, NodeContext, Relation, Slot, Tag, norm_axis


class PoolRule(ChannelRule):
    """Pooling: axes 0 and 1 identity."""

    op_types = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
                "MaxRoiPool")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        if ctx.node.op == "MaxRoiPool":
            return ctx.barrier_all("MaxRoiPool 'rois' mixes batch entries")
        if ctx.output(1) is not None:  # consumed or a graph output: either way its values encode C
            return ctx.barrier_all(f"MaxPool '{ctx.node.name}' Indices output encodes channel positions")
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None or ctx.rank(x) is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}': shape unknown")
        return [Link(Slot(x.name, 0), Slot(y.name, 0)), Link(Slot(x.name, 1), Slot(y.name, 1))]


REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

# opset from which each reduce op takes `axes` as an input rather than an attribute
_AXES_AS_INPUT = {op: 18 for op in REDUCE_OPS} | {"ReduceSum": 13}


class ReduceRule(ChannelRule):
    """Reductions: non-reduced axes identity, reduced axes barriers."""

    op_types = REDUCE_OPS + ("ArgMax", "ArgMin")

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op = ctx.node.op
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            return ctx.barrier_all(f"{op} '{ctx.node.name}': shape unknown")
        keep = bool(int(ctx.attr("keepdims", 1)))
        if op in ("ArgMax", "ArgMin"):
            axes: list[int] | None = [int(ctx.attr("axis", 0))]
        elif ctx.opset >= _AXES_AS_INPUT[op]:
            axes = ctx.ints("axes", 1) if ctx.input(1) is not None or "axes" in ctx.node.attrs else []
            if axes is None:
                return ctx.barrier_all(f"{op} '{ctx.node.name}': axes computed at run time")
        else:
            axes = ctx.ints("axes", None) or []
        if not axes:
            if int(ctx.attr("noop_with_empty_axes", 0)):
                return [Link(Slot(x.name, a), Slot(y.name, a)) for a in range(r)]
            axes = list(range(r))
        reduced = {norm_axis(a, r) for a in axes}
        reason = f"{op} '{ctx.node.name}' reduces over axis"
        rels: list[Relation] = []
        if reduced == {r - 1} and r >= 3 and keep and op in ("ReduceMean", "ReduceSumSquare", "ReduceL2"):
            rels.append(Tag(Slot(x.name, r - 1), "hidden"))  # decomposed LayerNorm/RMSNorm statistics
        out_axis = 0
        for a in range(r):
            if a in reduced:
                rels.append(Barrier(x.name, a, f"{reason} {a}"))
                if keep:
                    out_axis += 1
                continue
            rels.append(Link(Slot(x.name, a), Slot(y.name, out_axis)))
            out_axis += 1
        return rels


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
            blocked = set(range(norm_axis(int(ctx.attr("axis", 1)), r), r))  # coerced to 2-D
        else:
            blocked = {norm_axis(int(ctx.attr("axis", -1)), r)}
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
