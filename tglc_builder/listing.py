"""The sector's two MAST listings, parsed as untrusted data, joined into the sector catalog.

The bulk-download script has one to two million lines, so every step here is vectorised (pyarrow's multi-threaded
CSV reader and RE2 kernels, numpy sorting); no Python code runs per line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import healpy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from astropy.table import Table

from . import layout
from .errors import UsageError
from .net import DEFAULT_MAX_ATTEMPTS, DownloadError, download_file, make_session

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("GAIADR3_ID", "TIC_ID", "RA", "DEC")
# The quoted (or bare) argument of --output, wherever it stands on the line.
_OUTPUT_ARG = r"""--output\s+(?:'(?P<q1>[^']*)'|"(?P<q2>[^"]*)"|(?P<bare>[^\s'"]+))"""
# Lines that carry nothing: the shebang, comments, white space.
_IGNORABLE = r"^\s*(#.*)?$"
_MAX_REPORTED_LINES = 1000
_INT64_MAX = str(np.iinfo(np.int64).max)


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
    path: np.ndarray  # bytes, relative to the archive root
    n_lines: int = 0
    n_rejected: int = 0
    rejected: list[str] = field(default_factory=list)  # the first _MAX_REPORTED_LINES rejected lines


def fetch_listings(sector: int, tglc_data_path: str | os.PathLike, mast_url: str | None = None,
                   max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Listings:
    """Download the two listings into ``<tglc_data_path>/sSSSS/``, reusing complete copies already there.

    Downloads land under a temporary name and are renamed when complete, so a file at the final name is complete.
    """
    base = layout.resolve_mast_url(mast_url)
    directory = Path(layout.sector_dir(tglc_data_path, sector))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    session = make_session(max_attempts=max_attempts)
    for key, relpath in (("bulk_script", layout.bulk_script_relpath(sector)),
                         ("target_list", layout.target_list_relpath(sector))):
        dest = directory / Path(relpath).name
        if dest.exists():
            log.info("Reusing %s", dest)
        else:
            url = f"{base}/{relpath}"
            log.info("Fetching %s", url)
            try:
                download_file(session, url, dest, max_attempts=max_attempts, progress=True)
            except DownloadError as exc:
                if exc.permanent:
                    raise ListingError(f"sector {sector}: {url} answered {exc.reason}; the archive has no such "
                                       "sector, check the sector number and the archive URL") from None
                raise ListingError(f"cannot fetch {url}: {exc.reason}; check the network and --mast-url") from None
        paths[key] = dest
    return Listings(sector=sector, **paths)


def _read_lines(path: Path) -> pa.Array:
    """Every non-empty line of a text file as one binary array (CR LF and LF endings both handled)."""
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["line"], block_size=1 << 24),
        # \x1f (unit separator) never occurs in a text listing, so every line is one field; a line holding one is just malformed.
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False,
                                         newlines_in_values=False, ignore_empty_lines=True,
                                         invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.binary()}, strings_can_be_null=False),
    )
    return table.column("line").combine_chunks()


def parse_bulk_script(path: str | os.PathLike, sector: int) -> BulkListing:
    """Parse a bulk-download script as data: each line's ``--output`` path, strictly validated.

    A path is accepted only when it follows the TGLC naming scheme for this sector exactly (which also excludes
    absolute paths, ``..`` and other hosts); anything else that is not blank or a comment is rejected and counted.
    """
    lines = _read_lines(Path(path))
    ignorable = pc.match_substring_regex(lines, _IGNORABLE).to_numpy(zero_copy_only=False)
    output = pc.extract_regex(lines, _OUTPUT_ARG)
    # Exactly one alternative matched; the others are empty, so joining them yields the path.
    relpath = pc.binary_join_element_wise(output.field("q1"), output.field("q2"), output.field("bare"), b"")
    parts = pc.extract_regex(relpath, layout.LC_RELPATH_PATTERN)
    ok = parts.is_valid().to_numpy(zero_copy_only=False)

    # Every captured group is ASCII digits by construction, so the string casts are safe.
    field_ = {name: pc.cast(parts.field(name), pa.string()) for name in
              ("sector", "sector2", "cam", "cam2", "ccd", "ccd2", "z0", "z1", "z2", "z3", "gaia")}
    tag = layout.sector_tag(sector)[1:]
    z19 = pc.utf8_lpad(field_["gaia"], 19, "0")
    dirs = pc.binary_join_element_wise(field_["z0"], field_["z1"], field_["z2"], field_["z3"], "")
    checks = [
        pc.equal(field_["sector"], tag), pc.equal(field_["sector2"], tag),
        pc.equal(field_["cam"], field_["cam2"]), pc.equal(field_["ccd"], field_["ccd2"]),
        pc.equal(dirs, pc.binary_join_element_wise("00", pc.utf8_slice_codeunits(z19, 0, 14), "")),
        pc.less_equal(z19, _INT64_MAX),  # ids are int64, like Gaia's
    ]
    for check in checks:
        ok &= pc.fill_null(check, False).to_numpy(zero_copy_only=False)

    rejected = ~ok & ~ignorable
    n_rejected = int(rejected.sum())
    rejected_lines = []
    if n_rejected:
        sample = lines.filter(pa.array(rejected)).slice(0, _MAX_REPORTED_LINES).to_pylist()
        rejected_lines = [line.decode("utf-8", "backslashreplace").rstrip("\r") for line in sample]
        log.warning("%s: %d line(s) rejected (not a TGLC light curve of sector %d), e.g. %r",
                    path, n_rejected, sector, rejected_lines[0][:200])

    mask = pa.array(ok)
    return BulkListing(
        gaiadr3_id=field_["gaia"].filter(mask).cast(pa.int64()).to_numpy(),
        cam=field_["cam"].filter(mask).cast(pa.int16()).to_numpy(),
        ccd=field_["ccd"].filter(mask).cast(pa.int16()).to_numpy(),
        path=relpath.filter(mask).to_numpy(zero_copy_only=False).astype("S"),
        n_lines=len(lines),
        n_rejected=n_rejected,
        rejected=rejected_lines,
    )


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
            f"{', '.join(TARGET_COLUMNS)} (missing: {', '.join(missing) or 'none'}); delete the file to fetch it again"
        )
    types = {"GAIADR3_ID": pa.int64(), "TIC_ID": pa.int64(), "RA": pa.float64(), "DEC": pa.float64()}
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(include_columns=list(TARGET_COLUMNS), column_types=types),
        )
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ListingError(f"{path}: cannot read the target list ({exc}); delete the file to fetch it again") from exc
    table = table.drop_null()
    return Table({name: table.column(name).to_numpy() for name in TARGET_COLUMNS})


def _first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct id, in their original order."""
    _, first = np.unique(ids, return_index=True)
    first.sort()
    return first


def build_catalog(bulk: BulkListing, targets: Table, sector: int) -> Table:
    """Join the listings: objects in both, each once, in bulk-listing order, with their HEALPix index."""
    keep = _first_occurrences(bulk.gaiadr3_id)
    gaia = bulk.gaiadr3_id[keep]

    target_rows = _first_occurrences(np.asarray(targets["GAIADR3_ID"]))
    target_gaia = np.asarray(targets["GAIADR3_ID"])[target_rows]
    order = np.argsort(target_gaia, kind="stable")
    sorted_gaia = target_gaia[order]
    pos = np.searchsorted(sorted_gaia, gaia).clip(max=max(len(sorted_gaia) - 1, 0))
    found = (sorted_gaia[pos] == gaia) if len(sorted_gaia) else np.zeros(len(gaia), bool)
    keep, target_index = keep[found], target_rows[order[pos[found]]]

    ra = np.asarray(targets["RA"], dtype=np.float64)[target_index]
    dec = np.asarray(targets["DEC"], dtype=np.float64)[target_index]
    catalog = Table(
        {
            "gaiadr3_id": bulk.gaiadr3_id[keep],
            "TIC_ID": np.asarray(targets["TIC_ID"], dtype=np.int64)[target_index],
            "RA": ra,
            "DEC": dec,
            "sector": np.full(len(keep), sector, dtype=np.int16),
            "cam": bulk.cam[keep],
            "ccd": bulk.ccd[keep],
            "path": bulk.path[keep],
            "healpix": healpy.ang2pix(layout.NSIDE, ra, dec, lonlat=True, nest=layout.NEST).astype(np.int64),
        },
        meta={"sector": sector, "nside": layout.NSIDE, "nest": layout.NEST},
    )
    log.info("Sector %d catalog: %d objects (%d listed, %d distinct; %d in the target list)",
             sector, len(catalog), len(bulk.gaiadr3_id), len(gaia), len(target_gaia))
    return catalog


def catalog_path(tglc_data_path: str | os.PathLike, sector: int, tiny: bool) -> Path:
    tag = layout.sector_tag(sector)
    return Path(layout.sector_dir(tglc_data_path, sector)) / f"{tag}-catalog{'_tiny' if tiny else ''}.hdf5"


def save_catalog(catalog: Table, path: Path) -> None:
    """Write the catalog as HDF5 (astropy's format, metadata kept), atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        catalog.write(tmp, path="catalog", format="hdf5", serialize_meta=True, overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Saved the catalog to %s", path)
