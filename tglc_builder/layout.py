"""Where MAST keeps TGLC files: the naming scheme shared by every stage.

MAST's layout: ``BASE/sSSSS/cam{C}-ccd{D}/00{z[0:2]}/{z[2:6]}/{z[6:10]}/{z[10:14]}/<file>`` with
``z = str(gaia_id).zfill(19)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import numpy as np


NSIDE = 16
NEST = True

# A light curve's path relative to BASE, for reading single paths (the listing parser checks many at once by
# comparing each with the canonical path of the object it names).
LC_RELPATH_PATTERN = (
    r"^s(?P<sector>\d{4})/cam(?P<cam>[1-4])-ccd(?P<ccd>[1-4])/00\d{2}/\d{4}/\d{4}/\d{4}/"
    r"hlsp_tglc_tess_ffi_gaiaid-(?P<gaia>[1-9]\d{0,18})-s\d{4}-cam[1-4]-ccd[1-4]_tess_v(?P<version>[1-9]\d{0,2})"
    r"_llc\.fits$"
)
# The file version is the ``v<k>`` of ``_tess_v<k>_llc.fits``: 1 on MAST, 2 for files of the tglc package since 0.6.6
# (0.8 included). Any k from 1 to MAX_VERSION names a light curve; the path stays exactly the canonical one of k.
MAX_VERSION = 999


def sector_tag(sector: int) -> str:
    """``23`` -> ``'s0023'``."""
    return f"s{int(sector):04d}"


def bulk_script_relpath(sector: int) -> str:
    return f"download_scripts/hlsp_tglc_tess_ffi_{sector_tag(sector)}_tess_v1_llc.sh"


# A sector's bulk-download script as an archive's ``download_scripts/`` lists it: exactly the name the build then
# fetches (bulk_script_relpath; MAST names it v1 whatever the versions of the light curves it lists).
BULK_SCRIPT_NAME = re.compile(r"hlsp_tglc_tess_ffi_s(\d{4})_tess_v1_llc\.sh")
DOWNLOAD_SCRIPTS = "download_scripts"


def sectors_of_names(names: Iterable[str]) -> list[int]:
    """The sectors whose bulk-download script is among ``names`` (file names, untrusted: only exact matches of
    :data:`BULK_SCRIPT_NAME` count), ascending, each once."""
    found = {int(m.group(1)) for name in names if (m := BULK_SCRIPT_NAME.fullmatch(name)) is not None}
    return sorted(found - {0})


def target_list_relpath(sector: int) -> str:
    return f"target_lists/{sector_tag(sector)}.csv"


def lc_filename(gaia_id: int, sector: int, cam: int, ccd: int, version: int = 1) -> str:
    return (f"hlsp_tglc_tess_ffi_gaiaid-{int(gaia_id)}-{sector_tag(sector)}-cam{cam}-ccd{ccd}"
            f"_tess_v{int(version)}_llc.fits")


def lc_relpath(gaia_id: int, sector: int, cam: int, ccd: int, version: int = 1) -> str:
    """Path of one light curve relative to the archive root."""
    z = str(int(gaia_id)).zfill(19)
    return (
        f"{sector_tag(sector)}/cam{cam}-ccd{ccd}/00{z[0:2]}/{z[2:6]}/{z[6:10]}/{z[10:14]}/"
        + lc_filename(gaia_id, sector, cam, ccd, version)
    )


def file_version(relpath: str | bytes) -> int:
    """The ``k`` of a canonical path's ``_tess_v<k>_llc.fits``."""
    name = relpath.decode() if isinstance(relpath, bytes) else relpath
    return int(name.rsplit("_tess_v", 1)[1].split("_", 1)[0])


RELPATH_WIDTH = 116  # bytes of the longest canonical path (a 19-digit Gaia id, a 3-digit version)
_PREFIX = len("s0000/cam1-ccd1/0000/0000/0000/0000/hlsp_tglc_tess_ffi_gaiaid-")
_SUFFIX = len("-s0000-cam1-ccd1_tess_v1_llc.fits")  # with a 1-digit version
_VERSION_AT = len("-s0000-cam1-ccd1_tess_v")  # after the id
_CAM_AT, _CCD_AT = len("s0000/cam"), len("s0000/cam1-ccd")
_CHUNK = 1 << 14  # rows at once: their (n, 116) bytes stay in the CPU's cache while columns of them are written
# "0000".."9999" as four ASCII bytes each: an id's digits are five look-ups after four divisions (not 19 divisions)
_DIGITS4 = np.ascontiguousarray((np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10 + ord("0"))
                                .astype(np.uint8)).view(np.uint32).ravel()
_Z_AT = (18, 21, 26, 31)  # where z[0:2], z[2:6], z[6:10], z[10:14] go in the folders


def lc_relpaths(gaia_ids: np.ndarray, sector: int, cam: np.ndarray, ccd: np.ndarray,
                version: int | np.ndarray = 1) -> np.ndarray:
    """:func:`lc_relpath` of many objects at once, as a fixed-width bytes array (dtype ``S116``), in numpy.

    Two million paths take about half a second; ``gaia_ids`` must be positive, ``cam``, ``ccd`` in 1..4 and
    ``version`` (one for all, or one per object) in 1..:data:`MAX_VERSION`.
    """
    gaia = np.asarray(gaia_ids, np.int64)
    if np.ndim(version):
        versions = np.asarray(version, np.int64)
        kinds = np.unique(versions)
        if len(kinds) == 1:
            version = int(kinds[0])
        else:  # rare: a listing naming files of several versions
            out = np.empty(len(gaia), f"S{RELPATH_WIDTH}")
            cam, ccd = np.asarray(cam), np.asarray(ccd)
            for v in kinds.tolist():
                rows = versions == v
                out[rows] = lc_relpaths(gaia[rows], sector, cam[rows], ccd[rows], v)
            return out
    version = int(version)
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"file version {version} is outside 1..{MAX_VERSION}")
    if len(gaia) > _CHUNK:  # in slices, so the temporaries stay small (and in the cache)
        out = np.empty(len(gaia), f"S{RELPATH_WIDTH}")
        for i in range(0, len(gaia), _CHUNK):
            out[i:i + _CHUNK] = lc_relpaths(gaia[i:i + _CHUNK], sector, cam[i:i + _CHUNK], ccd[i:i + _CHUNK], version)
        return out
    suffix_len = _SUFFIX + len(str(version)) - 1
    n = len(gaia)
    digits = _zfill19(gaia)
    lengths = np.searchsorted(10 ** np.arange(19, dtype=np.int64), gaia, side="right")  # digits of the id itself
    cam_digit = np.asarray(cam, np.uint8) + ord("0")
    ccd_digit = np.asarray(ccd, np.uint8) + ord("0")
    # Start from the path of a 19-digit id on cam1-ccd1 (bytes repetition: a memcpy), then fill in what varies.
    template = lc_relpath(10**18, sector, 1, 1, version).encode().ljust(RELPATH_WIDTH, b"\0")
    out = np.frombuffer(bytearray(template * n), np.uint8).reshape(n, RELPATH_WIDTH)
    suffix_at = _PREFIX + 19
    for where, value in ((_CAM_AT, cam_digit), (_CCD_AT, ccd_digit), (suffix_at + _CAM_AT + 1, cam_digit),
                         (suffix_at + _CCD_AT + 1, ccd_digit)):
        out[:, where] = value
    for start, (first, last) in zip(_Z_AT, ((0, 2), (2, 6), (6, 10), (10, 14))):
        out[:, start:start + last - first] = digits[:, first:last]
    out[:, _PREFIX:suffix_at] = digits
    # Shorter ids (a few percent): the id and the suffix end earlier, zero bytes fill the rest.
    for k in np.unique(lengths[lengths < 19]):
        rows = np.flatnonzero(lengths == k)
        suffix = out[rows, suffix_at:suffix_at + suffix_len]
        out[rows, _PREFIX:_PREFIX + k] = digits[rows, 19 - k:]
        out[rows, _PREFIX + k:_PREFIX + k + suffix_len] = suffix
        out[rows, _PREFIX + k + suffix_len:] = 0
    return out.view(f"S{RELPATH_WIDTH}").ravel()


def _zfill19(gaia: np.ndarray) -> np.ndarray:
    """``str(id).zfill(19)`` of each (non-negative) id, as ``(n, 19)`` ASCII bytes."""
    groups = np.empty((len(gaia), 5), np.uint32)  # 20 digits, four at a time; the first is always 0
    rest = gaia
    for j in range(4, 0, -1):
        rest, low = np.divmod(rest, 10_000)
        groups[:, j] = _DIGITS4[low]
    groups[:, 0] = _DIGITS4[rest]
    return groups.view(np.uint8)[:, 1:]


def objects_of_relpaths(paths: np.ndarray, lengths: np.ndarray, sector: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of :func:`lc_relpaths`: which candidate paths are canonical light-curve paths of ``sector``.

    ``paths`` is ``(n, RELPATH_WIDTH)`` bytes (``uint8``), row ``i`` meaningful up to ``lengths[i]``. A path is
    accepted only when it is byte for byte the canonical path of the object and file version it names, so absolute
    paths, ``..``, other hosts, other sectors, leading zeros and folders that disagree with the id are all refused.
    Returns ``(accepted, gaia_id, cam, ccd, version)``, the last four for the accepted rows only, in row order.
    """
    lengths = np.asarray(lengths, np.int64)
    accepted = np.zeros(len(paths), bool)
    gaia, version = np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int16)
    # Digits of each path's version, read off the 'v' before "_llc.fits" (0: none), so that every row is parsed once.
    version_digits = np.zeros(len(paths), np.int64)
    for m in range(len(str(MAX_VERSION)), 0, -1):
        at = lengths - len("_llc.fits") - m - 1
        inside = np.flatnonzero((at >= 0) & (at < paths.shape[1]))
        version_digits[inside[paths[inside, at[inside]] == ord("v")]] = m
    for m in range(1, len(str(MAX_VERSION)) + 1):  # 1 for every file seen so far
        digits_count = np.where(version_digits == m, lengths - (_PREFIX + _SUFFIX + m - 1), 0)
        for k in np.unique(digits_count[(digits_count >= 1) & (digits_count <= 19)]):  # almost all are 19 digits
            rows = np.flatnonzero(digits_count == k)
            ok, value, number = _canonical(paths[rows], sector, int(k), m)
            accepted[rows[ok]] = True
            gaia[rows[ok]], version[rows[ok]] = value[ok], number[ok]
    cam, ccd = (paths[accepted, at].astype(np.int16) - ord("0") for at in (_CAM_AT, _CCD_AT))
    return accepted, gaia[accepted], cam, ccd, version[accepted]


def _canonical(part: np.ndarray, sector: int, k: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of the paths ``part`` (of a k-digit id and an m-digit version) are canonical, with their ids and
    versions. Rather than writing each object's canonical path to compare it with, its bytes are checked in place:
    those fixed by the sector and the lengths equal the template's, the folders' digits and the name's camera and
    CCD repeat the id's and the folder's, and the id, version, camera and CCD are well-formed numbers."""
    template = np.frombuffer(lc_relpath(10 ** (k - 1), sector, 1, 1, 10 ** (m - 1)).encode(), np.uint8)
    copies = {_PREFIX + 19 + _CAM_AT + 1: _CAM_AT, _PREFIX + 19 + _CCD_AT + 1: _CCD_AT}  # the name's cam, ccd
    copies = {at - 19 + k: source for at, source in copies.items()}
    for start, first in zip(_Z_AT, (0, 2, 6, 10)):  # each folder digit z[i], i >= 19 - k, is the id's digit
        for j in range(4 if start != _Z_AT[0] else 2):
            if first + j >= 19 - k:
                copies[start + j] = _PREFIX + first + j - (19 - k)
    id_at, version_at = _PREFIX, _PREFIX + k + _VERSION_AT
    varying = {*copies, *copies.values(), *range(id_at, id_at + k), *range(version_at, version_at + m)}
    fixed = np.array([at for at in range(len(template)) if at not in varying])
    ok = (np.take(part, fixed, axis=1) == template[fixed]).all(axis=1)  # np.take: ~6x part[:, fixed]'s speed
    targets, sources = np.array(list(copies)), np.array(list(copies.values()))
    ok &= (np.take(part, targets, axis=1) == np.take(part, sources, axis=1)).all(axis=1)
    ok &= ((np.take(part, [_CAM_AT, _CCD_AT], axis=1) - np.uint8(ord("1"))) <= 3).all(axis=1)
    digits = part[:, id_at:id_at + k] - np.uint8(ord("0"))  # non-digits wrap around to > 9
    vdigits = part[:, version_at:version_at + m] - np.uint8(ord("0"))
    ok &= (digits <= 9).all(axis=1) & (digits[:, 0] > 0) & (vdigits <= 9).all(axis=1) & (vdigits[:, 0] > 0)
    value = np.zeros(len(part), np.uint64)  # 19 digits may overflow int64, never uint64
    for j in range(k):
        value = value * np.uint64(10) + digits[:, j]
    ok &= value <= np.uint64(np.iinfo(np.int64).max)
    number = np.zeros(len(part), np.int16)
    for j in range(m):
        number = number * 10 + vdigits[:, j]
    return ok, value.astype(np.int64), number


def cadence_seconds(sector: int) -> int:
    """FFI cadence of a sector: 1800 s in sectors 1-26, 600 s in 27-55, 200 s later."""
    return 1800 if sector <= 26 else 600 if sector <= 55 else 200


def sector_dir(tglc_data_path: str | os.PathLike, sector: int) -> str:
    """``<tglc_data_path>/sSSSS``: where the listings, the catalog and the failure report of a sector live."""
    return os.path.join(os.fspath(tglc_data_path), sector_tag(sector))
