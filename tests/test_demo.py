"""The demo archive: TGLC files exactly like MAST's, deterministic, served over real HTTP (faults, listing framings
and cuts, tampered headers, v2 files included) or written to disk as a mirror of the same bytes."""

from __future__ import annotations

import email.utils
import hashlib
import io
import re
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from astropy.io import fits

from conftest import REPO, SAMPLE, run_env
from tglc_builder import layout
from tglc_builder.demo import FAULTS, LocalArchive, SyntheticSector, write_mirror
from tglc_builder.reader import BLOCK, CARD, read_tglc

LISTINGS = (layout.bulk_script_relpath(23), layout.target_list_relpath(23))


def _raw_get(url: str, relpath: str) -> tuple[str, dict[str, str], bytes]:
    """One GET over a plain socket: the status line, the headers, and every byte after them until the server closes."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(f"GET /{relpath} HTTP/1.1\r\nHost: {address.netloc}\r\nConnection: close\r\n\r\n".encode())
        raw = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}, body


def _dechunk(raw: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether it ended with the final zero-length chunk."""
    data, pos = [], 0
    while pos < len(raw):
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        if size == 0:
            return data, raw[eol:] == b"\r\n\r\n"
        assert raw[eol + 2 + size:eol + 4 + size] == b"\r\n"
        data.append(raw[eol + 2:eol + 2 + size])
        pos = eol + 4 + size
    return data, False


def _half(body: bytes) -> bytes:
    """What a cut listing answer carries: the whole lines of the first half."""
    cut = body[:body.rfind(b"\n", 0, len(body) // 2) + 1]
    assert cut.endswith(b"\n") and 0.4 * len(body) < len(cut) <= len(body) / 2
    return cut


@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample (tests/data) is absent")
def test_generated_file_has_the_structure_of_the_real_one(tmp_path):
    sector = SyntheticSector(1, 50, seed=5)
    path = tmp_path / "generated.fits"
    path.write_bytes(sector.fits_bytes(int(np.flatnonzero((sector.cam == 1) & (sector.ccd == 1))[0])))
    with fits.open(SAMPLE) as real, fits.open(path) as ours:
        ours.verify("exception")
        assert [hdu.name for hdu in ours] == [hdu.name for hdu in real] == ["PRIMARY", "LIGHTCURVE"]
        assert [type(hdu) for hdu in ours] == [type(hdu) for hdu in real]
        for mine, theirs in zip(ours, real):
            assert list(mine.header) == list(theirs.header)  # the same keys, in the same order
            for key in theirs.header:
                if key not in ("COMMENT", ""):
                    assert type(mine.header[key]) is type(theirs.header[key]), key
                    assert mine.header.comments[key] == theirs.header.comments[key], key
        assert ours[1].columns.names == real[1].columns.names
        assert ours[1].columns.formats == real[1].columns.formats
        assert ours[1].data.dtype == real[1].data.dtype
        assert len(ours[1].data) == len(real[1].data) == 1282  # cam1-ccd1 of a 30-minute sector
        assert ours[0].header["ORIGIN"] == "UCSB/TGLC" and isinstance(ours[0].header["TICID"], str)
        assert ours[1].header["XPTIME"] == real[1].header["XPTIME"] == 1800


def test_sector_is_deterministic_and_consistent():
    one, two = SyntheticSector(23, 300, seed=4), SyntheticSector(23, 300, seed=4)
    assert one.bulk_script() == two.bulk_script() and one.target_list() == two.target_list()
    assert one.fits_bytes(17) == two.fits_bytes(17)
    assert SyntheticSector(23, 300, seed=5).fits_bytes(17) != one.fits_bytes(17)
    assert len(np.unique(one.gaia_ids)) == 300 and (one.gaia_ids < 10**18).any()
    assert not np.isin(one.unserved_gaia_ids, one.gaia_ids).any()
    for i in (0, 17, 299):
        assert one.index_of(one.relpath(i)) == i
        with fits.open(io.BytesIO(one.fits_bytes(i))) as hdul:
            assert hdul[0].header["GAIADR3"] == one.gaia_ids[i] and hdul[0].header["TICID"] == str(one.tic_ids[i])
            assert hdul[0].header["CAMERA"] == one.cam[i] and hdul[0].header["CCD"] == one.ccd[i]
            assert len(hdul[1].data) == one.n_cadences(int(one.cam[i]), int(one.ccd[i]))
    with pytest.raises(KeyError):
        one.index_of(layout.lc_relpath(int(one.unserved_gaia_ids[0]), 23, 1, 1))
    # the listing has a shebang, comments, blank lines, CRLF endings and duplicates
    text = one.bulk_script()
    assert text.startswith(b"#!/bin/sh\n") and b"\r\n" in text and b"\n\n" in text
    assert text.count(b"--output") == 300 + len(one.duplicated) and len(one.duplicated) > 0
    # many files at once are the files one at a time
    assert {i: bytes(data) for i, data in one.fits_files([3, 250, 17, 4])} == {
        i: one.fits_bytes(i) for i in (3, 250, 17, 4)}


@pytest.mark.parametrize("n", [60, 300, 5000])
def test_listings_disagree_by_under_five_percent(n):
    """2% of the listed objects lack from the target list; 3% of its rows are not served."""
    sector = SyntheticSector(23, n, seed=1)
    targets = sector.target_list().decode().splitlines()
    assert (~sector.in_target_list).sum() == n // 50
    assert len(targets) - 1 == sector.in_target_list.sum() + len(sector.unserved_gaia_ids)
    assert (~sector.in_target_list).sum() / n <= 0.05 and len(sector.unserved_gaia_ids) / (len(targets) - 1) <= 0.05


def test_a_pregenerated_archive_serves_the_same_bytes():
    tamper = {7: {"SECTOR": 22}}
    with LocalArchive(sector=23, n=40, seed=3, tamper=tamper, pregenerate=True) as archive:
        sector = archive.sector
        assert len(archive._made) == 40
        for i in (0, 7, 39):
            assert requests.get(f"{archive.url}/{sector.relpath(i)}", timeout=10).content == sector.fits_bytes(i)
        assert requests.get(f"{archive.url}/{sector.relpath(0)}x", timeout=10).status_code == 404


def test_served_over_http_with_deterministic_faults():
    with LocalArchive(sector=23, n=60, seed=3, faults={"500": 1.0}) as archive:
        sector = archive.sector
        base = archive.url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        listing = requests.get(f"{base}/{layout.bulk_script_relpath(23)}", timeout=10)
        assert listing.status_code == 200 and listing.content == sector.bulk_script()
        targets = requests.get(f"{base}/{layout.target_list_relpath(23)}", timeout=10)
        assert targets.content == sector.target_list()
        assert requests.get(f"{base}/{layout.bulk_script_relpath(24)}", timeout=10).status_code == 404
        url = f"{base}/{sector.relpath(5)}"
        # every fault hits only a file's first two requests
        assert [requests.get(url, timeout=10).status_code for _ in range(3)] == [500, 500, 200]
        assert requests.get(url, timeout=10).content == sector.fits_bytes(5)
        assert archive.fits_requests() == {sector.relpath(5): 4}
        assert archive.request_count() == 7
    assert FAULTS == ("429", "500", "truncate", "reset")
    with pytest.raises(ValueError, match="unknown fault"):
        LocalArchive(faults={"slow": 0.5})


@pytest.mark.parametrize("retry_after", [None, 7])
def test_retry_after_of_429_answers(retry_after):
    keywords = {} if retry_after is None else {"retry_after": retry_after}
    with LocalArchive(sector=23, n=10, seed=3, faults={"429": 1.0}, **keywords) as archive:
        answer = requests.get(f"{archive.url}/{archive.sector.relpath(2)}", timeout=10)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == str(retry_after or 1)


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_listing_modes_frame_the_body_as_said(mode):
    with LocalArchive(sector=23, n=200, seed=6, listing_mode=mode) as archive:
        for relpath, body in zip(LISTINGS, (archive.sector.bulk_script(), archive.sector.target_list())):
            status, headers, raw = _raw_get(archive.url, relpath)
            assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
            assert email.utils.parsedate_to_datetime(headers["last-modified"]).year >= 2023
            if mode == "length":
                assert status == "HTTP/1.1 200 OK" and headers["content-length"] == str(len(body)) and raw == body
                assert "transfer-encoding" not in headers
            elif mode == "chunked":
                assert status == "HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
                assert "content-length" not in headers
                chunks, ended = _dechunk(raw)
                assert b"".join(chunks) == body and len(chunks) > 1 and ended  # the zero-length chunk ends it
            else:
                assert status == "HTTP/1.0 200 OK" and raw == body
                assert "content-length" not in headers and "transfer-encoding" not in headers
            # an ordinary client reads it whole, with the same validators every time
            answer = requests.get(f"{archive.url}/{relpath}", timeout=10)
            assert answer.content == body and answer.headers["ETag"] == headers["etag"]
            assert answer.headers["Last-Modified"] == headers["last-modified"]
        etags = {requests.get(f"{archive.url}/{relpath}", timeout=10).headers["ETag"] for relpath in LISTINGS}
        assert len(etags) == 2
        # files keep Content-Length whatever the listing mode
        answer = requests.get(f"{archive.url}/{archive.sector.relpath(0)}", timeout=10)
        assert answer.headers["Content-Length"] == str(len(archive.sector.fits_bytes(0)))


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_listing_cuts_then_whole(mode):
    """The first two requests of each listing end at a line near the middle; the third is whole."""
    with LocalArchive(sector=23, n=200, seed=6, listing_mode=mode, listing_cuts=2) as archive:
        for relpath, body in zip(LISTINGS, (archive.sector.bulk_script(), archive.sector.target_list())):
            for attempt in range(3):
                status, headers, raw = _raw_get(archive.url, relpath)
                assert status.endswith("200 OK") and headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
                expected = _half(body) if attempt < 2 else body
                if mode == "length":
                    assert headers["content-length"] == str(len(body)) and raw == expected  # fewer bytes than said
                elif mode == "chunked":
                    chunks, ended = _dechunk(raw)
                    assert b"".join(chunks) == expected and ended == (attempt == 2)  # a cut lacks the final chunk
                else:
                    assert raw == expected  # nothing tells that it was cut
        assert archive.request_count() == 6
    # an ordinary client notices the cut, unless the framing cannot tell
    with LocalArchive(sector=23, n=200, seed=6, listing_mode=mode, listing_cuts=1) as archive:
        url = f"{archive.url}/{LISTINGS[1]}"
        if mode == "close":
            assert requests.get(url, timeout=10).content == _half(archive.sector.target_list())
        else:
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                requests.get(url, timeout=10)
        assert requests.get(url, timeout=10).content == archive.sector.target_list()
    with pytest.raises(ValueError, match="listing mode"):
        LocalArchive(listing_mode="gzip")


def _changed_cards(tampered: bytes, plain: bytes) -> list[bytes]:
    assert len(tampered) == len(plain) and len(plain) % BLOCK == 0
    return [tampered[k:k + CARD] for k in range(0, len(plain), CARD) if tampered[k:k + CARD] != plain[k:k + CARD]]


def test_tamper_changes_exactly_the_card():
    plain = SyntheticSector(23, 30, seed=8)
    camera = int(plain.cam[7]) % 4 + 1
    tamper = {5: {"SECTOR": 22}, 7: {"CAMERA": camera}, 9: {"GAIADR3": 123}, 11: {"TICID": "42", "PSF_ERR": 1.5}}
    with LocalArchive(sector=23, n=30, seed=8, tamper=tamper) as archive:
        served = {i: requests.get(f"{archive.url}/{plain.relpath(i)}", timeout=10).content for i in range(12)}
    for i in range(12):
        cards = _changed_cards(served[i], plain.fits_bytes(i))
        assert sorted(card[:8].rstrip() for card in cards) == sorted(
            key.encode() for key, hdus in (("SECTOR", 1), ("CAMERA", 1), ("GAIADR3", 2), ("TICID", 1), ("PSF_ERR", 1))
            if key in tamper.get(i, {}) for _ in range(hdus))
    with fits.open(io.BytesIO(served[5])) as hdul:
        hdul.verify("exception")
        assert hdul[0].header["SECTOR"] == 22 and hdul[0].header.comments["SECTOR"] == "observation sector"
    with fits.open(io.BytesIO(served[7])) as hdul:
        assert hdul[0].header["CAMERA"] == camera != plain.cam[7]
    with fits.open(io.BytesIO(served[9])) as hdul:
        assert hdul[0].header["GAIADR3"] == hdul[1].header["GAIADR3"] == 123
        assert hdul[0].header["OBJECT"] == f"Gaia DR3 {plain.gaia_ids[9]}"  # only the card asked for
    with fits.open(io.BytesIO(served[11])) as hdul:
        assert hdul[0].header["TICID"] == "42" and hdul[1].header["PSF_ERR"] == 1.5
    assert SyntheticSector(23, 30, seed=8, tamper={5: {"SECTOR": 22}}).fits_bytes(5) == served[5]
    with pytest.raises(ValueError, match="no header card"):
        LocalArchive(sector=23, n=30, tamper={1: {"NOTACARD": 1}})
    with pytest.raises(ValueError, match="no object"):
        LocalArchive(sector=23, n=30, tamper={30: {"SECTOR": 1}})


def test_v2_files(tmp_path):
    v1 = SyntheticSector(23, 20, seed=2)
    with LocalArchive(sector=23, n=20, seed=2, flavour="v2", tamper={4: {"CONTAMRT": 0.5}}) as archive:
        served = {i: requests.get(f"{archive.url}/{archive.sector.relpath(i)}", timeout=10).content for i in (3, 4)}
        # named as the tglc package names them: _tess_v2_llc.fits (the v1 name is not served)
        assert archive.sector.relpath(3) == v1.relpath(3).replace("_tess_v1_llc", "_tess_v2_llc")
        assert requests.get(f"{archive.url}/{v1.relpath(3)}", timeout=10).status_code == 404
    assert served[3] == archive.sector.fits_bytes(3) != v1.fits_bytes(3)
    with fits.open(io.BytesIO(served[3])) as hdul, fits.open(io.BytesIO(v1.fits_bytes(3))) as old:
        hdul.verify("exception")
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "LIGHTCURVE", "MODEL"]
        primary = hdul[0].header
        assert isinstance(primary["TGLCVER"], str) and primary["FFIVER"] == "SPOC"
        assert isinstance(primary["CONTAMRT"], float) and 0 <= primary["CONTAMRT"] <= 0.3
        assert list(primary).index("TGLCVER") == list(primary).index("ORIGIN") + 1
        assert [key for key in primary if key not in old[0].header] == [
            "NAXIS1", "NAXIS2", "NAXIS3", "TGLCVER", "FFIVER", "CONTAMRT"]
        length = v1.n_cadences(int(v1.cam[3]), int(v1.ccd[3]))
        assert hdul[0].data.shape == (length, 5, 5) and hdul[2].data.shape == (3, 5, 5)
        x, y = round(primary["STAR_X"]), round(primary["STAR_Y"])
        assert np.array_equal(hdul[0].data[:, y, x], hdul[1].data["aperture_flux"])
    # the builder's reader takes v2 files: the same LIGHTCURVE as v1, header and data
    (tmp_path / "v2.fits").write_bytes(served[3])
    (tmp_path / "v1.fits").write_bytes(v1.fits_bytes(3))
    ours, theirs = read_tglc(tmp_path / "v2.fits"), read_tglc(tmp_path / "v1.fits")
    assert ours.data.tobytes() == theirs.data.tobytes()
    assert ours.header.keys() == theirs.header.keys()
    assert all(ours.header[key] == theirs.header[key] for key in theirs.header.keys() if key != "COMMENT")
    assert ours.primary["TGLCVER"] == primary["TGLCVER"] and ours.primary["CONTAMRT"] == primary["CONTAMRT"]
    with fits.open(io.BytesIO(served[4])) as hdul:
        assert hdul[0].header["CONTAMRT"] == 0.5
    with pytest.raises(ValueError, match="flavour"):
        SyntheticSector(23, 20, flavour="v3")


def test_mirror_holds_the_served_bytes(tmp_path):
    hostile = ["curl -f --output '../../etc/passwd' https://example.org/x", "# a comment"]
    archive = LocalArchive(sector=23, n=120, seed=9, tamper={3: {"SECTOR": 22}}, extra_listing_lines=hostile)
    root = write_mirror(tmp_path / "mirror", archive)
    assert root == tmp_path / "mirror"
    on_disk = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    assert on_disk == sorted([*LISTINGS, *(archive.sector.relpath(i) for i in range(120))])
    with archive:
        for relpath in [*LISTINGS, *(archive.sector.relpath(i) for i in range(0, 120, 7)), archive.sector.relpath(3)]:
            assert (root / relpath).read_bytes() == requests.get(f"{archive.url}/{relpath}", timeout=10).content
    assert (root / LISTINGS[0]).read_bytes().endswith("".join(f"{line}\n" for line in hostile).encode())
    # a sector alone: the same files, without the archive's tampering
    plain = write_mirror(tmp_path / "plain", SyntheticSector(23, 120, seed=9))
    assert (plain / archive.sector.relpath(3)).read_bytes() == SyntheticSector(23, 120, seed=9).fits_bytes(3)


def test_runs_alone_from_the_command_line():
    process = subprocess.Popen([sys.executable, "-m", "tglc_builder.demo", "--sector", "7", "--n", "20",
                                "--port", "0"], cwd=REPO, env=run_env(), stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        response = requests.get(f"{url}/{layout.target_list_relpath(7)}", timeout=10)
        assert response.status_code == 200 and response.content == SyntheticSector(7, 20).target_list()
    finally:
        process.terminate()
        process.wait(10)


def test_writes_a_mirror_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tglc_builder.demo", "--sector", "7", "--n", "20", "--flavour", "v2",
                             "--write-mirror", str(tmp_path)], cwd=REPO, env=run_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    sector = SyntheticSector(7, 20, flavour="v2")
    assert (tmp_path / layout.target_list_relpath(7)).read_bytes() == sector.target_list()
    assert (tmp_path / sector.relpath(19)).read_bytes() == sector.fits_bytes(19)
