"""Every goal, written once (the stages' checks and the report both read them), and the figures before the redesign.

A goal applies to one measure (a row of the table, by key) and looks at one of its numbers:

- ``value``: the measure itself (a time, a rate, a size);
- ``ratio``: the measure over its reference (ours / reference, measured in the same run);
- ``before``: the measure over the same measure before the redesign (:data:`BEFORE`), in a full run only;
- ``extra:<name>``: a number the stage records beside the measure (e.g. mismatches found in a lossless check).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

GB, MB, KB = 1 << 30, 1 << 20, 1 << 10
_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Goal:
    on: str  # "value", "ratio", "before" or "extra:<name>"
    op: str  # "<=" or ">="
    limit: float
    text: str  # as the table shows it

    def met(self, row: dict, full: bool) -> bool | None:
        """Whether the row meets the goal; None when it cannot say (not measured, or no figure to compare)."""
        if self.on == "value":
            x = row.get("value")
        elif self.on == "ratio":
            x = row["value"] / row["ref_value"] if row.get("value") is not None and row.get("ref_value") else None
        elif self.on == "before":
            before = BEFORE.get(row["key"]) if full else None
            x = row["value"] / before.value if before and row.get("value") is not None else None
        else:
            x = row.get("extra", {}).get(self.on.split(":", 1)[1])
        return None if x is None else bool(_OPS[self.op](x, self.limit))


# Rates measured run to run on this shared 2-core machine spread by about +-10% (see RESULTS.md's analysis), so
# "no worse than before" allows that much.
NO_SLOWER = Goal("before", ">=", 0.9, "no worse than before (>= 0.9x)")
NO_LARGER = Goal("before", "<=", 1.1, "no worse than before (<= 1.1x)")

GOALS: dict[str, tuple[Goal, ...]] = {
    "catalog.time": (Goal("value", "<=", 4.0, "<= 4 s"),),
    "catalog.rss": (Goal("value", "<=", 1.5 * GB, "<= 1.5 GB"),),
    "big_sector.time_6m": (Goal("value", "<=", 12.0, "<= 12 s"),),
    "big_sector.rss_6m": (Goal("value", "<=", 3 * GB, "<= 3 GB"),),
    "big_sector.growth": (Goal("value", "<=", 1.1, "no worse than linear (<= 1.1, noise)"),),
    "download.50ms": (Goal("value", ">=", 300, ">= 300 files/s"),),
    "convert.one_core": (Goal("value", ">=", 3000, ">= 3,000 /s/core"), NO_SLOWER),
    "convert.sector": (Goal("value", ">=", 3000, ">= 3,000 /s/core"), NO_SLOWER),
    "convert.peak_rss": (NO_LARGER,),
    "convert_memory.largest": (Goal("value", "<=", 1 * GB, "<= 1 GB, flat"), NO_LARGER),
    "output_size.hdf5": (Goal("value", "<=", 12 * KB, "<= 12 KB"), Goal("extra:mismatches", "<=", 0, "lossless")),
    "loading.prepare": (Goal("extra:vs_uncompressed", ">=", 0.9, "must not suffer (>= 0.9x uncompressed)"),),
    "loading.stream": (Goal("extra:vs_uncompressed", ">=", 0.9, "must not suffer (>= 0.9x uncompressed)"),),
    "end_to_end.wall": (Goal("ratio", "<=", 1.05, "<= 1.05x the plain client"),),
    "streaming.scratch": (Goal("ratio", "<=", 0.15, "<= 15% of the sector's FITS bytes"),),
    "hats.bytes": (Goal("value", "<=", 9 * KB, "<= 9 KB"), Goal("extra:mismatches", "<=", 0, "lossless")),
    "hats.write": (Goal("ratio", ">=", 0.9, ">= 0.9x HDF5"),),
    "hats.write_memory": (Goal("ratio", "<=", 1.5, "<= 1.5x HDF5"),),
    "convert.side_by_side": (Goal("ratio", ">=", 0.9, "no worse than before (>= 0.9x)"),),
    "convert.density": (Goal("value", ">=", 2500, ">= 2,500 /s on one process"),),
    "hats.read_parquet": (Goal("ratio", ">=", 1.5, ">= 1.5x HDF5 with load_tglc"),),
    "hats.read_parquet_batches": (Goal("ratio", ">=", 1.5, ">= 1.5x HDF5 with load_tglc"),),
    "tiny.hdf5": (Goal("ratio", "<=", 1.2, "<= 1.2x the FITS bytes"),),
    "stars.rate": (Goal("value", ">=", 3000, ">= 3,000 /s/core"),),
    "stars.peak_rss": (Goal("value", "<=", 1 * GB, "<= 1 GB"),),
    "stars.add_sector": (Goal("extra:outside", "<=", 0, "only partitions holding the sector's stars"),),
    "release.many_sectors": (Goal("ratio", "<=", 1.05, "<= 1.05x the one-sector builds + the stars stage"),),
    "release.targets_requests": (Goal("extra:wrong", "<=", 0, "exactly the listings and those stars' files"),),
    "release.targets_cached": (Goal("value", "<=", 30, "seconds, not minutes (<= 30 s)"),),
}


def goals_of(key: str) -> tuple[Goal, ...]:
    return GOALS.get(key, ())


def goal_text(key: str) -> str:
    return "; ".join(g.text for g in goals_of(key)) or "—"


def missed(row: dict, full: bool) -> list[str]:
    """The texts of the row's goals that it misses."""
    return [g.text for g in goals_of(row["key"]) if g.met(row, full) is False]


def met(row: dict, full: bool) -> bool | None:
    """All of the row's goals met (True), one missed (False), or nothing to judge (None)."""
    results = [g.met(row, full) for g in goals_of(row["key"])]
    if any(r is False for r in results):
        return False
    return True if results and all(r is True for r in results) else None


@dataclass(frozen=True)
class Before:
    value: float
    text: str  # as benchmarks/RESULTS.md showed it


BEFORE_COMMIT = "a4a41bf"  # benchmarks/RESULTS.md before the redesign (full run, this machine)
BEFORE: dict[str, Before] = {
    "catalog.time": Before(3.13, "3.13 s"),
    "catalog.rss": Before(985 * MB, "985 MB"),
    "download.0ms": Before(733, "733 files/s"),
    "download.50ms": Before(432, "432 files/s"),
    "convert.one_core": Before(4417, "4,417 /s"),
    "convert.sector": Before(3763, "3,763 /s/core"),
    "convert.peak_rss": Before(107 * MB, "107 MB"),
    "convert_memory.10000": Before(104 * MB, "104 MB"),
    "convert_memory.30000": Before(111 * MB, "111 MB"),
    "convert_memory.largest": Before(136 * MB, "136 MB"),
    "output_size.hdf5": Before(9.9 * KB, "9.9 KB"),
    "output_size.real": Before(10.5 * KB, "10.5 KB"),
    "loading.prepare": Before(10244, "10,244 rows/s"),
    "loading.iterate": Before(4993, "4,993 rows/s"),
    "loading.stream": Before(4718, "4,718 rows/s"),
    "end_to_end.wall": Before(50.9, "50.9 s (1.21x the client's 42.0 s)"),
    "end_to_end.memory": Before(567 * MB, "567 MB"),
    "streaming.scratch": Before(1.0, "100% (every FITS file, even with --clean-fits)"),
    "tiny.hdf5": Before(2.3, "2.3x the FITS bytes"),
}
