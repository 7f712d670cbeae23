"""The one place that knows a TGLC light-curve FITS file: a fast reader that is also the validator.

astropy's ``fits.open`` costs about a millisecond per file, which is an hour of CPU for a sector of two million
files, so this reads the fixed layout directly: the header cards up to ``END``, then HDU 1's binary table as one
``np.frombuffer`` view. Only what a TGLC file uses is supported (fixed-width columns, no scaling); anything else is
reported as an :class:`InvalidTGLCFile`, never guessed at. Tests hold the values against astropy's, bit for bit.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK = 2880
CARD = 80
_END_CARD = b"END" + b" " * 77

# The columns the dataset needs, with the FITS formats each may have: the flags are 16-bit (``I``) up to tglc 0.7 and
# 32-bit (``J``) from tglc 0.8 on; both are read exactly, in their own width.
REQUIRED_COLUMNS = {"time": "D", "psf_flux": "E", "aperture_flux": "E", "TESS_flags": "IJ", "TGLC_flags": "IJ"}
# Columns only some versions carry (``--columns all``): when present, they must have these formats.
OPTIONAL_COLUMNS = {"cal_psf_flux": "E", "cal_aper_flux": "E", "background": "E", "cadence_num": "J",
                    "aperture_flux_raw": "E", "psf_flux_raw": "E"}
_TYPED = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
# Limits checked before anything is allocated from what a file says (issue: a 54 KB file claiming 1e8 fields, a
# sparse multi-GB file). The largest TGLC file expected is a v2 file of a 200-s sector: ~11,000 cadences with its 5x5
# cut-out cube (100 bytes a cadence) and table (40), about 1.6 MB (estimated; the real 10-min v2 file in tests/data,
# 3,489 cadences, is 495 KB); 64 MB leaves room for longer sectors and is still cheap to hold.
MAX_FILE_BYTES = 64 << 20
MAX_FIELDS = 999  # FITS standard: TFIELDS <= 999
MAX_AXES = 999  # FITS standard: NAXIS <= 999
_FORMATS = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "C": ">c8",
            "M": ">c16"}
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCM])")
_STRING = re.compile(r"'((?:[^']|'')*)'")


class InvalidTGLCFile(ValueError):
    """A file that is not a complete TGLC light curve (truncated, not FITS, another product, wrong object)."""


class Header:
    """The cards of one FITS header; values are parsed when asked for (a file has ~100 cards, we use ~20)."""

    def __init__(self, text: str):
        self.text = text
        # keyword (8 characters, blank-padded, as in the card) -> offset of its card: the cheapest index to build
        self._at = {text[i:i + 8]: i for i in range(0, len(text), CARD)}

    def raw(self, key: str) -> str | None:
        """The card's 80 characters, unparsed (None when the header has no such card)."""
        at = self._at.get(f"{key:<8}")
        return None if at is None else self.text[at:at + CARD]

    def __contains__(self, key: str) -> bool:
        return f"{key:<8}" in self._at

    def __getitem__(self, key: str) -> Any:
        card = self.raw(key)
        if card is None:
            raise KeyError(f"no {key} card")
        return parse_value(card)

    def get(self, key: str, default: Any = None) -> Any:
        card = self.raw(key)
        return default if card is None else parse_value(card)

    def keys(self) -> list[str]:
        return [key.rstrip() for key in self._at]


@functools.lru_cache(maxsize=1024)  # most cards (sizes, formats, sector, camera) repeat in every file of a sector
def parse_value(card: str) -> Any:
    """The value of a fixed-format FITS card: str, bool, int (exact, any size) or float."""
    if card[8:10] != "= ":
        raise InvalidTGLCFile(f"card {card[:8].strip()!r} has no value")
    rest = card[10:].lstrip()
    if rest.startswith("'"):
        # A string ends at the first quote that is not doubled; trailing blanks are not significant.
        match = _STRING.match(rest)
        if match is None:
            raise InvalidTGLCFile(f"card {card[:8].strip()!r}: unterminated string")
        return match.group(1).replace("''", "'").rstrip()
    token = rest.split("/", 1)[0].strip()
    if token in ("T", "F"):
        return token == "T"
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token.replace("D", "E"))
    except ValueError:
        raise InvalidTGLCFile(f"card {card[:8].strip()!r}: cannot read value {token!r}") from None


@dataclass
class TGLCLightCurve:
    """One TGLC file: its two headers and HDU 1's table (a big-endian view over the file's bytes)."""

    primary: Header
    header: Header  # the LIGHTCURVE extension's header
    data: np.ndarray  # structured, one field per FITS column, FITS names

    @property
    def n_cadences(self) -> int:
        return len(self.data)


def _read_header(raw: bytes | bytearray, size: int, start: int, path: os.PathLike | str) -> tuple[Header, int]:
    """The header starting at byte ``start`` and the offset of the data that follows it."""
    end = start
    while True:
        end = raw.find(_END_CARD, end, size)
        if end < 0:
            raise InvalidTGLCFile(f"{path}: header at byte {start} has no END card (truncated or not FITS)")
        if (end - start) % CARD == 0:
            break
        end += 1
    try:
        text = raw[start:end].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidTGLCFile(f"{path}: header at byte {start} is not ASCII") from None
    return Header(text), start + -(-(end + CARD - start) // BLOCK) * BLOCK


def _data_size(header: Header) -> int:
    """Bytes of an HDU's data, unpadded (FITS standard 4.4.1)."""
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        return 0
    if not isinstance(naxis, int) or not 0 < naxis <= MAX_AXES:
        raise InvalidTGLCFile(f"NAXIS = {naxis!r} (FITS allows 0 to {MAX_AXES})")
    size = 1
    for i in range(1, naxis + 1):
        length = header[f"NAXIS{i}"]
        if not isinstance(length, int) or length < 0:
            raise InvalidTGLCFile(f"NAXIS{i} = {length!r} is not a length")
        size *= length
    return abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + size)


def _table_dtype(header: Header, path: os.PathLike | str) -> np.dtype:
    # Every file of a sector has the same columns: parse their cards once, then look the dtype up by their text.
    fields = header["TFIELDS"]
    if not isinstance(fields, int) or not 0 < fields <= MAX_FIELDS:  # before building 2 x TFIELDS keys
        raise InvalidTGLCFile(f"{path}: its table header says TFIELDS = {fields!r} (FITS allows 1 to {MAX_FIELDS}); "
                              "not a TGLC light curve")
    text, at = header.text, header._at  # ~30 cards, looked up here rather than by raw(): 65 -> 61 us a file
    columns = tuple(text[i:i + CARD] if (i := at.get(key)) is not None else None for key in _column_keys(fields))
    try:
        if None in columns:
            raise InvalidTGLCFile("the table's TTYPEn/TFORMn cards are incomplete")
        dtype = _dtype_of_columns(columns)
    except InvalidTGLCFile as exc:
        raise InvalidTGLCFile(f"{path}: {exc}") from None
    if "TSCAL" in header.text or "TZERO" in header.text:
        for name in _TYPED:
            if name not in dtype.names:
                continue
            index = dtype.names.index(name) + 1
            if f"TSCAL{index}" in header or f"TZERO{index}" in header:
                raise InvalidTGLCFile(f"{path}: column {name!r} is scaled (TSCAL/TZERO), which TGLC never does")
    return dtype


@functools.lru_cache(maxsize=8)
def _column_keys(n_fields: int) -> tuple[str, ...]:
    """The TTYPEn and TFORMn keywords as the header's index holds them (blank-padded to 8 characters)."""
    return tuple(f"{key}{i:<{8 - len(key)}}" for i in range(1, n_fields + 1) for key in ("TTYPE", "TFORM"))


@functools.lru_cache(maxsize=64)
def _dtype_of_columns(columns: tuple[str, ...]) -> np.dtype:
    """The table's numpy dtype (big-endian, FITS names), checked for the columns the dataset needs."""
    names, formats = [], []
    for i in range(0, len(columns), 2):
        name, tform = parse_value(columns[i]), parse_value(columns[i + 1])
        match = _TFORM.match(tform)
        if match is None:
            raise InvalidTGLCFile(f"column {name!r} has format {tform!r}, which a TGLC file never uses")
        repeat, code = int(match.group(1) or 1), match.group(2)
        if name in _TYPED and (repeat != 1 or code not in _TYPED[name]):
            wanted = " or ".join(map(repr, _TYPED[name]))
            raise InvalidTGLCFile(f"column {name!r} has format {tform!r}, not {wanted}")
        if code == "A":
            fmt = f"S{repeat}"
        elif code == "X":
            fmt = f"({(repeat + 7) // 8},)u1"
        else:
            fmt = _FORMATS[code] if repeat == 1 else f"({repeat},){_FORMATS[code]}"
        names.append(name)
        formats.append(fmt)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise InvalidTGLCFile(f"the LIGHTCURVE table has no {', '.join(map(repr, missing))} column")
    try:
        return np.dtype({"names": names, "formats": formats})
    except ValueError as exc:
        raise InvalidTGLCFile(f"unusable column names ({exc})") from None


class ReadBuffer:
    """Memory reused to read many files one after another: fresh memory for each file would cost as much in page
    faults as the reading itself. A light curve read into it is valid until the next read."""

    def __init__(self, size: int = 1 << 17):
        self._buffer = bytearray(size)

    def read(self, path: str | os.PathLike) -> tuple[bytearray, int]:
        with open(path, "rb", buffering=0) as f:
            size = _checked_size(path, os.fstat(f.fileno()).st_size)
            if size > len(self._buffer):  # a new buffer: arrays may still view the old one
                self._buffer = bytearray(min(2 * size, MAX_FILE_BYTES))
            view = memoryview(self._buffer)
            done = 0
            while done < size:
                got = f.readinto(view[done:size])
                if not got:
                    break
                done += got
            view.release()
        return self._buffer, done


def read_tglc(path: str | os.PathLike, gaiadr3_id: int | None = None, buffer: ReadBuffer | None = None, *,
              sector: int | None = None, camera: int | None = None, ccd: int | None = None) -> TGLCLightCurve:
    """Read and check a TGLC light curve; raise :class:`InvalidTGLCFile` for anything that is not one.

    Checked first, before anything is allocated from what the file says: its size (at most :data:`MAX_FILE_BYTES`),
    ``TFIELDS`` and ``NAXIS`` within the FITS limits. Then: whole FITS blocks, the primary header, HDU 1 a
    ``BINTABLE`` named ``LIGHTCURVE`` holding the columns of :data:`REQUIRED_COLUMNS` (and those of
    :data:`OPTIONAL_COLUMNS` it has) with their formats and no scaling, and the table's bytes all present. Any file
    version is read (v1, v2, tglc 0.8); extra HDUs, cards and columns, in any order, are ignored. Each of
    ``gaiadr3_id``, ``sector``, ``camera`` and ``ccd`` that is given must equal the primary header's ``GAIADR3``,
    ``SECTOR``, ``CAMERA``, ``CCD`` (what the file's path says it is). With ``buffer``, the file is read into it and
    the light curve's data are valid only until the buffer's next read.
    """
    if buffer is None:
        with open(path, "rb") as f:
            _checked_size(path, os.fstat(f.fileno()).st_size)
            raw = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since
        size = _checked_size(path, len(raw))
    else:
        raw, size = buffer.read(path)
    try:
        return _parse(raw, size, path, {"GAIADR3": gaiadr3_id, "SECTOR": sector, "CAMERA": camera, "CCD": ccd})
    except (KeyError, TypeError) as exc:  # a card missing or of the wrong type
        raise InvalidTGLCFile(f"{path}: not a TGLC light curve ({exc})") from None
    except InvalidTGLCFile as exc:
        text = str(exc)
        if text.startswith(os.fspath(path)):
            raise
        raise InvalidTGLCFile(f"{path}: {text}") from None


def _checked_size(path: str | os.PathLike, size: int) -> int:
    if size > MAX_FILE_BYTES:
        raise InvalidTGLCFile(f"{path}: {size:,} bytes, larger than any TGLC light curve (at most "
                              f"{MAX_FILE_BYTES:,} bytes are read); not a TGLC light curve")
    return size


def _parse(raw: bytes | bytearray, size: int, path: str | os.PathLike, expected: dict[str, int | None]
           ) -> TGLCLightCurve:
    """``raw[:size]`` is the file (``raw`` may be a longer, reused buffer)."""
    if size == 0 or size % BLOCK:
        raise InvalidTGLCFile(f"{path}: {size} bytes is not a whole number of FITS blocks (truncated?)")
    if not raw.startswith(b"SIMPLE  =                    T"):
        raise InvalidTGLCFile(f"{path}: not a FITS file")
    primary, offset = _read_header(raw, size, 0, path)
    for key, value in expected.items():
        if value is not None and primary.get(key) != value:
            raise InvalidTGLCFile(f"{path}: its header says {key} = {primary.get(key)!r}, its path {value!r} "
                                  "(a file of another object, sector or CCD)")
    offset += -(-_data_size(primary) // BLOCK) * BLOCK  # v2 files carry a cut-out cube here
    if offset >= size:
        raise InvalidTGLCFile(f"{path}: no extension after the primary HDU (truncated?)")
    header, start = _read_header(raw, size, offset, path)
    if header.get("XTENSION") != "BINTABLE" or header.get("EXTNAME") != "LIGHTCURVE":
        raise InvalidTGLCFile(f"{path}: HDU 1 is not the LIGHTCURVE binary table of a TGLC file")
    dtype = _table_dtype(header, path)
    width, rows = header["NAXIS1"], header["NAXIS2"]
    if not isinstance(rows, int) or width != dtype.itemsize or header.get("PCOUNT", 0) < 0 or rows < 0:
        raise InvalidTGLCFile(f"{path}: the table's row width {width} does not match its columns")
    if start + _data_size(header) > size:
        raise InvalidTGLCFile(f"{path}: the table's data is cut short at {size} bytes (truncated)")
    data = np.frombuffer(raw, dtype=dtype, count=rows, offset=start)
    return TGLCLightCurve(primary=primary, header=header, data=data)
