"""ResNet with BasicBlock / Bottleneck residual blocks (He et al., 2016).

Widths scale with ``width`` (the stem/first-stage width; 64 for the real
ResNet-18/50).  Every conv is followed by BatchNorm; downsampling shortcuts
are 1x1 conv + BN, so the graph has both identity and projection ``Add``s.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import init_weights


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity / projection shortcut (expansion 1)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (optionally grouped) -> 1x1 expand (expansion 4)."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64
    ) -> None:
        super().__init__()
        mid = int(planes * (base_width / 64.0)) * groups
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Generic ResNet: stem, four stages of ``block`` and a linear classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks per stage (e.g. ``[3, 4, 6, 3]``).
        width: planes of the first stage; stage ``i`` uses ``width * 2**i``.
        num_classes: classifier outputs.
        small_input: use a 3x3 stride-1 stem without max-pool (CIFAR-style,
            for 32x32 inputs) instead of the 7x7/2 stem + 3x3/2 max-pool.
        groups / base_width: ResNeXt cardinality and per-group width
            (only used with :class:`Bottleneck`).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        width: int = 64,
        num_classes: int = 1000,
        small_input: bool = False,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        in_ch = width
        stages: list[nn.Module] = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks: list[nn.Module] = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                if block is Bottleneck:
                    blocks.append(Bottleneck(in_ch, planes, stride, groups, base_width))
                else:
                    blocks.append(BasicBlock(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_like(
    width: int = 64, num_classes: int = 1000, seed: int = 0, image_size: int = 224
) -> ResNet:
    """ResNet-50 layout (3, 4, 6, 3 bottlenecks); ``width=64`` is the real size (~25.6M params).

    BN statistics are calibrated on random ``image_size`` inputs (see
    :func:`models.common.calibrate_bn`) so activations stay O(1).
    """
    model = ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes)
    return init_weights(model, seed, calib_input_shape=(1, 3, image_size, image_size))


def resnet18_like(
    width: int = 64, num_classes: int = 1000, seed: int = 0, image_size: int = 224
) -> ResNet:
    """ResNet-18 layout (2, 2, 2, 2 basic blocks), BN calibrated like :func:`resnet50_like`."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes)
    return init_weights(model, seed, calib_input_shape=(1, 3, image_size, image_size))


def resnet_basic_tiny(seed: int = 0) -> ResNet:
    """Tiny BasicBlock ResNet for 1x3x32x32 inputs (widths 8/16/32/64, one block per stage)."""
    return init_weights(ResNet(BasicBlock, [1, 1, 1, 1], 8, 10, small_input=True), seed)


def resnet_bottleneck_tiny(seed: int = 0) -> ResNet:
    """Tiny Bottleneck ResNet for 1x3x32x32 inputs (planes 8/16/32/64, blocks 1/2/1/1)."""
    return init_weights(ResNet(Bottleneck, [1, 2, 1, 1], 8, 10, small_input=True), seed)
