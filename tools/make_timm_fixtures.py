#!/usr/bin/env python3
"""Build timm architectures with random weights and export them to ONNX as users do (issue 14 zoo).

Every entry of :data:`ZOO` is the smallest variant of one timm family, made with
``timm.create_model(name, pretrained=False, num_classes=10, **kwargs)`` (nothing downloaded), at a small
input (64×64 where the model accepts it; ``img_size`` passed to models that take it), batch 1, and exported
by ``models/export.export_onnx`` — the same call spa's own zoo uses:

* ``legacy``: ``torch.onnx.export(dynamo=False)`` at opset 17 with ``training=PRESERVE`` (BatchNorm kept,
  shape computations constant-folded),
* ``dynamo``: ``torch.onnx.export(dynamo=True)`` at opset 18 (BatchNorm kept, onnxscript optimizer otherwise),

each checked against PyTorch in ONNX Runtime, IR version ≤ 10, static batch 1. An export that fails is
reported (and listed in ``<out>/failures.json``), never fatal.

timm needs ``torchvision`` at import time; this repository never installs it. Put the stand-in
``tools/fixtures/torchvision_stub`` on ``PYTHONPATH`` (the script does it itself) and install timm
without dependencies next to torch, Pillow, PyYAML, huggingface_hub and safetensors (the ``zoo`` extra)::

    pip install --no-deps --target /tmp/timm_site 'timm==1.0.31'
    PYTHONPATH=/tmp/timm_site python tools/make_timm_fixtures.py --out /tmp/timm_zoo          # every entry
    PYTHONPATH=/tmp/timm_site python tools/make_timm_fixtures.py --out /tmp/timm_zoo --only convnextv2_atto
    PYTHONPATH=/tmp/timm_site python tools/make_timm_fixtures.py --commit                     # tests/fixtures/timm

``--commit`` builds the :data:`COMMITTED` families with the width/depth overrides of :data:`TINY` (each file
under 420 kB) into ``tests/fixtures/timm/``; ``tools/bench_exporters.py --zoo DIR`` benchmarks a built zoo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "tools" / "fixtures" / "torchvision_stub"
COMMIT_DIR = REPO / "tests" / "fixtures" / "timm"
MAX_COMMIT_BYTES = 420_000
NUM_CLASSES = 10
SEED = 0
EXPORTERS = ("legacy", "dynamo")
SIZES = (64, 96, 128, 160, 192, 224, 256)

#: family -> (timm model name, kwargs). The smallest variant of each family; ``img_size`` is tried first
#: where the model takes it (the input size is then the smallest of :data:`SIZES` the model accepts).
ZOO: dict[str, tuple[str, dict[str, object]]] = {
    # the families issue 14 names
    "convnext": ("convnext_atto", {}),
    "convnextv2": ("convnextv2_atto", {}),
    "gmlp": ("gmlp_ti16_224", {}),
    "resnetv2_bit": ("resnetv2_50x1_bit", {}),
    "pvt_v2": ("pvt_v2_b0", {}),
    "levit": ("levit_128s", {}),
    "levit_conv": ("levit_conv_128s", {}),
    "efficientnet": ("efficientnet_b0", {}),
    "regnetx": ("regnetx_002", {}),
    "regnety": ("regnety_002", {}),
    "resnest": ("resnest14d", {}),
    "cspnet": ("cspresnet50", {}),
    "cspdarknet": ("cspdarknet53", {}),
    "dla": ("dla34", {}),
    "hrnet": ("hrnet_w18_small", {}),
    "res2net": ("res2net50_14w_8s", {}),
    "resmlp": ("resmlp_12_224", {}),
    "mixer": ("mixer_s16_224", {}),
    "coatnet": ("coatnet_nano_rw_224", {}),
    "efficientformer": ("efficientformer_l1", {}),
    "efficientformerv2": ("efficientformerv2_s0", {}),
    "fastvit": ("fastvit_t8", {}),
    "edgenext": ("edgenext_xx_small", {}),
    "tiny_vit": ("tiny_vit_5m_224", {}),
    "poolformer": ("poolformer_s12", {}),
    "poolformerv2": ("poolformerv2_s12", {}),
    "repvgg": ("repvgg_a0", {}),
    "ghostnet": ("ghostnet_050", {}),
    "ghostnetv2": ("ghostnetv2_100", {}),
    "mnasnet": ("mnasnet_050", {}),
    "nfnet": ("dm_nfnet_f0", {}),
    "nf_resnet": ("nf_resnet26", {}),
    "twins_pcpvt": ("twins_pcpvt_small", {}),
    "twins_svt": ("twins_svt_small", {}),
    "xcit": ("xcit_nano_12_p16_224", {}),
    "cait": ("cait_xxs24_224", {}),
    "swin": ("swin_tiny_patch4_window7_224", {}),
    "vit": ("vit_tiny_patch16_224", {}),
    "deit": ("deit_tiny_patch16_224", {}),
    "beit": ("beit_base_patch16_224", {"depth": 4}),
    "mobilevit": ("mobilevit_xxs", {}),
    "mobilevitv2": ("mobilevitv2_050", {}),
    # common CNNs and more transformer families
    "resnet": ("resnet18", {}),
    "resnet_t": ("resnet10t", {}),
    "resnet_d": ("resnet50d", {}),
    "seresnext": ("seresnext26d_32x4d", {}),
    "ecaresnet": ("ecaresnet26t", {}),
    "skresnet": ("skresnet18", {}),
    "mobilenetv1": ("mobilenetv1_100", {}),
    "mobilenetv2": ("mobilenetv2_050", {}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
    "mobilenetv4": ("mobilenetv4_conv_small", {}),
    "densenet": ("densenet121", {}),
    "vgg": ("vgg11", {}),
    "inception_v3": ("inception_v3", {}),
    "efficientvit_b": ("efficientvit_b0", {}),
    "efficientvit_m": ("efficientvit_m0", {}),
    "lcnet": ("lcnet_050", {}),
    "mixnet": ("mixnet_s", {}),
    "tinynet": ("tinynet_e", {}),
    "rexnet": ("rexnet_100", {}),
    "dpn": ("dpn48b", {}),
    "selecsls": ("selecsls42b", {}),
    "regnetz": ("regnetz_b16", {}),
    "resnext_ts": ("resnext26ts", {}),
    "vovnet": ("ese_vovnet19b_dw", {}),
    "convit": ("convit_tiny", {}),
    "pit": ("pit_ti_224", {}),
    "crossvit": ("crossvit_tiny_240", {}),
    "maxvit": ("maxvit_nano_rw_256", {}),
    "davit": ("davit_tiny", {}),
    "focalnet": ("focalnet_tiny_srf", {}),
    "visformer": ("visformer_tiny", {}),
    "mobileone": ("mobileone_s0", {}),
    "repghost": ("repghostnet_050", {}),
    "hgnetv2": ("hgnetv2_b0", {}),
    "inception_next": ("inception_next_tiny", {}),
    "fasternet": ("fasternet_t0", {}),
    "starnet": ("starnet_s050", {}),
    "cs3darknet": ("cs3darknet_focus_s", {}),
    "mambaout": ("mambaout_femto", {}),
    "efficientnetv2": ("efficientnetv2_rw_t", {}),
    "tf_efficientnet_lite": ("tf_efficientnet_lite0", {}),
    "xception": ("xception41", {}),
    "gernet": ("gernet_s", {}),
    "repvit": ("repvit_m0_9", {}),
    "eva02": ("eva02_tiny_patch14_224", {}),
    "botnet": ("botnet26t_256", {}),
    "halonet": ("halonet26t", {}),
    "lambda_resnet": ("lambda_resnet26t", {}),
    "volo": ("volo_d1_224", {}),
    "gcvit": ("gcvit_xxtiny", {}),
    "nest": ("nest_tiny", {}),
    "coat": ("coat_tiny", {}),
    "tnt": ("tnt_s_patch16_224", {}),
    "sequencer": ("sequencer2d_s", {}),
}

#: width/depth overrides that make the committed files tiny (same graph structure, fewer channels/blocks).
#: ``_factory`` ("module:callable") builds the model directly where the entry point fixes the argument.
TINY: dict[str, dict[str, object]] = {
    "convnextv2": {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)},
    "gmlp": {"_factory": "timm.models.mlp_mixer:MlpMixer", "patch_size": 8, "num_blocks": 2, "embed_dim": 32,
             "mlp_ratio": 6, "block_layer": "timm.models.mlp_mixer:SpatialGatingBlock",
             "mlp_layer": "timm.layers:GatedMlp"},
    "resmlp": {"_factory": "timm.models.mlp_mixer:MlpMixer", "patch_size": 8, "num_blocks": 2, "embed_dim": 32,
               "mlp_ratio": 4, "block_layer": "timm.models.mlp_mixer:ResBlock",
               "norm_layer": "timm.models.mlp_mixer:Affine"},
    "resnetv2_bit": {"_factory": "timm.models.resnetv2:ResNetV2", "layers": (1, 1, 1, 1), "channels": (16, 32, 48, 64),
                     "stem_chs": 16, "stem_type": "fixed", "conv_layer": "timm.layers:StdConv2d",
                     "norm_layer": ("timm.layers:GroupNormAct", {"num_groups": 2})},
    "nfnet": {"_factory": "timm.models.nfnet:NormFreeNet",
              "cfg": ("timm.models.nfnet:NfCfg", {"depths": (1, 1, 1, 1), "channels": (16, 32, 48, 64),
                                                  "stem_type": "deep_quad", "stem_chs": 16, "group_size": 8,
                                                  "bottle_ratio": 0.5, "extra_conv": True, "num_features": 96,
                                                  "act_layer": "gelu", "attn_layer": "se",
                                                  "attn_kwargs": {"rd_ratio": 0.5}})},
    "pvt_v2": {"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 20, 32), "mlp_ratios": (2, 2, 2, 2)},
    "levit": {"embed_dim": (16, 24, 32), "key_dim": 4, "num_heads": (2, 3, 4), "depth": (1, 1, 1)},
    "efficientnet": {"_factory": "timm.models.efficientnet:_gen_efficientnet", "variant": "efficientnet_b0",
                     "channel_multiplier": 0.2, "depth_multiplier": 0.1},
    "swin": {"embed_dim": 12, "depths": (1, 1, 1), "num_heads": (1, 2, 4), "window_size": 2, "mlp_ratio": 2},
    "vit": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
}
COMMITTED = ("convnextv2", "gmlp", "resnetv2_bit", "nfnet", "pvt_v2", "levit", "efficientnet", "swin", "vit",
             "resmlp")


def _resolve(value: object) -> object:
    """``"module:name"`` → that object; ``("module:name", {kwargs})`` → a partial (or an instance of a
    dataclass); anything else unchanged."""
    import functools
    import importlib

    if isinstance(value, str) and ":" in value and value.startswith("timm."):
        module, _, attr = value.partition(":")
        return getattr(importlib.import_module(module), attr)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        target = _resolve(value[0])
        kw = {k: _resolve(v) for k, v in value[1].items()}
        return target(**kw) if isinstance(target, type) and hasattr(target, "__dataclass_fields__") \
            else functools.partial(target, **kw)  # type: ignore[arg-type]
    return value


def _create(name: str, kwargs: dict[str, object]):  # type: ignore[no-untyped-def]
    """The model and its input shape: ``img_size=64`` where taken, else the smallest size that runs."""
    import timm
    import torch

    torch.manual_seed(SEED)
    kwargs = {k: _resolve(v) for k, v in kwargs.items()}
    factory = kwargs.pop("_factory", None)
    if factory is not None:
        make = factory

        def create(_name: str, pretrained: bool = False, **kw: object):  # type: ignore[no-untyped-def]
            return make(**kw)  # type: ignore[operator]
    else:
        create = timm.create_model
    base = {"pretrained": False, "num_classes": NUM_CLASSES, **kwargs}
    tries: list[tuple[dict[str, object], tuple[int, ...]]] = []
    for size in SIZES:
        tries.append(({**base, "img_size": size}, (size, size)))
    sizes_only = [(base, (s, s)) for s in SIZES]
    errors = []
    for kw, hw in tries + sizes_only:
        try:
            torch.manual_seed(SEED)
            model = create(name, **kw).eval()
            with torch.no_grad():
                model(torch.randn(1, 3, *hw))
            return model, (1, 3, *hw)
        except Exception as exc:  # noqa: BLE001 - try the next size
            errors.append(f"{hw} img_size={'img_size' in kw}: {type(exc).__name__}: {str(exc)[:120]}")
    raise RuntimeError("no input size works: " + "; ".join(errors[-3:]))


def _randomise_1d(model) -> None:  # type: ignore[no-untyped-def]
    """Norm gains/biases and layer scales are often initialised to ones/zeros: perturb every 1-D parameter
    (and BatchNorm running statistics) so nothing is accidentally neutral."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def build(family: str, exporter: str, out: Path, *, tiny: bool = False) -> Path:
    """Export one family with one exporter to ``out/<family>_<exporter>.onnx``."""
    from importlib.metadata import version

    import onnx
    import timm

    from models.export import export_onnx

    name, kwargs = ZOO[family]
    if tiny:
        kwargs = {**kwargs, **TINY[family]}
    model, shape = _create(name, kwargs)
    _randomise_1d(model)
    path = out / f"{family}_{exporter}.onnx"
    export_onnx(model, shape, path, exporter=exporter, opset=17 if exporter == "legacy" else 18,  # type: ignore[arg-type]
                keep_bn=True, verify=True, atol=1e-3)
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for node in m.graph.node:  # debugging annotations (stack traces, module names): not the graph
        del node.metadata_props[:]
        node.doc_string = ""
    for k, v in {"family": family, "timm_model": name, "kwargs": json.dumps(kwargs, default=str),
                 "input_shape": "x".join(map(str, shape)), "exporter": exporter, "timm": timm.__version__,
                 "torch": version("torch"), "onnx": version("onnx"), "seed": str(SEED),
                 "built_by": "tools/make_timm_fixtures.py"}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder for every family × exporter")
    ap.add_argument("--commit", action="store_true", help=f"write the tiny committed subset to {COMMIT_DIR}")
    ap.add_argument("--only", action="append", help="only these families (repeatable)")
    ap.add_argument("--exporter", action="append", choices=EXPORTERS, help="only these exporters (repeatable)")
    ap.add_argument("--skip-existing", action="store_true", help="keep files already built")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(REPO), str(STUB)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("SPA_ZOO_THREADS", "1")))
    if args.commit:
        families, out = list(COMMITTED), COMMIT_DIR
    elif args.out:
        families, out = list(ZOO), args.out
    else:
        ap.error("give --out DIR or --commit")
    families = [f for f in families if not args.only or f in args.only]
    out.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    for family in families:
        for exporter in args.exporter or EXPORTERS:
            path = out / f"{family}_{exporter}.onnx"
            if args.skip_existing and path.exists():
                continue
            start = time.perf_counter()
            try:
                build(family, exporter, out, tiny=args.commit)
            except Exception as exc:  # noqa: BLE001 - report every failing export, keep going with the others
                failures[f"{family}_{exporter}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"FAILED {family} {exporter}: {failures[f'{family}_{exporter}']}", file=sys.stderr, flush=True)
                traceback.print_exc(limit=1)
                continue
            size = path.stat().st_size
            print(f"wrote {path} ({size} bytes, {time.perf_counter() - start:.1f} s)", flush=True)
            if args.commit and size > MAX_COMMIT_BYTES:
                failures[path.name] = f"{size} bytes > {MAX_COMMIT_BYTES}"
                print(f"{path.name}: {size} bytes > {MAX_COMMIT_BYTES}", file=sys.stderr)
    prev = json.loads((out / "failures.json").read_text()) if (out / "failures.json").exists() else {}
    prev = {k: v for k, v in prev.items() if k.rsplit("_", 1)[0] not in families} | failures
    (out / "failures.json").write_text(json.dumps(prev, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
