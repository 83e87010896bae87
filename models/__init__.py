"""Hand-written, seeded PyTorch model zoo used by the spa test-suite and benchmarks.

Every family lives in its own module (``resnet``, ``mobilenet``, ``densenet``,
``resnext``, ``shufflenet``, ``efficientnet``, ``unet``, ``fpn``, ``vgg``).
:mod:`models.registry` maps names to factories and :mod:`models.export` turns
a model into a self-contained ONNX file (legacy TorchScript or dynamo exporter).

``models/make_demo.py`` builds the demo ONNX model with ``onnx.helper`` only
(no torch required).
"""

from __future__ import annotations

from models.common import calibrate_bn, init_weights, randomize_bn

__all__ = ["calibrate_bn", "init_weights", "randomize_bn"]
