"""Choosing stars (docs/DATASET.md, "Choosing stars"): ``--targets FILE`` and ``--cone RA DEC RADIUS``.

Plain functions over plain data: :func:`read_targets` / :func:`cone_selection` make a :class:`Selection` (checked
once, by ``BuildArguments``), :func:`choose` finds its stars in the catalogs of a build's sectors (target-list
positions, matched in bulk with astropy's KD-tree), :func:`keep` filters a sector's catalog to them before the plan,
and :func:`report_rows` / :func:`write_report` say, per target, what was found where.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from .errors import UsageError
from .folders import write_text

log = logging.getLogger(__name__)

DEFAULT_MATCH_RADIUS = 2.0  # arcseconds
REPORT = "targets_report.csv"
REPORT_COLUMNS = ("target", "kind", "gaiadr3_id", "sectors", "reason")
KINDS = ("gaiadr3_id", "tic_id", "position", "cone")
# How each table format is told, by the file name's ending (the formats astropy's Table.read handles for us).
FORMATS = ((".csv", "ascii.csv", "CSV"), (".csv.gz", "ascii.csv", "CSV"), (".ecsv", "ascii.ecsv", "ECSV"),
           (".ecsv.gz", "ascii.ecsv", "ECSV"), (".parquet", "parquet", "Parquet"), (".pq", "parquet", "Parquet"),
           (".fits", "fits", "FITS"), (".fit", "fits", "FITS"), (".fits.gz", "fits", "FITS"))
_INTEGER = re.compile(r"\s*\+?(\d{1,19})\s*")
_INT64_MAX = 2**63 - 1


@dataclass(eq=False)
class Selection:
    """What a build is asked to keep: targets by id (``ids``) or position (``ra``, ``dec``, ``radius`` in degrees),
    or one cone; ``labels`` are the targets as the report names them (the input's text)."""

    source: str  # the file, or "--cone"
    kind: str  # one of KINDS
    labels: tuple[str, ...]
    ids: np.ndarray | None = None  # int64: Gaia DR3 or TIC ids
    ra: np.ndarray | None = None  # float64 degrees
    dec: np.ndarray | None = None
    radius: float = 0.0  # degrees: the match radius of positions, or the cone's

    @property
    def fingerprint(self) -> str:
        """Eight hex digits naming this selection: the default folders of its build (the same command resumes;
        another selection never writes over this one's files)."""
        digest = hashlib.sha256(f"{self.kind}:{self.radius!r}:".encode())
        for values in (self.ids, self.ra, self.dec):
            if values is not None:
                digest.update(np.ascontiguousarray(values).tobytes())
        return digest.hexdigest()[:8]

    @property
    def folder(self) -> str:
        return f"targets-{self.fingerprint}"

    def describe(self) -> str:
        if self.kind == "cone":
            return f"the cone of {self.radius:g} degrees around {self.labels[0]}"
        return f"{len(self.labels)} target(s) by {self.kind} from {self.source}"


@dataclass(eq=False)
class Choice:
    """The stars a selection found: per target, the Gaia DR3 ids it matched (for a cone, one entry per star)."""

    selection: Selection
    matched: list[np.ndarray]
    labels: list[str]

    @property
    def gaiadr3_ids(self) -> np.ndarray:
        """Every chosen star, ascending, once."""
        found = [m for m in self.matched if len(m)]
        return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)


# ---- reading ------------------------------------------------------------------------------------------------------
def read_targets(path: str | os.PathLike | Table, match_radius: float = DEFAULT_MATCH_RADIUS) -> Selection:
    """The targets of a table file (CSV, ECSV, Parquet or FITS, told by its name) or an astropy ``Table``: its
    ``gaiadr3_id`` column, else its ``tic_id`` column, else its ``ra`` and ``dec`` columns (any case). Ids are read
    exactly as int64, never through a float. Raises UsageError (one line naming the file and column) otherwise."""
    if isinstance(path, Table):
        name, table = "the targets table", path
    else:
        name = os.fspath(path)
        table = _read_table(name)
    if not _finite_positive(match_radius):
        raise UsageError(f"--match-radius {match_radius!r} (for {name}): must be a number of arcseconds > 0")
    if len(table) == 0:
        raise UsageError(f"--targets {name} has no rows: give one target per row")
    by_name = {column.lower(): column for column in table.colnames}
    for kind, what in (("gaiadr3_id", "Gaia DR3 id"), ("tic_id", "TIC id")):
        if kind in by_name:
            column = by_name[kind]
            ids, labels = _ids(table[column], name, column, what)
            return Selection(name, kind, tuple(labels), ids=ids)
    if "ra" in by_name and "dec" in by_name:
        ra, ra_text = _degrees(table[by_name["ra"]], name, by_name["ra"], 0.0, 360.0)
        dec, dec_text = _degrees(table[by_name["dec"]], name, by_name["dec"], -90.0, 90.0)
        return Selection(name, "position", tuple(f"{r},{d}" for r, d in zip(ra_text, dec_text)), ra=ra, dec=dec,
                         radius=float(match_radius) / 3600)
    has = ", ".join(table.colnames[:8]) + (", ..." if len(table.colnames) > 8 else "")
    raise UsageError(f"--targets {name} has no gaiadr3_id, tic_id or ra and dec column (it has {has}); name one "
                     "column so (any case)")


def cone_selection(cone: Sequence[float]) -> Selection:
    """The stars within RADIUS degrees of (RA, DEC); raises UsageError (one line) for a bad cone."""
    if len(cone) != 3:
        raise UsageError(f"--cone takes RA DEC RADIUS (degrees), got {len(cone)} value(s)")
    try:
        ra, dec, radius = (float(value) for value in cone)
    except (TypeError, ValueError):
        raise UsageError(f"--cone {' '.join(map(str, cone))}: RA DEC RADIUS must be numbers (degrees)") from None
    if not (math.isfinite(ra) and 0.0 <= ra <= 360.0):
        raise UsageError(f"--cone: RA {ra:g} is out of range (0 to 360 degrees)")
    if not (math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise UsageError(f"--cone: DEC {dec:g} is out of range (-90 to 90 degrees)")
    if not (_finite_positive(radius) and radius <= 180.0):
        raise UsageError(f"--cone: RADIUS {radius:g} must be > 0 and at most 180 degrees")
    return Selection("--cone", "cone", (f"{cone[0]},{cone[1]}",), ra=np.array([ra]), dec=np.array([dec]),
                     radius=radius)


def _read_table(name: str) -> Table:
    lower = name.lower()
    found = next(((fmt, what) for end, fmt, what in FORMATS if lower.endswith(end)), None)
    if found is None:
        raise UsageError(f"--targets {name}: not a CSV, ECSV, Parquet or FITS file (told by the name's ending: .csv, "
                         ".ecsv, .parquet, .fits); convert it to one of these")
    fmt, what = found
    options: dict = {}
    if fmt == "ascii.csv":  # every cell as text: a reader's guess would read 19-digit ids as floats, inexactly
        from astropy.io.ascii import convert_numpy

        options["converters"] = {"*": [convert_numpy(str)]}
    if fmt == "fits":
        options["hdu"] = 1
    try:
        return Table.read(name, format=fmt, **options)
    except FileNotFoundError:
        raise UsageError(f"--targets {name}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any reader's failure is the file's: one line, exit 2
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"--targets {name}: cannot be read as {what} ({first}); check the file") from None


def _finite_positive(value) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_filled(column, name: str, colname: str, what: str) -> None:
    """UsageError naming the first empty (masked) cell of ``column``."""
    mask = getattr(column, "mask", None)
    masked = np.zeros(len(column), bool) if mask is None else np.asarray(mask, bool) & np.ones(len(column), bool)
    if masked.any():
        row = int(np.flatnonzero(masked)[0]) + 1
        raise UsageError(f"--targets {name}: column {colname}, row {row}, is empty: every row needs a {what}")


def _ids(column, name: str, colname: str, what: str) -> tuple[np.ndarray, list[str]]:
    """A column of ids as int64 and as the report's text: integers as stored, or text parsed exactly."""
    _check_filled(column, name, colname, what)
    kind = column.dtype.kind
    if kind in "iu":
        values = np.asarray(column)
        if kind == "u" and (values > _INT64_MAX).any():
            row = int(np.flatnonzero(values > _INT64_MAX)[0]) + 1
            raise UsageError(f"--targets {name}: column {colname}, row {row}: {values[row - 1]} is not a {what}")
        ids = values.astype(np.int64)
        labels = [str(v) for v in ids.tolist()]
    elif kind in "USO":
        labels, parsed = [], []
        for row, value in enumerate(np.asarray(column).tolist(), start=1):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            match = _INTEGER.fullmatch(text)
            number = int(match.group(1)) if match else -1
            if number < 0 or number > _INT64_MAX:
                raise UsageError(f"--targets {name}: column {colname}, row {row}: {text.strip()[:40]!r} is not a "
                                 f"{what} (a whole number)")
            labels.append(text.strip())
            parsed.append(number)
        ids = np.array(parsed, np.int64)
    else:
        raise UsageError(f"--targets {name}: column {colname} holds {column.dtype} values, which cannot hold a {what} "
                         "exactly; store the ids as integers or text")
    bad = np.flatnonzero(ids <= 0)
    if len(bad):
        raise UsageError(f"--targets {name}: column {colname}, row {bad[0] + 1}: {labels[bad[0]]} is not a {what} "
                         "(ids are positive)")
    return ids, labels


def _degrees(column, name: str, colname: str, low: float, high: float) -> tuple[np.ndarray, list[str]]:
    _check_filled(column, name, colname, "position")
    if column.dtype.kind in "USO":
        texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(column).tolist()]
        values = np.empty(len(texts))
        for row, text in enumerate(texts, start=1):
            try:
                values[row - 1] = float(text)
            except ValueError:
                raise UsageError(f"--targets {name}: column {colname}, row {row}: {text.strip()[:40]!r} is not a "
                                 "number of degrees") from None
        labels = [text.strip() for text in texts]
    elif column.dtype.kind in "iuf":
        values = np.asarray(column, np.float64)
        labels = [str(v) for v in np.asarray(column).tolist()]
    else:
        raise UsageError(f"--targets {name}: column {colname} holds {column.dtype} values, not degrees")
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= low) & (values <= high)))
    if len(bad):
        raise UsageError(f"--targets {name}: column {colname}, row {bad[0] + 1}: {labels[bad[0]]} is out of range "
                         f"({low:g} to {high:g} degrees)")
    return values, labels


# ---- choosing -----------------------------------------------------------------------------------------------------
def choose(selection: Selection, catalogs: Sequence[Table]) -> Choice:
    """The stars of ``selection`` among the catalogs of the build's sectors (their target-list positions). The
    catalogs' rows are narrowed in numpy first (ids looked up, or HEALPix pixels near the targets), so that only a
    few rows are deduplicated and matched exactly, whatever the build's size."""
    def column(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(c[name]) for c in catalogs]) if catalogs else np.empty(0)

    gaia = column("gaiadr3_id").astype(np.int64)
    if selection.kind == "gaiadr3_id":
        present = _in(selection.ids, np.unique(gaia[_in(gaia, selection.ids)]))
        matched = [selection.ids[k:k + 1] if present[k] else np.empty(0, np.int64) for k in range(len(present))]
        return Choice(selection, matched, list(selection.labels))
    if selection.kind == "tic_id":
        tic = column("TIC_ID").astype(np.int64)
        rows = np.flatnonzero(_in(tic, selection.ids))
        matched = [np.unique(gaia[rows[tic[rows] == t]]) for t in selection.ids.tolist()]
        return Choice(selection, matched, list(selection.labels))
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = column("RA").astype(np.float64), column("DEC").astype(np.float64)
    rows = np.flatnonzero(_near(ra, dec, selection.ra, selection.dec, selection.radius))
    stars, first = np.unique(gaia[rows], return_index=True)  # each star once (its position is Gaia's in every sector)
    rows = rows[first]
    where = SkyCoord(ra[rows] * u.deg, dec[rows] * u.deg)
    asked = SkyCoord(selection.ra * u.deg, selection.dec * u.deg)
    if selection.kind == "position":
        if len(stars) == 0:
            return Choice(selection, [np.empty(0, np.int64)] * len(selection.labels), list(selection.labels))
        index, separation, _ = asked.match_to_catalog_sky(where)  # a KD-tree over the stars: one query per target
        near = separation.deg <= selection.radius
        matched = [stars[index[k:k + 1]] if near[k] else np.empty(0, np.int64) for k in range(len(near))]
        return Choice(selection, matched, list(selection.labels))
    inside = stars[asked[0].separation(where).deg <= selection.radius] if len(stars) else np.empty(0, np.int64)
    return Choice(selection, [inside[k:k + 1] for k in range(len(inside))], [selection.labels[0]] * len(inside))


def _near(ra: np.ndarray, dec: np.ndarray, at_ra: np.ndarray, at_dec: np.ndarray, radius: float) -> np.ndarray:
    """Which of the stars (``ra``, ``dec``) lie in a HEALPix pixel touched by a disc of ``radius`` degrees around a
    target: a superset of those within the radius (healpy's inclusive discs), found in numpy."""
    import healpy

    nside = 1024  # pixels of ~3.4 arcmin, halved in resolution until a pixel is at least the radius across
    while nside > 1 and healpy.nside2resol(nside, arcmin=True) / 60 < radius:
        nside //= 2
    pixels = healpy.ang2pix(nside, ra, dec, lonlat=True)
    vectors = healpy.ang2vec(at_ra, at_dec, lonlat=True).reshape(-1, 3)
    touched = np.unique(np.concatenate([healpy.query_disc(nside, v, np.radians(radius), inclusive=True)
                                        for v in vectors]))
    return np.isin(pixels, touched)


def keep(catalog: Table, chosen: np.ndarray) -> Table:
    """The rows of ``catalog`` whose star is chosen (every light curve of it, in catalog order), its meta kept."""
    return catalog[_in(np.asarray(catalog["gaiadr3_id"], np.int64), chosen)]


def _in(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` for many values and few wanted: only ``wanted`` is sorted (``np.isin`` sorts both
    together, ~10x slower on a build's millions of rows)."""
    wanted = np.unique(wanted)
    if not len(wanted):
        return np.zeros(len(values), bool)
    return wanted[np.searchsorted(wanted, values).clip(max=len(wanted) - 1)] == values


# ---- the report ---------------------------------------------------------------------------------------------------
def report_rows(choice: Choice, built: Mapping[int, set[int]], sectors: Sequence[int]) -> list[dict[str, str]]:
    """One row per target (per star found, for a cone): ``built`` maps each sector to the Gaia ids that have a light
    curve in its outputs; ``sectors`` are the build's sectors (for the reasons)."""
    selection = choice.selection
    where = ranges(sectors)
    nothing = {"gaiadr3_id": f"no light curve of this Gaia DR3 id in sector(s) {where}",
               "tic_id": f"no light curve of a star with this TIC id in sector(s) {where}",
               "position": f"no star within {selection.radius * 3600:g} arcsec in sector(s) {where}",
               "cone": f"no star within {selection.radius:g} degrees in sector(s) {where}"}[selection.kind]
    rows = []
    for label, matched in zip(choice.labels, choice.matched):
        if not len(matched):
            rows.append(_row(label, selection.kind, "", "", nothing))
        for star in matched.tolist():
            have = [s for s in sorted(built) if star in built[s]]
            reason = "" if have else "its light curves failed to build (see failures.csv); rerun to retry"
            rows.append(_row(label, selection.kind, str(star), " ".join(map(str, have)), reason))
    if not rows:  # a cone with no star: say so
        rows.append(_row(selection.labels[0], selection.kind, "", "", nothing))
    return rows


def write_report(path: Path, rows: list[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())
    found = sum(1 for row in rows if row["sectors"])
    log.info("Targets: %d of %d row(s) found, with light curves; see %s", found, len(rows), path)


def _row(target: str, kind: str, star: str, sectors: str, reason: str) -> dict[str, str]:
    return dict(zip(REPORT_COLUMNS, (target, kind, star, sectors, reason)))


def ranges(sectors: Sequence[int]) -> str:
    """``1,2,3,7`` -> ``1-3,7``."""
    sectors = sorted(sectors)
    parts, start = [], None
    for k, sector in enumerate(sectors):
        start = sector if start is None else start
        if k + 1 == len(sectors) or sectors[k + 1] != sector + 1:
            parts.append(f"{start}-{sector}" if sector > start else str(sector))
            start = None
    return ",".join(parts)
