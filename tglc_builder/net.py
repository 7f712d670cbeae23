"""HTTP for every download: pooled requests sessions, retries, a build-wide throttle and atomic file writes.

urllib3's ``Retry`` (mounted through a requests ``HTTPAdapter``) retries 429/5xx and connection failures with
exponential backoff and jitter. What this module adds: a body counts as complete only when HTTP proves it (its
Content-Length, or chunked encoding with its final chunk), and is otherwise asked for again; a ``Retry-After`` pauses
every thread and process of the build (not just the throttled request), capped at ``max_wait``, logged once per
pause and ended at once when the build stops (urllib3's own sleep on it could not be interrupted, so it is turned
off); a partial file never reaches its final name.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from . import __version__, executor
from .sources.base import SourceError

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF = 0.5  # seconds; doubles with each attempt
DEFAULT_MAX_WAIT = 300.0  # seconds: the longest pause a Retry-After imposes (--max-wait)
TIMEOUT = (10, 60)  # connect, read (seconds)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
VALIDATORS = ("Content-Length", "ETag", "Last-Modified")
_CHUNK = 1 << 20
_POLL = 0.5  # seconds between looks at a stopping() callback while paused (the stop event wakes at once)


class Stopped(Exception):
    """The build is stopping: a download was abandoned (its temporary file removed)."""


@dataclass(frozen=True)
class Download:
    """A file that reached its final name: its size, the requests it took, what the server said of it."""

    size: int
    attempts: int
    validators: dict[str, str] = field(default_factory=dict)  # of VALIDATORS, those the server sent


# ---- the throttle -----------------------------------------------------------------------------------------------
class Throttle:
    """A moment (``time.time()``) before which no request starts, in a ``multiprocessing.Value("d")`` so that
    every thread and process given the same value honours it."""

    def __init__(self, until):
        self._until = until

    def pause(self, asked: float | None, max_wait: float, host: str, status: int) -> float:
        """Hold every request back for ``asked`` seconds (None: a short backoff), at most ``max_wait``; return the
        pause. Logged once per pause: only the answer that starts one writes a line, not those that arrive while
        it runs."""
        seconds = max(0.0, min(DEFAULT_BACKOFF if asked is None else asked, max_wait))
        now = time.time()
        with self._until.get_lock():
            starts = self._until.value <= now
            self._until.value = max(self._until.value, now + seconds)
        if starts and asked is None:
            log.warning("archive %s answered HTTP %d without Retry-After; pausing all downloads for %s s", host,
                        status, _seconds(seconds))
        elif starts:
            log.warning("archive %s asked to wait %s s (HTTP %d Retry-After); pausing all downloads for %s s%s",
                        host, _seconds(asked), status, _seconds(seconds), " (--max-wait)" if asked > max_wait else "")
        return seconds

    def wait(self, stopping: Callable[[], bool], at_least: float = 0.0) -> bool:
        """Sleep until the pause is over, and ``at_least`` seconds; False (at once) when the build stops (its stop
        event, or ``stopping()``)."""
        start = time.time()
        event = executor.stop_event()
        while not (stopping() or event is not None and event.is_set()):
            delay = max(self._until.value, start + at_least) - time.time()
            if delay <= 0:
                return True
            if event is not None:
                event.wait(min(delay, _POLL))
            else:
                time.sleep(min(delay, _POLL))
        return False


_local_until = None
_local_lock = threading.Lock()


def throttle() -> Throttle:
    """This build's throttle: the pool's shared value, or one of this process outside a pool."""
    global _local_until
    shared = executor.shared_value("throttle")
    if shared is None:
        with _local_lock:
            if _local_until is None:
                _local_until = multiprocessing.Value("d", 0.0)
            shared = _local_until
    return Throttle(shared)


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


# ---- sessions ---------------------------------------------------------------------------------------------------
_call = threading.local()  # the stopping() of the download running in this thread, for _Retry.sleep


def _stopping() -> bool:
    return getattr(_call, "stopping", executor.stopping)()


class _Retry(Retry):
    """urllib3's Retry, whose waits are the build's: a 429 (or a 503 with Retry-After) pauses every worker through
    the throttle, and every sleep ends when the build stops (raising :class:`Stopped`)."""

    def __init__(self, *args, max_wait: float = DEFAULT_MAX_WAIT, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_wait = max_wait

    def new(self, **kwargs) -> "_Retry":
        kwargs.setdefault("max_wait", self.max_wait)
        return super().new(**kwargs)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None and response.status in (429, 503):
            try:
                asked = self.get_retry_after(response)
            except InvalidHeader:  # neither seconds nor an HTTP date
                asked = None
            if response.status == 429 or asked is not None:
                host = f"{_pool.host}:{_pool.port}" if _pool is not None else "?"
                throttle().pause(asked, self.max_wait, host, response.status)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response=None) -> None:
        if not throttle().wait(_stopping, self.get_backoff_time()):
            raise Stopped("the build is stopping")


def make_session(max_attempts: int = DEFAULT_MAX_ATTEMPTS, connections: int = 10, backoff: float = DEFAULT_BACKOFF,
                 max_wait: float = DEFAULT_MAX_WAIT) -> requests.Session:
    """A session that reuses up to ``connections`` connections per host and retries transient failures within
    ``max_attempts`` requests per call. Bodies come as the server stores them (no content coding), so their size
    can be checked against Content-Length and written byte for byte."""
    retry = _Retry(
        total=max_attempts - 1,
        backoff_factor=backoff,
        backoff_jitter=backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=False,  # the throttle waits instead, interruptibly and for everyone
        raise_on_status=False,
        max_wait=max_wait,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=connections, pool_block=True)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": f"tglc-builder/{__version__}", "Accept-Encoding": "identity"})
    return session


# ---- downloads --------------------------------------------------------------------------------------------------
class _Incomplete(Exception):
    """A body that HTTP does not prove whole."""


def _temporary_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")


def download_file(session: requests.Session, url: str, dest: Path, *, validate: Callable[[Path], None] | None = None,
                  quarantine: Path | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                  backoff: float = DEFAULT_BACKOFF, progress: bool = False,
                  stopping: Callable[[], bool] = executor.stopping) -> Download:
    """Download ``url`` to ``dest`` atomically, whole or not at all.

    The body streams to a temporary name beside ``dest`` and counts as whole only when HTTP proves it: as long as
    its Content-Length, or chunked with its final chunk. A body cut short, or one that just ends when the connection
    closes (no Content-Length, not chunked: a cut could not be told from the end), is asked for again with backoff
    and jitter, within the same ``max_attempts`` as urllib3's retries of status codes and connection failures. A
    whole body is then checked by ``validate(tmp)`` (raises ``ValueError``) and only then renamed; one that fails is
    kept at ``quarantine`` when given, and is final (the archive served it whole: asking again would not change it).

    Raises :class:`SourceError` (``permanent`` for 404 and invalid files), :class:`Stopped` when ``stopping()``
    turns true (checked while paused and between chunks), and lets ``OSError`` from the file system through (the
    caller knows which folder a full disk is).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(dest)
    attempts = 0
    _call.stopping = stopping
    try:
        while True:
            if not throttle().wait(stopping):
                raise Stopped(url)
            try:
                response = session.get(url, stream=True, timeout=TIMEOUT)
            except requests.RequestException as exc:  # urllib3 used up its retries (or the URL is unusable)
                raise SourceError(url, f"{type(exc).__name__}: {exc}", attempts + max_attempts) from None
            with response:
                attempts += 1 + (len(response.raw.retries.history) if response.raw.retries else 0)
                if response.status_code == 404:
                    raise SourceError(url, "HTTP 404 Not Found", attempts, permanent=True)
                if response.status_code != 200:
                    raise SourceError(url, f"HTTP {response.status_code} {response.reason}", attempts)
                try:
                    size = _receive(response, tmp, progress, url, stopping)
                except (_Incomplete, requests.RequestException) as exc:
                    reason = str(exc) if isinstance(exc, _Incomplete) else f"{type(exc).__name__}: {exc}"
                    if attempts >= max_attempts:
                        raise SourceError(url, f"incomplete body: {reason}", attempts) from None
                    log.debug("%s: %s; asking again", url, reason)
                    if not throttle().wait(stopping, backoff * 2 ** (attempts - 1) * (0.5 + random.random())):
                        raise Stopped(url) from None
                    continue
                validators = {name: response.headers[name] for name in VALIDATORS if name in response.headers}
            if validate is not None:
                try:
                    validate(tmp)
                except ValueError as exc:
                    if quarantine is not None:
                        quarantine.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(tmp, quarantine)
                    raise SourceError(url, f"invalid file: {exc}", attempts, permanent=True) from None
            os.replace(tmp, dest)
            return Download(size, attempts, validators)
    finally:
        del _call.stopping
        tmp.unlink(missing_ok=True)


def _receive(response: requests.Response, path: Path, progress: bool, url: str,
             stopping: Callable[[], bool]) -> int:
    """Stream the body to ``path`` and return its size. A body that HTTP cannot prove whole raises
    :class:`_Incomplete`; one that breaks off raises a ``requests.RequestException`` (urllib3 2 checks the bytes
    against Content-Length, and a chunked body for its final chunk)."""
    if not response.raw.chunked and response.headers.get("Content-Length") is None:
        raise _Incomplete("the server sent neither a Content-Length nor chunked encoding, so a body cut short "
                          "could not be told from a whole one")
    written = 0
    size = None if response.raw.chunked else response.raw.length_remaining
    with open(path, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, desc=urlsplit(url).path
                                       .rsplit("/", 1)[-1], disable=not progress, leave=False) as bar:
        for chunk in response.iter_content(_CHUNK):
            if stopping():
                raise Stopped(url)
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written
