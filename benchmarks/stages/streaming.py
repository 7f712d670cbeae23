"""Streaming scratch: with ``--clean-fits``, the most FITS bytes on disk at any moment of a build (the fits folder
sampled every 50 ms), as a share of the sector's FITS bytes."""

from __future__ import annotations

from pathlib import Path

from ..data import read_catalog, sector_fits_bytes
from ..harness import Ctx, archive_process, hdf5_rows, run_cli, task
from ..report import fmt_bytes, row
from .end_to_end import N_PROCESSES, cli_args

NAME = "streaming"
SIZES = {"full": dict(n=20_000, latency=0.0), "quick": dict(n=1_000, latency=0.0)}


@task
def build(url: str, directory: str, n: int) -> dict:
    work = Path(directory)
    result = run_cli(cli_args(url, work, "--clean-fits"), work, watch=work / "fits")
    result["rows"] = hdf5_rows(work / "hdf5")
    catalog = read_catalog(str(next((work / "tglc_data").glob("**/*catalog*.hdf5"))))
    result["catalog_rows"] = len(catalog)
    result["sector_bytes"] = sector_fits_bytes(n, catalog)
    result["left"] = sum(1 for p in (work / "fits").rglob("*") if p.is_file())
    return result


def measure(ctx: Ctx) -> list[dict]:
    n, latency = ctx.sizes["n"], ctx.sizes["latency"]
    work = ctx.dir("streaming", fresh=True)
    with archive_process(ctx, n, latency) as url:
        r = ctx.task(build, url=url, directory=str(work), n=n)
    return [row(
        "streaming.scratch", "streaming scratch",
        f"peak FITS bytes on disk with --clean-fits: {n:,}-object sector, archive latency {latency * 1000:.0f} ms, "
        f"-n {N_PROCESSES} (CLI); {r['rows']:,} light curves written",
        f"{fmt_bytes(r['folder_peak'])} ({r['folder_peak_files']:,} files at most)", r["folder_peak"],
        f"{fmt_bytes(r['sector_bytes'])} (the sector's {r['catalog_rows']:,} FITS files)", r["sector_bytes"],
        f"fits folder sampled every 50 ms ({r['folder_samples']:,} samples over {r['seconds']:.1f} s); "
        f"{r['left']} file(s) left at the end")]
