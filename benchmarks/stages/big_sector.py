"""Big sectors: a 2- and a 6-million-line listing (and its target list) through everything a build does before its
first download: parse, target list, catalog (join + HEALPix), shards, plan, work units. Time and peak memory of
each size in a fresh process, and how they grow from the smaller to the larger (1.0: linear). Beside the wall time,
the process's CPU time (user + system, all threads): on a shared machine it varies far less than the wall time, so the
growth is judged on it."""

from __future__ import annotations

from ..data import gen_listings
from ..harness import SECTOR, BenchError, Ctx, Timer, current_rss, maxrss, task, timed_catalog
from ..report import fmt_bytes, row

NAME = "big_sector"
# Objects of the two sectors (the listings hold ~1% more lines); other pipelines count ~6 million T<16 stars per
# sector, where TGLC's sector 23 has ~2 million.
SIZES = {"full": dict(objects=(2_000_000, 6_000_000)), "quick": dict(objects=(50_000, 150_000))}
REPEATS = 3  # best of: the machine is shared


@task
def before_first_download(bulk: str, targets: str, out: str) -> dict:
    """What ``run.run`` does for one sector before its first download, but fetching the listings."""
    from tglc_builder import listing, plan, run
    from tglc_builder.arguments import BuildArguments

    import resource

    def cpu() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    base, cpu_start = current_rss(), cpu()
    with listing.reused_memory():  # as run.run makes its catalogs and plan
        catalog, lines, t = timed_catalog(bulk, targets)
        args = BuildArguments(sector=SECTOR, tglc_data_path=out)
        with Timer() as t_shards:
            sector = run.plan_sector(args, catalog, overwrite=False)
        with Timer() as t_plan:
            build_plan = plan.make_plan(sector.shards, sector.writers)
            max_rows = plan.unit_rows(SECTOR)
            units = plan.work_units(build_plan.pending, 2, max_rows, plan.min_unit_rows(max_rows))
    user, system = (end - start for end, start in zip(cpu(), cpu_start))
    seconds = sum(step.seconds for step in t.values()) + t_shards.seconds + t_plan.seconds
    return dict(seconds=seconds, cpu=user + system, cpu_system=system, **{k: step.seconds for k, step in t.items()},
                shards=t_shards.seconds, plan=t_plan.seconds, rows=len(catalog), lines=lines,
                n_shards=len(sector.shards), n_units=len(units), peak_rss=maxrss(), import_rss=base)


def measure(ctx: Ctx) -> list[dict]:
    results = []
    for n in ctx.sizes["objects"]:
        info = ctx.task(gen_listings, n=n, directory=str(ctx.dir("big_sector", str(n), fresh=True)))
        runs = [ctx.task(before_first_download, bulk=info["bulk"], targets=info["targets"],
                         out=str(ctx.dir("big_sector", str(n), "out", fresh=True)))
                for _ in range(REPEATS)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_rss"] = min(r["peak_rss"] for r in runs)
        best["all_seconds"] = [r["seconds"] for r in runs]
        best["cpu"] = min(r["cpu"] for r in runs)
        best["cpu_user"] = min(r["cpu"] - r["cpu_system"] for r in runs)
        if best["rows"] != info["expected"]:
            raise BenchError(f"catalog has {best['rows']} rows, the archive expects {info['expected']}")
        results.append((info, best))
    rows = []
    for info, best in results:
        lines = f"{info['bulk_lines']:,}"
        what = (f"{lines}-line listing ({fmt_bytes(info['bulk_bytes'])}) + target list "
                f"({fmt_bytes(info['target_bytes'])}) -> {best['rows']:,}-row catalog, {best['n_shards']:,} shards, "
                f"{best['n_units']:,} work units")
        key = "6m" if info["bulk_lines"] > 4_000_000 else "2m"
        rows.append(row(f"big_sector.time_{key}", "big_sector", f"time: {what}", f"{best['seconds']:.2f} s",
                        best["seconds"], "", None,
                        f"best of {', '.join(f'{s:.2f}' for s in best['all_seconds'])} s (CPU time, best: "
                        f"{best['cpu']:.2f} s, user {best['cpu_user']:.2f} s); parse "
                        f"{best['parse']:.2f} s, target list {best['targets']:.2f} s, join+healpix "
                        f"{best['join']:.2f} s, shards + writers {best['shards']:.2f} s, plan + work units "
                        f"{best['plan']:.2f} s"))
        rows.append(row(f"big_sector.rss_{key}", "big_sector", f"peak RSS of the same ({lines} lines)",
                        fmt_bytes(best["peak_rss"]), best["peak_rss"], "", None,
                        f"python + imports alone: {fmt_bytes(best['import_rss'])}"))
    (small_info, small), (big_info, big) = results
    scale = big_info["bulk_lines"] / small_info["bulk_lines"]
    growth_t = (big["cpu"] / small["cpu"]) / scale
    growth_m = ((big["peak_rss"] - big["import_rss"]) / (small["peak_rss"] - small["import_rss"])) / scale
    rows.append(row("big_sector.growth", "big_sector", f"growth from the smaller to the larger sector ({scale:.2f}x "
                    "the lines), per line (1.00: linear)", f"CPU time {growth_t:.2f}, memory {growth_m:.2f}",
                    max(growth_t, growth_m), "", None, f"wall time {(big['seconds'] / small['seconds']) / scale:.2f} "
                    f"(noisy on a shared machine); user CPU time alone "
                    f"{(big['cpu_user'] / small['cpu_user']) / scale:.2f} (the system time is mostly page faults of "
                    "fresh memory); memory: peak RSS above python + imports"))
    return rows
