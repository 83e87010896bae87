""":func:`make_executor`: an executor by its ``--executor`` name."""

from __future__ import annotations

from spa.executors.base import EXECUTORS, Executor, ExecutorError, LocalPoolExecutor, SerialExecutor
from spa.executors.ray_cluster import RayExecutor


def make_executor(kind: str | None = "serial", *, address: str | None = None,
                  workers: int | None = None) -> Executor:
    """The executor named ``kind`` (``serial``, ``local`` or ``ray``; None: serial).

    ``address``: the Ray cluster (default ``$RAY_ADDRESS``; neither: a Ray instance on this machine,
    with ``workers`` CPUs). ``workers``: pool size / Ray CPUs started here (default: this machine's CPUs).

    Raises:
        ExecutorError: an unknown name; ``ray`` without Ray installed.
    """
    kind = (kind or "serial").lower()
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        return LocalPoolExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise ExecutorError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
