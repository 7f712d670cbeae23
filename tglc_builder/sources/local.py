"""A mirror of MAST's TGLC tree on a file system (e.g. an HPC centre's copy), read in place: nothing is copied."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import layout
from ..context import TaskContext
from ..errors import UsageError
from ..report import Failure
from .base import DISK_FULL_ERRNOS, MAX_LISTING_BYTES, DiskFull, Fetched, ListingCopy, Source, SourceError, Validator, \
    temporary_name, too_big

LISTING_DIRS = ("download_scripts", "target_lists")


def is_contained(relpath: str) -> bool:
    """Whether ``relpath`` names something below a root: relative, with no empty, ``.`` or ``..`` component."""
    return bool(relpath) and not relpath.startswith("/") and all(
        part not in ("", ".", "..") for part in relpath.split("/"))


class LocalSource(Source):
    """``file:///path`` or a plain directory holding MAST's layout. Files are read where they are (symbolic links
    inside the tree are followed); the mirror is never written to."""

    def __init__(self, url: str, owns_files: bool = False, **network: object):
        """``owns_files``: the tree is the build's own ``fits_output_path`` (the seed's step-by-step convert), whose
        invalid files are quarantined and whose converted files ``--clean-fits`` deletes. ``network``: the settings
        ``open_source`` gives every source (connections...), of no use to a directory read in place."""
        self.url, self.owns_files = url, owns_files
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise UsageError(f"{url}: a file:// URL must name a local directory (file:///path)")
            path = unquote(parts.path) or "/"
        else:
            path = url
        self.root = Path(os.path.abspath(os.path.expanduser(path)))

    def describe(self) -> str:
        return str(self.root)

    def _path(self, relpath: str) -> Path:
        if not is_contained(relpath):
            raise SourceError(relpath, f"not a relative path inside the mirror {self.root}", 0, permanent=True)
        return self.root / relpath

    def local_path(self, relpath: str) -> Path:
        return self._path(relpath)

    def check(self, listings: bool = True) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise UsageError(f"mirror {self.root} {what}: give a directory holding a MAST tree "
                             "(download_scripts/, target_lists/, sSSSS/...)")
        missing = [name + "/" for name in LISTING_DIRS if listings and not (self.root / name).is_dir()]
        if missing:
            raise UsageError(f"mirror {self.root} is not a MAST tree (no {' or '.join(missing)} in it): give the "
                             "directory that holds download_scripts/, target_lists/ and sSSSS/")

    def list_sectors(self) -> list[int]:
        try:
            return layout.sectors_of_names(os.listdir(self.root / layout.DOWNLOAD_SCRIPTS))
        except OSError:
            return []

    def fetch_listing(self, relpath: str, dest: Path) -> ListingCopy:
        source = self._path(relpath)
        tmp = temporary_name(dest)
        try:
            stat = source.stat()
            if stat.st_size > MAX_LISTING_BYTES:
                raise too_big(str(source), MAX_LISTING_BYTES, stat.st_size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp)
            if tmp.stat().st_size != stat.st_size:
                raise SourceError(str(source), "changed while it was copied")
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise SourceError(str(source), "not in the mirror", permanent=True) from None
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(dest.parent, exc) from None
            raise SourceError(str(source), f"{type(exc).__name__}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return ListingCopy(stat.st_size, {"Content-Length": str(stat.st_size),
                                          "Last-Modified": formatdate(stat.st_mtime, usegmt=True)})

    def fetch_many(self, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                   context: TaskContext) -> Iterator[tuple[int, Fetched | Failure]]:
        """Each item's file where it is in the mirror. Files are not validated here: the caller reads them, and
        reports (never moves) those that are not TGLC light curves. Nothing is in flight: it never hands over."""
        for i, (gaia, relpath) in enumerate(items):
            if context.stopping():
                return
            try:
                path = self._path(relpath)
            except SourceError as exc:
                yield i, Failure(gaia, relpath, "download", exc.reason, 0)
                continue
            if path.is_file():
                yield i, Fetched(path, downloaded=False)
            else:
                yield i, Failure(gaia, relpath, "download", f"not in the mirror {self.root}", 0)
