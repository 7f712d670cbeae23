"""A whole output format in one module, for the registry's test: each shard's rows in a NumPy ``.npz`` file (ids,
lengths and the padded series), its card and its loader. Registered by one line (``FORMAT``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tglc_builder.formats import Format
from tglc_builder.formats.base import Block, Shard, ShardSink, WriteError, Writer

FORMAT = Format("npz", "NPZ", "helpers.npz_format:NpzWriter", None, "npz_output_path", "npz",
                "helpers.npz_format:card", "helpers.npz_format:load", "an NPZ folder (with npz/)")


class NpzWriter(Writer):
    name = "npz"

    def file(self, shard: Shard) -> Path:
        return self.output_dir / "npz" / f"healpix={shard.pixel}-{shard.label}.npz"

    def complete_ids(self, shard: Shard, verify: bool = False) -> np.ndarray | None:
        file = self.file(shard)
        return np.load(file)["gaiadr3_id"] if file.is_file() else None

    def open(self, shard: Shard) -> ShardSink:
        return _Sink(self.file(shard))

    def prepare(self, shards: list[Shard], overwrite: bool) -> None:
        (self.output_dir / "npz").mkdir(parents=True, exist_ok=True)

    def finish(self, shards: list[Shard]) -> None:
        from tglc_builder.formats.card import write_card

        files = sorted(p.relative_to(self.output_dir) for p in (self.output_dir / "npz").glob("*.npz"))
        write_card(self.output_dir, self.name, files, self.columns, self.sector, note=self.note)


class _Sink(ShardSink):
    def __init__(self, file: Path):
        self.file, self.blocks = file, []

    def append(self, block: Block) -> None:
        self.blocks.append(block)

    def commit(self) -> None:
        width = max(b.series["time"].shape[1] for b in self.blocks)
        time = np.concatenate([np.pad(b.series["time"], ((0, 0), (0, width - b.series["time"].shape[1])),
                                      constant_values=np.nan) for b in self.blocks])
        tmp = self.file.with_name(f".{self.file.name}.part")
        try:
            with open(tmp, "wb") as out:
                np.savez(out, gaiadr3_id=np.concatenate([b.scalars["gaiadr3_id"] for b in self.blocks]),
                         n_cadences=np.concatenate([b.n_cadences for b in self.blocks]), time=time)
            os.replace(tmp, self.file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WriteError(f"cannot write {self.file}: {exc}") from None

    def abort(self) -> None:
        self.file.with_name(f".{self.file.name}.part").unlink(missing_ok=True)


def card(folder: Path, files: list[str], columns):
    import datasets

    from tglc_builder.formats.card import CardParts

    features = datasets.Features({"gaiadr3_id": datasets.Value("int64"), "n_cadences": datasets.Value("int32")})
    lengths = np.concatenate([np.load(folder / f)["n_cadences"] for f in files])
    return CardParts(features, {}, lengths, [f"| `{name}` | {f.dtype} | - | - |" for name, f in features.items()],
                     {"first": files[0]}, template="## Files\n\n`$first` and the others.\n\n$rows\n\n$examples")


def load(path: Path, split, streaming, cache_dir):
    if not (path / "npz").is_dir():
        return None
    files = sorted((path / "npz").glob("*.npz"))
    return {"gaiadr3_id": np.concatenate([np.load(f)["gaiadr3_id"] for f in files])}
