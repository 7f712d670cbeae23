"""Catalog: parse a 2-million-line listing and its target list into the sector's catalog (time and peak memory)."""

from __future__ import annotations

from pathlib import Path

from ..data import gen_listings
from ..harness import BenchError, Ctx, Timer, current_rss, maxrss, task, timed_catalog
from ..report import fmt_bytes, row

NAME = "catalog"
SIZES = {"full": dict(objects=2_000_000), "quick": dict(objects=100_000)}  # ~1% more listing lines


@task
def parse(bulk: str, targets: str, save: str) -> dict:
    from tglc_builder import listing

    base = current_rss()
    with listing.reused_memory():  # as run.run makes its catalogs
        catalog, lines, t = timed_catalog(bulk, targets)
    peak_catalog = maxrss()
    with Timer() as t_save:
        listing.save_catalog(catalog, Path(save))
    return dict(seconds=sum(step.seconds for step in t.values()), **{k: step.seconds for k, step in t.items()},
                save=t_save.seconds, rows=len(catalog), lines=lines, peak_rss=peak_catalog,
                peak_rss_with_save=maxrss(), import_rss=base)


@task
def floor(bulk: str, targets: str) -> dict:
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


def measure(ctx: Ctx) -> list[dict]:
    info = ctx.task(gen_listings, n=ctx.sizes["objects"], directory=str(ctx.dir("catalog", fresh=True)))
    for _ in range(2):  # the first run warms the page cache, as the download just before a user's parse leaves it
        ref = ctx.task(floor, bulk=info["bulk"], targets=info["targets"])
    ours = ctx.task(parse, bulk=info["bulk"], targets=info["targets"],
                    save=str(ctx.scratch / "catalog" / "catalog.hdf5"))
    if ours["rows"] != info["expected"]:
        raise BenchError(f"catalog has {ours['rows']} rows, the archive expects {info['expected']}")
    what = (f"{info['bulk_lines']:,}-line listing ({fmt_bytes(info['bulk_bytes'])}) + target list "
            f"({fmt_bytes(info['target_bytes'])}) -> {ours['rows']:,}-row catalog")
    return [
        row("catalog.time", "catalog", f"time: {what}", f"{ours['seconds']:.2f} s", ours["seconds"],
            f"{ref['seconds']:.2f} s (read both files + split lines, pyarrow)", ref["seconds"],
            f"parse {ours['parse']:.2f} s, target list {ours['targets']:.2f} s, join+healpix {ours['join']:.2f} s; "
            f"saving it (astropy HDF5) takes {ours['save']:.2f} s more. The demo archive generated both listings in "
            f"{info['generated_in']:.1f} s"),
        row("catalog.rss", "catalog", "peak RSS of the same", fmt_bytes(ours["peak_rss"]), ours["peak_rss"],
            f"{fmt_bytes(ref['peak_rss'])} (same floor)", ref["peak_rss"],
            f"python + imports alone: {fmt_bytes(ours['import_rss'])}; with save: "
            f"{fmt_bytes(ours['peak_rss_with_save'])}"),
    ]
