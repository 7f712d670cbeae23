"""FITS header cards in fixed format: byte for byte what astropy writes for the values of a TGLC file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..reader import BLOCK, CARD

_END = "END".ljust(CARD)


def card(key: str, value: object = None, comment: str = "") -> str:
    """One 80-character header card (``COMMENT`` cards take their text as ``value``)."""
    if key == "COMMENT":
        return f"COMMENT {value}".ljust(CARD)[:CARD]
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        text = f"{int(value):>20}"
    elif isinstance(value, (float, np.floating)):
        text = f"{_format_float(value):>20}"
    else:
        text = f"{_quote(str(value)):<20}"
    line = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return line.ljust(CARD)[:CARD]


def header_bytes(cards: Sequence[str]) -> bytes:
    """A whole header: the cards, ``END``, padded with blanks to whole FITS blocks."""
    text = "".join(cards) + _END
    return text.encode("ascii").ljust(_padded(len(text)), b" ")


def header_rows(cards: Sequence[str | Sequence[str]], rows: int) -> np.ndarray:
    """:func:`header_bytes` of ``rows`` headers at once, as a ``(rows, size)`` uint8 array. Each item of ``cards``
    is one card shared by every header or a sequence of one card per header."""
    out = np.full((rows, _padded((len(cards) + 1) * CARD)), ord(" "), np.uint8)
    for k, item in enumerate([*cards, _END]):
        text = item if isinstance(item, str) else "".join(item)
        out[:, k * CARD:(k + 1) * CARD] = np.frombuffer(text.encode("ascii"), np.uint8).reshape(-1, CARD)
    return out


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _format_float(value: float) -> str:
    text = repr(float(value)).upper()
    if "E" in text and "." not in text.split("E")[0]:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}.0E{exponent}"
    return text if len(text) <= 20 else f"{value:.14E}"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''").ljust(8) + "'"
