"""No silent loss (issue 10): every point tried for real, as a hostile environment would.

Builds run as real processes (``build_parent_sample.py``) against the local archive on 127.0.0.1. A full disk is a
file-size limit (``RLIMIT_FSIZE``, so writes past it fail with EFBIG), Ctrl-C is SIGINT to the build's process group,
bit rot is bytes flipped inside a chunk of a finished shard. Nothing of the builder is mocked.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from astropy.table import Table

from conftest import REPO, assert_contract, assert_same_data, hdf5_values, run_env
from tglc_builder import layout
from tglc_builder.folders import exclusive
from tglc_builder.demo import LocalArchive, SyntheticSector
from tglc_builder.formats.hdf5 import COMPLETE

SCRIPT = str(REPO / "build_parent_sample.py")
N, SEED = 150, 13  # the sector most tests build: ~150 light curves in ~70 shard files
FITS_SIZE = 57_600  # the largest light-curve file of a sector-23 synthetic sector (bytes)
SHARD_NAME = re.compile(r"^\d{3}-of-\d{3}\.hdf5$")
SUMMARY = re.compile(r"Sector \d+: \d+ light curves? in the output \((?P<complete>\d+) already there, "
                     r"(?P<converted>\d+) "
                     r"written now into (?P<files>\d+) files?(?:, of which (?P<carried>\d+) copied from earlier "
                     r"files)?\); FITS files: (?P<downloaded>\d+) downloaded, (?P<present>\d+) already on disk; "
                     r"(?P<failed>\d+) failed")


# ---- helpers ----------------------------------------------------------------------------------------------------
def _args(root: Path, url: str, *extra: str, sector: int = 23) -> list[str]:
    return [sys.executable, SCRIPT, "-s", str(sector), "--tglc_data_path", str(root / "data"),
            "--hdf5_output_path", str(root / "out"), "--fits_output_path", str(root / "fits"), "--mast-url", url,
            *extra]


def _file_size_limit(size: int | None):
    """preexec_fn of a build whose every process may write files of at most ``size`` bytes (then EFBIG)."""
    if size is None:
        return None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    return limit


def _run(root: Path, url: str, *extra: str, fsize: int | None = None, timeout: float = 300,
         **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_args(root, url, *extra, **kwargs), env=run_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_file_size_limit(fsize))


def _start(root: Path, url: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A build in its own process group; its stderr goes to a file that the test reads while it runs."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"stderr-{time.monotonic_ns()}.txt"
    with open(log, "w") as err:
        process = subprocess.Popen(_args(root, url, *extra), env=run_env(), stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    return process, log


def _ctrl_c(process: subprocess.Popen, failure: str, timeout: float = 10.0, log: Path | None = None) -> float:
    """SIGINT to the build's process group; the seconds it took to end (fail, after killing it, past ``timeout``,
    with the end of ``log`` when given)."""
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        members = _describe(_group_members(process.pid))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"{failure}; {members}" + (f"; {log.read_text()[-2000:]}" if log is not None else ""))
    return time.monotonic() - started


def _wait_for_text(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"the build ended ({process.returncode}) before {text!r}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _assert_group_gone(pgid: int, within: float = 3.0) -> None:
    """No live process of the group is left (zombies are dead: init reaps the orphans among them a little later)."""
    deadline = time.monotonic() + within
    while _group_members(pgid):
        assert time.monotonic() < deadline, f"processes left behind: {_describe(_group_members(pgid))}"
        time.sleep(0.05)


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
            out.append(f"{pid}: {cmdline!r}")
        except OSError:
            pass
    return out


def _assert_unlocked(root: Path) -> None:
    """The build's folders can be locked at once: the build that held them is gone and released them."""
    folders = [root / "data" / "s0023", root / "fits", root / "out"]
    with exclusive([f for f in folders if f.exists()]):
        pass


def _debris(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".part-" in p.name]


def _shards(out: Path) -> list[Path]:
    return sorted((out / "TGLC").glob("healpix=*/*.hdf5"))


def _assert_only_whole_files(out: Path, reference: Path) -> None:
    """Every file under ``out/TGLC`` has a shard's final name, is marked whole, reads back completely (every
    Fletcher32 checksum) and equals the reference build's file of the same name value for value."""
    expected = hdf5_values(reference)
    for path in (out / "TGLC").rglob("*") if (out / "TGLC").exists() else ():
        if path.is_dir():
            assert path.name.startswith("healpix="), path
            continue
        assert SHARD_NAME.match(path.name), f"not a shard's final name: {path}"
        with h5py.File(path, "r") as h5:
            mark = json.loads(h5.attrs[COMPLETE])
            values = {name: h5[name][()] for name in h5}  # raises on a bad checksum
        n = len(values["gaiadr3_id"])
        assert mark["rows"] == n and mark["sector"] == 23, path
        assert all(len(v) == n for v in values.values()), path
        assert n and values["n_cadences"].min() >= 1 and (values["RA"] != 0).all(), path
        reference_values = expected[str(path.relative_to(out))]
        for name, value in values.items():
            assert value.tobytes() == reference_values[name].tobytes(), (path, name)


def _failures(root: Path) -> list[dict[str, str]]:
    report = root / "data" / "s0023" / "failures.csv"
    if not report.exists():
        return []
    with open(report) as f:
        return list(csv.DictReader(f))


def _summary(stderr: str) -> dict[str, int]:
    matches = list(SUMMARY.finditer(stderr))
    assert matches, f"no summary line in {stderr[-2000:]}"
    match = matches[-1]
    return {key: int(value or 0) for key, value in match.groupdict().items()}


def _tracebacks(stderr: str) -> list[str]:
    """Python tracebacks in a build's stderr (h5py's destructors' included: a shard that fails is discarded
    without them)."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [block[:600] for block in blocks if block.strip()]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _catalog(root: Path) -> Table:
    return Table.read(root / "data" / "s0023" / "s0023-catalog.hdf5", path="catalog")


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def _missing_object(sector: SyntheticSector) -> tuple[int, str]:
    """An object of the target list that the archive does not serve (404), and its canonical path."""
    served = set(sector.gaia_ids.tolist())
    text = sector.target_list().decode().splitlines()
    header = [c.strip() for c in text[0].lstrip("#").split(",")]
    column = header.index("GAIADR3_ID")
    absent = next(int(line.split(",")[column]) for line in text[1:] if int(line.split(",")[column]) not in served)
    return absent, layout.lc_relpath(absent, 23, 1, 1)


# ---- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive():
    with LocalArchive(sector=23, n=N, seed=SEED) as served:
        yield served


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    """An uninterrupted build of the module's archive (copy it before changing anything)."""
    root = tmp_path_factory.mktemp("reference")
    result = _run(root, archive.url, "-n", "2")
    assert result.returncode == 0, result.stderr
    return root


# ---- 1. disk full while writing -------------------------------------------------------------------------------------
def test_disk_full_while_writing_leaves_no_partial_shard(archive, reference, tmp_path):
    sizes = sorted(f.stat().st_size for f in _shards(reference / "out"))
    catalog_size = (reference / "data" / "s0023" / "s0023-catalog.hdf5").stat().st_size
    listing_size = max(f.stat().st_size for f in (reference / "data" / "s0023").iterdir())
    floor = max(FITS_SIZE, catalog_size, listing_size) + 2880  # FITS files, listings, the catalog still fit
    largest = sizes[-1]
    assert largest > floor + 10_000, "the sector's largest shard must outgrow a FITS file"
    # Shards are built largest first, so each limit stops the build at a different point of the largest shard's
    # writing: in the middle of its blocks, near its end (the last blocks, the flush at close), and at the very end
    # (reopening it to write the completion mark).
    # Each on one process (units in the driver's threads) and on two: a crash in the writer (HDF5 2.0 crashed
    # closing a file whose writes had failed) would kill the whole command, or a worker.
    limits = [max(floor, largest // 2), largest - 3000, largest - 200]
    root = tmp_path / "limited"
    for limit, processes in [(limit, processes) for limit in limits for processes in ("1", "2")]:
        result = _run(root, archive.url, "-n", processes, fsize=limit)
        context = f"limit {limit} B (largest shard {largest} B), -n {processes}: {result.stderr[-3000:]}"
        assert result.returncode == 1, context  # failures reported, not a crash (a signal: negative)
        assert not _tracebacks(result.stderr), context
        _assert_only_whole_files(root / "out", reference / "out")
        failures = _failures(root)
        assert failures, context
        written = {str(p.relative_to(root / "out")) for p in _shards(root / "out")}
        for failure in failures:
            assert failure["stage"] == "write", failure
            reason = failure["reason"]
            assert "file size limit" in reason or "no space left" in reason, failure
            named = re.search(r"on (\S+) writing (\d{3}-of-\d{3}\.hdf5)", reason)
            assert named, failure
            shard = Path(named.group(1)) / named.group(2)
            assert shard.parent.parent == root / "out" / "TGLC"
            assert str(shard.relative_to(root / "out")) not in written  # its rows failed: no file of them
        assert "no space left" in result.stderr or "file size limit" in result.stderr
        assert not _debris(root), context

    result = _run(root, archive.url, "-n", "2")  # space again
    assert result.returncode == 0, result.stderr
    assert not _failures(root)
    assert_same_data(reference / "out", root / "out")
    _assert_only_whole_files(root / "out", reference / "out")
    assert not _debris(root)


def test_format_both_on_a_full_hats_disk_fails_the_hats_rows_only(archive, reference, tmp_path):
    """--format both with a file-size limit that every HDF5 file fits under but the HATS writer's larger files do
    not (a full HATS disk): the rows written whole to HDF5 are reported as failed in HATS only, their HDF5 files
    are kept (whole, equal to an uninterrupted build's), and a rerun with space writes the HATS files from them."""
    pytest.importorskip("hats")
    sizes = sorted(f.stat().st_size for f in _shards(reference / "out"))
    catalog_size = (reference / "data" / "s0023" / "s0023-catalog.hdf5").stat().st_size
    listing_size = max(f.stat().st_size for f in (reference / "data" / "s0023").iterdir())
    limit = max(FITS_SIZE, catalog_size, listing_size, sizes[-1]) + 2880
    root = tmp_path / "both"
    both = ("-n", "1", "--format", "both", "--hats_output_path", str(root / "hats"))
    result = _run(root, archive.url, *both, fsize=limit)
    assert result.returncode == 1, result.stderr[-3000:]
    assert not _tracebacks(result.stderr)
    failures = _failures(root)
    assert failures, result.stderr[-3000:]
    written = {}
    for shard in _shards(root / "out"):
        with h5py.File(shard, "r") as h5:
            written.update({int(g): shard for g in h5["gaiadr3_id"][()]})
    for failure in failures:
        assert failure["stage"] == "write", failure
        assert failure["reason"].startswith("hats output: file size limit reached on "), failure
        assert failure["reason"].endswith("(the shard's hdf5 file is whole)"), failure
        assert int(failure["gaiadr3_id"]) in written, failure  # and it is: its HDF5 file is under its final name
    _assert_only_whole_files(root / "out", reference / "out")
    summary = _summary(result.stderr)
    assert summary["failed"] == len(failures)
    assert f"{len(failures)} failed ({len(failures)} of them whole in hdf5, failed in the other format only)" \
        in result.stderr
    assert not _debris(root)

    result = _run(root, archive.url, *both)  # space again: the HATS files, from the whole HDF5 files
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _failures(root)
    assert _summary(result.stderr)["carried"] >= len(failures)
    assert_same_data(reference / "out", root / "out")
    assert not _debris(root)

    # --verify on the finished pair of outputs catches what the formats' own checksums miss, and rewrites exactly
    # that: a Parquet footer whose TIC_ID statistics lie (a filtered read would skip the row group's rows), and a
    # byte of an HDF5 file outside its checksummed chunks
    import pyarrow.parquet as pq

    parquet = sorted((root / "hats").rglob("*.parquet"), key=lambda f: f.stat().st_size)[-1]
    meta = pq.read_metadata(parquet)
    tic = meta.schema.to_arrow_schema().get_field_index("TIC_ID")
    low = meta.row_group(0).column(tic).statistics.min
    data = parquet.read_bytes()
    at = data.rfind(int(low).to_bytes(8, "little", signed=True))
    assert at > len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # in the footer
    victim = max(_shards(root / "out"), key=lambda f: f.stat().st_size)
    covered = bytearray(victim.stat().st_size)
    with h5py.File(victim, "r") as h5:
        for name in h5:
            h5[name].id.chunk_iter(lambda c: covered.__setitem__(slice(c.byte_offset, c.byte_offset + c.size),
                                                                 b"\1" * c.size))
    outside = [i for i, c in enumerate(covered) if not c]
    originals = {parquet: data, victim: victim.read_bytes()}
    for file, where in ((parquet, at), (victim, outside[len(outside) // 2])):
        with open(file, "r+b") as f:
            f.seek(where)
            f.write(bytes([originals[file][where] ^ 0x01]))
    assert pq.read_metadata(parquet).row_group(0).column(tic).statistics.min == low ^ 1
    everything = [*_shards(root / "out"), *(root / "hats").rglob("*.parquet")]
    stamps = {f: f.stat().st_mtime_ns for f in everything}
    assert _run(root, archive.url, *both).returncode == 0  # a plain rerun trusts the marks
    assert {f for f in everything if f.stat().st_mtime_ns != stamps[f]} == set()
    result = _run(root, archive.url, *both, "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {f for f in everything if f.stat().st_mtime_ns != stamps[f]} == {parquet, victim}
    assert all(file.read_bytes() == original for file, original in originals.items())
    assert "do not match the SHA-256" in result.stderr


# ---- 2. listings complete or refused --------------------------------------------------------------------------------
def _listing_paths(sector: int = 23) -> tuple[str, str]:
    return layout.bulk_script_relpath(sector), layout.target_list_relpath(sector)


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_a_cut_listing_is_fetched_again(tmp_path, mode):
    from build_parent_sample import TGLC_Downloader

    bulk_relpath, targets_relpath = _listing_paths()
    with LocalArchive(sector=23, n=60, seed=SEED, listing_mode=mode, listing_cuts=2) as archive:
        downloader = TGLC_Downloader(23, tmp_path / "data", tmp_path / "out", tmp_path / "fits",
                                     mast_url=archive.url, max_attempts=3)
        catalog = downloader.create_sector_catalog()
        counts = archive._requests.copy()
        expected = archive.sector.expected_catalog_indices()
        assert counts[bulk_relpath] == 3 and counts[targets_relpath] == 3  # two cut answers each, then whole
        assert [int(g) for g in catalog["gaiadr3_id"]] == archive.sector.gaia_ids[expected].tolist()
        sector_dir = tmp_path / "data" / "s0023"
        bulk = sector_dir / Path(bulk_relpath).name
        assert bulk.read_bytes() == archive.sector.bulk_script()
        manifest = json.loads((sector_dir / (bulk.name + ".manifest.json")).read_text())
        assert manifest["size"] == len(bulk.read_bytes()) and len(manifest["sha256"]) == 64
        assert {"ETag", "Last-Modified"} <= set(manifest["validators"]), manifest

        # --refresh-listings fetches both again, whole copies or not
        TGLC_Downloader(23, tmp_path / "data", tmp_path / "out", tmp_path / "fits", mast_url=archive.url,
                        refresh_listings=True).create_sector_catalog()
        assert archive._requests[bulk_relpath] == 4 and archive._requests[targets_relpath] == 4
        counts = archive._requests.copy()

        # A cached copy cut at a line end no longer matches its manifest: it is fetched again, not reused.
        whole = bulk.read_bytes()
        bulk.write_bytes(whole[:whole.rfind(b"\n", 0, len(whole) // 2) + 1])
        again = downloader.create_sector_catalog()
        assert archive._requests[bulk_relpath] == counts[bulk_relpath] + 1
        assert archive._requests[targets_relpath] == counts[targets_relpath]  # the whole one is reused
        assert bulk.read_bytes() == whole and len(again) == len(catalog)

        # A copy without its manifest (e.g. left by an older version) is not trusted either.
        (sector_dir / (bulk.name + ".manifest.json")).unlink()
        downloader.create_sector_catalog()
        assert archive._requests[bulk_relpath] == counts[bulk_relpath] + 2
        assert not archive.fits_requests()


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_a_listing_that_stays_cut_is_refused(tmp_path, mode):
    """Cut as often as the build tries (or, without Content-Length or chunks, never provably whole): exit 2, one
    line naming the listing, nothing downloaded."""
    with LocalArchive(sector=23, n=60, seed=SEED, listing_mode=mode, listing_cuts=3) as archive:
        result = _run(tmp_path, archive.url, "--max-attempts", "3", timeout=120)
        assert result.returncode == 2, result.stderr
        errors = _error_lines(result.stderr)
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert Path(_listing_paths()[0]).name in errors[0] and "whole" in errors[0], errors
        assert not archive.fits_requests()
    assert not (tmp_path / "data" / "s0023" / "s0023-catalog.hdf5").exists()
    assert not _debris(tmp_path)


def test_listings_that_disagree_are_refused(tmp_path):
    """A listing whole by HTTP but cut at the source (a mirror's copy cut at a line end): the two listings then
    disagree by more than 5%, and the build stops naming both counts and both files."""
    from tglc_builder.demo import write_mirror

    mirror = write_mirror(tmp_path / "mirror", SyntheticSector(23, 60, SEED))
    bulk = mirror / _listing_paths()[0]
    text = bulk.read_bytes()
    bulk.write_bytes(text[:text.rfind(b"\n", 0, len(text) // 2) + 1])
    result = _run(tmp_path, str(mirror), timeout=120)
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "disagree" in errors[0] and bulk.name in errors[0] and "s0023.csv" in errors[0], errors
    assert re.search(r"\d+ of the \d+ objects of the target list", errors[0]), errors
    assert not (tmp_path / "out" / "TGLC").exists()


# ---- 3. interrupts ---------------------------------------------------------------------------------------------------
def test_ctrl_c_at_random_moments(reference, tmp_path):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    root = tmp_path / "build"
    interrupted = 0
    with LocalArchive(sector=23, n=N, seed=SEED, latency=0.05) as archive:
        for run in range(10):
            n = "1" if run % 4 == 3 else "2"
            # Every third run starts from the FITS files alone (the whole sector to convert), every third resumes
            # the interrupted one, every third rewrites it all (--overwrite: rows carried from the earlier files).
            if run % 3 == 0 and (root / "out").exists():
                shutil.rmtree(root / "out")
            process, log = _start(root, archive.url, "-n", n, "--connections", "4",
                                  *(["--overwrite"] if run % 3 == 2 else []))
            _wait_for_text(log, "Plan:", process)
            # The workers are up by the plan (Executor.warm_up): a build then takes ~1 s when its FITS files are
            # on disk (most runs here), ~3 s when it downloads them.
            delay = rng.uniform(0.05, 0.9)
            time.sleep(delay)
            context = f"run {run} (-n {n}, SIGINT {delay:.2f} s after the plan; seed {seed})"
            took = _ctrl_c(process, f"{context}: still running 10 s after Ctrl-C")
            stderr = log.read_text()
            assert process.returncode in (130, 0), f"{context}: {stderr[-3000:]}"
            interrupted += process.returncode == 130
            if process.returncode == 130:
                assert "rerun the same command" in stderr, context
            assert "Traceback" not in stderr, f"{context}: {stderr[-3000:]}"
            _assert_group_gone(process.pid)
            _assert_unlocked(root)
            assert not _debris(root), f"{context}: {_debris(root)}"
            assert took < 10, context
            _assert_only_whole_files(root / "out", reference / "out")

        result = _run(root, archive.url, "-n", "2")
    assert interrupted >= 5, f"only {interrupted} of 10 builds were still running when interrupted (seed {seed})"
    assert result.returncode == 0, result.stderr
    assert_same_data(reference / "out", root / "out")
    assert not _debris(root)


def test_a_second_ctrl_c_ends_the_build_at_once(tmp_path):
    rng = random.Random()
    with LocalArchive(sector=23, n=N, seed=SEED, latency=0.05) as archive:
        for n in ("2", "1"):
            root = tmp_path / f"n{n}"
            process, log = _start(root, archive.url, "-n", n, "--connections", "4")
            _wait_for_text(log, "Plan:", process)
            time.sleep(rng.uniform(0.3, 1.5))
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.2)
            if process.poll() is None:  # the second Ctrl-C
                took = _ctrl_c(process, f"-n {n}: still running 3 s after a second Ctrl-C", timeout=3, log=log)
                assert took < 3
            # 130, or killed by that SIGINT when it came as the interpreter was exiting (a shell shows 130 too)
            assert process.returncode in (130, -signal.SIGINT), log.read_text()[-3000:]
            _assert_group_gone(process.pid)
            _assert_unlocked(root)


# ---- 4. throttling ---------------------------------------------------------------------------------------------------
def test_a_long_retry_after_is_capped_and_logged(tmp_path):
    with LocalArchive(sector=23, n=60, seed=SEED, retry_after=3600, faults={"429": 0.1}) as archive:
        started = time.monotonic()
        result = _run(tmp_path, archive.url, "--max-wait", "1", timeout=180)
        took = time.monotonic() - started
        throttled = sum(count - 1 for count in archive.fits_requests().values())  # every 429 was asked again
    assert result.returncode == 0, result.stderr
    assert throttled >= 2, "the archive answered no 429"
    pauses = [line for line in result.stderr.splitlines() if "Retry-After" in line]
    assert 1 <= len(pauses) <= throttled, pauses  # once per pause, not once per answer
    for line in pauses:
        assert "3600 s" in line and "pausing all downloads for 1 s" in line and "--max-wait" in line, line
    assert took < 120


def test_ctrl_c_ends_a_pause(tmp_path):
    with LocalArchive(sector=23, n=60, seed=SEED, retry_after=3600, faults={"429": 1.0}) as archive:
        process, log = _start(tmp_path, archive.url, "-n", "2", "--max-wait", "600")
        _wait_for_text(log, "Retry-After", process)
        assert "pausing all downloads for 600 s" in log.read_text()
        time.sleep(0.5)
        took = _ctrl_c(process, "a build paused by Retry-After did not end within 10 s of Ctrl-C")
    assert process.returncode == 130, log.read_text()[-3000:]
    assert took < 10
    _assert_group_gone(process.pid)
    assert not _debris(tmp_path)


# ---- 5. files of another sector, camera, CCD or object -------------------------------------------------------------
def test_files_of_another_sector_camera_ccd_or_object_are_quarantined(tmp_path):
    plain = SyntheticSector(23, 60, SEED)
    rows = plain.expected_catalog_indices()
    a, b, c, d, e = (int(i) for i in rows[[2, 9, 17, 25, 33]])
    tamper = {a: {"SECTOR": 22}, b: {"CAMERA": int(plain.cam[b]) % 4 + 1}, c: {"CCD": int(plain.ccd[c]) % 4 + 1},
              d: {"GAIADR3": int(plain.gaia_ids[rows[0]])}}
    cards = {a: "SECTOR", b: "CAMERA", c: "CCD", d: "GAIADR3", e: "SECTOR"}
    # and a file of another sector already sitting at an object's path (as if left there): it is not downloaded,
    # it is read, and it must be refused too
    seeded = tmp_path / "fits" / plain.relpath(e)
    seeded.parent.mkdir(parents=True)
    seeded.write_bytes(SyntheticSector(23, 60, SEED, tamper={e: {"SECTOR": 22}}).fits_bytes(e))
    with LocalArchive(sector=23, n=60, seed=SEED, tamper=tamper) as archive:
        result = _run(tmp_path, archive.url, timeout=180)
    assert result.returncode == 1, result.stderr
    failures = {row["path"]: row for row in _failures(tmp_path)}
    bad = {plain.relpath(i): i for i in cards}
    assert set(failures) == set(bad)
    for path, i in bad.items():
        assert f"{cards[i]} = " in failures[path]["reason"], failures[path]
        assert (tmp_path / "fits" / "corrupt" / path).is_file(), path  # quarantined
        assert not (tmp_path / "fits" / path).exists(), path
    catalog = _catalog(tmp_path)
    kept = catalog[[str(p.decode() if isinstance(p, bytes) else p) not in bad for p in catalog["path"]]]
    assert len(kept) == len(catalog) - len(bad)
    assert_contract(tmp_path / "out", kept, tmp_path / "fits")  # every other object converted, value for value


# ---- 6. bit rot ------------------------------------------------------------------------------------------------------
def test_bit_rot_is_caught_on_read_and_repaired_by_verify(archive, reference, tmp_path):
    from tglc_builder.loading import load_tglc

    root = _copy(reference, tmp_path / "build")
    files = _shards(root / "out")
    victim = max(files, key=lambda f: f.stat().st_size)
    with h5py.File(victim, "r") as h5:
        rows = len(h5["gaiadr3_id"])
        chunk = h5["psf_flux"].id.get_chunk_info(0)
        assert all(h5[name].fletcher32 for name in h5)  # every dataset carries chunk checksums
    with open(victim, "r+b") as f:  # flip 16 bytes in the middle of the chunk
        f.seek(chunk.byte_offset + chunk.size // 2)
        piece = f.read(16)
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(bytes(x ^ 0xFF for x in piece))
    with h5py.File(victim, "r") as h5, pytest.raises(OSError):
        h5["psf_flux"][()]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - datasets wraps the reader's error
        load_tglc(root / "out", cache_dir=tmp_path / "cache")
    assert "checksum" in _chain(caught.value).lower() or "filter" in _chain(caught.value).lower()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - datasets wraps the reader's error
        for _ in load_tglc(root / "out", streaming=True):
            pass
    assert "checksum" in _chain(caught.value).lower() or "filter" in _chain(caught.value).lower()

    # and another shard under its final name but without the mark written last (as a crash before it would leave
    # it, were it renamed early): its ids are all there, yet it does not count as whole
    unmarked = min((f for f in files if f != victim), key=lambda f: f.stat().st_size)
    with h5py.File(unmarked, "r+") as h5:
        del h5.attrs[COMPLETE]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    damaged = victim.read_bytes()
    result = _run(root, archive.url, "-n", "2")  # documented: a plain rerun trusts whole-marked files
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == damaged
    assert [f for f in files if f.stat().st_mtime_ns != stamps[f]] == [unmarked]
    with h5py.File(unmarked, "r") as h5:
        assert COMPLETE in h5.attrs
    stamps = {f: f.stat().st_mtime_ns for f in files}

    result = _run(root, archive.url, "-n", "2", "--verify")
    assert result.returncode == 0, result.stderr
    changed = [f for f in files if f.stat().st_mtime_ns != stamps[f]]
    assert changed == [victim]  # exactly the damaged shard was rewritten
    summary = _summary(result.stderr)
    assert summary["converted"] + summary["carried"] == rows and summary["files"] == 1, summary
    assert_same_data(reference / "out", root / "out")


def _chain(error: BaseException) -> str:
    parts = []
    while error is not None:
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


# ---- 7. resources and bad input -------------------------------------------------------------------------------------
def test_too_many_processes_are_refused(archive, tmp_path):
    before = archive.request_count()
    result = _run(tmp_path, archive.url, "--n_processes", "10000", timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--n_processes 10000" in result.stderr
    assert archive.request_count() == before


def test_a_full_fits_disk_stops_downloads_at_once(archive, reference, tmp_path):
    catalog = _catalog(reference)
    # the listings and the catalog fit, a light curve does not
    root = tmp_path / "build"
    (root / "data").mkdir(parents=True)
    shutil.copytree(reference / "data" / "s0023", root / "data" / "s0023")
    (root / "data" / "s0023" / "s0023-catalog.hdf5").unlink()
    before = archive.fits_requests()
    limit = 50_000
    assert max(f.stat().st_size for f in (root / "data" / "s0023").iterdir()) < limit
    result = _run(root, archive.url, "-n", "2", "--connections", "4", fsize=limit)
    after = archive.fits_requests()
    requested = sum(after.values()) - sum(before.values())
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    assert requested <= 16, f"{requested} light curves requested after the disk was full (of {len(catalog)})"
    assert str(root / "fits") in result.stderr, result.stderr[-3000:]
    assert not list((root / "fits").rglob("*.fits")) and not _debris(root)
    assert not _shards(root / "out")


def test_folder_conflicts_are_found_before_any_download(archive, reference, tmp_path):
    root = _copy(reference, tmp_path / "build")
    stamps = {f: f.stat().st_mtime_ns for f in _shards(root / "out")}
    with LocalArchive(sector=24, n=60, seed=SEED) as other:
        result = _run(root, other.url, sector=24, timeout=120)
        assert result.returncode == 2, result.stderr
        assert not other.fits_requests()
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "another" in errors[0] and "--overwrite" in errors[0], result.stderr

    before = archive.fits_requests()
    result = _run(root, archive.url, "--tiny", timeout=120)  # a smaller build into a full build's folder
    assert result.returncode == 2, result.stderr
    assert archive.fits_requests() == before
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "--overwrite" in errors[0], result.stderr
    assert {f: f.stat().st_mtime_ns for f in _shards(root / "out")} == stamps


def _workers(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_worker_fails_only_its_own_rows_and_the_counts_are_true(reference, tmp_path):
    root = tmp_path / "build"
    with LocalArchive(sector=23, n=N, seed=SEED, latency=0.03) as archive:
        process, log = _start(root, archive.url, "-n", "2", "--connections", "4")
        _wait_for_text(log, "Plan:", process)
        deadline = time.monotonic() + 60
        while len(list((root / "fits").rglob("*.fits"))) < 10 or not _workers(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(_workers(process.pid)[0], signal.SIGKILL)  # as the OOM killer would
        process.wait(timeout=300)
    stderr = log.read_text()
    assert process.returncode in (0, 1), stderr[-3000:]
    assert "Traceback" not in stderr
    catalog = _catalog(root)
    failures = _failures(root)
    failed = {int(row["gaiadr3_id"]) for row in failures}
    shards = _shards(root / "out")
    on_disk = {}
    for file in shards:
        with h5py.File(file, "r") as h5:
            on_disk[file] = h5["gaiadr3_id"][()]
    rows_on_disk = sum(len(ids) for ids in on_disk.values())
    if failures:  # given up after dying again: only the rows of that one task
        assert all("died" in row["reason"] for row in failures)
        pixels = {int(h) for g, h in zip(catalog["gaiadr3_id"], catalog["healpix"]) if int(g) in failed}
        assert len(pixels) == 1, pixels
    assert rows_on_disk + len(failed) == len(catalog)
    summary = _summary(stderr)
    assert summary["converted"] == rows_on_disk
    assert summary["files"] == len(shards)
    assert summary["failed"] == len(failures)
    assert summary["complete"] == 0
    assert summary["downloaded"] + summary["present"] == rows_on_disk
    _assert_only_whole_files(root / "out", reference / "out")
    if not failures:
        assert_same_data(reference / "out", root / "out")


def test_a_huge_rejected_listing_line_is_stored_cut(tmp_path):
    from build_parent_sample import TGLC_Downloader

    huge = "curl -f --output '" + "x" * 10_000_000 + "' https://example.invalid/a"
    with LocalArchive(sector=23, n=60, seed=SEED, extra_listing_lines=[huge, "echo short"]) as archive:
        TGLC_Downloader(23, tmp_path / "data", tmp_path / "out", tmp_path / "fits",
                        mast_url=archive.url).create_sector_catalog()
    rejected = tmp_path / "data" / "s0023" / "rejected_listing_lines.txt"
    lines = rejected.read_bytes().splitlines()
    assert rejected.stat().st_size < 2000
    assert all(len(line) < 400 for line in lines) and b"echo short" in lines
    cut = [line for line in lines if line.startswith(b"curl -f --output 'xxx")]
    assert len(cut) == 1 and str(len(huge)).encode() in cut[0]


def test_a_dataset_folder_holds_data_only(reference):
    out = reference / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "TGLC", "tglc.py"]
    for path in (out / "TGLC").rglob("*"):
        assert (path.is_dir() and path.name.startswith("healpix=")) or SHARD_NAME.match(path.name), path
    assert not [p for p in reference.rglob("*") if "lock" in p.name.lower()]


def test_clean_fits_never_downloads_a_file_twice(reference, tmp_path):
    absent, missing_path = _missing_object(SyntheticSector(23, N, SEED))
    line = f"curl -f --create-dirs --output '{missing_path}' https://example.invalid/x"
    with LocalArchive(sector=23, n=N, seed=SEED, extra_listing_lines=[line]) as archive:
        for run in range(3):
            result = _run(tmp_path, archive.url, "-n", "1", "--clean-fits")
            assert result.returncode == 1, result.stderr
            assert [row["path"] for row in _failures(tmp_path)] == [missing_path]
            assert not list((tmp_path / "fits").rglob("*.fits"))
            summary = _summary(result.stderr)
            if run:
                assert summary["downloaded"] == 0, summary
        requests = archive.fits_requests()
    assert requests.pop(missing_path) == 3  # asked once a run, as a failure should be
    assert set(requests.values()) == {1}  # every other light curve exactly once across the three runs
    assert_same_data(reference / "out", tmp_path / "out")
