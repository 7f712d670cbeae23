"""A whole build, orchestrated: listings -> catalog -> plan -> work units -> folder-level files and reports.

Nothing here touches a light curve: the stages are plain functions over plain data (``listing``, ``plan``,
``units``), the formats and sources sit behind their interfaces, and this module only runs them in order.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from astropy.table import Table

from . import listing, plan, units
from .arguments import BuildArguments
from .errors import Failure, UsageError
from .executor import Executor, WorkerDied
from .formats import Writer, make_writers
from .pipeline import BuildSummary, exclusive, import_soon, remove_debris, writable_dir, write_failure_report, \
    write_text
from .sources import Source, open_source

log = logging.getLogger(__name__)

REJECTED_LINES = "rejected_listing_lines.txt"
FAILURES = "failures.csv"


def open_build_source(args: BuildArguments, workers: int = 1) -> Source:
    """The source of the build, with ``--connections`` shared out among ``workers`` processes."""
    return open_source(args.mast_url, connections=-(-args.connections // workers), max_attempts=args.max_attempts,
                       max_wait=args.max_wait)


def writers_of(args: BuildArguments) -> list[Writer]:
    return make_writers(args.format, args.sector, args.column_set, args.hdf5_output_dir, args.hats_output_dir,
                        args.hats_extras, args.card_note)


def make_catalog(args: BuildArguments, source: Source, tiny: bool, save: bool = True) -> Table:
    """The sector's catalog: objects in both listings, each once, in listing order, with their HEALPix pixel."""
    import_soon("healpy")  # ~1 s (it loads matplotlib): while the listings arrive and are parsed
    sector_dir = writable_dir(args.sector_dir, "tglc_data_path")
    listings = listing.fetch_listings(args.sector, args.tglc_data_path, source, refresh=args.refresh_listings)
    bulk = listing.parse_bulk_script(listings.bulk_script, args.sector)
    rejected = sector_dir / REJECTED_LINES
    if bulk.n_rejected:
        write_text(rejected, "\n".join(bulk.rejected) + "\n")
        log.warning("%d listing line(s) skipped; the first %d are in %s", bulk.n_rejected, len(bulk.rejected),
                    rejected)
    else:
        rejected.unlink(missing_ok=True)
    catalog = listing.build_catalog(bulk, listing.read_target_list(listings.target_list), args.sector,
                                    listings=listings)
    catalog.meta["mast_url"] = source.describe()
    if tiny:
        catalog = catalog[:args.tiny_size]
    if len(catalog) == 0:
        raise UsageError(f"the sector {args.sector} catalog is empty: no object of {listings.bulk_script} is in "
                         f"{listings.target_list}; check the sector and the archive URL")
    if save:
        listing.save_catalog(catalog, listing.catalog_path(args.tglc_data_path, args.sector, tiny))
    return catalog


def write_outputs(args: BuildArguments, catalog: Table, source: Source, executor: Executor,
                  skip: np.ndarray | None = None) -> BuildSummary:
    """Plan the catalog's shards and run a streaming unit for each one that some format still needs."""
    writers = writers_of(args)
    for writer in writers:
        writable_dir(writer.output_dir, f"{writer.name} output folder")
    shards = plan.plan_shards(catalog, args.rows_per_shard or plan.rows_per_shard(args.sector))
    for writer in writers:  # every folder conflict is found here, before anything is fetched
        writer.prepare(shards, args.overwrite)
    build_plan = plan.make_plan(shards, writers, overwrite=args.overwrite, verify=args.verify)
    summary = BuildSummary(complete=build_plan.complete_rows)
    pending = build_plan.pending
    if skip is not None and len(skip):  # the step-by-step API: rows whose download failed are left out
        pending = [replace(task, shard=task.shard.take(~np.isin(task.shard.gaiadr3_id, skip))) for task in pending]
    settings = units.UnitSettings(args.sector, source, str(args.fits_dir), tuple(writers), args.column_set,
                                  args.clean_fits, args.block_rows)
    max_rows = args.unit_rows or plan.unit_rows(args.sector)
    work = plan.work_units(pending, executor.workers, max_rows, plan.min_unit_rows(max_rows))
    tasks = [(unit, settings) for unit in work]
    total = sum(len(task.shard) for task in pending)
    log.info("Plan: %d shard file(s) in %d pixel(s); %d light curves to write in %d work unit(s), %d already "
             "complete", len(shards), len({s.pixel for s in shards}), total, len(work), summary.complete)
    import_soon("tglc_builder.formats.card")  # datasets, for the cards, while the workers build
    for result in executor.run(units.build_unit, tasks, total=total, desc="Building", unit="lc",
                               weights=[sum(len(task.shard) for task in unit) for unit in work], lost=_lost_unit):
        summary.add(result)
        if result.fatal and not executor.stopping_requested:
            log.error("Stopping the build: %s", result.fatal)
            executor.stop()
    for writer in writers:
        writer.finish(shards)
    return summary


def _lost_unit(task: tuple, error: BaseException) -> units.UnitResult:
    work: list[plan.ShardTask] = task[0]
    reason = f"the worker building it died ({_death(error)}); rerun to retry"
    return units.UnitResult(rows=sum(len(t.shard) for t in work),
                            failures=[Failure(int(g), p.decode(), "convert", reason, 0) for t in work
                                      for g, p in zip(t.shard.gaiadr3_id, t.shard.path)])


def _death(error: BaseException) -> str:
    """How a worker died: a local one's signal or exit code, else the name of what Dask raised."""
    return str(error) if isinstance(error, WorkerDied) else type(error).__name__


def fetch_only(args: BuildArguments, catalog: Table, source: Source, executor: Executor) -> BuildSummary:
    """Fetch the catalog's FITS files into ``fits_dir`` in batches of ``batch_size`` (no conversion)."""
    writable_dir(args.fits_dir, "fits_output_path")
    items = [(int(g), p.decode() if isinstance(p, bytes) else str(p))
             for g, p in zip(catalog["gaiadr3_id"], catalog["path"])]
    size = max(1, min(args.batch_size, -(-len(items) // executor.workers)))  # every worker gets some
    settings = units.UnitSettings(args.sector, source, str(args.fits_dir), (), args.column_set)
    tasks = [(items[i:i + size], settings) for i in range(0, len(items), size)]
    summary = BuildSummary()
    for result in executor.run(units.fetch_batch, tasks, total=len(items), desc="Downloading", unit="file",
                               weights=[len(task[0]) for task in tasks], lost=_lost_batch):
        summary.add(result)
        if result.fatal:
            executor.stop()
    log.info("Downloads: %d new, %d already present, %d failed", summary.downloaded, summary.present,
             len(summary.failures))
    return summary


def _lost_batch(task: tuple, error: BaseException) -> units.UnitResult:
    reason = f"the worker downloading it died ({_death(error)}); rerun to retry"
    return units.UnitResult(rows=len(task[0]), failures=[Failure(g, p, "download", reason, 0) for g, p in task[0]])


def run(args: BuildArguments, executor: Executor | None = None) -> BuildSummary:
    """The whole build. Rerun it to resume: whole output files are kept, failures are tried again."""
    if executor is None:
        with Executor(args.n_processes) as executor:
            return run(args, executor)
    folders = [(args.sector_dir, "tglc_data_path"), (args.fits_dir, "fits_output_path")]
    folders += [(args.hdf5_output_dir, "hdf5_output_path")] if "hdf5" in args.formats else []
    folders += [(args.hats_output_dir, "hats_output_path")] if "hats" in args.formats else []
    for folder, what in folders:
        writable_dir(folder, what)
    source = open_build_source(args, executor.workers)
    source.check()
    with exclusive([folder for folder, _ in folders]):
        executor.warm_up(units.__name__)  # the workers start, importing h5py and the reader, while the listings arrive
        remove_debris(args.sector_dir)
        catalog = make_catalog(args, source, tiny=args.tiny)
        summary = write_outputs(args, catalog, source, executor)
        report = args.sector_dir / FAILURES
        write_failure_report(report, summary.failures)
    log.info("Sector %d: %s", args.sector, summary.describe())
    if summary.fatal:
        log.error("The build stopped early: %s; %d light curve(s) were not attempted. Free space, then rerun the "
                  "same command to resume", summary.fatal, summary.not_attempted)
    if summary.failures:
        log.error("%d object(s) failed; see %s, then rerun the same command to retry them",
                  len(summary.failures), report)
    if args.stars and not summary.fatal:  # the stars catalog, joined from this build's outputs
        from .stars import stars_of_build

        stars_of_build(args, executor)
    return summary

