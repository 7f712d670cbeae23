"""The executor on its own: real worker processes running small module-level tasks (tests/_tasks.py)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import _tasks
from tglc_builder.executor import Executor


def _lost(task, error):
    return ("lost", task)


def _run(ex: Executor, function, tasks, weights=None):
    weights = weights or [1] * len(tasks)
    return list(ex.run(function, tasks, total=sum(weights), desc="Testing", unit="task", weights=weights,
                       lost=_lost))


class _Interrupt(Exception):
    pass


@contextmanager
def _interrupt_after(seconds: float):
    """Raise _Interrupt in this (main) thread after ``seconds``, as Ctrl-C would raise KeyboardInterrupt."""
    def handler(signum, frame):
        raise _Interrupt

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("n", [1, 2])
def test_results_and_progress(n, capfd):
    with Executor(n) as ex:
        results = _run(ex, _tasks.square, [(i,) for i in range(20)])
        assert sorted(results) == [i * i for i in range(20)]
        again = _run(ex, _tasks.square, [(i,) for i in range(5)])  # the same workers serve a second stage
        assert sorted(again) == [i * i for i in range(5)]
    err = capfd.readouterr().err
    assert "20/20" in err and "5/5" in err  # the bar counted what the tasks reported with advance()


def test_one_pool_serves_the_whole_build():
    with Executor(2) as ex:
        first = set(_run(ex, _tasks.whoami, [(0.2,)] * 4))
        second = set(_run(ex, _tasks.whoami, [(0.2,)] * 4))
    assert len(first) == 2 and first == second and os.getpid() not in first


def test_warm_up_starts_the_workers_that_then_run_the_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("TGLC_TEST_WARM_DIR", str(tmp_path))
    with Executor(2) as ex:
        ex.warm_up("_warm_record")
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        warmed = {int(p.name) for p in tmp_path.iterdir()}
        assert len(warmed) == 2  # both workers up before any task was given
        ran = set(_run(ex, _tasks.whoami, [(0.05,) for _ in range(8)]))
    assert ran <= warmed


def test_a_worker_killed_warming_up_is_replaced():
    with Executor(2) as ex:
        ex.warm_up("_warm_die")
        time.sleep(1.0)  # the pool is broken before the first task is given
        assert sorted(_run(ex, _tasks.square, [(i,) for i in range(6)])) == [i * i for i in range(6)]


def test_a_task_whose_worker_was_killed_runs_again(tmp_path):
    with Executor(2) as ex:
        assert _run(ex, _tasks.square, []) == []
        results = _run(ex, _tasks.die_once, [(str(tmp_path / "died"), "survivor")])
        results += _run(ex, _tasks.slow_square, [(i, 0.1) for i in range(6)])  # and the executor goes on
    assert (tmp_path / "died").exists()  # it really was killed once
    assert results[0] == "survivor" and sorted(results[1:]) == [i * i for i in range(6)]


def test_a_worker_killed_among_other_tasks_fails_nobody(tmp_path):
    """The dead worker's pool breaks, taking every unfinished task with it: all are run again, none lost."""
    marker = str(tmp_path / "died")
    tasks = [(marker, "survivor")] + [(marker, f"t{i}") for i in range(7)]
    with Executor(2) as ex:
        results = _run(ex, _tasks.die_once, tasks)
    assert sorted(results) == sorted(["survivor"] + [f"t{i}" for i in range(7)])


def test_workers_killed_anywhere_never_hang_the_driver(tmp_path):
    """Workers SIGKILLed at arbitrary moments of the shared helpers' use (a process that dies while it holds a lock
    shared with the driver would hang the whole build): every task still completes, in bounded time."""
    tasks = [(str(tmp_path / "died"), f"t{i}", 0.5) for i in range(6)]
    with Executor(2) as ex, _interrupt_after(120):
        results = _run(ex, _tasks.die_once_while_busy, tasks)
    assert sorted(results) == sorted(t[1] for t in tasks)
    assert len(list(tmp_path.glob("died-*"))) == 6  # every task's first run was killed


def test_a_task_that_keeps_killing_its_worker_is_lost_alone():
    """Retried once, then reported through ``lost``; the tasks that ran beside it are not lost."""
    tasks = [("doomed",)] + [(i, 0.3) for i in range(8)]
    with Executor(2) as ex:
        results = list(ex.run(_tasks.dispatch, [("die", t) for t in tasks[:1]] + [("square", t) for t in tasks[1:]],
                              total=len(tasks), desc="Testing", unit="task", weights=[1] * len(tasks), lost=_lost))
    lost = [r for r in results if isinstance(r, tuple) and r[0] == "lost"]
    assert lost == [("lost", ("die", ("doomed",)))]
    assert sorted(r for r in results if not isinstance(r, tuple)) == [i * i for i in range(8)]


def test_stop_ends_tasks_that_poll_stopping():
    with Executor(2) as ex:
        started = time.monotonic()
        results = []
        for result in ex.run(_tasks.poll_until_stopped, [(0.0,), (60.0,), (60.0,)], total=3, desc="Testing",
                             unit="task", weights=[1, 1, 1], lost=_lost):
            results.append(result)
            ex.stop()
        assert time.monotonic() - started < 10
    assert sorted(results) == ["ran out", "stopped", "stopped"]


@pytest.mark.parametrize("n", [1, 2])
def test_interrupt_then_close_is_prompt_when_tasks_poll(n):
    ex = Executor(n)
    try:
        with pytest.raises(_Interrupt), _interrupt_after(1.0):
            _run(ex, _tasks.poll_until_stopped, [(60.0,)] * 3)
        assert ex.stopping_requested
        started = time.monotonic()
    finally:
        ex.close()
    assert time.monotonic() - started < 3


def test_close_kills_a_task_that_ignores_stop(tmp_path):
    markers = [str(tmp_path / f"started-{i}") for i in range(2)]
    ex = Executor(2, stop_grace=1.0)
    try:
        with pytest.raises(_Interrupt), _interrupt_after(2.0):
            _run(ex, _tasks.ignore_stop, [(300.0, m) for m in markers])
        pids = [int(Path(m).read_text()) for m in markers]
        assert all(_alive(pid) for pid in pids)
    finally:
        started = time.monotonic()
        ex.close()
        took = time.monotonic() - started
    assert took < 1.0 + 6, took  # the grace, then a kill: never the 300 s of the task
    assert not any(_alive(pid) for pid in pids)


def test_kill_ends_the_workers_at_once(tmp_path):
    markers = [str(tmp_path / f"started-{i}") for i in range(2)]
    ex = Executor(2)
    try:
        with pytest.raises(_Interrupt), _interrupt_after(2.0):
            _run(ex, _tasks.ignore_stop, [(300.0, m) for m in markers])
        pids = [int(Path(m).read_text()) for m in markers]
        ex.kill()
        deadline = time.monotonic() + 3
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        started = time.monotonic()
        ex.close()
    assert time.monotonic() - started < 3
