"""Independent tasks mapped over one machine's processes or a Ray cluster.

An :class:`Executor` runs ``fn(shared, item)`` for every item and returns the results *in input
order*, whatever order they finish in; ``shared`` (the model, the calibration data) is shipped once,
not once per task. Three are provided:

* :class:`SerialExecutor` (``serial``) — in this process, one task after the other;
* :class:`LocalPoolExecutor` (``local``) — a pool of spawned worker processes on this machine;
* :class:`RayExecutor` (``ray``, ``pip install 'spa[ray]'``) — Ray tasks, ``shared`` put once in the
  object store; a task whose worker dies is retried.

The callers (:mod:`spa.calibration.stats`, :mod:`spa.quality.sensitivity`, :mod:`spa.sweep`) reduce
the results in a fixed order, so every executor gives the same bits.

>>> SerialExecutor().map(lambda shared, x: shared * x, [1, 2, 3], shared=10)
[10, 20, 30]
"""

from spa.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorError,
    LocalPoolExecutor,
    SerialExecutor,
    one_blas_thread,
)
from spa.executors.factory import make_executor
from spa.executors.ray_cluster import RayExecutor

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "LocalPoolExecutor", "RayExecutor", "SerialExecutor",
           "make_executor", "one_blas_thread"]
