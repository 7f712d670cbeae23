"""Sources: light curves/s end to end (the command line, -n 2, default settings) from a local mirror read in place,
from a bucket of a local S3 server (moto, through ``AWS_ENDPOINT_URL``, anonymous) and over HTTP from the demo
archive; the same sector each time."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..harness import BenchError, Ctx, Skipped, Timer, archive_process, demo_sector, hdf5_rows, run_cli, \
    s3_process, task
from ..report import fmt_rate, row, skipped
from .end_to_end import cli_args

NAME = "sources"
SIZES = {"full": dict(n=5_000), "quick": dict(n=300)}
BUCKET, PREFIX = "tglc-bench", "hlsps/tglc"
PUBLIC_READ = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
    "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}


@task
def mirror(n: int, directory: str) -> dict:
    """The demo sector as a mirror in MAST's layout, written by the demo's own ``write_mirror``."""
    from tglc_builder.demo import write_mirror

    root = Path(directory) / "tree"
    with Timer() as t:
        write_mirror(root, demo_sector(n))
    return dict(root=str(root), seconds=t.seconds)


@task
def upload(root: str, endpoint: str) -> dict:
    """Every file of the mirror into a public-read bucket of the local S3 server, with boto3."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing", config=Config(max_pool_connections=16))
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(PUBLIC_READ))
    files = [p for p in Path(root).rglob("*") if p.is_file()]

    def put(path: Path) -> int:
        body = path.read_bytes()
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{path.relative_to(root).as_posix()}", Body=body)
        return len(body)

    with Timer() as t, ThreadPoolExecutor(16) as pool:
        size = sum(pool.map(put, files))
    return dict(files=len(files), bytes=size, seconds=t.seconds)


@task
def build(url: str, directory: str, extra_env: dict | None = None) -> dict:
    work = Path(directory)
    result = run_cli(cli_args(url, work), work, extra_env=extra_env)
    result["rows"] = hdf5_rows(work / "hdf5")
    result["fits_files"] = sum(1 for p in (work / "fits").rglob("*") if p.is_file())
    return result


def _row(key: str, what: str, r: dict, expected: int, note: str) -> dict:
    if r["rows"] != expected:
        raise BenchError(f"{what}: {r['rows']} light curves written, {expected} expected")
    rate = r["rows"] / r["seconds"]
    return row(key, "sources", f"light curves/s end to end, {what}", fmt_rate(rate, "/s"), rate,
               note=f"{r['rows']:,} light curves in {r['seconds']:.1f} s, {r['cpu']:.1f} s CPU; {r['fits_files']} "
                    f"file(s) left in fits_output_path; {note}")


def measure(ctx: Ctx) -> list[dict]:
    n = ctx.sizes["n"]
    expected = int(len(demo_sector(n).expected_catalog_indices()))
    work = ctx.dir("sources", fresh=True)
    tree = ctx.task(mirror, n=n, directory=str(work / "mirror"))
    rows = [_row("sources.mirror", f"local mirror read in place (--mast-url {tree['root'].replace(str(work), '...')})",
                 ctx.task(build, url=tree["root"], directory=str(work / "from-mirror")), expected,
                 f"the mirror ({n:,} objects) written by tglc_builder.demo.write_mirror in {tree['seconds']:.1f} s")]

    what = f"local S3 server (moto on 127.0.0.1, --mast-url s3://{BUCKET}/{PREFIX}, AWS_ENDPOINT_URL, anonymous)"
    if importlib.util.find_spec("s3fs") is None or importlib.util.find_spec("tglc_builder.sources.s3") is None:
        rows.append(skipped("sources.s3", "sources", f"light curves/s end to end, {what}",
                            "s3fs or tglc_builder.sources.s3 is not installed"))
    else:
        try:
            with s3_process(ctx) as endpoint:
                up = ctx.task(upload, root=tree["root"], endpoint=endpoint)
                env = {"AWS_ENDPOINT_URL": endpoint}
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                    if name in os.environ:
                        raise Skipped(f"{name} is set in this environment; the benchmark reads the bucket "
                                      "anonymously, as MAST's is read")
                r = ctx.task(build, url=f"s3://{BUCKET}/{PREFIX}", directory=str(work / "from-s3"), extra_env=env)
            rows.append(_row("sources.s3", what, r, expected,
                             f"{up['files']:,} objects uploaded with boto3 in {up['seconds']:.1f} s; moto serves from "
                             "one Python process"))
        except Skipped as exc:
            rows.append(skipped("sources.s3", "sources", f"light curves/s end to end, {what}", str(exc)))

    with archive_process(ctx, n, 0.0) as url:
        r = ctx.task(build, url=url, directory=str(work / "from-http"))
    rows.append(_row("sources.http", "HTTP from the demo archive (0 ms per file)", r, expected,
                     "the demo archive is one Python process (~700-800 answers/s)"))
    return rows
