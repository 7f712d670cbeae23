"""What every stage uses: fresh processes, timing, memory and folder sampling, the local servers, the machine.

Every stage runs in a fresh interpreter, and every measurement inside a stage (a *task*) runs in a fresh interpreter
of its own, so the memory reported belongs to the measured code alone: generating data, serving the archive and
measuring references all happen in other processes. A task is a module-level function registered with :func:`task`
and started with :meth:`Ctx.task`; it takes JSON-able keyword arguments and returns a JSON-able dict.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "benchmarks" / "run.py"
SECTOR = 23
MARK = "@@BENCH@@ "
MB = 1 << 20
N_CADENCES = 1282  # of a 30-minute sector (sector 23)
RAW_BYTES_PER_CADENCE = 8 + 4 + 4 + 2 + 2  # time f8, psf_flux f4, aper_flux f4, tess_flags i2, tglc_flags i2


class BenchError(RuntimeError):
    """A stage could not measure what it should (a failed build, wrong row counts...)."""


class Skipped(Exception):
    """A stage (or one of its measures) whose code is not in the tree yet, or whose tools are missing."""


# ---- tasks: measurements in fresh processes ----------------------------------------------------------------------
TASKS: dict[str, Callable[..., dict]] = {}


def task(function: Callable[..., dict]) -> Callable[..., dict]:
    """Register ``function`` as a task (run in a fresh process by :meth:`Ctx.task`)."""
    TASKS[task_name(function)] = function
    return function


def task_name(function: Callable) -> str:
    return f"{function.__module__.rsplit('.', 1)[-1]}.{function.__name__}"


def env(**extra: str) -> dict:
    out = dict(os.environ)
    out.setdefault("HF_HUB_OFFLINE", "1")
    out.setdefault("HF_DATASETS_OFFLINE", "1")
    out.setdefault("TQDM_MININTERVAL", "5")
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out.update(extra)
    return out


def spawn(args: list[str], log: Path, timeout: float | None = None) -> dict:
    """Run ``benchmarks/run.py <args>`` in a fresh interpreter; return the JSON it prints after MARK (stderr to
    ``log``)."""
    cmd = [sys.executable, str(ENTRY), *args]
    with open(log, "ab") as err:
        err.write(f"\n$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env(), timeout=timeout)
    found = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith(MARK)]
    if proc.returncode or not found:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BenchError(f"`{' '.join(args[:2])}` failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))
    result = json.loads(found[-1][len(MARK):])
    if "skipped" in result:
        raise Skipped(result["skipped"])
    return result


class Ctx:
    """What a stage knows: its scratch folder, its sizes (full or quick) and the log."""

    def __init__(self, scratch: Path, size: str, sizes: dict):
        self.scratch, self.size, self.sizes = scratch, size, sizes
        self.log = scratch / "bench.log"

    @property
    def full(self) -> bool:
        return self.size == "full"

    def task(self, function: Callable[..., dict], timeout: float | None = None, **params) -> dict:
        """``function(**params)`` in a fresh interpreter."""
        return spawn(["--task", task_name(function), "--params", json.dumps(params)], self.log, timeout)

    def dir(self, *parts: str, fresh: bool = False) -> Path:
        path = self.scratch.joinpath(*parts)
        if fresh and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_task(name: str, params: dict) -> dict:
    """In the task's own process: import every stage (so every task is registered), run it."""
    import benchmarks.stages  # noqa: F401 - registers the tasks

    try:
        return TASKS[name](**params)
    except Skipped as exc:
        return {"skipped": str(exc)}


# ---- measuring inside a process -------------------------------------------------------------------------------
def maxrss(who=resource.RUSAGE_SELF) -> int:
    """Peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Timer:
    """Wall time, and CPU time of this process and of its waited-for children."""

    def __enter__(self) -> "Timer":
        self.t0, self.c0 = time.perf_counter(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        c1 = os.times()
        self.cpu = (c1.user - self.c0.user) + (c1.system - self.c0.system)
        self.cpu_children = (c1.children_user - self.c0.children_user) + (c1.children_system - self.c0.children_system)


def timed_catalog(bulk: str, targets: str) -> tuple:
    """A build's listing -> catalog steps (``run.make_catalog`` without fetching the listings or saving), each timed:
    ``(catalog, listing lines, {"parse": Timer, "targets": Timer, "join": Timer})``. As in a build, the parsed
    listing and the target list are dropped once joined."""
    from tglc_builder import listing

    with Timer() as t_parse:
        parsed = listing.parse_bulk_script(bulk, SECTOR)
    with Timer() as t_targets:
        targets_table = listing.read_target_list(targets)
    with Timer() as t_join:
        catalog = listing.build_catalog(parsed, targets_table, SECTOR)
    return catalog, parsed.n_lines, dict(parse=t_parse, targets=t_targets, join=t_join)


class _Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a thread while the block runs; keeps the largest value."""

    def __init__(self, interval: float):
        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


class TreePeak(_Sampler):
    """The resident memory of a process plus all its descendants, sampled every 20 ms (``ru_maxrss`` is exact but
    per process; this catches the sum when workers run beside their driver), and the CPU time they used meanwhile
    (:attr:`cpu`; a process's last 20 ms may be missed). Uses psutil.

    The list of descendants is renewed every :data:`CHILDREN_EVERY` samples only: finding them reads every process
    of the machine, which at every sample cost the sampler ~10% of a core, taken from the run being measured."""

    CHILDREN_EVERY = 10

    def __init__(self, pid: int | None = None, interval: float = 0.02):
        import psutil

        super().__init__(interval)
        self._proc = psutil.Process(pid or os.getpid())
        self._procs: list = []
        self._samples = 0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._first = True

    @property
    def cpu(self) -> float:
        return sum(last - self._cpu_first.get(pid, 0.0) for pid, last in self._cpu_last.items())

    def sample(self) -> int:
        total = 0
        if self._samples % self.CHILDREN_EVERY == 0:
            try:
                self._procs = [self._proc, *self._proc.children(recursive=True)]
            except Exception:  # the root just ended
                return 0
        self._samples += 1
        for p in self._procs:
            try:
                total += p.memory_info().rss
                times = p.cpu_times()
                self._cpu_last[p.pid] = times.user + times.system
                if self._first:
                    self._cpu_first[p.pid] = self._cpu_last[p.pid]
            except Exception:  # a child that just ended
                pass
        self._first = False
        return total


class FolderPeak(_Sampler):
    """The bytes of every file under ``folder`` (temporary files included), sampled every 50 ms."""

    def __init__(self, folder: Path, interval: float = 0.05):
        super().__init__(interval)
        self.folder, self.peak_files, self.files = str(folder), 0, 0

    def sample(self) -> int:
        total, files, stack = 0, 0, [self.folder]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:  # removed while we looked
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                        files += 1
                except OSError:
                    pass
        self.peak_files = max(self.peak_files, files)
        return total


def folder_bytes(folder: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern) if p.is_file())


# ---- the command line as a user runs it ------------------------------------------------------------------------
def run_cli(args: list[str], workdir: Path, extra_env: dict | None = None, watch: Path | None = None,
            program: str = "build_parent_sample.py") -> dict:
    """``python build_parent_sample.py <args>`` (or ``python <program> <args>``, e.g. ``program="-c"``) from the
    repository root, as a user runs it: wall time, CPU of the whole tree, peak memory of all its processes together
    (and of the largest one), and optionally the peak bytes under ``watch``."""
    cmd = [sys.executable, program, *args]
    workdir.mkdir(parents=True, exist_ok=True)
    if watch is not None:
        watch.mkdir(parents=True, exist_ok=True)
    folder = FolderPeak(watch) if watch is not None else None
    with open(workdir / "cli.log", "wb") as log, Timer() as t:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env(**(extra_env or {})))
        with TreePeak(proc.pid) as tree, (folder if folder is not None else _nothing()):
            code = proc.wait()
    if code:
        tail = (workdir / "cli.log").read_text(errors="replace").strip().splitlines()[-10:]
        raise BenchError(f"the CLI exited with {code}; see {workdir / 'cli.log'}:\n" + "\n".join(tail))
    out = dict(seconds=t.seconds, cpu=t.cpu_children, peak_tree=tree.peak,
               peak_single=maxrss(resource.RUSAGE_CHILDREN), command=" ".join(["python", *cmd[1:]]))
    if folder is not None:
        out.update(folder_peak=folder.peak, folder_peak_files=folder.peak_files, folder_samples=folder.samples)
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def hdf5_rows(folder: Path) -> int:
    import h5py

    rows = 0
    for file in Path(folder).glob("TGLC/**/*.hdf5"):
        with h5py.File(file, "r") as h5:
            rows += len(h5["n_cadences"])
    return rows


# ---- local servers, each in its own process ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_sector(n: int, seed: int = 0):
    """The demo archive's synthetic sector of ``n`` objects (as the archive serves it)."""
    from tglc_builder.demo import SyntheticSector

    return SyntheticSector(SECTOR, n, seed=seed)


@contextmanager
def _server(ctx: Ctx, cmd: list[str], port: int, what: str, extra_env: dict | None = None) -> Iterator[None]:
    with open(ctx.log, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(**(extra_env or {})), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{what} exited with {proc.returncode}; see {ctx.log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{what} did not listen on port {port} within 120 s") from None
                time.sleep(0.1)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def archive_process(ctx: Ctx, n: int, latency: float, seed: int = 0, sectors: str | None = None) -> Iterator[str]:
    """The project's demo archive (its command line) in its own process, so it shares no GIL with the client, with
    every light curve made before it listens (``--pregenerate``): made on request, each cost the archive 1-3 ms of
    CPU, a core's worth that the client being measured, and the curl reference, then lacked on this machine.
    ``sectors`` (e.g. ``"1-4"``): serve the demo release of those sectors instead, ``n`` light curves each."""
    port = free_port()
    cmd = [sys.executable, "-m", "tglc_builder.demo", "--sector", str(SECTOR), "--n", str(n), "--port", str(port),
           "--seed", str(seed), "--latency", str(latency), "--pregenerate",
           *(["--sectors", sectors] if sectors else [])]
    with _server(ctx, cmd, port, "the demo archive"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def s3_process(ctx: Ctx) -> Iterator[str]:
    """A local S3 server (moto's ThreadedMotoServer on 127.0.0.1) in its own process; yields its endpoint URL."""
    if importlib.util.find_spec("moto") is None:
        raise Skipped("moto is not installed (pip install 'moto[server]')")
    port = free_port()
    code = ("import signal, threading; from moto.server import ThreadedMotoServer; "
            f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); "
            "e = threading.Event(); signal.signal(signal.SIGINT, lambda *a: e.set()); e.wait(); s.stop()")
    with _server(ctx, [sys.executable, "-c", code], port, "the S3 server (moto)"):
        yield f"http://127.0.0.1:{port}"


# ---- the machine ------------------------------------------------------------------------------------------------
VERSIONED = ("numpy", "h5py", "pyarrow", "astropy", "healpy", "requests", "urllib3", "datasets", "hats", "lsdb",
             "s3fs", "moto", "boto3", "dask")


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - not installed
            continue
        if name == "h5py":
            versions["HDF5"] = __import__("h5py").version.hdf5_version
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":!benchmarks/RESULTS.md"], cwd=REPO, capture_output=True, text=True
                                    ).stdout.strip())
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)), ram=mem,
                os=platform.platform(), versions=versions, commit=commit, curl=curl_version())


def curl_version() -> str | None:
    if shutil.which("curl") is None:
        return None
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else "?"
