"""TESS-Gaia Light Curves (TGLC) as a Hugging Face ``datasets`` builder.

A copy of this file sits in every output directory as ``tglc.py``, next to ``TGLC/healpix=<p>/*.hdf5``, so the
folder loads on its own: it imports only datasets and h5py (numpy and pyarrow come with them). Each HDF5 row becomes
one example with its light curve trimmed to ``n_cadences`` (the NaN/0 padding is dropped) and its ids as exact
decimal strings. Rows are read in blocks and handed to ``datasets`` as Arrow tables built column-wise, so no Python
object is made per value.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import datasets
import h5py
import numpy as np
import pyarrow as pa

_CITATION = r"""@ARTICLE{2023AJ....165...71H,
       author = {{Han}, Te and {Brandt}, Timothy D.},
        title = "{TESS-Gaia Light Curve: A PSF-based TESS FFI Light Curve Product}",
      journal = {The Astronomical Journal},
         year = 2023,
       volume = {165},
       number = {2},
          eid = {71},
        pages = {71},
          doi = {10.3847/1538-3881/acaaa7},
archivePrefix = {arXiv},
       eprint = {2301.03704},
}
@MISC{tglc_data,
       author = {{Han}, Te and {Brandt}, Timothy D.},
        title = "{TESS-Gaia Light Curve (TGLC)}",
    publisher = {MAST},
         year = 2023,
          doi = {10.17909/610m-9474},
}
"""

_DESCRIPTION = """\
TESS-Gaia Light Curves (TGLC, Han & Brandt 2023): PSF and aperture light curves extracted from TESS full-frame
images with Gaia DR3 priors, one example per star and sector, partitioned by HEALPix pixel (NSIDE=16, nested).
Times are BTJD (BJD - 2457000); flags are TGLC's TESS_flags and TGLC_flags."""

_HOMEPAGE = "https://archive.stsci.edu/hlsp/tglc"

_LICENSE = "CC BY 4.0"

DEFAULT_DATA_FILES = "TGLC/healpix=*/*.hdf5"  # relative to the dataset folder

_LIGHTCURVE = {"time": "float64", "psf_flux": "float32", "aper_flux": "float32",
               "tess_flags": "int16", "tglc_flags": "int16"}
_FLOATS = ("RA", "DEC", "psf_flux_err", "aper_flux_err")
_IDS = ("TIC_ID", "gaiadr3_id")
_BLOCK_ROWS = 1000  # rows read from HDF5 at once: whole-block reads instead of one h5py call per row


class TGLC(datasets.ArrowBasedBuilder):
    """TGLC light curves from ``TGLC/healpix=<p>/*.hdf5``."""

    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args: Any, data_files: Any = None, base_path: str | None = None, **kwargs: Any):
        # Without data_files, take every HDF5 file of the folder; resolving them here (not in a default config)
        # puts them in the config id, so two dataset folders never share a cache.
        if data_files is None and kwargs.get("data_dir") is None:
            data_files = {"train": [DEFAULT_DATA_FILES]}
            base_path = base_path or os.path.dirname(os.path.abspath(__file__))
        super().__init__(*args, data_files=data_files, base_path=base_path, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        features = {"lightcurve": {name: datasets.Sequence(datasets.Value(dtype))
                                   for name, dtype in _LIGHTCURVE.items()}}
        features.update({name: datasets.Value("float64") for name in _FLOATS})
        features.update({name: datasets.Value("string") for name in _IDS})
        return datasets.DatasetInfo(description=_DESCRIPTION, features=datasets.Features(features),
                                    homepage=_HOMEPAGE, license=_LICENSE, citation=_CITATION)

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if not self.config.data_files:
            raise ValueError(f"No data files: pass data_files, e.g. {{'train': ['{DEFAULT_DATA_FILES}']}}")
        files = dl_manager.download(self.config.data_files)  # local paths pass through unchanged
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": sorted(paths)})
                for split, paths in files.items()]

    def _generate_tables(self, files: list[str]) -> Iterator[tuple[str, pa.Table]]:
        schema = self.info.features.arrow_schema
        for file_index, path in enumerate(files):
            with h5py.File(path, "r") as h5:
                n_rows = len(h5["n_cadences"])
                for start in range(0, n_rows, _BLOCK_ROWS):
                    rows = slice(start, min(start + _BLOCK_ROWS, n_rows))
                    yield f"{file_index}_{start}", _block_table(h5, rows, schema)


def _block_table(h5: h5py.File, rows: slice, schema: pa.Schema) -> pa.Table:
    """Rows of one file as an Arrow table: each light curve a list trimmed to its ``n_cadences``."""
    lengths = h5["n_cadences"][rows].astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    width = int(lengths.max()) if len(lengths) else 0
    keep = np.arange(width) < lengths[:, None]  # row-major, so the kept values come out light curve by light curve
    curves = [pa.ListArray.from_arrays(offsets, pa.array(h5[name][rows, :width][keep])) for name in _LIGHTCURVE]
    columns = {"lightcurve": pa.StructArray.from_arrays(curves, names=list(_LIGHTCURVE))}
    columns.update({name: pa.array(h5[name][rows].astype(np.float64)) for name in _FLOATS})
    columns.update({name: pa.array(h5[name][rows].astype(np.int64)).cast(pa.string()) for name in _IDS})
    return pa.Table.from_pydict(columns).cast(schema)
