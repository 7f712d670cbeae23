"""Load a built TGLC dataset, HDF5 or HATS, with any ``datasets`` release, including 4.0 and later, which no longer
run loading scripts.

An HDF5 output folder is read by the very builder class that ``<path>/tglc.py`` is a copy of, so ``load_tglc``
yields the same examples as ``load_dataset("<path>/tglc.py", ..., trust_remote_code=True)`` does on datasets 3.x.
A HATS collection or catalog is read by datasets' Parquet loader (the main catalog's files only), cast to the same
example shape.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from tglc_builder.columns import EXTRA_SERIES, column_set
from tglc_builder.formats import FORMATS
from tglc_builder.formats.card import example_features, flag_widths
from tglc_builder.tglc import DEFAULT_DATA_FILES, TGLC

Loaded = datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict | datasets.IterableDatasetDict


def _builder_hash() -> str:
    """Hash of the builder's source: part of the cache path, so a changed builder never reuses old Arrow files."""
    return hashlib.sha256(inspect.getsource(inspect.getmodule(TGLC)).encode()).hexdigest()[:16]


def load_tglc(path: str | os.PathLike, split: str | None = "train", streaming: bool = False,
              cache_dir: str | os.PathLike | None = None) -> Loaded:
    """Load the dataset under ``path``: an HDF5 output folder (holding ``TGLC/``), or a HATS collection or catalog.

    Every example is one light curve: its series in a ``lightcurve`` struct trimmed to its true length, ids as
    exact decimal strings, the other per-light-curve columns (floats as float64) at top level.

    Non-streaming, the examples are converted once to Arrow files in ``cache_dir`` (default: the ``datasets``
    cache); the cache is keyed on the files' paths and modification times, so a rebuild is picked up. Streaming
    reads the files directly. ``split=None`` returns every split as a (Iterable)DatasetDict.

    For numpy arrays in the stored dtypes use ``ds.with_format("numpy", dtype=None)``: plain ``"numpy"`` lets
    ``datasets`` cast float arrays to float32, which rounds TBJD times by up to ~10 s.
    """
    path = Path(path).absolute()
    cache = None if cache_dir is None else os.fspath(cache_dir)
    for fmt in FORMATS.values():  # each format's loader answers for its own folders only
        loaded = fmt.attribute("loader")(path, split, streaming, cache)
        if loaded is not None:
            return loaded
    raise FileNotFoundError(f"{path} is neither {' nor '.join(fmt.described for fmt in FORMATS.values())}")


def load_hdf5(path: Path, split: str | None, streaming: bool, cache_dir: str | None) -> Loaded | None:
    """An HDF5 output folder (holding ``TGLC/``) through ``tglc.py``'s builder; None for another folder."""
    if not (path / "TGLC").is_dir():
        return None
    builder = TGLC(base_path=str(path), data_files={"train": [DEFAULT_DATA_FILES]}, cache_dir=cache_dir,
                   hash=_builder_hash())
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)


def load_hats(path: Path, split: str | None, streaming: bool, cache_dir: str | None) -> Loaded | None:
    """A HATS collection or catalog through datasets' Parquet loader; None for another folder."""
    catalog = hats_catalog(path)
    if catalog is None:
        return None
    files = [str(f) for f in hats_data_files(catalog)]
    stored = pq.read_schema(files[0]).field("lightcurve").type
    extras = {s.name for s in EXTRA_SERIES} <= {stored.field(i).name for i in range(stored.num_fields)}
    columns = column_set("all" if extras else "seed")
    features = example_features(columns, flag_widths(files, "hats", columns))  # flags: the widest of the files
    return datasets.load_dataset("parquet", data_files={"train": files}, split=split, streaming=streaming,
                                 cache_dir=cache_dir, features=features, columns=list(features))


def hats_catalog(path: Path) -> Path | None:
    """The main catalog of a HATS collection (``collection.properties``), the catalog itself (``hats.properties``),
    or None."""
    if (path / "collection.properties").is_file():
        return path / _properties(path / "collection.properties")["hats_primary_table_url"]
    return path if (path / "hats.properties").is_file() else None


def hats_data_files(catalog: Path) -> list[Path]:
    """The catalog's partition files (``dataset/Norder=*/Dir=*/Npix=*``, a Parquet file or a folder of them) in
    pixel order; not the metadata files or the thumbnail."""
    def pixel(p: Path) -> tuple[int, int]:
        return int(p.parent.parent.name.split("=")[1]), int(p.name.split("=")[1].split(".")[0])

    files = []
    for part in sorted((catalog / "dataset").glob("Norder=*/Dir=*/Npix=*"), key=pixel):
        files += sorted(part.glob("*.parquet")) if part.is_dir() else [part]
    if not files:
        raise FileNotFoundError(f"no partition file under {catalog / 'dataset'}")
    return files


def _properties(file: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in file.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}
