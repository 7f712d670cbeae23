"""The build on a Dask cluster: the same dataset as the local process pool, even when a worker dies mid-build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import pytest
from astropy.table import Table

from build_parent_sample import TGLC_Downloader
from conftest import REPO, assert_contract, run_env
from tglc_builder.demo import LocalArchive

distributed = pytest.importorskip("distributed")


def _datasets(out) -> dict:
    result = {}
    for file in sorted((out / "TGLC").glob("healpix=*/*.hdf5")):
        with h5py.File(file, "r") as h5:
            result[str(file.relative_to(out))] = {name: h5[name][()].tobytes() for name in h5}
    return result


def _build(archive, root, client=None, n_processes=2):
    downloader = TGLC_Downloader(23, root / "data", root / "out", root / "fits", n_processes=n_processes,
                                 mast_url=archive.url, client=client)
    return downloader.download_sector()


def _build_killing_a_worker(archive, root, client):
    """A build on ``client``'s cluster during which one worker process is killed (SIGKILL) mid-download."""
    worker_pids = list(client.run(os.getpid).values())
    outcome = {}
    build = threading.Thread(target=lambda: outcome.update(summary=_build(archive, root, client)))
    build.start()
    deadline = time.monotonic() + 120
    while not ((root / "fits").exists() and sum(1 for _ in (root / "fits").rglob("*.fits")) >= 40):
        assert build.is_alive() and time.monotonic() < deadline, "the build never got going"
        time.sleep(0.02)
    os.kill(worker_pids[0], signal.SIGKILL)  # the nanny starts a new worker; Dask reruns or gives up its tasks
    build.join(300)
    assert not build.is_alive()
    assert worker_pids[0] not in client.run(os.getpid).values()  # the worker really died mid-build
    return outcome["summary"]


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        yield c, client


def test_dask_builds_the_same_dataset_as_the_process_pool(tmp_path, cluster):
    _, client = cluster
    with LocalArchive(sector=23, n=200, seed=12) as archive:
        local = _build(archive, tmp_path / "local")
        on_dask = _build(archive, tmp_path / "dask", client=client)
    assert local.failures == on_dask.failures == []
    assert on_dask.downloaded == local.downloaded and on_dask.converted == local.converted > 150
    catalog = Table.read(tmp_path / "dask" / "data" / "s0023" / "s0023-catalog.hdf5", path="catalog")
    assert_contract(tmp_path / "dask" / "out", catalog, tmp_path / "dask" / "fits")
    assert _datasets(tmp_path / "dask" / "out") == _datasets(tmp_path / "local" / "out")  # value for value


def test_a_worker_killed_mid_build_changes_nothing(tmp_path, cluster):
    _, client = cluster
    with LocalArchive(sector=23, n=300, seed=13, latency=0.01) as archive:
        reference = _build(archive, tmp_path / "reference")
        summary = _build_killing_a_worker(archive, tmp_path / "dask", client)
    assert summary.failures == [] and summary.converted == reference.converted
    assert _datasets(tmp_path / "dask" / "out") == _datasets(tmp_path / "reference" / "out")
    assert not [p for p in (tmp_path / "dask").rglob("*") if ".part-" in p.name or ".tmp-" in p.name]


def test_scheduler_local_from_the_command_line(tmp_path, archive):
    result = subprocess.run(
        [sys.executable, str(REPO / "build_parent_sample.py"), "-s", "23", "--tiny", "-n", "2", "--scheduler",
         "local", "--mast-url", archive.url, "--tglc_data_path", str(tmp_path / "data"), "--hdf5_output_path",
         str(tmp_path / "out"), "--fits_output_path", str(tmp_path / "fits")],
        env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")


def test_scheduler_without_dask_explains_how_to_install(tmp_path):
    code = ("import sys; sys.modules['distributed'] = None; import build_parent_sample; "
            f"sys.exit(build_parent_sample.main(['-s', '23', '--scheduler', 'local', '--tglc_data_path', "
            f"{str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], env=run_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'pip install "tglc-builder[dask]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_task_dask_gives_up_on_becomes_failures_then_a_rerun_finishes(tmp_path):
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client, LocalArchive(sector=23, n=300, seed=14, latency=0.02) as archive:
        reference = _build(archive, tmp_path / "reference")
        summary = _build_killing_a_worker(archive, tmp_path / "dask", client)
        assert summary.failures and all("died" in f.reason for f in summary.failures)  # reported, not raised
        again = _build(archive, tmp_path / "dask", client)
    assert again.failures == []
    assert _datasets(tmp_path / "dask" / "out") == _datasets(tmp_path / "reference" / "out")
    assert again.complete + again.converted == reference.converted  # the rerun finished what the first left
