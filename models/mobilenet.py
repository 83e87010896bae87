"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3-style (Howard et al., 2019) networks.

V2: inverted residuals (1x1 expand -> 3x3 depthwise -> 1x1 linear project),
ReLU6, residual ``Add`` when stride 1 and channels match.
V3: same skeleton with hardswish activations and squeeze-excitation blocks
(GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid -> Mul).
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import ConvBNAct, init_weights, make_divisible


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expansion, depthwise 3x3, linear 1x1 projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            ConvBNAct(hidden, out_ch, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


# (expand ratio t, output channels c, repeats n, first stride s) of the real MobileNetV2.
V2_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier and configurable stage settings."""

    def __init__(
        self,
        width_mult: float = 1.0,
        settings: list[tuple[int, int, int, int]] | None = None,
        stem_ch: int = 32,
        last_ch: int = 1280,
        stem_stride: int = 2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        settings = V2_SETTINGS if settings is None else settings
        in_ch = make_divisible(stem_ch * width_mult)
        self.last_ch = make_divisible(last_ch * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, 3, stem_stride, act=nn.ReLU6)]
        for t, c, n, s in settings:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(ConvBNAct(in_ch, self.last_ch, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """SE block with hardsigmoid gating (MobileNetV3 flavour)."""

    def __init__(self, ch: int, squeeze_ch: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeeze_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_ch, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * s


class V3Block(nn.Module):
    """MobileNetV3 bneck: expand 1x1 -> depthwise kxk -> optional SE -> project 1x1."""

    def __init__(
        self,
        in_ch: int,
        exp_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        use_se: bool,
        act: type[nn.Module],
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, kernel, stride, groups=exp_ch, act=act))
        if use_se:
            layers.append(SqueezeExcite(exp_ch, make_divisible(exp_ch // 4)))
        layers.append(ConvBNAct(exp_ch, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


# (kernel, expanded ch, out ch, use SE, activation "RE"/"HS", stride) - MobileNetV3-Small.
V3_SMALL_SETTINGS: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]


class MobileNetV3(nn.Module):
    """MobileNetV3-style network (hardswish, SE with hardsigmoid gating)."""

    def __init__(
        self,
        settings: list[tuple[int, int, int, bool, str, int]] | None = None,
        stem_ch: int = 16,
        last_conv_ch: int = 576,
        head_ch: int = 1024,
        stem_stride: int = 2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        settings = V3_SMALL_SETTINGS if settings is None else settings
        acts: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}
        layers: list[nn.Module] = [ConvBNAct(3, stem_ch, 3, stem_stride, act=nn.Hardswish)]
        in_ch = stem_ch
        for k, exp, out, se, act, s in settings:
            layers.append(V3Block(in_ch, exp, out, k, s, se, acts[act]))
            in_ch = out
        layers.append(ConvBNAct(in_ch, last_conv_ch, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_ch, head_ch), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head_ch, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2_full(width_mult: float = 1.0, num_classes: int = 1000, seed: int = 0) -> MobileNetV2:
    """Real-size MobileNetV2 (~3.5M params at width 1.0) for 224x224 inputs, BN calibrated."""
    return init_weights(MobileNetV2(width_mult, num_classes=num_classes), seed, (1, 3, 224, 224))


def mobilenetv3_small_like(num_classes: int = 1000, seed: int = 0) -> MobileNetV3:
    """MobileNetV3-Small layout (~2.5M params) for 224x224 inputs, BN calibrated."""
    return init_weights(MobileNetV3(num_classes=num_classes), seed, (1, 3, 224, 224))


def mobilenetv2_tiny(seed: int = 0) -> MobileNetV2:
    """Tiny MobileNetV2 for 1x3x32x32: five stages, widths 8..32, with residual blocks."""
    settings = [(1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 2, 1)]
    model = MobileNetV2(1.0, settings, stem_ch=16, last_ch=64, stem_stride=1, num_classes=10)
    return init_weights(model, seed)


def mobilenetv3_tiny(seed: int = 0) -> MobileNetV3:
    """Tiny MobileNetV3-style net for 1x3x32x32 (SE + hardswish + residuals)."""
    settings = [
        (3, 16, 16, True, "RE", 2),
        (3, 48, 24, False, "RE", 2),
        (3, 64, 24, False, "RE", 1),
        (5, 72, 32, True, "HS", 2),
        (5, 96, 32, True, "HS", 1),
    ]
    model = MobileNetV3(settings, stem_ch=16, last_conv_ch=96, head_ch=64, stem_stride=1, num_classes=10)
    return init_weights(model, seed)
