"""An archive reached over HTTP(S), such as MAST: many downloads in flight per process, every file checked.

Downloads wait on the network, so concurrency comes from ``connections`` transfers in flight per process: on
libcurl's multi interface in one thread (:mod:`.curl`, the default), or, without pycurl, in as many threads sharing
one process's urllib3 pools (``net.Session``). The worker processes only spread the CPU cost of HTTP and validation.
The source object holds only its settings, so it pickles to every worker; each process opens its connections the
first time it needs them. Listings always come through urllib3 (``net.download_file``), with a progress bar.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from urllib.parse import unquote, urlsplit

from urllib3.exceptions import HTTPError

from .. import layout, net
from ..errors import UsageError
from ..report import Failure
from . import base
from .base import DISK_FULL_ERRNOS, WINDOW, DiskFull, Fetched, ListingCopy, Source, SourceError, Validator, \
    is_present, quarantine_path

_sessions: dict[tuple, net.Session] = {}  # (pid, settings) -> this process's session
_budgets: dict[tuple, threading.BoundedSemaphore] = {}  # the same key -> downloads in flight, across calls
_sessions_lock = threading.Lock()
CLIENTS = ("curl", "urllib3")
MAX_INDEX_BYTES = 8 << 20  # of download_scripts/'s index page: MAST's is a few kB; a hostile one is cut here
_HREF = re.compile(rb"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)


def linked_names(page: bytes) -> list[str]:
    """The file names an HTML index page links to (the last path component of each ``href``), as untrusted text."""
    names = []
    for match in _HREF.finditer(page):
        href = next(group for group in match.groups() if group is not None).decode("ascii", "replace")
        names.append(unquote(urlsplit(href).path).rsplit("/", 1)[-1])
    return names


def default_client() -> str:
    """``curl`` when pycurl imports (a dependency, with wheels for the usual platforms), else ``urllib3``."""
    try:
        import pycurl  # noqa: F401
    except ImportError:
        return "urllib3"
    return "curl"


class HttpSource(Source):
    """``http(s)://`` root of a tree in MAST's layout. ``connections``: downloads in flight per process;
    ``max_attempts``: requests per file before it is reported failed; ``max_wait``: the longest pause (seconds) a
    ``Retry-After`` imposes on the whole build; ``client``: what runs the light curves' downloads, ``curl`` or
    ``urllib3`` (None: :func:`default_client`); both follow the same rules. ``deadline`` and ``listing_deadline``:
    how slow a light curve's and a listing's body may be (:class:`net.Deadline`)."""

    def __init__(self, url: str, connections: int = base.DEFAULT_CONNECTIONS,
                 max_attempts: int = base.DEFAULT_MAX_ATTEMPTS, max_wait: float = base.DEFAULT_MAX_WAIT,
                 client: str | None = None,
                 deadline: net.Deadline = net.DEADLINE, listing_deadline: net.Deadline = net.LISTING_DEADLINE):
        self.url = url.rstrip("/")
        self.deadline, self.listing_deadline = deadline, listing_deadline
        self.connections, self.max_attempts, self.max_wait = connections, max_attempts, max_wait
        self.client = client or default_client()
        if self.client not in CLIENTS:
            raise ValueError(f"unknown HTTP client {self.client!r}; choose from {CLIENTS}")

    def describe(self) -> str:
        return self.url

    def _session(self) -> net.Session:
        # Keyed by process too: a session (its open sockets) must not be shared with a forked child; and by the CA
        # bundle it checks HTTPS against (read when it is made), as libcurl's handles are.
        key = (os.getpid(), self.connections, self.max_attempts, self.max_wait, net.ca_bundle())
        with _sessions_lock:
            if key not in _sessions:
                _sessions[key] = net.make_session(max_attempts=self.max_attempts, connections=self.connections,
                                                  max_wait=self.max_wait)
            return _sessions[key]

    def list_sectors(self) -> list[int]:
        """From the HTML index page of ``download_scripts/`` (as MAST's web server writes it)."""
        url = f"{self.url}/{layout.DOWNLOAD_SCRIPTS}/"
        try:
            response = self._session().get(url)
            try:
                page = response.read(MAX_INDEX_BYTES) if response.status == 200 else b""
            finally:
                response.release_conn()
        except HTTPError as exc:
            raise UsageError(f"cannot read the index of {url} ({type(exc).__name__}); check the network, or give "
                             "the sectors explicitly, e.g. -s 1-13") from None
        return layout.sectors_of_names(linked_names(page))

    def fetch_listing(self, relpath: str, dest: Path) -> ListingCopy:
        download = net.download_file(self._session(), f"{self.url}/{relpath}", dest, max_attempts=self.max_attempts,
                                     progress=True, max_size=base.MAX_LISTING_BYTES, deadline=self.listing_deadline)
        return ListingCopy(download.size, download.validators)

    def _budget(self) -> threading.BoundedSemaphore:
        """The downloads this process may have in flight, shared by the calls that run at once."""
        key = (os.getpid(), self.connections, self.max_attempts, self.max_wait)
        with _sessions_lock:
            return _budgets.setdefault(key, threading.BoundedSemaphore(self.connections))

    def fetch_many(self, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                   stopping: Callable[[], bool], started_all: Callable[[], None] | None = None
                   ) -> Iterator[tuple[int, Fetched | Failure]]:
        """Downloads run ``connections`` at a time in this process (whatever the calls running at once), at most
        ``WINDOW`` x ``connections`` items ahead of the item being yielded: so the files on disk are those near the
        conversion, whatever the unit's size."""
        fits_dir = Path(fits_dir)
        if self.client == "curl":
            from .curl import fetch_many

            yield from fetch_many(self.url, items, fits_dir, validate, stopping, connections=self.connections,
                                  max_attempts=self.max_attempts, max_wait=self.max_wait, started_all=started_all,
                                  deadline=self.deadline)
            return
        session, budget = self._session(), self._budget()
        halt = threading.Event()  # set by the first download that finds the disk full
        threads = ThreadPoolExecutor(self.connections, thread_name_prefix="tglc-http")
        futures: dict[int, Future] = {}  # started and not yet yielded
        started = 0  # items[:started] are started

        def start(upto: int) -> None:
            nonlocal started
            for j in range(started, min(upto, len(items))):
                last = started_all if j == len(items) - 1 else None
                futures[j] = threads.submit(self._fetch_one, session, budget, fits_dir, j, *items[j], validate,
                                            stopping, halt, last)
            started = max(started, min(upto, len(items)))

        try:
            for i in range(len(items)):
                start(i + WINDOW * self.connections)
                outcome = futures.pop(i).result()  # raises DiskFull
                if outcome is None or stopping():  # stopped, or another download found the disk full
                    break
                yield i, outcome
        finally:
            halt.set()  # what still runs is abandoned, what is queued returns at once
            threads.shutdown(wait=True, cancel_futures=True)
        for future in futures.values():
            if future.done() and not future.cancelled() and isinstance(future.exception(), DiskFull):
                raise future.exception()

    def _fetch_one(self, session: net.Session, budget: threading.BoundedSemaphore, fits_dir: Path, i: int,
                   gaia: int, relpath: str, validate: Validator, stopping: Callable[[], bool], halt: threading.Event,
                   started: Callable[[], None] | None = None) -> Fetched | Failure | None:
        """One item's download: Fetched, a Failure, or None when stopped (or halted) before it ended. ``started``
        (the last item's ``started_all``) is called once its download holds a connection, or needs none."""

        def stop() -> bool:
            return halt.is_set() or stopping()

        if stop():
            return None
        dest = fits_dir / relpath
        if is_present(dest):
            if started is not None:
                started()
            return Fetched(dest, downloaded=False)
        while not budget.acquire(timeout=0.05):  # another call's downloads hold every connection
            if stop():
                return None
        checked = []  # what validate() returned for the attempt that succeeded
        try:
            if started is not None:
                started()
            base.remove_stale_parts(dest.parent, dest.name)  # of workers that were killed
            download = net.download_file(session, f"{self.url}/{relpath}", dest,
                                         validate=lambda tmp: checked.append(validate(tmp, i)),
                                         quarantine=quarantine_path(fits_dir, relpath),
                                         max_attempts=self.max_attempts, stopping=stop, deadline=self.deadline)
        except net.Stopped:
            return None
        except SourceError as exc:
            return Failure(gaia, relpath, "download", exc.reason, exc.attempts)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            halt.set()  # no other download starts
            raise DiskFull(fits_dir, exc) from exc
        finally:
            budget.release()
        return Fetched(dest, downloaded=True, attempts=download.attempts, checked=checked[-1])
