"""The dataset's columns, in one table: what each output column is, where in a TGLC file it comes from, its dtype
and its padding. ``--columns seed`` gives the seed's columns, ``--columns all`` every column of use a TGLC file
carries (see docs/DATASET.md). Every reader and writer takes its columns from here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLUMN_SETS = ("seed", "all")


@dataclass(frozen=True)
class Series:
    """A per-cadence column: ``(N, L)`` padded in HDF5, a list trimmed to ``n_cadences`` in Arrow."""

    name: str
    fits_column: str  # in the LIGHTCURVE table
    dtype: np.dtype
    pad: float | int  # beyond n_cadences: NaN for floats, 0 for integers
    unit: str
    description: str
    required: bool = True  # False: a column only some file versions carry (padding for files without it)
    widens: bool = False  # True: dtype is the narrowest; an output file takes the widest of its files (the flags)


@dataclass(frozen=True)
class Scalar:
    """A per-light-curve column taken from a header card (``hdu`` 0: primary, 1: LIGHTCURVE)."""

    name: str
    card: str
    hdu: int
    dtype: np.dtype
    unit: str
    description: str
    required: bool = True  # False: a card only some files carry (NaN / 0 / "" when absent)


_F8, _F4, _I4, _I2 = np.dtype("float64"), np.dtype("float32"), np.dtype("int32"), np.dtype("int16")
STRING = np.dtype("O")  # a text scalar (str values): HDF5 fixed-length ASCII of STRING_BYTES, Arrow string
STRING_BYTES = 64  # fixed length, so that Fletcher32 covers the values (HDF5 filters refuse variable-length data)
FROM_FILE_NAME = -1  # Scalar.hdu of a value read off the file's name (its version), not a header card
_NAN = float("nan")

SEED_SERIES = (
    Series("time", "time", _F8, _NAN, "d", "TBJD = BJD - 2457000, barycentric TDB"),
    Series("psf_flux", "psf_flux", _F4, _NAN, "e-/s", "PSF flux, not detrended"),
    Series("aper_flux", "aperture_flux", _F4, _NAN, "e-/s", "3x3 aperture flux, not detrended"),
    Series("tess_flags", "TESS_flags", _I2, 0, "", "SPOC quality flags of the FFI cadence (int16, or int32 in a "
           "file holding tglc 0.8 light curves)", widens=True),
    Series("tglc_flags", "TGLC_flags", _I2, 0, "", "TGLC flags (bit 0 scattered light, bit 1 near the CCD edge; "
           "int16, or int32 in a file holding tglc 0.8 light curves)", widens=True),
)
EXTRA_SERIES = (
    Series("cal_psf_flux", "cal_psf_flux", _F4, _NAN, "", "detrended, normalised PSF flux"),
    Series("cal_aper_flux", "cal_aper_flux", _F4, _NAN, "", "detrended, normalised aperture flux (TGLC's "
           "recommended starting point)"),
    Series("background", "background", _F4, _NAN, "e-/s", "local background (true background = this + LOC_BG)"),
    Series("cadence_num", "cadence_num", _I4, 0, "", "FFI cadence number"),
    Series("aper_flux_raw", "aperture_flux_raw", _F4, _NAN, "e-/s", "decontaminated 3x3 aperture sum before "
           "catalog-based offsets and detrending (tglc 0.8 files; NaN for files without it)", required=False),
    Series("psf_flux_raw", "psf_flux_raw", _F4, _NAN, "e-/s", "fitted PSF amplitude before catalog-based offsets "
           "and detrending (tglc 0.8 files; NaN for files without it)", required=False),
)

# Scalars every build has. TIC_ID, gaiadr3_id, RA and DEC come from the catalog (the target list), not a header.
SEED_SCALARS = (
    Scalar("psf_flux_err", "PSF_ERR", 1, _F8, "e-/s", "PSF flux error (one per light curve)"),
    Scalar("aper_flux_err", "APER_ERR", 1, _F8, "e-/s", "aperture flux error (one per light curve)"),
)
EXTRA_SCALARS = (
    Scalar("cal_psf_flux_err", "CPSF_ERR", 1, _F8, "", "calibrated PSF flux error"),
    Scalar("cal_aper_flux_err", "CAPE_ERR", 1, _F8, "", "calibrated aperture flux error"),
    Scalar("tessmag", "TESSMAG", 0, _F8, "mag", "TESS magnitude"),
    Scalar("gaia_g", "GAIA_G", 0, _F8, "mag", "Gaia DR3 G magnitude"),
    Scalar("gaia_bp", "GAIA_BP", 0, _F8, "mag", "Gaia DR3 BP magnitude"),
    Scalar("gaia_rp", "GAIA_RP", 0, _F8, "mag", "Gaia DR3 RP magnitude"),
    Scalar("rawflux", "RAWFLUX", 0, _F8, "e-/s", "median flux of the raw FFI"),
    Scalar("loc_bg", "LOC_BG", 1, _F8, "e-/s", "local background offset"),
    Scalar("star_x", "STAR_X", 0, _F8, "pixel", "star x position in the cut-out"),
    Scalar("star_y", "STAR_Y", 0, _F8, "pixel", "star y position in the cut-out"),
    Scalar("cut_x", "CUT_X", 0, _I2, "", "FFI cut x index"),
    Scalar("cut_y", "CUT_Y", 0, _I2, "", "FFI cut y index"),
    Scalar("camera", "CAMERA", 0, _I2, "", "TESS camera"),
    Scalar("ccd", "CCD", 0, _I2, "", "TESS CCD"),
    Scalar("contamrt", "CONTAMRT", 0, _F8, "", "contamination ratio (TGLC v2 files only; NaN otherwise)",
           required=False),
    Scalar("file_version", "", FROM_FILE_NAME, _I2, "", "file version: the k of the FITS file's name "
           "_tess_v<k>_llc.fits (1 on MAST, 2 for files of the tglc package since 0.6.6)"),
    Scalar("tglcver", "TGLCVER", 0, STRING, "", "TGLC version that wrote the file (TGLCVER; empty when absent)",
           required=False),
    Scalar("procver", "PROCVER", 0, STRING, "", "processing version (PROCVER of tglc 0.8 files; empty when absent)",
           required=False),
)

# Catalog columns in every output: name -> (dtype, unit, description)
IDS_AND_POSITION = {
    "TIC_ID": (np.dtype("int64"), "", "TESS Input Catalog id"),
    "gaiadr3_id": (np.dtype("int64"), "", "Gaia DR3 source id"),
    "RA": (_F8, "deg", "right ascension (ICRS), from the target list"),
    "DEC": (_F8, "deg", "declination (ICRS), from the target list"),
}
N_CADENCES = ("n_cadences", _I4, "", "true length of the light curve; series are padded beyond it")
N_CADENCES_NESTED = "true length of the light curve: every list of lightcurve is this long"  # HATS: no padding


@dataclass(frozen=True)
class ColumnSet:
    """The columns of one build."""

    name: str  # "seed" or "all"
    series: tuple[Series, ...]
    scalars: tuple[Scalar, ...]  # from headers


def column_set(name: str) -> ColumnSet:
    if name == "seed":
        return ColumnSet("seed", SEED_SERIES, SEED_SCALARS)
    if name == "all":
        return ColumnSet("all", SEED_SERIES + EXTRA_SERIES, SEED_SCALARS + EXTRA_SCALARS)
    raise ValueError(f"unknown column set {name!r}; choose from {COLUMN_SETS}")
