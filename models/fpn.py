"""Small Feature Pyramid Network (Lin et al., 2017) on a tiny conv backbone.

Backbone stages C2..C5 (conv-BN-ReLU, stride 2 each).  Top-down path:
lateral 1x1 convs (with bias), nearest-neighbour 2x upsampling
(``F.interpolate(scale_factor=2)`` -> ONNX ``Resize``) and ``Add``, then a
3x3 output conv per level.  Returns four outputs P2..P5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import ConvBNAct, init_weights


class FPN(nn.Module):
    """Backbone + FPN neck; ``forward`` returns ``(p2, p3, p4, p5)``.

    Args:
        widths: backbone stage widths (C2..C5).
        fpn_ch: channels of every pyramid level.
        upsample: ``"scale"`` uses ``interpolate(scale_factor=2)``,
            ``"size"`` uses ``interpolate(size=lateral.shape[-2:])``
            (the latter is what torchvision's FPN does).
    """

    def __init__(
        self, widths: tuple[int, ...] = (16, 24, 32, 48), fpn_ch: int = 16, upsample: str = "scale"
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.stem = ConvBNAct(3, widths[0], 3, 1)
        chans = [widths[0], *widths]
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNAct(a, b, 3, 2), ConvBNAct(b, b, 3)) for a, b in zip(chans[:-1], chans[1:])
        )
        self.laterals = nn.ModuleList(nn.Conv2d(w, fpn_ch, 1) for w in widths)
        self.outs = nn.ModuleList(nn.Conv2d(fpn_ch, fpn_ch, 3, 1, 1) for _ in widths)

    def _up(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if self.upsample == "size":
            return F.interpolate(x, size=ref.shape[-2:], mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        feats: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [conv(f) for conv, f in zip(self.laterals, feats)]
        top = lat[-1]
        merged = [top]
        for lateral in reversed(lat[:-1]):
            top = lateral + self._up(top, lateral)
            merged.insert(0, top)
        return tuple(conv(m) for conv, m in zip(self.outs, merged))


def fpn_tiny(seed: int = 0) -> FPN:
    """Tiny FPN for 1x3x64x64: C2..C5 at 32/16/8/4 px, 16 pyramid channels, 4 outputs."""
    return init_weights(FPN((16, 24, 32, 48), 16), seed)
