"""The build on a Dask cluster: the same dataset as the local process pool, even when a worker dies mid-build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def test_scheduler_local_runs_no_profiler_in_its_workers():
    """``--scheduler local`` starts its workers without distributed's statistical profiler (whose frame walking can
    crash CPython 3.11), whatever the environment says; a user's own scheduler is theirs to configure."""
    code = ("from tglc_builder.cli import dask_client\n"
            "with dask_client('local', 1) as client:\n"
            "    print(list(client.run(lambda: __import__('dask').config.get('distributed.worker.profile.enabled'))"
            ".values()))")
    env = {k: v for k, v in run_env().items() if not k.startswith("DASK_")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[False]"]


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


def _tree(root) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def dask_processes(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (one thread each); the address."""
    dask = str(Path(sys.executable).with_name("dask"))
    info = tmp_path / "scheduler.json"
    common = dict(env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(info)], **common)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert processes[0].poll() is None and time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        processes += [subprocess.Popen([dask, "worker", "--scheduler-file", str(info), "--nthreads", "1",
                                        "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"], **common)
                      for _ in range(2)]
        with distributed.Client(scheduler_file=str(info), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def test_ctrl_c_stops_the_clusters_running_units(tmp_path, dask_processes):
    """Ctrl-C to a build on a real cluster: its running units stop at their next file, the command exits 130 in
    time, and once it has exited nothing more is asked of the archive nor written."""
    root = tmp_path / "build"
    with LocalArchive(sector=23, n=400, seed=15, latency=1.0) as archive:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "build_parent_sample.py"), "-s", "23", "--scheduler", dask_processes,
             "--mast-url", archive.url, "--tglc_data_path", str(root / "data"), "--hdf5_output_path",
             str(root / "out"), "--fits_output_path", str(root / "fits")],
            env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while sum(1 for _ in (root / "fits").rglob("*.fits")) < 20:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the build never got going"
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            _, stderr = process.communicate(timeout=60)
            took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        requests, files = archive.request_count(), _tree(root)
        time.sleep(4)  # the workers would have gone on: ~100 more files at this latency
        assert archive.request_count() == requests
        assert _tree(root) == files
    assert process.returncode == 130, stderr
    assert took < 10, took  # the README's promise
    assert "running tasks stop at their next file" in stderr and "did not stop" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert 20 <= sum(1 for _ in (root / "fits").rglob("*.fits")) < 400  # it was stopped mid-build
    assert not [p for p in root.rglob("*") if ".part-" in p.name or ".tmp-" in p.name]


def test_stop_and_interrupt_reach_tasks_running_on_the_cluster(tmp_path, cluster, caplog):
    """``stop()`` (a full disk) and an interrupt reach tasks already running on Dask workers, which return at their
    next look; a task that never looks is given up on after the grace, with one log line."""
    import _tasks
    from test_executor import _Interrupt, _interrupt_after, _lost

    from tglc_builder.executor import Executor

    _, client = cluster
    with Executor(client=client, stop_grace=2.0) as ex:
        results = []
        for result in ex.run(_tasks.poll_until_stopped, [(0.0,), (60.0,)], total=2, desc="Testing", unit="task",
                             weights=[1, 1], lost=_lost):
            results.append(result)
            ex.stop()
        assert sorted(results) == ["ran out", "stopped"]

        markers = [str(tmp_path / f"started-{i}") for i in range(2)]
        with pytest.raises(_Interrupt), _interrupt_after(3.0):
            list(ex.run(_tasks.dispatch_stop, [("poll", (60.0,)), ("ignore", (30.0, markers[1]))], total=2,
                        desc="Testing", unit="task", weights=[1, 1], lost=_lost))
    assert Path(markers[1]).exists()  # it was running
    gave_up = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].getMessage().startswith("1 task(s) on the cluster did not stop within 2 s")


def test_a_file_that_kills_its_dask_worker_is_named_and_fails_alone(tmp_path, monkeypatch):
    """On Dask too: a file whose read kills the worker every time (SIGKILL) is named by its task's breadcrumbs once
    Dask gives up (KilledWorker), fails alone, and the rest of its unit is written."""
    import dask

    import _tasks
    from helpers.deadly import deadly_sector, failure_rows, written_ids
    from tglc_builder import run
    from tglc_builder.executor import Executor

    args, source, catalog, deadly = deadly_sector(tmp_path, monkeypatch)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client, Executor(client=client) as executor:
        summary = run.write_outputs(args, catalog, source, executor, build_unit=_tasks.build_unit_with_a_deadly_file)
    rows = failure_rows(tmp_path, summary)
    assert [(r["gaiadr3_id"], r["path"]) for r in rows] == [(str(deadly), str(catalog["path"][catalog["gaiadr3_id"]
                                                                                               == deadly][0]))]
    assert "died while reading this file" in rows[0]["reason"] and "KilledWorker" in rows[0]["reason"]
    assert written_ids(tmp_path / "out") == sorted(int(g) for g in catalog["gaiadr3_id"] if g != deadly)
    assert not list((tmp_path / "data").rglob(".tglc-reading-*"))  # no breadcrumbs left
