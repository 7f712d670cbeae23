"""HTTP plumbing shared by the HTTP source's two paths (light curves on libcurl, :mod:`.curl`; listings and the
index page on urllib3, here): the archive's throttle, the redirect rule, proxies and CA bundle, deadlines; and the
listings' downloads: pooled urllib3 connections, retries and atomic file writes.

urllib3's ``Retry`` retries 429/5xx and connection failures with exponential backoff and jitter. What this module
adds: a body counts as complete only when HTTP proves it (its Content-Length, or chunked encoding with its final
chunk), and is otherwise asked for again; a ``Retry-After`` pauses every thread and process of the build (not just
the throttled request), capped at ``max_wait``, logged once per pause and ended at once when the build stops
(urllib3's own sleep on it could not be interrupted, so it is turned off); a partial file never reaches its final
name.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, InvalidHeader, MaxRetryError, NameResolutionError, ReadTimeoutError
from urllib3.util.retry import Retry

from .. import __version__
from ..progress import progress as progress_counter
from .base import BACKOFF, DEFAULT_CONNECTIONS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, Refused, SourceError, \
    Unreachable, encoding_refused, retry_delay, temporary_name, too_big

log = logging.getLogger(__name__)


def _retries_at_debug(record: logging.LogRecord) -> bool:
    """urllib3 logs each retry at WARNING ("Retrying (Retry(total=3, ...)) after connection broken by ..."): raw,
    and repeated for one fault. They go to DEBUG here; what finally fails is said once, in the build's words."""
    if record.getMessage().startswith("Retrying ("):
        log.debug("urllib3: %s", record.getMessage())
        return False
    return True


logging.getLogger("urllib3.connectionpool").addFilter(_retries_at_debug)

TIMEOUT = urllib3.Timeout(connect=10, read=60)  # seconds
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
VALIDATORS = ("Content-Length", "ETag", "Last-Modified")


@dataclass(frozen=True)
class Deadline:
    """How slow a download may be before it is abandoned (then asked for again, within ``max_attempts``): less
    than ``floor`` bytes/s over ``window`` seconds, or one request longer than ``limit`` seconds (None: no limit).
    So a file holds the build for at most ``max_attempts`` x ``limit`` (plus the backoffs between attempts)."""

    floor: int = 1024  # bytes/s
    window: float = 30.0  # seconds
    limit: float | None = 300.0  # seconds per request: a ~300 KB light curve at the floor

    def too_slow(self) -> str:
        return f"too slow: less than {self.floor:,} bytes/s over {self.window:g} s"

    def too_long(self) -> str:
        return f"too slow: not whole within {self.limit:g} s"


DEADLINE = Deadline()  # light curves
LISTING_DEADLINE = Deadline(limit=3600.0)  # a listing of ~440 MB: whole within the hour, at ~120 KB/s


class TooSlow(Exception):
    """A body slower than its deadline allows, abandoned (asked for again)."""


class Pace:
    """A body written to ``out`` as it arrives, against a :class:`Deadline` and a size cap, for the clients that do
    not watch them themselves (urllib3, aiobotocore; libcurl has LOW_SPEED_LIMIT/TIME and TIMEOUT). Windows follow
    each other, so a slow body is caught within 2 x window."""

    def __init__(self, out, deadline: Deadline, where: str, max_size: int | None = None):
        self.out, self.deadline, self.where, self.max_size = out, deadline, where, max_size
        self.start = self.mark = time.monotonic()
        self.received = self.marked = 0  # bytes received, and at the mark

    def write(self, chunk: bytes) -> None:
        """Write ``chunk``; raise :class:`Refused` beyond ``max_size`` bytes, :class:`TooSlow` below the deadline."""
        self.received += len(chunk)
        if self.max_size is not None and self.received > self.max_size:
            raise too_big(self.where, self.max_size)
        self.out.write(chunk)
        now, deadline = time.monotonic(), self.deadline
        if deadline.limit is not None and now - self.start > deadline.limit:
            raise TooSlow(deadline.too_long())
        if now - self.mark >= deadline.window:
            if self.received - self.marked < deadline.floor * (now - self.mark):
                raise TooSlow(deadline.too_slow())
            self.mark, self.marked = now, self.received


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5  # hops within the archive's own origin, per file
_CHUNK = 1 << 20
_POLL = 0.1  # seconds between looks at stopping() while paused


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
    """A moment (``time.time()``) before which no request starts, in a lock-free shared double (``until.value``) so
    that every thread and process given the same value honours it. Two processes pausing at once may lose one's
    extension of the pause (the next refused request asks again); a lock shared across processes could instead
    be left held by a worker killed inside it, and stop every download of the pool for good."""

    def __init__(self, until):
        self._until = until

    def pause(self, asked: float | None, max_wait: float, host: str, status: int) -> float:
        """Hold every request back for ``asked`` seconds (None: a short backoff), at most ``max_wait``; return the
        pause. Logged once per pause: only the answer that starts one writes a line, not those that arrive while
        it runs."""
        seconds = max(0.0, min(BACKOFF if asked is None else asked, max_wait))
        now = time.time()
        with _local_lock:  # this process's threads
            starts = self._until.value <= now
            self._until.value = max(self._until.value, now + seconds)
        if starts and asked is None:
            log.warning("archive %s answered HTTP %d without Retry-After; pausing all downloads for %s s", host,
                        status, _seconds(seconds))
        elif starts:
            log.warning("archive %s asked to wait %s s (HTTP %d Retry-After); pausing all downloads for %s s%s",
                        host, _seconds(asked), status, _seconds(seconds), " (--max-wait)" if asked > max_wait else "")
        return seconds

    def remaining(self) -> float:
        """Seconds until requests may start again (0 when none is held back)."""
        return max(0.0, self._until.value - time.time())

    def wait(self, stopping: Callable[[], bool], at_least: float = 0.0) -> bool:
        """Sleep until the pause is over, and ``at_least`` seconds; False (within ``_POLL`` seconds) when the build
        stops (``stopping()``)."""
        start = time.time()
        while not stopping():
            delay = max(self._until.value, start + at_least) - time.time()
            if delay <= 0:
                return True
            time.sleep(min(delay, _POLL))
        return False


_local_lock = threading.Lock()
_moments: dict[str, ctypes.c_double] = {}  # file -> this process's view of it


def throttle(url: str) -> Throttle:
    """The throttle of the archive at ``url`` (its origin): one moment that every process of this user fetching
    from it shares (a build's workers, on Dask too when on one machine, and another build's: the archive throttles
    the client, not the build), 8 bytes of a file of the temporary folder mapped into each process. A file of
    another user, or none that can be made, leaves this process a throttle of its own."""
    key = hashlib.sha256(repr(origin(url)).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"tglc-throttle-{os.getuid()}-{key}")
    with _local_lock:
        if path not in _moments:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    stat = os.fstat(fd)
                    if stat.st_uid != os.getuid():
                        raise PermissionError(path)
                    if stat.st_size < 8:
                        os.ftruncate(fd, 8)  # zeros: no pause
                    _moments[path] = ctypes.c_double.from_buffer(mmap.mmap(fd, 8))
                finally:
                    os.close(fd)
            except OSError as exc:
                log.debug("no shared throttle (%s): this process pauses alone", exc)
                _moments[path] = ctypes.c_double(0.0)
        return Throttle(_moments[path])


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


# ---- redirects --------------------------------------------------------------------------------------------------
_DEFAULT_PORTS = {"http": 80, "https": 443}
_redirects_logged: set[tuple[str, str, int]] = set()  # origins whose redirects this process has logged


def origin(url: str) -> tuple[str, str, int]:
    """A URL's origin: its scheme, host and port (the default port of the scheme when none is given)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)


def follow_redirect(url: str, location: str | None, hops: int) -> str:
    """Where a redirect from ``url`` to ``location`` leads, when it may be followed: within ``url``'s own origin
    (same scheme, host and port; so HTTPS is never downgraded), and at most ``MAX_REDIRECTS`` hops (``hops``: those
    already followed). Raises :class:`Refused` naming both URLs otherwise. The one rule of both HTTP clients: files
    come only from the archive the user named, over the scheme they chose."""
    if not location:
        raise Refused(url, "redirected without a Location header: refused")
    target = urljoin(url, location.strip())
    if origin(target) != origin(url):
        raise Refused(url, f"redirected from {url} to {target}, another scheme, host or port: refused (files are "
                           "fetched only from the archive given; check --mast-url)")
    if hops >= MAX_REDIRECTS:
        raise Refused(url, f"more than {MAX_REDIRECTS} redirects (the last from {url} to {target}): refused")
    key = origin(url)
    if key not in _redirects_logged:  # once per archive and process, not once per file
        _redirects_logged.add(key)
        log.info("the archive redirects within its own origin (e.g. %s to %s); such redirects are followed, at most "
                 "%d per file", url, target, MAX_REDIRECTS)
    return target


# ---- sessions ---------------------------------------------------------------------------------------------------
_call = threading.local()  # the download running in this thread (its stopping() and throttle), for _Retry.sleep


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
        if isinstance(error, NameResolutionError) and any(isinstance(past.error, NameResolutionError)
                                                           for past in self.history):
            raise MaxRetryError(_pool, url, error)  # a name that did not resolve twice will not: asked once more
        if response is not None and response.status in (429, 503):
            try:
                asked = self.get_retry_after(response)
            except InvalidHeader:  # neither seconds nor an HTTP date
                asked = None
            if (response.status == 429 or asked is not None) and _pool is not None:
                host = f"[{_pool.host}]" if ":" in _pool.host else _pool.host  # an IPv6 address
                pause = getattr(_call, "throttle", None) or throttle(f"{_pool.scheme}://{host}:{_pool.port}")
                pause.pause(asked, self.max_wait, f"{host}:{_pool.port}", response.status)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response=None) -> None:
        pause = getattr(_call, "throttle", None)
        if pause is None:  # not a download (an index page, in the driver): urllib3's own sleep
            return super().sleep(response)
        if not pause.wait(_call.stopping, self.get_backoff_time()):
            raise Stopped("the build is stopping")


class Session:
    """A process's connection pools for downloads: urllib3, with the environment's proxy and CA settings read once
    per host, as requests would read them on every request.

    requests' Session (which uses urllib3 underneath) costs ~1.5 ms of CPU per request, re-reading every environment
    variable for proxies and merging cookies, hooks and settings: as much as the rest of a light curve's download and
    validation together. Its features beyond urllib3 (cookies, auth, hooks) are not needed here.
    """

    def __init__(self, retries: Retry, connections: int):
        self._options = {"num_pools": 4, "maxsize": connections, "block": True, "retries": retries,
                         "headers": {"User-Agent": f"tglc-builder/{__version__}", "Accept-Encoding": "identity"},
                         "ca_certs": ca_bundle()}
        self._managers: dict[tuple[str, str], urllib3.PoolManager] = {}
        self._direct = urllib3.PoolManager(**self._options)
        self._lock = threading.Lock()

    def get(self, url: str, deadline: Deadline = DEADLINE) -> urllib3.BaseHTTPResponse:
        """Start a GET of ``url``; the body is left to stream; a redirect is returned, not followed (see
        :func:`follow_redirect`). Raises urllib3's HTTPError once retries are spent."""
        # No byte for a whole window is below any floor: the read timeout ends it (a trickle is Pace's to catch).
        timeout = urllib3.Timeout(connect=TIMEOUT.connect_timeout, read=min(TIMEOUT.read_timeout, deadline.window))
        return self._manager(url).request("GET", url, preload_content=False, redirect=False, timeout=timeout)

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        manager = self._managers.get(key)
        if manager is None:
            with self._lock:
                manager = self._managers.get(key)
                if manager is None:
                    proxy = environment_proxy(parts.scheme, parts.hostname or "")
                    manager = self._direct if proxy is None else urllib3.ProxyManager(proxy, **self._options)
                    self._managers[key] = manager
        return manager


def environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy that ``http_proxy``/``https_proxy``/``all_proxy`` name for ``host``, unless ``no_proxy`` exempts
    it (the standard library's reading of them, which requests uses too)."""
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(scheme) or proxies.get("all")


def ca_bundle() -> str | None:
    """The certificates HTTPS is checked against: requests' environment variables, else certifi's bundle (as
    requests), else the system's."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def make_session(max_attempts: int = DEFAULT_MAX_ATTEMPTS, connections: int = DEFAULT_CONNECTIONS,
                 backoff: float = BACKOFF, max_wait: float = DEFAULT_MAX_WAIT) -> Session:
    """Pools that reuse up to ``connections`` connections per host and retry transient failures within
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
    return Session(retry, connections)


# ---- downloads --------------------------------------------------------------------------------------------------
class _Incomplete(Exception):
    """A body that HTTP does not prove whole."""


def download_file(session: Session, url: str, dest: Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                  backoff: float = BACKOFF, progress: bool = False,
                  stopping: Callable[[], bool] = lambda: False, max_size: int | None = None,
                  deadline: Deadline = DEADLINE) -> Download:
    """Download ``url`` to ``dest`` atomically, whole or not at all.

    The body streams to a temporary name beside ``dest`` and counts as whole only when HTTP proves it: as long as
    its Content-Length, or chunked with its final chunk. A body cut short, or one that just ends when the connection
    closes (no Content-Length, not chunked: a cut could not be told from the end), is asked for again with backoff
    and jitter, within the same ``max_attempts`` as urllib3's retries of status codes and connection failures; a
    whole body is then renamed. A body with a content coding, or larger than ``max_size`` (announced, or while
    read), is refused at once: bodies are stored as the server holds them (urllib3 would decode a gzip body whatever
    Accept-Encoding asked for). A body slower than ``deadline`` allows is abandoned and asked for again (its
    reason: "too slow").

    Raises :class:`SourceError` (``permanent`` for 404), :class:`Stopped` when ``stopping()`` turns true (checked
    while paused and between chunks), and lets ``OSError`` from the file system through (the caller knows which
    folder a full disk is).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(dest)
    attempts = hops = 0
    target = url  # where the file is asked for: url, or where a redirect within its origin led
    _call.stopping, _call.throttle = stopping, throttle(url)
    try:
        while True:
            if not _call.throttle.wait(stopping):
                raise Stopped(url)
            try:
                response = session.get(target, deadline)
            except HTTPError as exc:  # urllib3 used up its retries (or the URL is unusable)
                if isinstance(getattr(exc, "reason", None), NameResolutionError):
                    raise Unreachable(url, f"cannot reach {urlsplit(url).hostname} (name resolution failed)",
                                      attempts + 2) from None
                raise SourceError(url, f"{type(exc).__name__}: {exc}", attempts + max_attempts) from None
            whole = False  # the body read to its end (else the connection cannot carry another request)
            try:
                attempts += 1 + (len(response.retries.history) if response.retries else 0)
                if response.status in REDIRECT_STATUSES:
                    try:
                        target = follow_redirect(target, response.headers.get("Location"), hops)
                    except Refused as exc:
                        raise Refused(url, exc.reason, attempts) from None
                    hops += 1
                    attempts -= 1  # a hop is not an attempt
                    continue
                if response.status == 404:
                    raise SourceError(url, "HTTP 404 Not Found", attempts, permanent=True)
                if response.status != 200:
                    raise SourceError(url, f"HTTP {response.status} {response.reason}", attempts)
                refused = encoding_refused(url, response.headers.get("Content-Encoding"))
                announced = response.headers.get("Content-Length", "").strip()
                if refused is None and max_size is not None and announced.isdigit() and int(announced) > max_size:
                    refused = too_big(url, max_size, int(announced))
                if refused is not None:
                    refused.attempts = attempts
                    raise refused
                try:
                    size = _receive(response, tmp, progress, url, stopping, max_size, deadline)
                except (_Incomplete, TooSlow, HTTPError) as exc:
                    if isinstance(exc, ReadTimeoutError):  # no byte for a whole window
                        exc = TooSlow(deadline.too_slow())
                    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, HTTPError) else str(exc)
                    if attempts >= max_attempts:
                        raise SourceError(url, reason if isinstance(exc, TooSlow) else f"incomplete body: {reason}",
                                          attempts) from None
                    log.debug("%s: %s; asking again", url, reason)
                    if not _call.throttle.wait(stopping, retry_delay(attempts, backoff)):
                        raise Stopped(url) from None
                    continue
                whole = True
                validators = {name: response.headers[name] for name in VALIDATORS if name in response.headers}
            finally:
                if not whole:
                    response.close()
                response.release_conn()
            os.replace(tmp, dest)
            return Download(size, attempts, validators)
    finally:
        del _call.stopping, _call.throttle
        tmp.unlink(missing_ok=True)


def _receive(response: urllib3.BaseHTTPResponse, path: Path, progress: bool, url: str,
             stopping: Callable[[], bool], max_size: int | None = None, deadline: Deadline = DEADLINE) -> int:
    """Stream the body to ``path`` and return its size. A body that HTTP cannot prove whole raises
    :class:`_Incomplete`; one that breaks off raises urllib3's ``HTTPError`` (urllib3 2 checks the bytes against
    Content-Length, and a chunked body for its final chunk)."""
    if not response.chunked and response.headers.get("Content-Length") is None:
        raise _Incomplete("the server sent neither a Content-Length nor chunked encoding, so a body cut short "
                          "could not be told from a whole one")
    size = None if response.chunked else response.length_remaining
    bar = progress_counter(size, urlsplit(url).path.rsplit("/", 1)[-1], "B", unit_scale=True,
                           leave=False) if progress else None
    try:
        with open(path, "wb", buffering=_CHUNK) as out:  # a size given: no isatty() call per file
            pace = Pace(out, deadline, url, max_size)
            # read1: what has arrived, so that a trickle is seen as one (read() waits for a whole chunk)
            while chunk := response.read1(_CHUNK, decode_content=False):
                if stopping():
                    raise Stopped(url)
                pace.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return pace.received
