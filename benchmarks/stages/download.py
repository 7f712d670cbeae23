"""Download: files/s of the build's fetch step (``run.fetch_only``, default settings) against the demo archive at
0 and 50 ms per file, beside a minimal concurrent client with the same concurrency."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..clients import requests_client, started_executor
from ..harness import SECTOR, BenchError, Ctx, Timer, TreePeak, archive_process, task
from ..report import fmt_bytes, fmt_rate, row

NAME = "download"
SIZES = {"full": dict(n=10_000, latencies=(0.0, 0.05)), "quick": dict(n=1_000, latencies=(0.0, 0.05))}
N_PROCESSES = 2


@task
def fetch(url: str, directory: str, n_processes: int = N_PROCESSES) -> dict:
    """The seed's ``batched_download`` step: catalog from the archive's listings, then ``run.fetch_only``."""
    from tglc_builder import run
    from tglc_builder.arguments import BuildArguments

    work = Path(directory)
    args = BuildArguments(sector=SECTOR, tglc_data_path=work / "data", fits_dir=work / "fits",
                          hdf5_output_dir=work / "hdf5", mast_url=url, n_processes=n_processes)
    with started_executor(n_processes) as executor:
        source = run.open_build_source(args, executor.workers)
        catalog = run.make_catalog(args, source, tiny=False, save=False)
        with TreePeak() as tree, Timer() as t:
            summary = run.fetch_only(args, catalog, source, executor)
    if summary.failures or summary.downloaded != len(catalog):
        raise BenchError(f"{summary.downloaded} of {len(catalog)} downloaded, {len(summary.failures)} failed: "
                         f"{summary.failures[:3]}")
    (work / "paths.txt").write_text("\n".join(p.decode() if isinstance(p, bytes) else p for p in catalog["path"]))
    return dict(seconds=t.seconds, files=len(catalog), rate=len(catalog) / t.seconds, cpu=tree.cpu,
                peak_tree=tree.peak, paths=str(work / "paths.txt"), connections=args.connections)


def measure(ctx: Ctx) -> list[dict]:
    rows = []
    for latency in ctx.sizes["latencies"]:
        with archive_process(ctx, ctx.sizes["n"], latency) as url:
            work = ctx.dir("download", f"lat{latency}", fresh=True)
            ours = ctx.task(fetch, url=url, directory=str(work / "ours"))
            shutil.rmtree(work / "ours" / "fits")
            ref = ctx.task(requests_client, url=url, paths=ours["paths"], directory=str(work / "floor"),
                           n_processes=N_PROCESSES, connections=ours["connections"])
            shutil.rmtree(work)
        ms = f"{latency * 1000:.0f}ms"
        rows.append(row(
            f"download.{ms}", "download",
            f"files/s, {ours['files']:,} files, archive latency {latency * 1000:.0f} ms per file, default settings "
            f"(-n {N_PROCESSES}, {ours['connections']} connections in all)",
            fmt_rate(ours["rate"], "files/s"), ours["rate"],
            f"{fmt_rate(ref['rate'], 'files/s')} (minimal client: {ref['what']})", ref["rate"],
            f"{ours['seconds']:.1f} s wall, {ours['cpu']:.1f} s CPU (driver + workers), peak RSS (all processes) "
            f"{fmt_bytes(ours['peak_tree'])}"))
    return rows
