"""Where MAST keeps TGLC files: the naming scheme shared by every stage.

See ``TGLC-FORMAT.md``: ``BASE/sSSSS/cam{C}-ccd{D}/00{z[0:2]}/{z[2:6]}/{z[6:10]}/{z[10:14]}/<file>`` with
``z = str(gaia_id).zfill(19)``.
"""

from __future__ import annotations

import os

DEFAULT_MAST_URL = "https://archive.stsci.edu/hlsps/tglc"
MAST_URL_ENV = "TGLC_MAST_URL"
NSIDE = 16
NEST = True

# One regular expression (RE2- and Python-compatible, no back-references) for a light curve's path relative to
# BASE; the repeated sector/camera/CCD and the Gaia id digits are cross-checked by the caller.
LC_RELPATH_PATTERN = (
    r"^s(?P<sector>\d{4})/cam(?P<cam>[1-4])-ccd(?P<ccd>[1-4])/"
    r"(?P<z0>00\d{2})/(?P<z1>\d{4})/(?P<z2>\d{4})/(?P<z3>\d{4})/"
    r"hlsp_tglc_tess_ffi_gaiaid-(?P<gaia>[1-9]\d{0,18})-s(?P<sector2>\d{4})-cam(?P<cam2>[1-4])-ccd(?P<ccd2>[1-4])"
    r"_tess_v1_llc\.fits$"
)


def sector_tag(sector: int) -> str:
    """``23`` -> ``'s0023'``."""
    return f"s{int(sector):04d}"


def bulk_script_relpath(sector: int) -> str:
    return f"download_scripts/hlsp_tglc_tess_ffi_{sector_tag(sector)}_tess_v1_llc.sh"


def target_list_relpath(sector: int) -> str:
    return f"target_lists/{sector_tag(sector)}.csv"


def lc_filename(gaia_id: int, sector: int, cam: int, ccd: int) -> str:
    return f"hlsp_tglc_tess_ffi_gaiaid-{int(gaia_id)}-{sector_tag(sector)}-cam{cam}-ccd{ccd}_tess_v1_llc.fits"


def lc_relpath(gaia_id: int, sector: int, cam: int, ccd: int) -> str:
    """Path of one light curve relative to the archive root."""
    z = str(int(gaia_id)).zfill(19)
    return (
        f"{sector_tag(sector)}/cam{cam}-ccd{ccd}/00{z[0:2]}/{z[2:6]}/{z[6:10]}/{z[10:14]}/"
        + lc_filename(gaia_id, sector, cam, ccd)
    )


def resolve_mast_url(mast_url: str | None) -> str:
    """The archive root: explicit argument, else ``$TGLC_MAST_URL``, else MAST; no trailing slash."""
    url = mast_url or os.environ.get(MAST_URL_ENV) or DEFAULT_MAST_URL
    return url.rstrip("/")


def sector_dir(tglc_data_path: str | os.PathLike, sector: int) -> str:
    """``<tglc_data_path>/sSSSS``: where the listings, the catalog and the failure report of a sector live."""
    return os.path.join(os.fspath(tglc_data_path), sector_tag(sector))
