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
* ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` normalise over the hidden axis like
  ``LayerNormalization``: the hidden (last) axis of the inputs and outputs is blocked, leading axes
  (batch, sequence) map through; ``EmbedLayerNormalization`` (token ids → normalised embeddings) blocks
  everything.

ONNX shape inference does not know these ops; their output shapes must be declared in the model's
``value_info`` (ORT's optimizer keeps them when the input model had them), or the axes they touch are
blocked as "shape unknown".
"""

from __future__ import annotations

from spa.rules.base import Barrier, ChannelRule, Link, NodeContext, Relation, Slot, same_dim
from spa.rules.elementwise import broadcast_links

MS_DOMAIN = "com.microsoft"

#: fused attention kernels: every head lives inside one node
FUSED_ATTENTION = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "LongformerAttention",
    "QAttention", "RotaryEmbedding", "DecoderAttention", "RelativePositionBias", "GatedRelativePositionBias",
)


class ContribElementwiseRule(ChannelRule):
    """Gelu, BiasGelu: identity; a constant bias is a per-channel parameter."""

    op_types: tuple[str, ...] = ("Gelu", "BiasGelu")
    domain = MS_DOMAIN

    def relate(self, ctx: NodeContext) -> list[Relation]:
        out = ctx.output(0)
        if out is None:
            return ctx.barrier_all(f"{ctx.node.op} '{ctx.node.name}' has no output")
        return broadcast_links(ctx, [ctx.input(k) for k in range(len(ctx.node.inputs))], out)


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
    """SkipLayerNormalization / SkipSimplifiedLayerNormalization: the hidden axis is a barrier.

    Inputs ``input, skip, gamma[, beta[, bias]]``; outputs ``output[, mean, inv_std_var,
    input_skip_bias_sum]``. Leading axes of ``input``, ``skip`` (when not broadcast), ``output`` and the
    sum output are identity; the statistics outputs and the parameters are blocked.
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
        rels: list[Relation] = []
        full = [x, ctx.input(1)] + [ctx.output(3)]  # input, skip, input_skip_bias_sum
        for t in full:
            st = ctx.shape(t)
            if t is None:
                continue
            if st is None or len(st) != r:
                rels.append(Barrier(t.name, None, reason))
                continue
            for a in range(r - 1):
                if same_dim(st[a], sy[a]):
                    rels.append(Link(Slot(t.name, a), Slot(y.name, a)))
                else:
                    rels.append(Barrier(t.name, a, f"{op} '{name}': '{t.name}' axis {a} broadcast"))
            rels.append(Barrier(t.name, r - 1, reason))
        rels.append(Barrier(y.name, r - 1, reason))
        for k in range(2, len(ctx.node.inputs)):
            p = ctx.input(k)
            if p is not None:
                rels.append(Barrier(p.name, None, reason))
        for k in (1, 2):
            o = ctx.output(k)
            if o is not None:
                rels.append(Barrier(o.name, None, reason))
        return rels
