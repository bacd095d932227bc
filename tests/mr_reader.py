"""Readers for the multi-region tests and benchmark, run *inside* a region's namespace.

    python -m tests.mr_reader --endpoint DIR1,DIR2 --readers 20 /datasets/f0 /datasets/f1 ...

Starts ``--readers`` threads at once (a barrier), reader ``i`` talking to
endpoint ``i % len(endpoints)`` through its own :class:`MeshClient`
(``--direct URL``: read the S3 endpoint with boto3 instead, the baseline).
Each reads every path whole, in the given order, and hashes it. Prints one
JSON object: per reader the SHA-256 of each path or the error that stopped it
(``{"kind", "message"}``), and the seconds each took; the total seconds, and
``cpu_seconds``: this process's CPU time while the readers ran.

By default a reader opens a new client for every path (as the tests have
always done). ``--one-client``: every reader's client is opened before the
readers start (one after the other, in the main thread: boto3's default
session is not thread-safe) and reused for every path, as a long-running job
would; the seconds then count reading only, and ``client_seconds`` says how
long opening the clients took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

CHUNK = 4 << 20


def mesh_client(endpoint: str, timeout: float) -> Any:
    from meshd.client.sdk import MeshClient

    return MeshClient(endpoint, timeout)


def s3_client(url: str, timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1",
                        config=Config(read_timeout=timeout, retries={"max_attempts": 2}))


def read_mesh(endpoint: str, path: str, timeout: float, client: Any = None) -> str:
    """``client``: an open MeshClient to use (it stays open); None: open one for this path."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    c = client if client is not None else mesh_client(endpoint, timeout)
    try:
        for n in c.read_chunks_into(path, buf):
            digest.update(memoryview(buf)[:n])
    finally:
        if client is None:
            c.close()
    return digest.hexdigest()


def read_direct(url: str, path: str, timeout: float, client: Any = None) -> str:
    """``client``: a boto3 S3 client to use; None: make one for this path."""
    bucket, _, key = path.lstrip("/").partition("/")
    s3 = client if client is not None else s3_client(url, timeout)
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default="", help="comma-separated node endpoints (data dirs or host:port)")
    p.add_argument("--direct", default="", help="read this S3 endpoint directly (path /bucket/key)")
    p.add_argument("--readers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--one-client", action="store_true",
                   help="each reader opens its client once and reuses it for every path")
    p.add_argument("paths", nargs="+")
    a = p.parse_args(argv)
    endpoints = [e for e in a.endpoint.split(",") if e]
    start = threading.Barrier(a.readers)
    results: list[dict[str, Any]] = [{} for _ in range(a.readers)]
    clients: list[Any] = [None] * a.readers
    extra: dict[str, Any] = {}
    if a.one_client:
        t0 = time.monotonic()
        for i in range(a.readers):
            clients[i] = s3_client(a.direct, a.timeout) if a.direct else \
                mesh_client(endpoints[i % len(endpoints)], a.timeout)
        extra["client_seconds"] = time.monotonic() - t0

    def reader(i: int) -> None:
        out: dict[str, Any] = {"digests": {}, "error": None}
        client = clients[i]
        start.wait()
        t0 = time.monotonic()
        try:
            for path in a.paths:
                if a.direct:
                    out["digests"][path] = read_direct(a.direct, path, a.timeout, client)
                else:
                    out["digests"][path] = read_mesh(endpoints[i % len(endpoints)], path, a.timeout, client)
        except Exception as e:
            out["error"] = {"kind": getattr(e, "kind", type(e).__name__), "message": str(e)[:500]}
        out["seconds"] = time.monotonic() - t0
        results[i] = out

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(a.readers)]
    cpu0 = _cpu()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    extra["cpu_seconds"] = _cpu() - cpu0  # this process (all readers) while they ran
    for c in clients:
        if c is not None and not a.direct:
            c.close()
    json.dump({"readers": results, "seconds": seconds, **extra}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
