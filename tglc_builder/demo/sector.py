"""The synthetic sector: its objects, its two listings and every light curve, deterministic from ``(sector, n, seed)``.

The bulk-download script has the imperfections of a real one (a shebang, comments, blank lines, CRLF endings,
duplicates, Gaia ids shorter than 19 digits); the target list lacks ~2% of the listed objects and has ~3% more rows
that are not served; every light curve is in the exact layout of a TGLC v1 file on MAST (or of a v2 file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter as _of
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import layout
from ..reader import BLOCK
from .fits import card, header_rows

MAST_FILE_URL = "https://archive.stsci.edu/hlsps/tglc"  # what the listing's curl lines name (never fetched)
TARGET_COLUMNS = ("TIC_ID", "GAIADR3_ID", "RA", "DEC", "Tmag")  # not in the order the builder needs them
FLAVOURS = ("v1", "v2", "0.8")
TGLC_VERSION = "0.6.6"  # TGLCVER of v2 files
TGLC_VERSION_08, PROCVER_08 = "0.8.0", "spoc-0.8.0"  # TGLCVER and PROCVER of files of tglc 0.8
FILE_VERSION = {"v1": 1, "v2": 2, "0.8": 2}  # the v<k> of each flavour's file names (tglc names its files v2)

# The LIGHTCURVE table of a TGLC file: (name, FITS format, numpy dtype), in file order.
COLUMNS = (("time", "D", ">f8"), ("psf_flux", "E", ">f4"), ("aperture_flux", "E", ">f4"),
           ("cal_psf_flux", "E", ">f4"), ("cal_aper_flux", "E", ">f4"), ("background", "E", ">f4"),
           ("cadence_num", "J", ">i4"), ("TESS_flags", "I", ">i2"), ("TGLC_flags", "I", ">i2"))
TABLE_DTYPE = np.dtype([(name, dtype) for name, _, dtype in COLUMNS])
# tglc 0.8.0 writes both flag columns as 32-bit integers and appends the raw fluxes (its lc_output's order).
COLUMNS_08 = (*COLUMNS[:7], ("TESS_flags", "J", ">i4"), ("TGLC_flags", "J", ">i4"),
              ("aperture_flux_raw", "E", ">f4"), ("psf_flux_raw", "E", ">f4"))
TABLE_DTYPE_08 = np.dtype([(name, dtype) for name, _, dtype in COLUMNS_08])

# ---- header cards, as data ------------------------------------------------------------------------------------
# (key, value, comment), in file order. A value is a constant, or a function of the values of a block of objects of
# one CCD (see SyntheticSector._block) that returns one value for the whole block or a list of one per object.
_PRIMARY = (
    ("SIMPLE", True, "conforms to FITS standard"),
    ("BITPIX", 8, "array data type"),
    ("NAXIS", 0, "number of array dimensions"),
    ("EXTEND", True, ""),
    ("NEXTEND", 1, "number of standard extensions"),
    ("EXTNAME", "PRIMARY", "name of extension"),
    ("EXTDATA", "aperture", "decontaminated FFI cut for aperture photometry"),
    ("EXTVER", 1, "extension version"),
    ("TIMESYS", "TDB", "TESS Barycentric Dynamical Time"),
    ("BUNIT", "e-/s", "flux unit"),
    ("STAR_X", _of("star_x"), "star x position in cut"),
    ("STAR_Y", _of("star_y"), "star y position in cut"),
    ("COMMENT", "hdul[0].data[:,star_y,star_x]=lc", ""),
    ("ORIGIN", "UCSB/TGLC", "institution responsible for creating this file"),
    ("TELESCOP", "TESS", "telescope"),
    ("INSTRUME", "TESS Photometer", "detector type"),
    ("FILTER", "TESS", "the filter used for the observations"),
    ("OBJECT", _of("object"), "string version of Gaia DR3 ID"),
    ("GAIADR3", _of("gaia"), "integer version of Gaia DR3 ID"),
    ("TICID", _of("tic"), "TESS Input Catalog ID"),
    ("SECTOR", _of("sector"), "observation sector"),
    ("CAMERA", _of("cam"), "camera No."),
    ("CCD", _of("ccd"), "CCD No."),
    ("CUT_X", _of("cut_x"), "FFI cut x index"),
    ("CUT_Y", _of("cut_y"), "FFI cut y index"),
    ("CUTSIZE", 150, "FFI cut size"),
    ("RADESYS", "ICRS", "reference frame of celestial coordinates"),
    ("RA_OBJ", _of("ra"), "[deg] right ascension, J2000"),
    ("DEC_OBJ", _of("dec"), "[deg] declination, J2000"),
    ("TESSMAG", _of("tmag"), "TESS magnitude, fitted by Gaia DR3 bands"),
    ("GAIA_G", _of("g"), "Gaia DR3 g band magnitude"),
    ("GAIA_BP", _of("bp"), "Gaia DR3 bp band magnitude"),
    ("GAIA_RP", _of("rp"), "Gaia DR3 rp band magnitude"),
    ("RAWFLUX", _of("rawflux"), "median flux of raw FFI"),
    ("CALIB", "TGLC", "pipeline used for image calibration"),
)

def _table_cards(columns: tuple) -> tuple:
    return (
        ("XTENSION", "BINTABLE", "binary table extension"),
        ("BITPIX", 8, "array data type"),
        ("NAXIS", 2, "number of array dimensions"),
        ("NAXIS1", np.dtype([(name, dtype) for name, _, dtype in columns]).itemsize, "length of dimension 1"),
        ("NAXIS2", _of("length"), "length of dimension 2"),
        ("PCOUNT", 0, "number of group parameters"),
        ("GCOUNT", 1, "number of groups"),
        ("TFIELDS", len(columns), "number of table fields"),
        *((key, value, "") for k, (name, fmt, _) in enumerate(columns, start=1)
          for key, value in ((f"TTYPE{k}", name), (f"TFORM{k}", fmt))),
    )


_LIGHTCURVE = (
    *_table_cards(COLUMNS),
    ("INHERIT", "T", "inherit the primary header"),  # sic: a string in TGLC v1 files
    ("EXTNAME", "LIGHTCURVE", "name of extension"),
    ("EXTVER", 1, "extension version"),
    ("TELESCOP", "TESS", "telescope"),
    ("INSTRUME", "TESS Photometer", "detector type"),
    ("FILTER", "TESS", "the filter used for the observations"),
    ("OBJECT", _of("object"), "string version of Gaia DR3 ID"),
    ("GAIADR3", _of("gaia"), "integer version of GaiaDR3 designation"),
    ("RADESYS", "ICRS", "reference frame of celestial coordinates"),
    ("RA_OBJ", _of("ra"), "[deg] right ascension, J2000"),
    ("DEC_OBJ", _of("dec"), "[deg] declination, J2000"),
    ("TIMEREF", "SOLARSYSTEM", "barycentric correction applied to times"),
    ("TASSIGN", "SPACECRAFT", "where time is assigned"),
    ("BJDREFI", 2457000, "integer part of BJD reference date"),
    ("BJDREFR", 0.0, "fraction of the day in BJD reference date"),
    ("TIMESYS", "TDB", "TESS Barycentric Dynamical Time"),
    ("TIMEUNIT", "d", "time unit for TIME"),
    ("TELAPS", _of("telaps"), "[d] TSTOP-TSTART"),
    ("TSTART", _of("tstart"), "[d] observation start time in TBJD"),
    ("TSTOP", _of("tstop"), "[d] observation end time in TBJD"),
    ("MJD_BEG", _of("mjd_beg"), "[d] start time in barycentric MJD"),
    ("MJD_END", _of("mjd_end"), "[d] end time in barycentric MJD"),
    ("TIMEDEL", _of("timedel"), "[d] time resolution of data"),
    ("XPTIME", _of("xptime"), "[s] exposure time"),
    ("PSF_ERR", _of("psf_err"), "[e-/s] PSF flux error"),
    ("APER_ERR", _of("aper_err"), "[e-/s] aperture flux error"),
    ("CPSF_ERR", _of("cpsf_err"), "[e-/s] calibrated PSF flux error"),
    ("CAPE_ERR", _of("cape_err"), "[e-/s] calibrated aperture flux error"),
    ("NEAREDGE", _of("near_edge"), "distance to edges of FFI <= 2"),
    ("LOC_BG", _of("loc_bg"), "locally modified background"),
    ("COMMENT", "TRUE_BG = hdul[1].data['background'] + LOC_BG", ""),
    ("WOTAN_WL", 1, "wotan detrending window length"),
    ("WOTAN_MT", "biweight", "wotan detrending method"),
)

# TGLC v2, as the tglc package writes it: the primary HDU holds the 5x5 cut-out around the star at every cadence and
# gains three cards; a third HDU, MODEL, holds the 5x5 models of the target and of the field stars, and their ratio.
_V2_VALUES = {"BITPIX": -32, "NAXIS": 3, "NEXTEND": 2}
_V2_AFTER = {
    "NAXIS": (("NAXIS1", 5, "x size of cut"), ("NAXIS2", 5, "y size of cut"),
              ("NAXIS3", _of("length"), "Time (hdul[1].data['time'])")),
    "ORIGIN": (("TGLCVER", TGLC_VERSION, "TGLC version"),),
    "FILTER": (("FFIVER", "SPOC", "the FFI product used (SPOC/TICA)"),),
    "RAWFLUX": (("CONTAMRT", _of("contamination"), "field/target model in 3x3; includes background"),),
}
_PRIMARY_V2 = tuple(entry for key, value, comment in _PRIMARY
                    for entry in ((key, _V2_VALUES.get(key, value), comment), *_V2_AFTER.get(key, ())))
# tglc 0.8: v2's primary HDU with its own TGLCVER and a PROCVER card; the 0.8 table columns.
_PRIMARY_08 = tuple(entry for key, value, comment in _PRIMARY_V2 for entry in (
    ((key, TGLC_VERSION_08, comment), ("PROCVER", PROCVER_08, "processing version")) if key == "TGLCVER"
    else ((key, value, comment),)))
_LIGHTCURVE_08 = (*_table_cards(COLUMNS_08), *_LIGHTCURVE[len(_table_cards(COLUMNS)):])
_MODEL = (
    ("XTENSION", "IMAGE", "Image extension"),
    ("BITPIX", -32, "array data type"),
    ("NAXIS", 3, "number of array dimensions"),
    ("NAXIS1", 5, ""),
    ("NAXIS2", 5, ""),
    ("NAXIS3", 3, ""),
    ("PCOUNT", 0, "number of parameters"),
    ("GCOUNT", 1, "number of groups"),
    ("EXTNAME", "MODEL", "extension name"),
)
_PSF_5X5 = np.exp(-((np.mgrid[:5, :5] - 2.0) ** 2).sum(axis=0) / 2)  # the target's model, normalised below
_PSF_5X5 /= _PSF_5X5.sum()
_BLOCK_CADENCES = 1 << 18  # light-curve cadences made at once (bounds the memory of a block)


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
    """A deterministic sector of ``n`` served light curves; arrays are in listing order (index ``i``).

    ``flavour`` is ``"v1"`` (files as on MAST), ``"v2"`` (files of the tglc package since 0.6.6, named
    ``_tess_v2_llc.fits``: primary cards ``TGLCVER``, ``FFIVER``, ``CONTAMRT``, a cut-out cube in the primary HDU and
    a third HDU, ``MODEL``) or ``"0.8"`` (v2 as tglc 0.8.0 writes it: 32-bit flag columns using bits beyond 16, the
    columns ``aperture_flux_raw`` and ``psf_flux_raw``, a ``PROCVER`` card).
    ``tamper`` maps an object's index to header cards whose values its file carries instead of the true ones, in
    the primary and the LIGHTCURVE header wherever the card appears (e.g. ``{5: {"SECTOR": 22}}``); the file stays a
    valid FITS file of the same size. ``extra_listing_lines`` are appended to the bulk-download script.
    ``recurring``: stars of a release (see :func:`release`) that this sector observes too, in place of some of its
    own; a star of it with a ``twin`` (camera, CCD) is also listed under that second path (two light curves, one
    target-list row). Without it, the sector is exactly what it always was.
    """

    def __init__(self, sector: int, n: int, seed: int = 0, *, flavour: str = "v1",
                 tamper: Mapping[int, Mapping[str, object]] | None = None,
                 extra_listing_lines: Iterable[str] = (), recurring: SimpleNamespace | None = None):
        if n < 1:
            raise ValueError("a synthetic sector needs at least one object")
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; choose from {FLAVOURS}")
        self.sector, self.n, self.seed, self.flavour = int(sector), int(n), int(seed), flavour
        self.tamper = {int(i): dict(cards) for i, cards in (tamper or {}).items()}
        self.extra_listing_lines = list(extra_listing_lines)
        self._primary_cards = {"v1": _PRIMARY, "v2": _PRIMARY_V2, "0.8": _PRIMARY_08}[flavour]
        self._table_cards = _LIGHTCURVE_08 if flavour == "0.8" else _LIGHTCURVE
        self.version = FILE_VERSION[flavour]
        self._check_tamper()
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
        self.in_target_list = np.ones(n, bool)  # 2% of the listed objects (rounded down) lack from the target list
        self.in_target_list[np.argsort(rng.random(n), kind="stable")[:n // 50]] = False
        # ~1% of the objects are listed twice, the second time further down.
        self.duplicated = np.flatnonzero(rng.random(n) < 0.01)
        self._dup_keys = self.duplicated + rng.uniform(0.5, 1.0, len(self.duplicated)) * (n - self.duplicated)
        self.twin = np.zeros(n, bool)  # a second path of a star listed before: no row of its own in the target list
        if recurring is not None:
            self._observe(recurring)
        self._target_order = rng.permutation(int((self.in_target_list & ~self.twin).sum())
                                              + len(self.unserved_gaia_ids))
        self._sorted = np.argsort(self.gaia_ids, kind="stable")
        self._ccd_cache: dict[tuple[int, int], tuple] = {}

    def _observe(self, stars: SimpleNamespace) -> None:
        """Put the release's ``stars`` (and their twins) in place of some of this sector's own objects."""
        twins = np.flatnonzero(stars.twin_cam > 0)
        k = len(stars.gaia) + len(twins)
        if k > self.n:
            raise ValueError(f"a release sector of {self.n} objects cannot hold its {k} recurring light curves")
        at = np.sort(np.random.default_rng([self.seed, self.sector, self.n, 5]).permutation(self.n)[:k])
        own = np.setdiff1d(np.arange(self.n), at)
        if np.isin(stars.gaia, np.concatenate([self.gaia_ids[own], self.unserved_gaia_ids])).any():
            raise ValueError("a recurring star has the id of one of the sector's own objects; choose another seed")
        star = np.concatenate([np.arange(len(stars.gaia)), twins])
        first, second = at[:len(stars.gaia)], at[len(stars.gaia):]
        self.gaia_ids[at], self.tic_ids[at] = stars.gaia[star], stars.tic[star]
        self.ra[at], self.dec[at], self.tessmag[at] = stars.ra[star], stars.dec[star], stars.tmag[star]
        self.cam[first], self.ccd[first] = stars.cam, stars.ccd
        self.cam[second], self.ccd[second] = stars.twin_cam[twins], stars.twin_ccd[twins]
        self.in_target_list[at] = True
        self.twin[second] = True

    def _check_tamper(self) -> None:
        bad = [i for i in self.tamper if not 0 <= i < self.n]
        if bad:
            raise ValueError(f"tamper: no object {bad[0]} in a sector of {self.n}")
        keys = {key for key, _, _ in (*self._primary_cards, *self._table_cards)} - {"COMMENT"}
        unknown = sorted({key for cards in self.tamper.values() for key in cards} - keys)
        if unknown:
            raise ValueError(f"tamper: no header card {unknown[0]!r} in a TGLC {self.flavour} file")

    # -- where things are ------------------------------------------------------------------------------------------
    def relpath(self, i: int) -> str:
        return layout.lc_relpath(int(self.gaia_ids[i]), self.sector, int(self.cam[i]), int(self.ccd[i]),
                                 self.version)

    def index_of(self, relpath: str) -> int:
        """The object served at ``relpath`` (relative to the archive root); KeyError when there is none."""
        match = re.fullmatch(layout.LC_RELPATH_PATTERN, relpath)
        if match is None:
            raise KeyError(relpath)
        gaia = int(match.group("gaia"))
        first = int(np.searchsorted(self.gaia_ids, gaia, sorter=self._sorted))
        last = int(np.searchsorted(self.gaia_ids, gaia, side="right", sorter=self._sorted))
        for i in self._sorted[first:last].tolist():  # a star listed twice has two paths
            if self.relpath(i) == relpath:
                return i
        raise KeyError(relpath)

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
        rel = pa.array(layout.lc_relpaths(self.gaia_ids[index], self.sector, self.cam[index], self.ccd[index],
                                          self.version)).cast(
            pa.string())
        # CRLF on every 7th line, as when a file passed through another system
        eol = pc.if_else(pa.array(np.arange(len(index)) % 7 == 3), "\r\n", "\n")
        lines = pc.binary_join_element_wise("curl -f --create-dirs --output '", rel, f"' {MAST_FILE_URL}/", rel,
                                            eol, "")
        head = f"#!/bin/sh\n# TGLC light curves of sector {self.sector}\n\n".encode()
        extra = "".join(f"{line}\n" for line in self.extra_listing_lines).encode()
        middle = len(index) // 2
        return b"".join([head, *_pieces(lines.slice(0, middle)), b"\n# -- second half --\n",
                         *_pieces(lines.slice(middle)), extra])

    def target_list(self) -> bytes:
        """The target list: a CSV with a '#' header, objects in another order than the script."""
        served = np.flatnonzero(self.in_target_list & ~self.twin)
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
    def fits_bytes(self, i: int) -> bytes:
        """The file of object ``i``, byte for byte what the archive serves (about a millisecond)."""
        return self._block(int(self.cam[i]), int(self.ccd[i]), np.array([i]))[0].tobytes()

    def fits_files(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, memoryview]]:
        """``(i, file)`` of the objects ``indices`` (default: all), CCD by CCD: many files at numpy speed."""
        indices = np.arange(self.n) if indices is None else np.fromiter(indices, np.int64)
        for cam, ccd in sorted({(int(c), int(d)) for c, d in zip(self.cam[indices], self.ccd[indices])}):
            chosen = indices[(self.cam[indices] == cam) & (self.ccd[indices] == ccd)]
            step = max(1, _BLOCK_CADENCES // self.n_cadences(cam, ccd))
            for start in range(0, len(chosen), step):
                block = chosen[start:start + step]
                files = self._block(cam, ccd, block)
                yield from zip(block.tolist(), map(memoryview, files))

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

    def _draws(self, index: np.ndarray, length: int) -> SimpleNamespace:
        """What each object draws from its own generators, so that a file does not depend on its block."""
        k = len(index)
        d = SimpleNamespace(flux=np.empty(k), noise=np.empty(k), normal=np.empty((3, k, length)),
                            nan_at=np.empty((k, 2), np.int64), near_edge=np.empty(k, bool))
        primary = []
        for j, i in enumerate(index.tolist()):
            rng = np.random.default_rng([self.seed, self.sector, i, 2])
            d.flux[j] = flux = 15000.0 * 10 ** (-0.4 * (self.tessmag[i] - 10.0))
            d.noise[j] = np.sqrt(flux) * 3 + 5
            rng.standard_normal(out=d.normal[0, j])  # PSF flux
            rng.standard_normal(out=d.normal[1, j])  # aperture flux
            d.nan_at[j] = rng.integers(0, length, 2)  # a few cadences without a PSF fit
            rng.standard_normal(out=d.normal[2, j])  # background
            d.near_edge[j] = rng.random() < 0.05
            rng = np.random.default_rng([self.seed, self.sector, i, 3])
            tmag = float(self.tessmag[i])
            g = float(np.float32(tmag + 0.35 + 0.1 * rng.standard_normal()))
            star_x, star_y = float(rng.uniform(1, 3)), float(rng.uniform(1, 3))
            cut_x, cut_y = int(rng.integers(0, 14)), int(rng.integers(0, 14))
            contamination = (round(float(np.random.default_rng([self.seed, self.sector, i, 4]).uniform(0, 0.3)), 9)
                             if self.flavour != "v1" else None)
            primary.append((g, float(np.float32(g + 0.3)), float(np.float32(g - 0.45)),
                            float(np.float32(15000.0 * 10 ** (-0.4 * (tmag - 10.0)))), star_x, star_y, cut_x, cut_y,
                            contamination))
        names = ("g", "bp", "rp", "rawflux", "star_x", "star_y", "cut_x", "cut_y", "contamination")
        for name, values in zip(names, zip(*primary)):
            setattr(d, name, list(values))
        return d

    def _block(self, cam: int, ccd: int, index: np.ndarray) -> np.ndarray:
        """The files of objects ``index`` (all on one CCD), as a ``(len(index), file size)`` uint8 array."""
        time_, tess, tglc, tstart, timedel = self._ccd_columns(cam, ccd)
        k, length = len(index), len(time_)
        d = self._draws(index, length)
        table = np.empty((k, length), TABLE_DTYPE_08 if self.flavour == "0.8" else TABLE_DTYPE)
        table["time"] = time_
        psf = (d.flux[:, None] + d.noise[:, None] * d.normal[0]).astype(np.float32)
        aper = (d.flux[:, None] * 0.93 + d.noise[:, None] * d.normal[1]).astype(np.float32)
        psf[np.arange(k)[:, None], d.nan_at] = np.nan
        table["psf_flux"], table["aperture_flux"] = psf, aper
        table["cal_psf_flux"] = psf / d.flux.astype(np.float32)[:, None]
        table["cal_aper_flux"] = aper / (d.flux * 0.93).astype(np.float32)[:, None]
        table["background"] = background = (40 + 5 * d.normal[2]).astype(np.float32)
        table["cadence_num"] = np.arange(length, dtype=np.int32) + 4697 + 1000 * self.sector
        table["TESS_flags"] = tess
        table["TGLC_flags"] = np.where(d.near_edge[:, None], tglc | np.int16(2), tglc)
        if self.flavour == "0.8":  # flag bits beyond 16 (0.8 documents TGLC bits up to 32) and the raw fluxes
            table["TGLC_flags"] |= np.where(np.arange(length) % 50 == 7, np.int32(1 << 20), np.int32(0))
            table["TESS_flags"] |= np.where(np.arange(length) % 97 == 5, np.int32(1 << 16), np.int32(0))
            table["aperture_flux_raw"] = aper - background
            table["psf_flux_raw"] = psf - np.float32(0.5) * background

        # the values of the header cards: d's, and these
        gaia = self.gaia_ids[index].tolist()
        psf_err, aper_err = np.nanstd(psf.astype(np.float64), axis=1), np.std(aper.astype(np.float64), axis=1)
        median = _nanmedian_rows(psf).astype(np.float64)
        tstop = tstart + length * timedel
        vars(d).update(
            sector=self.sector, cam=cam, ccd=ccd, length=length, gaia=gaia, object=[f"Gaia DR3 {x}" for x in gaia],
            tic=[str(x) for x in self.tic_ids[index].tolist()], ra=self.ra[index].tolist(),
            dec=self.dec[index].tolist(), tmag=self.tessmag[index].tolist(), tstart=tstart, tstop=tstop,
            telaps=tstop - tstart, mjd_beg=tstart + 56999.5, mjd_end=tstop + 56999.5, timedel=timedel,
            xptime=_cadence_seconds(self.sector), psf_err=psf_err.tolist(), aper_err=aper_err.tolist(),
            cpsf_err=(psf_err / median).tolist(), cape_err=(aper_err / median).tolist(),
            near_edge=d.near_edge.tolist(), loc_bg=(1255.071543953949 + 0.5 * (index % 97)).tolist())
        tamper = {j: self.tamper[i] for j, i in enumerate(index.tolist()) if i in self.tamper}

        parts = [_header(self._primary_cards, d, tamper, k)]
        if self.flavour != "v1":
            parts += _data(_cut_out(background, aper, d.star_x, d.star_y))
        parts += [_header(self._table_cards, d, tamper, k), *_data(table)]
        if self.flavour != "v1":
            parts += [_header(_MODEL, d, {}, k), *_data(_models(d.flux, d.contamination))]
        return np.concatenate(parts, axis=1)


def release(sectors: Iterable[int], n: int, seed: int = 0, **options) -> dict[int, SyntheticSector]:
    """Synthetic sectors whose stars recur, as TESS's do: a polar cap (declination below -80) observed in every
    sector, a band shared by each two consecutive sector numbers, and one polar star listed twice in every sector
    (camera 4 and camera 3). ``n`` light curves per sector; ``options`` as :class:`SyntheticSector`'s."""
    sectors = sorted({int(s) for s in sectors})
    rng = np.random.default_rng([seed, 2357])
    pairs = [a for a, b in zip(sectors, sectors[1:]) if b == a + 1]
    n_pole, n_band = max(2, n // 20), max(1, n // 40)
    total = n_pole + n_band * len(pairs)
    stars = SimpleNamespace(gaia=_distinct_gaia_ids(rng, total), tic=rng.integers(1, 2_000_000_000, total),
                            tmag=rng.uniform(8.0, 14.0, total), ra=np.empty(total), dec=np.empty(total),
                            cam=np.empty(total, np.int16), ccd=np.empty(total, np.int16),
                            twin_cam=np.zeros(total, np.int16), twin_ccd=np.zeros(total, np.int16))
    stars.ra[:n_pole], stars.dec[:n_pole] = rng.uniform(0, 360, n_pole), rng.uniform(-89.5, -80.5, n_pole)
    stars.cam[:n_pole] = 4
    stars.ccd[:n_pole] = 1 + (stars.ra[:n_pole] >= 180) + 2 * (stars.dec[:n_pole] >= -85)
    stars.twin_cam[0], stars.twin_ccd[0] = 3, stars.ccd[0]
    for k, a in enumerate(pairs):  # between the fields of sectors a and a + 1 (see SyntheticSector's ra0)
        band = slice(n_pole + k * n_band, n_pole + (k + 1) * n_band)
        stars.ra[band] = np.mod(a * 27.7 + 13.85 + rng.uniform(-1, 1, n_band), 360.0)
        stars.dec[band] = rng.uniform(-30, -6, n_band)
        stars.cam[band], stars.ccd[band] = 1, 1 + (rng.random(n_band) >= 0.5)
    out = {}
    for sector in sectors:
        chosen = np.zeros(total, bool)
        chosen[:n_pole] = True
        for k, a in enumerate(pairs):
            if sector in (a, a + 1):
                chosen[n_pole + k * n_band:n_pole + (k + 1) * n_band] = True
        mine = SimpleNamespace(**{name: values[chosen] for name, values in vars(stars).items()})
        out[sector] = SyntheticSector(sector, n, seed, recurring=mine, **options)
    return out


def _header(cards: tuple, values: SimpleNamespace, tamper: dict[int, dict[str, object]], k: int) -> np.ndarray:
    """The header ``cards`` of ``k`` objects, their functions applied to ``values``, as a ``(k, size)`` array."""
    rendered: list[str | list[str]] = []
    for key, value, comment in cards:
        value = value(values) if callable(value) else value
        changed = {j: overrides[key] for j, overrides in tamper.items() if key in overrides}
        if changed:
            value = [changed.get(j, v) for j, v in enumerate(value if isinstance(value, list) else [value] * k)]
        rendered.append([card(key, v, comment) for v in value] if isinstance(value, list)
                        else card(key, value, comment))
    return header_rows(rendered, k)


def _cut_out(background: np.ndarray, aper: np.ndarray, star_x: list[float], star_y: list[float]) -> np.ndarray:
    """v2's primary data: a 5x5 cut-out at every cadence, the background around the star's aperture flux."""
    k, length = background.shape
    cube = np.empty((k, length, 5, 5), ">f4")
    cube[...] = background[:, :, None, None]
    x, y = np.rint(star_x).astype(np.int64), np.rint(star_y).astype(np.int64)
    cube[np.arange(k)[:, None], np.arange(length), y[:, None], x[:, None]] = aper
    return cube


def _models(flux: np.ndarray, contamination: list[float]) -> np.ndarray:
    """v2's MODEL data: the target's 5x5 model, the field stars' (CONTAMRT of the target's in the 3x3), their ratio."""
    target = flux[:, None, None] * _PSF_5X5
    field = np.empty_like(target)
    field[...] = (np.array(contamination) * target[:, 1:4, 1:4].sum(axis=(1, 2)) / 9)[:, None, None]
    return np.stack([target, field, field / target], axis=1).astype(">f4")


def _nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=1)``, the same numbers ten times faster (it takes one row at a time)."""
    ordered = np.sort(values, axis=1)  # NaNs last
    count, rows = (~np.isnan(values)).sum(axis=1), np.arange(len(values))
    return (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2]) / values.dtype.type(2)


def _data(values: np.ndarray) -> list[np.ndarray]:
    """The data of one HDU per object (``values`` has one big-endian row per object), padded to whole blocks."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    pad = -raw.shape[1] % BLOCK
    return [raw, np.zeros((len(values), pad), np.uint8)] if pad else [raw]


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
