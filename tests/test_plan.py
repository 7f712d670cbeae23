"""Work units: how a build's pending shards are grouped for its workers."""

from __future__ import annotations

import numpy as np
import pytest

from tglc_builder import plan
from tglc_builder.formats import Shard


def shard(pixel: int, rows: int) -> plan.ShardTask:
    ids = np.arange(rows, dtype=np.int64) + 1000 * pixel
    return plan.ShardTask(Shard(pixel, 1, 1, ids, ids, np.zeros(rows), np.zeros(rows), np.ones(rows, np.int16),
                                np.ones(rows, np.int16), np.array([b"p"] * rows, "S")), ("hdf5",))


# pixels of 1 to 900 rows, largest first as a plan lists them
SIZES = sorted([900, 850, 700, 640, 500, 420, 333, 300, 260, 200, 150, 120, 90, 80, 64, 50, 33, 20, 12, 9, 5, 3, 2, 1],
               reverse=True)


@pytest.mark.parametrize("min_rows", [1, 40, 200])
def test_units_hold_every_shard_once_in_order_and_shrink_to_the_floor(min_rows):
    tasks = [shard(p, n) for p, n in enumerate(SIZES)]
    units = plan.work_units(tasks, workers=2, max_rows=1000, min_rows=min_rows)
    assert [t for unit in units for t in unit] == tasks  # every shard once, in the plan's order
    sizes = [sum(len(t.shard) for t in unit) for unit in units]
    assert all(size <= 1000 for size in sizes)
    # only the last unit is smaller than the floor (the end of a unit costs a round trip of idle connections)
    assert all(size >= min_rows for size in sizes[:-1])
    # guided: a unit is at most a quarter of what was left (2 workers), unless one shard alone is more, or its last
    # shard took it past the floor
    left = sum(SIZES)
    for unit, size in zip(units, sizes):
        assert size <= max(min_rows, left // 4) or len(unit) == 1 or size - len(unit[-1].shard) < min_rows
        left -= size
    if min_rows == 1:
        assert sizes[-1] < 40  # without a floor the last units are tiny
    else:
        assert len(units) < len(plan.work_units(tasks, workers=2, max_rows=1000))


def test_a_large_shard_is_a_unit_of_its_own():
    tasks = [shard(0, 5000), shard(1, 10), shard(2, 5)]
    units = plan.work_units(tasks, workers=2, max_rows=1000, min_rows=100)
    assert [len(unit) for unit in units] == [1, 2]


def test_a_small_build_still_gives_every_worker_units():
    tasks = [shard(p, n) for p, n in enumerate([30, 20, 15, 10, 10, 8, 4, 2, 1])]  # 100 rows, as --tiny
    for workers in (2, 4):
        units = plan.work_units(tasks, workers=workers, max_rows=2000, min_rows=200)
        assert len(units) >= workers and [t for unit in units for t in unit] == tasks


def test_the_floor_is_a_tenth_of_the_most():
    assert plan.min_unit_rows(plan.unit_rows(23)) == 200  # 30-minute cadence: units of 200 to 2,000 rows
    assert plan.min_unit_rows(5) == 1
