"""Run as a script by tests/test_executor.py, in a process of its own (so that multiprocessing's resource tracker is
not yet running, as in a real build): Ctrl-C reaches the workers while they are still starting."""

import multiprocessing
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from tglc_builder.executor import Executor  # noqa: E402

import _tasks  # noqa: E402

# The workers import this script as their main module before anything of the executor runs in them (so before they
# ignore SIGINT): here that takes a second, the time a real build's main module takes on a busy machine.
time.sleep(1.0)

if __name__ == "__main__":
    with Executor(2) as ex:
        ex.warm_up()
        time.sleep(0.5)
        workers = multiprocessing.active_children()
        for process in workers:
            os.kill(process.pid, signal.SIGINT)
        ran = set(ex.run(_tasks.whoami, [(0.2,)] * 4, total=4, desc="Testing", unit="task", weights=[1] * 4,
                         lost=lambda task, error: None))
    print(len(workers), ran == {process.pid for process in workers})
