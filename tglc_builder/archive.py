"""A local stand-in for MAST's TGLC collection: a synthetic sector served over real HTTP on 127.0.0.1.

The demo, the tests and the benchmarks all download from it through the same code a real build uses. Everything is
generated deterministically from ``(sector, n, seed)``: the bulk-download script (with the imperfections of a real
one: a shebang, comments, blank lines, CRLF endings, duplicates, Gaia ids shorter than 19 digits), the target list
(which lacks some listed objects and has others that are not served) and every light curve, in the exact layout of a
TGLC v1 file (header cards, columns and formats as in the real files on MAST).

Run it alone and point a build at it::

    python -m tglc_builder.archive --sector 23 --n 5000 --port 8000
    python build_parent_sample.py -s 23 --mast-url http://127.0.0.1:8000 --tiny
"""

from __future__ import annotations

import argparse
import http.server
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import layout
from .reader import BLOCK, CARD

log = logging.getLogger(__name__)

MAST_FILE_URL = "https://archive.stsci.edu/hlsps/tglc"  # what the listing's curl lines name (never fetched)
TARGET_COLUMNS = ("TIC_ID", "GAIADR3_ID", "RA", "DEC", "Tmag")  # not in the order the builder needs them
FAULTS = ("429", "500", "truncate", "reset")
FAULTY_ATTEMPTS = 2  # faults hit only a file's first two requests, so every file arrives within three
RETRY_AFTER = 1  # seconds, in the 429 answers

# The LIGHTCURVE table of a TGLC v1 file: (name, FITS format, numpy dtype), in file order.
COLUMNS = (("time", "D", ">f8"), ("psf_flux", "E", ">f4"), ("aperture_flux", "E", ">f4"),
           ("cal_psf_flux", "E", ">f4"), ("cal_aper_flux", "E", ">f4"), ("background", "E", ">f4"),
           ("cadence_num", "J", ">i4"), ("TESS_flags", "I", ">i2"), ("TGLC_flags", "I", ">i2"))
TABLE_DTYPE = np.dtype([(name, dtype) for name, _, dtype in COLUMNS])


# ---- FITS cards -----------------------------------------------------------------------------------------------
def _format_float(value: float) -> str:
    text = repr(float(value)).upper()
    if "E" in text and "." not in text.split("E")[0]:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}.0E{exponent}"
    return text if len(text) <= 20 else f"{value:.14E}"


def card(key: str, value=None, comment: str = "") -> str:
    """One 80-character header card in FITS fixed format (what astropy writes for these values)."""
    if key == "COMMENT":
        return f"COMMENT {value}".ljust(CARD)[:CARD]
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        text = f"{int(value):>20}"
    elif isinstance(value, (float, np.floating)):
        text = f"{_format_float(value):>20}"
    else:
        text = f"{_fits_string(str(value)):<20}"
    line = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return line.ljust(CARD)[:CARD]


def _fits_string(value: str) -> str:
    return "'" + value.replace("'", "''").ljust(8) + "'"


def header_bytes(cards: list[str]) -> bytes:
    text = "".join(cards) + "END".ljust(CARD)
    return text.encode("ascii").ljust(-(-len(text) // BLOCK) * BLOCK, b" ")


# ---- the synthetic sector ---------------------------------------------------------------------------------------
def _cadence_seconds(sector: int) -> int:
    return 1800 if sector <= 26 else 600 if sector <= 55 else 200


def _distinct_gaia_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct Gaia DR3-like ids in random order: mostly 19 digits, about 3% shorter (down to 10)."""
    found = np.empty(0, np.int64)
    while len(found) < n:
        k = int((n - len(found)) * 1.05) + 16
        long_ids = rng.integers(10**18, 6_917_528_997_577_384_320, k, dtype=np.int64)
        short_ids = (10 ** rng.uniform(9, 18, k)).astype(np.int64)
        draw = np.where(rng.random(k) < 0.03, short_ids, long_ids)
        candidates = np.concatenate([found, draw])
        order = np.argsort(candidates, kind="stable")  # equal ids keep their order: the first one stays
        repeated = np.zeros(len(candidates), bool)
        repeated[order[1:][candidates[order[1:]] == candidates[order[:-1]]]] = True
        found = candidates[~repeated]
    return found[:n]


class SyntheticSector:
    """A deterministic sector of ``n`` served light curves; arrays are in listing order (index ``i``)."""

    def __init__(self, sector: int, n: int, seed: int = 0):
        if n < 1:
            raise ValueError("a synthetic sector needs at least one object")
        self.sector, self.n, self.seed = int(sector), int(n), int(seed)
        rng = np.random.default_rng([self.seed, self.sector, self.n])
        # ~3% more ids: objects the target list names but the archive does not serve
        ids = _distinct_gaia_ids(rng, n + max(1, n * 3 // 100))
        self.gaia_ids, self.unserved_gaia_ids = ids[:n], ids[n:]
        self.cam = rng.integers(1, 5, n).astype(np.int16)
        u_ra, u_dec = rng.random(n), rng.random(n)
        self.ccd = (1 + (u_ra >= 0.5) + 2 * (u_dec >= 0.5)).astype(np.int16)
        # Four 24-degree camera fields stacked in declination, like a southern sector.
        ra0 = (self.sector * 27.7) % 360
        self.ra = np.mod(ra0 + 24 * (u_ra - 0.5), 360.0)
        self.dec = np.where(self.cam < 4, -6 - 24 * (self.cam - 1) - 24 * u_dec, -78 - 11.9 * u_dec)
        self.tic_ids = rng.integers(1, 2_000_000_000, n, dtype=np.int64)
        self.tessmag = rng.uniform(6.0, 16.0, n)
        self.in_target_list = rng.random(n) >= 0.07  # ~7% of the listed objects are missing from the target list
        # ~1% of the objects are listed twice, the second time further down.
        self.duplicated = np.flatnonzero(rng.random(n) < 0.01)
        self._dup_keys = self.duplicated + rng.uniform(0.5, 1.0, len(self.duplicated)) * (n - self.duplicated)
        self._target_order = rng.permutation(int(self.in_target_list.sum()) + len(self.unserved_gaia_ids))
        self._sorted = np.argsort(self.gaia_ids)
        self._ccd_cache: dict[tuple[int, int], tuple] = {}

    # -- where things are ------------------------------------------------------------------------------------------
    def relpath(self, i: int) -> str:
        return layout.lc_relpath(int(self.gaia_ids[i]), self.sector, int(self.cam[i]), int(self.ccd[i]))

    def index_of(self, relpath: str) -> int:
        """The object served at ``relpath`` (relative to the archive root); KeyError when there is none."""
        match = re.fullmatch(layout.LC_RELPATH_PATTERN, relpath)
        if match is None:
            raise KeyError(relpath)
        gaia = int(match.group("gaia"))
        pos = int(np.searchsorted(self.gaia_ids, gaia, sorter=self._sorted))
        if pos == self.n or self.gaia_ids[self._sorted[pos]] != gaia:
            raise KeyError(relpath)
        i = int(self._sorted[pos])
        if self.relpath(i) != relpath:
            raise KeyError(relpath)
        return i

    def expected_catalog_indices(self) -> np.ndarray:
        """Indices of the objects a correct catalog holds, in its order: in both listings, first listing first."""
        return np.flatnonzero(self.in_target_list)

    def n_cadences(self, cam: int, ccd: int) -> int:
        base = {1800: 1282, 600: 3500, 200: 10700}[_cadence_seconds(self.sector)]
        return base - 2 * ((cam - 1) * 4 + (ccd - 1))  # light curves of one sector differ in length by CCD

    # -- the two listings ------------------------------------------------------------------------------------------
    def bulk_script(self) -> bytes:
        """The bulk-download script, as MAST writes it (and with the imperfections of a real one)."""
        order = np.argsort(np.concatenate([np.arange(self.n, dtype=float), self._dup_keys]), kind="stable")
        index = np.concatenate([np.arange(self.n), self.duplicated])[order]
        rel = pa.array(layout.lc_relpaths(self.gaia_ids[index], self.sector, self.cam[index], self.ccd[index])).cast(
            pa.string())
        # CRLF on every 7th line, as when a file passed through another system
        eol = pc.if_else(pa.array(np.arange(len(index)) % 7 == 3), "\r\n", "\n")
        lines = pc.binary_join_element_wise("curl -f --create-dirs --output '", rel, f"' {MAST_FILE_URL}/", rel,
                                            eol, "")
        head = f"#!/bin/sh\n# TGLC light curves of sector {self.sector}\n\n".encode()
        middle = len(index) // 2
        return b"".join([head, *_pieces(lines.slice(0, middle)), b"\n# -- second half --\n",
                         *_pieces(lines.slice(middle))])

    def target_list(self) -> bytes:
        """The target list: a CSV with a '#' header, objects in another order than the script."""
        served = np.flatnonzero(self.in_target_list)
        rng = np.random.default_rng([self.seed, self.sector, self.n, 1])
        k = len(self.unserved_gaia_ids)
        columns = {
            "TIC_ID": np.concatenate([self.tic_ids[served], rng.integers(1, 2_000_000_000, k)]),
            "GAIADR3_ID": np.concatenate([self.gaia_ids[served], self.unserved_gaia_ids]),
            "RA": np.concatenate([self.ra[served], rng.uniform(0, 360, k)]),
            "DEC": np.concatenate([self.dec[served], rng.uniform(-90, 90, k)]),
            "Tmag": np.concatenate([self.tessmag[served], rng.uniform(6, 16, k)]),
        }
        # Arrow writes the shortest text that reads back as the same double, so RA and DEC round-trip exactly.
        text = [pc.cast(pa.array(columns[name][self._target_order]), pa.string()) for name in TARGET_COLUMNS]
        lines = pc.binary_join_element_wise(*_interleave(text, ","), "\n", "")
        return b"".join([("#" + ",".join(TARGET_COLUMNS) + "\n").encode(), *_pieces(lines)])

    # -- light curves -----------------------------------------------------------------------------------------------
    def _ccd_columns(self, cam: int, ccd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """What every star of one CCD shares: the FFI times, the SPOC flags, TGLC's scattered-light flag."""
        if (cam, ccd) not in self._ccd_cache:
            self._ccd_cache[cam, ccd] = self._make_ccd_columns(cam, ccd)
        return self._ccd_cache[cam, ccd]

    def _make_ccd_columns(self, cam: int, ccd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        length = self.n_cadences(cam, ccd)
        rng = np.random.default_rng([self.seed, self.sector, cam, ccd])
        timedel = _cadence_seconds(self.sector) / 86400
        tstart = 1325.293 + 27.4 * (self.sector - 1) + 1e-4 * cam + 3e-5 * ccd
        time_ = tstart + (np.arange(length) + 0.5) * timedel + 2e-4 * np.sin(np.arange(length) / 97.0)
        tess = np.zeros(length, np.int16)
        for bit in (4, 32, 128, 1024, 2048):
            tess[rng.choice(length, max(1, length // 200), replace=False)] |= bit
        tglc = np.zeros(length, np.int16)
        start = int(rng.integers(0, length - length // 10))
        tglc[start:start + length // 10] |= 1  # scattered light
        return time_, tess, tglc, tstart, timedel

    def fits_bytes(self, i: int) -> bytes:
        """The TGLC v1 file of object ``i``, byte for byte what the archive serves (well under a millisecond)."""
        cam, ccd = int(self.cam[i]), int(self.ccd[i])
        time_, tess, tglc, tstart, timedel = self._ccd_columns(cam, ccd)
        length = len(time_)
        rng = np.random.default_rng([self.seed, self.sector, i, 2])
        flux = 15000.0 * 10 ** (-0.4 * (self.tessmag[i] - 10.0))
        noise = np.sqrt(flux) * 3 + 5
        table = np.empty(length, TABLE_DTYPE)
        table["time"] = time_
        psf = (flux + noise * rng.standard_normal(length)).astype(np.float32)
        aper = (flux * 0.93 + noise * rng.standard_normal(length)).astype(np.float32)
        psf[rng.integers(0, length, 2)] = np.nan  # a few cadences without a PSF fit
        table["psf_flux"], table["aperture_flux"] = psf, aper
        table["cal_psf_flux"] = psf / np.float32(flux)
        table["cal_aper_flux"] = aper / np.float32(flux * 0.93)
        table["background"] = (40 + 5 * rng.standard_normal(length)).astype(np.float32)
        table["cadence_num"] = np.arange(length, dtype=np.int32) + 4697 + 1000 * self.sector
        table["TESS_flags"] = tess
        near_edge = bool(rng.random() < 0.05)
        table["TGLC_flags"] = tglc | np.int16(2) if near_edge else tglc
        data = table.tobytes()
        data += b"\0" * (-len(data) % BLOCK)
        return self._primary_header(i) + self._table_header(i, length, tstart, timedel, psf, aper, near_edge) + data

    def _ids(self, i: int) -> tuple[int, str, float, float]:
        return int(self.gaia_ids[i]), str(int(self.tic_ids[i])), float(self.ra[i]), float(self.dec[i])

    def _primary_header(self, i: int) -> bytes:
        gaia, tic, ra, dec = self._ids(i)
        rng = np.random.default_rng([self.seed, self.sector, i, 3])
        tmag = float(self.tessmag[i])
        g = float(np.float32(tmag + 0.35 + 0.1 * rng.standard_normal()))
        return header_bytes([
            card("SIMPLE", True, "conforms to FITS standard"),
            card("BITPIX", 8, "array data type"),
            card("NAXIS", 0, "number of array dimensions"),
            card("EXTEND", True),
            card("NEXTEND", 1, "number of standard extensions"),
            card("EXTNAME", "PRIMARY", "name of extension"),
            card("EXTDATA", "aperture", "decontaminated FFI cut for aperture photometry"),
            card("EXTVER", 1, "extension version"),
            card("TIMESYS", "TDB", "TESS Barycentric Dynamical Time"),
            card("BUNIT", "e-/s", "flux unit"),
            card("STAR_X", float(rng.uniform(1, 3)), "star x position in cut"),
            card("STAR_Y", float(rng.uniform(1, 3)), "star y position in cut"),
            card("COMMENT", "hdul[0].data[:,star_y,star_x]=lc"),
            card("ORIGIN", "UCSB/TGLC", "institution responsible for creating this file"),
            card("TELESCOP", "TESS", "telescope"),
            card("INSTRUME", "TESS Photometer", "detector type"),
            card("FILTER", "TESS", "the filter used for the observations"),
            card("OBJECT", f"Gaia DR3 {gaia}", "string version of Gaia DR3 ID"),
            card("GAIADR3", gaia, "integer version of Gaia DR3 ID"),
            card("TICID", tic, "TESS Input Catalog ID"),
            card("SECTOR", self.sector, "observation sector"),
            card("CAMERA", int(self.cam[i]), "camera No."),
            card("CCD", int(self.ccd[i]), "CCD No."),
            card("CUT_X", int(rng.integers(0, 14)), "FFI cut x index"),
            card("CUT_Y", int(rng.integers(0, 14)), "FFI cut y index"),
            card("CUTSIZE", 150, "FFI cut size"),
            card("RADESYS", "ICRS", "reference frame of celestial coordinates"),
            card("RA_OBJ", ra, "[deg] right ascension, J2000"),
            card("DEC_OBJ", dec, "[deg] declination, J2000"),
            card("TESSMAG", tmag, "TESS magnitude, fitted by Gaia DR3 bands"),
            card("GAIA_G", g, "Gaia DR3 g band magnitude"),
            card("GAIA_BP", float(np.float32(g + 0.3)), "Gaia DR3 bp band magnitude"),
            card("GAIA_RP", float(np.float32(g - 0.45)), "Gaia DR3 rp band magnitude"),
            card("RAWFLUX", float(np.float32(15000.0 * 10 ** (-0.4 * (tmag - 10.0)))), "median flux of raw FFI"),
            card("CALIB", "TGLC", "pipeline used for image calibration"),
        ])

    def _table_header(self, i: int, length: int, tstart: float, timedel: float, psf: np.ndarray, aper: np.ndarray,
                      near_edge: bool) -> bytes:
        gaia, _, ra, dec = self._ids(i)
        tstop = tstart + length * timedel
        psf_err, aper_err = float(np.nanstd(psf.astype(np.float64))), float(np.std(aper.astype(np.float64)))
        flux = float(np.nanmedian(psf))
        cards = [
            card("XTENSION", "BINTABLE", "binary table extension"),
            card("BITPIX", 8, "array data type"),
            card("NAXIS", 2, "number of array dimensions"),
            card("NAXIS1", TABLE_DTYPE.itemsize, "length of dimension 1"),
            card("NAXIS2", length, "length of dimension 2"),
            card("PCOUNT", 0, "number of group parameters"),
            card("GCOUNT", 1, "number of groups"),
            card("TFIELDS", len(COLUMNS), "number of table fields"),
        ]
        for k, (name, fmt, _) in enumerate(COLUMNS, start=1):
            cards += [card(f"TTYPE{k}", name), card(f"TFORM{k}", fmt)]
        cards += [
            card("INHERIT", "T", "inherit the primary header"),  # sic: a string in TGLC v1 files
            card("EXTNAME", "LIGHTCURVE", "name of extension"),
            card("EXTVER", 1, "extension version"),
            card("TELESCOP", "TESS", "telescope"),
            card("INSTRUME", "TESS Photometer", "detector type"),
            card("FILTER", "TESS", "the filter used for the observations"),
            card("OBJECT", f"Gaia DR3 {gaia}", "string version of Gaia DR3 ID"),
            card("GAIADR3", gaia, "integer version of GaiaDR3 designation"),
            card("RADESYS", "ICRS", "reference frame of celestial coordinates"),
            card("RA_OBJ", ra, "[deg] right ascension, J2000"),
            card("DEC_OBJ", dec, "[deg] declination, J2000"),
            card("TIMEREF", "SOLARSYSTEM", "barycentric correction applied to times"),
            card("TASSIGN", "SPACECRAFT", "where time is assigned"),
            card("BJDREFI", 2457000, "integer part of BJD reference date"),
            card("BJDREFR", 0.0, "fraction of the day in BJD reference date"),
            card("TIMESYS", "TDB", "TESS Barycentric Dynamical Time"),
            card("TIMEUNIT", "d", "time unit for TIME"),
            card("TELAPS", tstop - tstart, "[d] TSTOP-TSTART"),
            card("TSTART", tstart, "[d] observation start time in TBJD"),
            card("TSTOP", tstop, "[d] observation end time in TBJD"),
            card("MJD_BEG", tstart + 56999.5, "[d] start time in barycentric MJD"),
            card("MJD_END", tstop + 56999.5, "[d] end time in barycentric MJD"),
            card("TIMEDEL", timedel, "[d] time resolution of data"),
            card("XPTIME", _cadence_seconds(self.sector), "[s] exposure time"),
            card("PSF_ERR", psf_err, "[e-/s] PSF flux error"),
            card("APER_ERR", aper_err, "[e-/s] aperture flux error"),
            card("CPSF_ERR", psf_err / flux, "[e-/s] calibrated PSF flux error"),
            card("CAPE_ERR", aper_err / flux, "[e-/s] calibrated aperture flux error"),
            card("NEAREDGE", near_edge, "distance to edges of FFI <= 2"),
            card("LOC_BG", 1255.071543953949 + 0.5 * (i % 97), "locally modified background"),
            card("COMMENT", "TRUE_BG = hdul[1].data['background'] + LOC_BG"),
            card("WOTAN_WL", 1, "wotan detrending window length"),
            card("WOTAN_MT", "biweight", "wotan detrending method"),
        ]
        return header_bytes(cards)


def _interleave(items: list, separator: str) -> list:
    out = []
    for item in items:
        out += [item, separator]
    return out[:-1]


def _pieces(strings: pa.Array | pa.ChunkedArray) -> list[memoryview]:
    """The values of a string array back to back, as views of its data buffers (no Python object per value)."""
    if isinstance(strings, pa.ChunkedArray):
        return [piece for chunk in strings.chunks for piece in _pieces(chunk)]
    if len(strings) == 0:
        return []
    width = np.int64 if pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type) else np.int32
    offsets = np.frombuffer(strings.buffers()[1], width, len(strings) + 1, strings.offset * np.dtype(width).itemsize)
    return [memoryview(strings.buffers()[2])[offsets[0]:offsets[-1]]]


# ---- the HTTP server --------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as MAST
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        archive = self.server.archive
        relpath = unquote(urlsplit(self.path).path).lstrip("/")
        attempt = archive._count(relpath)
        if archive.latency:
            time.sleep(archive.latency)
        body = archive._lookup(relpath)
        if body is None:
            return self._answer(404, b"not found\n")
        fault = archive._fault(relpath, attempt) if relpath.endswith(".fits") else None
        if fault == "429":
            return self._answer(429, b"slow down\n", {"Retry-After": str(RETRY_AFTER)})
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
        content_type = "application/fits" if self.path.endswith(".fits") else "text/plain"
        self.send_header("Content-Type", content_type if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    archive: "LocalArchive"


class LocalArchive:
    """Serve a :class:`SyntheticSector` in MAST's TGLC layout on ``http://127.0.0.1:<port>`` (a background thread).

    ``latency`` delays every answer (seconds). ``faults`` maps ``"429"``, ``"500"``, ``"truncate"`` (a body cut
    short) and ``"reset"`` (the connection reset) to the fraction of FITS requests answered that way; which requests
    is decided by a hash of the path, so runs repeat exactly, and only a file's first two requests are hit.
    ``extra_listing_lines`` are appended to the bulk-download script (e.g. hostile lines, for tests).
    """

    def __init__(self, sector: int = 23, n: int = 1000, seed: int = 0, *, latency: float = 0.0,
                 faults: dict[str, float] | None = None, extra_listing_lines: list[str] | tuple = (),
                 host: str = "127.0.0.1", port: int = 0):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; choose from {FAULTS}")
        self.sector = SyntheticSector(sector, n, seed)
        self.latency, self.faults = float(latency), dict(faults or {})
        self.extra_listing_lines = list(extra_listing_lines)
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._listings: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the archive is not running: call start() first")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LocalArchive":
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

    def __enter__(self) -> "LocalArchive":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request_count(self) -> int:
        """Requests answered so far (listings, light curves, 404s, faults)."""
        with self._lock:
            return sum(self._requests.values())

    def fits_requests(self) -> dict[str, int]:
        """Requests per light-curve path (relative to the archive root)."""
        with self._lock:
            return {path: k for path, k in self._requests.items() if path.endswith(".fits")}

    # -- serving ----------------------------------------------------------------------------------------------------
    def _count(self, relpath: str) -> int:
        with self._lock:
            attempt = self._requests[relpath]
            self._requests[relpath] += 1
        return attempt

    def _lookup(self, relpath: str) -> bytes | None:
        sector = self.sector
        if relpath == layout.bulk_script_relpath(sector.sector):
            return self._listing(relpath, lambda: sector.bulk_script() + "".join(
                f"{line}\n" for line in self.extra_listing_lines).encode())
        if relpath == layout.target_list_relpath(sector.sector):
            return self._listing(relpath, sector.target_list)
        try:
            return sector.fits_bytes(sector.index_of(relpath))
        except KeyError:
            return None

    def _listing(self, relpath: str, make) -> bytes:
        with self._lock:
            if relpath not in self._listings:
                self._listings[relpath] = make()
            return self._listings[relpath]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tglc_builder.archive",
                                     description="Serve a synthetic TGLC sector in MAST's layout over HTTP.")
    parser.add_argument("--sector", type=int, default=23, help="sector number (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="light curves served (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic sector (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    archive = LocalArchive(args.sector, args.n, args.seed, latency=args.latency, host=args.host,
                           port=args.port).start()
    log.info("Serving a synthetic sector %d of %d light curves at %s (Ctrl-C to stop)", args.sector, args.n,
             archive.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        archive.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
