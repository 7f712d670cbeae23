"""The dataset card: ``README.md`` with the Hugging Face Hub's YAML front matter, and prose for people.

The front matter is what current ``datasets`` (and the Hub) read: one ``default`` config naming exactly the build's
data files, and the features. With it, ``load_dataset(<folder>, split="train")`` works with nothing installed but
``datasets`` and h5py (HDF5) or pyarrow (HATS), and the folder can be pushed to the Hub as it is.

- HDF5: datasets' packaged HDF5 loader reads the flat datasets as stored. It takes the features from the card
  (without them it takes the first file's widths for all files and fails on the next width); series are declared as
  variable-length lists, so each row comes back padded to its file's width, with ``n_cadences`` beside it.
- HATS: datasets' Parquet loader reads the main catalog's files (not the margin cache or the thumbnail), keeps the
  example columns and casts them to :func:`example_features`, the examples of ``tglc.py`` and ``load_tglc``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import datasets
import h5py
import numpy as np
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from .. import __version__
from .. import tglc as tglc_script
from . import DEMO_NOTE
from ..columns import EXTRA_SCALARS, EXTRA_SERIES, IDS_AND_POSITION, N_CADENCES, N_CADENCES_NESTED, SEED_SCALARS, \
    SEED_SERIES, STRING, ColumnSet

CARD_FORMATS = ("hdf5", "hats")

# name -> (unit, description) of every column either format may hold
_DESCRIPTIONS = {name: (unit, text) for name, (_, unit, text) in IDS_AND_POSITION.items()}
_DESCRIPTIONS.update({c.name: (c.unit, c.description)
                      for c in SEED_SERIES + EXTRA_SERIES + SEED_SCALARS + EXTRA_SCALARS})
_DESCRIPTIONS.update({N_CADENCES[0]: (N_CADENCES[2], N_CADENCES[3]), "sector": ("", "TESS sector"),
                      "_healpix_29": ("", "HEALPix index at order 29 (nested): the catalog's spatial index")})
_SIZES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"), (10**7, "1M<n<10M"),
          (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))  # the Hub's size_categories

CITATION = tglc_script.CITATION.rstrip()  # tglc.py is copied alone into the output: it keeps the text



def _value(dtype: np.dtype) -> str:
    return "string" if dtype == STRING else dtype.name


def _series_dtype(series, widths: dict[str, str] | None) -> str:
    """A series' declared type: for the flags, the widest of the build's files (``widths``), so that ``datasets``
    casts every file, 16-bit or 32-bit, to one type that holds them all."""
    return (widths or {}).get(series.name, series.dtype.name) if series.widens else series.dtype.name


def hdf5_features(columns: ColumnSet, widths: dict[str, str] | None = None) -> datasets.Features:
    """The HDF5 files' datasets as stored: scalars in their exact dtypes, series as variable-length lists."""
    features = {name: datasets.Value(dtype.name) for name, (dtype, _, _) in IDS_AND_POSITION.items()}
    features.update({s.name: datasets.Value(_value(s.dtype)) for s in columns.scalars})
    features[N_CADENCES[0]] = datasets.Value(N_CADENCES[1].name)
    features.update({s.name: datasets.Sequence(datasets.Value(_series_dtype(s, widths))) for s in columns.series})
    return datasets.Features(features)


def example_features(columns: ColumnSet, widths: dict[str, str] | None = None) -> datasets.Features:
    """The examples of ``tglc.py`` and ``load_tglc``: the series in a ``lightcurve`` struct (trimmed to
    ``n_cadences``), ids as exact decimal strings, floats as float64, the header scalars at top level."""
    features: dict = {"lightcurve": {s.name: datasets.Sequence(datasets.Value(_series_dtype(s, widths)))
                                     for s in columns.series}}
    for name, (dtype, _, _) in IDS_AND_POSITION.items():
        features[name] = datasets.Value("string" if dtype.kind == "i" else "float64")
    features.update({s.name: datasets.Value("float64" if s.dtype.kind == "f" else _value(s.dtype))
                     for s in columns.scalars})
    return datasets.Features(features)


def flag_widths(paths: Iterable[str | os.PathLike], fmt: str, columns: ColumnSet) -> dict[str, str]:
    """The widest integer type of each flag column (``Series.widens``) over the files (read from their schemas)."""
    names = [s.name for s in columns.series if s.widens]
    widest = {name: np.dtype("int16") for name in names}
    for path in paths:
        if fmt == "hdf5":
            with h5py.File(path, "r") as h5:
                found = {name: h5[name].dtype for name in names if name in h5}
        else:
            curve = pq.read_schema(path).field("lightcurve").type
            found = {name: np.dtype(curve.field(name).type.value_type.to_pandas_dtype()) for name in names
                     if curve.get_field_index(name) >= 0}
        for name, dtype in found.items():
            widest[name] = max(widest[name], dtype, key=lambda d: d.itemsize)
    return {name: dtype.name for name, dtype in widest.items()}


def write_card(folder: str | os.PathLike, fmt: str, data_files: Iterable[str | os.PathLike], columns: ColumnSet,
               sectors: int | Iterable[int], note: str = "") -> Path:
    """Write ``<folder>/README.md`` (atomically) for the given data files and return its path.

    ``fmt``: ``"hdf5"`` (the ``TGLC/healpix=<p>/*.hdf5`` files) or ``"hats"`` (the main catalog's Parquet files,
    ``folder`` being the collection or the catalog). ``data_files`` are paths inside ``folder`` (absolute or
    relative to it); the card names exactly these, sorted. Rows and lengths are read from the files. ``note``: an
    extra paragraph, e.g. that the light curves are the demo archive's synthetic ones.
    """
    if fmt not in CARD_FORMATS:
        raise ValueError(f"unknown card format {fmt!r}; choose from {CARD_FORMATS}")
    folder = Path(folder)
    files = sorted({Path(os.path.relpath(folder / f, folder)).as_posix() for f in data_files})
    if not files or any(f.startswith("../") for f in files):
        raise ValueError(f"the card needs data files inside {folder}, got {files}")
    sectors = [int(sectors)] if isinstance(sectors, (int, np.integer)) else sorted({int(s) for s in sectors})
    lengths = np.concatenate([_n_cadences(folder / f, fmt) for f in files])
    size = next((label for limit, label in _SIZES if len(lengths) < limit), "1B<n<10B")

    config: dict = {"config_name": "default", "data_files": [{"split": "train", "path": files}]}
    widths = flag_widths([folder / f for f in files], fmt, columns)
    if fmt == "hdf5":
        features = hdf5_features(columns, widths)
        config["batch_size"] = 256  # rows read at once: bounded memory for 10,000-row files
    else:
        features = example_features(columns, widths)
        config["columns"] = list(features)
    card = DatasetCardData(license="cc-by-4.0", pretty_name=_title(sectors), size_categories=[size],
                           tags=["astronomy", "time-series", "light-curves", "tess", "gaia", "healpix", fmt],
                           configs=[config])
    DatasetInfosDict({"default": datasets.DatasetInfo(features=features)}).to_dataset_card_data(card)
    stored = hdf5_features(columns, widths) if fmt == "hdf5" else datasets.Features.from_arrow_schema(
        pq.read_schema(folder / files[0]))
    text = f"---\n{card.to_yaml()}\n---\n\n" + _prose(fmt, sectors, files, lengths, columns, stored, note,
                                                         widths)

    fd, tmp = tempfile.mkstemp(prefix=".README.md.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / "README.md")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / "README.md"


def _n_cadences(path: Path, fmt: str) -> np.ndarray:
    if fmt == "hdf5":
        with h5py.File(path, "r") as h5:
            return h5[N_CADENCES[0]][()]
    return pq.read_table(path, columns=[N_CADENCES[0]]).column(0).to_numpy()


def _which(sectors: list[int]) -> str:
    return f"sector {sectors[0]}" if len(sectors) == 1 else "sectors " + ", ".join(map(str, sectors))


def _title(sectors: list[int]) -> str:
    return f"TESS-Gaia Light Curves (TGLC), {_which(sectors)}"


def _type(feature) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    inner = getattr(feature, "feature", None)
    return f"list<{_type(inner)}>" if inner is not None else str(feature)


def _column_rows(features: datasets.Features, kind: str) -> list[str]:
    """Markdown table rows, one per column (struct fields as ``lightcurve.<name>``)."""
    rows = []
    for name, feature in features.items():
        if isinstance(feature, dict):
            rows += [_row(f"{name}.{sub}", _type(f), *_DESCRIPTIONS.get(sub, ('', ''))) for sub, f in feature.items()]
        elif kind == "hdf5":
            is_series = not isinstance(feature, datasets.Value)
            rows.append(_row(name, f"(N, L) {_type(feature.feature)}" if is_series else f"(N,) {feature.dtype}",
                             *_DESCRIPTIONS.get(name, ('', ''))))
        elif kind == "hats" and name == N_CADENCES[0]:  # the catalog's lists are trimmed, not padded
            rows.append(_row(name, _type(feature), N_CADENCES[2], N_CADENCES_NESTED))
        else:
            rows.append(_row(name, _type(feature), *_DESCRIPTIONS.get(name, ('', ''))))
    return rows


def _row(name: str, dtype: str, unit: str, description: str) -> str:
    return f"| `{name}` | {dtype} | {unit or '-'} | {description} |"


def _prose(fmt: str, sectors: list[int], files: list[str], lengths: np.ndarray, columns: ColumnSet,
           stored: datasets.Features, note: str, widths: dict[str, str] | None = None) -> str:
    n = len(lengths)
    series = [s.name for s in columns.series]
    head = [
        f"# {_title(sectors)}",
        "",
        "The [TESS-Gaia Light Curves](https://archive.stsci.edu/hlsp/tglc) (TGLC, Han & Brandt 2023) are light "
        "curves of stars observed by NASA's Transiting Exoplanet Survey Satellite (TESS), extracted from its "
        "full-frame images by fitting an effective point-spread function with the positions and magnitudes of "
        "Gaia DR3 as priors, which separates the light of blended neighbours. Each light curve is one star in one "
        "sector, with PSF and aperture fluxes per cadence and TESS's and TGLC's quality flags.",
        "",
        f"This dataset holds **{n:,} light curves** of TESS {_which(sectors)} ({_span(lengths)} cadences each) in "
        f"{len(files)} {fmt.upper()} file{'s' if len(files) > 1 else ''}, partitioned by "
        f"HEALPix pixel (nside 16, nested). It was built by tglc-builder {__version__} from the TGLC high-level "
        f"science product at MAST (doi:10.17909/610m-9474) with the `{columns.name}` column set; values are the "
        "FITS values, bit for bit.",
    ]
    if note == DEMO_NOTE:  # said first and plainly: nothing here came from MAST
        head[0] += " (synthetic demo data)"
        head[-1] = (f"**This is synthetic demo data, not TESS data.** This dataset holds **{n:,} made-up light "
                    f"curves** of a TESS {_which(sectors)} ({_span(lengths)} cadences each) in {len(files)} "
                    f"{fmt.upper()} file{'s' if len(files) > 1 else ''}, partitioned by HEALPix pixel (nside 16, "
                    f"nested), built by tglc-builder {__version__} from its demo archive (`tglc_builder.demo`) with "
                    f"the `{columns.name}` column set. The files are in the exact TGLC v1 format, for trying the "
                    "tools out; no value in them was observed, and none came from MAST.")
    elif note:
        head += ["", note]
    body = _hdf5_prose(files, columns, stored, series, widths) if fmt == "hdf5" else \
        _hats_prose(files, columns, stored, widths)
    tail = [
        "",
        "## Citation",
        "",
        "Han, T. & Brandt, T. D. 2023, AJ, 165, 71 (doi:10.3847/1538-3881/acaaa7). "
        "Data: doi:10.17909/610m-9474.",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
        "## License",
        "",
        "The TGLC light curves are distributed by MAST under the Creative Commons Attribution 4.0 International "
        "license (CC BY 4.0): cite the paper and the data DOI above when you use them.",
        "",
    ]
    return "\n".join(head + body + tail)


def _span(lengths: np.ndarray) -> str:
    low, high = (int(lengths.min()), int(lengths.max())) if len(lengths) else (0, 0)
    return f"{low}" if low == high else f"{low} to {high}"


def _examples_section(columns: ColumnSet, widths: dict[str, str] | None = None) -> list[str]:
    return [
        "",
        "Each example is one light curve, trimmed to its true length (no padding):",
        "",
        "| column | type | unit | description |",
        "|---|---|---|---|",
        *_column_rows(example_features(columns, widths), "examples"),
        "",
        "For NumPy arrays in the stored dtypes use `ds.with_format(\"numpy\", dtype=None)`: plain "
        "`with_format(\"numpy\")` lets `datasets` cast float64 to float32, which rounds the times (TBJD) by up to "
        "about 10 s.",
    ]


def _hdf5_prose(files: list[str], columns: ColumnSet, stored: datasets.Features, series: list[str],
                widths: dict[str, str] | None = None) -> list[str]:
    first = files[0]
    return [
        "",
        "## Files",
        "",
        "```",
        "TGLC/healpix=<p>/<k>-of-<n>.hdf5   one or more shards per HEALPix pixel p",
        "tglc.py                           a `datasets` loading script (datasets 3.x)",
        "README.md                         this card",
        "```",
        "",
        "Each HDF5 file holds one row per light curve as flat datasets of N rows: per light curve `(N,)`, per "
        "cadence `(N, L)`, where L is the longest light curve of that file (so L differs between files). "
        "**Padding:** beyond a row's `n_cadences`, floats are NaN and integers 0. NaN also occurs inside real light "
        "curves (cadences without a fit), so trim by `n_cadences`, never by NaN. File attributes: `sector`, "
        "`healpix`, `nside`, `nest`, `shard`, `tglc_builder_version`, and `tglc_versions` (JSON: the TGLC file "
        "versions of its light curves, and with `--columns all` their `TGLCVER` and `PROCVER` values). Flag "
        "columns are int16, or int32 in a file holding a light curve of tglc 0.8 (32-bit flags); the features "
        "below declare the widest, so every file loads. Chunks carry Fletcher32 checksums: a damaged "
        "file raises an error when read.",
        "",
        "| column | HDF5 shape, dtype | unit | description |",
        "|---|---|---|---|",
        *_column_rows(stored, "hdf5"),
        "",
        "## Loading",
        "",
        "### `datasets` 4.1 and later (nothing else needed but h5py)",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"path/to/this/folder\", split=\"train\")   # or the Hub repository's name",
        "```",
        "",
        "This reads the files as stored, through `datasets`' own HDF5 loader and the features above: one row per "
        "light curve with the columns of the table, each series a list **padded to its file's width L**, and "
        "`n_cadences` its true length. Trim before use:",
        "",
        "```python",
        "row = ds.with_format(\"numpy\", dtype=None)[0]",
        "n = row[\"n_cadences\"]",
        f"lc = {{name: row[name][:n] for name in {series!r}}}",
        "```",
        "",
        "`datasets`' HDF5 loader cannot trim the padding or group the series, so the `lightcurve` struct of the "
        "examples below comes only from `tglc.py` or `load_tglc`. Every value is exact either way. (Current "
        "`datasets` refuses a folder or Hub repository named `tglc`, as it holds `tglc.py`: name it otherwise.)",
        "",
        "### The examples of `tglc.py` and `load_tglc`",
        "",
        "With `datasets` 3.x, the loading script beside the data:",
        "",
        "```python",
        "from datasets import load_dataset",
        "from datasets.data_files import DataFilesPatternsDict",
        "ds = load_dataset(\"path/to/this/folder/tglc.py\", trust_remote_code=True,",
        "                  data_files=DataFilesPatternsDict.from_patterns("
        "{\"train\": [\"TGLC/healpix=*/*.hdf5\"]}))[\"train\"]",
        "```",
        "",
        "With any `datasets` release, `pip install tglc-builder` and `from tglc_builder import load_tglc; "
        "ds = load_tglc(\"path/to/this/folder\")` (`streaming=True` reads the files directly).",
        *_examples_section(columns, widths),
        "",
        "### h5py",
        "",
        "```python",
        "import h5py",
        f"with h5py.File(\"path/to/this/folder/{first}\") as h5:",
        "    n = h5[\"n_cadences\"][0]                  # the first light curve's length",
        "    time, flux = h5[\"time\"][0, :n], h5[\"aper_flux\"][0, :n]",
        "```",
        "",
        "### HATS and LSDB",
        "",
        "tglc-builder also writes the same light curves as a [HATS](https://hats.readthedocs.io) catalog "
        "(`--format hats` or `both`: Parquet, trimmed series in a `lightcurve` struct), which "
        "[LSDB](https://docs.lsdb.io) opens with `lsdb.open_catalog(\"path/to/the/hats/folder\")` for cone "
        "searches and cross-matches, and `load_tglc` or `load_dataset` load as the examples above.",
    ]


def _hats_prose(files: list[str], columns: ColumnSet, stored: datasets.Features,
                widths: dict[str, str] | None = None) -> list[str]:
    catalog = files[0].split("/dataset/")[0] if "/dataset/" in files[0] else "."
    return [
        "",
        "## Files",
        "",
        "A [HATS](https://hats.readthedocs.io) catalog: Parquet files partitioned by HEALPix pixel (order 4 = nside "
        f"16, nested) under `{catalog}/dataset/Norder=4/Dir=<d>/Npix=<p>.parquet`, with `partition_info.csv`, "
        "`_metadata`, `_common_metadata`, the point map and `hats.properties`. One row per light curve, sorted by "
        "`_healpix_29`; the series are lists in the `lightcurve` struct, trimmed to `n_cadences` (no padding).",
        "",
        "| column | Arrow type | unit | description |",
        "|---|---|---|---|",
        *_column_rows(stored, "hats"),
        "",
        "## Loading",
        "",
        "### `datasets` (nothing else needed)",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"path/to/this/folder\", split=\"train\")   # or the Hub repository's name",
        "```",
        "",
        "This reads exactly the main catalog's files (not the margin cache or the thumbnail), in the shape of "
        "`tglc_builder`'s `load_tglc` (any `datasets` release, `streaming=True` too) and of the HDF5 build's "
        "`tglc.py`.",
        *_examples_section(columns, widths),
        "",
        "### LSDB",
        "",
        "```python",
        "import lsdb",
        "catalog = lsdb.open_catalog(\"path/to/this/folder\")",
        "nearby = catalog.cone_search(ra=332.67, dec=-65.52, radius_arcsec=3600).compute()",
        "```",
        "",
        "### pyarrow",
        "",
        "```python",
        "import pyarrow.parquet as pq",
        f"table = pq.read_table(\"path/to/this/folder/{files[0]}\")   # one HEALPix pixel",
        "```",
    ]
