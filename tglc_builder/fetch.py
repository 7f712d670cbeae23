"""Download a catalog's FITS files: batches spread over the executor, many connections (threads) per process.

Downloads are I/O-bound, so concurrency comes from threads sharing one pooled requests session per process; the
processes only spread the CPU cost of HTTP and validation. Each file streams to a temporary name, is checked to be
a whole TGLC light curve of the right object (the same reader the conversion uses) and only then takes its name.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import executor, net
from .reader import read_tglc

log = logging.getLogger(__name__)

# Concurrent connections of a whole build, shared out among its worker processes: enough to hide ~50 ms of latency
# per file (24 in flight: up to ~480 files/s), few enough for a shared public archive, which can always answer 429.
DEFAULT_CONNECTIONS = 24
QUARANTINE = "corrupt"  # folder of fits_dir where files that are not TGLC light curves are moved


@dataclass(frozen=True)
class Failure:
    """An object that could not be downloaded or converted."""

    gaiadr3_id: int
    path: str
    stage: str
    reason: str
    attempts: int


@dataclass
class DownloadSummary:
    downloaded: int = 0
    present: int = 0
    failures: list[Failure] = field(default_factory=list)

    def add(self, other: "DownloadSummary") -> None:
        self.downloaded += other.downloaded
        self.present += other.present
        self.failures.extend(other.failures)


def is_present(dest: Path) -> bool:
    """Whether a file needs no download: files reach their final name only whole and checked, so a file of FITS
    block size is complete (the cheap test matters when resuming a sector of two million files)."""
    try:
        size = dest.stat().st_size
    except FileNotFoundError:
        return False
    return size > 0 and size % 2880 == 0


def quarantine_path(fits_dir: str | os.PathLike, relpath: str) -> Path:
    return Path(fits_dir) / QUARANTINE / relpath


# ---- worker side -----------------------------------------------------------------------------------------------
_sessions: dict[tuple[int, int], Any] = {}  # one pooled session per process and settings


def _session(connections: int, max_attempts: int):
    key = (connections, max_attempts)
    if key not in _sessions:
        _sessions[key] = net.make_session(max_attempts=max_attempts, connections=connections)
    return _sessions[key]


def _download_one(session, base_url: str, fits_dir: Path, gaia_id: int, relpath: str,
                  max_attempts: int) -> tuple[str, Failure | None]:
    if executor.stopping():
        return "cancelled", None
    dest = fits_dir / relpath
    if is_present(dest):
        return "present", None
    if dest.parent.is_dir():
        for stale in dest.parent.glob(f".{dest.name}.part-*"):
            stale.unlink(missing_ok=True)  # debris of a run that was killed
    try:
        net.download_file(session, f"{base_url}/{relpath}", dest, validate=lambda tmp: read_tglc(tmp, gaia_id),
                          max_attempts=max_attempts, quarantine=quarantine_path(fits_dir, relpath))
        return "downloaded", None
    except net.DownloadError as exc:
        return "failed", Failure(gaia_id, relpath, "download", exc.reason, exc.attempts)


def download_batch(base_url: str, fits_dir: str, gaia_ids: list[int], relpaths: list[str], connections: int,
                   max_attempts: int) -> DownloadSummary:
    """Download one batch with ``connections`` threads; failures are returned, never raised."""
    session = _session(connections, max_attempts)
    summary = DownloadSummary()
    with ThreadPoolExecutor(connections) as threads:
        futures = [threads.submit(_download_one, session, base_url, Path(fits_dir), gaia, relpath, max_attempts)
                   for gaia, relpath in zip(gaia_ids, relpaths)]
        for future in futures:
            outcome, failure = future.result()
            if outcome == "downloaded":
                summary.downloaded += 1
            elif outcome == "present":
                summary.present += 1
            elif failure is not None:
                summary.failures.append(failure)
            executor.advance()
    return summary


# ---- driver side -----------------------------------------------------------------------------------------------
def _lost_batch(task: tuple, error: BaseException) -> DownloadSummary:
    _, _, gaia_ids, relpaths, *_ = task
    reason = f"the worker downloading it died ({type(error).__name__}); rerun to retry"
    return DownloadSummary(failures=[Failure(g, p, "download", reason, 0) for g, p in zip(gaia_ids, relpaths)])


def download_catalog(catalog, fits_dir: str | os.PathLike, mast_url: str, pool: executor.Executor | None = None,
                     batch_size: int = 5000, connections: int = DEFAULT_CONNECTIONS,
                     max_attempts: int = net.DEFAULT_MAX_ATTEMPTS) -> DownloadSummary:
    """Fetch every row's file into ``fits_dir/<path>`` in batches of at most ``batch_size`` spread over the
    ``pool``'s workers (default: one process), with ``connections`` in flight at once in all."""
    if pool is None:
        with executor.Executor() as pool:
            return download_catalog(catalog, fits_dir, mast_url, pool, batch_size, connections, max_attempts)
    fits_dir = Path(fits_dir)
    fits_dir.mkdir(parents=True, exist_ok=True)
    gaia = np.asarray(catalog["gaiadr3_id"]).tolist()
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in catalog["path"]]
    per_worker = -(-connections // pool.workers)
    batch_size = max(1, min(batch_size, -(-len(paths) // pool.workers)))  # a small catalog still uses every worker
    tasks = [(mast_url, str(fits_dir), gaia[i:i + batch_size], paths[i:i + batch_size], per_worker, max_attempts)
             for i in range(0, len(paths), batch_size)]
    summary = DownloadSummary()
    for result in pool.run(download_batch, tasks, total=len(paths), desc="Downloading", unit="file",
                           weights=[len(task[3]) for task in tasks], lost=_lost_batch):
        summary.add(result)
    log.info("Downloads: %d new, %d already present, %d failed", summary.downloaded, summary.present,
             len(summary.failures))
    return summary
