"""End to end through the public class: listings -> catalog -> downloads over HTTP -> HDF5, value for value."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

import build_parent_sample
from build_parent_sample import TGLC_Downloader
from conftest import assert_contract
from tglc_builder.errors import UsageError


def _downloader(archive, tmp_path, **kwargs):
    return TGLC_Downloader(sector=23, tglc_data_path=tmp_path / "data", hdf5_output_dir=tmp_path / "out",
                           fits_dir=tmp_path / "fits", n_processes=kwargs.pop("n_processes", 2),
                           mast_url=archive.url, **kwargs)


def test_tiny_build_values_equal_fits(archive, tmp_path):
    downloader = _downloader(archive, tmp_path)
    summary = downloader.download_sector(tiny=True)
    assert summary.failures == []
    assert summary.downloaded == build_parent_sample._TINY_SIZE and summary.converted == 100

    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    truth = archive.sector
    assert catalog["gaiadr3_id"].tolist() == truth.gaia_ids[truth.expected_catalog_indices()[:100]].tolist()
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    # the downloaded files are the archive's bytes, unchanged
    for row in catalog[:10]:
        path = row["path"]
        assert (tmp_path / "fits" / path).read_bytes() == truth.fits_bytes(truth.index_of(path))
    assert not (tmp_path / "data" / "s0023" / "failures.csv").exists()
    assert not list((tmp_path / "fits").rglob(".*.part-*"))


def test_step_by_step_matches_one_call(archive, tmp_path):
    one = _downloader(archive, tmp_path / "one")
    one.download_sector(tiny=True)

    steps = _downloader(archive, tmp_path / "steps", n_processes=1)
    catalog = steps.create_sector_catalog(save_catalog=True, tiny=True)
    assert len(catalog) == 100
    steps.batched_download(catalog=catalog, tiny=True)
    steps.convert_fits_to_standard_format(catalog)

    files_one = sorted(p.relative_to(tmp_path / "one" / "out") for p in (tmp_path / "one" / "out").rglob("*.hdf5"))
    files_steps = sorted(p.relative_to(tmp_path / "steps" / "out")
                         for p in (tmp_path / "steps" / "out").rglob("*.hdf5"))
    assert files_one == files_steps
    assert_contract(tmp_path / "steps" / "out", catalog, tmp_path / "steps" / "fits")


def test_module_constants_drive_the_build(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(build_parent_sample, "_TINY_SIZE", 7)
    monkeypatch.setattr(build_parent_sample, "_BATCH_SIZE", 3)
    downloader = _downloader(archive, tmp_path, n_processes=2)
    summary = downloader.download_sector(tiny=True)
    assert summary.downloaded == 7 and summary.converted == 7
    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    assert len(catalog) == 7
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_rerun_downloads_nothing_again(archive, tmp_path):
    _downloader(archive, tmp_path).download_sector(tiny=True)
    before = archive.request_count()
    summary = _downloader(archive, tmp_path).download_sector(tiny=True)
    assert archive.request_count() == before  # listings reused, every light curve already converted
    assert summary.complete == 100 and summary.downloaded == 0 and summary.converted == 0
    assert summary.files_written == 0 and summary.failures == []


@pytest.mark.parametrize("kwargs", [{"sector": 0}, {"sector": "23x"}, {"sector": 2.5}, {"n_processes": 0}])
def test_bad_arguments(tmp_path, kwargs):
    args = dict(sector=23, tglc_data_path=tmp_path, hdf5_output_dir=tmp_path / "o", fits_dir=tmp_path / "f",
                n_processes=1, mast_url="http://127.0.0.1:9")
    args.update(kwargs)
    with pytest.raises(UsageError):
        TGLC_Downloader(**args)


def test_demo_archive_runs_the_whole_pipeline(tmp_path):
    with TGLC_Downloader(sector=5, tglc_data_path=tmp_path / "data", hdf5_output_dir=tmp_path / "out",
                         fits_dir=tmp_path / "fits", n_processes=1, mast_url="demo", demo_size=150) as downloader:
        assert downloader.mast_url.startswith("http://127.0.0.1:")
        summary = downloader.download_sector(tiny=True)
    assert summary.failures == [] and summary.converted == 100
    catalog = Table.read(tmp_path / "data" / "s0005" / "s0005-catalog_tiny.hdf5", path="catalog")
    found = assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    assert sum(len(v) for v in found.values()) == 100
    assert np.all(np.asarray(catalog["sector"]) == 5)
