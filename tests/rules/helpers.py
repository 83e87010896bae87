"""Small helpers shared by the rule tests (look-ups in analyses and prune reports)."""

from __future__ import annotations

import numpy as np

from spa.analysis.groups import Analysis, Group
from tests.oracle import GraphBuilder


def _conv(b: GraphBuilder, x: str, cin: int, cout: int, k: int = 3, bias: bool = True,
          stride: int = 1) -> tuple[str, str]:
    """A Conv and the name of its weight."""
    y = b.conv(x, cin, cout, k=k, bias=bias, stride=stride)
    return y, b.nodes[-1].input[1]


def _row(result, weight: str, axis: int = 0) -> dict:  # type: ignore[no-untyped-def]
    rows = [r for r in result.report["groups"] if f"{weight}[{axis}]" in r["weights"]]
    assert len(rows) == 1, f"{weight}[{axis}] in {len(rows)} groups"
    return rows[0]


def _group(analysis: Analysis, tensor: str, axis: int) -> Group:
    gs = [g for g in analysis.groups if any(m.tensor == tensor and m.axis == axis for m in g.members)]
    assert len(gs) == 1, f"{tensor}[{axis}] in {len(gs)} groups"
    return gs[0]


def _dims(result) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    return {i.name: list(i.dims) for i in result.model.graph.initializer}


def _i64(b: GraphBuilder, v: list[int], prefix: str = "shape") -> str:
    """An int64 constant (shape vectors, axes)."""
    return b.const(np.array(v, np.int64), prefix)


def _unsqueeze(b: GraphBuilder, x: str, axes: list[int]) -> str:
    """Unsqueeze with ``axes`` as the attribute (opset < 13) or an input (opset >= 13)."""
    if b.opset < 13:
        return b.op("Unsqueeze", [x], axes=axes)  # type: ignore[return-value]
    return b.op("Unsqueeze", [x, _i64(b, axes, "axes")])  # type: ignore[return-value]
