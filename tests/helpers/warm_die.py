"""Imported by a worker as it starts (Executor.warm_up): the worker is killed, as the OOM killer would."""

import os
import signal

os.kill(os.getpid(), signal.SIGKILL)
