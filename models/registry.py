"""Explicit name -> factory registries of the model zoo.

Each factory takes no arguments and returns ``(model, input_shape)`` with the
model already seeded, BN-randomised and in eval mode.  ``TINY_MODELS`` are
small (< 1M params, 32x32 or 64x64 inputs) for the test-suite;
``LARGE_MODELS`` are realistic ImageNet-size networks (224x224) for
benchmarks.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.densenet import densenet121_like, densenet_tiny
from models.efficientnet import efficientnet_b0_like, efficientnet_tiny
from models.fpn import fpn_tiny
from models.mobilenet import mobilenetv2_full, mobilenetv2_tiny, mobilenetv3_tiny
from models.regnet import regnety_400mf_like, regnety_tiny
from models.resnet import resnet50_like, resnet_basic_tiny, resnet_bottleneck_tiny
from models.resnext import resnext50_32x4d_like, resnext_tiny
from models.shufflenet import shufflenetv2_tiny
from models.transformers import TOKEN_FEATURES, bert_fused_tiny, bert_tiny, convnext_tiny, swin_tiny, vit_tiny
from models.unet import unet_tiny
from models.vgg import vgg_tiny

ModelFactory = Callable[[], tuple[nn.Module, tuple[int, ...]]]

SHAPE_32: tuple[int, ...] = (1, 3, 32, 32)
SHAPE_64: tuple[int, ...] = (1, 3, 64, 64)
SHAPE_224: tuple[int, ...] = (1, 3, 224, 224)


def _entry(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> ModelFactory:
    """Wrap a zero-argument model builder into a ``() -> (model, shape)`` factory."""

    def factory() -> tuple[nn.Module, tuple[int, ...]]:
        return build().eval(), shape

    factory.__doc__ = f"{build.__name__}() with input shape {shape}."
    return factory


TINY_MODELS: dict[str, ModelFactory] = {
    "resnet_basic": _entry(resnet_basic_tiny, SHAPE_32),
    "resnet_bottleneck": _entry(resnet_bottleneck_tiny, SHAPE_32),
    "mobilenetv2": _entry(mobilenetv2_tiny, SHAPE_32),
    "mobilenetv3": _entry(mobilenetv3_tiny, SHAPE_32),
    "densenet": _entry(densenet_tiny, SHAPE_32),
    "resnext": _entry(resnext_tiny, SHAPE_32),
    "regnety": _entry(regnety_tiny, SHAPE_32),
    "shufflenetv2": _entry(shufflenetv2_tiny, SHAPE_32),
    "efficientnet": _entry(efficientnet_tiny, SHAPE_32),
    "unet": _entry(unet_tiny, SHAPE_32),
    "fpn": _entry(fpn_tiny, SHAPE_64),
    "vgg": _entry(vgg_tiny, SHAPE_32),
    # transformers (issue #3): no BatchNorm; the LLaMA-style decoders take int64 token ids, which
    # export_onnx cannot feed, so they live in models.transformers.TOKEN_MODELS instead
    "bert": _entry(bert_tiny, TOKEN_FEATURES),
    "bert_fused_qkv": _entry(bert_fused_tiny, TOKEN_FEATURES),
    "vit": _entry(vit_tiny, SHAPE_32),
    "swin": _entry(swin_tiny, SHAPE_32),
    "convnext": _entry(convnext_tiny, SHAPE_32),
}

LARGE_MODELS: dict[str, ModelFactory] = {
    "resnet50": _entry(resnet50_like, SHAPE_224),
    "mobilenetv2_full": _entry(mobilenetv2_full, SHAPE_224),
    "densenet121": _entry(densenet121_like, SHAPE_224),
    "efficientnet_b0_like": _entry(efficientnet_b0_like, SHAPE_224),
    "resnext50_32x4d": _entry(resnext50_32x4d_like, SHAPE_224),
    "regnety_400mf": _entry(regnety_400mf_like, SHAPE_224),
}


def get_model(name: str, *, large: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """Build the registered model ``name`` (from ``LARGE_MODELS`` if ``large``)."""
    table = LARGE_MODELS if large else TINY_MODELS
    if name not in table:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(table)}")
    return table[name]()
