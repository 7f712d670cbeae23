"""The HTTP source's light curves on libcurl's multi interface (pycurl): all of a worker's transfers in one thread,
the only engine for them.

Why not urllib3 (the light curves' other path until issue 27): with a thread per connection, a light curve's download
cost ~1.5 ms of CPU (HTTP parsed in Python, and a dozen threads contending for the GIL), three times its conversion,
so a two-core build was bound by CPU rather than by the archive. libcurl parses HTTP in C and waits on every socket
at once with the GIL released: ~0.3 ms a file. The rules are those of :func:`.net.download_file` (the listings'):

- a body counts as whole only when HTTP proves it: its Content-Length (libcurl reports a shortfall as a partial
  file), or chunked encoding with its final chunk; a body with neither is refused and asked for again;
- 429 and 5xx, connection failures and incomplete bodies are retried with exponential backoff and jitter within
  ``max_attempts`` requests per file; a 429 (or a 503 with ``Retry-After``) pauses the whole build through the
  shared throttle, at most ``max_wait``; a 404 is final;
- a redirect is followed only within the archive's own origin, at most ``net.MAX_REDIRECTS`` hops (else the file
  fails at once, naming both URLs: :func:`.net.follow_redirect`);
- a body with a content coding (gzip...) is refused at once: bodies are stored as the archive holds them;
- a whole body is validated before it takes its name (else it is quarantined: ``base.settle``); a full disk stops
  every transfer and raises :class:`DiskFull`; stopping abandons what is in flight, leaving no temporary file.
"""

from __future__ import annotations

import http
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pycurl
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from .. import __version__
from ..context import TaskContext
from ..report import Failure
from . import base, net
from .base import WINDOW, DiskFull, Fetched, Refused, Validator

log = logging.getLogger(__name__)

_TICK = 0.01  # seconds: the longest the transfer thread sleeps before looking at its consumer and stopping() again
_PARTIAL = {pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR}  # errors of a body that broke off
_NEITHER = ("the server sent neither a Content-Length nor chunked encoding, so a body cut short could not be told "
            "from a whole one")


class _Connections:
    """A multi handle (libcurl keeps its connections and DNS cache) and ``connections`` easy handles, set up for one
    archive; idle ones are kept per process, so that the work units of a build reuse their connections (HTTPS: no
    new handshakes per unit)."""

    def __init__(self, key: tuple, connections: int):
        self.key = key  # _key(): what the handles were set up for
        _, _, _, _, proxy, self.ca_bundle = key
        self.proxy = proxy or ""  # "" tells libcurl not to read the environment itself
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, connections)
        self.handles = [self._handle() for _ in range(connections)]

    def _handle(self) -> pycurl.Curl:
        handle = pycurl.Curl()
        handle.setopt(pycurl.USERAGENT, f"tglc-builder/{__version__}")
        handle.setopt(pycurl.HTTPHEADER, ["Accept-Encoding: identity"])  # bodies byte for byte as stored
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        # Redirects are judged here, by net.follow_redirect (as for urllib3): libcurl would follow them anywhere.
        handle.setopt(pycurl.FOLLOWLOCATION, False)
        handle.setopt(pycurl.NOSIGNAL, True)
        handle.setopt(pycurl.CONNECTTIMEOUT, int(net.TIMEOUT.connect_timeout))
        handle.setopt(pycurl.BUFFERSIZE, 1 << 19)
        handle.setopt(pycurl.PROXY, self.proxy)
        if self.ca_bundle:
            handle.setopt(pycurl.CAINFO, self.ca_bundle)
        return handle

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.multi.close()


_idle: dict[tuple, list[_Connections]] = {}  # _key() -> idle sets
_idle_lock = threading.Lock()


def _key(url: str, connections: int) -> tuple:
    """This process, the archive, and its settings: the environment's proxy (read as net.Session reads it) and the
    CA bundle."""
    parts = urlsplit(url)
    return (os.getpid(), parts.scheme, parts.netloc, connections,
            net.environment_proxy(parts.scheme, parts.hostname or ""), net.ca_bundle())


def _checkout(url: str, connections: int) -> _Connections:
    key = _key(url, connections)
    with _idle_lock:
        idle = _idle.get(key)
        if idle:
            return idle.pop()
    return _Connections(key, connections)


def _checkin(pool: _Connections) -> None:
    with _idle_lock:
        _idle.setdefault(pool.key, []).append(pool)


class _Budget:
    """The transfers in flight in this process for one archive and its settings, across the calls that run at once
    (a work unit winding down beside the next one, see ``TaskContext.hand_over``): never more than ``connections``.
    A retry that is due and finds no slot is ``waiting``: no new item of any call takes a slot before it, so the
    unit winding down is not held back by the next one's downloads."""

    def __init__(self, connections: int):
        self.free = connections
        self.waiting = 0  # due retries that found no slot
        self.lock = threading.Lock()

    def take(self, retry: bool = False) -> bool:
        with self.lock:
            if self.free <= 0 or (self.waiting and not retry):
                return False
            self.free -= 1
            return True

    def give(self) -> None:
        with self.lock:
            self.free += 1

    def wait(self, change: int) -> None:
        with self.lock:
            self.waiting += change


_budgets: dict[tuple, _Budget] = {}  # _key() -> its budget


def _budget(key: tuple, connections: int) -> _Budget:
    with _idle_lock:
        return _budgets.setdefault(key, _Budget(connections))


class _Transfer:
    """One item's download: its state across attempts, and the callbacks of the attempt in flight."""

    __slots__ = ("index", "gaia", "relpath", "dest", "tmp", "attempts", "not_before", "file", "headers", "error",
                 "waiting", "url", "target", "hops", "status", "refused")

    def __init__(self, index: int, gaia: int, relpath: str, dest: Path, tmp: Path, url: str):
        self.index, self.gaia, self.relpath, self.dest, self.tmp = index, gaia, relpath, dest, tmp
        self.url = self.target = url  # target: where it is asked for (url, or where a redirect in its origin led)
        self.hops = 0  # redirects followed
        self.attempts, self.not_before = 0, 0.0
        self.waiting = False  # due, and counted in the budget's waiting retries
        self.file = None
        self.headers: dict[str, str] = {}
        self.error: OSError | None = None
        self.status = 0  # of the answer being received
        self.refused: base.Refused | None = None  # the body's content coding, refused: the transfer was ended

    def write(self, data: bytes) -> int | None:
        if self.status == 200 and "content-encoding" in self.headers:  # ended before a coded body fills the disk
            self.refused = base.encoding_refused(self.url, self.headers["content-encoding"])
            if self.refused is not None:
                return 0
        try:
            self.file.write(data)
        except OSError as exc:  # a full disk or a file-size limit: libcurl ends the transfer (CURLE_WRITE_ERROR)
            self.error = exc
            return 0
        return None

    def header(self, line: bytes) -> None:
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):  # a new answer (after a 100 Continue): its own headers
            self.headers.clear()
            status = text.split(None, 2)[1:2]
            self.status = int(status[0]) if status and status[0].isdigit() else 0
        elif ":" in text:
            name, value = text.split(":", 1)
            self.headers[name.strip().lower()] = value.strip()

    def close_file(self) -> None:
        if self.file is not None:
            try:
                self.file.close()  # flushes: may be where a full disk shows
            except OSError as exc:
                self.error = self.error or exc
            self.file = None


class _Transfers:
    """The thread that runs the transfers, and what it shares with the consumer under one condition: the item the
    consumer waits for (``position``; no item starts ``WINDOW`` x ``connections`` or more beyond it), the outcomes
    not yet taken, and the first fatal error (a full disk, or anything unexpected), which the consumer raises."""

    def __init__(self, url: str, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                 context: TaskContext, connections: int, max_attempts: int, max_wait: float,
                 backoff: float, deadline: net.Deadline = net.DEADLINE):
        self.url, self.items, self.fits_dir, self.validate = url, items, fits_dir, validate
        self.deadline = deadline
        self.context, self.connections, self.max_attempts = context, connections, max_attempts
        self.max_wait, self.backoff = max_wait, backoff
        parts = urlsplit(url)  # host:port as urllib3 names it in the pause's log line (never the userinfo)
        self.host = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.throttle = net.throttle(url)
        self.condition = threading.Condition()
        self.position = 0
        self.outcomes: dict[int, Fetched | Failure] = {}
        self.halted = False
        self.fatal: BaseException | None = None
        # The transfer thread's own state: its handles (each carries one transfer at a time), what is in flight
        # (each holding a slot of the process's budget), what is to be asked for again (each at its not_before),
        # and how many items it has taken up. ``reusable``: whether the handles can serve another call (not after
        # an unforeseen error).
        self.pool: _Connections | None = None
        self.budget: _Budget | None = None
        self.free: list[pycurl.Curl] = []
        self.reusable = False
        self.active: dict[pycurl.Curl, _Transfer] = {}
        self.again: list[_Transfer] = []
        self.queued = 0

    # -- the consumer's side -------------------------------------------------------------------------------------
    def take(self, i: int) -> Fetched | Failure | None:
        """Item ``i``'s outcome once it is known; None when the transfers halted first. Raises the fatal error."""
        with self.condition:
            self.position = i
            self.condition.notify_all()
            while i not in self.outcomes and not self.halted:
                self.condition.wait()
            if self.fatal is not None:
                raise self.fatal
            return self.outcomes.pop(i, None)

    def halt(self) -> None:
        with self.condition:
            self.halted = True
            self.condition.notify_all()

    # -- the transfer thread ---------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.pool = _checkout(self.url, self.connections)
            self.budget = _budget(self.pool.key, self.connections)
            multi = self.pool.multi
            self.free = list(self.pool.handles)
            self.reusable = True
            while not self._stop():
                self._fill()
                if not self.active:
                    if self.queued == len(self.items) and not self.again:
                        return
                    with self.condition:  # woken by the consumer moving on, or after a tick
                        if not self.halted:
                            self.condition.wait(_TICK)
                    continue
                self._perform()
                while self.fatal is None:
                    _, done, failed = multi.info_read(1)
                    if not done and not failed:
                        break
                    for handle in done:
                        self._finish(handle, 0, "")
                    for handle, code, message in failed:
                        self._finish(handle, code, message)
                    # The freed connection asks for the next file now, not after the rest of the batch.
                    self._fill()
                    self._perform()
                if self.fatal is None:
                    multi.select(_TICK)
        except OSError as exc:  # a full disk while a file takes its name (or its quarantine's)
            self._os_error(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self.reusable = False
            self._fail(exc)
        finally:
            try:
                self._abandon()
            finally:
                self.halt()  # the consumer never waits on a thread that has ended

    def _abandon(self) -> None:
        """Whatever is in flight is dropped with its temporary file; the handles go back to this process's idle
        ones, or are closed after an unforeseen error."""
        for handle, transfer in self.active.items():
            self.budget.give()
            try:
                self.pool.multi.remove_handle(handle)
            except pycurl.error:  # never added (its start failed)
                pass
            transfer.close_file()
            try:
                transfer.tmp.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s: %s", transfer.tmp, exc)
        self.active.clear()
        for transfer in self.again:
            self._stop_waiting(transfer)
        if self.pool is not None:
            if self.reusable:
                _checkin(self.pool)
            else:
                self.pool.close()

    def _perform(self) -> None:
        while self.pool.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _fill(self) -> None:
        """Start transfers on the free handles: retries that are due first, then the next items of the window;
        none while the build is paused (Retry-After) or stopping."""
        if self.throttle.remaining() > 0 or self._stop():
            return
        with self.condition:
            limit = min(len(self.items), self.position + WINDOW * self.connections)
        now = time.monotonic()
        while self.free and self.fatal is None:
            due = next((t for t in self.again if t.not_before <= now), None)
            if due is not None:
                if not self.budget.take(retry=True):
                    if not due.waiting:
                        due.waiting = True
                        self.budget.wait(+1)
                    break
                self._stop_waiting(due)
                self.again.remove(due)
                self._start(due)
                continue
            if self.queued >= limit or not self.budget.take():
                break
            try:
                transfer = self._take_up(self.queued)
            except BaseException:
                self.budget.give()
                raise
            self.queued += 1
            if transfer is None:
                self.budget.give()
            else:
                self._start(transfer)
            if self.queued == len(self.items):
                self.context.hand_over()

    def _stop_waiting(self, transfer: _Transfer) -> None:
        if transfer.waiting:
            transfer.waiting = False
            self.budget.wait(-1)

    def _stop(self) -> bool:
        return self.halted or self.fatal is not None or self.context.stopping()

    def _fail(self, exc: BaseException) -> None:
        with self.condition:
            self.fatal = self.fatal or exc
            self.halted = True
            self.condition.notify_all()

    def _publish(self, i: int, outcome: Fetched | Failure) -> None:
        with self.condition:
            self.outcomes[i] = outcome
            self.condition.notify_all()

    def _take_up(self, i: int) -> _Transfer | None:
        """Item ``i``'s transfer, or None when its file is already complete (published at once)."""
        gaia, relpath = self.items[i]
        dest = self.fits_dir / relpath
        tmp = base.to_fetch(dest)
        if tmp is None:
            self._publish(i, Fetched(dest, downloaded=False))
            return None
        return _Transfer(i, gaia, relpath, dest, tmp, f"{self.url}/{relpath}")

    def _start(self, transfer: _Transfer) -> None:
        transfer.headers.clear()
        transfer.error, transfer.refused, transfer.status = None, None, 0
        handle = self.free.pop()
        # In flight from here: should anything below raise, the thread's end removes its temporary file.
        self.active[handle] = transfer
        transfer.dest.parent.mkdir(parents=True, exist_ok=True)
        transfer.file = open(transfer.tmp, "wb")  # noqa: SIM115 - closed when the transfer ends
        handle.setopt(pycurl.URL, transfer.target)
        # The deadline (net.Deadline), in libcurl's terms: the floor over the window, and the whole request's limit.
        handle.setopt(pycurl.LOW_SPEED_LIMIT, self.deadline.floor)
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(self.deadline.window)))
        handle.setopt(pycurl.TIMEOUT_MS, 0 if self.deadline.limit is None else round(self.deadline.limit * 1000))
        handle.setopt(pycurl.WRITEFUNCTION, transfer.write)
        handle.setopt(pycurl.HEADERFUNCTION, transfer.header)
        self.pool.multi.add_handle(handle)

    def _os_error(self, exc: OSError) -> None:
        self._fail(base.disk_full(self.fits_dir, exc))

    def _finish(self, handle: pycurl.Curl, code: int, message: str) -> None:
        """One attempt ended: the file takes its name, or the item fails, or it is asked for again."""
        transfer = self.active.pop(handle)
        self.budget.give()
        self.pool.multi.remove_handle(handle)
        self.free.append(handle)
        transfer.close_file()
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        if status in net.REDIRECT_STATUSES and transfer.error is None:
            transfer.tmp.unlink(missing_ok=True)
            try:
                transfer.target = net.follow_redirect(transfer.target, transfer.headers.get("location"), transfer.hops)
            except Refused as exc:  # final: another origin, or too many hops
                self._publish(transfer.index, self._failure(transfer, exc.reason, transfer.attempts + 1))
                return
            transfer.hops += 1  # asked for at once, where it leads; not an attempt
            transfer.not_before = 0.0
            self.again.append(transfer)
            return
        transfer.attempts += 1
        try:
            outcome, retry_reason = self._judge(transfer, status, code, message)
        finally:
            transfer.tmp.unlink(missing_ok=True)  # unless it took its name (or the quarantine's)
        if outcome is None and retry_reason is None:  # a fatal error
            return
        if outcome is None:
            if transfer.attempts >= self.max_attempts:
                outcome = self._failure(transfer, retry_reason)
            else:
                transfer.not_before = time.monotonic() + base.retry_delay(transfer.attempts, self.backoff)
                self.again.append(transfer)
                return
        self._publish(transfer.index, outcome)

    def _judge(self, transfer: _Transfer, status: int, code: int, message: str
               ) -> tuple[Fetched | Failure | None, str | None]:
        """The attempt's outcome, or why to ask again; (None, None) when it ended the transfers (a full disk)."""
        if transfer.error is not None:
            self._os_error(transfer.error)
            return None, None
        refused = transfer.refused or (base.encoding_refused(transfer.url, transfer.headers.get("content-encoding"))
                                       if status == 200 else None)
        if refused is not None:
            return self._failure(transfer, refused.reason), None
        if code == pycurl.E_OPERATION_TIMEDOUT and status == 200:  # the body came too slowly
            slow = "too slow" in message.lower()
            return None, f"{self.deadline.too_slow() if slow else self.deadline.too_long()} (curl: {message})"
        if code:
            partial = status == 200 and code in _PARTIAL
            return None, f"{'incomplete body: ' if partial else ''}curl error {code}: {message}"
        if status == 200:
            chunked = "chunked" in transfer.headers.get("transfer-encoding", "").lower()
            if not chunked and "content-length" not in transfer.headers:
                return None, f"incomplete body: {_NEITHER}"
            return base.settle(transfer.tmp, self.fits_dir, transfer.relpath, transfer.index, transfer.gaia,
                               self.validate, transfer.attempts), None
        if status == 404:
            return self._failure(transfer, "HTTP 404 Not Found"), None
        if status in net.RETRY_STATUSES:
            self._maybe_pause(transfer, status)
            return None, f"HTTP {status} {_phrase(status)}"
        return self._failure(transfer, f"HTTP {status} {_phrase(status)}"), None

    def _failure(self, transfer: _Transfer, reason: str, attempts: int | None = None) -> Failure:
        return Failure(transfer.gaia, transfer.relpath, "download", reason,
                       transfer.attempts if attempts is None else attempts)

    def _maybe_pause(self, transfer: _Transfer, status: int) -> None:
        """A 429, or a 503 with Retry-After, holds back every download of the build (net.Throttle)."""
        value = transfer.headers.get("retry-after")
        try:
            asked = None if value is None else Retry().parse_retry_after(value)
        except InvalidHeader:  # neither seconds nor an HTTP date
            asked = None
        if status == 429 or (status == 503 and asked is not None):
            self.throttle.pause(asked, self.max_wait, self.host, status)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def fetch_many(url: str, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
               context: TaskContext, *, connections: int, max_attempts: int, max_wait: float,
               backoff: float = base.BACKOFF, deadline: net.Deadline = net.DEADLINE
               ) -> Iterator[tuple[int, Fetched | Failure]]:
    """:meth:`HttpSource.fetch_many` on libcurl: the transfers run in one thread while the caller converts what
    has arrived."""
    transfers = _Transfers(url, items, Path(fits_dir), validate, context, connections, max_attempts, max_wait,
                           backoff, deadline)
    thread = threading.Thread(target=transfers.run, name="tglc-curl", daemon=True)
    thread.start()
    try:
        for i in range(len(items)):
            outcome = transfers.take(i)  # raises DiskFull
            if outcome is None or context.stopping():
                break
            yield i, outcome
    finally:
        transfers.halt()  # what still runs is abandoned, its temporary files removed
        thread.join()
    if isinstance(transfers.fatal, DiskFull):
        raise transfers.fatal
