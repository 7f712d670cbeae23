"""Where TGLC files come from, chosen in one place by the archive URL's scheme (see :mod:`.base`)."""

from __future__ import annotations

import importlib
import os
from urllib.parse import urlsplit

from ..errors import UsageError
from .base import DEFAULT_CONNECTIONS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, DiskFull, Fetched, ListingCopy, Source, \
    SourceError, is_present, quarantine_path

DEFAULT_MAST_URL = "https://archive.stsci.edu/hlsps/tglc"
MAST_URL_ENV = "TGLC_MAST_URL"
# URL scheme -> the source that reads it ("module:Class", taking the URL and the network settings of open_source) and
# the extra it needs (extras.py): a new source is one module and one line here.
SOURCES: dict[str, tuple[str, str | None]] = {
    "http": (".http:HttpSource", None), "https": (".http:HttpSource", None), "s3": (".s3:S3Source", "s3"),
    "file": (".local:LocalSource", None), "": (".local:LocalSource", None),
}

__all__ = ["DEFAULT_CONNECTIONS", "DEFAULT_MAST_URL", "DEFAULT_MAX_ATTEMPTS", "DEFAULT_MAX_WAIT", "MAST_URL_ENV",
           "DiskFull", "Fetched", "ListingCopy", "Source", "SourceError", "is_present", "open_source",
           "quarantine_path", "resolve_url", "SOURCES", "source_class"]


def resolve_url(url: str | None) -> str:
    """The archive root: explicit argument, else ``$TGLC_MAST_URL``, else MAST; no trailing slash."""
    url = url or os.environ.get(MAST_URL_ENV) or DEFAULT_MAST_URL
    return url if url == "/" else url.rstrip("/")


def source_class(url: str | None) -> tuple[str, str | None]:
    """The registry's line for ``url`` (resolved): its source ("module:Class") and the extra that source needs."""
    url = resolve_url(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SOURCES:
        raise UsageError(f"archive URL {url!r} has an unknown scheme {scheme!r}; give an http(s):// URL, an "
                         "s3://BUCKET/PREFIX, or a directory holding a MAST tree")
    return SOURCES[scheme]


def open_source(url: str | None, *, connections: int = DEFAULT_CONNECTIONS, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                max_wait: float = DEFAULT_MAX_WAIT) -> Source:
    """The source for ``url``: ``http(s)://`` (an archive), ``s3://BUCKET/PREFIX`` (a bucket, e.g. MAST's cloud
    copy), ``file:///path`` or a plain directory (a mirror read in place). ``connections``: files in flight per
    worker process."""
    url = resolve_url(url)
    where, extra = source_class(url)
    module, _, name = where.partition(":")
    try:
        cls = getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        raise UsageError(f"reading {url} needs the [{extra}] extra ({exc.name} is missing): pip install "
                         f"'tglc-builder[{extra}]'") from None
    return cls(url, connections=connections, max_attempts=max_attempts, max_wait=max_wait)
