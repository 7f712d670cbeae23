"""Command line of ``build_parent_sample.py`` / ``tglc-build``: arguments, logging, errors and exit codes."""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

from . import __version__
from .arguments import BuildArguments
from .columns import COLUMN_SETS
from .errors import UsageError
from .formats import ALIASES, FORMATS, parse_formats
from .sources import DEFAULT_CONNECTIONS, DEFAULT_MAST_URL, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT, MAST_URL_ENV

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_DEMO_SIZE = 1000


def _at_least(kind: type, low: int, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` (``what`` it must be), at least ``low``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value >= low:  # (NaN too)
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value
    return parse


_seconds, _positive_int = _at_least(float, 0, "a number of seconds"), _at_least(int, 1, "an integer")


def _formats(text: str) -> str:
    try:
        parse_formats(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Negatable(argparse.BooleanOptionalAction):
    """``--stars`` / ``--no-stars``, and ``--no_stars`` too."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith(("--no-", "--no_")))

    def format_usage(self) -> str:
        return " | ".join(getattr(self, "shown", self.option_strings))


def _other_spelling(flag: str) -> str | None:
    """``--mast-url`` for ``--mast_url`` and the reverse; None for a flag of one word."""
    if not flag.startswith("--") or not ("_" in flag or "-" in flag[2:]):
        return None
    return "--" + (flag[2:].replace("_", "-") if "_" in flag else flag[2:].replace("-", "_"))


class _Parser(argparse.ArgumentParser):
    """Takes every long flag in both spellings, ``--mast-url`` and ``--mast_url``; the help shows the first."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            kwargs["action"] = _Negatable
        action = super().add_argument(*names, **kwargs)
        action.shown = list(action.option_strings)  # type: ignore[attr-defined]
        for flag in action.shown:  # type: ignore[attr-defined]
            other = _other_spelling(flag)
            if other is not None and other not in self._option_string_actions:
                action.option_strings.append(other)
                self._option_string_actions[other] = action  # as argparse registers each option string
        return action


class _Help(argparse.HelpFormatter):
    def _format_action_invocation(self, action: argparse.Action) -> str:
        if getattr(action, "shown", None) is None:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = action.shown  # type: ignore[attr-defined]
        return super()._format_action_invocation(shown)


def program_name() -> str:
    """The name the command was run by, for its usage and --version: ``tglc-build`` (the console script) or
    ``build_parent_sample.py`` (also when run from Python, where ``sys.argv[0]`` is the caller's)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "tglc-build" if name in ("tglc-build", "tglc-build.exe") else "build_parent_sample.py"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog or program_name(), formatter_class=_Help,
        description="Download a TESS sector's TGLC light curves from MAST and write them as HEALPix-partitioned "
                    "HDF5 (nside 16, nested) loadable with Hugging Face datasets.",
        epilog="Rerunning the same command resumes an interrupted build: complete FITS and HDF5 files are kept, and "
               "the objects listed in failures.csv are tried again. Every flag may be spelled with '_' or '-' "
               "(--mast-url or --mast_url).",
    )
    parser.add_argument("-s", "--sector", required=True,
                        help="TESS sector(s): 23, a range 1-13, a list 1,7,8,34, both 1-13,27, or 'all' (every sector "
                             "the archive lists); with several, each is built into its own folders, and explicit "
                             "output paths are templates with {sector}, e.g. ./out/s{sector:04d}/hdf5")
    parser.add_argument("--tglc_data_path", default="./tglc_data",
                        help="folder for the sector's listings, catalog and failure report (default: %(default)s)")
    parser.add_argument("--fits_output_path", default=None,
                        help="folder the FITS light curves are downloaded to "
                             "(default: <tglc_data_path>/sSSSS/fits_lcs)")
    parser.add_argument("-n", "--n_processes", type=_positive_int, default=1,
                        help="worker processes for downloading and converting (default: %(default)s)")
    parser.add_argument("-t", "--tiny", action="store_true",
                        help="build only the first 100 objects of the catalog, for testing")
    parser.add_argument("--mast-url", default=None,
                        help=f"archive root in MAST's layout: an http(s):// URL, s3://BUCKET/PREFIX (MAST's cloud "
                             "copy is s3://stpubdata/mast/hlsp/tglc, read anonymously; needs tglc-builder[s3]) "
                             f"or a directory (a mirror, read in place) (default: "
                             f"${MAST_URL_ENV} if set, else {DEFAULT_MAST_URL}); 'demo' uses the built-in local "
                             "archive")
    parser.add_argument("--listing-url", default=None, metavar="URL",
                        help="root to read the two listings (and, for -s all, download_scripts/) from, in the same "
                             "layout, when --mast-url holds none: e.g. the light curves from s3://stpubdata/mast/"
                             f"hlsp/tglc and the listings from {DEFAULT_MAST_URL} (default: --mast-url itself)")
    parser.add_argument("--demo", action="store_true",
                        help="serve a synthetic sector from the built-in local archive on 127.0.0.1 for this run "
                             "(no network needed; with several sectors, a release whose stars recur across them; "
                             "with -s all, sectors 1-3); same as --mast-url demo")
    parser.add_argument("--demo-size", type=_positive_int, default=DEFAULT_DEMO_SIZE,
                        help="objects in the demo archive's synthetic sector (default: %(default)s)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on a Dask cluster: a scheduler address (tcp://host:8786) or 'local' for a "
                             "LocalCluster of --n_processes workers on this machine (needs tglc-builder[dask])")
    parser.add_argument("--connections", type=_positive_int, default=DEFAULT_CONNECTIONS,
                        help="concurrent HTTP connections of the whole build, shared out among the processes "
                             "(default: %(default)s)")
    parser.add_argument("--max-attempts", type=_positive_int, default=DEFAULT_MAX_ATTEMPTS,
                        help="tries per file before it is reported as failed (default: %(default)s)")
    parser.add_argument("--max-wait", type=_seconds, default=DEFAULT_MAX_WAIT, metavar="SECONDS",
                        help="longest pause a throttling archive's Retry-After may impose on the build "
                             "(default: %(default)s)")
    aliases = " or ".join(f"{alias} (= {','.join(them)})" for alias, them in ALIASES.items())
    parser.add_argument("--format", type=_formats, default="hdf5", metavar="FORMAT[,FORMAT]",
                        help=f"output: {', '.join(FORMATS)}, several comma-separated (hdf5,hats) or {aliases}, from "
                             "one read of each FITS file; hdf5: "
                             "HEALPix-partitioned HDF5, hats: a HATS catalog (Parquet, for LSDB; needs "
                             "tglc-builder[hats]) (default: %(default)s)")
    for fmt in FORMATS.values():
        parser.add_argument(f"--{fmt.flag}", default=None,
                            help=f"output folder of the {fmt.label} dataset (default: "
                                 f"<tglc_data_path>/sSSSS/{fmt.default_folder})")
    parser.add_argument("--hats-extras", action="store_true",
                        help="with the HATS catalog, also a 10 arcsec margin cache and a gaiadr3_id index")
    parser.add_argument("--columns", choices=COLUMN_SETS, default="seed",
                        help="'seed': the seed's five series (time, psf_flux, aper_flux, tess_flags, tglc_flags) "
                             "and two errors (psf_flux_err, aper_flux_err); 'all': also cal_psf_flux, "
                             "cal_aper_flux, background, cadence_num and the header values of use (default: "
                             "%(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="read every existing output file (and every FITS file reused) whole, checksums "
                             "included, and rewrite what fails")
    parser.add_argument("--refresh-listings", action="store_true",
                        help="fetch the sector's two listings again even when complete copies are cached")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite HDF5 files that are already complete, and replace another build's pixels in "
                             "the output folder")
    parser.add_argument("--clean-fits", action="store_true",
                        help="delete each FITS file once its light curve is in the finished output files: the FITS "
                             "files on disk are then only those of the shards in flight")
    parser.add_argument("--stars", action=argparse.BooleanOptionalAction, default=None,
                        help="after the build, add its light curves to the stars catalog (one row per Gaia DR3 star, "
                             "every sector built into it; a HATS collection, needs tglc-builder[hats]); the default "
                             "with several sectors, --no-stars skips it")
    parser.add_argument("--stars_output_path", default=None,
                        help="folder of the stars catalog (default: <tglc_data_path>/stars)")
    parser.add_argument("--stars-pixel-threshold", type=_positive_int, default=None, metavar="STARS",
                        help="most stars per partition of the stars catalog (default: partitions of about 1 GB)")
    parser.add_argument("--targets", default=None, metavar="FILE",
                        help="build only these stars: a CSV, ECSV, Parquet or FITS table with a gaiadr3_id or a tic_id "
                             "column (any case), or ra, dec columns (degrees); writes <tglc_data_path>/"
                             "targets_report.csv, and by default its outputs into targets-<hash> folders")
    parser.add_argument("--cone", nargs=3, default=None, metavar=("RA", "DEC", "RADIUS"),
                        help="build only the stars within RADIUS degrees of RA, DEC (degrees), as --targets does")
    parser.add_argument("--match-radius", type=float, default=2.0, metavar="ARCSEC",
                        help="how near a target's ra, dec a star's target-list position must be (default: "
                             "%(default)s arcsec)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


@contextmanager
def dask_client(scheduler: str | None, n_workers: int) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``--scheduler`` (None without it), closed afterwards."""
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'tglc-builder[dask]'") from None
    try:
        if scheduler == "local":
            import dask

            # No statistical profiler in the workers: it only feeds the dashboard (off here), and its thread walks
            # other threads' frames, which on CPython 3.11 can crash the process when threads end meanwhile (a CI
            # run died so, in hats-import's margin pipeline: pandas reads a CSV file in short-lived threads).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = Client(cluster)
        else:
            cluster, client = None, Client(scheduler, timeout="30s")
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}; check the address") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def arguments_of(args: argparse.Namespace) -> BuildArguments:
    return BuildArguments(
        sector=args.sector, tglc_data_path=args.tglc_data_path, fits_dir=args.fits_output_path,
        **{fmt.folder: getattr(args, fmt.flag) for fmt in FORMATS.values() if fmt.folder},
        output_dirs={fmt.name: getattr(args, fmt.flag) for fmt in FORMATS.values() if not fmt.folder},
        mast_url=None if args.demo else args.mast_url, listing_url=args.listing_url, n_processes=args.n_processes,
        tiny=args.tiny,
        format=args.format, columns=args.columns, hats_extras=args.hats_extras, connections=args.connections,
        max_attempts=args.max_attempts, max_wait=args.max_wait, overwrite=args.overwrite,
        clean_fits=args.clean_fits, verify=args.verify, refresh_listings=args.refresh_listings,
        scheduler=args.scheduler, stars=args.stars, stars_output_dir=args.stars_output_path,
        stars_pixel_threshold=args.stars_pixel_threshold, targets=args.targets, cone=args.cone,
        match_radius=args.match_radius)


def run(main: Callable[[argparse.Namespace], int], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main`` and turn known errors into one-line messages and exit codes."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    args.demo = args.demo or args.mast_url == "demo"
    try:
        return main(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}; check that the path exists and is writable",
              file=sys.stderr)
        return EXIT_USAGE


def run_as_process(main: Callable[[], int]) -> NoReturn:
    """Run the command's ``main`` as the whole process (``python build_parent_sample.py``, ``tglc-build``) and exit
    with its status. What is done here suits only a process that ends with the build, never the Python API's."""
    import_healpy_without_plotting()  # first, in this thread: no other import may find matplotlib refused
    status = main()
    # The build has ended and said so: a Ctrl-C during the interpreter's shutdown must not turn its status into a
    # KeyboardInterrupt traceback and a death by SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The shutdown's garbage collections would walk every object of the ~1,600 modules loaded (astropy, healpy,
    # h5py, datasets): ~0.5 s of the command's wall time. Frozen objects are skipped; atexit handlers and the
    # modules' teardown still run.
    gc.freeze()
    raise SystemExit(status)


def import_healpy_without_plotting() -> None:
    """Import healpy without its plotting functions (matplotlib, ~0.5 s of the ~1.7 s before a build's first
    download): ``import matplotlib`` fails while healpy, which allows for it, loads. Only for the command line's
    process (a notebook's healpy keeps ``mollview``), while no other thread imports (``hats`` imports matplotlib)."""
    if "healpy" in sys.modules or "matplotlib" in sys.modules:
        return
    sys.modules["matplotlib"] = None  # type: ignore[assignment] - the documented way to make an import fail
    try:
        with suppress(Exception):  # raised again where the catalog imports it for real
            import healpy  # noqa: F401
    finally:
        if "matplotlib" in sys.modules and sys.modules["matplotlib"] is None:
            del sys.modules["matplotlib"]
