"""HTTP for every download: pooled requests sessions, retries, a pool-wide throttle and atomic file writes.

urllib3's ``Retry`` (mounted through a requests ``HTTPAdapter``) already knows exponential backoff with jitter,
retrying 429/5xx and connection failures, and honouring ``Retry-After``; urllib3 2 raises when a body is shorter than
its Content-Length. What they lack, and this module adds: retrying failures that happen while the body streams,
pausing every worker (not just the throttled one) when the archive says slow down, and never leaving a partial file
under its final name.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF = 0.5  # seconds; doubles with each attempt
TIMEOUT = (10, 60)  # connect, read (seconds)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that failed for good: after ``attempts`` tries, or at once when ``permanent`` (404)."""

    def __init__(self, url: str, reason: str, attempts: int, permanent: bool = False):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.attempts, self.permanent = url, reason, attempts, permanent


class Throttle:
    """A moment before which no worker starts a request; shared by processes when given a shared double."""

    def __init__(self, shared=None):
        self._shared = shared  # multiprocessing.Value("d") or None
        self._local = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        until = time.time() + seconds
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared.value = max(self._shared.value, until)
        else:
            with self._lock:
                self._local = max(self._local, until)

    def wait(self) -> None:
        until = self._shared.value if self._shared is not None else self._local
        delay = until - time.time()
        if delay > 0:
            time.sleep(delay)


THROTTLE = Throttle()


def install_shared_throttle(shared) -> None:
    """Make this process's workers honour a throttle shared with other processes (a pool initializer)."""
    global THROTTLE
    THROTTLE = Throttle(shared)


class _PoolWideRetry(Retry):
    """urllib3's Retry, which also pauses the whole pool when the archive throttles (429/503)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None and response.status in (429, 503):
            delay = self.get_retry_after(response)
            THROTTLE.pause(delay if delay is not None else self.get_backoff_time() or DEFAULT_BACKOFF)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def make_session(max_attempts: int = DEFAULT_MAX_ATTEMPTS, connections: int = 10,
                 backoff: float = DEFAULT_BACKOFF) -> requests.Session:
    """A session that reuses up to ``connections`` connections per host and retries transient failures."""
    retry = _PoolWideRetry(
        total=max_attempts - 1,
        backoff_factor=backoff,
        backoff_jitter=backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=connections, pool_block=True)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "tglc-builder"
    return session


def _temporary_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")


def download_file(session: requests.Session, url: str, dest: Path,
                  validate: Callable[[Path], None] | None = None,
                  max_attempts: int = DEFAULT_MAX_ATTEMPTS, backoff: float = DEFAULT_BACKOFF,
                  progress: bool = False, quarantine: Path | None = None) -> int:
    """Download ``url`` to ``dest`` atomically; return the number of attempts it took.

    The body streams to a temporary name beside ``dest``, is checked (complete, then ``validate(tmp)``, which raises
    ``ValueError`` for a bad file) and only then renamed; a bad file is kept at ``quarantine`` when given. Status
    codes and connection failures are retried inside the session; a body that breaks off is retried here, with
    backoff and jitter, within the same ``max_attempts``. A file that fails ``validate`` is final: the archive
    served it in full, so asking again would not change it.
    """
    if not url.startswith(("http://", "https://")):
        raise DownloadError(url, "only http(s) URLs are fetched", 0, permanent=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(dest)
    attempts = 0
    try:
        while True:
            THROTTLE.wait()
            try:
                # Status codes and connection failures are retried inside (urllib3); what escapes is final.
                response = session.get(url, stream=True, timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise DownloadError(url, f"{type(exc).__name__}: {exc}", max_attempts) from None
            with response:
                attempts += 1 + len(response.raw.retries.history if response.raw.retries else ())
                if response.status_code == 404:
                    raise DownloadError(url, "HTTP 404 Not Found", attempts, permanent=True)
                if response.status_code != 200:
                    raise DownloadError(url, f"HTTP {response.status_code} {response.reason}", attempts)
                expected = response.headers.get("Content-Length")
                try:
                    written = _stream_to(response, tmp, int(expected) if expected else None, progress, url)
                    if expected is not None and written != int(expected):
                        raise requests.RequestException(f"body of {written} bytes, Content-Length said {expected}")
                except requests.RequestException as exc:  # the body broke off: try again, a bounded number of times
                    if attempts >= max_attempts:
                        raise DownloadError(url, f"{type(exc).__name__}: {exc}", attempts) from None
                    time.sleep(backoff * 2 ** (attempts - 1) * (0.5 + random.random()))
                    continue
            if validate is not None:
                try:
                    validate(tmp)
                except ValueError as exc:
                    if quarantine is not None:
                        quarantine.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(tmp, quarantine)
                    raise DownloadError(url, f"invalid file: {exc}", attempts, permanent=True) from None
            os.replace(tmp, dest)
            return attempts
    finally:
        tmp.unlink(missing_ok=True)


def _stream_to(response: requests.Response, path: Path, size: int | None, progress: bool, url: str) -> int:
    written = 0
    with open(path, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                                       disable=not progress, leave=False) as bar:
        for chunk in response.iter_content(_CHUNK):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written
