"""Tiny, seeded transformer architectures for the pruning tests (issue #3).

Every model is small (hidden 32, 2-4 heads, 8-17 tokens or 32x32 images) so both PyTorch exporters
take a few seconds. They are written the way the reference implementations write them, because the
*exported idioms* are what spa has to understand:

* :class:`BertEncoder` — post-LN encoder, separate Q/K/V Linears ``view(B,S,H,Dh).transpose(1,2)``,
  ``q @ k.transpose(-1,-2)``, softmax, ``@ v``, ``transpose(1,2).reshape(B,S,D)``, GELU MLP (4·D).
  ``fused_qkv=True``: one Linear D → 3·D split with ``chunk`` (layer 0) and ``split`` (layer 1).
* :class:`LlamaDecoder` — token ids (int64 graph input) → ``nn.Embedding``, RMSNorm written out
  (``x * rsqrt(mean(x²) + eps) * w``), rotary embeddings by rotate-half (Slice/Neg/Concat on the
  head_dim axis), grouped-query attention (``n_kv_heads < n_heads``) with HF's ``repeat_kv``
  (``x[:, :, None].expand(...).reshape(...)``) or ``repeat_interleave``, a causal mask (``Where`` on a
  boolean ``tril`` buffer, or an additive ``triu(-inf)`` buffer), SwiGLU MLP
  ``down(silu(gate(x)) * up(x))``, tied or untied LM head.
* :class:`ViT` — patch-embed Conv → ``flatten(2).transpose(1,2)`` → class token concat + position
  embedding → pre-LN blocks with timm's fused ``qkv.reshape(B,N,3,H,Dh).permute(2,0,3,1,4)`` +
  ``unbind`` → LN → head on the class token.
* :class:`SwinTiny` — patch embed → channels-last → two Swin blocks (window partition/reverse with
  view/permute/reshape, window attention with a per-head relative-position bias; the second block
  shifted with ``torch.roll`` and the shifted-window attention mask) → mean pool → head.
* :class:`ConvNeXtTiny` — stem Conv → ConvNeXt blocks (depthwise 7x7 → permute to channels-last →
  LayerNorm → Linear 4× → GELU → Linear → layer-scale γ → permute back → residual) → pool → LN → head.

Token-id models cannot go through :func:`models.export.export_onnx` (its example input is a float
``randn``); :func:`export_token_model` exports them with an int64 ``input`` of token ids instead.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 32
SEQ = 8
VOCAB = 64


def _init(model: nn.Module, seed: int) -> nn.Module:
    """Seeded, non-trivial weights: normal Linear/Conv/Embedding, norm scales ~U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias") or name.endswith("beta"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:  # norm scales, layer-scale gammas, class tokens of rank 1
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.eval()


# -------------------------------------------------------------------------------------------------
# BERT-style encoder
# -------------------------------------------------------------------------------------------------
class BertSelfAttention(nn.Module):
    """Multi-head self-attention with separate or fused Q/K/V projections."""

    def __init__(self, d: int, heads: int, fused_qkv: bool = False, split_style: str = "chunk") -> None:
        super().__init__()
        self.h, self.dh, self.fused, self.split_style = heads, d // heads, fused_qkv, split_style
        if fused_qkv:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        if self.fused:
            qkv = self.qkv(x)
            q, k, v = qkv.chunk(3, dim=-1) if self.split_style == "chunk" else qkv.split(d, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (t.view(b, s, self.h, self.dh).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        return self.o(ctx)


class BertLayer(nn.Module):
    """Post-LN encoder layer: LN(x + attn(x)), LN(x + mlp(x))."""

    def __init__(self, d: int, heads: int, fused_qkv: bool, split_style: str) -> None:
        super().__init__()
        self.attn = BertSelfAttention(d, heads, fused_qkv, split_style)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class BertEncoder(nn.Module):
    """Two encoder layers over float token features ``[B, S, D]``."""

    def __init__(self, d: int = HIDDEN, heads: int = 4, layers: int = 2, fused_qkv: bool = False) -> None:
        super().__init__()
        styles = ["chunk", "split"]
        self.layers = nn.ModuleList(BertLayer(d, heads, fused_qkv, styles[i % 2]) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def bert_tiny() -> nn.Module:
    """BERT-style encoder: 2 layers, hidden 32, 4 heads of 8, MLP 128, separate Q/K/V."""
    torch.manual_seed(0)
    return _init(BertEncoder(fused_qkv=False), seed=0)


def bert_fused_tiny() -> nn.Module:
    """BERT-style encoder with one fused QKV Linear per layer (``chunk`` in layer 0, ``split`` in 1)."""
    torch.manual_seed(1)
    return _init(BertEncoder(fused_qkv=True), seed=1)


class BertClassifier(nn.Module):
    """Token ids ``[B, S]`` → word + learned position embeddings → embedding LayerNorm → post-LN encoder
    layers → pooler (first token, Linear + tanh) → classifier logits: the whole hidden size is internal,
    so it can be pruned (``--prune-hidden``)."""

    def __init__(self, vocab: int = VOCAB, d: int = HIDDEN, heads: int = 4, layers: int = 2, seq: int = SEQ,
                 classes: int = 3) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.position = nn.Embedding(seq, d)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList(BertLayer(d, heads, False, "chunk") for _ in range(layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.word(ids) + self.position(pos)[None])
        for layer in self.layers:
            x = layer(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert_cls_tiny() -> nn.Module:
    """BERT-style classifier with embeddings: 2 layers, hidden 32, 4 heads, 3 classes."""
    torch.manual_seed(4)
    return _init(BertClassifier(), seed=4)


# -------------------------------------------------------------------------------------------------
# LLaMA-style decoder
# -------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm written out: ``x * rsqrt(mean(x²) + eps) * w``."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` over the last (head_dim) axis, as in HF LLaMA."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int, style: str) -> torch.Tensor:
    """``[B, Hkv, S, Dh]`` → ``[B, Hkv·n_rep, S, Dh]``, KV head ``j`` serving query heads ``j·n_rep + r``."""
    if n_rep == 1:
        return x
    if style == "interleave":
        return torch.repeat_interleave(x, n_rep, dim=1)
    b, h, s, d = x.shape  # HF transformers' repeat_kv
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Grouped-query attention with rotary embeddings and a causal mask."""

    def __init__(self, d: int, heads: int, kv_heads: int, seq: int, repeat: str, mask: str) -> None:
        super().__init__()
        self.h, self.kv, self.dh = heads, kv_heads, d // heads
        self.repeat, self.mask = repeat, mask
        self.q_proj = nn.Linear(d, heads * self.dh, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.o_proj = nn.Linear(heads * self.dh, d, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.dh, 2).float() / self.dh))
        freqs = torch.outer(torch.arange(seq).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.register_buffer("tril", torch.ones(seq, seq, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("neg", torch.full((seq, seq), float("-inf")).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.dh).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv, self.dh).transpose(1, 2)
        cos, sin = self.cos[:s], self.sin[:s]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = self.h // self.kv
        k, v = repeat_kv(k, n_rep, self.repeat), repeat_kv(v, n_rep, self.repeat)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.dh)
        if self.mask == "where":
            scores = scores.masked_fill(~self.tril[:s, :s], float("-inf"))
        else:
            scores = scores + self.neg[:s, :s]
        att = torch.softmax(scores, dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, s, self.h * self.dh)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d: int, inter: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """Pre-norm decoder block."""

    def __init__(self, d: int, heads: int, kv_heads: int, inter: int, seq: int, repeat: str, mask: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(d)
        self.self_attn = LlamaAttention(d, heads, kv_heads, seq, repeat, mask)
        self.post_attention_layernorm = RMSNorm(d)
        self.mlp = SwiGLU(d, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    """Token ids ``[B, S]`` (int64) → logits ``[B, S, V]``."""

    def __init__(self, vocab: int = VOCAB, d: int = HIDDEN, heads: int = 4, kv_heads: int = 2, inter: int = 48,
                 layers: int = 2, seq: int = SEQ, tied: bool = False, repeat: str = "expand",
                 mask: str = "where") -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaBlock(d, heads, kv_heads, inter, seq, repeat, mask) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.tied = tied

    def tie(self) -> LlamaDecoder:
        """Share the embedding table with the LM head (after initialisation)."""
        if self.tied:
            self.lm_head.weight = self.embed_tokens.weight
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


#: GQA geometry of the tiny decoders (tests read these).
LLAMA_HEADS, LLAMA_KV_HEADS, LLAMA_HEAD_DIM, LLAMA_INTER = 4, 2, HIDDEN // 4, 48


def llama_tiny() -> nn.Module:
    """LLaMA-style decoder: GQA 4 query / 2 KV heads via expand+reshape, Where causal mask, untied head."""
    torch.manual_seed(2)
    return _init(LlamaDecoder(tied=False, repeat="expand", mask="where"), seed=2)


def llama_tied_tiny() -> nn.Module:
    """LLaMA-style decoder: GQA via ``repeat_interleave``, additive ``triu(-inf)`` mask, tied LM head."""
    torch.manual_seed(3)
    return _init(LlamaDecoder(tied=True, repeat="interleave", mask="add"), seed=3).tie().eval()  # type: ignore[union-attr]


# -------------------------------------------------------------------------------------------------
# ViT
# -------------------------------------------------------------------------------------------------
class TimmAttention(nn.Module):
    """timm's Attention: fused qkv ``reshape(B,N,3,H,Dh).permute(2,0,3,1,4)`` + ``unbind(0)``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.scale = self.dh ** -0.5
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            att = att + bias
        att = att.softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear 4× → GELU → Linear."""

    def __init__(self, d: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, ratio * d), nn.Linear(ratio * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-LN block."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = TimmAttention(d, heads), Mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """32x32 image, 8x8 patches (16 tokens + class token), hidden 32, 4 heads, 2 blocks, 10 classes."""

    def __init__(self, d: int = HIDDEN, heads: int = 4, depth: int = 2, patch: int = 8, img: int = 32,
                 classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, d))
        self.blocks = nn.ModuleList(ViTBlock(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def vit_tiny() -> nn.Module:
    """ViT: patch-embed Conv, class token, position embedding, 2 pre-LN blocks, head on the class token."""
    torch.manual_seed(4)
    return _init(ViT(), seed=4)


# -------------------------------------------------------------------------------------------------
# Swin
# -------------------------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[B·nW, ws·ws, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(win: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """``[B·nW, ws·ws, C]`` → ``[B, H, W, C]``."""
    c = win.shape[-1]
    x = win.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class SwinBlock(nn.Module):
    """Window attention with a per-head relative-position bias; ``shift > 0``: shifted windows + mask."""

    def __init__(self, d: int, heads: int, res: int, ws: int, shift: int) -> None:
        super().__init__()
        self.res, self.ws, self.shift, self.h = res, ws, shift, heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = TimmAttention(d, heads), Mlp(d)
        n = ws * ws
        self.rel_bias = nn.Parameter(torch.zeros(heads, n, n))
        if shift:
            img = torch.zeros(1, res, res, 1)
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = window_partition(img, ws).squeeze(-1)  # [nW, n]
            mask = (mw.unsqueeze(1) - mw.unsqueeze(2)) != 0
            self.register_buffer("attn_mask", mask.float() * -100.0, persistent=False)
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.ws)
        bias = self.rel_bias.unsqueeze(0)  # [1, H, n, n]
        if self.attn_mask is not None:
            nw = self.attn_mask.shape[0]
            bias = (bias.unsqueeze(0) + self.attn_mask[None, :, None]).reshape(nw, self.h, self.ws ** 2, -1)
            bias = bias.repeat(b, 1, 1, 1)
        win = self.attn(win, bias)
        x = window_reverse(win, self.ws, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SwinTiny(nn.Module):
    """32x32 image → 4x4 patches (8x8 tokens, hidden 32) → W-MSA block + SW-MSA block (windows 4x4)."""

    def __init__(self, d: int = HIDDEN, heads: int = 2, img: int = 32, patch: int = 4, ws: int = 4,
                 classes: int = 10) -> None:
        super().__init__()
        res = img // patch
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.norm0 = nn.LayerNorm(d)
        self.blocks = nn.ModuleList([SwinBlock(d, heads, res, ws, 0), SwinBlock(d, heads, res, ws, ws // 2)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm0(self.patch_embed(x).permute(0, 2, 3, 1))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))


def swin_tiny() -> nn.Module:
    """Swin-style: window attention (2 heads) and a shifted-window block, relative-position bias."""
    torch.manual_seed(5)
    return _init(SwinTiny(), seed=5)


# -------------------------------------------------------------------------------------------------
# ConvNeXt
# -------------------------------------------------------------------------------------------------
class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 → NHWC → LN → Linear 4× → GELU → Linear → γ → NCHW → residual."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    """Stem Conv 4x4/4 → 2 ConvNeXt blocks (hidden 32) → global mean → LN → head."""

    def __init__(self, d: int = HIDDEN, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(d) for _ in range(depth)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


def convnext_tiny() -> nn.Module:
    """ConvNeXt blocks: depthwise 7x7, channels-last LN + MLP, layer scale."""
    torch.manual_seed(6)
    return _init(ConvNeXtTiny(), seed=6)


# -------------------------------------------------------------------------------------------------
# export of token-id models
# -------------------------------------------------------------------------------------------------
TOKEN_SHAPE: tuple[int, ...] = (1, SEQ)


def export_token_model(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    *,
    exporter: Literal["legacy", "dynamo"],
    vocab: int = VOCAB,
    opset: int | None = None,
    dynamic: bool = False,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Like :func:`models.export.export_onnx`, for a model whose input is int64 token ids.

    The graph input ``input`` is int64 of ``input_shape``; ``verify`` compares ONNX Runtime with torch
    on seeded ids in ``[0, vocab)``. ``dynamic``: batch and sequence axes are symbolic (``batch``,
    ``seq``; the sequence at most ``input_shape[1]``), as LLM exports usually are.
    """
    from models.export import _cached_torchlib_registry, _finalize, _output_names, _quiet

    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    opset = opset or (13 if exporter == "legacy" else 18)
    path = Path(path)
    model.eval()
    shape = tuple(input_shape)
    if dynamic and shape[0] == 1:
        shape = (2, *shape[1:])  # torch.export specialises size-1 dims
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        n_out = 1 if isinstance(model(ids), torch.Tensor) else len(model(ids))
    names = _output_names(n_out)
    if exporter == "legacy":
        axes = {"batch": 0, "seq": 1}
        kwargs: dict[str, Any] = {}
        if dynamic:
            kwargs["dynamic_axes"] = {n: {v: k for k, v in axes.items()} for n in ["input", *names]}
        buf = io.BytesIO()
        with _quiet():
            torch.onnx.export(model, (ids,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=names, **kwargs)
        proto = onnx.load_from_string(buf.getvalue())
    else:
        with _quiet(), _cached_torchlib_registry():
            if dynamic:
                dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=shape[1])}
                kwargs = {"dynamic_shapes": (dims,)}
            else:
                kwargs = {}
            program = torch.onnx.export(model, (ids,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=names, verbose=False, report=False, **kwargs)
            assert program is not None
            proto = program.model_proto
    _finalize(proto, path)
    if verify:
        import onnxruntime as ort

        onnx.checker.check_model(str(path), full_check=True)
        check_shape = (3, shape[1] - 1) if dynamic else shape
        ids = torch.randint(0, vocab, check_shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = model(ids)
        expected = [out] if isinstance(out, torch.Tensor) else list(out)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": ids.numpy()})
        for e, g in zip(expected, got):
            e = e.numpy()
            tol = atol * max(1.0, float(np.abs(e).max()))
            if e.shape != g.shape or not float(np.abs(e - g).max()) <= tol:
                raise AssertionError(f"ONNX output differs from torch ({path})")
    return path


def _token_entry(build: Any) -> Any:
    def factory() -> tuple[nn.Module, tuple[int, ...]]:
        return build().eval(), TOKEN_SHAPE

    factory.__doc__ = f"{build.__name__}() with int64 token ids of shape {TOKEN_SHAPE}."
    return factory


#: Float-input shapes of the models registered in ``models.registry.TINY_MODELS``.
TOKEN_FEATURES: tuple[int, ...] = (1, SEQ, HIDDEN)

#: Token-id models, ``name -> () -> (model, ids shape)``; export them with :func:`export_token_model`
#: (``models.export.export_onnx`` feeds float ``randn`` inputs, which ``nn.Embedding`` rejects).
TOKEN_MODELS = {
    "llama": _token_entry(llama_tiny),
    "llama_tied": _token_entry(llama_tied_tiny),
}

#: Token-id models whose hidden size is internal (embeddings in, logits out), for hidden-size pruning.
HIDDEN_TOKEN_MODELS = {
    "bert_cls": _token_entry(bert_cls_tiny),
}
