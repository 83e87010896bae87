"""Numerical validation: running models in ONNX Runtime and the mask oracle."""
