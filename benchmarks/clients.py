"""Reference clients: what a plain concurrent client needs only to download the same files (no retries, no
validation, no atomic renames). Both keep ``connections`` requests in flight in all."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from .harness import BenchError, Timer, task


def _requests_worker(url: str, paths: list[str], out: str, connections: int) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=connections))
    os.makedirs(out, exist_ok=True)

    def get(item):
        i, rel = item
        body = session.get(f"{url}/{rel}", timeout=60).content
        with open(os.path.join(out, f"{i}.fits"), "wb") as f:
            f.write(body)
        return len(body)

    with ThreadPoolExecutor(connections) as pool:
        return sum(pool.map(get, enumerate(paths)))


@task
def requests_client(url: str, paths: str, directory: str, n_processes: int = 2, connections: int = 24) -> dict:
    """Per process one requests.Session and ``connections / n_processes`` threads doing plain GETs, writing each
    body to a flat folder (processes started before the clock)."""
    from concurrent.futures import ProcessPoolExecutor

    rel = Path(paths).read_text().split("\n")
    parts = [rel[i::n_processes] for i in range(n_processes)]
    each = connections // n_processes
    with ProcessPoolExecutor(n_processes) as pool:
        list(pool.map(int, [0] * n_processes))
        with Timer() as t:
            sizes = list(pool.map(_requests_worker, [url] * n_processes, parts,
                                  [f"{directory}/{i}" for i in range(n_processes)], [each] * n_processes))
    return dict(seconds=t.seconds, files=len(rel), rate=len(rel) / t.seconds, bytes=sum(sizes),
                what=f"plain requests client: {n_processes} processes x {each} threads")


@task
def curl_client(url: str, paths: str, directory: str, connections: int = 24) -> dict:
    """curl itself: ``curl --parallel --parallel-max <connections>`` over a config file naming every URL."""
    rel = Path(paths).read_text().split("\n")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "urls.cfg"
    config.write_text("".join(f'url = "{url}/{p}"\noutput = "{out}/{i}.fits"\n' for i, p in enumerate(rel)))
    with Timer() as t:
        proc = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--parallel", "--parallel-max",
                               str(connections), "--config", str(config)], capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"curl exited with {proc.returncode}: {proc.stderr[-500:]}")
    got = sum(1 for p in out.glob("*.fits"))
    if got != len(rel):
        raise BenchError(f"curl wrote {got} of {len(rel)} files")
    return dict(seconds=t.seconds, files=len(rel), rate=len(rel) / t.seconds,
                what=f"curl --parallel --parallel-max {connections}")


def plain_client():
    """curl when it is installed (the issue's reference), else the requests client."""
    return curl_client if shutil.which("curl") else requests_client


@contextmanager
def started_executor(n_processes: int):
    """The build's executor with its workers already started (a build starts them once for all its work; the
    end-to-end stage includes that start)."""
    from tglc_builder.executor import Executor

    with Executor(n_processes) as executor:
        list(executor.run(os.getpid, [()] * n_processes, total=n_processes, desc="starting workers",
                          unit="process", weights=[1] * n_processes, lost=lambda task, error: None))
        yield executor
