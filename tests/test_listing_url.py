"""Light curves from a bucket, listings from another root (``--listing-url``): MAST's cloud copy may hold no
listings. The bucket is a local S3 server (moto) seen through a proxy that records every request; the listings come
from the demo archive over HTTP, which counts its own requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.table import Table

from tglc_builder import layout, run
from tglc_builder.arguments import BuildArguments
from tglc_builder.demo import write_mirror
from tglc_builder.errors import UsageError
from tglc_builder.sources import DEFAULT_MAST_URL, open_source

pytest.importorskip("s3fs")

from conftest import REPO, assert_contract, run_env  # noqa: E402
from helpers.bucket import BUCKET, public_bucket, upload  # noqa: E402
from test_sources import FaultyProxy  # noqa: E402

SECTOR, PREFIX = 23, "mast/hlsp/tglc"
LISTING_DIRS = (layout.DOWNLOAD_SCRIPTS, layout.target_list_relpath(SECTOR).split("/")[0])


@pytest.fixture(scope="module")
def bucket(archive, tmp_path_factory):
    """The archive's light curves in s3://tglc-mirror/mast/hlsp/tglc, without either listing; yields the proxy to
    the S3 server (its URL is the endpoint)."""
    mirror = write_mirror(tmp_path_factory.mktemp("tree"), archive)
    listings = {path.relative_to(mirror).as_posix(): None for folder in LISTING_DIRS
                for path in (mirror / folder).rglob("*")}
    with public_bucket() as url:
        assert upload(url, mirror, PREFIX, listings) == archive.sector.n  # every light curve, nothing else
        proxy = FaultyProxy(url)
        yield proxy
        proxy.close()


@pytest.fixture
def s3_env(monkeypatch, tmp_path, bucket):
    """An anonymous user on a fresh machine, whose S3 endpoint is the recording proxy."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "TGLC_S3_ANON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.url)
    return monkeypatch


def _no_listings_line(bucket, sector: str = "23") -> str:
    if sector == "all":
        return (f"s3://{BUCKET}/{PREFIX} at {bucket.url} lists no sector's bulk-download script in download_scripts/; "
                "give the sectors explicitly, e.g. -s 1-13, or if it holds no listings, their root with "
                f"--listing-url, e.g. --listing-url {DEFAULT_MAST_URL}")
    return (f"s3://{BUCKET}/{PREFIX} at {bucket.url} holds no listings (nothing in download_scripts/): read them "
            f"from another root with --listing-url, e.g. --listing-url {DEFAULT_MAST_URL}")


def test_light_curves_from_the_bucket_listings_from_http(archive, bucket, s3_env, tmp_path):
    from build_parent_sample import TGLC_Downloader

    s3_requests, fits_before, http_before = len(bucket.requests), archive.fits_requests(), archive.request_count()
    with TGLC_Downloader(sector=SECTOR, tglc_data_path=tmp_path / "data", hdf5_output_dir=tmp_path / "out",
                         fits_dir=tmp_path / "fits", n_processes=2, mast_url=f"s3://{BUCKET}/{PREFIX}",
                         listing_url=archive.url) as downloader:
        summary = downloader.download_sector(tiny=True)
    assert summary.failures == [] and summary.downloaded == summary.converted == 100

    catalog = Table.read(tmp_path / "data" / "s0023" / "s0023-catalog_tiny.hdf5", path="catalog")
    truth = archive.sector
    assert catalog["gaiadr3_id"].tolist() == truth.gaia_ids[truth.expected_catalog_indices()[:100]].tolist()
    assert catalog.meta["listing_url"] == archive.url
    assert catalog.meta["mast_url"] == f"s3://{BUCKET}/{PREFIX} at {bucket.url}"
    assert_contract(tmp_path / "out", catalog, tmp_path / "fits")  # every value equal to the FITS files
    for row in catalog:
        path = row["path"]
        assert (tmp_path / "fits" / path).read_bytes() == truth.fits_bytes(truth.index_of(path))

    # the bucket was asked for light curves only, the HTTP archive for the two listings only
    asked = [path.split("?")[0] for path, _ in bucket.requests[s3_requests:]]
    fits_asked = sorted(p for p in asked if p.endswith(".fits"))
    assert fits_asked == sorted(f"/{BUCKET}/{PREFIX}/{path}" for path in catalog["path"])
    assert not any(part in path for path in asked for part in LISTING_DIRS)
    assert archive.fits_requests() == fits_before
    assert archive.request_count() - http_before == 2

    # each listing's manifest says where it came from
    for relpath in (layout.bulk_script_relpath(SECTOR), layout.target_list_relpath(SECTOR)):
        manifest = json.loads((tmp_path / "data" / "s0023" / f"{Path(relpath).name}.manifest.json").read_text())
        assert (manifest["url"], manifest["root"]) == (f"{archive.url}/{relpath}", archive.url)


def test_all_sectors_are_listed_by_the_listing_root(archive, bucket, s3_env, tmp_path):
    args = BuildArguments(sector="all", tglc_data_path=tmp_path, mast_url=f"s3://{BUCKET}/{PREFIX}",
                          listing_url=archive.url)
    source = open_source(args.mast_url)
    assert run.sectors_of(args, source) == (SECTOR,)
    without = BuildArguments(sector="all", tglc_data_path=tmp_path, mast_url=f"s3://{BUCKET}/{PREFIX}")
    with pytest.raises(UsageError) as caught:
        run.sectors_of(without, source)
    assert str(caught.value) == _no_listings_line(bucket, "all")


@pytest.mark.parametrize("sector", ["23", "all"])
def test_a_bucket_without_listings_names_the_flag(bucket, s3_env, tmp_path, sector):
    requests = len(bucket.requests)
    done = subprocess.run([sys.executable, str(REPO / "build_parent_sample.py"), "-s", sector, "--tiny",
                           "--mast-url", f"s3://{BUCKET}/{PREFIX}", "--tglc_data_path", str(tmp_path / "data")],
                          env=run_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"error: {_no_listings_line(bucket, sector)}"]
    assert not any(p.suffix == ".fits" for p in tmp_path.rglob("*"))
    assert not any(path.split("?")[0].endswith(".fits") for path, _ in bucket.requests[requests:])


def test_a_listing_root_without_the_sector_names_listing_url(archive, bucket, s3_env, tmp_path):
    args = BuildArguments(sector=24, tglc_data_path=tmp_path, mast_url=f"s3://{BUCKET}/{PREFIX}",
                          listing_url=archive.url)
    with pytest.raises(UsageError) as caught:
        run.make_catalog(args, open_source(args.mast_url), tiny=True)
    assert str(caught.value) == (
        f"sector 24: {archive.url}/{layout.bulk_script_relpath(24)} answered HTTP 404 Not Found; the archive has no "
        "such listing: check the sector number and --listing-url")


def test_a_mirror_without_listings_names_the_flag(archive, tmp_path):
    import shutil

    mirror = write_mirror(tmp_path / "tree", archive)
    for name in LISTING_DIRS:
        shutil.rmtree(mirror / name)
    source = open_source(str(mirror))
    args = BuildArguments(sector=SECTOR, tglc_data_path=tmp_path / "data", mast_url=str(mirror))
    with pytest.raises(UsageError) as caught:
        run.make_catalog(args, source, tiny=True)
    assert str(caught.value) == (f"{source.describe()} holds no listings (nothing in download_scripts/): read them "
                                 f"from another root with --listing-url, e.g. --listing-url {DEFAULT_MAST_URL}")
    # with the listings from the HTTP archive, the mirror's light curves make the catalog
    with_listings = BuildArguments(sector=SECTOR, tglc_data_path=tmp_path / "data", mast_url=str(mirror),
                                   listing_url=archive.url)
    catalog = run.make_catalog(with_listings, source, tiny=True)
    truth = archive.sector
    assert catalog["gaiadr3_id"].tolist() == truth.gaia_ids[truth.expected_catalog_indices()[:100]].tolist()
    assert (catalog.meta["mast_url"], catalog.meta["listing_url"]) == (source.describe(), archive.url)


def test_a_mirror_of_light_curves_only_builds_with_listings_from_elsewhere(archive, tmp_path):
    """With --listing-url, the archive of the light curves needs no listings of its own (a whole build, explicit
    sector); and a mistyped archive is one line and exit 2, not a failure per light curve (-s all too)."""
    import shutil

    mirror = write_mirror(tmp_path / "tree", archive)
    for name in LISTING_DIRS:
        shutil.rmtree(mirror / name)
    summary = run.run(BuildArguments(sector=SECTOR, tglc_data_path=tmp_path / "data", mast_url=str(mirror),
                                     listing_url=archive.url, tiny=True, tiny_size=5))
    assert summary.converted == 5 and not summary.failures
    for sector in (str(SECTOR), "all"):
        with pytest.raises(UsageError, match="does not exist"):
            run.run(BuildArguments(sector=sector, tglc_data_path=tmp_path / "data2", listing_url=archive.url,
                                   mast_url=str(tmp_path / "nonexistent"), tiny=True, tiny_size=5, stars=False))
