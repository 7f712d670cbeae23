"""A whole build, orchestrated: listings -> catalog -> plan -> work units -> folder-level files and reports.

Nothing here touches a light curve: the stages are plain functions over plain data (``listing``, ``plan``,
``units``), the formats and sources sit behind their interfaces, and this module only runs them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import layout, listing, plan, targets, units
from .targets import ranges as _ranges
from .arguments import BuildArguments
from .errors import UsageError
from .executor import Executor, WorkerDied
from .formats import FORMATS, Writer, format_spec, make_writers
from .folders import exclusive, remove_debris, removed_if_left_empty, writable_dir, write_text
from .report import BuildSummary, Failure, closing_lines, write_failure_report
from .sources import DEFAULT_MAST_URL, Source, open_source

log = logging.getLogger(__name__)

REJECTED_LINES = "rejected_listing_lines.txt"
FAILURES = "failures.csv"


def open_build_source(args: BuildArguments, workers: int = 1) -> Source:
    """The source of the build, with ``--connections`` shared out among ``workers`` processes."""
    return open_source(args.mast_url, connections=-(-args.connections // workers), max_attempts=args.max_attempts,
                       max_wait=args.max_wait)


def open_listing_source(args: BuildArguments, source: Source) -> Source:
    """Where the build's listings (and, for ``-s all``, its download_scripts/ index) come from: ``--listing-url``,
    else the build's own source (a bucket may hold the light curves but not the listings)."""
    if args.listing_url is None:
        return source
    return open_source(args.listing_url, connections=1, max_attempts=args.max_attempts, max_wait=args.max_wait)


def make_catalog(args: BuildArguments, source: Source, tiny: bool, save: bool = True) -> Table:
    """The sector's catalog: objects in both listings, each once, in listing order, with their HEALPix pixel."""
    sector_dir = writable_dir(args.sector_dir, "tglc_data_path")
    listing_source = open_listing_source(args, source)
    listings = listing.fetch_listings(args.sector, args.tglc_data_path, listing_source,
                                      refresh=args.refresh_listings,
                                      archive_id=args.archive_id if listing_source is source else None,
                                      flag="--mast-url" if listing_source is source else "--listing-url")
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
    catalog.meta["listing_url"] = listing_source.describe()
    if tiny:
        catalog = catalog[:args.tiny_size]
    if len(catalog) == 0:
        raise UsageError(f"the sector {args.sector} catalog is empty: no object of {listings.bulk_script} is in "
                         f"{listings.target_list}; check the sector and the archive URL")
    if save:
        listing.save_catalog(catalog, listing.catalog_path(args.tglc_data_path, args.sector, tiny))
    return catalog


@dataclass
class SectorBuild:
    """One sector of a build: its own arguments (folders), catalog, writers and shards."""

    args: BuildArguments
    catalog: Table
    writers: list[Writer]
    shards: list[plan.Shard]

    @property
    def sector(self) -> int:
        return self.args.sector


def plan_sector(args: BuildArguments, catalog: Table, overwrite: bool) -> SectorBuild:
    """A sector's shards and writers, with every folder conflict of its outputs found (Writer.prepare)."""
    writers = make_writers(args)
    for writer in writers:
        writable_dir(writer.output_dir, f"{writer.name} output folder")
    shards = plan.plan_shards(catalog, args.rows_per_shard or plan.rows_per_shard(args.sector), args.sector)
    for writer in writers:  # every folder conflict is found here, before anything is fetched
        writer.prepare(shards, overwrite)
    return SectorBuild(args, catalog, writers, shards)


def write_outputs(args: BuildArguments, catalog: Table, source: Source, executor: Executor,
                  skip: np.ndarray | None = None,
                  build_unit: Callable[..., units.UnitResult] = units.build_unit) -> BuildSummary:
    """Plan the catalog's shards and run a streaming unit for each one that some format still needs
    (``build_unit``: the unit's function, for tests)."""
    return build_sectors([plan_sector(args, catalog, args.overwrite)], args, source, executor, skip,
                         build_unit)[args.sector]


def build_sectors(sectors: list[SectorBuild], args: BuildArguments, source: Source, executor: Executor,
                  skip: np.ndarray | None = None,
                  build_unit: Callable[..., units.UnitResult] = units.build_unit) -> dict[int, BuildSummary]:
    """One plan for the shards of every sector, then its work units on one pool (a sector's units follow the
    previous sector's, so no worker waits between them), then each sector's folder-level files. ``skip``: paths of
    rows left out (the step-by-step API: rows whose download failed)."""
    shards = [shard for sector in sectors for shard in sector.shards]
    build_plan = plan.make_plan(shards, {sector.sector: sector.writers for sector in sectors},
                                overwrite=args.overwrite, verify=args.verify)
    summaries = {sector.sector: BuildSummary(outputs=[(w.name, w.output_dir) for w in sector.writers])
                 for sector in sectors}
    for shard in shards:
        summaries[shard.sector].complete += len(shard)
    pending = build_plan.pending
    if skip is not None and len(skip):
        pending = [replace(task, shard=task.shard.take(~np.isin(task.shard.path, skip))) for task in pending]
    for task in build_plan.pending:
        summaries[task.shard.sector].complete -= len(task.shard)
    settings = {sector.sector: units.UnitSettings(sector.sector, source, str(sector.args.fits_dir),
                                                  tuple(sector.writers), sector.args.column_set,
                                                  sector.args.clean_fits, sector.args.block_rows)
                for sector in sectors}
    max_rows = args.unit_rows or min(plan.unit_rows(sector.sector) for sector in sectors)
    work = plan.work_units(pending, executor.workers, max_rows, plan.min_unit_rows(max_rows))
    tasks = [(unit, settings[unit[0].shard.sector]) for unit in work]
    total = sum(len(task.shard) for task in pending)
    log.info("Plan: %d shard file(s) in %d pixel(s)%s; %d light curves to write in %d work unit(s), %d already "
             "complete", len(shards), len({(s.sector, s.pixel) for s in shards}),
             f" of {len(sectors)} sectors" if len(sectors) > 1 else "", total, len(work),
             sum(summary.complete for summary in summaries.values()))
    left = {sector: sum(1 for unit in work if unit[0].shard.sector == sector) for sector in summaries}
    fetching = next((sector for sector, n in left.items() if n), None)
    if len(sectors) > 1 and fetching is not None:
        executor.postfix(f"sector {fetching}")
    for result in executor.run(build_unit, tasks, total=total, desc="Building", unit="lc",
                               weights=[sum(len(task.shard) for task in unit) for unit in work], lost=_lost,
                               narrow=_narrow, crumbs=sectors[0].args.sector_dir):
        summaries[result.sector].add(result)
        left[result.sector] -= 1
        now = next((sector for sector, n in left.items() if n), fetching)
        if len(sectors) > 1 and now != fetching:
            fetching = now
            executor.postfix(f"sector {fetching}")
        if result.fatal and not executor.stopping_requested:
            log.error("Stopping the build: %s", result.fatal)
            executor.stop()
    if len(sectors) > 1:
        executor.postfix("")
    for sector in sectors:
        for writer in sector.writers:
            writer.finish(sector.shards)
    return summaries


def warn_of_sibling_behind(args: BuildArguments, catalog: Table) -> None:
    """Say once for each other format's folder (HATS beside an ``--format hdf5`` build, HDF5 beside ``hats``), left by
    an earlier build, that does not hold this build's light curves: the two would drift apart silently."""
    for other in FORMATS:
        if other not in args.formats:
            _warn_if_behind(args, catalog, other)


def _warn_if_behind(args: BuildArguments, catalog: Table, other: str) -> None:
    folder = Path(args.output_dir(other))
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        (sibling,) = make_writers(args, [other])
    except UsageError:  # its extra is not installed: it cannot be brought up to date here anyway
        return
    shards = plan.plan_shards(catalog, args.rows_per_shard or plan.rows_per_shard(args.sector), args.sector)
    quiet = logging.getLogger(type(sibling).__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "will be written again" warnings are for builds of that format
    try:
        held = [sibling.complete_ids(shard) for shard in shards]
        held = [np.empty(0, np.int64) if ids is None else np.asarray(ids, np.int64) for ids in held]
    finally:
        quiet.setLevel(level)
    differ = sum(not np.array_equal(ids, shard.gaiadr3_id) for ids, shard in zip(held, shards))
    lacks = sum(int(np.isin(shard.gaiadr3_id, ids, invert=True).sum()) for ids, shard in zip(held, shards))
    if differ:
        log.warning("%s (%s, from an earlier build) is behind this build: it lacks %d of its %d light curves (%d of "
                    "%d files differ); rerun with --format %s to bring it up to date", folder, FORMATS[other].label,
                    lacks, len(catalog), differ, len(shards), format_spec((*args.formats, other)))


def _sweep_parts(fits_dir: str, relpaths: Iterable[str]) -> None:
    """Remove the temporary files of a lost unit's downloads (a worker killed mid-file writes no cleanup): nobody
    fetches these items any more in this build, so every ``.NAME.part-*`` of theirs is debris, whatever its PID."""
    for relpath in relpaths:
        dest = Path(fits_dir) / relpath
        for debris in dest.parent.glob(f".{dest.name}.part-*"):
            debris.unlink(missing_ok=True)


def _unit_rows(task: tuple) -> list[tuple[int, str]]:
    return [(int(g), p.decode()) for t in task[0] for g, p in zip(t.shard.gaiadr3_id, t.shard.path)]


def _unit_without(work: list[plan.ShardTask], culprits: tuple[int, ...]) -> list[plan.ShardTask]:
    rest = [replace(t, shard=t.shard.take(~np.isin(t.shard.gaiadr3_id, np.array(culprits, np.int64)))) for t in work]
    return [t for t in rest if len(t.shard)]


def _lost(task: tuple, error: BaseException, *, rows=_unit_rows, stage: str = "convert", doing: str = "building"
          ) -> units.UnitResult:
    """The rows of a task whose worker kept dying, failed (``rows``: the task's (gaia, path) rows)."""
    died = str(error) if isinstance(error, WorkerDied) else type(error).__name__  # a local signal, or Dask's error
    items = rows(task)
    _sweep_parts(task[1].fits_dir, (p for _, p in items))
    return units.UnitResult(rows=len(items), sector=task[1].sector, failures=[
        Failure(g, p, stage, f"the worker {doing} it died ({died}); rerun to retry", 0) for g, p in items])


def _narrow(task: tuple, error: WorkerDied, *, rows=_unit_rows, without=_unit_without, stage: str = "convert",
            what: str = "work unit") -> tuple[units.UnitResult, tuple | None] | None:
    """A task whose worker died twice reading the same file(s): those rows fail, the rest of the task runs again."""
    reason = (f"its worker process died while reading this file, every time ({error.how}); the file may be hostile "
              f"(too large, malformed): check it, then rerun to retry (the {what} went on without it)")
    failures = [Failure(g, p, stage, reason, 0) for g, p in rows(task) if g in error.culprits]
    if not failures:
        return None
    rest = without(task[0], error.culprits)
    return (units.UnitResult(rows=len(failures), failures=failures, sector=task[1].sector),
            (rest, task[1]) if rest else None)


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
                               weights=[len(task[0]) for task in tasks], crumbs=args.sector_dir,
                               lost=partial(_lost, rows=_batch_rows, stage="download", doing="downloading"),
                               narrow=partial(_narrow, rows=_batch_rows, without=_batch_without, stage="download",
                                              what="batch")):
        summary.add(result)
        if result.fatal:
            executor.stop()
    log.info("Downloads: %d new, %d already present, %d failed", summary.downloaded, summary.present,
             len(summary.failures))
    return summary


def _batch_rows(task: tuple) -> list[tuple[int, str]]:
    return task[0]


def _batch_without(items: list[tuple[int, str]], culprits: tuple[int, ...]) -> list[tuple[int, str]]:
    return [(g, p) for g, p in items if g not in culprits]


def sectors_of(args: BuildArguments, source: Source) -> tuple[int, ...]:
    """The build's sectors: as given, or for ``all`` every sector whose bulk-download script the archive lists."""
    if args.sectors is not None:
        return args.sectors
    lister = open_listing_source(args, source)
    lister.check()
    listed = lister.list_sectors()
    if not listed:  # an archive without an index of its listings, or without listings (MAST's cloud copy may be)
        raise UsageError(f"{lister.describe()} lists no sector's bulk-download script in {layout.DOWNLOAD_SCRIPTS}/; "
                         "give the sectors explicitly, e.g. -s 1-13" + (
                             f", or if it holds no listings, their root with --listing-url, e.g. --listing-url "
                             f"{DEFAULT_MAST_URL}" if lister is source else ""))
    log.info("The archive lists %d sector(s): %s", len(listed), _ranges(listed))
    return tuple(listed)


def failures_path(args: BuildArguments) -> Path:
    """A sector's ``failures.csv``: in ``sSSSS/``, or for a targets build in ``sSSSS/targets-<hash>/`` (so it never
    replaces, nor removes, a whole build's)."""
    return args.outputs_under(args.sector_dir) / FAILURES


def folders_of(args: BuildArguments) -> list[tuple[Path, str]]:
    """The folders a one-sector build writes to, with the flag that names each."""
    folders = [(args.sector_dir, "tglc_data_path"), (args.fits_dir, "fits_output_path")]
    folders += [(args.output_dir(name), FORMATS[name].flag) for name in args.formats]
    return folders


def run(args: BuildArguments, executor: Executor | None = None) -> BuildSummary:
    """The whole build, of one sector or several. Rerun it to resume: whole output files are kept, failures are
    tried again. With several sectors, each is built exactly as a one-sector build of it would be, into its own
    folders, from one plan; the summary returned is their total, with each sector's in ``sectors``."""
    if executor is None:
        with Executor(args.n_processes) as executor:
            return run(args, executor)
    source = open_build_source(args, executor.workers)
    per_sector = [args.for_sector(sector) for sector in sectors_of(args, source)]
    folders = [folder for one in per_sector for folder in folders_of(one)]
    if len(per_sector) > 1:
        _check_distinct(folders)
    if args.joins_stars:  # before anything is fetched: a stars catalog of another choice of stars is refused
        from .stars import check_selection

        check_selection(args.stars_output_dir, args.selection.folder if args.selection is not None else None,
                        args.columns)
    with removed_if_left_empty(folder for folder, _ in folders) as remove_empty:  # a failed build leaves none
        for folder, what in folders:
            writable_dir(folder, what)
        if args.sectors is not None or args.listing_url is not None:  # (-s all alone: sectors_of checked it)
            source.check(listings=args.listing_url is None)
        with exclusive([folder for folder, _ in folders]):
            executor.warm_up(units.__name__)  # the workers start, importing h5py and the reader, while listings arrive
            for one in per_sector:
                remove_debris(one.sector_dir)
            with listing.reused_memory():  # the catalogs and their plan: few fresh pages (see there)
                catalogs = [make_catalog(one, source, tiny=one.tiny) for one in per_sector]
                asked, choice = [one.sector for one in per_sector], None
                if args.selection is not None:  # before the plan: only the chosen stars are fetched and written
                    per_sector, catalogs, choice = choose_stars(args, per_sector, catalogs)
                    kept = {one.sector for one in per_sector}  # a sector without a chosen star gets no empty folders
                    remove_empty(f for one in map(args.for_sector, asked) if one.sector not in kept
                                 for f, what in folders_of(one) if what != "tglc_data_path")
                sectors = [plan_sector(one, catalog, args.overwrite) for one, catalog in zip(per_sector, catalogs)]
            summaries = build_sectors(sectors, args, source, executor)
            for one, catalog in zip(per_sector, catalogs):
                if summaries[one.sector].failures:
                    failures_path(one).parent.mkdir(parents=True, exist_ok=True)
                write_failure_report(failures_path(one), summaries[one.sector].failures)
                warn_of_sibling_behind(one, catalog)
            if choice is not None:
                built = {one.sector: _built_stars(catalog, summaries[one.sector].failures)
                         for one, catalog in zip(per_sector, catalogs)}
                targets.write_report(args.tglc_data_path / targets.REPORT, targets.report_rows(choice, built, asked))
    # Here every sector's outputs are whole: each of ``summaries``' values names its folders (``outputs``).
    for line in closing_lines(summaries, {name: spec.label for name, spec in FORMATS.items()}):
        log.info("%s", line)
    total = summaries[per_sector[0].sector] if len(per_sector) == 1 else BuildSummary(sectors=summaries)
    if len(per_sector) > 1:
        for summary in summaries.values():
            total.add(summary)
    if total.fatal:
        log.error("The build stopped early: %s; %d light curve(s) were not attempted. Free space, then rerun the "
                  "same command to resume", total.fatal, total.not_attempted)
    for one in per_sector:
        if summaries[one.sector].failures:
            log.error("Sector %d: %d object(s) failed; see %s, then rerun the same command to retry them",
                      one.sector, len(summaries[one.sector].failures), failures_path(one))
    if args.joins_stars:
        join_stars(args, [one for one in per_sector if not summaries[one.sector].failures],
                   [one.sector for one in per_sector if summaries[one.sector].failures], total, executor)
    return total


def join_stars(args: BuildArguments, whole: list[BuildArguments], partial: list[int], total: BuildSummary,
               executor: Executor) -> None:
    """The stars stage: the sectors built whole joined into the stars catalog, under its folder's lock (waiting for
    another build's stars stage). A sector joins once, whole: one with failures waits for a rerun that retries them
    (joined now, its missing light curves would never be)."""
    if total.fatal or executor.stopping_requested:
        log.warning("The stars catalog (%s) is not joined: the build stopped early; rerun the same command",
                    args.stars_output_dir)
        return
    if partial:
        log.warning("Sector(s) %s not joined into the stars catalog %s: some of their light curves failed; rerun "
                    "the same command to retry them, and they join", _ranges(partial), args.stars_output_dir)
    if not whole:
        return
    from .stars import stars_of_build

    writable_dir(args.stars_output_dir, "stars_output_path")
    with exclusive([args.stars_output_dir], wait=True):
        stars_of_build(whole, executor)


def choose_stars(args: BuildArguments, per_sector: list[BuildArguments],
                 catalogs: list[Table]) -> tuple[list[BuildArguments], list[Table], targets.Choice]:
    """The build's selection (``--targets``, ``--cone``) found in its sectors' catalogs (target-list positions in
    any sector), and each catalog cut to the chosen stars' light curves; sectors holding none of them are left out
    (nothing to build). Raises UsageError, after writing the report, when no sector holds any."""
    selection = args.selection
    choice = targets.choose(selection, catalogs)
    chosen = choice.gaiadr3_ids
    kept = [targets.keep(catalog, chosen) for catalog in catalogs]
    log.info("Targets: %s: %d star(s) found, %d light curve(s) in %d of %d sector(s)", selection.describe(),
             len(chosen), sum(len(c) for c in kept), sum(1 for c in kept if len(c)), len(kept))
    for one, catalog in zip(per_sector, kept):
        if not len(catalog):
            log.info("Sector %d holds none of the chosen stars: nothing is built for it", one.sector)
    asked = [one.sector for one in per_sector]
    if not any(len(catalog) for catalog in kept):
        report = Path(args.tglc_data_path) / targets.REPORT
        targets.write_report(report, targets.report_rows(choice, {}, asked))
        raise UsageError(f"none of {selection.describe()} is in sector(s) {_ranges(asked)}: nothing to build; see "
                         f"{report}")
    pairs = [(one, catalog) for one, catalog in zip(per_sector, kept) if len(catalog)]
    return [one for one, _ in pairs], [catalog for _, catalog in pairs], choice


def _built_stars(catalog: Table, failures: list[Failure]) -> set[int]:
    """The stars of a sector's catalog with at least one light curve in its outputs (a row that did not fail)."""
    failed = {f.path for f in failures}
    paths = np.asarray(catalog["path"])
    ok = np.array([p.decode() not in failed for p in paths.tolist()], bool) if failed else np.ones(len(paths), bool)
    return set(np.asarray(catalog["gaiadr3_id"], np.int64)[ok].tolist())


def _check_distinct(folders: list[tuple[Path, str]]) -> None:
    """Two sectors must not share an output folder (a template whose {sector} does not tell them apart)."""
    seen: set[Path] = set()
    for folder, what in folders:
        key = Path(folder).resolve()
        if what == "tglc_data_path":
            continue
        if key in seen:
            raise UsageError(f"--{what} gives two sectors the same folder {folder}; put {{sector}} in it, e.g. "
                             f"./out/s{{sector:04d}}/{what.split('_')[0]}")
        seen.add(key)
