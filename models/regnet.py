"""RegNet-Y (Radosavovic et al., 2020): stages of X blocks (1x1, grouped 3x3, 1x1) with squeeze-and-excitation.

:func:`regnety_400mf_like` follows RegNetY-400MF's published layout: stem 32, widths 48/104/208/440,
depths 1/3/6/6, group width 8, bottleneck ratio 1, SE on a quarter of the block's input width.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import ConvBNAct, init_weights


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv to ``se``, ReLU, 1x1 conv back, sigmoid gate."""

    def __init__(self, channels: int, se: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, se, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(se, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(x)))))


class YBlock(nn.Module):
    """RegNet-Y block: 1x1 (w_in -> w), grouped 3x3 (stride s, groups w / group_width), SE, 1x1 (w -> w)."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        self.a = ConvBNAct(w_in, w_out, 1)
        self.b = ConvBNAct(w_out, w_out, 3, stride=stride, groups=w_out // group_width)
        self.se = SqueezeExcite(w_out, max(1, int(round(se_ratio * w_in))))
        self.c = nn.Sequential(nn.Conv2d(w_out, w_out, 1, bias=False), nn.BatchNorm2d(w_out))
        self.proj: nn.Module | None = None
        if stride != 1 or w_in != w_out:
            self.proj = nn.Sequential(nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False), nn.BatchNorm2d(w_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.proj(x) if self.proj is not None else x
        return self.act(self.c(self.se(self.b(self.a(x)))) + short)


class RegNet(nn.Module):
    """Stem (3x3 stride 2), four stages of :class:`YBlock` (first block of each strides 2), pool, fc."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], group_width: int, stem: int = 32,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, stem, 3, stride=2)
        blocks: list[nn.Module] = []
        w_in = stem
        for w, d in zip(widths, depths):
            for i in range(d):
                blocks.append(YBlock(w_in, w, 2 if i == 0 else 1, min(group_width, w)))
                w_in = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def regnety_400mf_like(num_classes: int = 1000, seed: int = 0, image_size: int = 224) -> RegNet:
    """RegNetY-400MF layout (BN calibrated on random inputs)."""
    model = RegNet((48, 104, 208, 440), (1, 3, 6, 6), group_width=8, num_classes=num_classes)
    return init_weights(model, seed, calib_input_shape=(1, 3, image_size, image_size))


def regnety_tiny(seed: int = 0) -> RegNet:
    """Tiny RegNet-Y for 1x3x32x32: widths 16/32, depths 1/2, group width 8."""
    model = RegNet((16, 32), (1, 2), group_width=8, stem=8, num_classes=10)
    return init_weights(model, seed)
