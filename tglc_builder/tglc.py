"""TESS-Gaia Light Curves (TGLC) as a Hugging Face ``datasets`` builder.

A copy of this file sits in every output directory as ``tglc.py``, next to ``TGLC/healpix=<p>/*.hdf5``, so the
folder loads on its own: it imports only datasets and h5py (numpy and pyarrow come with them). Each HDF5 row becomes
one example: the file's ``(N, L)`` series in a ``lightcurve`` struct, trimmed to ``n_cadences`` (the NaN/0 padding
is dropped), and its ``(N,)`` columns at top level, ids as exact decimal strings. The columns are those of the first
file, so the optional ones of ``--columns all`` come along. A damaged chunk fails its Fletcher32 checksum and
raises. Rows are read in blocks and handed to ``datasets`` as Arrow tables built column-wise, so no Python
object is made per value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import datasets
import h5py
import numpy as np
import pyarrow as pa

CITATION = r"""@ARTICLE{2023AJ....165...71H,
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

# The examples' column order (that of tglc_builder/columns.py); columns a file holds beyond these follow by name.
SERIES_ORDER = ("time", "psf_flux", "aper_flux", "tess_flags", "tglc_flags",
                "cal_psf_flux", "cal_aper_flux", "background", "cadence_num", "aper_flux_raw", "psf_flux_raw")
SCALAR_ORDER = ("TIC_ID", "gaiadr3_id", "RA", "DEC", "psf_flux_err", "aper_flux_err",
                "cal_psf_flux_err", "cal_aper_flux_err", "tessmag", "gaia_g", "gaia_bp", "gaia_rp", "rawflux",
                "loc_bg", "star_x", "star_y", "cut_x", "cut_y", "camera", "ccd", "contamrt", "file_version",
                "tglcver", "procver")
_IDS = ("TIC_ID", "gaiadr3_id")
_N_CADENCES = "n_cadences"


@dataclass
class TGLCConfig(datasets.BuilderConfig):
    """``block_rows``: rows read from HDF5 at once (whole-block reads instead of one h5py call per row)."""

    block_rows: int = 1000


class TGLC(datasets.ArrowBasedBuilder):
    """TGLC light curves from ``TGLC/healpix=<p>/*.hdf5``; the columns are those of the first file."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = TGLCConfig

    def __init__(self, *args: Any, data_files: Any = None, base_path: str | None = None, **kwargs: Any):
        # Without data_files, take every HDF5 file of the folder; resolving them here (not in a default config)
        # puts them in the config id, so two dataset folders never share a cache.
        if data_files is None and kwargs.get("data_dir") is None:
            data_files = {"train": [DEFAULT_DATA_FILES]}
            base_path = base_path or os.path.dirname(os.path.abspath(__file__))
        super().__init__(*args, data_files=data_files, base_path=base_path, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        # The features are read off the first data file in _split_generators.
        return datasets.DatasetInfo(description=_DESCRIPTION, homepage=_HOMEPAGE, license=_LICENSE,
                                    citation=CITATION)

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if not self.config.data_files:
            raise ValueError(f"No data files: pass data_files, e.g. {{'train': ['{DEFAULT_DATA_FILES}']}}")
        files = {split: sorted(paths) for split, paths in dl_manager.download(self.config.data_files).items()}
        first = next((paths[0] for paths in files.values() if paths), None)
        if first is None:
            raise ValueError(f"No HDF5 file matches {self.config.data_files}")
        # Always the first file's columns: datasets 3.x also hands the script the features of the folder's card,
        # which describe the files as stored (padded, flat), not these examples.
        with open(first, "rb") as f, h5py.File(f, "r") as h5:
            features = features_of(h5)
        # Integer series (the flags) may be 16-bit in some files and 32-bit in others (tglc 0.8): the widest.
        curve = dict(features["lightcurve"])
        integers = [name for name, feature in curve.items() if np.dtype(feature.feature.dtype).kind == "i"]
        for path in (p for paths in files.values() for p in paths):
            with open(path, "rb") as f, h5py.File(f, "r") as h5:
                for name in (n for n in integers if n in h5):
                    if h5[name].dtype.itemsize > np.dtype(curve[name].feature.dtype).itemsize:
                        curve[name] = datasets.Sequence(datasets.Value(h5[name].dtype.name))
        self.info.features = datasets.Features({**features, "lightcurve": curve})
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": paths}) for split, paths in files.items()]

    def _generate_tables(self, files: list[str]) -> Iterator[tuple[str, pa.Table]]:
        schema = self.info.features.arrow_schema
        series = list(self.info.features["lightcurve"])
        scalars = [name for name in self.info.features if name != "lightcurve"]
        for file_index, path in enumerate(files):
            with open(path, "rb") as f, h5py.File(f, "r") as h5:
                missing = set(series + scalars + [_N_CADENCES]) - set(h5)
                if missing:
                    raise ValueError(f"{path} lacks {sorted(missing)}, which the first file has: the files of a "
                                     "dataset must have the same columns")
                n_rows = len(h5[_N_CADENCES])
                block = self.config.block_rows
                for start in range(0, n_rows, block):
                    rows = slice(start, min(start + block, n_rows))
                    yield f"{file_index}_{start}", _block_table(h5, rows, series, scalars, schema)


def features_of(h5: h5py.File) -> datasets.Features:
    """The examples' features for a file's datasets: ``(N, L)`` series into the ``lightcurve`` struct in their
    dtypes, ``(N,)`` scalars at top level (ids as strings, floats as float64), ``n_cadences`` only to trim."""
    def order(names: list[str], known: tuple[str, ...]) -> list[str]:
        return sorted(names, key=lambda name: (known.index(name) if name in known else len(known), name))

    names = [name for name in h5 if isinstance(h5[name], h5py.Dataset) and name != _N_CADENCES]
    series = order([name for name in names if h5[name].ndim == 2], SERIES_ORDER)
    features: dict[str, Any] = {"lightcurve": {name: datasets.Sequence(datasets.Value(h5[name].dtype.name))
                                               for name in series}}
    for name in order([name for name in names if h5[name].ndim == 1], SCALAR_ORDER):
        dtype = h5[name].dtype
        features[name] = datasets.Value("string" if name in _IDS or dtype.kind in "OS" else
                                        "float64" if dtype.kind == "f" else dtype.name)
    return datasets.Features(features)


def _block_table(h5: h5py.File, rows: slice, series: list[str], scalars: list[str], schema: pa.Schema) -> pa.Table:
    """Rows of one file as an Arrow table: each light curve a list trimmed to its ``n_cadences``."""
    lengths = h5[_N_CADENCES][rows].astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    width = int(lengths.max()) if len(lengths) else 0
    keep = np.arange(width) < lengths[:, None]  # row-major, so the kept values come out light curve by light curve
    curves = [pa.ListArray.from_arrays(offsets, pa.array(h5[name][rows, :width][keep])) for name in series]
    columns = {"lightcurve": pa.StructArray.from_arrays(curves, names=series)}
    for name in scalars:
        values = h5[name][rows]
        columns[name] = pa.array(values.astype(np.int64)).cast(pa.string()) if name in _IDS else pa.array(values)
    return pa.Table.from_pydict(columns).cast(schema)
