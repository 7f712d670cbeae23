"""Tiny: the size of a ``--tiny`` build's output files against its FITS files (small files must stay small)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..harness import Ctx, archive_process, folder_bytes, hdf5_rows, run_cli, task
from ..report import fmt_bytes, row
from .end_to_end import cli_args

NAME = "tiny"
SIZES = {"full": dict(n=1_000), "quick": dict(n=1_000)}


@task
def build(url: str, directory: str, fmt: str) -> dict:
    work = Path(directory)
    args = cli_args(url, work, "--tiny", "--format", fmt, "--hats_output_path", str(work / "hats"))
    result = run_cli(args, work)
    result.update(rows=hdf5_rows(work / "hdf5"), fits=folder_bytes(work / "fits", "**/*.fits"),
                  fits_files=len(list((work / "fits").glob("**/*.fits"))),
                  hdf5=folder_bytes(work / "hdf5", "TGLC/**/*.hdf5"), hdf5_all=folder_bytes(work / "hdf5"),
                  hats=folder_bytes(work / "hats", "**/*.parquet") if (work / "hats").exists() else None,
                  hats_all=folder_bytes(work / "hats") if (work / "hats").exists() else None)
    return result


def measure(ctx: Ctx) -> list[dict]:
    have_hats = all(importlib.util.find_spec(m) is not None for m in ("tglc_builder.formats.hats", "hats", "lsdb"))
    fmt = "both" if have_hats else "hdf5"
    with archive_process(ctx, ctx.sizes["n"], 0.0) as url:
        r = ctx.task(build, url=url, directory=str(ctx.dir("tiny", fresh=True)), fmt=fmt)
    fits = f"{fmt_bytes(r['fits'])} (its {r['fits_files']} FITS files)"
    rows = [row("tiny.hdf5", "tiny", f"--tiny demo build (--format {fmt}): HDF5 data files, {r['rows']} light curves",
                fmt_bytes(r["hdf5"]), r["hdf5"], fits, r["fits"],
                f"the whole HDF5 folder with tglc.py and the dataset card: {fmt_bytes(r['hdf5_all'])}")]
    if r["hats"] is not None:
        rows.append(row("tiny.hats", "tiny", "the same build's HATS Parquet files", fmt_bytes(r["hats"]), r["hats"],
                        fits, r["fits"], f"the whole HATS collection with its metadata: {fmt_bytes(r['hats_all'])}"))
    else:
        rows.append(row("tiny.hats", "tiny", "the same build's HATS Parquet files",
                        "skipped: --format hats is not in the tree yet", None))
    return rows
