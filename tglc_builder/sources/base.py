"""What a source of TGLC files is: a tree in MAST's layout (``download_scripts/``, ``target_lists/``,
``sSSSS/camC-ccdD/...``) reached over some protocol. HTTP(S) is the baseline; a local mirror and an S3 bucket are
other sources. :func:`tglc_builder.sources.open_source` chooses one by the URL's scheme, in one place.

A source is plain settings (picklable: it is sent to every worker, each of which opens its own connections
lazily). Relative paths given to it are canonical TGLC paths checked by the listing parser, never raw listing text.
"""

from __future__ import annotations

import abc
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Failure

QUARANTINE = "corrupt"  # folder of fits_dir where downloaded files that are not TGLC light curves are moved
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
WINDOW = 4  # items a source starts ahead of the one being yielded, per connection (bounds the FITS on disk)


class SourceError(Exception):
    """A file that could not be fetched: after ``attempts`` tries, or at once when ``permanent`` (not found)."""

    def __init__(self, where: str, reason: str, attempts: int = 1, permanent: bool = False):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason, self.attempts, self.permanent = where, reason, attempts, permanent


class DiskFull(OSError):
    """Writing into ``folder`` failed for lack of space (or a file-size limit): every download should stop."""

    def __init__(self, folder: str | os.PathLike, error: OSError):
        what = "file size limit reached" if error.errno == errno.EFBIG else "no space left"
        super().__init__(error.errno, f"{what} on {folder} ({error.strerror or error})")
        self.folder = str(folder)


@dataclass
class Fetched:
    """Where one light curve can be read now."""

    path: Path
    downloaded: bool  # fetched now (False: already in fits_dir, or read in place from a mirror)
    attempts: int = 0
    # What validate() returned for it (the light curve it read: not part of its identity), or None: read path.
    checked: Any = field(default=None, compare=False, repr=False)


@dataclass
class ListingCopy:
    """What the server said of a listing it sent (kept in the listing manifest)."""

    size: int
    validators: dict[str, str] = field(default_factory=dict)  # e.g. Content-Length, ETag, Last-Modified


# validate(path, i): raise ValueError (reader.InvalidTGLCFile) when the file at ``path`` is not item i's light curve;
# what it returns (the light curve it read) comes back as Fetched.checked, so that the file need not be read twice.
Validator = Callable[[Path, int], Any]


class Source(abc.ABC):
    """A tree in MAST's layout."""

    url: str  # the root, as given (no trailing slash)
    # The files it yields are copies it made in fits_dir, ours to quarantine when invalid and to delete with
    # --clean-fits. False for a mirror read in place: its files are never moved or deleted.
    owns_files: bool = True

    @abc.abstractmethod
    def describe(self) -> str:
        """A short name for messages, e.g. ``https://archive.stsci.edu/hlsps/tglc``."""

    def local_path(self, relpath: str) -> Path | None:
        """Where ``relpath`` already is on this machine when the source is read in place (a mirror), else None."""
        return None

    def check(self) -> None:  # noqa: B027 - optional: most sources need no check beyond fetching the listings
        """Raise UsageError (one line naming the root) when the source cannot be used at all."""

    def list_sectors(self) -> list[int]:
        """The sectors whose bulk-download script the archive lists in ``download_scripts/`` (its index page, a
        mirror's folder, a bucket's prefix), ascending; [] when it lists none or cannot list. The names listed are
        untrusted: only exact bulk-script names count (``layout.sectors_of_names``)."""
        return []

    @abc.abstractmethod
    def fetch_listing(self, relpath: str, dest: Path) -> ListingCopy:
        """Copy a listing to ``dest`` (atomically, whole or not at all). Raises SourceError."""

    @abc.abstractmethod
    def fetch_many(self, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                   stopping: Callable[[], bool], started_all: Callable[[], None] | None = None
                   ) -> Iterator[tuple[int, Fetched | Failure]]:
        """Make each item's light curve (``(gaiadr3_id, relpath)``) readable; yield ``(i, Fetched | Failure)`` for
        every item ``i``, in item order, as they arrive (several in flight at once). Files already complete in
        ``fits_dir`` are not fetched again; a fetched file takes its name only once whole and ``validate`` d (else
        it is quarantined under ``fits_dir/corrupt/`` and yields a Failure). Stops early (yielding nothing more)
        when ``stopping()``; raises :class:`DiskFull` when ``fits_dir`` fills up, after cancelling what is queued.

        A source that keeps transfers in flight may call ``started_all()`` (once, from any thread) when the last
        item's transfer has started: another call may then run beside this one (the next work unit, see
        ``executor.hand_over``), and the two share the process's connections, never more than it was given."""


def quarantine_path(fits_dir: str | os.PathLike, relpath: str) -> Path:
    return Path(fits_dir) / QUARANTINE / relpath


def is_present(dest: Path) -> bool:
    """Whether a file needs no download: files reach their final name only whole and checked, so a file of FITS
    block size is complete (the cheap test matters when resuming a sector of two million files)."""
    try:
        size = dest.stat().st_size
    except FileNotFoundError:
        return False
    return size > 0 and size % 2880 == 0
