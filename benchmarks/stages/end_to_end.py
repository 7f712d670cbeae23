"""End to end: the command line exactly as a user runs it, against the demo archive at 50 ms per file, beside a plain
concurrent client only downloading the same files with the same 24 connections; and the memory of the whole run.

Both are run in alternation, ``rounds`` times each, and the best time of each is compared (as ``timeit`` does: on a
shared machine the slow runs measure the machine). Nothing is deleted until every run is done: ext4 makes files and
folders slowly for half a minute after a large delete (it skips the inodes just freed), which would charge one
run for the previous one's clean-up."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..clients import plain_client, requests_client
from ..data import read_catalog
from ..harness import SECTOR, Ctx, archive_process, hdf5_rows, maxrss, run_cli, task
from ..report import fmt_bytes, row

NAME = "end_to_end"
SIZES = {"full": dict(n=20_000, latency=0.05, rounds=2, requests_client=True),
         "quick": dict(n=500, latency=0.05, rounds=1, requests_client=False)}
N_PROCESSES = 2


def cli_args(url: str, work: Path, *extra: str) -> list[str]:
    return ["-s", str(SECTOR), "--mast-url", url, "-n", str(N_PROCESSES), "--tglc_data_path", str(work / "tglc_data"),
            "--hdf5_output_path", str(work / "hdf5"), "--fits_output_path", str(work / "fits"), *extra]


@task
def build(url: str, directory: str) -> dict:
    work = Path(directory)
    result = run_cli(cli_args(url, work), work)
    result["rows"] = hdf5_rows(work / "hdf5")
    catalog = read_catalog(str(next((work / "tglc_data").glob("**/*catalog*.hdf5"))))
    (work / "paths.txt").write_text("\n".join(p.decode() if isinstance(p, bytes) else p for p in catalog["path"]))
    result["paths"] = str(work / "paths.txt")
    result["work"] = str(work)
    return result


@task
def import_floor() -> dict:
    import build_parent_sample  # noqa: F401
    from tglc_builder import run, units  # noqa: F401

    return dict(rss=maxrss())


def _seconds(result: dict) -> float:
    return result["seconds"]


def measure(ctx: Ctx) -> list[dict]:
    from tglc_builder.sources import DEFAULT_CONNECTIONS

    n, latency, rounds = ctx.sizes["n"], ctx.sizes["latency"], ctx.sizes["rounds"]
    work = ctx.dir("e2e", fresh=True)
    ours, refs = [], []
    with archive_process(ctx, n, latency) as url:
        for i in range(rounds):
            ours.append(ctx.task(build, url=url, directory=str(work / f"ours-{i}")))
            refs.append(ctx.task(plain_client(), url=url, paths=ours[0]["paths"], directory=str(work / f"client-{i}"),
                                 connections=DEFAULT_CONNECTIONS))
        other = None
        if ctx.sizes["requests_client"]:
            other = ctx.task(requests_client, url=url, paths=ours[0]["paths"], directory=str(work / "requests"),
                             n_processes=N_PROCESSES, connections=DEFAULT_CONNECTIONS)
    shutil.rmtree(work)
    r, ref = min(ours, key=_seconds), min(refs, key=_seconds)
    runs = ""
    if rounds > 1:
        runs = (f"best of {rounds} runs each, in alternation (ours {', '.join(f'{_seconds(x):.1f}' for x in ours)} s; "
                f"the client {', '.join(f'{_seconds(x):.1f}' for x in refs)} s); ")
    peak = max(ours, key=lambda x: x["peak_tree"])
    imports = ctx.task(import_floor)["rss"]
    what = f"{n:,}-object sector, archive latency {latency * 1000:.0f} ms, -n {N_PROCESSES} (CLI, default settings)"
    also = (f"; the plain requests client of the earlier runs ({other['what']}) took {other['seconds']:.1f} s, so "
            f"{r['seconds'] / other['seconds']:.2f}x that") if other else ""
    return [
        row("end_to_end.wall", "end to end", f"wall time: {what}; {r['rows']:,} light curves written",
            f"{r['seconds']:.1f} s", r["seconds"],
            f"{ref['seconds']:.1f} s (plain client only downloading the same files: {ref['what']})", ref["seconds"],
            f"{runs}{r['cpu']:.1f} s CPU; {r['rows'] / r['seconds']:.0f} light curves/s overall{also}. Command: "
            f"`{r['command'].replace(r['work'], 'WORK')}`"),
        row("end_to_end.memory", "end to end", "peak memory: all processes together (sampled every 20 ms)",
            fmt_bytes(peak["peak_tree"]), peak["peak_tree"],
            f"{fmt_bytes(3 * imports)} (3 idle interpreters with the project imported)", 3 * imports,
            f"the larger of the runs above; largest single process: {fmt_bytes(peak['peak_single'])}"),
    ]
