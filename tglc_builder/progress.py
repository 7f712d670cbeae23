"""Progress: tqdm's bar on a terminal (or in a notebook), a log line every tenth elsewhere (a log file, a pipe),
where a bar's carriage returns would leave hundreds of half-lines."""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STEPS = 10  # log lines of a whole run, one per tenth
QUIET_SECONDS = 5.0  # a transient progress (leave=False, e.g. a listing) logs only once it has run this long


def interactive() -> bool:
    """Whether a bar can be drawn: stderr is a terminal, or this is a Jupyter kernel (tqdm.auto's widget). A kernel
    is told by its running IPython shell (as tqdm.autonotebook does), not by ipykernel merely being imported."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress(total: int | None, desc: str, unit: str, *, leave: bool = True, unit_scale: bool = False, **kwargs):
    """A progress counter with tqdm's ``update``/``n``/``close`` (and a context manager): a bar when
    :func:`interactive`, else :class:`LogProgress`."""
    if interactive():
        return tqdm(total=total, desc=desc, unit=unit, leave=leave, unit_scale=unit_scale, **kwargs)
    progress = LogProgress(total, desc, unit, quiet_for=0.0 if leave else QUIET_SECONDS)
    if kwargs.get("postfix"):
        progress.set_postfix_str(kwargs["postfix"])
    return progress


class LogProgress:
    """Logs ``desc: 30% (90 of 300 lc)`` at each tenth of ``total`` (nothing when the total is unknown); with
    ``quiet_for``, only once that many seconds have passed (a small listing arrives in a blink, saying nothing)."""

    def __init__(self, total: int | None, desc: str, unit: str, quiet_for: float = 0.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self._logged = 0  # tenths logged so far
        self._speak_after = time.monotonic() + quiet_for
        self.postfix = ""  # tqdm's postfix, after the counts (a multi-sector build: the sector being fetched)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        tenth = min(STEPS, self.n * STEPS // self.total)
        if tenth > self._logged and time.monotonic() >= self._speak_after:
            self._logged = tenth
            log.info("%s: %d%% (%d of %d %s)%s", self.desc, 100 * tenth // STEPS, self.n, self.total, self.unit,
                     f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
