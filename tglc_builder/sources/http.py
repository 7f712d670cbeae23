"""An archive reached over HTTP(S), such as MAST, on libcurl (:mod:`.curl`): ``connections`` transfers in flight
per process in one thread; the processes only spread the CPU cost of HTTP and validation. Settings only: it pickles.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import layout
from ..context import TaskContext
from ..errors import UsageError
from ..report import Failure
from . import base, net
from .base import Fetched, ListingCopy, Refused, Source, SourceError, Validator

MAX_INDEX_BYTES = 8 << 20  # of download_scripts/'s index page: MAST's is a few kB; a bigger one is refused
_HREF = re.compile(rb"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)


def linked_names(page: bytes) -> list[str]:
    """The file names an HTML index page links to (the last path component of each ``href``), as untrusted text."""
    names = []
    for match in _HREF.finditer(page):
        href = next(group for group in match.groups() if group is not None).decode("ascii", "replace")
        names.append(unquote(urlsplit(href).path).rsplit("/", 1)[-1])
    return names


class HttpSource(Source):
    """``http(s)://`` root of a tree in MAST's layout. ``connections``: downloads in flight per process;
    ``max_attempts``: requests per file before it is reported failed; ``max_wait``: the longest pause (seconds) a
    ``Retry-After`` imposes on the whole build; ``deadline`` and ``listing_deadline``: how slow a light curve's and a
    listing's body may be (:class:`net.Deadline`)."""

    def __init__(self, url: str, connections: int = base.DEFAULT_CONNECTIONS,
                 max_attempts: int = base.DEFAULT_MAX_ATTEMPTS, max_wait: float = base.DEFAULT_MAX_WAIT,
                 deadline: net.Deadline = net.DEADLINE, listing_deadline: net.Deadline = net.LISTING_DEADLINE):
        self.url = url.rstrip("/")
        self.deadline, self.listing_deadline = deadline, listing_deadline
        self.connections, self.max_attempts, self.max_wait = connections, max_attempts, max_wait

    def describe(self) -> str:
        return self.url

    def _fetch(self, url: str, dest: Path, max_size: int, deadline: net.Deadline, progress: bool = False
               ) -> ListingCopy:
        from .curl import fetch_file

        return fetch_file(url, dest, max_attempts=self.max_attempts, max_wait=self.max_wait, deadline=deadline,
                          max_size=max_size, progress=progress)

    def list_sectors(self) -> list[int]:
        """From the HTML index page of ``download_scripts/`` (as MAST's web server writes it); [] when there is none
        (404)."""
        url = f"{self.url}/{layout.DOWNLOAD_SCRIPTS}/"
        with tempfile.TemporaryDirectory(prefix="tglc-index-") as folder:
            page = Path(folder) / "index.html"
            try:
                self._fetch(url, page, MAX_INDEX_BYTES, self.deadline)
            except SourceError as exc:
                if exc.permanent and not isinstance(exc, Refused):
                    return []
                raise UsageError(f"cannot read the index of {url} ({exc.reason}); check the network, or give the "
                                 "sectors explicitly, e.g. -s 1-13") from None
            return layout.sectors_of_names(linked_names(page.read_bytes()))

    def fetch_listing(self, relpath: str, dest: Path) -> ListingCopy:
        return self._fetch(f"{self.url}/{relpath}", dest, base.MAX_LISTING_BYTES, self.listing_deadline, True)

    def fetch_many(self, items: Sequence[tuple[int, str]], fits_dir: Path, validate: Validator,
                   context: TaskContext) -> Iterator[tuple[int, Fetched | Failure]]:
        """Downloads run ``connections`` at a time in this process (whatever the calls running at once), at most
        ``WINDOW`` x ``connections`` items ahead of the item being yielded: so the files on disk are those near the
        conversion, whatever the unit's size."""
        from .curl import fetch_many

        yield from fetch_many(self.url, items, Path(fits_dir), validate, context, connections=self.connections,
                              max_attempts=self.max_attempts, max_wait=self.max_wait, deadline=self.deadline)
