"""Typed errors raised by spa.

The library raises :class:`SpaError` subclasses that name the file, node, op or axis involved and say how
to fix the problem. Only :mod:`spa.cli` turns them into exit codes and one-line messages.
"""

from __future__ import annotations


class SpaError(Exception):
    """Base class of every error spa raises on purpose."""

    exit_code: int = 1


class UsageError(SpaError):
    """An option or argument is invalid (bad ratio, output equal to input, ...)."""

    exit_code = 1


class InvalidModelError(SpaError):
    """The input is not a loadable, valid ONNX model."""

    exit_code = 2


class UnsupportedModelError(SpaError):
    """The model is valid ONNX but uses something spa cannot handle."""

    exit_code = 3


class CouplingError(SpaError):
    """The channel analysis found an inconsistency it cannot resolve."""

    exit_code = 3


class PlanError(SpaError):
    """The requested budget cannot be met or the plan is inconsistent."""

    exit_code = 1


class ValidationError(SpaError):
    """A pruned model failed validation (checker, ONNX Runtime or the mask oracle)."""

    exit_code = 4


class RecoverError(SpaError):
    """``spa recover`` stopped: the loss became NaN (the last checkpoint is kept); the message says what to do."""

    exit_code = 5


class RecoverInterrupted(RecoverError):
    """``spa recover`` was interrupted (Ctrl-C) after writing a checkpoint to resume from."""

    exit_code = 130
