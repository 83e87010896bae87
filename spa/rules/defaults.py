"""The default rule set, listed explicitly in one place (no registration by import side effects)."""

from __future__ import annotations

from spa.rules.base import ChannelRule
from spa.rules.concat_split import ConcatRule, GatherRule, SliceRule, SplitRule
from spa.rules.contrib import ContribElementwiseRule, ContribFusedAttentionRule, ContribSkipNormRule, FastGeluRule
from spa.rules.conv import ConvRule, ConvTransposeRule
from spa.rules.einsum import EinsumRule
from spa.rules.elementwise import BroadcastRule, TriluRule, UnaryRule
from spa.rules.gemm_matmul import GemmRule, MatMulRule
from spa.rules.norm import HiddenNormRule, PerChannelNormRule, StatsOverAxisRule
from spa.rules.pooling import AxisOpRule, PoolRule, ReduceRule
from spa.rules.quant import (
    ConvIntegerRule,
    DynamicQuantizeRule,
    MatMulIntegerRule,
    MsQOperatorRule,
    MsQuantizeDequantizeRule,
    QOperatorRule,
    QuantizeDequantizeRule,
)
from spa.rules.registry import RuleRegistry
from spa.rules.reshape_transpose import ReshapeRule, ShapeOnlyRule, TransposeRule
from spa.rules.resize_pad import ExpandTileRule, PadRule, ResizeRule, ShapeRule

DEFAULT_RULES: tuple[ChannelRule, ...] = (
    ConvRule(),
    ConvTransposeRule(),
    PerChannelNormRule(),
    StatsOverAxisRule(),
    HiddenNormRule(),
    UnaryRule(),
    BroadcastRule(),
    PoolRule(),
    ReduceRule(),
    AxisOpRule(),
    ConcatRule(),
    SplitRule(),
    SliceRule(),
    GatherRule(),
    ReshapeRule(),
    ShapeOnlyRule(),
    TransposeRule(),
    GemmRule(),
    MatMulRule(),
    EinsumRule(),
    ResizeRule(),
    PadRule(),
    ExpandTileRule(),
    ShapeRule(),
    TriluRule(),
    ContribElementwiseRule(),
    FastGeluRule(),
    ContribFusedAttentionRule(),
    ContribSkipNormRule(),
    QuantizeDequantizeRule(),
    MsQuantizeDequantizeRule(),
    DynamicQuantizeRule(),
    ConvIntegerRule(),
    MatMulIntegerRule(),
    QOperatorRule(),
    MsQOperatorRule(),
)


def default_registry() -> RuleRegistry:
    """A fresh registry holding :data:`DEFAULT_RULES`."""
    return RuleRegistry(DEFAULT_RULES)
