"""The arguments of a build: one object, checked once (in the manner of hats-import's ``ImportArguments``)."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import extras, layout
from . import targets as choosing
from .columns import COLUMN_SETS, ColumnSet, column_set
from .errors import UsageError
from .formats import FORMATS, format_spec, parse_formats
from .formats.hdf5 import BLOCK_ROWS
from .sources import DEFAULT_CONNECTIONS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, resolve_url, source_class

TINY_SIZE = 100
PROCESSES_PER_CORE = 4  # downloads wait on the network, so a few processes per core still pay
MEMORY_PER_PROCESS = 250 * 2**20  # what one worker needs at most (reader, blocks, HDF5 chunk cache, HTTP)
MAX_SECTOR = 9999  # sSSSS: four digits
ALL_SECTORS = "all"
# The output paths a multi-sector build takes as templates with {sector}, besides each format's folder: (field, flag).
TEMPLATED = (("fits_dir", "fits_output_path"),)
_SECTOR_PART = re.compile(r"\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?")


def parse_sectors(spec: int | str | Sequence[int]) -> tuple[int, ...] | None:
    """The sectors a build names, ascending, each once: ``23``, ``"1-13"``, ``"1,7,8,34"``, ``"1-13,27"``,
    ``[1, 2, 3]``; None for ``"all"`` (every sector the archive lists, known once the source is asked). Raises
    UsageError (one line) for anything else."""
    if isinstance(spec, str) and spec.strip().lower() == ALL_SECTORS:
        return None
    if isinstance(spec, bool):
        raise UsageError(f"sector must be a sector number, a range or a list such as 1-13,27, got {spec!r}")
    if isinstance(spec, int):
        numbers = [spec]
    elif isinstance(spec, str):
        numbers = []
        for part in spec.split(","):
            match = _SECTOR_PART.fullmatch(part)
            if match is None:
                raise UsageError(f"sector {spec!r}: {part.strip() or 'an empty item'!r} is not a sector or a range; "
                                 "give e.g. 23, 1-13, 1,7,8,34, 1-13,27 or all")
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise UsageError(f"sector {spec!r}: the range {first}-{last} runs backwards; give {last}-{first}")
            if first < 1 or last > MAX_SECTOR:
                raise UsageError(f"sector {spec!r}: sectors run from 1 to {MAX_SECTOR}")
            numbers += range(first, last + 1)
    elif isinstance(spec, Sequence) and spec and all(isinstance(x, int) and not isinstance(x, bool) for x in spec):
        numbers = list(spec)
    else:
        raise UsageError(f"sector must be a sector number, a range or a list such as 1-13,27, got {spec!r}")
    if min(numbers) < 1 or max(numbers) > MAX_SECTOR:
        raise UsageError(f"sector {spec!r}: sectors run from 1 to {MAX_SECTOR}")
    return tuple(sorted(set(numbers)))


def sector_template(flag: str, value: str | os.PathLike) -> str:
    """An explicit output path of a multi-sector build: a template naming ``{sector}`` (and nothing else), e.g.
    ``./out/s{sector:04d}/hdf5``; raises UsageError (one line) otherwise."""
    text = os.fspath(value)
    example = f"e.g. --{flag} './out/s{{sector:04d}}/{flag.split('_')[0]}'"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        text.format(sector=1)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise UsageError(f"--{flag} {text!r} is not a valid template ({exc}); {example}") from None
    if fields != {"sector"}:
        raise UsageError(f"--{flag} {text!r} names one folder for several sectors: give a template with {{sector}}, "
                         f"{example}")
    return text


@dataclass
class BuildArguments:
    """Everything a build needs to know; paths default as the CLI documents."""

    sector: int | str | Sequence[int]  # one sector, or several (see parse_sectors): then paths are templates
    tglc_data_path: str | os.PathLike = "./tglc_data"
    hdf5_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/MultimodalUniverse
    fits_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/fits_lcs
    hats_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/hats
    mast_url: str | None = None  # archive root (http(s)://, s3://, a directory); None: $TGLC_MAST_URL or MAST
    listing_url: str | None = None  # root of the listings (and download_scripts/), when not the archive's own
    n_processes: int = 1
    tiny: bool = False
    tiny_size: int = TINY_SIZE  # objects in a tiny build
    format: str | Sequence[str] = "hdf5"  # a format, a comma-separated list, an alias (see parse_formats)
    columns: str = "seed"
    hats_extras: bool = False
    connections: int = DEFAULT_CONNECTIONS  # in flight for the whole build
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_wait: float = DEFAULT_MAX_WAIT
    overwrite: bool = False
    clean_fits: bool = False
    verify: bool = False
    refresh_listings: bool = False
    rows_per_shard: int | None = None  # default: plan.rows_per_shard(sector)
    unit_rows: int | None = None  # most rows a work unit groups from small shards; default: plan.unit_rows(sector)
    card_note: str = ""  # a paragraph for the dataset cards (the demo says its light curves are synthetic)
    batch_size: int = 5000  # files per task of the step-by-step download
    block_rows: int = BLOCK_ROWS  # light curves read before each write
    scheduler: str | None = None  # --scheduler: a Dask scheduler's address or "local" (checked here; cli uses it)
    archive_id: str | None = None  # a stable name of the archive for the listings' manifests (the demo's port varies)
    sectors: tuple[int, ...] | None = field(init=False, default=None)  # None: "all", resolved by the build
    formats: tuple[str, ...] = field(init=False, default=())  # the formats built, in registry order
    stars: bool | None = None  # join the outputs into the stars catalog; None: with several sectors only
    stars_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/stars
    stars_pixel_threshold: int | None = None  # most stars per partition; default: partitions of ~1 GB
    # format name -> its output folder, for a format of the registry without a field of its own here (all default
    # to <tglc_data_path>/sSSSS/<the registry's default folder>); read them with output_dir(name)
    output_dirs: dict[str, str | os.PathLike | None] = field(default_factory=dict)
    targets: str | os.PathLike | Any = None  # --targets FILE (or a Table): read once, here, into a targets.Selection
    cone: Sequence[float] | None = None  # --cone RA DEC RADIUS (degrees)
    match_radius: float = choosing.DEFAULT_MATCH_RADIUS  # arcseconds, for targets by ra/dec

    def __post_init__(self) -> None:
        self.sectors = parse_sectors(self.sector)
        if self.sectors is not None and len(self.sectors) == 1:
            self.sector = self.sectors[0]
        for name in ("n_processes", "connections", "max_attempts", "batch_size", "tiny_size", "block_rows"):
            _positive_int(name, getattr(self, name))
        for name in ("rows_per_shard", "unit_rows", "stars_pixel_threshold"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.max_wait, (int, float)) or isinstance(self.max_wait, bool) or self.max_wait < 0:
            raise UsageError(f"max_wait must be a number of seconds >= 0, got {self.max_wait!r}")
        self.formats = parse_formats(self.format)
        if self.columns not in COLUMN_SETS:
            raise UsageError(f"columns must be one of {', '.join(COLUMN_SETS)}, got {self.columns!r}")
        if self.listing_url is not None and (not isinstance(self.listing_url, str) or not self.listing_url.strip()):
            raise UsageError(f"listing_url must be an archive root (http(s)://, s3:// or a directory), got "
                             f"{self.listing_url!r}")
        _check_processes(self.n_processes)
        self._check_extras()
        self._read_selection()
        self.tglc_data_path = Path(self.tglc_data_path)
        self.stars_output_dir = Path(self.stars_output_dir or self.outputs_under(self.tglc_data_path) / "stars")
        unknown = sorted(set(self.output_dirs) - {f.name for f in FORMATS.values() if f.folder is None})
        if unknown:
            own = ", ".join(f"{f.folder} ({f.name})" for f in FORMATS.values() if f.folder)
            raise UsageError(f"output_dirs names {', '.join(unknown)}, not a format whose folder goes there; the "
                             f"folders of {own} have their own fields")
        self.output_dirs = {f.name: self.output_dirs.get(f.name) for f in FORMATS.values() if f.folder is None}
        if self.several:  # each sector's paths are made by for_sector, and checked there
            for name, flag in self._templated():
                if self._path(name) is not None:
                    self._set_path(name, sector_template(flag, self._path(name)))
            return
        sector_dir = Path(layout.sector_dir(self.tglc_data_path, self.sector))
        self.fits_dir = Path(self.fits_dir or sector_dir / "fits_lcs")
        for fmt in FORMATS.values():
            self._set_path(fmt.folder or fmt.name, Path(self._path(fmt.folder or fmt.name) or
                                                        self.outputs_under(sector_dir) / fmt.default_folder))
        seen: dict[Path, str] = {}
        for flag, path in [*((FORMATS[name].flag, self.output_dir(name)) for name in self.formats),
                           ("fits_output_path", self.fits_dir)]:
            if (first := seen.setdefault(path.resolve(), flag)) != flag:
                raise UsageError(f"--{first} and --{flag} are the same folder ({path.resolve()}); give each its own")

    def _check_extras(self) -> None:
        """Every optional extra this build will import, found installed now: before anything is fetched."""
        for fmt in (FORMATS[name] for name in self.formats if FORMATS[name].extra):
            asked = [f"--{name.replace('_', '-')}" for _, name in fmt.options if getattr(self, name)]
            extras.require(fmt.extra, asked[0] if asked else f"--format {format_spec(self.formats)}")
        for url, why in ((None if self.mast_url == "demo" else resolve_url(self.mast_url), "reading"),
                         (self.listing_url, "reading the listings from")):
            if url is not None and source_class(url)[1] is not None:
                extras.require(source_class(url)[1], f"{why} {url}")
        if self.scheduler is not None:
            extras.require("dask", "--scheduler")
        if self.joins_stars:
            extras.require("hats", "the stars catalog (--stars, or several sectors: --no-stars skips it)")

    def _read_selection(self) -> None:
        """``--targets`` / ``--cone``, read and checked once (``replace`` passes the Selection on unread)."""
        if isinstance(self.targets, choosing.Selection):
            return
        if self.targets is not None and self.cone is not None:
            name = os.fspath(self.targets) if isinstance(self.targets, (str, os.PathLike)) else "a table"
            raise UsageError(f"give --targets ({name}) or --cone, not both")
        if self.targets is None and self.cone is None:
            return
        if self.tiny:
            raise UsageError("--tiny builds the first objects of each sector; with --targets or --cone, drop --tiny")
        self.targets = choosing.cone_selection(self.cone) if self.cone is not None else \
            choosing.read_targets(self.targets, self.match_radius)

    @property
    def selection(self) -> choosing.Selection | None:
        """The stars this build keeps (``--targets``, ``--cone``), or None: every star."""
        return self.targets if isinstance(self.targets, choosing.Selection) else None

    def outputs_under(self, folder: Path) -> Path:
        """Where the default output folders go: ``folder``, or for a targets build ``folder/targets-<hash>``, so
        that it never writes over a whole build's files (nor one of another selection), and the same command
        resumes."""
        return folder if self.selection is None else Path(folder) / self.selection.folder

    @property
    def joins_stars(self) -> bool:
        """Whether the build ends with the stars catalog: asked for (``--stars``), or by default with several
        sectors."""
        return self.several if self.stars is None else bool(self.stars)

    @property
    def several(self) -> bool:
        """Whether the build names several sectors (or ``all``): its explicit output paths are templates."""
        return self.sectors is None or len(self.sectors) > 1

    def for_sector(self, sector: int) -> "BuildArguments":
        """The arguments of one sector of the build: exactly those of a one-sector build of it."""
        if not self.several:
            return self
        paths = {name: None if self._path(name) is None else self._path(name).format(sector=sector)
                 for name, _ in self._templated()}
        fields = {name: path for name, path in paths.items() if name not in self.output_dirs}
        return replace(self, sector=int(sector), **fields,
                       output_dirs={name: path for name, path in paths.items() if name in self.output_dirs})

    def output_dir(self, name: str) -> Path:
        """The output folder of the format ``name`` (of a one-sector build; a template with several sectors)."""
        fmt = FORMATS[name]
        return getattr(self, fmt.folder) if fmt.folder else self.output_dirs[name]

    @staticmethod
    def _templated() -> tuple[tuple[str, str], ...]:
        """(field, or format name in output_dirs; flag) of every path a multi-sector build takes as a template."""
        return (*TEMPLATED, *((f.folder or f.name, f.flag) for f in FORMATS.values()))

    def _path(self, name: str):
        return self.output_dirs[name] if name in self.output_dirs else getattr(self, name)

    def _set_path(self, name: str, value) -> None:
        if name in self.output_dirs:
            self.output_dirs[name] = value
        else:
            setattr(self, name, value)

    @property
    def sector_dir(self) -> Path:
        return Path(layout.sector_dir(self.tglc_data_path, self.sector))

    @property
    def column_set(self) -> ColumnSet:
        return column_set(self.columns)



def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def _check_processes(n: int) -> None:
    """Refuse more worker processes than the machine can hold (each is a Python interpreter with numpy, h5py...)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n > PROCESSES_PER_CORE * cores:
        raise UsageError(f"--n_processes {n} is more than {PROCESSES_PER_CORE} per core on this machine "
                         f"({cores} cores); use at most {PROCESSES_PER_CORE * cores}, or a Dask cluster (--scheduler)")
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if n * MEMORY_PER_PROCESS > memory:
        raise UsageError(f"--n_processes {n} needs about {n * MEMORY_PER_PROCESS / 2**30:.1f} GiB (250 MB each), "
                         f"more than this machine's {memory / 2**30:.1f} GiB; use at most "
                         f"{max(1, memory // MEMORY_PER_PROCESS)}")
