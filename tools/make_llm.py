#!/usr/bin/env python3
"""Write a LLaMA-style decoder as ONNX with seeded random weights, at a chosen size.

The graph uses the idioms real exports use: an embedding Gather, RMSNorm written out
(Pow → ReduceMean → Add → Sqrt → Div → Mul), Q/K/V/O MatMuls with [in, out] weights, Reshape to heads,
rotary embeddings by rotate-half (Slice/Neg/Concat with cos/sin tables), grouped-query attention
(K/V heads repeated by Unsqueeze → Expand → Reshape), a causal mask, Softmax, SwiGLU MLP
(down(silu(gate(x)) * up(x))), a final norm and an untied (or tied) LM head. Shapes are static
(batch 1, ``--seq`` tokens).

Weights are streamed straight into one external-data file, so a 1 B-parameter model is written with
little memory. Presets follow public model configurations (sizes only; the weights are random):

    python tools/make_llm.py --preset 125m -o /tmp/llm125m/model.onnx
    python tools/make_llm.py --preset 1b -o /tmp/llm1b/model.onnx      # TinyLlama-1.1B shape, 4.4 GB

Options override preset fields (``--layers 2`` etc.).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

PRESETS = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 160, "vocab": 256},
    "125m": {"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 4, "ffn": 2048, "vocab": 32000},
    "350m": {"hidden": 1024, "layers": 24, "heads": 16, "kv_heads": 4, "ffn": 2816, "vocab": 32000},
    "1b": {"hidden": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "ffn": 5632, "vocab": 32000},
}


@dataclass(frozen=True)
class Config:
    """Decoder hyper-parameters."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq: int = 16
    tied: bool = False
    seed: int = 0


class Writer:
    """Collects nodes and streams initializers into one external-data file."""

    def __init__(self, path: Path, cfg: Config) -> None:
        self.path = path
        self.data_name = path.name + ".data"
        self.fh = open(path.parent / self.data_name, "wb")
        self.offset = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._k = 0
        self.params = 0

    def name(self, prefix: str) -> str:
        self._k += 1
        return f"{prefix}_{self._k}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        t = onnx.TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        if array.nbytes <= 1024:
            t.raw_data = array.tobytes()
        else:
            pad = (-self.offset) % 64
            self.fh.write(b"\0" * pad)
            self.offset += pad
            self.fh.write(array.tobytes())
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", self.data_name), ("offset", str(self.offset)), ("length", str(array.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.offset += array.nbytes
        self.inits.append(t)
        if array.dtype.kind == "f" and array.ndim >= 1:
            self.params += array.size
        return name

    def weight(self, name: str, *shape: int, std: float | None = None) -> str:
        std = std if std is not None else 1.0 / np.sqrt(shape[0])
        return self.tensor(name, (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32))

    def ints(self, values: list[int]) -> str:
        return self.tensor(self.name("shape"), np.asarray(values, dtype=np.int64))

    def op(self, op: str, inputs: list[str], name: str | None = None, **attrs: object) -> str:
        out = self.name(name or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def rms_norm(w: Writer, x: str, d: int, label: str) -> str:
    sq = w.op("Pow", [x, w.tensor(w.name("two"), np.array(2.0, np.float32))])
    mean = w.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    std = w.op("Sqrt", [w.op("Add", [mean, w.tensor(w.name("eps"), np.array(1e-6, np.float32))])])
    normed = w.op("Div", [x, std])
    gain = w.tensor(f"{label}.weight", (1.0 + 0.1 * w.rng.standard_normal(d)).astype(np.float32))
    return w.op("Mul", [normed, gain])


def rope(w: Writer, x: str, dh: int, cos: str, sin: str) -> str:
    half = dh // 2
    x1 = w.op("Slice", [x, w.ints([0]), w.ints([half]), w.ints([3])])
    x2 = w.op("Slice", [x, w.ints([half]), w.ints([dh]), w.ints([3])])
    rot = w.op("Concat", [w.op("Neg", [x2]), x1], axis=3)
    return w.op("Add", [w.op("Mul", [x, cos]), w.op("Mul", [rot, sin])])


def build(cfg: Config, path: Path) -> tuple[onnx.ModelProto, int]:
    """Write the model; returns it (weights external) and its parameter count."""
    d, h, kv, s = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.seq
    dh, rep = d // h, h // kv
    w = Writer(path, cfg)
    pos = np.arange(s)[:, None] / (10000 ** (np.arange(0, dh, 2) / dh))[None, :]
    ang = np.concatenate([pos, pos], axis=1)
    cos = w.tensor("rope.cos", np.cos(ang).astype(np.float32).reshape(1, 1, s, dh))
    sin = w.tensor("rope.sin", np.sin(ang).astype(np.float32).reshape(1, 1, s, dh))
    mask = w.tensor("causal_mask", np.triu(np.full((s, s), -1e9, np.float32), 1).reshape(1, 1, s, s))
    scale = w.tensor("attn_scale", np.array(1.0 / np.sqrt(dh), np.float32))
    embed = w.weight("embed_tokens.weight", cfg.vocab, d, std=0.02)
    x = w.op("Gather", [embed, "input_ids"], axis=0)
    for i in range(cfg.layers):
        p = f"layers.{i}"
        hdn = rms_norm(w, x, d, f"{p}.input_layernorm")
        q = w.op("MatMul", [hdn, w.weight(f"{p}.self_attn.q_proj.weight", d, h * dh)])
        k = w.op("MatMul", [hdn, w.weight(f"{p}.self_attn.k_proj.weight", d, kv * dh)])
        v = w.op("MatMul", [hdn, w.weight(f"{p}.self_attn.v_proj.weight", d, kv * dh)])
        q = w.op("Transpose", [w.op("Reshape", [q, w.ints([1, s, h, dh])])], perm=[0, 2, 1, 3])
        k = w.op("Transpose", [w.op("Reshape", [k, w.ints([1, s, kv, dh])])], perm=[0, 2, 1, 3])
        v = w.op("Transpose", [w.op("Reshape", [v, w.ints([1, s, kv, dh])])], perm=[0, 2, 1, 3])
        q, k = rope(w, q, dh, cos, sin), rope(w, k, dh, cos, sin)
        if rep > 1:  # repeat_kv: [1, kv, s, dh] -> [1, kv, rep, s, dh] -> [1, h, s, dh]
            k = w.op("Reshape", [w.op("Expand", [w.op("Unsqueeze", [k, w.ints([2])]), w.ints([1, kv, rep, s, dh])]),
                                 w.ints([1, h, s, dh])])
            v = w.op("Reshape", [w.op("Expand", [w.op("Unsqueeze", [v, w.ints([2])]), w.ints([1, kv, rep, s, dh])]),
                                 w.ints([1, h, s, dh])])
        scores = w.op("Mul", [w.op("MatMul", [q, w.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        probs = w.op("Softmax", [w.op("Add", [scores, mask])], axis=-1)
        ctx = w.op("Transpose", [w.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = w.op("Reshape", [ctx, w.ints([1, s, h * dh])])
        x = w.op("Add", [x, w.op("MatMul", [ctx, w.weight(f"{p}.self_attn.o_proj.weight", h * dh, d)])])
        hdn = rms_norm(w, x, d, f"{p}.post_attention_layernorm")
        gate = w.op("MatMul", [hdn, w.weight(f"{p}.mlp.gate_proj.weight", d, cfg.ffn)])
        up = w.op("MatMul", [hdn, w.weight(f"{p}.mlp.up_proj.weight", d, cfg.ffn)])
        act = w.op("Mul", [w.op("Mul", [gate, w.op("Sigmoid", [gate])]), up])
        x = w.op("Add", [x, w.op("MatMul", [act, w.weight(f"{p}.mlp.down_proj.weight", cfg.ffn, d)])])
        print(f"\rlayer {i + 1}/{cfg.layers}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    x = rms_norm(w, x, d, "norm")
    head = w.op("Transpose", [embed], perm=[1, 0]) if cfg.tied else w.weight("lm_head.weight", d, cfg.vocab)
    w.nodes.append(helper.make_node("MatMul", [x, head], ["logits"], name="lm_head"))
    w.fh.close()
    graph = helper.make_graph(
        w.nodes, "llama_like",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, s, cfg.vocab])],
        w.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spa-make-llm")
    model.ir_version = 8
    return model, w.params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for field in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab", "seq", "seed"):
        ap.add_argument(f"--{field.replace('_', '-')}", type=int)
    ap.add_argument("--tied", action="store_true", help="LM head reuses the embedding table")
    args = ap.parse_args(argv)
    cfg = Config(**PRESETS[args.preset])
    cfg = replace(cfg, **{k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__ and v is not None})
    cfg = replace(cfg, tied=args.tied)
    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads or (cfg.hidden // cfg.heads) % 2:
        ap.error("hidden must divide into heads of even size, and heads into kv_heads")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, params = build(cfg, args.output)
    with open(args.output, "wb") as fh:
        fh.write(model.SerializeToString())
    size = os.path.getsize(args.output) + os.path.getsize(str(args.output) + ".data")
    print(f"wrote {args.output} ({params / 1e6:.1f} M parameters, {size / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.1f} s: {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
