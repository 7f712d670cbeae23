"""The build's report: per-object failures (one row of ``failures.csv`` each) and what the build did."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .folders import write_text

FAILURE_COLUMNS = ("gaiadr3_id", "path", "stage", "reason", "attempts")


@dataclass(frozen=True)
class Failure:
    """An object that could not be fetched, read or written; one row of ``failures.csv``."""

    gaiadr3_id: int
    path: str
    stage: str  # "download" (fetching the FITS file), "convert" (reading it), "write" (an output file)
    reason: str
    attempts: int
    whole_in: tuple[str, ...] = ()  # formats whose file of the object's shard is whole (with --format both, when
    # only the other failed); not a column of failures.csv, whose reason says it


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
        partly = Counter(f.whole_in for f in self.failures if f.whole_in)  # failed in one format only (--format both)
        partly_text = "".join(f" ({n} of them whole in {' and '.join(formats)}, failed in the other format only)"
                              for formats, n in partly.items())
        return (f"{_count(self.in_output, 'light curve')} in the output ({self.complete} already there, "
                f"{self.converted} written now into {_count(self.files_written, 'file')}{carried}); FITS files: "
                f"{self.downloaded} downloaded, {self.present} already on disk; {len(self.failures)} failed"
                f"{partly_text}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def closing_lines(summaries: dict[int, BuildSummary], labels: Mapping[str, str]) -> list[str]:
    """The end of a build's log: a line per sector (and the total of several), then where each dataset is, with its
    light curves (its format by ``labels[name]``), and the one line that loads it."""
    lines = [f"Sector {sector}: {summary.describe()}" for sector, summary in summaries.items()]
    if len(summaries) > 1:
        total = BuildSummary()
        for summary in summaries.values():
            total.add(summary)
        lines.append(f"All {len(summaries)} sectors: {total.describe()}")
    folders = [(name, Path(folder).absolute(), summary.in_output) for summary in summaries.values()
               for name, folder in summary.outputs]
    for name, folder, n in folders:
        lines.append(f"Dataset: {folder} ({labels.get(name, name)}, {_count(n, 'light curve')})")
    if folders:
        what = "it" if len(folders) == 1 else "one"
        lines.append(f'Load {what} with: datasets.load_dataset("{folders[0][1]}", split="train")')
    return lines


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
