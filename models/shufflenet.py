"""ShuffleNetV2 (Ma et al., 2018).

Stride-1 units split channels in half (``chunk``), transform one half and
concatenate it back; stride-2 units transform both branches (one with a
depthwise downsample).  After the concat, :func:`channel_shuffle` interleaves
the two halves via reshape -> transpose -> reshape, so channel ``c`` of the
concat ends up at a permuted position - pruning must respect that mapping.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import ConvBNAct, init_weights


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(N, g*k, H, W) -> (N, g, k, H, W) -> (N, k, g, H, W) -> (N, g*k, H, W)``."""
    n, c, h, w = x.shape
    x = x.reshape(n, groups, c // groups, h, w)
    x = x.transpose(1, 2).contiguous()
    return x.reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit; ``stride == 1`` uses channel split, ``stride == 2`` doubles resolution reduction."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_ch = out_ch // 2
        if stride == 1:
            assert in_ch == out_ch, "stride-1 unit needs in_ch == out_ch"
            self.branch1: nn.Module = nn.Identity()
            b2_in = branch_ch
        else:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=None),
                ConvBNAct(in_ch, branch_ch, 1),
            )
            b2_in = in_ch
        self.branch2 = nn.Sequential(
            ConvBNAct(b2_in, branch_ch, 1),
            ConvBNAct(branch_ch, branch_ch, 3, stride, groups=branch_ch, act=None),
            ConvBNAct(branch_ch, branch_ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with configurable stage repeats and output channels.

    ``stage_out`` lists the stem, the three stages and the final 1x1 conv
    (``[24, 116, 232, 464, 1024]`` for the 1.0x model).
    """

    def __init__(
        self,
        repeats: tuple[int, ...] = (4, 8, 4),
        stage_out: tuple[int, ...] = (24, 116, 232, 464, 1024),
        num_classes: int = 1000,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if small_input:
            self.stem: nn.Module = ConvBNAct(3, stage_out[0], 3, 1)
        else:
            self.stem = nn.Sequential(ConvBNAct(3, stage_out[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        in_ch = stage_out[0]
        stages: list[nn.Module] = []
        for n, out_ch in zip(repeats, stage_out[1:-1]):
            units: list[nn.Module] = [ShuffleUnit(in_ch, out_ch, 2)]
            units += [ShuffleUnit(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.conv_last = ConvBNAct(in_ch, stage_out[-1], 1)
        self.fc = nn.Linear(stage_out[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_last(self.stages(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def shufflenetv2_like(num_classes: int = 1000, seed: int = 0) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x layout (~2.3M params) for 224x224 inputs, BN calibrated."""
    return init_weights(ShuffleNetV2(num_classes=num_classes), seed, (1, 3, 224, 224))


def shufflenetv2_tiny(seed: int = 0) -> ShuffleNetV2:
    """Tiny ShuffleNetV2 for 1x3x32x32: stages of 2/3/2 units, widths 16/32/64, head 128."""
    model = ShuffleNetV2((2, 3, 2), (16, 16, 32, 64, 128), num_classes=10, small_input=True)
    return init_weights(model, seed)
