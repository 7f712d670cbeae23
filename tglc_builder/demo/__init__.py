"""A local stand-in for MAST's TGLC collection: a deterministic synthetic sector, served over real HTTP on
127.0.0.1 or written to disk as a mirror.

The demo, the tests and the benchmarks all read it through the same code a real build uses. Run it alone and point a
build at it::

    python -m tglc_builder.demo --sector 23 --n 5000 --port 8000
    python build_parent_sample.py -s 23 --mast-url http://127.0.0.1:8000 --tiny
"""

from .mirror import write_mirror
from .sector import SyntheticSector
from .server import FAULTS, LocalArchive

__all__ = ["FAULTS", "LocalArchive", "SyntheticSector", "write_mirror"]
