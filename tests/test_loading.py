"""The loader: HDF5 files written per the dataset contract come back as exactly the contract's examples.

Both load paths are checked against the same expected examples: ``load_tglc`` (any datasets release) and, where
the installed datasets still runs loading scripts (< 4), the seed's ``load_dataset("<out>/tglc.py", ...)``.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import h5py
import numpy as np
import pytest

import tglc_builder.tglc as tglc_module
from tglc_builder.loading import load_tglc

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
                h5.create_dataset(name, data=values, chunks=chunks, compression="gzip", shuffle=True)
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


def test_rows_read_in_blocks_across_block_edges(built, hf_cache, monkeypatch):
    out, expected = built
    monkeypatch.setattr(tglc_module, "_BLOCK_ROWS", 3)
    assert_same_examples(list(load_tglc(out, streaming=True, cache_dir=hf_cache)), expected)


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
    assert imported <= {"__future__", "os", "typing", "datasets", "h5py", "numpy", "pyarrow"}, imported


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

