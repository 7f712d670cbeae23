#!/usr/bin/env python
"""Benchmarks of tglc-builder (not tests): ``python benchmarks/run.py --help``. The code is in the ``benchmarks``
package beside this file (harness, stages, goals, report)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: benchmarks, build_parent_sample

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
