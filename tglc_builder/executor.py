"""Where the work runs: a local process pool (the default) or a Dask cluster.

Stages hand :meth:`Executor.run` a module-level function and a list of tasks made of plain data (paths, ids,
settings); the function reads and writes the shared file system itself, so no light-curve data ever passes through
the driver or a Dask scheduler. Tasks must be idempotent (a worker may die and its task run again elsewhere): every
stage writes under a temporary name and renames, and skips what is already complete. One executor serves a whole
build, so its worker processes start once.

Inside a task, :func:`stopping` says when the driver was interrupted (finish the file at hand, then return),
:func:`advance` reports progress as it happens (a local pool's bar moves per file, not per task),
:func:`shared_value` gives values every process of the pool shares (e.g. a pause the archive asked for) and
:func:`hand_over` lets a task that is winding down (its last downloads started, only their arrival and its last
write left) give its worker the next task beside it, so that the worker's connections never wait for a task's end
and the next one's start. This module knows nothing of what the tasks do.

What the processes share is plain shared memory with no lock (``RawValue``/``RawArray``), each value with one
writer or tolerant of a lost update, and a pipe between the driver and each worker: a worker can be SIGKILLed at
any instruction, and one that dies holding a lock shared with the driver (``multiprocessing.Value``'s, an
``Event``'s, a ``multiprocessing.Queue``'s) leaves the driver and every other worker waiting on it for good.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STOP_GRACE = 8.0  # seconds running tasks get to return after Ctrl-C before their processes are killed
TASK_RETRIES = 1  # a task whose worker process died is run again this many times before it is reported lost
# Values shared by every worker of a local pool: name -> (ctypes code, initial value).
SHARED_VALUES = {"throttle": ("d", 0.0)}

_worker: dict[str, Any] = {"stop": None, "progress": None, "shared": {}, "slot": 0}
_progress_lock = threading.Lock()  # the threads of one process (a unit's downloads); never another process's
_lane = threading.local()  # the thread running a task of the local pool: its ``task`` (send, index)


class WorkerDied(Exception):
    """The local worker process running a task ended without returning its result (killed, out of memory)."""


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


def _nothing() -> None:
    pass


def hand_over() -> Callable[[], None]:
    """For the task running in this thread: a function to call (once, from any of its threads) when what is left
    of the task no longer needs its whole worker, e.g. once its last download is requested. The worker then starts
    its next task beside it. A no-op on Dask."""
    lane = getattr(_lane, "task", None)
    if lane is None:
        return _nothing
    send, index = lane
    sent: list[bool] = []

    def release() -> None:
        if not sent:
            sent.append(True)
            send(("more", index))

    return release


def _init_worker(stop, progress, shared: dict, in_pool: bool, slot: int = 0, preload: Sequence[str] = ()) -> None:
    if in_pool:
        # Ctrl-C is the driver's to handle: it sets ``stop``, and tasks end at the next file.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(stop=stop, progress=progress, shared=shared, slot=slot)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110 - the task that needs it imports it again and reports the error
            pass


def _serve(conn: Connection, stop, progress, shared: dict, slot: int, preload: Sequence[str]) -> None:
    """A local worker process: runs each task the driver sends, in a thread of its own (two at once at most: the
    driver sends the next one only when the current one hands over or ends), until the driver closes the pipe."""
    _init_worker(stop, progress, shared, in_pool=True, slot=slot, preload=preload)
    lock = threading.Lock()  # the task threads share the pipe

    def send(message: tuple) -> None:
        try:
            with lock:
                conn.send(message)
        except OSError:  # the driver is gone or closing: nobody waits for this any more
            pass

    threads: list[threading.Thread] = []
    while True:
        try:
            index, payload = conn.recv()
        except (EOFError, OSError):
            break
        thread = threading.Thread(target=_run_task, args=(send, index, lambda p=payload: pickle.loads(p)),
                                  name=f"tglc-task-{index}")
        thread.start()
        threads = [t for t in threads if t.is_alive()] + [thread]
    for thread in threads:
        thread.join()


def _run_task(send: Callable[[tuple], None], index: int, load: Callable[[], tuple]) -> None:
    """Run task ``index`` (``load()`` gives its function and arguments) and send ``("done", index, ok, value)``."""
    _lane.task = (send, index)
    try:
        function, args = load()
        ok, value = True, function(*args)
    except BaseException as exc:  # noqa: BLE001 - raised again in the driver, as ProcessPoolExecutor does
        ok, value = False, exc
    try:
        send(("done", index, ok, value))
    except Exception as exc:  # noqa: BLE001 - what it returned (or raised) does not pickle
        send(("done", index, False, RuntimeError(f"a task's {'result' if ok else 'error'} could not be sent "
                                                 f"back: {exc}")))


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Around starting a worker process: it inherits SIGINT blocked, so a Ctrl-C sent to the whole process group
    cannot kill one still importing (with a traceback) before it ignores SIGINT."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _Process:
    """The driver's end of one local worker process: its pipe, and the tasks it holds (index -> handed over).
    (No process nor pipe: the driver's own threads, with one process.)"""

    def __init__(self, process: multiprocessing.process.BaseProcess | None, conn: Connection | None, slot: int):
        self.process, self.conn, self.slot = process, conn, slot
        self.held: dict[int, bool] = {}
        self.alone = False  # it holds a task that must run with no other beside it

    def note(self, message: tuple) -> tuple[int, bool, Any] | None:
        """Take in a message of its tasks: a hand-over, or ``(index, ok, value)`` of a held task that ended."""
        kind, i = message[0], message[1]
        if i not in self.held:  # not (or no longer) one of this run's
            return None
        if kind == "more":
            self.held[i] = True
            return None
        self.held.pop(i)
        self.alone = self.alone and bool(self.held)
        return message[1:]

    def has_room(self, alone: bool) -> bool:
        """Whether it can take a task now (``alone``: one that must run with no other beside it)."""
        if not self.held:
            return True
        return not alone and not self.alone and len(self.held) < 2 and all(self.held.values())


class Executor:
    """Runs tasks over ``n_processes`` local processes (in threads of this process when 1, so Ctrl-C stays
    responsive), or on the cluster of a ``dask.distributed.Client``. Close it (or use ``with``) when done.

    The local pool is written here rather than taken from ``concurrent.futures``: a ``ProcessPoolExecutor`` gives a
    process its next task only once the current one has returned (so a unit's end left its worker's connections
    idle), and one dead worker breaks the whole pool, failing every other worker's task with it."""

    def __init__(self, n_processes: int = 1, client: Any = None, stop_grace: float = STOP_GRACE):
        self.n_processes, self.client, self.stop_grace = n_processes, client, stop_grace
        self._thread: ThreadPoolExecutor | None = None
        self._stale: dict[int, Future] = {}  # the driver's threads' tasks whose results were not taken
        self._runs = 0  # runs started
        self._processes: list[_Process] = []
        self._context = multiprocessing.get_context("spawn")  # no fork: the driver may hold threads (the demo)
        self._stop = self._context.RawValue("b", 0)
        self._progress = self._context.RawArray("q", n_processes)  # units done, one slot per process
        self._shared = {name: self._context.RawValue(code, value) for name, (code, value) in SHARED_VALUES.items()}
        self._bar: tqdm | None = None
        self._postfix = ""  # shown after the bar's counts (a multi-sector build: the sector being fetched)

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

    def postfix(self, text: str) -> None:
        """Show ``text`` after the progress bar's counts, from now on (in the bar of a run started later too)."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def stop(self) -> None:
        """Ask every running task to return at its next file."""
        self._stop.value = 1

    @property
    def stopping_requested(self) -> bool:
        return bool(self._stop.value)

    def close(self) -> None:
        """Stop the workers. Tasks still running get ``stop_grace`` seconds, then their processes are killed,
        so closing never hangs."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)
            _init_worker(None, None, {}, in_pool=False)
        processes, self._processes = self._processes, []
        for worker in processes:
            worker.conn.close()  # a worker ends once its tasks have
        deadline = time.monotonic() + self.stop_grace
        try:
            for worker in processes:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        finally:  # also when a second Ctrl-C interrupts the wait: then at once
            for worker in processes:
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(5)

    def kill(self) -> None:
        """End every worker process at once (a second Ctrl-C)."""
        for worker in list(self._processes):
            worker.process.kill()

    def run(self, function: Callable[..., Any], tasks: Sequence[tuple], *, total: int, desc: str, unit: str,
            weights: Sequence[int], lost: Callable[[tuple, BaseException], Any]) -> Iterator[Any]:
        """Run ``function(*task)`` for every task and yield the results as they complete.

        ``total`` units of work in all, of which task ``i`` is ``weights[i]``; a bar shows them. A task whose
        worker died (a local process killed, OOM) is run again (:data:`TASK_RETRIES` times, with no other task
        beside it; Dask applies its own ``allowed-failures``); one that keeps dying yields ``lost(task, error)``
        instead, so the stage reports its rows as failures and the rest of the build goes on. An exception a task
        raises is raised here. On Ctrl-C the tasks are asked to stop, the workers are stopped within seconds and
        ``KeyboardInterrupt`` propagates.
        """
        if not tasks:
            return
        self._settle()
        self._stop.value = 0
        self._runs += 1
        this_run = self._runs
        with tqdm(total=total, desc=desc, unit=unit, smoothing=0.05, postfix=self._postfix or None) as bar:
            self._bar = bar
            try:
                if self.client is not None:
                    yield from self._run_dask(function, tasks, weights, lost, bar)
                elif self.n_processes == 1:
                    yield from self._run_in_thread(function, tasks, bar)
                else:
                    yield from self._run_local(function, tasks, lost, bar)
            except BaseException:
                if self._runs == this_run:  # not an abandoned run's generator, closed later, stopping a newer run
                    self._stop.value = 1
                raise
            finally:
                if self._runs == this_run:
                    self._bar = None

    def warm_up(self, *modules: str) -> None:
        """Start the local worker processes now, each importing ``modules`` (what the tasks will need) as it starts,
        while the driver goes on (reading the listings, building the catalog). Best effort: a process started later
        (in place of one that died) imports nothing ahead. A no-op on Dask and with one process."""
        if self.client is None and self.n_processes > 1 and not self._processes:
            self._start_processes(preload=modules)

    def _start_processes(self, preload: Sequence[str] = ()) -> None:
        """Start a process for every slot that has none."""
        # The first process started in a spawn context starts multiprocessing's resource tracker, and unblocks
        # SIGINT after it: started beforehand, it cannot undo _sigint_blocked.
        resource_tracker.ensure_running()
        taken = {worker.slot for worker in self._processes}
        for slot in range(self.n_processes):
            if slot in taken:
                continue
            parent, child = self._context.Pipe()
            process = self._context.Process(target=_serve, name=f"tglc-worker-{slot}", daemon=True,
                                            args=(child, self._stop, self._progress, self._shared, slot,
                                                  tuple(preload)))
            with _sigint_blocked():
                process.start()
            child.close()
            self._processes.append(_Process(process, parent, slot))

    def _settle(self) -> None:
        """Before a run: the tasks of one that ended early (Ctrl-C, a task's exception, a consumer that stopped
        reading; the stop flag is still set) get what is left of ``stop_grace`` to return, and workers still
        holding one are then killed (replaced by this run), so that no late result is taken for one of this run."""
        deadline = time.monotonic() + self.stop_grace
        self._stop.value = 1
        if self._stale:
            wait(list(self._stale.values()), timeout=self.stop_grace)  # the driver's own threads cannot be killed
            self._stale = {}
        dead: set[int] = set()  # slots of workers that died meanwhile (their tasks with them)
        while (busy := [w for w in self._processes if w.held]) and time.monotonic() < deadline:
            ready = set(wait_for_any([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                     timeout=max(0.0, min(0.2, deadline - time.monotonic()))))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                for message in self._messages(worker):
                    if message is None:
                        dead.add(worker.slot)
                    else:
                        worker.note(message)  # its result is dropped: its run is over
                if worker.process.sentinel in ready or worker.slot in dead:
                    dead.add(worker.slot)
                    worker.held.clear()
        for worker in list(self._processes):
            if worker.held or worker.slot in dead or not worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
                worker.conn.close()
                self._processes.remove(worker)
            worker.alone = False

    def _run_in_thread(self, function, tasks, bar) -> Iterator[Any]:
        """One process: the tasks run in threads of this one (the main thread stays free for Ctrl-C), handing over
        as in a worker process."""
        self._progress[:] = [0] * len(self._progress)
        if self._thread is None:
            _init_worker(self._stop, self._progress, self._shared, in_pool=False)
            self._thread = ThreadPoolExecutor(2, thread_name_prefix="tglc-task")
        messages: queue.SimpleQueue = queue.SimpleQueue()
        here = _Process(None, None, 0)
        waiting = deque(range(len(tasks)))
        running: dict[int, Future] = {}
        self._stale = running  # until this run has taken every result: see _settle
        while waiting or here.held:
            while waiting and here.has_room(alone=False):
                i = waiting.popleft()
                running[i] = self._thread.submit(_run_task, messages.put, i, lambda i=i: (function, tasks[i]))
                here.held[i] = False
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                message = None
            bar.update(sum(self._progress) - bar.n)
            while message is not None:
                if (ended := here.note(message)) is not None:
                    i, ok, value = ended
                    running.pop(i)
                    if not ok:
                        raise value
                    yield value
                try:
                    message = messages.get_nowait()
                except queue.Empty:
                    message = None

    def _run_local(self, function, tasks, lost, bar) -> Iterator[Any]:
        self._progress[:] = [0] * len(self._progress)
        deaths = [0] * len(tasks)
        waiting = deque(range(len(tasks)))  # not yet sent, in order; tasks to run again go first
        while waiting or any(worker.held for worker in self._processes):
            self._start_processes()
            for worker in self._processes:
                while waiting and worker.has_room(alone=deaths[waiting[0]] > 0):
                    i = waiting.popleft()
                    worker.held[i] = False  # before it is sent: a Ctrl-C may come at any moment
                    worker.alone = deaths[i] > 0
                    try:
                        worker.conn.send((i, pickle.dumps((function, tasks[i]))))
                    except OSError:  # it has died: its sentinel says so below
                        worker.held.pop(i)
                        worker.alone = False
                        waiting.appendleft(i)
                        break
            ready = set(wait_for_any([w.conn for w in self._processes] + [w.process.sentinel for w in self._processes],
                                     timeout=0.2))
            bar.update(sum(self._progress) - bar.n)
            for worker in list(self._processes):
                dead = worker.process.sentinel in ready
                if not dead and worker.conn not in ready:
                    continue
                for message in self._messages(worker):  # what it sent before it died is read first
                    if message is None:
                        dead = True
                    elif (ended := worker.note(message)) is not None:
                        _, ok, value = ended
                        if not ok:
                            raise value
                        yield value
                if dead:
                    yield from self._bury(worker, deaths, waiting, tasks, lost)
        bar.update(sum(self._progress) - bar.n)

    @staticmethod
    def _messages(worker: _Process) -> Iterator[tuple | None]:
        """What the worker has sent, then None if its pipe is closed (it died)."""
        try:
            while worker.conn.poll():
                yield worker.conn.recv()
        except (EOFError, OSError):
            yield None

    def _bury(self, worker: _Process, deaths: list[int], waiting: deque, tasks, lost) -> Iterator[Any]:
        """A worker died: its tasks run again (alone), or are given up when they have died too often."""
        self._processes.remove(worker)
        worker.process.join(5)
        worker.conn.close()
        code = worker.process.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
        if worker.held:
            log.warning("A worker process died (%s) running %d task(s); running them again in a new process", how,
                        len(worker.held))
        for i in sorted(worker.held, reverse=True):
            deaths[i] += 1
            if deaths[i] > TASK_RETRIES:
                log.error("A worker process died %d times running the same task; reporting its rows as failed",
                          deaths[i])
                yield lost(tasks[i], WorkerDied(how))
            else:
                waiting.appendleft(i)

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
