"""The HTTP source on libcurl (pycurl), its only engine: the light curves on the multi interface, all of a worker's
transfers in one thread (:func:`fetch_many`); a listing or the index page on one easy handle (:func:`fetch_file`).

Why libcurl: it parses HTTP in C and waits on every socket at once with the GIL released, ~0.3 ms of CPU a file
against ~1.5 ms with a urllib3 thread per connection (the light curves' engine until issue 27), three times a
conversion. The rules of both paths (README, "Long runs": whole bodies only, retries and the throttle, redirects
within the origin, no content coding, validate then rename) are :class:`_Rules`'.
"""

from __future__ import annotations

import http
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import pycurl

from .. import __version__
from ..context import TaskContext
from ..progress import progress as progress_counter
from ..report import Failure
from . import base, net
from .base import WINDOW, DiskFull, Fetched, ListingCopy, Refused, SourceError, Validator

log = logging.getLogger(__name__)

_TICK = 0.01  # seconds: the longest the transfer thread sleeps before looking at its consumer and stopping() again
_PARTIAL = {pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR}  # errors of a body that broke off
_ERROR_BODY_MAX = 1 << 16  # bytes of an error page or a redirect's body read (and dropped) before the transfer is ended
_NEITHER = ("the server sent neither a Content-Length nor chunked encoding, so a body cut short could not be told "
            "from a whole one")


class _Connections:
    """A multi handle (libcurl keeps its connections and DNS cache) and ``connections`` easy handles, set up for one
    archive; idle ones are kept per process, so that the work units of a build reuse their connections (HTTPS: no
    new handshakes per unit)."""

    def __init__(self, key: tuple, connections: int):
        self.key = key  # _key(): what the handles were set up for
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, connections)
        self.handles = [_handle(key) for _ in range(connections)]

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.multi.close()


def _handle(key: tuple) -> pycurl.Curl:
    """An easy handle set up for ``key`` (:func:`_key`): its proxy and CA bundle."""
    *_, proxy, ca_bundle = key
    handle = pycurl.Curl()
    handle.setopt(pycurl.USERAGENT, f"tglc-builder/{__version__}")
    handle.setopt(pycurl.HTTPHEADER, ["Accept-Encoding: identity"])  # bodies byte for byte as stored
    handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    # Redirects are judged here, by net.follow_redirect: libcurl would follow them anywhere.
    handle.setopt(pycurl.FOLLOWLOCATION, False)
    handle.setopt(pycurl.NOSIGNAL, True)
    handle.setopt(pycurl.CONNECTTIMEOUT, net.CONNECT_TIMEOUT)
    handle.setopt(pycurl.BUFFERSIZE, 1 << 19)
    handle.setopt(pycurl.PROXY, proxy or "")  # "": no proxy (libcurl must not read the environment its own way)
    if ca_bundle:
        handle.setopt(pycurl.CAINFO, ca_bundle)
    return handle


_idle: dict[tuple, list[_Connections]] = {}  # _key() -> idle sets
_idle_lock = threading.Lock()


def _key(url: str, connections: int) -> tuple:
    """This process, the archive, and its settings: the environment's proxy (net.environment_proxy) and the CA
    bundle."""
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
                 "waiting", "url", "target", "hops", "status", "refused", "skipped")

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
        self.skipped = 0  # bytes of a body not stored (not a 200's)
        self.refused: base.Refused | None = None  # the body's content coding, refused: the transfer was ended

    def write(self, data: bytes) -> int | None:
        if self.status != 200:  # an error page or a redirect's body: never stored, and one too long for either is
            self.skipped += len(data)  # cut short (its status decides, see _Rules._again)
            return 0 if self.skipped > _ERROR_BODY_MAX else None
        if "content-encoding" in self.headers:  # ended before a coded body fills the disk
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

    def arm(self, handle: pycurl.Curl, deadline: net.Deadline) -> None:
        """Ready ``handle`` for this transfer's next attempt, its temporary file opened afresh."""
        self.headers.clear()
        self.error, self.refused, self.status, self.skipped = None, None, 0, 0
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed when the attempt ends
        handle.setopt(pycurl.URL, self.target)
        # The deadline (net.Deadline), in libcurl's terms: the floor over the window, and the whole request's limit.
        handle.setopt(pycurl.LOW_SPEED_LIMIT, deadline.floor)
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(deadline.window)))
        handle.setopt(pycurl.TIMEOUT_MS, 0 if deadline.limit is None else round(deadline.limit * 1000))
        handle.setopt(pycurl.WRITEFUNCTION, self.write)
        handle.setopt(pycurl.HEADERFUNCTION, self.header)


class _File(_Transfer):
    """A file fetched alone (a listing, the index page): its body within ``max_size`` bytes (announced, or while
    read), its bytes counted on ``bar`` (a progress counter, or None)."""

    __slots__ = ("max_size", "received", "bar")

    def __init__(self, url: str, dest: Path, max_size: int, bar):
        super().__init__(0, 0, dest.name, dest, base.temporary_name(dest), url)
        self.max_size, self.received, self.bar = max_size, 0, bar

    def arm(self, handle: pycurl.Curl, deadline: net.Deadline) -> None:
        if self.bar is not None:
            self.bar.update(-self.received)  # a new attempt counts from 0
        self.received = 0
        super().arm(handle, deadline)

    def write(self, data: bytes) -> int | None:
        if self.status == 200:
            announced = self.headers.get("content-length", "")
            announced = int(announced) if announced.isdigit() else 0
            if max(announced, self.received + len(data)) > self.max_size:
                self.refused = base.too_big(self.url, self.max_size, announced if announced > self.max_size else None)
                return 0  # libcurl ends the transfer (before any byte is written, for one announced too big)
            self.received += len(data)
            if self.bar is not None:
                self.bar.total = self.bar.total or announced or None
                self.bar.update(len(data))
        return super().write(data)


class _Rules:
    """The rules of an archive's transfers (see the module's docstring): what an attempt that ended comes to."""

    def __init__(self, url: str, max_attempts: int, max_wait: float, backoff: float, deadline: net.Deadline):
        self.url, self.max_attempts, self.max_wait, self.backoff = url, max_attempts, max_wait, backoff
        self.deadline = deadline
        parts = urlsplit(url)  # host:port, as the pause's log line names it (never the userinfo)
        self.host = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.throttle = net.throttle(url)

    def ended(self, transfer: _Transfer, status: int, code: int, message: str) -> float | None:
        """An attempt of ``transfer`` ended with HTTP ``status`` (curl ``code`` and ``message``): None when its body
        is whole under its temporary name, else the seconds before asking again (0 after a redirect within its
        origin, which is not an attempt). Raises :class:`SourceError` when the file fails (``Refused``: never asked
        again), and the ``OSError`` of a write that failed."""
        if transfer.error is not None:
            raise transfer.error
        if status in net.REDIRECT_STATUSES:
            try:
                transfer.target = net.follow_redirect(transfer.target, transfer.headers.get("location"),
                                                      transfer.hops)
            except Refused as exc:  # final: another origin, or too many hops
                raise Refused(transfer.url, exc.reason, transfer.attempts + 1) from None
            transfer.hops += 1
            return 0.0
        transfer.attempts += 1
        reason = self._again(transfer, status, code, message)
        if reason is None:
            return None
        if transfer.attempts >= self.max_attempts:
            raise SourceError(transfer.url, reason, transfer.attempts)
        log.debug("%s: %s; asking again", transfer.url, reason)
        return base.retry_delay(transfer.attempts, self.backoff)

    def _again(self, transfer: _Transfer, status: int, code: int, message: str) -> str | None:
        """None for a whole body, else why to ask again; raises SourceError for a final answer."""
        refused = transfer.refused or (base.encoding_refused(transfer.url, transfer.headers.get("content-encoding"))
                                       if status == 200 else None)
        if refused is not None:
            refused.attempts = transfer.attempts
            raise refused
        if code == pycurl.E_OPERATION_TIMEDOUT and status == 200:  # the body came too slowly
            return self.deadline.too_slow() if "too slow" in message.lower() else self.deadline.too_long()
        if code == pycurl.E_WRITE_ERROR and status != 200 and transfer.skipped > _ERROR_BODY_MAX:
            code = 0  # ended by us: an error page longer than any archive's; its status is the answer
        if code == pycurl.E_COULDNT_RESOLVE_HOST and transfer.attempts >= min(2, self.max_attempts):
            raise base.Unreachable(transfer.url, f"cannot reach {urlsplit(transfer.url).hostname} (name resolution "
                                                 "failed)", transfer.attempts)
        if code:
            partial = status == 200 and code in _PARTIAL
            return f"{'incomplete body: ' if partial else ''}curl error {code}: {message}"
        if status == 200:
            chunked = "chunked" in transfer.headers.get("transfer-encoding", "").lower()
            return None if chunked or "content-length" in transfer.headers else f"incomplete body: {_NEITHER}"
        if status == 404:
            raise SourceError(transfer.url, "HTTP 404 Not Found", transfer.attempts, permanent=True)
        if status not in net.RETRY_STATUSES:
            raise SourceError(transfer.url, f"HTTP {status} {_phrase(status)}", transfer.attempts)
        asked = _retry_after(transfer.headers.get("retry-after"))
        if status == 429 or asked is not None:  # a 429, or a 503 with Retry-After, holds back the whole build
            self.throttle.pause(asked, self.max_wait, self.host, status)
        return f"HTTP {status} {_phrase(status)}"


class _Transfers(_Rules):
    """The thread that runs the transfers, and what it shares with the consumer under one condition: the item the
    consumer waits for (``position``; no item starts ``WINDOW`` x ``connections`` or more beyond it), the outcomes
    not yet taken, and the first fatal error (a full disk, or anything unexpected), which the consumer raises."""

    def __init__(self, url: str, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                 context: TaskContext, connections: int, max_attempts: int, max_wait: float,
                 backoff: float, deadline: net.Deadline = net.DEADLINE):
        super().__init__(url, max_attempts, max_wait, backoff, deadline)
        self.items, self.fits_dir, self.validate = items, fits_dir, validate
        self.context, self.connections = context, connections
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
        except OSError as exc:  # a full disk while a body is written, or a file takes its name (or the quarantine's)
            self._fail(base.disk_full(self.fits_dir, exc))
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
            with suppress(pycurl.error):  # never added (its start failed)
                self.pool.multi.remove_handle(handle)
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
        handle = self.free.pop()
        # In flight from here: should anything below raise, the thread's end removes its temporary file.
        self.active[handle] = transfer
        transfer.arm(handle, self.deadline)
        self.pool.multi.add_handle(handle)

    def _finish(self, handle: pycurl.Curl, code: int, message: str) -> None:
        """One attempt ended: the file takes its name, or the item fails, or it is asked for again."""
        transfer = self.active.pop(handle)
        self.budget.give()
        self.pool.multi.remove_handle(handle)
        self.free.append(handle)
        transfer.close_file()
        try:
            delay = self.ended(transfer, handle.getinfo(pycurl.RESPONSE_CODE), code, message)
            if delay is None:
                outcome = base.settle(transfer.tmp, self.fits_dir, transfer.relpath, transfer.index, transfer.gaia,
                                      self.validate, transfer.attempts)
        except SourceError as exc:  # (an OSError, a full disk, ends the thread: run())
            delay, outcome = None, Failure(transfer.gaia, transfer.relpath, "download", exc.reason, exc.attempts)
        finally:
            transfer.tmp.unlink(missing_ok=True)  # unless it took its name (or the quarantine's)
        if delay is not None:
            transfer.not_before = time.monotonic() + delay
            self.again.append(transfer)
        else:
            self._publish(transfer.index, outcome)


def _retry_after(value: str | None) -> float | None:
    """A Retry-After's seconds (a number, or an HTTP date), None when absent or neither."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


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


def fetch_file(url: str, dest: Path, *, max_attempts: int, max_wait: float, deadline: net.Deadline, max_size: int,
               progress: bool = False, backoff: float = base.BACKOFF) -> ListingCopy:
    """``url`` to ``dest``, whole or not at all, by :class:`_Rules`, in the caller's thread; a body beyond ``max_size``
    bytes is refused. Raises :class:`SourceError`, and lets ``OSError`` through (the caller knows which folder a full
    disk is). Ctrl-C ends it within a second, leaving no temporary file."""
    rules = _Rules(url, max_attempts, max_wait, backoff, deadline)
    bar = progress_counter(None, dest.name, "B", unit_scale=True, leave=False) if progress else None
    transfer = _File(url, dest, max_size, bar)
    handle = _handle(_key(url, 1))
    # libcurl calls this at least once a second, even while nothing arrives: a pending signal (Ctrl-C) is raised
    # there, and pycurl hands it on from perform().
    handle.setopt(pycurl.NOPROGRESS, False)
    handle.setopt(pycurl.XFERINFOFUNCTION, lambda *_: None)
    delay = 0.0
    try:
        while delay is not None:
            rules.throttle.wait(lambda: False, delay)
            transfer.arm(handle, deadline)
            try:
                handle.perform()
                code, message = 0, ""
            except pycurl.error as exc:
                code, message = exc.args
            transfer.close_file()
            delay = rules.ended(transfer, handle.getinfo(pycurl.RESPONSE_CODE), code, message)
        os.replace(transfer.tmp, dest)
    finally:
        transfer.close_file()
        handle.close()
        transfer.tmp.unlink(missing_ok=True)
        if bar is not None:
            bar.close()
    headers = transfer.headers
    return ListingCopy(transfer.received, {name: headers[name.lower()] for name in net.VALIDATORS
                                           if name.lower() in headers})
