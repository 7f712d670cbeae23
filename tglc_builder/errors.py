"""What can go wrong, as plain data: errors the user can act on, and the per-object failures of a build."""

from __future__ import annotations

from dataclasses import dataclass


class UsageError(Exception):
    """Bad input or an unusable environment (a path, a sector, a listing, a busy output folder): reported as one
    line naming the input, with exit code 2, never a traceback."""


@dataclass(frozen=True)
class Failure:
    """An object that could not be fetched, read or written; one row of ``failures.csv``."""

    gaiadr3_id: int
    path: str
    stage: str  # "download" (fetching the FITS file), "convert" (reading it), "write" (an output file)
    reason: str
    attempts: int
    whole_in: tuple[str, ...] = ()  # formats whose file of the object's shard is whole (with --format both, when
    # only the other failed); not a column of failures.csv, whose reason says it
