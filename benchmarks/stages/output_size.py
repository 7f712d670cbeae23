"""Output size: bytes per light curve in the HDF5 output, checked lossless against the FITS files, and the one real
TGLC file under the same filters."""

from __future__ import annotations

import os
from pathlib import Path

from ..data import ensure_tree, read_catalog
from ..harness import N_CADENCES, RAW_BYTES_PER_CADENCE, REPO, Ctx, task
from ..report import fmt_bytes, row
from .convert import build_pixel

NAME = "output_size"
SIZES = {"full": dict(n=20_000), "quick": dict(n=1_000)}
REAL_NAME = "hlsp_tglc_tess_ffi_gaiaid-6399196263939178880-s0001-cam2-ccd1_tess_v1_llc.fits"
REAL_FILES = (REPO / "tests" / "data" / REAL_NAME, REPO.parent / "shared" / "data" / REAL_NAME)


def seed_series():
    from tglc_builder.columns import column_set

    return {s.name: s.fits_column for s in column_set("seed").series}


@task
def hdf5_size(files: list[str], catalog: str, root: str, sample: int = 200) -> dict:
    """Bytes per light curve on disk, a lossless check of a sample of rows against the reader, and the same
    filters applied to the one real TGLC file we have."""
    import h5py
    import numpy as np
    from tglc_builder.reader import read_tglc

    table = read_catalog(catalog)
    by_gaia = {int(g): p for g, p in zip(table["gaiadr3_id"], table["path"])}
    size = sum(os.path.getsize(f) for f in files)
    rows, checked, mismatches, cadences = 0, 0, [], 0
    columns = seed_series()
    filters = None
    for file in files:
        with h5py.File(file, "r") as h5:
            n = len(h5["gaiadr3_id"])
            rows += n
            cadences += int(h5["n_cadences"][()].sum())
            if filters is None:
                filters = {name: dict(compression=h5[name].compression, compression_opts=h5[name].compression_opts,
                                      shuffle=h5[name].shuffle, fletcher32=h5[name].fletcher32,
                                      chunks=h5[name].chunks) for name in columns}
                filters["_describe"] = ", ".join(
                    f"{name} {h5[name].compression}" + (f"({h5[name].compression_opts})"
                                                        if h5[name].compression_opts else "")
                    + ("+shuffle" if h5[name].shuffle else "") for name in columns) \
                    + f", Fletcher32 {'on' if h5['time'].fletcher32 else 'off'}, chunks {h5['time'].chunks}"
            for i in np.linspace(0, n - 1, min(n, max(1, sample // len(files)))).astype(int).tolist():
                lc = read_tglc(os.path.join(root, by_gaia[int(h5["gaiadr3_id"][i])]))
                m = int(h5["n_cadences"][i])
                for name, col in columns.items():
                    stored, source = h5[name][i], lc.data[col]
                    same = (len(source) == m and np.array_equal(stored[:m], source.astype(stored.dtype), equal_nan=True)
                            and (np.isnan(stored[m:]).all() if stored.dtype.kind == "f" else not stored[m:].any()))
                    if not same:
                        mismatches.append(f"{file}[{i}].{name}")
                checked += 1

    real = None
    sample_file = next((f for f in REAL_FILES if f.exists()), None)
    if sample_file is not None and filters:
        lc = read_tglc(sample_file)
        dtypes = {}
        with h5py.File(files[0], "r") as h5:
            dtypes = {name: h5[name].dtype for name in columns}
        scratch = Path(files[0]).parent / "real-sample.hdf5.bench"
        with h5py.File(scratch, "w") as h5:
            real = 0
            for name, col in columns.items():
                values = lc.data[col].astype(dtypes[name])[None, :]
                f = filters[name]
                d = h5.create_dataset(name, data=values, chunks=(1, values.shape[1]) if f["chunks"] else None,
                                      compression=f["compression"], compression_opts=f["compression_opts"],
                                      shuffle=f["shuffle"], fletcher32=f["fletcher32"])
                real += d.id.get_storage_size()
        scratch.unlink()
        real = dict(bytes=real, cadences=len(lc.data))
    return dict(bytes=size, rows=rows, per_lc=size / rows, mean_cadences=cadences / rows, checked=checked,
                mismatches=mismatches[:10], n_mismatches=len(mismatches), filters=filters and filters["_describe"],
                real=real)


def measure(ctx: Ctx) -> list[dict]:
    info = ensure_tree(ctx, ctx.sizes["n"])
    files = sorted(str(p) for p in (ctx.scratch / "convert" / "one-pixel").glob("**/*.hdf5"))
    if not files:  # the convert stage did not run in this invocation
        files = ctx.task(build_pixel, catalog=info["catalog"], root=info["root"],
                         output_dir=str(ctx.dir("output_size", fresh=True)))["files"]
    r = ctx.task(hdf5_size, files=files, catalog=info["catalog"], root=info["root"])
    raw = N_CADENCES * RAW_BYTES_PER_CADENCE
    rows = [row("output_size.hdf5", "output size",
                f"bytes per {N_CADENCES}-cadence light curve on disk (synthetic sector, {r['rows']:,} rows in one "
                f"pixel, {r['mean_cadences']:.0f} cadences on average; {r['filters']})",
                fmt_bytes(r["per_lc"]), r["per_lc"], f"{fmt_bytes(raw)} (raw arrays: f8 + 2 f4 + 2 i2 per cadence)",
                raw, f"lossless: {r['checked']} rows compared value for value with the FITS files, "
                     f"{r['n_mismatches']} mismatches {r['mismatches']}", mismatches=r["n_mismatches"])]
    if r["real"]:
        real_raw = r["real"]["cadences"] * RAW_BYTES_PER_CADENCE
        rows.append(row("output_size.real", "output size",
                        f"the one real TGLC file (sector 1, {r['real']['cadences']} cadences) under the same filters: "
                        "storage bytes of its five arrays", fmt_bytes(r["real"]["bytes"]), r["real"]["bytes"],
                        f"{fmt_bytes(real_raw)} (raw arrays)", real_raw,
                        "real noise compresses differently from synthetic; one file only"))
    return rows
