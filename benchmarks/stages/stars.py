"""Stars: the stars catalog stage (tglc_builder.stars) over the demo release (``LocalArchive(sectors=[...])``: a
polar cap observed in every sector, bands shared by consecutive sectors, a star listed twice per sector), written as
a local mirror and built by one real multi-sector build (HATS, seed columns, ``--no-stars``); then, in fresh
processes:

- the stage alone on sectors 1-13, on one local process (the executor's threads), so its CPU time is the stage's:
  input light curves per core-second of the join (planning and writing the partitions), and of the finish (hats'
  metadata, the margin cache by hats-import, the two indexes, the card) run a second time in the same process, so
  that its fixed cost (hats-import's first margin run compiles its numba code, ~20 s) is apart from its rate;
- adding sector 14 to that 13-sector collection: the partitions and bytes rewritten, against the partitions that
  sector's stars fall in and the collection's size.

The release is scaled down (``n`` light curves per sector) and so are its partitions (``--stars-pixel-threshold``
``THRESHOLD`` stars; by default a partition holds ~1 GB), so that the collection has partitions enough to tell
which are rewritten."""

from __future__ import annotations

import resource
from pathlib import Path

from ..harness import BenchError, Ctx, Timer, maxrss, task
from ..report import fmt_bytes, row

NAME = "stars"
SIZES = {"full": dict(sectors=13, n=1500, threshold=300), "quick": dict(sectors=4, n=300, threshold=100)}


def _cpu() -> float:
    u, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime


@task
def make_mirror(root: str, sectors: int, n: int) -> dict:
    """The demo release of sectors 1..sectors + 1 on disk (the last is the one added later)."""
    from tglc_builder.demo import LocalArchive, write_mirror

    with Timer() as t:
        write_mirror(root, LocalArchive(sectors=list(range(1, sectors + 2)), n=n))
    return dict(seconds=t.seconds)


@task
def build_sectors(mirror: str, directory: str, spec: str) -> dict:
    """A real build of sectors ``spec`` from the mirror, each sector's HATS collection, no stars catalog."""
    from tglc_builder.arguments import BuildArguments
    from tglc_builder.run import run

    args = BuildArguments(sector=spec, tglc_data_path=directory, mast_url=mirror, format="hats", clean_fits=True,
                          stars=False, n_processes=2)
    with Timer() as t:
        summary = run(args)
    if summary.failures:
        raise BenchError(f"sectors {spec}: {len(summary.failures)} failures")
    return dict(seconds=t.seconds, cpu=t.cpu + t.cpu_children)


def _outputs(directory: str, sectors: int) -> list[str]:
    return [str(Path(directory) / f"s{s:04d}" / "hats") for s in range(1, sectors + 1)]


def _imports() -> None:
    """Imports are a fixed cost of a process, not of the light curves: made before the clock starts."""
    import h5py  # noqa: F401
    from hats.pixel_math.spatial_index import compute_spatial_index  # noqa: F401

    from tglc_builder.formats import hats  # noqa: F401


@task
def join(outputs: list, stars: str, threshold: int) -> dict:
    import logging

    from tglc_builder.stars import CATALOG, STAMP, _finish, _read_json, build_stars

    at_commit: dict = {}

    class _Commit(logging.Handler):  # the stage logs its commit just before the finish: the join's figures then
        def emit(self, record: logging.LogRecord) -> None:
            if "committed; finishing" in record.getMessage():
                at_commit.update(cpu=_cpu(), rss=maxrss())

    _imports()
    stars_log = logging.getLogger("tglc_builder.stars")
    stars_log.setLevel(logging.DEBUG)
    stars_log.addHandler(_Commit(logging.DEBUG))
    start = _cpu()
    with Timer() as t:
        summary = build_stars(outputs, stars, pixel_threshold=threshold)
    total_cpu = _cpu() - start
    join_cpu = at_commit["cpu"] - start
    stamp = _read_json(Path(stars) / CATALOG / STAMP)
    start = _cpu()
    with Timer() as again:  # the finish again (idempotent), numba's code compiled: its cost without the fixed one
        _finish(Path(stars), stamp)
    return dict(seconds=t.seconds, cpu=total_cpu, join_cpu=join_cpu, join_rss=at_commit["rss"],
                finish_again_seconds=again.seconds, finish_again_cpu=_cpu() - start,
                light_curves=summary.light_curves, stars=summary.stars, partitions=summary.partitions,
                bytes=summary.bytes_total, peak_rss=maxrss())


def _files(catalog: Path) -> dict[str, tuple[int, int, int]]:
    return {str(f.relative_to(catalog)): (f.stat().st_ino, f.stat().st_mtime_ns, f.stat().st_size)
            for f in (catalog / "dataset").rglob("Npix=*.parquet")}


@task
def add_sector(outputs: list, stars: str, sector: int) -> dict:
    """Join one more sector into the collection: which partition files are new or replaced, and where the
    sector's stars are."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tglc_builder.stars import CATALOG, build_stars

    _imports()
    catalog = Path(stars) / CATALOG
    before = _files(catalog)
    start = _cpu()
    with Timer() as t:
        summary = build_stars(outputs, stars)
    cpu = _cpu() - start
    after = _files(catalog)
    rewritten = [name for name, key in after.items() if before.get(name) != key]
    holding = []  # partitions that hold at least one light curve of the sector
    for name in after:
        sectors = pq.read_table(catalog / name, columns=["sectors"]).column("sectors")
        if len(sectors) and np.any(pc.list_flatten(sectors).to_numpy() == sector):
            holding.append(name)
    return dict(seconds=t.seconds, cpu=cpu, peak_rss=maxrss(), written=summary.written,
                rewritten=sorted(rewritten), holding=sorted(holding), partitions=len(after),
                bytes_rewritten=sum(after[n][2] for n in rewritten), bytes_total=sum(v[2] for v in after.values()),
                bytes_removed=sum(v[2] for n, v in before.items() if n not in after))


def measure(ctx: Ctx) -> list[dict]:
    sizes = ctx.sizes
    k, n, threshold = sizes["sectors"], sizes["n"], sizes["threshold"]
    mirror = ctx.dir("stars", "mirror", fresh=True)
    data = ctx.dir("stars", "data", fresh=True)
    made = ctx.task(make_mirror, root=str(mirror), sectors=k, n=n)
    built = ctx.task(build_sectors, mirror=str(mirror), directory=str(data), spec=f"1-{k}")
    stars = ctx.dir("stars", "out", fresh=True) / "stars"
    ours = ctx.task(join, outputs=_outputs(str(data), k), stars=str(stars), threshold=threshold)
    lcs = ours["light_curves"]
    join_cpu = max(ours["join_cpu"], 1e-9)
    finish_cpu = ours["cpu"] - join_cpu
    finish_again = ours["finish_again_cpu"]
    fixed = finish_cpu - finish_again
    rate = lcs / (join_cpu + finish_again)
    what = (f"demo release, sectors 1-{k} x {n:,} light curves (polar cap of {max(2, n // 20)} stars in all {k}) -> "
            f"{ours['stars']:,} stars, {lcs:,} light curves, in {ours['partitions']} partitions "
            f"({fmt_bytes(ours['bytes'])}; --stars-pixel-threshold {threshold})")
    rows = [
        row("stars.rate", "stars", f"input light curves per core-second, join + finish without its fixed cost: {what}",
            f"{rate:,.0f} /s/core", rate, f"{lcs / join_cpu:,.0f} /s/core (the join alone)", lcs / join_cpu,
            f"join {join_cpu:.1f} core-s; finish {finish_cpu:.1f} core-s, of which {fixed:.1f} fixed (hats-import's "
            f"numba compile and Dask start: the finish run again in the same process took {finish_again:.1f} "
            f"core-s, {ours['finish_again_seconds']:.1f} s); whole stage {ours['seconds']:.1f} s wall, "
            f"{ours['cpu']:.1f} core-s ({lcs / ours['cpu']:,.0f} light curves per core-second with the fixed "
            f"cost); the release: mirror written in {made['seconds']:.0f} s, built (-n 2, HATS) in "
            f"{built['seconds']:.0f} s", fixed_core_s=fixed, join_rate=lcs / join_cpu),
        row("stars.peak_rss", "stars", "max RSS of the stage's process (one local process; the finish's Dask client "
            "runs in it), the whole stage", fmt_bytes(ours["peak_rss"]), ours["peak_rss"],
            f"{fmt_bytes(ours['join_rss'])} up to the commit (the join)", ours["join_rss"], ""),
    ]
    built = ctx.task(build_sectors, mirror=str(mirror), directory=str(data), spec=str(k + 1))
    added = ctx.task(add_sector, outputs=_outputs(str(data), k + 1), stars=str(stars), sector=k + 1)
    extra = sorted(set(added["rewritten"]) - set(added["holding"]))
    rows.append(row(
        "stars.add_sector", "stars", f"adding sector {k + 1} ({n:,} light curves) to the {k}-sector collection: "
        "partition files rewritten", f"{len(added['rewritten'])} of {added['partitions']} "
        f"({fmt_bytes(added['bytes_rewritten'])} of {fmt_bytes(added['bytes_total'])}, "
        f"{added['bytes_rewritten'] / added['bytes_total']:.0%})", len(added["rewritten"]),
        f"{len(added['holding'])} partitions hold the sector's stars", len(added["holding"]),
        f"{added['seconds']:.1f} s wall, {added['cpu']:.1f} core-s (with the finish: margin cache and indexes of the "
        f"whole collection), max RSS {fmt_bytes(added['peak_rss'])}; rewritten but holding none of the sector's "
        f"stars: {len(extra)} {extra[:3]}; {fmt_bytes(added['bytes_removed'])} of superseded files removed",
        outside=len(extra)))
    return rows
