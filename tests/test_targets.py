"""Choosing stars: ``--targets FILE`` (gaiadr3_id, tic_id, ra/dec; CSV, ECSV, Parquet, FITS) and ``--cone``, for one
sector and several. Real builds in subprocesses against the demo release over HTTP; the archive counts the light
curves fetched, which must be exactly the chosen stars'; the outputs are compared with the FITS files."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from conftest import REPO, run_env
from tglc_builder.demo import LocalArchive

SCRIPT = str(REPO / "build_parent_sample.py")
SECTORS, N, SEED = (1, 2, 3), 40, 5


@pytest.fixture
def release():
    """A fresh release per test, so its request counters are the test's own."""
    with LocalArchive(sectors=SECTORS, n=N, seed=SEED) as archive:
        yield archive


def _build(root: Path, archive: LocalArchive, sector: str, *extra: str) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, SCRIPT, "-s", sector, "--tglc_data_path", "data", "--mast-url",
                           archive.url, "-n", "2", *extra], env=run_env(), capture_output=True, text=True,
                          timeout=300, cwd=root)


# ---- what the release holds --------------------------------------------------------------------------------------
def _rows(archive: LocalArchive, sector: int) -> np.ndarray:
    return archive.release[sector].expected_catalog_indices()


def _stars(archive: LocalArchive, sector: int) -> set[int]:
    return set(archive.release[sector].gaia_ids[_rows(archive, sector)].tolist())


def _paths(archive: LocalArchive, chosen: set[int], sectors=SECTORS) -> set[str]:
    """Every light curve of the chosen stars in ``sectors`` (a star listed twice has two)."""
    out = set()
    for sector in sectors:
        s = archive.release[sector]
        out |= {s.relpath(i) for i in _rows(archive, sector).tolist() if int(s.gaia_ids[i]) in chosen}
    return out


def _where(archive: LocalArchive, star: int) -> tuple[int, float, float]:
    """TIC id, RA and DEC of a star (the same in every sector)."""
    for sector in SECTORS:
        s = archive.release[sector]
        hit = np.flatnonzero(s.gaia_ids == star)
        if len(hit):
            return int(s.tic_ids[hit[0]]), float(s.ra[hit[0]]), float(s.dec[hit[0]])
    raise KeyError(star)


def _picks(archive: LocalArchive) -> dict[str, int]:
    """A star with two light curves in every sector (the twin), one of sectors 1 and 2 only, one of sector 3 only."""
    one, two, three = (_stars(archive, s) for s in SECTORS)
    twin = next(g for g in sorted(one & two & three)
                if (archive.release[1].gaia_ids[_rows(archive, 1)] == g).sum() == 2)
    return {"twin": twin, "band": min((one & two) - three), "own3": min(three - one - two)}


def _sectors_of(archive: LocalArchive, star: int, sectors=SECTORS) -> str:
    return " ".join(str(s) for s in sectors if star in _stars(archive, s))


# ---- what the build left -----------------------------------------------------------------------------------------
def _report(root: Path) -> list[dict[str, str]]:
    with open(root / "data" / "targets_report.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["target", "kind", "gaiadr3_id", "sectors", "reason"]
        return list(reader)


def _row(target, kind, star="", sectors="", reason="") -> dict[str, str]:
    return {"target": str(target), "kind": kind, "gaiadr3_id": str(star), "sectors": sectors, "reason": reason}


def _only_folder(root: Path, sector: int, name: str = "MultimodalUniverse") -> Path:
    (folder,) = sorted((root / "data" / f"s{sector:04d}").glob(f"targets-*/{name}"))
    return folder


def _assert_values(out: Path, fits_dir: Path, expected: set[str]) -> None:
    """The HDF5 files hold exactly the light curves ``expected`` (paths), each value equal to its FITS file's."""
    by_star: dict[int, list[str]] = {}
    for path in expected:
        by_star.setdefault(int(path.split("gaiaid-")[1].split("-")[0]), []).append(path)
    seen = []
    for file in sorted(out.glob("TGLC/healpix=*/*.hdf5")):
        with h5py.File(file, "r") as h5:
            data = {name: h5[name][()] for name in h5}
        for i, star in enumerate(data["gaiadr3_id"].tolist()):
            matches = []
            for path in by_star[star]:
                with fits.open(fits_dir / path) as hdul:
                    table = hdul["LIGHTCURVE"].data
                    k = len(table)
                    same = data["n_cadences"][i] == k and int(hdul[0].header["TICID"]) == data["TIC_ID"][i] and all(
                        data[ours][i, :k].tobytes() == np.asarray(table[theirs]).astype(
                            table[theirs].dtype.newbyteorder("=")).tobytes()
                        for ours, theirs in (("time", "time"), ("psf_flux", "psf_flux"),
                                             ("aper_flux", "aperture_flux"), ("tess_flags", "TESS_flags"),
                                             ("tglc_flags", "TGLC_flags")))
                if same:
                    matches.append(path)
            assert len(matches) == 1, (file, star)
            seen.append(matches[0])
    assert sorted(seen) == sorted(expected)


def _hats_stars(folder: Path) -> list[int]:
    return sorted(g for f in folder.rglob("*.parquet") if "dataset" in f.parts and f.name.startswith("Npix=")
                  for g in pq.read_table(f, columns=["gaiadr3_id"])["gaiadr3_id"].to_pylist())


# ---- each form of targets ----------------------------------------------------------------------------------------
def test_gaia_ids_csv_three_sectors(tmp_path, release):
    """Gaia ids from a CSV (the column in another case, 19-digit ids exact): in every sector only the chosen stars'
    light curves are fetched (both of the twin's) and written; the report says where each was found."""
    picks = _picks(release)
    chosen = [picks["twin"], picks["band"], picks["own3"], 1234567890123456789]
    (tmp_path / "t.csv").write_text("name,GaiaDR3_ID\n" + "".join(f"x{k}, {g}\n" for k, g in enumerate(chosen)))
    done = _build(tmp_path, release, "1-3", "--targets", "t.csv", "--no-stars")
    assert done.returncode == 0, done.stderr
    expected = _paths(release, set(chosen))
    assert release.fits_requests() == dict.fromkeys(expected, 1)
    assert len(expected) == 3 * 2 + 2 + 1
    assert _report(tmp_path) == [
        _row(picks["twin"], "gaiadr3_id", picks["twin"], "1 2 3"),
        _row(picks["band"], "gaiadr3_id", picks["band"], "1 2"),
        _row(picks["own3"], "gaiadr3_id", picks["own3"], "3"),
        _row(1234567890123456789, "gaiadr3_id", reason="no light curve of this Gaia DR3 id in sector(s) 1-3")]
    for sector in SECTORS:
        _assert_values(_only_folder(tmp_path, sector), tmp_path / "data" / f"s{sector:04d}" / "fits_lcs",
                       _paths(release, set(chosen), [sector]))
    assert not (tmp_path / "data" / "s0001" / "MultimodalUniverse").exists()  # a whole build's folder: untouched


def test_tic_ids_parquet_one_sector(tmp_path, release):
    """TIC ids (int64) from Parquet, one sector: a star of another sector only is reported not found."""
    picks = _picks(release)
    tics = [_where(release, picks[name])[0] for name in ("band", "own3")]
    pq.write_table(pa.table({"TIC_ID": pa.array(tics, pa.int64())}), tmp_path / "t.parquet")
    done = _build(tmp_path, release, "2", "--targets", "t.parquet")
    assert done.returncode == 0, done.stderr
    assert release.fits_requests() == dict.fromkeys(_paths(release, {picks["band"]}, [2]), 1)
    assert _report(tmp_path) == [
        _row(tics[0], "tic_id", picks["band"], "2"),
        _row(tics[1], "tic_id", reason="no light curve of a star with this TIC id in sector(s) 2")]
    _assert_values(_only_folder(tmp_path, 2), tmp_path / "data" / "s0002" / "fits_lcs",
                   _paths(release, {picks["band"]}, [2]))


def test_positions_ecsv_within_radius(tmp_path, release):
    """ra/dec from ECSV: a target 1 arcsec from a star finds it, one 3 arcsec away does not (--match-radius 2)."""
    picks = _picks(release)
    _, ra1, dec1 = _where(release, picks["band"])
    _, ra2, dec2 = _where(release, picks["own3"])
    ras, decs = [ra1, ra2], [dec1 + 1 / 3600, dec2 - 3 / 3600]
    Table({"RA": ras, "Dec": decs}).write(tmp_path / "t.ecsv")
    done = _build(tmp_path, release, "1,3", "--targets", "t.ecsv", "--no-stars", "--match-radius", "2")
    assert done.returncode == 0, done.stderr
    assert release.fits_requests() == dict.fromkeys(_paths(release, {picks["band"]}, [1, 3]), 1)
    assert _report(tmp_path) == [
        _row(f"{ras[0]},{decs[0]}", "position", picks["band"], "1"),
        _row(f"{ras[1]},{decs[1]}", "position", reason="no star within 2 arcsec in sector(s) 1,3")]
    # nothing in 3, not even an empty folder: only its listings and catalog
    assert sorted(p.name for p in (tmp_path / "data" / "s0003").iterdir() if p.is_dir()) == []


def test_fits_file_and_stars_catalog(tmp_path, release):
    """Gaia ids (int64) from a FITS table, two sectors, both formats: the per-sector HATS catalogs and the stars
    catalog hold only the chosen stars (the twin twice per sector in the former)."""
    picks = _picks(release)
    chosen = [picks["twin"], picks["band"]]
    Table({"gaiadr3_id": np.array(chosen, np.int64)}).write(tmp_path / "t.fits")
    done = _build(tmp_path, release, "1-2", "--targets", "t.fits", "--format", "both")
    assert done.returncode == 0, done.stderr
    assert release.fits_requests() == dict.fromkeys(_paths(release, set(chosen), [1, 2]), 1)
    for sector in (1, 2):
        assert _hats_stars(_only_folder(tmp_path, sector, "hats")) == sorted([picks["twin"]] * 2 + [picks["band"]])
    (stars,) = (tmp_path / "data").glob("targets-*/stars")
    assert _hats_stars(stars / "tglc_stars") == sorted(chosen)
    assert _report(tmp_path) == [_row(g, "gaiadr3_id", g, "1 2") for g in chosen]


def test_cone_several_sectors(tmp_path, release):
    """--cone: the stars whose target-list position lies within RADIUS, one report row each, ascending."""
    picks = _picks(release)
    _, ra, dec = _where(release, picks["twin"])
    center, radius = (f"{ra:.4f}", f"{dec:.4f}"), "4"
    stars = {}
    for sector in SECTORS:
        s = release.release[sector]
        for i in _rows(release, sector).tolist():
            stars[int(s.gaia_ids[i])] = (s.ra[i], s.dec[i])
    ids = np.array(sorted(stars))
    where = SkyCoord([stars[g][0] for g in ids] * u.deg, [stars[g][1] for g in ids] * u.deg)
    inside = ids[SkyCoord(float(center[0]) * u.deg, float(center[1]) * u.deg).separation(where).deg <= 4]
    assert 2 <= len(inside) < len(ids)  # a real choice
    done = _build(tmp_path, release, "1-3", "--cone", *center, radius, "--no-stars")
    assert done.returncode == 0, done.stderr
    assert release.fits_requests() == dict.fromkeys(_paths(release, set(inside.tolist())), 1)
    assert _report(tmp_path) == [_row(",".join(center), "cone", g, _sectors_of(release, g)) for g in inside.tolist()]


def test_cone_with_no_star(tmp_path, release):
    """A cone holding no star: exit 2, one line, the report says so, no light curve fetched."""
    done = _build(tmp_path, release, "1-2", "--cone", "180", "60", "0.5", "--no-stars")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: none of the cone of 0.5 degrees around 180,60 is in sector(s) 1-2: nothing to build; see "
        "data/targets_report.csv")
    assert release.fits_requests() == {}
    assert _report(tmp_path) == [_row("180,60", "cone", reason="no star within 0.5 degrees in sector(s) 1-2")]


# ---- folders: a whole build, a targets build, resume ----------------------------------------------------------
def test_beside_a_whole_build_and_resume(tmp_path, release):
    """A targets build writes into its own targets-<hash> folders beside a whole build (which it leaves byte for
    byte), reuses its FITS files, resumes with nothing to do; another selection gets other folders; pointed at the
    whole build's folder it is refused."""
    assert _build(tmp_path, release, "1").returncode == 0
    whole = tmp_path / "data" / "s0001" / "MultimodalUniverse"
    before = {f: f.read_bytes() for f in sorted(whole.rglob("*")) if f.is_file()}
    fetched = release.fits_requests()
    picks = _picks(release)
    (tmp_path / "t.csv").write_text(f"gaiadr3_id\n{picks['twin']}\n")
    for _ in range(2):  # the second time: resumed, nothing to do
        done = _build(tmp_path, release, "1", "--targets", "t.csv")
        assert done.returncode == 0, done.stderr
        assert release.fits_requests() == fetched  # the FITS files on disk were reused
        assert {f: f.read_bytes() for f in sorted(whole.rglob("*")) if f.is_file()} == before
        assert _report(tmp_path) == [_row(picks["twin"], "gaiadr3_id", picks["twin"], "1")]
    assert "2 already complete" in done.stderr
    first = _only_folder(tmp_path, 1)
    _assert_values(first, tmp_path / "data" / "s0001" / "fits_lcs", _paths(release, {picks["twin"]}, [1]))
    (tmp_path / "u.csv").write_text(f"gaiadr3_id\n{picks['band']}\n")
    assert _build(tmp_path, release, "1", "--targets", "u.csv").returncode == 0
    assert len(list((tmp_path / "data" / "s0001").glob("targets-*/MultimodalUniverse"))) == 2
    done = _build(tmp_path, release, "1", "--targets", "t.csv", "--hdf5_output_path", str(whole))
    assert done.returncode == 2
    assert "pass --overwrite to replace that dataset" in done.stderr.strip().splitlines()[-1]
    assert {f: f.read_bytes() for f in sorted(whole.rglob("*")) if f.is_file()} == before


# ---- bad target files ----------------------------------------------------------------------------------------
def _parquet(path: Path, **columns) -> None:
    pq.write_table(pa.table(columns), path)


BAD = [
    ("t.csv", "name,mag\nx,3\n", (),
     "error: --targets t.csv has no gaiadr3_id, tic_id or ra and dec column (it has name, mag); name one column so "
     "(any case)"),
    ("t.csv", "gaiadr3_id\n12x4\n", (),
     "error: --targets t.csv: column gaiadr3_id, row 1: '12x4' is not a Gaia DR3 id (a whole number)"),
    ("t.csv", "gaiadr3_id\n1.5e18\n", (),
     "error: --targets t.csv: column gaiadr3_id, row 1: '1.5e18' is not a Gaia DR3 id (a whole number)"),
    ("t.csv", "tic_id\n12\n99999999999999999999\n", (),
     "error: --targets t.csv: column tic_id, row 2: '99999999999999999999' is not a TIC id (a whole number)"),
    ("t.csv", "TIC_ID\n12\n0\n", (), "error: --targets t.csv: column TIC_ID, row 2: 0 is not a TIC id (ids are "
                                     "positive)"),
    ("t.csv", "gaiadr3_id,x\n5,1\n,2\n", (),
     "error: --targets t.csv: column gaiadr3_id, row 2, is empty: every row needs a Gaia DR3 id"),
    ("t.csv", "ra,dec\n10,5\n361,0\n", (), "error: --targets t.csv: column ra, row 2: 361 is out of range (0 to 360 "
                                           "degrees)"),
    ("t.csv", "ra,dec\n10,-90.5\n", (), "error: --targets t.csv: column dec, row 1: -90.5 is out of range (-90 to 90 "
                                        "degrees)"),
    ("t.csv", "ra,dec\n10,north\n", (), "error: --targets t.csv: column dec, row 1: 'north' is not a number of "
                                        "degrees"),
    ("t.csv", "ra,dec\n10,5\n", ("--match-radius", "0"),
     "error: --match-radius 0.0 (for t.csv): must be a number of arcseconds > 0"),
    ("t.csv", "gaiadr3_id\n", (), "error: --targets t.csv has no rows: give one target per row"),
    ("t.parquet", {"gaiadr3_id": pa.array([1.5e18], pa.float64())}, (),
     "error: --targets t.parquet: column gaiadr3_id holds float64 values, which cannot hold a Gaia DR3 id exactly; "
     "store the ids as integers or text"),
    ("t.parquet", b"PAR1 not really parquet", (), None),
    ("t.txt", "gaiadr3_id\n5\n", (),
     "error: --targets t.txt: not a CSV, ECSV, Parquet or FITS file (told by the name's ending: .csv, .ecsv, "
     ".parquet, .fits); convert it to one of these"),
    ("missing.csv", None, (), "error: --targets missing.csv: no such file"),
    ("t.csv", "gaiadr3_id\n5\n", ("--cone", "10", "5", "1"), "error: give --targets (t.csv) or --cone, not both"),
    ("t.csv", "gaiadr3_id\n5\n", ("--tiny",),
     "error: --tiny builds the first objects of each sector; with --targets or --cone, drop --tiny"),
    (None, None, ("--cone", "10", "5", "0"), "error: --cone: RADIUS 0 must be > 0 and at most 180 degrees"),
    (None, None, ("--cone", "10", "95", "1"), "error: --cone: DEC 95 is out of range (-90 to 90 degrees)"),
    (None, None, ("--cone", "ten", "5", "1"), "error: --cone ten 5 1: RA DEC RADIUS must be numbers (degrees)"),
]


@pytest.mark.parametrize("name, content, extra, line", BAD, ids=[f"{k}-{case[0]}" for k, case in enumerate(BAD)])
def test_bad_targets(tmp_path, release, name, content, extra, line):
    """Each bad target file or cone: exit 2, one line naming the file and the column, nothing fetched."""
    if isinstance(content, str):
        (tmp_path / name).write_text(content)
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif isinstance(content, dict):
        _parquet(tmp_path / name, **content)
    done = _build(tmp_path, release, "1-2", *(("--targets", name) if name else ()), *extra)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    if line is None:
        assert lines[0].startswith("error: --targets t.parquet: cannot be read as Parquet (")
        assert lines[0].endswith("); check the file")
    else:
        assert lines[0] == line
    assert release.request_count() == 0
    assert not (tmp_path / "data").exists()


def test_failures_of_a_targets_build(tmp_path):
    """A chosen star whose file is bad: exit 1, its failures.csv in the targets folder (the whole build's stays as
    it was), and the report says its light curves failed."""
    probe = LocalArchive(sector=1, n=N, seed=SEED)
    i, j = probe.sector.expected_catalog_indices()[:2].tolist()
    bad, good = int(probe.sector.gaia_ids[i]), int(probe.sector.gaia_ids[j])
    with LocalArchive(sector=1, n=N, seed=SEED, tamper={i: {"SECTOR": 22}}) as archive:
        assert _build(tmp_path, archive, "1").returncode == 1
        whole = tmp_path / "data" / "s0001" / "failures.csv"
        before = whole.read_text()
        assert str(bad) in before
        (tmp_path / "t.csv").write_text(f"gaiadr3_id\n{good}\n")
        assert _build(tmp_path, archive, "1", "--targets", "t.csv").returncode == 0
        assert whole.read_text() == before
        (tmp_path / "u.csv").write_text(f"gaiadr3_id\n{bad}\n{good}\n")
        done = _build(tmp_path, archive, "1", "--targets", "u.csv")
        assert done.returncode == 1, done.stderr
        assert whole.read_text() == before
        (mine,) = (tmp_path / "data" / "s0001").glob("targets-*/failures.csv")
        assert [row["gaiadr3_id"] for row in csv.DictReader(mine.read_text().splitlines())] == [str(bad)]
        assert _report(tmp_path) == [
            _row(bad, "gaiadr3_id", bad, reason="its light curves failed to build (see failures.csv); rerun to retry"),
            _row(good, "gaiadr3_id", good, "1")]


def test_stars_catalog_of_another_choice_refused(tmp_path, release):
    """A stars catalog holds one choice of stars: a whole build (or another selection) pointed at a targets build's
    is refused before anything is fetched, rather than keeping its sectors as they are (other stars)."""
    picks = _picks(release)
    (tmp_path / "t.csv").write_text(f"gaiadr3_id\n{picks['band']}\n")
    assert _build(tmp_path, release, "1-2", "--targets", "t.csv").returncode == 0
    (stars,) = (tmp_path / "data").glob("targets-*/stars")
    asked = release.request_count()
    for extra in ((), ("--cone", "0", "-85", "3")):
        done = _build(tmp_path, release, "1-2", "--stars_output_path", str(stars.relative_to(tmp_path)), *extra)
        assert done.returncode == 2
        held = f"the stars chosen as {stars.parent.name}"
        this = "every star" if not extra else "the stars chosen as targets-"
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {stars.relative_to(tmp_path)} holds a stars catalog of {held}, this build's "
                               f"is of {this}"), line
        assert line.endswith("; choose another --stars_output_path")
        assert release.request_count() == asked
    assert _hats_stars(stars / "tglc_stars") == [picks["band"]]


@pytest.mark.parametrize("radius", [2 / 3600, 0.5, 30.0])
def test_choose_equals_brute_force(radius):
    """The numpy narrowing (HEALPix pixels near the targets) loses no star: positions and cones match exactly what
    astropy finds over every row, also at the poles, across RA 0/360 and at pixel edges."""
    from tglc_builder import targets

    rng = np.random.default_rng(11)
    n = 20_000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ra[:4], dec[:4] = [0.0, 359.9999, 10.0, 45.0], [-89.9999, 0.0, 89.9999, 41.8103149]  # 41.81: a ring edge
    catalogs = [Table({"gaiadr3_id": np.arange(1, n + 1, dtype=np.int64), "TIC_ID": np.arange(n, dtype=np.int64),
                       "RA": ra, "DEC": dec})]
    at_ra = np.r_[np.mod(ra[:200] + rng.normal(0, radius / 2, 200), 360), 0.0001, 180.0]
    at_dec = np.r_[np.clip(dec[:200] + rng.normal(0, radius / 2, 200), -90, 90), 0.0, -90.0]
    every = SkyCoord(ra * u.deg, dec * u.deg)
    asked = SkyCoord(at_ra * u.deg, at_dec * u.deg)
    selection = targets.Selection("x", "position", tuple(map(str, range(len(at_ra)))), ra=at_ra, dec=at_dec,
                                  radius=radius)
    index, separation, _ = asked.match_to_catalog_sky(every)
    expected = [[int(index[k]) + 1] if separation.deg[k] <= radius else [] for k in range(len(at_ra))]
    assert [m.tolist() for m in targets.choose(selection, catalogs).matched] == expected
    assert sum(map(len, expected)) > 100
    for k in (0, 200, 201):
        cone = targets.cone_selection([str(at_ra[k]), str(at_dec[k]), str(radius)])
        inside = np.flatnonzero(asked[k].separation(every).deg <= radius) + 1
        assert targets.choose(cone, catalogs).gaiadr3_ids.tolist() == inside.tolist()


def test_the_python_class_takes_the_choice_of_stars(tmp_path):
    """TGLC_Downloader(targets=..., stars=False): the same choice as the command line's, from Python."""
    from build_parent_sample import TGLC_Downloader

    with LocalArchive(sectors=[1, 2], n=40, seed=5) as archive:
        catalog_ids = archive.release[1].gaia_ids[:2].tolist()
        table = tmp_path / "targets.csv"
        table.write_text("gaiadr3_id\n" + "\n".join(map(str, catalog_ids)) + "\n")
        with TGLC_Downloader(sector="1-2", tglc_data_path=tmp_path / "data", hdf5_output_dir=None, fits_dir=None,
                             mast_url=archive.url, targets=str(table), stars=False) as d:
            summary = d.download_sector()
        fetched = {p for p, k in archive.fits_requests().items() if k}
    assert summary.failures == [] and 0 < summary.converted == len(fetched)
    assert all(any(f"gaiaid-{g}-" in p for g in catalog_ids) for p in fetched)
