"""Load a built TGLC dataset with any ``datasets`` release, including 4.0 and later, which no longer run scripts.

``load_tglc(path)`` drives the very builder class that ``<path>/tglc.py`` is a copy of, so it yields the same
examples as ``load_dataset("<path>/tglc.py", ..., trust_remote_code=True)`` does on datasets 3.x.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import datasets

from tglc_builder.tglc import DEFAULT_DATA_FILES, TGLC


def _builder_hash() -> str:
    """Hash of the builder's source: part of the cache path, so a changed builder never reuses old Arrow files."""
    return hashlib.sha256(inspect.getsource(inspect.getmodule(TGLC)).encode()).hexdigest()[:16]


def load_tglc(path: str | os.PathLike, split: str | None = "train", streaming: bool = False,
              cache_dir: str | os.PathLike | None = None
              ) -> datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict | datasets.IterableDatasetDict:
    """Load the dataset under ``path`` (the folder holding ``TGLC/`` and ``tglc.py``).

    Non-streaming, the examples are converted once to Arrow files in ``cache_dir`` (default: the ``datasets``
    cache); the cache is keyed on the HDF5 files' paths and modification times, so a rebuild is picked up.
    Streaming reads the HDF5 files directly. ``split=None`` returns every split as a (Iterable)DatasetDict.

    For numpy arrays in the stored dtypes use ``ds.with_format("numpy", dtype=None)``: plain ``"numpy"`` lets
    ``datasets`` cast float arrays to float32, which rounds BTJD times by up to ~10 s.
    """
    builder = TGLC(base_path=os.path.abspath(path), data_files={"train": [DEFAULT_DATA_FILES]},
                   cache_dir=None if cache_dir is None else os.fspath(cache_dir), hash=_builder_hash())
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)
