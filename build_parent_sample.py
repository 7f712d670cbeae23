"""Build a TESS sector's TGLC light curves into a HEALPix-partitioned HDF5 dataset.

Command line::

    python build_parent_sample.py -s 23 --tglc_data_path ./tglc_data \\
        --hdf5_output_path ./tglc_data/s0023/MultimodalUniverse --fits_output_path ./tglc_data/s0023/fits_lcs \\
        --n_processes 4 --tiny

Python::

    from build_parent_sample import TGLC_Downloader
    d = TGLC_Downloader(sector=23, tglc_data_path="./tglc_data", hdf5_output_dir="./out", fits_dir="./fits")
    d.download_sector(tiny=True)

This module only wires the stages of the ``tglc_builder`` package together (listing -> fetch -> convert).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from tglc_builder import cli, convert, executor, fetch, layout, listing, net, pipeline
from tglc_builder.errors import UsageError

log = logging.getLogger("build_parent_sample")

_TINY_SIZE = 100  # objects in a --tiny build
_BATCH_SIZE = 5000  # files per download task


class TGLC_Downloader:
    """Download one sector's TGLC light curves and convert them to the dataset's HDF5 files.

    Parameters
    ----------
    sector : TESS sector number.
    tglc_data_path : folder for the sector's listings, catalog and failure report (in ``sSSSS/``).
    hdf5_output_dir : output folder of the dataset (``TGLC/healpix=<p>/*.hdf5`` and ``tglc.py``).
    fits_dir : folder the FITS files are downloaded to, in MAST's layout.
    n_processes : worker processes for downloading and converting.
    mast_url : archive root; default ``$TGLC_MAST_URL`` or MAST. ``"demo"`` serves a synthetic sector from the
        project's local archive on 127.0.0.1 for the lifetime of this object.
    client : a ``dask.distributed.Client``: run the downloads and conversions on its cluster instead of a local
        process pool (its workers must share ``fits_dir`` and ``hdf5_output_dir`` with this process).
    """

    def __init__(self, sector: int, tglc_data_path: str | os.PathLike, hdf5_output_dir: str | os.PathLike,
                 fits_dir: str | os.PathLike, n_processes: int = 1, mast_url: str | None = None, *,
                 client: Any = None, connections: int = fetch.DEFAULT_CONNECTIONS,
                 max_attempts: int = net.DEFAULT_MAX_ATTEMPTS, overwrite: bool = False, clean_fits: bool = False,
                 demo_size: int = cli.DEFAULT_DEMO_SIZE):
        for name, value in (("sector", sector), ("n_processes", n_processes), ("connections", connections),
                            ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        self.sector = sector
        self.tglc_data_path = Path(tglc_data_path)
        self.hdf5_output_dir = Path(hdf5_output_dir)
        self.fits_dir = Path(fits_dir)
        self.n_processes = n_processes
        self.client = client
        self._pool: executor.Executor | None = None
        self.connections, self.max_attempts = connections, max_attempts
        self.overwrite, self.clean_fits = overwrite, clean_fits
        self._archive = None
        if mast_url == "demo":
            from tglc_builder.archive import LocalArchive

            self._archive = LocalArchive(sector=sector, n=demo_size).start()
            mast_url = self._archive.url
            log.info("Demo: serving a synthetic sector %d of %d objects at %s", sector, demo_size, mast_url)
        self.mast_url = layout.resolve_mast_url(mast_url)
        self.summary = pipeline.BuildSummary()

    @property
    def sector_dir(self) -> Path:
        return Path(layout.sector_dir(self.tglc_data_path, self.sector))

    @property
    def pool(self) -> executor.Executor:
        """The workers of this object's builds (started once, on first use)."""
        if self._pool is None:
            self._pool = executor.Executor(self.n_processes, self.client)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, and the demo archive if this object started one."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._archive is not None:
            self._archive.stop()
            self._archive = None

    def __enter__(self) -> "TGLC_Downloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create_sector_catalog(self, save_catalog: bool = True, tiny: bool = False) -> Table:
        """The sector's catalog: objects in both listings, each once, in listing order, with their HEALPix pixel.

        Fetches the listings first when they are not in ``tglc_data_path`` yet.
        """
        pipeline.writable_dir(self.sector_dir, "tglc_data_path")
        listings = listing.fetch_listings(self.sector, self.tglc_data_path, self.mast_url, self.max_attempts)
        bulk = listing.parse_bulk_script(listings.bulk_script, self.sector)
        rejected = self.sector_dir / "rejected_listing_lines.txt"
        if bulk.n_rejected:
            pipeline.write_text(rejected, "\n".join(bulk.rejected) + "\n")
            log.warning("%d listing line(s) skipped; the first %d are in %s", bulk.n_rejected, len(bulk.rejected),
                        rejected)
        else:
            rejected.unlink(missing_ok=True)
        catalog = listing.build_catalog(bulk, listing.read_target_list(listings.target_list), self.sector)
        catalog.meta["mast_url"] = self.mast_url
        if tiny:
            catalog = catalog[:_TINY_SIZE]
        if len(catalog) == 0:
            raise UsageError(f"the sector {self.sector} catalog is empty: no object of {listings.bulk_script} is in "
                             f"{listings.target_list}; check the sector and the archive URL")
        if save_catalog:
            listing.save_catalog(catalog, listing.catalog_path(self.tglc_data_path, self.sector, tiny))
        return catalog

    def batched_download(self, catalog: Table, tiny: bool = False) -> fetch.DownloadSummary:
        """Download the catalog's FITS files into ``fits_dir`` in batches of ``_BATCH_SIZE`` over the pool."""
        if tiny:
            catalog = catalog[:_TINY_SIZE]
        pipeline.writable_dir(self.fits_dir, "fits_output_path")
        result = fetch.download_catalog(catalog, self.fits_dir, self.mast_url, self.pool, batch_size=_BATCH_SIZE,
                                        connections=self.connections, max_attempts=self.max_attempts)
        self.summary.downloaded += result.downloaded
        self.summary.present += result.present
        self.summary.failures.extend(result.failures)
        return result

    def convert_fits_to_standard_format(self, catalog: Table) -> list[convert.ConvertResult]:
        """Write the HDF5 files of every HEALPix pixel and copy the ``tglc.py`` loading script beside them.

        Objects whose download failed (in this object's earlier ``batched_download``) are left out.
        """
        pipeline.writable_dir(self.hdf5_output_dir, "hdf5_output_path")
        failed = np.array([f.gaiadr3_id for f in self.summary.failures if f.stage == "download"], np.int64)
        results = convert.convert_catalog(catalog, self.fits_dir, self.hdf5_output_dir, self.sector, self.pool,
                                          overwrite=self.overwrite, clean_fits=self.clean_fits, skip=failed)
        for result in results:
            if result.written:
                self.summary.converted += result.n_rows
                self.summary.files_written += 1
            self.summary.failures.extend(result.failures)
        return results

    def download_sector(self, tiny: bool = False) -> pipeline.BuildSummary:
        """The whole build: catalog, downloads, conversion, failure report. Rerun it to resume."""
        for directory, what in ((self.sector_dir, "tglc_data_path"), (self.fits_dir, "fits_output_path"),
                                (self.hdf5_output_dir, "hdf5_output_path")):
            pipeline.writable_dir(directory, what)
        with pipeline.exclusive([self.sector_dir, self.fits_dir, self.hdf5_output_dir]):
            pipeline.remove_debris(self.sector_dir)
            self.summary = pipeline.BuildSummary()
            catalog = self.create_sector_catalog(save_catalog=True, tiny=tiny)
            # Light curves already in complete HDF5 files need no download (their FITS may have been cleaned).
            pending = np.ones(len(catalog), bool) if self.overwrite else convert.pending_rows(
                catalog, self.hdf5_output_dir, self.sector)
            self.summary.complete = int((~pending).sum())
            self.batched_download(catalog[pending])
            self.convert_fits_to_standard_format(catalog)
            report = self.sector_dir / "failures.csv"
            pipeline.write_failure_report(report, self.summary.failures)
        log.info("Sector %d: %s", self.sector, self.summary.describe())
        if self.summary.failures:
            log.error("%d object(s) failed; see %s, then rerun the same command to retry them",
                      len(self.summary.failures), report)
        return self.summary


def _main(args: argparse.Namespace) -> int:
    with cli.dask_client(args.scheduler, args.n_processes) as client, \
            TGLC_Downloader(args.sector, args.tglc_data_path, args.hdf5_output_path, args.fits_output_path,
                            n_processes=args.n_processes, mast_url=args.mast_url, client=client,
                            connections=args.connections, max_attempts=args.max_attempts, overwrite=args.overwrite,
                            clean_fits=args.clean_fits, demo_size=args.demo_size) as downloader:
        summary = downloader.download_sector(tiny=args.tiny)
    return cli.EXIT_FAILURES if summary.failures else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python build_parent_sample.py`` and ``tglc-build``."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
