"""The sector's two MAST listings, fetched whole or refused, parsed as untrusted data, joined into the catalog.

A bulk-download script has one to two million lines, so every step is vectorised (numpy scans of its bytes,
pyarrow's CSV reader, numpy sorting). A listing cut short looks like a smaller sector, so a copy is trusted only when
its manifest records it complete, and listings that disagree stop the build (README, "Long runs").
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from astropy.table import Table

from . import layout
from .errors import UsageError
from .folders import atomically, write_text
from .sources import DEFAULT_MAST_URL
from .sources.base import Refused, Source, SourceError, Unreachable, remove_stale_parts

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("GAIADR3_ID", "TIC_ID", "RA", "DEC")
_OUTPUT_FLAG = b"--output "
# The quoted (or bare) argument of --output, wherever it stands on the line.
_OUTPUT_ARG = re.compile(rb"""--output\s+(?:'(?P<q1>[^']*)'|"(?P<q2>[^"]*)"|(?P<bare>[^\s'"]+))""")
# Lines that carry nothing: the shebang, comments, white space.
_IGNORABLE = re.compile(rb"\s*(#.*)?\s*$")
_MAX_REPORTED_LINES = 1000
_MAX_REPORTED_BYTES = 300  # of each rejected line: a hostile listing may hold a line of megabytes
MAX_DISAGREEMENT = 0.05  # largest share of one listing's objects that the other may lack
MANIFEST_SUFFIX = ".manifest.json"
_SCAN = 1 << 22  # bytes per numpy scan of the listing: a piece stays in the CPU's cache while both bytes are sought
_ROWS = 1 << 18  # listing lines validated at once


class ListingError(UsageError):
    """A listing that cannot be used; the message names the file and what to do."""


@dataclass
class Listings:
    """Local copies of a sector's bulk-download script and target list."""

    sector: int
    bulk_script: Path
    target_list: Path


@dataclass
class BulkListing:
    """The usable entries of a bulk-download script, in listing order (duplicates kept)."""

    gaiadr3_id: np.ndarray
    cam: np.ndarray
    ccd: np.ndarray
    n_lines: int = 0
    n_rejected: int = 0
    rejected: list[str] = field(default_factory=list)  # the first _MAX_REPORTED_LINES rejected lines, cut short
    version: np.ndarray | None = None  # int16, the v<k> of each file's name (None: all 1)


def fetch_listings(sector: int, tglc_data_path: str | os.PathLike, source: Source, refresh: bool = False,
                   archive_id: str | None = None, flag: str = "--mast-url") -> Listings:
    """The sector's two listings from ``source`` (``flag`` names it in messages): read in place from a mirror, else
    copied into ``<tglc_data_path>/sSSSS/`` and reused only when its manifest matches (the same URL, or the same
    ``archive_id``, a stable name of an archive whose URL changes; never with ``refresh``). Raises
    :class:`ListingError` when a listing cannot be had."""
    directory = Path(layout.sector_dir(tglc_data_path, sector))
    paths = {}
    for key, relpath in (("bulk_script", layout.bulk_script_relpath(sector)),
                         ("target_list", layout.target_list_relpath(sector))):
        local = source.local_path(relpath)
        if local is not None:
            if not local.is_file():
                if flag == "--mast-url" and not _lists_any(source):
                    raise ListingError(no_listings(source))
                raise ListingError(f"sector {sector}: {local} does not exist; check the sector number and that "
                                   f"{source.describe()} is a copy of MAST's TGLC tree")
            paths[key] = local
            continue
        dest = directory / Path(relpath).name
        url = f"{source.url}/{relpath}"
        stale = "--refresh-listings" if refresh else _why_not_complete(dest, url, archive_id)
        if stale is None:
            log.info("Reusing %s (complete, as recorded in its manifest)", dest)
        else:
            log.info("Fetching %s (%s)", url, stale)
            _fetch_listing(source, relpath, dest, url, sector, archive_id, flag)
        paths[key] = dest
    return Listings(sector=sector, **paths)


def manifest_path(listing: Path) -> Path:
    return listing.with_name(listing.name + MANIFEST_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


def _why_not_complete(path: Path, url: str, archive_id: str | None = None) -> str | None:
    """None when ``path`` is recorded complete, else why it must be fetched again."""
    try:
        manifest = json.loads(manifest_path(path).read_text())
        size = path.stat().st_size
    except FileNotFoundError:
        return "no copy recorded complete"
    except (OSError, ValueError):
        return "its manifest is unreadable"
    if not isinstance(manifest, dict):
        return "its manifest is unreadable"
    if archive_id is not None and manifest.get("archive") != archive_id:
        return "the copy came from another archive"
    if archive_id is None and manifest.get("url") != url:
        return "the copy came from another URL"
    if manifest.get("size") != size or manifest.get("sha256") != _sha256(path):
        return "the copy differs from the one recorded complete"
    return None


def no_listings(source: Source) -> str:
    """The one line for an archive that holds no listings at all (a bucket of light curves only)."""
    return (f"{source.describe()} holds no listings (nothing in {layout.DOWNLOAD_SCRIPTS}/): read them from another "
            f"root with --listing-url, e.g. --listing-url {DEFAULT_MAST_URL}")


def _lists_any(source: Source) -> bool:
    """Whether ``source`` lists any sector's bulk-download script; True when that cannot be told (an HTTP archive
    may serve its listings without an index page of them: only a bucket's or a directory's listing is proof)."""
    if source.url.split(":", 1)[0].lower() in ("http", "https"):
        return True
    try:
        return bool(source.list_sectors())
    except (UsageError, SourceError, OSError):
        return True


def _fetch_listing(source: Source, relpath: str, dest: Path, url: str, sector: int, archive_id: str | None = None,
                   flag: str = "--mast-url") -> None:
    """Fetch a listing whole (the source writes it atomically), then record it complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(dest.parent)  # a listing's partial copy left by a build that was killed
    manifest = manifest_path(dest)
    manifest.unlink(missing_ok=True)  # nothing is recorded complete while the copy changes
    try:
        copy = source.fetch_listing(relpath, dest)
    except Unreachable as exc:  # no network, or a mistyped host
        raise ListingError(f"{exc.reason}: check the network and {flag}, or try the built-in demo with --demo"
                           ) from None
    except Refused as exc:  # a redirect to another origin, a content coding, a listing beyond the size cap
        raise ListingError(f"sector {sector}: {url}: {exc.reason}") from None
    except SourceError as exc:
        if exc.permanent and flag == "--mast-url" and not _lists_any(source):
            raise ListingError(no_listings(source)) from None
        if exc.permanent:
            raise ListingError(f"sector {sector}: {url} answered {exc.reason}; the archive has no such listing: "
                               f"check the sector number and {flag}") from None
        raise ListingError(f"cannot fetch {url} whole: {exc.reason} (after {exc.attempts} attempt(s)); check the "
                           f"network and {flag}, then rerun") from None
    record = {"url": url, "root": source.describe(), "size": dest.stat().st_size, "sha256": _sha256(dest),
              "validators": copy.validators, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if archive_id is not None:
        record["archive"] = archive_id
    write_text(manifest, json.dumps(record, indent=1) + "\n")


def _positions(raw: np.ndarray, *wanted: int) -> list[np.ndarray]:
    """Where each of the bytes ``wanted`` occurs in ``raw``, in one pass over it (in pieces, so the comparisons'
    temporaries stay small and each piece is read from memory once)."""
    found = [[np.empty(0, np.int64)] for _ in wanted]
    for i in range(0, len(raw), _SCAN):
        piece = raw[i:i + _SCAN]
        for byte, into in zip(wanted, found):
            into.append(np.flatnonzero(piece == byte) + i)
    return [np.concatenate(into) for into in found]


def _windows(raw: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``raw[s:s + width]`` for every ``s`` in ``starts``, as rows of one array (zero-padded past the end)."""
    inside = starts <= len(raw) - width
    if inside.all():
        return np.lib.stride_tricks.sliding_window_view(raw, width)[starts]
    out = np.zeros((len(starts), width), np.uint8)
    if inside.any():
        out[inside] = np.lib.stride_tricks.sliding_window_view(raw, width)[starts[inside]]
    for row in np.flatnonzero(~inside):  # only near the end of the file
        piece = raw[starts[row]:starts[row] + width]
        out[row, :len(piece)] = piece
    return out


def _output_spans(raw: np.ndarray, quotes: np.ndarray, line_start: np.ndarray, line_end: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each line's ``--output`` argument lies in the file: ``(has_one, begin, end)``.

    Real listings write ``--output '<path>'`` with the path as the line's first quoted text: those are found with
    numpy alone. Lines spelled otherwise (double quotes, no quotes, other token order) go through a regular
    expression one by one; a real listing has none, a hostile one costs only time. ``quotes``: where the file's
    single quotes are.
    """
    first = np.searchsorted(quotes, line_start)
    q1 = quotes[np.minimum(first, len(quotes) - 1)] if len(quotes) else line_start
    q2 = quotes[np.minimum(first + 1, len(quotes) - 1)] if len(quotes) else line_start
    found = (first + 1 < len(quotes)) & (q2 < line_end) & (q1 - len(_OUTPUT_FLAG) >= line_start)
    found[found] = (_windows(raw, q1[found] - len(_OUTPUT_FLAG), len(_OUTPUT_FLAG) + 1)
                    == np.frombuffer(_OUTPUT_FLAG + b"'", np.uint8)).all(axis=1)
    begin, end = np.where(found, q1 + 1, line_start), np.where(found, q2, line_start)
    for row in np.flatnonzero(~found):
        match = _OUTPUT_ARG.search(raw[line_start[row]:line_end[row]].tobytes())
        if match is not None:
            group = next(g for g in ("q1", "q2", "bare") if match.group(g) is not None)
            found[row] = True
            begin[row], end[row] = line_start[row] + match.start(group), line_start[row] + match.end(group)
    return found, begin, end


def parse_bulk_script(path: str | os.PathLike, sector: int) -> BulkListing:
    """Parse a bulk-download script as data: each line's ``--output`` path, strictly validated.

    A path is accepted only when it is exactly the canonical TGLC path, in this sector, of the object it names (see
    :func:`layout.objects_of_relpaths`). Every other line that is not blank or a comment is rejected and counted.
    """
    path = Path(path)
    raw = np.memmap(path, np.uint8, mode="r") if path.stat().st_size else np.empty(0, np.uint8)
    newlines, quotes = _positions(raw, ord("\n"), ord("'"))
    line_start = np.concatenate([[0], newlines + 1]).astype(np.int64, copy=False)
    line_end = np.append(newlines, len(raw)).astype(np.int64, copy=False)
    if line_start[-1] == len(raw):  # nothing after the last newline
        line_start, line_end = line_start[:-1], line_end[:-1]
    # In blocks of lines, so the temporaries stay small (fresh memory costs page faults, more the more a process holds)
    found, begin, end = (np.concatenate(part) for part in zip(*(
        _output_spans(raw, quotes, line_start[i:i + _ROWS], line_end[i:i + _ROWS])
        for i in range(0, max(len(line_start), 1), _ROWS))))

    accepted = np.zeros(len(line_start), bool)
    objects = []
    candidates = np.flatnonzero(found)
    for i in range(0, len(candidates), _ROWS):  # in slices, so the temporaries stay small
        rows = candidates[i:i + _ROWS]
        ok, *columns = layout.objects_of_relpaths(_windows(raw, begin[rows], layout.RELPATH_WIDTH),
                                                  end[rows] - begin[rows], sector)
        accepted[rows] = ok
        objects.append(columns)

    rejected_rows = [row for row in np.flatnonzero(~accepted)
                     if not _IGNORABLE.match(raw[line_start[row]:line_end[row]].tobytes())]
    rejected = [_reported(raw[line_start[row]:line_end[row]]) for row in rejected_rows[:_MAX_REPORTED_LINES]]
    if rejected:
        log.warning("%s: %d line(s) rejected (not a TGLC light curve of sector %d), e.g. %r",
                    path, len(rejected_rows), sector, rejected[0][:200])
    gaia, cam, ccd, version = (np.concatenate(column) for column in zip(*objects)) if objects else \
        (np.empty(0, np.int64), np.empty(0, np.int16), np.empty(0, np.int16), np.empty(0, np.int16))
    return BulkListing(gaiadr3_id=gaia, cam=cam, ccd=ccd, n_lines=len(line_start), n_rejected=len(rejected_rows),
                       rejected=rejected, version=version)


def _reported(line: np.ndarray) -> str:
    """A rejected line as text for the report, cut to its first _MAX_REPORTED_BYTES bytes."""
    text = line[:_MAX_REPORTED_BYTES].tobytes().decode("utf-8", "backslashreplace").rstrip("\r")
    return text if len(line) <= _MAX_REPORTED_BYTES else f"{text}... [{len(line)} bytes, cut]"


def read_target_list(path: str | os.PathLike) -> Table:
    """The target list's ``GAIADR3_ID``, ``TIC_ID``, ``RA``, ``DEC`` columns, selected by name."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", "replace").strip()
    names = [name.strip() for name in header.lstrip("#").split(",")]
    missing = [name for name in TARGET_COLUMNS if name not in names]
    if not header.startswith("#") or missing:
        raise ListingError(
            f"{path}: the target list's header must start with '#' and name the columns "
            f"{', '.join(TARGET_COLUMNS)} (missing: {', '.join(missing) or 'none'}); fetch it again with "
            "--refresh-listings")
    types = {"GAIADR3_ID": pa.int64(), "TIC_ID": pa.int64(), "RA": pa.float64(), "DEC": pa.float64()}
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(include_columns=list(TARGET_COLUMNS), column_types=types),
        )
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ListingError(f"{path}: cannot read the target list ({exc}); fetch it again with --refresh-listings"
                           ) from exc
    table = table.drop_null()
    return Table({name: table.column(name).to_numpy() for name in TARGET_COLUMNS}, copy=False)


def _distinct_sorted(ids: np.ndarray, inverse: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct ids in increasing order, the index of each one's first occurrence in ``ids``, and (with
    ``inverse``) the index in the distinct ids of each of ``ids`` (what ``np.unique`` returns, from one sort, without
    its second)."""
    order = np.argsort(ids, kind="stable")  # equal ids in their order: each one's first occurrence leads
    ordered = ids[order]
    is_start = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if len(ids) else np.empty(0, bool)
    starts = np.flatnonzero(is_start)
    first, distinct = order[starts], ordered[starts]
    if not inverse:
        return distinct, first, None
    rank = np.subtract(np.cumsum(is_start, out=ordered), 1, out=ordered)  # in place: fresh memory costs page faults
    at = np.empty(len(ids), np.int64)
    at[order] = rank
    return distinct, first, at


def check_agreement(sector: int, listed: int, targeted: int, both: int, bulk_script: str | os.PathLike = "",
                    target_list: str | os.PathLike = "") -> None:
    """Raise :class:`ListingError` when the listings do not describe the same sector: more than
    :data:`MAX_DISAGREEMENT` of the ``targeted`` distinct objects of the target list have no light curve among the
    ``listed`` distinct objects of the bulk-download script, or the other way round (``both``: in both). A few
    objects in only one listing are normal; more mean a listing cut short, stale, or of another sector."""
    no_light_curve, no_row = targeted - both, listed - both
    if no_light_curve <= MAX_DISAGREEMENT * targeted and no_row <= MAX_DISAGREEMENT * listed:
        return
    raise ListingError(
        f"the sector {sector} listings disagree: {no_light_curve} of the {targeted} objects of the target list"
        f"{_named(target_list)} ({_share(no_light_curve, targeted)}) have no light curve in the bulk-download script"
        f"{_named(bulk_script)}, and {no_row} of its {listed} light curves ({_share(no_row, listed)}) have no row in "
        f"the target list (at most {MAX_DISAGREEMENT:.0%} is normal); fetch both again with --refresh-listings, and "
        "check the sector number and --mast-url")


def _named(path: str | os.PathLike) -> str:
    return f" {path}" if path else ""


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _join(bulk: BulkListing, targets: Table, sector: int, listings: Listings | None
          ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The catalog's rows of the bulk listing and of the target list (see :func:`build_catalog`), and how many
    distinct objects each listing has. A function of its own so that its temporaries (~0.5 GB for 6 million lines)
    are freed before the catalog's columns are made: fresh memory costs page faults, more the more a process holds.
    """
    gaia = bulk.gaiadr3_id
    # Every membership test below is an index into the sorted distinct ids (no np.isin, no search of unsorted
    # keys): linear after the two sorts, for a sector of 6 million lines as of 2.
    listed, listed_first, listed_at = _distinct_sorted(gaia)
    known, known_first, _ = _distinct_sorted(np.asarray(targets["GAIADR3_ID"], np.int64), inverse=False)
    # Both sides sorted: one merge-like pass (searching sorted keys is cache-friendly even for millions).
    pos = np.searchsorted(known, listed).clip(max=max(len(known) - 1, 0))
    found = known[pos] == listed if len(known) else np.zeros(len(listed), bool)
    check_agreement(sector, len(listed), len(known), int(found.sum()),
                    *((listings.bulk_script, listings.target_list) if listings else ()))
    first_path = np.zeros(len(gaia), bool)
    first_path[listed_first] = True
    again = np.flatnonzero(~first_path)  # listed before: under the same path (dropped) or another (kept)
    if len(again):
        listed_again = np.zeros(len(listed), bool)
        listed_again[listed_at[again]] = True
        rows = np.sort(np.concatenate([listed_first[listed_again], again]))
        by_path = rows[np.lexsort((bulk.ccd[rows], bulk.cam[rows], gaia[rows]))]  # stable: earliest first
        new = np.ones(len(by_path), bool)
        new[1:] = ((gaia[by_path][1:] != gaia[by_path][:-1]) | (bulk.cam[by_path][1:] != bulk.cam[by_path][:-1])
                   | (bulk.ccd[by_path][1:] != bulk.ccd[by_path][:-1]))
        first_path[by_path[new]] = True
    in_both = np.zeros(len(gaia), bool)  # back to listing order without sorting again
    in_both[listed_first[found]] = True
    in_both[again] = found[listed_at[again]]
    in_both &= first_path
    target_of = np.full(len(listed), -1, np.int64)
    target_of[found] = known_first[pos[found]]
    rows = np.flatnonzero(in_both)
    return rows, target_of[listed_at[rows]], len(listed), len(known)


def build_catalog(bulk: BulkListing, targets: Table, sector: int, listings: Listings | None = None) -> Table:
    """Join the listings: the light curves of objects in both, each once, in bulk-listing order, with their HEALPix
    index. A light curve is a path: an object listed again under the same path is the same light curve (dropped),
    under another camera/CCD path another light curve of the same star (kept: two rows).

    Raises :class:`ListingError` when the listings disagree (see :func:`check_agreement`; ``listings`` names the
    files in its message)."""
    rows, target_rows, listed, known = _join(bulk, targets, sector, listings)
    ra = np.asarray(targets["RA"], dtype=np.float64)[target_rows]
    dec = np.asarray(targets["DEC"], dtype=np.float64)[target_rows]
    gaia, cam, ccd = bulk.gaiadr3_id[rows], bulk.cam[rows], bulk.ccd[rows]
    catalog = Table(
        {
            "gaiadr3_id": gaia,
            "TIC_ID": np.asarray(targets["TIC_ID"], dtype=np.int64)[target_rows],
            "RA": ra,
            "DEC": dec,
            "sector": np.full(len(rows), sector, dtype=np.int16),
            "cam": cam,
            "ccd": ccd,
            "path": layout.lc_relpaths(gaia, sector, cam, ccd, 1 if bulk.version is None else bulk.version[rows]),
            "healpix": np.asarray(_healpy().ang2pix(layout.NSIDE, ra, dec, lonlat=True, nest=layout.NEST), np.int64),
        },
        meta={"sector": sector, "nside": layout.NSIDE, "nest": layout.NEST},
        copy=False,
    )
    log.info("Sector %d catalog: %d light curves (%d listed, %d distinct objects; %d in the target list)",
             sector, len(catalog), len(bulk.gaiadr3_id), listed, known)
    return catalog


@contextmanager
def reused_memory():
    """While the catalogs and their plan are made: memory freed is reused rather than given back to the kernel, and
    numpy's large arrays are not asked to be huge pages. Fresh memory costs page faults, and on a virtual machine
    whose host takes freed memory back (the benchmarks') a fresh huge page costs ~1-2 s per GB; glibc maps every block
    above its threshold (at most 32 MB: 4 million int64) apart and unmaps it when freed, so at 6 million lines every
    temporary was fresh, at 2 million most were reused: the system time grew 4-5x for 3x the lines. Afterwards what
    is free goes back (``malloc_trim``). The allocator's settings with glibc only; elsewhere just the huge pages. They
    are the whole process's: glibc's thresholds stay fixed afterwards (at the values its own moving ones end at)."""
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    tune = hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")
    hugepages = (np._core if hasattr(np, "_core") else np.core).multiarray._set_madvise_hugepage
    huge = hugepages(False)
    if tune:  # M_MMAP_MAX: no mapping of its own for a large block; M_TRIM_THRESHOLD: up to 2 GB kept free on top
        libc.mallopt(-4, 0), libc.mallopt(-1, 2**31 - 1)
    try:
        yield
    finally:
        hugepages(huge)
        if tune:  # as glibc's moving thresholds end after large arrays (they no longer move once set)
            libc.mallopt(-4, 65536), libc.mallopt(-3, 32 << 20), libc.mallopt(-1, 64 << 20), libc.malloc_trim(0)


def catalog_path(tglc_data_path: str | os.PathLike, sector: int, tiny: bool) -> Path:
    tag = layout.sector_tag(sector)
    return Path(layout.sector_dir(tglc_data_path, sector)) / f"{tag}-catalog{'_tiny' if tiny else ''}.hdf5"


def save_catalog(catalog: Table, path: Path) -> None:
    """Write the catalog as HDF5 (astropy's format, metadata kept), atomically."""
    with atomically(path) as tmp:
        try:
            catalog.write(tmp, path="catalog", format="hdf5", serialize_meta=True, overwrite=True)
        except RuntimeError as exc:  # h5py: a write that fails as the file closes (a full disk), not an OSError
            raise OSError(errno.EIO, f"cannot write the catalog ({exc})", str(path)) from None
    log.info("Saved the catalog to %s", path)


def _healpy():
    """healpy, imported when first needed: it imports matplotlib (~0.9 s), which the workers of a build never use."""
    import healpy

    return healpy
