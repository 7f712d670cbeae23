"""A synthetic sector written to disk in MAST's layout: a local mirror, byte for byte what the archive serves."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import layout
from .sector import SyntheticSector
from .server import LocalArchive

_WRITERS = 4  # threads making folders and writing files while the next light curves are made
_QUEUED = 512  # light curves made but not yet written, at most


def write_mirror(root: str | os.PathLike, source: SyntheticSector | LocalArchive) -> Path:
    """Write the sector of ``source`` (every sector of an archive serving a release) under ``root`` as MAST lays it
    out: both listings (with the extra listing lines) and every light curve (tampered ones included), byte for byte
    what the archive serves. Return ``root``.

    Files already there are overwritten.
    """
    for sector in source.release.values() if isinstance(source, LocalArchive) else (source,):
        _write_sector(Path(root), sector)
    return Path(root)


def _write_sector(root: Path, sector: SyntheticSector) -> None:
    for relpath, body in ((layout.bulk_script_relpath(sector.sector), sector.bulk_script()),
                          (layout.target_list_relpath(sector.sector), sector.target_list())):
        _write(root / relpath, body)
    relpaths = layout.lc_relpaths(sector.gaia_ids, sector.sector, sector.cam, sector.ccd, sector.version)
    slots = threading.BoundedSemaphore(_QUEUED)
    futures = []
    with ThreadPoolExecutor(_WRITERS, thread_name_prefix="tglc-mirror") as pool:
        for i, data in sector.fits_files():
            slots.acquire()
            futures.append(pool.submit(_write, root / relpaths[i].decode(), data))
            futures[-1].add_done_callback(lambda _: slots.release())
    for future in futures:
        future.result()  # the first error, if any


def _write(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
