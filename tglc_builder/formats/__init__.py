"""Output formats, chosen in one place by ``--format`` (see :mod:`.base` for the interface)."""

from __future__ import annotations

import os

from ..columns import ColumnSet
from ..errors import UsageError
from .base import Block, RowSource, Shard, ShardSink, WriteError, Writer

FORMATS = ("hdf5", "hats", "both")

__all__ = ["FORMATS", "Block", "RowSource", "Shard", "ShardSink", "WriteError", "Writer", "make_writers"]


def make_writers(fmt: str, sector: int, columns: ColumnSet, hdf5_output_dir: str | os.PathLike,
                 hats_output_dir: str | os.PathLike | None = None, hats_extras: bool = False, note: str = ""
                 ) -> list[Writer]:
    """The writers of a build: ``hdf5``, ``hats`` or ``both`` (every FITS file is still read once)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    writers: list[Writer] = []
    if fmt in ("hdf5", "both"):
        from .hdf5 import HDF5Writer

        writers.append(HDF5Writer(hdf5_output_dir, sector, columns, note=note))
    if fmt in ("hats", "both"):
        try:
            from .hats import HatsWriter
        except ImportError as exc:
            raise UsageError(f"--format {fmt} needs hats ({exc.name} is missing): pip install "
                             "'tglc-builder[hats]'") from None
        writers.append(HatsWriter(hats_output_dir, sector, columns, extras=hats_extras, note=note))
    return writers
