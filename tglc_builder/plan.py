"""One plan per build, computed once: the shards of the catalog and, for each, which formats still need writing.

Every stage works from the plan; none decides again what is done (in the manner of hats-import's ResumePlan).
A shard is done in a format when that format's file of it is proven whole (written by a verified commit of this
sector and column set) and holds exactly the shard's planned rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import layout
from .formats import RowSource, Shard, Writer

# Rows per shard file, by cadence: ~250 MB of light curves before compression, so a shard is also a bounded work
# unit (its FITS files, ~0.6 GB, are all that one worker keeps on disk at a time).
ROWS_PER_SHARD = {1800: 10_000, 600: 4_000, 200: 1_250}


def rows_per_shard(sector: int) -> int:
    return ROWS_PER_SHARD[layout.cadence_seconds(sector)]


def unit_rows(sector: int) -> int:
    """The most rows a work unit groups from small shards (a larger shard is a unit of its own)."""
    return rows_per_shard(sector) // 5


def min_unit_rows(max_rows: int) -> int:
    """The fewest rows the last, shrinking work units group (see :func:`work_units`): a tenth of the most."""
    return max(1, max_rows // 10)


@dataclass
class ShardTask:
    """A shard some format still needs: which formats, and an earlier whole file of it whose rows can be carried
    into the new files instead of being fetched again (a shard rewritten to add a row that failed before)."""

    shard: Shard
    formats: tuple[str, ...]
    carry: RowSource | None = None


@dataclass
class BuildPlan:
    shards: list[Shard]  # every shard of the catalog, by pixel then index
    pending: list[ShardTask]  # largest first


# A shard's columns from the catalog, in Shard's order, with their types (a gather is a copy already: no second one).
SHARD_TYPES = (("gaiadr3_id", np.int64), ("TIC_ID", np.int64), ("RA", np.float64), ("DEC", np.float64),
               ("cam", np.int16), ("ccd", np.int16), ("path", "S"))


def plan_shards(catalog, rows_per_shard: int, sector: int | None = None) -> list[Shard]:
    """The output files of a catalog: per pixel, its rows in catalog order cut into near-equal shards, of ``sector``
    (default: the catalog's own, in its metadata)."""
    healpix = np.asarray(catalog["healpix"], np.int64)
    # Pixel numbers fit in 16 bits (NSIDE 16: 3,072 pixels), which numpy's stable sort orders by a linear radix sort.
    small = len(healpix) and 0 <= healpix.min() and healpix.max() < 1 << 16
    order = np.argsort(healpix.astype(np.uint16) if small else healpix, kind="stable")
    ordered = healpix[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if len(ordered) else ordered
    pixels = ordered[starts]
    sector = int(catalog.meta.get("sector", 0) if sector is None else sector)
    columns = {name: np.asarray(catalog[name]) for name, _ in SHARD_TYPES}
    shards = []
    for pixel, rows in zip(pixels.tolist(), np.split(order, starts[1:])):
        parts = np.array_split(rows, -(-len(rows) // rows_per_shard))
        for index, part in enumerate(parts, start=1):
            shards.append(Shard(pixel, index, len(parts), *(columns[name][part].astype(dtype, copy=False)
                                                            for name, dtype in SHARD_TYPES), sector))
    return shards


def make_plan(shards: list[Shard], writers: list[Writer] | Mapping[int, list[Writer]], *, overwrite: bool = False,
              verify: bool = False) -> BuildPlan:
    """Which shards each format still needs, and what can be carried from earlier files. ``writers``: the formats of
    a one-sector build, or of each sector (by sector number) when the shards are of several. With ``overwrite``
    everything is written again from the FITS files; with ``verify`` existing files are checked whole (checksums)
    before they count as done or are carried from. Pending shards come sector by sector (in the shards' order of
    sectors), largest first within each."""
    pending = []
    for shard in shards:
        todo, whole = [], []
        for writer in (writers[shard.sector] if isinstance(writers, Mapping) else writers):
            ids = None if overwrite else writer.complete_ids(shard, verify=verify)
            if ids is not None and len(ids):
                whole.append(writer)
            if not _holds_exactly(ids, shard):
                todo.append(writer.name)
        if todo:
            carry = next((rows for rows in (w.rows_of(shard) for w in whole) if rows is not None), None)
            pending.append(ShardTask(shard, tuple(todo), carry))
    order = {sector: k for k, sector in enumerate(dict.fromkeys(shard.sector for shard in shards))}
    pending.sort(key=lambda task: (order[task.shard.sector], -len(task.shard)))  # largest first: the pool ends together
    return BuildPlan(shards, pending)


def _holds_exactly(ids: np.ndarray | None, shard: Shard) -> bool:
    return ids is not None and np.array_equal(np.asarray(ids, np.int64), shard.gaiadr3_id)


def work_units(pending: list[ShardTask], workers: int, max_rows: int, min_rows: int = 1) -> list[list[ShardTask]]:
    """Group the pending shards (largest first) into work units of decreasing size.

    One unit streams its fetches across all its shards, so a unit's start and end (the idle connections of its
    last files, its last file's write and check, the next unit's first round trip: ~0.1 s of its worker's
    connections) are paid once for many small pixels; units shrink towards the end (a share of what is left, as in
    guided self-scheduling), so the workers finish together, but only the last is smaller than ``min_rows`` rows:
    below that, their ends would cost more than the workers' unequal finish. (A build too small for that floor to
    give every worker two units, such as ``--tiny``, has a lower one.) A unit holds at most ``max_rows`` rows unless
    one shard alone is larger. A unit holds shards of one sector (each sector has its own folders and writers);
    the units of a build's sectors follow each other, so the workers go from one sector to the next without a
    pause, and only the build's last units shrink.
    """
    remaining = sum(len(task.shard) for task in pending)
    min_rows = max(1, min(min_rows, remaining // (2 * workers)))
    units: list[list[ShardTask]] = []
    current: list[ShardTask] = []
    size = 0
    for task in pending:
        target = min(max_rows, max(min_rows, remaining // (2 * workers)))
        grown = size + len(task.shard)
        if current and (task.shard.sector != current[0].shard.sector
                        or grown > target and (size >= min_rows or grown > max_rows)):
            units.append(current)
            current, size = [], 0
        current.append(task)
        size += len(task.shard)
        remaining -= len(task.shard)
    if current:
        units.append(current)
    return units
