"""The listings -> catalog stage, over HTTP from the local archive and on hand-written listings."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import healpy
import numpy as np
import pytest
from astropy.table import Table

from tglc_builder import layout, listing
from tglc_builder.sources import open_source

SECTOR = 23


def _listing_file(tmp_path, text: bytes):
    path = tmp_path / "listing.sh"
    path.write_bytes(text)
    return path


def _curl(relpath: str, url: str = "https://archive.stsci.edu/hlsps/tglc") -> str:
    return f"curl -f --create-dirs --output '{relpath}' {url}/{relpath}"


def test_parse_handles_real_listing_imperfections(tmp_path):
    short = layout.lc_relpath(4295806720, SECTOR, 3, 4)  # a 10-digit Gaia id
    long = layout.lc_relpath(6479517581213243264, SECTOR, 1, 2)
    other = layout.lc_relpath(5707485527450614656, SECTOR, 2, 3)
    text = "\n".join([
        "#!/bin/sh",
        "",
        "# a comment",
        _curl(long) + "\r",                                     # CRLF
        "   ",
        _curl(short, "https://mast.stsci.edu/api/v0.1/Download/file/?uri=mast:HLSP/tglc"),
        _curl(long),                                            # duplicate
        f'curl -f --output "{other}" --create-dirs https://elsewhere.example/x',  # other token order and quoting
    ]).encode() + b"\n"
    bulk = listing.parse_bulk_script(_listing_file(tmp_path, text), SECTOR)
    assert bulk.gaiadr3_id.tolist() == [6479517581213243264, 4295806720, 6479517581213243264, 5707485527450614656]
    assert bulk.gaiadr3_id.dtype == np.int64
    assert bulk.cam.tolist() == [1, 3, 1, 2] and bulk.ccd.tolist() == [2, 4, 2, 3]
    assert [layout.lc_relpath(g, SECTOR, c, d) for g, c, d in zip(bulk.gaiadr3_id, bulk.cam, bulk.ccd)] == [
        long, short, long, other]
    assert bulk.n_rejected == 0 and bulk.n_lines == 8


def test_vectorised_paths_match_the_naming_scheme():
    gaia = np.array([1, 9, 10, 4295806720, 10**17, 6479517581213243264, 2**63 - 1], np.int64)
    cam, ccd = np.array([1, 2, 3, 4, 1, 2, 4]), np.array([4, 3, 2, 1, 1, 2, 4])
    paths = layout.lc_relpaths(gaia, 7, cam, ccd)
    assert [p.decode() for p in paths] == [layout.lc_relpath(g, 7, c, d) for g, c, d in zip(gaia, cam, ccd)]
    assert paths[0].decode() == ("s0007/cam1-ccd4/0000/0000/0000/0000/"
                                 "hlsp_tglc_tess_ffi_gaiaid-1-s0007-cam1-ccd4_tess_v1_llc.fits")
    # and back: every canonical path names its object; a path of another sector names none
    rows = np.zeros((len(paths), layout.RELPATH_WIDTH), np.uint8)
    for i, p in enumerate(paths):
        rows[i, :len(p)] = np.frombuffer(p, np.uint8)
    lengths = np.array([len(p) for p in paths])
    ok, back, back_cam, back_ccd, back_version = layout.objects_of_relpaths(rows, lengths, 7)
    assert ok.all() and back.tolist() == gaia.tolist() and back_version.tolist() == [1] * len(gaia)
    assert back_cam.tolist() == cam.tolist() and back_ccd.tolist() == ccd.tolist()
    assert not layout.objects_of_relpaths(rows, lengths, 8)[0].any()


def test_file_versions_are_part_of_the_canonical_path():
    """Files named _tess_v<k>_llc.fits (k = 1..999) are light curves; the version goes through exactly."""
    gaia = np.array([1, 4295806720, 6479517581213243264, 2**63 - 1, 10**17], np.int64)
    cam, ccd = np.array([1, 2, 3, 4, 1]), np.array([4, 3, 2, 1, 1])
    version = np.array([2, 1, 12, 999, 2])
    paths = layout.lc_relpaths(gaia, 7, cam, ccd, version)
    assert [p.decode() for p in paths] == [layout.lc_relpath(*args) for args in zip(gaia, [7] * 5, cam, ccd, version)]
    assert paths[0].decode().endswith("-s0007-cam1-ccd4_tess_v2_llc.fits") and len(paths[3]) == layout.RELPATH_WIDTH
    assert [layout.file_version(p) for p in paths] == version.tolist()
    rows = np.zeros((len(paths), layout.RELPATH_WIDTH), np.uint8)
    for i, p in enumerate(paths):
        rows[i, :len(p)] = np.frombuffer(p, np.uint8)
    ok, back, back_cam, back_ccd, back_version = layout.objects_of_relpaths(rows, [len(p) for p in paths], 7)
    assert ok.all() and back.tolist() == gaia.tolist() and back_version.tolist() == version.tolist()
    assert back_cam.tolist() == cam.tolist() and back_ccd.tolist() == ccd.tolist()


def test_a_listing_of_v2_files(tmp_path):
    v2 = [layout.lc_relpath(6479517581213243264, SECTOR, 1, 2, 2), layout.lc_relpath(4295806720, SECTOR, 3, 4, 2)]
    text = "#!/bin/sh\n" + "".join(f"{_curl(p)}\n" for p in v2) + f"{_curl(layout.lc_relpath(5, SECTOR, 1, 1))}\n"
    bulk = listing.parse_bulk_script(_listing_file(tmp_path, text.encode()), SECTOR)
    assert bulk.n_rejected == 0 and bulk.gaiadr3_id.tolist() == [6479517581213243264, 4295806720, 5]
    assert bulk.version.tolist() == [2, 2, 1]
    targets = Table({"GAIADR3_ID": bulk.gaiadr3_id, "TIC_ID": np.array([1, 2, 3]), "RA": np.array([1.0, 2.0, 3.0]),
                     "DEC": np.array([4.0, 5.0, 6.0])})
    catalog = listing.build_catalog(bulk, targets, SECTOR)
    assert [bytes(p).decode() if isinstance(p, bytes) else p for p in catalog["path"]] == [
        *v2, layout.lc_relpath(5, SECTOR, 1, 1)]


@pytest.mark.parametrize("bad", [
    "/etc/passwd",
    "../../outside.fits",
    "s0023/cam1-ccd2/0064/7951/7581/2132/../../../../../../evil.fits",
    layout.lc_relpath(6479517581213243264, 24, 1, 2),              # another sector
    layout.lc_relpath(6479517581213243264, SECTOR, 1, 2).replace("/0064/", "/0065/"),  # folders disagree with id
    layout.lc_relpath(6479517581213243264, SECTOR, 1, 2).replace("-cam1-ccd2_", "-cam3-ccd2_"),
    "s0023/cam1-ccd2/0099/9999/9999/9999/hlsp_tglc_tess_ffi_gaiaid-9999999999999999999-s0023-cam1-ccd2_tess_v1_llc.fits",
    "https://evil.example/s0023/x.fits",
    *(layout.lc_relpath(6479517581213243264, SECTOR, 1, 2).replace("_tess_v1_", bad)  # not a version we can name
      for bad in ("_tess_v0_", "_tess_v01_", "_tess_v1000_", "_tess_v2.1_", "_tess_vX_", "_tess_v_", "_tess_v-2_")),
])
def test_parse_rejects_hostile_or_malformed_paths(tmp_path, bad):
    good = layout.lc_relpath(6479517581213243264, SECTOR, 1, 2)
    text = f"{_curl(good)}\n{_curl(bad)}\nrm -rf / # not a download\n".encode()
    bulk = listing.parse_bulk_script(_listing_file(tmp_path, text), SECTOR)
    assert bulk.gaiadr3_id.tolist() == [6479517581213243264]
    assert bulk.n_rejected == 2
    assert any(bad in line for line in bulk.rejected)


def test_target_list_columns_by_name(tmp_path):
    path = tmp_path / "s0023.csv"
    path.write_text("#Tmag,DEC,TIC_ID,RA,GAIADR3_ID\n9.5,-65.51867725247051,389023759,332.6683820898813,"
                    "6399196263939178880\n10.1,1.5,12,0.25,4295806720\n")
    table = listing.read_target_list(path)
    assert table["GAIADR3_ID"].tolist() == [6399196263939178880, 4295806720]
    assert table["TIC_ID"].tolist() == [389023759, 12]
    assert table["RA"][0] == 332.6683820898813 and table["DEC"][0] == -65.51867725247051


def test_target_list_missing_columns(tmp_path):
    path = tmp_path / "s0023.csv"
    path.write_text("#GAIADR3_ID,RA,DEC\n1,2,3\n")
    with pytest.raises(listing.ListingError, match="TIC_ID"):
        listing.read_target_list(path)


def test_catalog_from_archive(archive, tmp_path):
    listings = listing.fetch_listings(SECTOR, tmp_path, open_source(archive.url))
    bulk = listing.parse_bulk_script(listings.bulk_script, SECTOR)
    targets = listing.read_target_list(listings.target_list)
    catalog = listing.build_catalog(bulk, targets, SECTOR, listings=listings)

    truth = archive.sector
    expected = truth.expected_catalog_indices()
    assert 0 < len(expected) < truth.gaia_ids.size  # the join drops objects missing from the target list
    assert len(catalog) == len(expected)
    assert catalog["gaiadr3_id"].tolist() == truth.gaia_ids[expected].tolist()
    assert len(np.unique(catalog["gaiadr3_id"])) == len(catalog)
    assert (np.asarray(catalog["gaiadr3_id"]) < 10**18).any()  # short Gaia ids survive, exactly
    assert catalog["TIC_ID"].tolist() == truth.tic_ids[expected].tolist()
    assert np.array_equal(catalog["RA"], truth.ra[expected]) and np.array_equal(catalog["DEC"], truth.dec[expected])
    assert catalog["cam"].tolist() == truth.cam[expected].tolist()
    assert catalog["ccd"].tolist() == truth.ccd[expected].tolist()
    assert list(catalog["path"]) == [truth.relpath(i) for i in expected]
    for name, dtype in (("gaiadr3_id", np.int64), ("TIC_ID", np.int64), ("RA", np.float64), ("healpix", np.int64)):
        assert catalog[name].dtype == dtype
    # HEALPix through another route: colatitude and longitude in radians
    theta, phi = np.radians(90 - truth.dec[expected]), np.radians(truth.ra[expected])
    assert catalog["healpix"].tolist() == healpy.ang2pix(16, theta, phi, nest=True).tolist()
    assert catalog.meta["sector"] == SECTOR


def test_healpix_of_known_positions():
    # nside 16, nested: 3072 pixels; the north pole lies in base pixel 0..3 and the south pole in 8..11
    bulk = listing.BulkListing(gaiadr3_id=np.array([1, 2, 3], np.int64), cam=np.ones(3, np.int16),
                               ccd=np.ones(3, np.int16))
    targets = Table({"GAIADR3_ID": [3, 2, 1], "TIC_ID": [30, 20, 10], "RA": [45.0, 45.0, 332.6683820898813],
                     "DEC": [89.99, -89.99, -65.51867725247051]})
    catalog = listing.build_catalog(bulk, targets, SECTOR)
    assert catalog["TIC_ID"].tolist() == [10, 20, 30]
    pixels = catalog["healpix"].tolist()
    assert pixels[2] // 256 == 0 and pixels[1] // 256 == 8
    assert pixels[0] == healpy.ang2pix(16, 332.6683820898813, -65.51867725247051, lonlat=True, nest=True)


def test_saved_catalog_round_trips(archive, tmp_path):
    listings = listing.fetch_listings(SECTOR, tmp_path, open_source(archive.url))
    catalog = listing.build_catalog(listing.parse_bulk_script(listings.bulk_script, SECTOR),
                                    listing.read_target_list(listings.target_list), SECTOR)
    path = listing.catalog_path(tmp_path, SECTOR, tiny=False)
    listing.save_catalog(catalog, path)
    assert path.name == "s0023-catalog.hdf5"
    back = Table.read(path, path="catalog")
    assert back.colnames == catalog.colnames
    for name in catalog.colnames:
        assert np.array_equal(back[name], catalog[name]), name
    assert back.meta["sector"] == SECTOR
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(sys.platform != "linux" or not hasattr(ctypes.CDLL(None), "malloc_trim"),
                    reason="glibc's malloc only")
def test_reused_memory_keeps_freed_memory_for_the_next_array():
    """In a process of its own: the context sets the allocator for the rest of the process."""
    code = """
import resource
import numpy as np
from tglc_builder import listing

def faults_of_an_array() -> int:  # 256 MB, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(1 << 25)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

hugepages = (np._core if hasattr(np, "_core") else np.core).multiarray._set_madvise_hugepage
huge = hugepages(True)
with listing.reused_memory():
    faults_of_an_array()
    assert faults_of_an_array() < 20  # the freed block again, not fresh pages
    assert hugepages(False) is False  # no huge pages asked for inside
assert hugepages(huge) is True  # restored
assert faults_of_an_array() >= 128  # outside: each large array fresh (huge pages at best)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["ok"], done.stderr
