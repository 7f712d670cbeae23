"""The HDF5 format: ``<out>/TGLC/healpix=<p>/<k>-of-<n>.hdf5`` plus ``tglc.py`` and the dataset card (see
docs/DATASET.md).

A shard streams through blocks into chunked, compressed datasets of a file under a temporary name (HDF5 2.0 crashes
closing a file whose writes failed on a full disk: see ``_HDF5Sink.abort``). Every dataset carries HDF5's
Fletcher32 chunk checksums, so a corrupted chunk raises on read in every reader. A file's bytes, with its completion
mark (an attribute holding the SHA-256 of the whole file as zeros), are checked whole (every chunk of every row
stored, every chunk's checksum right, read back raw), then sealed (the checksum written into the mark, see
:func:`.base.seal`: Fletcher32 leaves the metadata unprotected), synced and renamed; so a file under a final name
with that mark is whole, and ``--verify`` catches any byte changed since.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import deflate
import h5py
import numpy as np

from .. import __version__, layout
from ..columns import IDS_AND_POSITION, N_CADENCES, STRING, STRING_BYTES, ColumnSet
from ..errors import UsageError
from ..folders import atomically
from .base import (_UNSEALED, DIGEST_KEY, VERSIONS_KEY, Block, RowSource, Shard, ShardSink, WriteError, Writer,
                   check_digest, note_versions, seal, versions_text, write_error)

log = logging.getLogger(__name__)

BLOCK_ROWS = 256  # the build's blocks (a power of two: blocks fill whole chunks)
CHUNK_BYTES = 1 << 19  # target size of an HDF5 chunk of a light-curve column (before compression)
SCALAR_CHUNK = 4096  # rows per chunk of the per-light-curve columns (fewer in a smaller file)
VERIFY_BYTES = 1 << 23  # values read at a time when a file is read back
# Chunk cache per open dataset. HDF5 2.0 raised its default from 1 MiB to 8 MiB, which a writer with a dozen datasets
# fills (~45 MB more per worker) for nothing: blocks fill whole chunks, which need no cache to be written or read.
CHUNK_CACHE = {"rdcc_nbytes": 1 << 20}
# attribute written last, after verification: JSON of what the file holds, and the SHA-256 of the whole file
# (base.seal, written into the attribute's bytes in place once the file is closed)
COMPLETE = "tglc_builder_complete"
# Lossless filters that every h5py ships, after a byte shuffle, and deterministic (the same values give the same
# bytes whatever was written before, so a resumed build equals an uninterrupted one byte for byte): DEFLATE, at its
# fastest levels, and Fletcher32 on everything. The float series' whole chunks (fluxes, times) are compressed here by
# libdeflate (the `deflate` package: a zlib stream, which HDF5's filter decodes) and written as they are
# (:func:`_write_series`); the integer series (flags, cadence numbers), and the rows of a chunk a shard's last block
# covers in part, go through HDF5's own filter (zlib, deterministic too).
# LZF, used before for the fluxes, is not deterministic: h5py's bundled liblzf leaves its hash table uninitialised,
# so a chunk compressed differently after different chunks (6 of 2,370 in a resumed build).
# Measured on the 3,920 demo light curves of one pixel (1,282 cadences; CPU of each series' writes, microseconds per
# light curve, load ~5 on 2 cores): the two fluxes, zlib level 1 Z_RLE (before) 90.7, libdeflate level 1 86.3 and
# 1.5% smaller (on the real files of tests/data 0-5% smaller); the times, HDF5's DEFLATE 1 (zlib) 56.9, libdeflate
# level 1 42.1 but 4% bigger, level 2 46.8 and 4% smaller (so on the real files). Not the flags: HDF5's filter is
# faster on them than libdeflate or ours (a 24-row chunk: 84 us against 236 us through _write_series at level 2).
# The convert stage: 0.82-0.86x the code of a4a41bf against 0.71-0.82x; 9.70 against 9.90 KB per light curve (see
# benchmarks/RESULTS.md, "libdeflate").
_DEFLATE: dict[str, Any] = {"compression": "gzip", "compression_opts": 1, "shuffle": True, "fletcher32": True}
_SCALAR: dict[str, Any] = {"fletcher32": True}  # 0.5% of the bytes: not worth decompressing
_SHARD_NAME = re.compile(r"^\d{3,}-of-\d{3,}\.hdf5$")
_TEMPORARY = ".tmp-"


def _encode_chunk(chunk: np.ndarray) -> bytes:
    """A whole chunk as HDF5 stores it through the pipeline shuffle, DEFLATE, Fletcher32 (filter mask 0): HDF5's
    byte shuffle, libdeflate's zlib stream (level 1 for the float32 fluxes, 2 for the float64 times: see _DEFLATE),
    then the Fletcher32 checksum, little-endian, as H5Z_filter_fletcher32 appends it."""
    shuffled = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1, chunk.dtype.itemsize).T.tobytes()
    data = deflate.zlib_compress(shuffled, 1 if chunk.dtype == np.float32 else 2)
    return data + _fletcher32(memoryview(data))[0].to_bytes(4, "little")


# h5py's high-level calls cost ~0.1 ms each beyond HDF5's own work, and each identifier it makes ~5 us: a --tiny
# build's file of ~25 rows makes twelve datasets and nine attributes and writes each once, so the sink makes and
# writes them through h5py's low-level identifiers instead, the same ones reused (property lists, types, spaces).
_PLISTS: dict[tuple, Any] = {}  # creation properties made by h5py (and a dataspace), by dtype, rank, pad, filters
_TYPES: dict[tuple, Any] = {}  # HDF5 types of NumPy dtypes (h5py's py_create), by dtype and logical
_SCALAR_SPACE = h5py.h5s.create_simple(())


def _type(dtype: np.dtype, logical: bool) -> h5py.h5t.TypeID:
    key = (dtype, h5py.check_string_dtype(dtype), logical)
    if key not in _TYPES:
        _TYPES[key] = h5py.h5t.py_create(dtype, logical=logical)
    return _TYPES[key]


def _new_dataset(h5: h5py.File, name: str, dtype: np.dtype, width: int | None, chunks: tuple[int, ...],
                 pad: Any, filters: dict[str, Any]) -> h5py.h5d.DatasetID:
    """An empty dataset growable along its rows (and columns), made with exactly the creation properties h5py's
    ``create_dataset`` gives it (so the same bytes): the first of each kind is made by h5py, and its properties are
    copied for the next ones, with their own chunk shape."""
    shape = (0,) if width is None else (0, width)
    dtype = np.dtype(dtype)
    key = (dtype.str, h5py.check_string_dtype(dtype), len(shape), repr(pad), repr(filters))
    if key not in _PLISTS:
        dset = h5.create_dataset(name, shape=shape, maxshape=(None,) * len(shape), dtype=dtype, chunks=chunks,
                                 fillvalue=pad, **filters)
        _PLISTS[key] = dset.id.get_create_plist(), h5py.h5s.create_simple(shape, (h5py.h5s.UNLIMITED,) * len(shape))
        return dset.id
    plist, space = _PLISTS[key]
    plist = plist.copy()
    plist.set_chunk(chunks)
    return h5py.h5d.create(h5.id, name.encode(), _type(dtype, True), space, dcpl=plist)


def _write_attrs(h5: h5py.File, values: dict[str, Any]) -> None:
    """New attributes of the file, typed as h5py's ``attrs[name] = value`` types them (text: variable-length
    UTF-8; numbers: NumPy's scalars), written through the low-level calls."""
    for name, value in values.items():
        data = np.asarray(value, dtype=h5py.string_dtype() if isinstance(value, str) else None)
        attr = h5py.h5a.create(h5.id, name.encode(), _type(data.dtype, True), _SCALAR_SPACE)
        attr.write(data, mtype=_type(data.dtype, False))
        attr.close()


def _write_rows(dset: h5py.h5d.DatasetID, start: int, values: np.ndarray) -> None:
    """``dset[start:start + len(values), :values.shape[1]] = values``, through the low-level write."""
    values = np.ascontiguousarray(values)
    space = dset.get_space()
    space.select_hyperslab((start,) + (0,) * (values.ndim - 1), values.shape)
    dset.write(h5py.h5s.create_simple(values.shape), space, values)


def _write_series(dset: h5py.h5d.DatasetID, chunks: tuple[int, int], start: int, values: np.ndarray, pad: Any
                  ) -> None:
    """Write ``values`` at rows ``start...`` (columns ``0...``) of a series' dataset: the chunks the rows cover whole
    are encoded by :func:`_encode_chunk` and written as they are (``write_direct_chunk``); rows of a chunk covered
    in part (the last block of a shard) go through h5py, whose DEFLATE is deterministic too."""
    chunk_rows, chunk_cols = chunks
    k, used = values.shape
    end = start + k
    first = min(end, -(-start // chunk_rows) * chunk_rows)  # the first chunk boundary at or after start
    last = max(first, end // chunk_rows * chunk_rows)  # the end of the whole chunks
    if first > start:
        _write_rows(dset, start, values[:first - start])
    for row in range(first, last, chunk_rows):
        rows = values[row - start:row - start + chunk_rows]
        for col in range(0, used, chunk_cols):
            chunk = np.full((chunk_rows, chunk_cols), pad, values.dtype)
            part = rows[:, col:col + chunk_cols]
            chunk[:, :part.shape[1]] = part
            dset.write_direct_chunk((row, col), _encode_chunk(chunk))
    if end > last:
        _write_rows(dset, last, values[last - start:])


def pixel_dir(output_dir: str | os.PathLike, pixel: int) -> Path:
    return Path(output_dir) / "TGLC" / f"healpix={pixel}"


class HDF5Writer(Writer):
    name = "hdf5"

    def file(self, shard: Shard) -> Path:
        return pixel_dir(self.output_dir, shard.pixel) / f"{shard.label}.hdf5"

    def _mark(self, n_rows: int) -> str:
        return json.dumps({"sector": self.sector, "columns": self.columns.name, "rows": n_rows,
                           "tglc_builder_version": __version__, DIGEST_KEY: _UNSEALED}, sort_keys=True)

    def complete_ids(self, shard: Shard, verify: bool = False) -> np.ndarray | None:
        file = self.file(shard)
        try:
            digest = check_digest(file) if verify else None  # before HDF5 reads a byte of a damaged file
            with h5py.File(file, "r", **CHUNK_CACHE) as h5:
                mark = json.loads(h5.attrs.get(COMPLETE, "null"))
                if not mark or mark["sector"] != self.sector or mark["columns"] != self.columns.name:
                    return None
                if verify:
                    if mark.get(DIGEST_KEY) != digest:
                        raise WriteError(f"{file}: its mark does not hold the checksum found in it")
                    _verify(h5, mark["rows"], self.columns)
                ids = h5["gaiadr3_id"][()]
                return ids if len(ids) == mark["rows"] else None
        except (OSError, KeyError, ValueError, TypeError, WriteError) as exc:
            if file.exists():
                log.warning("%s is not a whole shard (%s); it will be written again", file, exc)
            return None

    def open(self, shard: Shard) -> ShardSink:
        return _HDF5Sink(self, shard)

    def rows_of(self, shard: Shard, verify: bool = False) -> RowSource | None:
        ids = self.complete_ids(shard, verify=verify)
        return _HDF5Rows(self.file(shard), ids, self.columns) if ids is not None and len(ids) else None

    def prepare(self, shards: list[Shard], overwrite: bool) -> None:
        """Make ``TGLC/`` hold only this build's files: remove debris and superseded shards of its pixels; refuse
        (or, with ``overwrite``, remove) pixels of another build, which would otherwise be loaded with this one."""
        planned: dict[int, set[str]] = {}
        for shard in shards:
            planned.setdefault(shard.pixel, set()).add(self.file(shard).name)
        root = self.output_dir / "TGLC"
        foreign = []
        for directory in sorted(root.glob("healpix=*")) if root.is_dir() else ():
            pixel = int(directory.name[8:]) if directory.name[8:].isdigit() else None
            for stale in directory.glob(f".*{_TEMPORARY}*"):
                stale.unlink(missing_ok=True)
            files = [f for f in directory.iterdir() if _SHARD_NAME.match(f.name)]
            if pixel not in planned:
                if files:
                    foreign.append(directory)
                continue
            for file in files:
                if file.name not in planned[pixel]:
                    file.unlink()
        if foreign and not overwrite:
            raise UsageError(
                f"{self.output_dir} already holds {len(foreign)} HEALPix pixel(s) that are not part of this build "
                f"(e.g. {foreign[0].name}), from an earlier build of another sector or size; choose another "
                "--hdf5_output_path, or pass --overwrite to replace that dataset")
        for directory in foreign:
            shutil.rmtree(directory)
        if shards:  # another sector's or column set's files in this build's own pixels
            for shard in shards:
                file = self.file(shard)
                if file.exists() and not overwrite and _foreign_mark(file, self.sector, self.columns.name):
                    raise UsageError(
                        f"{file} belongs to another build ({_foreign_mark(file, self.sector, self.columns.name)}); "
                        "choose another --hdf5_output_path, or pass --overwrite to replace that dataset")

    def finish(self, shards: list[Shard]) -> None:
        from .card import write_card

        source = Path(__file__).resolve().parents[1] / "tglc.py"
        with atomically(self.output_dir / "tglc.py") as tmp:
            shutil.copyfile(source, tmp)
        for stale in (self.output_dir / "TGLC").glob(f"healpix=*/.*{_TEMPORARY}*"):  # of a worker that died
            stale.unlink(missing_ok=True)
        files = sorted({self.file(shard) for shard in shards if self.file(shard).exists()})
        if files:  # none when the build stopped before its first file (a full disk): no card to write
            write_card(self.output_dir, fmt="hdf5", data_files=[f.relative_to(self.output_dir) for f in files],
                       columns=self.columns, sectors=self.sector, note=self.note)


def _foreign_mark(file: Path, sector: int, columns: str) -> str:
    """What another build's file holds ('' when it is this build's, or unreadable: then it is rewritten)."""
    try:
        with h5py.File(file, "r") as h5:
            mark = json.loads(h5.attrs.get(COMPLETE, "null"))
    except (OSError, ValueError):
        return ""
    if not mark:
        return ""
    if mark["sector"] != sector:
        return f"sector {mark['sector']}"
    if mark["columns"] != columns:
        return f"--columns {mark['columns']}"
    return ""


def _verify(h5: h5py.File, n_rows: int, columns: ColumnSet, opened: dict[str, h5py.h5d.DatasetID] | None = None,
            image: bytes | None = None) -> None:
    """Check a shard file whole: every dataset there with its shape, every chunk of every row stored (each read raw
    from the file, or from ``image``, the bytes of a file built in memory), every chunk's Fletcher32 checksum right,
    and n_cadences in range (``opened``: its datasets already open). Through h5py's low-level identifiers: its
    high-level objects cost ~0.2 ms each to make."""
    file = h5.filename
    names = [*IDS_AND_POSITION, N_CADENCES[0], *(s.name for s in columns.scalars), *(s.name for s in columns.series)]
    datasets = {}
    for name in names:
        try:
            datasets[name] = opened[name] if opened and name in opened else h5py.h5d.open(h5.id, name.encode())
        except KeyError:
            pass
    missing = [name for name in names if name not in datasets]
    if missing:
        raise WriteError(f"{file}: no {', '.join(missing)} dataset")
    width = datasets["time"].shape[1]
    with open(os.devnull if image else file, "rb") as raw:  # nothing to open for an image
        read = (lambda at, size: image[at:at + size]) if image else (lambda at, size: os.pread(raw.fileno(), size, at))
        for name, dset in datasets.items():
            shape = dset.shape
            if shape[0] != n_rows or (len(shape) == 2 and shape[1] != width):
                raise WriteError(f"{file}: {name} has shape {shape}, expected {n_rows} rows")
            try:
                _verify_chunks(dset, shape[0], read)
            except OSError as exc:
                raise WriteError(f"{file}: {name} does not read back ({exc})") from None
    if n_rows:
        lengths = np.empty(n_rows, N_CADENCES[1])
        datasets[N_CADENCES[0]].read(h5py.h5s.ALL, h5py.h5s.ALL, lengths)
        if lengths.min() < 1 or lengths.max() != width:
            raise WriteError(f"{file}: n_cadences outside 1..{width}")


def _verify_chunks(dset: h5py.h5d.DatasetID, n_rows: int, read: Callable[[int, int], bytes]) -> None:
    """Check every stored chunk of ``dset`` against its Fletcher32 checksum, and that none of its ``n_rows`` rows
    lacks its chunk (``read(offset, size)``: the file's raw bytes there).

    HDF5 computes the checksum over a chunk's stored (compressed) bytes, so checking it needs no decompression:
    reading the values back through h5py would check the same checksums but also inflate every chunk, which cost a
    fifth of the conversion. h5py offers no way to check checksums alone, hence this (H5Z fletcher32, by hand).
    Datasets without the checksum, and chunks whose filters were skipped, are read through h5py instead.
    """
    plist = dset.get_create_plist()
    n_filters = plist.get_nfilters()
    if not n_filters or plist.get_filter(n_filters - 1)[0] != h5py.h5z.FILTER_FLETCHER32:
        _read_whole(h5py.Dataset(dset))
        return
    chunks: list = []
    dset.chunk_iter(chunks.append)
    chunk_rows = plist.get_chunk()[0]
    first_column = sum(1 for c in chunks if not any(c.chunk_offset[1:]))
    needed = -(-n_rows // chunk_rows)
    if first_column != needed:
        raise OSError(f"{first_column} chunks store its {n_rows} rows, which need {needed}")
    for chunk in chunks:
        if chunk.filter_mask or chunk.size > FLETCHER_MAX_BYTES:  # a filter skipped, or a huge chunk: HDF5 decodes
            _read_whole(h5py.Dataset(dset))
            return
        stored = read(chunk.byte_offset, chunk.size)
        if chunk.size < 4 or len(stored) != chunk.size:
            raise OSError(f"chunk at {chunk.chunk_offset} lies outside the file")
        expected = int.from_bytes(stored[-4:], "little")
        if expected not in _fletcher32(memoryview(stored)[:-4]):
            raise OSError(f"data error detected by Fletcher32 checksum in the chunk at {chunk.chunk_offset}")


def _read_whole(dset: h5py.Dataset) -> None:
    """Read every value (so HDF5 checks every checksum), in slices of rows, so memory stays that of a few chunks."""
    row_bytes = dset.dtype.itemsize * (dset.shape[1] if dset.ndim == 2 else 1)
    step = max(1, VERIFY_BYTES // max(1, row_bytes))
    for start in range(0, dset.shape[0], step):
        _ = dset[start:start + step]


_weights = np.zeros(0, np.int64)  # n, n - 1, ..., 1: the weights of a chunk's words in Fletcher32's second sum
FLETCHER_MAX_BYTES = 1 << 24  # sum2 < 65535 * n**2 / 2 stays below 2**63 for n words of up to 16 MiB (ours: <1 MiB)


def _fletcher32(data: memoryview) -> tuple[int, int]:
    """HDF5's Fletcher32 of ``data`` (H5_checksum_fletcher32) and its byte-swapped form, which HDF5 also accepts
    from files of versions before 1.6.3.

    HDF5 adds the big-endian 16-bit words (a last odd byte is the high byte of one more word) into ``sum1`` and each
    running ``sum1`` into ``sum2``, folding both into 16 bits as it goes: so ``sum1`` is the words' sum and ``sum2`` the
    sum of word ``i`` times ``n - i``, each reduced modulo 65535 to 1..65535 (0 only when it is 0).
    """
    global _weights
    words = np.frombuffer(data, ">u2", count=len(data) // 2)
    if len(data) % 2:
        words = np.append(words, np.uint16(data[-1] << 8))
    n = len(words)
    weights = _weights  # read once: another thread (a second unit of the process) may replace it meanwhile
    if n > len(weights):
        _weights = weights = np.arange(1 << n.bit_length(), 0, -1, dtype=np.int64)
    sum1 = int(words.sum(dtype=np.int64))
    sum2 = int(np.dot(words.astype(np.int64), weights[len(weights) - n:]))  # exact: see FLETCHER_MAX_BYTES
    low, high = (0 if v == 0 else (v - 1) % 65535 + 1 for v in (sum1, sum2))
    checksum = high << 16 | low
    return checksum, (checksum & 0x00FF00FF) << 8 | (checksum >> 8) & 0x00FF00FF


class _HDF5Sink(ShardSink):
    def __init__(self, writer: HDF5Writer, shard: Shard):
        self.writer, self.shard = writer, shard
        self.file = writer.file(shard)
        self.tmp = self.file.with_name(f".{self.file.name}{_TEMPORARY}{os.getpid()}")
        self.h5: h5py.File | None = None
        self.datasets: dict[str, h5py.h5d.DatasetID] = {}  # looked up once: h5py's name lookup is slow
        self.dtypes: dict[str, np.dtype] = {}  # of the datasets (asking HDF5 makes an identifier each time)
        self.chunks: dict[str, tuple[int, int]] = {}  # of the series
        self.rows = self.width = 0
        self.pads = {s.name: s.pad for s in writer.columns.series}
        self.versions: dict[str, set] = {}  # the TGLC versions of the rows written (base.note_versions)

    def _fail(self, exc: BaseException) -> WriteError:
        self.abort()
        return write_error(self.file, exc)

    def append(self, block: Block) -> None:
        try:
            if self.h5 is None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                # A small file (one block) is built in memory and written by one write of ours: fewer system
                # calls (~0.5 ms of its ~9). A bigger one is not (it was held twice: ~95 MB for 10,000 rows).
                # (sec2 named: h5py would otherwise follow $HDF5_DRIVER, and abort relies on a file descriptor)
                driver = {"driver": "core", "backing_store": False} if len(self.shard) <= BLOCK_ROWS else \
                    {"driver": "sec2"}
                self.h5 = h5py.File(self.tmp, "w", **driver, **CHUNK_CACHE)
                _write_attrs(self.h5, {"sector": self.writer.sector, "healpix": self.shard.pixel,
                                       "nside": layout.NSIDE, "nest": layout.NEST, "shard": self.shard.label,
                                       "columns": self.writer.columns.name, "tglc_builder_version": __version__})
                self._create(int(block.n_cadences.max()), block)
            self._append(block)
        except WriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ValueError for write errors
            raise self._fail(exc) from None

    def _create(self, width: int, block: Block) -> None:
        n = len(self.shard)
        # A power of two, so that blocks (BLOCK_ROWS rows) fill whole chunks (a chunk written in two parts would be
        # compressed, read back, decompressed and compressed again); a smaller shard's rows exactly (one block, one
        # chunk: HDF5 neither fills nor compresses rows the file will not hold).
        rows_fit = 1 << int(np.log2(np.clip(CHUNK_BYTES // (8 * width), 1, BLOCK_ROWS)))
        chunk_rows = min(rows_fit, max(n, 1))
        scalar_chunk = (max(1, min(n, SCALAR_CHUNK)),)
        scalars = {name: dtype for name, (dtype, _, _) in IDS_AND_POSITION.items()}
        scalars[N_CADENCES[0]] = N_CADENCES[1]
        scalars.update({s.name: s.dtype for s in self.writer.columns.scalars})
        for name, dtype in scalars.items():
            # text: fixed-length ASCII (FITS cards are ASCII), so that Fletcher32 applies (not to variable length)
            dtype = h5py.string_dtype("ascii", STRING_BYTES) if dtype == STRING else dtype
            self.datasets[name] = _new_dataset(self.h5, name, dtype, None, scalar_chunk, None, _SCALAR)
            self.dtypes[name] = np.dtype(dtype)
        self._chunk_rows = chunk_rows
        for series in self.writer.columns.series:
            self._create_series(series.name, block.series[series.name].dtype, width)

    def _create_series(self, name: str, dtype: np.dtype, width: int) -> None:
        series = next(s for s in self.writer.columns.series if s.name == name)
        self.chunks[name] = (self._chunk_rows, width)
        self.datasets[name] = _new_dataset(self.h5, name, dtype, width, self.chunks[name], series.pad,
                                           _DEFLATE)
        self.dtypes[name] = np.dtype(dtype)

    def _widen_series(self, name: str, dtype: np.dtype) -> None:
        """A flag column met wider integers (a tglc 0.8 file after 16-bit ones): the rows written so far move into
        a dataset of the wider type, values kept, so the file's column has the narrowest type that holds them all."""
        old = h5py.Dataset(self.datasets.pop(name))
        self.h5.move(name, f"{name}.narrow")
        self._create_series(name, dtype, old.chunks[1])
        new = h5py.Dataset(self.datasets[name])
        new.resize(old.shape)
        step = old.chunks[0]
        for start in range(0, old.shape[0], step):
            new[start:start + step] = old[start:start + step]
        del self.h5[f"{name}.narrow"]

    def _append(self, block: Block) -> None:
        k, used = len(block), int(block.n_cadences.max())
        start, self.rows = self.rows, self.rows + k
        width = max(self.width, used)
        for name, dset in self.datasets.items():
            dset.set_extent((self.rows, width) if name in self.chunks else (self.rows,))
        self.width = width
        _write_rows(self.datasets[N_CADENCES[0]], start, block.n_cadences)
        for name, values in block.scalars.items():
            dtype = self.dtypes[name]
            _write_rows(self.datasets[name], start, values.astype(dtype) if dtype.kind == "S" else values)
        for name, values in block.series.items():
            if values.dtype.itemsize > self.dtypes[name].itemsize:
                self._widen_series(name, values.dtype)
                self.datasets[name].set_extent((self.rows, width))
            if self.dtypes[name].kind == "f":  # (raw chunks: in the dataset's own type, whatever the block's)
                _write_series(self.datasets[name], self.chunks[name], start, values.astype(self.dtypes[name],
                              copy=False), self.pads[name])
            else:
                _write_rows(self.datasets[name], start, values)
        note_versions(self.versions, self.shard, block)

    def commit(self) -> None:
        if self.h5 is None:  # no row readable: no file (a stale one would hold rows that are no longer planned)
            self.file.unlink(missing_ok=True)
            return
        try:
            mark = self.writer._mark(self.rows)
            # the mark goes in now, its checksum still zeros: only seal, after the check, completes it
            _write_attrs(self.h5, {VERSIONS_KEY: versions_text(self.versions), COMPLETE: mark})
            self.h5.flush()
            image = self.h5.id.get_file_image() if self.h5.driver == "core" else None
            _verify(self.h5, self.rows, self.writer.columns, self.datasets, image)
            self.datasets = {}
            h5, self.h5 = self.h5, None
            h5.close()  # (should it fail, the file is dropped: abort has nothing left to close)
            if image:
                self.tmp.write_bytes(image)
            seal(self.tmp, mark)  # the digest into the mark's own bytes, synced
            os.replace(self.tmp, self.file)
        except WriteError as exc:
            self.abort()
            raise WriteError(f"{self.file}: verification failed before renaming: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc) from None

    def abort(self) -> None:
        if self.h5 is not None:
            # HDF5 2.0 crashes (SIGSEGV) closing a file whose writes failed (a full disk, a file-size limit), taking
            # the worker with it: the file being dropped, what HDF5 writes as it closes its datasets and the file
            # goes to /dev/null instead
            if self.h5.driver == "sec2":
                handle = self.h5.id.get_vfd_handle()
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, handle)
                finally:
                    os.close(null)
            self.datasets = {}
            self.h5.close()
            self.h5 = None
        self.datasets = {}
        self.tmp.unlink(missing_ok=True)


class _HDF5Rows(RowSource):
    def __init__(self, file: Path, ids: np.ndarray, columns: ColumnSet):
        self.file, self.ids, self.columns = file, ids, columns

    def read(self, file_rows: np.ndarray) -> dict[str, np.ndarray]:
        span = slice(int(file_rows[0]), int(file_rows[-1]) + 1)  # one contiguous read: h5py's fancy indexing is slow
        picked = np.asarray(file_rows) - span.start
        with h5py.File(self.file, "r", **CHUNK_CACHE) as h5:
            out = {N_CADENCES[0]: h5[N_CADENCES[0]][span][picked]}
            width = int(out[N_CADENCES[0]].max())
            for name in [*IDS_AND_POSITION, *(s.name for s in self.columns.scalars)]:
                dset = h5[name]
                out[name] = (dset.asstr() if dset.dtype.kind == "S" else dset)[span][picked]
            for series in self.columns.series:
                out[series.name] = h5[series.name][span, :width][picked]
        return out
