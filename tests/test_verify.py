"""Output integrity beyond the formats' own checksums: every output file carries a SHA-256 of its bytes in its
completion mark, so ``--verify`` catches any flipped byte (footers, object headers, padding included); and the
HDF5 output is deterministic (the same rows give the same bytes, whatever was written before in the process).
Real files, real flips; nothing of the builder is mocked."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

import h5py
import healpy
import numpy as np
import pytest

from _blocks import Sector, blocks, plan_shards, synthetic_sector, write_shard
from tglc_builder.columns import column_set
from tglc_builder.formats.hdf5 import HDF5Writer

SEED = column_set("seed")
FLIPS = int(os.environ.get("TGLC_TEST_FLIPS", "400"))  # per format; benchmarks/flips.py runs 2,000


@pytest.fixture(scope="module")
def sector(tmp_path_factory) -> Sector:
    """300 synthetic sector-23 light curves (1,252-1,282 cadences), all placed within one pixel (catalog positions
    come from the target list, not the FITS files, so the files stay as served)."""
    served = synthetic_sector(tmp_path_factory.mktemp("fits"), sector=23, n=300, seed=7)
    ra0, dec0 = healpy.pix2ang(16, int(served.healpix[0]), nest=True, lonlat=True)
    rng = np.random.default_rng(5)
    dec = dec0 + rng.uniform(-0.4, 0.4, len(served.ra))
    ra = ra0 + rng.uniform(-0.4, 0.4, len(dec)) / np.cos(np.radians(dec))
    clustered = replace(served, ra=ra, dec=dec)
    assert len(set(clustered.healpix.tolist())) == 1
    return clustered


# ---- point 7: deterministic HDF5 --------------------------------------------------------------------------------
def _write(out: Path, shards, sector: Sector, block_rows: int) -> None:
    writer = HDF5Writer(out, 23, SEED)
    writer.prepare(shards, False)
    for shard in shards:
        write_shard(writer, shard, sector.fits_dir, block_rows=block_rows)


def test_hdf5_shard_bytes_do_not_depend_on_what_was_written_before(sector, tmp_path):
    """The same shard, written in one process after different other shards (so that any state a compressor kept
    from earlier chunks would show, as h5py's LZF did), and in blocks of different sizes, is the same file byte for
    byte; its values are those of the FITS files."""
    shards = plan_shards(sector, rows_per_shard=100)
    assert [len(s) for s in shards] == [100, 100, 100]
    big, others = shards[1], [shards[0], shards[2]]
    _write(tmp_path / "a", [big], sector, block_rows=256)
    _write(tmp_path / "b", [*others, big], sector, block_rows=256)
    _write(tmp_path / "c", [*others[::-1], big], sector, block_rows=256)
    _write(tmp_path / "d", [big], sector, block_rows=7)  # whole chunks and parts of chunks
    name = HDF5Writer(tmp_path / "a", 23, SEED).file(big).relative_to(tmp_path / "a")
    first = (tmp_path / "a" / name).read_bytes()
    assert (tmp_path / "b" / name).read_bytes() == first
    assert (tmp_path / "c" / name).read_bytes() == first
    (whole,) = blocks(big, sector.fits_dir, SEED, block_rows=len(big))
    for folder in ("a", "d"):
        with h5py.File(tmp_path / folder / name, "r") as h5:
            assert h5["psf_flux"].compression == "gzip" and h5["psf_flux"].shuffle and h5["psf_flux"].fletcher32
            for s in SEED.series:
                width = whole.series[s.name].shape[1]
                assert h5[s.name].shape == (100, width)
                assert h5[s.name][()].tobytes() == whole.series[s.name].tobytes(), (folder, s.name)
