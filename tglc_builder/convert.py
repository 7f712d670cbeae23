"""FITS light curves -> the dataset's HDF5 files: ``TGLC/healpix=<p>/<k>-of-<n>.hdf5`` (see DATASET-CONTRACT.md).

A pixel's rows, in catalog order, are cut into shards of at most :data:`ROWS_PER_SHARD`; each shard is one task. A
task streams its rows through fixed-size blocks into chunked, compressed datasets, so its memory does not grow with
the pixel; it writes under a temporary name and renames, and a shard file whose rows are exactly the ones planned is
complete and left alone. Values are copied from the FITS columns unchanged (byte order aside); padding beyond a
row's ``n_cadences`` is NaN for floats and 0 for integers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__, executor, layout
from .errors import UsageError
from .fetch import Failure, quarantine_path
from .reader import InvalidTGLCFile, ReadBuffer, read_tglc

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 50_000  # ~0.5 GB files: big enough to load fast, small enough to move around
BLOCK_ROWS = 256  # light curves read before each write (a power of two)
CHUNK_BYTES = 1 << 19  # target size of an HDF5 chunk of a light-curve column (before compression)
# Lossless filters that every h5py ships, after a byte shuffle: DEFLATE at its fastest level where it pays (times
# repeat across the stars of a CCD, flags are mostly zero), LZF for the noisy fluxes, whose low bytes no coder
# shrinks and which DEFLATE would spend most of the conversion time on.
_DEFLATE: dict[str, Any] = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
_LZF: dict[str, Any] = {"compression": "lzf", "shuffle": True}
COMPRESSION = {"time": _DEFLATE, "psf_flux": _LZF, "aper_flux": _LZF, "tess_flags": _DEFLATE,
               "tglc_flags": _DEFLATE, "scalars": {}}  # scalars: 0.5% of the bytes, not worth decompressing

# dataset name -> (FITS column, dtype, padding)
LIGHTCURVE = {"time": ("time", np.float64, np.nan), "psf_flux": ("psf_flux", np.float32, np.nan),
              "aper_flux": ("aperture_flux", np.float32, np.nan), "tess_flags": ("TESS_flags", np.int16, 0),
              "tglc_flags": ("TGLC_flags", np.int16, 0)}
SCALARS = {"TIC_ID": np.int64, "gaiadr3_id": np.int64, "RA": np.float64, "DEC": np.float64,
           "psf_flux_err": np.float64, "aper_flux_err": np.float64, "n_cadences": np.int32}
_SHARD_NAME = re.compile(r"^\d{3,}-of-\d{3,}\.hdf5$")
_TEMPORARY = ".tmp-"


@dataclass(frozen=True)
class Shard:
    """One output file's rows: a slice of one pixel's catalog rows (plain arrays, cheap to send to a worker)."""

    pixel: int
    index: int  # 1-based
    count: int
    gaiadr3_id: np.ndarray
    tic_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    path: np.ndarray  # bytes, relative to fits_dir

    @property
    def label(self) -> str:
        return f"{self.index:03d}-of-{self.count:03d}"

    @property
    def name(self) -> str:
        return f"{self.label}.hdf5"

    def file(self, output_dir: str | os.PathLike) -> Path:
        return pixel_dir(output_dir, self.pixel) / self.name

    def without(self, gaia_ids: np.ndarray) -> "Shard":
        keep = ~np.isin(self.gaiadr3_id, gaia_ids)
        return replace(self, gaiadr3_id=self.gaiadr3_id[keep], tic_id=self.tic_id[keep], ra=self.ra[keep],
                       dec=self.dec[keep], path=self.path[keep])


@dataclass
class ConvertResult:
    pixel: int
    file: Path
    n_rows: int  # rows in the file, written now or found complete
    written: bool
    failures: list[Failure] = field(default_factory=list)


def pixel_dir(output_dir: str | os.PathLike, pixel: int) -> Path:
    return Path(output_dir) / "TGLC" / f"healpix={pixel}"


def plan_shards(catalog, rows_per_shard: int = ROWS_PER_SHARD) -> list[Shard]:
    """The output files of a catalog: per pixel, its rows in catalog order cut into near-equal shards."""
    healpix = np.asarray(catalog["healpix"], np.int64)
    order = np.argsort(healpix, kind="stable")
    pixels, starts = np.unique(healpix[order], return_index=True)
    columns = {name: np.asarray(catalog[name]) for name in ("gaiadr3_id", "TIC_ID", "RA", "DEC", "path")}
    shards = []
    for pixel, rows in zip(pixels.tolist(), np.split(order, starts[1:])):
        parts = np.array_split(rows, -(-len(rows) // rows_per_shard))
        for index, part in enumerate(parts, start=1):
            shards.append(Shard(pixel, index, len(parts), columns["gaiadr3_id"][part].astype(np.int64),
                                columns["TIC_ID"][part].astype(np.int64), columns["RA"][part].astype(np.float64),
                                columns["DEC"][part].astype(np.float64), columns["path"][part].astype("S")))
    return shards


def is_complete(file: Path, sector: int, gaia_ids: np.ndarray) -> bool:
    """Whether ``file`` is a finished shard of ``sector`` holding exactly these objects, in this order."""
    try:
        with h5py.File(file, "r") as h5:
            return int(h5.attrs["sector"]) == sector and np.array_equal(h5["gaiadr3_id"][()], gaia_ids)
    except (OSError, KeyError):
        return False


def pending_rows(catalog, output_dir: str | os.PathLike, sector: int,
                 rows_per_shard: int = ROWS_PER_SHARD) -> np.ndarray:
    """Which catalog rows are not yet in a complete shard file (a boolean mask in catalog order)."""
    pending = np.ones(len(catalog), bool)
    done = [shard.gaiadr3_id for shard in plan_shards(catalog, rows_per_shard)
            if is_complete(shard.file(output_dir), sector, shard.gaiadr3_id)]
    if done:
        pending[np.isin(np.asarray(catalog["gaiadr3_id"]), np.concatenate(done))] = False
    return pending


# ---- worker side -----------------------------------------------------------------------------------------------
class _Stopped(Exception):
    pass


def convert_shard(shard: Shard, fits_dir: str, output_dir: str, sector: int, overwrite: bool = False,
                  clean_fits: bool = False) -> ConvertResult:
    """Write one shard file (unless it is already complete); bad or missing FITS files become failures."""
    file = shard.file(output_dir)
    if not overwrite and is_complete(file, sector, shard.gaiadr3_id):
        executor.advance(len(shard.gaiadr3_id))
        if clean_fits:
            _remove_fits(fits_dir, shard.path)
        return ConvertResult(shard.pixel, file, len(shard.gaiadr3_id), written=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    for stale in file.parent.glob(f".{file.name}{_TEMPORARY}*"):
        stale.unlink(missing_ok=True)  # debris of a run that was killed
    tmp = file.with_name(f".{file.name}{_TEMPORARY}{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({"sector": sector, "healpix": shard.pixel, "nside": layout.NSIDE, "nest": layout.NEST,
                             "shard": shard.label, "tglc_builder_version": __version__})
            converted, failures = _ShardWriter(h5).write(shard, Path(fits_dir))
        if converted.any():
            os.replace(tmp, file)
        else:  # nothing readable: no file (a stale one would hold rows that are no longer planned)
            file.unlink(missing_ok=True)
    except _Stopped:
        return ConvertResult(shard.pixel, file, 0, written=False)
    finally:
        tmp.unlink(missing_ok=True)
    if clean_fits:
        _remove_fits(fits_dir, shard.path[converted])
    return ConvertResult(shard.pixel, file, int(converted.sum()), written=bool(converted.any()), failures=failures)


def _remove_fits(fits_dir: str, paths: np.ndarray) -> None:
    for path in paths:
        (Path(fits_dir) / path.decode()).unlink(missing_ok=True)


class _ShardWriter:
    """Reads a shard's files block by block into reused arrays and appends each block to the file's datasets,
    widening the light-curve columns when a longer light curve comes."""

    def __init__(self, h5: h5py.File):
        self.h5, self.rows, self.width = h5, 0, 0
        self.buffer = ReadBuffer()
        self.block = {name: np.empty((BLOCK_ROWS, 0), dtype) for name, (_, dtype, _) in LIGHTCURVE.items()}

    def write(self, shard: Shard, fits_dir: Path) -> tuple[np.ndarray, list[Failure]]:
        converted = np.zeros(len(shard.gaiadr3_id), bool)
        failures: list[Failure] = []
        for start in range(0, len(shard.gaiadr3_id), BLOCK_ROWS):
            if executor.stopping():
                raise _Stopped
            rows, lengths, psf_err, aper_err = [], [], [], []
            stop = min(start + BLOCK_ROWS, len(shard.gaiadr3_id))
            for i in range(start, stop):
                curve = self._read(shard, i, fits_dir, failures)
                if curve is None:
                    continue
                self._put(len(rows), curve)
                rows.append(i)
                lengths.append(curve.n_cadences)
                psf_err.append(curve.header["PSF_ERR"])
                aper_err.append(curve.header["APER_ERR"])
            if rows:
                converted[rows] = True
                self._append(shard, np.array(rows), np.array(lengths, np.int32), psf_err, aper_err)
            executor.advance(stop - start)
        return converted, failures

    def _read(self, shard: Shard, i: int, fits_dir: Path, failures: list[Failure]):
        relpath = shard.path[i].decode()
        gaia = int(shard.gaiadr3_id[i])
        path = os.path.join(fits_dir, relpath)
        try:
            return read_tglc(path, gaiadr3_id=gaia, buffer=self.buffer)
        except InvalidTGLCFile as exc:
            aside = quarantine_path(fits_dir, relpath)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            reason = f"{exc}; moved to {aside}"
        except FileNotFoundError:
            reason = "FITS file missing (not downloaded)"
        except OSError as exc:
            reason = f"cannot read the FITS file: {exc.strerror or exc}"
        failures.append(Failure(gaia, relpath, "convert", reason, 1))
        return None

    def _put(self, row: int, curve) -> None:
        """Copy one light curve into row ``row`` of the block (big-endian to native: a byte swap, values kept)."""
        n = curve.n_cadences
        if n > self.block["time"].shape[1]:
            for name, values in self.block.items():
                wider = np.empty((BLOCK_ROWS, n), values.dtype)
                wider[:row, :values.shape[1]] = values[:row]
                wider[:row, values.shape[1]:] = LIGHTCURVE[name][2]
                self.block[name] = wider
        for name, (column, _, pad) in LIGHTCURVE.items():
            values = self.block[name]
            values[row, :n] = curve.data[column]
            values[row, n:] = pad

    def _append(self, shard: Shard, rows: np.ndarray, lengths: np.ndarray, psf_err: list, aper_err: list) -> None:
        k, used = len(rows), int(lengths.max())
        if not self.h5.keys():
            self._create(used)
        start, self.rows = self.rows, self.rows + k
        width = max(self.width, used)
        for dset in self.h5.values():
            dset.resize(self.rows, axis=0)
            if dset.ndim == 2 and width > self.width:
                dset.resize(width, axis=1)
        self.width = width
        block = slice(start, self.rows)
        for name, values in (("gaiadr3_id", shard.gaiadr3_id), ("TIC_ID", shard.tic_id), ("RA", shard.ra),
                             ("DEC", shard.dec)):
            self.h5[name][block] = values[rows]
        self.h5["n_cadences"][block] = lengths
        self.h5["psf_flux_err"][block] = psf_err
        self.h5["aper_flux_err"][block] = aper_err
        for name, values in self.block.items():
            self.h5[name][block, :used] = values[:k, :used]

    def _create(self, width: int) -> None:
        # A power of two, so that blocks (BLOCK_ROWS rows) fill whole chunks: a chunk written in two parts would be
        # compressed, read back, decompressed and compressed again.
        chunk_rows = 1 << int(np.log2(np.clip(CHUNK_BYTES // (8 * width), 1, BLOCK_ROWS)))
        for name, dtype in SCALARS.items():
            self.h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,),
                                   **COMPRESSION["scalars"])
        for name, (_, dtype, pad) in LIGHTCURVE.items():
            self.h5.create_dataset(name, shape=(0, width), maxshape=(None, None), dtype=dtype,
                                   chunks=(chunk_rows, width), fillvalue=pad, **COMPRESSION[name])


# ---- driver side -----------------------------------------------------------------------------------------------
def convert_catalog(catalog, fits_dir: str | os.PathLike, output_dir: str | os.PathLike, sector: int,
                    pool: executor.Executor | None = None, overwrite: bool = False, clean_fits: bool = False,
                    skip: np.ndarray | None = None, rows_per_shard: int = ROWS_PER_SHARD) -> list[ConvertResult]:
    """Write the catalog's HDF5 files, shards spread over the ``pool``'s workers (default: one process), and copy
    the ``tglc.py`` loading script beside them. ``skip``: Gaia ids to leave out (their download failed)."""
    if pool is None:
        with executor.Executor() as pool:
            return convert_catalog(catalog, fits_dir, output_dir, sector, pool, overwrite, clean_fits, skip,
                                   rows_per_shard)
    output_dir = Path(output_dir)
    shards = plan_shards(catalog, rows_per_shard)
    _clear_the_way(output_dir, shards, overwrite)
    if skip is not None and len(skip):
        shards = [shard.without(skip) for shard in shards]
    shards.sort(key=lambda shard: -len(shard.gaiadr3_id))  # longest first: the pool ends together
    tasks = [(shard, str(fits_dir), str(output_dir), sector, overwrite, clean_fits) for shard in shards]
    total = sum(len(shard.gaiadr3_id) for shard in shards)
    results = list(pool.run(convert_shard, tasks, total=total, desc="Converting", unit="lc",
                            weights=[len(shard.gaiadr3_id) for shard in shards], lost=_lost_shard))
    _install_loading_script(output_dir)
    results.sort(key=lambda result: (result.pixel, result.file.name))
    written = sum(result.written for result in results)
    log.info("Converted %d light curves into %d file(s) (%d already complete)",
             sum(result.n_rows for result in results if result.written), written, len(results) - written)
    return results


def _lost_shard(task: tuple, error: BaseException) -> ConvertResult:
    shard, _, output_dir, *_ = task
    reason = f"the worker converting it died ({type(error).__name__}); rerun to retry"
    return ConvertResult(shard.pixel, shard.file(output_dir), 0, written=False,
                         failures=[Failure(int(g), p.decode(), "convert", reason, 0)
                                   for g, p in zip(shard.gaiadr3_id, shard.path)])


def _clear_the_way(output_dir: Path, shards: list[Shard], overwrite: bool) -> None:
    """Make ``TGLC/`` hold only this build's files: remove debris and superseded shards of its pixels; refuse
    (or, with ``overwrite``, remove) pixels of another build, which would otherwise be loaded with this one."""
    planned: dict[int, set[str]] = {}
    for shard in shards:
        planned.setdefault(shard.pixel, set()).add(shard.name)
    root = output_dir / "TGLC"
    foreign = []
    for directory in sorted(root.glob("healpix=*")) if root.is_dir() else ():
        pixel = int(directory.name.split("=", 1)[1]) if directory.name[8:].isdigit() else None
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
            f"{output_dir} already holds {len(foreign)} HEALPix pixel(s) that are not part of this build (e.g. "
            f"{foreign[0].name}), from an earlier build of another sector or size; choose another "
            "--hdf5_output_path, or pass --overwrite to replace that dataset")
    for directory in foreign:
        shutil.rmtree(directory)


def _install_loading_script(output_dir: Path) -> None:
    source = Path(__file__).with_name("tglc.py")
    tmp = output_dir / f".tglc.py{_TEMPORARY}{os.getpid()}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, output_dir / "tglc.py")
