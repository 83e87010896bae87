"""torch, imported on first use: ``spa recover`` is the optional extra ``spa[recover]``.

``from spa.recover.backend import torch`` gives a stand-in whose attributes are torch's; torch itself is
imported the first time one is read, so importing :mod:`spa.api` (which imports this package) does not
need torch.
"""

from __future__ import annotations

from typing import Any

from spa.errors import UsageError


def _import(who: str) -> Any:
    try:
        import torch  # optional extra: spa[recover]
    except ImportError:
        raise UsageError(f"{who} needs PyTorch: pip install 'spa[recover]'") from None
    return torch


def require(who: str) -> None:
    """Raise a one-line :class:`UsageError` naming ``who`` (e.g. ``criterion 'taylor'``) unless torch imports."""
    _import(who)


class _Torch:
    """The torch module, imported on first attribute access."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_import("spa recover"), name)


torch: Any = _Torch()
