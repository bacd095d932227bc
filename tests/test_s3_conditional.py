"""Conditional writes through the S3 gateway: ``If-None-Match: *`` (create only if absent)
and ``If-Match: <etag>`` (replace only that object) on PutObject,
CompleteMultipartUpload and CopyObject, as Delta Lake, Iceberg and other table
formats commit on S3.

The condition is checked by the node at the moment of the write, atomically with it
(``MeshNode.write(exclusive=True / if_version=V)``): racing writers through one node, and
through two nodes of a region over one shared directory, get exactly one winner and
412s, never two winners. Each case runs against a POSIX mount, an S3 mount (moto, a
real S3 wire endpoint) and a write-back mount; the races end with the real
``deltalake`` library committing to one table from several writers at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import meshd.understore.posix as posix_store
from meshd.errors import NotFound, VersionChanged
from meshd.understore.posix import PosixUnderStore
from meshd.understore.s3 import S3UnderStore
from tests import s3server
from tests.conftest_s3 import S3Bucket
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server
from tests.test_s3_gateway import raw

AK = "AKIDMESHGATEWAY"
SK = "gateway/secret+Key=42"
REGION = "us-east-1"
MiB = 1 << 20
MOUNTS = ["posix", "s3", "back"]  # a bucket per under-store kind (and write-back)
RACERS = 8


def client(url: str, ak: str = AK, sk: str = SK) -> Any:
    """boto3 as it comes (default checksums), path style, no retries: a 412 must show."""
    conf = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"},
                  connect_timeout=10, read_timeout=60, max_pool_connections=RACERS * 2)
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=ak, aws_secret_access_key=sk,
                        region_name=REGION, config=conf)


def err(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


@dataclass
class Env:
    node: MeshdProcess
    root: Path  # the POSIX mount's directory
    store: S3Server
    bucket: str  # the S3 mount's bucket in the store

    @property
    def url(self) -> str:
        return self.node.endpoints["s3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("s3cond")
    root = base / "posix"
    (base / "back").mkdir()
    root.mkdir()
    store = s3server.start(auth=False)
    bucket = f"cond-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    opts = ",".join(f"{k}={v}" for k, v in store.options().items())
    node = MeshdProcess(base / "node", [f"/posix=file://{root}", f"/s3=s3://{bucket}/p,{opts}",
                                        f"/back=file://{base / 'back'},write_mode=back"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK]).start()
    try:
        yield Env(node, root, store, bucket)
    finally:
        node.stop()
        store.stop()


@pytest.fixture(scope="module")
def s3(env: Env) -> Iterator[Any]:
    c = client(env.url)
    yield c
    c.close()


def fresh() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- one writer


@pytest.mark.parametrize("bucket", MOUNTS)
def test_if_none_match_creates_only_when_absent(s3: Any, bucket: str) -> None:
    key = fresh()
    put = s3.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
    assert put["ETag"] == md5_etag(b"first")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert err(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"
    s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*")  # absent again: created
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"again"


@pytest.mark.parametrize("bucket", MOUNTS)
def test_if_match_replaces_only_that_object(s3: Any, bucket: str) -> None:
    key = fresh()
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", IfMatch=md5_etag(b"x"))
    assert err(e) == ("NoSuchKey", 404)  # AWS: If-Match of a key with no object
    first = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
    second = s3.put_object(Bucket=bucket, Key=key, Body=b"v2", IfMatch=first)["ETag"]
    assert second == md5_etag(b"v2")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v3", IfMatch=first)  # stale: v1 is gone
    assert err(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v2"


def test_if_match_takes_an_unquoted_etag_and_refuses_odd_forms(env: Env, s3: Any) -> None:
    key = fresh()
    etag = s3.put_object(Bucket="posix", Key=key, Body=b"v1")["ETag"]
    r = raw(env.url, "PUT", f"/posix/{key}", {"If-Match": etag.strip('"')}, b"v2")  # as minio-py sends it
    assert r.status == 200, r.body
    assert (env.root / key).read_bytes() == b"v2"
    r = raw(env.url, "PUT", f"/posix/{key}", {"If-None-Match": r.headers["ETag"]}, b"v3")
    assert (r.status, r.code()) == (501, "NotImplemented")  # If-None-Match on a write takes only '*'
    r = raw(env.url, "PUT", f"/posix/{key}", {"If-None-Match": "*", "If-Match": md5_etag(b"v2")}, b"v3")
    assert (r.status, r.code()) == (400, "InvalidRequest")
    assert (env.root / key).read_bytes() == b"v2"


def test_condition_is_checked_against_changes_made_outside(env: Env, s3: Any) -> None:
    key = fresh()
    etag = s3.put_object(Bucket="posix", Key=key, Body=b"mine")["ETag"]
    (env.root / key).write_bytes(b"someone else's")  # behind the gateway's back
    r = raw(env.url, "PUT", f"/posix/{key}", {"If-Match": etag}, b"mine again")
    assert (r.status, r.code()) == (412, "PreconditionFailed")
    assert (env.root / key).read_bytes() == b"someone else's"


@pytest.mark.parametrize("bucket", MOUNTS)
def test_complete_multipart_upload_conditions(s3: Any, bucket: str) -> None:
    key = fresh()
    parts = [os.urandom(5 * MiB), b"tail"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"already here")

    def upload() -> tuple[str, list[dict[str, Any]]]:
        uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n,
                                                          Body=p)["ETag"]}
                for n, p in enumerate(parts, 1)]
        return uid, done

    uid, done = upload()
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done},
                                     IfNoneMatch="*")
    assert err(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"already here"
    # the failed condition leaves the upload: it can be completed once the condition holds
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Parts"]] == [1, 2]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done},
                                     IfMatch=md5_etag(b"not what is there"))
    assert err(e) == ("PreconditionFailed", 412)
    current = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    got = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done},
                                       IfMatch=current)
    assert got["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    s3.delete_object(Bucket=bucket, Key=key)
    uid, done = upload()
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done},
                                 IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)


@pytest.mark.parametrize("bucket", MOUNTS)
def test_copy_object_destination_conditions(s3: Any, bucket: str) -> None:
    src, dst = fresh(), fresh()
    s3.put_object(Bucket=bucket, Key=src, Body=b"source")
    s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, IfNoneMatch="*")
    assert err(e) == ("PreconditionFailed", 412)
    s3.put_object(Bucket=bucket, Key=dst, Body=b"changed")
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src},
                       IfMatch=md5_etag(b"source"))
    assert err(e) == ("PreconditionFailed", 412)
    s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, IfMatch=md5_etag(b"changed"))
    assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == b"source"


def test_if_match_of_a_write_back_version_through_the_store(env: Env, s3: Any) -> None:
    """A write-through If-Match of a key whose write-back write may still be pending: the
    ETag the client holds names that write, which is uploaded first and compared as the
    version it landed as."""
    key = fresh()
    for n in range(3):
        etag = s3.put_object(Bucket="back", Key=key, Body=b"pending %d" % n)["ETag"]
        r = raw(env.url, "PUT", f"/back/{key}", {"If-Match": etag, "x-mesh-write-mode": "through"}, b"through")
        assert r.status == 200, r.body
        assert (env.root.parent / "back" / key).read_bytes() == b"through"  # in the store when answered
        r = raw(env.url, "PUT", f"/back/{key}", {"If-Match": etag, "x-mesh-write-mode": "through"}, b"late")
        assert (r.status, r.code()) == (412, "PreconditionFailed")


# ----------------------------------------------------------------------------- races


def race(calls: list[Callable[[], Any]]) -> list[tuple[str, Any]]:
    """Run ``calls`` at once (released together by a barrier); each one's ("ok", result)
    or ("err", S3 error code)."""
    gate = threading.Barrier(len(calls))

    def one(fn: Callable[[], Any]) -> tuple[str, Any]:
        gate.wait()
        try:
            return "ok", fn()
        except ClientError as e:
            return "err", e.response["Error"]["Code"]

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def bodies(n: int) -> list[bytes]:
    return [f"writer {i} ".encode() * 1000 for i in range(n)]


def puts(clients: list[Any], bucket: str, key: str, data: list[bytes], **cond: str) -> list[Callable[[], Any]]:
    """One PutObject of ``key`` per client, each with its own body and the condition ``cond``."""
    return [functools.partial(c.put_object, Bucket=bucket, Key=key, Body=d, **cond)
            for c, d in zip(clients, data, strict=True)]


@pytest.mark.parametrize("bucket", MOUNTS)
def test_racing_creators_one_wins(env: Env, bucket: str) -> None:
    key = fresh()
    clients = [client(env.url) for _ in range(RACERS)]
    data = bodies(RACERS)
    got = race(puts(clients, bucket, key, data, IfNoneMatch="*"))
    winners = [i for i, (kind, _) in enumerate(got) if kind == "ok"]
    assert len(winners) == 1, got
    assert sorted(v for kind, v in got if kind == "err") == ["PreconditionFailed"] * (RACERS - 1)
    assert clients[0].get_object(Bucket=bucket, Key=key)["Body"].read() == data[winners[0]]


@pytest.mark.parametrize("bucket", MOUNTS)
def test_racing_compare_and_swap_one_wins(env: Env, bucket: str) -> None:
    key = fresh()
    clients = [client(env.url) for _ in range(RACERS)]
    base = clients[0].put_object(Bucket=bucket, Key=key, Body=b"base")["ETag"]
    data = bodies(RACERS)
    got = race(puts(clients, bucket, key, data, IfMatch=base))
    winners = [i for i, (kind, _) in enumerate(got) if kind == "ok"]
    assert len(winners) == 1, got
    assert sorted(v for kind, v in got if kind == "err") == ["PreconditionFailed"] * (RACERS - 1)
    assert clients[0].get_object(Bucket=bucket, Key=key)["Body"].read() == data[winners[0]]


def test_two_nodes_of_a_region_race_on_one_directory(cluster: Callable[..., list[MeshdProcess]],
                                                    etcd: EtcdProcess, tmp_path: Path) -> None:
    """Two nodes over one shared directory: each takes turns on its own, and the flock
    of the directory orders the two nodes' checks and renames."""
    store = tmp_path / "shared"
    store.mkdir()
    nodes = cluster(2, etcd, ["--s3-access-key", "AK", "--s3-secret-key", "SK"], s3=True)
    nodes[0].ctl("mount", "add", "/tbl", f"file://{store}", check=True)
    clients = [client(nodes[i % 2].endpoints["s3"], "AK", "SK") for i in range(RACERS)]
    for c in clients[:2]:  # both nodes know the mount
        c.head_bucket(Bucket="tbl")
    for attempt in range(3):
        key = f"_delta_log/{attempt:020d}.json"
        data = bodies(RACERS)
        got = race(puts(clients, "tbl", key, data, IfNoneMatch="*"))
        winners = [i for i, (kind, _) in enumerate(got) if kind == "ok"]
        assert len(winners) == 1, got
        assert (store / key).read_bytes() == data[winners[0]]
        base = clients[0].head_object(Bucket="tbl", Key=key)["ETag"]
        # new bodies: a write of the base's own bytes would keep its ETag (S3's ETag is the
        # content's MD5), and a writer after it would rightly find If-Match still holding
        data = [b"swap " + d for d in data]
        got = race(puts(clients, "tbl", key, data, IfMatch=base))
        winners = [i for i, (kind, _) in enumerate(got) if kind == "ok"]
        assert len(winners) == 1, got
        assert (store / key).read_bytes() == data[winners[0]]


def test_posix_compare_and_swap_is_one_step_across_stores(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stores over one directory (two nodes' mounts of a shared file system): each
    write's version check and rename happen under the directory's flock. The rename is
    slowed down so that, without the lock, every writer would pass the check first."""
    real = os.replace

    def slow_replace(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        real(*args, **kwargs)

    async def body(data: bytes) -> AsyncIterator[bytes]:
        yield data

    stores = [PosixUnderStore(f"file://{tmp_path}", {}) for _ in range(2)]

    async def main() -> list[bool]:
        base = (await stores[0].put("f", body(b"base"))).version
        monkeypatch.setattr(posix_store.os, "replace", slow_replace)

        async def attempt(i: int) -> bool:
            try:
                await stores[i % 2].put("f", body(b"writer %d" % i), if_version=base)
            except VersionChanged:
                return False
            return True

        return list(await asyncio.gather(*(attempt(i) for i in range(6))))

    won = asyncio.run(main())
    assert sum(won) == 1, won
    assert (tmp_path / "f").read_bytes() == b"writer %d" % won.index(True)
    with pytest.raises(NotFound):
        asyncio.run(stores[0].put("absent", body(b"x"), if_version=base_version_of(tmp_path / "f")))


async def test_s3_store_sends_if_match(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 under-store's compare-and-swap is the store's own If-Match, not only its HEAD
    first: with the HEAD taken away, the store (moto) still refuses a stale version (412:
    VersionChanged) and a missing object (404: NotFound)."""
    store = S3UnderStore(s3_bucket.uri("cas"), s3_bucket.options)

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async def unchecked(path: str, version: str) -> None:
        return None

    try:
        first = (await store.put("f", one(b"v1"))).version
        second = (await store.put("f", one(b"v2"), if_version=first)).version
        monkeypatch.setattr(store, "check_version", unchecked)
        with pytest.raises(VersionChanged):
            await store.put("f", one(b"v3"), if_version=first)
        with pytest.raises(NotFound):
            await store.put("absent", one(b"x"), if_version=second)
        assert await store.read_all("f", 0, 100) == b"v2"
        assert (await store.put("f", one(b"v3"), if_version=second)).version != second
    finally:
        await store.close()


def base_version_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"


# ----------------------------------------------------------------------------- Delta Lake


@pytest.mark.parametrize("bucket", MOUNTS)
def test_delta_lake_writers_commit_at_once_and_no_commit_is_lost(env: Env, bucket: str) -> None:
    """The real delta-rs (deltalake) commits version N of a table by creating
    ``_delta_log/N.json`` with ``If-None-Match: *``; a writer that loses the race reads the
    new version and commits as N+1. Several writers appending at once: every commit that
    succeeded is a distinct version and its rows are in the table. (With the condition
    ignored, the writers overwrite each other's N.json and rows are lost.)"""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{bucket}/tables/{fresh()}"
    opts = {"AWS_ENDPOINT_URL": env.url, "AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": SK,
            "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true", "AWS_S3_ADDRESSING_STYLE": "path"}
    write_deltalake(uri, pa.table({"w": [-1]}), storage_options=opts)
    writers = 6

    def append(i: int) -> Callable[[], Any]:
        return lambda: write_deltalake(uri, pa.table({"w": [i] * 10}), mode="append", storage_options=opts)

    gate = threading.Barrier(writers)

    def one(i: int) -> str:
        gate.wait()
        try:
            append(i)()
        except Exception as e:  # a commit conflict delta-rs gave up retrying: allowed, never a loss
            assert "conflict" in str(e).lower() or "CommitFailed" in type(e).__name__, e
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(one, range(writers)))
    committed = [i for i, r in enumerate(results) if r == "ok"]
    assert committed, results
    dt = DeltaTable(uri, storage_options=opts)
    assert dt.version() == len(committed)  # version 0 (the create), then one per commit
    rows = sorted(dt.to_pyarrow_table().column("w").to_pylist())
    assert rows == sorted([-1] + [i for i in committed for _ in range(10)])
    assert [h["version"] for h in dt.history()] == list(range(len(committed), -1, -1))
