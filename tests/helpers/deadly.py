"""A demo sector on a local mirror, with one object whose FITS file kills the worker that reads it (through
``_tasks.build_unit_with_a_deadly_file``), and what the tests of killed workers check afterwards."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
from astropy.table import Table

from tglc_builder import run
from tglc_builder.arguments import BuildArguments
from tglc_builder.demo import SyntheticSector, write_mirror
from tglc_builder.report import BuildSummary, write_failure_report
from tglc_builder.sources.local import LocalSource


def deadly_sector(tmp_path: Path, monkeypatch) -> tuple[BuildArguments, LocalSource, Table, int]:
    """The build's arguments (output in ``tmp_path/out``), its source, its catalog and the deadly object's id, set in
    ``TGLC_TEST_DEADLY_GAIA`` before any worker starts (they inherit it)."""
    mirror = write_mirror(tmp_path / "mirror", SyntheticSector(23, 120, 4))
    args = BuildArguments(23, tmp_path / "data", hdf5_output_dir=tmp_path / "out", fits_dir=tmp_path / "fits",
                          mast_url=str(mirror), rows_per_shard=20)
    source = LocalSource(str(mirror))
    catalog = run.make_catalog(args, source, tiny=False, save=False)
    deadly = int(catalog["gaiadr3_id"][len(catalog) // 3])
    monkeypatch.setenv("TGLC_TEST_DEADLY_GAIA", str(deadly))
    return args, source, catalog, deadly


def failure_rows(tmp_path: Path, summary: BuildSummary) -> list[dict[str, str]]:
    """The rows of the failure report the build writes for ``summary``."""
    report = tmp_path / "failures.csv"
    write_failure_report(report, summary.failures)
    with open(report, newline="") as f:
        return list(csv.DictReader(f))


def written_ids(folder: Path) -> list[int]:
    """The ids in every HDF5 file under ``folder``, sorted."""
    ids = []
    for file in folder.rglob("*.hdf5"):
        with h5py.File(file, "r") as h5:
            ids += h5["gaiadr3_id"][()].tolist()
    return sorted(ids)
