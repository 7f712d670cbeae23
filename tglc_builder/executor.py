"""Where the work runs: a local process pool (the default) or a Dask cluster.

Stages hand :meth:`Executor.run` a module-level function and a list of tasks made of plain data (paths, ids,
settings); the function reads and writes the shared file system itself, so no light-curve data ever passes through
the driver or a Dask scheduler. Tasks must be idempotent (a worker may die and its task run again elsewhere): every
stage writes under a temporary name and renames, and skips what is already complete. One executor serves a whole
build, so its worker processes start once.

Inside a task, :func:`stopping` says when the driver was interrupted (finish the file at hand, then return) and
:func:`advance` reports progress as it happens (a local pool's bar moves per file, not per task).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor as FuturesExecutor, ProcessPoolExecutor, ThreadPoolExecutor, \
    wait
from typing import Any

from tqdm.auto import tqdm

from . import net

log = logging.getLogger(__name__)

_worker: dict[str, Any] = {"stop": None, "counter": None}


def stopping() -> bool:
    """Whether the driver asked every task to stop (Ctrl-C)."""
    stop = _worker["stop"]
    return stop is not None and stop.is_set()


def advance(units: int = 1) -> None:
    """Count ``units`` of work done, for the driver's progress bar (a no-op on Dask)."""
    counter = _worker["counter"]
    if counter is not None:
        with counter.get_lock():
            counter.value += units


def _init_worker(stop, counter, throttle, in_pool: bool) -> None:
    if in_pool:
        # Ctrl-C is the driver's to handle: it sets ``stop``, and tasks end at the next file.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(stop=stop, counter=counter)
    net.install_shared_throttle(throttle)


class Executor:
    """Runs tasks over ``n_processes`` local processes (in a thread of this process when 1, so Ctrl-C stays
    responsive), or on the cluster of a ``dask.distributed.Client``. Close it (or use ``with``) when done."""

    def __init__(self, n_processes: int = 1, client: Any = None):
        self.n_processes, self.client = n_processes, client
        self._pool: FuturesExecutor | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork: the driver may hold threads (the demo)
        self._stop, self._counter = self._context.Event(), self._context.Value("q", 0)
        self._throttle = self._context.Value("d", 0.0)

    @property
    def workers(self) -> int:
        """How many tasks run at once: the local processes, or the Dask cluster's worker threads."""
        if self.client is None:
            return self.n_processes
        return max(1, sum(self.client.nthreads().values()))

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            if self.n_processes == 1:
                _init_worker(None, None, None, in_pool=False)

    def run(self, function: Callable[..., Any], tasks: Sequence[tuple], *, total: int, desc: str, unit: str,
            weights: Sequence[int] | None = None) -> Iterator[Any]:
        """Run ``function(*task)`` for every task and yield the results as they complete.

        ``total`` units of work in all, of which task ``i`` is ``weights[i]``; a bar shows them. On Ctrl-C the tasks
        are asked to stop, the pool is drained and ``KeyboardInterrupt`` propagates.
        """
        if not tasks:
            return
        weights = list(weights) if weights is not None else [1] * len(tasks)
        with tqdm(total=total, desc=desc, unit=unit, smoothing=0.05) as bar:
            if self.client is not None:
                yield from self._run_dask(function, tasks, weights, bar)
            else:
                yield from self._run_local(function, tasks, bar)

    def _local_pool(self) -> FuturesExecutor:
        if self._pool is None:
            if self.n_processes == 1:
                _init_worker(self._stop, self._counter, self._throttle, in_pool=False)
                self._pool = ThreadPoolExecutor(1)
            else:
                self._pool = ProcessPoolExecutor(self.n_processes, mp_context=self._context,
                                                 initializer=_init_worker,
                                                 initargs=(self._stop, self._counter, self._throttle, True))
        return self._pool

    def _run_local(self, function, tasks, bar) -> Iterator[Any]:
        pool = self._local_pool()
        with self._counter.get_lock():
            self._counter.value = 0
        pending = {pool.submit(function, *task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                bar.update(self._counter.value - bar.n)
                for future in done:
                    yield future.result()
        except KeyboardInterrupt:
            log.warning("Interrupted: finishing the files at hand, then stopping")
            self._stop.set()
            self.close()
            raise
        bar.update(self._counter.value - bar.n)

    def _run_dask(self, function, tasks, weights, bar) -> Iterator[Any]:
        from distributed import as_completed

        futures = {self.client.submit(function, *task, pure=False): weight for task, weight in zip(tasks, weights)}
        try:
            for future in as_completed(futures):
                bar.update(futures[future])
                yield future.result()
        except KeyboardInterrupt:
            log.warning("Interrupted: cancelling the cluster's tasks")
            self.client.cancel(list(futures))
            raise
