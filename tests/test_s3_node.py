"""A real meshd process over a real S3 endpoint; GETs counted at the S3 server."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest_s3 import S3Bucket
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

MiB = 1 << 20


@pytest.fixture(params=["short-circuit", "http"], autouse=True)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test with both client data paths: page descriptors and HTTP."""
    monkeypatch.setenv("MESH_SHORT_CIRCUIT", "1" if request.param == "short-circuit" else "0")
    return str(request.param)


def mount_flag(path: str, bucket: S3Bucket, prefix: str = "", **extra: str) -> str:
    opts = {**bucket.options, **extra}
    return f"{path}={bucket.uri(prefix)}," + ",".join(f"{k}={v}" for k, v in opts.items())


def upload(server: S3Server, bucket: S3Bucket, key: str, data: bytes) -> None:
    c = server.client()
    c.upload_fileobj(io.BytesIO(data), bucket.name, key)
    c.close()


def test_range_read_fetches_only_covering_pages(
    meshd: Callable[..., MeshdProcess], s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    size = 256 * MiB
    block = os.urandom(MiB)
    data = b"".join(bytes([i]) + block[1:] for i in range(256))  # 256 distinct MiB blocks
    upload(s3_server, s3_bucket, "big/obj.bin", data)
    node = meshd([mount_flag("/s3", s3_bucket)], ["--page-size", "4MiB"])
    c = node.client()
    page = 4 * MiB
    for offset in (100 * MiB + 12345, 7 * page - MiB // 2):  # inside one page; straddling two
        before = s3_server.get_bytes(s3_bucket.name, "big/obj.bin")
        got = c.cat("/s3/big/obj.bin", offset, MiB)
        assert got == data[offset:offset + MiB]
        served = s3_server.get_bytes(s3_bucket.name, "big/obj.bin") - before
        first, last = offset // page, (offset + MiB - 1) // page
        covering = (last - first + 1) * page
        assert served <= covering + page, (offset, served, covering)
        assert served >= MiB
    assert len(data) == size
    c.close()


def test_sixteen_concurrent_readers_one_get_per_page(
    meshd: Callable[..., MeshdProcess], s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    data = os.urandom(12 * MiB + 5)
    upload(s3_server, s3_bucket, "hot.bin", data)
    node = meshd([mount_flag("/s3", s3_bucket)], ["--page-size", "1MiB"])
    assert s3_server.get_requests(s3_bucket.name, "hot.bin") == 0

    def read(_: int) -> str:
        with node.client() as c:
            return hashlib.sha256(c.cat("/s3/hot.bin")).hexdigest()

    with ThreadPoolExecutor(16) as pool:
        digests = set(pool.map(read, range(16)))
    assert digests == {hashlib.sha256(data).hexdigest()}
    # Counted at the S3 server: every byte crossed once, in at most one GET per page
    # (consecutive missing pages coalesce into one ranged GET).
    assert s3_server.get_bytes(s3_bucket.name, "hot.bin") == len(data)
    assert 1 <= s3_server.get_requests(s3_bucket.name, "hot.bin") <= 13
    with node.client() as c:
        assert c.report()["page_fetches"] == 13


def test_warm_after_restart_and_changed_object(
    meshd: Callable[..., MeshdProcess], s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    data = os.urandom(3 * MiB)
    upload(s3_server, s3_bucket, "p/f.bin", data)
    node = meshd([mount_flag("/s3", s3_bucket, "p")], ["--page-size", "1MiB"])
    with node.client() as c:
        assert c.cat("/s3/f.bin") == data
    gets = s3_server.get_requests(s3_bucket.name, "p/f.bin")
    assert 1 <= gets <= 3 and s3_server.get_bytes(s3_bucket.name, "p/f.bin") == len(data)
    node.restart()
    with node.client() as c:
        assert c.cat("/s3/f.bin") == data
        assert s3_server.get_requests(s3_bucket.name, "p/f.bin") == gets  # pages reused from disk
        assert c.report()["bytes_by_source"]["disk"] == len(data)
        new = os.urandom(2 * MiB + 1)
        upload(s3_server, s3_bucket, "p/f.bin", new)
        assert c.cat("/s3/f.bin") == new  # a new ETag is a new key: never stale
        assert c.cat("/s3/f.bin", MiB - 1, 3) == new[MiB - 1:MiB + 2]


def test_nocache_reads_stream_from_the_store_each_time(
    meshd: Callable[..., MeshdProcess], s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    data = os.urandom(2 * MiB)
    upload(s3_server, s3_bucket, "cold.bin", data)
    node = meshd([mount_flag("/s3", s3_bucket), mount_flag("/s3nc", s3_bucket, "", nocache="true")],
                 ["--page-size", "1MiB"])
    with node.client() as c:
        assert c.cat("/s3/cold.bin", nocache=True) == data  # per-request option
        assert c.cat("/s3/cold.bin", 5, 100, nocache=True) == data[5:105]
        assert c.cat("/s3nc/cold.bin") == data  # per-mount option
        r = c.report()
        assert r["tiers"]["disk"]["pages"] == 0 and r["tiers"]["memory"]["pages"] == 0
        assert r["bytes_by_source"]["nocache"] == 2 * len(data) + 100
    assert s3_server.get_requests(s3_bucket.name, "cold.bin") == 3
