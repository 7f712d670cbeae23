"""The HATS format (``--format hats``): a HATS collection that LSDB opens, cross-matches and cone-searches, and that
``datasets.load_dataset(<folder>, split="train")`` loads. Its layout and columns are docs/DATASET.md's ("HATS");
besides them, ``tglc_sSSSS/.tglc_build.json`` records this build's sector, columns and pixel layout (for resume),
and ``hats.properties``, written last by :meth:`HatsWriter.finish`, marks a finished catalog. Values are the FITS
values bit for bit (NaN payloads included: floats are never dictionary-encoded, whose hashing folds NaNs together).

**Several files per pixel.** hats 0.11 reads a pixel stored as a directory of Parquet files (``hats_npix_suffix =
/``), but only catalog-wide (every pixel a directory, or none), and its strict validator
(``is_valid_catalog(strict=True)``) rejects a ``_metadata`` file that lists several files of one pixel (it compares
the files' pixels, duplicates included, with ``partition_info.csv``). So the layout is chosen per build, from the
plan, in :meth:`HatsWriter.prepare`: when every pixel is one shard, the standard ``Npix=<p>.parquet`` with
``_metadata``; when some pixel has several shards, every pixel is a directory ``Npix=<p>/`` holding its shards'
files ``<k>-of-<n>.parquet`` and the catalog has ``_common_metadata`` but no ``_metadata`` (hats' own writer with
``create_metadata=False``). Both are valid with ``strict=True``; LSDB and ``datasets`` read both. Rows are sorted by
``_healpix_29`` within each file (a pixel directory is the concatenation of sorted files).

**Integrity.** A shard's rows arrive in catalog order; each block is appended to a temporary Arrow IPC file, and
:meth:`~_HatsSink.commit` memory-maps it and writes the Parquet file under a temporary name in ``_healpix_29``
order, one row group (:data:`ROW_GROUP_ROWS` light curves) at a time, so memory holds a few row groups, never the
shard (measured: ~4 row groups of light curves at the peak, 55 MB each at 10,700 cadences). Every
page carries a CRC checksum (``write_page_checksum``), so a corrupted page raises on read in pyarrow (with
``page_checksum_verification``). The footer's key-value metadata, written last when the file is closed, records
the sector, columns, pixel, shard and row count (:data:`MARK_KEY`); the file is then reopened and checked whole
(every page against its checksum, undecoded, as HDF5 checks its chunks; row count, schema, no nulls, the light
curve's value counts against ``n_cadences``, ids and sort order: :func:`verify_file`), sealed (the SHA-256 of the
whole file written into the mark: the page CRCs leave page headers and the footer unprotected, see
:func:`.base.seal`), synced and only then renamed. A file under a final name with a matching mark is therefore
whole, and ``--verify`` catches any byte changed since.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import shutil
import threading
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import __version__, layout
from ..columns import IDS_AND_POSITION, N_CADENCES, N_CADENCES_NESTED, STRING, ColumnSet
from ..errors import UsageError
from ..folders import remove_debris, write_text
from .base import (_UNSEALED, DIGEST_KEY, VERSIONS_KEY, Block, RowSource, Shard, ShardSink, WriteError, Writer,
                   check_digest, note_versions, seal, versions_text, write_error)

log = logging.getLogger(__name__)

ORDER = 4  # HEALPix order of the partitions: nside 16, the pixels of the HDF5 folders
assert 1 << ORDER == layout.NSIDE and layout.NEST
SPATIAL_INDEX = "_healpix_29"
SPATIAL_ORDER = 29
ROW_GROUP_ROWS = 256  # light curves per Parquet row group (~6.5 MB before compression at 1,282 cadences)
# zstd level and page size, measured on the demo sector (1,282 cadences, rows of 256): 8.6 KB per light curve at
# level 3 with 1 MB pages (pyarrow's default page size); hats' 128 KB pages cost 11.2 KB (zstd sees too little of the
# times, which repeat across stars), level 9 saves 1% for twice the time, level 15 2% for fifteen times.
COMPRESSION_LEVEL = 3
DATA_PAGE_SIZE = 1 << 20
SKYMAP_ORDER = 10  # order of point_map.fits / skymap.fits (hats-import's default)
MARGIN_ARCSEC = 10.0  # margin cache of the extras
MARGIN_NAME = f"{int(MARGIN_ARCSEC)}arcs"
MARK_KEY = "tglc_builder"  # footer key-value metadata, written last: what a whole file holds
STAMP = ".tglc_build.json"  # in the catalog folder: sector, columns and layout of the build that prepared it
FILE_SUFFIX, DIR_SUFFIX = ".parquet", "/"
_TEMPORARY = ".tmp-"
_SHARD_FILE = re.compile(r"^\d{3,}-of-\d{3,}\.parquet$")
_PIXEL_FILE = re.compile(r"^Npix=(\d+)\.parquet$")
_PIXEL_DIR = re.compile(r"^Npix=(\d+)$")
# Catalog-level files that finish() writes (and prepare() removes, so that an unfinished build never looks finished)
_CATALOG_FILES = ("hats.properties", "properties", "partition_info.csv", "point_map.fits", "skymap.fits",
                  "data_thumbnail.parquet", "dataset/_metadata", "dataset/_common_metadata")
# Base columns taken from the catalog/shard: header scalars of the same name (``camera``, ``ccd`` of --columns all)
# are not repeated.
_SHARD_SCALARS = {"sector": "TESS sector", "camera": "TESS camera", "ccd": "TESS CCD"}


def catalog_name(sector: int) -> str:
    return f"tglc_s{int(sector):04d}"


# ---- schema -----------------------------------------------------------------------------------------------------
def _field(name: str, type_: pa.DataType, unit: str = "", description: str = "") -> pa.Field:
    meta = {k: v for k, v in (("unit", unit), ("description", description)) if v}
    return pa.field(name, type_, metadata=meta or None)


def _arrow(dtype: np.dtype) -> pa.DataType:
    return pa.string() if dtype == STRING else pa.from_numpy_dtype(dtype)


def widened(schema: pa.Schema, columns: ColumnSet, bits: int) -> pa.Schema:
    """``schema`` with the flag columns (``Series.widens``) of ``bits``-bit integers: a file's flags take the
    narrowest width that holds every light curve it holds (16, or 32 with tglc 0.8 files)."""
    names = {s.name for s in columns.series if s.widens}
    index = schema.get_field_index("lightcurve")
    curve = schema.field(index)
    fields = [f.with_type(pa.list_(pa.field("element", pa.from_numpy_dtype(np.dtype(f"i{bits // 8}")))))
              if f.name in names else f for f in curve.type]
    return schema.set(index, curve.with_type(pa.struct(fields)))


def extra_scalars(columns: ColumnSet) -> list:
    """The header scalars that are columns of their own (``psf_flux_err``, ... but not ``camera``/``ccd``)."""
    seed = {"psf_flux_err", "aper_flux_err"}
    return [s for s in columns.scalars if s.name not in seed and s.name not in _SHARD_SCALARS]


def arrow_schema(columns: ColumnSet) -> pa.Schema:
    """The catalog's schema: the contract's columns in its order, then the extra header scalars, then the light
    curve (list value fields are named ``element``, as Parquet stores them, so the schema reads back equal)."""
    by_name = {s.name: s for s in columns.scalars}
    fields = [_field(SPATIAL_INDEX, pa.int64(), "", "HEALPix order-29 nested index of (RA, DEC): HATS' spatial index")]
    for name, (dtype, unit, description) in IDS_AND_POSITION.items():
        fields.append(_field(name, pa.from_numpy_dtype(dtype), unit, description))
    fields += [_field(name, pa.int16(), "", description) for name, description in _SHARD_SCALARS.items()]
    for name in ("psf_flux_err", "aper_flux_err"):
        s = by_name[name]
        fields.append(_field(name, pa.from_numpy_dtype(s.dtype), s.unit, s.description))
    fields.append(_field(N_CADENCES[0], pa.from_numpy_dtype(N_CADENCES[1]), N_CADENCES[2], N_CADENCES_NESTED))
    fields += [_field(s.name, _arrow(s.dtype), s.unit, s.description) for s in extra_scalars(columns)]
    series = [_field(s.name, pa.list_(pa.field("element", pa.from_numpy_dtype(s.dtype))), s.unit, s.description)
              for s in columns.series]
    fields.append(_field("lightcurve", pa.struct(series), "", "the light curve, each list n_cadences long"))
    return pa.schema(fields)


def parquet_options(schema: pa.Schema) -> dict:
    """``pq.ParquetWriter`` options: hats' defaults for the schema (``get_parquet_write_table_kwargs`` of hats 0.11:
    BYTE_STREAM_SPLIT for floats, delta for the spatial index, dictionary for the other leaves, statistics and page
    index), zstd at :data:`COMPRESSION_LEVEL` in pages of :data:`DATA_PAGE_SIZE`, page checksums; the cadence number
    (``--columns all``) is a counter, so delta too. Written out here, not taken from hats, because importing hats
    (matplotlib, numba, pandas: 200 MB and 1.5 s of CPU) in every worker cost more than writing the files;
    tests/test_hats.py holds them equal to hats' own."""
    leaves: list[tuple[str, pa.DataType]] = []

    def walk(type_: pa.DataType, path: str) -> None:
        if pa.types.is_struct(type_):
            for child in type_:
                walk(child.type, f"{path}.{child.name}")
        elif pa.types.is_list(type_):
            walk(type_.value_type, f"{path}.list.element")
        else:
            leaves.append((path, type_))

    for field in schema:
        walk(field.type, field.name)
    encodings = {path: "BYTE_STREAM_SPLIT" for path, type_ in leaves if pa.types.is_floating(type_)}
    encodings |= {path: "DELTA_BINARY_PACKED" for path, _ in leaves
                  if path in (SPATIAL_INDEX, "lightcurve.cadence_num.list.element")}
    return {"compression": "zstd", "compression_level": COMPRESSION_LEVEL, "column_encoding": encodings,
            "use_dictionary": [path for path, _ in leaves if path not in encodings], "data_page_size": DATA_PAGE_SIZE,
            "dictionary_pagesize_limit": DATA_PAGE_SIZE, "write_statistics": True, "write_page_index": True,
            "write_page_checksum": True}


def spatial_index(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """``_healpix_29`` of (RA, DEC) in degrees: what ``hats.pixel_math.spatial_index.compute_spatial_index`` computes
    (cdshealpix on astropy angles), without importing hats in the workers (see :func:`parquet_options`), nor
    astropy.coordinates (0.35 CPU-s and 27 MB per worker): the angles are converted as astropy's Longitude (wrapped
    into [0, 360)) and Latitude (at most 90 degrees either way) convert them, then cdshealpix's compiled hash runs."""
    lon = np.array(ra, np.float64)
    lat = np.asarray(dec, np.float64)
    if np.any(np.abs(lat) > 90):
        raise ValueError("Latitude angle(s) must be within -90 deg <= angle <= 90 deg")
    lon -= lon // 360.0 * 360.0  # astropy's Angle._wrap_at(360 deg), which leaves angles in [0, 360) as they are
    lon[lon >= 360.0] -= 360.0
    lon[lon < 0.0] += 360.0
    ipix = np.empty(len(lon), np.uint64)
    _cdshealpix().lonlat_to_healpix(np.full(len(lon), SPATIAL_ORDER, np.uint8), lon * (np.pi / 180.0),
                                    lat * (np.pi / 180.0), ipix, np.empty(len(lon)), np.empty(len(lon)),
                                    np.uint16(0))
    return ipix.astype(np.int64)


def _cdshealpix():
    """cdshealpix's compiled module, loaded on its own: the package's ``__init__`` imports astropy.coordinates
    (measured: 0.35 CPU-s and 27 MB in every worker, for two functions). Loaded once per process under a lock and
    kept here: a module in ``sys.modules`` may still be empty (the import system, and this loader before, put it
    there before running it), which a worker's second task thread then found without ``lonlat_to_healpix``."""
    global _CDSHEALPIX
    with _CDSHEALPIX_LOCK:
        if _CDSHEALPIX is None:
            import importlib.machinery
            import importlib.util
            import sys

            name = "cdshealpix.cdshealpix"
            folder = Path(importlib.util.find_spec("cdshealpix").origin).parent
            path = next((p for p in folder.iterdir() if p.name.startswith("cdshealpix.") and
                         p.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))), None)
            if path is None:  # laid out otherwise by a later cdshealpix: the plain import, astropy.coordinates and all
                module = importlib.import_module(name)
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules.setdefault(name, module)  # only once it is whole; a later plain import then reuses it
            _CDSHEALPIX = module
    return _CDSHEALPIX


_CDSHEALPIX = None
_CDSHEALPIX_LOCK = threading.Lock()


# ---- reading a shard file back ------------------------------------------------------------------------------------
def read_mark(file: Path | str) -> dict | None:
    """The mark of a pixel file (None when it has none or is not a readable Parquet file)."""
    try:
        meta = pq.read_metadata(file).metadata or {}
        return json.loads(meta[MARK_KEY.encode()])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def verify_file(file: Path, schema: pa.Schema, mark: dict | None = None, full: bool = True,
                columns: ColumnSet | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check a pixel file and return its (gaiadr3_id, _healpix_29) in file order; raise WriteError if it is not
    whole. Checked: the mark (equal to ``mark`` when given), the schema, the row count, every column chunk's value
    count, no nulls, ids, the spatial index sorted and inside the mark's pixel. With ``full``, every page of the file
    is checked against its checksum, undecoded, and its header (:func:`_check_pages`); each light-curve column holds
    ``n_cadences`` values per row group, and one of them, decoded, in each row."""
    pf = None
    try:
        pf = pq.ParquetFile(file, page_checksum_verification=True)
        meta = pf.metadata
        found = json.loads((meta.metadata or {}).get(MARK_KEY.encode(), b"null"))
        if not isinstance(found, dict) or not {"rows", "pixel"} <= found.keys():
            raise WriteError(f"{file}: no {MARK_KEY} mark in its footer (not a finished shard file)")
        if mark is not None and found != mark:
            raise WriteError(f"{file}: its mark {found} is not the expected {mark}")
        schemas = [schema] if columns is None else [widened(schema, columns, bits) for bits in (16, 32)]
        if not any(pf.schema_arrow.equals(x, check_metadata=False) for x in schemas):
            raise WriteError(f"{file}: its columns differ from the build's ({pf.schema_arrow.names})")
        if meta.num_rows != found["rows"]:
            raise WriteError(f"{file}: {meta.num_rows} rows, its mark says {found['rows']}")
        n_scalar = meta.num_columns - len(schema.field("lightcurve").type)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(n_scalar):
                if group.column(c).num_values != group.num_rows:
                    raise WriteError(f"{file}: column {group.column(c).path_in_schema} of row group {g} holds "
                                     f"{group.column(c).num_values} values for {group.num_rows} rows")
        # (full: one light-curve column decoded too, its narrowest, for each list's length against n_cadences)
        leaf = min(pf.schema_arrow.field("lightcurve").type, key=lambda f: f.type.value_type.bit_width).name
        table = pf.read(columns=["gaiadr3_id", SPATIAL_INDEX] + [N_CADENCES[0], f"lightcurve.{leaf}"] * full,
                        use_threads=False)
        ids, spatial = _numpy(table.column("gaiadr3_id")), _numpy(table.column(SPATIAL_INDEX))
        if full:
            lengths = _numpy(table.column(N_CADENCES[0]))
            if not np.array_equal(_numpy(pc.list_value_length(pc.struct_field(table.column("lightcurve"), 0))),
                                  lengths):
                raise WriteError(f"{file}: lightcurve.{leaf} is not n_cadences long in every row")
            _check_pages(file, meta, lengths, n_scalar)
    except WriteError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError, pa.ArrowException) as exc:
        raise WriteError(f"{file}: does not read back ({exc})") from None
    finally:
        if pf is not None:
            pf.close()
    if len(ids) != found["rows"]:
        raise WriteError(f"{file}: {len(ids)} ids, its mark says {found['rows']} rows")
    if len(spatial) and (np.any(np.diff(spatial) < 0) or
                         np.any(spatial >> (2 * (SPATIAL_ORDER - ORDER)) != found["pixel"])):
        raise WriteError(f"{file}: {SPATIAL_INDEX} is not sorted or not inside pixel {found['pixel']}")
    return ids, spatial


def _check_pages(file: Path, meta: pq.FileMetaData, lengths: np.ndarray, n_scalar: int) -> None:
    """Every page of every column chunk of ``file`` as it was written: its CRC (``write_page_checksum``) right over
    its stored (compressed) bytes; its header as Parquet defines it (field types, page kinds, a dictionary page only
    first, encodings among the chunk's); the pages following one another to the chunk's end, holding its value count
    and, headers included, its uncompressed size; no null in a scalar column; each light-curve column holding one
    value per cadence (an empty list: one null) in each row group.

    The Parquet counterpart of HDF5's ``_verify_chunks``: reading the values back through pyarrow checks the same
    checksums but also decodes every page, which cost 1.3 CPU-s of ~10 for a sector's 19,600 light curves (this:
    0.14 s). pyarrow offers no way to check the checksums alone, hence the page headers read here (Thrift's compact
    protocol: :func:`_thrift_struct`), as strictly as pyarrow's reader would refuse them."""
    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        try:
            start = 0
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                rows, start = lengths[start:start + group.num_rows], start + group.num_rows
                if len(rows) != group.num_rows or len(rows) and rows.min() < 0:
                    raise WriteError(f"{file}: n_cadences of row group {g} missing or negative")
                empty = int(np.count_nonzero(rows == 0))
                for c in range(group.num_columns):
                    chunk = group.column(c)
                    values, nulls = (int(rows.sum()) + empty, empty) if c >= n_scalar else (group.num_rows, 0)
                    if chunk.num_values != values or chunk.statistics is None or \
                            chunk.statistics.null_count != nulls:
                        raise WriteError(f"{file}: {chunk.path_in_schema} of row group {g} holds {chunk.num_values} "
                                         f"values ({chunk.statistics and chunk.statistics.null_count} null), its "
                                         f"n_cadences say {values} ({nulls})")
                    _check_chunk_pages(file, view, chunk, g)
        finally:
            view.release()


# Parquet's PageHeader, DataPageHeader and DictionaryPageHeader (parquet.thrift): field id -> Thrift compact type
# (5: i32, 12: struct, 1/2: bool); the writer's data pages are version 1 (types: 0 data, 2 dictionary).
_PAGE_HEADER = {1: 5, 2: 5, 3: 5, 4: 5, 5: 12, 7: 12}
_DATA_PAGE = {1: 5, 2: 5, 3: 5, 4: 5, 5: 12}
_DICTIONARY_PAGE = {1: 5, 2: 5, 3: (1, 2)}
_ENCODINGS = {0: "PLAIN", 2: "PLAIN_DICTIONARY", 3: "RLE", 4: "BIT_PACKED", 5: "DELTA_BINARY_PACKED",
              6: "DELTA_LENGTH_BYTE_ARRAY", 7: "DELTA_BYTE_ARRAY", 8: "RLE_DICTIONARY", 9: "BYTE_STREAM_SPLIT"}
_WIDTH = {"INT32": 4, "INT64": 8, "FLOAT": 4, "DOUBLE": 8}  # bytes of a PLAIN value of these physical types


def _check_chunk_pages(file: Path, view: memoryview, chunk: pq.ColumnChunkMetaData, group: int) -> None:
    def refuse(what: str) -> WriteError:
        return WriteError(f"{file}: a page of {chunk.path_in_schema} in row group {group} {what}")

    pos = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    end, values, unpacked = pos + chunk.total_compressed_size, 0, 0
    while pos < end:
        header, body = _thrift_struct(view, pos)
        if not _typed(header, _PAGE_HEADER, (1, 2, 3)) or min(header[2][1], header[3][1]) < 0:
            raise refuse("has no Parquet page header")
        kind, size = header[1][1], header[3][1]
        # the encodings the writer gives: a dictionary page's values PLAIN (PLAIN_DICTIONARY: Parquet 1's name), a
        # data page's indices into it (or PLAIN, its fallback), else a column's own (parquet_options); never RLE or
        # BIT_PACKED values, which only booleans have
        dictionary = chunk.has_dictionary_page and pos == chunk.dictionary_page_offset  # (first, and only there)
        page = header.get(7 if dictionary else 5, (None, {}))[1] if kind == (2 if dictionary else 0) else {}
        if dictionary:
            fine = _typed(page, _DICTIONARY_PAGE, (1, 2))
        else:
            fine = _typed(page, _DATA_PAGE, (1, 2, 3, 4)) and page[3][1] == page[4][1] == 3  # (levels: RLE)
        if not fine or page[1][1] < 0:
            raise refuse(f"is of a kind this writer does not write (type {kind})")
        allowed = (0, 2) if dictionary else (0, 2, 8) if chunk.has_dictionary_page else (0, 5, 9)
        if page[2][1] not in allowed or _ENCODINGS[page[2][1]] not in chunk.encodings:
            raise refuse(f"has an encoding its column chunk cannot have ({page[2][1]})")
        if dictionary and (body + size != chunk.data_page_offset or chunk.physical_type in _WIDTH and
                           page[1][1] * _WIDTH[chunk.physical_type] != header[2][1]):
            raise refuse("holds a dictionary whose size or place differs from its footer's")
        if body + size > end or 4 not in header or zlib.crc32(view[body:body + size]) != header[4][1] & 0xFFFFFFFF:
            raise refuse("does not match its checksum")
        values += 0 if dictionary else page[1][1]
        unpacked += header[2][1] + body - pos
        pos = body + size
    if pos != end or values != chunk.num_values or unpacked != chunk.total_uncompressed_size:
        raise WriteError(f"{file}: the pages of {chunk.path_in_schema} in row group {group} hold {values} values "
                         f"({unpacked} bytes), its footer says {chunk.num_values} ({chunk.total_uncompressed_size})")


def _typed(struct: dict, fields: dict, required: tuple[int, ...]) -> bool:
    """Whether ``struct`` (from :func:`_thrift_struct`) has the ``required`` fields and no field but those of
    ``fields``, each of its type there."""
    return all(i in struct for i in required) and all(
        i in fields and struct[i][0] in (fields[i] if isinstance(fields[i], tuple) else (fields[i],)) for i in struct)


def _thrift_struct(data: memoryview, pos: int) -> tuple[dict, int]:
    """The struct in Thrift's compact protocol at ``pos``, and where it ends: {field id: (type, value)}, integers and
    structs decoded, other values skipped (None)."""
    fields, last = {}, 0
    while head := data[pos]:
        pos += 1
        if head >> 4:
            last += head >> 4
        else:
            last, pos = _thrift_int(data, pos)
        value, pos = _thrift_value(data, pos, head & 15)
        fields[last] = (head & 15, value)
    return fields, pos + 1


def _thrift_value(data: memoryview, pos: int, kind: int) -> tuple[object, int]:
    if kind in (1, 2):  # a boolean held in its field's type
        return kind == 1, pos
    if kind in (3, 7):  # byte, double
        return None, pos + (1 if kind == 3 else 8)
    if kind in (4, 5, 6):  # i16, i32, i64
        return _thrift_int(data, pos)
    if kind == 8:  # binary
        size, pos = _varint(data, pos)
        return None, pos + size
    if kind == 12:
        return _thrift_struct(data, pos)
    raise ValueError(f"Thrift type {kind} in a page header (which holds no list, set or map)")


def _thrift_int(data: memoryview, pos: int) -> tuple[int, int]:
    value, pos = _varint(data, pos)
    return (value >> 1) ^ -(value & 1), pos  # zigzag


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte, pos = data[pos], pos + 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def catalog_order(ids: np.ndarray, shard: Shard) -> np.ndarray:
    """``ids`` (a file's, in ``_healpix_29`` order) reordered as the shard's rows, i.e. catalog order; ids the
    shard does not plan, if any, come last in file order."""
    planned = np.asarray(shard.gaiadr3_id, np.int64)
    if not len(planned) or not len(ids):
        return ids
    sorter = np.argsort(planned, kind="stable")
    row = sorter[np.minimum(np.searchsorted(planned, ids, sorter=sorter), len(planned) - 1)]
    rank = np.where(planned[row] == ids, row, len(planned) + np.arange(len(ids)))
    return ids[np.argsort(rank, kind="stable")]


# ---- the writer ---------------------------------------------------------------------------------------------------
class HatsWriter(Writer):
    """A HATS collection at ``output_dir`` holding the catalog ``tglc_sSSSS`` (and with ``extras`` a margin cache
    and a ``gaiadr3_id`` index, built at :meth:`finish`). The dataset card is :func:`.card.write_card`'s."""

    name = "hats"

    def __init__(self, output_dir: str | os.PathLike, sector: int, columns: ColumnSet, extras: bool = False,
                 note: str = ""):
        super().__init__(output_dir, sector, columns, note)
        self.extras = bool(extras)
        self.npix_suffix: str | None = None  # the build's layout, decided by prepare() (else read from the stamp)
        self._schema: pa.Schema | None = None

    # -- names ------------------------------------------------------------------------------------------------------
    @property
    def catalog_dir(self) -> Path:
        return self.output_dir / catalog_name(self.sector)

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = arrow_schema(self.columns)
        return self._schema

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_schema": None}

    def layout(self, shard: Shard | None = None) -> str:
        """The build's pixel layout: ``.parquet`` (a file per pixel) or ``/`` (a directory per pixel). Decided by
        :meth:`prepare`; a writer that has not prepared reads the decision from the catalog's stamp; without one, a
        shard of a split pixel can only be in a directory."""
        if self.npix_suffix is None:
            stamp = self._read_stamp()
            if stamp and stamp.get("sector") == self.sector and stamp.get("columns") == self.columns.name:
                return stamp["npix_suffix"]
            return DIR_SUFFIX if shard is not None and shard.count > 1 else FILE_SUFFIX
        return self.npix_suffix

    def _path(self, pixel: int, label: str, suffix: str) -> Path:
        pixel_dir = self.catalog_dir / "dataset" / f"Norder={ORDER}" / f"Dir={pixel // 10_000 * 10_000}"
        if suffix == DIR_SUFFIX:
            return pixel_dir / f"Npix={pixel}" / f"{label}.parquet"
        return pixel_dir / f"Npix={pixel}.parquet"

    def file(self, shard: Shard) -> Path:
        return self._path(shard.pixel, shard.label, self.layout(shard))

    def mark(self, shard: Shard, rows: int) -> dict:
        return {"sector": self.sector, "columns": self.columns.name, "pixel": int(shard.pixel),
                "shard": shard.label, "rows": int(rows), "tglc_builder_version": __version__,
                DIGEST_KEY: _UNSEALED}  # the file's SHA-256, written in place by base.seal once the file is closed

    # -- worker side ------------------------------------------------------------------------------------------------
    def complete_ids(self, shard: Shard, verify: bool = False) -> np.ndarray | None:
        """The Gaia ids of the shard's whole file **in catalog order** (the shard's order; ids the shard does not
        plan, if any, come last), else None."""
        file = self.file(shard)
        if not file.is_file():
            return None
        digest = None
        if verify:  # before pyarrow reads a byte of a damaged footer
            try:
                digest = check_digest(file)
            except WriteError as exc:
                log.warning("%s; it will be written again", exc)
                return None
        mark = read_mark(file)
        expected = self.mark(shard, mark.get("rows", 0) if mark else 0)
        if not mark or any(mark.get(key) != expected[key] for key in ("sector", "columns", "pixel", "shard")):
            log.warning("%s is not a whole shard file of this build; it will be written again", file)
            return None
        if verify and mark.get(DIGEST_KEY) != digest:
            log.warning("%s: its mark does not hold the checksum found in it; it will be written again", file)
            return None
        try:
            ids, _ = verify_file(file, self.schema, mark, full=verify, columns=self.columns)
        except WriteError as exc:
            log.warning("%s; it will be written again", exc)
            return None
        return catalog_order(ids, shard)

    def open(self, shard: Shard) -> ShardSink:
        return _HatsSink(self, shard)

    def rows_of(self, shard: Shard, verify: bool = False) -> RowSource | None:
        """The rows of the shard's whole file, to carry into its new file (ids in file order, as RowSource says)."""
        ids = self.complete_ids(shard, verify=verify)
        return _HatsRows(self.file(shard), self.columns) if ids is not None and len(ids) else None

    # -- driver side ------------------------------------------------------------------------------------------------
    def _read_stamp(self) -> dict | None:
        try:
            return json.loads((self.catalog_dir / STAMP).read_text())
        except (OSError, ValueError):
            return None

    def prepare(self, shards: list[Shard], overwrite: bool) -> None:
        """Decide the layout, then make the folder hold only this build: remove debris, superseded files of its
        pixels and the catalog-level files of an earlier finish; refuse (UsageError) or, with ``overwrite``,
        remove another build's files (another sector's catalog, pixels outside this build, files of other
        columns). Nothing is removed before the refusal."""
        suffix = DIR_SUFFIX if any(s.count > 1 for s in shards) else FILE_SUFFIX
        planned = {self._path(s.pixel, s.label, suffix) for s in shards}
        pixels = {int(s.pixel) for s in shards}
        foreign: list[tuple[Path, str]] = []
        superseded: list[Path] = []
        for entry in sorted(self.output_dir.iterdir()) if self.output_dir.is_dir() else ():
            ours = entry == self.catalog_dir or entry.name.startswith(self.catalog_dir.name + "_")
            if entry.is_dir() and not ours and (re.fullmatch(r"tglc_s\d{4}", entry.name) or
                                                (entry / "hats.properties").is_file() or (entry / STAMP).is_file()):
                foreign.append((entry, f"the catalog {entry.name}, not this build's"))
        stamp = self._read_stamp()
        if stamp and (stamp.get("sector"), stamp.get("columns")) != (self.sector, self.columns.name):
            what = f"sector {stamp.get('sector')}" if stamp.get("sector") != self.sector else \
                f"--columns {stamp.get('columns')}"
            foreign.append((self.catalog_dir, what))
        for file in self._data_files():
            mark = read_mark(file)
            pixel = _pixel_of(file)
            if mark and mark.get("sector") != self.sector:
                foreign.append((file, f"sector {mark.get('sector')}"))
            elif mark and mark.get("columns") != self.columns.name:
                foreign.append((file, f"--columns {mark.get('columns')}"))
            elif pixel not in pixels:
                foreign.append((file, f"pixel {pixel}, not in this build"))
            elif file not in planned:
                superseded.append(file)
        if foreign and not overwrite:
            path, why = foreign[0]
            raise UsageError(
                f"{self.output_dir} already holds files of another build ({len(foreign)}, e.g. {path}: {why}); "
                "choose another --hats_output_path, or pass --overwrite to replace that dataset")
        for path, _ in foreign:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for file in superseded:
            file.unlink(missing_ok=True)
        self._remove_debris()
        self._remove_catalog_files()
        self.catalog_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.catalog_dir / STAMP, json.dumps(
            {"sector": self.sector, "columns": self.columns.name, "npix_suffix": suffix,
             "tglc_builder_version": __version__}, sort_keys=True) + "\n")
        self.npix_suffix = suffix

    def _data_files(self) -> list[Path]:
        """Every pixel file under the catalog's ``dataset/`` (final names only)."""
        root = self.catalog_dir / "dataset"
        if not root.is_dir():
            return []
        found = []
        for pixel_dir in root.glob("Norder=*/Dir=*"):
            for entry in pixel_dir.iterdir():
                if entry.is_file() and _PIXEL_FILE.match(entry.name):
                    found.append(entry)
                elif entry.is_dir() and _PIXEL_DIR.match(entry.name):
                    found += [f for f in entry.iterdir() if f.is_file() and _SHARD_FILE.match(f.name)]
        return sorted(found)

    def _remove_debris(self) -> None:
        """Temporary files of killed writers (the catalog's own files' too), and empty pixel folders."""
        remove_debris(self.output_dir)
        remove_debris(self.catalog_dir)
        root = self.catalog_dir / "dataset"
        if not root.is_dir():
            return
        for stale in root.rglob(f".*{_TEMPORARY}*"):
            stale.unlink(missing_ok=True)
        for directory in sorted(root.glob("Norder=*/Dir=*/Npix=*"), reverse=True) + \
                sorted(root.glob("Norder=*/Dir=*"), reverse=True) + sorted(root.glob("Norder=*"), reverse=True):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()

    def _remove_catalog_files(self) -> None:
        for name in _CATALOG_FILES:
            (self.catalog_dir / name).unlink(missing_ok=True)
        for skymap in self.catalog_dir.glob("skymap.*.fits"):
            skymap.unlink()
        (self.output_dir / "collection.properties").unlink(missing_ok=True)
        card = self.output_dir / "README.md"
        if card.is_file() and "tglc-builder" in card.read_text(errors="replace"):  # card.write_card's
            card.unlink()
        for derived in (self.output_dir / f"{self.catalog_dir.name}_{MARGIN_NAME}",
                        self.output_dir / f"{self.catalog_dir.name}_gaiadr3_id"):
            if derived.is_dir():
                shutil.rmtree(derived)

    def finish(self, shards: list[Shard]) -> None:
        """Write the catalog's metadata from the pixel files present, as hats 0.11 writes it (partition_info.csv,
        _common_metadata and, in the one-file-per-pixel layout, _metadata; the point map and skymap;
        hats.properties last), the extras, collection.properties and the dataset card. Written here, not with hats'
        functions: importing hats cost the driver ~1 CPU-s and 176 MB, more than writing the files;
        tests/test_hats.py holds them equal to hats' own, and checks the catalog with ``is_valid_catalog(strict=True)``
        (a build with ``extras``, which imports hats anyway, checks it too)."""
        from .card import write_card  # datasets: the driver's only, at the end

        self._remove_debris()
        self._remove_catalog_files()
        files = sorted({f for f in (self.file(s) for s in shards) if f.is_file()})
        if not files:
            log.warning("No HATS pixel file was written; %s holds no catalog", self.output_dir)
            return
        suffix = self.layout(shards[0])
        catalog = self.catalog_dir
        pixels = sorted({_pixel_of(f) for f in files})
        write_text(catalog / "partition_info.csv", "Norder,Npix\n" + "".join(f"{ORDER},{p}\n" for p in pixels))
        self._one_flag_width(files)
        total = _write_parquet_metadata(catalog, files, suffix == FILE_SUFFIX)
        cells = []
        rows_per_pixel: dict[int, int] = {}
        for file in files:
            with pq.ParquetFile(file) as pf:  # (pq.read_table goes through pyarrow.dataset: twice the CPU time)
                spatial = _numpy(pf.read(columns=[SPATIAL_INDEX]).column(0))
            cells.append(spatial >> (2 * (SPATIAL_ORDER - SKYMAP_ORDER)))
            rows_per_pixel[_pixel_of(file)] = rows_per_pixel.get(_pixel_of(file), 0) + len(spatial)
        cells, counts = np.unique(np.concatenate(cells), return_counts=True)
        if counts.sum() != total:
            raise WriteError(f"{catalog}: the files hold {total} rows but {counts.sum()} spatial indices")
        for name in ("point_map.fits", "skymap.fits"):
            _write_skymap(cells, counts, catalog / name)
        provenance = _provenance(catalog)
        properties = {
            "obs_collection": catalog.name, "dataproduct_type": "object", "hats_nrows": total, "hats_col_ra": "RA",
            "hats_col_dec": "DEC", "hats_col_healpix": SPATIAL_INDEX, "hats_col_healpix_order": SPATIAL_ORDER,
            "hats_npix_suffix": suffix, "hats_skymap_order": SKYMAP_ORDER,
            "hats_max_rows": max(rows_per_pixel.values()), "hats_estsize": provenance.pop("hats_estsize"),
            "moc_sky_fraction": float(f"{_sky_fraction(len(pixels)):0.5f}")} | provenance | {
            "hats_order": ORDER, "obs_title": f"TESS-Gaia Light Curves (TGLC), sector {self.sector}",
            "tglc_sector": self.sector, "tglc_columns": self.columns.name}
        for name in ("hats.properties", "properties"):
            _write_properties(catalog / name, "HATS catalog", properties)
        margins = indexes = None
        if self.extras:
            margins, indexes = self._build_extras(files)
        collection = {"obs_collection": f"{catalog.name}_collection", "hats_primary_table_url": catalog.name}
        if margins:
            collection |= {"all_margins": " ".join(margins), "default_margin": margins[0]}
        if indexes:
            collection |= {"all_indexes": " ".join(f"{k} {v}" for k, v in indexes.items())}
        _write_properties(self.output_dir / "collection.properties", "HATS Collection", collection)
        write_card(self.output_dir, "hats", [f.relative_to(self.output_dir) for f in files], self.columns,
                   self.sector, note=self._card_note(suffix, margins, indexes))
        complaints = _hats_complaints(self.output_dir) if self.extras else []
        if complaints:
            raise WriteError(f"{self.output_dir}: hats does not accept the collection: {'; '.join(complaints)}")
        log.info("HATS collection %s: %d light curves in %d pixel(s), %d file(s)", self.output_dir, total,
                 len(pixels), len(files))

    def _one_flag_width(self, files: list[Path]) -> None:
        """A HATS catalog is one Parquet dataset of one schema (``_metadata`` appends the files' row groups, which
        requires equal schemas): when some files hold 32-bit flags (tglc 0.8 light curves) and others 16-bit ones,
        the narrower files are written again with the wider flags, values kept (rare: a sector mixing versions)."""
        bits = {file: pq.read_schema(file).field("lightcurve").type.field("tglc_flags").type.value_type.bit_width
                for file in files}
        widest = max(bits.values())
        schema = widened(self.schema, self.columns, widest)
        for file in (f for f in files if bits[f] < widest):
            tmp = file.with_name(f".{file.name}{_TEMPORARY}{os.getpid()}")
            try:
                mark = (read_mark(file) or {}) | {DIGEST_KEY: _UNSEALED}  # a new file: sealed anew below
                with pq.ParquetFile(file, page_checksum_verification=True) as pf:
                    kept = {k: v for k, v in (pf.metadata.metadata or {}).items()
                            if k not in (b"ARROW:schema", MARK_KEY.encode())}
                    kept[MARK_KEY.encode()] = json.dumps(mark, sort_keys=True).encode()
                    writer = pq.ParquetWriter(str(tmp), schema, **parquet_options(schema))
                    try:
                        for group in range(pf.num_row_groups):
                            writer.write_table(pf.read_row_group(group).cast(schema))
                        writer.add_key_value_metadata(kept)
                    finally:
                        writer.close()
                verify_file(tmp, schema, mark, full=True)
                seal(tmp)
                os.replace(tmp, file)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("%s: flags widened to %d bits, as other files of the catalog hold", file, widest)

    def _card_note(self, suffix: str, margins: list[str] | None, indexes: dict[str, str] | None) -> str:
        """What the card must add for this build: the pixel-folder layout, the extras."""
        note = [self.note] if self.note else []
        if suffix == DIR_SUFFIX:
            note.append("Some HEALPix pixels of this build hold more light curves than one shard, so every pixel is a "
                        "folder `Npix=<p>/` of shard files `<k>-of-<n>.parquet` (HATS' `hats_npix_suffix=/`; rows "
                        "are sorted by `_healpix_29` within each file), and the catalog has no `_metadata` file "
                        "(hats 0.11 does not accept one that lists several files of a pixel).")
        if margins:
            note.append(f"The collection also holds a {MARGIN_ARCSEC:g} arcsec margin cache (`{margins[0]}`), so "
                        "that LSDB cross-matches across pixel edges, and an index catalog on `gaiadr3_id` "
                        f"(`{indexes['gaiadr3_id']}`): `lsdb.open_catalog(...).id_search(values={{\"gaiadr3_id\": "
                        "...})` finds a star by its Gaia id.")
        return "\n\n".join(note)

    def _build_extras(self, files: list[Path]) -> tuple[list[str], dict[str, str]]:
        """A margin cache of :data:`MARGIN_ARCSEC` (:func:`write_margin`) and a ``gaiadr3_id`` index catalog
        (:func:`write_index`)."""
        catalog = self.catalog_dir
        margin_name, index_name = f"{catalog.name}_{MARGIN_NAME}", f"{catalog.name}_gaiadr3_id"
        write_margin(self.output_dir / margin_name, catalog)
        write_index(self.output_dir / index_name, catalog, [(ORDER, _pixel_of(f), f) for f in files], "gaiadr3_id")
        return [margin_name], {"gaiadr3_id": index_name}


def write_index(index_dir: Path, catalog: Path, partitions: list[tuple[int, int, Path]], column: str,
                rows_per_file: int = 1_000_000) -> np.ndarray:
    """A HATS index catalog of ``column`` over ``partitions`` (each file's order, pixel and path: a per-sector
    catalog's are all of order 4, the stars catalog's vary), as hats-import's index pipeline writes it
    (``dataset/index/part.<i>.parquet``: the column sorted, with the ``Norder``/``Npix`` of each row's partition;
    hats' write options and metadata; an ``index`` hats.properties naming the primary catalog relative to the
    collection, as lsdb's own writer does, so that the collection can move), under a temporary name swapped in.
    Returns the column's values, sorted. Written here because hats-import's pipeline refuses to run on Python 3.11
    with a Dask other than 2025.3 (and it needs none: the whole index of a sector is a few tens of MB)."""
    from hats.catalog.dataset.table_properties import TableProperties
    from hats.io.file_io import get_parquet_write_table_kwargs
    from hats.io.parquet_metadata import write_parquet_metadata

    values, norder, npix = [], [], []
    for order, pixel, file in partitions:
        values.append(_read_column(file, column))
        norder.append(np.full(len(values[-1]), order, np.uint8))
        npix.append(np.full(len(values[-1]), pixel, np.uint64))
    values = np.concatenate(values)
    sort = np.argsort(values, kind="stable")
    table = pa.table({column: values[sort], "Norder": np.concatenate(norder)[sort], "Npix": np.concatenate(npix)[sort]})
    options = get_parquet_write_table_kwargs(table.schema, write_table_kwargs={
        "data_page_size": 16 * 1024, "sorting_columns": pq.SortingColumn.from_ordering(
            table.schema, [(column, "ascending")]), "write_page_checksum": True})
    options.pop("row_group_size", None)
    for stale in index_dir.parent.glob(f".{index_dir.name}{_TEMPORARY}*"):  # of a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = index_dir.with_name(f".{index_dir.name}{_TEMPORARY}{os.getpid()}")
    (tmp / "dataset" / "index").mkdir(parents=True)
    for part, start in enumerate(range(0, max(len(table), 1), rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), tmp / "dataset" / "index" / f"part.{part}.parquet",
                       row_group_size=rows_per_file, **options)
    write_parquet_metadata(tmp, order_by_healpix=False)
    TableProperties(**(TableProperties.new_provenance_dict(tmp, builder=f"tglc_builder v{__version__}") | {
        "catalog_name": index_dir.name, "catalog_type": "index", "total_rows": len(table),
        "primary_catalog": catalog.name, "indexing_column": column})).to_properties_file(tmp)
    shutil.rmtree(index_dir, ignore_errors=True)
    os.replace(tmp, index_dir)
    return table.column(0).to_numpy()


def _read_column(file: Path, column: str) -> np.ndarray:
    """One column of a Parquet file, through its footer alone (``pq.read_table`` makes a dataset: ~1 ms more), or
    of a pixel folder's shards."""
    if os.path.isdir(file):
        return pq.read_table(file, columns=[column]).column(0).to_numpy()
    with pq.ParquetFile(file) as pf:
        return pf.read(columns=[column], use_threads=False).column(0).to_numpy()


def write_margin(margin_dir: Path, catalog: Path, threshold_arcsec: float = MARGIN_ARCSEC) -> int:
    """The ``threshold_arcsec`` margin cache of ``catalog`` as hats-import's margin pipeline (v0.11, no fine
    filtering) writes it, and the number of its rows: for each partition and each pixel of hats' negative tree (the
    rest of the sky), the rows of the catalog in the pixels of ``margin2order(threshold)`` bordering it from outside,
    sorted by the spatial index (one shard per source partition, in path order), in hats' ``Norder=/Dir=/Npix=``
    files with hats' metadata and a ``margin`` hats.properties naming the primary catalog relative to the collection
    (so that it can move); with no rows when none lies near another pixel.

    By hand because the pipeline costs ~8 CPU-seconds whatever the catalog's size (measured on the stars catalog of
    tests/test_stars.py: 3.7 s of numba compiles of hats' tree alignment for the negative tree, 0.9 s importing
    hats-import with dask.distributed and dask.dataframe, ~3 s a Dask client's start and its tasks), which dominated
    small builds; this takes 0.16 s there. tests/test_stars.py checks it file for file against the pipeline."""
    import cdshealpix
    from hats.catalog.dataset.table_properties import TableProperties
    from hats.catalog.partition_info import PartitionInfo
    from hats.io import paths
    from hats.io.file_io import get_parquet_write_table_kwargs
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math.healpix_pixel import HealpixPixel
    from hats.pixel_math.healpix_shim import margin2order

    info = TableProperties.read_from_dir(catalog)
    parts = PartitionInfo.read_from_dir(catalog).get_healpix_pixels()
    order = int(margin2order(threshold_arcsec / 60.0))
    # hats' negative tree (Catalog.generate_negative_tree_pixels, numba-compiled): the children of the partitions'
    # ancestors, and the order-0 pixels, that are neither an ancestor nor a partition
    above = {(p.order - k, p.pixel >> 2 * k) for p in parts for k in range(1, p.order + 1)}
    children = {(0, pixel) for pixel in range(12)} | {(o + 1, 4 * p + c) for o, p in above for c in range(4)}
    negative = [HealpixPixel(o, p) for o, p in children - above - {(p.order, p.pixel) for p in parts}]
    # the margin cells of each pixel (hats.pixel_math.get_margin, vectorised): the cells of order ``order``
    # bordering it from outside, ``cells`` sorted, ``owner`` the pixel of each
    targets = parts + negative
    cells, owner = [], []
    for level in {pixel.order for pixel in targets}:
        at = [i for i, pixel in enumerate(targets) if pixel.order == level]
        edges, corners = cdshealpix.external_neighbours(np.array([targets[i].pixel for i in at], np.uint64), level,
                                                        order - level)
        border = np.concatenate([edges, corners], axis=1).astype(np.int64)
        cells.append(border.ravel())
        owner.append(np.repeat(at, border.shape[1]))
    cells, owner = np.concatenate(cells), np.concatenate(owner)
    cells, owner = cells[cells >= 0], owner[cells >= 0]  # -1: a corner with no neighbour
    sort = np.argsort(cells, kind="stable")
    cells, owner = cells[sort], owner[sort]
    schema = pq.read_schema(paths.get_common_metadata_pointer(catalog).path)
    column, shift = info.healpix_column, 2 * (info.healpix_order - order)
    # each source partition's rows for each pixel go to an Arrow file of their own (as hats-import's map stage does),
    # then each pixel's are gathered into its file: memory holds one batch of a partition and its margin rows, never
    # a whole partition (a stars partition is up to ~1 GB of Parquet) nor the whole margin. Written under a
    # temporary name, then swapped in: a kill leaves the old margin cache or none, never half of one.
    for stale in margin_dir.parent.glob(f".{margin_dir.name}.*-*"):  # of a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = margin_dir.with_name(f".{margin_dir.name}.shards-{os.getpid()}")
    out = margin_dir.with_name(f".{margin_dir.name}{_TEMPORARY}{os.getpid()}")
    tmp.mkdir(parents=True)
    shards: dict = {}
    try:
        for path in sorted(paths.pixel_catalog_file(catalog, part, npix_suffix=info.npix_suffix).path
                           for part in parts):  # as pyarrow lists them (a suffix '.parquet' or '/': the same order)
            path = Path(path)
            pieces: dict[int, list[pa.RecordBatch]] = {}
            for file in sorted(f for f in path.rglob("*") if f.is_file() and not any(
                    part.startswith((".", "_")) for part in f.relative_to(path).parts)) \
                    if path.is_dir() else [path]:  # a pixel folder's shards as pyarrow's dataset lists them
                with pq.ParquetFile(file) as pf:
                    cell = pf.read(columns=[column], use_threads=False).column(0).to_numpy() >> shift
                    # each row in a margin cell with each pixel bordered by that cell (a pixel's border lists a
                    # cell once), by row: one search of the sorted cells, and only the row groups holding such rows
                    # decoded. Was a np.isin per batch and pixel, every batch decoded: 1.1 -> 0.85 CPU-s for the
                    # stars benchmark's margin cache (one row group a partition), 1.8 -> 0.45 with 10-row groups
                    first, count = np.searchsorted(cells, cell), np.searchsorted(cells, cell, side="right")
                    count -= first
                    rows = np.repeat(np.arange(len(cell)), count)
                    hits = owner[np.arange(len(rows)) + np.repeat(first - np.cumsum(count) + count, count)]
                    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
                    for group in np.unique(np.searchsorted(starts, rows, side="right") - 1):
                        offset = starts[group]
                        for batch in pf.iter_batches(batch_size=1024, row_groups=[group], use_threads=False):
                            inside = (rows >= offset) & (rows < offset + len(batch))
                            for target in np.unique(hits[inside]):
                                pieces.setdefault(target, []).append(batch.take(rows[inside & (hits == target)]
                                                                                - offset))
                            offset += len(batch)
            for target in sorted(pieces):  # in the targets' order
                shard = tmp / f"{sum(map(len, shards.values()))}.arrow"
                with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                    writer.write_table(pa.Table.from_batches(pieces[target], schema).sort_by(column))
                shards.setdefault(targets[target], []).append(shard)
        total = 0
        for pixel in sorted(shards):
            tables = []
            for shard in shards[pixel]:
                with pa.memory_map(str(shard)) as source:
                    tables.append(pa.ipc.open_file(source).read_all())
            table = pa.concat_tables(tables)
            pq.write_table(table, paths.new_pixel_catalog_file(out, pixel).path,
                           **get_parquet_write_table_kwargs(table.schema))
            total += len(table)
            del table, tables
        if total:
            write_parquet_metadata(out)
        else:  # an empty margin cache, as hats-import writes it
            (out / "dataset").mkdir(parents=True)
            for name in ("_common_metadata", "_metadata"):
                pq.write_metadata(schema, out / "dataset" / name)
        partition_info = PartitionInfo.from_healpix(sorted(shards))
        partition_info.write_to_file(paths.get_partition_info_pointer(out))
        TableProperties(**({
            "catalog_name": margin_dir.name, "total_rows": total, "catalog_type": "margin",
            "ra_column": info.ra_column, "dec_column": info.dec_column, "primary_catalog": catalog.name,
            "margin_threshold": threshold_arcsec, "hats_order": max(pixel.order for pixel in sorted(shards) or parts),
            "moc_sky_fraction": f"{partition_info.calculate_fractional_coverage():0.5f}", "healpix_column": column,
            "healpix_order": info.healpix_order, "npix_suffix": ".parquet"}
            | TableProperties.new_provenance_dict(out, builder=f"tglc_builder v{__version__}"))
        ).to_properties_file(out)
        old = margin_dir.with_name(f".{margin_dir.name}.old-{os.getpid()}")
        if margin_dir.exists():
            os.replace(margin_dir, old)
        os.replace(out, margin_dir)
        _fsync_dir(margin_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return total


def _write_parquet_metadata(catalog: Path, files: list[Path], with_metadata: bool) -> int:
    """hats' ``write_parquet_metadata(catalog, create_metadata=with_metadata)`` for a catalog of one order: the
    schema of the first file (in path order, as pyarrow's dataset finds them) without its key-value metadata as
    ``_common_metadata``, and every file's footer, its path relative to ``dataset/``, in pixel order as
    ``_metadata``; the number of rows."""
    dataset = catalog / "dataset"
    found = sorted(files, key=lambda f: str(f.relative_to(dataset)))
    footers = [pq.read_metadata(f) for f in found]
    schema = pq.read_schema(found[0]).remove_metadata()
    if with_metadata:
        for file, footer in zip(found, footers):
            footer.set_file_path(str(file.relative_to(dataset)))
        by_pixel = sorted(range(len(found)), key=lambda i: _pixel_of(found[i]))  # stable, as hats' argsort
        pq.write_metadata(schema, dataset / "_metadata", metadata_collector=[footers[i] for i in by_pixel],
                          write_statistics=True)
    pq.write_metadata(schema, dataset / "_common_metadata")
    return sum(footer.num_rows for footer in footers)


def _write_skymap(cells: np.ndarray, counts: np.ndarray, path: Path) -> None:
    """hats' ``write_fits_image`` of the order-:data:`SKYMAP_ORDER` histogram that holds ``counts`` in ``cells``
    (sorted, the others empty): cdshealpix's FITS skymap, explicit when more than half the cells are empty, through
    cdshealpix's compiled module (its ``skymap`` module imports matplotlib). The explicit map is written from the
    cells, as ``to_explicit`` would find them, not from the whole histogram (12 * 4**10 cells: 100 MB)."""
    core, size = _cdshealpix(), 12 * 4 ** SKYMAP_ORDER
    if (size - len(cells)) / size > 0.5:
        core.write_skymap_explicit(SKYMAP_ORDER, cells.astype(np.uint64), counts.astype(np.int64), str(path))
    else:
        histogram = np.zeros(size, np.int64)
        histogram[cells] = counts
        core.write_skymap_implicit(histogram, str(path))


def _sky_fraction(pixels: int) -> float:
    """hats' ``PartitionInfo.calculate_fractional_coverage`` of ``pixels`` order-ORDER pixels, float for float (the
    plain ``pixels / 3072`` rounds otherwise at 5 decimals for 624, 2832 and 3024 pixels)."""
    return 4 * np.pi / (12 * 4 ** ORDER) * (180 / np.pi) ** 2 * pixels / (360 ** 2 / np.pi)


def _provenance(catalog: Path) -> dict:
    """hats' ``TableProperties.new_provenance_dict`` (hats 0.11: HATS v1.0 of 2025-08-22), its size estimate the
    bytes under ``catalog`` in KiB."""
    from datetime import datetime, timezone
    from importlib.metadata import version

    size = sum(f.stat().st_size for f in catalog.rglob("*") if f.is_file())
    return {"hats_builder": f"tglc_builder v{__version__}, hats v{version('hats')}",
            "hats_creation_date": datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H:%M%Z"),
            "hats_estsize": size // 1024, "hats_release_date": "2025-08-22", "hats_version": "v1.0"}


def _write_properties(path: Path, comment: str, properties: dict) -> None:
    """A Java-style properties file as hats writes it."""
    write_text(path, f"#{comment}\n" + "".join(f"{key}={value}\n" for key, value in properties.items()))


def _hats_complaints(path: Path) -> list[str]:
    """Why ``is_valid_catalog(path, strict=True)`` fails (empty when it holds). hats logs its findings on the root
    logger, including warnings about what is normal here (a collection, no _metadata in the folder layout): they are
    kept out of the build's log and returned only when the collection is not valid."""
    from hats.io.validation import is_valid_catalog

    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage().replace("\n", " "))

    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [_Keep(logging.WARNING)]
    try:
        valid = is_valid_catalog(path, strict=True)
    finally:
        root.handlers = handlers
    return [] if valid else (messages or ["is_valid_catalog(strict=True) is False"])


def _pixel_of(file: Path) -> int | None:
    for part in (file.name, file.parent.name):
        match = re.match(r"^Npix=(\d+)", part)
        if match:
            return int(match.group(1))
    return None


# ---- the sink ------------------------------------------------------------------------------------------------------
class _HatsSink(ShardSink):
    """Blocks -> a temporary Arrow IPC file (catalog order) -> at commit, the Parquet file in _healpix_29 order."""

    def __init__(self, writer: HatsWriter, shard: Shard):
        self.writer, self.shard = writer, shard
        self.file = writer.file(shard)
        self.tmp = self.file.with_name(f".{self.file.name}{_TEMPORARY}{os.getpid()}")
        self.ipc_path = self.file.with_name(f".{self.file.name}{_TEMPORARY}{os.getpid()}.arrow")
        # The temporary file holds 32-bit flags; the Parquet file the narrowest width of its light curves' files.
        self.schema = widened(writer.schema, writer.columns, 32)
        self.flag_bits = 16
        self.versions: dict[str, set] = {}
        self._ipc: pa.ipc.RecordBatchFileWriter | None = None
        self._ipc_file = None
        self._spatial: list[np.ndarray] = []
        self.rows = 0

    def _fail(self, exc: BaseException) -> WriteError:
        self.abort()
        return write_error(self.file, exc)

    def append(self, block: Block) -> None:
        if not len(block):
            return
        try:
            batch = self._batch(block)
            if self._ipc is None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                for stale in self.file.parent.glob(f".{self.file.name}{_TEMPORARY}*"):
                    stale.unlink(missing_ok=True)  # debris of a killed writer of this shard
                self._ipc_file = pa.OSFile(str(self.ipc_path), "wb")
                self._ipc = pa.ipc.new_file(self._ipc_file, self.schema)
            self._ipc.write_batch(batch)
        except (OSError, pa.ArrowException) as exc:
            raise self._fail(exc) from None
        self._spatial.append(_numpy(batch.column(0)))
        self.rows += len(block)
        self.flag_bits = max([self.flag_bits] + [8 * block.series[s.name].dtype.itemsize
                                                 for s in self.writer.columns.series if s.widens])
        note_versions(self.versions, self.shard, block)

    def _batch(self, block: Block) -> pa.RecordBatch:
        """The block as the catalog's columns, each list trimmed to its n_cadences (values copied, bits kept), its
        rows sorted by _healpix_29 (stable): :meth:`commit` then merges sorted runs, slices of the batches."""
        shard, s = self.shard, block.scalars
        n = np.asarray(block.n_cadences, np.int32)
        ra, dec = np.asarray(s["RA"], np.float64), np.asarray(s["DEC"], np.float64)
        spatial = spatial_index(ra, dec)
        order = np.argsort(spatial, kind="stable")
        n = n[order]
        columns = {SPATIAL_INDEX: spatial,
                   "TIC_ID": np.asarray(s["TIC_ID"], np.int64), "gaiadr3_id": np.asarray(s["gaiadr3_id"], np.int64),
                   "RA": ra, "DEC": dec, "sector": np.full(len(n), self.writer.sector, np.int16),
                   "camera": shard.cam[block.rows].astype(np.int16), "ccd": shard.ccd[block.rows].astype(np.int16),
                   "psf_flux_err": s["psf_flux_err"], "aper_flux_err": s["aper_flux_err"]}
        columns.update({x.name: s[x.name] for x in extra_scalars(self.writer.columns)})
        columns = {name: np.asarray(values)[order] for name, values in columns.items()} | {N_CADENCES[0]: n}
        arrays = [_array(columns[f.name], f.type) for f in self.schema
                  if f.name != "lightcurve"]
        offsets = _array(np.concatenate([[0], np.cumsum(n, dtype=np.int64)]), pa.int32())
        curve_type = self.schema.field("lightcurve").type
        children, inside = [], {}  # inside[width]: the cadences of each row, one mask for the block's series
        for field in curve_type:
            values = block.series[field.name]
            width = values.shape[1]
            if len(n) and int(n.max()) > width:
                raise ValueError(f"block series {field.name} is {width} wide, n_cadences up to {int(n.max())}")
            if width not in inside:
                inside[width] = np.arange(width) < n[:, None]
            flat = values[order][inside[width]]  # row-major: each light curve's values in turn
            children.append(pa.ListArray.from_arrays(offsets, _array(flat, field.type.value_type)))
        arrays.append(pa.StructArray.from_arrays(children, fields=list(curve_type)))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def commit(self) -> None:
        if self._ipc is None:  # no row: no file (a stale one would hold rows that are no longer planned)
            self.abort()
            self.file.unlink(missing_ok=True)
            return
        mark = self.writer.mark(self.shard, self.rows)
        text = json.dumps(mark, sort_keys=True)  # stored verbatim in the footer, where seal finds its placeholder
        schema = widened(self.writer.schema, self.writer.columns, self.flag_bits)
        try:
            self._ipc.close()
            self._ipc_file.close()
            self._ipc = self._ipc_file = None
            spatial = np.concatenate(self._spatial)
            order = np.argsort(spatial, kind="stable")
            with pa.memory_map(str(self.ipc_path), "r") as source:
                reader = pa.ipc.open_file(source)
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]  # views of the map
                if sum(len(b) for b in batches) != self.rows:
                    raise WriteError(f"{self.ipc_path}: {sum(len(b) for b in batches)} rows read back, "
                                     f"{self.rows} written")
                writer = pq.ParquetWriter(str(self.tmp), schema, **parquet_options(schema))
                try:
                    for start in range(0, len(order), ROW_GROUP_ROWS):
                        writer.write_table(_take(batches, order[start:start + ROW_GROUP_ROWS]).cast(schema))
                    writer.add_key_value_metadata({VERSIONS_KEY: versions_text(self.versions)})
                    writer.add_key_value_metadata({MARK_KEY: text})
                finally:
                    writer.close()
                del batches, reader
            self.ipc_path.unlink(missing_ok=True)
            ids, sorted_spatial = verify_file(self.tmp, schema, mark, full=True)
            if not np.array_equal(sorted_spatial, spatial[order]):
                raise WriteError(f"{self.tmp}: {SPATIAL_INDEX} read back differs from what was written")
            seal(self.tmp, text)  # (checks that the checksum's place is inside the mark: no footer read again)
            os.replace(self.tmp, self.file)
            _fsync_dir(self.file.parent)
        except WriteError as exc:
            self.abort()
            raise WriteError(f"{self.file}: verification failed before renaming: {exc}") from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise self._fail(exc) from None
        finally:  # Arrow's pool keeps what the shard freed: a worker would idle at its high-water mark (~60 MB)
            pa.default_memory_pool().release_unused()

    def abort(self) -> None:
        for handle in (self._ipc, self._ipc_file):
            if handle is not None:
                with suppress(Exception):  # the file is being discarded anyway
                    handle.close()
        self._ipc = self._ipc_file = None
        self.tmp.unlink(missing_ok=True)
        self.ipc_path.unlink(missing_ok=True)


class _HatsRows(RowSource):
    """A whole pixel file's rows, read back in any order. The file is decoded once, at the first read, into an
    uncompressed Arrow file beside it, memory-mapped and unlinked at once: a shard's blocks come in catalog order,
    which visits every row group of a file sorted by _healpix_29, so reading the Parquet file for each block would
    decompress it once per block."""

    def __init__(self, file: Path, columns: ColumnSet):
        self.file, self.columns = file, columns
        self.ids = pq.read_table(file, columns=["gaiadr3_id"]).column(0).to_numpy()
        self._batches: list[pa.RecordBatch] | None = None

    def _load(self) -> list[pa.RecordBatch]:
        tmp = self.file.with_name(f".{self.file.name}{_TEMPORARY}{os.getpid()}.carry.arrow")
        try:
            with pq.ParquetFile(self.file, page_checksum_verification=True) as pf:
                if pf.metadata.num_rows != len(self.ids):
                    raise ValueError(f"{self.file} changed since it was found whole")
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, pf.schema_arrow) as out:
                    for group in range(pf.num_row_groups):
                        out.write_table(pf.read_row_group(group))
            reader = pa.ipc.open_file(pa.memory_map(str(tmp), "r"))
            return [reader.get_batch(i) for i in range(reader.num_record_batches)]
        finally:
            tmp.unlink(missing_ok=True)  # the mapping outlives the name

    def read(self, file_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``file_rows`` of the file (in the order given): ids, position, ``n_cadences``, the column set's
        scalars (``camera``/``ccd`` from the file's columns) and its series padded to the longest of these rows."""
        if self._batches is None:
            self._batches = self._load()
        table = _take(self._batches, np.asarray(file_rows, np.int64))
        n = table.column(N_CADENCES[0]).to_numpy()
        out = {N_CADENCES[0]: n}
        for name, (dtype, _, _) in IDS_AND_POSITION.items():
            out[name] = table.column(name).to_numpy().astype(dtype, copy=False)
        for scalar in self.columns.scalars:
            out[scalar.name] = table.column(scalar.name).to_numpy().astype(scalar.dtype, copy=False)
        width = int(n.max()) if len(n) else 0
        inside = np.arange(width) < n[:, None]
        curve = table.column("lightcurve").combine_chunks()
        for series in self.columns.series:
            flat = pc.struct_field(curve, series.name).flatten().to_numpy(zero_copy_only=False)
            values = np.full((len(n), width), series.pad, flat.dtype if series.widens else series.dtype)
            values[inside] = flat  # bits kept
            out[series.name] = values
        return out


def _take(batches: list[pa.RecordBatch], rows: np.ndarray) -> pa.Table:
    """Rows ``rows`` (indices into the concatenation of ``batches``), in that order, as one chunk: each run of
    consecutive rows of a batch (as when merging sorted batches) sliced, the slices joined, a copy of these rows only.
    (``Table.take`` would first concatenate every chunk of a nested column: a copy of the whole shard; a take of each
    batch's rows joined and taken again in order cost twice this on the merged row groups of a sector's big shards.)"""
    starts = np.cumsum([0] + [len(b) for b in batches])
    which = np.searchsorted(starts, rows, side="right") - 1
    local = rows - starts[which]
    first = np.r_[0, np.flatnonzero((np.diff(which) != 0) | (np.diff(local) != 1)) + 1]  # where each run starts
    table = pa.Table.from_batches([batches[b].slice(at, size) for b, at, size in
                                   zip(which[first], local[first], np.diff(np.r_[first, len(rows)]))])
    return table if len(first) == 1 else table.combine_chunks()


def _array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``type_``: numbers wrapped as a buffer, because ``pa.array`` first checks for
    pandas objects, which imports pandas (0.2 CPU-s and 40 MB in every worker)."""
    if not pa.types.is_primitive(type_) or pa.types.is_boolean(type_) or pa.types.is_temporal(type_):
        return pa.array(values, type_)  # booleans are bits in Arrow, times carry a unit: not a numpy buffer
    values = np.ascontiguousarray(values, type_.to_pandas_dtype())
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow array of numbers as numpy (a view of a single chunk), as ``to_numpy`` would give it, without importing
    pandas (as ``to_numpy`` does: see :func:`_array`); ValueError if it holds nulls."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    if array.null_count:
        raise ValueError(f"{array.null_count} null(s) in a column that has none")
    dtype = np.dtype(array.type.to_pandas_dtype())
    parts = [np.frombuffer(c.buffers()[1], dtype, len(c), c.offset * dtype.itemsize) for c in chunks]
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
