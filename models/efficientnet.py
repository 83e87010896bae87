"""EfficientNet-style network (Tan & Le, 2019): MBConv blocks with SiLU and SE.

MBConv: 1x1 expand -> depthwise kxk -> SE (GlobalAveragePool -> 1x1 conv ->
SiLU -> 1x1 conv -> sigmoid -> Mul) -> 1x1 linear projection, with a residual
``Add`` when shapes match.  SiLU is exported as ``x * Sigmoid(x)`` (legacy)
or as a fused/decomposed op depending on the exporter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.common import ConvBNAct, init_weights, make_divisible


class SqueezeExciteSiLU(nn.Module):
    """SE block with SiLU in the squeeze path and sigmoid gating."""

    def __init__(self, ch: int, squeeze_ch: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(ch, squeeze_ch, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(squeeze_ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (SE ratio 0.25 of the *input* channels)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int, se_ratio: float = 0.25
    ) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.SiLU))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU))
        layers.append(SqueezeExciteSiLU(hidden, max(1, int(in_ch * se_ratio))))
        layers.append(ConvBNAct(hidden, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


# (expand ratio, kernel, stride, in ch, out ch, repeats) - EfficientNet-B0.
B0_SETTINGS: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class EfficientNet(nn.Module):
    """EfficientNet with width / depth multipliers over ``settings`` (B0 by default)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        settings: list[tuple[int, int, int, int, int, int]] | None = None,
        stem_ch: int = 32,
        head_ch: int = 1280,
        stem_stride: int = 2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        settings = B0_SETTINGS if settings is None else settings
        ch = make_divisible(stem_ch * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, ch, 3, stem_stride, act=nn.SiLU)]
        for t, k, s, _cin, cout, n in settings:
            out_ch = make_divisible(cout * width_mult)
            for i in range(int(math.ceil(n * depth_mult))):
                layers.append(MBConv(ch, out_ch, k, s if i == 0 else 1, t))
                ch = out_ch
        head = make_divisible(head_ch * width_mult)
        layers.append(ConvBNAct(ch, head, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_b0_like(num_classes: int = 1000, seed: int = 0) -> EfficientNet:
    """EfficientNet-B0 layout (~5.3M params) for 224x224 inputs, BN calibrated."""
    return init_weights(EfficientNet(num_classes=num_classes), seed, (1, 3, 224, 224))


def efficientnet_tiny(seed: int = 0) -> EfficientNet:
    """Tiny EfficientNet for 1x3x32x32 with 3x3 and 5x5 MBConv stages and residuals."""
    settings = [
        (1, 3, 1, 16, 8, 1),
        (4, 3, 2, 8, 16, 2),
        (4, 5, 2, 16, 24, 2),
        (4, 3, 2, 24, 32, 1),
    ]
    model = EfficientNet(1.0, 1.0, settings, stem_ch=16, head_ch=64, stem_stride=1, num_classes=10)
    return init_weights(model, seed)
