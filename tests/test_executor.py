"""The executor on its own: real worker processes running small module-level tasks (tests/_tasks.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import _tasks
import helpers
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
def test_results_and_progress(n, caplog):
    caplog.set_level(logging.INFO, logger="tglc_builder.progress")
    with Executor(n) as ex:
        results = _run(ex, _tasks.square, [(i,) for i in range(20)])
        assert sorted(results) == [i * i for i in range(20)]
        again = _run(ex, _tasks.square, [(i,) for i in range(5)])  # the same workers serve a second stage
        assert sorted(again) == [i * i for i in range(5)]
    # stderr is not a terminal here: the progress is logged, and counted what the tasks reported with advance()
    messages = [r.getMessage() for r in caplog.records if r.name == "tglc_builder.progress"]
    assert "Testing: 100% (20 of 20 task)" in messages and "Testing: 100% (5 of 5 task)" in messages


def test_one_pool_serves_the_whole_build():
    with Executor(2) as ex:
        first = set(_run(ex, _tasks.whoami, [(0.2,)] * 4))
        second = set(_run(ex, _tasks.whoami, [(0.2,)] * 4))
    assert len(first) == 2 and first == second and os.getpid() not in first


def test_workers_use_the_system_arrow_pool_and_leave_the_driver_alone(monkeypatch):
    """The build's worker processes take malloc's pool (mimalloc kept what their shards freed); the command's own
    process, which may be a user's, keeps its choice (the subprocess: nothing of ours set it)."""
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    with Executor(2) as ex:
        assert set(_run(ex, _tasks.arrow_pool, [()] * 4)) == {"system"}
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    show = "print(pyarrow.default_memory_pool().backend_name)"
    pools = [subprocess.run([sys.executable, "-c", f"import {modules}; {show}"], capture_output=True, text=True,
                            env=env, timeout=120).stdout.strip()
             for modules in ("pyarrow", "tglc_builder.executor, tglc_builder.formats.hats, pyarrow")]
    assert pools[0] == pools[1] != "", pools


def test_warm_up_starts_the_workers_that_then_run_the_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("TGLC_TEST_WARM_DIR", str(tmp_path))
    with Executor(2) as ex:
        ex.warm_up(helpers.WARM_RECORD)
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        warmed = {int(p.name) for p in tmp_path.iterdir()}
        assert len(warmed) == 2  # both workers up before any task was given
        ran = set(_run(ex, _tasks.whoami, [(0.05,) for _ in range(8)]))
    assert ran <= warmed


def test_a_worker_killed_warming_up_is_replaced():
    with Executor(2) as ex:
        ex.warm_up(helpers.WARM_DIE)
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


def _overlaps(spans) -> list[tuple]:
    """Pairs of tasks that ran at the same time in the same process."""
    spans = sorted(spans, key=lambda s: s[1])
    return [(a, b) for k, a in enumerate(spans) for b in spans[k + 1:] if a[0] == b[0] and b[1] < a[2]]


@pytest.mark.parametrize("n", [1, 2])
def test_a_task_that_hands_over_lets_its_worker_start_the_next_beside_it(n):
    """The next task starts in the same process as soon as the one before hands over, not when it ends; never
    more than two at once in a process, and never beside a task that has not handed over."""
    with Executor(n) as ex:
        spans = _run(ex, _tasks.hand_over_then, [(0.1, 0.6)] * 6)
        solo = _run(ex, _tasks.busy_for, [(0.3,)] * 4)
    overlapping = _overlaps(spans)
    assert overlapping  # 6 tasks of 0.7 s: the second of a worker starts 0.1 s into the first
    for a, b in overlapping:
        assert b[1] - a[1] >= 0.09  # not before the first handed over
    by_pid = {}
    for span in spans:
        by_pid.setdefault(span[0], []).append(span)
    for mine in by_pid.values():  # at most two at once in a process
        for span in mine:  # running when it started, itself included
            assert sum(1 for other in mine if other[1] <= span[1] < other[2]) <= 2
    assert len(by_pid) == n and _overlaps(solo) == []


def test_a_task_dying_beside_another_loses_only_itself(caplog):
    """Both tasks of a dead worker run again, each alone; the one that kills its worker again is lost."""
    tasks = [("die", (0.3,)), ("hand", (0.05, 0.6))] + [("busy", (0.5,))] * 4  # a busy one is beside it
    with Executor(2) as ex:
        results = _run(ex, _tasks.dispatch_hand_over, tasks)
    lost = [r for r in results if r[0] == "lost"]
    assert lost == [("lost", ("die", (0.3,)))]
    assert len(results) == len(tasks) and all(len(r) == 3 for r in results if r[0] != "lost")
    assert "killed by signal SIGKILL" in caplog.text


def test_a_worker_death_leaves_the_other_workers_task_running(tmp_path):
    """Unlike a broken ProcessPoolExecutor's, the other worker's task is not interrupted nor run again."""
    runs = tmp_path / "runs"
    tasks = [("count", (str(runs), 2.0)), ("die_once", (str(tmp_path / "died"), "survivor"))]
    with Executor(2) as ex:
        results = _run(ex, _tasks.dispatch_hand_over, tasks)
    assert sorted(results, key=str) == [1, "survivor"]
    assert len(runs.read_text().splitlines()) == 1 and (tmp_path / "died").exists()


def test_a_tasks_own_exception_is_raised_in_the_driver(tmp_path):
    with Executor(2) as ex:
        with pytest.raises(FileNotFoundError) as raised:
            _run(ex, _tasks.raise_os_error, [(str(tmp_path / "missing"),)])
        assert raised.value.filename == str(tmp_path / "missing")
        assert sorted(_run(ex, _tasks.square, [(i,) for i in range(4)])) == [0, 1, 4, 9]  # and it goes on


def test_ctrl_c_cannot_kill_a_worker_still_starting():
    """A Ctrl-C goes to the whole process group: a worker still importing must survive it (no traceback) and
    serve the build, also the first one started (whose start also starts multiprocessing's resource tracker)."""
    script = Path(__file__).with_name("_ctrl_c_while_warming.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "True"] and "KeyboardInterrupt" not in done.stderr, done.stderr


@pytest.mark.parametrize("n", [1, 2])
def test_a_run_that_ended_early_leaves_no_result_to_the_next(n):
    """A task's exception ends its run while another task of it still runs: that task's late result is never
    taken for one of the next run (whose tasks have the same indices)."""
    with Executor(n) as ex:
        with pytest.raises(ValueError, match="this task failed"):
            _run(ex, _tasks.dispatch_runs, [("raise", (0.2,)), ("busy", (1.0,))])
        assert sorted(_run(ex, _tasks.dispatch_runs, [("tag", ("a",)), ("tag", ("b",))])) == ["a", "b"]
        assert sorted(_run(ex, _tasks.square, [(i,) for i in range(4)])) == [0, 1, 4, 9]


def test_a_worker_dying_after_its_run_ended_early_does_not_hold_up_the_next_run():
    """The run ends (a task's exception) while another worker's task runs on, then kills its worker: the next run
    buries that worker at once instead of waiting the whole grace for a task that is gone."""
    with Executor(2, stop_grace=30.0) as ex:
        with pytest.raises(ValueError, match="this task failed"):
            _run(ex, _tasks.dispatch_runs, [("raise", (0.3,)), ("die", (1.0,))])
        started = time.monotonic()
        assert sorted(_run(ex, _tasks.dispatch_runs, [("tag", ("a",)), ("tag", ("b",))])) == ["a", "b"]
        assert time.monotonic() - started < 10  # the grace is 30 s


def test_a_task_that_dies_reading_the_same_item_twice_is_narrowed_to_it(caplog):
    """The item being read when the worker died, both times, is handed to ``narrow``; the rest of its task runs
    again without it, and the other tasks are untouched."""
    def narrow(task, error):
        items, deadly = task
        return ("culprits", error.culprits, error.how), ([i for i in items if i not in error.culprits], deadly)

    tasks = [(list(range(1, 11)), 7), (list(range(11, 21)), 7)]
    with Executor(2) as ex:
        results = list(ex.run(_tasks.read_items, tasks, total=2, desc="Testing", unit="task", weights=[1, 1],
                              lost=_lost, narrow=narrow))
    assert sorted(results, key=str) == [("culprits", (7,), "killed by signal SIGKILL"), [1, 2, 3, 4, 5, 6, 8, 9, 10],
                                        list(range(11, 21))]
    assert caplog.text.count("reading item 7;") == 2  # each death names it
