"""The command line and build_dataset.sh, run as a user runs them: real subprocesses, real HTTP."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.table import Table

from conftest import REPO, assert_contract, run_env

SCRIPT = str(REPO / "build_parent_sample.py")


def _run(args, cwd, **env):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=run_env(**env), capture_output=True,
                          text=True, timeout=600)


def _paths(tmp_path):
    return ["--tglc_data_path", str(tmp_path / "data"), "--hdf5_output_path", str(tmp_path / "out"),
            "--fits_output_path", str(tmp_path / "fits")]


def test_help_explains_every_flag(tmp_path):
    result = _run(["--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("-s", "--sector", "--tglc_data_path", "--hdf5_output_path", "--fits_output_path", "-n",
                 "--n_processes", "-t", "--tiny", "--mast-url", "--demo", "--connections", "--max-attempts",
                 "--overwrite", "--clean-fits"):
        assert flag in result.stdout, flag


def test_full_sector_build_with_two_processes(tmp_path):
    """A full (not tiny) build of a 2,000-object synthetic sector, through the CLI."""
    from tglc_builder.demo import LocalArchive

    with LocalArchive(sector=23, n=2000, seed=3) as archive:
        result = _run(["-s", "23", *_paths(tmp_path), "--n_processes", "2", "--mast-url", archive.url], tmp_path)
        assert result.returncode == 0, result.stderr
        expected = archive.sector.expected_catalog_indices()
    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog.hdf5", path="catalog")
    assert len(catalog) == len(expected) > 1500
    assert catalog["gaiadr3_id"].tolist() == archive.sector.gaia_ids[expected].tolist()
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_short_flags_and_environment_url(archive, tmp_path):
    result = _run(["-s", "23", *_paths(tmp_path), "-n", "2", "-t"], tmp_path, TGLC_MAST_URL=archive.url)
    assert result.returncode == 0, result.stderr
    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    assert len(catalog) == 100
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_demo_flag(tmp_path):
    result = _run(["-s", "23", *_paths(tmp_path), "-n", "1", "--tiny", "--demo", "--demo-size", "120"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "TGLC").glob("healpix=*/*.hdf5"))) > 0


@pytest.mark.parametrize("args, message", [
    (["-s", "abc"], "'abc' is not a sector or a range"),
    (["-s", "0"], "sectors run from 1 to 9999"),
    (["-s", "23", "-n", "0"], "must be at least 1"),
])
def test_bad_numbers_exit_2_without_traceback(tmp_path, args, message):
    result = _run([*args, *_paths(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_sector_the_archive_lacks(archive, tmp_path):
    result = _run(["-s", "24", *_paths(tmp_path), "--mast-url", archive.url, "--tiny"], tmp_path)
    assert result.returncode == 2
    assert "404" in result.stderr and "sector 24" in result.stderr and "Traceback" not in result.stderr


def test_unwritable_output(archive, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["-s", "23", "--tglc_data_path", str(tmp_path / "data"), "--hdf5_output_path", str(blocker / "out"),
            "--fits_output_path", str(tmp_path / "fits"), "--mast-url", archive.url, "--tiny"]
    result = _run(args, tmp_path)
    assert result.returncode == 2
    assert "hdf5_output_path" in result.stderr and str(blocker / "out") in result.stderr
    assert "Traceback" not in result.stderr


def _shell_script_copy(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "build_dataset.sh", work)
    shutil.copy(REPO / "build_parent_sample.py", work)
    return work


def test_build_dataset_sh(archive, tmp_path):
    work = _shell_script_copy(tmp_path)
    env = run_env(PYTHON=sys.executable)
    result = subprocess.run(["bash", "build_dataset.sh", "--mast-url", archive.url, "-n", "2"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    catalog = Table.read(work / "tglc_data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    assert_contract(work / "tglc_data" / "s0023" / "MultimodalUniverse", catalog,
                    work / "tglc_data" / "s0023" / "fits_lcs")


def test_build_dataset_sh_fails_loudly(tmp_path):
    work = _shell_script_copy(tmp_path)
    env = run_env(PYTHON=sys.executable)
    result = subprocess.run(["bash", "build_dataset.sh", "--mast-url", "http://127.0.0.1:9", "--max-attempts", "1"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "cannot fetch" in result.stderr


def test_the_command_loads_healpy_without_its_plotting_and_lifts_the_block(tmp_path):
    """The command's process imports healpy without matplotlib (~0.5 s before the first download); pixels are the
    same, and matplotlib can still be imported afterwards. A process that imported matplotlib first is left alone."""
    code = (
        "import sys; from tglc_builder import cli; cli.import_healpy_without_plotting(); "
        "assert 'matplotlib' not in sys.modules and not hasattr(sys.modules['healpy'], 'mollview'); "
        "import healpy, numpy as np; "
        "print(healpy.ang2pix(16, np.array([332.6683820898813, 0.0]), np.array([-65.51867725247051, 90.0]), "
        "lonlat=True, nest=True).tolist()); "
        "import matplotlib; print('matplotlib', bool(matplotlib.__version__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    whole = subprocess.run([sys.executable, "-c", "import healpy, numpy as np; print(healpy.ang2pix(16, "
                            "np.array([332.6683820898813, 0.0]), np.array([-65.51867725247051, 90.0]), lonlat=True, "
                            "nest=True).tolist())"], capture_output=True, text=True, env=run_env(), cwd=tmp_path)
    assert out.stdout.splitlines() == [whole.stdout.strip(), "matplotlib True"]
    first = ("import sys, matplotlib; from tglc_builder import cli; cli.import_healpy_without_plotting(); "
             "import healpy; assert hasattr(healpy, 'mollview')")
    assert subprocess.run([sys.executable, "-c", first], env=run_env(), cwd=tmp_path).returncode == 0


def test_the_console_script_is_the_same_command(tmp_path):
    script = shutil.which("tglc-build", path=str(Path(sys.executable).parent))
    assert script is not None, "tglc-build is installed with the package (pip install -e .)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, env=run_env(), cwd=tmp_path)
    ours = subprocess.run([sys.executable, str(REPO / "build_parent_sample.py"), "--help"], capture_output=True,
                          text=True, env=run_env(), cwd=tmp_path)
    assert out.returncode == 0 == ours.returncode
    assert out.stdout.startswith("usage: tglc-build ") and ours.stdout.startswith("usage: build_parent_sample.py ")
    # the same text, but for the program's name (and the usage's wrapping around it)
    assert re.sub("tglc-build(?!er)", "build_parent_sample.py", out.stdout).split() == ours.stdout.split()
