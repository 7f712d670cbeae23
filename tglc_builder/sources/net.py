"""HTTP plumbing of the HTTP source (:mod:`.curl`, libcurl) and the S3 source's deadlines: the archive's throttle,
the redirect rule, proxies and CA bundle, deadlines (:class:`Pace`, for the clients that do not watch them).
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
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .base import BACKOFF, Refused, too_big

log = logging.getLogger(__name__)


CONNECT_TIMEOUT = 10  # seconds
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
    not watch them themselves (aiobotocore; libcurl has LOW_SPEED_LIMIT/TIME and TIMEOUT). Windows follow
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
_POLL = 0.1  # seconds between looks at stopping() while paused


# ---- the throttle -----------------------------------------------------------------------------------------------
class Throttle:
    """A moment (``time.time()``) before which no request starts, in a lock-free shared double (``until.value``): a
    lost extension of a pause costs one more refused request, a lock held by a killed worker every download."""

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
    """The throttle of the archive at ``url`` (its origin), shared by every process of this user fetching from it
    (the archive throttles the client, not the build): 8 bytes of a file of the temporary folder mapped into each
    process, or, when none can be made (or it is another user's), a throttle of this process's own."""
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


# ---- the environment --------------------------------------------------------------------------------------------
def environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy that ``http_proxy``/``https_proxy``/``all_proxy`` name for ``host``, unless ``no_proxy`` exempts
    it (the standard library's reading of them, which requests uses too; libcurl is told this one, not left to read
    them its own way)."""
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
