"""A small synthetic release for the stars tests: demo sectors whose stars recur, built by real one-sector builds.

The demo draws each sector's stars from its own seed, so different sectors share none. Here some objects of each
sector are replaced by stars of a common pool (same Gaia id, TIC id and position in every sector, each on the
camera/CCD it already had), before the archive starts: the light curves are still the demo's, made by its code."""

from __future__ import annotations

import numpy as np

from tglc_builder.demo import LocalArchive

POOL_SEED = 4242


def pool(n: int) -> dict[str, np.ndarray]:
    """``n`` stars shared by the sectors: ids, TIC ids and positions (a patch of sky, so they cluster in a few
    HEALPix pixels and some lie near partition edges)."""
    rng = np.random.default_rng(POOL_SEED)
    return {"gaia": rng.integers(10**18, 6 * 10**18, n, dtype=np.int64),
            "tic": rng.integers(1, 2_000_000_000, n, dtype=np.int64),
            "ra": 40.0 + 6.0 * rng.random(n), "dec": -30.0 + 6.0 * rng.random(n)}


def overlapping_archive(sector: int, n: int, shared: np.ndarray, stars: dict[str, np.ndarray],
                        seed: int = 1) -> LocalArchive:
    """A demo archive of ``sector`` whose first ``len(shared)`` objects are the pool stars ``shared``."""
    archive = LocalArchive(sector=sector, n=n, seed=seed)
    s = archive.sector
    k = len(shared)
    s.gaia_ids = s.gaia_ids.copy()
    s.gaia_ids[:k] = stars["gaia"][shared]
    assert len(np.unique(np.concatenate([s.gaia_ids, s.unserved_gaia_ids]))) == n + len(s.unserved_gaia_ids)
    s.tic_ids[:k] = stars["tic"][shared]
    s.ra[:k], s.dec[:k] = stars["ra"][shared], stars["dec"][shared]
    s._sorted = np.argsort(s.gaia_ids)
    return archive
