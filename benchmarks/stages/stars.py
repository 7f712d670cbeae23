"""Stars: the stars catalog stage (tglc_builder.stars) over a small release of overlapping demo sectors, the way a
pole region is observed (most stars in every sector): input light curves per core-second, and peak memory.

The release is made by real one-sector builds (HATS, seed columns) of demo sectors whose first objects are stars of
a common pool (as tests/_release.py does); the stage then runs alone in a fresh process, on one local process
(the executor's threads), so its CPU time is the stage's. Reported apart: the join (planning and writing the
partitions) and the finish (hats' metadata, the margin cache by hats-import, the two indexes, the card), whose
cost is mostly fixed (hats-import's first margin run compiles its numba code: ~20 s on this machine)."""

from __future__ import annotations

import resource
from pathlib import Path

from ..harness import BenchError, Ctx, Timer, maxrss, task
from ..report import fmt_bytes, row

NAME = "stars"
SIZES = {"full": dict(sectors=13, n=2000, shared=2000), "quick": dict(sectors=4, n=500, shared=500)}


@task
def make_release(directory: str, sectors: int, n: int, shared: int) -> dict:
    import numpy as np

    from tglc_builder.arguments import BuildArguments
    from tglc_builder.demo import LocalArchive
    from tglc_builder.run import run

    rng = np.random.default_rng(4242)
    pool = {"gaia": rng.integers(10**18, 6 * 10**18, shared, dtype=np.int64),
            "tic": rng.integers(1, 2_000_000_000, shared, dtype=np.int64),
            "ra": 90.0 + 8.0 * rng.random(shared), "dec": -66.5 + 8.0 * rng.random(shared)}  # near the south pole
    outputs = []
    for sector in range(1, sectors + 1):
        archive = LocalArchive(sector=sector, n=n, seed=1)
        s = archive.sector
        s.gaia_ids = s.gaia_ids.copy()
        s.gaia_ids[:shared], s.tic_ids[:shared] = pool["gaia"], pool["tic"]
        s.ra[:shared], s.dec[:shared] = pool["ra"], pool["dec"]
        s._sorted = np.argsort(s.gaia_ids)
        with archive:
            args = BuildArguments(sector=sector, tglc_data_path=directory, mast_url=archive.url, format="hats",
                                  clean_fits=True)
            summary = run(args)
        if summary.failures:
            raise BenchError(f"sector {sector}: {len(summary.failures)} failures")
        outputs.append(str(args.hats_output_dir))
    return dict(outputs=outputs)


@task
def join(outputs: list, stars: str) -> dict:
    from tglc_builder.stars import _finish, _read_json, build_stars, CATALOG, STAMP

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime

    import logging

    at_commit: dict = {}

    class _Commit(logging.Handler):  # the stage logs its commit just before the finish: the join's figures then
        def emit(self, record: logging.LogRecord) -> None:
            if "committed; finishing" in record.getMessage():
                at_commit.update(cpu=cpu(), rss=maxrss())

    import h5py  # noqa: F401 - imports are a fixed cost of a process, not of the light curves: made before
    from hats.pixel_math.spatial_index import compute_spatial_index  # noqa: F401
    from tglc_builder.formats import hats  # noqa: F401

    stars_log = logging.getLogger("tglc_builder.stars")
    stars_log.setLevel(logging.DEBUG)
    stars_log.addHandler(_Commit(logging.DEBUG))
    start = cpu()
    with Timer() as t:
        summary = build_stars(outputs, stars)
    total_cpu = cpu() - start
    join_cpu = at_commit["cpu"] - start
    stamp = _read_json(Path(stars) / CATALOG / STAMP)
    start = cpu()
    with Timer() as t_finish:  # the finish again (idempotent): its cost alone
        _finish(Path(stars), stamp)
    finish_cpu = cpu() - start
    return dict(seconds=t.seconds, cpu=total_cpu, join_cpu=join_cpu, join_rss=at_commit["rss"],
                finish_seconds=t_finish.seconds, finish_cpu=finish_cpu,
                light_curves=summary.light_curves, stars=summary.stars, partitions=summary.partitions,
                bytes=summary.bytes_total, peak_rss=maxrss())


def measure(ctx: Ctx) -> list[dict]:
    sizes = ctx.sizes
    release = ctx.task(make_release, directory=str(ctx.dir("stars", "release", fresh=True)), **sizes)
    ours = ctx.task(join, outputs=release["outputs"], stars=str(ctx.dir("stars", "out", fresh=True) / "stars"))
    n = ours["light_curves"]
    join_cpu = max(ours["join_cpu"], 1e-9)
    what = (f"{sizes['sectors']} sectors x {sizes['n']} light curves ({sizes['shared']} stars in every sector) -> "
            f"{ours['stars']:,} stars in {ours['partitions']} partitions ({fmt_bytes(ours['bytes'])})")
    return [
        row("stars.rate", "stars", f"input light curves per core-second, join: {what}", f"{n / join_cpu:,.0f} /s/core",
            n / join_cpu, f"{n / ours['cpu']:,.0f} /s/core with the finish (margin, indexes, card)",
            n / ours["cpu"], f"join {join_cpu:.1f} core-s, finish {ours['finish_cpu']:.1f} core-s "
            f"{ours['finish_seconds']:.1f} s); whole stage {ours['seconds']:.1f} s"),
        row("stars.peak_rss", "stars", "peak RSS of the stage's process (one local process), up to the commit",
            fmt_bytes(ours["join_rss"]), ours["join_rss"], f"{fmt_bytes(ours['peak_rss'])} with the finish",
            ours["peak_rss"], "the finish runs hats-import's margin pipeline on an in-process Dask client"),
    ]
