"""ONNX Runtime contrib ops (domain ``com.microsoft``) that ORT's transformer optimizer emits.

``onnxruntime.transformers.optimizer`` fuses subgraphs of exported transformers into contrib ops. The
elementwise ones are ordinary channel maps:

* ``Gelu``: unary, identity on every axis;
* ``BiasGelu(A, bias)``, ``FastGelu(X[, bias])``: ``gelu(A + bias)`` with a per-channel bias on the last
  axis — identity plus the bias sliced with the channel (a ``param`` member).

The fused attention and normalisation kernels are barriers, each with a reason that says why:

* ``Attention``, ``MultiHeadAttention``, ``GroupQueryAttention``, ``PackedAttention``, ... compute every
  head inside one kernel whose ``num_heads`` / packed QKV weight layout spa does not rewrite: every axis
  they touch is blocked. Prune the model *before* ORT's fusion (the heads prune there), then fuse.
* ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (``LN(input + skip + bias)``)
  normalise over the hidden axis like ``LayerNormalization``: the hidden (last) axis of the inputs, the
  outputs and the parameters is one group, a :class:`~spa.rules.base.Statistic` — blocked unless the
  hidden size is pruned (``--prune-hidden``); then the masked twin decomposes the node with statistics
  over the kept channels. Leading axes (batch, sequence) map through. A node whose ``mean`` /
  ``inv_std_var`` outputs are used stays blocked; ``EmbedLayerNormalization`` (token ids → normalised
  embeddings) blocks everything.

ONNX shape inference does not know these ops; their output shapes must be declared in the model's
``value_info`` (ORT's optimizer keeps them when the input model had them), or the axes they touch are
blocked as "shape unknown".
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

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
    same_dim,
)
from spa.rules.elementwise import BroadcastRule
from spa.rules.moments import Result, Walk, no_transfer, unary_transfer
from spa.rules.norm import finish_affine, masked_normalise

MS_DOMAIN = "com.microsoft"

#: fused attention kernels: every head lives inside one node
FUSED_ATTENTION = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "LongformerAttention",
    "QAttention", "RotaryEmbedding", "DecoderAttention", "RelativePositionBias", "GatedRelativePositionBias",
)


class ContribElementwiseRule(BroadcastRule):
    """Gelu, BiasGelu: broadcasting elementwise ops (identity; a constant bias is a per-channel parameter)."""

    op_types: tuple[str, ...] = ("Gelu", "BiasGelu")
    domain = MS_DOMAIN

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Gelu of one input: by quadrature, as the standard Gelu; with a bias (BiasGelu, FastGelu): a reason."""
        if len(ctx.node.inputs) != 1:
            return no_transfer(ctx.node)
        return unary_transfer(ctx.node, out, axis, walk)


class FastGeluRule(ContribElementwiseRule):
    """FastGelu(X[, bias]): identity; a constant bias is a per-channel parameter."""

    op_types = ("FastGelu",)


class ContribFusedAttentionRule(ChannelRule):
    """Fused attention kernels: barriers on every axis they touch, with the reason."""

    op_types = FUSED_ATTENTION
    domain = MS_DOMAIN

    def relate(self, ctx: NodeContext) -> list[Relation]:
        return ctx.barrier_all(
            f"{ctx.node.op} '{ctx.node.name}' is an ONNX Runtime fused attention kernel (com.microsoft): "
            "its heads and packed weights are not rewritten; prune the model before ORT's transformer fusion")


class ContribSkipNormRule(ChannelRule):
    """SkipLayerNormalization / SkipSimplifiedLayerNormalization: the hidden axis is a Statistic.

    Inputs ``input, skip, gamma[, beta[, bias]]``; outputs ``output[, mean, inv_std_var,
    input_skip_bias_sum]``. Every axis of ``input``, ``skip`` (when not broadcast), ``output`` and the sum
    output maps through; the hidden axis is one group with the 1-D parameters (sliced with it).
    """

    op_types = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization")
    domain = MS_DOMAIN

    def relate(self, ctx: NodeContext) -> list[Relation]:
        op, name = ctx.node.op, ctx.node.name
        if op == "EmbedLayerNormalization":
            return ctx.barrier_all(f"{op} '{name}' (com.microsoft) fuses embedding lookups with a "
                                   "normalisation over the hidden axis")
        x, y = ctx.input(0), ctx.output(0)
        sx, sy = ctx.shape(x), ctx.shape(y)
        if x is None or y is None or sx is None or sy is None or len(sx) != len(sy):
            return ctx.barrier_all(f"{op} '{name}': shapes unknown")
        r = len(sx)
        reason = f"{op} '{name}' normalises over the hidden axis {r - 1}: channels there are not independent"
        stats_used = any(ctx.output(k) is not None for k in (1, 2))
        rels: list[Relation] = []
        for t in (x, ctx.input(1), ctx.output(3)):  # input, skip, input_skip_bias_sum
            st = ctx.shape(t)
            if t is None:
                continue
            if st is None or len(st) != r:
                rels.append(Barrier(t.name, None, reason))
                continue
            for a in range(r):
                if same_dim(st[a], sy[a]):
                    rels.append(Link(Slot(t.name, a), Slot(y.name, a)))
                else:
                    rels.append(Barrier(t.name, a, f"{op} '{name}': '{t.name}' axis {a} broadcast"))
        if stats_used:
            rels.append(Barrier(y.name, r - 1, f"{reason}; its mean/inv_std_var outputs are used"))
        else:
            rels.append(Statistic(Slot(y.name, r - 1), reason))
        for k in range(2, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is None:
                continue
            sp = ctx.shape(p)
            if ctx.is_const(p) and sp is not None and len(sp) == 1 and same_dim(sp[0], sy[r - 1]):
                rels += [Link(Slot(p.name, 0), Slot(y.name, r - 1)), Member(Slot(p.name, 0), Role.PARAM)]
            else:
                rels.append(Barrier(p.name, None, f"{op} '{name}': parameter '{p.name}' is not a [hidden] constant"))
        for k in (1, 2):
            o = ctx.output(k)
            if o is not None:
                rels.append(Barrier(o.name, None, reason))
        return rels

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        """``s = input + skip (+ bias)``; the output normalises ``s`` over the kept channels only."""
        node = ctx.node
        x, y, total = ctx.input(0), ctx.output(0), ctx.output(3)
        shape = ctx.shape(y)
        if node.op == "EmbedLayerNormalization" or x is None or y is None or shape is None:
            return
        d = shape[-1]
        m = tw.mask(y, len(shape) - 1, int(d)) if isinstance(d, int) else None
        if m is None or any(ctx.output(k) is not None for k in (1, 2)):
            return
        full = node.op == "SkipLayerNormalization"  # the simplified (RMS) form has no beta: bias is input 3
        beta, bias = (ctx.input(3), ctx.input(4)) if full else (None, ctx.input(3))
        s = tw.op("Add", [x, ctx.input(1)], x)
        if bias is not None:
            s = tw.op("Add", [s, bias], x)
        normed = masked_normalise(tw, s, m, float(node.attrs.get("epsilon", 1e-5)), centre=full)
        finish_affine(tw, node, normed, ctx.input(2), beta, y)
        if total is not None:
            tw.op("Identity", [s], s, out=total)
