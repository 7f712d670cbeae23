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
import random
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import TaskContext
from ..report import Failure

QUARANTINE = "corrupt"  # folder of fits_dir where downloaded files that are not TGLC light curves are moved
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# The largest listing accepted: 4x the largest known (sector 23's bulk-download script, ~440 MB, TGLC-FORMAT.md),
# rounded up; a bigger one (or one announced bigger) is refused before it fills the disk.
MAX_LISTING_BYTES = 2 << 30
WINDOW = 4  # items a source starts ahead of the one being yielded, per connection (bounds the FITS on disk)
# The defaults of every source, of the build's arguments and of the command line: defined here only.
DEFAULT_CONNECTIONS = 24  # in flight for the whole build, shared out among its workers (all of them for one process)
DEFAULT_MAX_ATTEMPTS = 5  # tries per file
DEFAULT_MAX_WAIT = 300.0  # seconds: the longest pause a Retry-After may impose (--max-wait)
BACKOFF = 0.5  # seconds before a second try (see retry_delay)


class SourceError(Exception):
    """A file that could not be fetched: after ``attempts`` tries, or at once when ``permanent`` (not found)."""

    def __init__(self, where: str, reason: str, attempts: int = 1, permanent: bool = False):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason, self.attempts, self.permanent = where, reason, attempts, permanent


class Refused(SourceError):
    """A file the archive answered in a way that is never trusted (a redirect to another origin, a content coding,
    a size beyond the cap): final, never asked for again; ``reason`` names what was refused."""

    def __init__(self, where: str, reason: str, attempts: int = 1):
        super().__init__(where, reason, attempts, permanent=True)


class Unreachable(SourceError):
    """The archive cannot be reached at all (its name does not resolve): ``reason`` says so in one line."""


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

    def check(self, listings: bool = True) -> None:  # noqa: B027 - optional: most need no check beyond fetching
        """Raise UsageError (one line naming the root) when the source cannot be used at all (``listings``: for its
        listings too; False when they come from another root, --listing-url)."""

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
                   context: TaskContext) -> Iterator[tuple[int, Fetched | Failure]]:
        """Make each item's light curve (``(gaiadr3_id, relpath)``) readable; yield ``(i, Fetched | Failure)`` for
        every item ``i``, in item order, by the skeleton below (docs/DESIGN.md, "A new source"). Stops early when
        ``context.stopping()``; raises :class:`DiskFull` when ``fits_dir`` fills up, after cancelling what is queued;
        may call ``context.hand_over()`` once its last transfer has started (the next unit then shares its
        connections)."""


def encoding_refused(where: str, coding: str | None) -> Refused | None:
    """The refusal of a body sent with a content coding (gzip, br, ...), or None for none (``identity``): bodies are
    asked for and stored as the server holds them, so that their size can be checked and no small answer can expand
    into a huge file."""
    coding = (coding or "").strip()
    if coding.lower() in ("", "identity"):
        return None
    return Refused(where, f"sent with Content-Encoding: {coding[:40]}, although none was asked for: refused (files "
                          "are stored exactly as the archive holds them)")


def too_big(where: str, cap: int, announced: int | None = None) -> Refused:
    """The refusal of a listing beyond ``cap`` bytes: ``announced`` (its Content-Length), or found while read."""
    size = "more" if announced is None else f"announced as {announced:,} bytes, more"
    return Refused(where, f"{size} than {cap:,} bytes, the most a listing may have (4x the largest known): refused")


_PART = re.compile(r"\.part-(\d+)(?:-\d+)?$")  # a temporary file's suffix: the process (and thread) writing it


def remove_stale_parts(folder: Path, item: str | None = None) -> list[Path]:
    """Remove the temporary files (``.NAME.part-PID[-TID]``) in ``folder`` whose process is gone (a killed worker
    writes no cleanup); those of live processes are downloads in flight. ``item``'s own are removed whatever their
    process (a build fetches an item once at a time, under its folders' locks). Returns what was removed."""
    try:
        entries = [entry.name for entry in os.scandir(folder) if entry.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in entries:
        match = _PART.search(name)
        if match is None or (_alive(int(match.group(1))) and name[1:match.start()] != item):
            continue
        try:
            os.unlink(Path(folder) / name)
        except FileNotFoundError:  # another process swept it first
            continue
        removed.append(Path(folder) / name)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a pid at all
        return False
    return True


# ---- the transfer skeleton every source follows: is it present? a temporary name (debris removed first), then the
# whole body validated and renamed or quarantined; a full disk stops everything; retries wait retry_delay() ---------
def temporary_name(dest: Path) -> Path:
    """Where ``dest`` is written until it is whole and checked: beside it, named after the process and thread
    writing it (see :func:`remove_stale_parts`)."""
    return dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")


def to_fetch(dest: Path) -> Path | None:
    """The temporary name to fetch ``dest`` to, or None when it needs no fetch (:func:`is_present`). Leftover
    temporary files of it, and of other items whose process is gone, are removed first."""
    if is_present(dest):
        return None
    remove_stale_parts(dest.parent, dest.name)
    return temporary_name(dest)


def settle(tmp: Path, fits_dir: Path, relpath: str, item: int, gaia: int, validate: Validator,
           attempts: int) -> Fetched | Failure:
    """A whole download under its temporary name ``tmp``: ``validate`` d, then given its name; or, invalid, moved to
    the quarantine and failed (final: the archive served it whole, asking again would not change it), the reason
    naming where it is kept. Raises :class:`DiskFull` when the file system is full."""
    dest = Path(fits_dir) / relpath
    try:
        try:
            checked = validate(tmp, item)
        except ValueError as exc:
            kept = quarantine_path(fits_dir, relpath)
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, kept)
            reason = str(exc).replace(str(tmp), str(kept)).replace(tmp.name, str(kept))
            return Failure(gaia, relpath, "download", f"invalid file: {reason}", attempts)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_full(fits_dir, exc) from None
    except BaseException:  # the caller has let go of the name: nobody else would remove it
        tmp.unlink(missing_ok=True)
        raise
    return Fetched(dest, downloaded=True, attempts=attempts, checked=checked)


def disk_full(folder: str | os.PathLike, exc: OSError) -> OSError:
    """``exc`` as a :class:`DiskFull` of ``folder`` when it says the disk is full (or a file-size limit), else as is."""
    return DiskFull(folder, exc) if exc.errno in DISK_FULL_ERRNOS and not isinstance(exc, DiskFull) else exc


def retry_delay(attempts: int, base: float = BACKOFF, cap: float = 120.0) -> float:
    """Seconds before asking again after ``attempts`` tries: ``base``, doubled with each try, times a random 0.5-1.5
    (processes refused at once do not all ask again at once), at most ``cap``."""
    return min(cap, base * 2 ** (attempts - 1) * (0.5 + random.random()))


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
