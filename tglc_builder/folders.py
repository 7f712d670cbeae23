"""A build's folders: proved writable, locked for one build at a time, cleaned of a killed build's debris, removed
again when a failed build leaves them empty; small files written atomically."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from .errors import UsageError

log = logging.getLogger(__name__)


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
            if mine is None or path in mine:
                with suppress(OSError):  # not empty (something was written), or gone already
                    path.rmdir()

    try:
        yield remove
    except BaseException:
        remove()
        raise


@contextmanager
def exclusive(directories: Iterable[Path], wait: bool = False) -> Iterator[None]:
    """Hold a lock on each folder for the build, so a second build on the same folders stops at once (with ``wait``,
    waits: a stage several builds share). ``flock`` on the folder itself: no lock file is left in a published
    folder, and a killed build's lock vanishes with it."""
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


def remove_debris(directory: Path) -> None:
    """Delete the temporary files a killed build left in ``directory`` (hidden, with ``.tmp-`` or ``.part-``), and
    the lock files of earlier versions."""
    for pattern in (".*.tmp-*", ".*.part-*", ".tglc-build.lock"):
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)


@contextmanager
def atomically(path: Path) -> Iterator[Path]:
    """The temporary name to write ``path`` under (debris by its name, see remove_debris), renamed when the block
    ends well and removed whatever happens."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a small text file atomically."""
    with atomically(path) as tmp:
        tmp.write_text(text)
