"""The :class:`Executor` protocol, the serial and the local-pool executors, and :func:`make_executor`.

Every executor computes ``[fn(shared, item) for item in items]``: the results come back in input
order, ``on_result(index, result)`` is called as each one completes (in completion order), and an
exception raised by ``fn`` is re-raised in the caller as itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol, TypeVar

from threadpoolctl import ThreadpoolController

from spa.errors import UsageError
from spa.options import EXECUTOR_MODES

log = logging.getLogger(__name__)

#: the ``--executor`` names
EXECUTORS = EXECUTOR_MODES
#: times a task whose worker process died is run again
RETRIES = 3

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]


_BLAS = ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """BLAS limited to one thread inside the block. OpenBLAS sums a matrix product in another order with
    one thread than with several, and Ray workers get one thread: work whose bits must not depend on where
    it ran (calibration statistics, a sweep's prunes) runs single-threaded everywhere."""
    return _BLAS.limit(limits=1, user_api="blas")


class ExecutorError(UsageError):
    """An executor cannot be made (unknown name, Ray missing) or lost a task for good."""


class Executor(Protocol):
    """Maps ``fn(shared, item)`` over items; results in input order."""

    name: str

    @property
    def workers(self) -> int:
        """How many tasks run at once."""

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S | None = None, *,
            on_result: OnResult | None = None) -> list[R]:
        """``[fn(shared, item) for item in items]``; ``on_result(i, result)`` as each completes."""

    def close(self) -> None:
        """Release the workers (a Ray instance this executor started is shut down)."""

    def __enter__(self) -> Executor:
        """The executor itself."""

    def __exit__(self, *exc: object) -> None:
        """:meth:`close`."""


class SerialExecutor:
    """In this process, one task after the other (the reference every other executor must match)."""

    name = "serial"

    @property
    def workers(self) -> int:
        """One."""
        return 1

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S | None = None, *,
            on_result: OnResult | None = None) -> list[R]:
        """Run every task here, in order."""
        out = []
        for i, item in enumerate(items):
            out.append(fn(shared, item))  # type: ignore[arg-type]
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[str, Any] = {}  # a pool worker's copies of the shared values, by file: read once per worker


def _pool_call(fn: Callable[[Any, Any], Any], shared_path: str, item: Any) -> Any:
    if shared_path not in _SHARED:
        _SHARED.clear()  # one map's value at a time
        _SHARED[shared_path] = pickle.loads(Path(shared_path).read_bytes())
    return fn(_SHARED[shared_path], item)


class LocalPoolExecutor:
    """A pool of ``workers`` spawned processes on this machine, kept for the executor's life.

    ``shared`` is pickled once per map to a file (a shared path); each worker reads it on its first task
    of that map. A worker that dies (killed, out of memory) breaks the pool: the tasks not yet finished
    run again in a fresh pool, up to ``retries`` times.
    """

    name = "local"

    def __init__(self, workers: int | None = None, retries: int = RETRIES) -> None:
        if workers is not None and workers < 1:
            raise ExecutorError(f"--workers must be at least 1, got {workers}")
        self._workers = workers or os.cpu_count() or 1
        self.retries = retries
        self._pool: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        """The pool size."""
        return self._workers

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S | None = None, *,
            on_result: OnResult | None = None) -> list[R]:
        """Run the tasks in the pool; a broken pool's unfinished tasks run again in a fresh one.

        Raises:
            ExecutorError: workers still died after ``retries`` fresh pools.
        """
        results: dict[int, R] = {}
        with tempfile.TemporaryDirectory(prefix="spa-shared-") as tmp:
            path = Path(tmp) / "shared.pkl"
            path.write_bytes(pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL))
            for attempt in range(self.retries + 1):
                pending = [i for i in range(len(items)) if i not in results]
                if not pending:
                    break
                try:
                    self._run(fn, items, pending, str(path), results, on_result)
                except BrokenProcessPool:
                    self.close()
                    left = len(items) - len(results)
                    if attempt == self.retries:
                        raise ExecutorError(f"worker processes died {self.retries + 1} times with {left} task(s) "
                                            "unfinished (out of memory?); try fewer --workers") from None
                    log.warning("a worker process died; running its %d unfinished task(s) again", left)
        return [results[i] for i in range(len(items))]

    def _run(self, fn: Callable[[S, T], R], items: Sequence[T], pending: list[int], shared_path: str,
             results: dict[int, R], on_result: OnResult | None) -> None:
        """The ``pending`` tasks in the pool, filling ``results`` as they complete."""
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent (ONNX Runtime, Ray)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        futures: dict[Future[R], int] = {self._pool.submit(_pool_call, fn, shared_path, items[i]): i
                                         for i in pending}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])

    def close(self) -> None:
        """Shut the pool down (a later map starts a fresh one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalPoolExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
