"""BuildArguments' own checks: every one-line UsageError it raises, the paths it defaults, the same-folder check; the
format registry's ``--format`` lists; both spellings of every flag."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tglc_builder import arguments
from tglc_builder.arguments import BuildArguments
from tglc_builder.cli import build_parser
from tglc_builder.errors import UsageError
from tglc_builder.formats import FORMATS, format_spec, parse_formats
from tglc_builder.run import folders_of, run

FORMAT_HINT = "give one or more of hdf5, hats, comma-separated, or both"
SECTOR_HINT = "sector must be a sector number, a range or a list such as 1-13,27, got "


@pytest.mark.parametrize("kwargs, message", [
    ({"sector": True}, SECTOR_HINT + "True"),
    ({"sector": 2.5}, SECTOR_HINT + "2.5"),
    ({"sector": []}, SECTOR_HINT + "[]"),
    ({"sector": "2x"}, "sector '2x': '2x' is not a sector or a range; give e.g. 23, 1-13, 1,7,8,34, 1-13,27 or all"),
    ({"sector": "1,,2"}, "sector '1,,2': 'an empty item' is not a sector or a range; give e.g. 23, 1-13, 1,7,8,34, "
                         "1-13,27 or all"),
    ({"sector": "13-1"}, "sector '13-1': the range 13-1 runs backwards; give 1-13"),
    ({"sector": "0-3"}, "sector '0-3': sectors run from 1 to 9999"),
    ({"sector": 10000}, "sector 10000: sectors run from 1 to 9999"),
    ({"sector": [0, 3]}, "sector [0, 3]: sectors run from 1 to 9999"),
    ({"n_processes": 0}, "n_processes must be a positive integer, got 0"),
    ({"connections": True}, "connections must be a positive integer, got True"),
    ({"max_attempts": "3"}, "max_attempts must be a positive integer, got '3'"),
    ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
    ({"tiny_size": 0}, "tiny_size must be a positive integer, got 0"),
    ({"block_rows": 1.5}, "block_rows must be a positive integer, got 1.5"),
    ({"rows_per_shard": 0}, "rows_per_shard must be a positive integer, got 0"),
    ({"unit_rows": 0}, "unit_rows must be a positive integer, got 0"),
    ({"stars_pixel_threshold": 0}, "stars_pixel_threshold must be a positive integer, got 0"),
    ({"max_wait": -1}, "max_wait must be a number of seconds >= 0, got -1"),
    ({"max_wait": "5"}, "max_wait must be a number of seconds >= 0, got '5'"),
    ({"max_wait": True}, "max_wait must be a number of seconds >= 0, got True"),
    ({"format": "parquet"}, f"format 'parquet': 'parquet' is not a format; {FORMAT_HINT}"),
    ({"format": "hdf5,"}, f"format 'hdf5,': '' is not a format; {FORMAT_HINT}"),
    ({"format": "hdf5,both,csv"}, f"format 'hdf5,both,csv': 'csv' is not a format; {FORMAT_HINT}"),
    ({"columns": "some"}, "columns must be one of seed, all, got 'some'"),
    ({"sector": "1-2", "fits_dir": "fits"}, "--fits_output_path 'fits' names one folder for several sectors: give a "
     "template with {sector}, e.g. --fits_output_path './out/s{sector:04d}/fits'"),
    ({"sector": "all", "hats_output_dir": "h/{}"}, "--hats_output_path 'h/{}' is not a valid template (Replacement "
     "index 0 out of range for positional args tuple); e.g. --hats_output_path './out/s{sector:04d}/hats'"),
    ({"sector": "1-2", "hdf5_output_dir": "h/{sector:q}"}, "--hdf5_output_path 'h/{sector:q}' is not a valid template "
     "(Unknown format code 'q' for object of type 'int'); e.g. --hdf5_output_path './out/s{sector:04d}/hdf5'"),
    ({"sector": [1, 2], "hdf5_output_dir": "h/{sector}/{other}"}, "--hdf5_output_path 'h/{sector}/{other}' is not a "
     "valid template ('other'); e.g. --hdf5_output_path './out/s{sector:04d}/hdf5'"),
])
def test_each_check_raises_its_one_line(tmp_path, kwargs, message):
    kwargs = {"sector": 23, "tglc_data_path": tmp_path, **kwargs}
    with pytest.raises(UsageError) as caught:
        BuildArguments(**kwargs)
    assert str(caught.value) == message


def test_more_processes_than_the_cores_hold():
    cores = len(os.sched_getaffinity(0))
    n = arguments.PROCESSES_PER_CORE * cores + 1
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, n_processes=n)
    assert str(caught.value) == (f"--n_processes {n} is more than 4 per core on this machine ({cores} cores); use at "
                                 f"most {n - 1}, or a Dask cluster (--scheduler)")


def test_more_processes_than_the_memory_holds(monkeypatch):
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(arguments, "MEMORY_PER_PROCESS", memory // 2 + 1)  # two workers need more than the machine
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, n_processes=2)
    assert str(caught.value) == (f"--n_processes 2 needs about {2 * (memory // 2 + 1) / 2**30:.1f} GiB (250 MB each), "
                                 f"more than this machine's {memory / 2**30:.1f} GiB; use at most 1")


def test_paths_default_under_the_sector_folder(tmp_path):
    args = BuildArguments("23", tglc_data_path=tmp_path)
    assert args.sector == 23 and args.sectors == (23,) and not args.several
    assert args.hdf5_output_dir == tmp_path / "s0023" / "MultimodalUniverse"
    assert args.hats_output_dir == tmp_path / "s0023" / "hats"
    assert args.fits_dir == tmp_path / "s0023" / "fits_lcs"
    assert args.stars_output_dir == tmp_path / "stars"
    assert args.formats == ("hdf5",) and args.joins_stars is False
    assert folders_of(args) == [(tmp_path / "s0023", "tglc_data_path"), (args.fits_dir, "fits_output_path"),
                                (args.hdf5_output_dir, "hdf5_output_path")]
    given = BuildArguments(23, tglc_data_path=tmp_path, hdf5_output_dir="h", fits_dir="f", hats_output_dir="x",
                           stars_output_dir="s", format="hats")
    assert (given.hdf5_output_dir, given.fits_dir, given.hats_output_dir, given.stars_output_dir) == \
        (Path("h"), Path("f"), Path("x"), Path("s"))
    assert folders_of(given) == [(tmp_path / "s0023", "tglc_data_path"), (Path("f"), "fits_output_path"),
                                 (Path("x"), "hats_output_path")]


def test_several_sectors_keep_templates_and_each_sector_defaults(tmp_path):
    args = BuildArguments("1-2", tglc_data_path=tmp_path, hdf5_output_dir=str(tmp_path / "o/{sector}"), format="both")
    assert args.several and args.joins_stars and args.fits_dir is None and args.hats_output_dir is None
    one = args.for_sector(2)
    assert (one.sector, one.hdf5_output_dir, one.fits_dir, one.hats_output_dir) == \
        (2, tmp_path / "o" / "2", tmp_path / "s0002" / "fits_lcs", tmp_path / "s0002" / "hats")
    assert one.formats == ("hdf5", "hats")


@pytest.mark.parametrize("fmt, folders, message", [
    ("hdf5", {"hdf5_output_dir": "s0023/fits_lcs"}, "--hdf5_output_path and --fits_output_path"),
    ("hats", {"hats_output_dir": "s0023/fits_lcs"}, "--hats_output_path and --fits_output_path"),
    ("hdf5,hats", {"hats_output_dir": "s0023/MultimodalUniverse"}, "--hdf5_output_path and --hats_output_path"),
    ("both", {"hdf5_output_dir": "o", "hats_output_dir": "./o/"}, "--hdf5_output_path and --hats_output_path"),
])
def test_two_outputs_in_one_folder_are_refused(tmp_path, fmt, folders, message):
    folders = {name: tmp_path / value for name, value in folders.items()}
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, tglc_data_path=tmp_path, format=fmt, **folders)
    same = next(iter(folders.values())).resolve()
    assert str(caught.value) == f"{message} are the same folder ({same}); give each its own"


def test_a_folder_of_a_format_not_built_is_not_checked(tmp_path):
    args = BuildArguments(23, tglc_data_path=tmp_path, hats_output_dir=tmp_path / "s0023" / "fits_lcs")
    assert args.formats == ("hdf5",)


@pytest.mark.parametrize("spec", ["both", "hdf5,hats", "hats,hdf5", " HATS , hdf5 ", "hdf5,both", ["hats", "hdf5"]])
def test_format_lists_and_the_alias_name_the_same_formats(spec):
    assert parse_formats(spec) == ("hdf5", "hats")
    assert BuildArguments(23, format=spec).formats == ("hdf5", "hats")
    assert format_spec(parse_formats(spec)) == "both"


def test_one_format_and_the_registry():
    assert parse_formats("hats") == ("hats",) and format_spec(["hats"]) == "hats"
    assert list(FORMATS) == ["hdf5", "hats"]
    assert {f.flag for f in FORMATS.values()} == {"hdf5_output_path", "hats_output_path"}


def _without_timestamps(path: Path) -> bytes:
    """The file's bytes without the times two identical builds differ by (when a listing was fetched, the minute
    hats stamps into a catalog's properties)."""
    if path.name.endswith(".manifest.json"):  # a listing's copy says when it was fetched
        manifest = json.loads(path.read_bytes())
        manifest.pop("fetched")
        return json.dumps(manifest).encode()
    if path.name.endswith("properties"):  # hats stamps the minute a catalog was made: two builds may straddle one
        return b"".join(line for line in path.read_bytes().splitlines(keepends=True)
                        if not line.startswith(b"hats_creation_date"))
    return path.read_bytes()


def test_a_format_list_builds_exactly_what_both_builds(archive, tmp_path):
    pytest.importorskip("hats")
    trees = {}
    for spec in ("both", "hats,hdf5"):
        args = BuildArguments(23, tmp_path / spec, fits_dir=tmp_path / "fits", mast_url=archive.url, format=spec,
                              tiny=True)
        summary = run(args)
        assert summary.failures == [] and summary.in_output == 100
        assert [name for name, _ in summary.outputs] == ["hdf5", "hats"]
        base = tmp_path / spec
        trees[spec] = {p.relative_to(base).as_posix(): _without_timestamps(p) for p in base.rglob("*") if p.is_file()}
    assert sorted(trees["both"]) == sorted(trees["hats,hdf5"])
    assert any(name.endswith(".hdf5") and "/MultimodalUniverse/" in name for name in trees["both"])
    assert any(name.endswith(".parquet") and "/hats/" in name for name in trees["both"])
    assert [name for name in trees["both"] if trees["both"][name] != trees["hats,hdf5"][name]] == []


# ---- the command line ------------------------------------------------------------------------------------------------
def test_every_flag_takes_both_spellings():
    parser = build_parser("tglc-build")
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    spelled = [s for s in flags if "_" in s or "-" in s[2:]]
    assert {"--mast-url", "--mast_url", "--hats_output_path", "--hats-output-path", "--no-stars", "--no_stars",
            "--n_processes", "--n-processes", "--max-wait", "--max_wait"} <= set(spelled)
    for flag in spelled:
        other = "--" + (flag[2:].replace("_", "-") if "_" in flag else flag[2:].replace("-", "_"))
        assert other in flags, flag
    a = build_parser("tglc-build").parse_args(["-s", "23", "--hats-output-path", "h", "--mast_url", "u",
                                               "--max_attempts", "3", "--refresh_listings", "--no_stars"])
    b = build_parser("tglc-build").parse_args(["-s", "23", "--hats_output_path", "h", "--mast-url", "u",
                                               "--max-attempts", "3", "--refresh-listings", "--no-stars"])
    assert vars(a) == vars(b)
    assert (a.hats_output_path, a.mast_url, a.max_attempts, a.refresh_listings, a.stars) == ("h", "u", 3, True, False)


def test_the_help_shows_one_spelling():
    text = build_parser("tglc-build").format_help()
    assert "--mast-url MAST_URL" in text and "--mast_url" not in text.replace("(--mast-url or --mast_url)", "")
    assert "--hats_output_path HATS_OUTPUT_PATH" in text and "--hats-output-path" not in text
    assert "--stars, --no-stars" in text and "--no_stars" not in text
    assert "Every flag may be spelled with '_' or '-' (--mast-url or --mast_url)." in " ".join(text.split())


def test_a_bad_format_list_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser("tglc-build").parse_args(["-s", "23", "--format", "hdf5,csv"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"tglc-build: error: argument --format: format 'hdf5,csv': "
                                                        f"'csv' is not a format; {FORMAT_HINT}")


# ---- the source registry ---------------------------------------------------------------------------------------------
def test_an_archive_of_no_registered_scheme_is_refused_with_the_arguments(tmp_path):
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, tglc_data_path=tmp_path, mast_url="ftp://archive/tglc/")
    assert str(caught.value) == ("archive URL 'ftp://archive/tglc' has an unknown scheme 'ftp'; give an http(s):// "
                                 "URL, an s3://BUCKET/PREFIX, or a directory holding a MAST tree")


def test_each_scheme_opens_its_registered_source(tmp_path):
    from tglc_builder.sources import SOURCES, open_source

    opened = {url: type(open_source(url, connections=3)).__name__ for url in
              ("http://127.0.0.1:9/tglc", "HTTPS://127.0.0.1:9/tglc", str(tmp_path), tmp_path.as_uri())}
    assert opened == {"http://127.0.0.1:9/tglc": "HttpSource", "HTTPS://127.0.0.1:9/tglc": "HttpSource",
                      str(tmp_path): "LocalSource", tmp_path.as_uri(): "LocalSource"}
    assert open_source("http://127.0.0.1:9", connections=3, max_attempts=2).connections == 3
    assert sorted(SOURCES) == ["", "file", "http", "https", "s3"]


# ---- a new format: one module and one registry line ------------------------------------------------------------------
def test_a_new_format_is_one_module_and_one_registry_line(archive, tmp_path, monkeypatch):
    from helpers import npz_format
    from tglc_builder.cli import arguments_of
    from tglc_builder.loading import load_tglc

    monkeypatch.setitem(FORMATS, "npz", npz_format.FORMAT)  # the one line
    parsed = build_parser("tglc-build").parse_args(["-s", "23", "--tglc_data_path", str(tmp_path), "--format",
                                                    "npz,hdf5", "--npz-output-path", str(tmp_path / "n"),
                                                    "--mast-url", archive.url, "--tiny"])
    args = arguments_of(parsed)
    assert args.formats == ("hdf5", "npz") and args.output_dir("npz") == tmp_path / "n"
    assert BuildArguments(23, tglc_data_path=tmp_path, format="npz").output_dir("npz") == tmp_path / "s0023" / "npz"
    assert folders_of(args)[-1] == (tmp_path / "n", "npz_output_path")
    summary = run(args)
    assert summary.failures == [] and [name for name, _ in summary.outputs] == ["hdf5", "npz"]
    ids = np.concatenate([np.load(f)["gaiadr3_id"] for f in sorted((tmp_path / "n" / "npz").glob("*.npz"))])
    assert sorted(ids) == sorted(load_tglc(tmp_path / "n")["gaiadr3_id"]) and len(ids) == 100
    card = (tmp_path / "n" / "README.md").read_text()
    assert "This dataset holds **100 light curves**" in card and "NPZ files" in card
    assert "\n## Files\n\n`npz/healpix=" in card and "\n| `gaiadr3_id` | int64 | - | - |\n" in card
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, tglc_data_path=tmp_path, format="npz", output_dirs={"npz": tmp_path / "s0023" / "fits_lcs"})
    assert str(caught.value) == (f"--npz_output_path and --fits_output_path are the same folder "
                                 f"({tmp_path / 's0023' / 'fits_lcs'}); give each its own")


def test_output_dirs_name_only_formats_without_a_field(tmp_path):
    with pytest.raises(UsageError) as caught:
        BuildArguments(23, tglc_data_path=tmp_path, output_dirs={"hdf5": tmp_path / "x"})
    assert str(caught.value) == ("output_dirs names hdf5, not a format whose folder goes there; the folders of "
                                 "hdf5_output_dir (hdf5), hats_output_dir (hats) have their own fields")
