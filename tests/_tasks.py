"""Small task functions for tests/test_executor.py, at module level so that spawned worker processes import them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path



def square(x: int, context) -> int:
    context.advance(1)
    return x * x


def whoami(delay: float = 0.0) -> int:
    time.sleep(delay)
    return os.getpid()


def arrow_pool() -> str:
    """The backend of the process's default Arrow memory pool."""
    import pyarrow

    return pyarrow.default_memory_pool().backend_name


def slow_square(x: int, delay: float, context=None) -> int:
    time.sleep(delay)
    if context is not None:
        context.advance(1)
    return x * x


def die(tag: str) -> str:
    """Killed as the OOM killer would, every time."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return tag


def die_once(marker: str, tag: str) -> str:
    """Killed the first time it runs (``marker`` records that it ran), then returns ``tag``."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    return tag


def poll_until_stopped(limit: float, context) -> str:
    """A task that checks ``stopping()`` between small pieces of work, as every unit of a build does."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if context.stopping():
            return "stopped"
        time.sleep(0.02)
    return "ran out"


def ignore_stop(seconds: float, started: str | None = None) -> str:
    """A task stuck in a call that never looks at ``stopping()`` (a hung read, a C library)."""
    if started:
        Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def dispatch(kind: str, args: tuple, context):
    """One task list mixing kinds of tasks: ``("die", (tag,))`` or ``("square", (x, delay))``."""
    return die(*args) if kind == "die" else slow_square(*args, context)


def throttled_download(url: str, dest: str) -> tuple[int, float, float]:
    """Download ``url`` through the build's HTTP code; return this process's id, the seconds it took and the moment
    (``time.time()``) until which the pool's shared throttle then held every download back."""
    from tglc_builder.sources import net
    from tglc_builder.sources.curl import fetch_file

    started = time.monotonic()
    fetch_file(url, Path(dest), max_attempts=3, max_wait=300.0, deadline=net.DEADLINE, max_size=1 << 30)
    return os.getpid(), time.monotonic() - started, net.throttle(url)._until.value


def pause_downloads(url: str, seconds: float, busy: float) -> int:
    """Pause every download of ``url``'s archive for ``seconds`` (as a 429 would), then stay busy ``busy`` seconds."""
    from tglc_builder.sources import net

    net.throttle(url).pause(seconds, 600.0, "127.0.0.1:test", 429)
    time.sleep(busy)
    return os.getpid()


def wait_for_downloads(url: str, delay: float, context) -> tuple[int, float, bool]:
    """After ``delay`` seconds, wait as a download of ``url`` would before its request; return the seconds waited."""
    from tglc_builder.sources import net

    time.sleep(delay)
    started = time.monotonic()
    free = net.throttle(url).wait(context.stopping)
    return os.getpid(), time.monotonic() - started, free


def dispatch_throttle(kind: str, args: tuple, context):
    return pause_downloads(*args) if kind == "pause" else wait_for_downloads(*args, context)


def die_once_while_busy(marker: str, tag: str, seconds: float, context) -> str:
    """Calls the pool's shared helpers in a tight loop (progress, the stop flag, the throttle) and, the first time
    it runs, is SIGKILLed by a thread of its own at an arbitrary moment of that loop, as the OOM killer would: a
    worker can die anywhere, also inside whatever those helpers do."""
    import random
    import threading

    from tglc_builder.sources import net

    path = Path(f"{marker}-{tag}")
    if not path.exists():
        path.write_text(str(os.getpid()))
        threading.Timer(random.uniform(0.05, 0.3), os.kill, (os.getpid(), signal.SIGKILL)).start()
    throttle = net.throttle("http://127.0.0.1:9")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        context.advance(0)
        context.stopping()
        throttle.wait(context.stopping)
    return tag


def hand_over_then(after: float, busy: float, tag: str = "", *, context) -> tuple[int, float, float]:
    """Hand the worker over after ``after`` seconds (as a unit does once its last download is asked for), then stay
    busy ``busy`` seconds; return this process's id and when the task started and ended (``time.time()``)."""
    started = time.time()
    release = context.hand_over
    time.sleep(after)
    release()
    release()  # a second call changes nothing
    time.sleep(busy)
    return os.getpid(), started, time.time()


def busy_for(seconds: float) -> tuple[int, float, float]:
    """Never hands over: its worker takes nothing else until it ends."""
    started = time.time()
    time.sleep(seconds)
    return os.getpid(), started, time.time()


def die_after_hand_over(after: float, context) -> None:
    """Hands over, then is killed as the OOM killer would, every time: beside whatever task its worker took next."""
    context.hand_over()
    time.sleep(after)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def raise_os_error(path: str) -> None:
    """A task's own exception (an OSError, as a worker's broken pipe would also be) reaches the driver."""
    raise FileNotFoundError(2, "No such file or directory", path)


def count_runs(marker: str, seconds: float) -> int:
    """Records each time it starts (a line in ``marker``), then stays busy ``seconds``; returns how often it ran."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return len(Path(marker).read_text().splitlines())


def dispatch_hand_over(kind: str, args: tuple, context):
    if kind in ("die", "hand"):
        return {"die": die_after_hand_over, "hand": hand_over_then}[kind](*args, context=context)
    return {"busy": busy_for, "die_once": die_once, "count": count_runs}[kind](*args)


def hand_over_then_raise(after: float, context) -> None:
    """Hands over at once, then fails with an exception of its own after ``after`` seconds."""
    context.hand_over()
    time.sleep(after)
    raise ValueError("this task failed")


def dispatch_runs(kind: str, args: tuple, context):
    if kind in ("raise", "die"):
        return {"raise": hand_over_then_raise, "die": die_after_hand_over}[kind](*args, context=context)
    return {"busy": busy_for, "tag": lambda tag: tag}[kind](*args)


def build_unit_with_a_deadly_file(work, settings, context):
    """``units.build_unit``, in a worker process that is SIGKILLed (as the OOM killer would kill it) whenever it
    reads the light curve of the Gaia id named by ``TGLC_TEST_DEADLY_GAIA``: a hostile file, for real, without
    depending on what the reader bounds."""
    from tglc_builder import units

    if not getattr(units, "_deadly", False):
        deadly, real = int(os.environ["TGLC_TEST_DEADLY_GAIA"]), units.read_tglc

        def read(path, gaia, *args, **kwargs):
            if gaia == deadly:
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)
            return real(path, gaia, *args, **kwargs)

        units.read_tglc, units._deadly = read, True
    return units.build_unit(work, settings, context)


def read_items(items: list[int], deadly: int, context) -> list[int]:
    """Reads each item under a breadcrumb (as a unit reads each file); reading ``deadly`` kills the worker."""
    for item in items:
        with context.reading(item):
            if item == deadly:
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)
            time.sleep(0.01)
    return items


def dispatch_stop(kind: str, args: tuple, context):
    return poll_until_stopped(*args, context) if kind == "poll" else ignore_stop(*args)
