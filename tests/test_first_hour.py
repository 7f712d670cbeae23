"""What a new user meets in the first hour (issue 26), run as the user runs it: real subprocesses, real HTTP."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, run_env

SCRIPT = str(REPO / "build_parent_sample.py")
WITHOUT = str(REPO / "tests" / "_without.py")


def _run(args, cwd, without=None, **env):
    prefix = [WITHOUT, ",".join(without)] if without else []
    return subprocess.run([sys.executable, *prefix, SCRIPT, *args], cwd=cwd, env=run_env(**env),
                          capture_output=True, text=True, timeout=600)


def test_the_blocker_hides_a_package_for_real(tmp_path):
    """The test's own tool: under _without.py, find_spec sees no hats and ``import hats`` fails as uninstalled."""
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util\nprint(importlib.util.find_spec('hats'), importlib.util.find_spec('h5py')"
                     " is not None)\ntry:\n    import hats.io\nexcept ModuleNotFoundError as e:\n    print(e.name)\n")
    out = subprocess.run([sys.executable, WITHOUT, "hats", str(probe)], capture_output=True, text=True,
                         env=run_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "True", "hats"]


@pytest.mark.parametrize("hidden, args, needed_by, extra", [
    (["hats"], ["--format", "both"], "--format both", "hats"),
    (["lsdb"], ["--format", "hats"], "--format hats", "hats"),
    (["distributed"], ["--scheduler", "local"], "--scheduler", "dask"),
    (["s3fs"], ["--mast-url", "s3://stpubdata/tess/public/hlsp/tglc"], "reading s3://stpubdata/tess/public/hlsp/tglc",
     "s3"),
])
def test_a_missing_extra_stops_before_anything_is_fetched(archive, tmp_path, hidden, args, needed_by, extra):
    data = tmp_path / "data"
    before = archive.request_count()
    result = _run(["-s", "23", "--tglc_data_path", str(data), "--mast-url", archive.url, "--tiny", *args], tmp_path,
                  without=hidden)
    assert result.returncode == 2
    name = hidden[0]
    assert result.stderr == (f"error: {needed_by} needs the [{extra}] extra (no module named {name!r}): "
                             f"pip install \"tglc-builder[{extra}]\" (or pip install -e \".[{extra}]\" in a clone)\n")
    assert archive.request_count() == before
    assert list(tmp_path.iterdir()) == []  # nothing under tglc_data_path, not even the folder


def test_the_hats_extras_need_no_hats_import(archive, tmp_path):
    """The margin cache and the index are written with hats' own functions: hats-import is for the tests only."""
    result = _run(["-s", "23", "--tglc_data_path", str(tmp_path / "data"), "--mast-url", archive.url, "--tiny",
                   "--format", "hats", "--hats-extras"], tmp_path, without=["hats_import"])
    assert result.returncode == 0, result.stderr
    margins = [p for p in tmp_path.rglob("hats.properties") if "margin" in p.read_text()]
    assert len(margins) == 1, result.stderr


def test_the_s3_extra_read_from_the_environment_url(tmp_path):
    """$TGLC_MAST_URL naming a bucket needs [s3] too."""
    result = _run(["-s", "23", "--tglc_data_path", str(tmp_path / "data"), "--tiny"], tmp_path, without=["botocore"],
                  TGLC_MAST_URL="s3://bucket/tglc")
    assert result.returncode == 2
    assert result.stderr.startswith("error: reading s3://bucket/tglc needs the [s3] extra (no module named "
                                    "'botocore'): pip install \"tglc-builder[s3]\"")
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_archive_leaves_no_empty_folders(tmp_path):
    """Port 1 refuses at once: the build fails before writing anything, and the folders it made are gone again; a
    folder the user made is kept."""
    result = _run(["-s", "23", "--mast-url", "http://127.0.0.1:1", "--max-attempts", "1", "--tiny"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "127.0.0.1:1" in result.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # no ./tglc_data/s0023/{fits_lcs,MultimodalUniverse}
    mine = tmp_path / "mine"
    mine.mkdir()
    result = _run(["-s", "23", "--tglc_data_path", str(mine), "--hats_output_path", str(tmp_path / "h" / "hats"),
                   "--format", "both", "--mast-url", "http://127.0.0.1:1", "--max-attempts", "1"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert list(tmp_path.iterdir()) == [mine] and list(mine.iterdir()) == []


def _sibling_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "rerun with --format both" in line]


def test_a_format_left_behind_is_named_once(archive, tmp_path):
    """`--format both --tiny`, then a full `--format hdf5` build: the HATS folder (100 rows) is said to be behind the
    HDF5 (300), once; `--format both` brings it up to date and the warning goes."""
    paths = ["--tglc_data_path", str(tmp_path / "data"), "--mast-url", archive.url]
    hats = tmp_path / "data" / "s0023" / "hats"
    first = _run(["-s", "23", *paths, "--format", "both", "--tiny"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert _sibling_warnings(first.stderr) == []
    full = _run(["-s", "23", *paths, "--format", "hdf5"], tmp_path)
    assert full.returncode == 0, full.stderr
    (line,) = _sibling_warnings(full.stderr)
    n = len(archive.sector.expected_catalog_indices())
    files = len(list((tmp_path / "data" / "s0023" / "MultimodalUniverse").rglob("*.hdf5")))
    differ = int(line.split("light curves (")[1].split()[0])
    assert 0 < differ <= files
    assert line.endswith(f"{hats} (HATS, from an earlier build) is behind this build: it lacks {n - 100} of its {n} "
                         f"light curves ({differ} of {files} files differ); rerun with --format both to bring it up "
                         "to date")
    assert "will be written again" not in full.stderr
    both = _run(["-s", "23", *paths, "--format", "both"], tmp_path)
    assert both.returncode == 0, both.stderr
    again = _run(["-s", "23", *paths, "--format", "hdf5"], tmp_path)
    assert again.returncode == 0 and _sibling_warnings(both.stderr + again.stderr) == []
    import pyarrow.parquet as pq
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in hats.rglob("Npix=*.parquet"))
    assert rows == n


def test_a_demo_rerun_reuses_its_listings_and_a_log_file_gets_lines_not_bars(tmp_path):
    """Each demo run serves on another port; the listings fetched by the first are still reused by the second. With
    stderr not a terminal there is no tqdm bar (no carriage return), but a log line at each tenth of the build."""
    args = ["-s", "23", "--demo", "--demo-size", "150", "--tglc_data_path", str(tmp_path / "data")]
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("Fetching http://127.0.0.1:") == 2
    assert "\r" not in first.stderr and "it/s" not in first.stderr and "lc/s" not in first.stderr
    steps = [line.split("Building: ", 1)[1].split("%")[0] for line in first.stderr.splitlines()
             if "tglc_builder.progress: Building: " in line]
    assert steps[-1] == "100" and len(steps) == len(set(steps)) >= 3
    assert all(int(a) < int(b) for a, b in zip(steps, steps[1:]))
    card = (tmp_path / "data" / "s0023" / "MultimodalUniverse" / "README.md").read_text()
    prose = card.split("\n---\n", 1)[1]
    assert prose.lstrip().startswith("# TESS-Gaia Light Curves (TGLC), sector 23 (synthetic demo data)\n")
    assert "**This is synthetic demo data, not TESS data.**" in prose and "none came from MAST" in prose
    assert "from the TGLC high-level science product at MAST" not in prose
    second = _run(args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Fetching" not in second.stderr
    assert second.stderr.count("(complete, as recorded in its manifest)") == 2


def test_a_terminal_still_gets_the_bar(tmp_path):
    """The same command with stderr on a terminal (a pty) draws tqdm's bar and logs no percentages."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws nothing 0 columns wide
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run([sys.executable, SCRIPT, "-s", "23", "--demo", "--demo-size", "120", "--tiny",
                               "--tglc_data_path", str(tmp_path / "data")], cwd=tmp_path, env=run_env(),
                              stdout=subprocess.DEVNULL, stderr=slave, timeout=600)
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, text
    assert re.search("\r(?!\n)", text) and "Building: 100%|" in text  # a bar redrawn in place (not a pty's \r\n)
    assert "tglc_builder.progress" not in text


def test_version_usage_and_help_name_the_program_run(tmp_path):
    """tglc-build says tglc-build (in --version and in a usage error), build_parent_sample.py says its own name; the
    help names the seed's columns."""
    import shutil
    from pathlib import Path

    from tglc_builder import __version__

    script = shutil.which("tglc-build", path=str(Path(sys.executable).parent))
    assert script is not None
    version = subprocess.run([script, "--version"], capture_output=True, text=True, env=run_env(), cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"tglc-build {__version__}\n")
    usage = subprocess.run([script, "-s", "1", "-n", "x"], capture_output=True, text=True, env=run_env(),
                           cwd=tmp_path)
    assert usage.returncode == 2
    assert usage.stderr.splitlines()[0].startswith("usage: tglc-build ")
    assert usage.stderr.splitlines()[-1] == ("tglc-build: error: argument -n/--n_processes/--n-processes: 'x' is not "
                                             "an integer")
    ours = _run(["--version"], tmp_path)
    assert ours.stdout == f"build_parent_sample.py {__version__}\n"
    help_text = " ".join(_run(["--help"], tmp_path).stdout.split())
    assert ("'seed': the seed's five series (time, psf_flux, aper_flux, tess_flags, tglc_flags) and two errors "
            "(psf_flux_err, aper_flux_err)") in help_text


def test_a_demo_of_a_sector_tess_lacks_warns(tmp_path):
    result = _run(["-s", "999", "--demo", "--demo-size", "120", "--tiny", "--tglc_data_path", str(tmp_path / "d")],
                  tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "Demo: TESS has no sector 999 (its sectors run to 107 as this version knows); the demo makes up a synthetic "
        "sector of any number, but MAST has none to build")
    ok = _run(["-s", "23", "--demo", "--demo-size", "120", "--tiny", "--tglc_data_path", str(tmp_path / "e")],
              tmp_path)
    assert ok.returncode == 0 and "TESS has no sector" not in ok.stderr


def test_build_dataset_sh_without_the_package_says_how_to_install(tmp_path):
    """An interpreter without the packages (site-packages off: -S): one line saying how to install, no traceback."""
    import shutil

    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(REPO / "build_dataset.sh", work)
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    result = subprocess.run(["bash", str(work / "build_dataset.sh"), "--demo"], cwd=tmp_path, capture_output=True,
                            text=True, env=run_env(PYTHON=str(bare)), timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"error: {bare} cannot import tglc-builder (or is not found): activate the environment "
                             f"it is installed in, or install it: python3 -m venv .venv && . .venv/bin/activate && "
                             f"pip install -e \"{work}\"\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare-python", "clone"]


def test_build_dataset_sh_writes_beside_itself(tmp_path):
    """Run from another folder, the script's ./tglc_data is still the one beside it."""
    import shutil

    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(REPO / "build_dataset.sh", work)
    shutil.copy(REPO / "build_parent_sample.py", work)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(["bash", str(work / "build_dataset.sh"), "--demo", "--demo-size", "120", "-n", "1"],
                            cwd=elsewhere, capture_output=True, text=True, env=run_env(PYTHON=sys.executable),
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert list(elsewhere.iterdir()) == []
    assert len(list((work / "tglc_data" / "s0023" / "MultimodalUniverse" / "TGLC").glob("healpix=*/*.hdf5"))) > 0


def test_the_readme_troubleshooting_lists_what_the_command_says(tmp_path):
    """The README's table quotes the messages as the command prints them (their fixed opening words)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    extra = _run(["-s", "23", "--format", "both", "--demo"], tmp_path, without=["hats"]).stderr.strip()
    assert extra.startswith("error: --format both needs the [hats] extra (no module named 'hats'): pip install "
                            "\"tglc-builder[hats]\"")
    assert extra.split(" (or pip")[0] in section
    unreachable = _run(["-s", "23", "--mast-url", "http://127.0.0.1:1", "--max-attempts", "1"], tmp_path)
    assert unreachable.stderr.splitlines()[-1].startswith("error: cannot ")
    usage = _run(["-s", "1", "-n", "x"], tmp_path).stderr.splitlines()[-1]
    assert usage == ("build_parent_sample.py: error: argument -n/--n_processes/--n-processes: 'x' is not an "
                     "integer")
    assert "error: argument -n/--n_processes/--n-processes: 'x' is not an integer" in section
    sector = _run(["-s", "x"], tmp_path).stderr.splitlines()[-1]
    assert sector.startswith("error: sector 'x': 'x' is not a sector or a range") and sector[:40] in section
    for text in ("interrupted: rerun the same command to resume", "is in use by another build; wait for it to finish "
                 "or choose other folders", "rerun with --format both", "The build stopped early: no space left on",
                 "cannot import tglc-builder"):
        assert text in section, text
