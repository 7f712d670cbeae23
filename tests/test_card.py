"""The dataset card: its front matter names exactly the build's files and the features, and with it current
``datasets`` loads the folder on its own (in a process that cannot import this project), every value exact."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import h5py
import numpy as np
import pytest
import yaml
from test_loading import Build, assert_examples_exact, build_mirror

from tglc_builder.columns import STRING
from tglc_builder.formats.card import example_features, hdf5_features, write_card
from tglc_builder.loading import hats_data_files

NATIVE_HDF5 = "hdf5" in datasets.packaged_modules._PACKAGED_DATASETS_MODULES  # datasets >= 4.1

# Run in a fresh interpreter whose imports of this project fail: the folder must load with datasets alone.
LOAD_ALONE = r"""
import importlib.abc, pickle, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tglc_builder", "build_parent_sample"):
            raise ModuleNotFoundError(f"{name} is not to be imported here", name=name)

sys.meta_path.insert(0, Refuse())
import datasets

folder, cache, result = sys.argv[1:]
ds = datasets.load_dataset(folder, split="train", cache_dir=cache)
stream = datasets.load_dataset(folder, split="train", streaming=True)
with open(result, "wb") as f:
    pickle.dump({"features": ds.features, "numpy": list(ds.with_format("numpy", dtype=None)),
                 "python": list(ds), "stream": list(stream)}, f)
"""


def load_alone(folder: Path, tmp_path: Path) -> dict:
    """``datasets.load_dataset(folder, split="train")`` (and streaming) in a subprocess outside the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = tmp_path / "loaded.pickle"
    run = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(folder), str(tmp_path / "native_cache"), str(result)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(result, "rb") as f:
        return pickle.load(f)


def front_matter(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


@pytest.fixture(scope="module", params=["seed", "all"])
def real_build(request, tmp_path_factory) -> Build:
    """A real build (the writer wrote the card) of the real sample and shortened copies: widths 1282 and 1252."""
    return build_mirror(tmp_path_factory.mktemp(f"card_{request.param}"), request.param)


def data_files(build: Build) -> list[str]:
    return sorted(p.relative_to(build.out).as_posix() for p in build.out.glob("TGLC/healpix=*/*.hdf5"))


def test_hdf5_card_front_matter(real_build):
    meta = front_matter(real_build.out / "README.md")
    assert meta["license"] == "cc-by-4.0"
    assert meta["configs"] == [{"config_name": "default", "batch_size": 256,
                                "data_files": [{"split": "train", "path": data_files(real_build)}]}]
    assert len(data_files(real_build)) == 2
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == hdf5_features(real_build.columns)
    features = meta["dataset_info"]["features"]
    columns = real_build.columns
    assert {f["name"]: f.get("list") or f.get("dtype") for f in features} == {
        "TIC_ID": "int64", "gaiadr3_id": "int64", "RA": "float64", "DEC": "float64", "n_cadences": "int32",
        **{s.name: "string" if s.dtype == STRING else s.dtype.name for s in columns.series + columns.scalars}}
    assert all("list" in f for f in features if f["name"] in {s.name for s in columns.series})  # no length
    assert meta["size_categories"] == ["n<1K"] and "sector 1" in meta["pretty_name"]


def test_hdf5_card_prose(real_build):
    text = (real_build.out / "README.md").read_text().split("\n---\n", 1)[1]
    assert "**4 light curves** of TESS sector 1 (1252 to 1282 cadences each) in 2 HDF5 files" in text
    for s in real_build.columns.series + real_build.columns.scalars:
        assert any(line.startswith(f"| `{s.name}` |") and (s.unit or "-") in line and s.description in line
                   for line in text.splitlines()), s.name
    assert "| `lightcurve.time` | list<float64> | d |" in text
    for needle in ("n_cadences", "NaN", 'load_dataset("path/to/this/folder", split="train")', "tglc.py",
                   "trust_remote_code", "load_tglc", "h5py", "lsdb.open_catalog",
                   "Han, T. & Brandt, T. D. 2023, AJ, 165, 71", "doi:10.17909/610m-9474", "CC BY 4.0"):
        assert needle in text, needle


@pytest.mark.skipif(not NATIVE_HDF5, reason=f"datasets {datasets.__version__} has no HDF5 loader")
def test_datasets_alone_loads_the_hdf5_folder_exactly(real_build, tmp_path):
    columns = real_build.columns
    loaded = load_alone(real_build.out, tmp_path)
    assert loaded["features"] == hdf5_features(columns)
    expected = []
    for relpath in data_files(real_build):  # in the card's order; series padded to their file's width, as stored
        with h5py.File(real_build.out / relpath) as h5:
            ids, width = h5["gaiadr3_id"][()], h5["time"].shape[1]
        for gaia in ids:
            row = real_build.rows[str(gaia)]
            padded = {s.name: np.concatenate([row[s.name], np.full(width - len(row[s.name]), s.pad, s.dtype)])
                      for s in columns.series}
            expected.append({name: padded.get(name, row.get(name)) for name in hdf5_features(columns)})
    assert sorted(len(row["time"]) for row in expected) == [1252, 1252, 1282, 1282]
    for got in (loaded["numpy"], loaded["python"], loaded["stream"]):
        assert len(got) == len(expected)
        for index, (ours, theirs) in enumerate(zip(got, expected)):
            assert list(ours) == list(theirs), index
            for name, want in theirs.items():
                if isinstance(want, str):  # tglcver, procver
                    assert type(ours[name]) in (str, np.str_) and ours[name] == want, (index, name)
                    continue
                assert np.asarray(ours[name], want.dtype).tobytes() == want.tobytes(), (index, name)
    assert all(row["time"].dtype == np.float64 and row["psf_flux"].dtype == np.float32 for row in loaded["numpy"])


def test_hats_card(real_build, tmp_path):
    if real_build.hats is None:
        pytest.skip("hats is not installed")
    root = tmp_path / "hats"
    shutil.copytree(real_build.hats, root)
    files = [p.relative_to(root).as_posix() for p in hats_data_files(root / "tglc_s0001")]
    write_card(root, "hats", [root / f for f in files], real_build.columns, sectors=[1])
    meta = front_matter(root / "README.md")
    features = example_features(real_build.columns)
    assert meta["configs"] == [{"config_name": "default", "columns": list(features),
                                "data_files": [{"split": "train", "path": files}]}]
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == features
    text = (root / "README.md").read_text()
    assert "lsdb.open_catalog" in text and "| `_healpix_29` | int64 |" in text and "| `lightcurve.time` |" in text
    loaded = load_alone(root, tmp_path)  # exactly the main catalog's rows, in the examples' shape
    assert loaded["features"] == features
    for got in (loaded["numpy"], loaded["python"], loaded["stream"]):
        assert_examples_exact(got, real_build.examples([row["gaiadr3_id"] for row in got]))


def test_card_is_replaced_whole(real_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(real_build.out, out)
    (out / "README.md").write_text("stale")
    write_card(out, "hdf5", data_files(real_build), real_build.columns, sectors=1,  # paths relative to the folder
               note="These are the demo archive's synthetic light curves.")
    assert front_matter(out / "README.md")["configs"][0]["data_files"][0]["path"] == data_files(real_build)
    assert "\n\nThese are the demo archive's synthetic light curves.\n\n" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "TGLC", "tglc.py"]  # no temporary file left
    assert oct((out / "README.md").stat().st_mode & 0o777) == "0o644"


def test_card_refuses_what_it_cannot_describe(real_build):
    out, columns, files = real_build.out, real_build.columns, data_files(real_build)
    with pytest.raises(ValueError, match="format"):
        write_card(out, "fits", files, columns, sectors=1)
    with pytest.raises(ValueError, match="inside"):
        write_card(out / "TGLC" / "healpix=2841", "hdf5", [out / f for f in files], columns, sectors=1)
    with pytest.raises(ValueError, match="inside"):
        write_card(out, "hdf5", [], columns, sectors=1)
