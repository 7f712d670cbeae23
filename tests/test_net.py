"""HTTP downloads against real servers on 127.0.0.1: bodies whole or refused, the build-wide throttle (a file alone,
``curl.fetch_file``: the listings' path), and the HTTP source end to end (invalid files, 404, stopping, a full
disk)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import run_env
from helpers.http_server import Handler, Server
from tglc_builder import layout, listing
from tglc_builder.context import OUTSIDE, TaskContext
from tglc_builder.demo.server import LocalArchive
from tglc_builder.report import Failure
from tglc_builder.reader import read_tglc
from tglc_builder.sources import Fetched, ListingCopy, SourceError, quarantine_path
from tglc_builder.sources import net
from tglc_builder.sources.curl import fetch_file, fetch_many
from tglc_builder.sources.http import HttpSource

BODY = bytes(range(256)) * 400  # 102,400 bytes
ETAG, LAST_MODIFIED = '"v1-abc"', "Tue, 24 Nov 2026 10:00:00 GMT"


class FramingServer(Server):
    """Answers each path by a script, one entry per request (the last repeats): ``length``, ``chunked``, ``close``
    (no Content-Length), ``cut`` (half the announced body), ``chunked-cut`` (no final chunk), ``429:<Retry-After>``,
    ``404``, ``stall`` (half the announced body, then nothing for a minute), ``late`` (``length`` after 3 s).
    ``gate``: a barrier the 429 answers wait at."""

    def __init__(self, scripts: dict[str, list[str]], bodies: dict[str, bytes] | None = None,
                 gate: threading.Barrier | None = None):
        super().__init__(self._answer)
        self.scripts, self.gate = scripts, gate
        self.bodies = bodies or {path: BODY for path in scripts}

    def _answer(self, handler: Handler) -> None:
        script = self.scripts.get(handler.path, ["404"])
        how = script[min(handler.nth, len(script) - 1)]
        body = self.bodies.get(handler.path, b"")
        if how == "404":
            return handler.head(404, {"Content-Length": "0"})
        if how.startswith("429"):
            if self.gate is not None:
                self.gate.wait(10)  # answer together, as to requests of many workers in flight at once
            return handler.head(429, {"Content-Length": "0", "Retry-After": how.split(":")[1]})
        validators = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED}
        if how == "late":
            time.sleep(3.0)
            how = "length"
        if how == "length":
            handler.send(200, body, validators)
        elif how in ("cut", "stall"):  # announces the whole body, sends half, hangs up (or waits)
            handler.head(200, {"Content-Length": str(len(body)), **validators})
            handler.wfile.write(body[:len(body) // 2])
            handler.wfile.flush()
            if how == "stall":
                time.sleep(60)
            handler.close_connection = True
        elif how == "close":  # no length, not chunked: the body ends when the connection does
            handler.head(200, {"Connection": "close", **validators})
            handler.wfile.write(body)
            handler.close_connection = True
        elif how in ("chunked", "chunked-cut"):
            handler.head(200, {"Transfer-Encoding": "chunked", **validators})
            half = len(body) // 2
            for piece in (body[:half], body[half:]) if how == "chunked" else (body[:half],):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if how == "chunked":
                handler.wfile.write(b"0\r\n\r\n")
            else:
                handler.close_connection = True
        else:
            raise ValueError(how)


@pytest.fixture(autouse=True)
def build_state(monkeypatch, tmp_path_factory):
    """A stop flag and throttles of this test's own (their files in a folder of its own)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("throttles")))
    return multiprocessing.RawValue("b", 0)


def _no_debris(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".part-" in p.name or ".tmp-" in p.name]


def _download(server: FramingServer, path: str, dest: Path, max_attempts: int = 3, max_wait: float = 300.0,
              **kwargs) -> ListingCopy:
    return fetch_file(server.url + path, dest, max_attempts=max_attempts, max_wait=max_wait, deadline=net.DEADLINE,
                      max_size=1 << 30, backoff=0.01, **kwargs)


# ---- whole bodies or none ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["length", "chunked"])
def test_a_body_proved_whole_is_accepted(tmp_path, how):
    with FramingServer({"/f": [how]}) as server:
        got = _download(server, "/f", tmp_path / "f")
        assert server.requests["/f"] == 1
    assert (tmp_path / "f").read_bytes() == BODY
    assert got.size == len(BODY)
    expected = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED}
    if how == "length":
        expected["Content-Length"] = str(len(BODY))
    assert got.validators == expected
    assert _no_debris(tmp_path)


@pytest.mark.parametrize("status, attempts, length", [(404, 1, 1000), (404, 1, 30 << 20), (503, 2, 30 << 20)])
def test_an_error_page_is_never_stored_and_a_long_one_is_cut_short(tmp_path, status, attempts, length):
    """A hostile archive's error page of 30 MB neither reaches the disk (it once filled the listing's temporary file
    whatever the size cap) nor holds the build until it has all arrived; its status is still the answer."""
    largest = [0]

    def answer(handler: Handler) -> None:
        handler.head(status, {"Content-Length": str(length)})
        with contextlib.suppress(OSError):  # the client hangs up on a long one
            for _ in range(max(1, length >> 20)):
                handler.wfile.write(b"x" * min(length, 1 << 20))
                largest[0] = max([largest[0]] + [p.stat().st_size for p in tmp_path.iterdir()])

    with Server(answer) as server:
        with pytest.raises(SourceError) as caught:
            fetch_file(server.url + "/f", tmp_path / "f", max_attempts=2, max_wait=1.0, deadline=net.DEADLINE,
                       max_size=1000, backoff=0.01)
        assert server.requests["/f"] == attempts
    assert caught.value.reason.startswith(f"HTTP {status} ") and caught.value.permanent == (status == 404)
    assert largest[0] == 0 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("how, words", [
    ("close", "neither a Content-Length nor chunked"),
    ("cut", "curl error 18: "),  # CURLE_PARTIAL_FILE (its words vary with libcurl's version)
    ("chunked-cut", "curl error 18: "),  # no final chunk
])
def test_a_body_not_proved_whole_is_asked_again_then_refused(tmp_path, how, words):
    with FramingServer({"/f": [how]}) as server:
        with pytest.raises(SourceError) as caught:
            _download(server, "/f", tmp_path / "f", max_attempts=3)
        assert server.requests["/f"] == 3
    assert caught.value.attempts == 3 and not caught.value.permanent
    assert "incomplete body" in caught.value.reason and words in caught.value.reason
    assert not (tmp_path / "f").exists() and _no_debris(tmp_path)


@pytest.mark.parametrize("how", ["close", "cut", "chunked-cut"])
def test_a_body_whole_on_a_later_try_is_accepted(tmp_path, how):
    with FramingServer({"/f": [how, how, "chunked"]}) as server:
        got = _download(server, "/f", tmp_path / "f", max_attempts=3)
        assert server.requests["/f"] == 3
    assert got.size == len(BODY) and (tmp_path / "f").read_bytes() == BODY


def test_a_listing_that_never_arrives_whole_is_refused(tmp_path):
    script = layout.bulk_script_relpath(23)
    with FramingServer({f"/{script}": ["close"]}) as server:
        with pytest.raises(listing.ListingError) as caught:
            listing.fetch_listings(23, tmp_path, HttpSource(server.url, max_attempts=2))
        assert server.requests[f"/{script}"] == 2
    message = str(caught.value)
    assert f"cannot fetch {server.url}/{script} whole" in message and "Content-Length" in message
    assert "after 2 attempt(s)" in message and "\n" not in message
    assert not list((tmp_path / "s0023").iterdir())  # neither a listing nor a manifest


def test_a_listing_that_arrives_whole_later_is_kept_with_its_manifest(tmp_path):
    script, targets = layout.bulk_script_relpath(23), layout.target_list_relpath(23)
    with FramingServer({f"/{script}": ["cut", "close", "length"], f"/{targets}": ["chunked-cut", "chunked"]},
                       bodies={f"/{script}": b"#!/bin/sh\n" * 5000, f"/{targets}": b"#GAIADR3_ID\n" * 4000}) as server:
        got = listing.fetch_listings(23, tmp_path, HttpSource(server.url))
    assert got.bulk_script.read_bytes() == b"#!/bin/sh\n" * 5000
    assert got.target_list.read_bytes() == b"#GAIADR3_ID\n" * 4000
    manifest = json.loads(listing.manifest_path(got.bulk_script).read_text())
    assert manifest["url"] == f"{server.url}/{script}" and manifest["size"] == 50000
    assert manifest["validators"] == {"Content-Length": "50000", "ETag": ETAG, "Last-Modified": LAST_MODIFIED}
    assert json.loads(listing.manifest_path(got.target_list).read_text())["validators"] == {
        "ETag": ETAG, "Last-Modified": LAST_MODIFIED}


def test_a_listing_shows_its_bytes_counted_again_on_each_attempt(tmp_path, monkeypatch, caplog):
    """The listing's bar (a log line per tenth, off a terminal): its total from Content-Length; a cut attempt's bytes
    are taken back, so it ends at the body's size, not more."""
    from tglc_builder import progress

    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    with FramingServer({"/f": ["cut", "length"]}) as server, caplog.at_level(logging.INFO, "tglc_builder.progress"):
        got = _download(server, "/f", tmp_path / "f", progress=True)
    said = [r.getMessage() for r in caplog.records if r.name == "tglc_builder.progress"]
    assert said[-1] == f"f: 100% ({len(BODY)} of {len(BODY)} B)" and got.size == len(BODY), said
    assert f"f: 50% ({len(BODY) // 2} of {len(BODY)} B)" in said  # the cut attempt


def test_the_index_page_lists_sectors_or_says_in_one_line_why_not(tmp_path, monkeypatch):
    """``-s all`` on HTTP: the index page's links; none (404) is an empty list; an index that fails (5xx after its
    attempts) or is beyond its cap is one line naming the URL."""
    from tglc_builder.errors import UsageError
    from tglc_builder.sources import http

    page = b'<a href="hlsp_tglc_tess_ffi_s0007_tess_v1_llc.sh">7</a><a href="hlsp_tglc_tess_ffi_s0034_tess_v1_llc.sh">'
    index = "/download_scripts/"
    with FramingServer({index: ["length"]}, bodies={index: page}) as server:
        assert HttpSource(server.url).list_sectors() == [7, 34]
        monkeypatch.setattr(http, "MAX_INDEX_BYTES", len(page) - 1)
        with pytest.raises(UsageError) as refused:
            HttpSource(server.url).list_sectors()
    assert str(refused.value) == (f"cannot read the index of {server.url}{index} (announced as {len(page)} bytes, more "
                                  f"than {len(page) - 1} bytes, the most a listing may have (4x the largest known): "
                                  "refused); check the network, or give the sectors explicitly, e.g. -s 1-13")
    with FramingServer({index: ["404"]}) as server:
        assert HttpSource(server.url).list_sectors() == []
    with Server(lambda handler: handler.send(500, b"down\n")) as server:
        with pytest.raises(UsageError) as failed:
            HttpSource(server.url, max_attempts=2).list_sectors()
        assert server.requests[index] == 2
    assert str(failed.value) == (f"cannot read the index of {server.url}{index} (HTTP 500 Internal Server Error); "
                                 "check the network, or give the sectors explicitly, e.g. -s 1-13")
    assert not [path for path in Path(tempfile.gettempdir()).iterdir() if path.name.startswith("tglc-index-")]


@pytest.mark.parametrize("max_attempts, attempts", [(5, 2), (1, 1)])
def test_a_light_curve_of_a_host_that_does_not_resolve_fails_after_two_requests(tmp_path, max_attempts, attempts):
    """The listings' rule, now the light curves' too: a name that did not resolve twice will not (and with one
    attempt allowed, the one says so in the same words)."""
    got = _fetch(type("Unresolved", (), {"url": "http://nonexistent.invalid"}), ["a.fits"], tmp_path,
                 max_attempts=max_attempts)
    assert got["a.fits"] == Failure(1000, "a.fits", "download", "cannot reach nonexistent.invalid (name resolution "
                                    "failed)", attempts)
    assert not list(tmp_path.iterdir())


def test_not_found_is_permanent(tmp_path):
    with FramingServer({"/f": ["404"]}) as server:
        with pytest.raises(SourceError) as caught:
            _download(server, "/f", tmp_path / "f", max_attempts=5)
        assert server.requests["/f"] == 1
    assert caught.value.permanent and caught.value.reason == "HTTP 404 Not Found" and caught.value.attempts == 1


class _ForwardProxy(http.server.ThreadingHTTPServer):
    """A plain HTTP forward proxy on 127.0.0.1 that records the absolute URLs it is asked for."""

    daemon_threads = True

    def __init__(self):
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                proxy.seen.append(self.path)  # a forward proxy is sent the absolute URL
                target = urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                upstream.request("GET", target.path)
                answer = upstream.getresponse()
                body = answer.read()
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                upstream.close()

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "_ForwardProxy":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def test_downloads_go_through_the_proxy_the_environment_names(tmp_path, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with FramingServer({"/f": ["length"], "/g": ["length"]}) as server, _ForwardProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        got = _download(server, "/f", tmp_path / "f")
        assert proxy.seen == [f"{server.url}/f"] and server.requests["/f"] == 1
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # exempted: straight to the server
        _download(server, "/g", tmp_path / "g")
        assert proxy.seen == [f"{server.url}/f"] and server.requests["/g"] == 1
    assert (tmp_path / "f").read_bytes() == BODY == (tmp_path / "g").read_bytes() and got.size == len(BODY)


# ---- throttling -------------------------------------------------------------------------------------------------
def test_retry_after_pauses_everyone_once_up_to_max_wait(tmp_path, caplog):
    """Four downloads in flight get 429 "wait an hour" together: one pause of max_wait, logged once."""
    paths = [f"/f{k}" for k in range(4)]
    with FramingServer({path: ["429:3600", "length"] for path in paths}, gate=threading.Barrier(4)) as server:
        errors: list[BaseException] = []

        def fetch(path: str) -> None:
            try:
                _download(server, path, tmp_path / path[1:], max_wait=1.0)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=fetch, args=(path,)) for path in paths]
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="tglc_builder.sources.net"):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        elapsed = time.monotonic() - started
    assert not errors
    assert 0.9 <= elapsed < 3.0  # max_wait, not the hour asked for
    assert all((tmp_path / path[1:]).read_bytes() == BODY for path in paths)
    pauses = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
    host = server.url.removeprefix("http://")
    assert pauses == [f"archive {host} asked to wait 3600 s (HTTP 429 Retry-After); pausing all downloads for 1 s "
                      "(--max-wait)"]


_INTERRUPTED_CHILD = """
import sys
from pathlib import Path
from tglc_builder.sources import net
from tglc_builder.sources.curl import fetch_file

print("fetching", flush=True)
try:
    fetch_file(sys.argv[1], Path(sys.argv[2]), max_attempts=3, max_wait=300.0, deadline=net.DEADLINE, max_size=1 << 20)
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("how", ["429:3600", "stall"])
def test_ctrl_c_ends_a_pause_or_a_stalled_body_at_once(tmp_path, how):
    """The listings are fetched in the driver: Ctrl-C (a real SIGINT) ends a 300 s pause, or a body that stopped
    coming (its deadline's window: 30 s), at once, and leaves no temporary file."""
    with FramingServer({"/f": [how, "length"]}) as server:
        child = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_CHILD, f"{server.url}/f", str(tmp_path / "f")],
                                 stdout=subprocess.PIPE, text=True, env=run_env(TMPDIR=str(tmp_path)))
        assert child.stdout.readline() == "fetching\n"
        deadline = time.monotonic() + 30
        while server.requests["/f"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # into the pause, or the stall
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=20)  # well within the pause, or the window
        assert server.requests["/f"] == 1
    assert out == "interrupted\n" and child.returncode == 0
    assert not (tmp_path / "f").exists() and _no_debris(tmp_path)


def _wait_on(shared, ready, go, waited) -> None:
    ready.set()
    go.wait(60)
    started = time.monotonic()
    net.Throttle(shared).wait(lambda: False)
    waited.value = time.monotonic() - started


def test_a_pause_holds_back_other_processes():
    context = multiprocessing.get_context("spawn")
    shared, waited = context.Value("d", 0.0), context.Value("d", 0.0)
    ready, go = context.Event(), context.Event()
    child = context.Process(target=_wait_on, args=(shared, ready, go, waited))
    child.start()
    assert ready.wait(60)
    assert net.Throttle(shared).pause(3600, 2.0, "archive.example", 429) == 2.0
    go.set()
    child.join(60)
    assert child.exitcode == 0 and 1.5 <= waited.value <= 2.1


def test_an_archive_has_one_throttle_of_its_own_in_a_file_of_its_user():
    """Every URL of one archive (its origin) shares one throttle, in a file of 8 bytes that only this user can write
    (the pool's processes map it: tests/test_reliability.py); another archive's (another port) is not held back."""
    archive, other = "http://127.0.0.1:8001/tglc", "http://127.0.0.1:8002/tglc"
    assert net.throttle(archive).pause(3600, 60.0, "127.0.0.1:8001", 429) == 60.0
    assert 59.0 < net.throttle(f"{archive}/s0023/x.fits").remaining() <= 60.0
    assert net.throttle(other).remaining() == 0.0
    files = list(Path(tempfile.gettempdir()).glob(f"tglc-throttle-{os.getuid()}-*"))
    assert [(f.stat().st_size, f.stat().st_mode & 0o777) for f in files] == [(8, 0o600), (8, 0o600)]


def test_retry_delays_double_with_their_jitter_up_to_their_cap(monkeypatch):
    """The one backoff of every source (base.retry_delay): 0.5 s doubled per try, times 0.5-1.5, at most the cap."""
    from tglc_builder.sources import base

    monkeypatch.setattr(base.random, "random", lambda: 0.0)
    assert [base.retry_delay(n) for n in (1, 2, 3, 10)] == [0.25, 0.5, 1.0, 120.0]
    monkeypatch.setattr(base.random, "random", lambda: 1.0)
    assert [base.retry_delay(n, 0.01, cap=0.05) for n in (1, 2, 3)] == [0.015, 0.03, 0.05]


def test_without_its_file_a_throttle_holds_this_process_alone(tmp_path, monkeypatch):
    """Where no file can be made (here the temporary folder is a file), the throttle still pauses this process."""
    (tmp_path / "not-a-folder").write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "not-a-folder"))
    throttle = net.throttle("http://127.0.0.1:8003")
    assert throttle.pause(None, 60.0, "127.0.0.1:8003", 503) == net.BACKOFF
    assert 0.0 < throttle.remaining() <= net.BACKOFF
    assert net.throttle("http://127.0.0.1:8003").remaining() > 0.0  # this process's own value, kept


# ---- the HTTP source (its light curves through libcurl) ----------------------------------------------------------


def _items(archive: LocalArchive, n: int) -> list[tuple[int, str]]:
    return [(int(archive.sector.gaia_ids[i]), archive.sector.relpath(i)) for i in range(n)]


def test_fetch_many_end_to_end(tmp_path):
    with LocalArchive(sector=23, n=12, seed=3, faults={"truncate": 0.3, "500": 0.2, "reset": 0.1}) as archive:
        items = _items(archive, 12)
        items[3] = (items[4][0], items[3][1])  # served whole, but not that object's light curve
        missing = layout.lc_relpath(1234567890123, 23, 1, 1)
        items.append((1234567890123, missing))
        source = HttpSource(archive.url, connections=4, max_attempts=5)
        fits = tmp_path / "fits"

        def validate(path: Path, i: int):
            return read_tglc(path, items[i][0])

        results = list(source.fetch_many(items, fits, validate, OUTSIDE))
        assert [i for i, _ in results] == list(range(13))
        for i, outcome in results:
            if i in (3, 12):
                continue
            assert isinstance(outcome, Fetched) and outcome.downloaded and outcome.path == fits / items[i][1]
            assert outcome.path.read_bytes() == archive.sector.fits_bytes(i)
            # what the check read (of the attempt that arrived whole) comes with it, so it is not read again
            assert outcome.checked.data.tobytes() == read_tglc(outcome.path).data.tobytes()
        invalid, absent = results[3][1], results[12][1]
        assert isinstance(invalid, Failure) and invalid.stage == "download" and "invalid file" in invalid.reason
        assert not (fits / items[3][1]).exists()
        assert quarantine_path(fits, items[3][1]).read_bytes() == archive.sector.fits_bytes(3)
        assert absent == Failure(1234567890123, missing, "download", "HTTP 404 Not Found", 1)
        assert archive.fits_requests()[missing] == 1
        assert _no_debris(fits)

        before = archive.fits_requests()
        again = list(source.fetch_many(items, fits, validate, OUTSIDE))
        assert all(isinstance(o, Fetched) and not o.downloaded and o.checked is None for i, o in again
                   if i not in (3, 12))
        after = archive.fits_requests()
        assert {p for p in after if after[p] != before.get(p)} == {items[3][1], missing}


def test_fetch_many_runs_at_most_a_window_ahead_of_its_consumer(tmp_path):
    """Downloads start no further than WINDOW x connections items ahead of the item being yielded, so a slow
    conversion does not let a large work unit's files pile up on disk."""
    from tglc_builder.sources.base import WINDOW

    with LocalArchive(sector=23, n=120, seed=5) as archive:
        items = _items(archive, 120)
        source = HttpSource(archive.url, connections=2)
        ahead = WINDOW * 2
        fetched = source.fetch_many(items, tmp_path, lambda path, i: None, OUTSIDE)
        consumed = 0
        for target in (1, 30):
            while consumed < target:
                assert next(fetched)[0] == consumed
                consumed += 1
            time.sleep(0.5)  # time enough for every started download to end
            on_disk = len(list(tmp_path.rglob("*.fits")))
            # items[consumed - 1] was yielded last: it and the next ahead - 1 are started, no more
            assert sum(archive.fits_requests().values()) == on_disk == consumed - 1 + ahead, consumed
        assert len(list(fetched)) == 120 - 30
    assert sum(archive.fits_requests().values()) == 120


def test_a_call_beside_the_one_that_started_all_its_downloads_shares_its_connections(tmp_path):
    """The next work unit starts once a unit's last download has started (``TaskContext.hand_over``):
    both calls share the process's connections, and never have more in flight together than it was given."""
    with LocalArchive(sector=23, n=12, seed=5, latency=0.2) as archive:
        items = _items(archive, 12)
        source = HttpSource(archive.url, connections=3)
        beside: list = []
        threads: list[threading.Thread] = []

        def start_the_next():  # as the worker does when the unit hands over
            fetch = source.fetch_many(items[4:], tmp_path, lambda path, i: None, OUTSIDE)
            threads.append(threading.Thread(target=lambda: beside.extend(fetch)))
            threads[-1].start()

        first = list(source.fetch_many(items[:4], tmp_path, lambda path, i: None,
                                       TaskContext(hand_over=start_the_next)))
        assert len(threads) == 1  # once
        threads[0].join(30)
        # Three in flight from the first call, then its last beside two of the next: four without a shared budget.
        assert archive.most_in_flight() == 3
    assert [i for i, _ in first] == [0, 1, 2, 3] and [i for i, _ in beside] == list(range(8))
    for i, outcome in first + [(i + 4, outcome) for i, outcome in beside]:
        assert outcome.downloaded and outcome.path.read_bytes() == archive.sector.fits_bytes(i)


def test_a_due_retry_of_the_unit_winding_down_goes_before_the_next_units_downloads(tmp_path):
    """On one connection: the unit that handed over has its file cut short twice, and each retry falls due while a
    (late) download of the next unit is in flight; it is asked for as soon as that one ends, before the next unit's next
    download (which would otherwise take the connection first, nearly every time: its own thread frees it)."""
    scripts = {"/a": ["cut", "cut", "length"], "/b0": ["late"], "/b1": ["late"], "/b2": ["length"]}
    with FramingServer(scripts) as server:
        threads: list[threading.Thread] = []
        beside: list = []

        def fetch(names, context):  # backoff 0.6: asked again 0.3-0.9 s, then 0.6-1.8 s, after a cut (B: 3 s)
            return fetch_many(server.url, [(1000, name) for name in names], tmp_path, lambda path, i: None, context,
                              connections=1, max_attempts=3, max_wait=1.0, backoff=0.6)

        def start_the_next():  # as the worker does when the unit hands over
            fetched = fetch(["b0", "b1", "b2"], OUTSIDE)
            threads.append(threading.Thread(target=lambda: beside.extend(fetched), daemon=True))
            threads[-1].start()

        first = list(fetch(["a"], TaskContext(hand_over=start_the_next)))
        threads[0].join(30)
        assert server.paths == ["/a", "/b0", "/a", "/b1", "/a", "/b2"]
    assert first[0][1].attempts == 3 and [i for i, _ in beside] == [0, 1, 2]
    assert all((tmp_path / name).read_bytes() == BODY for name in ("a", "b0", "b1", "b2"))


def _within(seconds: float, call):
    """``call()``'s result, or its exception, from a thread given ``seconds`` (a call that waits for good fails)."""
    outcome: list = []

    def run():
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - raised again below
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def test_calls_that_fail_taking_up_their_items_leave_every_connection_to_the_next(tmp_path):
    """A call that fails before its first download (a file where its folder should be) gives back what it took
    of the process's connections: the calls after it still download (they would wait for good otherwise)."""
    with LocalArchive(sector=23, n=6, seed=5) as archive:
        items = _items(archive, 6)
        source = HttpSource(archive.url, connections=2)

        def fetch():
            return list(source.fetch_many(items, tmp_path, lambda path, i: None, OUTSIDE))

        blocker = tmp_path / items[0][1].split("/")[0]
        blocker.write_text("not a folder")
        for _ in range(3):  # more calls than connections
            with pytest.raises(NotADirectoryError):
                _within(30, fetch)
        blocker.unlink()
        got = _within(30, fetch)
    assert [i for i, _ in got] == list(range(6))
    assert all(o.path.read_bytes() == archive.sector.fits_bytes(i) for i, o in got)


def test_fetch_many_stops_cleanly(tmp_path):
    with LocalArchive(sector=23, n=40, seed=5, latency=0.1) as archive:
        items = _items(archive, 40)
        got: list[int] = []
        source = HttpSource(archive.url, connections=4)
        for i, outcome in source.fetch_many(items, tmp_path, lambda path, i: None, TaskContext(lambda: len(got) >= 3)):
            assert isinstance(outcome, Fetched)
            got.append(i)
        assert got == [0, 1, 2]
        assert sum(archive.fits_requests().values()) < 12
    assert _no_debris(tmp_path)
    for path in tmp_path.rglob("*.fits"):  # whatever reached its name is whole
        assert path.read_bytes() == archive.sector.fits_bytes(archive.sector.index_of(str(path.relative_to(tmp_path))))


_FULL_DISK_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from tglc_builder.context import OUTSIDE
from tglc_builder.sources import DiskFull
from tglc_builder.sources.http import HttpSource

url, folder, items = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
yielded = 0
try:
    for _ in HttpSource(url, connections=3).fetch_many([tuple(x) for x in items], folder, lambda p, i: None,
                                                       OUTSIDE):
        yielded += 1
except DiskFull as exc:
    print(json.dumps({"folder": exc.folder, "message": str(exc), "yielded": yielded}))
"""


def test_a_full_disk_stops_every_download(tmp_path):
    """For real: a file-size limit makes every write past 20 KB fail (EFBIG), as a full disk would."""
    with LocalArchive(sector=23, n=60, seed=2) as archive:
        folder = tmp_path / "fits"
        result = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, archive.url, str(folder),
                                 json.dumps(_items(archive, 60))], capture_output=True, text=True, timeout=120,
                                env=run_env())
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report == {"folder": str(folder), "yielded": 0, "message": report["message"]}
        assert report["message"].startswith(f"[Errno 27] file size limit reached on {folder} (")
        assert sum(archive.fits_requests().values()) <= 3  # the downloads in flight, none started after
    assert _no_debris(folder) and not list(folder.rglob("*.fits"))


# ---- the rules of a download, through the HTTP source ------------------------------------------------------------
def _fetch(server: FramingServer, names: list[str], folder: Path, **settings) -> dict:
    """fetch_many of ``server``'s paths ``/<name>`` into ``folder/<name>``: {name: outcome}."""
    items = [(1000 + k, name) for k, name in enumerate(names)]
    source = HttpSource(server.url, **settings)
    return {items[i][1]: outcome for i, outcome in source.fetch_many(items, folder, lambda path, i: None,
                                                                     OUTSIDE)}


def test_fetch_many_takes_only_bodies_proved_whole(tmp_path):
    scripts = {"/length": ["length"], "/chunked": ["chunked"], "/close": ["close"], "/cut": ["cut"],
               "/chunked-cut": ["chunked-cut"], "/cut-then-whole": ["cut", "close", "length"]}
    with FramingServer(scripts) as server:
        got = _fetch(server, [path[1:] for path in scripts], tmp_path, connections=3, max_attempts=3)
        requests = dict(server.requests)
    for name in ("length", "chunked", "cut-then-whole"):
        assert isinstance(got[name], Fetched) and (tmp_path / name).read_bytes() == BODY
    assert got["length"].attempts == 1 and got["cut-then-whole"].attempts == 3
    for name in ("close", "cut", "chunked-cut"):
        failure = got[name]
        assert isinstance(failure, Failure) and failure.attempts == 3 and requests[f"/{name}"] == 3
        assert failure.reason.startswith("incomplete body: ") and not (tmp_path / name).exists()
    assert "neither a Content-Length nor chunked" in got["close"].reason
    assert _no_debris(tmp_path)


def test_fetch_many_not_found_is_final(tmp_path):
    with FramingServer({"/gone": ["404"]}) as server:
        got = _fetch(server, ["gone"], tmp_path, max_attempts=5)
        assert server.requests["/gone"] == 1
    assert got["gone"] == Failure(1000, "gone", "download", "HTTP 404 Not Found", 1)
    assert not list(tmp_path.iterdir())


def test_fetch_many_retry_after_pauses_every_download_once(tmp_path, caplog):
    """Four downloads in flight get 429 "wait an hour" together: one pause of max_wait for all, logged once."""
    names = [f"f{k}" for k in range(4)]
    with FramingServer({f"/{name}": ["429:3600", "length"] for name in names}, gate=threading.Barrier(4)) as server:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="tglc_builder.sources.net"):
            got = _fetch(server, names, tmp_path, connections=4, max_attempts=3, max_wait=1.0)
        elapsed = time.monotonic() - started
        assert all(server.requests[f"/{name}"] == 2 for name in names)
    assert 0.9 <= elapsed < 4.0  # max_wait (and a backoff), not the hour asked for
    assert all(isinstance(got[name], Fetched) and (tmp_path / name).read_bytes() == BODY for name in names)
    pauses = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
    host = server.url.removeprefix("http://")
    assert pauses == [f"archive {host} asked to wait 3600 s (HTTP 429 Retry-After); pausing all downloads for 1 s "
                      "(--max-wait)"]


def test_fetch_many_goes_through_the_proxy_the_environment_names(tmp_path, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # Two servers: the environment is read once per host and process (with the connections kept per process).
    with FramingServer({"/f": ["length"]}) as server, FramingServer({"/g": ["length"]}) as other, \
            _ForwardProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        got = _fetch(server, ["f"], tmp_path)
        assert proxy.seen == [f"{server.url}/f"] and server.requests["/f"] == 1
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # exempted: straight to the server
        _fetch(other, ["g"], tmp_path)
        assert proxy.seen == [f"{server.url}/f"] and other.requests["/g"] == 1
    assert isinstance(got["f"], Fetched) and (tmp_path / "f").read_bytes() == BODY == (tmp_path / "g").read_bytes()


def test_fetch_many_raises_an_unforeseen_error_and_leaves_no_debris(tmp_path):
    """A bug in a validator is raised to the caller (the unit reports it), not swallowed or left hanging."""
    def validate(path: Path, i: int) -> None:
        raise RuntimeError(f"bug while checking item {i}")

    with FramingServer({"/f": ["length"]}) as server:
        source = HttpSource(server.url)
        with pytest.raises(RuntimeError, match="bug while checking item 0"):
            list(source.fetch_many([(1000, "f")], tmp_path, validate, OUTSIDE))
    assert not (tmp_path / "f").exists() and _no_debris(tmp_path)


def test_fetch_many_reuses_its_connections_from_one_call_to_the_next(tmp_path):
    """Each work unit is one call: the next unit asks on the connections the last one opened (no new handshakes)."""
    names = [f"f{k}" for k in range(12)]
    items = [(1000 + k, name) for k, name in enumerate(names)]
    with FramingServer({f"/{name}": ["length"] for name in names}) as server:
        source = HttpSource(server.url, connections=2)
        for part in (items[:4], items[4:8], items[8:]):
            got = list(source.fetch_many(part, tmp_path, lambda path, i: None, OUTSIDE))
            assert all(isinstance(outcome, Fetched) for _, outcome in got)
        first, later = set(server.peers[:4]), set(server.peers[4:])
    assert len(server.peers) == 12 and len(first) <= 2 and later <= first
    assert all((tmp_path / name).read_bytes() == BODY for name in names)
