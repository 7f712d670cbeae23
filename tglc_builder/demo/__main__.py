"""``python -m tglc_builder.demo``: serve a synthetic sector over HTTP, or write it to disk with --write-mirror."""

from __future__ import annotations

import argparse
import logging
import time

from ..arguments import parse_sectors
from ..errors import UsageError
from .mirror import write_mirror
from .sector import FLAVOURS
from .server import LISTING_MODES, LocalArchive

log = logging.getLogger("tglc_builder.demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tglc_builder.demo",
                                     description="Serve a synthetic TGLC sector in MAST's layout over HTTP, or write "
                                                 "it to a folder.")
    parser.add_argument("--sector", type=int, default=23, help="sector number (default: %(default)s)")
    parser.add_argument("--sectors", default=None, metavar="SPEC",
                        help="serve a release of several sectors instead (e.g. 1-3): stars recur across them")
    parser.add_argument("--n", type=int, default=1000, help="light curves served (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic sector (default: %(default)s)")
    parser.add_argument("--flavour", choices=FLAVOURS, default="v1", help="TGLC file version (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--listing-mode", choices=LISTING_MODES, default="length",
                        help="how listings tell their length (default: %(default)s)")
    parser.add_argument("--pregenerate", action="store_true",
                        help="make every light curve at start and keep them in memory (~60 KB each), so answers cost "
                             "no CPU beyond HTTP (for benchmarks on a small machine)")
    parser.add_argument("--write-mirror", metavar="DIR",
                        help="write the sector's listings and light curves under DIR in MAST's layout, and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sectors = None if args.sectors is None else parse_sectors(args.sectors)
    except UsageError as exc:
        parser.error(str(exc))
    if args.sectors is not None and sectors is None:
        parser.error("--sectors takes sector numbers, e.g. 1-3")
    archive = LocalArchive(args.sector, args.n, args.seed, sectors=sectors, flavour=args.flavour,
                           latency=args.latency,
                           listing_mode=args.listing_mode, host=args.host, port=args.port,
                           pregenerate=args.pregenerate)
    if args.write_mirror:
        root = write_mirror(args.write_mirror, archive)
        log.info("Wrote synthetic sector(s) %s of %d light curves each to %s", ",".join(map(str, archive.release)),
                 args.n, root)
        return 0
    archive.start()
    log.info("Serving synthetic sector(s) %s of %d light curves each at %s (Ctrl-C to stop)",
             ",".join(map(str, archive.release)), args.n, archive.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        archive.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
