"""FITS -> HDF5: the real sample, light curves of several lengths across blocks, shards, bad and missing files."""

from __future__ import annotations

import shutil

import h5py
import healpy
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import SAMPLE, assert_contract
from tglc_builder import convert, layout
from tglc_builder.archive import SyntheticSector


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


@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample in ../shared/data is absent")
def test_real_sample_converts_exactly(tmp_path):
    with fits.open(SAMPLE) as hdul:
        header = hdul[0].header
        catalog = _catalog(1, [header["GAIADR3"]], [int(header["TICID"])], [header["RA_OBJ"]], [header["DEC_OBJ"]],
                           [header["CAMERA"]], [header["CCD"]])
    target = tmp_path / "fits" / catalog["path"][0]
    target.parent.mkdir(parents=True)
    shutil.copyfile(SAMPLE, target)
    results = convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=1)
    assert [(r.n_rows, r.written, r.failures) for r in results] == [(1, True, [])]
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    with h5py.File(results[0].file, "r") as h5:
        assert h5["TIC_ID"][0] == 389023759 and h5["gaiadr3_id"][0] == 6399196263939178880
        assert h5["n_cadences"][0] == 1282 and h5["time"].shape == (1, 1282)
        assert h5["psf_flux_err"][0] == 134.6365807514819 and h5["aper_flux_err"][0] == 111.4319265130583
        assert h5["time"][0, 0] == fits.getdata(SAMPLE, 1)["time"][0]  # float64 TBJD, unchanged


def test_lengths_grow_across_blocks_and_shards_split_pixels(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "BLOCK_ROWS", 7)  # many blocks; later ones hold longer light curves
    catalog = _synthetic(tmp_path, 60, seed=9, one_pixel=True)
    order = np.argsort([SyntheticSector(23, 60, seed=9).n_cadences(int(c), int(d))
                        for c, d in zip(catalog["cam"], catalog["ccd"])], kind="stable")
    catalog = catalog[order]  # shortest first: the file's width grows as it is written
    results = convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23, rows_per_shard=25)
    assert [r.file.name for r in results] == ["001-of-003.hdf5", "002-of-003.hdf5", "003-of-003.hdf5"]
    assert [r.n_rows for r in results] == [20, 20, 20]
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    with h5py.File(results[0].file, "r") as h5:
        lengths = h5["n_cadences"][()]
        assert len(set(lengths.tolist())) > 1 and h5["time"].shape[1] == lengths.max()
        assert h5.attrs["shard"] == "001-of-003"


def test_complete_files_are_kept_and_stale_shards_removed(tmp_path):
    catalog = _synthetic(tmp_path, 30, seed=4, one_pixel=True)
    first = convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23, rows_per_shard=10)
    stamps = {r.file: r.file.stat().st_mtime_ns for r in first}
    again = convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23, rows_per_shard=10)
    assert not any(r.written for r in again) and {r.file: r.file.stat().st_mtime_ns for r in again} == stamps
    # another plan for the same pixel replaces the old shards instead of adding to them
    convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23)
    pixel = convert.pixel_dir(tmp_path / "out", int(catalog["healpix"][0]))
    assert sorted(p.name for p in pixel.iterdir()) == ["001-of-001.hdf5"]
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_bad_and_missing_files_are_reported_not_fatal(tmp_path):
    catalog = _synthetic(tmp_path, 12, seed=6, one_pixel=True)
    bad, missing = catalog["path"][3], catalog["path"][8]
    (tmp_path / "fits" / bad).write_bytes(b"SIMPLE  =                    T".ljust(2880))
    (tmp_path / "fits" / missing).unlink()
    results = convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23)
    failures = {f.path: f for r in results for f in r.failures}
    assert set(failures) == {bad, missing}
    assert failures[bad].stage == "convert" and "moved to" in failures[bad].reason
    assert "missing" in failures[missing].reason
    assert (tmp_path / "fits" / "corrupt" / bad).exists() and not (tmp_path / "fits" / bad).exists()
    keep = [p not in (bad, missing) for p in catalog["path"]]
    assert_contract(tmp_path / "out", catalog[keep], tmp_path / "fits")


def test_another_builds_pixels_are_refused_then_replaced(tmp_path):
    catalog = _synthetic(tmp_path, 20, seed=8)
    convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23)
    smaller = catalog[:3]
    with pytest.raises(convert.UsageError, match="not part of this build"):
        convert.convert_catalog(smaller, tmp_path / "fits", tmp_path / "out", sector=23)
    convert.convert_catalog(smaller, tmp_path / "fits", tmp_path / "out", sector=23, overwrite=True)
    assert_contract(tmp_path / "out", smaller, tmp_path / "fits")


def test_clean_fits_removes_converted_files_only(tmp_path):
    catalog = _synthetic(tmp_path, 10, seed=2)
    (tmp_path / "fits" / catalog["path"][0]).write_bytes(b"junk".ljust(2880))
    convert.convert_catalog(catalog, tmp_path / "fits", tmp_path / "out", sector=23, clean_fits=True)
    assert sorted(p.relative_to(tmp_path / "fits").as_posix() for p in (tmp_path / "fits").rglob("*.fits")) == [
        f"corrupt/{catalog['path'][0]}"]
