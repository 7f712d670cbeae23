"""Many sectors in one build: sector specs, ``-s all``, templates, per-sector outputs equal to one-sector builds,
failures per sector, resume, the star listed twice, and the final summary. Real builds in subprocesses against the
demo archive serving a release over HTTP, and against a mirror of it written by ``write_mirror``."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_env
from tglc_builder import layout
from tglc_builder.arguments import BuildArguments, parse_sectors
from tglc_builder.demo import LocalArchive, write_mirror
from tglc_builder.errors import UsageError
from tglc_builder.report import BuildSummary, Failure, closing_lines
from tglc_builder.reader import read_tglc
from tglc_builder.sources.http import linked_names
from tglc_builder.sources.local import LocalSource

SCRIPT = str(REPO / "build_parent_sample.py")
SECTORS, N, SEED = (1, 2), 40, 5
HDF5_TEMPLATE = "out/s{sector:04d}/hdf5"


@pytest.fixture(scope="module")
def release():
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED) as archive:
        yield archive


def _build(root: Path, url: str, sector: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_command(root, url, sector, *extra), env=run_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=root)


def _command(root: Path, url: str, sector: str, *extra: str) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    return [sys.executable, SCRIPT, "-s", sector, "--tglc_data_path", "data", "--format", "both", "--mast-url", url,
            "-n", "2", *extra]


def _hdf5_path(sector: int | None = None) -> list[str]:
    return ["--hdf5_output_path", HDF5_TEMPLATE if sector is None else HDF5_TEMPLATE.format(sector=sector)]


def _outputs(root: Path) -> dict[str, bytes]:
    """Every file a build leaves, by path under ``root``, except the listings' manifests (they record when and from
    which URL a listing was fetched) and the logs; HATS properties files without their ``hats_creation_date`` (the
    time they were written: two one-sector builds differ there too)."""
    return {str(f.relative_to(root)): _without_date(f) for f in sorted(root.rglob("*"))
            if f.is_file() and not f.name.endswith(".manifest.json") and not f.name.startswith("stderr")
            and f.relative_to(root).parts[:2] != ("data", "stars")}  # a multi-sector build's own stars catalog


def _without_date(file: Path) -> bytes:
    data = file.read_bytes()
    if file.name.endswith("properties"):
        data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"hats_creation_date"))
    return data


def _catalog_size(archive: LocalArchive, sector: int) -> int:
    return len(archive.release[sector].expected_catalog_indices())


# ---- sector specs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, sectors", [
    (23, (23,)), ("23", (23,)), ("1-13", tuple(range(1, 14))), ("1,7,8,34", (1, 7, 8, 34)),
    ("1-13,27", (*range(1, 14), 27)), ("all", None), ("ALL", None), ([3, 1, 2], (1, 2, 3)), ("2-2", (2,)),
    (" 5 , 3-4 ", (3, 4, 5)),
])
def test_sector_specs(spec, sectors):
    assert parse_sectors(spec) == sectors


@pytest.mark.parametrize("spec, message", [
    ("", "'an empty item' is not a sector or a range"),
    ("1,,2", "'an empty item' is not a sector or a range"),
    ("abc", "'abc' is not a sector or a range"),
    ("1-3-5", "'1-3-5' is not a sector or a range"),
    ("13-1", "the range 13-1 runs backwards; give 1-13"),
    ("0", "sectors run from 1 to 9999"),
    ("1-10000", "sectors run from 1 to 9999"),
    ([], "must be a sector number, a range or a list"),
    (2.5, "must be a sector number, a range or a list"),
    (True, "must be a sector number, a range or a list"),
])
def test_bad_sector_specs(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_sectors(spec)


def test_one_sector_arguments_are_as_before(tmp_path):
    args = BuildArguments(sector="23", tglc_data_path=tmp_path)
    assert args.sector == 23 and not args.several and args.for_sector(23) is args
    assert args.hdf5_output_dir == tmp_path / "s0023" / "MultimodalUniverse"
    assert args.fits_dir == tmp_path / "s0023" / "fits_lcs"


def test_several_sectors_take_templates(tmp_path):
    args = BuildArguments(sector=[1, 2], tglc_data_path=tmp_path, hdf5_output_dir=str(tmp_path / "s{sector:04d}"))
    one = args.for_sector(2)
    assert args.several and one.sector == 2 and not one.several
    assert one.hdf5_output_dir == tmp_path / "s0002"
    assert one.fits_dir == tmp_path / "s0002" / "fits_lcs" and one.hats_output_dir == tmp_path / "s0002" / "hats"
    with pytest.raises(UsageError, match=re.escape("--fits_output_path 'fits' names one folder for several sectors: "
                                                   "give a template with {sector}")):
        BuildArguments(sector="all", fits_dir="fits")
    with pytest.raises(UsageError, match=re.escape("--hats_output_path 'h/{}' is not a valid template")):
        BuildArguments(sector="1-2", hats_output_dir="h/{}")


@pytest.mark.parametrize("argv, message", [
    (["-s", "5-2"], "error: sector '5-2': the range 5-2 runs backwards; give 2-5"),
    (["-s", "1,x"], "error: sector '1,x': 'x' is not a sector or a range; give e.g. 23, 1-13, 1,7,8,34, 1-13,27 "
                    "or all"),
    (["-s", "1-2", "--hdf5_output_path", "out/hdf5"],
     "error: --hdf5_output_path 'out/hdf5' names one folder for several sectors: give a template with {sector}, "
     "e.g. --hdf5_output_path './out/s{sector:04d}/hdf5'"),
])
def test_bad_specs_and_paths_exit_2_with_one_line(tmp_path, argv, message):
    result = subprocess.run([sys.executable, SCRIPT, *argv, "--tglc_data_path", "data", "--demo"], env=run_env(),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing created


# ---- listing the archive's sectors ----------------------------------------------------------------------------
def test_index_page_links_are_untrusted_data():
    page = (b'<a href="?C=N;O=D">Name</a><a href="/hlsps/tglc/">Parent</a>'
            b'<a href="hlsp_tglc_tess_ffi_s0007_tess_v1_llc.sh">x</a>'
            b"<A HREF='https://elsewhere/download_scripts/hlsp_tglc_tess_ffi_s0034_tess_v1_llc.sh'>y</A>"
            b'<a href="hlsp_tglc_tess_ffi_s0012_tess_v2_llc.sh">no: the build fetches the v1 name</a>'
            b'<a href=hlsp_tglc_tess_ffi_s0008_tess_v1_llc.sh>z</a>'
            b'<a href="hlsp_tglc_tess_ffi_s0009_tess_v1_llc.sh.bak">no</a>'
            b'<a href="hlsp_tglc_tess_ffi_s10_tess_v1_llc.sh">no</a>'
            b'<a href="../hlsp_tglc_tess_ffi_s0000_tess_v1_llc.sh">no</a>'
            b'<a href="hlsp_tglc_tess_ffi_s0011_tess_v1_llc.sh; rm -rf">no</a>')
    assert layout.sectors_of_names(linked_names(page)) == [7, 8, 34]


def test_release_index_page_and_mirror_list_the_sectors(release, tmp_path):
    from tglc_builder.sources import open_source

    assert open_source(release.url).list_sectors() == [1, 2]
    mirror = write_mirror(tmp_path / "mirror", release)
    assert LocalSource(str(mirror)).list_sectors() == [1, 2]
    (mirror / "download_scripts" / "notes.sh").write_text("")
    for name in os.listdir(mirror / "download_scripts"):
        if name.endswith("_llc.sh"):
            os.remove(mirror / "download_scripts" / name)
    assert LocalSource(str(mirror)).list_sectors() == []


def test_all_on_an_archive_that_lists_nothing_exits_2(tmp_path):
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED, index=False) as archive:
        url = archive.url
        result = _build(tmp_path, url, "all")
        assert archive.fits_requests() == {}
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: {url} lists no sector's bulk-download script in download_scripts/; give the sectors "
        "explicitly, e.g. -s 1-13, or if it holds no listings, their root with --listing-url, e.g. --listing-url "
        "https://archive.stsci.edu/hlsps/tglc")
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [result.stderr.splitlines()[-1]]


# ---- the release, built together and alone ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def together(release, tmp_path_factory):
    """``-s all`` (the release's sectors 1 and 2), both formats, an HDF5 template; its stderr and folder."""
    root = tmp_path_factory.mktemp("together")
    result = _build(root, release.url, "all", *_hdf5_path())
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stderr


def test_each_sector_equals_its_one_sector_build_byte_for_byte(release, together, tmp_path):
    root, _ = together
    for sector in SECTORS:
        result = _build(tmp_path, release.url, str(sector), *_hdf5_path(sector))
        assert result.returncode == 0, result.stderr[-3000:]
    both, alone = _outputs(root), _outputs(tmp_path)
    assert (root / "data" / "stars" / "tglc_stars" / "hats.properties").is_file()  # and the stars, joined after
    assert not (tmp_path / "data" / "stars").exists()  # one-sector builds join none unless asked (--stars)
    assert both.keys() == alone.keys()
    assert [name for name in both if both[name] != alone[name]] == []
    for sector in SECTORS:  # every output there is: HDF5 shards and HATS pixels of both sectors
        tag = layout.sector_tag(sector)
        assert any(re.fullmatch(rf"out/{tag}/hdf5/TGLC/healpix=\d+/\d{{3}}-of-\d{{3}}\.hdf5", k) for k in both)
        assert any(re.fullmatch(rf"data/{tag}/hats/tglc_{tag}/dataset/Norder=4/Dir=\d+/Npix=\d+\.parquet", k)
                   for k in both)


def test_a_mirror_of_the_release_builds_the_same_datasets(release, together, tmp_path):
    root, _ = together
    mirror = write_mirror(tmp_path / "mirror", release)
    result = _build(tmp_path / "build", str(mirror), "1-2", *_hdf5_path())
    assert result.returncode == 0, result.stderr[-3000:]
    datasets = re.compile(r"(out/s\d{4}/hdf5|data/s\d{4}/hats)/")
    want = {k: v for k, v in _outputs(root).items() if datasets.match(k)}
    got = {k: v for k, v in _outputs(tmp_path / "build").items() if datasets.match(k)}
    assert want.keys() == got.keys() and [k for k in want if want[k] != got[k]] == []


def test_the_star_listed_twice_is_two_rows_everywhere(release, together):
    root, _ = together
    for sector in SECTORS:
        synthetic = release.release[sector]
        (twin,) = np.flatnonzero(synthetic.twin)
        gaia = int(synthetic.gaia_ids[twin])
        paths = sorted(synthetic.relpath(i) for i in np.flatnonzero(synthetic.gaia_ids == gaia))
        assert len(paths) == 2 and paths[0] != paths[1]  # two camera/CCD paths
        fits = {p: read_tglc(root / "data" / layout.sector_tag(sector) / "fits_lcs" / p, gaia) for p in paths}
        by_camera = {int(c.primary["CAMERA"]): c for c in fits.values()}
        assert sorted(by_camera) == [3, 4]
        rows = []
        for file in (root / HDF5_TEMPLATE.format(sector=sector)).glob("TGLC/healpix=*/*.hdf5"):
            with h5py.File(file) as h5:
                for j in np.flatnonzero(h5["gaiadr3_id"][()] == gaia):
                    rows.append(h5["psf_flux"][j, :h5["n_cadences"][j]])
        assert len(rows) == 2
        assert sorted(r.tobytes() for r in rows) == sorted(
            np.asarray(c.data["psf_flux"], np.float32).tobytes() for c in fits.values())
        hats = root / "data" / layout.sector_tag(sector) / "hats"
        table = pq.read_table(list(hats.glob("tglc_s*/dataset/Norder=4/Dir=*/Npix=*.parquet")),
                              filters=[("gaiadr3_id", "=", gaia)])
        assert sorted(table.column("camera").to_pylist()) == [3, 4]
        for camera, series in zip(table.column("camera").to_pylist(), table.column("lightcurve").to_pylist()):
            assert np.array_equal(np.array(series["time"]), np.asarray(by_camera[camera].data["time"], float))


def test_the_final_summary_of_several_sectors(release, together):
    root, stderr = together
    lines = [line.split(": ", 1)[1] for line in stderr.splitlines() if " INFO tglc_builder.run: " in line]
    end = lines[-(2 * len(SECTORS) + len(SECTORS) + 2):]
    sizes = {s: _catalog_size(release, s) for s in SECTORS}
    files = {s: len(list((root / HDF5_TEMPLATE.format(sector=s)).glob("TGLC/healpix=*/*.hdf5")))
             + len(list((root / "data" / layout.sector_tag(s) / "hats").glob("tglc_s*/dataset/*/*/*.parquet")))
             for s in SECTORS}
    total = sum(sizes.values())
    expected = [f"Sector {s}: {sizes[s]} light curves in the output (0 already there, {sizes[s]} written now into "
                f"{files[s]} files); FITS files: {sizes[s]} downloaded, 0 already on disk; 0 failed" for s in SECTORS]
    expected.append(f"All 2 sectors: {total} light curves in the output (0 already there, {total} written now into "
                    f"{sum(files.values())} files); FITS files: {total} downloaded, 0 already on disk; 0 failed")
    for s in SECTORS:
        expected += [f"Dataset: {root / HDF5_TEMPLATE.format(sector=s)} (HDF5, {sizes[s]} light curves)",
                     f"Dataset: {root / 'data' / layout.sector_tag(s) / 'hats'} (HATS, {sizes[s]} light curves)"]
    expected.append(f'Load one with: datasets.load_dataset("{root / HDF5_TEMPLATE.format(sector=1)}", '
                    'split="train")')
    assert end == expected


def test_the_summary_of_one_sector_says_where_and_how_to_load(tmp_path):
    summary = BuildSummary(downloaded=3, present=1, complete=10, carried=2, converted=5, files_written=2,
                           failures=[Failure(1, "p", "download", "gone", 5)], outputs=[("hdf5", tmp_path / "out")])
    assert closing_lines({23: summary}, {"hdf5": "HDF5"}) == [
        "Sector 23: 15 light curves in the output (10 already there, 5 written now into 2 files, of which 2 copied "
        "from earlier files); FITS files: 3 downloaded, 1 already on disk; 1 failed",
        f"Dataset: {tmp_path / 'out'} (HDF5, 15 light curves)",
        f'Load it with: datasets.load_dataset("{tmp_path / "out"}", split="train")',
    ]
    one = BuildSummary(converted=1, files_written=1)
    assert one.describe() == ("1 light curve in the output (0 already there, 1 written now into 1 file); FITS files: "
                              "0 downloaded, 0 already on disk; 0 failed")


# ---- failures per sector, and resuming -------------------------------------------------------------------------
def test_failures_csv_per_sector_then_a_rerun_completes(tmp_path):
    # Every file's first two requests fail with a 500 for a share of the files; one attempt per file: they fail.
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED, faults={"500": 0.3}) as archive:
        first = _build(tmp_path, archive.url, "1-2", "--max-attempts", "1")
        assert first.returncode == 1, first.stderr[-3000:]
        failed = {}
        for sector in SECTORS:
            with open(tmp_path / "data" / layout.sector_tag(sector) / "failures.csv") as f:
                rows = list(csv.DictReader(f))
            failed[sector] = {row["path"] for row in rows}
            assert rows and all(row["path"].startswith(f"{layout.sector_tag(sector)}/") for row in rows)
            assert all("500" in row["reason"] for row in rows), rows
            assert f"Sector {sector}: {len(rows)} object(s) failed; see " in first.stderr
        served = {p for p, k in archive.fits_requests().items() if k == 1}
        assert set().union(*failed.values()) <= served
        # a sector joins the stars catalog whole: neither has yet
        assert "Sector(s) 1-2 not joined into the stars catalog" in first.stderr
        assert not (tmp_path / "data" / "stars").exists()
        second = _build(tmp_path, archive.url, "1-2", "--max-attempts", "3")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "stars of sectors 1,2 in" in second.stderr
    for sector in SECTORS:
        assert not (tmp_path / "data" / layout.sector_tag(sector) / "failures.csv").exists()
        assert f"Sector {sector}: {_catalog_size(archive, sector)} light curves in the output" in second.stderr


def test_a_killed_multi_sector_build_resumes_to_the_same_bytes(release, together, tmp_path):
    root, _ = together
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED, latency=0.1) as slow:
        log = tmp_path / "stderr-1.txt"
        with open(log, "w") as err:
            process = subprocess.Popen(_command(tmp_path, slow.url, "all", *_hdf5_path()), env=run_env(),
                                       stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 120
        first = tmp_path / HDF5_TEMPLATE.format(sector=1) / "TGLC"
        first_hats = tmp_path / "data" / "s0001" / "hats" / "tglc_s0001" / "dataset"
        # killed once a shard is whole in both formats (its HDF5 file alone would not count as done)
        while not (list(first.glob("healpix=*/*.hdf5")) and list(first_hats.glob("Norder=4/Dir=*/Npix=*.parquet"))) \
                and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    written = len(list(tmp_path.glob("out/s*/hdf5/TGLC/healpix=*/*.hdf5")))
    total = len(list(root.glob("out/s*/hdf5/TGLC/healpix=*/*.hdf5")))
    assert 0 < written < total  # killed part-way
    result = _build(tmp_path, release.url, "all", *_hdf5_path())
    assert result.returncode == 0, result.stderr[-3000:]
    complete = int(re.search(r"All 2 sectors: \d+ light curves in the output \((\d+) already there", result.stderr)[1])
    assert complete > 0
    want, got = _outputs(root), _outputs(tmp_path)
    assert want.keys() == got.keys() and [k for k in want if want[k] != got[k]] == []


# ---- a star listed twice ---------------------------------------------------------------------------------------
def test_the_catalog_keeps_both_paths_of_a_star_and_one_copy_of_a_path():
    from astropy.table import Table

    from tglc_builder.listing import BulkListing, build_catalog

    # star 7 under cam1-ccd1, again under the same path (dropped), then under cam2-ccd3 (kept); star 5 once
    bulk = BulkListing(gaiadr3_id=np.array([7, 5, 7, 7, 9], np.int64), cam=np.array([1, 1, 1, 2, 1], np.int16),
                       ccd=np.array([1, 2, 1, 3, 1], np.int16))
    targets = Table({"GAIADR3_ID": np.array([5, 7, 9]), "TIC_ID": np.array([50, 70, 90]),
                     "RA": np.array([1.0, 2.0, 3.0]), "DEC": np.array([-1.0, -2.0, -3.0])})
    catalog = build_catalog(bulk, targets, 3)
    assert catalog["gaiadr3_id"].tolist() == [7, 5, 7, 9]
    assert list(zip(catalog["cam"].tolist(), catalog["ccd"].tolist())) == [(1, 1), (1, 2), (2, 3), (1, 1)]
    assert catalog["TIC_ID"].tolist() == [70, 50, 70, 90] and catalog["RA"].tolist() == [2.0, 1.0, 2.0, 3.0]
    assert [str(p) for p in catalog["path"]] == [layout.lc_relpath(g, 3, c, d) for g, c, d in
                                                     [(7, 1, 1), (5, 1, 2), (7, 2, 3), (9, 1, 1)]]


def test_rows_of_a_star_listed_twice_are_never_carried_by_id():
    from tglc_builder.units import _carriable

    assert _carriable(np.array([4, 7, 9]), np.array([4, 7, 7, 9])) == {4: 0, 9: 2}
    assert _carriable(np.array([4, 7, 7]), np.array([4, 7])) == {4: 0}
    assert _carriable(np.array([4, 7]), np.array([7, 4])) == {4: 0, 7: 1}


def test_a_shard_rewritten_for_one_path_of_the_twin_equals_a_clean_build(together, tmp_path):
    """The first build fails one of the twin's two files (its header names another sector); the rerun rewrites the
    twin's shard, carrying its other rows from the first file and fetching both of the twin's."""
    root, _ = together
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED) as good:
        twin = int(np.flatnonzero(good.release[1].twin)[0])
        with LocalArchive(sectors=SECTORS, n=N, seed=SEED, tamper={twin: {"SECTOR": 9}}) as bad:
            first = _build(tmp_path, bad.url, "1", *_hdf5_path(1))
        assert first.returncode == 1, first.stderr[-3000:]
        with open(tmp_path / "data" / "s0001" / "failures.csv") as f:
            assert [row["path"] for row in csv.DictReader(f)] == [good.release[1].relpath(twin)]
        second = _build(tmp_path, good.url, "1", *_hdf5_path(1))
        assert second.returncode == 0, second.stderr[-3000:]
    datasets = re.compile(r"(out/s0001/hdf5|data/s0001/hats)/")
    want = {k: v for k, v in _outputs(root).items() if datasets.match(k)}
    got = {k: v for k, v in _outputs(tmp_path).items() if datasets.match(k)}
    assert want.keys() == got.keys() and [k for k in want if want[k] != got[k]] == []


# ---- S3 ----------------------------------------------------------------------------------------------------------
def test_a_bucket_lists_its_sectors(release, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    from tglc_builder.sources import open_source

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = "http://%s:%d" % server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k",
                              aws_secret_access_key="k")
        client.create_bucket(Bucket="tglc")
        for sector in SECTORS:
            client.put_object(Bucket="tglc", Key=f"hlsps/tglc/{layout.bulk_script_relpath(sector)}", Body=b"#\n")
        client.put_object(Bucket="tglc", Key="hlsps/tglc/download_scripts/hlsp_tglc_tess_ffi_s0003_tess_v1_llc.sh.x",
                          Body=b"")
        client.put_object(Bucket="tglc", Key="other/download_scripts/readme.txt", Body=b"")
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "k")
        monkeypatch.setenv("TGLC_S3_ANON", "0")
        assert open_source("s3://tglc/hlsps/tglc").list_sectors() == [1, 2]
        assert open_source("s3://tglc/other").list_sectors() == []
        assert open_source("s3://tglc/nothing").list_sectors() == []
    finally:
        server.stop()


# ---- the Python class ------------------------------------------------------------------------------------------
def test_the_python_class_builds_several_sectors(tmp_path):
    from build_parent_sample import TGLC_Downloader

    with TGLC_Downloader(sector="1-2", tglc_data_path=tmp_path / "data", hdf5_output_dir=str(tmp_path / "s{sector}"),
                         fits_dir=str(tmp_path / "fits" / "{sector:02d}"), mast_url="demo", demo_size=30) as d:
        with pytest.raises(UsageError, match=re.escape("create_sector_catalog() works on one sector; with several, "
                                                       "use download_sector() (the whole build)")):
            d.create_sector_catalog()
        summary = d.download_sector()
        archive = LocalArchive(sectors=SECTORS, n=30)  # the same release, to count its light curves
    assert sorted(summary.sectors) == [1, 2] and not summary.failures
    for sector in SECTORS:
        n = _catalog_size(archive, sector)
        assert summary.sectors[sector].in_output == summary.sectors[sector].downloaded == n
        assert sum(len(h5py.File(f)["gaiadr3_id"]) for f in (tmp_path / f"s{sector}").glob("TGLC/*/*.hdf5")) == n
        assert len(list((tmp_path / "fits" / f"{sector:02d}").rglob("*.fits"))) == n
    assert summary.in_output == sum(_catalog_size(archive, s) for s in SECTORS)
    with pytest.raises(UsageError, match=re.escape("--hdf5_output_path")):
        TGLC_Downloader(sector=[1, 2], tglc_data_path=tmp_path, hdf5_output_dir=tmp_path / "one", fits_dir="f{sector}")


def test_demo_with_all_serves_and_builds_a_release_of_three_sectors(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "-s", "all", "--demo", "--demo-size", "30", "--tglc_data_path",
                             "data"], env=run_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    archive = LocalArchive(sectors=(1, 2, 3), n=30)
    assert "INFO tglc_builder.run: The archive lists 3 sector(s): 1-3\n" in result.stderr
    for sector in (1, 2, 3):
        folder = tmp_path / "data" / layout.sector_tag(sector) / "MultimodalUniverse"
        assert f"Dataset: {folder} (HDF5, {_catalog_size(archive, sector)} light curves)\n" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["s0001", "s0002", "s0003", "stars"]


def test_several_sectors_on_dask_build_the_same_datasets(release, together, tmp_path):
    distributed = pytest.importorskip("distributed")
    from build_parent_sample import TGLC_Downloader

    root, _ = together
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        with TGLC_Downloader(sector=list(SECTORS), tglc_data_path=tmp_path / "data",
                             hdf5_output_dir=str(tmp_path / HDF5_TEMPLATE), fits_dir=str(tmp_path / "fits{sector}"),
                             mast_url=release.url, client=client, format="both") as d:
            summary = d.download_sector()
    assert not summary.failures and sorted(summary.sectors) == list(SECTORS)
    datasets = re.compile(r"(out/s\d{4}/hdf5|data/s\d{4}/hats)/")
    want = {k: v for k, v in _outputs(root).items() if datasets.match(k)}
    got = {k: v for k, v in _outputs(tmp_path).items() if datasets.match(k)}
    assert want.keys() == got.keys() and [k for k in want if want[k] != got[k]] == []


def test_the_progress_shows_the_sector_being_fetched(caplog):
    """Logged progress (stderr not a terminal, as here) names the sector being fetched after its counts."""
    sys.path.insert(0, str(REPO / "tests"))
    import _tasks

    from tglc_builder.executor import Executor

    with caplog.at_level(logging.INFO, logger="tglc_builder.progress"), Executor(1) as ex:
        ex.postfix("sector 7")
        for k, _ in enumerate(ex.run(_tasks.square, [(i,) for i in range(3)], total=3, desc="Building", unit="lc",
                                     weights=[1, 1, 1], lost=lambda task, error: None)):
            if k == 0:
                ex.postfix("sector 8")
    lines = [r.getMessage() for r in caplog.records if r.name == "tglc_builder.progress"]
    assert lines[0] == "Building: 30% (1 of 3 lc), sector 7" and lines[-1] == "Building: 100% (3 of 3 lc), sector 8"
