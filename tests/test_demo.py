"""The local archive: TGLC v1 files exactly like MAST's, deterministic, served over real HTTP (faults included)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
from astropy.io import fits

from conftest import REPO, SAMPLE, run_env
from tglc_builder import layout
from tglc_builder.archive import LocalArchive, SyntheticSector


@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample in ../shared/data is absent")
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


def test_runs_alone_from_the_command_line():
    process = subprocess.Popen([sys.executable, "-m", "tglc_builder.archive", "--sector", "7", "--n", "20",
                                "--port", "0"], cwd=REPO, env=run_env(), stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        response = requests.get(f"{url}/{layout.target_list_relpath(7)}", timeout=10)
        assert response.status_code == 200 and response.content == SyntheticSector(7, 20).target_list()
    finally:
        process.terminate()
        process.wait(10)
