"""VGG-style network (Simonyan & Zisserman, 2014) with BatchNorm.

``cfg`` lists conv widths with ``"M"`` for 2x2 max-pool.  The classifier is
``Flatten -> Linear -> ReLU -> Dropout -> Linear``; the first Linear consumes
the flattened ``C*H*W`` feature map, so pruning the last conv's channels
must remove *blocks* of ``H*W`` input columns from that Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import ConvBNAct, init_weights

VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG feature stack + two-layer MLP classifier (no adaptive pooling: input size is fixed)."""

    def __init__(
        self, cfg: list[int | str], spatial: int, hidden: int = 4096, num_classes: int = 1000
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                spatial //= 2
            else:
                assert isinstance(v, int)
                layers.append(ConvBNAct(ch, v, 3))
                ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(ch * spatial * spatial, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg11_bn_like(num_classes: int = 1000, seed: int = 0) -> VGG:
    """VGG-11-BN-like for 224x224: feature map 512x7x7 -> one 4096 hidden layer -> classes, BN calibrated."""
    return init_weights(VGG(VGG11_CFG, 224, 4096, num_classes), seed, (1, 3, 224, 224))


def vgg_tiny(seed: int = 0) -> VGG:
    """Tiny VGG for 1x3x32x32: 8-M-16-M-32-32-M, flatten 32x4x4 -> 64 -> 10."""
    return init_weights(VGG([8, "M", 16, "M", 32, 32, "M"], 32, 64, 10), seed)
