"""Numerical validation: the mask oracle and the fidelity report (ONNX Runtime through :mod:`spa.runtime`)."""
