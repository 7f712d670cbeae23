"""The optional extras of ``pyproject.toml`` and the modules each brings, checked when the arguments are: a build
that needs a missing extra stops before anything is fetched, with the one ``pip install`` line that fixes it."""

from __future__ import annotations

import importlib.util

from .errors import UsageError

# extra -> the top-level modules of it that the builder imports (lazily, inside functions). Keep in step with
# [project.optional-dependencies] in pyproject.toml.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hats": ("hats", "lsdb"),  # --format hats/both, the stars catalog
    "s3": ("s3fs", "botocore"),  # an s3:// archive
    "dask": ("distributed",),  # --scheduler
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here. ``find_spec`` only looks for them (no import, ~0.1 ms
    each); a finder that refuses a name (ImportError) counts as missing too."""
    absent = []
    for name in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


def require(extra: str, needed_by: str) -> None:
    """Raise :class:`UsageError` (one line, with the ``pip install`` command) when ``extra`` is not installed."""
    absent = missing(extra)
    if absent:
        raise UsageError(f"{needed_by} needs the [{extra}] extra (no module named {', '.join(map(repr, absent))}): "
                         f"pip install \"tglc-builder[{extra}]\" (or pip install -e \".[{extra}]\" in a clone)")
