"""Errors the user can act on: reported as one line naming the input, with exit code 2, never a traceback."""


class UsageError(Exception):
    """Bad input or an unusable environment (a path, a sector, a listing, a busy output folder)."""
