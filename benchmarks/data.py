"""Synthetic sectors on disk, generated in processes of their own (never inside a measured one).

A *tree* is a sector in MAST's layout (``download_scripts/``, ``target_lists/``, ``s0023/camC-ccdD/...``): what a
local mirror holds, and what a build's ``fits_output_path`` holds once everything is downloaded. Beside it, the
sector's catalog as a build saves it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .harness import SECTOR, Ctx, Timer, demo_sector, task


def _write_listings(sector, root: Path) -> dict:
    from tglc_builder import layout

    bulk, targets = root / layout.bulk_script_relpath(SECTOR), root / layout.target_list_relpath(SECTOR)
    with Timer() as t:  # what the demo archive takes to make both listings of this sector
        bulk_text, target_text = sector.bulk_script(), sector.target_list()
    for path, text in ((bulk, bulk_text), (targets, target_text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    return dict(bulk=str(bulk), targets=str(targets), bulk_lines=bulk_text.count(b"\n"), bulk_bytes=len(bulk_text),
                target_bytes=len(target_text), expected=int(len(sector.expected_catalog_indices())),
                generated_in=t.seconds)


@task
def gen_listings(n: int, directory: str) -> dict:
    """The two listings of a synthetic sector of ``n`` objects, in MAST's layout under ``directory``."""
    return _write_listings(demo_sector(n), Path(directory))


@task
def gen_tree(n: int, directory: str, everything: bool = False) -> dict:
    """A synthetic sector of ``n`` objects in MAST's layout under ``directory/tree`` (the catalog's light curves,
    or with ``everything`` every served one, as a mirror holds them), and its catalog in ``directory``."""
    import numpy as np
    from tglc_builder import listing

    out = Path(directory)
    root = out / "tree"
    sector = demo_sector(n)
    info = _write_listings(sector, root)
    catalog = listing.build_catalog(listing.parse_bulk_script(info["bulk"], SECTOR),
                                    listing.read_target_list(info["targets"]), SECTOR)
    index = {g: i for i, g in enumerate(sector.gaia_ids.tolist())}
    wanted = np.arange(sector.n) if everything else np.array([index[g] for g in catalog["gaiadr3_id"].tolist()])
    generating = 0.0
    files = sector.fits_files(wanted)
    made = set()
    started = time.perf_counter()
    for i, data in files:
        generating += time.perf_counter() - started
        dest = root / sector.relpath(i)
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        dest.write_bytes(data)
        started = time.perf_counter()
    path = out / "catalog.hdf5"
    listing.save_catalog(catalog, path)
    fits_bytes = sum((root / p).stat().st_size for p in catalog["path"])
    return dict(root=str(root), catalog=str(path), rows=len(catalog), fits_bytes=fits_bytes, files=len(wanted),
                pixels=int(len(set(catalog["healpix"].tolist()))), ms_per_file=1000 * generating / len(wanted),
                mean_cadences=float(np.mean([sector.n_cadences(int(c), int(d))
                                             for c, d in zip(catalog["cam"], catalog["ccd"])])))


def ensure_tree(ctx: Ctx, n: int) -> dict:
    """A synthetic sector of ``n`` objects on disk (generated once per run, shared by the stages)."""
    directory = ctx.scratch / f"sector-{n}"
    done = directory / "info.json"
    if not done.exists():
        info = ctx.task(gen_tree, n=n, directory=str(directory))
        done.write_text(json.dumps(info))
    return json.loads(done.read_text())


def read_catalog(path: str):
    from astropy.table import Table

    return Table.read(path, path="catalog")


def sector_fits_bytes(n: int, catalog) -> int:
    """The bytes of the catalog's FITS files as the demo archive serves them (each CCD's files are one size)."""
    sector = demo_sector(n)
    first = {}
    for i, (cam, ccd) in enumerate(zip(sector.cam.tolist(), sector.ccd.tolist())):
        first.setdefault((cam, ccd), i)
    size = {key: len(sector.fits_bytes(i)) for key, i in first.items()}
    return sum(size[(int(c), int(d))] for c, d in zip(catalog["cam"], catalog["ccd"]))
