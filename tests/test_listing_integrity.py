"""Listings are complete or refused: copies reused only when recorded complete, the two listings must agree, and
rejected lines are reported cut short."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tglc_builder import layout, listing
from tglc_builder.demo.server import LocalArchive
from tglc_builder.sources import open_source

SECTOR = 23


@pytest.fixture(scope="module")
def served():
    with LocalArchive(sector=SECTOR, n=200, seed=11) as archive:
        yield archive


def test_a_copy_recorded_complete_is_reused(served, tmp_path):
    source = open_source(served.url)
    first = listing.fetch_listings(SECTOR, tmp_path, source)
    for path, relpath in ((first.bulk_script, layout.bulk_script_relpath(SECTOR)),
                          (first.target_list, layout.target_list_relpath(SECTOR))):
        manifest = json.loads(listing.manifest_path(path).read_text())
        data = path.read_bytes()
        assert manifest["url"] == f"{served.url}/{relpath}" and manifest["size"] == len(data) > 0
        assert manifest["validators"]["Content-Length"] == str(len(data))
        assert manifest["validators"]["ETag"] == f'"{manifest["sha256"]}"'  # the demo's ETag is the body's SHA-256
        assert len(manifest["sha256"]) == 64 and manifest["fetched"].endswith("Z")
    before = served.request_count()
    again = listing.fetch_listings(SECTOR, tmp_path, source)
    assert again == first and served.request_count() == before
    assert not [p.name for p in first.bulk_script.parent.iterdir() if p.name.startswith(".")]


def test_a_copy_that_differs_from_its_manifest_is_fetched_again(served, tmp_path):
    source = open_source(served.url)
    listings = listing.fetch_listings(SECTOR, tmp_path, source)
    whole = listings.bulk_script.read_bytes()
    flipped = bytearray(whole)
    flipped[len(flipped) // 2] ^= 0x01  # same size, one bit off
    listings.bulk_script.write_bytes(bytes(flipped))
    before = served.request_count()
    listing.fetch_listings(SECTOR, tmp_path, source)
    assert served.request_count() == before + 1  # the bulk script only
    assert listings.bulk_script.read_bytes() == whole


def test_a_copy_without_manifest_is_fetched_again(served, tmp_path):
    """A listing a killed run (or an older builder) left behind is not trusted."""
    source = open_source(served.url)
    listings = listing.fetch_listings(SECTOR, tmp_path, source)
    listing.manifest_path(listings.target_list).unlink()
    before = served.request_count()
    listing.fetch_listings(SECTOR, tmp_path, source)
    assert served.request_count() == before + 1 and listing.manifest_path(listings.target_list).is_file()


def test_refresh_fetches_both_again(served, tmp_path):
    source = open_source(served.url)
    listing.fetch_listings(SECTOR, tmp_path, source)
    before = served.request_count()
    listing.fetch_listings(SECTOR, tmp_path, source, refresh=True)
    assert served.request_count() == before + 2


@pytest.mark.parametrize("mode, cuts, outcome", [
    ("length", 2, "whole"),    # fewer bytes than Content-Length twice, then whole
    ("chunked", 2, "whole"),   # no final chunk twice, then whole
    ("chunked", 3, "refused"),
    ("close", 0, "refused"),   # nothing tells a whole body from a cut one
])
def test_listings_arrive_whole_or_are_refused(tmp_path, mode, cuts, outcome):
    with LocalArchive(sector=SECTOR, n=50, seed=4, listing_mode=mode, listing_cuts=cuts) as archive:
        source = open_source(archive.url, max_attempts=3)
        if outcome == "whole":
            listings = listing.fetch_listings(SECTOR, tmp_path, source)
            assert listings.bulk_script.read_bytes() == archive.sector.bulk_script()
            assert listings.target_list.read_bytes() == archive.sector.target_list()
            assert archive.request_count() == 6
        else:
            with pytest.raises(listing.ListingError, match=r"cannot fetch .*hlsp_tglc_tess_ffi_s0023_tess_v1_llc\.sh "
                                                           r"whole: incomplete body: .*after 3 attempt"):
                listing.fetch_listings(SECTOR, tmp_path, source)
            assert archive.request_count() == 3
            assert not list((tmp_path / "s0023").iterdir())


def test_a_mirror_is_read_in_place(served, tmp_path):
    mirror = tmp_path / "mirror"
    for relpath in (layout.bulk_script_relpath(SECTOR), layout.target_list_relpath(SECTOR)):
        (mirror / relpath).parent.mkdir(parents=True, exist_ok=True)
        (mirror / relpath).write_bytes(b"#GAIADR3_ID,TIC_ID,RA,DEC\n")
    listings = listing.fetch_listings(SECTOR, tmp_path / "data", open_source(str(mirror)))
    assert listings.bulk_script == mirror / layout.bulk_script_relpath(SECTOR)
    assert listings.target_list == mirror / layout.target_list_relpath(SECTOR)
    assert not (tmp_path / "data").exists()  # no copy, no manifest


# ---- the two listings must agree --------------------------------------------------------------------------------
def _write_listings(tmp_path, bulk_ids, target_ids) -> listing.Listings:
    bulk = tmp_path / "bulk.sh"
    lines = ["#!/bin/sh"] + [f"curl -f --create-dirs --output '{layout.lc_relpath(g, SECTOR, 1, 2)}' "
                             f"https://example.org/x" for g in bulk_ids]
    bulk.write_text("\n".join(lines) + "\n")
    targets = tmp_path / "s0023.csv"
    targets.write_text("#GAIADR3_ID,TIC_ID,RA,DEC\n" + "".join(f"{g},{k + 1},10.5,-20.25\n"
                                                               for k, g in enumerate(target_ids)))
    return listing.Listings(SECTOR, bulk, targets)


def _catalog(listings: listing.Listings):
    return listing.build_catalog(listing.parse_bulk_script(listings.bulk_script, SECTOR),
                                 listing.read_target_list(listings.target_list), SECTOR, listings=listings)


IDS = 10**17 + np.arange(1, 113, dtype=np.int64)  # 112 distinct Gaia ids


def test_listings_that_agree_within_five_percent(tmp_path):
    a = IDS[:100].tolist()
    # 5 of 100 on each side missing from the other (exactly 5%), and duplicates on both sides count once
    listings = _write_listings(tmp_path, a[:95] + IDS[100:105].tolist() + a[:3], a + a[:2])
    assert len(_catalog(listings)) == 95


@pytest.mark.parametrize("bulk_ids, target_ids, counts", [
    (IDS[:100], np.concatenate([IDS[:94], IDS[100:106]]), ("6 of the 100 objects", "(6.0%)", "6 of its 100", "(6.0%)")),
    (IDS[:100], IDS[:106], ("6 of the 106 objects", "(5.7%)", "0 of its 100", "(0.0%)")),
    (IDS[:106], IDS[:100], ("0 of the 100 objects", "(0.0%)", "6 of its 106", "(5.7%)")),
])
def test_listings_that_disagree_are_refused(tmp_path, bulk_ids, target_ids, counts):
    listings = _write_listings(tmp_path, bulk_ids.tolist() * 2, target_ids.tolist())
    with pytest.raises(listing.ListingError) as caught:
        _catalog(listings)
    message = str(caught.value)
    no_light_curve, share_1, no_row, share_2 = counts
    assert f"{no_light_curve} of the target list {listings.target_list} {share_1} have no light curve in the " \
           f"bulk-download script {listings.bulk_script}" in message
    assert f"and {no_row} light curves {share_2} have no row in the target list" in message
    assert "--refresh-listings" in message and "sector number" in message and "\n" not in message


# ---- rejected lines ---------------------------------------------------------------------------------------------
def test_rejected_lines_are_reported_cut_short(tmp_path):
    good = layout.lc_relpath(6479517581213243264, SECTOR, 1, 2)
    huge = b"curl --output '" + b"x" * 10_000_000 + b"'"
    path = tmp_path / "bulk.sh"
    path.write_bytes(b"#!/bin/sh\n" + huge + b"\r\n" + f"curl -f --output '{good}' https://x/y\n".encode()
                     + "curl --output 'caf\u00e9/../etc'\n".encode())
    bulk = listing.parse_bulk_script(path, SECTOR)
    assert bulk.gaiadr3_id.tolist() == [6479517581213243264] and bulk.n_rejected == 2
    assert bulk.rejected[0] == huge[:300].decode() + f"... [{len(huge) + 1} bytes, cut]"
    assert bulk.rejected[1] == "curl --output 'caf\u00e9/../etc'"
