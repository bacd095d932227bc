"""Readers for the multi-region tests and benchmark, run *inside* a region's namespace.

    python -m tests.mr_reader --endpoint DIR1,DIR2 --readers 20 /datasets/f0 /datasets/f1 ...

Starts ``--readers`` threads at once (a barrier), reader ``i`` talking to
endpoint ``i % len(endpoints)`` through its own :class:`MeshClient`
(``--direct URL``: read the S3 endpoint with boto3 instead, the baseline).
Each reads every path whole, in the given order, and hashes it. Prints one
JSON object: per reader the SHA-256 of each path or the error that stopped it
(``{"kind", "message"}``), and the seconds each took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from typing import Any

CHUNK = 4 << 20


def read_mesh(endpoint: str, path: str, timeout: float) -> str:
    from meshd.client import MeshClient

    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    with MeshClient(endpoint, timeout) as c:
        for n in c.read_chunks_into(path, buf):
            digest.update(memoryview(buf)[:n])
    return digest.hexdigest()


def read_direct(url: str, path: str, timeout: float) -> str:
    import boto3
    from botocore.config import Config

    bucket, _, key = path.lstrip("/").partition("/")
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1",
                      config=Config(read_timeout=timeout, retries={"max_attempts": 2}))
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default="", help="comma-separated node endpoints (data dirs or host:port)")
    p.add_argument("--direct", default="", help="read this S3 endpoint directly (path /bucket/key)")
    p.add_argument("--readers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("paths", nargs="+")
    a = p.parse_args(argv)
    endpoints = [e for e in a.endpoint.split(",") if e]
    start = threading.Barrier(a.readers)
    results: list[dict[str, Any]] = [{} for _ in range(a.readers)]

    def reader(i: int) -> None:
        out: dict[str, Any] = {"digests": {}, "error": None}
        start.wait()
        t0 = time.monotonic()
        try:
            for path in a.paths:
                if a.direct:
                    out["digests"][path] = read_direct(a.direct, path, a.timeout)
                else:
                    out["digests"][path] = read_mesh(endpoints[i % len(endpoints)], path, a.timeout)
        except Exception as e:
            out["error"] = {"kind": getattr(e, "kind", type(e).__name__), "message": str(e)[:500]}
        out["seconds"] = time.monotonic() - t0
        results[i] = out

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(a.readers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"readers": results, "seconds": time.monotonic() - t0}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
