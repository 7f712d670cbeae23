"""Errors the user can act on."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or an unusable environment (a path, a sector, a listing, a busy output folder): reported as one
    line naming the input, with exit code 2, never a traceback."""
