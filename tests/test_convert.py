"""FITS on disk -> HDF5 (the seed's convert step, through the same plan and units as a whole build): the real
sample, light curves of several lengths across blocks, shards, bad and missing files, resume and stale shards."""

from __future__ import annotations

import json
import shutil

import h5py
import healpy
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import SAMPLE, assert_contract
from tglc_builder import layout, plan, run, units
from tglc_builder.arguments import BuildArguments
from tglc_builder.demo import SyntheticSector
from tglc_builder.errors import UsageError
from tglc_builder.executor import Executor
from tglc_builder.formats import make_writers
from tglc_builder.formats.hdf5 import pixel_dir
from tglc_builder.sources.local import LocalSource


def _convert(tmp_path, catalog, sector: int = 23, **arguments):
    """Write the catalog's files from ``tmp_path/fits`` into ``tmp_path/out``; the build's summary."""
    args = BuildArguments(sector, tmp_path / "data", hdf5_output_dir=tmp_path / "out", fits_dir=tmp_path / "fits",
                          mast_url=str(tmp_path / "fits"), **arguments)
    with Executor(1) as executor:
        return run.write_outputs(args, catalog, LocalSource(str(tmp_path / "fits"), owns_files=True), executor)


def _files(tmp_path) -> list[str]:
    return sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.hdf5"))


def _catalog(sector: int, gaia, tic, ra, dec, cam, ccd) -> Table:
    gaia, cam, ccd = np.asarray(gaia, np.int64), np.asarray(cam, np.int16), np.asarray(ccd, np.int16)
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    return Table({"gaiadr3_id": gaia, "TIC_ID": np.asarray(tic, np.int64), "RA": ra, "DEC": dec,
                  "sector": np.full(len(gaia), sector, np.int16), "cam": cam, "ccd": ccd,
                  "path": layout.lc_relpaths(gaia, sector, cam, ccd),
                  "healpix": healpy.ang2pix(16, ra, dec, lonlat=True, nest=True).astype(np.int64)},
                 meta={"sector": sector})


def _synthetic(tmp_path, n: int, seed: int = 0, one_pixel: bool = False):
    """``n`` generated files on disk and their catalog (all within one HEALPix pixel if ``one_pixel``)."""
    sector = SyntheticSector(23, n, seed=seed)
    idx = np.arange(n)
    ra, dec = (45.0 + 1e-3 * idx, 10.0 + 1e-3 * idx) if one_pixel else (sector.ra, sector.dec)
    catalog = _catalog(23, sector.gaia_ids, sector.tic_ids, ra, dec, sector.cam, sector.ccd)
    assert not one_pixel or len(set(catalog["healpix"])) == 1
    for i, path in zip(idx, catalog["path"]):
        (tmp_path / "fits" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fits" / path).write_bytes(sector.fits_bytes(int(i)))
    return catalog


@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample (tests/data) is absent")
def test_real_sample_converts_exactly(tmp_path):
    with fits.open(SAMPLE) as hdul:
        header = hdul[0].header
        catalog = _catalog(1, [header["GAIADR3"]], [int(header["TICID"])], [header["RA_OBJ"]], [header["DEC_OBJ"]],
                           [header["CAMERA"]], [header["CCD"]])
    target = tmp_path / "fits" / catalog["path"][0]
    target.parent.mkdir(parents=True)
    shutil.copyfile(SAMPLE, target)
    summary = _convert(tmp_path, catalog, sector=1)
    assert (summary.converted, summary.files_written, summary.failures) == (1, 1, [])
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    with h5py.File(tmp_path / "out" / _files(tmp_path)[0], "r") as h5:
        assert h5["TIC_ID"][0] == 389023759 and h5["gaiadr3_id"][0] == 6399196263939178880
        assert h5["n_cadences"][0] == 1282 and h5["time"].shape == (1, 1282)
        assert h5["psf_flux_err"][0] == 134.6365807514819 and h5["aper_flux_err"][0] == 111.4319265130583
        assert h5["time"][0, 0] == fits.getdata(SAMPLE, 1)["time"][0]  # float64 TBJD, unchanged


def test_lengths_grow_across_blocks_and_shards_split_pixels(tmp_path):
    catalog = _synthetic(tmp_path, 60, seed=9, one_pixel=True)
    order = np.argsort([SyntheticSector(23, 60, seed=9).n_cadences(int(c), int(d))
                        for c, d in zip(catalog["cam"], catalog["ccd"])], kind="stable")
    catalog = catalog[order]  # shortest first: the file's width grows as it is written
    # many blocks of 7 rows; later ones hold longer light curves
    summary = _convert(tmp_path, catalog, rows_per_shard=25, block_rows=7)
    files = _files(tmp_path)
    assert [f.rsplit("/", 1)[1] for f in files] == ["001-of-003.hdf5", "002-of-003.hdf5", "003-of-003.hdf5"]
    assert summary.converted == 60 and summary.files_written == 3
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    with h5py.File(tmp_path / "out" / files[0], "r") as h5:
        lengths = h5["n_cadences"][()]
        assert len(set(lengths.tolist())) > 1 and h5["time"].shape[1] == lengths.max()
        assert h5.attrs["shard"] == "001-of-003"


def test_complete_files_are_kept_and_stale_shards_removed(tmp_path):
    catalog = _synthetic(tmp_path, 30, seed=4, one_pixel=True)
    _convert(tmp_path, catalog, rows_per_shard=10)
    stamps = {f: (tmp_path / "out" / f).stat().st_mtime_ns for f in _files(tmp_path)}
    again = _convert(tmp_path, catalog, rows_per_shard=10)
    assert again.files_written == 0 and again.complete == 30
    assert {f: (tmp_path / "out" / f).stat().st_mtime_ns for f in _files(tmp_path)} == stamps
    # another plan for the same pixel replaces the old shards instead of adding to them
    _convert(tmp_path, catalog)
    pixel = pixel_dir(tmp_path / "out", int(catalog["healpix"][0]))
    assert sorted(p.name for p in pixel.iterdir()) == ["001-of-001.hdf5"]
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_bad_and_missing_files_are_reported_not_fatal(tmp_path):
    catalog = _synthetic(tmp_path, 12, seed=6, one_pixel=True)
    bad, missing = catalog["path"][3], catalog["path"][8]
    (tmp_path / "fits" / bad).write_bytes(b"SIMPLE  =                    T".ljust(2880))
    (tmp_path / "fits" / missing).unlink()
    summary = _convert(tmp_path, catalog)
    failures = {f.path: f for f in summary.failures}
    assert set(failures) == {bad, missing}
    assert failures[bad].stage == "convert" and "moved to" in failures[bad].reason
    assert "not in the mirror" in failures[missing].reason
    assert (tmp_path / "fits" / "corrupt" / bad).exists() and not (tmp_path / "fits" / bad).exists()
    keep = [p not in (bad, missing) for p in catalog["path"]]
    assert_contract(tmp_path / "out", catalog[keep], tmp_path / "fits")


def test_another_builds_pixels_are_refused_then_replaced(tmp_path):
    catalog = _synthetic(tmp_path, 20, seed=8)
    _convert(tmp_path, catalog)
    smaller = catalog[:3]
    with pytest.raises(UsageError, match="not part of this build"):
        _convert(tmp_path, smaller)
    _convert(tmp_path, smaller, overwrite=True)
    assert_contract(tmp_path / "out", smaller, tmp_path / "fits")


def test_clean_fits_removes_converted_files_only(tmp_path):
    catalog = _synthetic(tmp_path, 10, seed=2)
    (tmp_path / "fits" / catalog["path"][0]).write_bytes(b"junk".ljust(2880))
    _convert(tmp_path, catalog, clean_fits=True)
    assert sorted(p.relative_to(tmp_path / "fits").as_posix() for p in (tmp_path / "fits").rglob("*.fits")) == [
        f"corrupt/{catalog['path'][0]}"]


def test_rows_missing_from_a_whole_file_are_added_without_refetching_the_others(tmp_path):
    """A shard written without a row that failed is completed on rerun from the file itself: the other rows'
    FITS files are not needed again (so --clean-fits never causes a second download)."""
    catalog = _synthetic(tmp_path, 12, seed=6, one_pixel=True)
    missing = catalog["path"][5]
    kept = (tmp_path / "fits" / missing).read_bytes()
    (tmp_path / "fits" / missing).unlink()
    first = _convert(tmp_path, catalog, clean_fits=True)
    assert [f.path for f in first.failures] == [missing] and first.converted == 11
    assert not list((tmp_path / "fits").rglob("*.fits"))  # the others' FITS files are gone
    (tmp_path / "fits" / missing).write_bytes(kept)  # it comes back (e.g. the archive recovered)
    again = _convert(tmp_path, catalog, clean_fits=True)
    assert again.failures == [] and again.carried == 11 and again.present == 1 and again.converted == 12
    (tmp_path / "fits" / missing).write_bytes(kept)  # for the value-for-value check, only this one is needed
    for i, path in enumerate(catalog["path"]):
        if path != missing:
            (tmp_path / "fits" / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "fits" / path).write_bytes(SyntheticSector(23, 12, seed=6).fits_bytes(i))
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_small_files_stay_small(tmp_path):
    """One light curve per file (a --tiny build's pixels): the HDF5 file is smaller than its FITS file."""
    catalog = _synthetic(tmp_path, 30, seed=3)
    _convert(tmp_path, catalog)
    fits_bytes = sum(p.stat().st_size for p in (tmp_path / "fits").rglob("*.fits"))
    hdf5_bytes = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.hdf5"))
    assert hdf5_bytes <= 1.2 * fits_bytes, (hdf5_bytes, fits_bytes)


# ---- the commit's verification: every chunk's Fletcher32 checked on its stored bytes --------------------------------
def _stored_chunks(path, name):
    with h5py.File(path, "r") as h5:
        chunks = []
        h5[name].id.chunk_iter(chunks.append)
    with open(path, "rb") as f:
        for chunk in chunks:
            f.seek(chunk.byte_offset)
            yield chunk, f.read(chunk.size)


def test_fletcher32_by_hand_equals_hdf5s_on_every_chunk(tmp_path):
    from tglc_builder.formats.hdf5 import _fletcher32

    rng = np.random.default_rng(5)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:  # compressed chunks of many sizes, odd and even, and raw ones
        h5.create_dataset("noise", data=rng.normal(size=(64, 999)).astype(np.float32), chunks=(1, 999),
                          compression="gzip", shuffle=True, fletcher32=True)
        h5.create_dataset("steps", data=np.repeat(rng.integers(0, 9, 4000), 7).reshape(-1, 7).astype(np.int16),
                          chunks=(37, 7), compression="lzf", fletcher32=True)
        h5.create_dataset("raw", data=rng.integers(-2**62, 2**62, 5001), chunks=(1000,), fletcher32=True)
        h5.create_dataset("zeros", data=np.zeros(100, np.uint8), chunks=(100,), fletcher32=True)
        h5.create_dataset("big", data=np.full(3 << 20, 255, np.uint8), chunks=(3 << 20,), fletcher32=True)
    sizes = []
    for name in ("noise", "steps", "raw", "zeros", "big"):
        for chunk, stored in _stored_chunks(path, name):
            sizes.append(chunk.size)
            assert int.from_bytes(stored[-4:], "little") == _fletcher32(memoryview(stored)[:-4])[0], (name, chunk)
    assert {size % 2 for size in sizes} == {0, 1} and len(sizes) == 64 + 109 + 6 + 1 + 1


def test_verification_catches_a_flipped_byte_and_a_row_without_its_chunk(tmp_path):
    from tglc_builder.columns import column_set
    from tglc_builder.formats.base import WriteError
    from tglc_builder.formats.hdf5 import COMPLETE, _verify

    catalog = _synthetic(tmp_path, 120, seed=4, one_pixel=True)
    assert _convert(tmp_path, catalog).converted == len(catalog)
    (file,) = (tmp_path / "out").rglob("*.hdf5")
    columns = column_set("seed")
    with h5py.File(file, "r") as h5:
        rows = json.loads(h5.attrs[COMPLETE])["rows"]
        _verify(h5, rows, columns)  # a whole file passes
    good = file.read_bytes()
    for name in ("time", "psf_flux", "tglc_flags", "RA"):  # one byte of one chunk of each kind
        chunk, _ = next(_stored_chunks(file, name))
        damaged = bytearray(good)
        damaged[chunk.byte_offset + chunk.size // 3] ^= 0x10
        file.write_bytes(bytes(damaged))
        with h5py.File(file, "r") as h5, pytest.raises(WriteError, match=f"{name} does not read back.*Fletcher32"):
            _verify(h5, rows, columns)
    file.write_bytes(good)
    with h5py.File(file, "r+") as h5:  # rows whose chunk was never written read as padding: not a whole file
        for dset in h5.values():
            dset.resize(rows + max(d.chunks[0] for d in h5.values()), axis=0)
    with h5py.File(file, "r") as h5, pytest.raises(WriteError, match="chunks store its"):
        _verify(h5, h5["time"].shape[0], columns)


# ---- the sink's low-level HDF5 calls make what h5py's high-level ones make, byte for byte --------------------------
def test_low_level_datasets_and_attributes_are_h5pys_byte_for_byte(tmp_path):
    """The sink makes datasets and attributes through h5py's low-level calls (its high-level ones were most of a
    small file's cost): a file made that way equals, byte for byte, the same file made by ``create_dataset``,
    slicing and ``attrs``. (The first dataset of each kind is made by h5py itself: the kinds are made twice.)"""
    from tglc_builder.columns import STRING_BYTES
    from tglc_builder.formats.hdf5 import _DEFLATE, _SCALAR, _new_dataset, _write_attrs, _write_rows

    rng = np.random.default_rng(2)
    text = h5py.string_dtype("ascii", STRING_BYTES)
    kinds = [("flux", np.dtype(np.float32), 40, np.nan, _DEFLATE), ("flags", np.dtype(np.int16), 40, 0, _DEFLATE),
             ("ids", np.dtype(np.int64), None, None, _SCALAR), ("text", text, None, None, _SCALAR)]
    attrs = {"sector": 23, "nest": True, "shard": "001-of-002", "mark": json.dumps({"sha256": "0" * 64})}

    def values(dtype, width):
        if dtype == text:
            return np.array([b"v1", b"tglc 0.8", b""] * 7, "S")
        shape = (21,) if width is None else (21, width)
        return rng.normal(0, 1e3, shape).astype(dtype)

    data = {f"{name}{i}": values(dtype, width) for i in range(2) for name, dtype, width, _, _ in kinds}
    with h5py.File(tmp_path / "high.h5", "w") as h5:
        h5.attrs.update(attrs)
        for i in range(2):
            for name, dtype, width, pad, filters in kinds:
                shape, chunks = ((0,), (16 + i,)) if width is None else ((0, width), (8 * (i + 1), width))
                dset = h5.create_dataset(f"{name}{i}", shape=shape, maxshape=(None,) * len(shape), dtype=dtype,
                                         chunks=chunks, fillvalue=pad, **filters)
                dset.resize((21,) + shape[1:])
                dset[0:21] = data[f"{name}{i}"]
    with h5py.File(tmp_path / "low.h5", "w") as h5:
        _write_attrs(h5, attrs)
        for i in range(2):
            for name, dtype, width, pad, filters in kinds:
                chunks = (16 + i,) if width is None else (8 * (i + 1), width)
                dset = _new_dataset(h5, f"{name}{i}", dtype, width, chunks, pad, filters)
                dset.set_extent((21,) if width is None else (21, width))
                _write_rows(dset, 0, data[f"{name}{i}"])
    assert (tmp_path / "low.h5").read_bytes() == (tmp_path / "high.h5").read_bytes()
    with h5py.File(tmp_path / "low.h5", "r") as h5:
        assert dict(h5.attrs) == attrs
        assert h5["text1"][()].tolist() == data["text1"].tolist()
        assert h5["flux1"].fillvalue != h5["flux1"].fillvalue and h5["flags1"].fillvalue == 0


# ---- a shard bigger than a block is written by HDF5 to disk: a full disk there is one clean failure -----------------
_LIMITED = """
import resource, signal, sys
from pathlib import Path
from _blocks import write_shard
from tglc_builder.formats import WriteError
from tglc_builder.formats.hdf5 import HDF5Writer
from test_convert import _big_shard

root, limit = Path(sys.argv[1]), int(sys.argv[2])
writer, shard = _big_shard(root)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
try:
    write_shard(writer, shard, root / "fits", block_rows=256)
except WriteError as exc:
    print(exc, exc.disk_full)
"""


def _big_shard(root):
    """A writer and one shard of 300 synthetic light curves (more than a block: not built in memory)."""
    from _blocks import synthetic_sector
    from tglc_builder.columns import column_set
    from tglc_builder.formats import Shard
    from tglc_builder.formats.hdf5 import HDF5Writer

    s = synthetic_sector(root / "fits", n=300)
    shard = Shard(5, 1, 1, s.gaiadr3_id, s.tic_id, s.ra, s.dec, s.cam, s.ccd, s.path, sector=23)
    return HDF5Writer(root / "out", 23, column_set("all")), shard


def test_a_full_disk_under_a_big_shard_is_one_clean_failure(tmp_path):
    """HDF5 2.0 crashed (SIGSEGV) closing a file whose writes had failed: a file-size limit met in the middle of a
    300-row shard's blocks, near its end and at its close gives one WriteError naming the file, in a process that
    lives on, and leaves no file; with no limit, the same shard is written whole."""
    import subprocess
    import sys

    from _blocks import write_shard
    from conftest import REPO, run_env

    from tglc_builder.formats.hdf5 import BLOCK_ROWS

    writer, shard = _big_shard(tmp_path)
    assert len(shard) > BLOCK_ROWS  # written on disk, not in memory
    write_shard(writer, shard, tmp_path / "fits", block_rows=256)
    file = writer.file(shard)
    size = file.stat().st_size
    assert size > 2_000_000 and writer.complete_ids(shard, verify=True).tolist() == shard.gaiadr3_id.tolist()
    file.unlink()
    for limit in (size // 2, size - 3000, size - 200):
        result = subprocess.run([sys.executable, "-c", _LIMITED, str(tmp_path), str(limit)], capture_output=True,
                                text=True, env=run_env(), cwd=REPO / "tests", timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout == f"file size limit reached on {file.parent} writing {file.name} True\n", result.stderr
        assert list(file.parent.iterdir()) == []


class _BrokenSource(LocalSource):
    def fetch_many(self, *args, **kwargs):
        raise RuntimeError("a bug")


def test_an_unexpected_error_fails_every_row_of_the_unit_once_per_shard(tmp_path):
    catalog = _synthetic(tmp_path, 6, one_pixel=True)
    args = BuildArguments(23, tmp_path / "data", hdf5_output_dir=tmp_path / "out", fits_dir=tmp_path / "fits",
                          mast_url=str(tmp_path / "fits"))
    writers = make_writers(args)
    task = plan.make_plan(plan.plan_shards(catalog, 100), writers, overwrite=True).pending[0]
    settings = units.UnitSettings(23, _BrokenSource(str(tmp_path / "fits")), str(tmp_path / "fits"), tuple(writers),
                                  args.column_set)
    result = units.build_unit([task, task], settings)  # a path in two of a unit's shards is two rows: both fail
    assert (result.rows, result.written, len(result.failures)) == (12, 0, 12)
    assert all("unexpected error (RuntimeError: a bug)" in f.reason for f in result.failures)
