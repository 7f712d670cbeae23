"""The fast TGLC reader against astropy, value for value, and its refusal of everything that is not a TGLC file."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from conftest import SAMPLE
from tglc_builder.demo import SyntheticSector
from tglc_builder.demo.fits import card, header_bytes
from tglc_builder.reader import InvalidTGLCFile, parse_value, read_tglc


def _assert_same_as_astropy(path) -> None:
    ours = read_tglc(path)
    with fits.open(path) as hdul:
        assert [hdu.name for hdu in hdul][:2] == ["PRIMARY", "LIGHTCURVE"]
        for header, theirs in ((ours.primary, hdul[0].header), (ours.header, hdul[1].header)):
            keys = [key for key in theirs if key not in ("COMMENT", "HISTORY", "")]
            assert keys == [key for key in header.keys() if key not in ("COMMENT", "HISTORY", "")]
            for key in keys:
                assert header[key] == theirs[key] and type(header[key]) is type(theirs[key]), key
        table = hdul[1].data
        assert ours.data.dtype.names == tuple(table.columns.names)
        for name in table.columns.names:
            theirs = np.asarray(table[name])
            assert ours.data[name].dtype == theirs.dtype, name
            assert ours.data[name].tobytes() == theirs.tobytes(), name  # bit for bit, NaN payloads included
    assert ours.n_cadences == len(ours.data)


@pytest.mark.skipif(not SAMPLE.exists(), reason="the real TGLC sample (tests/data) is absent")
def test_real_sample_equals_astropy():
    _assert_same_as_astropy(SAMPLE)
    lc = read_tglc(SAMPLE, gaiadr3_id=6399196263939178880)
    assert lc.primary["TICID"] == "389023759" and lc.primary["GAIADR3"] == 6399196263939178880
    assert lc.n_cadences == 1282 and lc.header["PSF_ERR"] == 134.6365807514819


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_generated_files_equal_astropy(tmp_path, index):
    sector = SyntheticSector(23, 400, seed=1)
    short = np.flatnonzero(sector.gaia_ids < 10**18)
    i = [0, 1, int(short[0]), 399][index]  # a short Gaia id among them
    path = tmp_path / "lc.fits"
    path.write_bytes(sector.fits_bytes(i))
    _assert_same_as_astropy(path)
    lc = read_tglc(path, gaiadr3_id=int(sector.gaia_ids[i]))
    assert np.isnan(lc.data["psf_flux"]).any()  # the generated files carry NaNs, which must survive


def test_header_values():
    assert parse_value(card("A", "it's")) == "it's"
    assert parse_value(card("A", 6399196263939178880)) == 6399196263939178880  # exact, not through float
    assert parse_value(card("A", 0.000780332788866862)) == 0.000780332788866862
    assert parse_value("A       =               1.5D-3 / a Fortran exponent".ljust(80)) == 0.0015
    assert parse_value(card("A", True)) is True and parse_value(card("A", False)) is False


@pytest.fixture
def good(tmp_path):
    data = SyntheticSector(23, 5, seed=2).fits_bytes(0)
    return tmp_path, data


def _refused(tmp_path, data: bytes, match: str, **kwargs) -> None:
    path = tmp_path / "bad.fits"
    path.write_bytes(data)
    with pytest.raises(InvalidTGLCFile, match=match):
        read_tglc(path, **kwargs)


def read_tglc_bytes(tmp_path, data: bytes, **kwargs):
    path = tmp_path / "good.fits"
    path.write_bytes(data)
    return read_tglc(path, **kwargs)


def test_truncated_files_are_refused(good):
    tmp_path, data = good
    _refused(tmp_path, b"", "not a whole number of FITS blocks")
    _refused(tmp_path, data[:-100], "not a whole number of FITS blocks")
    _refused(tmp_path, data[:-2880], "cut short")  # block-aligned, so only the table size gives it away
    _refused(tmp_path, data[:2880], "no extension")
    _refused(tmp_path, data[:2880 * 2], "no END card")


def test_other_files_are_refused(good):
    tmp_path, data = good
    _refused(tmp_path, b"<html>not found</html>".ljust(2880), "not a FITS file")
    _refused(tmp_path, data.replace(b"'LIGHTCURVE'", b"'SPECTRUM  '"), "not the LIGHTCURVE")
    _refused(tmp_path, data.replace(b"'psf_flux'", b"'psf_fluz'"), "no 'psf_flux' column")
    _refused(tmp_path, data.replace(b"TFORM8  = 'I       '", b"TFORM8  = 'E       '"),
             "column 'TESS_flags' has format 'E', not 'I' or 'J'")
    _refused(tmp_path, data, "GAIADR3", gaiadr3_id=1)
    header = read_tglc_bytes(tmp_path, data).primary
    # a file of another sector, camera or CCD than its path says
    _refused(tmp_path, data, "SECTOR = 23", sector=22)
    _refused(tmp_path, data, "CAMERA", camera=header["CAMERA"] % 4 + 1)
    _refused(tmp_path, data, "CCD", ccd=header["CCD"] % 4 + 1)
    read_tglc_bytes(tmp_path, data, sector=23, camera=header["CAMERA"], ccd=header["CCD"],
                    gaiadr3_id=header["GAIADR3"])
    # a scaled flags column: astropy would return other numbers than the stored ones
    header_end = data.index(b"END" + b" " * 77, 2880)
    assert data[header_end + 80:header_end + 160] == b" " * 80  # room for one more card in the header's block
    scaled = data[:header_end] + card("TZERO8", 32768).encode() + data[header_end:header_end + 80] + \
        data[header_end + 160:]
    _refused(tmp_path, scaled, "scaled")


def test_v2_file_with_a_cube_and_a_third_hdu(tmp_path):
    """TGLC v2 files (from the tglc package) carry a cut-out cube in the primary HDU and one more HDU."""
    v1 = tmp_path / "v1.fits"
    v1.write_bytes(SyntheticSector(23, 5, seed=3).fits_bytes(1))
    with fits.open(v1) as hdul:
        primary = fits.PrimaryHDU(data=np.arange(5 * 5 * 7, dtype=">f4").reshape(7, 5, 5), header=hdul[0].header)
        fits.HDUList([primary, hdul[1].copy(), fits.ImageHDU(np.ones((3, 3)), name="EXTRA")]).writeto(
            tmp_path / "v2.fits")
    assert read_tglc(tmp_path / "v2.fits").data.tobytes() == read_tglc(v1).data.tobytes()


def test_header_card_helper_writes_fits():
    text = header_bytes([card("SIMPLE", True), card("BITPIX", 8), card("NAXIS", 0), card("S", "a'b", "c")])
    header = fits.Header.fromstring(text.decode())
    assert header["S"] == "a'b" and header.comments["S"] == "c" and len(text) == 2880
