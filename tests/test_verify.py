"""Output integrity beyond the formats' own checksums: every output file carries a SHA-256 of its bytes in its
completion mark, so ``--verify`` catches any flipped byte (footers, object headers, padding included); and the
HDF5 output is deterministic (the same rows give the same bytes, whatever was written before in the process).
Real files, real flips; nothing of the builder is mocked."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import h5py
import healpy
import numpy as np
import pytest

from _blocks import Sector, blocks, plan_shards, synthetic_sector, write_shard
from tglc_builder.columns import column_set
from tglc_builder.formats.hdf5 import HDF5Writer

SEED = column_set("seed")
FLIPS = 2000  # per format, anywhere; and as many again in the bytes the format leaves unprotected


@pytest.fixture(scope="module")
def sector(tmp_path_factory) -> Sector:
    """300 synthetic sector-23 light curves (1,252-1,282 cadences), all placed within one pixel (catalog positions
    come from the target list, not the FITS files, so the files stay as served)."""
    served = synthetic_sector(tmp_path_factory.mktemp("fits"), sector=23, n=300, seed=7)
    ra0, dec0 = healpy.pix2ang(16, int(served.healpix[0]), nest=True, lonlat=True)
    rng = np.random.default_rng(5)
    dec = dec0 + rng.uniform(-0.4, 0.4, len(served.ra))
    ra = ra0 + rng.uniform(-0.4, 0.4, len(dec)) / np.cos(np.radians(dec))
    clustered = replace(served, ra=ra, dec=dec)
    assert len(set(clustered.healpix.tolist())) == 1
    return clustered


# ---- point 7: deterministic HDF5 --------------------------------------------------------------------------------
def _write(out: Path, shards, sector: Sector, block_rows: int) -> None:
    writer = HDF5Writer(out, 23, SEED)
    writer.prepare(shards, False)
    for shard in shards:
        write_shard(writer, shard, sector.fits_dir, block_rows=block_rows)


@pytest.mark.parametrize("rows, chunk_rows", [(100, 32), (25, 25)])
def test_hdf5_shard_bytes_do_not_depend_on_what_was_written_before(sector, tmp_path, rows, chunk_rows):
    """The same shard, written in one process after different other shards (so that any state a compressor kept
    from earlier chunks would show, as h5py's LZF did), and in blocks of different sizes, is the same file byte for
    byte; its values are those of the FITS files. Chunks of 32 rows (1,282 cadences), or a smaller shard's rows."""
    shards = plan_shards(sector, rows_per_shard=rows)
    assert {len(s) for s in shards} == {rows} and len(shards) == 300 // rows
    big, others = shards[1], [shards[0], shards[2]]
    _write(tmp_path / "a", [big], sector, block_rows=256)
    _write(tmp_path / "b", [*others, big], sector, block_rows=256)
    _write(tmp_path / "c", [*others[::-1], big], sector, block_rows=256)
    _write(tmp_path / "d", [big], sector, block_rows=7)  # whole chunks and parts of chunks
    name = HDF5Writer(tmp_path / "a", 23, SEED).file(big).relative_to(tmp_path / "a")
    first = (tmp_path / "a" / name).read_bytes()
    assert (tmp_path / "b" / name).read_bytes() == first
    assert (tmp_path / "c" / name).read_bytes() == first
    (whole,) = blocks(big, sector.fits_dir, SEED, block_rows=len(big))
    for folder in ("a", "d"):
        with h5py.File(tmp_path / folder / name, "r") as h5:
            assert h5["psf_flux"].compression == "gzip" and h5["psf_flux"].shuffle and h5["psf_flux"].fletcher32
            for s in SEED.series:
                width = whole.series[s.name].shape[1]
                assert h5[s.name].shape == (rows, width) and h5[s.name].chunks == (chunk_rows, width)
                assert h5[s.name][()].tobytes() == whole.series[s.name].tobytes(), (folder, s.name)
            for s in SEED.scalars:
                assert h5[s.name].chunks == (rows,)


# ---- point 3: a checksum of every byte ----------------------------------------------------------------------------
def _small_shard(sector: Sector, rows: int = 6):
    return plan_shards(replace(sector, **{k: getattr(sector, k)[:rows] for k in
                                          ("gaiadr3_id", "tic_id", "ra", "dec", "cam", "ccd", "path")}))[0]


def _writer(fmt: str, out: Path):
    if fmt == "hdf5":
        return HDF5Writer(out, 23, SEED)
    pytest.importorskip("hats")
    from tglc_builder.formats.hats import HatsWriter

    return HatsWriter(out, 23, SEED)


def _unprotected(fmt: str, file: Path) -> list[int]:
    """The bytes the format's own checksums do not cover: HDF5, every byte outside the Fletcher32-checked chunks
    (superblock, object headers, attributes, B-trees, heaps); Parquet, the footer (statistics, offsets, schema)."""
    size = file.stat().st_size
    if fmt == "hats":
        footer = int.from_bytes(file.read_bytes()[-8:-4], "little")
        return list(range(size - 8 - footer, size))
    covered = np.zeros(size, bool)
    with h5py.File(file, "r") as h5:
        for name in h5:
            h5[name].id.chunk_iter(lambda c: covered.__setitem__(slice(c.byte_offset, c.byte_offset + c.size), True))
    return np.flatnonzero(~covered).tolist()


def _passes_the_formats_own_checks(fmt: str, file: Path, writer, shard) -> bool:
    """Whether the checks of before (every value read, every checksum, the structure) accept the file."""
    from tglc_builder.formats.base import WriteError

    try:
        if fmt == "hats":
            from tglc_builder.formats.hats import read_mark, verify_file

            ids, _ = verify_file(file, writer.schema, read_mark(file), full=True)
            return len(ids) == len(shard)
        from tglc_builder.formats.hdf5 import _verify

        with h5py.File(file, "r") as h5:
            _verify(h5, len(shard), SEED)
            for name in h5:
                h5[name][()]
        return True
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, WriteError):
        return False
    except Exception:  # noqa: BLE001 - pyarrow's errors
        return False


@pytest.mark.parametrize("fmt", ["hdf5", "hats"])
def test_every_flipped_byte_is_caught_by_verify(fmt, sector, tmp_path, caplog):
    """FLIPS random single-byte changes anywhere in a finished file, and as many again in the bytes the format's own
    checksums leave unprotected, one at a time (the file restored between trials): the file never counts as whole
    under --verify, though many of the flips in the unprotected bytes pass every check of before."""
    shard = _small_shard(sector)
    writer = _writer(fmt, tmp_path / "out")
    writer.prepare([shard], False)
    write_shard(writer, shard, sector.fits_dir)
    file = writer.file(shard)
    good = file.read_bytes()
    assert np.array_equal(writer.complete_ids(shard, verify=True), shard.gaiadr3_id)
    rng = random.Random(f"{fmt}-flips")
    unprotected = _unprotected(fmt, file)
    assert 0 < len(unprotected) < len(good)
    positions = [rng.randrange(len(good)) for _ in range(FLIPS)] + [rng.choice(unprotected) for _ in range(FLIPS)]
    missed, passed_before = [], 0
    with open(file, "r+b") as f:
        for trial, at in enumerate(positions):
            f.seek(at)
            f.write(bytes([good[at] ^ rng.randrange(1, 256)]))
            f.flush()
            caplog.clear()
            if writer.complete_ids(shard, verify=True) is not None:
                missed.append(at)
            if trial >= FLIPS and trial % 8 == 0 and _passes_the_formats_own_checks(fmt, file, writer, shard):
                passed_before += 1
            f.seek(at)
            f.write(good[at:at + 1])
            f.flush()
    assert missed == []
    print(f"{fmt}: {passed_before} of {FLIPS // 8} flips in unprotected bytes passed the checks of before")
    assert passed_before > 0  # the checksum is what catches them
    assert file.read_bytes() == good
    assert np.array_equal(writer.complete_ids(shard, verify=True), shard.gaiadr3_id)

    # as a build plans it: a plain rerun trusts the mark, --verify plans the shard again, and the file written
    # again is the file of before, byte for byte
    from tglc_builder.plan import make_plan

    with open(file, "r+b") as f:  # a flip the format's own reading does not notice (its mark still reads whole)
        for at in unprotected[len(unprotected) // 2:] + unprotected[:len(unprotected) // 2]:
            f.seek(at)
            f.write(bytes([good[at] ^ 0x01]))
            f.flush()
            if writer.complete_ids(shard) is not None:
                break
            f.seek(at)
            f.write(good[at:at + 1])
    assert make_plan([shard], [writer]).pending == []
    (task,) = make_plan([shard], [writer], verify=True).pending
    assert task.formats == (writer.name,) and task.carry is None
    write_shard(writer, shard, sector.fits_dir)
    assert file.read_bytes() == good


@pytest.mark.parametrize("before", [4, (1 << 20) - 20, (1 << 20) - 4, 1 << 20, (3 << 20) - 11])
def test_seal_writes_the_digest_only_inside_the_mark_it_is_given(before, tmp_path):
    """``seal`` writes a file's SHA-256 over its mark's placeholder, found in its raw bytes read a block (1 MiB) at
    a time, wherever the mark lies (across two blocks too), and only when it lies inside the mark's own text (no
    reopening through h5py to read the mark back); the digest is of the file with the placeholder, as --verify
    recomputes it. Twice in a file, it is refused."""
    import hashlib
    import json

    from tglc_builder.formats.base import _UNSEALED, WriteError, check_digest, seal

    mark = json.dumps({"rows": 3, "sha256": _UNSEALED}, sort_keys=True)
    head = bytes(range(256)) * (before // 256) + b"h" * (before % 256)
    file = tmp_path / "f"
    file.write_bytes(head + mark.encode() + b"tail")
    digest = seal(file, mark)
    assert digest == hashlib.sha256(head + mark.encode() + b"tail").hexdigest()
    assert file.read_bytes() == head + mark.replace(_UNSEALED, digest).encode() + b"tail"
    assert check_digest(file) == digest
    other = tmp_path / "g"  # a placeholder, but in another text than the mark's
    other.write_bytes(head + json.dumps({"rows": 4, "sha256": _UNSEALED}, sort_keys=True).encode())
    with pytest.raises(WriteError, match="not inside its completion mark"):
        seal(other, mark)
    other.write_bytes(head + mark.encode() + head + mark.encode())
    with pytest.raises(WriteError, match="appears twice"):
        seal(other, mark)
    other.write_bytes(head + b"tail")
    with pytest.raises(WriteError, match="no sha256"):
        seal(other, mark)
