"""Tasks on a Ray cluster (``pip install 'spa[ray]'``).

``shared`` is put once in the object store (``ray.put``): every task on a node reads the same copy
from shared memory. Tasks ask for one CPU each and are retried ``max_retries`` times when their
worker dies (a node lost, a process killed); an exception raised by the task itself is not retried
and comes back as itself. Results are fetched as they complete and returned in input order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from spa.errors import SpaError
from spa.executors.base import RETRIES, ExecutorError, OnResult

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ExecutorError: Ray is not installed.
    """
    try:
        import ray  # optional extra (spa[ray])
    except ImportError:
        raise ExecutorError("--executor ray needs Ray: pip install 'spa[ray]' (or pip install 'ray>=2.40')") from None
    return ray


def _ray_call(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    return fn(shared, item)


class RayExecutor:
    """Ray tasks on the cluster at ``address`` (default ``$RAY_ADDRESS``, else a Ray instance started
    on this machine with ``workers`` CPUs); an instance already initialised in this process is used as is."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, retries: int = RETRIES) -> None:
        if workers is not None and workers < 1:
            raise ExecutorError(f"--workers must be at least 1, got {workers}")
        self.ray = import_ray()
        self.retries = retries
        self.owned = False
        self.address, self._asked = address, workers
        self._connect()
        self._workers = workers or int(self.ray.cluster_resources().get("CPU", 1))

    def _connect(self) -> None:
        """Connect to the cluster, or start a local instance (unless this process is connected already).

        Raises:
            ExecutorError: the cluster at the address cannot be reached.
        """
        if self.ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"num_cpus": self._asked} if address is None else {}
        try:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                          logging_level=logging.WARNING, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
                                "check --ray-address / RAY_ADDRESS (ray start --head prints it)") from None
        self.owned = True

    @property
    def workers(self) -> int:
        """CPUs the tasks may use (one each)."""
        return self._workers

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S | None = None, *,
            on_result: OnResult | None = None) -> list[R]:
        """Submit every task (``shared`` put once), gather the results as they complete.

        Raises:
            ExecutorError: a task was lost more than ``retries`` times (its worker kept dying).
        """
        ray = self.ray
        self._connect()  # again, if the instance was shut down since
        ref = ray.put(shared)
        remote = ray.remote(max_retries=self.retries, num_cpus=1)(_ray_call)
        refs = [remote.remote(fn, ref, item) for item in items]
        index = {r: i for i, r in enumerate(refs)}
        results: dict[int, R] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                results[index[r]] = self._get(r)
                if on_result is not None:
                    on_result(index[r], results[index[r]])
        return [results[i] for i in range(len(items))]

    def _get(self, ref: Any) -> Any:
        """One task's result; the task's own exception re-raised as itself."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (SpaError, ValueError, TypeError, OSError)):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            raise ExecutorError(f"a Ray task was lost {self.retries + 1} times "
                                f"({str(exc).splitlines()[0]}); check the cluster's nodes and memory") from None

    def close(self) -> None:
        """Shut down the Ray instance this executor started (one it found is left running)."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        self.owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
