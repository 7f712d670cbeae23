"""The HATS writer on real blocks of real FITS files: a collection hats accepts (strict), LSDB opens, cone-searches
and cross-matches, and ``datasets`` loads, with the FITS values bit for bit; resume, corruption and write failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import healpy
from astropy.io import fits
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("hats")

from _blocks import Sector, blocks, build, plan_shards, single_file_sector, synthetic_sector, write_shard  # noqa: E402
from conftest import SAMPLE  # noqa: E402
from tglc_builder import layout  # noqa: E402
from tglc_builder.columns import FROM_FILE_NAME, STRING, column_set  # noqa: E402
from tglc_builder.errors import UsageError  # noqa: E402
from tglc_builder.formats.base import WriteError, check_digest, write_error  # noqa: E402
from tglc_builder.formats.hats import (DIR_SUFFIX, FILE_SUFFIX, MARK_KEY, HatsWriter, catalog_name,  # noqa: E402
                                       parquet_options, read_mark, verify_file)
from tglc_builder.reader import read_tglc  # noqa: E402

TESTS = Path(__file__).resolve().parent
SEED, ALL = column_set("seed"), column_set("all")
CLUSTER = 150  # rows of the synthetic sector moved into one pixel, so that a pixel has many rows


def _clustered(sector: Sector) -> tuple[Sector, int]:
    """The sector with its first CLUSTER objects placed within 0.4 degrees of one pixel's centre (catalog
    positions come from the target list, not the FITS files, so the files stay as served)."""
    pixel = int(sector.healpix[0])
    ra0, dec0 = healpy.pix2ang(16, pixel, nest=True, lonlat=True)
    rng = np.random.default_rng(11)
    ra, dec = sector.ra.copy(), sector.dec.copy()
    dec[:CLUSTER] = dec0 + rng.uniform(-0.4, 0.4, CLUSTER)
    ra[:CLUSTER] = ra0 + rng.uniform(-0.4, 0.4, CLUSTER) / np.cos(np.radians(dec[:CLUSTER]))
    clustered = replace(sector, ra=ra, dec=dec)
    assert np.all(clustered.healpix[:CLUSTER] == pixel)
    return clustered, pixel


@pytest.fixture(scope="module")
def sector(tmp_path_factory) -> Sector:
    """200 synthetic sector-23 light curves (1,252-1,282 cadences), 150 of them in one pixel."""
    return _clustered(synthetic_sector(tmp_path_factory.mktemp("fits"), sector=23, n=200, seed=3))[0]


@pytest.fixture(scope="module")
def one_file_build(sector, tmp_path_factory) -> tuple[HatsWriter, list]:
    """Every pixel one shard: the standard layout, Npix=<p>.parquet with _metadata."""
    writer = HatsWriter(tmp_path_factory.mktemp("hats") / "collection", 23, SEED)
    shards = plan_shards(sector)
    build(writer, shards, sector.fits_dir)
    return writer, shards


@pytest.fixture(scope="module")
def split_build(sector, tmp_path_factory) -> tuple[HatsWriter, list]:
    """The 150-row pixel cut into 4 shards: every pixel a directory of shard files."""
    writer = HatsWriter(tmp_path_factory.mktemp("hats") / "collection", 23, SEED)
    shards = plan_shards(sector, rows_per_shard=40)
    assert max(s.count for s in shards) == 4
    build(writer, shards, sector.fits_dir)
    return writer, shards


@pytest.mark.parametrize("build_name", ["one_file_build", "split_build"])
def test_catalog_metadata_is_what_hats_writes(build_name, request, tmp_path):
    """finish() writes the catalog's metadata without hats (its import cost the driver ~1 CPU-s and 176 MB): every
    file is byte for byte what hats' own functions write from the same pixel files (the properties but for the
    minute they are stamped with)."""
    import re
    import shutil

    from hats.catalog.dataset.collection_properties import CollectionProperties
    from hats.catalog.dataset.table_properties import TableProperties
    from hats.catalog.partition_info import PartitionInfo
    from hats.io.file_io import write_fits_image
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math.healpix_pixel import HealpixPixel
    from tglc_builder import __version__
    from tglc_builder.formats.hats import SKYMAP_ORDER, SPATIAL_INDEX

    writer, _ = request.getfixturevalue(build_name)
    ours, theirs = writer.catalog_dir, tmp_path / writer.catalog_dir.name
    written = ["partition_info.csv", "point_map.fits", "skymap.fits", "hats.properties", "properties",
               "dataset/_common_metadata"] + (["dataset/_metadata"] if build_name == "one_file_build" else [])
    shutil.copytree(ours, theirs)
    for name in written:
        (theirs / name).unlink()
    files = _pixel_files(writer)
    pixels = sorted({int(f.name.split("=")[1].split(".")[0]) if f.is_file() else int(f.name.split("=")[1])
                     for f in files})
    partition_info = PartitionInfo.from_healpix([HealpixPixel(4, p) for p in pixels])
    partition_info.write_to_file(theirs / "partition_info.csv")
    total = write_parquet_metadata(theirs, create_metadata=build_name == "one_file_build")
    spatial = np.concatenate([pq.read_table(f, columns=[SPATIAL_INDEX]).column(0).to_numpy()
                              for f in (theirs / "dataset").rglob("*.parquet")])
    histogram = np.bincount(spatial >> 2 * (29 - SKYMAP_ORDER), minlength=12 * 4 ** SKYMAP_ORDER).astype(np.int64)
    write_fits_image(histogram, theirs / "point_map.fits")
    write_fits_image(histogram, theirs / "skymap.fits")
    ours_properties = (ours / "hats.properties").read_text()
    rows = {int(line.split("=")[1]) for line in ours_properties.splitlines() if line.startswith("hats_max_rows")}
    TableProperties(**(TableProperties.new_provenance_dict(theirs, builder=f"tglc_builder v{__version__}") | {
        "catalog_name": ours.name, "catalog_type": "object", "total_rows": total, "ra_column": "RA",
        "dec_column": "DEC", "healpix_column": SPATIAL_INDEX, "healpix_order": 29, "npix_suffix": writer.layout(),
        "skymap_order": SKYMAP_ORDER, "hats_max_rows": rows.pop(), "hats_order": 4,
        "moc_sky_fraction": f"{partition_info.calculate_fractional_coverage():0.5f}",
        "obs_title": "TESS-Gaia Light Curves (TGLC), sector 23", "tglc_sector": 23, "tglc_columns": "seed"})
                    ).to_properties_file(theirs)
    CollectionProperties(name=f"{ours.name}_collection", hats_primary_table_url=ours.name).to_properties_file(tmp_path)
    for name in written:
        mine, hats_own = (ours / name).read_bytes(), (theirs / name).read_bytes()
        if name.endswith("properties"):
            mine, hats_own = (re.sub(rb"hats_creation_date=.*", b"", x) for x in (mine, hats_own))
        assert mine == hats_own, name
    collection = "collection.properties"
    assert (writer.output_dir / collection).read_bytes() == (tmp_path / collection).read_bytes()


def _pixel_files(writer: HatsWriter) -> list[Path]:
    return sorted((writer.catalog_dir / "dataset").glob("Norder=4/Dir=*/Npix=*[0-9]*"))


# ---- the collection -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build_name", ["one_file_build", "split_build"])
def test_collection_is_valid_hats(build_name, request):
    from hats import read_hats
    from hats.io.validation import is_valid_catalog

    writer, shards = request.getfixturevalue(build_name)
    out, catalog = writer.output_dir, writer.catalog_dir
    assert catalog.name == catalog_name(23) == "tglc_s0023"
    assert is_valid_catalog(out, strict=True) and is_valid_catalog(catalog, strict=True)
    for name in ("hats.properties", "partition_info.csv", "point_map.fits", "dataset/_common_metadata"):
        assert (catalog / name).is_file(), name
    assert (out / "collection.properties").is_file() and (out / "README.md").is_file()
    collection = read_hats(out)
    assert collection.main_catalog_dir.name == "tglc_s0023"
    main = collection.main_catalog
    assert main.catalog_info.total_rows == 200
    assert {p.order for p in main.get_healpix_pixels()} == {4}
    assert sorted(p.pixel for p in main.get_healpix_pixels()) == sorted({s.pixel for s in shards})
    files = _pixel_files(writer)
    if build_name == "one_file_build":  # the contract's layout
        assert main.catalog_info.npix_suffix == FILE_SUFFIX and (catalog / "dataset/_metadata").is_file()
        assert all(f.is_file() and f.name == f"Npix={f.name[5:-8]}.parquet" for f in files)
        assert len(files) == len(shards)
    else:  # hats' pixel directories; no _metadata (hats' strict check rejects one listing several files a pixel)
        assert main.catalog_info.npix_suffix == DIR_SUFFIX and not (catalog / "dataset/_metadata").exists()
        assert all(f.is_dir() for f in files)
        big = max(files, key=lambda f: len(list(f.iterdir())))
        assert sorted(p.name for p in big.iterdir()) == [f"{k:03d}-of-004.parquet" for k in range(1, 5)]
    assert not list(catalog.rglob(".*.tmp-*")), "temporary files left behind"


def test_pixel_files_follow_the_contract(one_file_build, sector):
    writer, shards = one_file_build
    big = next(s for s in shards if len(s) == CLUSTER)
    table = pq.read_table(writer.file(big))
    assert table.schema.names == ["_healpix_29", "TIC_ID", "gaiadr3_id", "RA", "DEC", "sector", "camera", "ccd",
                                  "psf_flux_err", "aper_flux_err", "n_cadences", "lightcurve"]
    types = {f.name: str(f.type) for f in table.schema}
    assert types["_healpix_29"] == types["TIC_ID"] == types["gaiadr3_id"] == "int64"
    assert types["RA"] == types["DEC"] == types["psf_flux_err"] == types["aper_flux_err"] == "double"
    assert types["sector"] == types["camera"] == types["ccd"] == "int16" and types["n_cadences"] == "int32"
    assert types["lightcurve"] == ("struct<time: list<element: double>, psf_flux: list<element: float>, aper_flux: "
                                   "list<element: float>, tess_flags: list<element: int16>, tglc_flags: "
                                   "list<element: int16>>")
    spatial = table.column("_healpix_29").to_numpy()
    assert np.all(np.diff(spatial) >= 0) and np.all(spatial >> 50 == big.pixel)
    from hats.pixel_math.spatial_index import compute_spatial_index
    ids = table.column("gaiadr3_id").to_numpy()
    at = {int(g): i for i, g in enumerate(big.gaiadr3_id)}
    rows = np.array([at[int(g)] for g in ids])
    assert np.array_equal(spatial, compute_spatial_index(big.ra[rows], big.dec[rows]))
    assert np.array_equal(table.column("camera").to_numpy(), big.cam[rows])
    assert np.array_equal(table.column("ccd").to_numpy(), big.ccd[rows])
    assert set(table.column("sector").to_numpy()) == {23}
    meta = pq.read_metadata(writer.file(big))
    assert meta.num_row_groups == 1 and meta.row_group(0).num_rows == CLUSTER  # < ROW_GROUP_ROWS
    mark = json.loads(meta.metadata[MARK_KEY.encode()])
    assert mark == {"sector": 23, "columns": "seed", "pixel": big.pixel, "shard": "001-of-001", "rows": CLUSTER,
                    "tglc_builder_version": mark["tglc_builder_version"], "sha256": check_digest(writer.file(big))}
    column = meta.row_group(0).column(meta.num_columns - 5)  # lightcurve.time
    assert column.path_in_schema == "lightcurve.time.list.element" and column.compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in column.encodings
    _assert_rows_equal_fits(table, sector)


def _assert_rows_equal_fits(table: pa.Table, sector: Sector, columns=SEED) -> None:
    """Every row of an Arrow table (pyarrow or datasets' arrow format) against its FITS file, bit for bit."""
    curve_col = table.column("lightcurve").combine_chunks()
    ids = [int(g) for g in table.column("gaiadr3_id").to_pylist()]
    for i, gaia in enumerate(ids):
        curve = read_tglc(sector.file_of(gaia), gaiadr3_id=gaia)
        for s in columns.series:
            values = curve_col.field(s.name)[i].values.to_numpy(zero_copy_only=False)
            if s.fits_column in curve.data.dtype.names:  # the flags keep the file's width
                source = curve.data[s.fits_column]
                expected = source.astype(source.dtype.newbyteorder("=") if s.widens else s.dtype)
            else:  # a column of newer versions only (0.8's raw fluxes): NaN
                expected = np.full(curve.n_cadences, s.pad, s.dtype)
            assert values.dtype == expected.dtype and values.tobytes() == expected.tobytes(), (gaia, s.name)
        for s in columns.scalars:
            if s.name in table.column_names:
                if s.hdu == FROM_FILE_NAME:
                    assert table.column(s.name)[i].as_py() == layout.file_version(sector.file_of(gaia).name)
                    continue
                header = curve.primary if s.hdu == 0 else curve.header
                if s.dtype == STRING:
                    assert table.column(s.name)[i].as_py() == header.get(s.card, ""), (gaia, s.name)
                    continue
                value = np.array(table.column(s.name)[i].as_py(), s.dtype)
                expected = np.array(header.get(s.card, np.nan), s.dtype)
                assert value.tobytes() == expected.tobytes(), (gaia, s.name)
        if "n_cadences" in table.column_names:
            assert table.column("n_cadences")[i].as_py() == curve.n_cadences


# ---- readers: LSDB and datasets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("build_name", ["one_file_build", "split_build"])
def test_lsdb_cone_search_and_crossmatch(build_name, request, sector):
    lsdb = pytest.importorskip("lsdb")

    writer, _ = request.getfixturevalue(build_name)
    tglc = lsdb.open_catalog(writer.output_dir)
    assert tglc.hc_structure.catalog_info.total_rows == 200
    ra0, dec0 = float(np.mean(sector.ra[:CLUSTER])), float(np.mean(sector.dec[:CLUSTER]))
    radius = 0.15  # degrees
    found = tglc.cone_search(ra=ra0, dec=dec0, radius_arcsec=radius * 3600).compute()
    sep = np.degrees(np.arccos(np.clip(
        np.sin(np.radians(dec0)) * np.sin(np.radians(sector.dec)) +
        np.cos(np.radians(dec0)) * np.cos(np.radians(sector.dec)) * np.cos(np.radians(sector.ra - ra0)), -1, 1)))
    expected = set(sector.gaiadr3_id[sep < radius].tolist())
    assert 5 <= len(expected) < CLUSTER
    assert set(found["gaiadr3_id"].tolist()) == expected
    assert "lightcurve" in found.columns
    # a crossmatch of the cone's stars against the whole catalog: each finds itself, at distance 0
    matched = tglc.cone_search(ra=ra0, dec=dec0, radius_arcsec=radius * 3600).crossmatch(
        tglc, radius_arcsec=1.0, n_neighbors=1, suffixes=("", "_all")).compute()
    assert sorted(matched["gaiadr3_id"]) == sorted(expected)
    assert np.array_equal(matched["gaiadr3_id"].to_numpy(), matched["gaiadr3_id_all"].to_numpy())
    assert np.all(matched["_dist_arcsec"].to_numpy() < 1e-6)


@pytest.mark.parametrize("build_name", ["one_file_build", "split_build"])
def test_load_dataset_gives_the_main_catalog_rows(build_name, request, sector, tmp_path):
    from datasets import load_dataset

    writer, _ = request.getfixturevalue(build_name)
    ds = load_dataset(str(writer.output_dir), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 200
    assert sorted(ds.column_names) == sorted(["lightcurve", "RA", "DEC", "TIC_ID", "gaiadr3_id", "psf_flux_err",
                                              "aper_flux_err"])
    assert sorted(int(g) for g in ds["gaiadr3_id"]) == sorted(sector.gaiadr3_id.tolist())
    example = ds[0]
    assert isinstance(example["TIC_ID"], str) and isinstance(example["gaiadr3_id"], str)
    gaia = int(example["gaiadr3_id"])
    i = int(np.flatnonzero(sector.gaiadr3_id == gaia)[0])
    assert example["TIC_ID"] == str(sector.tic_id[i]) and example["RA"] == sector.ra[i]
    lc = ds.with_format("numpy", dtype=None)[0]["lightcurve"]
    assert lc["time"].dtype == np.float64 and lc["psf_flux"].dtype == np.float32
    assert lc["tess_flags"].dtype == np.int16
    assert len(lc["time"]) == read_tglc(sector.file_of(gaia)).n_cadences  # trimmed
    _assert_rows_equal_fits(ds.with_format("arrow")[:], sector)


def test_card_names_exactly_the_main_catalog_files(split_build):
    import yaml

    writer, shards = split_build
    text = (writer.output_dir / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-4.0"
    (config,) = front["configs"]
    (files,) = config["data_files"]
    assert files["split"] == "train"
    assert sorted(files["path"]) == sorted(str(writer.file(s).relative_to(writer.output_dir)) for s in shards)
    assert [f["name"] for f in front["dataset_info"]["features"]] == config["columns"]
    for needle in ("Han & Brandt 2023", "10.17909/610m-9474", "lsdb.open_catalog", "load_dataset", "n_cadences",
                   "sector 23", "200 light curves", "Npix=<p>/", "no `_metadata`"):
        assert needle in text, needle
    n_cadences_row = next(line for line in text.splitlines() if line.startswith("| `n_cadences` |"))
    assert "every list of lightcurve is this long" in n_cadences_row and "padded" not in n_cadences_row


# ---- bit for bit ----------------------------------------------------------------------------------------------------
def test_nan_payloads_survive(sector, tmp_path):
    """A NaN's payload bits reach the file and come back (floats are never dictionary-encoded)."""
    writer = HatsWriter(tmp_path / "out", 23, SEED)
    shard = next(s for s in plan_shards(sector) if len(s) == CLUSTER)
    writer.prepare([shard], False)
    block = next(blocks(shard, sector.fits_dir, SEED, block_rows=3))
    block.series["time"][0, 3] = np.array(0x7FF0_0000_0000_BEEF, np.uint64).view(np.float64)  # signalling NaN
    block.series["psf_flux"][1, 5] = np.array(0xFFC0_1234, np.uint32).view(np.float32)  # negative quiet NaN
    block.scalars["psf_flux_err"][0] = np.array(0x7FF8_0000_0000_0042, np.uint64).view(np.float64)
    sink = writer.open(shard)
    sink.append(block)
    sink.commit()
    table = pq.read_table(writer.file(shard))
    by_id = {g: i for i, g in enumerate(table.column("gaiadr3_id").to_pylist())}
    curve = table.column("lightcurve").combine_chunks()
    row0, row1 = by_id[int(block.scalars["gaiadr3_id"][0])], by_id[int(block.scalars["gaiadr3_id"][1])]
    time0 = curve.field("time")[row0].values.to_numpy()
    assert time0.view(np.uint64)[3] == 0x7FF0_0000_0000_BEEF
    assert curve.field("psf_flux")[row1].values.to_numpy().view(np.uint32)[5] == 0xFFC0_1234
    err = table.column("psf_flux_err").to_numpy()
    assert err.view(np.uint64)[row0] == 0x7FF8_0000_0000_0042


# ---- resume ---------------------------------------------------------------------------------------------------------
def test_complete_ids_only_after_commit_and_in_catalog_order(sector, tmp_path):
    writer = HatsWriter(tmp_path / "out", 23, SEED)
    shards = plan_shards(sector)
    shard = next(s for s in shards if len(s) == CLUSTER)
    writer.prepare(shards, False)
    assert writer.complete_ids(shard) is None
    sink = writer.open(shard)
    for block in blocks(shard, sector.fits_dir, SEED, block_rows=32):
        sink.append(block)
        assert writer.complete_ids(shard) is None  # nothing under the final name yet
    assert [p.name for p in writer.file(shard).parent.iterdir()] != [writer.file(shard).name]
    sink.commit()
    ids = writer.complete_ids(shard)
    assert np.array_equal(ids, shard.gaiadr3_id)  # catalog order, though the file is in _healpix_29 order
    assert not np.array_equal(pq.read_table(writer.file(shard), columns=["gaiadr3_id"]).column(0).to_numpy(),
                              shard.gaiadr3_id)
    assert np.array_equal(writer.complete_ids(shard, verify=True), shard.gaiadr3_id)
    # another sector's or another column set's writer does not take the file for its own
    assert HatsWriter(tmp_path / "out", 24, SEED).complete_ids(replace(shard)) is None
    assert HatsWriter(tmp_path / "out", 23, ALL).complete_ids(shard) is None
    # a fresh writer (a worker that did not prepare) finds the layout in the stamp
    fresh = HatsWriter(tmp_path / "out", 23, SEED)
    assert fresh.file(shard) == writer.file(shard) and np.array_equal(fresh.complete_ids(shard), shard.gaiadr3_id)
    # rows that failed to read are missing: the ids say so, and the core writes the shard again
    write_shard(writer, shard, sector.fits_dir, skip={0, 5, 149})
    ids = writer.complete_ids(shard)
    assert np.array_equal(ids, np.delete(shard.gaiadr3_id, [0, 5, 149]))
    # an aborted rewrite leaves the whole file as it was, and no temporary file
    sink = writer.open(shard)
    sink.append(next(blocks(shard, sector.fits_dir, SEED)))
    sink.abort()
    sink.abort()
    assert np.array_equal(writer.complete_ids(shard), ids)
    assert [p.name for p in writer.file(shard).parent.iterdir()] == [writer.file(shard).name]
    # a sink that receives no row removes the shard's file
    empty = writer.open(shard)
    empty.commit()
    assert not writer.file(shard).exists() and writer.complete_ids(shard) is None


@pytest.mark.parametrize("columns", [SEED, ALL], ids=["seed", "all"])
def test_rows_of_reads_whole_rows_back(columns, sector, tmp_path):
    """A whole file's rows come back as a build would carry them into a new file: ids in file order, any rows in any
    order, every column of the set, series padded (NaN / 0) to the longest of the rows asked, bits unchanged."""
    writer = HatsWriter(tmp_path / "out", 23, columns)
    shards = plan_shards(sector)
    shard = next(s for s in shards if len(s) == CLUSTER)
    writer.prepare(shards, False)
    assert writer.rows_of(shard) is None
    write_shard(writer, shard, sector.fits_dir, skip={3, 4})
    source = writer.rows_of(shard, verify=True)
    assert np.array_equal(source.ids, pq.read_table(writer.file(shard), columns=["gaiadr3_id"]).column(0).to_numpy())
    (whole,) = blocks(shard, sector.fits_dir, columns, block_rows=len(shard))
    row_of = {int(g): i for i, g in enumerate(whole.scalars["gaiadr3_id"])}
    file_rows = np.random.default_rng(1).permutation(len(source.ids))[:40]
    got = source.read(file_rows)
    expected_rows = np.array([row_of[int(g)] for g in source.ids[file_rows]])
    assert np.array_equal(got["gaiadr3_id"], source.ids[file_rows])
    assert np.array_equal(got["n_cadences"], whole.n_cadences[expected_rows])
    for name, values in whole.scalars.items():
        assert got[name].dtype == values.dtype and got[name].tobytes() == values[expected_rows].tobytes(), name
    width = int(got["n_cadences"].max())
    for s in columns.series:
        assert got[s.name].shape == (40, width) and got[s.name].dtype == s.dtype
        assert got[s.name].tobytes() == whole.series[s.name][expected_rows, :width].tobytes(), s.name
    assert source.read(file_rows[::-1])["gaiadr3_id"].tolist() == source.ids[file_rows[::-1]].tolist()
    assert [p.name for p in writer.file(shard).parent.iterdir()] == [writer.file(shard).name]  # no temporary file


def _clustered_shard(sector: Sector, tmp_path: Path) -> tuple[HatsWriter, object]:
    """The writer and the CLUSTER-row shard it has written (the pixel of many rows)."""
    writer = HatsWriter(tmp_path / "out", 23, SEED)
    shards = plan_shards(sector)
    shard = next(s for s in shards if len(s) == CLUSTER)
    writer.prepare(shards, False)
    write_shard(writer, shard, sector.fits_dir)
    return writer, shard


def test_corruption_is_detected(sector, tmp_path):
    writer, shard = _clustered_shard(sector, tmp_path)
    file = writer.file(shard)
    good = file.read_bytes()
    # a bit flipped inside a page of light-curve data: the page checksum catches it
    meta = pq.read_metadata(file)
    chunk = meta.row_group(0).column(meta.num_columns - 4)  # lightcurve.psf_flux
    assert chunk.path_in_schema == "lightcurve.psf_flux.list.element"
    flipped = bytearray(good)
    flipped[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x10
    file.write_bytes(flipped)
    assert writer.complete_ids(shard, verify=True) is None
    # the check before renaming (no SHA-256 yet) catches it too, from the pages' stored bytes, decoding none
    with pytest.raises(WriteError, match="psf_flux.* does not match its checksum"):
        verify_file(file, writer.schema, read_mark(file), full=True)
    verify_file(file, writer.schema, read_mark(file), full=False)  # (which reads only ids and positions)
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(file, page_checksum_verification=True)
    with pytest.raises((OSError, pa.ArrowException)):  # so do LSDB's reads of the file
        pq.ParquetFile(file, page_checksum_verification=True).read_row_group(0)
    # a truncated file is not whole, verified or not
    file.write_bytes(good[:len(good) // 2])
    assert writer.complete_ids(shard) is None and writer.complete_ids(shard, verify=True) is None
    file.write_bytes(good)
    assert np.array_equal(writer.complete_ids(shard, verify=True), shard.gaiadr3_id)



def test_the_check_before_renaming_refuses_whatever_pyarrow_would_not_read(sector, tmp_path):
    """Page headers are not under the page CRCs: a flipped header byte that makes the file unreadable (a negative
    count, a page type or a field type changed, a dictionary page moved) must not be sealed as whole."""
    writer, shard = _clustered_shard(sector, tmp_path)
    file, mark = writer.file(shard), read_mark(writer.file(shard))
    good, meta = file.read_bytes(), pq.read_metadata(file)
    unreadable = 0
    for column in ("_healpix_29", "TIC_ID", "lightcurve.psf_flux.list.element", "lightcurve.tess_flags.list.element"):
        chunk = next(meta.row_group(0).column(c) for c in range(meta.num_columns)
                     if meta.row_group(0).column(c).path_in_schema == column)
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        for at in range(start, start + 16):  # a page header and the first bytes of its page
            flipped = bytearray(good)
            flipped[at] ^= 0x01
            file.write_bytes(flipped)
            try:
                pq.read_table(file, page_checksum_verification=True)
            except (OSError, pa.ArrowException):
                unreadable += 1
                with pytest.raises(WriteError):
                    verify_file(file, writer.schema, mark, full=True)
    assert unreadable >= 40  # (most of the 64 flips)
    # a header field made a list of 2**28 booleans (no byte each to read): refused at once, not counted through
    chunk = meta.row_group(0).column(meta.num_columns - 1)
    at = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    for _ in range(3):  # past fields 1-3 (i32: a header byte, then a varint)
        at += 1
        while good[at] & 0x80:
            at += 1
        at += 1
    assert good[at] == 0x15  # field 4, the CRC (i32)
    file.write_bytes(good[:at] + b"\x19\xf1\xff\xff\xff\x7f" + good[at + 6:])
    with pytest.raises(WriteError, match="does not read back"):
        verify_file(file, writer.schema, mark, full=True)


def test_the_check_before_renaming_holds_each_light_curve_to_its_n_cadences(sector, tmp_path):
    """One cadence moved from a light curve to the next in every series: the totals still match, the rows do not."""
    writer, shard = _clustered_shard(sector, tmp_path)
    file = writer.file(shard)
    table, footer = pq.read_table(file), pq.read_metadata(file).metadata
    curves = table.column("lightcurve").combine_chunks()
    offsets = np.asarray(curves.field(0).offsets).copy()
    offsets[1] -= 1
    moved = pa.StructArray.from_arrays([pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), child.flatten())
                                        for child in curves.flatten()], fields=list(curves.type))
    bad = tmp_path / "moved.parquet"
    table = table.set_column(table.schema.get_field_index("lightcurve"), table.schema.field("lightcurve"), moved)
    with pq.ParquetWriter(bad, table.schema, **parquet_options(table.schema)) as out:
        out.write_table(table)
        out.add_key_value_metadata({k: v for k, v in footer.items() if k != b"ARROW:schema"})
    verify_file(file, writer.schema, read_mark(file), full=True)
    with pytest.raises(WriteError, match="not n_cadences long in every row"):
        verify_file(bad, writer.schema, read_mark(file), full=True)


def test_a_light_curve_of_no_cadences_is_written(tmp_path):
    """A FITS file whose table has no rows is a light curve of 0 cadences (an empty list), as in HDF5."""
    served = synthetic_sector(tmp_path / "fits", sector=23, n=6, seed=7)
    ra0, dec0 = healpy.pix2ang(16, int(served.healpix[0]), nest=True, lonlat=True)
    served = replace(served, ra=np.full(6, ra0), dec=np.full(6, dec0) + np.arange(6) * 1e-3)
    empty = Path(served.fits_dir) / served.path[0].decode()
    with fits.open(empty) as hdus:
        hdus[1] = fits.BinTableHDU(hdus[1].data[:0], header=hdus[1].header, name=hdus[1].name)
        hdus.writeto(empty, overwrite=True, output_verify="silentfix")
    (shard,) = plan_shards(served)
    writer = HatsWriter(tmp_path / "out", 23, SEED)
    writer.prepare([shard], False)
    write_shard(writer, shard, served.fits_dir)
    assert sorted(writer.complete_ids(shard, verify=True).tolist()) == sorted(shard.gaiadr3_id.tolist())
    table = pq.read_table(writer.file(shard))
    row = table.column("gaiadr3_id").to_pylist().index(int(served.gaiadr3_id[0]))
    assert table.column("n_cadences")[row].as_py() == 0
    assert table.column("lightcurve")[row]["psf_flux"].as_py() == []


_CHILD = """
import resource, signal, sys
sys.path[:0] = [{tests!r}, {repo!r}]
from pathlib import Path
from _blocks import blocks, plan_shards, synthetic_sector
from tglc_builder.columns import column_set
from tglc_builder.formats import WriteError
from tglc_builder.formats.hats import HatsWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing the process
sector = synthetic_sector(Path({fits!r}), sector=23, n=40, seed=5)
shard = max(plan_shards(sector), key=len)
writer = HatsWriter({out!r}, 23, column_set("seed"))
writer.prepare([shard], False)
todo = list(blocks(shard, sector.fits_dir, writer.columns, block_rows=2))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
print("FILE:", writer.file(shard))
for phase in ("append", "commit"):  # the limit hits the temporary Arrow file, then the Parquet file
    sink = writer.open(shard)
    try:
        if phase == "append":
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
        for block in todo:
            sink.append(block)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
        sink.commit()
        print(phase, "no error")
    except WriteError as exc:
        sink.abort()
        print(phase, "WriteError:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
"""


def test_a_real_write_failure_raises_write_error(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the writes fail for real, in the temporary Arrow
    file (append) and in the Parquet file (commit): WriteError in plain words, nothing under the final name."""
    code = _CHILD.format(tests=str(TESTS), repo=str(TESTS.parent), fits=str(tmp_path / "fits"),
                         out=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    final = Path(done.stdout.split("FILE: ", 1)[1].splitlines()[0])
    for phase in ("append", "commit"):
        message = done.stdout.split(f"{phase} WriteError: ", 1)[1].splitlines()[0]
        print(message)
        assert "file size limit reached" in message and final.name in message, done.stdout
    assert not final.exists()
    assert not [p for p in final.parent.iterdir()], "temporary files left behind"


def test_write_errors_in_plain_words():
    """Plain words for h5py's and pyarrow's errors, and whether the disk is full (which stops every worker)."""
    import errno

    file = Path("/data/out/Npix=5.parquet")
    full = write_error(file, OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == "no space left on /data/out writing Npix=5.parquet" and full.disk_full
    assert str(write_error(file, OSError("IOError: error writing bytes to file. Detail: [errno 28] No space left "
                                         "on device"))).startswith("no space left")
    assert str(write_error(file, RuntimeError("Can't write data (file write failed: time = Wed, filename = 'x', "
                                              "errno = 28, error message = 'No space left on device')"))
               ).startswith("no space left")
    limit = write_error(file, OSError(errno.EFBIG, "File too large"))
    assert str(limit).startswith("file size limit reached") and limit.disk_full
    denied = write_error(file, OSError(errno.EACCES, "denied"))
    assert str(denied) == "cannot write /data/out/Npix=5.parquet: Permission denied" and not denied.disk_full


# ---- prepare: one build per folder ----------------------------------------------------------------------------------
def test_prepare_refuses_another_build_and_removes_debris(sector, tmp_path):
    out = tmp_path / "out"
    shards = plan_shards(sector)
    build(HatsWriter(out, 23, SEED), shards, sector.fits_dir)
    # debris of killed writers goes; the build's files stay
    writer = HatsWriter(out, 23, SEED)
    pixel_dir = writer.file(shards[0]).parent
    for name in (f".{writer.file(shards[0]).name}.tmp-999", f".{writer.file(shards[0]).name}.tmp-999.arrow"):
        (pixel_dir / name).write_bytes(b"half")
    catalog_debris = [writer.catalog_dir / ".partition_info.csv.tmp-999", out / ".collection.properties.tmp-999"]
    for path in catalog_debris:  # the catalog's own files, written by a build killed in its finish
        path.write_bytes(b"half")
    writer.prepare(shards, False)
    assert not list(pixel_dir.glob(".*")) and all(writer.complete_ids(s) is not None for s in shards)
    assert not [path for path in catalog_debris if path.exists()]
    assert not (writer.catalog_dir / "hats.properties").exists()  # unfinished until finish()
    writer.finish(shards)
    # another sector in the same folder
    with pytest.raises(UsageError, match="tglc_s0023"):
        HatsWriter(out, 24, SEED).prepare([replace(s) for s in shards], False)
    # another column set
    with pytest.raises(UsageError, match="--columns seed"):
        HatsWriter(out, 23, ALL).prepare(shards, False)
    # a smaller build (e.g. --tiny after a full build): pixels outside the plan
    tiny = [s for s in shards if len(s) == CLUSTER]
    with pytest.raises(UsageError, match="not in this build"):
        HatsWriter(out, 23, SEED).prepare(tiny, False)
    assert all(HatsWriter(out, 23, SEED).complete_ids(s) is not None for s in shards)  # nothing was removed
    # --overwrite: the other build's files go
    writer = HatsWriter(out, 23, SEED)
    writer.prepare(tiny, True)
    assert [f for f in writer._data_files()] == [writer.file(tiny[0])]
    # the same pixels cut into more shards: the old files are superseded and removed, the layout changes
    split = plan_shards(sector, rows_per_shard=40)
    writer.prepare(split, False)
    assert writer.layout() == DIR_SUFFIX and writer._data_files() == []
    other = HatsWriter(out, 24, SEED)
    other.prepare([replace(s) for s in shards], True)
    assert not (out / "tglc_s0023").exists()


# ---- the real TGLC file, every column, and the size of a light curve -------------------------------------------------
@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample (tests/data) is absent")
def test_real_sample_all_columns(tmp_path):
    from datasets import load_dataset
    from hats.io.validation import is_valid_catalog

    sample = single_file_sector(SAMPLE)
    writer = HatsWriter(tmp_path / "out", 1, ALL)
    shards = plan_shards(sample)
    build(writer, shards, sample.fits_dir)
    assert is_valid_catalog(writer.output_dir, strict=True)
    table = pq.read_table(writer.file(shards[0]))
    assert table.num_rows == 1 and table.column("TIC_ID")[0].as_py() == 389023759
    assert table.column("camera")[0].as_py() == 2 and table.column("ccd")[0].as_py() == 1
    assert np.isnan(table.column("contamrt")[0].as_py())  # a v1 file has no CONTAMRT
    assert table.schema.field("lightcurve").type.names == [s.name for s in ALL.series]
    _assert_rows_equal_fits(table, sample, ALL)
    ds = load_dataset(str(writer.output_dir), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 1 and ds[0]["gaiadr3_id"] == "6399196263939178880"
    assert "cal_aper_flux" in ds[0]["lightcurve"] and "tessmag" in ds.column_names
    _assert_rows_equal_fits(ds.with_format("arrow")[:], sample, ALL)
    print(f"\nreal sample, one light curve alone in a file: {os.path.getsize(writer.file(shards[0]))} bytes")


def test_bytes_per_light_curve(one_file_build, sector):
    """The size goal: <= 9 KB per 1,282-cadence light curve (measured on the 150-row pixel file, where the
    footer is shared by many light curves, as in a real build)."""
    writer, shards = one_file_build
    big = next(s for s in shards if len(s) == CLUSTER)
    file = writer.file(big)
    cadences = int(pq.read_table(file, columns=["n_cadences"]).column(0).to_numpy().sum())
    per_lc = os.path.getsize(file) / cadences * 1282
    print(f"\nHATS: {per_lc:.0f} bytes per 1,282-cadence light curve ({os.path.getsize(file)} bytes for "
          f"{CLUSTER} light curves)")
    assert per_lc <= 9 * 1024


def test_mark_is_written_last(one_file_build):
    """The mark lives in the footer, which Parquet writes when the file is closed: a file cut anywhere has none."""
    writer, shards = one_file_build
    file = writer.file(shards[0])
    assert read_mark(file)["rows"] == len(shards[0])
    data = file.read_bytes()
    assert MARK_KEY.encode() in data[-len(data) // 4:] and MARK_KEY.encode() not in data[:len(data) // 2]


# ---- extras: margin cache and Gaia id index -------------------------------------------------------------------------
def _straddling(sector: Sector) -> tuple[Sector, np.ndarray]:
    """40 rows: 20 of the cluster, and 20 on a line across the northern edge of its pixel, 10 each side within
    3.6 arcsec of it (so each pixel's margin holds the other side's 10)."""
    pixel = int(sector.healpix[0])
    ra0, dec0 = healpy.pix2ang(16, pixel, nest=True, lonlat=True)
    low, high = dec0, dec0 + 5.0  # bisect for the edge along the meridian ra0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if healpy.ang2pix(16, ra0, mid, nest=True, lonlat=True) == pixel else (low, mid)
    steps = 1e-4 * np.arange(1, 11)
    keep = np.arange(40)
    sub = replace(sector, **{name: getattr(sector, name)[keep] for name in
                             ("gaiadr3_id", "tic_id", "ra", "dec", "cam", "ccd", "path")})
    sub.ra[20:] = ra0
    sub.dec[20:] = np.concatenate([low - steps, high + steps])
    edge = sub.gaiadr3_id[20:]
    assert len(set(sub.healpix.tolist())) == 2
    return sub, edge


def test_extras_margin_cache_and_index(sector, tmp_path):
    lsdb = pytest.importorskip("lsdb")
    pytest.importorskip("hats_import")
    from datasets import load_dataset
    from hats import read_hats
    from hats.io.validation import is_valid_catalog

    sub, edge = _straddling(sector)
    writer = HatsWriter(tmp_path / "out", 23, SEED, extras=True)
    build(writer, plan_shards(sub), sub.fits_dir)
    out = writer.output_dir
    assert is_valid_catalog(out, strict=True)
    collection = read_hats(out)
    assert collection.default_margin == "tglc_s0023_10arcs"
    assert collection.all_indexes == {"gaiadr3_id": "tglc_s0023_gaiadr3_id"}
    margin = pq.read_table(out / "tglc_s0023_10arcs" / "dataset", columns=["gaiadr3_id"]).column(0).to_pylist()
    assert sorted(margin) == sorted(edge.tolist())  # each side of the edge is in the other pixel's margin
    tglc = lsdb.open_catalog(out)
    assert tglc.margin is not None
    gaia = int(sub.gaiadr3_id[7])
    assert tglc.id_search(values={"gaiadr3_id": gaia}).compute()["gaiadr3_id"].tolist() == [gaia]
    # the edge stars' neighbours within 10 arcsec include the stars across the edge (found through the margin)
    edge_cat = tglc.cone_search(ra=float(sub.ra[20]), dec=float(sub.dec[29]), radius_arcsec=5)
    matched = edge_cat.crossmatch(tglc, radius_arcsec=10, n_neighbors=20, suffixes=("", "_n")).compute()
    assert set(matched["gaiadr3_id_n"]) == set(edge.tolist())
    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 40  # the margin cache and the index are not rows of the dataset
    assert "10 arcsec margin cache" in (out / "README.md").read_text()
    # the derived catalogs name their primary catalog relative to the collection (as lsdb's own writer does), so a
    # collection moved (or published) elsewhere still opens whole: margin and index included
    for derived in ("tglc_s0023_10arcs", "tglc_s0023_gaiadr3_id"):
        text = (out / derived / "hats.properties").read_text()
        assert "hats_primary_table_url=tglc_s0023\n" in text and str(tmp_path) not in text, text
    moved = tmp_path / "published" / "tglc"
    moved.parent.mkdir()
    out.rename(moved)
    assert is_valid_catalog(moved, strict=True)
    tglc = lsdb.open_catalog(moved)
    assert tglc.margin is not None and tglc.margin.hc_structure.catalog_info.primary_catalog == "tglc_s0023"
    assert tglc.id_search(values={"gaiadr3_id": gaia}).compute()["gaiadr3_id"].tolist() == [gaia]
    edge_cat = tglc.cone_search(ra=float(sub.ra[20]), dec=float(sub.dec[29]), radius_arcsec=5)
    matched = edge_cat.crossmatch(tglc, radius_arcsec=10, n_neighbors=20, suffixes=("", "_n")).compute()
    assert set(matched["gaiadr3_id_n"]) == set(edge.tolist())
    moved.rename(out)
    # the next build removes the derived catalogs until its own finish
    writer.prepare(plan_shards(sub), False)
    assert not (out / "tglc_s0023_10arcs").exists() and not (out / "collection.properties").exists()


@pytest.mark.parametrize("columns", [SEED, ALL], ids=["seed", "all"])
def test_parquet_options_and_spatial_index_are_hats_own(columns):
    """The writer spells out hats' Parquet options and spatial index (so its workers need not import hats): equal
    to hats' get_parquet_write_table_kwargs and compute_spatial_index, for the catalog's and the stars' schemas."""
    from hats.io.file_io.file_io import get_parquet_write_table_kwargs
    from hats.pixel_math.spatial_index import compute_spatial_index
    from tglc_builder.formats.hats import (COMPRESSION_LEVEL, DATA_PAGE_SIZE, arrow_schema, parquet_options,
                                           spatial_index, widened)
    from tglc_builder.stars import stars_schema

    for schema in (widened(arrow_schema(columns), columns, 16), widened(arrow_schema(columns), columns, 32),
                   stars_schema(columns, {})):
        encodings = {"lightcurve.cadence_num.list.element": "DELTA_BINARY_PACKED"} if columns is ALL else {}
        hats_own = get_parquet_write_table_kwargs(schema, write_table_kwargs={
            "compression_level": COMPRESSION_LEVEL, "column_encoding": encodings, "write_page_checksum": True,
            "data_page_size": DATA_PAGE_SIZE, "dictionary_pagesize_limit": DATA_PAGE_SIZE})
        hats_own.pop("row_group_size")
        assert parquet_options(schema) == hats_own
    rng = np.random.default_rng(5)
    ra = np.concatenate([rng.uniform(-10, 370, 5000), [0.0, 360.0, -0.0, 45.0, 90.0, 180.0, 359.9999999999]])
    dec = np.concatenate([rng.uniform(-90, 90, 5000), [90.0, -90.0, 0.0, 41.8103148958, -41.8103148958, 0.0, 0.0]])
    assert np.array_equal(spatial_index(ra, dec), compute_spatial_index(ra, dec))


def test_spatial_index_from_threads_while_cdshealpix_loads():
    """A worker runs two tasks at once, in threads: one that finds cdshealpix's compiled module while another
    thread is still loading it waits for it, and never gets it half made ("no attribute 'lonlat_to_healpix'", as a
    CI run once failed). A line tracer (no mock) holds the first thread inside the load for 0.2 s; the rest arrive
    during that time, each 10 ms after the one before."""
    code = f"""
import linecache, sys, threading, time
import numpy as np
sys.path[:0] = [{str(TESTS.parent)!r}]
from tglc_builder.formats import hats

def tracer(frame, event, arg):
    def line(frame, event, arg):
        if "exec_module" in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
            time.sleep(0.2)
        return line
    return line if frame.f_globals.get("__name__") == hats.__name__ and frame.f_code.co_name == "_cdshealpix" else None

threading.settrace(tracer)
start, answers = threading.Barrier(8), []
def run(i):
    start.wait()
    time.sleep(0.01 * i)
    try:
        answers.append(hats.spatial_index(np.array([10.0, 200.0]), np.array([-30.0, 60.0])).tolist())
    except Exception as exc:
        answers.append(repr(exc))
threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
print(answers)
"""
    from hats.pixel_math.spatial_index import compute_spatial_index

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = compute_spatial_index(np.array([10.0, 200.0]), np.array([-30.0, 60.0])).tolist()
    assert done.stdout.strip() == repr([expected] * 8)


def test_writing_a_shard_imports_neither_hats_nor_datasets(sector, tmp_path):
    """A worker writes its shards without importing hats (matplotlib, numba: ~200 MB and 1.5 s per process),
    datasets, pandas (through pyarrow.dataset) or astropy.coordinates (through cdshealpix's package); the driver's
    finish (without extras) imports no hats either."""
    code = f"""
import pickle, sys
sys.path[:0] = {[str(TESTS), str(TESTS.parent)]!r}
from _blocks import write_shard
writer, shard, fits_dir = pickle.load(open({str(tmp_path / "job.pkl")!r}, "rb"))
before = set(sys.modules)  # (the test's helpers import healpy, which imports matplotlib)
write_shard(writer, shard, fits_dir)
assert writer.file(shard).is_file()
new = set(sys.modules) - before
print(sorted(({{m.split(".")[0] for m in new}} | new) & {{"hats", "datasets", "matplotlib", "numba", "pandas",
                                                      "astropy.coordinates"}}))
writer.finish([shard])
assert (writer.catalog_dir / "hats.properties").is_file()
print(sorted({{m.split(".")[0] for m in set(sys.modules) - before}} & {{"hats", "numba", "lsdb", "nested_pandas"}}))
"""
    import pickle
    writer = HatsWriter(tmp_path / "collection", 23, SEED)
    shards = plan_shards(sector)
    writer.prepare(shards, False)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((writer, shards[0], sector.fits_dir)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "[]"]


def test_a_shard_file_does_not_depend_on_the_blocks_its_rows_came_in(sector, tmp_path):
    """Each block is sorted by _healpix_29 on its own and the commit merges the sorted runs: the file is the same
    bytes whether its rows came in blocks of 7 or in one block, rows in _healpix_29 order and, at one position,
    in catalog order, also when the rows of one position (a star's twin) are in different blocks."""
    from tglc_builder.formats.hats import spatial_index

    ra, dec = sector.ra.copy(), sector.dec.copy()
    ra[[8, 20, 40]], dec[[8, 20, 40]] = ra[3], dec[3]  # four rows at one position, in the cluster of one pixel
    tied = replace(sector, ra=ra, dec=dec)
    shard = max(plan_shards(tied), key=len)
    twins = np.flatnonzero((shard.ra == ra[3]) & (shard.dec == dec[3]))
    assert len(shard) == CLUSTER and len(set(twins // 7)) == 4  # in four blocks of 7 rows
    files = []
    for block_rows in (7, CLUSTER):
        writer = HatsWriter(tmp_path / f"blocks-of-{block_rows}", 23, SEED)
        writer.prepare([shard], False)
        write_shard(writer, shard, tied.fits_dir, block_rows=block_rows)
        files.append(writer.file(shard).read_bytes())
    assert files[0] == files[1]
    order = np.lexsort((np.arange(len(shard)), spatial_index(shard.ra, shard.dec)))
    written = pq.read_table(writer.file(shard), columns=["gaiadr3_id"]).column(0).to_numpy()
    assert np.array_equal(written, shard.gaiadr3_id[order])
    assert [i for i in written.tolist() if i in shard.gaiadr3_id[twins]] == shard.gaiadr3_id[twins].tolist()


@pytest.mark.parametrize("pixels", [1, 170, 624, 2832, 3024, 3072])
def test_the_sky_fraction_is_hats_own(pixels):
    """Written by hand for the properties file: the value hats' PartitionInfo gives, to the last printed digit."""
    from hats.catalog.partition_info import PartitionInfo
    from hats.pixel_math import HealpixPixel

    from tglc_builder.formats.hats import ORDER, _sky_fraction
    theirs = PartitionInfo.from_healpix([HealpixPixel(ORDER, p) for p in range(pixels)])
    assert f"{_sky_fraction(pixels):0.5f}" == f"{theirs.calculate_fractional_coverage():0.5f}"


def test_arrow_arrays_of_numbers_booleans_and_times_hold_their_values():
    from tglc_builder.formats.hats import _array, _numpy
    for values, type_ in ((np.array([True, False, True, True]), pa.bool_()),
                          (np.array([1, 2], "datetime64[us]"), pa.timestamp("us")),
                          (np.array([1.5, -2.0]), pa.float32()), (np.array([3, -4]), pa.int16())):
        assert _array(values, type_).equals(pa.array(values, type_)), type_
    assert np.array_equal(_numpy(_array(np.array([1.5, -2.0]), pa.float64())), [1.5, -2.0])
