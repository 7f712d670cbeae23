"""The local archive: a :class:`SyntheticSector` served in MAST's TGLC layout over real HTTP on 127.0.0.1."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import logging
import re
import socket
import sys
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from .. import layout
from .sector import SyntheticSector, release

log = logging.getLogger(__name__)

# TESS's sectors as this version knows them: through Cycle 8 (to September 2026). The demo makes up a sector of any
# number; a build from it warns beyond this one (a real archive answers 404 for a sector it does not have).
LAST_TESS_SECTOR = 107
FAULTS = ("429", "500", "truncate", "reset")
FAULTY_ATTEMPTS = 2  # faults hit only a file's first two requests, so every file arrives within three
LISTING_MODES = ("length", "chunked", "close")
LISTING_DATE = email.utils.formatdate(1_700_000_000, usegmt=True)  # the listings' Last-Modified
_CHUNK = 1 << 14  # bytes per chunk of a chunked listing


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as MAST
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        archive = self.server.archive
        relpath = unquote(urlsplit(self.path).path).lstrip("/")
        attempt = archive._count(relpath)
        try:
            if archive.latency:
                time.sleep(archive.latency)
        finally:
            archive._answered()  # before the answer is sent: once it is, the client may ask again at once
        if relpath.rstrip("/") == layout.DOWNLOAD_SCRIPTS:
            return self._answer(200, archive.index_page(), {"Content-Type": "text/html;charset=ISO-8859-1"})
        listing = archive._listing(relpath)
        if listing is not None:
            return self._send_listing(*listing, cut=attempt < archive.listing_cuts)
        body = archive._fits(relpath)
        if body is None:
            return self._answer(404, b"not found\n")
        fault = archive._fault(relpath, attempt)
        if fault == "429":
            return self._answer(429, b"slow down\n", {"Retry-After": str(archive.retry_after)})
        if fault == "500":
            return self._answer(500, b"internal error\n")
        if fault == "reset":
            # RST instead of an answer: what a dropped connection looks like to the client
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return None
        if fault == "truncate":
            self.close_connection = True
            return self._answer(200, body, cut=len(body) // 2)
        return self._answer(200, body)

    def _answer(self, status: int, body: bytes, headers: dict | None = None, cut: int | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        self.send_header("Content-Type", headers.pop("Content-Type", None) or
                         ("application/fits" if status == 200 else "text/plain"))
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])

    def _send_listing(self, body: bytes, etag: str, cut: bool) -> None:
        """A listing in the archive's listing mode; ``cut``: only its lines up to about the middle, then close."""
        mode = self.server.archive.listing_mode
        if mode == "close":
            self.protocol_version = "HTTP/1.0"  # the body ends where the connection does
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", LISTING_DATE)
        if mode == "length":
            self.send_header("Content-Length", str(len(body)))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        end = body.rfind(b"\n", 0, len(body) // 2) + 1 if cut else len(body)
        data = memoryview(body)[:end]
        if mode == "chunked":
            for start in range(0, len(data), _CHUNK):
                piece = data[start:start + _CHUNK]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if not cut:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(data)
        if cut or mode == "close":
            self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    archive: LocalArchive

    def handle_error(self, request, client_address) -> None:
        """A client that goes away mid-answer (a killed worker, Ctrl-C) is routine here, not a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("%s went away: %s", client_address, sys.exc_info()[1])
        else:
            super().handle_error(request, client_address)


class LocalArchive:
    """Serve a :class:`SyntheticSector` in MAST's TGLC layout on ``http://127.0.0.1:<port>`` (a background thread).

    ``sector``, ``n``, ``seed``, ``flavour``, ``tamper`` and ``extra_listing_lines`` make the sector (see
    :class:`SyntheticSector`). ``latency`` delays every answer (seconds). ``faults`` maps ``"429"``, ``"500"``,
    ``"truncate"`` (a body cut short) and ``"reset"`` (the connection reset) to the fraction of FITS requests answered
    that way; which requests is decided by a hash of the path, so runs repeat exactly, and only a file's first two
    requests are hit. ``retry_after`` is the ``Retry-After`` of the 429 answers (seconds).

    Listings carry an ``ETag`` (the quoted SHA-256 of the body) and ``Last-Modified``. ``listing_mode`` is how their
    length is told: ``"length"`` (``Content-Length``), ``"chunked"`` (``Transfer-Encoding: chunked``) or ``"close"``
    (HTTP/1.0 style: neither; the body ends when the server closes the connection). The first ``listing_cuts``
    requests of each listing get only its lines up to about the middle, then the connection is closed: fewer bytes
    than ``Content-Length``, no final chunk, or, in ``"close"`` mode, nothing to tell. Later requests get it whole.

    ``pregenerate`` makes every light curve once, at :meth:`start` (CCD by CCD, at numpy speed, ~60 KB each in
    memory), so that an answer costs only HTTP: made one by one on request, a file costs the archive ~1-3 ms of CPU,
    which on a small machine it takes from the client being measured. The bytes are the same either way.

    ``sectors`` serves a release instead of one sector: the sectors of :func:`.sector.release` (stars that recur
    across sectors, a star listed twice in each), ``n`` light curves each; ``release`` maps each sector to its
    :class:`SyntheticSector` (one entry without ``sectors``) and ``sector`` is the first. ``download_scripts/`` is an
    HTML index page linking each sector's bulk-download script, as MAST's web server writes it (``index=False``: a
    page that links none).
    """

    def __init__(self, sector: int = 23, n: int = 1000, seed: int = 0, *, sectors: Sequence[int] | None = None,
                 index: bool = True, flavour: str = "v1",
                 tamper: Mapping[int, Mapping[str, object]] | None = None, extra_listing_lines: Iterable[str] = (),
                 latency: float = 0.0, faults: Mapping[str, float] | None = None, retry_after: int = 1,
                 listing_mode: str = "length", listing_cuts: int = 0, host: str = "127.0.0.1", port: int = 0,
                 pregenerate: bool = False):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; choose from {FAULTS}")
        if listing_mode not in LISTING_MODES:
            raise ValueError(f"unknown listing mode {listing_mode!r}; choose from {LISTING_MODES}")
        options = {"flavour": flavour, "tamper": tamper, "extra_listing_lines": extra_listing_lines}
        if sectors is None:
            self.release = {int(sector): SyntheticSector(sector, n, seed, **options)}
        else:
            self.release = release(sectors, n, seed, **options)
        self.sector = next(iter(self.release.values()))
        self.index = index
        self.latency, self.faults, self.retry_after = float(latency), dict(faults or {}), int(retry_after)
        self.listing_mode, self.listing_cuts = listing_mode, int(listing_cuts)
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._in_flight = self._most_in_flight = 0
        self._listings: dict[str, tuple[bytes, str]] = {}
        self.pregenerate = pregenerate
        self._made: dict[tuple[int, int], bytes] = {}

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the archive is not running: call start() first")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def identity(self) -> str | None:
        """A stable name of what this archive serves (the same bytes every run, whatever the port): the listings
        fetched from it are reused by the next run. None when tampered with (tests' archives)."""
        s = self.sector
        if s.tamper or s.extra_listing_lines:
            return None
        served = f"sector={s.sector}" if len(self.release) == 1 else f"sectors={','.join(map(str, self.release))}"
        return f"demo:{served},n={s.n},seed={s.seed}" + ("" if s.flavour == "v1" else f",flavour={s.flavour}")

    def start(self) -> LocalArchive:
        if self.pregenerate and not self._made:
            self._made = {(number, i): bytes(file) for number, sector in self.release.items()
                          for i, file in sector.fits_files()}
        self._server = _Server((self.host, self.port), _Handler)
        self._server.archive = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="tglc-archive", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalArchive:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request_count(self) -> int:
        """Requests answered so far (listings, light curves, 404s, faults)."""
        with self._lock:
            return sum(self._requests.values())

    def most_in_flight(self) -> int:
        """The most requests it had at the same moment between their arrival and their answer (its latency)."""
        with self._lock:
            return self._most_in_flight

    def fits_requests(self) -> dict[str, int]:
        """Requests per light-curve path (relative to the archive root)."""
        with self._lock:
            return {path: k for path, k in self._requests.items() if path.endswith(".fits")}

    # -- serving ----------------------------------------------------------------------------------------------------
    def _count(self, relpath: str) -> int:
        with self._lock:
            attempt = self._requests[relpath]
            self._requests[relpath] += 1
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)
        return attempt

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def index_page(self) -> bytes:
        """``download_scripts/`` as Apache lists a folder: sorting links, the parent, then one link per file."""
        names = [layout.bulk_script_relpath(s).rsplit("/", 1)[-1] for s in self.release] if self.index else []
        rows = "".join(f'<img src="/icons/text.gif" alt="[TXT]"> <a href="{name}">{name}</a>'
                       f'{" " * (50 - len(name))}2023-11-14 22:13  304K\n' for name in names)
        return ('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
                '  <title>Index of /hlsps/tglc/download_scripts</title>\n </head>\n <body>\n'
                '<h1>Index of /hlsps/tglc/download_scripts</h1>\n<pre><img src="/icons/blank.gif" alt="Icon "> '
                '<a href="?C=N;O=D">Name</a>                    <a href="?C=M;O=A">Last modified</a>      '
                '<a href="?C=S;O=A">Size</a><hr><img src="/icons/back.gif" alt="[PARENTDIR]"> '
                '<a href="/hlsps/tglc/">Parent Directory</a>                             -\n'
                f'{rows}<img src="/icons/text.gif" alt="[TXT]"> <a href="README.txt">README.txt</a>\n'
                '<hr></pre>\n</body></html>\n').encode("latin-1")

    def _listing(self, relpath: str) -> tuple[bytes, str] | None:
        """The listing at ``relpath`` and its ETag (made once), or None when it is not a listing."""
        makers = {}
        for number, sector in self.release.items():
            makers[layout.bulk_script_relpath(number)] = sector.bulk_script
            makers[layout.target_list_relpath(number)] = sector.target_list
        make = makers.get(relpath)
        if make is None:
            return None
        with self._lock:
            if relpath not in self._listings:
                body = make()
                self._listings[relpath] = body, f'"{hashlib.sha256(body).hexdigest()}"'
            return self._listings[relpath]

    def _fits(self, relpath: str) -> bytes | None:
        match = re.fullmatch(layout.LC_RELPATH_PATTERN, relpath)
        sector = self.release.get(int(match.group("sector"))) if match else None
        try:
            i = sector.index_of(relpath) if sector is not None else None
        except KeyError:
            return None
        if i is None:
            return None
        made = self._made.get((sector.sector, i))
        return made if made is not None else sector.fits_bytes(i)

    def _fault(self, relpath: str, attempt: int) -> str | None:
        if attempt >= FAULTY_ATTEMPTS or not self.faults:
            return None
        u = zlib.crc32(f"{self.sector.seed}:{attempt}:{relpath}".encode()) / 2**32
        for name in FAULTS:
            share = self.faults.get(name, 0.0)
            if u < share:
                return name
            u -= share
        return None
