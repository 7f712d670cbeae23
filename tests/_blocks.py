"""Real blocks from real FITS files for the format writers' tests: a sector's files on disk, its catalog, its shards
(as the build plans them) and the Blocks a build would hand to every format, read with the project's reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import healpy
import numpy as np

from tglc_builder import layout
from tglc_builder.columns import FROM_FILE_NAME, STRING, ColumnSet
from tglc_builder.formats import Block, Shard
from tglc_builder.reader import read_tglc

from tglc_builder.demo import SyntheticSector


@dataclass
class Sector:
    """FITS files of one sector under ``fits_dir`` and its catalog (plain arrays, catalog order)."""

    sector: int
    fits_dir: Path
    gaiadr3_id: np.ndarray
    tic_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    cam: np.ndarray
    ccd: np.ndarray
    path: np.ndarray  # bytes, relative to fits_dir

    @property
    def healpix(self) -> np.ndarray:
        return healpy.ang2pix(layout.NSIDE, self.ra, self.dec, lonlat=True, nest=True).astype(np.int64)

    def file_of(self, gaia: int) -> Path:
        return self.fits_dir / self.path[np.flatnonzero(self.gaiadr3_id == gaia)[0]].decode()


def synthetic_sector(fits_dir: Path, sector: int = 23, n: int = 60, seed: int = 3) -> Sector:
    """The synthetic sector's first ``n`` files, byte for byte what the archive serves, written under ``fits_dir``."""
    demo = SyntheticSector(sector, n, seed)
    paths = []
    for i in range(n):
        relpath = demo.relpath(i)
        target = fits_dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(demo.fits_bytes(i))
        paths.append(relpath.encode())
    return Sector(sector, fits_dir, demo.gaia_ids[:n].astype(np.int64), demo.tic_ids[:n].astype(np.int64),
                  demo.ra[:n].astype(np.float64), demo.dec[:n].astype(np.float64), demo.cam[:n].astype(np.int16),
                  demo.ccd[:n].astype(np.int16), np.array(paths, dtype="S"))


def single_file_sector(fits_file: Path) -> Sector:
    """A one-object sector of an existing TGLC file (the real sample), its catalog row from its headers."""
    curve = read_tglc(fits_file)
    p = curve.primary
    return Sector(int(p["SECTOR"]), fits_file.parent, np.array([p["GAIADR3"]], np.int64),
                  np.array([int(p["TICID"])], np.int64), np.array([p["RA_OBJ"]], np.float64),
                  np.array([p["DEC_OBJ"]], np.float64), np.array([p["CAMERA"]], np.int16),
                  np.array([p["CCD"]], np.int16), np.array([fits_file.name.encode()], dtype="S"))


def plan_shards(sector: Sector, rows_per_shard: int = 10_000) -> list[Shard]:
    """Per pixel, its rows in catalog order cut into near-equal shards of at most ``rows_per_shard`` rows."""
    healpix = sector.healpix
    order = np.argsort(healpix, kind="stable")
    pixels, starts = np.unique(healpix[order], return_index=True)
    shards = []
    for pixel, rows in zip(pixels.tolist(), np.split(order, starts[1:])):
        parts = np.array_split(rows, -(-len(rows) // rows_per_shard))
        for index, part in enumerate(parts, start=1):
            shards.append(Shard(pixel, index, len(parts), sector.gaiadr3_id[part], sector.tic_id[part],
                                sector.ra[part], sector.dec[part], sector.cam[part], sector.ccd[part],
                                sector.path[part]))
    return shards


def blocks(shard: Shard, fits_dir: Path, columns: ColumnSet, block_rows: int = 7,
           skip: set[int] = frozenset()) -> Iterator[Block]:
    """The shard's rows as a build hands them over: consecutive rows, series padded to the block's widest light curve
    (NaN / 0), header scalars from the cards; rows whose index is in ``skip`` are left out (as failed reads are)."""
    for start in range(0, len(shard), block_rows):
        rows = [i for i in range(start, min(start + block_rows, len(shard))) if i not in skip]
        if not rows:
            continue
        curves = [read_tglc(fits_dir / shard.path[i].decode(), gaiadr3_id=int(shard.gaiadr3_id[i])) for i in rows]
        lengths = np.array([c.n_cadences for c in curves], np.int32)
        width = int(lengths.max())
        series = {}
        for s in columns.series:
            values = np.full((len(rows), width), s.pad, s.dtype)
            for j, curve in enumerate(curves):
                if s.fits_column in curve.data.dtype.names:  # else NaN: a column of newer versions only
                    values[j, :lengths[j]] = curve.data[s.fits_column]
            series[s.name] = values
        idx = np.array(rows, np.int64)
        scalars = {"TIC_ID": shard.tic_id[idx], "gaiadr3_id": shard.gaiadr3_id[idx], "RA": shard.ra[idx],
                   "DEC": shard.dec[idx]}
        for s in columns.scalars:
            if s.hdu == FROM_FILE_NAME:
                scalars[s.name] = np.array([layout.file_version(shard.path[i]) for i in rows], s.dtype)
                continue
            values = [(c.primary if s.hdu == 0 else c.header).get(s.card) for c in curves]
            absent = np.nan if s.dtype.kind == "f" else "" if s.dtype == STRING else 0
            scalars[s.name] = np.array([absent if v is None else v for v in values], s.dtype)
        yield Block(rows=idx, n_cadences=lengths, series=series, scalars=scalars)


def write_shard(writer, shard: Shard, fits_dir: Path, skip: set[int] = frozenset(), block_rows: int = 7) -> None:
    sink = writer.open(shard)
    try:
        for block in blocks(shard, fits_dir, writer.columns, block_rows, skip):
            sink.append(block)
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def build(writer, shards: list[Shard], fits_dir: Path, overwrite: bool = False) -> None:
    """A whole build in one process: prepare, every shard, finish."""
    writer.prepare(shards, overwrite)
    for shard in shards:
        write_shard(writer, shard, fits_dir)
    writer.finish(shards)
