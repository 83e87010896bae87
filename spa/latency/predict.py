"""Predicted latency of a plan: the whole model measured once, the layers from the lookup table.

With ``L(plan)`` the sum of the table's latencies over the cost-bearing layers at their pruned shapes,
``L0`` the same sum for the original model and ``T0`` the original's measured latency, the predicted
fraction of the original latency is ``fraction(plan) = 1 - a * (1 - L(plan) / L0)``, where the *sensitivity* ``a`` is
the share of ``T0`` that scales with the tabulated layers: ``a = 1``
is the proportional model ``T0 * L(plan) / L0``, ``a = L0 / T0`` the additive one ``T0 - L0 + L(plan)``
(everything outside the table stays as it was). The search starts from ``a = 1``: inside a whole model
the layers take *longer* than alone (ONNX Runtime fuses BatchNormalization and the activation into
them, caches are colder), and the ops outside the table (BatchNormalization, activations, Add) shrink
with the channels too, so there is no constant residual to keep. On the CPU provider (one thread, the
l2 plan at ratio 0.44 profiled against the original), ``a`` came out at 0.94 for a ResNet-50 (where
``L0 / T0`` = 0.87) and 0.96 for a MobileNetV2 (``L0 / T0`` = 0.49). Starting from a constant also makes the first
search depend on the table alone,
so a second search on the same model looks up exactly the layers the first one measured.

Every plan then measured against the original (fraction ``m`` at ``x = L(plan) / L0``) refits ``a`` by
least squares through the point (1, 1) that the original pins,
``a = sum((1 - x) * (1 - m)) / sum((1 - x) ** 2)``, so the model is calibrated where the search ends up.

>>> round(fit_sensitivity([(0.5, 0.6)]), 6)
0.8
>>> predicted_fraction(0.5, 0.8)
0.6
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from spa.analysis.groups import Analysis
from spa.budget import kept_sizes, node_fraction
from spa.latency.layers import LayerConfig, Shape, concrete_shapes, layer_configs
from spa.latency.lut import LatencyTable
from spa.plan import Plan

log = logging.getLogger(__name__)

#: bounds of the fitted sensitivity: at least a little of the time scales with the layers, and the
#: model never predicts much below zero for the heaviest pruning
SENSITIVITY_RANGE = (0.05, 2.0)


def predicted_fraction(x: float, sensitivity: float) -> float:
    """Predicted latency fraction for a table-latency fraction ``x`` (never below 0)."""
    return max(0.0, 1.0 - sensitivity * (1.0 - x))


def fit_sensitivity(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares sensitivity through (1, 1) from measured ``(x, fraction)`` points.

    Raises:
        ValueError: no point differs from the original (``x`` = 1).
    """
    num = sum((1 - x) * (1 - m) for x, m in points)
    den = sum((1 - x) ** 2 for x, _ in points)
    if den < 1e-12:
        raise ValueError("no measured plan differs from the original")
    lo, hi = SENSITIVITY_RANGE
    return min(hi, max(lo, num / den))


@dataclass
class LatencyPredictor:
    """Table latency of plans of one analysed model.

    Attributes:
        analysis: the groups (its model is the original).
        table: the lookup table (entries measured on demand).
        shapes: concrete shape of every tensor at the timed input shapes.
        original: configuration of every cost-bearing layer of the original, by node name.
        original_ms: the table latency of each of those layers (``None``: not measurable alone).
    """

    analysis: Analysis
    table: LatencyTable
    shapes: Mapping[str, Shape]
    original: dict[str, LayerConfig] = field(default_factory=dict)
    original_ms: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def build(cls, analysis: Analysis, table: LatencyTable,
              input_shapes: Mapping[str, Sequence[int]]) -> LatencyPredictor:
        """Read the original's layers and look each up (measuring what the table lacks)."""
        shapes = concrete_shapes(analysis.model, input_shapes)
        pred = cls(analysis, table, shapes)
        pred.original = layer_configs(analysis.model, shapes)
        pred.original_ms = {name: table.layer_ms(cfg) for name, cfg in pred.original.items()}
        return pred

    @property
    def original_layers_ms(self) -> float:
        """``L0``: the table latency of the original's layers."""
        return sum(v for v in self.original_ms.values() if v is not None)

    def layers_ms(self, plan: Plan) -> float:
        """``L(plan)``: the table latency of the layers at the plan's pruned shapes.

        A pruned layer ONNX Runtime cannot run alone counts as its original latency times its MAC
        fraction.
        """
        sizes = kept_sizes(self.analysis, plan)
        pruned = layer_configs(self.analysis.model, self.shapes, sizes)
        nodes: dict[str, gs.Node] = {}
        total = 0.0
        for name, cfg in pruned.items():
            base = self.original_ms.get(name)
            if base is None:
                continue  # not measurable in the original either: part of the residual
            ms = base if cfg == self.original[name] else self.table.layer_ms(cfg)
            if ms is None:
                if not nodes:
                    nodes = {n.name: n for n in self.analysis.model.graph.nodes}
                fractions = {s: k / max(1, n) for s, (k, n) in sizes.items()}
                ms = base * node_fraction(nodes[name], fractions)
            total += ms
        return total

    def x(self, plan: Plan) -> float:
        """``L(plan) / L0`` (1 when the table has nothing on this model)."""
        base = self.original_layers_ms
        return self.layers_ms(plan) / base if base > 0 else 1.0
