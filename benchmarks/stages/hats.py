"""HATS: writing the HATS catalog (Parquet) beside writing HDF5 from the same FITS files; bytes per light curve of
each format (lossless); reading every row through ``datasets`` from Parquet and from HDF5 (``load_tglc``), and
through LSDB."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from ..data import ensure_tree, read_catalog
from ..harness import Ctx, Skipped, Timer, maxrss, task
from ..report import fmt_bytes, fmt_rate, row, skipped
from .convert import check, write_sector
from .output_size import seed_series

NAME = "hats"
SIZES = {"full": dict(n=20_000), "quick": dict(n=1_000)}
N_PROCESSES = 2


def hats_files(path: str) -> tuple[Path, list[Path]]:
    from tglc_builder.loading import hats_catalog, hats_data_files

    catalog = hats_catalog(Path(path))
    if catalog is None:
        raise FileNotFoundError(f"no HATS collection or catalog in {path}")
    return catalog, hats_data_files(catalog)


@task
def sizes(hats: str, hdf5: str, catalog: str, root: str, sample: int = 200) -> dict:
    """Bytes per light curve of each format (data files only), and a lossless check of a sample of the HATS rows
    against the FITS files."""
    import numpy as np
    import pyarrow.parquet as pq
    from tglc_builder.reader import read_tglc

    table = read_catalog(catalog)
    by_gaia = {int(g): p for g, p in zip(table["gaiadr3_id"], table["path"])}
    _, files = hats_files(hats)
    parquet_bytes = sum(f.stat().st_size for f in files)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    h5_files = list(Path(hdf5).glob("TGLC/**/*.hdf5"))
    h5_bytes = sum(f.stat().st_size for f in h5_files)
    series = seed_series()
    every = max(1, rows // sample)
    checked, mismatches, seen = 0, [], 0
    for file in files:
        pf = pq.read_table(file, columns=["gaiadr3_id", "lightcurve"])
        for i in range(0, pf.num_rows):
            if (seen + i) % every:
                continue
            gaia = int(pf.column("gaiadr3_id")[i].as_py())
            lc = pf.column("lightcurve")[i].as_py()
            fits = read_tglc(os.path.join(root, by_gaia[gaia])).data
            for name, col in series.items():
                source = np.asarray(fits[col])
                stored = np.asarray(lc[name], dtype=source.dtype.newbyteorder("="))
                if len(stored) != len(source) or not np.array_equal(stored, source, equal_nan=True):
                    mismatches.append(f"{file.name}[{i}].{name}")
            checked += 1
        seen += pf.num_rows
    return dict(parquet_bytes=parquet_bytes, rows=rows, parquet_files=len(files), per_lc=parquet_bytes / rows,
                hdf5_bytes=h5_bytes, hdf5_files=len(h5_files), hdf5_per_lc=h5_bytes / rows, checked=checked,
                n_mismatches=len(mismatches), mismatches=mismatches[:10])


@task
def read(kind: str, path: str, cache_dir: str, streaming: bool = False, batch_size: int = 0) -> dict:
    """Every row through ``datasets``, as numpy arrays: ``parquet``: load_dataset(<HATS folder>) (its card names
    the Parquet files); ``hdf5``: load_tglc(<HDF5 folder>). From an empty cache, or with ``streaming``; row by row,
    or in batches of ``batch_size`` rows (as a training loop reads)."""
    import datasets

    how = ""
    with Timer() as t:
        if kind == "parquet":
            try:
                ds = datasets.load_dataset(path, split="train", cache_dir=cache_dir, streaming=streaming)
                how = f"load_dataset(<hats folder>, split='train'{', streaming=True' if streaming else ''})"
            except Exception as exc:  # noqa: BLE001 - a folder without a card: its Parquet files directly
                _, files = hats_files(path)
                ds = datasets.load_dataset("parquet", data_files={"train": [str(f) for f in files]}, split="train",
                                           cache_dir=cache_dir, streaming=streaming)
                how = f"load_dataset('parquet', data_files=...) (the folder itself failed: {type(exc).__name__})"
        else:
            from tglc_builder import load_tglc

            ds = load_tglc(path, cache_dir=cache_dir, streaming=streaming)
            how = f"load_tglc(<hdf5 folder>{', streaming=True' if streaming else ''})"
        loaded = time.perf_counter()
        rows = 0
        formatted = ds.with_format("numpy") if streaming else ds.with_format("numpy", dtype=None)
        if batch_size:
            for batch in formatted.iter(batch_size=batch_size):
                rows += sum(curve["time"] is not None for curve in batch["lightcurve"])
        else:
            for example in formatted:
                rows += example["lightcurve"]["time"] is not None
    return dict(seconds=t.seconds, load=loaded - t.t0, rows=rows, rate=rows / t.seconds, how=how, peak_rss=maxrss())


@task
def read_lsdb(path: str) -> dict:
    """lsdb.open_catalog(<HATS folder>).compute(): every row into a (nested) pandas frame."""
    import lsdb

    with Timer() as t:
        frame = lsdb.open_catalog(path).compute()
    return dict(seconds=t.seconds, rows=len(frame), rate=len(frame) / t.seconds, peak_rss=maxrss())


BATCH = 256  # rows per batch when reading as a training loop does


def measure(ctx: Ctx) -> list[dict]:
    if importlib.util.find_spec("tglc_builder.formats.hats") is None:
        raise Skipped("tglc_builder/formats/hats.py (--format hats) is not in the tree yet")
    for module in ("hats", "lsdb"):
        if importlib.util.find_spec(module) is None:
            raise Skipped(f"{module} is not installed (pip install 'tglc-builder[hats]')")
    info = ensure_tree(ctx, ctx.sizes["n"])
    out = ctx.dir("hats", fresh=True)
    h5 = ctx.task(write_sector, catalog=info["catalog"], root=info["root"], output_dir=str(out / "hdf5-build"),
                  n_processes=N_PROCESSES, fmt="hdf5")
    check(h5, info["rows"], "HDF5 build")
    hats = ctx.task(write_sector, catalog=info["catalog"], root=info["root"], output_dir=str(out / "hats-build"),
                    n_processes=N_PROCESSES, fmt="hats")
    check(hats, info["rows"], "HATS build")
    size = ctx.task(sizes, hats=hats["hats"], hdf5=h5["hdf5"], catalog=info["catalog"], root=info["root"])
    where = f"{info['rows']:,} files of a sector, {info['pixels']} pixels, -n {N_PROCESSES}"
    rows = [
        row("hats.write", "hats", f"HATS writing, light curves per core-second (CPU time of the driver and its "
                                  f"workers): run.write_outputs --format hats ({where})",
            fmt_rate(hats["rows"] / hats["cpu"], "/s/core"), hats["rows"] / hats["cpu"],
            f"{fmt_rate(h5['rows'] / h5['cpu'], '/s/core')} (HDF5 writing of the same files, same way)",
            h5["rows"] / h5["cpu"],
            f"HATS: {hats['seconds']:.1f} s wall ({hats['rate'] / N_PROCESSES:,.0f} /s per process), "
            f"{hats['cpu']:.1f} s CPU, peak RSS (all processes) {fmt_bytes(hats['peak_tree'])}; HDF5: "
            f"{h5['seconds']:.1f} s wall ({h5['rate'] / N_PROCESSES:,.0f} /s per process), {h5['cpu']:.1f} s CPU, peak "
            f"RSS {fmt_bytes(h5['peak_tree'])}; both read every FITS file and include the plan and the folder-level "
            "files (HATS: its metadata, as hats writes it)"),
        row("hats.write_memory", "hats", f"peak memory of all processes (driver and workers, sampled every 20 ms) "
                                         f"of the same HATS writing ({where})",
            fmt_bytes(hats["peak_tree"]), hats["peak_tree"],
            f"{fmt_bytes(h5['peak_tree'])} (HDF5 writing of the same files, same way)", h5["peak_tree"]),
        row("hats.bytes", "hats", f"bytes per light curve, HATS Parquet data files ({size['rows']:,} rows in "
                                  f"{size['parquet_files']} files, {info['mean_cadences']:.0f} cadences on average)",
            fmt_bytes(size["per_lc"]), size["per_lc"],
            f"{fmt_bytes(size['hdf5_per_lc'])} (HDF5 of the same sector, {size['hdf5_files']} files)",
            size["hdf5_per_lc"],
            f"lossless: {size['checked']} rows compared value for value with the FITS files, "
            f"{size['n_mismatches']} mismatches {size['mismatches']}", mismatches=size["n_mismatches"]),
    ]

    def best(kind: str, path: str, streaming: bool = False, batch_size: int = 0) -> dict:  # the faster of two runs
        return max((ctx.task(read, kind=kind, path=path, batch_size=batch_size, streaming=streaming,
                             cache_dir=str(out / f"cache-{kind}-{streaming}-{batch_size}-{i}")) for i in range(2)),
                   key=lambda r: r["rate"])

    parquet, hdf5 = best("parquet", hats["hats"]), best("hdf5", h5["hdf5"])
    rows.append(row(
        "hats.read_parquet", "hats", "every row through datasets from Parquet (empty cache, then each row as numpy)",
        fmt_rate(parquet["rate"], "rows/s"), parquet["rate"],
        f"{fmt_rate(hdf5['rate'], 'rows/s')} (the HDF5 of the same sector, {hdf5['how']}, same way)", hdf5["rate"],
        f"Parquet: {parquet['how']}, {parquet['load']:.1f} s to load + {parquet['seconds'] - parquet['load']:.1f} s to "
        f"iterate {parquet['rows']:,} rows; HDF5: {hdf5['load']:.1f} s + {hdf5['seconds'] - hdf5['load']:.1f} s; "
        f"loading alone (into the Arrow cache) is {hdf5['load'] / parquet['load']:.2f}x faster from Parquet"))
    parquet_b, hdf5_b = best("parquet", hats["hats"], batch_size=BATCH), best("hdf5", h5["hdf5"], batch_size=BATCH)
    rows.append(row(
        "hats.read_parquet_batches", "hats", f"every row through datasets from Parquet (empty cache, then batches of "
                                             f"{BATCH} rows as numpy)",
        fmt_rate(parquet_b["rate"], "rows/s"), parquet_b["rate"],
        f"{fmt_rate(hdf5_b['rate'], 'rows/s')} (the HDF5 of the same sector, {hdf5_b['how']}, same way)",
        hdf5_b["rate"],
        f"Parquet: {parquet_b['load']:.1f} s to load + {parquet_b['seconds'] - parquet_b['load']:.1f} s to iterate; "
        f"HDF5: {hdf5_b['load']:.1f} s + {hdf5_b['seconds'] - hdf5_b['load']:.1f} s"))
    parquet_s, hdf5_s = best("parquet", hats["hats"], True), best("hdf5", h5["hdf5"], True)
    rows.append(row(
        "hats.stream_parquet", "hats", "every row through datasets from Parquet, streaming=True (each row as numpy)",
        fmt_rate(parquet_s["rate"], "rows/s"), parquet_s["rate"],
        f"{fmt_rate(hdf5_s['rate'], 'rows/s')} (the HDF5 of the same sector, {hdf5_s['how']})", hdf5_s["rate"],
        f"Parquet: {parquet_s['how']}; {parquet_s['rows']:,} rows"))
    try:
        lsdb_run = ctx.task(read_lsdb, path=hats["hats"])
        rows.append(row("hats.lsdb", "hats", "every row through LSDB: lsdb.open_catalog(<hats folder>).compute()",
                        fmt_rate(lsdb_run["rate"], "rows/s"), lsdb_run["rate"],
                        f"{fmt_rate(hdf5['rate'], 'rows/s')} (HDF5 through load_tglc, as above)", hdf5["rate"],
                        f"{lsdb_run['rows']:,} rows in {lsdb_run['seconds']:.1f} s, peak RSS "
                        f"{fmt_bytes(lsdb_run['peak_rss'])}"))
    except Exception as exc:  # noqa: BLE001 - reported in the table, the rest stands
        rows.append(skipped("hats.lsdb", "hats", "every row through LSDB", f"failed: {str(exc).splitlines()[0]}"))
    return rows
