#!/usr/bin/env python3
"""Build tiny Hugging Face decoders with random weights and export them to ONNX as users do.

Every family is made from a config (no weights are downloaded): hidden 32, 2 layers, 4 attention heads
(2 key/value heads where the family has grouped-query attention), vocabulary 64. Each model is exported
with

* ``optimum``: optimum's ``main_export`` (task ``text-generation``: inputs ``input_ids``,
  ``attention_mask`` and, for rotary models, ``position_ids``; dynamic batch and sequence),
* ``optimum-past``: the same with task ``text-generation-with-past`` (the KV cache is a graph input
  ``past_key_values.*`` and output ``present.*``; the mask covers past + new tokens),
* ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` of the model called on ``input_ids``,
* ``legacy``: ``torch.onnx.export(..., dynamo=False)`` (TorchScript), the same call — only on request:
  it fails on every family with torch 2.13 / transformers 4.57 (see :data:`DEFAULT_EXPORTERS`),

and checked: ONNX Runtime must reproduce the PyTorch logits. Needs the ``zoo`` extra
(``pip install -e '.[zoo]'``: transformers, optimum-onnx), in a venv of its own if you like::

    python -m venv /tmp/zoo && /tmp/zoo/bin/pip install torch==2.13.0 'transformers==4.57.*' optimum-onnx onnxruntime
    /tmp/zoo/bin/python tools/make_hf_fixtures.py --out /tmp/hf             # every family × exporter
    /tmp/zoo/bin/python tools/make_hf_fixtures.py --commit                  # the committed subset

``--commit`` writes the subset kept in ``tests/fixtures/hf/`` (see its README) and refuses files of
1 MB or more. Offline: set ``HF_HUB_OFFLINE=1`` (nothing here needs the hub).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMMIT_DIR = REPO / "tests" / "fixtures" / "hf"
MAX_BYTES = 1_000_000
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, POSITIONS = 32, 2, 4, 2, 64, 64, 64
SEED = 0
EXPORTERS = ("optimum", "optimum-past", "dynamo", "legacy")
#: what ``--out`` builds by default: the TorchScript exporter fails on every family with torch 2.13 and
#: transformers 4.57 (the vmap in the causal-mask helpers: "unordered_map::at"); optimum's own patched
#: TorchScript export is the ``optimum`` column. ``--exporter legacy`` still tries it.
DEFAULT_EXPORTERS = ("optimum", "dynamo")
#: what ``--commit`` writes: every family from optimum and from torch's dynamo exporter, and the KV-cache
#: export of one GQA and one MHA family
FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gemma", "gpt2", "gpt_neox")
COMMITTED = [(f, e) for f in FAMILIES for e in DEFAULT_EXPORTERS] + [(f, "optimum-past") for f in ("llama", "gpt2")]


def _configs() -> dict[str, Callable[[], object]]:
    import transformers as tf

    common = {"num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "vocab_size": VOCAB,
              "max_position_embeddings": POSITIONS, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    gqa = {**common, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_key_value_heads": KV_HEADS}
    return {
        "llama": lambda: tf.LlamaConfig(**gqa),
        "mistral": lambda: tf.MistralConfig(**gqa, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**gqa, use_sliding_window=False),
        "phi3": lambda: tf.Phi3Config(**gqa),
        "gemma": lambda: tf.GemmaConfig(**gqa, head_dim=HIDDEN // HEADS),
        "gpt2": lambda: tf.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, vocab_size=VOCAB,
                                      n_positions=POSITIONS, bos_token_id=1, eos_token_id=2),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common, hidden_size=HIDDEN, intermediate_size=FFN),
    }


def build_model(family: str):  # type: ignore[no-untyped-def]
    """The family's tiny causal LM with seeded random weights, in eval mode, eager attention."""
    import torch
    import transformers as tf

    config = _configs()[family]()
    config._attn_implementation = "eager"  # type: ignore[attr-defined]
    torch.manual_seed(SEED)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # some families initialise norms to zero/one: randomise them too
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class _Logits:
    """A wrapper returning only the logits (torch exporters) of a model called on ``input_ids``."""

    def __new__(cls, model):  # type: ignore[no-untyped-def]
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.model(input_ids=input_ids, use_cache=False).logits

        return Wrapper().eval()


def export(family: str, exporter: str, path: Path, seq: int = 8) -> Path:
    """Export ``family`` with ``exporter`` to ``path`` (a single-file ONNX model)."""
    import onnx
    import torch

    model = build_model(family)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter in ("optimum", "optimum-past"):
        from optimum.exporters.onnx import main_export

        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "src", Path(tmp) / "out"
            model.save_pretrained(src)
            with contextlib.redirect_stdout(io.StringIO()):
                task = "text-generation-with-past" if exporter == "optimum-past" else "text-generation"
                main_export(str(src), out, task=task, do_validation=True, library_name="transformers")
            m = onnx.load(str(out / "model.onnx"))
    else:
        ids = torch.randint(0, VOCAB, (2, seq))
        wrapper = _Logits(model)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "m.onnx"
            kwargs: dict[str, object] = {"input_names": ["input_ids"], "output_names": ["logits"]}
            if exporter == "dynamo":
                batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=POSITIONS)
                kwargs["dynamic_shapes"] = {"input_ids": {0: batch, 1: sequence}}
                kwargs["dynamo"] = True
            else:
                axes = {0: "batch", 1: "sequence"}
                kwargs["dynamic_axes"] = {"input_ids": axes, "logits": axes}
                kwargs["dynamo"] = False
                kwargs["opset_version"] = 17
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (ids,), str(f), **kwargs)
            m = onnx.load(str(f))
    _check(m, model, family, exporter)
    m.ir_version = min(m.ir_version, 10)
    del m.metadata_props[:]
    for node in m.graph.node:  # debugging annotations (stack traces, module names): not the graph
        del node.metadata_props[:]
        node.doc_string = ""
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        del vi.metadata_props[:]
        vi.doc_string = ""
    from importlib.metadata import version

    for k, v in {"family": family, "exporter": exporter, "torch": version("torch"),
                 "transformers": version("transformers"), "optimum": version("optimum"),
                 "optimum-onnx": version("optimum-onnx"), "onnx": version("onnx"), "seed": str(SEED),
                 "built_by": "tools/make_hf_fixtures.py"}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


def _check(m, model, family: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime must reproduce the PyTorch logits at two sequence lengths (an empty KV cache)."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(1)
    for batch, seq in ((1, 8), (2, 5)):
        ids = rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "position_ids": np.broadcast_to(np.arange(seq), ids.shape).copy()}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values"):
                feeds[i.name] = np.zeros([batch] + [d if isinstance(d, int) else 0 for d in i.shape[1:]], np.float32)
        (got, *_) = sess.run(None, {n: feeds[n] for n in names})
        with torch.no_grad():
            want = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"{family} {exporter} ({batch}, {seq})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder for every family × exporter")
    ap.add_argument("--commit", action="store_true", help=f"write the committed subset to {COMMIT_DIR}")
    ap.add_argument("--family", action="append", help="only these families (repeatable)")
    ap.add_argument("--exporter", action="append", choices=EXPORTERS, help="only these exporters (repeatable)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.commit:
        todo, out = COMMITTED, COMMIT_DIR
    elif args.out:
        todo, out = [(f, e) for f in FAMILIES for e in (args.exporter or DEFAULT_EXPORTERS)], args.out
    else:
        ap.error("give --out DIR or --commit")
    todo = [(f, e) for f, e in todo if (not args.family or f in args.family)
            and (not args.exporter or e in args.exporter)]
    failed = 0
    for family, exporter in todo:
        path = out / f"{family}_{exporter}.onnx"
        try:
            export(family, exporter, path)
        except Exception as exc:  # noqa: BLE001 - report every failing export, keep going with the others
            failed += 1
            print(f"FAILED {family} {exporter}: {type(exc).__name__}: {str(exc)[:400]}", file=sys.stderr)
            continue
        size = path.stat().st_size
        print(f"wrote {path} ({size} bytes)")
        if args.commit and size >= MAX_BYTES:
            print(f"{path.name}: {size} bytes >= {MAX_BYTES}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
