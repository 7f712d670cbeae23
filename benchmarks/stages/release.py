"""Release: builds of several sectors of the demo release (``python -m tglc_builder.demo --sectors 1-4``, over HTTP
on 127.0.0.1, 0 ms per file), by the command line as a user runs it:

- one 4-sector build (``-s 1-4``: per-sector HDF5 and the stars catalog) against the four one-sector builds
  (``-s 1`` ... ``-s 4``) plus the stars stage alone on their outputs (``build_stars``, ``-n 2`` as the builds),
  wall and CPU time of every process;
- a ``--targets`` build of 100 stars in the 4 sectors, with the archive in the measuring process so that its request
  counters can be read: the requests must be exactly the 8 listings and the chosen stars' light curves, each once;
  then the same build into new output folders with the listings cached (the same ``--tglc_data_path``)."""

from __future__ import annotations

from pathlib import Path

from ..harness import BenchError, Ctx, archive_process, run_cli, task
from ..report import fmt_bytes, row

NAME = "release"
SIZES = {"full": dict(sectors=4, n=2500, targets=100), "quick": dict(sectors=4, n=500, targets=100)}


def _stars_alone(outputs: list[str], stars: str) -> str:
    return f"from tglc_builder.stars import build_stars; build_stars({outputs!r}, {stars!r}, n_processes=2)"


@task
def targets_build(directory: str, sectors: int, n: int, targets: int) -> dict:
    """The archive in this process (its counters), the build as a user runs it (a subprocess)."""
    import numpy as np

    from tglc_builder import layout
    from tglc_builder.demo import LocalArchive

    work = Path(directory)
    archive = LocalArchive(sectors=list(range(1, sectors + 1)), n=n)
    release = archive.release
    # Targets: half from the polar cap (a light curve in every sector, one of them twice), half stars of one sector
    listed = {s: sec.gaia_ids[sec.expected_catalog_indices()] for s, sec in release.items()}
    everywhere = sorted(set.intersection(*(set(v.tolist()) for v in listed.values())))
    once = sorted(set(np.concatenate(list(listed.values())).tolist()) - set(everywhere))
    rng = np.random.default_rng(7)
    chosen = np.concatenate([rng.choice(everywhere, min(len(everywhere), targets // 2), replace=False),
                             rng.choice(once, targets - min(len(everywhere), targets // 2), replace=False)])
    chosen_set = set(chosen.tolist())
    (work / "targets.csv").write_text("gaiadr3_id\n" + "".join(f"{g}\n" for g in chosen.tolist()))
    expected_fits = {sec.relpath(i) for sec in release.values() for i in sec.expected_catalog_indices()
                     if int(sec.gaia_ids[i]) in chosen_set}
    expected_listings = {p for s in release for p in (layout.bulk_script_relpath(s), layout.target_list_relpath(s))}
    out = {}
    with archive:
        for run, extra in (("first", []), ("cached", [
                "--hdf5_output_path", str(work / "cached" / "s{sector:04d}" / "hdf5"),
                "--fits_output_path", str(work / "cached" / "s{sector:04d}" / "fits"),
                "--stars_output_path", str(work / "cached" / "stars")])):
            before = dict(archive._requests)
            cli = run_cli(["-s", f"1-{sectors}", "--mast-url", archive.url, "-n", "2", "--targets",
                           str(work / "targets.csv"), "--tglc_data_path", str(work / "data"), "--clean-fits",
                           *extra], work / run)
            asked = {p: k - before.get(p, 0) for p, k in archive._requests.items() if k > before.get(p, 0)}
            fits = {p: k for p, k in asked.items() if p.endswith(".fits")}
            listings = {p: k for p, k in asked.items() if not p.endswith(".fits")}
            out[run] = dict(cli, stars_seconds=_stars_seconds(work / run / "cli.log"), fits=len(fits),
                            fits_requests=sum(fits.values()), listings=sorted(listings),
                            unexpected=sorted(set(fits) - expected_fits)[:5]
                            + sorted(set(listings) - expected_listings),
                            missing=len(expected_fits - set(fits)), repeated=sum(k > 1 for k in fits.values()))
    out.update(expected_fits=len(expected_fits), expected_listings=len(expected_listings), chosen=len(chosen),
               polar=min(len(everywhere), targets // 2))
    return out


def _stars_seconds(log: Path) -> float:
    """Seconds from the build's last per-sector summary to its end (the stars stage), from its log's timestamps
    (whole seconds)."""
    import re
    from datetime import datetime

    stamps = [(datetime.strptime(m.group(1), "%H:%M:%S"), line) for line in log.read_text().splitlines()
              if (m := re.match(r"(\d\d:\d\d:\d\d) ", line))]
    ends = [t for t, line in stamps if "All " in line and " sectors: " in line]
    return (stamps[-1][0] - ends[-1]).total_seconds() if ends else float("nan")


def measure(ctx: Ctx) -> list[dict]:
    sizes = ctx.sizes
    k, n = sizes["sectors"], sizes["n"]
    work = ctx.dir("release", fresh=True)
    with archive_process(ctx, n, 0.0, sectors=f"1-{k}") as url:
        common = ["--mast-url", url, "-n", "2", "--clean-fits"]
        many = run_cli(["-s", f"1-{k}", "--tglc_data_path", str(work / "many"), *common], work / "many")
        ones = [run_cli(["-s", str(s), "--tglc_data_path", str(work / "ones"), *common], work / f"one{s}")
                for s in range(1, k + 1)]
    outputs = [str(work / "ones" / f"s{s:04d}" / "MultimodalUniverse") for s in range(1, k + 1)]
    alone = run_cli([_stars_alone(outputs, str(work / "ones" / "stars"))], work / "alone", program="-c")
    parts = [*ones, alone]
    wall, cpu = sum(p["seconds"] for p in parts), sum(p["cpu"] for p in parts)
    rows = [
        row("release.many_sectors", "release", f"wall time: one {k}-sector build (-s 1-{k}, -n 2, HDF5 and the stars "
            f"catalog; {n:,} light curves per sector, demo release over HTTP, 0 ms per file)",
            f"{many['seconds']:.1f} s", many["seconds"], f"{wall:.1f} s (the {k} one-sector builds, "
            f"{' + '.join(format(p['seconds'], '.1f') for p in ones)} s, plus the stars stage alone, "
            f"{alone['seconds']:.1f} s)", wall,
            f"CPU time of every process: {many['cpu']:.1f} core-s against {cpu:.1f} ({many['cpu'] / cpu:.2f}x); "
            f"peak memory of all processes together {fmt_bytes(many['peak_tree'])}, largest process "
            f"{fmt_bytes(many['peak_single'])}. Command: `{many['command'].replace(str(work), 'WORK')}`",
            cpu_ratio=many["cpu"] / cpu),
    ]
    t = ctx.task(targets_build, directory=str(ctx.dir("release", "targets", fresh=True)), sectors=k, n=n,
                 targets=sizes["targets"])
    first, cached = t["first"], t["cached"]
    if first["missing"] or cached["missing"]:
        raise BenchError(f"the targets build did not fetch {first['missing']} / {cached['missing']} of the chosen "
                         "stars' light curves")
    wrong = len(first["unexpected"]) + first["repeated"] + (len(first["listings"]) != t["expected_listings"])
    rows += [
        row("release.targets_requests", "release", f"requests to the archive: --targets of {t['chosen']} stars "
            f"({t['polar']} of the polar cap, in every sector) in {k} sectors ({n:,} light curves each), first run",
            f"{len(first['listings'])} listings + {first['fits_requests']} light curves",
            len(first["listings"]) + first["fits_requests"],
            f"{t['expected_listings']} listings + {t['expected_fits']} light curves (the chosen stars' in the "
            "listings)", t["expected_listings"] + t["expected_fits"],
            f"requests for other files or listings: {first['unexpected'] or 'none'}; light curves asked more than "
            f"once: {first['repeated']}; {first['seconds']:.1f} s wall, {first['cpu']:.1f} core-s",
            wrong=wrong),
        row("release.targets_cached", "release", "wall time: the same --targets build into new output folders, "
            "listings cached (same --tglc_data_path)", f"{cached['seconds']:.1f} s", cached["seconds"],
            f"{first['seconds']:.1f} s (the first run, listings fetched)", first["seconds"],
            f"{cached['cpu']:.1f} core-s; of the wall time, ~{cached['stars_seconds']:.0f} s are the stars stage (from "
            f"the log's timestamps; ~{first['stars_seconds']:.0f} s in the first run), mostly its fixed cost: "
            "hats-import's margin pipeline compiles its numba code in every new process; requests: "
            f"{len(cached['listings'])} listings, {cached['fits_requests']} "
            f"light curves ({cached['fits']} files); peak memory of all processes {fmt_bytes(cached['peak_tree'])}"),
    ]
    return rows
