#!/usr/bin/env python3
"""Build tiny Hugging Face encoders and vision models with random weights and export them as users do.

Every family is made from a config (nothing downloaded): hidden 32, 2 layers, 4 heads, MLP 64 (vision
models: their smallest stage layout at 8–32 channels, 64×64 images; text: vocabulary 64, 16 tokens).
Each model is exported by

* ``optimum``: optimum's ``main_export`` with the family's task (text: ``feature-extraction``, vision:
  ``image-classification``; SegFormer ``semantic-segmentation``) — where optimum supports the family,
* ``dynamo``: ``torch.onnx.export(dynamo=True)`` of the model's first output (batch 1, static shapes),
* ``legacy``: ``torch.onnx.export(dynamo=False)`` at opset 17, the same call,

and checked against PyTorch in ONNX Runtime. The T5 and Whisper *encoders* are torch exports of
``T5EncoderModel`` / ``WhisperModel.get_encoder()`` (optimum exports them only as encoder–decoder pairs).
An export that fails is reported, never fatal. Needs the ``zoo`` extra (transformers, optimum-onnx)::

    HF_HUB_OFFLINE=1 python tools/make_hf_encoders.py --out /tmp/hf_enc
    python tools/bench_exporters.py --zoo /tmp/hf_enc
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

HIDDEN, LAYERS, HEADS, FFN, VOCAB, SEQ, IMAGE = 32, 2, 4, 64, 64, 16, 64
SEED = 0
EXPORTERS = ("optimum", "dynamo", "legacy")
TEXT: dict[str, object] = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                           "intermediate_size": FFN, "vocab_size": VOCAB, "max_position_embeddings": 64}
VIT: dict[str, object] = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                          "intermediate_size": FFN, "image_size": IMAGE, "patch_size": 8, "num_labels": 10}


def _families() -> dict[str, tuple[Callable[[], object], str, str | None]]:
    """family -> (model factory, input kind, optimum task or None)."""
    import transformers as tf

    def auto(cfg: object, head: type) -> Callable[[], object]:
        return lambda: head(cfg)  # type: ignore[operator]

    return {
        "bert": (auto(tf.BertConfig(**TEXT), tf.BertModel), "text", "feature-extraction"),
        "roberta": (auto(tf.RobertaConfig(**TEXT, pad_token_id=1), tf.RobertaModel), "text", "feature-extraction"),
        "distilbert": (auto(tf.DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                                vocab_size=VOCAB, max_position_embeddings=64), tf.DistilBertModel),
                       "text", "feature-extraction"),
        "albert": (auto(tf.AlbertConfig(**TEXT, embedding_size=16), tf.AlbertModel), "text", "feature-extraction"),
        "deberta_v2": (auto(tf.DebertaV2Config(**TEXT), tf.DebertaV2Model), "text", "feature-extraction"),
        "electra": (auto(tf.ElectraConfig(**TEXT, embedding_size=HIDDEN), tf.ElectraModel), "text",
                    "feature-extraction"),
        "t5_encoder": (auto(tf.T5Config(d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
                                        vocab_size=VOCAB), tf.T5EncoderModel), "text", None),
        "whisper_encoder": (lambda: tf.WhisperModel(tf.WhisperConfig(
            d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=1, encoder_attention_heads=HEADS,
            decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, num_mel_bins=16,
            max_source_positions=16, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1)).get_encoder(), "audio", None),
        "vit": (auto(tf.ViTConfig(**VIT), tf.ViTForImageClassification), "image", "image-classification"),
        "deit": (auto(tf.DeiTConfig(**VIT), tf.DeiTForImageClassification), "image", "image-classification"),
        "beit": (auto(tf.BeitConfig(**VIT, use_relative_position_bias=True), tf.BeitForImageClassification),
                 "image", "image-classification"),
        "swin": (auto(tf.SwinConfig(image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1, 1],
                                    num_heads=[1, 2, 4], window_size=4, num_labels=10),
                      tf.SwinForImageClassification), "image", "image-classification"),
        "convnext": (auto(tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10,
                                            image_size=IMAGE), tf.ConvNextForImageClassification),
                     "image", "image-classification"),
        "convnextv2": (auto(tf.ConvNextV2Config(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10,
                                                image_size=IMAGE), tf.ConvNextV2ForImageClassification),
                       "image", "image-classification"),
        "segformer": (auto(tf.SegformerConfig(hidden_sizes=[16, 32, 40, 64], depths=[1, 1, 1, 1],
                                              num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=64,
                                              num_labels=10), tf.SegformerForSemanticSegmentation),
                      "image", "semantic-segmentation"),
        "mobilevit": (auto(tf.MobileViTConfig(image_size=IMAGE, hidden_sizes=[32, 48, 64],
                                              neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 160], num_labels=10),
                           tf.MobileViTForImageClassification), "image", "image-classification"),
        "resnet": (auto(tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                        num_labels=10), tf.ResNetForImageClassification),
                   "image", "image-classification"),
    }


def build_model(family: str):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(SEED)
    model = _families()[family][0]()
    with torch.no_grad():
        for p in model.parameters():  # type: ignore[attr-defined]
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()  # type: ignore[attr-defined]


def _input(kind: str):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(SEED)
    if kind == "text":
        return "input_ids", torch.randint(3, VOCAB, (1, SEQ), generator=g)
    if kind == "audio":  # Whisper: (batch, mel bins, 2 · max_source_positions frames)
        return "input_features", torch.randn(1, 16, 32, generator=g)
    return "pixel_values", torch.randn(1, 3, IMAGE, IMAGE, generator=g)


def _first_output(model):  # type: ignore[no-untyped-def]
    import torch

    class First(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.model(x)
            return out[0] if isinstance(out, tuple) else next(iter(out.values()))

    return First().eval()


def export(family: str, exporter: str, path: Path) -> Path:
    import onnx
    import torch

    _, kind, task = _families()[family]
    model = build_model(family)
    name, x = _input(kind)
    if exporter == "optimum":
        if task is None:
            raise RuntimeError(f"optimum exports {family} only as an encoder-decoder pair")
        from optimum.exporters.onnx import main_export

        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "src", Path(tmp) / "out"
            model.save_pretrained(src)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main_export(str(src), out, task=task, do_validation=False, library_name="transformers")
            m = onnx.load(str(out / "model.onnx"))
    else:
        wrapper = _first_output(model)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "m.onnx"
            kwargs: dict[str, object] = {"input_names": [name], "output_names": ["output"],
                                         "dynamo": exporter == "dynamo"}
            if exporter == "legacy":
                kwargs["opset_version"] = 17
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (x,), str(f), **kwargs)
            m = onnx.load(str(f))
    _check(m, model, name, x)
    m.ir_version = min(m.ir_version, 10)
    del m.metadata_props[:]
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    from importlib.metadata import version

    for k, v in {"family": family, "exporter": exporter, "torch": version("torch"),
                 "transformers": version("transformers"), "optimum-onnx": version("optimum-onnx"),
                 "seed": str(SEED), "built_by": "tools/make_hf_encoders.py"}.items():
        m.metadata_props.add(key=k, value=v)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def _check(m, model, name: str, x) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime must reproduce the model's first output (all-ones attention mask)."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        if i.name == name or i.name in ("input_ids", "pixel_values", "input_features"):
            feeds[i.name] = x.numpy()
        elif i.name in ("attention_mask",):
            feeds[i.name] = np.ones(tuple(x.shape), np.int64)
        elif i.name == "token_type_ids":
            feeds[i.name] = np.zeros(tuple(x.shape), np.int64)
        else:
            raise RuntimeError(f"unexpected input {i.name}")
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        out = model(x)
        want = (out[0] if isinstance(out, tuple) else next(iter(out.values()))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--family", action="append")
    ap.add_argument("--exporter", action="append", choices=EXPORTERS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    failed = 0
    for family in args.family or list(_families()):
        for exporter in args.exporter or EXPORTERS:
            if exporter == "optimum" and _families()[family][2] is None:
                continue
            path = args.out / f"{family}_{exporter}.onnx"
            try:
                export(family, exporter, path)
            except Exception as exc:  # noqa: BLE001 - report every failing export, keep going
                failed += 1
                print(f"FAILED {family} {exporter}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr,
                      flush=True)
                continue
            print(f"wrote {path} ({path.stat().st_size} bytes)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
