"""Build a TESS sector's TGLC light curves into a HEALPix-partitioned dataset (HDF5 and/or a HATS catalog).

Command line::

    python build_parent_sample.py -s 23 --tglc_data_path ./tglc_data \\
        --hdf5_output_path ./tglc_data/s0023/MultimodalUniverse --fits_output_path ./tglc_data/s0023/fits_lcs \\
        --n_processes 4 --tiny

Python::

    from build_parent_sample import TGLC_Downloader
    d = TGLC_Downloader(sector=23, tglc_data_path="./tglc_data", hdf5_output_dir="./out", fits_dir="./fits")
    d.download_sector(tiny=True)

This module only adapts the seed's interface to the ``tglc_builder`` package (``tglc_builder.run``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from astropy.table import Table

from tglc_builder import cli, run
from tglc_builder.arguments import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, TINY_SIZE, BuildArguments
from tglc_builder.errors import UsageError
from tglc_builder.executor import Executor, run_interruptibly
from tglc_builder.formats import DEMO_NOTE, make_writers
from tglc_builder.folders import exclusive
from tglc_builder.report import BuildSummary
from tglc_builder.sources import DEFAULT_CONNECTIONS

log = logging.getLogger("build_parent_sample")

_TINY_SIZE = TINY_SIZE  # objects in a --tiny build
_BATCH_SIZE = 5000  # files per download task of batched_download




DEMO_RELEASE = (1, 2, 3)  # the sectors of the demo archive for -s all


@contextlib.contextmanager
def demo_archive(sector: int | tuple[int, ...] | None, size: int):
    """Serve a synthetic sector from the built-in local archive on 127.0.0.1 while the block runs; yields it.
    Several sectors (None: :data:`DEMO_RELEASE`) are served as a release whose stars recur across sectors."""
    from tglc_builder.demo import LocalArchive
    from tglc_builder.demo.server import LAST_TESS_SECTOR

    if isinstance(sector, int) or (sector is not None and len(sector) == 1):
        sector = sector if isinstance(sector, int) else sector[0]
        if sector > LAST_TESS_SECTOR:
            log.warning("Demo: TESS has no sector %d (its sectors run to %d as this version knows); the demo makes up "
                        "a synthetic sector of any number, but MAST has none to build", sector, LAST_TESS_SECTOR)
        with LocalArchive(sector=sector, n=size) as archive:
            log.info("Demo: serving a synthetic sector %d of %d objects at %s", sector, size, archive.url)
            yield archive
        return
    sectors = tuple(sector or DEMO_RELEASE)
    with LocalArchive(sectors=sectors, n=size) as archive:
        log.info("Demo: serving a synthetic release of sectors %s, %d objects each, at %s",
                 ",".join(map(str, sectors)), size, archive.url)
        yield archive


class TGLC_Downloader:
    """Download one sector's TGLC light curves and write them as the dataset's files.

    Parameters
    ----------
    sector : TESS sector number; or several (``[1, 2, 3]``, ``"1-13,27"``, ``"all"``), for
        :meth:`download_sector` only: each sector is built into its own folders, and the paths given are templates
        with ``{sector}`` (e.g. ``"./out/s{sector:04d}/hdf5"``).
    tglc_data_path : folder for the sector's listings, catalog and failure report (in ``sSSSS/``).
    hdf5_output_dir : output folder of the HDF5 dataset (``TGLC/healpix=<p>/*.hdf5``, ``tglc.py``, ``README.md``).
    fits_dir : folder the FITS files are downloaded to, in MAST's layout.
    n_processes : worker processes for downloading and converting.
    mast_url : archive root: an http(s) URL, ``s3://BUCKET/PREFIX`` or a directory; default ``$TGLC_MAST_URL`` or
        MAST. ``"demo"`` serves a synthetic sector from the project's local archive on 127.0.0.1 while this object
        is open.
    listing_url : root to read the two listings (and ``download_scripts/``) from, when ``mast_url`` holds none
        (e.g. light curves from ``s3://stpubdata/mast/hlsp/tglc``, listings from MAST's HTTPS archive); default
        ``mast_url`` itself.
    client : a ``dask.distributed.Client``: run the work on its cluster instead of a local process pool (its
        workers must share ``fits_dir`` and the output folders with this process).
    format, columns, hats_output_dir, stars, targets, cone, ... : as the command line's flags (see
        ``BuildArguments``).
    """

    def __init__(self, sector: int | str | list[int], tglc_data_path: str | os.PathLike,
                 hdf5_output_dir: str | os.PathLike, fits_dir: str | os.PathLike, n_processes: int = 1,
                 mast_url: str | None = None, *,
                 client: Any = None, connections: int = DEFAULT_CONNECTIONS, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_wait: float = DEFAULT_MAX_WAIT, overwrite: bool = False, clean_fits: bool = False,
                 format: str = "hdf5", columns: str = "seed", hats_output_dir: str | os.PathLike | None = None,
                 hats_extras: bool = False, verify: bool = False, refresh_listings: bool = False,
                 demo_size: int = cli.DEFAULT_DEMO_SIZE, rows_per_shard: int | None = None,
                 listing_url: str | None = None, stars: bool | None = None,
                 stars_output_dir: str | os.PathLike | None = None, stars_pixel_threshold: int | None = None,
                 targets: Any = None, cone: Sequence[float] | None = None, match_radius: float | None = None):
        self.arguments = BuildArguments(
            sector=sector, tglc_data_path=tglc_data_path, hdf5_output_dir=hdf5_output_dir, fits_dir=fits_dir,
            hats_output_dir=hats_output_dir, mast_url=None if mast_url == "demo" else mast_url,
            n_processes=n_processes, format=format, columns=columns, hats_extras=hats_extras,
            connections=connections, max_attempts=max_attempts, max_wait=max_wait, overwrite=overwrite,
            clean_fits=clean_fits, verify=verify, refresh_listings=refresh_listings, rows_per_shard=rows_per_shard,
            batch_size=_BATCH_SIZE, listing_url=listing_url, stars=stars, stars_output_dir=stars_output_dir,
            stars_pixel_threshold=stars_pixel_threshold, targets=targets, cone=cone,
            **({} if match_radius is None else {"match_radius": match_radius}))
        self.client = client
        self._demo_size = demo_size if mast_url == "demo" else None
        self._stack = contextlib.ExitStack()
        self._executor: Executor | None = None
        self.summary = BuildSummary()

    # -- the seed's attributes -------------------------------------------------------------------------------------
    sector = property(lambda self: self.arguments.sector)
    tglc_data_path = property(lambda self: self.arguments.tglc_data_path)
    hdf5_output_dir = property(lambda self: self.arguments.hdf5_output_dir)
    fits_dir = property(lambda self: self.arguments.fits_dir)
    n_processes = property(lambda self: self.arguments.n_processes)

    @property
    def mast_url(self) -> str:
        """The archive root this object builds from (the demo archive's URL once it runs)."""
        return self._args().mast_url or run.open_build_source(self.arguments).url

    def _args(self, **changes) -> BuildArguments:
        """The arguments, with the demo archive's URL once it runs (started on first use, stopped by close())."""
        if self._demo_size is not None and self.arguments.mast_url is None:
            archive = self._stack.enter_context(demo_archive(self.arguments.sectors, self._demo_size))
            self.arguments = replace(self.arguments, mast_url=archive.url, card_note=DEMO_NOTE,
                                     archive_id=archive.identity)
        return replace(self.arguments, batch_size=_BATCH_SIZE, tiny_size=_TINY_SIZE, **changes)

    @property
    def pool(self) -> Executor:
        """The workers of this object's builds (started once, on first use)."""
        if self._executor is None:
            self._executor = self._stack.enter_context(Executor(self.arguments.n_processes, self.client))
        return self._executor

    def close(self) -> None:
        """Stop the worker processes, and the demo archive if this object started one."""
        self._stack.close()
        self._executor = None
        if self._demo_size is not None:
            self.arguments = replace(self.arguments, mast_url=None, archive_id=None)

    def __enter__(self) -> "TGLC_Downloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _one_sector(self, what: str) -> None:
        if self.arguments.several:
            raise UsageError(f"{what} works on one sector; with several, use download_sector() (the whole build)")

    def create_sector_catalog(self, save_catalog: bool = True, tiny: bool = False) -> Table:
        """The sector's catalog: objects in both listings, each once, in listing order, with their HEALPix pixel.

        Fetches the listings first when they are not in ``tglc_data_path`` yet.
        """
        self._one_sector("create_sector_catalog()")
        args = self._args(tiny=tiny)
        return run.make_catalog(args, run.open_build_source(args), tiny=tiny, save=save_catalog)

    def batched_download(self, catalog: Table, tiny: bool = False) -> BuildSummary:
        """Download the catalog's FITS files into ``fits_dir`` in batches of ``_BATCH_SIZE`` over the pool."""
        self._one_sector("batched_download()")
        if tiny:
            catalog = catalog[:_TINY_SIZE]
        args = self._args()
        with exclusive([run.writable_dir(args.fits_dir, "fits_output_path")]):
            result = run.fetch_only(args, catalog, run.open_build_source(args, self.pool.workers), self.pool)
        self.summary.downloaded += result.downloaded
        self.summary.present += result.present
        self.summary.failures.extend(result.failures)
        return result

    def convert_fits_to_standard_format(self, catalog: Table) -> BuildSummary:
        """Write the output files of every HEALPix pixel from the FITS files in ``fits_dir`` (and the folder's
        ``tglc.py`` and dataset card). Objects whose download failed (in this object's earlier
        ``batched_download``) are left out."""
        from tglc_builder.sources.local import LocalSource

        self._one_sector("convert_fits_to_standard_format()")
        args = self._args()
        failed = np.array([f.path.encode() for f in self.summary.failures if f.stage == "download"], "S")
        folders = [run.writable_dir(w.output_dir, w.name) for w in make_writers(args)]
        with exclusive(folders):
            result = run.write_outputs(args, catalog, LocalSource(str(args.fits_dir), owns_files=True), self.pool,
                                       skip=failed)
        self.summary.converted += result.converted
        self.summary.files_written += result.files_written
        self.summary.failures.extend(result.failures)
        return result

    def download_sector(self, tiny: bool = False) -> BuildSummary:
        """The whole build: catalog, then each shard fetched, converted and written. Rerun it to resume."""
        self.summary = run.run(self._args(tiny=tiny), self.pool)
        return self.summary


def _main(args: argparse.Namespace) -> int:
    arguments = replace(cli.arguments_of(args), tiny_size=_TINY_SIZE, batch_size=_BATCH_SIZE)
    with contextlib.ExitStack() as stack:
        if args.demo:
            archive = stack.enter_context(demo_archive(arguments.sectors, args.demo_size))
            arguments = replace(arguments, mast_url=archive.url, card_note=DEMO_NOTE, archive_id=archive.identity)
        client = stack.enter_context(cli.dask_client(args.scheduler, args.n_processes))
        executor = stack.enter_context(Executor(args.n_processes, client))
        summary = run_interruptibly(lambda: run.run(arguments, executor), executor.kill)
    return cli.EXIT_FAILURES if summary.failures or summary.fatal else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The command line, run in this process; returns its exit status."""
    return cli.run(_main, argv)


def console_main() -> None:
    """Entry point of ``python build_parent_sample.py`` and ``tglc-build``: :func:`main` as the whole process."""
    cli.run_as_process(main)


if __name__ == "__main__":
    console_main()
