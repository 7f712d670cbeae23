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
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import datasets
import h5py
import numpy as np
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from .. import __version__
from .. import tglc as tglc_script
from . import DEMO_NOTE, FORMATS
from ..columns import EXTRA_SCALARS, EXTRA_SERIES, IDS_AND_POSITION, N_CADENCES, N_CADENCES_NESTED, SEED_SCALARS, \
    SEED_SERIES, STRING, ColumnSet
from ..folders import atomically

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


def flag_widths(paths: Iterable[str | os.PathLike], fmt: str, columns: ColumnSet,
                lengths: list | None = None) -> dict[str, str]:
    """The widest integer type of each flag column (``Series.widens``) over the files (read from their schemas);
    HDF5 files' ``n_cadences`` are appended to ``lengths`` in the same open (a --tiny build has many small files)."""
    names = [s.name for s in columns.series if s.widens]
    widest = {name: np.dtype("int16") for name in names}
    for path in paths:
        if fmt == "hdf5":  # h5py's low-level calls: its File and Dataset objects cost ~0.3 ms of a small file
            h5 = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
            try:
                found = {name: h5py.h5d.open(h5, name.encode()).dtype for name in names
                         if h5.links.exists(name.encode())}
                if lengths is not None:
                    dset = h5py.h5d.open(h5, N_CADENCES[0].encode())
                    lengths.append(np.empty(dset.shape, dset.dtype))
                    dset.read(h5py.h5s.ALL, h5py.h5s.ALL, lengths[-1])
            finally:
                h5.close()
        else:
            curve = pq.read_schema(path).field("lightcurve").type
            found = {name: np.dtype(curve.field(name).type.value_type.to_pandas_dtype()) for name in names
                     if curve.get_field_index(name) >= 0}
        for name, dtype in found.items():
            widest[name] = max(widest[name], dtype, key=lambda d: d.itemsize)
    return {name: dtype.name for name, dtype in widest.items()}


@dataclass
class CardParts:
    """What a format's card says of its files (the registry's ``card`` of each format gives it)."""

    features: datasets.Features  # the front matter's: what ``load_dataset(<folder>)`` yields
    config: dict  # the default config's keys besides its name and data files
    lengths: np.ndarray  # n_cadences of every light curve of the files
    rows: list[str]  # the table of the stored columns, one Markdown row each
    fields: dict[str, str] = field(default_factory=dict)  # the other fields of templates/<format>.md
    template: str | None = None  # the card's body, if not templates/<format>.md ($rows, $examples and the fields)
    widths: dict[str, str] | None = None  # the flag columns' widest type over the files (flag_widths)


def hdf5_card(folder: Path, files: list[str], columns: ColumnSet) -> CardParts:
    """The HDF5 files' card: their features as stored, read 256 rows at a time."""
    lengths: list = []
    widths = flag_widths([folder / f for f in files], "hdf5", columns, lengths)
    features = hdf5_features(columns, widths)
    return CardParts(features, {"batch_size": 256},  # rows read at once: bounded memory for 10,000-row files
                     np.concatenate(lengths), _column_rows(features, "hdf5"),
                     {"series": repr([s.name for s in columns.series]), "first": files[0]}, widths=widths)


def hats_card(folder: Path, files: list[str], columns: ColumnSet) -> CardParts:
    """The HATS catalog's card: its Parquet files cast to the examples of ``load_tglc``."""
    from .hats import _read_column

    widths = flag_widths([folder / f for f in files], "hats", columns)
    features = example_features(columns, widths)
    stored = datasets.Features.from_arrow_schema(pq.read_schema(folder / files[0]))
    lengths = np.concatenate([_read_column(folder / f, N_CADENCES[0]) for f in files])
    catalog = files[0].split("/dataset/")[0] if "/dataset/" in files[0] else "."
    return CardParts(features, {"columns": list(features)}, lengths, _column_rows(stored, "hats"),
                     {"catalog": catalog, "first": files[0]}, widths=widths)


def write_card(folder: str | os.PathLike, fmt: str, data_files: Iterable[str | os.PathLike], columns: ColumnSet,
               sectors: int | Iterable[int], note: str = "") -> Path:
    """Write ``<folder>/README.md`` (atomically) for the given data files and return its path.

    ``fmt``: a format of the registry, e.g. ``"hdf5"`` (the ``TGLC/healpix=<p>/*.hdf5`` files) or ``"hats"`` (the
    main catalog's Parquet files, ``folder`` being the collection or the catalog). ``data_files`` are paths inside
    ``folder`` (absolute or relative to it); the card names exactly these, sorted. Rows and lengths are read from the
    files. ``note``: an extra paragraph, e.g. that the light curves are the demo archive's synthetic ones. The prose
    is ``templates/card.md`` around the format's ``templates/<fmt>.md``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown card format {fmt!r}; choose from {tuple(FORMATS)}")
    folder = Path(folder)
    files = sorted({Path(os.path.relpath(folder / f, folder)).as_posix() for f in data_files})
    if not files or any(f.startswith("../") for f in files):
        raise ValueError(f"the card needs data files inside {folder}, got {files}")
    sectors = [int(sectors)] if isinstance(sectors, (int, np.integer)) else sorted({int(s) for s in sectors})
    parts: CardParts = FORMATS[fmt].attribute("card")(folder, files, columns)
    size = next((label for limit, label in _SIZES if len(parts.lengths) < limit), "1B<n<10B")

    config: dict = {"config_name": "default", "data_files": [{"split": "train", "path": files}], **parts.config}
    card = DatasetCardData(license="cc-by-4.0", pretty_name=_title(sectors), size_categories=[size],
                           tags=["astronomy", "time-series", "light-curves", "tess", "gaia", "healpix", fmt],
                           configs=[config])
    DatasetInfosDict({"default": datasets.DatasetInfo(features=parts.features)}).to_dataset_card_data(card)
    text = f"---\n{card.to_yaml()}\n---\n\n" + _prose(fmt, sectors, files, columns, parts, note)

    with atomically(folder / "README.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)  # whatever the umask: a card anyone may read
    return folder / "README.md"


def _template(name: str) -> string.Template:
    """``templates/<name>``, shipped as package data; its final newline belongs to the text around it."""
    text = resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")
    return string.Template(text[:-1] if text.endswith("\n") else text)


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


def _prose(fmt: str, sectors: list[int], files: list[str], columns: ColumnSet, parts: CardParts,
           note: str) -> str:
    demo = note == DEMO_NOTE  # said first and plainly: nothing here came from MAST
    about = _template("about-demo.md" if demo else "about.md").substitute(
        n=f"{len(parts.lengths):,}", which=_which(sectors), span=_span(parts.lengths),
        files=f"{len(files)} {FORMATS[fmt].label} file{'s' if len(files) > 1 else ''}", version=__version__,
        columns=columns.name)
    if note and not demo:
        about += "\n\n" + note
    examples = _template("examples.md").substitute(
        rows="\n".join(_column_rows(example_features(columns, parts.widths), "examples")))
    template = _template(f"{fmt}.md") if parts.template is None else string.Template(parts.template)
    body = template.substitute(rows="\n".join(parts.rows), examples=examples, **parts.fields)
    title = _title(sectors) + (" (synthetic demo data)" if demo else "")
    return _template("card.md").substitute(title=title, about=about, body=body, citation=CITATION) + "\n"


def _span(lengths: np.ndarray) -> str:
    low, high = (int(lengths.min()), int(lengths.max())) if len(lengths) else (0, 0)
    return f"{low}" if low == high else f"{low} to {high}"
