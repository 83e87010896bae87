"""DenseNet (Huang et al., 2017): dense blocks that grow by ``Concat`` + transitions.

Each dense layer is BN -> ReLU -> 1x1 conv (bottleneck, ``bn_size * growth``)
-> BN -> ReLU -> 3x3 conv (``growth``), and its output is concatenated to
its input along channels.  Transitions are BN -> ReLU -> 1x1 conv -> 2x2
AvgPool.  Note the pre-activation ordering: BN *precedes* each conv here,
so in ONNX a BatchNormalization consumes a Concat output.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import init_weights


class DenseLayer(nn.Module):
    """One dense layer; returns ``cat([x, new_features], dim=1)``."""

    def __init__(self, in_ch: int, growth: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> 2x2 average pool."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    """DenseNet with configurable growth rate, block sizes and compression.

    Args:
        growth: channels added per dense layer (32 for DenseNet-121).
        blocks: dense layers per block (``(6, 12, 24, 16)`` for DenseNet-121).
        init_ch: stem output channels (64 for DenseNet-121).
        bn_size: bottleneck multiplier of the 1x1 conv in each dense layer.
        compression: transition output = ``int(in * compression)``.
        small_input: 3x3/1 stem without max-pool (for 32x32 inputs).
    """

    def __init__(
        self,
        growth: int = 32,
        blocks: tuple[int, ...] = (6, 12, 24, 16),
        init_ch: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 1000,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if small_input:
            layers: list[nn.Module] = [nn.Conv2d(3, init_ch, 3, 1, 1, bias=False)]
        else:
            layers = [
                nn.Conv2d(3, init_ch, 7, 2, 3, bias=False),
                nn.BatchNorm2d(init_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        ch = init_ch
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(ch, growth, bn_size))
                ch += growth
            if i != len(blocks) - 1:
                out = int(ch * compression)
                layers.append(Transition(ch, out))
                ch = out
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def densenet121_like(
    growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16), num_classes: int = 1000, seed: int = 0
) -> DenseNet:
    """DenseNet-121 layout (~8M params at growth 32) for 224x224 inputs, BN calibrated."""
    model = DenseNet(growth, blocks, 2 * growth, num_classes=num_classes)
    return init_weights(model, seed, (1, 3, 224, 224))


def densenet_tiny(seed: int = 0) -> DenseNet:
    """Tiny DenseNet for 1x3x32x32: growth 8, blocks (2, 3, 2), bottleneck 2x."""
    model = DenseNet(8, (2, 3, 2), 16, bn_size=2, num_classes=10, small_input=True)
    return init_weights(model, seed)
