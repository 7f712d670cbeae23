"""MAST's tree in an S3 bucket (``s3://BUCKET/PREFIX``, e.g. MAST's public cloud copy), through s3fs: one file
system per worker process, many GETs at once on fsspec's event loop. Anonymous unless ``TGLC_S3_ANON=0``; the
endpoint is AWS's unless ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (README, "Other sources").

botocore's retries (its ``standard`` and ``adaptive`` modes too) are off: they retry the GetObject call but not its
body, read after the call returns, so a body that breaks off, comes short or trickles (``net.Pace``) would still
need a loop of ours, and a failure's attempts would count one layer's tries only. This module retries throttling,
5xx and dropped, short or slow bodies itself (``base.retry_delay``), counting attempts exactly.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import s3fs
from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                 FlexibleChecksumError, HTTPClientError, IncompleteReadError, NoCredentialsError)
from botocore.parsers import ResponseParserError
from fsspec.asyn import sync

from .. import layout
from ..context import TaskContext
from ..errors import UsageError
from ..report import Failure
from . import net
from .base import (DEFAULT_CONNECTIONS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, DISK_FULL_ERRNOS,
                   MAX_LISTING_BYTES, WINDOW, DiskFull, Fetched, ListingCopy, Refused, Source, SourceError, Validator,
                   encoding_refused, retry_delay, settle, temporary_name, to_fetch, too_big)
from .local import is_contained

ANON_ENV = "TGLC_S3_ANON"  # "0" (or "false", "no"): sign requests with the usual AWS credentials
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# seconds; no byte for a deadline's window is below any floor (a trickle is net.Pace's to catch)
CONNECT_TIMEOUT, READ_TIMEOUT = 5, net.DEADLINE.window
CHECK_TIMEOUT = 10  # seconds for check() to answer, whatever the endpoint does
_CHUNK = 1 << 18
_RETRY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                          "ServiceUnavailable", "RequestLimitExceeded"})
_NETWORK_ERRORS = (HTTPClientError, BotoConnectionError, IncompleteReadError, FlexibleChecksumError,
                   ResponseParserError, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class _ShortBody(Exception):
    pass


# ---- one file system per worker process ------------------------------------------------------------------------
_filesystems: dict[tuple, s3fs.S3FileSystem] = {}
_filesystems_lock = threading.Lock()


def _new_filesystem(anon: bool, endpoint: str | None, connections: int) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        anon=anon, endpoint_url=endpoint, skip_instance_cache=True,
        config_kwargs={"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
                       "max_pool_connections": connections, "retries": {"total_max_attempts": 1}})


def _filesystem(anon: bool, endpoint: str | None, connections: int) -> s3fs.S3FileSystem:
    """This process's file system for these settings. Keyed by process id and kept out of fsspec's instance cache,
    so that a forked worker never uses its parent's connections or event loop."""
    key = (os.getpid(), anon, endpoint, connections)
    with _filesystems_lock:
        if key not in _filesystems:
            _filesystems[key] = _new_filesystem(anon, endpoint, connections)
        return _filesystems[key]


def _error_code(exc: ClientError) -> tuple[str, int]:
    return exc.response.get("Error", {}).get("Code", ""), exc.response.get("ResponseMetadata", {}).get(
        "HTTPStatusCode", 0)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return code in _RETRY_CODES or status >= 500
    return isinstance(exc, (*_NETWORK_ERRORS, _ShortBody, net.TooSlow))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, net.TooSlow):
        return str(exc)
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in ("NoSuchKey", "404"):
            return "not found (NoSuchKey)"
        return f"{code or status}: {exc.response.get('Error', {}).get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"


class S3Source(Source):
    """``s3://BUCKET/PREFIX``: the tree below PREFIX is laid out as MAST's (``download_scripts/``, ...).
    ``connections``: GETs in flight per process; ``max_attempts``: tries per object; ``max_wait``: the longest
    pause between two tries (seconds); ``deadline`` and ``listing_deadline``: how slow a light curve's and a
    listing's body may be (:class:`net.Deadline`)."""

    def __init__(self, url: str, connections: int = DEFAULT_CONNECTIONS, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_wait: float = DEFAULT_MAX_WAIT,
                 deadline: net.Deadline = net.DEADLINE, listing_deadline: net.Deadline = net.LISTING_DEADLINE):
        self.deadline, self.listing_deadline = deadline, listing_deadline
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"{url}: give an S3 location as s3://BUCKET/PREFIX")
        self.url = url
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.connections, self.max_attempts, self.max_wait = int(connections), int(max_attempts), float(max_wait)
        self.anon = os.environ.get(ANON_ENV, "1").strip().lower() not in ("0", "false", "no")
        self.endpoint = next((os.environ[name] for name in ENDPOINT_ENVS if os.environ.get(name)), None)

    def describe(self) -> str:
        return self.url if self.endpoint is None else f"{self.url} at {self.endpoint}"

    def _key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def _fs(self) -> s3fs.S3FileSystem:
        return _filesystem(self.anon, self.endpoint, self.connections)

    # ---- check -------------------------------------------------------------------------------------------------
    def check(self, listings: bool = True) -> None:
        fs = _new_filesystem(self.anon, self.endpoint, 1)  # not cached: credentials as they are now
        try:
            found = sync(fs.loop, asyncio.wait_for, self._probe(fs), CHECK_TIMEOUT)
        except ClientError as exc:
            code, _ = _error_code(exc)
            if code == "NoSuchBucket":
                raise UsageError(f"{self.describe()}: bucket {self.bucket!r} does not exist") from None
            if code in ("AccessDenied", "403") and self.anon:
                raise UsageError(f"{self.describe()}: access denied to anonymous requests; set {ANON_ENV}=0 to "
                                 "sign them with your AWS credentials") from None
            raise UsageError(f"{self.describe()}: {_reason(exc)}") from None
        except NoCredentialsError:
            raise UsageError(f"{self.describe()}: {ANON_ENV}=0 asks for AWS credentials and none were found; set "
                             f"them up, or unset {ANON_ENV} to read anonymously") from None
        except (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            # unreachable or invalid endpoint, timeout, DNS, TLS...
            where = self.endpoint or "AWS"
            raise UsageError(f"{self.describe()}: cannot reach the S3 endpoint {where} ({_reason(exc)}); check the "
                             f"network or {ENDPOINT_ENVS[1]}") from None
        if not found:
            raise UsageError(f"{self.describe()}: nothing under this prefix; give the s3://BUCKET/PREFIX that holds "
                             "download_scripts/, target_lists/ and sSSSS/")

    async def _probe(self, fs: s3fs.S3FileSystem) -> bool:
        s3 = await fs.set_session()
        listed = await s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        return bool(listed.get("KeyCount"))

    # ---- one object to a local file, retried -------------------------------------------------------------------
    async def _get(self, s3, key: str, tmp: Path, disk: Path, max_size: int | None = None,
                   deadline: net.Deadline | None = None) -> tuple[int, dict]:
        """Stream ``key`` to ``tmp``; return the attempts it took and the response. Raises SourceError (tmp
        removed) or DiskFull (``disk``: the folder to name)."""
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    return attempts, await self._stream(s3, key, tmp, max_size, deadline or self.deadline)
                except Refused as exc:
                    exc.attempts = attempts
                    raise
                except Exception as exc:
                    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                        raise DiskFull(disk, exc) from None
                    if not _retryable(exc):
                        if isinstance(exc, (ClientError, BotoCoreError)):
                            raise SourceError(f"s3://{self.bucket}/{key}", _reason(exc), attempts,
                                              permanent=True) from None
                        raise
                    if attempts >= self.max_attempts:
                        raise SourceError(f"s3://{self.bucket}/{key}", _reason(exc), attempts) from None
                await asyncio.sleep(retry_delay(attempts, cap=self.max_wait))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def _stream(self, s3, key: str, tmp: Path, max_size: int | None = None,
                      deadline: net.Deadline = net.DEADLINE) -> dict:
        """One GET of ``key`` to ``tmp``: refused (:class:`Refused`) when stored with a content coding or beyond
        ``max_size`` bytes (announced, or while read); abandoned (``net.TooSlow``) when slower than ``deadline``."""
        response = await s3.get_object(Bucket=self.bucket, Key=key)
        body, expected = response["Body"], response["ContentLength"]
        try:
            where = f"s3://{self.bucket}/{key}"
            refused = encoding_refused(where, response.get("ContentEncoding"))
            if refused is None and max_size is not None and expected > max_size:
                refused = too_big(where, max_size, expected)
            if refused is not None:
                raise refused
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                pace = net.Pace(out, deadline, where, max_size)
                while chunk := await body.read(_CHUNK):  # what has arrived, up to _CHUNK
                    pace.write(chunk)
        finally:
            body.close()
        if pace.received != expected:
            raise _ShortBody(f"body of {pace.received} bytes, the object has {expected}")
        return response

    # ---- listings ----------------------------------------------------------------------------------------------
    def list_sectors(self) -> list[int]:
        """The objects under ``PREFIX/download_scripts/`` (one listing of keys, paginated by s3fs)."""
        fs = self._fs()
        try:
            keys = fs.ls(f"{self.bucket}/{self._key(layout.DOWNLOAD_SCRIPTS)}/", detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except (ClientError, BotoCoreError, OSError) as exc:
            raise UsageError(f"cannot list {self.url}/{layout.DOWNLOAD_SCRIPTS}/ ({_reason(exc)}); give the "
                             "sectors explicitly, e.g. -s 1-13") from None
        return layout.sectors_of_names(key.rsplit("/", 1)[-1] for key in keys)

    def fetch_listing(self, relpath: str, dest: Path) -> ListingCopy:
        if not is_contained(relpath):
            raise SourceError(relpath, "not a relative path inside the bucket", 0, permanent=True)
        fs = self._fs()
        tmp = temporary_name(dest)

        async def copy() -> tuple[int, dict]:
            return await self._get(await fs.set_session(), self._key(relpath), tmp, dest.parent, MAX_LISTING_BYTES,
                                   self.listing_deadline)

        _, response = sync(fs.loop, copy)
        os.replace(tmp, dest)
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        validators = {"ETag": response.get("ETag"), "Last-Modified": headers.get("last-modified"),
                      "Content-Length": str(response["ContentLength"])}
        return ListingCopy(response["ContentLength"], {k: v for k, v in validators.items() if v})

    # ---- light curves ------------------------------------------------------------------------------------------
    def fetch_many(self, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                   context: TaskContext) -> Iterator[tuple[int, Fetched | Failure]]:
        """GETs run ``connections`` at a time on the event loop, at most ``WINDOW`` x ``connections`` items ahead
        of the item being yielded; each whole file is validated here, in the consuming thread. It never hands over
        (the event loop's connections are not shared out between calls): the next unit waits."""
        fits_dir = Path(fits_dir)
        transfers = _Transfers(self, self._fs(), fits_dir)
        temporary: dict[int, Path] = {}  # items being fetched -> their temporary names
        window, ahead = WINDOW * self.connections, 0  # items[:ahead] are started, or need no fetching
        try:
            for i, (gaia, relpath) in enumerate(items):
                if context.stopping():
                    return
                if ahead <= i + window // 2:
                    started = range(ahead, min(len(items), i + window))
                    temporary.update((j, tmp) for j in started
                                     if (tmp := _temporary_name(fits_dir, items[j][1])) is not None)
                    transfers.start([(j, self._key(items[j][1]), temporary[j]) for j in started if j in temporary])
                    ahead = started.stop
                if i not in temporary:
                    if not is_contained(relpath):
                        yield i, Failure(gaia, relpath, "download", "not a relative path inside the bucket", 0)
                    else:
                        yield i, Fetched(fits_dir / relpath, downloaded=False)
                    continue
                outcome = transfers.outcome(i, context.stopping)
                if outcome is None:
                    return
                if isinstance(outcome, SourceError):
                    yield i, Failure(gaia, relpath, "download", outcome.reason, outcome.attempts)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    yield i, settle(temporary.pop(i), fits_dir, relpath, i, gaia, validate, outcome)
        finally:
            transfers.cancel()
            for tmp in temporary.values():
                tmp.unlink(missing_ok=True)

def _temporary_name(fits_dir: Path, relpath: str) -> Path | None:
    """Where ``relpath`` is fetched to before it is checked; None when it needs no fetching (or is refused)."""
    return to_fetch(fits_dir / relpath) if is_contained(relpath) else None


class _Transfers:
    """The GETs of one ``fetch_many`` on the file system's event loop, reported to the consuming thread."""

    def __init__(self, source: S3Source, fs: s3fs.S3FileSystem, fits_dir: Path):
        self.source, self.fs, self.fits_dir = source, fs, fits_dir
        self.arrived: queue.SimpleQueue = queue.SimpleQueue()  # (item, attempts | exception)
        self.arrivals: dict[int, int | Exception] = {}
        self.tasks: list[asyncio.Task] = []
        self.gate: asyncio.Semaphore | None = None

    def start(self, jobs: list[tuple[int, str, Path]]) -> None:
        """Queue ``(item, key, temporary name)`` jobs."""
        if jobs:
            sync(self.fs.loop, self._start, jobs)

    async def _start(self, jobs: list[tuple[int, str, Path]]) -> None:
        s3 = await self.fs.set_session()
        self.gate = self.gate or asyncio.Semaphore(self.source.connections)
        self.tasks = [task for task in self.tasks if not task.done()]
        self.tasks += [asyncio.create_task(self._one(s3, *job)) for job in jobs]

    async def _one(self, s3, i: int, key: str, tmp: Path) -> None:
        try:
            async with self.gate:
                attempts, _ = await self.source._get(s3, key, tmp, self.fits_dir)
            self.arrived.put((i, attempts))
        except Exception as exc:  # handed over to the consuming thread
            self.arrived.put((i, exc))

    def outcome(self, i: int, stopping: Callable[[], bool]) -> int | Exception | None:
        """Item ``i``'s attempts or error, once it has arrived; None when ``stopping()`` first."""
        while i not in self.arrivals:
            try:
                j, outcome = self.arrived.get(timeout=0.2)
            except queue.Empty:
                if stopping():
                    return None
                continue
            self.arrivals[j] = outcome
        return self.arrivals.pop(i)

    def cancel(self) -> None:
        """Cancel what is queued or in flight, and wait until every task has removed its temporary file."""
        if self.tasks:
            sync(self.fs.loop, self._cancel)

    async def _cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
