"""The stars catalog (tglc_builder.stars): a join stage over real one-sector builds of overlapping demo sectors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from _release import overlapping_archive, pool
from tglc_builder import layout
from tglc_builder.arguments import BuildArguments
from tglc_builder.errors import UsageError
from tglc_builder.run import run
from tglc_builder.stars import CATALOG, STAGING, STAMP, _alignment, build_stars, open_stars, stars_schema

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 20  # stars per partition: a few dozen partitions, stars near their edges
# sector -> (pool stars it observes, format of its one-sector build)
RELEASE = {1: (np.arange(0, 80), "hdf5"), 2: (np.arange(20, 100), "hats"), 3: (np.arange(50, 90), "both")}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Three one-sector builds (HDF5 seed, HATS, both) of sectors sharing 100 stars; their output folders."""
    base = tmp_path_factory.mktemp("release")
    stars = pool(100)
    outputs = {}
    for sector, (shared, fmt) in RELEASE.items():
        with overlapping_archive(sector, 150, shared, stars) as archive:
            args = BuildArguments(sector=sector, tglc_data_path=base, mast_url=archive.url, format=fmt)
            run(args)
        outputs[sector] = str(args.hdf5_output_dir if fmt == "hdf5" else args.hats_output_dir)
    return base, outputs


@pytest.fixture(scope="module")
def fresh(release, tmp_path_factory):
    base, outputs = release
    path = tmp_path_factory.mktemp("fresh") / "stars"
    summary = build_stars(list(outputs.values()), path, pixel_threshold=THRESHOLD)
    return path, summary


def _table(path: Path) -> pa.Table:
    files = sorted((path / CATALOG / "dataset").rglob("Npix=*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def _fits_curves(base: Path) -> dict[int, list[tuple]]:
    """Every light curve of the release's FITS files: gaia id -> [(sector, camera, ccd, header, table)]."""
    out: dict[int, list[tuple]] = {}
    for sector in RELEASE:
        catalog = base / layout.sector_tag(sector)
        for file in sorted((catalog / "fits_lcs").rglob("*.fits")):
            with fits.open(file) as hdul:
                head = hdul[0].header
                out.setdefault(int(head["GAIADR3"]), []).append(
                    (sector, head["CAMERA"], head["CCD"], hdul[1].header.copy(), np.array(hdul[1].data)))
    return out


def _catalog_rows(base: Path) -> dict[int, list[tuple[int, float, float, int]]]:
    """gaia id -> [(sector, RA, DEC, TIC)] of the sectors' catalogs (the target-list positions)."""
    from tglc_builder.listing import catalog_path
    from astropy.table import Table

    out: dict[int, list] = {}
    for sector in RELEASE:
        table = Table.read(catalog_path(base, sector, False), path="catalog")
        for row in table:
            out.setdefault(int(row["gaiadr3_id"]), []).append((sector, row["RA"], row["DEC"], int(row["TIC_ID"])))
    return out


def _assert_same(got: pa.Table, expected: pa.Table) -> None:
    """Equal tables, value for value and bit for bit (NaN payloads included: Arrow's equals says NaN != NaN)."""
    assert got.column_names == expected.column_names and got.num_rows == expected.num_rows
    for name in expected.column_names:
        a, b = got.column(name).combine_chunks(), expected.column(name).combine_chunks()
        if pa.types.is_struct(b.type):
            assert [f.name for f in a.type] == [f.name for f in b.type], name
            for f in b.type:
                x, y = pc.struct_field(a, f.name), pc.struct_field(b, f.name)
                assert np.array_equal(pc.list_value_length(x), pc.list_value_length(y)), (name, f.name)
                assert pc.list_flatten(x).type == pc.list_flatten(y).type, (name, f.name)
                assert np.array_equal(_bits(pc.list_flatten(x).to_numpy(zero_copy_only=False)),
                                      _bits(pc.list_flatten(y).to_numpy(zero_copy_only=False))), (name, f.name)
        else:
            assert a.cast(b.type).equals(b), name


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def test_catalog_is_strict_valid_with_the_contract_columns(fresh):
    from hats.io.validation import is_valid_catalog
    from tglc_builder.columns import column_set

    path, summary = fresh
    assert is_valid_catalog(path / CATALOG, strict=True)
    assert is_valid_catalog(path, strict=True)
    schema = pq.read_schema(next((path / CATALOG / "dataset").rglob("Npix=*.parquet")))
    assert schema.equals(stars_schema(column_set("seed"), {"tess_flags": "int16", "tglc_flags": "int16"}))
    assert schema.names == ["_healpix_29", "gaiadr3_id", "TIC_ID", "RA", "DEC", "n_sectors", "sectors",
                            "sector_info", "lightcurve"]
    assert [f.name for f in schema.field("sector_info").type] == [
        "sector", "camera", "ccd", "psf_flux_err", "aper_flux_err", "n_cadences"]
    assert str(schema.field("lightcurve").type) == (
        "struct<sector: list<element: int16>, time: list<element: double>, psf_flux: list<element: float>, "
        "aper_flux: list<element: float>, tess_flags: list<element: int16>, tglc_flags: list<element: int16>>")
    orders = {int(p.parent.parent.name.split("=")[1]) for p in (path / CATALOG / "dataset").rglob("Npix=*.parquet")}
    assert len(orders) > 1 and summary.partitions > 3  # adaptive: several orders
    for file in (path / CATALOG / "dataset").rglob("Npix=*.parquet"):
        assert len(pq.read_table(file, columns=["gaiadr3_id"])) <= THRESHOLD


def test_every_value_is_the_fits_value(release, fresh):
    base, _ = release
    path, summary = fresh
    table = _table(path)
    curves, positions = _fits_curves(base), _catalog_rows(base)
    assert table.num_rows == len(positions) == summary.stars
    assert len(np.unique(table.column("gaiadr3_id").to_numpy())) == table.num_rows
    spatial = table.column("_healpix_29").to_numpy()
    shared = 0
    for i, row in enumerate(table.to_pylist()):
        gaia = row["gaiadr3_id"]
        listed = sorted(positions[gaia])
        assert (row["RA"], row["DEC"], row["TIC_ID"]) == listed[0][1:]  # the lowest sector's target list
        files = sorted((c for c in curves[gaia] if c[0] in {s for s, *_ in listed}), key=lambda c: c[:3])
        info = row["sector_info"]
        assert [tuple(x) for x in zip(info["sector"], info["camera"], info["ccd"])] == [c[:3] for c in files]
        assert row["sectors"] == sorted({c[0] for c in files}) and row["n_sectors"] == len(row["sectors"])
        shared += row["n_sectors"] > 1
        assert sum(info["n_cadences"]) == len(row["lightcurve"]["time"])
        start = 0
        one = table.slice(i, 1).column("lightcurve").chunk(0) if table.column("lightcurve").num_chunks == 1 else \
            table.slice(i, 1).column("lightcurve").combine_chunks()
        arrays = {f.name: pc.list_flatten(pc.struct_field(one, f.name)).to_numpy(zero_copy_only=False)
                  for f in one.type}
        for k, (sector, _, _, header, data) in enumerate(files):
            n = len(data)
            assert info["n_cadences"][k] == n
            assert info["psf_flux_err"][k] == header["PSF_ERR"] and info["aper_flux_err"][k] == header["APER_ERR"]
            got = slice(start, start + n)
            for ours, theirs in (("time", "time"), ("psf_flux", "psf_flux"), ("aper_flux", "aperture_flux"),
                                 ("tess_flags", "TESS_flags"), ("tglc_flags", "TGLC_flags")):
                expected = data[theirs].astype(data[theirs].dtype.newbyteorder("="))
                assert np.array_equal(_bits(arrays[ours][got]), _bits(expected)), (gaia, sector, ours)
            assert np.all(arrays["sector"][got] == sector)
            start += n
    assert shared >= 50  # the pool's stars joined across sectors
    assert np.all(np.diff(spatial[:0]) >= 0)


def test_alignment_is_hats_imports(fresh):
    from hats.pixel_math.partition_stats import generate_alignment

    rng = np.random.default_rng(3)
    cells = np.unique(np.concatenate([rng.integers(0, 12 * 4**10, 200), 5_000_000 + rng.integers(0, 300, 400)]))
    stars = rng.integers(1, 4, len(cells)).astype(np.int64)
    ours = _alignment(cells, stars, stars * 1000, 25, "seed")
    histogram = np.zeros(12 * 4**10, np.int64)
    histogram[cells] = stars
    theirs = generate_alignment(histogram, 10, 0, 25)
    assert {(p.order, p.pixel) for p in ours} == {(int(theirs[c][0]), int(theirs[c][1])) for c in cells}


def test_lsdb_id_search_cone_and_crossmatch_across_edges(fresh):
    import lsdb
    from nested_pandas import NestedDtype

    path, _ = fresh
    table = _table(path)
    catalog = lsdb.open_catalog(path)
    assert catalog.margin is not None
    gaia, tic = int(table.column("gaiadr3_id")[5].as_py()), int(table.column("TIC_ID")[5].as_py())
    for column, value in (("gaiadr3_id", gaia), ("TIC_ID", tic)):
        found = catalog.id_search(values={column: value}).compute()
        assert list(found["gaiadr3_id"]) == [gaia]
        assert isinstance(found["lightcurve"].dtype, NestedDtype) and isinstance(found["sector_info"].dtype,
                                                                                 NestedDtype)
        assert len(found["lightcurve"].iloc[0]) == sum(table.column("sector_info")[5]["n_cadences"].as_py())
    ra, dec = table.column("RA").to_numpy(), table.column("DEC").to_numpy()
    cone = catalog.cone_search(43.0, -27.0, 3600).compute()
    expected = _separation(ra, dec, 43.0, -27.0) < 1.0
    assert sorted(cone["gaiadr3_id"]) == sorted(table.column("gaiadr3_id").to_numpy()[expected])
    # every star matches itself, including stars whose partner lies across a partition edge (through the margin)
    matched = catalog.crossmatch(catalog, radius_arcsec=1, n_neighbors=1, suffixes=("_a", "_b")).compute()
    assert len(matched) == table.num_rows
    assert np.array_equal(matched["gaiadr3_id_a"].to_numpy(), matched["gaiadr3_id_b"].to_numpy())
    margin = lsdb.read_hats(path / f"{CATALOG}_10arcs").compute()
    assert len(margin) > 0  # some stars lie within 10 arcsec of a partition edge


def _hats_import_margin(catalog: Path, out: Path) -> Path:
    """The margin cache of ``catalog`` by hats-import's own margin pipeline (the reference for write_margin)."""
    from dask.distributed import Client
    from hats_import.margin_cache.margin_cache_arguments import MarginCacheArguments
    from hats_import.pipeline import pipeline_with_client

    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        pipeline_with_client(MarginCacheArguments(
            input_catalog_path=catalog, output_path=out, output_artifact_name="theirs", margin_threshold=10.0,
            tmp_dir=out / "tmp", progress_bar=False, resume=False), client)
    return out / "theirs"


def _assert_same_margin(ours: Path, theirs: Path, catalog: Path) -> None:
    """Same files; each Parquet file the same schema (metadata included), rows in the same order, codecs and
    encodings; the same partition_info.csv; properties that differ only in who wrote them, when, and the primary
    catalog named relative to the collection."""
    from hats.io.validation import is_valid_catalog

    files = sorted(str(f.relative_to(theirs)) for f in theirs.rglob("*") if f.is_file())
    assert sorted(str(f.relative_to(ours)) for f in ours.rglob("*") if f.is_file()) == files
    for name in files:
        if name.endswith(".parquet") or name.endswith("metadata"):
            a, b = pq.ParquetFile(ours / name), pq.ParquetFile(theirs / name)
            assert a.schema_arrow.equals(b.schema_arrow, check_metadata=True), name
            chunks = [[(m.row_group(g).num_rows,) + tuple((m.row_group(g).column(c).compression,
                                                           m.row_group(g).column(c).encodings)
                                                          for c in range(m.num_columns))
                       for g in range(m.num_row_groups)] for m in (a.metadata, b.metadata)]
            assert chunks[0] == chunks[1], name
            if name.endswith(".parquet"):
                _assert_same(a.read(), b.read())
        elif name == "partition_info.csv":
            assert (ours / name).read_bytes() == (theirs / name).read_bytes()
        else:
            differ = [(x, y) for x, y in zip((ours / name).read_text().splitlines(),
                                             (theirs / name).read_text().splitlines()) if x != y]
            assert [x.split("=")[0] for x, _ in differ] == ["obs_collection", "hats_primary_table_url",
                                                            "hats_builder", "hats_creation_date"][:len(differ)]
            assert f"hats_primary_table_url={catalog.name}" in (ours / name).read_text()
    assert is_valid_catalog(ours, strict=True)


def test_margin_is_hats_imports_row_for_row(fresh, tmp_path):
    """write_margin (by hand, for speed) against hats-import's margin pipeline: on the demo release's catalog, and
    on a catalog of four partitions meeting at a point, where each margin file gathers rows of three partitions."""
    import healpy
    import lsdb
    import pandas as pd
    from tglc_builder.formats.hats import write_margin

    path, _ = fresh
    theirs = _hats_import_margin(path / CATALOG, tmp_path / "demo")
    assert write_margin(tmp_path / "demo" / "ours", path / CATALOG) == 2 == pq.read_metadata(
        theirs / "dataset" / "_metadata").num_rows
    _assert_same_margin(tmp_path / "demo" / "ours", theirs, path / CATALOG)
    _assert_same_margin(path / f"{CATALOG}_10arcs", theirs, path / CATALOG)  # what the build wrote

    # 400 rows around the corner that order-3 pixels 100-103 share, and those of 60 rows around pixel 100's opposite
    # corner that lie in it (the pixels across that corner hold no row: hats' negative tree, which gets a margin too)
    lon, lat = healpy.vec2ang(healpy.boundaries(8, 100, step=1, nest=True).T, lonlat=True)
    rng = np.random.default_rng(5)
    ra = np.concatenate([lon[k] + rng.uniform(-0.01, 0.01, n) / np.cos(np.radians(lat[k])) for k, n in ((0, 400),
                                                                                                       (2, 60))])
    dec = np.concatenate([lat[k] + rng.uniform(-0.01, 0.01, n) for k, n in ((0, 400), (2, 60))])
    keep = (np.arange(460) < 400) | (healpy.ang2pix(8, ra, dec, nest=True, lonlat=True) == 100)
    rows = pd.DataFrame({"gaiadr3_id": np.arange(keep.sum()), "ra": ra[keep], "dec": dec[keep]})
    corner = lsdb.from_dataframe(rows, ra_column="ra", dec_column="dec", lowest_order=2, highest_order=5,
                                 partition_rows=150, margin_threshold=None)
    assert [(p.order, p.pixel) for p in corner.get_healpix_pixels()] == [(3, 100), (3, 101), (3, 102), (3, 103)]
    corner.write_catalog(tmp_path / "corner" / "cat")
    catalog = tmp_path / "corner" / "cat" / "from_lsdb_dataframe"
    theirs = _hats_import_margin(catalog, tmp_path / "corner")
    assert write_margin(tmp_path / "corner" / "ours", catalog) == 791
    _assert_same_margin(tmp_path / "corner" / "ours", theirs, catalog)
    margin = {tuple(row) for row in pd.read_csv(theirs / "partition_info.csv").to_numpy()}
    assert margin > {(3, 100), (3, 101), (3, 102), (3, 103)}  # and pixels of the negative tree
    for pixel in range(100, 104):  # each partition's margin holds rows of the other three
        part = tmp_path / "corner" / "ours" / "dataset" / "Norder=3" / "Dir=0" / f"Npix={pixel}.parquet"
        spatial = pq.read_table(part, columns=["_healpix_29"]).column(0).to_numpy()
        assert sorted(set((spatial >> 52).tolist())) == sorted({100, 101, 102, 103} - {pixel})
    # no row near an edge: an empty margin cache, as hats-import writes it
    ra, dec = healpy.pix2ang(8, 100, nest=True, lonlat=True)
    lone = lsdb.from_dataframe(pd.DataFrame({"id": [0, 1], "ra": [ra, ra], "dec": [dec, dec + 0.01]}),
                               ra_column="ra", dec_column="dec", lowest_order=3, highest_order=3, margin_threshold=None)
    lone.write_catalog(tmp_path / "lone" / "cat")
    catalog = tmp_path / "lone" / "cat" / "from_lsdb_dataframe"
    theirs = _hats_import_margin(catalog, tmp_path / "lone")
    assert write_margin(tmp_path / "lone" / "ours", catalog) == 0
    _assert_same_margin(tmp_path / "lone" / "ours", theirs, catalog)
    assert "hats_nrows=0\n" in (tmp_path / "lone" / "ours" / "hats.properties").read_text()


def _separation(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = map(np.radians, (ra, dec, ra0, dec0))
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_datasets_loads_one_example_per_star_without_the_builder(fresh, tmp_path):
    path, _ = fresh
    import sysconfig

    # -S: no site processing, so the venv's .pth files (the editable install of tglc_builder) are not read
    code = f"""
import sys, pickle
sys.path = [p for p in sys.path if p and not p.startswith({str(REPO)!r})] + [{sysconfig.get_path("purelib")!r}]
try:
    import tglc_builder
    raise SystemExit("tglc_builder importable")
except ImportError:
    pass
import datasets
ds = datasets.load_dataset({str(path)!r}, split="train").with_format("arrow")
pickle.dump(ds.data.table, open({str(tmp_path / "loaded.pkl")!r}, "wb"))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import pickle

    loaded = pickle.load(open(tmp_path / "loaded.pkl", "rb"))
    table = _table(path)
    assert loaded.num_rows == table.num_rows
    by_id = {g: i for i, g in enumerate(loaded.column("gaiadr3_id").to_pylist())}
    rows = loaded.take(pa.array([by_id[g] for g in table.column("gaiadr3_id").to_pylist()]))
    assert loaded.schema.field("gaiadr3_id").type == pa.int64()
    _assert_same(rows, table)  # every value, bit for bit (the test above holds these to the FITS files)


def test_incremental_equals_fresh_and_rewrites_only_changed_partitions(release, fresh, tmp_path):
    _, outputs = release
    path = tmp_path / "stars"
    build_stars([outputs[1], outputs[2]], path, pixel_threshold=THRESHOLD)
    before = {f: f.stat().st_mtime_ns for f in (path / CATALOG / "dataset").rglob("Npix=*.parquet")}
    summary = build_stars([outputs[3]], path)
    assert summary.new_sectors == [3] and summary.sectors == [1, 2, 3]
    assert summary.written < summary.partitions  # the third sector's stars are in a few partitions only
    after = {f: f.stat().st_mtime_ns for f in (path / CATALOG / "dataset").rglob("Npix=*.parquet")}
    kept = [f for f in before if after.get(f) == before[f]]
    assert len(kept) == summary.partitions - summary.written
    _assert_same(_table(path), _table(fresh[0]))
    assert sorted(f.relative_to(path) for f in after) == sorted(
        f.relative_to(fresh[0]) for f in (fresh[0] / CATALOG / "dataset").rglob("Npix=*.parquet"))
    # the margin cache too
    margins = [sorted((p / f"{CATALOG}_10arcs").rglob("*.parquet")) for p in (path, fresh[0])]
    assert [f.relative_to(path) for f in margins[0]] == [f.relative_to(fresh[0]) for f in margins[1]]
    for ours, theirs in zip(*margins):
        _assert_same(pq.read_table(ours), pq.read_table(theirs))
    again = build_stars(list(outputs.values()), path)  # nothing new: nothing written
    assert again.new_sectors == [] and again.written == 0


def test_kill_9_during_the_stage_then_rerun(release, fresh, tmp_path):
    _, outputs = release
    path = tmp_path / "stars"
    code = (f"import logging; from tglc_builder.stars import build_stars; "
            f"build_stars({list(outputs.values())!r}, {str(path)!r}, pixel_threshold={THRESHOLD})")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(6000):  # until the first partitions are staged (not a timing: it waits for a file)
            if list((path / CATALOG / STAGING).rglob("Npix=*.parquet")) or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (path / CATALOG / "hats.properties").exists()
    with pytest.raises(UsageError):
        open_stars(path)
    build_stars(list(outputs.values()), path, pixel_threshold=THRESHOLD)
    _assert_same(_table(path), _table(fresh[0]))
    assert json.loads((path / CATALOG / STAMP).read_text())["phase"] == "finished"
    assert not (path / CATALOG / STAGING).exists()


def test_open_stars_numpy_and_lightkurve(release, fresh):
    base, _ = release
    path, _ = fresh
    curves = _fits_curves(base)
    table = _table(path)
    n = table.column("n_sectors").to_numpy()
    i = int(np.flatnonzero(n == n.max())[0])
    gaia, tic = table.column("gaiadr3_id")[i].as_py(), table.column("TIC_ID")[i].as_py()
    stars = open_stars(path)
    star = stars.get(gaiadr3_id=gaia)
    assert stars.get(tic_id=tic).gaiadr3_id == gaia
    assert star.sectors == sorted(star.by_sector()) and len(star.sectors) == 3
    expected = sorted(curves[gaia], key=lambda c: c[:3])
    assert [(c["sector"], c["camera"], c["ccd"]) for c in star.curves] == [c[:3] for c in expected]
    for c, (*_, data) in zip(star.curves, expected):
        assert np.array_equal(_bits(c["time"]), _bits(data["time"].astype("f8")))
        assert np.array_equal(_bits(c["aper_flux"]), _bits(data["aperture_flux"].astype("f4")))
        assert np.array_equal(c["tglc_flags"], data["TGLC_flags"])
    with pytest.raises(KeyError):
        stars.get(gaiadr3_id=1)
    pytest.importorskip("lightkurve")
    collection = star.to_lightkurve()
    assert len(collection) == len(expected)
    for lc, (sector, _, _, header, data) in zip(collection, expected):
        assert lc.meta["SECTOR"] == sector and lc.meta["TICID"] == tic
        assert np.array_equal(_bits(np.asarray(lc.flux.value, np.float32)), _bits(data["aperture_flux"].astype("f4")))
        assert np.array_equal(np.asarray(lc.quality), data["TESS_flags"])
        assert np.array_equal(np.asarray(lc["tglc_flags"]), data["TGLC_flags"])
        assert np.array_equal(lc.time.value, data["time"].astype("f8"))
        assert np.all(lc.flux_err.value == header["APER_ERR"])
    stitched = collection.stitch()
    assert len(stitched) == sum(len(c[4]) for c in expected)


def test_to_lightkurve_without_lightkurve_says_how_to_install_it(fresh, monkeypatch):
    """Without lightkurve (here: not importable), the numpy arrays work and to_lightkurve names the one-command
    install that keeps hats' pandas (installing lightkurve alone beside hats would downgrade pandas under it)."""
    path, _ = fresh
    table = _table(path)
    star = open_stars(path).get(gaiadr3_id=table.column("gaiadr3_id")[0].as_py())
    monkeypatch.setitem(sys.modules, "lightkurve", None)  # `import lightkurve` raises ImportError
    assert len(star.curves) >= 1 and star.curves[0]["time"].dtype == np.float64
    with pytest.raises(ImportError) as raised:
        star.to_lightkurve()
    assert str(raised.value) == ("to_lightkurve needs lightkurve: pip install 'tglc-builder[lightkurve]' (with hats "
                                 "installed: 'tglc-builder[hats,lightkurve]', in one command)")


def test_a_folder_without_outputs_is_refused(release, tmp_path):
    with pytest.raises(UsageError, match="no finished per-sector output"):
        build_stars([tmp_path], tmp_path / "stars")
    mistyped = tmp_path / "no-such-folder"  # among good ones: refused too, before anything is written
    with pytest.raises(UsageError, match=f"^{mistyped}: no finished per-sector output"):
        build_stars([*release[1].values(), mistyped], tmp_path / "stars")
    assert not (tmp_path / "stars").exists()


def test_cli_stars_after_a_one_sector_build(archive, tmp_path):
    """``--stars`` with an HDF5 seed build at explicit paths: the stars catalog beside the data, one row per star
    of the sector's catalog; a second run adds nothing. A bad threshold is refused with exit 2."""
    from astropy.table import Table

    from conftest import run_env
    from tglc_builder.listing import catalog_path

    script = str(REPO / "build_parent_sample.py")
    args = [script, "-s", "23", "--mast-url", archive.url, "--tiny", "--tglc_data_path", str(tmp_path / "data"),
            "--hdf5_output_path", str(tmp_path / "out"), "--fits_output_path", str(tmp_path / "fits"), "--stars"]
    for _ in range(2):
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=run_env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing to add" in done.stderr
    catalog = Table.read(catalog_path(tmp_path / "data", 23, True), path="catalog")
    stars = _table(tmp_path / "data" / "stars")
    assert sorted(stars.column("gaiadr3_id").to_pylist()) == sorted(int(g) for g in catalog["gaiadr3_id"])
    first = catalog[0]
    star = open_stars(tmp_path / "data" / "stars").get(gaiadr3_id=int(first["gaiadr3_id"]))
    assert [(c["sector"], c["camera"], c["ccd"]) for c in star.curves] == [(23, first["cam"], first["ccd"])]
    bad = subprocess.run([sys.executable, *args, "--stars-pixel-threshold", "0"], cwd=tmp_path, env=run_env(),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--stars-pixel-threshold" in bad.stderr


def test_a_star_twice_in_one_sector_is_two_entries(release, tmp_path):
    """A star listed on two CCDs of one sector (as the per-sector formats keep it: two rows of a pixel file, camera
    and CCD apart) is one row with two entries, in (sector, camera, ccd) order, counted as one sector."""
    import shutil

    from tglc_builder.formats.hats import MARK_KEY, parquet_options

    _, outputs = release
    copy = tmp_path / "hats"
    shutil.copytree(outputs[2], copy)
    file = max((copy / "tglc_s0002" / "dataset").rglob("Npix=*.parquet"), key=lambda f: f.stat().st_size)
    with pq.ParquetFile(file) as pf:
        table, meta = pf.read(), dict(pf.metadata.metadata)
    twin = table.slice(0, 1)
    camera = int(twin.column("camera")[0].as_py())
    twin = twin.set_column(twin.schema.get_field_index("camera"), "camera",
                           pa.array([camera % 4 + 1], pa.int16()))
    # the twin's light curve: the same cadences, other fluxes (another CCD's photometry)
    curve = twin.column("lightcurve").combine_chunks()
    flux = pc.struct_field(curve, "aper_flux")
    halved = pa.ListArray.from_arrays(flux.offsets, pc.multiply(pc.list_flatten(flux), pa.scalar(0.5, pa.float32())))
    fields = [halved if f.name == "aper_flux" else pc.struct_field(curve, f.name) for f in curve.type]
    twin = twin.set_column(twin.schema.get_field_index("lightcurve"), "lightcurve",
                           pa.StructArray.from_arrays(fields, fields=list(curve.type)))
    table = pa.concat_tables([twin, table]).combine_chunks()
    mark = json.loads(meta[MARK_KEY.encode()])
    mark["rows"] = table.num_rows
    with pq.ParquetWriter(file, table.schema, **parquet_options(table.schema)) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({MARK_KEY: json.dumps(mark, sort_keys=True)})
    gaia = int(twin.column("gaiadr3_id")[0].as_py())
    build_stars([copy], tmp_path / "stars")
    star = open_stars(tmp_path / "stars").get(gaiadr3_id=gaia)
    assert star.sectors == [2]
    assert [(c["sector"], c["camera"]) for c in star.curves] == sorted([(2, camera), (2, camera % 4 + 1)])
    first, second = star.curves if camera < camera % 4 + 1 else star.curves[::-1]
    assert np.array_equal(_bits(second["aper_flux"]), _bits(first["aper_flux"] * np.float32(0.5)))
    assert np.array_equal(_bits(first["time"]), _bits(second["time"]))
    row = _table(tmp_path / "stars").filter(pc.field("gaiadr3_id") == gaia)
    assert row.column("n_sectors").to_pylist() == [1]
    assert len(row.column("lightcurve")[0]["time"]) == 2 * int(first["n_cadences"])


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_on_local_processes_and_on_dask_the_same_catalog(release, fresh, tmp_path, where):
    """The units run on the project's executor: two local processes, or a Dask cluster of two worker processes."""
    from tglc_builder.executor import Executor

    _, outputs = release
    if where == "processes":
        with Executor(2) as executor:
            build_stars(list(outputs.values()), tmp_path / "stars", executor, pixel_threshold=THRESHOLD)
    else:
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client, \
                Executor(client=client) as executor:
            build_stars(list(outputs.values()), tmp_path / "stars", executor, pixel_threshold=THRESHOLD)
    _assert_same(_table(tmp_path / "stars"), _table(fresh[0]))


def test_ctrl_c_during_the_stage_then_rerun(release, fresh, tmp_path):
    """SIGINT while partitions are being staged: the stage stops (nothing committed) and a rerun finishes it."""
    _, outputs = release
    path = tmp_path / "stars"
    code = (f"from tglc_builder.executor import Executor; from tglc_builder.stars import build_stars\n"
            f"with Executor(2) as executor:\n"
            f"    build_stars({list(outputs.values())!r}, {str(path)!r}, executor, pixel_threshold={THRESHOLD})")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(6000):  # until the first partitions are staged
        if list((path / CATALOG / STAGING).rglob("Npix=*.parquet")) or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert not (path / CATALOG / "hats.properties").exists()
    assert not (path / CATALOG / STAMP).exists()  # nothing committed
    build_stars(list(outputs.values()), path, pixel_threshold=THRESHOLD)
    _assert_same(_table(path), _table(fresh[0]))


def test_columns_all_from_hdf5_and_the_calibrated_flux_in_lightkurve(archive, tmp_path):
    """An HDF5 build with --columns all: sector_info carries the header values, lightcurve the other series, and
    the lightkurve collection's flux is the calibrated aperture flux by default (any column on request)."""
    args = BuildArguments(sector=23, tglc_data_path=tmp_path / "data", mast_url=archive.url, tiny=True, tiny_size=12,
                          columns="all")
    run(args)
    build_stars([args.hdf5_output_dir], tmp_path / "stars")
    schema = pq.read_schema(next((tmp_path / "stars" / CATALOG / "dataset").rglob("Npix=*.parquet")))
    info = [f.name for f in schema.field("sector_info").type]
    assert info[:6] == ["sector", "camera", "ccd", "psf_flux_err", "aper_flux_err", "n_cadences"]
    assert {"cal_aper_flux_err", "tessmag", "gaia_g", "contamrt"} <= set(info) and "camera" not in info[6:]
    assert [f.name for f in schema.field("lightcurve").type] == [
        "sector", "time", "psf_flux", "aper_flux", "tess_flags", "tglc_flags", "cal_psf_flux", "cal_aper_flux",
        "background", "cadence_num", "aper_flux_raw", "psf_flux_raw"]
    assert {"file_version", "tglcver", "procver"} <= set(info)
    assert str(schema.field("sector_info").type.field("tglcver").type) == "list<element: string>"
    stars = _table(tmp_path / "stars")
    gaia = stars.column("gaiadr3_id")[0].as_py()
    star = open_stars(tmp_path / "stars").get(gaiadr3_id=gaia)
    (curve,) = star.curves
    file = next((args.fits_dir).rglob(f"*gaiaid-{gaia}-*.fits"))
    with fits.open(file) as hdul:
        data, head0, head1 = np.array(hdul[1].data), hdul[0].header, hdul[1].header
    assert (curve["camera"], curve["ccd"]) == (head0["CAMERA"], head0["CCD"])
    assert curve["tessmag"] == head0["TESSMAG"] and curve["cal_aper_flux_err"] == head1["CAPE_ERR"]
    assert np.array_equal(_bits(curve["background"]), _bits(data["background"].astype("f4")))
    assert np.array_equal(curve["cadence_num"], data["cadence_num"])
    assert (curve["file_version"], curve["tglcver"], curve["procver"]) == (1, "", "")  # v1 files carry neither card
    assert np.isnan(curve["aper_flux_raw"]).all() and len(curve["aper_flux_raw"]) == len(data)  # v1: no raw fluxes
    pytest.importorskip("lightkurve")
    (lc,) = star.to_lightkurve()
    assert np.array_equal(_bits(np.asarray(lc.flux.value, np.float32)), _bits(data["cal_aper_flux"].astype("f4")))
    assert np.all(lc.flux_err.value == head1["CAPE_ERR"])
    (psf,) = star.to_lightkurve("psf_flux")
    assert np.array_equal(_bits(np.asarray(psf.flux.value, np.float32)), _bits(data["psf_flux"].astype("f4")))


def test_a_sector_built_again_is_joined_again_and_another_column_set_is_refused_first(archive, tmp_path):
    """A sector's output built again with other rows (12 light curves, then 20) is joined again: the catalog then
    equals a fresh one of the new output; --verify finds a flipped byte in a partition and rebuilds it; a build of
    another --columns into the same stars catalog is refused before anything is fetched."""
    def args(size: int, **more) -> BuildArguments:
        return BuildArguments(sector=23, tglc_data_path=tmp_path / "data", mast_url=archive.url, tiny=True,
                              tiny_size=size, stars=True, **more)

    run(args(12))
    assert len(_table(tmp_path / "data" / "stars")) == 12
    outputs = {f: f.read_bytes() for f in (tmp_path / "data").rglob("*.hdf5")}
    with pytest.raises(UsageError, match="holds a stars catalog of --columns seed; this build is --columns all"):
        run(args(12, columns="all", overwrite=True))
    assert {f: f.read_bytes() for f in (tmp_path / "data").rglob("*.hdf5")} == outputs  # refused before building
    built = args(20, overwrite=True)
    run(built)
    build_stars([built.hdf5_output_dir], tmp_path / "expected")
    _assert_same(_table(tmp_path / "data" / "stars"), _table(tmp_path / "expected"))
    assert len(_table(tmp_path / "data" / "stars")) == 20
    victim = max((tmp_path / "data" / "stars" / CATALOG / "dataset").rglob("Npix=*.parquet"),
                 key=lambda f: f.stat().st_size)
    _flip(victim)
    damaged = victim.read_bytes()
    run(args(20))  # a plain rerun trusts the marks
    assert victim.read_bytes() == damaged
    run(args(20, verify=True))
    assert victim.read_bytes() != damaged
    _assert_same(_table(tmp_path / "data" / "stars"), _table(tmp_path / "expected"))


def _flip(file: Path) -> None:
    """One bit of the file's middle byte flipped, in place (a real damaged file)."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))


def test_a_partition_file_damaged_before_its_seal_is_caught_without_decoding_it(fresh, tmp_path):
    """The check before a partition's seal: its footer reads back, and its bytes on disk hash to those the writer
    gave (a flipped bit in a data page, which the footer does not see, or a truncated file, is caught)."""
    from tglc_builder.formats.base import WriteError, check_digest
    from tglc_builder.formats.hats import parquet_options
    from tglc_builder.stars import _check_and_seal, _HashedFile

    source = sorted((fresh[0] / CATALOG / "dataset").rglob("Npix=*.parquet"))[0]
    table = pq.read_table(source)
    mark = {"plan": "test", "partition": [0, 0], "sha256": "0" * 64, "rows": table.num_rows}

    def written(name: str) -> tuple[Path, str]:
        sink = _HashedFile(tmp_path / name)
        with pq.ParquetWriter(sink, table.schema, **parquet_options(table.schema)) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({"tglc_stars": json.dumps(mark, sort_keys=True)})
        sink.close()
        return tmp_path / name, sink.sha256.hexdigest()

    file, digest = written("whole.parquet")
    _check_and_seal(file, table.schema, mark, digest)
    assert check_digest(file) == digest
    _assert_same(pq.read_table(file), table)
    file, digest = written("flipped.parquet")
    _flip(file)
    assert pq.read_metadata(file).num_rows == table.num_rows  # the footer alone would not see it
    with pytest.raises(WriteError, match=rf"^{file}: its bytes on disk are not those written$"):
        _check_and_seal(file, table.schema, mark, digest)
    file, digest = written("truncated.parquet")
    os.truncate(file, file.stat().st_size - 100)
    with pytest.raises(WriteError, match=rf"^{file}: does not read back \("):
        _check_and_seal(file, table.schema, mark, digest)
    file, digest = written("other.parquet")
    with pytest.raises(WriteError, match=rf"^{file}: its mark, columns or rows are not what was written$"):
        _check_and_seal(file, table.schema, mark | {"rows": 1}, digest)


def _files(path: Path) -> dict[str, int]:
    files = (path / CATALOG / "dataset").rglob("Npix=*.parquet")
    return {str(f.relative_to(path)): f.stat().st_mtime_ns for f in files}


def test_verify_finds_a_flipped_byte_in_a_partition_and_rebuilds_only_it(release, fresh, tmp_path):
    import shutil

    _, outputs = release
    path = tmp_path / "stars"
    shutil.copytree(fresh[0], path)
    before = _files(path)
    victim = sorted(before)[len(before) // 2]
    _flip(path / victim)
    assert build_stars(list(outputs.values()), path).written == 0  # a plain rerun trusts the marks
    with pytest.raises(UsageError, match=rf"{path / victim}: its bytes do not match the SHA-256 of its mark; .*"
                                         r"\(sectors 3 are not in this build\)"):
        build_stars([outputs[1], outputs[2]], path, verify=True)
    index = path / f"{CATALOG}_gaiadr3_id" / "dataset" / "index" / "part.0.parquet"  # made from the partitions
    _flip(index)
    damaged = index.read_bytes()
    summary = build_stars(list(outputs.values()), path, verify=True)
    assert summary.written == 1 and summary.new_sectors == []
    assert index.read_bytes() != damaged  # written again
    gaia = pq.read_table(path / victim, columns=["gaiadr3_id"]).column(0)[0].as_py()
    assert open_stars(path).get(gaiadr3_id=gaia).gaiadr3_id == gaia
    after = _files(path)
    assert sorted(after) == sorted(before) and [f for f in after if after[f] != before[f]] == [victim]
    _assert_same(_table(path), _table(fresh[0]))
    from hats.io.validation import is_valid_catalog

    assert is_valid_catalog(path, strict=True)
    assert build_stars(list(outputs.values()), path, verify=True).written == 0  # whole again


def test_a_sector_built_again_rewrites_exactly_the_partitions_of_its_stars(release, fresh, tmp_path):
    """Sector 3 built again with other stars (40 pool stars, 10 of them others than before): joined again, the
    catalog equals a fresh build of the three outputs, and the partitions rewritten are exactly those (of the new
    layout) holding a star with a sector-3 light curve before or after, or new to the layout."""
    import shutil

    _, outputs = release
    with overlapping_archive(3, 150, np.arange(60, 100), pool(100)) as archive:
        args = BuildArguments(sector=3, tglc_data_path=tmp_path / "again", mast_url=archive.url, format="hats")
        run(args)
    inputs = [outputs[1], outputs[2], str(args.hats_output_dir)]
    path = tmp_path / "stars"
    shutil.copytree(fresh[0], path)
    before = _files(path)
    with3_before = _holding(path, 3)
    summary = build_stars(inputs, path)
    assert summary.new_sectors == [3] and summary.sectors == [1, 2, 3]
    build_stars(inputs, tmp_path / "expected", pixel_threshold=THRESHOLD)
    _assert_same(_table(path), _table(tmp_path / "expected"))
    after = _files(path)
    rewritten = {f for f in after if before.get(f) != after[f]}
    assert rewritten == {f for f in after if f not in before or f in with3_before or f in _holding(path, 3)}
    assert 0 < len(rewritten) < len(after) and summary.written == len(rewritten)
    assert build_stars(inputs, path).written == 0  # the same output again: nothing to join


def _holding(path: Path, sector: int) -> set[str]:
    """The partition files holding a star with a light curve of ``sector``."""
    out = set()
    for f in (path / CATALOG / "dataset").rglob("Npix=*.parquet"):
        sectors = pq.read_table(f, columns=["sectors"]).column(0).to_pylist()
        if any(sector in s for s in sectors):
            out.add(str(f.relative_to(path)))
    return out


MOVED = 60  # a pool star of every sector of RELEASE, whose position differs between sectors in moved_release
EDGE_RA, EDGE_DEC = 41.89435, -27.0  # on the edge of the order-4 pixels 2251 (west) and 2254 (east)


@pytest.fixture(scope="module")
def moved_release(tmp_path_factory):
    """RELEASE, but star MOVED's target-list position is 2 arcsec east of an order-4 pixel edge in sector 1 and
    2 arcsec west of it in sectors 2 and 3: its light curves lie in two pixels' files."""
    import healpy

    base = tmp_path_factory.mktemp("moved")
    outputs, positions = {}, {}
    for sector, (shared, fmt) in RELEASE.items():
        stars = pool(100)
        stars["ra"][MOVED] = EDGE_RA + (0.0006 if sector == 1 else -0.0006)
        stars["dec"][MOVED] = EDGE_DEC
        positions[sector] = (stars["ra"][MOVED], stars["dec"][MOVED])
        with overlapping_archive(sector, 150, shared, stars) as archive:
            args = BuildArguments(sector=sector, tglc_data_path=base, mast_url=archive.url, format=fmt)
            run(args)
        outputs[sector] = str(args.hdf5_output_dir if fmt == "hdf5" else args.hats_output_dir)
    assert [healpy.ang2pix(16, *positions[s], lonlat=True, nest=True) for s in RELEASE] == [2254, 2251, 2251]
    return base, outputs, positions, int(pool(100)["gaia"][MOVED])


def test_a_star_across_a_pixel_edge_is_one_row_in_fresh_and_incremental_builds(moved_release, tmp_path):
    from hats.io.validation import is_valid_catalog

    base, outputs, positions, gaia = moved_release
    path = tmp_path / "fresh"
    build_stars(list(outputs.values()), path, pixel_threshold=THRESHOLD)
    table = _table(path)
    ids = table.column("gaiadr3_id").to_numpy()
    assert len(np.unique(ids)) == len(ids) == len(_catalog_rows(base))  # one row per star, every star
    (row,) = table.filter(pc.field("gaiadr3_id") == gaia).to_pylist()
    assert row["sectors"] == [1, 2, 3] and (row["RA"], row["DEC"]) == positions[1]  # the lowest sector's position
    assert row["sector_info"]["sector"] == [1, 2, 3]
    assert len(row["lightcurve"]["time"]) == sum(row["sector_info"]["n_cadences"])
    assert is_valid_catalog(path, strict=True)
    star = open_stars(path).get(gaiadr3_id=gaia)
    assert [int(c["sector"]) for c in star.curves] == [1, 2, 3]
    # incremental, both ways: the star joins an old row across the edge, or moves across it to its new lowest sector
    for first, then in (([1, 2], [3]), ([2, 3], [1])):
        inc = tmp_path / f"inc{first}"
        build_stars([outputs[s] for s in first], inc, pixel_threshold=THRESHOLD)
        (old,) = _table(inc).filter(pc.field("gaiadr3_id") == gaia).to_pylist()
        assert (old["RA"], old["DEC"]) == positions[first[0]]
        build_stars([outputs[s] for s in then], inc)
        _assert_same(_table(inc), table)
        assert sorted(_files(inc)) == sorted(_files(path))
    # --verify rebuilds a damaged partition holding it, and only that one
    (victim,) = [f for f in _files(path) if gaia in pq.read_table(path / f, columns=["gaiadr3_id"]).column(0)
                 .to_pylist()]
    before = _files(path)
    _flip(path / victim)
    assert build_stars(list(outputs.values()), path, verify=True).written == 1
    after = _files(path)
    assert [f for f in after if after[f] != before[f]] == [victim]
    _assert_same(_table(path), table)
