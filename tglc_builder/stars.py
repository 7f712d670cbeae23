"""The stars catalog: one row per Gaia DR3 star, every sector, a join stage over finished per-sector outputs (HDF5
dataset folders and/or HATS collections, see formats/) into a HATS collection, laid out as docs/DATASET.md says ("The
stars catalog"). Beside hats' files, ``tglc_stars/`` holds the stamp ``.tglc_stars.json`` (sectors, columns, layout,
phase: the commit mark), ``.tglc_stars_histogram.npz`` (stars and cadences per order-10 pixel, for incremental
builds) and ``.staging/`` (the partitions of a build not yet committed).

**Work.** Units are plain functions over plain data, run on the project's executor: :func:`plan_pixels` (order-4
pixels: the stars' order-10 pixels and cadences, for the partitioning) and :func:`join_partition` (one stars
partition: read only the rows of its stars from the per-sector files of the order-4 pixels it covers, in chunks of
about :data:`CHUNK_CADENCES` cadences, one Parquet row group each). So no process holds more than one partition's
stars, and only a chunk of them at a time. Per-sector outputs are partitioned at order 4 by each light curve's own
target-list position. A star is one row wherever its light curves lie: its canonical entry (lowest sector, then
camera, CCD) gives its position and partition, in a fresh build as in an incremental one; the few stars whose
positions differ between sectors across an order-4 edge are found from the plan (:class:`Split`) and joined whole
in their partition.

**Integrity.** Partition files are written under temporary names in ``.staging/``, checked (their footer read back:
mark, columns, rows; their bytes on disk hashed against the bytes written, see :func:`_check_and_seal`), sealed (the
SHA-256 of the whole file in the mark, as the per-sector formats do: ``--verify`` checks it) and renamed there. Then
the stamp is written with phase ``commit`` (the new layout, the staged files to move, the old files to remove): from
then on the build is decided, and :func:`_finish` (which a rerun resumes) moves the staged files into ``dataset/``,
removes the superseded ones, writes hats' metadata, the margin cache, the indexes, the card, ``hats.properties`` and
last the stamp with phase ``finished``. A kill before the commit leaves the committed collection as it was (staged
files whose mark matches the rerun's plan are kept).

**Incremental.** Sectors already in the collection are skipped, unless their output changed since they joined (built
again: the checksums of its files differ), when their entries are read again from it. The partitioning is hats-import's
(``generate_alignment``) over the histogram of all stars, old and new; a partition whose pixel and stars are
unchanged is not rewritten, so the result equals a fresh build of all the sectors, row for row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import __version__
from .columns import ColumnSet, column_set
from .errors import UsageError
from .folders import atomically
from .formats.hats import _TEMPORARY, MARGIN_ARCSEC, SPATIAL_INDEX, SPATIAL_ORDER, extra_scalars, spatial_index

log = logging.getLogger(__name__)

CATALOG = "tglc_stars"
STAMP = ".tglc_stars.json"
HISTOGRAM = ".tglc_stars_histogram.npz"
STAGING = ".staging"
SOURCE_ORDER = 4  # per-sector outputs are partitioned at order 4 (nside 16)
HIGHEST_ORDER = 10  # hats-import's default highest order; also the point map's order
EDGE_ORDER = 10  # a light curve within a pixel of this order (3.4 arcmin) of its order-4 pixel's edge: see _near_edge
MARGIN_NAME = f"{CATALOG}_{int(MARGIN_ARCSEC)}arcs"
INDEX_COLUMNS = ("gaiadr3_id", "TIC_ID")
PARTITION_BYTES = 1 << 30  # default: keep a partition's Parquet file under about 1 GB
# Bytes of Parquet per cadence, measured on the demo (zstd 3, byte-stream split): 8.6 KB per 1,282-cadence light
# curve with the seed columns (6.7 B), ~2x with --columns all; rounded up, so partitions stay under the target.
BYTES_PER_CADENCE = {"seed": 8, "all": 16}
CHUNK_CADENCES = 1 << 21  # cadences per row group written (~50-100 MB of Arrow in memory at once)
MARK_KEY = "tglc_stars"
# a planning unit's order-4 pixels: up to this many, or light curves (its index ~50 B each): a pixel's work is
# small and its fixed cost was most of the plan's (the demo's pixels hold ~10 light curves per sector)
PLAN_PIXELS, PLAN_ROWS = 32, 1 << 18
WHOLE_BYTES = 1 << 26  # a join unit's small per-sector files read whole at once, up to this many bytes (see _Files)
_LOCAL = pafs.LocalFileSystem()  # given, not inferred from each path: 25% of opening a small file (measured)
_HDF5_SHARD = re.compile(r"^\d{3,}-of-\d{3,}\.hdf5$")
_HATS_FILE = re.compile(r"^(Npix=\d+\.parquet|\d{3,}-of-\d{3,}\.parquet)$")


# ---- inputs ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One file of light curves: a per-sector shard (``hdf5``/``hats``, one order-4 pixel) or a partition of the
    existing stars catalog (``stars``). ``cam_ccd``: for HDF5 files without camera/ccd columns (``--columns seed``),
    each row's camera and CCD from the sector's catalog, ``(n, 2)`` int16."""

    kind: str
    path: str
    sector: int  # 0 for a stars partition
    order: int
    pixel: int
    cam_ccd: np.ndarray | None = field(default=None, compare=False)
    digest: str = field(default="", compare=False)  # the SHA-256 of its completion mark (per-sector files)
    rows: int = field(default=0, compare=False)  # light curves in it (its mark's count; per-sector files)

    def pixels4(self) -> range:
        """The order-4 pixels this file covers."""
        if self.order <= SOURCE_ORDER:
            shift = 2 * (SOURCE_ORDER - self.order)
            return range(self.pixel << shift, (self.pixel + 1) << shift)
        return range(self.pixel >> 2 * (self.order - SOURCE_ORDER), (self.pixel >> 2 * (self.order - SOURCE_ORDER)) + 1)


def find_sector_outputs(paths: list[str | os.PathLike], sector_catalogs: dict | None = None,
                        ) -> tuple[dict[int, list[Source]], str, dict[str, str]]:
    """The finished per-sector outputs in ``paths`` (HDF5 dataset folders, HATS collections or catalogs): sources
    by sector, the column set, and the flag columns' widest integer types. UsageError (exit 2) names a folder that
    holds no finished output, or outputs of mixed column sets."""
    by_sector: dict[int, list[Source]] = {}
    origin: dict[int, Path] = {}
    columns: set[str] = set()
    flags = {"tess_flags": "int16", "tglc_flags": "int16"}
    empty: list[Path] = []
    for raw in paths:
        folder = Path(raw)
        found = _hdf5_sources(folder, columns, flags, sector_catalogs or {}) + _hats_sources(folder, columns, flags)
        if not found:
            empty.append(folder)
        for sector in sorted({s.sector for s in found}):
            if sector in by_sector and origin[sector] != folder:
                log.info("Sector %d: using %s (also in %s)", sector, origin[sector], folder)
                continue
            mine = [s for s in found if s.sector == sector]
            kinds = {s.kind for s in mine}
            if len(kinds) > 1:  # both formats in one folder cannot happen; keep one anyway
                mine = [s for s in mine if s.kind == "hats"]
            by_sector[sector], origin[sector] = mine, folder
    for folder in empty:  # a build's folder of a format this stage does not read, or a wrong path among good ones
        if not by_sector or not folder.is_dir():
            raise UsageError(f"{folder}: no finished per-sector output (TGLC/healpix=*/*.hdf5 or a tglc_sSSSS HATS "
                             "catalog); build the sector first, or check the path")
        log.warning("%s: no finished per-sector output; left out of the stars catalog", folder)
    if len(columns) > 1:
        raise UsageError(f"the per-sector outputs were built with different --columns ({', '.join(sorted(columns))});"
                         " build the stars catalog from outputs of one column set")
    return by_sector, (columns.pop() if columns else "seed"), flags


def _widen(flags: dict[str, str], name: str, dtype: Any) -> None:
    if name in flags and np.dtype(dtype).itemsize > np.dtype(flags[name]).itemsize:
        flags[name] = np.dtype(dtype).name


def _hdf5_sources(folder: Path, columns: set[str], flags: dict[str, str], sector_catalogs: dict) -> list[Source]:
    import h5py

    from .formats.hdf5 import COMPLETE

    out: list[Source] = []
    root = folder / "TGLC"
    if not root.is_dir():
        return out
    for directory in sorted(root.glob("healpix=*")):
        if not directory.name[8:].isdigit():
            continue
        for file in sorted(directory.iterdir()):
            if not _HDF5_SHARD.match(file.name):
                continue
            with h5py.File(file, "r") as h5:
                mark = json.loads(h5.attrs.get(COMPLETE, "null") or "null")
                if not mark:
                    raise UsageError(f"{file} is not a finished shard file (no {COMPLETE} mark); rerun the sector's "
                                     "build to finish it, then build the stars catalog")
                for name in flags:
                    _widen(flags, name, h5[name].dtype)
                has_camera = "camera" in h5 and "ccd" in h5
                n = int(mark["rows"])
            columns.add(mark["columns"])
            out.append(Source("hdf5", str(file), int(mark["sector"]), SOURCE_ORDER, int(directory.name[8:]),
                              None if has_camera else np.zeros((n, 2), np.int16), mark.get("sha256", ""), n))
    if any(s.cam_ccd is not None for s in out):
        out = _with_cameras(folder, out, sector_catalogs)
    return out


def _with_cameras(folder: Path, sources: list[Source], sector_catalogs: dict) -> list[Source]:
    """Camera and CCD of each row of HDF5 files that lack them, from the sector's catalog (``sSSSS-catalog.hdf5``
    beside the default output folder, ``<tglc_data_path>/sSSSS/``): a pixel's rows are its catalog rows in catalog
    order, so the k-th row of an id in the pixel's files is its k-th row in the catalog."""
    import h5py

    from .listing import catalog_path

    out = []
    for sector in sorted({s.sector for s in sources}):
        mine = [s for s in sources if s.sector == sector]
        where = Path(sector_catalogs[sector]).parent if sector in sector_catalogs else folder.parent.parent
        candidates = [catalog_path(where, sector, tiny) for tiny in (False, True)]
        ids_per_file = {}
        for s in mine:
            with h5py.File(s.path, "r") as h5:
                ids_per_file[s.path] = h5["gaiadr3_id"][()]
        catalog = None
        for path in candidates:
            if not path.is_file():
                continue
            with h5py.File(path, "r") as h5:
                table = h5["catalog"]
                cat = {name: table[name] for name in ("gaiadr3_id", "cam", "ccd")}
            if all(np.isin(ids, cat["gaiadr3_id"]).all() for ids in ids_per_file.values()):
                catalog = cat
                break
        if catalog is None:
            raise UsageError(f"{folder}: its HDF5 files have no camera/ccd columns (--columns seed) and the sector "
                             f"{sector} catalog ({candidates[0]}) is not beside it; build with the default output "
                             "paths or --columns all")
        order = np.argsort(catalog["gaiadr3_id"], kind="stable")
        sorted_ids = catalog["gaiadr3_id"][order]
        used: dict[int, int] = {}
        for s in mine:
            ids = ids_per_file[s.path]
            start = np.searchsorted(sorted_ids, ids, side="left")
            rank = _ranks(ids, used)
            row = order[np.minimum(start + rank, len(order) - 1)]
            cam_ccd = np.stack([catalog["cam"][row], catalog["ccd"][row]], axis=1).astype(np.int16)
            out.append(Source(s.kind, s.path, s.sector, s.order, s.pixel, cam_ccd, s.digest, s.rows))
    return out + [s for s in sources if s.cam_ccd is None]


def _ranks(ids: np.ndarray, used: dict[int, int]) -> np.ndarray:
    """The occurrence rank of each id (0 for its first row), continuing the counts of earlier files in ``used``."""
    ranks = np.empty(len(ids), np.int64)
    for i, g in enumerate(ids.tolist()):
        ranks[i] = used.get(g, 0)
        used[g] = ranks[i] + 1
    return ranks


def _hats_sources(folder: Path, columns: set[str], flags: dict[str, str]) -> list[Source]:
    from .formats.hats import MARK_KEY as PIXEL_MARK

    catalogs = [folder] if (folder / "hats.properties").is_file() and re.fullmatch(r"tglc_s\d{4}", folder.name) \
        else sorted(d for d in folder.glob("tglc_s[0-9][0-9][0-9][0-9]") if d.is_dir()) if folder.is_dir() else []
    out: list[Source] = []
    seen = None
    for catalog in catalogs:
        if not (catalog / "hats.properties").is_file():
            raise UsageError(f"{catalog} is not a finished HATS catalog (no hats.properties); rerun the sector's "
                             "build to finish it")
        for file in sorted((catalog / "dataset").rglob("*.parquet")):
            if not _HATS_FILE.match(file.name) or file.name.startswith("."):
                continue
            try:  # the footer once: the mark and the schema
                meta = pq.read_metadata(file, filesystem=_LOCAL)
                mark = json.loads((meta.metadata or {})[PIXEL_MARK.encode()])
            except (OSError, KeyError, ValueError, pa.ArrowException):
                raise UsageError(f"{file} is not a finished pixel file; rerun the sector's build to finish it") \
                    from None
            columns.add(mark["columns"])
            if seen is None or not meta.schema.equals(seen):  # a catalog's files share theirs: converted once
                seen, lightcurve = meta.schema, meta.schema.to_arrow_schema().field("lightcurve").type
                for name in flags:
                    _widen(flags, name, lightcurve.field(name).type.value_type.to_pandas_dtype())
            out.append(Source("hats", str(file), int(mark["sector"]), SOURCE_ORDER, int(mark["pixel"]),
                              digest=mark.get("sha256", ""), rows=int(mark["rows"])))
    return out


# ---- schema ------------------------------------------------------------------------------------------------------
def _list(value_type: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", value_type))  # as Parquet names it, so the schema reads back equal


def stars_schema(columns: ColumnSet, flags: dict[str, str]) -> pa.Schema:
    """The main catalog's columns (the contract's order): ids, position, sectors, and the two nested columns as
    structs of lists (nested-pandas' layout, which LSDB reads as nested columns)."""
    from .formats.hats import _arrow, _field

    info = [_field("sector", _list(pa.int16()), "", "TESS sector"),
            _field("camera", _list(pa.int16()), "", "TESS camera"),
            _field("ccd", _list(pa.int16()), "", "TESS CCD")]
    scalars = {s.name: s for s in columns.scalars}
    for name in ("psf_flux_err", "aper_flux_err"):
        info.append(_field(name, _list(pa.float64()), scalars[name].unit, scalars[name].description))
    info.append(_field("n_cadences", _list(pa.int32()), "", "cadences of the light curve in lightcurve"))
    info += [_field(s.name, _list(_arrow(s.dtype)), s.unit, s.description) for s in extra_scalars(columns)]
    series = [_field("sector", _list(pa.int16()), "", "TESS sector of the cadence")]
    for s in columns.series:
        dtype = np.dtype(flags.get(s.name, s.dtype))
        series.append(_field(s.name, _list(pa.from_numpy_dtype(dtype)), s.unit, s.description))
    return pa.schema([
        _field(SPATIAL_INDEX, pa.int64(), "", "HEALPix order-29 nested index of (RA, DEC): HATS' spatial index"),
        _field("gaiadr3_id", pa.int64(), "", "Gaia DR3 source id"),
        _field("TIC_ID", pa.int64(), "", "TESS Input Catalog id"),
        _field("RA", pa.float64(), "deg", "right ascension (ICRS), target list of the lowest sector"),
        _field("DEC", pa.float64(), "deg", "declination (ICRS), target list of the lowest sector"),
        _field("n_sectors", pa.int16(), "", "number of distinct sectors"),
        _field("sectors", _list(pa.int16()), "", "sectors of the star's light curves, ascending"),
        _field("sector_info", pa.struct(info), "", "one entry per light curve, by (sector, camera, ccd)"),
        _field("lightcurve", pa.struct(series), "", "every cadence of every light curve, in sector_info's order"),
    ])


def _entry_schema(schema: pa.Schema) -> pa.Schema:
    """One row per light curve (the join's working table): ids, position, sector_info's fields as scalars, the
    series as lists."""
    info = schema.field("sector_info").type
    fields = [pa.field("gaiadr3_id", pa.int64()), pa.field("TIC_ID", pa.int64()), pa.field("RA", pa.float64()),
              pa.field("DEC", pa.float64())]
    fields += [pa.field(f.name, f.type.value_type) for f in info]
    fields += [pa.field(f.name, f.type) for f in schema.field("lightcurve").type if f.name != "sector"]
    return pa.schema(fields)


# ---- reading sources -----------------------------------------------------------------------------------------------
_INDEX = ("gaiadr3_id", "sector", "camera", "ccd", "n_cadences", "spatial", "row", "rank")
_ONE_THREAD = {"use_threads": False}


class _Files(dict):
    """The files a unit reads, each opened once (its footer parsed once: the index and then the rows of
    its stars come from the same handle), closed together. Read with ``use_threads=False`` (:data:`_ONE_THREAD`):
    units run one per core already, and Arrow's threads cost ~25% more CPU per read of a small file (measured).
    ``room``: bytes (decoded) of per-sector files of one row group that :func:`read_index` may read whole, their
    index and light curves in one read (in ``whole`` until :func:`_whole_entries` takes them): a read's fixed cost is
    most of a small file's (a sparse sky's or the demo's, a few light curves each)."""

    def __init__(self, room: int = 0):
        super().__init__()
        self.room, self.whole, self.columns = room, {}, {}

    def open(self, path: str) -> pq.ParquetFile:
        if path not in self:
            # read in this thread, not pre-buffered by Arrow's I/O threads: ~10% less CPU per small file (measured)
            self[path] = pq.ParquetFile(path, page_checksum_verification=True, pre_buffer=False, filesystem=_LOCAL)
        return self[path]

    def h5(self, path: str):
        """An HDF5 file (h5py.File), opened once too."""
        import h5py

        if path not in self:
            self[path] = h5py.File(path, "r")
        return self[path]

    def column(self, path: str, name: str) -> np.ndarray:
        """A one-value-per-light-curve column of an HDF5 file, read once (the index and the entries share some;
        h5py's fixed cost per read is most of a small file's)."""
        if (path, name) not in self.columns:
            self.columns[path, name] = self.h5(path)[name][()]
        return self.columns[path, name]

    def __enter__(self) -> "_Files":
        return self

    def __exit__(self, *exc) -> None:
        for pf in self.values():
            pf.close()


def read_index(source: Source, files: _Files) -> dict[str, np.ndarray]:
    """Per light curve of ``source``: gaiadr3_id, sector, camera, ccd, n_cadences, ``spatial`` (the order-29
    index of its position; a stars partition's: its star's), ``row`` (its row in the file; for a stars partition,
    the star's row) and ``rank`` (a stars partition's: its place among its star's entries). Only the columns the
    plan and the join need: each one read costs per file (the demo's files hold a few light curves)."""
    if source.kind == "hdf5":
        out = {name: files.column(source.path, name) for name in ("gaiadr3_id", "RA", "DEC", "n_cadences")}
        if source.cam_ccd is None:
            out["camera"], out["ccd"] = files.column(source.path, "camera"), files.column(source.path, "ccd")
        else:
            out["camera"], out["ccd"] = source.cam_ccd[:, 0], source.cam_ccd[:, 1]
        out["sector"] = np.full(len(out["gaiadr3_id"]), source.sector, np.int16)
        out["row"] = np.arange(len(out["gaiadr3_id"]))
        out["spatial"] = _spatial(out.pop("RA"), out.pop("DEC"))
    elif source.kind == "hats":  # the file's spatial index is hats' of (RA, DEC), as _spatial computes it
        pf = files.open(source.path)
        size = pf.metadata.row_group(0).total_byte_size if pf.num_row_groups == 1 else files.room + 1
        if size <= files.room:
            table = files.whole[source.path] = pf.read(**_ONE_THREAD)
            files.room -= size
        else:
            table = pf.read(columns=["gaiadr3_id", "camera", "ccd", "n_cadences", SPATIAL_INDEX], **_ONE_THREAD)
        out = {name: table.column(name).to_numpy() for name in ("gaiadr3_id", "camera", "ccd", "n_cadences")}
        out["sector"] = np.full(table.num_rows, source.sector, np.int16)  # one sector's file
        out["spatial"] = table.column(SPATIAL_INDEX).to_numpy()
        out["row"] = np.arange(table.num_rows)
    else:
        table = files.open(source.path).read(columns=["gaiadr3_id", SPATIAL_INDEX, "sector_info"], **_ONE_THREAD)
        info = table.column("sector_info").combine_chunks()
        lengths = pc.list_value_length(pc.struct_field(info, "sector")).to_numpy()
        out = {"gaiadr3_id": np.repeat(table.column("gaiadr3_id").to_numpy(), lengths),
               "spatial": np.repeat(table.column(SPATIAL_INDEX).to_numpy(), lengths)}
        for name in ("sector", "camera", "ccd", "n_cadences"):
            out[name] = pc.list_flatten(pc.struct_field(info, name)).to_numpy()
        out["row"] = np.repeat(np.arange(table.num_rows), lengths)
        out["rank"] = np.arange(len(out["row"])) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out.setdefault("rank", np.zeros(len(out["row"]), np.int64))
    out = {k: np.asarray(v) for k, v in out.items()}
    for name, dtype in (("sector", np.int16), ("camera", np.int16), ("ccd", np.int16), ("n_cadences", np.int32)):
        out[name] = out[name].astype(dtype, copy=False)
    return out


def read_entries(source: Source, rows: np.ndarray, entry_schema: pa.Schema, files: _Files) -> pa.Table:
    """The light curves at file rows ``rows`` (sorted, unique) of ``source``, as the entry table (values bit for
    bit; flags widened to the catalog's type)."""
    series = [f for f in entry_schema if pa.types.is_list(f.type)]
    if source.kind == "hdf5":
        h5 = files.h5(source.path)
        # the span of the rows in one slice per column, then numpy: h5py's point selections cost more than it
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        at = rows - lo
        cols: dict[str, Any] = {}
        for name in ("gaiadr3_id", "TIC_ID", "RA", "DEC", "n_cadences", *(
                f.name for f in entry_schema if not pa.types.is_list(f.type) and f.name in h5)):
            cols[name] = files.column(source.path, name)[lo:hi][at]
        n = cols["n_cadences"].astype(np.int64)
        width = int(n.max()) if len(n) else 0
        inside = np.arange(width) < n[:, None]
        offsets = pa.array(np.concatenate([[0], np.cumsum(n)]).astype(np.int32))
        for f in series:
            flat = h5[f.name][lo:hi, :width][at][inside].astype(f.type.value_type.to_pandas_dtype(), copy=False)
            cols[f.name] = pa.ListArray.from_arrays(offsets, pa.array(flat))
        cols["sector"] = np.full(len(rows), source.sector, np.int16)
        if source.cam_ccd is not None:
            cols["camera"], cols["ccd"] = source.cam_ccd[rows, 0], source.cam_ccd[rows, 1]
        arrays = [pa.array(cols[f.name]).cast(f.type) if not pa.types.is_list(f.type) else cols[f.name].cast(f.type)
                  for f in entry_schema]
        return pa.Table.from_arrays(arrays, schema=entry_schema)
    if source.kind == "hats":
        pf = files.open(source.path)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
        table = pf.read_row_groups(groups.tolist(), columns=[f.name for f in entry_schema if not pa.types.is_list(
            f.type)] + ["lightcurve"], **_ONE_THREAD)
        local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups]) if len(groups) else \
            np.zeros(0, np.int64)
        return _take_entries(_as_entries(table, entry_schema), np.searchsorted(local, rows))
    return _read_star_entries(source, rows, entry_schema, files)[0]


def _as_entries(table: pa.Table, entry_schema: pa.Schema) -> pa.Table:
    """Rows of a per-sector HATS file as the entry table: ``lightcurve``'s series as columns (in one flatten, no
    copy), flags widened."""
    names = [f"lightcurve.{f.name}" if pa.types.is_list(f.type) else f.name for f in entry_schema]
    return table.flatten().select(names).rename_columns(entry_schema.names).cast(entry_schema)


def _whole_entries(sources: list[Source], files: _Files, entry_schema: pa.Schema) -> tuple[pa.Table, dict]:
    """The entry table of the files :func:`read_index` read whole, in one chunk (gathered from at once: a gather's
    fixed cost per chunk and column is most of a small file's), and the row where each one's rows start in it (by
    source number)."""
    tables, starts, at = [], {}, 0
    for i, s in enumerate(sources):
        if s.path in files.whole:
            tables.append(files.whole.pop(s.path))
            starts[i], at = at, at + tables[-1].num_rows
    if not tables:
        return entry_schema.empty_table(), starts
    # sectors' flags may differ in width: "permissive" takes the wider, then the catalog's
    return _as_entries(pa.concat_tables(tables, promote_options="permissive"), entry_schema).combine_chunks(), starts


def _read_star_entries(source: Source, rows: np.ndarray, entry_schema: pa.Schema, files: _Files
                       ) -> tuple[pa.Table, np.ndarray]:
    """Stars ``rows`` of a stars partition, exploded into their entries (in file order), and each star's count."""
    pf = files.open(source.path)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
    table = pf.read_row_groups(groups.tolist(), columns=["gaiadr3_id", "TIC_ID", "RA", "DEC", "sector_info",
                                                         "lightcurve"], **_ONE_THREAD)
    local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups]) if len(groups) else \
        np.zeros(0, np.int64)
    table = table.take(pa.array(np.searchsorted(local, rows)))
    info = table.column("sector_info").combine_chunks()
    curve = table.column("lightcurve").combine_chunks()
    lengths = pc.list_value_length(pc.struct_field(info, "sector")).to_numpy()
    n = pc.list_flatten(pc.struct_field(info, "n_cadences")).to_numpy().astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(n)]).astype(np.int32))
    arrays = []
    for f in entry_schema:
        if f.name in ("gaiadr3_id", "TIC_ID", "RA", "DEC"):
            arrays.append(pa.array(np.repeat(table.column(f.name).to_numpy(), lengths)))
        elif pa.types.is_list(f.type):
            flat = pc.list_flatten(pc.struct_field(curve, f.name))
            arrays.append(pa.ListArray.from_arrays(offsets, flat.cast(f.type.value_type)))
        else:
            arrays.append(pc.list_flatten(pc.struct_field(info, f.name)).cast(f.type))
    return pa.Table.from_arrays(arrays, schema=entry_schema), lengths


def _spatial(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return spatial_index(ra, dec) if len(ra) else np.zeros(0, np.int64)  # no hats in the workers (formats.hats)


def _stars_of(index: dict[str, np.ndarray], pixel4: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For light curves ``index`` (of any sources): the entry order (by gaiadr3_id, sector, camera, ccd; with
    ``pixel4``, each light curve's order-4 pixel, by pixel first and a star per pixel), each entry's star number in
    that order, and each star's first entry (whose RA/DEC/TIC_ID the star takes)."""
    keys = (index["ccd"], index["camera"], index["sector"], index["gaiadr3_id"])
    order = np.lexsort(keys if pixel4 is None else keys + (pixel4,))
    ids = index["gaiadr3_id"][order]
    change = ids[1:] != ids[:-1] if pixel4 is None else (ids[1:] != ids[:-1]) | np.diff(pixel4[order]).astype(bool)
    first = np.flatnonzero(np.concatenate([[True], change])) if len(ids) else np.zeros(0, np.int64)
    star = np.cumsum(np.concatenate([[False], change])) if len(ids) else np.zeros(0, np.int64)
    return order, star, first


def _gather(sources: list[Source], files: _Files) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The index of every light curve of ``sources``, concatenated, and each light curve's source number."""
    parts = [read_index(s, files) for s in sources]
    if not parts:
        return {name: np.zeros(0, np.int64) for name in _INDEX}, np.zeros(0, np.int64)
    index = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    which = np.concatenate([np.full(len(p["row"]), i) for i, p in enumerate(parts)])
    return index, which


# ---- units -------------------------------------------------------------------------------------------------------
def plan_pixels(pixels4: list[int], sources: list[Source], new_sectors: list[int], dropped: list[int] = ()
                ) -> dict[str, Any]:
    """Order-4 pixels ``pixels4`` (several per unit: a pixel's work is small, and its fixed cost was most of the
    plan's): per order-10 pixel of the stars (by their canonical position) the number of stars and of cadences, and
    the order-10 pixels of stars that change (light curves of ``new_sectors``, or entries of ``dropped`` sectors
    leaving a partition of the catalog). Light curves count by their own order-4 pixel, so a star whose light curves
    lie in two order-4 pixels is counted in each: ``edge`` describes, per star and pixel with a light curve near the
    pixel's edge, its part seen there (first entry, cadences), for the driver to find such stars (:meth:`Split.of`)
    and count them once."""
    with _Files() as files:
        index, which = _gather(sources, files)
    own = index["spatial"] >> 2 * (SPATIAL_ORDER - SOURCE_ORDER)
    here = np.isin(own, pixels4)
    gone = _is_old(sources, which) & np.isin(index["sector"], dropped)
    shift = 2 * (SPATIAL_ORDER - HIGHEST_ORDER)
    left = index["spatial"][gone & here] >> shift  # rows losing entries
    index = {k: v[here & ~gone] for k, v in index.items()}
    own = own[here & ~gone]
    order, star, first = _stars_of(index, own)  # a star's parts in two pixels apart
    cadences = np.bincount(star, weights=index["n_cadences"][order], minlength=len(first)).astype(np.int64)
    fresh = np.bincount(star, weights=np.isin(index["sector"][order], new_sectors), minlength=len(first)) > 0
    pix10 = index["spatial"][order][first] >> shift
    cells, inverse = np.unique(pix10, return_inverse=True)
    near = np.bincount(star, weights=_near_edge(index["spatial"][order], own[order]), minlength=len(first)) > 0
    edge = {name: index[name][order][first][near] for name in ("gaiadr3_id", "sector", "camera", "ccd")}
    edge |= {"cadences": cadences[near], "cell": pix10[near], "pixel4": own[order][first][near], "fresh": fresh[near]}
    return {"pixel": cells, "stars": np.bincount(inverse, minlength=len(cells)).astype(np.int64),
            "cadences": np.bincount(inverse, weights=cadences, minlength=len(cells)).astype(np.int64),
            "changed": np.unique(np.concatenate([pix10[fresh], left])), "edge": edge}


def _is_old(sources: list[Source], which: np.ndarray) -> np.ndarray:
    """Whether each light curve comes from a partition of the stars catalog (not a per-sector output)."""
    return np.array([s.kind == "stars" for s in sources], bool)[which] if len(sources) else np.zeros(0, bool)


def _near_edge(spatial: np.ndarray, pixel4: np.ndarray) -> np.ndarray:
    """Whether each position (its order-29 index) lies within an order-:data:`EDGE_ORDER` pixel of the edge of
    its ``pixel4`` (one of its pixel's neighbours is outside). A star's target-list positions differ between sectors
    by far less (proper motion: at most ~1.4 arcmin over TESS's years), so its light curves in two order-4 pixels
    are all near it."""
    import healpy

    if not len(spatial):
        return np.zeros(0, bool)
    cells = spatial >> 2 * (SPATIAL_ORDER - EDGE_ORDER)
    around = healpy.get_all_neighbours(1 << EDGE_ORDER, cells, nest=True)
    return ((around >= 0) & ((around >> 2 * (EDGE_ORDER - SOURCE_ORDER)) != pixel4)).any(axis=0)


@dataclass(frozen=True)
class Split:
    """Stars whose light curves lie in several order-4 pixels (a star's position differing between sectors across a
    pixel edge), from the plan's ``edge`` parts: the star goes where its canonical entry (lowest sector, camera, CCD)
    puts it, and nowhere else. ``ids`` sorted; ``home``: each one's order-10 pixel; ``parts``: (id, order-4 pixel)
    of each part of them; ``cells``/``stars``/``cadences``: the histogram's corrections (each part out, the star in
    at home); ``changed``: the order-10 pixels of those with new light curves (their parts' and home)."""

    ids: np.ndarray
    home: np.ndarray
    parts: np.ndarray
    cells: np.ndarray
    stars: np.ndarray
    cadences: np.ndarray
    changed: np.ndarray

    @classmethod
    def of(cls, edges: list[dict[str, np.ndarray]]) -> "Split":
        e = {k: np.concatenate([x[k] for x in edges]) for k in edges[0]} if edges else {
            k: np.zeros(0, np.int64) for k in ("gaiadr3_id", "sector", "camera", "ccd", "cadences", "cell", "pixel4",
                                               "fresh")}
        order = np.lexsort((e["ccd"], e["camera"], e["sector"], e["gaiadr3_id"]))
        e = {k: v[order] for k, v in e.items()}
        ids, start, count = np.unique(e["gaiadr3_id"], return_index=True, return_counts=True)
        star = np.repeat(np.arange(len(ids)), count)  # a star's parts: one per order-4 pixel, its first part first
        split, new = count > 1, np.bincount(star, weights=e["fresh"], minlength=len(ids)) > 0
        several, home = split[star], e["cell"][start]
        total = np.bincount(star, weights=e["cadences"], minlength=len(ids)).astype(np.int64)
        return cls(ids[split], home[split], np.stack([e["gaiadr3_id"][several], e["pixel4"][several]], axis=1),
                   np.concatenate([e["cell"][several], home[split]]),
                   np.concatenate([np.full(int(several.sum()), -1), np.ones(int(split.sum()), np.int64)]),
                   np.concatenate([-e["cadences"][several], total[split]]),
                   np.concatenate([e["cell"][several & new[star]], home[split & new]]))


@dataclass(frozen=True)
class Partition:
    order: int
    pixel: int

    def relpath(self) -> str:
        return f"Norder={self.order}/Dir={self.pixel // 10_000 * 10_000}/Npix={self.pixel}.parquet"

    def pixels4(self) -> range:
        return Source("stars", "", 0, self.order, self.pixel).pixels4()


def join_partition(part: Partition, sources: list[Source], schema: pa.Schema, staging: str, mark: dict,
                   dropped: list[int] = (), split: np.ndarray | None = None, home: np.ndarray | None = None) -> dict:
    """Write one stars partition into ``staging`` (temporary name, checked, sealed, renamed) from the light curves
    of ``sources`` whose star's canonical position lies in it, leaving out the entries of stars catalog partitions of
    ``dropped`` sectors (read again from their per-sector outputs). Stars in ``split`` (see :class:`Split`) are
    taken whole when in ``home`` (theirs here), else not at all. Returns its rows and bytes."""
    from .formats.base import DIGEST_KEY, WriteError, check_digest
    from .formats.hats import _fsync_dir

    final = Path(staging) / part.relpath()
    if final.is_file() and _read_stars_mark(final) == mark:  # staged by an earlier, interrupted run of this plan
        try:
            check_digest(final)
            return {"rows": pq.read_metadata(final).num_rows, "bytes": final.stat().st_size, "kept": True}
        except WriteError as exc:
            log.warning("%s; it will be written again", exc)
    mark = mark | {DIGEST_KEY: "0" * 64}  # the file's SHA-256, written in place by base.seal once it is closed
    split = np.zeros(0, np.int64) if split is None else split
    entry_schema = _entry_schema(schema)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_TEMPORARY}{os.getpid()}")
    rows = 0
    with _Files(WHOLE_BYTES) as files:
        index, which = _gather(sources, files)
        mine = (np.isin(index["spatial"] >> 2 * (SPATIAL_ORDER - SOURCE_ORDER), list(part.pixels4())) &
                ~np.isin(index["gaiadr3_id"], split)) | np.isin(index["gaiadr3_id"], [] if home is None else home)
        keep = mine & ~(_is_old(sources, which) & np.isin(index["sector"], dropped))
        index = {k: v[keep] for k, v in index.items()}
        which = which[keep]
        order, star, first = _stars_of(index)
        spatial = index["spatial"][order][first]
        inside = (spatial >> 2 * (SPATIAL_ORDER - part.order)) == part.pixel
        # stars in output order: by spatial index, then id
        star_ids = index["gaiadr3_id"][order][first]
        star_order = np.flatnonzero(inside)[np.lexsort((star_ids[inside], spatial[inside]))]
        counts = np.diff(np.concatenate([first, [len(order)]]))
        star_cadences = np.bincount(star, weights=index["n_cadences"][order], minlength=len(first))
        whole = _whole_entries(sources, files, entry_schema)
        sink = _HashedFile(tmp)  # through a buffer: a call into Python per 4 MB, not per page and page header
        stream = pa.BufferedOutputStream(pa.PythonFile(sink, mode="w"), 1 << 22)
        writer = pq.ParquetWriter(stream, schema, **_partition_options(schema))
        try:
            start = 0
            while start < len(star_order):
                budget = np.cumsum(star_cadences[star_order[start:]])
                stop = start + max(1, int(np.searchsorted(budget, CHUNK_CADENCES, side="right")))
                chunk = star_order[start:stop]
                table = _chunk_table(chunk, first, counts, order, index, which, sources, entry_schema, schema,
                                     spatial[chunk], files, whole)
                writer.write_table(table)
                rows += table.num_rows
                start = stop
            writer.add_key_value_metadata({MARK_KEY: json.dumps(mark | {"rows": rows}, sort_keys=True)})
            writer.close()
            stream.close()  # and sink
        except BaseException:
            writer.close()
            stream.close()
            tmp.unlink(missing_ok=True)
            raise
    try:
        _check_and_seal(tmp, schema, mark | {"rows": rows}, sink.sha256.hexdigest())  # seal syncs it too
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"rows": rows, "bytes": final.stat().st_size, "kept": False}


def _partition_options(schema: pa.Schema) -> dict:
    """hats' write options (formats.hats.parquet_options), but the light curves' leaves with neither dictionary
    nor statistics: their flags and sector compress as well without (+0.5% bytes, measured on the demo release) and
    min/max per page of a series filter nothing, while both cost 14% of writing a partition (measured)."""
    from .formats.hats import parquet_options

    options = parquet_options(schema)
    flat = [leaf for leaf in options["use_dictionary"] + list(options["column_encoding"])
            if not leaf.startswith("lightcurve.")]
    return options | {"use_dictionary": [leaf for leaf in options["use_dictionary"] if leaf in flat],
                      "write_statistics": flat}


class _HashedFile:
    """A file being written whose bytes are hashed on their way to it, for :func:`_check_and_seal`."""

    def __init__(self, path: Path):
        self.file, self.sha256 = open(path, "wb"), hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


def _chunk_table(chunk: np.ndarray, first: np.ndarray, counts: np.ndarray, order: np.ndarray,
                 index: dict[str, np.ndarray], which: np.ndarray, sources: list[Source], entry_schema: pa.Schema,
                 schema: pa.Schema, spatial: np.ndarray, files: _Files, whole: tuple[pa.Table, dict]) -> pa.Table:
    """Stars ``chunk`` (star numbers, in output order; ``spatial``: their order-29 indexes) as rows of the
    catalog; ``whole``: the unit's files read whole (:func:`_whole_entries`)."""
    n = counts[chunk]  # light curves, output order: each star's run of ``order``, gathered at once
    entries = order[np.repeat(first[chunk] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))]
    src, row = which[entries], index["row"][entries]
    pieces, at = [whole[0]], np.empty(len(entries), np.int64)  # each entry's row in the pieces, for one gather
    for s in np.unique(src):
        mine = np.flatnonzero(src == s)
        rows = row[mine]
        base = sum(p.num_rows for p in pieces)
        if s in whole[1]:
            at[mine] = whole[1][s] + rows
            continue
        if sources[s].kind == "stars":  # whole stars: each read once, its entries exploded in file order
            star_rows = np.unique(rows)
            table, lengths = _read_star_entries(sources[s], star_rows, entry_schema, files)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            at[mine] = base + starts[np.searchsorted(star_rows, rows)] + index["rank"][entries[mine]]
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            table = read_entries(sources[s], unique, entry_schema, files)
            at[mine] = base + inverse
        pieces.append(table)
    return _stars_table(_take_entries(pa.concat_tables(pieces), at), counts[chunk], schema, spatial)


def _take_entries(table: pa.Table, idx: np.ndarray) -> pa.Table:
    """Rows ``idx`` of an entry table (chunked or not), in that order, gathered in numpy: each list column's values
    once, through an index of their positions (Arrow's ``take`` on list arrays copies more and costs ~3x here);
    bits kept, NaN payloads included."""
    idx = np.asarray(idx, np.int64)
    if len(idx) == table.num_rows and np.array_equal(idx, np.arange(len(idx))):
        return table.combine_chunks()
    arrays = []
    positions = offsets = None  # every series of an entry has its n_cadences values: one gather index for all
    for f, column in zip(table.schema, table.columns):
        if not pa.types.is_list(f.type):
            values = np.concatenate([c.to_numpy(zero_copy_only=False) for c in column.chunks]) if \
                column.num_chunks != 1 else column.chunk(0).to_numpy(zero_copy_only=False)
            arrays.append(pa.array(values[idx], f.type))
            continue
        chunks = column.chunks
        flat = [pc.list_flatten(c).to_numpy(zero_copy_only=False) for c in chunks]
        flat = flat[0] if len(flat) == 1 else np.concatenate(flat) if flat else np.zeros(0)
        if positions is None:
            lengths = np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]
                                     ).astype(np.int64) if chunks else np.zeros(0, np.int64)
            starts = np.cumsum(lengths) - lengths
            n = lengths[idx]
            out_starts = np.cumsum(n) - n
            positions = np.repeat(starts[idx] - out_starts, n) + np.arange(int(n.sum()))
            offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
        if len(flat) != len(positions) and len(positions) and positions.max() >= len(flat):
            raise ValueError(f"series {f.name} is shorter than its entries' n_cadences")
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[positions], f.type.value_type)))
    return pa.Table.from_arrays(arrays, schema=table.schema)


def _stars_table(entries: pa.Table, counts: np.ndarray, schema: pa.Schema, spatial: np.ndarray) -> pa.Table:
    """Entries (light curves, grouped by star in output order; ``spatial``: the stars' order-29 indexes) -> one row
    per star."""
    counts = np.asarray(counts, np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sector = entries.column("sector").to_numpy()
    n = entries.column("n_cadences").to_numpy().astype(np.int64)
    ra, dec = entries.column("RA").to_numpy()[first], entries.column("DEC").to_numpy()[first]
    info_offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    star_of_entry = np.repeat(np.arange(len(counts)), counts)
    cadence_counts = np.bincount(star_of_entry, weights=n, minlength=len(counts)).astype(np.int64)
    curve_offsets = pa.array(np.concatenate([[0], np.cumsum(cadence_counts)]).astype(np.int32))
    # distinct sectors per star: entries are sorted by (sector, camera, ccd) within a star
    new_sector = np.ones(len(sector), bool)
    new_sector[1:] = (sector[1:] != sector[:-1]) | (star_of_entry[1:] != star_of_entry[:-1])
    n_sectors = np.bincount(star_of_entry[new_sector], minlength=len(counts)).astype(np.int16)
    sectors = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(n_sectors, dtype=np.int64)])
                                                .astype(np.int32)), pa.array(sector[new_sector], pa.int16()))
    info_type = schema.field("sector_info").type
    info = pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(info_offsets, entries.column(f.name).combine_chunks()) for f in info_type],
        fields=list(info_type))
    curve_type = schema.field("lightcurve").type
    children = []
    for f in curve_type:
        if f.name == "sector":
            values = pa.array(np.repeat(sector, n), pa.int16())
        else:
            column = entries.column(f.name).combine_chunks()
            if not np.array_equal(pc.list_value_length(column).to_numpy(zero_copy_only=False), n):
                raise ValueError(f"series {f.name} of an entry is not n_cadences long")
            values = pc.list_flatten(column)
        children.append(pa.ListArray.from_arrays(curve_offsets, values))
    curve = pa.StructArray.from_arrays(children, fields=list(curve_type))
    arrays = [pa.array(spatial), pa.array(entries.column("gaiadr3_id").to_numpy()[first]),
              pa.array(entries.column("TIC_ID").to_numpy()[first]), pa.array(ra), pa.array(dec),
              pa.array(n_sectors), sectors, info, curve]
    return pa.Table.from_arrays(arrays, schema=schema)


def _read_stars_mark(file: Path) -> dict | None:
    try:
        meta = pq.read_metadata(file).metadata or {}
        mark = json.loads(meta[MARK_KEY.encode()])
        mark.pop("rows", None)
        mark.pop("sha256", None)
        return mark
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def _check_and_seal(file: Path, schema: pa.Schema, mark: dict, written: str) -> None:
    """Check a partition file just written and seal it (base.seal). Its footer must read back with ``mark``, the
    schema and the rows, and its bytes on disk must hash (in seal's one pass over them) to ``written``, the SHA-256
    of the bytes the writer gave: so a file truncated or changed on its way to the disk is caught, as a read-back of
    every page (page checksums) would catch it, without decoding the partition again. (The values themselves were
    checked as they were gathered: _take_entries, _stars_table.)"""
    from .formats.base import WriteError, seal

    try:
        meta = pq.read_metadata(file)
        found = json.loads((meta.metadata or {}).get(MARK_KEY.encode(), b"null"))
        same_schema = meta.schema.to_arrow_schema().equals(schema, check_metadata=False)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise WriteError(f"{file}: does not read back ({exc})") from None
    if found != mark or not same_schema or meta.num_rows != mark["rows"]:
        raise WriteError(f"{file}: its mark, columns or rows are not what was written")
    if seal(file) != written:
        raise WriteError(f"{file}: its bytes on disk are not those written")


# ---- the driver ----------------------------------------------------------------------------------------------------
@dataclass
class StarsSummary:
    sectors: list[int]
    new_sectors: list[int]
    stars: int = 0
    light_curves: int = 0
    partitions: int = 0
    written: int = 0
    bytes_written: int = 0
    bytes_total: int = 0

    def describe(self) -> str:
        return (f"{self.stars} stars of sectors {_span(self.sectors)} in {self.partitions} partition(s); "
                f"{self.written} partition(s) written ({self.bytes_written / 1e6:.1f} MB of "
                f"{self.bytes_total / 1e6:.1f} MB)")


def _span(sectors: list[int]) -> str:
    return ",".join(str(s) for s in sectors) or "none"


def check_selection(stars_path: str | os.PathLike, selection: str | None, columns: str | None = None) -> None:
    """Refuse (UsageError) a stars catalog built from another choice of stars (another ``--targets``/``--cone``, or
    every star): its sectors would be kept as they are, holding other stars than the build's; and, given
    ``columns``, one of another column set (before anything is fetched, not after the build)."""
    stamp = _read_json(Path(stars_path) / CATALOG / STAMP)
    if stamp and columns is not None and stamp.get("columns") != columns:
        raise UsageError(f"{stars_path} holds a stars catalog of --columns {stamp.get('columns')}; this build is "
                         f"--columns {columns}: choose another --stars_output_path")
    if stamp and stamp.get("selection") != selection:
        held = f"the stars chosen as {stamp['selection']}" if stamp.get("selection") else "every star"
        this = f"the stars chosen as {selection}" if selection else "every star"
        raise UsageError(f"{stars_path} holds a stars catalog of {held}, this build's is of {this}; choose another "
                         "--stars_output_path")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_bytes(path: Path, data: bytes) -> None:
    with atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def build_stars(sector_outputs: list[str | os.PathLike], stars_path: str | os.PathLike, executor=None, *,
                pixel_threshold: int | None = None, n_processes: int = 1,
                sector_catalogs: dict[int, str | os.PathLike] | None = None,
                selection: str | None = None, verify: bool = False) -> StarsSummary:
    """Join the finished per-sector outputs ``sector_outputs`` into the stars collection at ``stars_path`` (created,
    or extended with the sectors it lacks). ``pixel_threshold``: most stars per partition (default: partitions of
    about :data:`PARTITION_BYTES` of Parquet). Runs its units on ``executor`` (an :class:`~.executor.Executor`; one
    of ``n_processes`` local processes when None). ``sector_catalogs``: sector -> its ``<tglc_data_path>/sSSSS``
    folder, where HDF5 outputs of ``--columns seed`` (no camera/ccd columns) at non-default paths find their
    catalog. ``selection``: the name of a targets build's choice of stars (``targets-<hash>``), None for every star
    (see :func:`check_selection`). ``verify`` (``--verify``): every partition file of the catalog is checked against
    the SHA-256 of its mark first; a damaged one is rebuilt from the per-sector outputs (all of the catalog's sectors
    must be given), and the files made from the partitions are written again."""
    from .executor import Executor

    if executor is None:
        with Executor(n_processes) as own:
            return build_stars(sector_outputs, stars_path, own, pixel_threshold=pixel_threshold,
                               sector_catalogs=sector_catalogs, selection=selection, verify=verify)
    if pixel_threshold is not None and (isinstance(pixel_threshold, bool) or not isinstance(pixel_threshold, int)
                                        or pixel_threshold < 1):
        raise UsageError(f"--stars-pixel-threshold must be a positive integer, got {pixel_threshold!r}")
    root = Path(stars_path)
    catalog = root / CATALOG
    by_sector, columns_name, flags = find_sector_outputs(list(sector_outputs), sector_catalogs)
    check_selection(root, selection)
    stamp = _read_json(catalog / STAMP)
    if stamp and stamp.get("phase") == "commit":  # a build decided but not finished: finish it first
        log.info("Finishing the stars catalog's last build (it was interrupted)")
        _finish(root, stamp)
        stamp = _read_json(catalog / STAMP)
    old_sectors = sorted(stamp["sectors"]) if stamp else []
    if stamp and stamp["columns"] != columns_name:
        raise UsageError(f"{root} holds a stars catalog of --columns {stamp['columns']}; these outputs are "
                         f"--columns {columns_name}: choose another --stars_output_path")
    if stamp:
        for name, dtype in stamp["flags"].items():
            _widen(flags, name, dtype)
    held = (stamp or {}).get("sector_outputs", {})
    fingerprints = {sector: _fingerprint(by_sector[sector]) for sector in by_sector}
    # a sector whose output changed since it joined (built again): its entries are read again from that output
    replaced = sorted(s for s in set(by_sector) & set(old_sectors) if held.get(str(s)) != fingerprints[s])
    new_sectors = sorted(set(by_sector) - set(old_sectors)) + replaced
    skipped = sorted(set(by_sector) & set(old_sectors) - set(replaced))
    if skipped:
        log.info("Sectors %s are already in the stars catalog %s; kept as they are", _span(skipped), root)
    if replaced:
        log.info("Sectors %s were built again since they joined the stars catalog %s; joining them again",
                 _span(replaced), root)
    threshold = pixel_threshold if pixel_threshold is not None else (stamp or {}).get("threshold")
    summary = StarsSummary(sorted(set(old_sectors) | set(new_sectors)), new_sectors)
    columns = column_set(columns_name)
    schema = stars_schema(columns, flags)
    digest = hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()
    old_parts = [Partition(o, p) for o, p in stamp["partitions"]] if stamp else []
    damaged = _damaged(catalog, old_parts) if verify and stamp else []
    missing = sorted(set(old_sectors) - set(by_sector))
    if damaged and missing:
        raise UsageError(f"{catalog / 'dataset' / damaged[0].relpath()}: its bytes do not match the SHA-256 of its "
                         f"mark; to rebuild it, join every sector of {root} again (sectors {_span(missing)} are not "
                         f"in this build), or remove {root} and build the stars catalog again")
    if not new_sectors and not damaged and stamp and stamp.get("phase") == "finished" and \
            threshold == stamp.get("threshold") and digest == stamp.get("schema"):
        if verify:  # the files made from the partitions (metadata, margin, indexes, card) are written again,
            # under a stamp in phase commit first: interrupted, the next build finishes them before trusting them
            stamp = stamp | {"phase": "commit", "staged": []}
            _write_bytes(catalog / STAMP, (json.dumps(stamp, sort_keys=True) + "\n").encode())
            _finish(root, stamp)
        summary.stars, summary.partitions = stamp["stars"], len(old_parts)
        summary.light_curves = stamp["light_curves"]
        summary.bytes_total = _dataset_bytes(catalog)
        log.info("Stars catalog %s: nothing to add (%s)", root, summary.describe())
        return summary
    root.mkdir(parents=True, exist_ok=True)
    schema_changed = bool(stamp) and digest != stamp.get("schema")
    if damaged:  # every sector is read again from its output (the damaged files hold part of them)
        log.warning("Stars catalog %s: %d damaged partition(s) (%s); rebuilding them from the per-sector outputs",
                    root, len(damaged), ", ".join(p.relpath() for p in damaged))
    read = sorted(by_sector) if damaged else new_sectors
    new_sources = [s for sector in read for s in by_sector[sector]]
    old_sources = [] if damaged else [
        Source("stars", str(catalog / "dataset" / p.relpath()), 0, p.order, p.pixel) for p in old_parts]

    # 1. the histogram: old pixels from the stored histogram, pixels with new light curves (or losing some) and
    # their neighbours (where a star of theirs may have light curves too) planned again
    stored = dict(np.load(catalog / HISTOGRAM)) if stamp and (catalog / HISTOGRAM).is_file() else None
    pixels = {p for s in new_sources for p in s.pixels4()}
    for sector in replaced:
        pixels |= set(stamp.get("sector_pixels", {}).get(str(sector), range(12 * 4 ** SOURCE_ORDER)))
    if schema_changed or damaged or (stamp and stored is None):
        pixels |= {p for s in new_sources + old_sources for p in s.pixels4()}
    touched = sorted(pixels | set(_neighbours(sorted(pixels))))
    covering = _covering(new_sources + old_sources)
    touched = [p for p in touched if p in covering]
    batches, rows = [[]], 0  # consecutive pixels, up to PLAN_PIXELS of them or PLAN_ROWS light curves
    for p in touched:
        n = sum(s.rows or PLAN_ROWS for _, s in covering[p])  # (a stars partition's rows are not counted)
        if batches[-1] and (len(batches[-1]) == PLAN_PIXELS or rows + n > PLAN_ROWS):
            batches, rows = batches + [[]], 0
        batches[-1].append(p)
        rows += n
    batches = [b for b in batches if b]
    tasks = [(b, _sources_of(b, covering), new_sectors, replaced) for b in batches]
    planned = {}
    for result in executor.run(_plan_task, tasks, total=len(touched), desc="Planning stars", unit="pixel",
                               weights=[len(b) for b in batches], lost=_lost):
        if isinstance(result, BaseException):
            raise result
        planned[result[0]] = result[1]  # in completion order: each result names its first pixel
    if executor.stopping_requested:
        raise KeyboardInterrupt
    split = Split.of([planned[p]["edge"] for p in sorted(planned)])
    shift = 2 * (HIGHEST_ORDER - SOURCE_ORDER)
    cells, stars, cadences, changed = [split.cells], [split.stars], [split.cadences], [split.changed]
    if stored is not None and not damaged:
        keep = ~np.isin(stored["pixel"] >> shift, touched)
        cells.append(stored["pixel"][keep]), stars.append(stored["stars"][keep])
        cadences.append(stored["cadences"][keep])
    for result in planned.values():
        cells.append(result["pixel"]), stars.append(result["stars"]), cadences.append(result["cadences"])
        changed.append(result["changed"])
    hist_cells, inverse = np.unique(np.concatenate(cells).astype(np.int64), return_inverse=True)
    hist_stars = np.bincount(inverse, weights=np.concatenate(stars), minlength=len(hist_cells)).astype(np.int64)
    hist_cadences = np.bincount(inverse, weights=np.concatenate(cadences), minlength=len(hist_cells)
                                ).astype(np.int64)
    occupied = hist_stars > 0
    hist_cells, hist_stars, hist_cadences = hist_cells[occupied], hist_stars[occupied], hist_cadences[occupied]
    changed_cells = np.unique(np.concatenate(changed).astype(np.int64))
    if not len(hist_cells):
        raise UsageError(f"the per-sector outputs {', '.join(map(str, sector_outputs))} hold no light curve")

    # 2. the partitions, as hats-import makes them
    parts = _alignment(hist_cells, hist_stars, hist_cadences, threshold, columns_name)
    old_set = set(old_parts)
    cell_part = _part_of_cells(hist_cells, parts)
    dirty = {parts[i] for i in np.unique(cell_part[np.isin(hist_cells, changed_cells)])}
    dirty |= set(damaged)  # (a partition of the new layout overlapping a damaged one is new: written anyway)
    if schema_changed:
        dirty = set(parts)
    to_write = [p for p in parts if p not in old_set or p in dirty]
    summary.partitions, summary.written = len(parts), len(to_write)
    summary.stars = int(hist_stars.sum())

    # 3. the partitions to write, into the staging folder
    staging = catalog / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    plan_id = hashlib.sha256(json.dumps([sorted(by_sector), digest, old_sectors, threshold, fingerprints,
                                         [[p.order, p.pixel] for p in damaged]], sort_keys=True).encode()).hexdigest()
    for stale in staging.rglob("*.parquet"):
        if _read_stars_mark(stale) is None or _read_stars_mark(stale).get("plan") != plan_id or \
                Partition(*_read_stars_mark(stale)["partition"]) not in to_write:
            stale.unlink()
    for stale in staging.rglob(f".*{_TEMPORARY}*"):
        stale.unlink(missing_ok=True)
    home_part = _part_of_cells(split.home, parts)
    jobs = []
    for part in to_write:
        home = split.ids[home_part == parts.index(part)]
        elsewhere = split.parts[np.isin(split.parts[:, 0], home), 1].tolist()
        sources = _sources_of(sorted(set(part.pixels4()) | set(elsewhere)), covering)
        jobs.append((part, sources, schema, str(staging), {"plan": plan_id, "partition": [part.order, part.pixel]},
                     replaced, split.ids, home))
    weights = [int(hist_stars[cell_part == parts.index(p)].sum()) or 1 for p in to_write]
    for result in executor.run(join_partition, jobs, total=sum(weights), desc="Joining stars", unit="star",
                               weights=weights, lost=_lost):
        if isinstance(result, BaseException):
            raise result
        summary.bytes_written += result["bytes"]
    if executor.stopping_requested:
        raise KeyboardInterrupt

    # 4. commit, then finish
    counts = (stamp or {}).get("sector_light_curves", {}) | {
        str(s): sum(x.rows for x in by_sector[s]) for s in new_sectors}
    with atomically(catalog / HISTOGRAM) as tmp, open(tmp, "wb") as f:  # (a file: savez would add .npz to a name)
        np.savez(f, pixel=hist_cells, stars=hist_stars, cadences=hist_cadences)
    new_stamp = {"phase": "commit", "sectors": summary.sectors, "columns": columns_name, "flags": flags,
                 "schema": digest, "threshold": threshold, "partitions": [[p.order, p.pixel] for p in parts],
                 "staged": [p.relpath() for p in to_write], "stars": summary.stars,
                 "light_curves": sum(counts.values()), "sector_light_curves": counts,
                 "sector_outputs": held | {str(s): fingerprints[s] for s in new_sectors},
                 "sector_pixels": (stamp or {}).get("sector_pixels", {}) | {
                     str(s): sorted({p for x in by_sector[s] for p in x.pixels4()}) for s in new_sectors},
                 "tglc_builder_version": __version__, **({"selection": selection} if selection else {})}
    _write_bytes(catalog / STAMP, (json.dumps(new_stamp, sort_keys=True) + "\n").encode())
    log.debug("Stars catalog %s: %d partition(s) committed; finishing", root, len(to_write))
    _finish(root, new_stamp)
    summary.light_curves = new_stamp["light_curves"]
    summary.bytes_total = _dataset_bytes(catalog)
    log.info("Stars catalog %s: %s; open it with tglc_builder.open_stars(\"%s\") or lsdb.open_catalog(\"%s\")",
             root, summary.describe(), root, root)
    return summary


def stars_of_build(builds: list, executor) -> StarsSummary:
    """The stars step of a build: each sector's output folders (``builds``: the sectors' ``BuildArguments``; its
    formats' folders from the registry, the first holding its outputs read) joined into the build's
    ``stars_output_dir``, on the build's executor."""
    folders = [one.output_dir(name) for one in builds for name in reversed(one.formats)]  # the registry's last first
    first = builds[0]
    return build_stars(folders, first.stars_output_dir, executor, pixel_threshold=first.stars_pixel_threshold,
                       sector_catalogs={one.sector: one.sector_dir for one in builds},
                       selection=first.selection.folder if first.selection is not None else None,
                       verify=first.verify)


def _plan_task(pixels: list[int], sources: list[Source], new_sectors: list[int], dropped: list[int]
               ) -> tuple[int, dict]:
    return pixels[0], plan_pixels(pixels, sources, new_sectors, dropped)


def _fingerprint(sources: list[Source]) -> str:
    """What a sector's output holds, from its files' checksums (their marks'): equal when it was not built again
    (outputs are deterministic: the same rows give the same bytes)."""
    return hashlib.sha256(" ".join(sorted(s.digest or f"{s.path}:{os.path.getsize(s.path)}" for s in sources)
                                   ).encode()).hexdigest()


def _neighbours(pixels4: list[int]) -> list[int]:
    import healpy

    around = healpy.get_all_neighbours(1 << SOURCE_ORDER, np.asarray(pixels4, np.int64), nest=True) if pixels4 \
        else np.zeros(0, np.int64)
    return sorted({int(p) for p in np.ravel(around) if p >= 0})


def _damaged(catalog: Path, parts: list[Partition]) -> list[Partition]:
    """The partitions whose file is missing or does not match the SHA-256 of its mark (read raw, as --verify does
    for the per-sector formats)."""
    from .formats.base import WriteError, check_digest

    out = []
    for part in parts:
        try:
            check_digest(catalog / "dataset" / part.relpath())
        except WriteError as exc:
            log.warning("%s", exc)
            out.append(part)
    return out


def _lost(task: tuple, error: BaseException) -> BaseException:
    return RuntimeError(f"the worker of a stars unit died ({error}); rerun to resume")


def _dataset_bytes(catalog: Path) -> int:
    return sum(f.stat().st_size for f in (catalog / "dataset").rglob("Npix=*.parquet"))


def _covering(sources: list[Source]) -> dict[int, list[tuple[int, Source]]]:
    """Per order-4 pixel, the sources covering it (numbered in the order given)."""
    out: dict[int, list[tuple[int, Source]]] = {}
    for i, s in enumerate(sources):
        for p in s.pixels4():
            out.setdefault(p, []).append((i, s))
    return out


def _sources_of(pixels4: list[int], covering: dict[int, list[tuple[int, Source]]]) -> list[Source]:
    """The sources covering any of ``pixels4``, each once, in their order."""
    picked = {i: s for p in pixels4 for i, s in covering.get(p, ())}
    return [picked[i] for i in sorted(picked)]


def _alignment(cells: np.ndarray, stars: np.ndarray, cadences: np.ndarray, threshold: int | None,
               columns_name: str) -> list[Partition]:
    """hats-import's adaptive partitions over the stars' order-10 histogram (``generate_alignment`` without
    dropping siblings): from order 0 down, a pixel whose stars number at most ``threshold`` (by default: whose
    estimated Parquet is at most :data:`PARTITION_BYTES`) is a partition, else it is split. Computed here on the
    sparse histogram: hats' function takes the dense one (12.6 M cells), ~10 s on this project's machines, for the
    same partitions (tests/test_stars.py holds the two equal)."""
    weight = stars if threshold is not None else cadences * BYTES_PER_CADENCE[columns_name]
    limit = threshold if threshold is not None else PARTITION_BYTES
    found: list[Partition] = []
    open_ = np.ones(len(cells), bool)
    for order in range(HIGHEST_ORDER + 1):
        parents = cells[open_] >> 2 * (HIGHEST_ORDER - order)
        unique, inverse = np.unique(parents, return_inverse=True)
        sums = np.bincount(inverse, weights=weight[open_], minlength=len(unique))
        counts = np.bincount(inverse, weights=stars[open_], minlength=len(unique))
        fits = (sums <= limit) & (counts > 0)
        if order == HIGHEST_ORDER and not fits.all():
            raise UsageError(f"an order-{HIGHEST_ORDER} pixel holds more than the stars pixel threshold "
                             f"({limit}); raise --stars-pixel-threshold")
        found += [Partition(order, int(p)) for p in unique[fits]]
        closed = np.flatnonzero(open_)[fits[inverse]]
        open_[closed] = False
        if not open_.any():
            break
    return sorted(found, key=lambda p: (p.order, p.pixel))


def _part_of_cells(cells: np.ndarray, parts: list[Partition]) -> np.ndarray:
    out = np.full(len(cells), -1, np.int64)
    for i, p in enumerate(parts):
        out[(cells >> 2 * (HIGHEST_ORDER - p.order)) == p.pixel] = i
    return out


# ---- finishing: from the committed stamp to a finished collection ---------------------------------------------
def _finish(root: Path, stamp: dict) -> None:
    """Move the staged partitions into ``dataset/``, remove superseded ones, then write hats' metadata, the margin
    cache, the indexes, the collection's properties and card, ``hats.properties`` and the stamp (phase
    ``finished``), in that order. Idempotent: a rerun after a kill resumes it."""
    from hats.catalog.dataset.collection_properties import CollectionProperties
    from hats.catalog.dataset.table_properties import TableProperties
    from hats.catalog.partition_info import PartitionInfo
    from hats.io import paths
    from hats.io.file_io import write_fits_image
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.io.skymap import write_skymap
    from hats.pixel_math.healpix_pixel import HealpixPixel

    from .formats.base import WriteError
    from .formats.hats import _fsync_dir, _hats_complaints, write_index, write_margin

    catalog = root / CATALOG
    for name in ("hats.properties", "properties"):
        (catalog / name).unlink(missing_ok=True)
    (root / "collection.properties").unlink(missing_ok=True)
    staging, dataset = catalog / STAGING, catalog / "dataset"
    for relpath in stamp["staged"]:
        if (staging / relpath).is_file():
            (dataset / relpath).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relpath, dataset / relpath)
            _fsync_dir((dataset / relpath).parent)
        elif not (dataset / relpath).is_file():
            raise WriteError(f"{dataset / relpath}: staged partition missing; remove {catalog / STAMP} and rebuild")
    shutil.rmtree(staging, ignore_errors=True)
    parts = [Partition(o, p) for o, p in stamp["partitions"]]
    wanted = {dataset / p.relpath() for p in parts}
    for file in list(dataset.rglob("*")) if dataset.is_dir() else []:
        if file.is_file() and file not in wanted and file.name not in ("_metadata", "_common_metadata"):
            file.unlink()
    for directory in sorted((d for d in dataset.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(directory.iterdir()):
            directory.rmdir()
    for name in ("partition_info.csv", "point_map.fits", "skymap.fits", "dataset/_metadata",
                 "dataset/_common_metadata"):
        (catalog / name).unlink(missing_ok=True)
    for skymap in catalog.glob("skymap.*.fits"):
        skymap.unlink()
    partition_info = PartitionInfo.from_healpix([HealpixPixel(p.order, p.pixel) for p in parts])
    partition_info.write_to_file(paths.get_partition_info_pointer(catalog))
    total = write_parquet_metadata(catalog)
    hist = np.load(catalog / HISTOGRAM)
    histogram = np.zeros(12 * 4 ** HIGHEST_ORDER, np.int64)
    histogram[hist["pixel"]] = hist["stars"]
    if histogram.sum() != total:
        raise WriteError(f"{catalog}: the partitions hold {total} stars, the plan {histogram.sum()}")
    write_fits_image(histogram, paths.get_point_map_file_pointer(catalog))
    write_skymap(histogram, catalog)
    rows_per_part = [int(pq.read_metadata(dataset / p.relpath()).num_rows) for p in parts]
    del histogram
    properties = TableProperties.new_provenance_dict(catalog, builder=f"tglc_builder v{__version__}") | {
        "catalog_name": CATALOG, "catalog_type": "object", "total_rows": total, "ra_column": "RA",
        "dec_column": "DEC", "healpix_column": SPATIAL_INDEX, "healpix_order": SPATIAL_ORDER,
        "skymap_order": HIGHEST_ORDER, "hats_max_rows": max(rows_per_part),
        "moc_sky_fraction": f"{partition_info.calculate_fractional_coverage():0.5f}",
        "obs_title": f"TESS-Gaia Light Curves (TGLC), one row per star, sectors {_span(stamp['sectors'])}",
        "tglc_sectors": " ".join(map(str, stamp["sectors"])), "tglc_columns": stamp["columns"]}
    TableProperties(**properties).to_properties_file(catalog)  # write_margin reads it
    write_margin(root / MARGIN_NAME, catalog, MARGIN_ARCSEC)  # with no rows when no star lies near a partition edge
    for column in INDEX_COLUMNS:
        values = write_index(root / f"{CATALOG}_{column}", catalog, [(p.order, p.pixel, dataset / p.relpath())
                                                                     for p in parts], column)
        if column == "gaiadr3_id" and np.any(values[1:] == values[:-1]):
            log.error("A Gaia DR3 id is in two rows of %s: its positions in two sectors lie further apart than "
                      "the plan looks (see stars._near_edge)", catalog)
    indexes = {column: f"{CATALOG}_{column}" for column in INDEX_COLUMNS}
    collection = {"name": f"{CATALOG}_collection", "hats_primary_table_url": CATALOG, "all_indexes": indexes,
                  "all_margins": [MARGIN_NAME], "default_margin": MARGIN_NAME}
    CollectionProperties(**collection).to_properties_file(root)
    write_stars_card(root, [f"{CATALOG}/dataset/{p.relpath()}" for p in parts], stamp, total)
    complaints = _hats_complaints(root)
    if complaints:
        raise WriteError(f"{root}: hats does not accept the stars collection: {'; '.join(complaints)}")
    _write_bytes(catalog / STAMP, (json.dumps(stamp | {"phase": "finished", "staged": []}, sort_keys=True)
                                   + "\n").encode())


def write_stars_card(root: Path, files: list[str], stamp: dict, total: int) -> Path:
    """The collection's dataset card: front matter naming exactly the main catalog's files (so
    ``datasets.load_dataset(<collection>, split="train")`` gives one example per star, not the margin or index
    rows), the features as stored, and prose (formats/templates/stars.md)."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    from .formats.card import _SIZES, CITATION, _template

    schema = pq.read_schema(root / files[0])
    features = datasets.Features.from_arrow_schema(schema)
    size = next((label for limit, label in _SIZES if total < limit), "1B<n<10B")
    config = {"config_name": "default", "data_files": [{"split": "train", "path": sorted(files)}]}
    card = DatasetCardData(license="cc-by-4.0", pretty_name="TESS-Gaia Light Curves (TGLC), one row per star",
                           size_categories=[size], configs=[config],
                           tags=["astronomy", "time-series", "light-curves", "tess", "gaia", "healpix", "hats"])
    DatasetInfosDict({"default": datasets.DatasetInfo(features=features)}).to_dataset_card_data(card)
    rows = []
    for f in schema:
        if pa.types.is_struct(f.type):
            for child in f.type:
                meta = child.metadata or {}
                rows.append(f"| `{f.name}.{child.name}` | {child.type.value_type} per entry | "
                            f"{meta.get(b'unit', b'').decode()} | {meta.get(b'description', b'').decode()} |")
        else:
            meta = f.metadata or {}
            rows.append(f"| `{f.name}` | {f.type} | {meta.get(b'unit', b'').decode()} | "
                        f"{meta.get(b'description', b'').decode()} |")
    prose = _template("stars.md").substitute(
        span=_span(stamp["sectors"]), version=__version__, total=total, light_curves=stamp["light_curves"],
        columns=stamp["columns"], rows="\n".join(rows), catalog=CATALOG, margin=f"{MARGIN_ARCSEC:g}",
        citation=CITATION) + "\n"
    text = f"---\n{card.to_yaml()}\n---\n\n{prose}"
    _write_bytes(root / "README.md", text.encode())
    return root / "README.md"


# ---- reading a star back -------------------------------------------------------------------------------------------
@dataclass
class Star:
    """One star of the stars catalog: ids, position, and its light curves, one dict of numpy arrays per entry of
    ``sector_info`` (``sector``, ``camera``, ``ccd``, the per-light-curve values and every series)."""

    gaiadr3_id: int
    tic_id: int
    ra: float
    dec: float
    sectors: list[int]
    curves: list[dict[str, Any]]
    columns: str = "seed"

    def by_sector(self) -> dict[int, list[dict[str, Any]]]:
        """The light curves per sector (two for a star on two CCDs of one sector)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for curve in self.curves:
            out.setdefault(int(curve["sector"]), []).append(curve)
        return out

    def to_lightkurve(self, flux_column: str | None = None):
        """A ``lightkurve.LightCurveCollection`` of ``TessLightCurve`` s, one per light curve: flux from
        ``flux_column`` (default ``cal_aper_flux`` when built with ``--columns all``, else ``aper_flux``), its
        per-light-curve error as ``flux_err``, ``quality`` from ``tess_flags``, ``tglc_flags`` kept as a column."""
        try:
            import lightkurve
            from astropy.time import Time
        except ImportError:
            raise ImportError("to_lightkurve needs lightkurve: pip install 'tglc-builder[lightkurve]' (with hats "
                              "installed: 'tglc-builder[hats,lightkurve]', in one command)") from None
        flux_column = flux_column or ("cal_aper_flux" if self.columns == "all" else "aper_flux")
        errors = {"aper_flux": "aper_flux_err", "psf_flux": "psf_flux_err", "cal_aper_flux": "cal_aper_flux_err",
                  "cal_psf_flux": "cal_psf_flux_err"}
        curves = []
        for c in self.curves:
            if flux_column not in c:
                raise KeyError(f"no column {flux_column!r} in the stars catalog (columns: "
                               f"{', '.join(k for k in c if isinstance(c[k], np.ndarray))})")
            flux = c[flux_column]
            err = np.full(len(flux), c[errors[flux_column]], np.float64) if errors.get(flux_column) in c else None
            lc = lightkurve.TessLightCurve(time=Time(c["time"], format="btjd", scale="tdb"), flux=flux,
                                           flux_err=err, quality=c["tess_flags"],
                                           meta={"SECTOR": int(c["sector"]), "CAMERA": int(c["camera"]),
                                                 "CCD": int(c["ccd"]), "TICID": self.tic_id,
                                                 "GAIADR3": self.gaiadr3_id, "LABEL": f"Gaia DR3 {self.gaiadr3_id}",
                                                 "RA_OBJ": self.ra, "DEC_OBJ": self.dec, "FLUX_ORIGIN": flux_column})
            lc["tglc_flags"] = c["tglc_flags"]
            curves.append(lc)
        return lightkurve.LightCurveCollection(curves)


class StarsCatalog:
    """The stars collection at ``path``, read a star at a time through its index catalogs: a lookup reads a
    row group or two of the index and of one partition file, never the whole catalog."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.catalog = self.path / CATALOG
        stamp = _read_json(self.catalog / STAMP)
        if not stamp or stamp.get("phase") != "finished":
            raise UsageError(f"{self.path} is not a finished stars catalog (no {CATALOG}/{STAMP} of a finished "
                             "build); build it with --stars or build_stars()")
        self.columns = stamp["columns"]
        self.sectors = stamp["sectors"]

    def _locate(self, column: str, value: int) -> list[tuple[int, int]]:
        table = pq.read_table(self.path / f"{CATALOG}_{column}" / "dataset", filters=[(column, "==", int(value))],
                              columns=["Norder", "Npix"])
        return sorted({(int(o), int(p)) for o, p in zip(table.column(0).to_pylist(), table.column(1).to_pylist())})

    def get(self, gaiadr3_id: int | None = None, tic_id: int | None = None) -> Star:
        """The star of this Gaia DR3 id or TIC id. KeyError when the catalog has none; ValueError when a TIC id
        names several Gaia stars (ask by ``gaiadr3_id``)."""
        if (gaiadr3_id is None) == (tic_id is None):
            raise ValueError("give exactly one of gaiadr3_id, tic_id")
        column, value = ("gaiadr3_id", gaiadr3_id) if gaiadr3_id is not None else ("TIC_ID", tic_id)
        tables = []
        for order, pixel in self._locate(column, value):
            file = self.catalog / "dataset" / Partition(order, pixel).relpath()
            tables.append(pq.read_table(file, filters=[(column, "==", int(value))]))
        table = pa.concat_tables(tables) if tables else None
        if table is None or table.num_rows == 0:
            raise KeyError(f"no star with {column} {value} in {self.path}")
        if table.num_rows > 1:
            raise ValueError(f"{column} {value} names {table.num_rows} stars in {self.path} "
                             f"({', '.join(map(str, table.column('gaiadr3_id').to_pylist()))}); ask by gaiadr3_id")
        return self._star(table.combine_chunks())

    def _star(self, table: pa.Table) -> Star:
        """The one row of ``table`` as a Star; values through Arrow -> numpy, so bits (NaN payloads) are kept."""
        info, curve = table.column("sector_info").chunk(0), table.column("lightcurve").chunk(0)
        entries = {f.name: pc.list_flatten(pc.struct_field(info, f.name)).to_numpy(zero_copy_only=False)
                   for f in info.type}
        series = {f.name: pc.list_flatten(pc.struct_field(curve, f.name)).to_numpy(zero_copy_only=False)
                  for f in curve.type if f.name != "sector"}
        curves, start = [], 0
        for k in range(len(entries["sector"])):
            n = int(entries["n_cadences"][k])
            entry: dict[str, Any] = {name: values[k] for name, values in entries.items()}
            entry.update({name: values[start:start + n] for name, values in series.items()})
            curves.append(entry)
            start += n
        row = {name: table.column(name)[0].as_py() for name in ("gaiadr3_id", "TIC_ID", "RA", "DEC", "sectors")}
        return Star(row["gaiadr3_id"], row["TIC_ID"], row["RA"], row["DEC"], row["sectors"], curves, self.columns)


def open_stars(path: str | os.PathLike) -> StarsCatalog:
    """The stars catalog at ``path`` (``--stars_output_path``): ``open_stars(path).get(gaiadr3_id=...)`` or
    ``.get(tic_id=...)`` gives a :class:`Star`, its light curves as numpy arrays per sector, and
    ``.to_lightkurve()`` a ``lightkurve.LightCurveCollection`` whose ``stitch()`` gives one light curve."""
    return StarsCatalog(path)
