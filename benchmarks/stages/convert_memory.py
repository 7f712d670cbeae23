"""Convert memory: peak RSS of one pixel's conversion as the pixel grows (it must stay flat): the build cuts a large
pixel into shards of at most ``plan.rows_per_shard`` rows, so memory is bounded by a shard, not a pixel."""

from __future__ import annotations

import shutil

from ..data import ensure_tree
from ..harness import N_CADENCES, RAW_BYTES_PER_CADENCE, Ctx
from ..report import fmt_bytes, row
from .convert import build_pixel, check

NAME = "convert_memory"
SIZES = {"full": dict(rows=(10_000, 30_000, 100_000), distinct=500),
         "quick": dict(rows=(1_000, 3_000), distinct=100)}


def measure(ctx: Ctx) -> list[dict]:
    info = ensure_tree(ctx, ctx.sizes["distinct"])
    results = []
    for k in ctx.sizes["rows"]:
        out = ctx.dir("memory", str(k), fresh=True)
        result = ctx.task(build_pixel, catalog=info["catalog"], root=info["root"], output_dir=str(out), repeat_to=k)
        check(result, k, f"convert {k} rows")
        results.append((k, result))
        shutil.rmtree(out)
    rows = []
    first_k, first = results[0]
    for k, r in results:
        raw = k * N_CADENCES * RAW_BYTES_PER_CADENCE
        largest = k == results[-1][0]
        growth = (r["peak_rss"] - first["peak_rss"]) / max(k - first_k, 1) * 10_000
        rows.append(row(
            "convert_memory.largest" if largest else f"convert_memory.{k}", "convert memory",
            f"peak RSS, units.build_unit on a pixel of {k:,} light curves ({info['rows']} distinct files, repeated; "
            f"{r['shards']} shard(s) of <= {r['shard_rows']:,} rows in {r['units']} unit(s), as a build plans it)",
            fmt_bytes(r["peak_rss"]), r["peak_rss"], f"{fmt_bytes(raw)} (the pixel's raw arrays)", raw,
            f"{r['rate']:,.0f} /s; before converting (python + imports + catalog): {fmt_bytes(r['base_rss'])}"
            + (f"; growth {fmt_bytes(max(growth, 0))} per 10,000 rows since {first_k:,}" if k != first_k else "")))
    return rows
