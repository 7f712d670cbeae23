"""Where the work runs: a local process pool (the default) or a Dask cluster (docs/DESIGN.md, "Integrity").

Tasks are a module-level function and plain data (no light curve passes through the driver or a Dask scheduler),
idempotent (a task may run again elsewhere); one that declares a ``context`` parameter is handed a
:class:`~.context.TaskContext`. The processes share only lock-free memory, each value with one writer or tolerant
of a lost update, and a pipe per worker: a worker may die holding any lock.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import replace
from functools import partial
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from typing import Any

from .context import TaskContext
from .progress import progress

log = logging.getLogger(__name__)

STOP_GRACE = 8.0  # seconds running tasks get to return after Ctrl-C before their processes are killed
TASK_RETRIES = 1  # a task whose worker process died is run again this many times before it is reported lost
MARKS = 8  # breadcrumbs per worker process: items read at once by its task threads (more go unrecorded)
DASK_POLL = 0.2  # seconds between a Dask worker's looks at its run's stop event

_worker: dict[str, Any] = {"stop": None, "progress": None, "slot": 0, "marks": None, "used": [False] * MARKS}
_marks_lock = threading.Lock()  # claims a breadcrumb entry among this process's threads (_breadcrumb)
_progress_lock = threading.Lock()  # the threads of one process (a unit's downloads); never another process's


class WorkerDied(Exception):
    """The local worker process running a task ended without returning its result (killed, out of memory).
    ``culprits``: the marks the task was reading (:meth:`TaskContext.reading`) when it died, if any."""

    def __init__(self, how: str, culprits: tuple[int, ...] = ()):
        super().__init__(how)
        self.how, self.culprits = how, culprits


def _context(send: Callable[[tuple], None], index: int) -> TaskContext:
    """The context of task ``index`` of this process's pool (``send``: its messages to the driver)."""
    stop, counts, slot, marks = _worker["stop"], _worker["progress"], _worker["slot"], _worker["marks"]
    sent: list[bool] = []

    def advance(units: int = 1) -> None:
        with _progress_lock:  # each process writes only its own slot, so no lock across processes is needed
            counts[slot] += units

    def hand_over() -> None:
        if not sent:
            sent.append(True)
            send(("more", index))

    if marks is None:  # the driver's own threads: a death there is not ours to read
        return TaskContext(lambda: bool(stop.value), advance, hand_over)
    base = slot * MARKS * 2

    def put(k: int, mark: int) -> None:
        # The entry's task index, then its mark (non-zero: in use), each one aligned 8-byte store, so a death between
        # two stores leaves a free entry, never a wrong one.
        marks[base + 2 * k] = index
        marks[base + 2 * k + 1] = mark

    return TaskContext(lambda: bool(stop.value), advance, hand_over, partial(_breadcrumb, _worker["used"], put))


@contextmanager
def _breadcrumb(used: list[bool], put: Callable[[int, int], None], mark: int) -> Iterator[None]:
    """Hold a free one of the :data:`MARKS` breadcrumb entries ``used`` (``put(entry, mark)`` writes it, a mark of 0
    frees it), read by the driver once the process has died, while the block runs; none when all are taken."""
    with _marks_lock:
        free = next((k for k in range(MARKS) if not used[k]), None)
        if free is not None:
            used[free] = True
    if free is None:
        yield
        return
    put(free, mark)
    try:
        yield
    finally:
        put(free, 0)
        used[free] = False


def _call(function: Callable[..., Any], args: tuple, context: TaskContext) -> Any:
    """``function(*args)``, given ``context=`` when it declares that parameter."""
    try:
        takes = "context" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes = False
    return function(*args, context=context) if takes else function(*args)


def _init_worker(stop, progress, in_pool: bool, slot: int = 0, preload: Sequence[str] = (),
                 marks=None) -> None:
    if in_pool:
        # Ctrl-C is the driver's to handle: it sets ``stop``, and tasks end at the next file.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(stop=stop, progress=progress, slot=slot, marks=marks, used=[False] * MARKS)
    if in_pool:
        # Arrow's default pool (mimalloc) kept what a worker's shards freed: measured, a -n 2 HATS build's processes
        # together peaked ~80 MB higher with it than with malloc's, for the same CPU time. Arrow reads this once, when
        # it is first imported (the preloads below), so it is set here, in our own processes only.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    for name in preload:
        with suppress(Exception):  # the task that needs it imports it again and reports the error
            importlib.import_module(name)


def _serve(conn: Connection, stop, progress, slot: int, preload: Sequence[str], marks=None) -> None:
    """A local worker process: runs each task the driver sends, in a thread of its own (two at once at most: the
    driver sends the next one only when the current one hands over or ends), until the driver closes the pipe."""
    _init_worker(stop, progress, in_pool=True, slot=slot, preload=preload, marks=marks)
    lock = threading.Lock()  # the task threads share the pipe

    def send(message: tuple) -> None:
        with suppress(OSError), lock:  # OSError: the driver is gone or closing, nobody waits for this any more
            conn.send(message)

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
    try:
        function, args = load()
        ok, value = True, _call(function, args, _context(send, index))
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
        self._marks = self._context.RawArray("q", n_processes * MARKS * 2)  # breadcrumbs: (task, mark) pairs
        self._dask_stop: str | None = None  # the name of the running Dask run's stop event
        self._bar = None  # the running progress counter (tqdm, or progress.LogProgress)
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
        if self._dask_stop is not None:
            _set_event(self.client, self._dask_stop)

    @property
    def stopping_requested(self) -> bool:
        return bool(self._stop.value)

    def close(self) -> None:
        """Stop the workers. Tasks still running get ``stop_grace`` seconds, then their processes are killed,
        so closing never hangs."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)
            _init_worker(None, None, in_pool=False)
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
            weights: Sequence[int], lost: Callable[[tuple, BaseException], Any],
            narrow: Callable[[tuple, WorkerDied], tuple[Any, tuple | None] | None] | None = None,
            crumbs: str | os.PathLike | None = None) -> Iterator[Any]:
        """Run ``function(*task)`` for every task and yield the results as they complete.

        ``total`` units of work in all, of which task ``i`` is ``weights[i]``; a bar shows them. A task whose
        worker died (a local process killed, OOM) is run again (:data:`TASK_RETRIES` times, with no other task
        beside it; Dask applies its own ``allowed-failures``); one that keeps dying yields ``lost(task, error)``
        instead, so the stage reports its rows as failures and the rest of the build goes on. When it was reading
        the same items (:meth:`TaskContext.reading`) each time it died, ``narrow(task, error)`` (``error.culprits``:
        those items) may give instead ``(result, rest)``: ``result`` (the culprits' failures) is yielded and the
        task ``rest`` (None: nothing left), without the culprits, is run in its place. An exception a task raises is
        raised here. On Ctrl-C the tasks are asked to stop, the workers are stopped within seconds and
        ``KeyboardInterrupt`` propagates. On Dask, the breadcrumbs are small files in the folder ``crumbs`` (which
        every worker and the driver share; none: no narrowing on Dask).
        """
        if not tasks:
            return
        self._settle()
        self._stop.value = 0
        self._runs += 1
        this_run = self._runs
        with progress(total, desc, unit, smoothing=0.05, postfix=self._postfix or None) as bar:
            self._bar = bar
            try:
                if self.client is not None:
                    yield from self._run_dask(function, tasks, weights, lost, narrow, crumbs, bar)
                elif self.n_processes == 1:
                    yield from self._run_in_thread(function, tasks, bar)
                else:
                    yield from self._run_local(function, tasks, lost, narrow, bar)
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
            self._marks[slot * MARKS * 2:(slot + 1) * MARKS * 2] = [0] * (MARKS * 2)  # a dead one's breadcrumbs
            parent, child = self._context.Pipe()
            process = self._context.Process(target=_serve, name=f"tglc-worker-{slot}", daemon=True,
                                            args=(child, self._stop, self._progress, slot,
                                                  tuple(preload), self._marks))
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
            _init_worker(self._stop, self._progress, in_pool=False)
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

    def _run_local(self, function, tasks, lost, narrow, bar) -> Iterator[Any]:
        self._progress[:] = [0] * len(self._progress)
        tasks = list(tasks)  # narrowed tasks are added at the end
        deaths = [0] * len(tasks)
        suspects: list[set[int]] = [set() for _ in tasks]  # per task: what it was reading each time it died
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
                    yield from self._bury(worker, deaths, suspects, waiting, tasks, lost, narrow)
        bar.update(sum(self._progress) - bar.n)

    @staticmethod
    def _messages(worker: _Process) -> Iterator[tuple | None]:
        """What the worker has sent, then None if its pipe is closed (it died)."""
        try:
            while worker.conn.poll():
                yield worker.conn.recv()
        except (EOFError, OSError):
            yield None

    def _breadcrumbs(self, slot: int) -> dict[int, set[int]]:
        """What the (dead) process of ``slot`` was reading: task index -> marks."""
        base, found = slot * MARKS * 2, {}
        entries = self._marks[base:base + MARKS * 2]
        for k in range(MARKS):
            if entries[2 * k + 1]:
                found.setdefault(entries[2 * k], set()).add(entries[2 * k + 1])
        return found

    def _bury(self, worker: _Process, deaths: list[int], suspects: list[set[int]], waiting: deque, tasks: list,
              lost, narrow) -> Iterator[Any]:
        """A worker died: its tasks run again (alone), or are given up (or narrowed) when they have died too often."""
        self._processes.remove(worker)
        worker.process.join(5)
        worker.conn.close()
        code = worker.process.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
        reading = self._breadcrumbs(worker.slot)
        if worker.held:
            log.warning("A worker process died (%s) running %d task(s)%s; running them again in a new process", how,
                        len(worker.held), "".join(f", reading item {m}" for i in worker.held
                                                  for m in sorted(reading.get(i, ()))))
        for i in sorted(worker.held, reverse=True):
            deaths[i] += 1
            now = reading.get(i, set())
            # what it was reading at every death: a file read beside the culprit by chance, or a death that came
            # while reading different files (memory short for other reasons), blames nothing
            suspects[i] = suspects[i] & now if deaths[i] > 1 else now
            if deaths[i] <= TASK_RETRIES:
                waiting.appendleft(i)
                continue
            error = WorkerDied(how, tuple(sorted(suspects[i])))
            result, rest = _give_up(tasks[i], error, error, lost, narrow,
                                    f"A worker process died {deaths[i]} times running the same task")
            if rest is not None:
                tasks.append(rest)
                deaths.append(0)
                suspects.append(set())
                waiting.appendleft(len(tasks) - 1)
            yield result

    def _run_dask(self, function, tasks, weights, lost, narrow, crumbs, bar) -> Iterator[Any]:
        from distributed import KilledWorker, as_completed

        # A stop the workers see: client.cancel only drops tasks not yet running (a running one's thread cannot be
        # interrupted), so each task looks at this event (see _DaskStops) and returns at its next file.
        name = self._dask_stop = f"tglc-stop-{uuid.uuid4().hex}"
        if crumbs is not None and narrow is not None:
            try:
                os.makedirs(crumbs, exist_ok=True)
            except OSError as exc:
                log.warning("No breadcrumbs for the cluster's tasks (%s): %s", crumbs, exc)
                crumbs = None
        else:
            crumbs = None
        count = iter(range(1 << 62))

        def submit(task: tuple) -> Any:
            key = f"{getattr(function, '__name__', 'task')}-{next(count)}-{name[10:]}"
            path = _crumbs_path(crumbs, key) if crumbs is not None else None
            return self.client.submit(_dask_task, name, path, function, *task, pure=False, key=key)

        futures = {submit(task): (task, weight) for task, weight in zip(tasks, weights)}
        stopped = False
        try:
            pending = as_completed(futures)
            for future in pending:
                task, weight = futures[future]
                try:
                    result = future.result()
                except KilledWorker as exc:  # the workers running it kept dying: Dask gave up on it
                    culprits = _FileCrumbs.culprits(crumbs, future.key) if crumbs is not None else ()
                    error = WorkerDied("its Dask workers died each time: KilledWorker", culprits)
                    result, rest = _give_up(task, error, exc, lost, narrow, f"Dask gave up on a task ({exc})")
                    if rest is not None:
                        again = submit(rest)
                        futures[again] = (rest, weight)  # its bar's weight when it ends
                        pending.add(again)
                        yield result
                        continue
                else:
                    if crumbs is not None:  # a retry that succeeded leaves its dead attempts' breadcrumbs
                        _FileCrumbs.remove(crumbs, future.key)
                bar.update(weight)
                yield result
        except BaseException:
            stopped = True
            self._stop_dask(name, list(futures))
            raise
        finally:
            self._dask_stop = None
            if not stopped:
                _set_event(self.client, name, clear=True)  # forgotten by the scheduler (a stop was set or not)

    def _stop_dask(self, name: str, futures: list) -> None:
        """Stop a Dask run: set its stop event, drop its tasks not yet running, and give the running ones
        ``stop_grace`` seconds to return (they do at their next file); then give up on them, loudly."""
        from distributed import wait as wait_futures

        log.warning("Stopping: the cluster's running tasks stop at their next file; the others are cancelled")
        _set_event(self.client, name)
        try:
            processing = {key for keys in self.client.processing().values() for key in keys}
        except Exception:  # noqa: BLE001 - the scheduler is gone: nothing to wait for
            processing = set()
        running = [f for f in futures if f.key in processing and not f.done()]
        self.client.cancel([f for f in futures if f.key not in processing])
        if running:
            with suppress(TimeoutError):  # (distributed's wait raises it rather than return what is not done)
                wait_futures(running, timeout=self.stop_grace)
            if left := [f for f in running if not f.done()]:
                log.error("%d task(s) on the cluster did not stop within %g s; giving up on them: their workers "
                          "may still write until those tasks next look at the stop (restart the workers to be "
                          "sure)", len(left), self.stop_grace)
        self.client.cancel(futures)


def _give_up(task: tuple, error: WorkerDied, lost_error: BaseException, lost, narrow, what: str
             ) -> tuple[Any, tuple | None]:
    """A task that kept dying: ``(lost(task, lost_error), None)``, or when ``narrow`` blames the items it was
    reading (``error.culprits``), their failures and the rest of the task to run instead (None: nothing left)."""
    narrowed = narrow(task, error) if narrow is not None and error.culprits else None
    if narrowed is None:
        log.error("%s; reporting its rows as failed", what)
        return lost(task, lost_error), None
    log.error("%s, each time reading item(s) %s: reporting those as failed%s", what,
              ", ".join(map(str, error.culprits)), "" if narrowed[1] is None else ", running the rest of it again")
    return narrowed


def _set_event(client: Any, name: str, clear: bool = False) -> None:
    """Set (or clear: the scheduler then forgets it) a run's stop event; best effort, the scheduler may be gone."""
    from distributed import Event

    try:
        event = Event(name, client=client)
        event.clear() if clear else event.set()
    except Exception as exc:  # noqa: BLE001
        log.warning("Could not reach the Dask scheduler to %s the stop of its tasks: %s", "clear" if clear else "set",
                    exc)


class _DaskStops:
    """On a Dask worker process: the stop events of the runs whose tasks it is running, looked at every
    :data:`DASK_POLL` seconds by one thread, so that a task's ``stopping()`` only reads a flag."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runs: dict[str, list] = {}  # name -> [tasks running, stopped]
        self.thread: threading.Thread | None = None
        self.client: Any = None

    def enter(self, name: str) -> Callable[[], bool]:
        from distributed import Event, get_client

        with self.lock:
            if self.client is None:
                try:
                    self.client = get_client()  # this worker's own client (made once), for the event's calls
                except Exception as exc:  # noqa: BLE001 - not on a worker: the task runs without a stop
                    log.warning("No Dask client on this worker (%s): its tasks cannot see a stop", exc)
                    return lambda: False
            run = self.runs.setdefault(name, [0, False])
            run[0] += 1
            start = self.thread is None
            if start:
                self.thread = thread = threading.Thread(target=self._watch, name="tglc-dask-stop", daemon=True)
        if not run[1]:  # a task that starts after the stop returns at once
            run[1] = _is_set(Event, name, self.client)
        if start:
            thread.start()
        return lambda: run[1]

    def leave(self, name: str) -> None:
        with self.lock:
            run = self.runs.get(name)
            if run is not None:
                run[0] -= 1
                if not run[0]:
                    del self.runs[name]

    def _watch(self) -> None:
        from distributed import Event

        while True:
            with self.lock:
                if not self.runs:
                    self.thread = None
                    return
                watched = [(name, run) for name, run in self.runs.items() if not run[1]]
            for name, run in watched:
                if _is_set(Event, name, self.client):
                    run[1] = True
            time.sleep(DASK_POLL)


def _is_set(event_type, name: str, client: Any) -> bool:
    try:
        return bool(event_type(name, client=client).is_set())
    except Exception:  # noqa: BLE001 - the scheduler is unreachable: look again later
        return False


_dask_stops = _DaskStops()


class _FileCrumbs:
    """A Dask task's breadcrumbs, in a small file of a folder the driver shares, since its worker's memory is gone
    with it: :data:`MARKS` slots of what its threads are reading, then how many of its attempts died and what they
    were all reading. One ``pwrite`` of 8 bytes a slot (the kernel keeps it when the process dies); an attempt that
    returns removes the file, so one that finds it left behind knows the attempt before died."""

    def __init__(self, path: str):
        self.path, self.used = path, [False] * MARKS
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deaths, suspects = self._read(self.fd)
        os.pwrite(self.fd, _pack([0] * MARKS + [deaths] + sorted(suspects)[:MARKS]
                                 + [0] * (MARKS - min(MARKS, len(suspects)))), 0)

    @staticmethod
    def _read(fd: int) -> tuple[int, set[int]]:
        """How many attempts died, and what they were all reading (the last one's live slots included)."""
        raw = os.pread(fd, 8 * (2 * MARKS + 1), 0)
        if len(raw) < 8 * (2 * MARKS + 1):
            return 0, set()
        values = struct.unpack(f"<{2 * MARKS + 1}q", raw)
        live, deaths, kept = {v for v in values[:MARKS] if v}, values[MARKS], {v for v in values[MARKS + 1:] if v}
        return deaths + 1, (kept & live if deaths else live)

    def reading(self, mark: int) -> AbstractContextManager:
        return _breadcrumb(self.used, lambda k, value: os.pwrite(self.fd, _pack([value]), 8 * k), mark)

    def close(self) -> None:
        os.close(self.fd)
        with suppress(OSError):
            os.unlink(self.path)

    @staticmethod
    def culprits(folder: str, key: str) -> tuple[int, ...]:
        """What every dead attempt of task ``key`` was reading (its file is then removed)."""
        path = _crumbs_path(folder, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return ()
        try:
            deaths, suspects = _FileCrumbs._read(fd)
        finally:
            os.close(fd)
        _FileCrumbs.remove(folder, key)
        return tuple(sorted(suspects)) if deaths else ()

    @staticmethod
    def remove(folder: str, key: str) -> None:
        with suppress(OSError):
            os.unlink(_crumbs_path(folder, key))


def _crumbs_path(folder: str | os.PathLike, key: str) -> str:
    """A Dask task's breadcrumbs file: named as debris (``.*.tmp-*``), so a later build removes one left behind."""
    return os.path.join(folder, f".tglc-reading-{key}.tmp-dask")


def _pack(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _dask_task(stop: str, crumbs: str | None, function: Callable[..., Any], *args) -> Any:
    """A task on a Dask worker: ``function(*args)``, its context's ``stopping()`` answering its run's stop event and
    its breadcrumbs in the file ``crumbs`` (no progress nor hand-over: Dask schedules its own threads)."""
    marks = _FileCrumbs(crumbs) if crumbs is not None else None
    context = TaskContext(_dask_stops.enter(stop))
    try:
        return _call(function, args, context if marks is None else replace(context, reading=marks.reading))
    finally:
        if marks is not None:
            marks.close()
        _dask_stops.leave(stop)


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
