"""Imported by a worker as it starts (Executor.warm_up): leaves the worker's pid in ``$TGLC_TEST_WARM_DIR``."""

import os
from pathlib import Path

(Path(os.environ["TGLC_TEST_WARM_DIR"]) / str(os.getpid())).write_text("")
