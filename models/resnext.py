"""ResNeXt: ResNet bottlenecks whose 3x3 conv is grouped (Xie et al., 2017).

Re-uses :class:`models.resnet.Bottleneck` with ``groups`` (cardinality) and
``base_width`` (channels per group at ``planes == 64``).
"""

from __future__ import annotations

from models.common import init_weights
from models.resnet import Bottleneck, ResNet


def resnext50_32x4d_like(
    width: int = 64, num_classes: int = 1000, seed: int = 0, image_size: int = 224
) -> ResNet:
    """ResNeXt-50 (32x4d) layout: 3, 4, 6, 3 bottlenecks, 32 groups of width 4 (BN calibrated)."""
    model = ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes, groups=32, base_width=4)
    return init_weights(model, seed, calib_input_shape=(1, 3, image_size, image_size))


def resnext_tiny(groups: int = 4, seed: int = 0) -> ResNet:
    """Tiny ResNeXt for 1x3x32x32: planes 8/16/32/64, ``groups`` (4 or 8) groups of width 4 (at planes 16).

    With ``base_width=16`` the grouped 3x3 conv has ``planes // 4 * groups``
    channels, e.g. 8 -> 8 channels in 4 groups (2 channels per group) in the
    first stage and 64 -> 64 channels in the last.
    """
    model = ResNet(Bottleneck, [1, 1, 1, 1], 8, 10, small_input=True, groups=groups, base_width=16)
    return init_weights(model, seed)
