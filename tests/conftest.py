"""Shared fixtures: the local archive over real HTTP, and a checker of the dataset contract against FITS files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import healpy
import numpy as np
import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAME = "hlsp_tglc_tess_ffi_gaiaid-6399196263939178880-s0001-cam2-ccd1_tess_v1_llc.fits"
# The real TGLC sample (Han & Brandt 2023, CC BY 4.0): the repository's copy, else the team's shared one.
SAMPLE = next((p for p in (REPO / "tests" / "data" / SAMPLE_NAME, REPO.parent / "shared" / "data" / SAMPLE_NAME)
               if p.exists()), REPO / "tests" / "data" / SAMPLE_NAME)

sys.path.insert(0, str(REPO))  # build_parent_sample.py is a top-level script
# Dask workers started by the tests (in this process or others) run no statistical profiler: its thread walks other
# threads' frames, which on CPython 3.11 crashed a whole test run once (hats-import's margin pipeline, while pandas
# read a CSV file in short-lived threads). Set before dask is imported, so every Dask process reads it.
os.environ["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"


@pytest.fixture(autouse=True)
def _offline_hf(monkeypatch, tmp_path_factory):
    """Keep Hugging Face off the network and out of the home folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.delenv("TGLC_MAST_URL", raising=False)


@pytest.fixture(scope="session")
def archive():
    """A 300-object synthetic sector 23, served on 127.0.0.1 for the whole test session."""
    from tglc_builder.demo import LocalArchive

    with LocalArchive(sector=23, n=300, seed=7) as served:
        yield served


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def assert_contract(out_dir: Path, catalog, fits_dir: Path) -> dict[int, np.ndarray]:
    """Check every HDF5 file of a build against the contract and the FITS files, value for value.

    Returns the Gaia ids found per pixel, in file order.
    """
    out_dir = Path(out_dir)
    assert (out_dir / "tglc.py").is_file()
    by_gaia = {int(row["gaiadr3_id"]): row for row in catalog}
    files = sorted((out_dir / "TGLC").glob("healpix=*/*.hdf5"))
    assert files, f"no HDF5 file under {out_dir}"
    found: dict[int, list[int]] = {}
    for file in files:
        pixel = int(file.parent.name.split("=")[1])
        with h5py.File(file, "r") as h5:
            assert h5.attrs["sector"] == catalog.meta["sector"]
            assert h5.attrs["healpix"] == pixel
            assert h5.attrs["nside"] == 16 and bool(h5.attrs["nest"]) is True
            assert "tglc_builder_version" in h5.attrs
            n = len(h5["gaiadr3_id"])
            expected_dtypes = {"TIC_ID": "int64", "gaiadr3_id": "int64", "RA": "float64", "DEC": "float64",
                               "n_cadences": "int32", "time": "float64", "psf_flux": "float32",
                               "aper_flux": "float32", "tess_flags": "int16", "tglc_flags": "int16"}
            for name, dtype in expected_dtypes.items():
                assert h5[name].dtype == np.dtype(dtype), name
                assert h5[name].shape[0] == n, name
            data = {name: h5[name][()] for name in h5}
        length = data["time"].shape[1]
        assert length == data["n_cadences"].max()
        for i in range(n):
            gaia = int(data["gaiadr3_id"][i])
            row = by_gaia[gaia]
            assert int(row["healpix"]) == pixel
            assert healpy.ang2pix(16, np.radians(90 - data["DEC"][i]), np.radians(data["RA"][i]), nest=True) == pixel
            assert data["TIC_ID"][i] == row["TIC_ID"] and data["RA"][i] == row["RA"] and data["DEC"][i] == row["DEC"]
            with fits.open(fits_dir / _text(row["path"])) as hdul:
                table, header = hdul["LIGHTCURVE"].data, hdul["LIGHTCURVE"].header
                assert int(hdul[0].header["TICID"]) == data["TIC_ID"][i]
                assert hdul[0].header["GAIADR3"] == gaia
                k = len(table)
                assert data["n_cadences"][i] == k
                assert data["psf_flux_err"][i] == header["PSF_ERR"]
                assert data["aper_flux_err"][i] == header["APER_ERR"]
                for ours, theirs in (("time", "time"), ("psf_flux", "psf_flux"), ("aper_flux", "aperture_flux"),
                                     ("tess_flags", "TESS_flags"), ("tglc_flags", "TGLC_flags")):
                    column = np.asarray(table[theirs])
                    assert np.array_equal(data[ours][i, :k], column, equal_nan=True), (file, gaia, ours)
                    # bit for bit, NaN payloads included
                    assert data[ours][i, :k].tobytes() == column.astype(column.dtype.newbyteorder("=")).tobytes()
            for name in ("time", "psf_flux", "aper_flux"):
                assert np.isnan(data[name][i, k:]).all()
            for name in ("tess_flags", "tglc_flags"):
                assert (data[name][i, k:] == 0).all()
        found.setdefault(pixel, []).extend(int(g) for g in data["gaiadr3_id"])
    # every catalog row exactly once, in catalog order within its pixel
    assert sorted(g for ids in found.values() for g in ids) == sorted(by_gaia)
    for pixel, ids in found.items():
        in_catalog = [int(g) for g in catalog["gaiadr3_id"][np.asarray(catalog["healpix"]) == pixel]]
        assert ids == in_catalog
    return {p: np.array(v) for p, v in found.items()}


def hdf5_values(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset of every HDF5 shard of a build, by path relative to ``out``, for comparing two builds."""
    result = {}
    for file in sorted((Path(out) / "TGLC").glob("healpix=*/*.hdf5")):
        with h5py.File(file, "r") as h5:
            result[str(file.relative_to(out))] = {name: h5[name][()] for name in h5}
    return result


def assert_same_data(a: Path, b: Path) -> None:
    """Both builds hold the same HDF5 files, value for value (bit for bit)."""
    one, two = hdf5_values(a), hdf5_values(b)
    assert one.keys() == two.keys()
    for file in one:
        assert one[file].keys() == two[file].keys(), file
        for name in one[file]:
            assert one[file][name].tobytes() == two[file][name].tobytes(), (file, name)


def run_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's packages plus the repository on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # No .pyc written by subprocesses: under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) CPython writes a
    # truncated one (it ignores a short write), and every later import of that module fails. This process writes them.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env
