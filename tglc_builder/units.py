"""The work units of a build, plain functions over plain data (docs/DESIGN.md, step 5): :func:`build_unit` fetches,
reads once and writes a few shards (rows an earlier whole file holds are carried from it); :func:`fetch_batch` only
fetches (the seed's step-by-step ``batched_download``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import layout
from .columns import FROM_FILE_NAME, STRING, STRING_BYTES, ColumnSet
from .context import OUTSIDE, TaskContext
from .formats import Block, RowSource, Shard, WriteError, Writer
from .formats.hdf5 import BLOCK_ROWS
from .plan import ShardTask
from .report import Failure
from .reader import InvalidTGLCFile, ReadBuffer, TGLCLightCurve, read_tglc
from .sources import DiskFull, Fetched, Source, quarantine_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitSettings:
    """What every unit of one sector of a build shares (sent with each task; small): its own folders and writers."""

    sector: int
    source: Source
    fits_dir: str
    writers: tuple[Writer, ...]  # every format of the build (a unit writes those its task names)
    columns: ColumnSet
    clean_fits: bool = False
    block_rows: int = BLOCK_ROWS


@dataclass
class UnitResult:
    rows: int = 0  # rows planned
    written: int = 0  # rows now in every pending format's new file
    files_written: int = 0
    downloaded: int = 0
    present: int = 0  # FITS files already on disk (or read in place)
    carried: int = 0  # rows copied from an earlier whole file of the shard (no FITS needed)
    failures: list[Failure] = field(default_factory=list)
    fatal: str | None = None  # stop the whole build (a full disk)
    stopped: bool = False
    not_attempted: int = 0  # rows of shards not written because the unit stopped (Ctrl-C, a full disk)
    sector: int = 0  # of the unit's shards


def _validator(rows: list[tuple[Shard, int]], sector: int, context: TaskContext):
    """Check that item ``i``'s file is the light curve its path names (object, sector, camera, CCD) and return it,
    read with its own memory: the conversion takes it from the source's outcome instead of reading the file again."""
    return lambda path, i: _read_row(path, *rows[i], sector, context)


def _read_row(path: Path, shard: Shard, row: int, sector: int, context: TaskContext,
              buffer: ReadBuffer | None = None) -> TGLCLightCurve:
    gaia = int(shard.gaiadr3_id[row])
    with context.reading(gaia):  # a worker that dies reading it names it
        return read_tglc(path, gaia, buffer, sector=sector, camera=int(shard.cam[row]), ccd=int(shard.ccd[row]))


def _scalar_value(scalar, value):
    """A header card's value as the column's type, exactly, or InvalidTGLCFile naming the card (never a value
    rounded or cut to fit)."""
    if value is None:
        if scalar.required:
            raise InvalidTGLCFile(f"no {scalar.card} card in HDU {scalar.hdu}")
        return np.nan if scalar.dtype.kind == "f" else "" if scalar.dtype == STRING else 0
    if scalar.dtype == STRING:
        value = value if isinstance(value, str) else str(value)
        if len(value) > STRING_BYTES:
            raise InvalidTGLCFile(f"card {scalar.card} in HDU {scalar.hdu} is {len(value)} characters long, more "
                                  f"than the {STRING_BYTES} the dataset keeps")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            scalar.dtype.kind == "i" and not isinstance(value, int)):
        kind = "an integer" if scalar.dtype.kind == "i" else "a number"
        raise InvalidTGLCFile(f"card {scalar.card} in HDU {scalar.hdu} is {value!r}, not {kind}")
    if scalar.dtype.kind == "i" and not np.iinfo(scalar.dtype).min <= value <= np.iinfo(scalar.dtype).max:
        raise InvalidTGLCFile(f"card {scalar.card} in HDU {scalar.hdu} is {value}, outside {scalar.dtype}")
    return value


class _BlockBuilder:
    """Up to ``size`` consecutive rows of a shard in reused, padded arrays."""

    def __init__(self, shard: Shard, columns: ColumnSet, size: int):
        self.shard, self.columns, self.size = shard, columns, size
        self.series = {s.name: np.empty((size, 0), s.dtype) for s in columns.series}
        self._reset()

    def _reset(self) -> None:
        self.rows: list[int] = []
        self.lengths: list[int] = []
        self.values: dict[str, list] = {s.name: [] for s in self.columns.scalars}

    def __len__(self) -> int:
        return len(self.rows)

    def _widen(self, n: int) -> None:
        pos = len(self.rows)
        for series in self.columns.series:
            values = self.series[series.name]
            if n > values.shape[1]:
                wider = np.empty((self.size, n), values.dtype)
                wider[:pos, :values.shape[1]] = values[:pos]
                wider[:pos, values.shape[1]:] = series.pad
                self.series[series.name] = wider

    def add_curve(self, row: int, curve: TGLCLightCurve) -> None:
        """Row ``row`` of the shard from its FITS file (big-endian to native: a byte swap, values kept). Raises
        InvalidTGLCFile, naming the card or column, for a file the column set cannot take exactly."""
        values = {}
        for scalar in self.columns.scalars:  # first, so a missing card leaves the block untouched
            if scalar.hdu == FROM_FILE_NAME:
                values[scalar.name] = layout.file_version(self.shard.path[row])
                continue
            header = curve.primary if scalar.hdu == 0 else curve.header
            values[scalar.name] = _scalar_value(scalar, header.get(scalar.card))
        sources = {}
        for series in self.columns.series:
            if series.fits_column in curve.data.dtype.names:
                sources[series.name] = curve.data[series.fits_column]
            elif series.required:
                raise InvalidTGLCFile(f"the LIGHTCURVE table has no {series.fits_column!r} column, which --columns "
                                      f"{self.columns.name} needs")
        n = curve.n_cadences
        self._widen(n)
        pos = len(self.rows)
        for series in self.columns.series:
            source = sources.get(series.name)
            target = self._holding(series, source)
            if source is None:  # a column of newer versions only: padding, as the card says
                target[pos, :] = series.pad
                continue
            target[pos, :n] = source
            target[pos, n:] = series.pad
        for name, value in values.items():
            self.values[name].append(value)
        self.rows.append(row)
        self.lengths.append(n)

    def _holding(self, series, source: np.ndarray | None) -> np.ndarray:
        """The block's array of ``series``, widened first (values kept) when ``source`` has wider integers: a
        shard's flag columns take the widest width of its files (16 bits, 32 from tglc 0.8 on)."""
        target = self.series[series.name]
        if series.widens and source is not None and source.dtype.itemsize > target.dtype.itemsize:
            target = self.series[series.name] = target.astype(np.dtype(f"i{source.dtype.itemsize}"))
        return target

    def add_carried(self, row: int, carried: dict[str, np.ndarray], j: int) -> None:
        """Row ``row`` of the shard from row ``j`` of arrays read from an earlier file of the shard."""
        n = int(carried["n_cadences"][j])
        self._widen(n)
        pos = len(self.rows)
        for series in self.columns.series:
            target = self._holding(series, carried[series.name])
            target[pos, :n] = carried[series.name][j, :n]
            target[pos, n:] = series.pad
        for scalar in self.columns.scalars:
            self.values[scalar.name].append(carried[scalar.name][j])
        self.rows.append(row)
        self.lengths.append(n)

    def take(self) -> Block:
        k = len(self.rows)
        rows = np.array(self.rows, np.int64)
        lengths = np.array(self.lengths, np.int32)
        width = int(lengths.max())
        shard = self.shard
        scalars = {"TIC_ID": shard.tic_id[rows], "gaiadr3_id": shard.gaiadr3_id[rows], "RA": shard.ra[rows],
                   "DEC": shard.dec[rows]}
        scalars.update({s.name: np.array(self.values[s.name], s.dtype) for s in self.columns.scalars})
        block = Block(rows=rows, n_cadences=lengths, scalars=scalars,
                      series={name: values[:k, :width] for name, values in self.series.items()})
        self._reset()
        return block


@dataclass
class _ShardWork:
    """One shard of a unit: where each row comes from (an earlier file, or the source)."""

    shard: Shard
    writers: list[Writer]
    carry: RowSource | None
    carried_at: np.ndarray  # per row: its row in the earlier file, or -1 (fetch it)
    first_item: int = 0  # index, in the unit's stream of fetches, of this shard's first fetched row

    @property
    def fetch_rows(self) -> np.ndarray:
        return np.flatnonzero(self.carried_at < 0)


def build_unit(work: list[ShardTask], settings: UnitSettings, context: TaskContext = OUTSIDE) -> UnitResult:
    """Fetch, read and write shards, each into the formats named with it; failures are returned, never raised
    (except KeyboardInterrupt). One stream of fetches runs across all the unit's shards, so the connections stay
    busy from the first file to the last."""
    result = UnitResult(rows=sum(len(task.shard) for task in work), sector=settings.sector)
    if context.stopping():  # started after the stop (a Dask task the driver no longer waits for): touch nothing
        result.stopped, result.not_attempted = True, result.rows
        return result
    try:
        plans = []
        for task in work:
            at = _carriable(task.carry.ids, task.shard.gaiadr3_id) if task.carry is not None else {}
            carried_at = np.array([at.get(int(g), -1) for g in task.shard.gaiadr3_id], np.int64)
            plans.append(_ShardWork(task.shard, [w for w in settings.writers if w.name in task.formats],
                                    task.carry, carried_at))
        items, validators = [], []
        for plan in plans:
            plan.first_item = len(items)
            rows = plan.fetch_rows
            items += [(int(plan.shard.gaiadr3_id[j]), plan.shard.path[j].decode()) for j in rows]
            validators += [(plan.shard, int(j)) for j in rows]
        # Once the last file is asked for, what is left (its arrival, the last shard's write) no longer needs the
        # worker's connections: the source hands the worker over, and its next unit takes them as they free up.
        fetched = settings.source.fetch_many(items, Path(settings.fits_dir),
                                             _validator(validators, settings.sector, context), context)
        try:
            for k, plan in enumerate(plans):
                if result.fatal or result.stopped:
                    result.not_attempted += sum(len(p.shard) for p in plans[k:])
                    break
                _build_shard(plan, fetched, settings, result, context)
        finally:
            fetched.close()
    except Exception as exc:  # noqa: BLE001 - one unit's unforeseen error must not end a sector's build
        log.exception("A work unit failed")
        reason = f"unexpected error ({type(exc).__name__}: {exc}); please report it"
        done = {f.path for f in result.failures}  # once: a path in two of the unit's shards fails in both
        for task in work:
            _fail_rest(result, task.shard, "convert", reason, done=done)
    return result


def _carriable(file_ids: np.ndarray, shard_ids: np.ndarray) -> dict[int, int]:
    """Where each of the shard's Gaia ids is in an earlier file of it, for the ids that name one row in both: a
    star listed twice in the sector (two camera/CCD paths) is two rows with one id, which the file's ids alone
    cannot tell apart, so its rows are fetched again rather than carried (rare: a few per sector)."""
    twice = set(_repeated(file_ids)) | set(_repeated(shard_ids))
    return {int(g): j for j, g in enumerate(file_ids) if int(g) not in twice}


def _repeated(ids: np.ndarray) -> list[int]:
    values, counts = np.unique(np.asarray(ids, np.int64), return_counts=True)
    return values[counts > 1].tolist()


def _build_shard(plan: _ShardWork, fetched, settings: UnitSettings, result: UnitResult,
                 context: TaskContext) -> None:
    """Write one shard from its carried rows and its next items of ``fetched`` (consumed in order)."""
    shard, carried_at = plan.shard, plan.carried_at
    sinks = [w.open(shard) for w in plan.writers]
    lost: dict[str, WriteError] = {}  # formats whose file of the shard failed while the others' go on
    # arrays no bigger than the shard: 256-row ones cost a 25-row shard ~10% more to assemble its light curves
    builder = _BlockBuilder(shard, settings.columns, min(settings.block_rows, len(shard)))
    buffer = ReadBuffer()
    fits_dir = Path(settings.fits_dir)
    ours: list[Path] = []  # FITS files in fits_dir whose rows went into the outputs
    failed_before = len(result.failures)
    try:
        for start in range(0, len(shard), settings.block_rows):
            if context.stopping():  # rows carried from an earlier file never ask the source, which would notice
                raise _Stopped
            stop = min(start + settings.block_rows, len(shard))
            block_carried = np.flatnonzero(carried_at[start:stop] >= 0) + start
            carried = _read_carried(plan.carry, carried_at[block_carried]) if len(block_carried) else {}
            where_carried = {int(row): j for j, row in enumerate(block_carried)}
            for row in range(start, stop):
                if row in where_carried:
                    builder.add_carried(row, carried, where_carried[row])
                    result.carried += 1
                    continue
                got = next(fetched, None)
                while got is not None and got[0] < plan.first_item:  # left by a shard that failed before its end
                    got = next(fetched, None)
                if got is None:  # stopping: the source yields no more
                    raise _Stopped
                outcome = got[1]
                curve = _read(outcome, shard, row, settings, buffer, result, context)
                if curve is None:
                    continue
                try:
                    builder.add_curve(row, curve)
                except InvalidTGLCFile as exc:  # a card the dataset needs is missing
                    result.failures.append(Failure(int(shard.gaiadr3_id[row]), shard.path[row].decode(), "convert",
                                                   f"{outcome.path}: {exc}", 1))
                    continue
                if settings.source.owns_files and _inside(outcome.path, fits_dir):
                    ours.append(outcome.path)
            if len(builder):
                block = builder.take()
                _each_format(plan.writers, sinks, lost, lambda sink, block=block: sink.append(block))
            context.advance(stop - start)
        _each_format(plan.writers, sinks, lost, lambda sink: sink.commit())
    except BaseException as exc:
        for sink in sinks:
            sink.abort()
        if isinstance(exc, _Stopped):
            result.stopped = True
            result.not_attempted += len(shard)
            return
        if isinstance(exc, DiskFull):
            reason, stage, result.fatal = exc.strerror, "download", exc.strerror
        elif isinstance(exc, WriteError):  # every format failed (lost holds each one's error)
            errors = list(lost.values()) or [exc]
            reason, stage = "; ".join(str(e) for e in errors), "write"
            full = next((e for e in errors if e.disk_full), None)
            result.fatal = str(full) if full is not None else result.fatal
        elif isinstance(exc, _CarryBroken):
            reason, stage = f"{exc}; rerun with --verify to write the shard again from its FITS files", "convert"
        else:
            raise
        _fail_rest(result, shard, stage, reason)
        return
    if lost:  # some formats failed, the others' files are whole: the rows fail in the failed formats only
        whole = tuple(w.name for w in plan.writers if w.name not in lost)
        for exc in lost.values():
            result.fatal = result.fatal or (str(exc) if exc.disk_full else None)
        reason = "; ".join(f"{name} output: {exc}" for name, exc in lost.items()) + \
            f" (the shard's {' and '.join(whole)} file is whole)"
        _fail_rest(result, shard, "write", reason, whole)
        result.files_written += len(whole)
        return
    written = len(shard) - (len(result.failures) - failed_before)
    if plan.writers and written:
        result.written += written
        result.files_written += len(plan.writers)
    if settings.clean_fits:
        for path in ours:
            path.unlink(missing_ok=True)


def _fail_rest(result: UnitResult, shard: Shard, stage: str, reason: str, whole_in: tuple[str, ...] = (),
               done: set[str] | None = None) -> None:
    """Every row of ``shard`` whose path is not in ``done`` (by default the paths failed so far) fails (by path: a
    star listed twice in a sector is two rows)."""
    done = {f.path for f in result.failures} if done is None else done
    result.failures += [Failure(int(g), p.decode(), stage, reason, 1, whole_in=whole_in)
                        for g, p in zip(shard.gaiadr3_id, shard.path) if p.decode() not in done]


def _each_format(writers: list[Writer], sinks: list, lost: dict[str, WriteError], action) -> None:
    """``action(sink)`` for each format not yet lost; a format whose write fails is abandoned (its file removed)
    and the others go on (--format both: one full disk must not cost the other format's whole file). Raises the
    WriteError when every format has failed."""
    for writer, sink in zip(writers, sinks):
        if writer.name in lost:
            continue
        try:
            action(sink)
        except WriteError as exc:
            sink.abort()
            lost[writer.name] = exc
            if len(lost) == len(writers):
                raise


class _CarryBroken(Exception):
    pass


class _Stopped(Exception):
    pass


def _read_carried(carry: RowSource, rows: np.ndarray) -> dict[str, np.ndarray]:
    try:
        return carry.read(rows)
    except (OSError, KeyError, ValueError) as exc:
        raise _CarryBroken(f"an earlier file of the shard does not read back ({exc})") from None


def _inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def _read(outcome: Fetched | Failure, shard: Shard, row: int, settings: UnitSettings, buffer: ReadBuffer,
          result: UnitResult, context: TaskContext) -> TGLCLightCurve | None:
    """The row's light curve, read and checked, or None with the failure recorded."""
    if isinstance(outcome, Failure):
        result.failures.append(outcome)
        return None
    if outcome.downloaded:
        result.downloaded += 1
    else:
        result.present += 1
    if isinstance(outcome.checked, TGLCLightCurve):  # read and checked as it arrived (_validator)
        return outcome.checked
    gaia, relpath = int(shard.gaiadr3_id[row]), shard.path[row].decode()
    try:
        return _read_row(outcome.path, shard, row, settings.sector, context, buffer)
    except InvalidTGLCFile as exc:
        reason = str(exc)
        if settings.source.owns_files and _inside(outcome.path, Path(settings.fits_dir)):  # a mirror's stays put
            aside = quarantine_path(settings.fits_dir, relpath)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(outcome.path, aside)
            reason = f"{reason}; moved to {aside}"
    except OSError as exc:
        reason = f"cannot read the FITS file: {exc.strerror or exc}"
    result.failures.append(Failure(gaia, relpath, "convert", reason, max(outcome.attempts, 1)))
    return None


def fetch_batch(items: list[tuple[int, str]], settings: UnitSettings, context: TaskContext = OUTSIDE
                ) -> UnitResult:
    """Fetch a batch of light curves into ``fits_dir`` (validated) without converting them."""
    result = UnitResult(rows=len(items))
    fits_dir = Path(settings.fits_dir)
    sector = settings.sector

    def validate(path: Path, i: int) -> None:
        with context.reading(items[i][0]):
            read_tglc(path, items[i][0], sector=sector)

    try:
        for _, outcome in settings.source.fetch_many(items, fits_dir, validate, context):
            if isinstance(outcome, Failure):
                result.failures.append(outcome)
            elif outcome.downloaded:
                result.downloaded += 1
            else:
                result.present += 1
            context.advance(1)
    except DiskFull as exc:
        result.fatal = exc.strerror
    return result
