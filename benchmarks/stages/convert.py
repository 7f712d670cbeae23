"""Convert: light curves/s from FITS files on disk into the HDF5 output, one pixel on one core (the work unit
``units.build_unit``, planned as a build plans it) and a whole sector over two processes (``run.write_outputs``),
beside a bare read of the same files."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..clients import started_executor
from ..data import ensure_tree, read_catalog
from ..harness import N_CADENCES, REPO, SECTOR, BenchError, Ctx, Timer, TreePeak, current_rss, maxrss, task
from ..report import fmt_bytes, fmt_rate, row

NAME = "convert"
SIZES = {"full": dict(n=20_000), "quick": dict(n=1_000)}


def unit_settings(root: str, output_dir: str, fmt: str = "hdf5", hats_dir: str | None = None):
    """What a build's units share, for FITS files already on disk under ``root`` (read in place)."""
    from tglc_builder import units
    from tglc_builder.formats import make_writers
    from tglc_builder.sources.local import LocalSource

    args = build_args(root, output_dir, 1, fmt, hats_dir)
    writers = make_writers(args)
    return units.UnitSettings(SECTOR, LocalSource(root), root, tuple(writers), args.column_set), writers


@task
def build_pixel(catalog: str, root: str, output_dir: str, repeat_to: int | None = None) -> dict:
    """One pixel in this process, planned as a build plans it (shards of at most ``plan.rows_per_shard`` rows,
    grouped into work units) and written unit after unit with ``units.build_unit``: light curves per second on one
    core, and peak memory (``repeat_to``: the catalog's rows repeated to that many, for a big pixel from few
    files)."""
    import numpy as np
    from tglc_builder import plan, units

    table = read_catalog(catalog)
    if repeat_to:
        table = table[np.arange(repeat_to) % len(table)]
    table["healpix"] = int(table["healpix"][0])
    shards = plan.plan_shards(table, plan.rows_per_shard(SECTOR))
    settings, writers = unit_settings(root, output_dir)
    work = plan.work_units(plan.make_plan(shards, writers, overwrite=True).pending, 1, plan.unit_rows(SECTOR))
    base = current_rss()
    written, failures = 0, []
    with Timer() as t:
        for unit in work:
            result = units.build_unit(unit, settings)
            written += result.written
            failures += result.failures
    return dict(seconds=t.seconds, rows=written, rate=written / t.seconds, cpu=t.cpu, failures=len(failures),
                first_failures=[str(f) for f in failures[:3]], peak_rss=maxrss(), base_rss=base,
                shards=len(shards), shard_rows=max(len(s) for s in shards), units=len(work),
                files=[str(w.file(shard)) for w in writers for shard in shards])


def build_args(root: str, output_dir: str, n_processes: int, fmt: str = "hdf5", hats_dir: str | None = None):
    from tglc_builder.arguments import BuildArguments

    work = Path(output_dir)
    return BuildArguments(sector=SECTOR, tglc_data_path=work / "data", hdf5_output_dir=work / "hdf5",
                          hats_output_dir=hats_dir or work / "hats", fits_dir=root, n_processes=n_processes,
                          format=fmt, overwrite=True)


@task
def write_sector(catalog: str, root: str, output_dir: str, n_processes: int = 2, fmt: str = "hdf5") -> dict:
    """The seed's ``convert_fits_to_standard_format`` step: ``run.write_outputs`` over the build's executor, from
    the FITS files on disk (``LocalSource``), in ``fmt``."""
    from tglc_builder import run
    from tglc_builder.sources.local import LocalSource

    table = read_catalog(catalog)
    args = build_args(root, output_dir, n_processes, fmt)
    with started_executor(n_processes) as executor, TreePeak() as tree, Timer() as t:
        summary = run.write_outputs(args, table, LocalSource(root), executor)
    return dict(seconds=t.seconds, rows=summary.converted, rate=summary.converted / t.seconds,
                cpu=tree.cpu, failures=len(summary.failures), files=summary.files_written,
                peak_tree=tree.peak, hdf5=str(args.hdf5_output_dir), hats=str(args.hats_output_dir))


BEFORE = "a4a41bf"  # the commit before the redesign (the `before` column of RESULTS.md)
DENSE_BEFORE = "c5b315c"  # the commit before issue 27's cut of a small file's fixed costs (the density row)
DENSE_N = 3000  # objects of the density row's sector: ~25 rows per pixel, as --tiny builds and sparse edge pixels


def before_tree(ctx: Ctx, commit: str = BEFORE) -> str | None:
    """That commit's package, extracted from this clone's history into the scratch folder (None without git or
    without the commit, e.g. in a shallow clone)."""
    target = ctx.dir(f"before-{commit}", fresh=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "tglc_builder"], capture_output=True,
                                 check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return str(target)


@task
def build_pixel_before(catalog: str, root: str, output_dir: str, tree: str) -> dict:
    """The same pixel through the code before the redesign, in this process: its ``convert.convert_shard`` on its
    own plan (one shard of up to 50,000 rows), imported from ``tree`` instead of this checkout."""
    import sys

    for name in [m for m in sys.modules if m == "tglc_builder" or m.startswith("tglc_builder.")]:
        del sys.modules[name]
    sys.path.insert(0, tree)
    from tglc_builder import convert  # the old package: it has no units module, only convert

    table = read_catalog(catalog)
    table["healpix"] = int(table["healpix"][0])
    shards = convert.plan_shards(table)
    with Timer() as t:
        rows = sum(convert.convert_shard(shard, root, output_dir, SECTOR).n_rows for shard in shards)
    assert convert.__file__.startswith(tree), convert.__file__
    return dict(seconds=t.seconds, cpu=t.cpu, rows=rows, rate=rows / t.seconds)


@task
def build_dense(catalog: str, root: str, output_dir: str, tree: str | None = None) -> dict:
    """A sector of small files (~25 rows each) through ``run.write_outputs`` on one process (``-n 1``: the units
    run in this process; plan, units and the dataset card), imports done first (the card's too, which a build
    imports at its end); with ``tree``, through the package extracted there instead of this checkout."""
    import sys

    if tree:
        for name in [m for m in sys.modules if m == "tglc_builder" or m.startswith("tglc_builder.")]:
            del sys.modules[name]
        sys.path.insert(0, tree)
    from tglc_builder import run
    from tglc_builder.executor import Executor
    from tglc_builder.formats import card  # noqa: F401 - imported before, not counted
    from tglc_builder.sources.local import LocalSource

    assert tree is None or run.__file__.startswith(tree), run.__file__
    table = read_catalog(catalog)
    args = build_args(root, output_dir, 1)
    with Executor(1) as executor, Timer() as t:
        summary = run.write_outputs(args, table, LocalSource(root), executor)
    return dict(seconds=t.seconds, cpu=t.cpu, rows=summary.converted, files=summary.files_written,
                failures=len(summary.failures), first_failures=[str(f) for f in summary.failures[:3]])


@task
def read_floor(catalog: str, root: str) -> dict:
    """The floor: open().read() every file and np.frombuffer its binary table (columns left big-endian)."""
    import numpy as np

    table = read_catalog(catalog)
    paths = [os.path.join(root, p) for p in table["path"]]
    naxis = re.compile(rb"NAXIS2  =\s*(\d+)")
    with Timer() as t:
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            # HDU 0 is header-only in v1; HDU 1's header ends at the first END card after block 1.
            end = data.find(b"END" + b" " * 77, 2880)
            start = (end // 2880 + 1) * 2880
            n = int(naxis.search(data, 2880).group(1))
            width = (len(data) - start) // max(n, 1)
            np.frombuffer(data, dtype=np.dtype((np.void, width)) if width else np.uint8, count=n, offset=start)
    return dict(seconds=t.seconds, rows=len(paths), rate=len(paths) / t.seconds)


def check(result: dict, expected: int, what: str) -> None:
    if result["failures"] or result["rows"] != expected:
        raise BenchError(f"{what}: {result['rows']} rows of {expected}, {result['failures']} failures "
                         f"{result.get('first_failures', '')}")


def measure(ctx: Ctx) -> list[dict]:
    n = ctx.sizes["n"]
    info = ensure_tree(ctx, n)
    out = ctx.dir("convert", fresh=True)
    ref = ctx.task(read_floor, catalog=info["catalog"], root=info["root"])  # also warms the page cache
    ref = ctx.task(read_floor, catalog=info["catalog"], root=info["root"])
    single = ctx.task(build_pixel, catalog=info["catalog"], root=info["root"], output_dir=str(out / "one-pixel"))
    check(single, info["rows"], "convert one pixel")
    # Side by side with the code before the redesign, on the same files, alternating (the machine's speed drifts
    # between runs, so the `before` column alone cannot tell a change of code from a change of machine).
    tree, ours, theirs = before_tree(ctx), [], []
    for i in range(3 if tree else 0):
        ours.append(ctx.task(build_pixel, catalog=info["catalog"], root=info["root"],
                             output_dir=str(out / f"ours-{i}")))
        theirs.append(ctx.task(build_pixel_before, catalog=info["catalog"], root=info["root"],
                               output_dir=str(out / f"before-{i}"), tree=tree))
        shutil.rmtree(out / f"ours-{i}")
        shutil.rmtree(out / f"before-{i}")
    pool = ctx.task(write_sector, catalog=info["catalog"], root=info["root"], output_dir=str(out / "sector"))
    check(pool, info["rows"], "convert the sector")
    reference = f"{fmt_rate(ref['rate'], 'files/s')} (open().read() + np.frombuffer, one core)"
    side_by_side = []
    if theirs:
        mine, old = (min(r["cpu"] / r["rows"] for r in runs) for runs in (ours, theirs))
        side_by_side = [row(
            "convert.side_by_side", "convert",
            f"light curves per CPU second, one core, one pixel of {info['rows']:,} files: units.build_unit beside "
            f"the code of {BEFORE} (its convert_shard), alternately, 3 runs each, the best of each",
            fmt_rate(1 / mine, "/s"), 1 / mine, f"{fmt_rate(1 / old, '/s')} (the code of {BEFORE}, same files, "
                                                 "same moment)", 1 / old,
            "CPU seconds per run, ours: " + ", ".join(f"{r['cpu']:.2f}" for r in ours) + f"; {BEFORE}: "
            + ", ".join(f"{r['cpu']:.2f}" for r in theirs))]
    return [
        row("convert.one_core", "convert",
            f"light curves/s on one core: units.build_unit, one pixel of {info['rows']:,} {N_CADENCES}-cadence v1 "
            f"files ({single['shards']} shard(s) of <= {single['shard_rows']:,} rows, as a build plans it)",
            fmt_rate(single["rate"], "/s"), single["rate"], reference, ref["rate"],
            f"{single['seconds']:.1f} s wall, {single['cpu']:.1f} s CPU ({single['rows'] / single['cpu']:,.0f} light "
            f"curves per CPU second), peak RSS {fmt_bytes(single['peak_rss'])}; "
            f"the demo archive generates such a file in {info['ms_per_file']:.2f} ms"),
        row("convert.sector", "convert",
            f"light curves/s per core: run.write_outputs -n 2, the same {info['rows']:,} files as a sector "
            f"({info['pixels']} pixels, ~{info['rows'] // max(info['pixels'], 1)} rows each)",
            fmt_rate(pool["rate"] / 2, "/s/core"), pool["rate"] / 2, reference, ref["rate"],
            f"{pool['rate']:,.0f} /s in total, {pool['seconds']:.1f} s wall, {pool['cpu']:.1f} s CPU (driver and "
            f"workers: {pool['rows'] / pool['cpu']:,.0f} light curves per CPU second), peak RSS "
            f"(all processes) {fmt_bytes(pool['peak_tree'])}; includes the plan and the dataset card"),
        row("convert.peak_rss", "convert", "peak RSS of the one-pixel conversion above",
            fmt_bytes(single["peak_rss"]), single["peak_rss"],
            note=f"before converting (python + imports + catalog): {fmt_bytes(single['base_rss'])}"),
        *side_by_side,
        density_row(ctx, out),
    ]


def density_row(ctx: Ctx, out: Path) -> dict:
    """Light curves per CPU second of a one-process build of small files, beside the code before issue 27's cut of
    their fixed costs (alternately, 3 runs each, the best of each), and beside the same files' conversion as one
    pixel (what they cost without the fixed costs of 120 files)."""
    info = ensure_tree(ctx, DENSE_N)
    tree, ours, theirs = before_tree(ctx, DENSE_BEFORE), [], []
    for i in range(3):
        for runs, code in [(ours, None)] + ([(theirs, tree)] if tree else []):
            result = ctx.task(build_dense, catalog=info["catalog"], root=info["root"],
                              output_dir=str(out / f"dense-{i}"), tree=code)
            check(result, info["rows"], "convert the small files")
            runs.append(result)
            shutil.rmtree(out / f"dense-{i}")
    alone = ctx.task(build_pixel, catalog=info["catalog"], root=info["root"], output_dir=str(out / "dense-pixel"))
    check(alone, info["rows"], "convert the small files as one pixel")
    best = min(ours, key=lambda r: r["cpu"])
    rate = best["rows"] / best["cpu"]
    old = min(theirs, key=lambda r: r["cpu"]) if theirs else None
    return row(
        "convert.density", "convert",
        f"light curves per CPU second, one process: run.write_outputs -n 1 (plan, units, card) of {best['rows']:,} "
        f"light curves into {best['files']} files (~{best['rows'] / best['files']:.0f} rows each, as --tiny builds and "
        f"sparse edge pixels write them), from a local mirror; 3 runs, the best",
        fmt_rate(rate, "/s"), rate,
        f"{fmt_rate(old['rows'] / old['cpu'], '/s')} (the code of {DENSE_BEFORE}, same files, alternately)"
        if old else "—", old["rows"] / old["cpu"] if old else None,
        f"wall {best['seconds']:.2f} s (shared machine, fsync per file); CPU s per run, ours: "
        + ", ".join(f"{r['cpu']:.2f}" for r in ours)
        + (f"; {DENSE_BEFORE}: " + ", ".join(f"{r['cpu']:.2f}" for r in theirs) if theirs else "")
        + f"; the same files as one pixel (one file, units.build_unit): {alone['rows'] / alone['cpu']:,.0f} light "
        f"curves per CPU second")
