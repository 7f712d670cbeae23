"""The stages, registered here in the order they run. Each module has ``NAME``, ``SIZES`` (``full`` and ``quick``)
and ``measure(ctx) -> list of rows``; its measurements are tasks that run in fresh processes."""

from __future__ import annotations

from . import big_sector, catalog, convert, convert_memory, download, end_to_end, hats, loading, output_size, \
    release, sources, stars, streaming, tiny

STAGES = [catalog, download, convert, convert_memory, output_size, loading, end_to_end, streaming, sources, hats, tiny,
          stars, release, big_sector]
BY_NAME = {stage.NAME: stage for stage in STAGES}
