"""Hostile files in a mirror, judged within bounded memory before they are trusted: a 54 KB light curve whose table
header claims 100,000,000 fields and a sparse 3 GB file. A real build runs in a subprocess whose processes (the
driver and its two workers) may map at most :data:`LIMIT` bytes (``RLIMIT_AS``): each hostile file is exactly one
failure row naming it, every other light curve is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_versions import write_mirror
from tglc_builder.demo import SyntheticSector
from tglc_builder.reader import InvalidTGLCFile, ReadBuffer, read_tglc

# Address space per process (3 GB). A normal build of this sector maps about 1-1.5 GB per process, mostly libraries
# and the thread stacks and malloc arenas of pyarrow's and the build's thread pools (at 1.5 GB, one run in three
# failed to start a thread or map a library), while the reader without its limits needs more than 3 GB (2e8 strings
# for TFIELDS = 1e8, ~12 GB; a buffer twice the 3 GB file's size; reading that file whole) and then loses the other
# rows of its work unit (measured at this limit: 7 of 10 written, neither hostile file named).
LIMIT = 3 << 30
SECTOR = 23

BUILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # inherited by the workers the build spawns
from build_parent_sample import TGLC_Downloader

root = sys.argv[2]
with TGLC_Downloader(23, root + "/data", root + "/out", root + "/fits", 2, root + "/mirror") as downloader:
    summary = downloader.download_sector()
print(json.dumps({"converted": summary.converted, "failures": [[f.gaiadr3_id, f.reason] for f in summary.failures]}))
"""


def _hostile_mirror(root):
    sector = SyntheticSector(SECTOR, 12, seed=31)
    files = {sector.relpath(i): sector.fits_bytes(i) for i in range(sector.n)}
    targets = {int(g): (int(t), float(ra), float(dec))
               for g, t, ra, dec in zip(sector.gaia_ids, sector.tic_ids, sector.ra, sector.dec)}
    many = sector.relpath(3)
    card = b"TFIELDS =                    9"
    assert files[many].count(card) == 1
    files[many] = files[many].replace(card, b"TFIELDS =            100000000")  # still 54 KB
    write_mirror(root / "mirror", SECTOR, files, targets)
    huge = root / "mirror" / sector.relpath(7)
    os.truncate(huge, 3 << 30)  # sparse: 3 GB long, a few blocks on disk
    assert huge.stat().st_size == 3 << 30 and huge.stat().st_blocks * 512 < 1 << 20
    return sector, many, sector.relpath(7)


def _build(root, limit: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", BUILD, str(limit), str(root)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert run.returncode in (0, 1) and lines, run.stderr[-3000:]  # 1: some objects failed
    return json.loads(lines[-1])


def test_hostile_files_are_one_failure_row_each_under_a_memory_limit(tmp_path):
    sector, many, huge = _hostile_mirror(tmp_path)
    result = _build(tmp_path, LIMIT)
    reasons = {gaia: reason for gaia, reason in result["failures"]}
    assert result["converted"] == sector.n - 2 and sorted(reasons) == sorted(
        int(sector.gaia_ids[i]) for i in (3, 7))
    assert reasons[int(sector.gaia_ids[3])].endswith(
        f"{tmp_path / 'mirror' / many}: its table header says TFIELDS = 100000000 (FITS allows 1 to 999); "
        "not a TGLC light curve")
    assert reasons[int(sector.gaia_ids[7])].endswith(
        f"{tmp_path / 'mirror' / huge}: 3,221,225,472 bytes, larger than any TGLC light curve (at most 67,108,864 "
        "bytes are read); not a TGLC light curve")


def test_the_limit_lets_a_normal_build_run(tmp_path):
    """The limit is not what makes the test pass: the same sector without the hostile files builds whole in it."""
    sector = SyntheticSector(SECTOR, 12, seed=31)
    write_mirror(tmp_path / "mirror", SECTOR, {sector.relpath(i): sector.fits_bytes(i) for i in range(sector.n)},
                 {int(g): (int(t), float(ra), float(dec))
                  for g, t, ra, dec in zip(sector.gaia_ids, sector.tic_ids, sector.ra, sector.dec)})
    assert _build(tmp_path, LIMIT) == {"converted": sector.n, "failures": []}


@pytest.mark.parametrize("value", ["0", "1000", "-3", "'nine'", "9.5"])
def test_table_fields_outside_fits_limits_are_refused_before_allocating(tmp_path, value):
    data = SyntheticSector(SECTOR, 2, seed=32).fits_bytes(0)
    path = tmp_path / "bad.fits"
    path.write_bytes(data.replace(b"TFIELDS =                    9", f"TFIELDS = {value:>20}".encode()))
    with pytest.raises(InvalidTGLCFile, match=r"bad\.fits: its table header says TFIELDS = "):
        read_tglc(path)


def test_an_oversized_file_is_refused_from_its_size(tmp_path):
    path = tmp_path / "big.fits"
    path.write_bytes(SyntheticSector(SECTOR, 2, seed=33).fits_bytes(0))
    os.truncate(path, (64 << 20) + 2880)
    for kwargs in ({}, {"buffer": ReadBuffer()}):
        with pytest.raises(InvalidTGLCFile, match=r"big\.fits: 67,111,744 bytes, larger than any TGLC light curve"):
            read_tglc(path, **kwargs)
