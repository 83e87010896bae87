"""Shared building blocks and deterministic initialisation helpers."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (MobileNet convention)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:  # do not round down by more than 10 %
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias) -> ``BatchNorm2d`` -> optional activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def randomize_bn(model: nn.Module, seed: int = 0, *, relative: bool = False) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    A freshly constructed BatchNorm (mean 0, var 1, weight 1, bias 0) is
    almost the identity, which hides bugs in BN handling / folding.  With
    ``relative=False`` this draws ``running_mean ~ N(0, 0.1)``,
    ``running_var ~ U(0.5, 1.5)``; with ``relative=True`` (after
    :func:`calibrate_bn`) it instead jitters the existing statistics
    (``mean += N(0, 0.1) * std``, ``var *= U(0.8, 1.25)``) and leaves the
    affine parameters alone; otherwise it also draws ``weight ~ U(0.5, 1.5)``
    and ``bias ~ N(0, 0.1)``.  All draws come from a dedicated generator
    seeded with ``seed``.  Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mean, var = mod.running_mean, mod.running_var
                if mean is not None and var is not None:
                    if relative:
                        mean.add_(torch.randn(n, generator=gen) * 0.1 * var.sqrt())
                        var.mul_(torch.rand(n, generator=gen) * 0.45 + 0.8)
                    else:
                        mean.copy_(torch.randn(n, generator=gen) * 0.1)
                        var.copy_(torch.rand(n, generator=gen) + 0.5)
                if mod.affine and not relative:
                    mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def calibrate_bn(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0, batch: int = 4) -> nn.Module:
    """Set BN running statistics to the batch statistics of random ``N(0, 1)`` input.

    Deep nets with fixed, arbitrary BN statistics let activations grow
    geometrically (a randomly initialised ResNet-50 reaches outputs ~1e3).
    Like a trained network, calibrated BNs keep activations O(1), which
    keeps absolute export tolerances meaningful.  Returns ``model`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the single calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn((batch, *input_shape[1:]), generator=gen))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def init_weights(
    model: nn.Module, seed: int = 0, calib_input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Deterministically (re)initialise conv / linear weights and BatchNorms.

    Uses Kaiming-normal (fan_out) for convolutions and a small normal for
    linear layers; biases get small random values so they are not trivially
    zero.  Then, if ``calib_input_shape`` is given, BN statistics are
    calibrated (:func:`calibrate_bn`) and jittered
    (``randomize_bn(relative=True)``); otherwise they are drawn absolutely
    with :func:`randomize_bn`.  Returns ``model`` in eval mode.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.01)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.05)
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.01)
    if calib_input_shape is not None:
        randomize_bn(model, seed)  # affine params first: calibration sees them
        calibrate_bn(model, calib_input_shape, seed)
        randomize_bn(model, seed, relative=True)
    else:
        randomize_bn(model, seed)
    return model.eval()
