"""The arguments of a build: one object, checked once (in the manner of hats-import's ``ImportArguments``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .columns import COLUMN_SETS, ColumnSet, column_set
from .errors import UsageError
from .formats import FORMATS
from .formats.hdf5 import BLOCK_ROWS
from .sources import DEFAULT_CONNECTIONS

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_WAIT = 300.0  # seconds: the longest pause a Retry-After may impose
TINY_SIZE = 100
PROCESSES_PER_CORE = 4  # downloads wait on the network, so a few processes per core still pay
MEMORY_PER_PROCESS = 250 * 2**20  # what one worker needs at most (reader, blocks, HDF5 chunk cache, HTTP)


@dataclass
class BuildArguments:
    """Everything a build needs to know; paths default as the CLI documents."""

    sector: int
    tglc_data_path: str | os.PathLike = "./tglc_data"
    hdf5_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/MultimodalUniverse
    fits_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/fits_lcs
    hats_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/sSSSS/hats
    mast_url: str | None = None  # archive root (http(s)://, s3://, a directory); None: $TGLC_MAST_URL or MAST
    n_processes: int = 1
    tiny: bool = False
    tiny_size: int = TINY_SIZE  # objects in a tiny build
    format: str = "hdf5"
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
    stars: bool = False  # after the build, join its outputs into the stars catalog (tglc_builder.stars)
    stars_output_dir: str | os.PathLike | None = None  # default <tglc_data_path>/stars
    stars_pixel_threshold: int | None = None  # most stars per partition; default: partitions of ~1 GB

    def __post_init__(self) -> None:
        for name in ("sector", "n_processes", "connections", "max_attempts", "batch_size", "tiny_size", "block_rows"):
            _positive_int(name, getattr(self, name))
        for name in ("rows_per_shard", "unit_rows", "stars_pixel_threshold"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.max_wait, (int, float)) or isinstance(self.max_wait, bool) or self.max_wait < 0:
            raise UsageError(f"max_wait must be a number of seconds >= 0, got {self.max_wait!r}")
        if self.format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.columns not in COLUMN_SETS:
            raise UsageError(f"columns must be one of {', '.join(COLUMN_SETS)}, got {self.columns!r}")
        _check_processes(self.n_processes)
        sector_dir = Path(layout.sector_dir(self.tglc_data_path, self.sector))
        self.tglc_data_path = Path(self.tglc_data_path)
        self.hdf5_output_dir = Path(self.hdf5_output_dir or sector_dir / "MultimodalUniverse")
        self.fits_dir = Path(self.fits_dir or sector_dir / "fits_lcs")
        self.hats_output_dir = Path(self.hats_output_dir or sector_dir / "hats")
        self.stars_output_dir = Path(self.stars_output_dir or self.tglc_data_path / "stars")
        outputs = {"hdf5_output_path": self.hdf5_output_dir, "fits_output_path": self.fits_dir}
        if self.format != "hdf5":
            outputs["hats_output_path"] = self.hats_output_dir
        resolved = {name: path.resolve() for name, path in outputs.items()}
        names = list(resolved)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if resolved[a] == resolved[b]:
                    raise UsageError(f"--{a} and --{b} are the same folder ({resolved[a]}); give each its own")

    @property
    def sector_dir(self) -> Path:
        return Path(layout.sector_dir(self.tglc_data_path, self.sector))

    @property
    def column_set(self) -> ColumnSet:
        return column_set(self.columns)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("hdf5", "hats") if self.format == "both" else (self.format,)


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
