"""Tasks for tests/test_executors.py, in a module of their own: pool and Ray workers import it to run
them, and it imports nothing heavy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spa.errors import UsageError


def _scale(shared: int, x: int) -> int:
    return shared * x


def _fail_on_three(_shared: object, x: int) -> int:
    if x == 3:
        raise UsageError("three is refused")
    return x


class KillOnce:
    """Wraps a task: the first time it meets ``item`` it kills its own worker process (a lost worker), then
    runs normally (``always``: it kills every worker that meets ``item``); a marker file says whether that
    happened already (the retry runs in another process)."""

    def __init__(self, fn: Callable[[Any, Any], Any], item: object, marker: Path, always: bool = False) -> None:
        self.fn, self.item, self.marker, self.always = fn, item, str(marker), always

    def __call__(self, shared: object, item: object) -> object:
        if item == self.item and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.fn(shared, item)
