"""The command line: run the chosen stages (each in a fresh process), print the table, write RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .harness import MARK, BenchError, Ctx, Skipped, machine, run_task, spawn

USAGE = """Benchmarks of tglc-builder on the local archive over loopback, each figure beside a reference measured on
this machine in the same run, and beside the same figure before the redesign.

    python benchmarks/run.py --out benchmarks/RESULTS.md   # everything (~15 min on 2 cores)
    python benchmarks/run.py --quick                       # a small smoke version (~3 min)
    python benchmarks/run.py --only convert,hats           # some stages

Not part of the test suite. Scratch data lives in a temporary folder, deleted at the end unless --keep.
"""


def run_stage(name: str, scratch: Path, size: str) -> dict:
    from .stages import BY_NAME

    stage = BY_NAME[name]
    t0 = time.perf_counter()
    try:
        rows = stage.measure(Ctx(scratch, size, stage.SIZES[size]))
    except Skipped as exc:
        rows = [report.skipped(f"{name}.skipped", name.replace("_", " "), "(every measure)", str(exc))]
    return dict(rows=rows, seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from .stages import BY_NAME

    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke version")
    parser.add_argument("--only", default=",".join(BY_NAME), help=f"comma-separated stages of {', '.join(BY_NAME)}")
    parser.add_argument("--out", help="also write the results as markdown to this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--task", help=argparse.SUPPRESS)  # one measurement, in this fresh process
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # one stage, in this fresh process
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.task:
        print(MARK + json.dumps(run_task(args.task, json.loads(args.params))), flush=True)
        return 0
    if args.stage:
        print(MARK + json.dumps(run_stage(args.stage, Path(args.scratch), args.size)), flush=True)
        return 0

    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in BY_NAME]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    size = "quick" if args.quick else "full"
    full = size == "full"
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    scratch = Path(tempfile.mkdtemp(prefix="tglc-bench-"))
    log = scratch / "bench.log"
    print(f"Scratch folder: {scratch} (log: {log})", flush=True)
    rows, failed, loads, t0 = [], [], [], time.perf_counter()
    try:
        for stage in stages:
            print(f"[{stage}] running ...", flush=True)
            load_before = os.getloadavg()[0]
            try:
                result = spawn(["--stage", stage, "--scratch", str(scratch), "--size", size], log)
            except BenchError as exc:
                loads.append((stage, load_before, os.getloadavg()[0]))
                print(f"[{stage}] FAILED: {exc}", flush=True)
                failed.append(stage)
                rows.append(report.row(f"{stage}.failed", stage.replace("_", " "), "(failed: see the log)",
                                       "failed", None, note=str(exc).splitlines()[0]))
                continue
            loads.append((stage, load_before, os.getloadavg()[0]))
            rows.extend(result["rows"])
            print(f"[{stage}] done in {result['seconds']:.0f} s\n{report.console(result['rows'], full)}", flush=True)
            if args.out:  # after every stage, so a run cut short still leaves what it measured
                report.write(Path(args.out), rows, dict(machine(), load=loads),
                             command + f"  (in progress: {len(rows)} rows)", time.perf_counter() - t0, full)
    finally:
        elapsed = time.perf_counter() - t0
        if args.keep or failed:
            print(f"Scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    info = dict(machine(), load=loads)
    print()
    print(report.table(rows, full))
    print(f"\n{len(stages)} stage(s) in {elapsed / 60:.1f} min on {info['cpu']}, {info['usable_cores']} cores")
    if args.out:
        report.write(Path(args.out), rows, info, command, elapsed, full)
        print(f"Wrote {args.out}")
    return 1 if failed else 0
