"""What a task is handed by the executor that runs it: its stop check, its progress, its hand-over and its
breadcrumbs. Units pass it on to their source, so nothing below the executor reaches back into it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskContext:
    """The defaults are those of code run outside an executor (a test, the driver): never stopped, no progress."""

    stopping: Callable[[], bool] = lambda: False  # whether to return at the next file (Ctrl-C, a full disk)
    advance: Callable[[int], None] = lambda units=1: None  # count work done, for the driver's progress bar
    # Called (once, from any thread) when what is left of the task no longer needs its whole worker, e.g. its last
    # download has started: the worker then takes its next task beside it. A source calls it from fetch_many.
    hand_over: Callable[[], None] = lambda: None
    # ``with reading(mark):`` around reading one item: the item named by the driver if the worker dies meanwhile
    reading: Callable[[int], AbstractContextManager] = lambda mark: nullcontext()


OUTSIDE = TaskContext()  # code run by no executor
