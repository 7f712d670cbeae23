#!/usr/bin/env python
"""Benchmarks of tglc-builder on the local archive over loopback, each figure beside the machine's own reference.

    python benchmarks/run.py                      # everything (~10 min on 2 cores)
    python benchmarks/run.py --quick              # a small smoke version (< 1 min)
    python benchmarks/run.py --only catalog,download --out benchmarks/RESULTS.md

Not part of the test suite. Every stage runs in a fresh subprocess, and every measurement inside a stage runs in a
fresh subprocess of its own, so the peak memory reported belongs to the measured code alone: generating data,
serving the archive and measuring references all happen in other processes. The stages are used exactly as a user
run uses them (the archive's HTTP server, ``listing``, ``fetch.download_catalog`` with default settings,
``convert``, ``load_tglc``, the ``build_parent_sample.py`` command line). Scratch data lives in a temporary folder
that is deleted at the end unless ``--keep``.

In the table, ``ratio`` is always ours / reference: for a rate (files/s, rows/s) higher is better, for a time, a
size or memory lower is better. The reference is a floor (or ceiling) measured on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

THIS = Path(__file__).resolve()
REPO = THIS.parents[1]
sys.path.insert(0, str(REPO))  # build_parent_sample.py is a top-level module

SECTOR = 23
MARK = "@@BENCH@@ "
STAGES = ("catalog", "download", "convert", "convert_memory", "output_size", "loading", "end_to_end")
MB = 1 << 20

# Sizes of the full run (the figures) and of --quick.
SIZES = {
    "full": dict(catalog_lines=2_000_000, download_n=10_000, latencies=(0.0, 0.05), convert_n=20_000,
                 memory_rows=(10_000, 30_000, 100_000), memory_distinct=500, loading_n=10_000, e2e_n=20_000,
                 e2e_latency=0.05),
    "quick": dict(catalog_lines=100_000, download_n=1_000, latencies=(0.0, 0.05), convert_n=1_000,
                  memory_rows=(1_000, 3_000), memory_distinct=100, loading_n=500, e2e_n=500, e2e_latency=0.0),
}

GOALS = {  # the goals on 2 cores
    "catalog_time": 4.0,  # s
    "catalog_rss": 1.5 * 1024 * MB,
    "download_rate_50ms": 300.0,  # files/s
    "convert_rate": 3000.0,  # light curves/s/core
    "memory_rss": 1024 * MB,
    "bytes_per_lc": 12 * 1024,
}
RAW_BYTES_PER_CADENCE = 8 + 4 + 4 + 2 + 2  # time f8, psf_flux f4, aper_flux f4, tess_flags i2, tglc_flags i2
N_CADENCES = 1282


# =================================================================================================================
# Measuring inside a task process
# =================================================================================================================
def _rss_of_tree(proc) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # a child that just ended
            pass
    return total


class TreePeak:
    """Samples the resident memory of this process plus all its descendants (every 20 ms) while running.

    ``ru_maxrss`` is exact but per process; this catches the sum when a pool runs beside its driver. Needs psutil
    (present in the venv as a dependency of ipykernel/distributed); without it only ``ru_maxrss`` is reported.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.02):
        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        try:
            import psutil
            self._proc = psutil.Process(pid or os.getpid())
        except Exception:
            self._proc = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_of_tree(self._proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreePeak":
        if self._proc is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._proc is not None:
            self._thread.join()


def maxrss(who=resource.RUSAGE_SELF) -> int:
    """Peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Timer:
    def __enter__(self) -> "Timer":
        self.t0, self.c0 = time.perf_counter(), os.times()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        c1 = os.times()
        self.cpu = (c1.user - self.c0.user) + (c1.system - self.c0.system)
        self.cpu_children = (c1.children_user - self.c0.children_user) + (c1.children_system - self.c0.children_system)


# =================================================================================================================
# Running stages and tasks in fresh processes
# =================================================================================================================
class BenchError(RuntimeError):
    pass


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _spawn(args: list[str], log: Path, timeout: float | None = None) -> dict:
    """Run ``run.py <args>`` in a fresh interpreter; return the JSON it prints after MARK. Stderr goes to ``log``."""
    cmd = [sys.executable, str(THIS), *args]
    with open(log, "ab") as err:
        err.write(f"\n$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=_env(), timeout=timeout)
    found = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith(MARK)]
    if proc.returncode or not found:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BenchError(f"`{' '.join(args[:2])}` failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))
    return json.loads(found[-1][len(MARK):])


class Ctx:
    """What a stage knows: its scratch folder, the run's sizes and its log."""

    def __init__(self, scratch: Path, size: str):
        self.scratch, self.size, self.sizes = scratch, size, SIZES[size]
        self.log = scratch / "bench.log"

    def task(self, name: str, timeout: float | None = None, **params) -> dict:
        return _spawn(["--task", name, "--scratch", str(self.scratch), "--params", json.dumps(params)],
                      self.log, timeout)

    def dir(self, *parts: str, fresh: bool = False) -> Path:
        path = self.scratch.joinpath(*parts)
        if fresh and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def archive_process(ctx: Ctx, n: int, latency: float, seed: int = 0):
    """The project's archive CLI in its own process (so the server does not share a GIL with the client)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "tglc_builder.archive", "--sector", str(SECTOR), "--n", str(n), "--port", str(port),
           "--seed", str(seed), "--latency", str(latency)]
    with open(ctx.log, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the archive exited with {proc.returncode}; see {ctx.log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"the archive did not listen on port {port} within 120 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# =================================================================================================================
# Table rows
# =================================================================================================================
def fmt_bytes(n: float) -> str:
    if n >= 1024 * MB:
        return f"{n / (1024 * MB):.2f} GB"
    if n >= MB:
        return f"{n / MB:.0f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n:.0f} B"


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}" if x >= 100 else f"{x:.1f} {unit}"


def row(stage: str, measure: str, ours: str, ours_value: float | None, reference: str = "—",
        ref_value: float | None = None, goal: str = "—", met: bool | None = None, note: str = "") -> dict:
    ratio = f"{ours_value / ref_value:.2f}x" if ours_value is not None and ref_value else "—"
    return dict(stage=stage, measure=measure, ours=ours, ours_value=ours_value, reference=reference,
                ref_value=ref_value, ratio=ratio, goal=goal, met=met, note=note)


# =================================================================================================================
# Data generation (task processes; never inside a measured process)
# =================================================================================================================
def _sector(n: int, seed: int = 0):
    from tglc_builder.archive import SyntheticSector

    return SyntheticSector(SECTOR, n, seed=seed)


def task_gen_listings(scratch: Path, n: int, directory: str) -> dict:
    """The two listings of a synthetic sector of ``n`` objects, written where a user run keeps them."""
    from tglc_builder import layout

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    bulk = out / Path(layout.bulk_script_relpath(SECTOR)).name
    targets = out / Path(layout.target_list_relpath(SECTOR)).name
    with Timer() as t:  # what the local archive takes to make both listings of this sector
        sector = _sector(n)
        bulk_text, target_text = sector.bulk_script(), sector.target_list()
    bulk.write_bytes(bulk_text)
    targets.write_bytes(target_text)
    return dict(bulk=str(bulk), targets=str(targets), bulk_lines=bulk_text.count(b"\n"),
                bulk_bytes=bulk.stat().st_size, target_bytes=targets.stat().st_size,
                expected=int(len(sector.expected_catalog_indices())), generated_in=t.seconds)


def task_gen_fits(scratch: Path, n: int, directory: str) -> dict:
    """A synthetic sector on disk as a user run leaves it: listings, the saved catalog and every FITS file."""
    from tglc_builder import listing

    out = Path(directory)
    info = task_gen_listings(scratch, n, str(out / f"s{SECTOR:04d}"))
    catalog = listing.build_catalog(listing.parse_bulk_script(info["bulk"], SECTOR),
                                    listing.read_target_list(info["targets"]), SECTOR)
    sector = _sector(n)
    index = {g: i for i, g in enumerate(sector.gaia_ids.tolist())}
    fits_dir = out / "fits"
    total, generating = 0, 0.0
    for gaia, rel in zip(catalog["gaiadr3_id"].tolist(), catalog["path"]):
        dest = fits_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        data = sector.fits_bytes(index[gaia])
        generating += time.perf_counter() - started
        dest.write_bytes(data)
        total += len(data)
    path = listing.catalog_path(out, SECTOR, tiny=False)
    listing.save_catalog(catalog, path)
    return dict(catalog=str(path), fits_dir=str(fits_dir), rows=len(catalog), fits_bytes=total,
                pixels=int(len(set(catalog["healpix"].tolist()))), ms_per_file=1000 * generating / len(catalog))


def ensure_fits(ctx: Ctx, n: int) -> dict:
    """Generate (once per run) a synthetic sector of ``n`` objects on disk, shared by the convert-side stages."""
    directory = ctx.scratch / f"sector-{n}"
    done = directory / "info.json"
    if not done.exists():
        info = ctx.task("gen_fits", n=n, directory=str(directory))
        done.write_text(json.dumps(info))
    return json.loads(done.read_text())


def _read_catalog(path: str):
    from astropy.table import Table

    return Table.read(path, path="catalog")


# =================================================================================================================
# Stage: catalog
# =================================================================================================================
def task_catalog(scratch: Path, bulk: str, targets: str, save: str) -> dict:
    from tglc_builder import listing

    base = current_rss()
    with Timer() as t_parse:
        parsed = listing.parse_bulk_script(bulk, SECTOR)
    with Timer() as t_targets:
        targets_table = listing.read_target_list(targets)
    with Timer() as t_join:
        catalog = listing.build_catalog(parsed, targets_table, SECTOR)
    peak_catalog = maxrss()
    with Timer() as t_save:
        listing.save_catalog(catalog, Path(save))
    return dict(seconds=t_parse.seconds + t_targets.seconds + t_join.seconds, parse=t_parse.seconds,
                targets=t_targets.seconds, join=t_join.seconds, save=t_save.seconds,
                cpu=t_parse.cpu + t_targets.cpu + t_join.cpu, rows=len(catalog), lines=parsed.n_lines,
                peak_rss=peak_catalog, peak_rss_with_save=maxrss(), import_rss=base)


def task_catalog_floor(scratch: Path, bulk: str, targets: str) -> dict:
    """The floor: read both files' bytes and split them into lines with pyarrow (multi-threaded, like ours)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def lines(path: str) -> int:
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=["line"], block_size=1 << 24),
                               parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
                               convert_options=pacsv.ConvertOptions(column_types={"line": pa.binary()}))
        return table.num_rows

    with Timer() as t:
        n = lines(bulk) + lines(targets)
    return dict(seconds=t.seconds, lines=n, peak_rss=maxrss())


def stage_catalog(ctx: Ctx) -> list[dict]:
    n_lines = ctx.sizes["catalog_lines"]
    info = ctx.task("gen_listings", n=n_lines, directory=str(ctx.dir("catalog", fresh=True)))
    for _ in range(2):  # the first run warms the page cache, as the download just before a user's parse leaves it
        floor = ctx.task("catalog_floor", bulk=info["bulk"], targets=info["targets"])
    ours = ctx.task("catalog", bulk=info["bulk"], targets=info["targets"],
                    save=str(ctx.scratch / "catalog" / "catalog.hdf5"))
    if ours["rows"] != info["expected"]:
        raise BenchError(f"catalog has {ours['rows']} rows, the archive expects {info['expected']}")
    what = (f"{info['bulk_lines']:,}-line listing ({fmt_bytes(info['bulk_bytes'])}) + target list "
            f"({fmt_bytes(info['target_bytes'])}) -> {ours['rows']:,}-row catalog")
    detail = (f"parse {ours['parse']:.2f} s, target list {ours['targets']:.2f} s, join+healpix {ours['join']:.2f} s; "
              f"saving it (astropy HDF5) takes {ours['save']:.2f} s more. The local archive generated both "
              f"listings in {info['generated_in']:.1f} s")
    floor_mem = floor["peak_rss"]
    return [
        row("catalog", f"time: {what}", f"{ours['seconds']:.2f} s", ours["seconds"],
            f"{floor['seconds']:.2f} s (read both files + split lines, pyarrow)", floor["seconds"],
            f"<= {GOALS['catalog_time']:.0f} s", ours["seconds"] <= GOALS["catalog_time"], detail),
        row("catalog", "peak RSS of the same", fmt_bytes(ours["peak_rss"]), ours["peak_rss"],
            f"{fmt_bytes(floor_mem)} (same floor)", floor_mem, "<= 1.5 GB",
            ours["peak_rss"] <= GOALS["catalog_rss"],
            f"python + imports alone: {fmt_bytes(ours['import_rss'])}; with save: "
            f"{fmt_bytes(ours['peak_rss_with_save'])}"),
    ]


# =================================================================================================================
# Stage: download
# =================================================================================================================
def task_download(scratch: Path, url: str, directory: str, n_processes: int = 2, batch_size: int = 5000) -> dict:
    """fetch.download_catalog with default settings on the archive's catalog (built as a user run builds it)."""
    from tglc_builder import fetch, listing

    work = Path(directory)
    listings = listing.fetch_listings(SECTOR, work / "data", url)
    catalog = listing.build_catalog(listing.parse_bulk_script(listings.bulk_script, SECTOR),
                                    listing.read_target_list(listings.target_list), SECTOR)
    with _started_pool(n_processes) as pool, TreePeak() as tree, Timer() as t:
        summary = fetch.download_catalog(catalog, work / "fits", url, pool, batch_size=batch_size)
    if summary.failures or summary.downloaded != len(catalog):
        raise BenchError(f"{summary.downloaded} of {len(catalog)} downloaded, {len(summary.failures)} failed: "
                         f"{summary.failures[:3]}")
    (work / "paths.txt").write_text("\n".join(catalog["path"]))
    return dict(seconds=t.seconds, files=len(catalog), rate=len(catalog) / t.seconds, cpu=t.cpu + t.cpu_children,
                peak_tree=tree.peak, paths=str(work / "paths.txt"))


@contextmanager
def _started_pool(n_processes: int):
    """The build's executor with its workers already started: a build starts them once for all its stages
    (the end-to-end row includes that start)."""
    from tglc_builder.executor import Executor

    with Executor(n_processes) as pool:
        list(pool.run(os.getpid, [()] * n_processes, total=n_processes, desc="starting workers", unit="process",
                      weights=[1] * n_processes, lost=lambda task, error: None))
        yield pool


def _minimal_worker(url: str, paths: list[str], out: str, connections: int) -> int:
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


def task_download_floor(scratch: Path, url: str, paths: str, directory: str, n_processes: int = 2,
                        connections: int = 8) -> dict:
    """A minimal concurrent client: per process one requests.Session and ``connections`` threads doing plain GETs
    (no retries, no validation, no atomic rename), writing each body to a flat folder; same processes x connections
    as ours."""
    from concurrent.futures import ProcessPoolExecutor

    rel = Path(paths).read_text().split("\n")
    parts = [rel[i::n_processes] for i in range(n_processes)]
    with ProcessPoolExecutor(n_processes) as pool:
        list(pool.map(int, [0] * n_processes))  # start the workers before the clock
        with Timer() as t:
            sizes = list(pool.map(_minimal_worker, [url] * n_processes, parts,
                                  [f"{directory}/{i}" for i in range(n_processes)], [connections] * n_processes))
    return dict(seconds=t.seconds, files=len(rel), rate=len(rel) / t.seconds, bytes=sum(sizes))


def stage_download(ctx: Ctx) -> list[dict]:
    from tglc_builder.fetch import DEFAULT_CONNECTIONS

    n = ctx.sizes["download_n"]
    rows = []
    for latency in ctx.sizes["latencies"]:
        with archive_process(ctx, n, latency) as url:
            work = ctx.dir("download", f"lat{latency}", fresh=True)
            ours = ctx.task("download", url=url, directory=str(work / "ours"))
            shutil.rmtree(work / "ours" / "fits")
            floor = ctx.task("download_floor", url=url, paths=ours["paths"], directory=str(work / "floor"),
                             connections=DEFAULT_CONNECTIONS // 2)
            shutil.rmtree(work)
        goal = latency == 0.05
        rows.append(row(
            "download", f"files/s, {ours['files']:,} files, archive latency {latency * 1000:.0f} ms per file, "
                        f"default settings (-n 2, {DEFAULT_CONNECTIONS} connections in all)",
            fmt_rate(ours["rate"], "files/s"), ours["rate"],
            f"{fmt_rate(floor['rate'], 'files/s')} (minimal client: 2 processes x {DEFAULT_CONNECTIONS // 2} "
            "threads of plain requests GETs)", floor["rate"],
            ">= 300 files/s" if goal else "—", ours["rate"] >= GOALS["download_rate_50ms"] if goal else None,
            f"{ours['seconds']:.1f} s wall, {ours['cpu']:.1f} s CPU (driver + workers), "
            f"peak RSS (all processes) {fmt_bytes(ours['peak_tree'])}"))
    return rows


# =================================================================================================================
# Stage: convert
# =================================================================================================================
def task_convert_pixel(scratch: Path, catalog: str, fits_dir: str, output_dir: str, repeat_to: int | None = None
                       ) -> dict:
    """One pixel as one shard through ``convert.convert_shard`` in this process: light curves per second on one
    core (``repeat_to``: the catalog's rows repeated to that many, for a big pixel from few files)."""
    import numpy as np
    from tglc_builder import convert

    table = _read_catalog(catalog)
    if repeat_to:
        table = table[np.arange(repeat_to) % len(table)]
    table["healpix"] = int(table["healpix"][0])
    [shard] = convert.plan_shards(table, rows_per_shard=len(table))
    base = current_rss()
    with Timer() as t:
        result = convert.convert_shard(shard, fits_dir, output_dir, SECTOR, overwrite=True)
    return dict(seconds=t.seconds, rows=result.n_rows, rate=result.n_rows / t.seconds, cpu=t.cpu,
                failures=len(result.failures), peak_rss=maxrss(), base_rss=base, files=[str(result.file)])


def task_convert_catalog(scratch: Path, catalog: str, fits_dir: str, output_dir: str, n_processes: int = 2) -> dict:
    from tglc_builder import convert

    table = _read_catalog(catalog)
    with _started_pool(n_processes) as pool, TreePeak() as tree, Timer() as t:
        results = convert.convert_catalog(table, fits_dir, output_dir, SECTOR, pool, overwrite=True)
    rows = sum(r.n_rows for r in results)
    return dict(seconds=t.seconds, rows=rows, rate=rows / t.seconds, cpu=t.cpu + t.cpu_children,
                failures=sum(len(r.failures) for r in results), pixels=len(results), peak_tree=tree.peak,
                peak_rss_child=maxrss(resource.RUSAGE_CHILDREN))


def task_convert_floor(scratch: Path, catalog: str, fits_dir: str) -> dict:
    """The floor: open().read() every file and np.frombuffer its binary table (columns left big-endian)."""
    import numpy as np

    table = _read_catalog(catalog)
    paths = [os.path.join(fits_dir, p) for p in table["path"]]
    naxis = re.compile(rb"NAXIS2  =\s*(\d+)")
    with Timer() as t:
        total = 0
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            # HDU 0 is header-only in v1; HDU 1's header ends at the first END card after block 1.
            end = data.find(b"END" + b" " * 77, 2880)
            start = (end // 2880 + 1) * 2880
            n = int(naxis.search(data, 2880).group(1))
            width = (len(data) - start) // max(n, 1)
            arr = np.frombuffer(data, dtype=np.dtype((np.void, width)) if width else np.uint8, count=n, offset=start)
            total += arr.size
    return dict(seconds=t.seconds, rows=len(paths), rate=len(paths) / t.seconds)


def stage_convert(ctx: Ctx) -> list[dict]:
    n = ctx.sizes["convert_n"]
    info = ensure_fits(ctx, n)
    out = ctx.dir("convert", fresh=True)
    floor = ctx.task("convert_floor", catalog=info["catalog"], fits_dir=info["fits_dir"])  # also warms the cache
    floor = ctx.task("convert_floor", catalog=info["catalog"], fits_dir=info["fits_dir"])
    single = ctx.task("convert_pixel", catalog=info["catalog"], fits_dir=info["fits_dir"],
                      output_dir=str(out / "one-pixel"))
    pool = ctx.task("convert_catalog", catalog=info["catalog"], fits_dir=info["fits_dir"],
                    output_dir=str(out / "sector"), n_processes=2)
    for result in (single, pool):
        if result["failures"] or result["rows"] != info["rows"]:
            raise BenchError(f"convert: {result['rows']} rows of {info['rows']}, {result['failures']} failures")
    ref = f"{fmt_rate(floor['rate'], 'files/s')} (open().read() + np.frombuffer, one core)"
    return [
        row("convert", f"light curves/s on one core: convert_shard, one pixel (one shard) of {n:,} "
                       f"{N_CADENCES}-cadence v1 files",
            fmt_rate(single["rate"], "/s"), single["rate"], ref, floor["rate"], ">= 3,000 /s/core",
            single["rate"] >= GOALS["convert_rate"],
            f"{single['seconds']:.1f} s wall, {single['cpu']:.1f} s CPU, peak RSS {fmt_bytes(single['peak_rss'])}; "
            f"the local archive generates such a file in {info['ms_per_file']:.2f} ms"),
        row("convert", f"light curves/s per core: convert_catalog -n 2, the same {n:,} files as a sector "
                       f"({info['pixels']} pixels, ~{n // max(info['pixels'], 1)} rows each)",
            fmt_rate(pool["rate"] / 2, "/s/core"), pool["rate"] / 2, ref, floor["rate"], ">= 3,000 /s/core",
            pool["rate"] / 2 >= GOALS["convert_rate"],
            f"{pool['rows'] / pool['seconds']:,.0f} /s in total, {pool['seconds']:.1f} s wall, "
            f"{pool['cpu']:.1f} s CPU, peak RSS (all processes) {fmt_bytes(pool['peak_tree'])}"),
    ]


# =================================================================================================================
# Stage: convert memory
# =================================================================================================================
def stage_convert_memory(ctx: Ctx) -> list[dict]:
    info = ensure_fits(ctx, ctx.sizes["memory_distinct"])
    results = []
    for k in ctx.sizes["memory_rows"]:
        out = ctx.dir("memory", str(k), fresh=True)
        results.append((k, ctx.task("convert_pixel", catalog=info["catalog"], fits_dir=info["fits_dir"],
                                    output_dir=str(out), repeat_to=k)))
        shutil.rmtree(out)
    rows = []
    first_k, first = results[0]
    for k, r in results:
        raw = k * N_CADENCES * RAW_BYTES_PER_CADENCE
        last = k == results[-1][0]
        growth = (r["peak_rss"] - first["peak_rss"]) / max(k - first_k, 1) * 10_000
        rows.append(row(
            "convert memory", f"peak RSS, convert_shard on a pixel (one shard) of {k:,} light curves "
                              f"({info['rows']} distinct files, repeated)",
            fmt_bytes(r["peak_rss"]), r["peak_rss"], f"{fmt_bytes(raw)} (the pixel's raw arrays)", raw,
            "<= 1 GB, flat" if last else "—", (r["peak_rss"] <= GOALS["memory_rss"]) if last else None,
            f"{r['rate']:,.0f} /s; before converting (python + imports + catalog): {fmt_bytes(r['base_rss'])}"
            + (f"; growth {fmt_bytes(max(growth, 0))} per 10,000 rows since {first_k:,}" if k != first_k else "")))
    return rows


# =================================================================================================================
# Stage: output size
# =================================================================================================================
def task_output_size(scratch: Path, files: list[str], catalog: str, fits_dir: str, sample: int = 200) -> dict:
    """Bytes per light curve on disk, a lossless check of a sample of rows against the reader, and the same
    filters applied to the one real TGLC file we have."""
    import h5py
    import numpy as np
    from tglc_builder.reader import read_tglc

    table = _read_catalog(catalog)
    by_gaia = {int(g): p for g, p in zip(table["gaiadr3_id"], table["path"])}
    size = sum(os.path.getsize(f) for f in files)
    rows, checked, mismatches, cadences = 0, 0, [], 0
    columns = {"time": "time", "psf_flux": "psf_flux", "aper_flux": "aperture_flux", "tess_flags": "TESS_flags",
               "tglc_flags": "TGLC_flags"}
    filters = None
    for file in files:
        with h5py.File(file, "r") as h5:
            n = len(h5["gaiadr3_id"])
            rows += n
            cadences += int(h5["n_cadences"][()].sum())
            if filters is None:
                d = h5["time"]
                filters = {name: dict(compression=h5[name].compression, compression_opts=h5[name].compression_opts,
                                      shuffle=h5[name].shuffle, chunks=h5[name].chunks) for name in columns}
                filters["_describe"] = ", ".join(
                    f"{name} {h5[name].compression}" + (f"({h5[name].compression_opts})"
                                                        if h5[name].compression_opts else "")
                    + ("+shuffle" if h5[name].shuffle else "") for name in columns) + f", chunks {d.chunks}"
            for i in np.linspace(0, n - 1, min(n, max(1, sample // len(files)))).astype(int).tolist():
                lc = read_tglc(os.path.join(fits_dir, by_gaia[int(h5["gaiadr3_id"][i])]))
                m = int(h5["n_cadences"][i])
                for name, col in columns.items():
                    stored, source = h5[name][i], lc.data[col]
                    same = (len(source) == m and np.array_equal(stored[:m], source.astype(stored.dtype), equal_nan=True)
                            and (np.isnan(stored[m:]).all() if stored.dtype.kind == "f" else not stored[m:].any()))
                    if not same:
                        mismatches.append(f"{file}[{i}].{name}")
                checked += 1

    # The one real file: its five arrays, written with the build's own filters (storage bytes only, no metadata).
    real = None
    sample_file = REPO.parent / "shared" / "data" / \
        "hlsp_tglc_tess_ffi_gaiaid-6399196263939178880-s0001-cam2-ccd1_tess_v1_llc.fits"
    if sample_file.exists() and filters:
        lc = read_tglc(sample_file)
        with h5py.File(Path(scratch) / "real-sample.hdf5", "w") as h5:
            real = 0
            for name, col in columns.items():
                values = lc.data[col].astype(h5py.File(files[0], "r")[name].dtype)[None, :]
                f = filters[name]
                chunks = (1, values.shape[1]) if f["chunks"] else None
                d = h5.create_dataset(name, data=values, chunks=chunks, compression=f["compression"],
                                      compression_opts=f["compression_opts"], shuffle=f["shuffle"])
                real += d.id.get_storage_size()
        real = dict(bytes=real, cadences=len(lc.data))
    return dict(bytes=size, rows=rows, per_lc=size / rows, mean_cadences=cadences / rows, checked=checked,
                mismatches=mismatches[:10], n_mismatches=len(mismatches), filters=filters and filters["_describe"],
                real=real)


def stage_output_size(ctx: Ctx) -> list[dict]:
    n = ctx.sizes["convert_n"]
    info = ensure_fits(ctx, n)
    out = ctx.scratch / "convert" / "one-pixel"
    files = sorted(str(p) for p in out.glob("**/*.hdf5"))
    if not files:  # the convert stage did not run in this invocation
        files = ctx.task("convert_pixel", catalog=info["catalog"], fits_dir=info["fits_dir"],
                         output_dir=str(ctx.dir("output_size", fresh=True)))["files"]
    r = ctx.task("output_size", files=files, catalog=info["catalog"], fits_dir=info["fits_dir"])
    raw = N_CADENCES * RAW_BYTES_PER_CADENCE
    lossless = r["n_mismatches"] == 0
    rows = [row("output size", f"bytes per {N_CADENCES}-cadence light curve on disk (synthetic sector, {r['rows']:,} "
                               f"rows in one pixel; {r['filters']})",
                fmt_bytes(r["per_lc"]), r["per_lc"], f"{fmt_bytes(raw)} (raw arrays: f8 + 2 f4 + 2 i2 per cadence)",
                raw, "<= 12 KB, lossless", r["per_lc"] <= GOALS["bytes_per_lc"] and lossless,
                f"lossless: {r['checked']} rows compared value for value with the FITS files, "
                f"{r['n_mismatches']} mismatches {r['mismatches']}")]
    if r["real"]:
        real_raw = r["real"]["cadences"] * RAW_BYTES_PER_CADENCE
        rows.append(row("output size", f"the one real TGLC file (sector 1, {r['real']['cadences']} cadences) under the "
                                       "same filters: storage bytes of its five arrays",
                        fmt_bytes(r["real"]["bytes"]), r["real"]["bytes"], f"{fmt_bytes(real_raw)} (raw arrays)",
                        real_raw, "—", None, "real noise compresses differently from synthetic; one file only"))
    return rows


# =================================================================================================================
# Stage: loading with datasets
# =================================================================================================================
def task_load(scratch: Path, path: str, cache_dir: str, mode: str) -> dict:
    """``prepare``: load_tglc(path) (HDF5 -> Arrow cache); ``iterate``: every row of the prepared dataset with
    with_format("numpy", dtype=None); ``stream``: every row of load_tglc(path, streaming=True)."""
    from tglc_builder import load_tglc

    rows = 0
    with Timer() as t:
        if mode == "stream":
            for example in load_tglc(path, streaming=True, cache_dir=cache_dir):
                rows += example["lightcurve"]["time"] is not None
        else:
            ds = load_tglc(path, cache_dir=cache_dir)
            if mode == "iterate":
                for example in ds.with_format("numpy", dtype=None):
                    rows += example["lightcurve"]["time"].dtype == "float64"
            else:
                rows = len(ds)
    return dict(seconds=t.seconds, rows=rows, rate=rows / t.seconds, peak_rss=maxrss())


def task_h5_read(scratch: Path, files: list[str]) -> dict:
    """The floor: a plain h5py read of every dataset of the same files, rows trimmed to n_cadences as numpy views."""
    import h5py

    rows = 0
    with Timer() as t:
        for file in files:
            with h5py.File(file, "r") as h5:
                data = {name: h5[name][()] for name in h5}
            for i, n in enumerate(data["n_cadences"].tolist()):
                _ = [data[name][i, :n] for name in ("time", "psf_flux", "aper_flux", "tess_flags", "tglc_flags")]
                rows += 1
    return dict(seconds=t.seconds, rows=rows, rate=rows / t.seconds, peak_rss=maxrss())


def task_uncompressed_copy(scratch: Path, src: str, dst: str) -> dict:
    """The same dataset without compression (contiguous), to show what compression costs the loader."""
    import h5py

    for file in Path(src).glob("TGLC/**/*.hdf5"):
        target = Path(dst) / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(file, "r") as a, h5py.File(target, "w") as b:
            b.attrs.update(a.attrs)
            for name in a:
                b.create_dataset(name, data=a[name][()])
    shutil.copy(Path(src) / "tglc.py", Path(dst) / "tglc.py")
    return dict(bytes=sum(f.stat().st_size for f in Path(dst).glob("TGLC/**/*.hdf5")))


def stage_loading(ctx: Ctx) -> list[dict]:
    n = ctx.sizes["loading_n"]
    info = ensure_fits(ctx, n)
    out = ctx.dir("loading", fresh=True)
    ctx.task("convert_catalog", catalog=info["catalog"], fits_dir=info["fits_dir"], output_dir=str(out / "built"),
             n_processes=2)
    files = sorted(str(p) for p in (out / "built").glob("TGLC/**/*.hdf5"))
    ctx.task("uncompressed_copy", src=str(out / "built"), dst=str(out / "plain"))
    floor = ctx.task("h5_read", files=files)
    floor = ctx.task("h5_read", files=files)

    def best(path: str, mode: str) -> dict:  # the faster of two runs, alternating, to keep noise out of ratios
        runs = []
        for attempt in range(2):
            cache = out / f"cache-{Path(path).name}-{mode}-{attempt}"  # "prepare" starts from an empty cache
            runs.append(ctx.task("load", path=path, cache_dir=str(cache), mode=mode))
        return max(runs, key=lambda r: r["rate"])

    prep, prep_plain = best(str(out / "built"), "prepare"), best(str(out / "plain"), "prepare")
    stream, stream_plain = best(str(out / "built"), "stream"), best(str(out / "plain"), "stream")
    it = ctx.task("load", path=str(out / "built"), cache_dir=str(out / "cache-built-prepare-0"), mode="iterate")
    ref = f"{fmt_rate(floor['rate'], 'rows/s')} (plain h5py read of the same files)"
    where = f"{prep['rows']:,} rows, {len(files)} files"
    return [
        row("loading", f"load_tglc(path) first call: HDF5 -> Arrow cache ({where})", fmt_rate(prep["rate"], "rows/s"),
            prep["rate"], ref, floor["rate"], "must not suffer", prep["rate"] >= 0.9 * prep_plain["rate"],
            f"same files stored uncompressed: {prep_plain['rate']:,.0f} rows/s (compressed/uncompressed "
            f"{prep['rate'] / prep_plain['rate']:.2f}x)"),
        row("loading", "iterate the prepared dataset, with_format(\"numpy\", dtype=None)",
            fmt_rate(it["rate"], "rows/s"), it["rate"], ref, floor["rate"], "—", None,
            "reads the Arrow cache, so it does not depend on the HDF5 layout"),
        row("loading", "load_tglc(path, streaming=True), every row", fmt_rate(stream["rate"], "rows/s"),
            stream["rate"], ref, floor["rate"], "must not suffer", stream["rate"] >= 0.9 * stream_plain["rate"],
            f"same files stored uncompressed: {stream_plain['rate']:,.0f} rows/s (compressed/uncompressed "
            f"{stream['rate'] / stream_plain['rate']:.2f}x)"),
    ]


# =================================================================================================================
# Stage: end to end
# =================================================================================================================
def task_e2e(scratch: Path, url: str, directory: str) -> dict:
    """The command line, exactly as a user runs it, against the archive; wall time and memory of the whole tree."""
    work = Path(directory)
    cmd = [sys.executable, "build_parent_sample.py", "-s", str(SECTOR), "--mast-url", url, "-n", "2",
           "--tglc_data_path", str(work / "tglc_data"), "--hdf5_output_path", str(work / "hdf5"),
           "--fits_output_path", str(work / "fits")]
    with open(work / "cli.log", "wb") as log, Timer() as t:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=_env())
        with TreePeak(proc.pid) as tree:
            code = proc.wait()
    if code:
        raise BenchError(f"the CLI exited with {code}; see {work / 'cli.log'}")
    rows = 0
    import h5py

    for file in (work / "hdf5").glob("TGLC/**/*.hdf5"):
        with h5py.File(file, "r") as h5:
            rows += len(h5["n_cadences"])
    return dict(seconds=t.seconds, cpu=t.cpu_children, peak_tree=tree.peak,
                peak_single=maxrss(resource.RUSAGE_CHILDREN), rows=rows, command=" ".join(cmd[1:]))


def task_import_floor(scratch: Path) -> dict:
    import build_parent_sample  # noqa: F401
    from tglc_builder import convert, fetch, reader  # noqa: F401

    return dict(rss=maxrss())


def stage_end_to_end(ctx: Ctx) -> list[dict]:
    n, latency = ctx.sizes["e2e_n"], ctx.sizes["e2e_latency"]
    work = ctx.dir("e2e", fresh=True)
    with archive_process(ctx, n, latency) as url:
        r = ctx.task("e2e", url=url, directory=str(work))
        shutil.rmtree(work / "fits")
        paths = work / "paths.txt"
        catalog = _read_catalog(str(next((work / "tglc_data").glob("**/*catalog*.hdf5"))))
        paths.write_text("\n".join(catalog["path"]))
        from tglc_builder.fetch import DEFAULT_CONNECTIONS

        dl = ctx.task("download_floor", url=url, paths=str(paths), directory=str(work / "floor"),
                      connections=DEFAULT_CONNECTIONS // 2)
    imports = ctx.task("import_floor")["rss"]
    what = f"{n:,}-object sector, archive latency {latency * 1000:.0f} ms, -n 2 (CLI)"
    return [
        row("end to end", f"wall time: {what}; {r['rows']:,} light curves written", f"{r['seconds']:.1f} s",
            r["seconds"], f"{dl['seconds']:.1f} s (minimal client downloading the same files)", dl["seconds"],
            "recorded", None, f"{r['cpu']:.1f} s CPU; {r['rows'] / r['seconds']:.0f} light curves/s overall"),
        row("end to end", "peak memory: all processes together (sampled every 20 ms)", fmt_bytes(r["peak_tree"]),
            r["peak_tree"], f"{fmt_bytes(3 * imports)} (3 idle interpreters with the project imported)",
            3 * imports, "recorded", None, f"largest single process: {fmt_bytes(r['peak_single'])}"),
    ]


# =================================================================================================================
# Report
# =================================================================================================================
def machine() -> dict:
    import h5py
    import numpy
    import pyarrow

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
                "HDF5": h5py.version.hdf5_version, "pyarrow": pyarrow.__version__}
    for name in ("astropy", "healpy", "requests", "urllib3", "datasets"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/RESULTS.md"],
                                    cwd=REPO, capture_output=True, text=True).stdout.strip())
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)), ram=mem,
                os=platform.platform(), versions=versions, commit=commit)


def table(rows: list[dict]) -> str:
    lines = ["| stage | measure | ours | reference (what) | ratio | goal | met? |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(f"| {r['stage']} | {r['measure']} | {r['ours']} | {r['reference']} | {r['ratio']} | "
                     f"{r['goal']} | {met} |")
    return "\n".join(lines)


def notes(rows: list[dict]) -> str:
    return "\n".join(f"- **{r['stage']}**, {r['measure']}: {r['note']}" for r in rows if r.get("note"))


def markdown(rows: list[dict], info: dict, command: str, elapsed: float, keep: str = "") -> str:
    v = info["versions"]
    text = f"""# Benchmark results

Produced by `{command}` (from the repository root) in {elapsed / 60:.1f} min, at commit {info['commit']}.

**Machine.** {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {fmt_bytes(info['ram'])} RAM,
{info['os']}. Python {v['python']}; {', '.join(f'{k} {x}' for k, x in v.items() if k != 'python')}.
Everything runs on this machine over loopback: the archive is `python -m tglc_builder.archive` in its own process.

`ratio` is ours / reference. For a rate (files/s, rows/s) higher is better; for a time, a size or memory lower is
better. Each reference is measured in the same run on the same data.

{table(rows)}

Details:

{notes(rows)}
"""
    return text + (("\n" + keep) if keep else "")


# =================================================================================================================
# Entry points
# =================================================================================================================
def run_stage(name: str, scratch: Path, size: str) -> dict:
    ctx = Ctx(scratch, size)
    t0 = time.perf_counter()
    rows = globals()[f"stage_{name}"](ctx)
    return dict(rows=rows, seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke version (< 1 minute)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {', '.join(STAGES)}")
    parser.add_argument("--out", help="also write the results as markdown to this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.task:  # one measurement, in this fresh process
        result = globals()[f"task_{args.task}"](Path(args.scratch), **json.loads(args.params))
        print(MARK + json.dumps(result), flush=True)
        return 0
    if args.stage:  # one stage, in this fresh process
        print(MARK + json.dumps(run_stage(args.stage, Path(args.scratch), args.size)), flush=True)
        return 0

    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    size = "quick" if args.quick else "full"
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    scratch = Path(tempfile.mkdtemp(prefix="tglc-bench-"))
    print(f"Scratch folder: {scratch} (log: {scratch / 'bench.log'})", flush=True)
    rows, failed, t0 = [], [], time.perf_counter()
    try:
        for stage in stages:
            print(f"[{stage}] running ...", flush=True)
            try:
                result = _spawn(["--stage", stage, "--scratch", str(scratch), "--size", size, "--json"],
                                scratch / "bench.log")
            except BenchError as exc:
                print(f"[{stage}] FAILED: {exc}", flush=True)
                failed.append(stage)
                rows.append(row(stage, "(failed: see the log)", "—", None, met=False))
                continue
            rows.extend(result["rows"])
            print(f"[{stage}] done in {result['seconds']:.0f} s", flush=True)
            for r in result["rows"]:
                print(f"    {r['measure']}: {r['ours']}  vs {r['reference']}  ratio {r['ratio']}  goal {r['goal']}")
    finally:
        elapsed = time.perf_counter() - t0
        if args.keep or failed:
            print(f"Scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    info = machine()
    print()
    print(table(rows))
    print(f"\n{len(stages)} stage(s) in {elapsed / 60:.1f} min on {info['cpu']}, {info['usable_cores']} cores")
    if args.out:
        out = Path(args.out)
        keep = ""
        if out.exists():  # hand-written analysis below "## Analysis" survives a rerun
            old = out.read_text()
            if "\n## Analysis" in old:
                keep = old[old.index("\n## Analysis") + 1:]
        out.write_text(markdown(rows, info, command, elapsed, keep))
        print(f"Wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
