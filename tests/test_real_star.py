"""A three-sector release of one real star: the real TGLC v2 files of tests/data (Gaia DR3 5707485527450614656,
TIC 218795833, sectors 7, 8 and 34) in a local mirror in MAST's layout, built by build_parent_sample.py in a real
subprocess (`-s 7,8,34`), then the stars catalog read back every way a user would, every value compared with the
FITS files bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from conftest import run_env
from test_versions import V2_FILES, write_mirror

from tglc_builder import layout
from tglc_builder.columns import column_set
from tglc_builder.stars import CATALOG, open_stars

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "build_parent_sample.py")
GAIA, TIC = 5707485527450614656, 218795833
SECTORS = [7, 8, 34]
CAM_CCD = [(2, 3), (2, 4), (2, 3)]


def _fits(path: Path) -> dict:
    """The file's header cards and LIGHTCURVE columns as astropy reads them (native byte order, same bits)."""
    with fits.open(path) as hdul:
        primary, table = hdul[0].header, hdul["LIGHTCURVE"]
        columns = {name: np.asarray(table.data[name]) for name in table.columns.names}
        columns = {name: v.astype(v.dtype.newbyteorder("=")) for name, v in columns.items()}
        return {"primary": primary.copy(), "header": table.header.copy(), "columns": columns,
                "name": path.name}


FILES = {int(fits.getheader(p)["SECTOR"]): _fits(p) for p in V2_FILES}


def _mirror(root: Path) -> Path:
    """The three files at their canonical paths, each sector's bulk script (MAST's name, ``..._tess_v1_llc.sh``,
    whatever version the files it lists) and its target list, RA/DEC and TIC id from the files' headers."""
    mirror = root / "mirror"
    for path in V2_FILES:
        head = fits.getheader(path)
        relpath = layout.lc_relpath(head["GAIADR3"], head["SECTOR"], head["CAMERA"], head["CCD"], 2)
        assert relpath.endswith(path.name)
        write_mirror(mirror, head["SECTOR"], {relpath: path.read_bytes()},
                     {head["GAIADR3"]: (int(head["TICID"]), head["RA_OBJ"], head["DEC_OBJ"])})
    return mirror


def _build(root: Path, mirror: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "-s", "7,8,34", "--mast-url", str(mirror), "--tglc_data_path",
                           str(root / "data"), "--format", "both", "-n", "1", *extra],
                          env=run_env(), capture_output=True, text=True, timeout=600, cwd=root)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The ``--columns all`` build; its ``<tglc_data_path>``."""
    root = tmp_path_factory.mktemp("real_star")
    result = _build(root, _mirror(root), "--columns", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "data"


# (series in the stars catalog, column of the FITS table) for --columns all
ALL = column_set("all")
SERIES = [(s.name, s.fits_column) for s in ALL.series]
# per-light-curve values of sector_info and their FITS cards (HDU 0 primary, 1 LIGHTCURVE)
SCALARS = [(s.name, s.card, s.hdu) for s in ALL.scalars if s.card and s.name not in ("camera", "ccd")]


def _expected_value(sector: int, card: str, hdu: int):
    f = FILES[sector]
    return (f["primary"] if hdu == 0 else f["header"]).get(card)


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_the_files_are_what_the_test_expects():
    assert sorted(FILES) == SECTORS
    assert [(FILES[s]["primary"]["CAMERA"], FILES[s]["primary"]["CCD"]) for s in SECTORS] == CAM_CCD
    assert {FILES[s]["primary"]["TICID"] for s in SECTORS} == {str(TIC)}  # a string card in the real files
    assert {len(FILES[s]["columns"]["time"]) for s in SECTORS} == {1093, 968, 3489}


def test_stars_catalog_row_equals_the_fits_files(release):
    stars = release / "stars"
    files = sorted((stars / CATALOG / "dataset").rglob("Npix=*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    head = FILES[7]["primary"]
    assert (row["gaiadr3_id"], row["TIC_ID"], row["RA"], row["DEC"]) == (GAIA, TIC, head["RA_OBJ"], head["DEC_OBJ"])
    assert row["sectors"] == SECTORS and row["n_sectors"] == 3
    info = row["sector_info"]
    assert info["sector"] == SECTORS
    assert list(zip(info["camera"], info["ccd"])) == CAM_CCD
    assert info["n_cadences"] == [len(FILES[s]["columns"]["time"]) for s in SECTORS]
    assert info["file_version"] == [2, 2, 2]
    assert info["tglcver"] == [FILES[s]["primary"]["TGLCVER"] for s in SECTORS] == ["0.7.0"] * 3
    assert info["procver"] == [""] * 3
    for name, card, hdu in SCALARS:
        if name in ("tglcver", "procver"):
            continue
        want = [_expected_value(s, card, hdu) for s in SECTORS]
        assert None not in want, name  # the v2 files carry every card but PROCVER
        assert info[name] == want, name  # Python numbers from both sides: equal is the same double / integer
    # every cadence: the nested lightcurve is the three files' columns one after the other, bit for bit
    curve = table.column("lightcurve").chunk(0)
    assert pc.list_flatten(pc.struct_field(curve, "sector")).to_numpy().tolist() == sum(
        ([s] * len(FILES[s]["columns"]["time"]) for s in SECTORS), [])
    for name, column in SERIES:
        got = pc.list_flatten(pc.struct_field(curve, name)).to_numpy(zero_copy_only=False)
        parts = []
        for s in SECTORS:
            cols = FILES[s]["columns"]
            parts.append(cols[column] if column in cols else np.full(len(cols["time"]), np.nan, np.float32))
        assert _same_bits(got, np.concatenate(parts)), name


def test_stars_catalog_is_strictly_valid_and_lsdb_finds_the_star(release):
    from hats.io.validation import is_valid_catalog
    import lsdb

    stars = release / "stars"
    assert is_valid_catalog(stars / CATALOG, strict=True)
    assert is_valid_catalog(stars, strict=True)
    found = lsdb.open_catalog(stars).id_search(values={"gaiadr3_id": GAIA}).compute()
    assert found["gaiadr3_id"].tolist() == [GAIA] and found["TIC_ID"].tolist() == [TIC]
    assert list(found["sectors"].iloc[0]) == SECTORS
    time_ = found["lightcurve"].iloc[0]["time"].to_numpy()
    assert _same_bits(time_, np.concatenate([FILES[s]["columns"]["time"] for s in SECTORS]))


def _assert_star(star) -> None:
    assert (star.gaiadr3_id, star.tic_id, star.sectors) == (GAIA, TIC, SECTORS)
    assert [(int(c["sector"]), int(c["camera"]), int(c["ccd"])) for c in star.curves] == [
        (s, *cc) for s, cc in zip(SECTORS, CAM_CCD)]
    for curve, s in zip(star.curves, SECTORS):
        cols = FILES[s]["columns"]
        assert int(curve["n_cadences"]) == len(cols["time"])
        assert curve["tglcver"] == FILES[s]["primary"]["TGLCVER"] and int(curve["file_version"]) == 2
        for name, column in SERIES:
            want = cols[column] if column in cols else np.full(len(cols["time"]), np.nan, np.float32)
            assert _same_bits(np.asarray(curve[name]), want), (s, name)


def test_open_stars_by_gaia_and_tic_and_lightkurve(release):
    catalog = open_stars(release / "stars")
    by_gaia, by_tic = catalog.get(gaiadr3_id=GAIA), catalog.get(tic_id=TIC)
    _assert_star(by_gaia)
    _assert_star(by_tic)
    pytest.importorskip("lightkurve")
    collection = by_gaia.to_lightkurve()
    assert len(collection) == 3
    import lightkurve

    for lc, s in zip(collection, SECTORS):
        cols = FILES[s]["columns"]
        assert isinstance(lc, lightkurve.TessLightCurve) and lc.meta["SECTOR"] == s
        assert lc.meta["FLUX_ORIGIN"] == "cal_aper_flux"
        assert _same_bits(np.asarray(lc.flux.value), cols["cal_aper_flux"])
        assert np.array_equal(np.asarray(lc.quality), cols["TESS_flags"])
        assert np.array_equal(np.asarray(lc["tglc_flags"]), cols["TGLC_flags"])
        assert _same_bits(np.asarray(lc.time.value), cols["time"])
        assert np.all(lc.flux_err.value == FILES[s]["header"]["CAPE_ERR"])
    stitched = collection.stitch()
    assert len(stitched) == sum(len(FILES[s]["columns"]["time"]) for s in SECTORS)
    assert np.array_equal(np.sort(stitched.time.value),
                          np.sort(np.concatenate([FILES[s]["columns"]["time"] for s in SECTORS])))


def test_sector_34_hdf5_with_datasets(release, tmp_path):
    import datasets

    folder = release / layout.sector_tag(34) / "MultimodalUniverse"
    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf"))
    assert str(loaded.features["time"]) == "List(Value('float64'))"
    # dtype=None: datasets' numpy formatter otherwise casts every float array to float32 (its default)
    ds = loaded.with_format("numpy", dtype=None)
    assert len(ds) == 1
    example, cols = ds[0], FILES[34]["columns"]
    assert (int(example["gaiadr3_id"]), int(example["TIC_ID"])) == (GAIA, TIC)
    n = int(example["n_cadences"])
    assert n == len(cols["time"]) == 3489
    for name, column in SERIES:
        want = cols[column] if column in cols else np.full(n, np.nan, np.float32)
        assert _same_bits(np.asarray(example[name])[:n], want), name
    assert example["tglcver"] == FILES[34]["primary"]["TGLCVER"] and int(example["file_version"]) == 2


def test_default_columns_build(tmp_path):
    """The same release with the seed columns: one star, the seed series exact, lightkurve's flux is aper_flux."""
    result = _build(tmp_path, _mirror(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    star = open_stars(tmp_path / "data" / "stars").get(gaiadr3_id=GAIA)
    assert star.sectors == SECTORS and star.columns == "seed"
    seed = column_set("seed")
    for curve, s in zip(star.curves, SECTORS):
        cols = FILES[s]["columns"]
        assert sorted(k for k, v in curve.items() if isinstance(v, np.ndarray) and v.ndim == 1 and k != "sector"
                      ) == sorted(x.name for x in seed.series)
        for x in seed.series:
            assert _same_bits(np.asarray(curve[x.name]), cols[x.fits_column]), (s, x.name)
    lightkurve = pytest.importorskip("lightkurve")
    collection = star.to_lightkurve()
    assert all(isinstance(lc, lightkurve.TessLightCurve) for lc in collection)
    for lc, s in zip(collection, SECTORS):
        assert lc.meta["FLUX_ORIGIN"] == "aper_flux"
        assert _same_bits(np.asarray(lc.flux.value), FILES[s]["columns"]["aperture_flux"])
