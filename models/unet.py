"""Small U-Net (Ronneberger et al., 2015) with ConvTranspose upsampling and skip ``Concat``.

Encoder: double-conv (conv-BN-ReLU x2) + 2x2 max-pool per level.  Decoder:
2x2 stride-2 ``ConvTranspose`` (with bias), concat with the matching encoder
feature map (skip first, then upsampled), double-conv.  Output is a
per-pixel 1x1 conv (segmentation logits), same spatial size as the input.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import ConvBNAct, init_weights


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3))


class Up(nn.Module):
    """ConvTranspose 2x upsample, concat with the skip, then :class:`DoubleConv`."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, 2)
        self.conv = DoubleConv(skip_ch + in_ch // 2, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], 1))


class UNet(nn.Module):
    """U-Net with ``len(widths) - 1`` down/up levels; ``widths[0]`` is the first level width."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512, 1024), num_classes: int = 2) -> None:
        super().__init__()
        self.inc = DoubleConv(3, widths[0])
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(DoubleConv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        rev = widths[::-1]
        self.ups = nn.ModuleList(Up(a, b, b) for a, b in zip(rev[:-1], rev[1:]))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(self.pool(x))
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def unet_tiny(seed: int = 0) -> UNet:
    """Tiny 3-level U-Net (widths 8/16/32/64) for 1x3x32x32, 2 output classes."""
    return init_weights(UNet((8, 16, 32, 64), num_classes=2), seed)
