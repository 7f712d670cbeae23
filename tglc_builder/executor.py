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
from concurrent.futures.process import BrokenProcessPool
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
            weights: Sequence[int], lost: Callable[[tuple, BaseException], Any]) -> Iterator[Any]:
        """Run ``function(*task)`` for every task and yield the results as they complete.

        ``total`` units of work in all, of which task ``i`` is ``weights[i]``; a bar shows them. A task whose
        worker died for good (a local process killed, Dask's retries used up) yields ``lost(task, error)`` instead,
        so the stage reports its rows as failures and the build goes on. On Ctrl-C the tasks are asked to stop, the
        pool is drained and ``KeyboardInterrupt`` propagates.
        """
        if not tasks:
            return
        with tqdm(total=total, desc=desc, unit=unit, smoothing=0.05) as bar:
            if self.client is not None:
                yield from self._run_dask(function, tasks, weights, lost, bar)
            else:
                yield from self._run_local(function, tasks, lost, bar)

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

    def _run_local(self, function, tasks, lost, bar) -> Iterator[Any]:
        pool = self._local_pool()
        with self._counter.get_lock():
            self._counter.value = 0
        submitted = {pool.submit(function, *task): task for task in tasks}
        pending = set(submitted)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                bar.update(self._counter.value - bar.n)
                for future in done:
                    try:
                        yield future.result()
                    except BrokenProcessPool as exc:  # a worker was killed (OOM, kill -9): the pool is gone
                        log.error("A worker process died: %s", exc)
                        self._pool = None
                        yield lost(submitted[future], exc)
        except KeyboardInterrupt:
            log.warning("Interrupted: finishing the files at hand, then stopping")
            self._stop.set()
            self.close()
            raise
        bar.update(self._counter.value - bar.n)

    def _run_dask(self, function, tasks, weights, lost, bar) -> Iterator[Any]:
        from distributed import KilledWorker, as_completed

        futures = {self.client.submit(function, *task, pure=False): (task, weight)
                   for task, weight in zip(tasks, weights)}
        try:
            for future in as_completed(futures):
                task, weight = futures[future]
                bar.update(weight)
                try:
                    yield future.result()
                except KilledWorker as exc:  # the workers running it kept dying: Dask gave up on it
                    log.error("Dask gave up on a task: %s", exc)
                    yield lost(task, exc)
        except KeyboardInterrupt:
            log.warning("Interrupted: cancelling the cluster's tasks")
            self.client.cancel(list(futures))
            raise
