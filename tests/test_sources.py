"""Sources other than HTTP: a local mirror read in place, and a bucket on a local S3 server (moto) read through s3fs.

The mirror is a synthetic sector written to disk by the demo package; the bucket holds the same tree, uploaded
with boto3. The S3 source talks to the bucket anonymously through ``AWS_ENDPOINT_URL``, either directly or through a
proxy that throttles, drops connections and records what was asked.
"""

from __future__ import annotations

import http.client
import http.server
import multiprocessing
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tglc_builder import layout
from tglc_builder.context import OUTSIDE, TaskContext
from tglc_builder.demo import SyntheticSector, write_mirror
from tglc_builder.errors import UsageError
from tglc_builder.report import Failure
from tglc_builder.reader import read_tglc
from tglc_builder.sources import Fetched, SourceError, open_source

pytest.importorskip("s3fs")

from conftest import hdf5_values, run_env  # noqa: E402
from helpers.bucket import BUCKET, public_bucket, upload  # noqa: E402

SECTOR, N, SEED = 23, 30, 11
PREFIX = "hlsps/tglc"
MISSING, CORRUPT = 4, 7  # objects of the bucket: never uploaded, uploaded cut short


# ---- the tree, on disk and in a bucket ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sector() -> SyntheticSector:
    return SyntheticSector(SECTOR, N, SEED)


@pytest.fixture(scope="module")
def items(sector) -> list[tuple[int, str]]:
    return [(int(sector.gaia_ids[i]), sector.relpath(i)) for i in range(sector.n)]


@pytest.fixture(scope="module")
def mirror(sector, tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"), sector)


@pytest.fixture(scope="module")
def moto_url(sector, mirror) -> str:
    """A local S3 server holding the mirror under s3://tglc-mirror/hlsps/tglc, readable anonymously, but for one
    object left out and one cut short."""
    with public_bucket() as url:
        # whole FITS blocks, but no light-curve table
        upload(url, mirror, PREFIX, {sector.relpath(MISSING): None,
                                     sector.relpath(CORRUPT): sector.fits_bytes(CORRUPT)[:2 * 2880]})
        yield url


class FaultyProxy:
    """An HTTP proxy to the S3 server on 127.0.0.1 that records each request's headers and answers the requests
    for a key with the faults queued for it: ``"503"`` (SlowDown), ``"drop"`` (the body cut off mid-way) or
    ``"trickle"`` (the body at 100 bytes/s)."""

    def __init__(self, upstream: str, latency: float = 0.0):
        self.upstream = upstream.removeprefix("http://")
        self.latency = latency
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with proxy.lock:
                    proxy.requests.append((self.path, dict(self.headers)))
                    queued = proxy.faults.get(self.path.split("?")[0].lstrip("/"), [])
                    fault = queued.pop(0) if queued else None
                time.sleep(proxy.latency)
                if fault == "503":
                    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                            b"<Message>Please reduce your request rate.</Message></Error>")
                    return self._send(503, {"Content-Type": "application/xml"}, body)
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=10)
                upstream.request("GET", self.path, headers={k: v for k, v in self.headers.items()
                                                            if k.lower() != "host"})
                answer = upstream.getresponse()
                body = answer.read()
                upstream.close()
                headers = {k: v for k, v in answer.getheaders()
                           if k.lower() not in ("connection", "transfer-encoding", "content-length")}
                self._send(answer.status, headers, body, cut=len(body) // 2 if fault == "drop" else None,
                           trickle=fault == "trickle")

            def _send(self, status: int, headers: dict, body: bytes, cut: int | None = None,
                      trickle: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if trickle:
                    for start in range(0, len(body), 10):
                        self.wfile.write(body[start:start + 10])
                        self.wfile.flush()
                        time.sleep(0.1)
                elif cut is None:
                    self.wfile.write(body)
                else:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # clients hanging up when told to stop
                pass

        server = Server(("127.0.0.1", 0), Handler)
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def key(self, relpath: str) -> str:
        return f"{BUCKET}/{PREFIX}/{relpath}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """No AWS credentials or configuration anywhere: what an anonymous user on a fresh machine has."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "TGLC_S3_ANON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def proxy(moto_url):
    served = FaultyProxy(moto_url)
    yield served
    served.close()


def s3_source(monkeypatch, endpoint: str, url: str = f"s3://{BUCKET}/{PREFIX}", **settings):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return open_source(url, **settings)


def validator(items):
    return lambda path, i: read_tglc(path, items[i][0])


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part-" in p.name]


# ---- a local mirror ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_url", [False, True])
def test_mirror_is_read_in_place(mirror, sector, items, tmp_path, as_url):
    source = open_source(mirror.as_uri() if as_url else str(mirror))
    assert not source.owns_files and source.describe() == str(mirror)
    source.check()
    ghost = (123456789012345678, layout.lc_relpath(123456789012345678, SECTOR, 1, 1))
    fits_dir = tmp_path / "fits"
    seen = list(source.fetch_many(items + [ghost], fits_dir, validator(items), OUTSIDE))
    assert [i for i, _ in seen] == list(range(len(items) + 1))
    for i, fetched in seen[:-1]:
        assert fetched == Fetched(mirror / items[i][1], downloaded=False)
        assert fetched.path.read_bytes() == sector.fits_bytes(i)
    failure = seen[-1][1]
    assert (failure.gaiadr3_id, failure.path, failure.stage) == (*ghost, "download")
    assert failure.reason == f"not in the mirror {mirror}"
    assert not fits_dir.exists()  # nothing copied, nothing quarantined
    assert source.local_path(items[0][1]) == mirror / items[0][1]


def test_mirror_refuses_paths_outside_it(mirror, tmp_path):
    source = open_source(str(mirror))
    for bad in ("../outside.fits", "/etc/passwd", "s0023/../../outside.fits", "s0023//x.fits", ""):
        with pytest.raises(SourceError):
            source.local_path(bad)
    (outcome,) = [f for _, f in source.fetch_many([(1, "../mirror/x.fits")], tmp_path, validator([]), OUTSIDE)]
    assert outcome.stage == "download" and "inside the mirror" in outcome.reason


def test_mirror_stops_when_asked(mirror, items, tmp_path):
    source = open_source(str(mirror))
    seen = []
    for i, _ in source.fetch_many(items, tmp_path, validator(items), TaskContext(lambda: len(seen) >= 3)):
        seen.append(i)
    assert seen == [0, 1, 2]


def test_mirror_check_names_what_is_wrong(mirror, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "half" / "download_scripts").mkdir(parents=True)
    cases = {tmp_path / "nowhere": "does not exist", tmp_path / "a-file": "is not a directory",
             tmp_path: "not a MAST tree (no download_scripts/ or target_lists/", tmp_path / "half": "no target_lists/"}
    for path, message in cases.items():
        with pytest.raises(UsageError) as error:
            open_source(str(path)).check()
        text = str(error.value)
        assert message in text and str(path) in text and "\n" not in text


def test_mirror_listing_is_copied_whole(mirror, sector, tmp_path):
    source = open_source(str(mirror))
    relpath = layout.bulk_script_relpath(SECTOR)
    copy = source.fetch_listing(relpath, tmp_path / "listing.sh")
    assert (tmp_path / "listing.sh").read_bytes() == sector.bulk_script()
    assert copy.size == len(sector.bulk_script()) and copy.validators["Content-Length"] == str(copy.size)
    with pytest.raises(SourceError) as error:
        source.fetch_listing("target_lists/s0099.csv", tmp_path / "other.csv")
    assert error.value.permanent and not list(tmp_path.glob(".*"))


# ---- a bucket --------------------------------------------------------------------------------------------------
def test_s3_fetches_exact_bytes_anonymously(s3_env, proxy, sector, items, tmp_path):
    source = s3_source(s3_env, proxy.url, connections=4)
    assert source.owns_files and source.anon and proxy.url in source.describe()
    source.check()
    fits_dir = tmp_path / "fits"
    debris = fits_dir / Path(items[0][1]).with_name(f".{Path(items[0][1]).name}.part-99999")
    debris.parent.mkdir(parents=True)
    debris.write_bytes(b"left by a killed run")
    seen = list(source.fetch_many(items, fits_dir, validator(items), OUTSIDE))
    assert [i for i, _ in seen] == list(range(len(items)))
    assert not debris.exists()
    for i, outcome in seen:
        if i in (MISSING, CORRUPT):
            continue
        assert outcome == Fetched(fits_dir / items[i][1], downloaded=True, attempts=1)
        assert outcome.path.read_bytes() == sector.fits_bytes(i)
        assert outcome.checked.data.tobytes() == read_tglc(outcome.path).data.tobytes()  # read once, kept
    # anonymous: no request was signed
    assert proxy.requests and not any("Authorization" in headers for _, headers in proxy.requests)

    missing, corrupt = seen[MISSING][1], seen[CORRUPT][1]
    assert (missing.gaiadr3_id, missing.path, missing.stage) == (*items[MISSING], "download")
    assert missing.reason == "not found (NoSuchKey)" and missing.attempts == 1
    assert corrupt.reason.startswith("invalid file:") and corrupt.attempts == 1
    assert str(fits_dir / "corrupt" / items[CORRUPT][1]) in corrupt.reason and ".part-" not in corrupt.reason
    assert not (fits_dir / items[CORRUPT][1]).exists()
    assert (fits_dir / "corrupt" / items[CORRUPT][1]).read_bytes() == sector.fits_bytes(CORRUPT)[:2 * 2880]
    assert not temporary_files(fits_dir)

    # present files are neither fetched nor rewritten again
    asked = len(proxy.requests)
    stamps = {i: (fits_dir / relpath).stat().st_mtime_ns for i, (_, relpath) in enumerate(items)
              if i not in (MISSING, CORRUPT)}
    again = dict(source.fetch_many(items, fits_dir, validator(items), OUTSIDE))
    for i, stamp in stamps.items():
        assert again[i] == Fetched(fits_dir / items[i][1], downloaded=False)
        assert (fits_dir / items[i][1]).stat().st_mtime_ns == stamp
    assert len(proxy.requests) - asked == 2  # only the missing and the corrupt object are asked for again


def test_s3_retries_throttling_and_dropped_connections(s3_env, proxy, sector, items, tmp_path):
    throttled, dropped, hopeless = items[0][1], items[1][1], items[2][1]
    proxy.faults = {proxy.key(throttled): ["503", "503"], proxy.key(dropped): ["drop"],
                    proxy.key(hopeless): ["503"] * 10}
    source = s3_source(s3_env, proxy.url, connections=3, max_attempts=3, max_wait=0.05)
    outcomes = dict(source.fetch_many(items[:4], tmp_path, validator(items), OUTSIDE))
    assert outcomes[0] == Fetched(tmp_path / throttled, downloaded=True, attempts=3)
    assert outcomes[1] == Fetched(tmp_path / dropped, downloaded=True, attempts=2)
    assert outcomes[3].attempts == 1
    for i in (0, 1, 3):
        assert outcomes[i].path.read_bytes() == sector.fits_bytes(i)
    assert outcomes[2].attempts == 3 and outcomes[2].reason.startswith("SlowDown")
    assert proxy.faults[proxy.key(hopeless)] == ["503"] * 7
    assert not temporary_files(tmp_path)


@pytest.mark.parametrize("how", ["stopping", "closed"])
def test_s3_stopping_leaves_no_temporary_files(s3_env, moto_url, items, tmp_path, how):
    slow = FaultyProxy(moto_url, latency=0.3)
    try:
        source = s3_source(s3_env, slow.url, connections=8)
        seen: list[int] = []
        stop = TaskContext(stopping=lambda: how == "stopping" and bool(seen))
        outcomes = source.fetch_many(items, tmp_path, validator(items), stop)
        for i, _ in outcomes:
            seen.append(i)
            if how == "closed":
                outcomes.close()
        assert seen == [0]
        assert not temporary_files(tmp_path)
        assert len(slow.requests) < len(items)  # what was queued was never asked for
        time.sleep(0.5)  # answers still on their way are not written anywhere
        assert not temporary_files(tmp_path)
    finally:
        slow.close()


def test_s3_check_names_what_is_wrong(s3_env, moto_url):
    cases = {f"s3://no-such-bucket/{PREFIX}": "bucket 'no-such-bucket' does not exist",
             f"s3://{BUCKET}/no/such/prefix": "nothing under this prefix",
             f"s3://{BUCKET}/{PREFIX}/s0023/cam1-ccd1/00": "nothing under this prefix"}  # not a folder
    for url, message in cases.items():
        with pytest.raises(UsageError) as error:
            s3_source(s3_env, moto_url, url).check()
        text = str(error.value)
        assert message in text and url in text and "\n" not in text
    s3_source(s3_env, moto_url, f"s3://{BUCKET}").check()  # the bucket's root holds something too


def test_s3_check_answers_quickly_when_the_endpoint_is_unreachable(s3_env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UsageError) as error:
        s3_source(s3_env, f"http://127.0.0.1:{port}").check()
    assert time.monotonic() - start < 5
    text = str(error.value)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in text and "\n" not in text


def test_s3_bad_url_is_a_usage_error():
    for url in ("s3://", "s3:///prefix", "s3://bucket/prefix?anon=false"):
        with pytest.raises(UsageError):
            open_source(url)


def test_s3_credentials_when_asked(s3_env, proxy, items, tmp_path):
    s3_env.setenv("TGLC_S3_ANON", "0")
    with pytest.raises(UsageError, match="asks for AWS credentials and none were found"):
        s3_source(s3_env, proxy.url).check()
    s3_env.setenv("AWS_ACCESS_KEY_ID", "reader")
    s3_env.setenv("AWS_SECRET_ACCESS_KEY", "reader")
    source = s3_source(s3_env, proxy.url)
    assert not source.anon
    source.check()
    ((_, fetched),) = source.fetch_many(items[:1], tmp_path, validator(items), OUTSIDE)
    assert fetched.downloaded
    assert proxy.requests and all("AWS4-HMAC-SHA256" in headers.get("Authorization", "")
                                  for _, headers in proxy.requests)


def test_s3_listings_are_copied_whole(s3_env, moto_url, sector, tmp_path):
    source = s3_source(s3_env, moto_url)
    for relpath, data in ((layout.bulk_script_relpath(SECTOR), sector.bulk_script()),
                          (layout.target_list_relpath(SECTOR), sector.target_list())):
        dest = tmp_path / Path(relpath).name
        copy = source.fetch_listing(relpath, dest)
        assert dest.read_bytes() == data and copy.size == len(data)
        assert copy.validators["Content-Length"] == str(len(data))
        assert copy.validators["ETag"].strip('"') and copy.validators["Last-Modified"].endswith("GMT")
    with pytest.raises(SourceError) as error:
        source.fetch_listing("target_lists/s0099.csv", tmp_path / "s0099.csv")
    assert error.value.permanent and "NoSuchKey" in error.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(p).name for p in (layout.bulk_script_relpath(SECTOR), layout.target_list_relpath(SECTOR)))


def _fetch_in_worker(source, items, fits_dir) -> list:
    return list(source.fetch_many(items, Path(fits_dir), validator(items), OUTSIDE))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_s3_source_travels_to_worker_processes(s3_env, moto_url, sector, items, tmp_path, start_method):
    source = s3_source(s3_env, moto_url)
    list(source.fetch_many(items[:2], tmp_path / "parent", validator(items), OUTSIDE))  # opened in this process
    # settings only: connections are opened in each process
    assert set(vars(source)) == {"url", "bucket", "prefix", "connections", "max_attempts", "max_wait", "anon",
                                 "endpoint", "deadline", "listing_deadline"}
    assert vars(pickle.loads(pickle.dumps(source))) == vars(source)
    context = multiprocessing.get_context(start_method)
    with context.Pool(1) as pool:
        outcomes = pool.apply(_fetch_in_worker, (source, items[8:11], str(tmp_path / "child")))
    for k, (_, fetched) in enumerate(outcomes):
        assert fetched.downloaded and fetched.path.read_bytes() == sector.fits_bytes(8 + k), fetched


def test_s3_full_disk_stops_the_batch(s3_env, moto_url, items, tmp_path):
    """A file-size limit makes writes fail with EFBIG, as a full disk fails them with ENOSPC."""
    script = f"""
import resource, signal
from pathlib import Path
from tglc_builder.context import OUTSIDE
from tglc_builder.sources import DiskFull, open_source
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
source = open_source("s3://{BUCKET}/{PREFIX}", connections=4)
resource.setrlimit(resource.RLIMIT_FSIZE, (10000, resource.RLIM_INFINITY))
try:
    list(source.fetch_many({items!r}, Path({str(tmp_path)!r}), lambda path, i: None, OUTSIDE))
except DiskFull as exc:
    print("DiskFull", exc.folder)
"""
    env = run_env(AWS_ENDPOINT_URL=moto_url)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"DiskFull {tmp_path}", done.stderr
    assert not temporary_files(tmp_path) and not any(p.is_file() for p in tmp_path.rglob("*"))



# ---- whole builds ------------------------------------------------------------------------------------------------
def _build(root: Path, mast_url: str, **kwargs):
    from build_parent_sample import TGLC_Downloader

    with TGLC_Downloader(sector=SECTOR, tglc_data_path=root / "data", hdf5_output_dir=root / "out",
                         fits_dir=root / "fits", n_processes=2, mast_url=mast_url, **kwargs) as downloader:
        return downloader.download_sector(tiny=True)


def _hdf5_values(out: Path) -> dict[str, dict]:
    """Every HDF5 file of a build: each dataset's dtype, shape and bytes, and the file's attributes."""
    import h5py

    files = {}
    for path in sorted(out.rglob("*.hdf5")):
        with h5py.File(path, "r") as h5:
            files[str(path.relative_to(out))] = {
                "datasets": {name: (h5[name].dtype, h5[name].shape, h5[name][()].tobytes()) for name in h5},
                "attrs": {key: repr(value) for key, value in h5.attrs.items()}}
    return files


@pytest.fixture(scope="module")
def http_build(archive, tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("http-build")
    return root, _build(root, archive.url)


def test_build_from_a_mirror_equals_the_http_build(archive, http_build, tmp_path):
    mirror = write_mirror(tmp_path / "mirror", archive)
    summary = _build(tmp_path / "build", str(mirror))
    assert summary.failures == [] and summary.downloaded == 0 and summary.present == summary.converted == 100
    reference = _hdf5_values(http_build[0] / "out")
    assert reference and _hdf5_values(tmp_path / "build" / "out") == reference
    assert not [p for p in (tmp_path / "build" / "fits").rglob("*") if not p.is_dir()]  # nothing copied


def test_build_from_s3_equals_the_http_build(archive, http_build, moto_url, s3_env, tmp_path):
    upload(moto_url, write_mirror(tmp_path / "mirror", archive), "e2e")
    s3_env.setenv("AWS_ENDPOINT_URL", moto_url)
    summary = _build(tmp_path / "build", f"s3://{BUCKET}/e2e")
    assert summary.failures == [] and summary.downloaded == summary.converted == 100
    assert _hdf5_values(tmp_path / "build" / "out") == _hdf5_values(http_build[0] / "out")
    assert not temporary_files(tmp_path / "build" / "fits")


def test_builds_from_a_mirror_and_from_s3_on_dask(archive, http_build, moto_url, s3_env, tmp_path):
    """Each Dask worker opens the source itself: the mirror's files and the bucket's objects, with --clean-fits,
    into both formats."""
    distributed = pytest.importorskip("distributed")
    pq = pytest.importorskip("pyarrow.parquet")
    is_valid_catalog = pytest.importorskip("hats.io.validation").is_valid_catalog
    mirror = write_mirror(tmp_path / "tree", archive)
    upload(moto_url, mirror, "dask")
    s3_env.setenv("AWS_ENDPOINT_URL", moto_url)
    reference = _hdf5_values(http_build[0] / "out")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        for name, url in (("mirror", str(mirror)), ("s3", f"s3://{BUCKET}/dask")):
            summary = _build(tmp_path / name, url, client=client, clean_fits=True, format="both",
                             hats_output_dir=tmp_path / name / "hats")
            assert summary.failures == [] and summary.converted == 100, name
            assert summary.downloaded == (100 if name == "s3" else 0), name
            assert _hdf5_values(tmp_path / name / "out") == reference, name
            assert not [p for p in (tmp_path / name / "fits").rglob("*") if not p.is_dir()], name  # cleaned / none
            catalog = tmp_path / name / "hats" / f"tglc_s{SECTOR:04d}"  # noqa: E231
            assert is_valid_catalog(catalog, strict=True), name
            ids = pq.read_table(catalog / "dataset", columns=["gaiadr3_id"]).column(0).to_numpy()
            hdf5_ids = [i for values in hdf5_values(tmp_path / name / "out").values() for i in values["gaiadr3_id"]]
            assert sorted(ids) == sorted(hdf5_ids), name
    assert len(list(mirror.rglob("*.fits"))) == archive.sector.n  # the mirror is untouched


def test_s3_refuses_a_coded_object_and_a_listing_beyond_the_cap(s3_env, moto_url, sector, items, tmp_path,
                                                                  monkeypatch):
    """Stored with Content-Encoding: gzip, a light curve is a failure (one GET) and a listing is refused; a listing
    larger than the cap (made small here) is refused, whatever its coding."""
    import boto3
    import gzip

    from tglc_builder.sources import base

    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="owner",
                          aws_secret_access_key="owner")
    prefix, (gaia, relpath) = "coded/tglc", items[0]
    bulk = layout.bulk_script_relpath(SECTOR)
    for key, data, coding in ((relpath, sector.fits_bytes(0), "gzip"), (bulk, sector.bulk_script(), "gzip"),
                              (layout.target_list_relpath(SECTOR), sector.target_list(), None)):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=gzip.compress(data) if coding else data,
                          ACL="public-read", **({"ContentEncoding": coding} if coding else {}))
    source = s3_source(s3_env, moto_url, f"s3://{BUCKET}/{prefix}", max_attempts=3)
    refusal = ("sent with Content-Encoding: gzip, although none was asked for: refused (files are stored exactly as "
               "the archive holds them)")
    got = list(source.fetch_many([(gaia, relpath)], tmp_path / "fits", validator(items), OUTSIDE))
    assert got == [(0, Failure(gaia, relpath, "download", refusal, 1))]
    with pytest.raises(base.Refused) as error:
        source.fetch_listing(bulk, tmp_path / "bulk.sh")
    assert error.value.reason == refusal
    monkeypatch.setattr("tglc_builder.sources.s3.MAX_LISTING_BYTES", 1000)
    with pytest.raises(base.Refused) as error:
        source.fetch_listing(layout.target_list_relpath(SECTOR), tmp_path / "targets.csv")
    assert error.value.reason == (f"announced as {len(sector.target_list()):,} bytes, more than 1,000 bytes, the most "
                                  "a listing may have (4x the largest known): refused")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_s3_a_trickling_object_is_abandoned_then_failed_as_too_slow(s3_env, proxy, items, tmp_path):
    from tglc_builder.sources import net

    slow = items[0][1]
    proxy.faults = {proxy.key(slow): ["trickle"] * 3}
    source = s3_source(s3_env, proxy.url, max_attempts=2, max_wait=0.05)
    source.deadline = net.Deadline(floor=1024, window=1.0, limit=60.0)
    outcomes = dict(source.fetch_many(items[:2], tmp_path, validator(items), OUTSIDE))
    assert outcomes[0] == Failure(items[0][0], slow, "download", "too slow: less than 1,024 bytes/s over 1 s", 2)
    assert isinstance(outcomes[1], Fetched)
    assert proxy.faults[proxy.key(slow)] == ["trickle"]
    assert not temporary_files(tmp_path)
