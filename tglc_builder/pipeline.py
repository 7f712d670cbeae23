"""What a whole build needs beyond the stages: one build per folder, the failure report, the summary."""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Failure, UsageError
from .formats import FORMATS

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ("gaiadr3_id", "path", "stage", "reason", "attempts")


@dataclass
class BuildSummary:
    downloaded: int = 0  # FITS files fetched
    present: int = 0  # FITS files already on disk (or read in place from a mirror)
    complete: int = 0  # light curves already in whole output files (nothing fetched or written for them)
    carried: int = 0  # light curves copied from an earlier whole file of their shard (no FITS needed)
    converted: int = 0  # light curves written now
    files_written: int = 0
    failures: list[Failure] = field(default_factory=list)
    fatal: str | None = None  # what stopped the build early (a full disk)
    not_attempted: int = 0  # light curves of work units stopped before they ran (Ctrl-C, a fatal error)
    outputs: list[tuple[str, Path]] = field(default_factory=list)  # (format, folder) of the sector's datasets
    sectors: dict[int, "BuildSummary"] = field(default_factory=dict)  # a multi-sector build's, by sector

    def add(self, result) -> None:
        """Count a work unit's result (``units.UnitResult``), or another summary's counts."""
        self.downloaded += result.downloaded
        self.present += result.present
        self.carried += result.carried
        self.converted += result.written if hasattr(result, "written") else result.converted
        self.files_written += result.files_written
        self.failures.extend(result.failures)
        self.not_attempted += result.not_attempted
        self.fatal = self.fatal or result.fatal
        if isinstance(result, BuildSummary):
            self.complete += result.complete

    @property
    def in_output(self) -> int:
        """Light curves now in whole output files: already there, and written now."""
        return self.complete + self.converted

    def describe(self) -> str:
        """What the build did, in one line: what the output holds, what was written, what was fetched."""
        carried = f", of which {self.carried} copied from earlier files" if self.carried else ""
        partly = {}  # failed in one format only: whole in the others (--format both)
        for failure in self.failures:
            if failure.whole_in:
                partly[failure.whole_in] = partly.get(failure.whole_in, 0) + 1
        partly_text = "".join(f" ({n} of them whole in {' and '.join(formats)}, failed in the other format only)"
                              for formats, n in partly.items())
        return (f"{_count(self.in_output, 'light curve')} in the output ({self.complete} already there, "
                f"{self.converted} written now into {_count(self.files_written, 'file')}{carried}); FITS files: "
                f"{self.downloaded} downloaded, {self.present} already on disk; {len(self.failures)} failed"
                f"{partly_text}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def closing_lines(summaries: dict[int, BuildSummary]) -> list[str]:
    """The end of a build's log: a line per sector (and the total of several), then where each dataset is, with its
    light curves, and the one line that loads it."""
    lines = [f"Sector {sector}: {summary.describe()}" for sector, summary in summaries.items()]
    if len(summaries) > 1:
        total = BuildSummary()
        for summary in summaries.values():
            total.add(summary)
        lines.append(f"All {len(summaries)} sectors: {total.describe()}")
    folders = [(name, Path(folder).absolute(), summary.in_output) for summary in summaries.values()
               for name, folder in summary.outputs]
    for name, folder, n in folders:
        label = FORMATS[name].label if name in FORMATS else name
        lines.append(f"Dataset: {folder} ({label}, {_count(n, 'light curve')})")
    if folders:
        what = "it" if len(folders) == 1 else "one"
        lines.append(f'Load {what} with: datasets.load_dataset("{folders[0][1]}", split="train")')
    return lines


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove it writable, or raise a UsageError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be created or written: {exc.strerror or exc}") from None
    return path


@contextmanager
def removed_if_left_empty(folders: Iterable[str | os.PathLike]) -> Iterator[Callable[..., None]]:
    """The folders (and parents) among ``folders`` that do not exist yet are removed again when the block fails and
    leaves them empty: a build that stops before writing anything (an unreachable archive, a bad listing) leaves no
    empty ``fits_lcs``, ``MultimodalUniverse``... behind. Folders that existed, or hold anything, are kept. The block
    gets a function that does it now for some of them (and their parents): those of sectors it leaves out."""
    created: list[Path] = []
    for folder in folders:
        for path in (Path(folder).absolute(), *Path(folder).absolute().parents):
            if path.exists() or path in created:
                break
            created.append(path)

    def remove(among: Iterable[str | os.PathLike] | None = None) -> None:
        mine = None if among is None else {q for f in among for q in (Path(f).absolute(), *Path(f).absolute().parents)}
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):  # the deepest first
            try:
                if mine is None or path in mine:
                    path.rmdir()
            except OSError:  # not empty (something was written), or gone already
                pass

    try:
        yield remove
    except BaseException:
        remove()
        raise


@contextmanager
def exclusive(directories: Iterable[Path], wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on each folder for the build, so a second build on the same folders stops at once
    (with ``wait``, waits for it instead: a stage that several builds share, such as the stars catalog's).

    The lock is taken on the folder itself (``flock`` on a directory descriptor), so no lock file is left in a
    dataset folder that people publish; ``flock`` locks vanish with their process, so a killed build leaves none.
    """
    with ExitStack() as stack:
        for directory in dict.fromkeys(Path(d).resolve() for d in directories):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not wait:
                    raise UsageError(f"{directory} is in use by another build; wait for it to finish or choose "
                                     "other folders") from None
                log.info("Waiting for another build to finish with %s", directory)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def write_failure_report(path: Path, failures: list[Failure]) -> None:
    """``failures.csv``, one row per object that could not be downloaded or converted; removed when none failed."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows((x.gaiadr3_id, x.path, x.stage, x.reason, x.attempts) for x in failures)
    write_text(path, text.getvalue())


def remove_debris(directory: Path) -> None:
    """Delete the temporary files a killed build left in ``directory`` (hidden, with ``.tmp-`` or ``.part-``), and
    the lock files of earlier versions."""
    for pattern in (".*.tmp-*", ".*.part-*", ".tglc-build.lock"):
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
