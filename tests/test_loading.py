"""The loader: HDF5 files written per the dataset contract, and HATS catalogs, come back as exactly the contract's
examples.

Every load path is checked against the same expected examples: ``load_tglc`` (any datasets release, both formats)
and, where the installed datasets still runs loading scripts (< 4), the seed's ``load_dataset("<out>/tglc.py", ...)``.
Besides a small synthetic dataset written with h5py, real builds (``TGLC_Downloader`` on a local mirror holding the
real sample and shortened copies of it: files of 1282 and 1252 cadences) are loaded with both column sets and both
formats, and compared with the FITS values read with astropy.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import h5py
import numpy as np
import pytest
from astropy.io import fits

import tglc_builder.tglc as tglc_module
from conftest import SAMPLE
from tglc_builder import layout
from tglc_builder.columns import (EXTRA_SCALARS, EXTRA_SERIES, FROM_FILE_NAME, IDS_AND_POSITION, SEED_SCALARS,
                                  SEED_SERIES, STRING, ColumnSet, column_set)
from tglc_builder.formats.card import example_features
from tglc_builder.loading import hats_data_files, load_tglc

DATASETS_MAJOR = int(datasets.__version__.split(".")[0])
LIGHTCURVE = {"time": np.float64, "psf_flux": np.float32, "aper_flux": np.float32,
              "tess_flags": np.int16, "tglc_flags": np.int16}
SCALARS = ("RA", "DEC", "psf_flux_err", "aper_flux_err")
IDS = ("TIC_ID", "gaiadr3_id")
# (pixel, shard file, light-curve lengths); healpix=1234 sorts before healpix=77 as text, which is the order used
FILES = [(77, "001-of-001.hdf5", [5, 1, 3]),
         (1234, "001-of-002.hdf5", [4, 7, 2, 6, 7, 3, 5]),
         (1234, "002-of-002.hdf5", [2, 8])]
SPECIAL_GAIA = [6399196263939178880, 4295806720, 2**63 - 1]

REPO = Path(__file__).resolve().parents[1]


def _rows(rng: np.random.Generator, lengths: list[int], first_gaia: int, err_dtype: type) -> dict[str, np.ndarray]:
    """One file's columns, padded as the contract says (NaN for floats, 0 for integers beyond n_cadences)."""
    n, width = len(lengths), max(lengths)
    cols: dict[str, np.ndarray] = {
        "time": np.full((n, width), np.nan), "psf_flux": np.full((n, width), np.nan, np.float32),
        "aper_flux": np.full((n, width), np.nan, np.float32),
        "tess_flags": np.zeros((n, width), np.int16), "tglc_flags": np.zeros((n, width), np.int16)}
    for i, k in enumerate(lengths):
        cols["time"][i, :k] = 1900.0 + np.cumsum(rng.uniform(0.001, 0.02, k)) + rng.uniform(0, 1e-9)
        cols["psf_flux"][i, :k] = rng.normal(1000, 50, k).astype(np.float32)
        cols["aper_flux"][i, :k] = rng.normal(1000, 50, k).astype(np.float32)
        cols["tess_flags"][i, :k] = rng.choice(np.array([0, 0, 1, 128, 8192, -32768], np.int16), k)
        cols["tglc_flags"][i, :k] = rng.choice(np.array([0, 0, 1, 2, 32767, -32768], np.int16), k)
    # NaNs inside the real data, including as the first value (where datasets' encoder behaves differently)
    cols["psf_flux"][0, 0] = np.nan
    cols["aper_flux"][0, lengths[0] - 1] = np.nan
    cols["time"][-1, 0] = np.nan
    cols["aper_flux"][-1, 0] = np.array(0x7FC01234, np.uint32).view(np.float32)  # a NaN with a payload
    cols["gaiadr3_id"] = np.arange(first_gaia, first_gaia + n, dtype=np.int64)
    cols["TIC_ID"] = rng.integers(1, 2_000_000_000, n).astype(np.int64)
    cols["RA"] = rng.uniform(0, 360, n)
    cols["DEC"] = rng.uniform(-90, 90, n)
    cols["psf_flux_err"] = rng.uniform(0.1, 50, n).astype(err_dtype)
    cols["aper_flux_err"] = rng.uniform(0.1, 50, n).astype(err_dtype)
    cols["aper_flux_err"][-1] = np.nan
    cols["n_cadences"] = np.asarray(lengths, np.int32)
    return cols


def write_dataset(out: str | os.PathLike, seed: int = 0) -> list[dict[str, Any]]:
    """Write a small dataset per the contract under ``out`` (HDF5 files + ``tglc.py``); return its examples.

    The examples are in load order (files sorted by path, rows in file order), light curves as numpy arrays
    trimmed to n_cadences, ids as exact decimal strings.
    """
    out, rng = Path(out), np.random.default_rng(seed)
    files = []
    for index, (pixel, shard, lengths) in enumerate(FILES):
        cols = _rows(rng, lengths, first_gaia=10**18 + 1000 * index, err_dtype=np.float32 if index == 2 else np.float64)
        files.append((out / "TGLC" / f"healpix={pixel}" / shard, pixel, cols))
    # large and short Gaia ids (not exactly representable as float64), and a TIC id beyond float32
    files[1][2]["gaiadr3_id"][:3] = SPECIAL_GAIA  # healpix=1234/001-of-002.hdf5 is the first file loaded
    files[1][2]["TIC_ID"][0] = 2**53 + 1
    for path, pixel, cols in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as h5:
            for name, values in cols.items():
                chunks = (2,) + values.shape[1:]  # chunked and compressed like the builder's files
                h5.create_dataset(name, data=values, chunks=chunks, compression="gzip", shuffle=True,
                                  fletcher32=True)
            h5.attrs.update({"sector": 23, "healpix": pixel, "nside": 16, "nest": True,
                             "tglc_builder_version": "test"})
    shutil.copyfile(tglc_module.__file__, out / "tglc.py")
    expected = []
    for _, _, cols in sorted(files, key=lambda f: str(f[0])):  # the load order: files sorted by path
        for i, k in enumerate(cols["n_cadences"].tolist()):
            example: dict[str, Any] = {"lightcurve": {name: cols[name][i, :k].copy() for name in LIGHTCURVE}}
            example.update({name: np.float64(cols[name][i]) for name in SCALARS})
            example.update({name: str(int(cols[name][i])) for name in IDS})
            expected.append(example)
    return expected


def assert_same_examples(got: list[dict[str, Any]], expected: list[dict[str, Any]], numpy_default: bool = False
                         ) -> None:
    """Bit-for-bit equality, NaN positions included, for examples as numpy arrays or plain Python lists.

    ``numpy_default``: ``got`` comes from ``with_format("numpy")`` without ``dtype=None``, where datasets picks
    its own dtypes (float32 or float64, int64); compare with the expected values cast alike.
    """
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert set(ours) == set(theirs) and set(ours["lightcurve"]) == set(LIGHTCURVE), index
        for name, dtype in LIGHTCURVE.items():
            value, want = ours["lightcurve"][name], theirs["lightcurve"][name]
            if numpy_default and isinstance(value, np.ndarray):
                assert value.dtype.kind == np.dtype(dtype).kind, (index, name, value.dtype)
                dtype, want = value.dtype, want.astype(value.dtype)
            if isinstance(value, np.ndarray):
                assert value.dtype == dtype, (index, name, value.dtype)
            else:
                assert isinstance(value, list), (index, name, type(value))
            value = np.asarray(value, dtype=dtype)
            assert value.shape == want.shape, (index, name)
            assert value.tobytes() == want.tobytes(), (index, name)
        for name in SCALARS:
            value = np.asarray(ours[name]) if numpy_default else np.float64(ours[name])
            assert value.dtype.kind == "f" and value.tobytes() == theirs[name].astype(value.dtype).tobytes(), (
                index, name)
        for name in IDS:
            assert type(ours[name]) in (str, np.str_) and ours[name] == theirs[name], (index, name)


# -- real builds from FITS files -------------------------------------------------------------------------------------

# Copies of the real sample, cut shorter and moved, so that the files of a build differ in width:
# (Gaia DR3 id, TIC id, RA, DEC, camera, CCD, cadences kept). The first lands in the sample's pixel.
VARIANTS = [(6399196263939178881, 389023760, 332.70, -65.50, 2, 1, 1270),
            (4295806720, 12, 10.0, -30.0, 4, 4, 1252),
            (4295806721, 13, 10.01, -30.01, 4, 4, 1252)]


def write_mirror(root: Path) -> list[Path]:
    """A sector-1 MAST tree on disk (both listings and the FITS files): the real sample and its VARIANTS, written
    with astropy. Returns the FITS files."""
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE.name} is in neither tests/data nor ../shared/data")
    relpaths = [layout.lc_relpath(6399196263939178880, 1, 2, 1)]
    (root / relpaths[0]).parent.mkdir(parents=True)
    shutil.copyfile(SAMPLE, root / relpaths[0])
    targets = ["#GAIADR3_ID,TIC_ID,RA,DEC", "6399196263939178880,389023759,332.6683820898813,-65.51867725247051"]
    for gaia, tic, ra, dec, cam, ccd, kept in VARIANTS:
        relpaths.append(layout.lc_relpath(gaia, 1, cam, ccd))
        (root / relpaths[-1]).parent.mkdir(parents=True, exist_ok=True)
        with fits.open(SAMPLE) as hdul:
            primary, table = hdul[0].copy(), hdul["LIGHTCURVE"]
            primary.header.update(GAIADR3=gaia, TICID=str(tic), RA_OBJ=ra, DEC_OBJ=dec, CAMERA=cam, CCD=ccd,
                                  OBJECT=f"Gaia DR3 {gaia}")
            curve = fits.BinTableHDU(table.data[:kept], header=table.header.copy())
            curve.header.update(GAIADR3=gaia, RA_OBJ=ra, DEC_OBJ=dec, OBJECT=f"Gaia DR3 {gaia}")
            fits.HDUList([primary, curve]).writeto(root / relpaths[-1])
        targets.append(f"{gaia},{tic},{ra!r},{dec!r}")
    bulk = "#!/bin/sh\n" + "".join(f"curl -f --create-dirs --output '{r}' https://archive.stsci.edu/hlsps/tglc/{r}\n"
                                   for r in relpaths)
    for relpath, text in ((layout.bulk_script_relpath(1), bulk), (layout.target_list_relpath(1), "\n".join(targets))):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(text + "\n")
    return [root / r for r in relpaths]


@dataclass
class Build:
    """A real build of the mirror: the HDF5 folder, the HATS collection (None without hats), the FITS values."""

    out: Path
    hats: Path | None
    columns: ColumnSet
    rows: dict[str, dict[str, Any]]  # by Gaia id (a string, as the examples give it), read_fits

    def examples(self, ids: list[str]) -> list[dict[str, Any]]:
        return [as_example(self.rows[gaia], self.columns) for gaia in ids]


def build_mirror(root: Path, columns: str) -> Build:
    """Build the mirror of :func:`write_mirror` with the public API: HDF5, and HATS too when hats is installed."""
    from build_parent_sample import TGLC_Downloader

    files = write_mirror(root / "mirror")
    hats = root / "hats" if importlib.util.find_spec("hats") else None
    with TGLC_Downloader(1, root / "data", root / "out", root / "fits", 1, str(root / "mirror"), columns=columns,
                         format="both" if hats else "hdf5", hats_output_dir=hats) as downloader:
        summary = downloader.download_sector()
    assert summary.converted == len(files) and not summary.failures, summary.describe()
    rows = [read_fits(path, column_set(columns)) for path in files]
    return Build(root / "out", hats, column_set(columns), {str(int(row["gaiadr3_id"])): row for row in rows})


def read_fits(path: Path, columns: ColumnSet) -> dict[str, Any]:
    """A light curve's values as the contract defines them, read with astropy (native byte order, same bits)."""
    with fits.open(path) as hdul:
        headers, table = (hdul[0].header, hdul[1].header), hdul["LIGHTCURVE"].data
        row: dict[str, Any] = {"TIC_ID": np.int64(int(headers[0]["TICID"])),
                               "gaiadr3_id": np.int64(headers[0]["GAIADR3"]),
                               "RA": np.float64(headers[0]["RA_OBJ"]), "DEC": np.float64(headers[0]["DEC_OBJ"])}
        for series in columns.series:
            if series.fits_column not in table.columns.names:  # a column of newer files (0.8's raw fluxes): NaN
                assert not series.required, (path, series.fits_column)
                row[series.name] = np.full(len(table), series.pad, series.dtype)
                continue
            values = np.asarray(table[series.fits_column])  # the flags keep the file's width (16 or 32 bits)
            row[series.name] = values.astype(values.dtype.newbyteorder("=") if series.widens else series.dtype)
        for scalar in columns.scalars:
            if scalar.hdu == FROM_FILE_NAME:  # the v<k> of the file's name
                row[scalar.name] = scalar.dtype.type(layout.file_version(path.name))
                continue
            value = headers[scalar.hdu].get(scalar.card)
            if value is None:  # a card only some files carry (CONTAMRT, PROCVER): NaN / 0 / "", as the contract says
                assert not scalar.required, (path, scalar.card)
                value = np.nan if scalar.dtype.kind == "f" else "" if scalar.dtype == STRING else 0
            row[scalar.name] = value if scalar.dtype == STRING else scalar.dtype.type(value)
    row["n_cadences"] = np.int32(len(row["time"]))
    return row


def as_example(row: dict[str, Any], columns: ColumnSet) -> dict[str, Any]:
    """A row of :func:`read_fits` as the examples of tglc.py / load_tglc."""
    example: dict[str, Any] = {"lightcurve": {s.name: row[s.name] for s in columns.series}}
    example.update({name: str(int(row[name])) for name in IDS})
    example.update({name: np.float64(row[name]) for name in ("RA", "DEC")})
    example.update({s.name: row[s.name].astype(np.float64) if s.dtype.kind == "f" else row[s.name]
                    for s in columns.scalars})
    return example


def assert_examples_exact(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Bit-for-bit equality (NaN payloads included) of examples of any column set, as numpy arrays (stored dtypes)
    or plain Python values."""
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected)):
        assert list(ours) == list(theirs), index
        assert list(ours["lightcurve"]) == list(theirs["lightcurve"]), index
        for name, want in theirs["lightcurve"].items():
            value = ours["lightcurve"][name]
            assert not isinstance(value, np.ndarray) or value.dtype == want.dtype, (index, name, value.dtype)
            assert np.asarray(value, want.dtype).tobytes() == want.tobytes(), (index, name)
        for name, want in theirs.items():
            if name == "lightcurve":
                continue
            if isinstance(want, str):
                assert type(ours[name]) in (str, np.str_) and ours[name] == want, (index, name)
            else:
                assert np.asarray(ours[name], want.dtype).tobytes() == want.tobytes(), (index, name, ours[name])


@pytest.fixture
def hf_cache(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """A fresh datasets cache per test; loading scripts (datasets 3.x) copied to a session folder, not ~/.cache."""
    modules = tmp_path_factory.getbasetemp() / "hf_modules"
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", modules)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


@pytest.fixture
def built(tmp_path) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path / "out"
    return out, write_dataset(out)


def test_load_tglc_yields_the_contract_examples(built, hf_cache):
    out, expected = built
    ds = load_tglc(out, cache_dir=hf_cache)
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == len(expected) == 12
    assert_same_examples(list(ds), expected)  # plain Python lists and floats
    assert_same_examples(list(ds.with_format("numpy", dtype=None)), expected)  # stored dtypes, bit for bit
    lightcurve = ds.features["lightcurve"]
    assert {name: lightcurve[name].feature.dtype for name in LIGHTCURVE} == {
        name: np.dtype(dtype).name for name, dtype in LIGHTCURVE.items()}
    assert ds[0]["gaiadr3_id"] == "6399196263939178880" and ds[1]["gaiadr3_id"] == "4295806720"
    assert ds[0]["TIC_ID"] == str(2**53 + 1)
    assert ds.info.license == "CC BY 4.0" and "10.17909/610m-9474" in ds.info.citation


def test_numpy_format(built, hf_cache):
    out, expected = built
    ds = load_tglc(out, cache_dir=hf_cache)
    assert_same_examples(list(ds.with_format("numpy")), expected, numpy_default=True)
    batch = ds.with_format("numpy", dtype=None)[:4]
    assert [row["time"].dtype for row in batch["lightcurve"]] == [np.float64] * 4
    assert batch["RA"].dtype == np.float64 and batch["gaiadr3_id"].tolist()[:2] == ["6399196263939178880",
                                                                                     "4295806720"]


def test_streaming_yields_the_same(built, hf_cache):
    out, expected = built
    stream = load_tglc(out, streaming=True, cache_dir=hf_cache)
    assert isinstance(stream, datasets.IterableDataset)
    assert_same_examples(list(stream), expected)
    assert_same_examples(list(stream.with_format("numpy")), expected, numpy_default=True)


def test_rows_read_in_blocks_across_block_edges(built, hf_cache):
    out, expected = built
    builder = tglc_module.TGLC(base_path=str(out), data_files={"train": [tglc_module.DEFAULT_DATA_FILES]},
                               cache_dir=str(hf_cache), block_rows=3)
    assert builder.config.block_rows == 3
    assert_same_examples(list(builder.as_streaming_dataset(split="train")), expected)


def test_rebuilt_files_are_not_served_from_the_cache(built, hf_cache):
    out, expected = built
    assert_same_examples(list(load_tglc(out, cache_dir=hf_cache)), expected)
    rebuilt = write_dataset(out, seed=1)  # same paths, new contents
    for path in out.rglob("*.hdf5"):
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    assert_same_examples(list(load_tglc(out, cache_dir=hf_cache)), rebuilt)
    shutil.rmtree(out / "TGLC" / "healpix=1234")
    assert load_tglc(out, cache_dir=hf_cache).num_rows == 3


def test_default_data_files_are_the_folders_hdf5(built, hf_cache):
    out, expected = built
    builder = tglc_module.TGLC(base_path=str(out), cache_dir=str(hf_cache))
    builder.download_and_prepare()
    assert_same_examples(list(builder.as_dataset("train")), expected)


def test_builder_is_self_contained():
    """The copy in each output folder must import nothing from this project."""
    tree = ast.parse(Path(tglc_module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) <= {"datasets", "h5py", "numpy", "pyarrow"}, imported


def test_example_column_order_is_the_column_tables():
    """tglc.py cannot import columns.py; its order of the columns must still be the table's."""
    assert tglc_module.SERIES_ORDER == tuple(s.name for s in SEED_SERIES + EXTRA_SERIES)
    assert tglc_module.SCALAR_ORDER == (*IDS_AND_POSITION, *(s.name for s in SEED_SCALARS + EXTRA_SCALARS))


@pytest.fixture(scope="module", params=["seed", "all"])
def real_build(request, tmp_path_factory) -> Build:
    return build_mirror(tmp_path_factory.mktemp(f"build_{request.param}"), request.param)


def test_both_column_sets_of_a_real_build(real_build, hf_cache):
    ds = load_tglc(real_build.out, cache_dir=hf_cache)
    assert ds.features == example_features(real_build.columns)  # read off the files by tglc.py: the card's examples
    assert list(ds.features["lightcurve"]) == [s.name for s in real_build.columns.series]
    assert sorted(ds["gaiadr3_id"]) == sorted(real_build.rows)
    expected = real_build.examples(ds["gaiadr3_id"])
    assert sorted(len(e["lightcurve"]["time"]) for e in expected) == [1252, 1252, 1270, 1282]
    assert_examples_exact(list(ds.with_format("numpy", dtype=None)), expected)
    assert_examples_exact(list(ds), expected)
    assert_examples_exact(list(load_tglc(real_build.out, streaming=True, cache_dir=hf_cache)), expected)


def test_hats_loads_like_hdf5(real_build, hf_cache):
    if real_build.hats is None:
        pytest.skip("hats is not installed")
    catalog = real_build.hats / "tglc_s0001"
    assert hats_data_files(catalog) == sorted(catalog.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    hdf5 = load_tglc(real_build.out, cache_dir=hf_cache)
    for path in (real_build.hats, catalog):  # the collection or its main catalog
        ds = load_tglc(path, cache_dir=hf_cache)
        assert ds.features == hdf5.features and ds.num_rows == len(real_build.rows)
        assert_examples_exact(list(ds.with_format("numpy", dtype=None)), real_build.examples(ds["gaiadr3_id"]))
        stream = list(load_tglc(path, streaming=True, cache_dir=hf_cache))
        assert_examples_exact(stream, real_build.examples([e["gaiadr3_id"] for e in stream]))


def test_a_file_without_the_first_files_columns_is_refused(built, hf_cache):
    out, _ = built
    with h5py.File(out / "TGLC" / "healpix=77" / "001-of-001.hdf5", "a") as h5:
        del h5["tglc_flags"]
    with pytest.raises(ValueError, match="lacks"):
        list(load_tglc(out, streaming=True, cache_dir=hf_cache))


def _corrupt_a_chunk(file: Path, name: str) -> None:
    """Flip one byte inside the first stored chunk of a dataset (its Fletcher32 checksum no longer matches)."""
    with h5py.File(file, "r") as h5:
        chunk = h5[name].id.get_chunk_info(0)
    with open(file, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("name", ["psf_flux", "RA"])
def test_a_corrupted_chunk_raises(real_build, hf_cache, tmp_path, name):
    out = tmp_path / "out"
    shutil.copytree(real_build.out, out)
    _corrupt_a_chunk(next(out.glob("TGLC/healpix=*/*.hdf5")), name)
    with pytest.raises(OSError, match="filter|checksum"):
        list(load_tglc(out, streaming=True, cache_dir=hf_cache))
    with pytest.raises(Exception) as error:
        load_tglc(out, cache_dir=hf_cache)
    assert any(isinstance(e, OSError) for e in (error.value, error.value.__cause__, error.value.__context__))


def test_load_tglc_names_a_folder_it_cannot_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        load_tglc(tmp_path)


@pytest.mark.skipif(DATASETS_MAJOR >= 4, reason=f"datasets {datasets.__version__} no longer runs loading scripts; "
                                                 "run .ci/datasets3.sh for this path")
def test_loading_script_matches_load_tglc(built, hf_cache):
    from datasets.data_files import DataFilesPatternsDict

    out, expected = built
    seed = datasets.load_dataset(str(out / "tglc.py"), trust_remote_code=True, cache_dir=str(hf_cache),
                                 data_files=DataFilesPatternsDict.from_patterns({"train": ["TGLC/healpix=*/*.hdf5"]}))
    assert_same_examples(list(seed["train"]), expected)
    assert_same_examples(list(seed["train"].with_format("numpy", dtype=None)), expected)
    ours = load_tglc(out, cache_dir=hf_cache / "ours")
    assert seed["train"].features == ours.features
    assert_same_examples(list(seed["train"].with_format("numpy", dtype=None)),
                         list(ours.with_format("numpy", dtype=None)))
    # without data_files the script takes the folder's HDF5 files
    default = datasets.load_dataset(str(out / "tglc.py"), split="train", trust_remote_code=True,
                                    cache_dir=str(hf_cache / "default"))
    assert_same_examples(list(default), expected)
    streamed = datasets.load_dataset(str(out / "tglc.py"), split="train", streaming=True, trust_remote_code=True,
                                     cache_dir=str(hf_cache / "stream"))
    assert_same_examples(list(streamed), expected)



@pytest.mark.skipif(DATASETS_MAJOR >= 4, reason=f"datasets {datasets.__version__} no longer runs loading scripts; "
                                                 "run .ci/datasets3.sh for this path")
def test_loading_script_yields_both_column_sets(real_build, hf_cache):
    from datasets.data_files import DataFilesPatternsDict

    ds = datasets.load_dataset(str(real_build.out / "tglc.py"), split="train", trust_remote_code=True,
                               cache_dir=str(hf_cache),
                               data_files=DataFilesPatternsDict.from_patterns({"train": ["TGLC/healpix=*/*.hdf5"]}))
    assert ds.features == example_features(real_build.columns)
    assert_examples_exact(list(ds.with_format("numpy", dtype=None)), real_build.examples(ds["gaiadr3_id"]))
