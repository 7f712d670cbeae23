"""Nothing from the archive is trusted (issue 25): redirects leave neither the archive's origin nor HTTPS, bodies
are stored as the server holds them (no content coding) within a size cap, and a body too slow is abandoned. Every
case against a real server on 127.0.0.1 (HTTPS with a certificate made here), through the HTTP source's light
curves (libcurl's multi interface) and listings (one easy handle)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import run_env
from helpers.http_server import Handler, Server
from tglc_builder import layout, listing
from tglc_builder.context import OUTSIDE
from tglc_builder.report import Failure
from tglc_builder.sources import Fetched
from tglc_builder.sources import net
from tglc_builder.sources.http import HttpSource

ROOT = Path(__file__).resolve().parents[1]
BODY = bytes(range(256)) * 40  # 10,240 bytes
SECTOR = 23
BULK = "/" + layout.bulk_script_relpath(SECTOR)


@pytest.fixture(autouse=True)
def build_state(monkeypatch, tmp_path_factory):
    """Throttles of this test's own (their files in a folder of its own), and no redirect logged yet in this
    process."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("throttles")))
    monkeypatch.setattr(net, "_redirects_logged", set())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def trusted(certificate, monkeypatch) -> Path:
    """The certificate, trusted by both HTTP libraries (as a user's REQUESTS_CA_BUNDLE)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    return certificate[0]


def _serve_body(handler: Handler) -> None:
    handler.send(200, BODY)


def _redirect_to(other: Server) -> Callable[[Handler], None]:
    """Answers every request with a redirect to the same path on ``other``."""
    def answer(handler: Handler) -> None:
        handler.send(302, b"", {"Location": f"{other.url}{handler.path}"})
    return answer


def _build(tmp_path: Path, url: str, *options: str, **env: str) -> subprocess.CompletedProcess:
    """The real command, building sector 23 from ``url``."""
    return subprocess.run([sys.executable, str(ROOT / "build_parent_sample.py"), "-s", str(SECTOR), "--tglc_data_path",
                           str(tmp_path / "data"), "--mast-url", url, *options], capture_output=True, text=True,
                          timeout=120, env=run_env(**env))


def _errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if " ERROR " in line or line.startswith("error")]


def _listing_error(tmp_path: Path, url: str) -> str:
    """The one line of the ListingError that fetching sector 23's listings from ``url`` raises."""
    with pytest.raises(listing.ListingError) as error:
        listing.fetch_listings(SECTOR, tmp_path, HttpSource(url, max_attempts=3))
    return str(error.value)


def _fetch(url: str, names: list[str], folder: Path, **settings) -> dict:
    items = [(1000 + k, name) for k, name in enumerate(names)]
    source = HttpSource(url, **settings)
    return {items[i][1]: outcome for i, outcome in source.fetch_many(items, folder, lambda path, i: None,
                                                                     OUTSIDE)}


# ---- redirects ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("elsewhere", ["downgrade", "other-port"])
def test_a_redirect_to_another_origin_is_a_failure_naming_both_urls(tmp_path, certificate, trusted,
                                                                    elsewhere):
    """An HTTPS archive that sends every light curve to plain HTTP on another port, or to HTTPS on another port:
    each file fails at once (one request), naming both URLs, and the other server is never asked."""
    with Server(_serve_body, certificate if elsewhere == "other-port" else None) as other:
        with Server(_redirect_to(other), certificate) as archive:
            names = [f"lc{k}.fits" for k in range(6)]
            got = _fetch(archive.url, names, tmp_path, connections=3, max_attempts=3)
            asked = dict(archive.requests)
        assert other.total() == 0
    assert asked == {f"/{name}": 1 for name in names}
    for name in names:
        assert got[name] == Failure(1000 + names.index(name), name, "download",
                                    f"redirected from {archive.url}/{name} to {other.url}/{name}, another scheme, "
                                    "host or port: refused (files are fetched only from the archive given; check "
                                    "--mast-url)", 1)
    assert not list(tmp_path.rglob("*"))


def test_a_redirect_within_the_origin_is_followed_and_logged_once(tmp_path, certificate, trusted, caplog):
    def answer(handler: Handler) -> None:
        if handler.path.startswith("/moved/"):
            handler.send(200, BODY)
        else:  # relative, as servers often send it
            handler.send(301, b"moved\n", {"Location": f"/moved{handler.path}"})

    names = [f"lc{k}.fits" for k in range(8)]
    with caplog.at_level(logging.INFO, logger="tglc_builder"), Server(answer, certificate) as archive:
        got = _fetch(archive.url, names, tmp_path, connections=3, max_attempts=2)
        asked = dict(archive.requests)
    assert asked == {**{f"/{name}": 1 for name in names}, **{f"/moved/{name}": 1 for name in names}}
    for name in names:
        assert isinstance(got[name], Fetched) and got[name].attempts == 1
        assert (tmp_path / name).read_bytes() == BODY
    logged = [r.getMessage() for r in caplog.records if "redirects within its own origin" in r.getMessage()]
    assert len(logged) == 1 and f"{archive.url}/lc" in logged[0] and f"to {archive.url}/moved/lc" in logged[0]


def test_redirects_within_the_origin_are_followed_at_most_five_times(tmp_path):
    def answer(handler: Handler) -> None:
        handler.send(302, b"", {"Location": handler.path + "x"})

    with Server(answer) as archive:
        got = _fetch(archive.url, ["a"], tmp_path, max_attempts=3)
        assert archive.total() == 1 + net.MAX_REDIRECTS
    assert got["a"].reason == (f"more than 5 redirects (the last from {archive.url}/axxxxx to {archive.url}/axxxxxx):"
                               " refused")


def _listing_server(answer_listing: Callable[[Handler], None]) -> Callable[[Handler], None]:
    def answer(handler: Handler) -> None:
        if handler.path == BULK:
            answer_listing(handler)
        else:
            handler.send(404)
    return answer


def test_a_listing_redirected_elsewhere_stops_the_build_with_one_line(tmp_path, certificate, trusted):
    """Through the real command: exit 2, one line naming both URLs, nothing asked of the other server."""
    with Server(_serve_body) as other:
        with Server(_listing_server(_redirect_to(other)), certificate) as archive:
            done = _build(tmp_path, archive.url, REQUESTS_CA_BUNDLE=str(certificate[0]))
            assert archive.requests[BULK] == 1
        assert other.total() == 0
    assert done.returncode == 2, done.stderr
    assert _errors(done) == [
        f"error: sector 23: {archive.url}{BULK}: redirected from {archive.url}{BULK} to {other.url}{BULK}, another "
        "scheme, host or port: refused (files are fetched only from the archive given; check --mast-url)"], done.stderr
    assert not list((tmp_path / "data").rglob("*.sh"))


# ---- content codings and sizes -----------------------------------------------------------------------------------
def _gzip_bomb() -> bytes:
    """~1 MB of gzip (1,024 members of 1 MiB of zeros each) that would expand to 1 GiB."""
    import gzip

    return gzip.compress(bytes(1 << 20), compresslevel=9) * 1024


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_a_gzip_bomb_listing_is_refused_and_stops_the_build(tmp_path):
    """Through the real command: a listing sent with Content-Encoding: gzip, ~1 MB on the wire and 1 GiB decoded,
    is refused (exit 2, one line naming the URL and the coding) and nothing large reaches the disk."""
    bomb = _gzip_bomb()
    assert len(bomb) < 1_200_000

    def answer(handler: Handler) -> None:
        handler.send(200, bomb, {"Content-Encoding": "gzip", "Content-Type": "text/x-sh"})

    with Server(_listing_server(answer)) as archive:
        done = _build(tmp_path, archive.url)
        assert archive.requests[BULK] == 1
    assert done.returncode == 2, done.stderr
    assert _errors(done) == [f"error: sector 23: {archive.url}{BULK}: sent with Content-Encoding: gzip, although none "
                             "was asked for: refused (files are stored exactly as the archive holds them)"], done.stderr
    assert _folder_size(tmp_path / "data") < 100_000


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, identity"])
def test_a_light_curve_with_a_content_coding_is_a_failure(tmp_path, coding):
    import gzip

    def answer(handler: Handler) -> None:
        handler.send(200, gzip.compress(BODY), {"Content-Encoding": coding})

    with Server(answer) as archive:
        got = _fetch(archive.url, ["a.fits"], tmp_path, max_attempts=3)
        assert archive.total() == 1  # final: asking again would not change it
    assert got["a.fits"] == Failure(1000, "a.fits", "download", f"sent with Content-Encoding: {coding}, although "
                                    "none was asked for: refused (files are stored exactly as the archive holds "
                                    "them)", 1)
    assert not list(tmp_path.rglob("*"))


def test_a_listing_announced_beyond_the_cap_is_refused_before_it_is_read(tmp_path):
    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "3000000000")
        handler.end_headers()
        handler.wfile.write(b"#!/bin/sh\n" * 1000)
        handler.close_connection = True

    with Server(_listing_server(answer)) as archive:
        error = _listing_error(tmp_path, archive.url)
        assert archive.requests[BULK] == 1
    assert error == (f"sector 23: {archive.url}{BULK}: announced as 3,000,000,000 bytes, more than "
                                "2,147,483,648 bytes, the most a listing may have (4x the largest known): refused")
    assert not list(tmp_path.rglob("*.sh"))


def test_a_listing_growing_beyond_the_cap_is_refused_while_read(tmp_path, monkeypatch):
    """Chunked, no Content-Length to refuse it by: it is refused once the cap (made small here) is passed."""
    from tglc_builder.sources import base

    monkeypatch.setattr(base, "MAX_LISTING_BYTES", 50_000)
    line = b"curl -o x.fits https://example.org/x.fits\n"

    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        piece = line * 100
        for _ in range(100):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    with Server(_listing_server(answer)) as archive:
        error = _listing_error(tmp_path, archive.url)
        assert archive.requests[BULK] == 1
    assert error == (f"sector 23: {archive.url}{BULK}: more than 50,000 bytes, the most a listing may "
                                "have (4x the largest known): refused")
    assert _folder_size(tmp_path) == 0


# ---- deadlines ---------------------------------------------------------------------------------------------------
def _trickle(rate: int, size: int = 10_240) -> Callable[[Handler], None]:
    """A whole Content-Length announced, then ``rate`` bytes a second (in tenths of a second)."""
    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        step = max(1, rate // 10)
        for start in range(0, size, step):
            handler.wfile.write(BODY[start:start + step] if start + step <= len(BODY) else b"x" * step)
            handler.wfile.flush()
            time.sleep(0.1)
    return answer


def test_a_trickling_light_curve_is_abandoned_then_failed_as_too_slow(tmp_path):
    """10 bytes/s against a floor of 1 KB/s over 1 s: each attempt is abandoned, the file fails after max_attempts
    (had it been waited for, 10,240 bytes would take 17 minutes)."""
    deadline = net.Deadline(floor=1024, window=1.0, limit=60.0)
    started = time.monotonic()
    with Server(_trickle(10)) as archive:
        got = _fetch(archive.url, ["slow.fits"], tmp_path, max_attempts=2, deadline=deadline)
        assert archive.requests["/slow.fits"] == 2
    assert time.monotonic() - started < 2 * 60  # bounded by max_attempts x the limit, which it never reached
    failure = got["slow.fits"]
    assert isinstance(failure, Failure) and failure.attempts == 2
    assert failure.reason.startswith("too slow: less than 1,024 bytes/s over 1 s"), failure.reason
    assert not list(tmp_path.rglob("*"))


def test_a_light_curve_longer_than_its_limit_is_abandoned(tmp_path):
    """Above the floor (2 KB/s) but not whole within the per-request limit (1 s for 20 KB)."""
    deadline = net.Deadline(floor=1024, window=5.0, limit=1.0)
    with Server(_trickle(2000, 20_000)) as archive:
        got = _fetch(archive.url, ["long.fits"], tmp_path, max_attempts=2, deadline=deadline)
        assert archive.requests["/long.fits"] == 2
    failure = got["long.fits"]
    assert failure.attempts == 2 and failure.reason.startswith("too slow: not whole within 1 s"), failure.reason


def test_a_trickling_listing_is_abandoned(tmp_path):
    source = HttpSource("", max_attempts=2, listing_deadline=net.Deadline(floor=1024, window=1.0, limit=None))
    with Server(_listing_server(_trickle(10))) as archive:
        source.url = archive.url
        with pytest.raises(listing.ListingError) as error:
            listing.fetch_listings(SECTOR, tmp_path, source)
        assert archive.requests[BULK] == 2
    assert str(error.value) == (f"cannot fetch {archive.url}{BULK} whole: too slow: less than 1,024 bytes/s over 1 s "
                                "(after 2 attempt(s)); check the network and --mast-url, then rerun")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ---- what a failure names, and what killed workers leave -----------------------------------------------------------
def test_an_invalid_file_is_named_at_its_quarantine(tmp_path):
    """The reason names where the file is kept (fits_dir/corrupt/...), not its temporary name, gone by then."""
    from tglc_builder.reader import read_tglc
    from tglc_builder.sources import quarantine_path

    relpath = "s0023/cam1-ccd1/bad.fits"
    with Server(lambda handler: handler.send(200, b"SIMPLE  =                    T" + b" " * 2850)) as archive:
        source = HttpSource(archive.url, max_attempts=2)
        (_, failure), = source.fetch_many([(42, relpath)], tmp_path, lambda path, i: read_tglc(path, 42),
                                          OUTSIDE)
    kept = quarantine_path(tmp_path, relpath)
    assert kept.is_file() and failure.reason.startswith("invalid file: ")
    assert str(kept) in failure.reason and ".part-" not in failure.reason, failure.reason


def _dead_pid() -> int:
    """The pid of a process that held a file open and was killed with SIGKILL."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    child.wait()
    return child.pid


def test_temporary_files_of_killed_workers_are_removed_not_those_of_live_ones(tmp_path):
    """A real process killed with SIGKILL while writing a .part file leaves it behind; the next download in that
    folder removes it, while a live process's .part file beside it is left alone."""
    folder = tmp_path / "s0023" / "cam1-ccd1"
    folder.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import os, sys, time\n"
                               "name = f'.other.fits.part-{os.getpid()}-7'\n"
                               "open(os.path.join(sys.argv[1], name), 'wb').write(b'x' * 1000)\n"
                               "print(name, flush=True); time.sleep(60)", str(folder)], stdout=subprocess.PIPE,
                              text=True)
    killed = folder / writer.stdout.readline().strip()
    writer.kill()
    writer.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = folder / f".other.fits.part-{live.pid}-9"
        alive.write_bytes(b"y" * 1000)
        old = folder / f".good.fits.part-{_dead_pid()}"  # of a listing's or S3's naming: no thread id
        old.write_bytes(b"z")
        # the item's own: removed whatever its process (a killed worker not quite dead yet, or its PID reused)
        own = folder / f".good.fits.part-{live.pid}-3"
        own.write_bytes(b"w")
        assert killed.is_file()
        with Server(_serve_body) as archive:
            got = _fetch(archive.url, ["s0023/cam1-ccd1/good.fits"], tmp_path)
        assert isinstance(got["s0023/cam1-ccd1/good.fits"], Fetched)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["good.fits", alive.name])
    finally:
        live.kill()
        live.wait()


# ---- no network --------------------------------------------------------------------------------------------------
def test_an_archive_whose_name_does_not_resolve_is_one_line(tmp_path):
    """No network (or a mistyped host) without --demo: one line saying so and what to do, exit 2; the name is asked
    for twice, not five times, and the retry's line is DEBUG, not WARNING."""
    done = _build(tmp_path, "https://nonexistent.invalid/hlsps/tglc")
    assert done.returncode == 2, done.stderr
    said = [line for line in done.stderr.splitlines() if " INFO " not in line]
    assert said == ["error: cannot reach nonexistent.invalid (name resolution failed): check the network and "
                    "--mast-url, or try the built-in demo with --demo"], done.stderr
    verbose = _build(tmp_path, "https://nonexistent.invalid/hlsps/tglc", "--verbose")
    assert verbose.returncode == 2
    retries = [line for line in verbose.stderr.splitlines() if "asking again" in line]
    assert len(retries) == 1 and retries[0].endswith(
        " DEBUG tglc_builder.sources.curl: https://nonexistent.invalid/hlsps/tglc/download_scripts/"
        "hlsp_tglc_tess_ffi_s0023_tess_v1_llc.sh: curl error 6: Could not resolve host: nonexistent.invalid; asking "
        "again"), verbose.stderr
    assert " WARNING " not in verbose.stderr
