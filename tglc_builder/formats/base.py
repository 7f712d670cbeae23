"""What an output format is: a :class:`Writer` that turns a shard's blocks of light curves into one file.

A build reads each FITS file once, assembles :class:`Block` s of consecutive rows of one :class:`Shard`, and hands
every block to each format's sink; a format never reads FITS files itself. A sink writes under a temporary name
and takes the final name in :meth:`ShardSink.commit` only after verifying the closed file, so a file under a final
name is whole. Driver-side methods (:meth:`Writer.prepare`, :meth:`Writer.finish`) run once per build, in the
process that runs it; the rest runs in the workers, so a writer is plain, picklable settings.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import json
import mmap
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..columns import ColumnSet


@dataclass(frozen=True)
class Shard:
    """One output file's rows: a slice of one HEALPix pixel's catalog rows, in catalog order (plain arrays)."""

    pixel: int
    index: int  # 1-based
    count: int  # shards of this pixel
    gaiadr3_id: np.ndarray  # int64
    tic_id: np.ndarray  # int64
    ra: np.ndarray  # float64
    dec: np.ndarray  # float64
    cam: np.ndarray  # int16
    ccd: np.ndarray  # int16
    path: np.ndarray  # bytes (S116), relative to the archive root
    sector: int = 0  # the TESS sector of its rows (a build's plan may hold shards of several sectors)

    @property
    def label(self) -> str:
        return f"{self.index:03d}-of-{self.count:03d}"

    def __len__(self) -> int:
        return len(self.gaiadr3_id)

    def take(self, rows: np.ndarray) -> "Shard":
        """The same shard restricted to ``rows`` (indices or a mask)."""
        return replace(self, **{name: getattr(self, name)[rows] for name in
                                ("gaiadr3_id", "tic_id", "ra", "dec", "cam", "ccd", "path")})


@dataclass
class Block:
    """Consecutive light curves of one shard, read once and handed to every format.

    ``series[name]`` is ``(k, width)`` with ``width = n_cadences.max()``, padded beyond each row's length with the
    column's pad value (NaN / 0); ``scalars[name]`` is ``(k,)``; both hold native-endian values equal bit for bit to
    the FITS values. ``scalars`` holds TIC_ID, gaiadr3_id, RA, DEC and the header scalars of the column set.
    """

    rows: np.ndarray  # int64 indices into the shard, increasing
    n_cadences: np.ndarray  # int32
    series: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.rows)


VERSIONS_KEY = "tglc_versions"  # HDF5 attribute / Parquet footer key: JSON of the versions met in the file


def note_versions(seen: dict[str, set], shard: Shard, block: Block) -> None:
    """Add a block's TGLC versions to ``seen``: the file versions (the ``v<k>`` of the FITS names, always) and, when
    the column set has them, the distinct ``TGLCVER`` and ``PROCVER`` values (empty ones left out)."""
    from ..layout import file_version

    seen.setdefault("file_version", set()).update(file_version(p) for p in shard.path[block.rows])
    for name in ("tglcver", "procver"):
        if name in block.scalars:
            seen.setdefault(name, set()).update(str(v) for v in block.scalars[name] if v)


def versions_text(seen: dict[str, set]) -> str:
    return json.dumps({name: sorted(values) for name, values in seen.items()}, sort_keys=True)


class WriteError(Exception):
    """An output file could not be written or did not verify; the message names the file and says why in plain
    words (e.g. "no space left on device"). The shard's rows become failures; nothing takes the final name.
    ``disk_full``: the disk (or a file-size limit) is full, so the whole build should stop."""

    def __init__(self, message: str, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def write_error(file: Path, exc: BaseException) -> WriteError:
    """What went wrong writing ``file``, in plain words: h5py and pyarrow bury the errno in a paragraph ("file write
    failed ... errno = 28", "IOError: ... [errno 28]")."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    low = text.lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or any(word in low for word in ("errno 28", "errno = 28", "no space left",
                                                                            "quota exceeded")):
        return WriteError(f"no space left on {file.parent} writing {file.name}", disk_full=True)
    if code == errno.EFBIG or any(word in low for word in ("errno 27", "errno = 27", "file too large")):
        return WriteError(f"file size limit reached on {file.parent} writing {file.name}", disk_full=True)
    reason = os.strerror(code) if isinstance(code, int) and code else (text.splitlines() or [type(exc).__name__])[0]
    return WriteError(f"cannot write {file}: {reason}")


# ---- the checksum of a whole file, in its completion mark ---------------------------------------------------------
# The formats' own checksums leave bytes unprotected: Parquet's page CRCs cover page data, not page headers nor the
# footer (row-group statistics, offsets, the schema's metadata), and HDF5's Fletcher32 covers chunks, not the
# superblock, object headers, attributes or B-trees. A flipped byte there can pass a full read (a row group's TIC_ID
# statistics changed: a filtered read skips its rows). So every output file carries, in its completion mark, the
# SHA-256 of all its bytes, computed with the digest's own 64 characters as zeros (the mark lives inside the file:
# its footer, an attribute), written into the mark in place once the file is closed (the same length, so nothing
# moves), and checked by --verify before any library reads the file. The whole file rather than only what the
# formats leave unprotected: any change counts (padding and unused bytes too), it needs no knowledge of either
# layout, and it is cheap: SHA-256 runs at ~1.7 GB/s here, ~2% of the conversion (~43 MB/s of output per core).
DIGEST_KEY = "sha256"  # key of the mark (JSON) that holds the file's SHA-256
_UNSEALED = "0" * 64
_DIGEST_AT = f'"{DIGEST_KEY}": "'.encode()  # json.dumps' separators: the digest follows this in the mark's text


def _sha256(data: mmap.mmap, at: int) -> str:
    """SHA-256 of ``data`` with the 64 bytes at ``at`` taken as zeros."""
    digest = hashlib.sha256()
    with memoryview(data) as view:
        digest.update(view[:at])
        digest.update(_UNSEALED.encode())
        digest.update(view[at + 64:])
    return digest.hexdigest()


def _digest_offset(data: mmap.mmap | bytes, file: Path) -> int:
    """Where the mark's digest starts: after the only occurrence of ``"sha256": "``."""
    at = data.find(_DIGEST_AT)
    if at < 0:
        raise WriteError(f"{file}: no {DIGEST_KEY} in its completion mark (written before checksums, or damaged)")
    if data.find(_DIGEST_AT, at + 1) >= 0:
        raise WriteError(f"{file}: {DIGEST_KEY} appears twice in it")
    return at + len(_DIGEST_AT)


def seal(file: Path, mark: str | None = None) -> str:
    """Write the file's SHA-256 into the placeholder of its mark (64 zeros after the only ``"sha256": "`` of its raw
    bytes, checked to lie inside ``mark``'s own text when given, so no library reopens the file to find it), sync the
    file to disk, and return the digest. One pass over the file, a block at a time: memory stays a block's."""
    digest, hits, tail, pos = hashlib.sha256(), set(), b"", 0
    with open(file, "r+b") as f:
        while block := f.read(1 << 20):
            digest.update(block)  # the placeholder's zeros are in the file: what --verify recomputes
            for start, data in ((pos - len(tail), tail + block[:len(_DIGEST_AT)]), (pos, block)):  # seam, block
                at = data.find(_DIGEST_AT)
                while at >= 0:
                    hits.add(start + at + len(_DIGEST_AT))
                    at = data.find(_DIGEST_AT, at + 1)
            tail, pos = block[1 - len(_DIGEST_AT):], pos + len(block)
        if len(hits) != 1:
            raise WriteError(f"{file}: {DIGEST_KEY} appears twice in it" if hits else
                             f"{file}: no {DIGEST_KEY} in its completion mark (written before checksums, or damaged)")
        (at,) = hits
        if os.pread(f.fileno(), 64, at) != _UNSEALED.encode():
            raise WriteError(f"{file}: its mark holds no placeholder for its checksum")
        start = at - mark.index(_UNSEALED) if mark else 0
        if mark and (start < 0 or os.pread(f.fileno(), len(mark), start) != mark.encode()):
            raise WriteError(f"{file}: its checksum's place is not inside its completion mark")
        digest = digest.hexdigest()
        # the digest by pwrite: one fsync then writes the file's pages and metadata at once
        os.pwrite(f.fileno(), digest.encode(), at)
        os.fsync(f.fileno())
    return digest


def check_digest(file: Path) -> str:
    """The SHA-256 recorded in ``file``'s mark, once checked against the file's bytes; raises WriteError (naming
    the file) when the file changed since it was sealed. Reads the file raw, so a damaged file never reaches
    h5py or pyarrow here."""
    try:
        with open(file, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise WriteError(f"{file}: empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                at = _digest_offset(data, file)
                recorded = bytes(data[at:at + 64]).decode("ascii", "replace")
                actual = _sha256(data, at)
    except OSError as exc:
        raise WriteError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    if actual != recorded:
        raise WriteError(f"{file}: its bytes do not match the SHA-256 in its completion mark (changed after it "
                         "was written)")
    return recorded


class ShardSink(abc.ABC):
    """One shard file being written (under a temporary name)."""

    @abc.abstractmethod
    def append(self, block: Block) -> None:
        """Write the block's rows after the rows already written. Raises WriteError."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Verify the file, mark it whole, and give it its final name. Raises WriteError (the
        temporary file is then removed). A sink that received no row removes any file of the shard instead."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove the temporary file (idempotent; safe after a failed commit)."""


class RowSource(abc.ABC):
    """The rows of an earlier whole file of a shard, read back to carry them into the shard's new file (so rows
    already written never need their FITS files again)."""

    ids: np.ndarray  # the Gaia ids in the file, in file order

    @abc.abstractmethod
    def read(self, file_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``file_rows`` (increasing) of the file: ``n_cadences``, TIC_ID, gaiadr3_id, RA, DEC, the column
        set's scalars, and its series padded to the longest of these rows. Raises OSError/ValueError when the file
        does not read back."""


class Writer(abc.ABC):
    """An output format: plain settings (picklable, sent to workers) and the methods that write it."""

    name: str  # "hdf5", "hats"
    output_dir: Path

    def __init__(self, output_dir: str | os.PathLike, sector: int, columns: ColumnSet, note: str = ""):
        """``note``: a paragraph for the dataset card (e.g. that the light curves are the demo's synthetic ones)."""
        self.output_dir, self.sector, self.columns, self.note = Path(output_dir), int(sector), columns, note

    # -- worker side ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def file(self, shard: Shard) -> Path:
        """The shard's final file."""

    @abc.abstractmethod
    def complete_ids(self, shard: Shard, verify: bool = False) -> np.ndarray | None:
        """The Gaia ids (in file order) of the shard's existing file when it is proven whole (written by a commit of
        this sector and columns), else None. With ``verify``, its SHA-256 and every checksum in it are checked first."""

    @abc.abstractmethod
    def open(self, shard: Shard) -> ShardSink:
        """Start writing the shard's file."""

    def rows_of(self, shard: Shard, verify: bool = False) -> RowSource | None:
        """The rows of the shard's existing whole file, if this format can read them back (default: it cannot)."""
        return None

    # -- driver side ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, shards: list[Shard], overwrite: bool) -> None:
        """Before anything is fetched: remove debris and superseded files of this build's pixels, and refuse (raise
        UsageError) or, with ``overwrite``, remove files of another build (sector, size, columns)."""

    @abc.abstractmethod
    def finish(self, shards: list[Shard]) -> None:
        """After every shard: the folder-level files (loading script, dataset card, catalog metadata)."""
