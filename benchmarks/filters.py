"""HDF5 flux filters, before (LZF + shuffle, not deterministic) against the deterministic ones chosen in
formats/hdf5.py (shuffle + libdeflate's DEFLATE, chunks written whole): bytes per light curve and light curves per
CPU second of ``units.build_unit`` on one pixel of the demo sector, alternately, best of ``--repeat`` runs each.

    PYTHONPATH=. python benchmarks/filters.py --n 4000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _build(catalog: str, root: str, out: str, old: bool) -> tuple[float, int, int]:
    import numpy as np
    from tglc_builder import plan, units
    from tglc_builder.formats import hdf5

    saved = hdf5._new_dataset, hdf5._write_series
    if old:  # the filters of before: HDF5's LZF for the fluxes, its DEFLATE for the times, all written through h5py
        lzf = {"compression": "lzf", "shuffle": True, "fletcher32": True}
        hdf5._new_dataset = lambda h5, name, dtype, width, chunks, pad, filters: saved[0](
            h5, name, dtype, width, chunks, pad, lzf if dtype == np.float32 else filters)
        hdf5._write_series = lambda dset, chunks, start, values, pad: hdf5._write_rows(dset, start, values)
    try:
        from benchmarks.data import read_catalog
        from benchmarks.stages.convert import unit_settings

        table = read_catalog(catalog)
        table["healpix"] = int(table["healpix"][0])
        shards = plan.plan_shards(table, plan.rows_per_shard(23))
        settings, writers = unit_settings(root, out)
        work = plan.work_units(plan.make_plan(shards, writers, overwrite=True).pending, 1, plan.unit_rows(23))
        cpu = time.process_time()
        rows = sum(units.build_unit(unit, settings).written for unit in work)
        cpu = time.process_time() - cpu
        size = sum(f.stat().st_size for f in Path(out).rglob("*.hdf5"))
        return cpu, rows, size
    finally:
        hdf5._new_dataset, hdf5._write_series = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from benchmarks.data import gen_tree

    with tempfile.TemporaryDirectory() as scratch:
        info = gen_tree(args.n, scratch)
        best: dict[bool, tuple[float, int, int]] = {}
        for run in range(args.repeat):
            for old in (True, False):
                out = os.path.join(scratch, f"out-{old}-{run}")
                cpu, rows, size = _build(info["catalog"], info["root"], out, old)
                if old not in best or cpu < best[old][0]:
                    best[old] = (cpu, rows, size)
        for old, (cpu, rows, size) in best.items():
            print(f"{'LZF + shuffle (before)' if old else 'libdeflate + shuffle (now)':30s} {rows / cpu:7.0f} "
                  f"light curves per CPU s, {size / rows / 1000:5.2f} KB per light curve ({rows} rows, "
                  f"{info['mean_cadences']:.0f} cadences on average)")
        speed, size = best[True][0] / best[False][0], best[False][2] / best[True][2]
        print(f"ratio now/before: speed {speed:.3f}, size {size:.3f}")


if __name__ == "__main__":
    main()
