"""Where the work runs: a local process pool (the default) or a Dask cluster.

Stages hand :meth:`Executor.run` a module-level function and a list of tasks made of plain data (paths, ids,
settings); the function reads and writes the shared file system itself, so no light-curve data ever passes through
the driver or a Dask scheduler. Tasks must be idempotent (a worker may die and its task run again elsewhere): every
stage writes under a temporary name and renames, and skips what is already complete. One executor serves a whole
build, so its worker processes start once.

Inside a task, :func:`stopping` says when the driver was interrupted (finish the file at hand, then return),
:func:`advance` reports progress as it happens (a local pool's bar moves per file, not per task) and
:func:`shared_value` gives values every process of the pool shares (e.g. a pause the archive asked for). This
module knows nothing of what the tasks do.

What the processes share is plain shared memory with no lock (``RawValue``/``RawArray``), each value with one
writer or tolerant of a lost update: a worker can be SIGKILLed at any instruction, and one that dies holding a
lock shared with the driver (``multiprocessing.Value``'s, or an ``Event``'s) leaves the driver and every other
worker waiting on it for good.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STOP_GRACE = 8.0  # seconds running tasks get to return after Ctrl-C before their processes are killed
TASK_RETRIES = 1  # a task whose worker process died is run again this many times before it is reported lost
# Values shared by every worker of a local pool: name -> (ctypes code, initial value).
SHARED_VALUES = {"throttle": ("d", 0.0)}

_worker: dict[str, Any] = {"stop": None, "progress": None, "shared": {}, "slots": None, "slot": 0}
_progress_lock = threading.Lock()  # the threads of one process (a unit's downloads); never another process's


def stopping() -> bool:
    """Whether the driver asked every task to stop (Ctrl-C, or a fatal error such as a full disk)."""
    stop = _worker["stop"]
    return stop is not None and bool(stop.value)


def shared_value(name: str):
    """A lock-free shared ``RawValue`` of every process of the local pool (None on Dask or outside a pool)."""
    return _worker["shared"].get(name)


def advance(units: int = 1) -> None:
    """Count ``units`` of work done, for the driver's progress bar (a no-op on Dask)."""
    progress = _worker["progress"]
    if progress is not None:
        with _progress_lock:  # each process writes only its own slot, so no lock across processes is needed
            progress[_worker["slot"]] += units


def _init_worker(stop, progress, shared: dict, in_pool: bool, slots=None, claimed=None,
                 preload: Sequence[str] = ()) -> None:
    if in_pool:
        # Ctrl-C is the driver's to handle: it sets ``stop``, and tasks end at the next file.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot = 0
    if claimed is not None:  # this process's slot in ``progress`` and its pair in ``slots`` (pid, task or -1)
        # The one lock shared across processes: each pool has its own ``claimed``, taken once per process at its
        # start and never by the driver, so a process that dies holding it can only break its own pool.
        with claimed.get_lock():
            slot, claimed.value = claimed.value, claimed.value + 1
        slot %= len(progress)
    _worker.update(stop=stop, progress=progress, shared=shared, slots=slots, slot=slot)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110 - the task that needs it imports it again and reports the error
            pass


def _ready() -> None:
    """The task Executor.warm_up gives each worker: the workers exist once it is submitted."""


def _tracked(index: int, function: Callable[..., Any], *args: Any) -> Any:
    """Run a task, recording in the shared slots which task this process runs, so that when a worker dies the
    driver knows whose task it was (ProcessPoolExecutor fails every unfinished task of the pool alike)."""
    slots, at = _worker["slots"], 2 * _worker["slot"]
    if slots is not None:
        slots[at], slots[at + 1] = os.getpid(), index
    try:
        return function(*args)
    finally:
        if slots is not None:
            slots[at + 1] = -1


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Around ``submit()``, which starts worker processes: they inherit SIGINT blocked, so a Ctrl-C sent to the whole
    process group cannot kill one still importing (with a traceback) before its initializer ignores it."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class Executor:
    """Runs tasks over ``n_processes`` local processes (in a thread of this process when 1, so Ctrl-C stays
    responsive), or on the cluster of a ``dask.distributed.Client``. Close it (or use ``with``) when done."""

    def __init__(self, n_processes: int = 1, client: Any = None, stop_grace: float = STOP_GRACE):
        self.n_processes, self.client, self.stop_grace = n_processes, client, stop_grace
        self._pool: ProcessPoolExecutor | ThreadPoolExecutor | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork: the driver may hold threads (the demo)
        self._stop = self._context.RawValue("b", 0)
        self._progress = self._context.RawArray("q", n_processes)  # units done, one slot per process
        self._shared = {name: self._context.RawValue(code, value) for name, (code, value) in SHARED_VALUES.items()}
        self._slots = self._context.RawArray("q", 2 * n_processes)

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

    def stop(self) -> None:
        """Ask every running task to return at its next file."""
        self._stop.value = 1

    @property
    def stopping_requested(self) -> bool:
        return bool(self._stop.value)

    def close(self) -> None:
        """Stop the workers. Tasks still running get ``stop_grace`` seconds, then their processes are killed,
        so closing never hangs (``ProcessPoolExecutor.shutdown`` can wait for good on a task being cancelled)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=True, cancel_futures=True)
            _init_worker(None, None, {}, in_pool=False)
            return
        processes = list((pool._processes or {}).values())  # noqa: SLF001 - the only handle on the processes
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + self.stop_grace
        try:
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
        finally:  # also when a second Ctrl-C interrupts the wait: then at once
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)

    def kill(self) -> None:
        """End every worker process at once (a second Ctrl-C)."""
        pool = self._pool
        if isinstance(pool, ProcessPoolExecutor):
            for process in list((pool._processes or {}).values()):  # noqa: SLF001
                process.kill()

    def run(self, function: Callable[..., Any], tasks: Sequence[tuple], *, total: int, desc: str, unit: str,
            weights: Sequence[int], lost: Callable[[tuple, BaseException], Any]) -> Iterator[Any]:
        """Run ``function(*task)`` for every task and yield the results as they complete.

        ``total`` units of work in all, of which task ``i`` is ``weights[i]``; a bar shows them. A task whose
        worker died (a local process killed, OOM) is run again (:data:`TASK_RETRIES` times; Dask applies its own
        ``allowed-failures``); one that keeps dying yields ``lost(task, error)`` instead, so the stage reports its
        rows as failures and the rest of the build goes on. On Ctrl-C the tasks are asked to stop, the workers are
        stopped within seconds and ``KeyboardInterrupt`` propagates.
        """
        if not tasks:
            return
        self._stop.value = 0
        with tqdm(total=total, desc=desc, unit=unit, smoothing=0.05) as bar:
            try:
                if self.client is not None:
                    yield from self._run_dask(function, tasks, weights, lost, bar)
                else:
                    yield from self._run_local(function, tasks, weights, lost, bar)
            except BaseException:
                self._stop.value = 1
                raise

    def warm_up(self, *modules: str) -> None:
        """Start the local worker processes now, each importing ``modules`` (what the tasks will need) as it starts,
        while the driver goes on (reading the listings, building the catalog). Best effort: a pool started later
        (after a worker died) imports nothing ahead. A no-op on Dask and with one process."""
        if self.client is not None or self.n_processes == 1 or self._pool is not None:
            return
        pool = self._local_pool(preload=modules)
        try:
            with _sigint_blocked():
                for _ in range(self.n_processes):  # each submit() starts a process while none is idle
                    pool.submit(_ready)
        except BrokenProcessPool:  # a worker died at once: run() starts a new pool
            self._pool = None

    def _local_pool(self, preload: Sequence[str] = ()) -> ProcessPoolExecutor | ThreadPoolExecutor:
        if self._pool is None:
            if self.n_processes == 1:
                _init_worker(self._stop, self._progress, self._shared, in_pool=False)
                self._pool = ThreadPoolExecutor(1)
            else:
                self._slots[:] = [0, -1] * self.n_processes
                self._pool = ProcessPoolExecutor(self.n_processes, mp_context=self._context,
                                                 initializer=_init_worker,
                                                 initargs=(self._stop, self._progress, self._shared, True, self._slots,
                                                           self._context.Value("i", 0), tuple(preload)))
        return self._pool

    def _run_local(self, function, tasks, weights, lost, bar) -> Iterator[Any]:
        self._progress[:] = [0] * len(self._progress)
        deaths = [0] * len(tasks)
        queue = list(range(len(tasks)))  # task indices not yet submitted to the current pool
        running: dict[Future, int] = {}
        while queue or running:
            pool = self._local_pool()
            try:
                with _sigint_blocked():
                    while queue:
                        i = queue.pop(0)
                        running[pool.submit(_tracked, i, function, *tasks[i])] = i
            except BrokenProcessPool:  # broke between two submissions: resubmit once a new pool is up
                queue.insert(0, i)
                if not running:  # broke before any task of ours ran on it (a worker died warming up)
                    self._pool = None
                    continue
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            bar.update(sum(self._progress) - bar.n)
            broken: BrokenProcessPool | None = None
            for future in done:
                i = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    # A worker died (kill -9, OOM) and took the pool with it: every unfinished task of that pool
                    # fails here, not only the dead worker's. They all run again on a new pool; only the dead
                    # worker's task counts a death, and one that kills its worker again is given up.
                    broken = exc
                    queue.append(i)
                    continue
                yield result
            if broken is not None:
                culprits = self._culprits(pool)
                log.warning("A worker process died (%s); starting a new pool and running its tasks again", broken)
                self._pool = None
                for future, i in list(running.items()):  # cannot be running any more
                    running.pop(future)
                    queue.append(i)
                for i in culprits:
                    deaths[i] += 1
                    if deaths[i] > TASK_RETRIES:
                        log.error("A worker process died %d times running the same task; reporting its rows as "
                                  "failed", deaths[i])
                        queue.remove(i)
                        yield lost(tasks[i], broken)
                queue.sort()
        bar.update(sum(self._progress) - bar.n)

    def _culprits(self, pool: ProcessPoolExecutor) -> set[int]:
        """The tasks that were running in worker processes that died of their own (not the SIGTERM the pool sends
        the others once it is broken); all running tasks when that cannot be told."""
        exit_codes = {pid: process.exitcode for pid, process in (pool._processes or {}).items()}  # noqa: SLF001
        pairs = [(self._slots[k], self._slots[k + 1]) for k in range(0, len(self._slots), 2)]
        running = {index for _, index in pairs if index >= 0}
        dead = {index for pid, index in pairs
                if index >= 0 and exit_codes.get(pid) not in (None, 0, -signal.SIGTERM)}
        return dead or running

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
        except BaseException:
            log.warning("Stopping: cancelling the cluster's tasks")
            self.client.cancel(list(futures))
            raise


def run_interruptibly(main: Callable[[], Any], on_interrupt: Callable[[], None]) -> Any:
    """Run ``main()`` in this (main) thread; at the first Ctrl-C, ``KeyboardInterrupt`` unwinds it as usual, and a
    second Ctrl-C during that unwinding calls ``on_interrupt`` (kill the workers) and exits at once with 130."""
    if threading.current_thread() is not threading.main_thread():
        return main()
    previous = signal.getsignal(signal.SIGINT)

    def second(signum, frame):
        on_interrupt()
        os._exit(130)

    def first(signum, frame):
        signal.signal(signal.SIGINT, second)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    try:
        return main()
    finally:
        signal.signal(signal.SIGINT, previous)
