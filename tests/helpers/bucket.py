"""A local S3 server (moto) holding one bucket that anyone may read, as MAST's cloud copy is: for the S3 tests."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKET = "tglc-mirror"
PUBLIC_READ = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
    "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}


def _owner(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="owner",
                        aws_secret_access_key="owner")


@contextmanager
def public_bucket() -> Iterator[str]:
    """A moto server on 127.0.0.1 with :data:`BUCKET`, empty and readable anonymously; yields the server's URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = "http://%s:%d" % server.get_host_and_port()
        client = _owner(url)
        client.create_bucket(Bucket=BUCKET, ACL="public-read")
        client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(PUBLIC_READ))
        yield url
    finally:
        server.stop()


def upload(url: str, root: Path, prefix: str, changes: dict[str, bytes | None] | None = None) -> int:
    """Put every file below ``root`` into the bucket under ``prefix``, as its owner, readable by anyone;
    ``changes`` maps relative paths to other contents, or to None to leave them out. Returns the files put."""
    client = _owner(url)
    put = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relpath = path.relative_to(root).as_posix()
        data = (changes or {}).get(relpath, path.read_bytes())
        if data is not None:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{relpath}", Body=data, ACL="public-read")
            put += 1
    return put
