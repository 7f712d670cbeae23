"""Loading: the HDF5 output through ``load_tglc`` (into the Arrow cache, iterated, streamed), beside a plain h5py
read of the same files, and the same files stored without compression."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..data import ensure_tree
from ..harness import Ctx, Timer, maxrss, task
from ..report import fmt_rate, row
from .convert import check, write_sector

NAME = "loading"
SIZES = {"full": dict(n=10_000), "quick": dict(n=500)}


@task
def load(path: str, cache_dir: str, mode: str) -> dict:
    """``prepare``: load_tglc(path) (into the Arrow cache); ``iterate``: every row of the prepared dataset with
    with_format("numpy", dtype=None); ``stream``: every row of load_tglc(path, streaming=True)."""
    from tglc_builder import load_tglc

    rows = 0
    with Timer() as t:
        if mode == "stream":
            for example in load_tglc(path, streaming=True, cache_dir=cache_dir):
                rows += example["lightcurve"]["time"] is not None
        else:
            ds = load_tglc(path, cache_dir=cache_dir)
            if mode == "iterate":
                for example in ds.with_format("numpy", dtype=None):
                    rows += example["lightcurve"]["time"].dtype == "float64"
            else:
                rows = len(ds)
    return dict(seconds=t.seconds, cpu=t.cpu, rows=rows, rate=rows / t.seconds, peak_rss=maxrss())


@task
def h5_read(files: list[str]) -> dict:
    """The floor: a plain h5py read of every dataset of the same files, rows trimmed to n_cadences as numpy views."""
    import h5py

    from .output_size import seed_series

    names = list(seed_series())
    rows = 0
    with Timer() as t:
        for file in files:
            with h5py.File(file, "r") as h5:
                data = {name: h5[name][()] for name in h5}
            for i, n in enumerate(data["n_cadences"].tolist()):
                _ = [data[name][i, :n] for name in names]
                rows += 1
    return dict(seconds=t.seconds, rows=rows, rate=rows / t.seconds, peak_rss=maxrss())


@task
def uncompressed_copy(src: str, dst: str) -> dict:
    """The same dataset without compression or checksums (contiguous), to show what they cost the loader."""
    import h5py

    for item in Path(src).iterdir():
        if item.is_file():
            shutil.copy(item, Path(dst) / item.name)
    for file in Path(src).glob("TGLC/**/*.hdf5"):
        target = Path(dst) / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(file, "r") as a, h5py.File(target, "w") as b:
            b.attrs.update(a.attrs)
            for name in a:
                b.create_dataset(name, data=a[name][()])
    return dict(bytes=sum(f.stat().st_size for f in Path(dst).glob("TGLC/**/*.hdf5")))


def measure(ctx: Ctx) -> list[dict]:
    info = ensure_tree(ctx, ctx.sizes["n"])
    out = ctx.dir("loading", fresh=True)
    built = ctx.task(write_sector, catalog=info["catalog"], root=info["root"], output_dir=str(out / "built"))
    check(built, info["rows"], "loading: the build")
    hdf5, plain = Path(built["hdf5"]), out / "plain"
    plain.mkdir()
    files = sorted(str(p) for p in hdf5.glob("TGLC/**/*.hdf5"))
    ctx.task(uncompressed_copy, src=str(hdf5), dst=str(plain))
    ref = ctx.task(h5_read, files=files)  # the first read warms the page cache
    ref = ctx.task(h5_read, files=files)

    def best(path: Path, mode: str) -> dict:  # the faster of two runs, alternating, to keep noise out of ratios
        runs = []
        for attempt in range(2):
            cache = out / f"cache-{path.name}-{mode}-{attempt}"  # "prepare" starts from an empty cache
            runs.append(ctx.task(load, path=str(path), cache_dir=str(cache), mode=mode))
        return max(runs, key=lambda r: r["rate"])

    def uncompressed(run: dict, plain_run: dict) -> str:  # wall time, and CPU time (steadier on a shared machine)
        return (f"same files stored uncompressed, without checksums: {plain_run['rate']:,.0f} rows/s (compressed/"
                f"uncompressed {run['rate'] / plain_run['rate']:.2f}x; per CPU-second {run['rows'] / run['cpu']:,.0f} "
                f"against {plain_run['rows'] / plain_run['cpu']:,.0f} rows/s, "
                f"{plain_run['cpu'] / plain_run['rows'] * run['rows'] / run['cpu']:.2f}x)")

    prep, prep_plain = best(hdf5, "prepare"), best(plain, "prepare")
    stream, stream_plain = best(hdf5, "stream"), best(plain, "stream")
    it = ctx.task(load, path=str(hdf5), cache_dir=str(out / f"cache-{hdf5.name}-prepare-0"), mode="iterate")
    reference = f"{fmt_rate(ref['rate'], 'rows/s')} (plain h5py read of the same files)"
    where = f"{prep['rows']:,} rows, {len(files)} files"
    return [
        row("loading.prepare", "loading", f"load_tglc(path) first call: HDF5 -> Arrow cache ({where})",
            fmt_rate(prep["rate"], "rows/s"), prep["rate"], reference, ref["rate"],
            uncompressed(prep, prep_plain),
            vs_uncompressed=prep["rate"] / prep_plain["rate"]),
        row("loading.iterate", "loading", "iterate the prepared dataset, with_format(\"numpy\", dtype=None)",
            fmt_rate(it["rate"], "rows/s"), it["rate"], reference, ref["rate"],
            "reads the Arrow cache, so it does not depend on the HDF5 layout"),
        row("loading.stream", "loading", "load_tglc(path, streaming=True), every row",
            fmt_rate(stream["rate"], "rows/s"), stream["rate"], reference, ref["rate"],
            uncompressed(stream, stream_plain),
            vs_uncompressed=stream["rate"] / stream_plain["rate"]),
    ]
