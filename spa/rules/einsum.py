"""Einsum: no channel coupling yet (every axis blocked), but its MACs are counted.

An equation ``"bqhd,bkhd->bhqk"`` sums, for every assignment of its distinct indices, one product of
its operands' elements: ``MACs = Π_{i ∈ distinct indices} size(i)`` (the output's indices times the
contracted ones). An ellipsis stands for the broadcast batch axes, counted with their broadcast size.
(Three or more operands cost more than one MAC per assignment when evaluated pairwise; they are rare
and counted the same.)

>>> einsum_sizes("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)])
{'b': 2, 'i': 3, 'j': 4, 'k': 5}
>>> einsum_sizes("...ij,jk", [(7, 3, 4), (4, 5)])
{'…1': 7, 'i': 3, 'j': 4, 'k': 5}
"""

from __future__ import annotations

from collections.abc import Sequence

from spa.graph.model import Dim
from spa.rules.base import (
    ChannelRule,
    Cost,
    NodeContext,
    Relation,
    dims_product,
    static,
)


def einsum_sizes(equation: str, shapes: Sequence[Sequence[Dim]]) -> dict[str, Dim] | None:
    """Size of every distinct index of ``equation`` (ellipsis axes as ``…1``, ``…2``, ... from the right),
    None when the equation does not match the operand ranks."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if len(lhs) != len(shapes):
        return None
    sizes: dict[str, Dim] = {}
    for term, shape in zip(lhs, shapes):
        pre, ell, post = term.partition("...")
        n_ell = len(shape) - len(pre) - len(post)
        if (not ell and n_ell != 0) or n_ell < 0:
            return None
        for c, d in zip(pre, shape[:len(pre)]):
            sizes[c] = _larger(sizes.get(c), d)
        for k in range(n_ell):
            key = f"…{n_ell - k}"
            sizes[key] = _larger(sizes.get(key), shape[len(pre) + k])
        for c, d in zip(post, shape[len(shape) - len(post):]):
            sizes[c] = _larger(sizes.get(c), d)
    return sizes


def _larger(a: Dim, b: Dim) -> Dim:
    """The broadcast size of one index seen twice (1 broadcasts)."""
    if a is None:
        return b
    sa, sb = static(a), static(b)
    if sa is not None and sb is not None:
        return max(sa, sb)
    return a if sb == 1 else b


class EinsumRule(ChannelRule):
    """Einsum: every axis blocked (channel maps through equations are not implemented); MACs counted."""

    op_types = ("Einsum",)

    def relate(self, ctx: NodeContext) -> list[Relation]:
        return ctx.barrier_all(f"Einsum '{ctx.node.name}': channels through an Einsum equation are not mapped")

    def cost(self, ctx: NodeContext) -> Cost | None:
        """``Π size(i)`` over the distinct indices of the equation (see the module docstring)."""
        eq = ctx.attr("equation")
        eq = eq.decode() if isinstance(eq, bytes) else eq
        shapes = [ctx.shape(t) for t in ctx.node.inputs]
        if not isinstance(eq, str) or any(s is None for s in shapes):
            return None
        sizes = einsum_sizes(eq, shapes)  # type: ignore[arg-type]
        return None if sizes is None else Cost(dims_product(sizes.values()))
