# The S3 fixtures are imported below and then used as test parameters, which
# ruff would report as redefinitions (F811).
# ruff: noqa: F811
"""The under-store conformance suite: every backend passes the same tests.

The ``store`` fixture is parametrized over the backends (``file``: a directory
in ``tmp_path``; ``s3``: a fresh bucket on a moto server in a subprocess, with
IAM authentication on, mounted with a key prefix). A new backend adds one
branch to ``store_spec``. Backend-specific behaviour (mount checks, S3 wire
behaviour measured at the server) follows the shared suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from meshd.errors import (
    DirectoryNotEmpty,
    IsADirectory,
    MountError,
    NotADirectory,
    NotFound,
    NotSupported,
    PermissionDenied,
    UnderStoreError,
    VersionChanged,
)
from meshd.understore import ObjectInfo, UnderStore, open_understore
from meshd.understore.s3 import S3UnderStore
from tests import s3server
from tests.conftest_s3 import S3Bucket, s3_bucket, s3_server  # noqa: F401 (fixtures)
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

MiB = 1 << 20
S3_PREFIX = "mount/prefix"
_HDFS_DIRS = itertools.count()


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def stream(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


async def put(store: UnderStore, path: str, data: bytes, chunk: int = 64 * 1024) -> ObjectInfo:
    return await store.put(path, stream(data, chunk))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Boom(Exception):
    pass


async def failing_stream(data: bytes, fail_after: int, chunk: int = MiB) -> AsyncIterator[bytes]:
    sent = 0
    for i in range(0, len(data), chunk):
        if sent >= fail_after:
            raise Boom("client went away")
        piece = data[i : i + chunk]
        sent += len(piece)
        yield piece
    raise Boom("client went away")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def webhdfs_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshdProcess, Path]]:
    """A second mesh whose WebHDFS gateway stands in for a remote HDFS NameNode: the
    ``hdfs`` backend talks to it over a real socket (a mesh in front of a mesh)."""
    base = tmp_path_factory.mktemp("webhdfs-mesh")
    backing = base / "backing"
    backing.mkdir()
    node = MeshdProcess(base / "node", [f"/warehouse={backing.as_uri()}"], ["--no-s3"]).start()
    try:
        yield node, backing
    finally:
        node.stop()


@pytest.fixture(params=["file", "s3", "hdfs"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, str]]:
    """(uri, options) of a fresh, empty under-store location."""
    if request.param == "file":
        root = tmp_path / "understore"
        root.mkdir()
        return root.as_uri(), {}
    if request.param == "hdfs":
        node, backing = request.getfixturevalue("webhdfs_mesh")
        name = f"t{next(_HDFS_DIRS)}"
        (backing / name).mkdir()
        return f"hdfs://namenode.invalid:8020/warehouse/{name}", {"endpoint": node.endpoints["webhdfs"],
                                                                  "user": "etl"}
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return bucket.uri(S3_PREFIX), dict(bucket.options)


@pytest.fixture
async def store(store_spec: tuple[str, dict[str, str]]) -> AsyncIterator[UnderStore]:
    uri, options = store_spec
    s = open_understore(uri, options)
    await s.check()
    yield s
    await s.close()


# --------------------------------------------------------------------------- head


async def test_head_root_is_a_directory(store: UnderStore) -> None:
    info = await store.head("")
    assert info.is_dir and info.version == "" and info.size == 0


async def test_head_file(store: UnderStore) -> None:
    data = blob(1234)
    await put(store, "a/b.txt", data)
    info = await store.head("a/b.txt")
    assert info.path == "a/b.txt"
    assert info.size == 1234
    assert not info.is_dir
    assert info.version != ""
    assert abs(info.mtime - time.time()) < 3600


async def test_head_directory(store: UnderStore) -> None:
    await put(store, "a/b/c.txt", b"x")
    for path in ("a", "a/b"):
        info = await store.head(path)
        assert info.is_dir, path
        assert info.path == path
        assert info.version == "" and info.size == 0


async def test_head_missing(store: UnderStore) -> None:
    await put(store, "a/b.txt", b"x")
    for path in ("nope", "a/nope", "nope/deeper", "a/b.tx"):
        with pytest.raises(NotFound):
            await store.head(path)


async def test_put_returns_head(store: UnderStore) -> None:
    info = await put(store, "f.bin", blob(100))
    head = await store.head("f.bin")
    assert (info.path, info.size, info.version, info.is_dir) == (head.path, head.size, head.version, head.is_dir)
    assert abs(info.mtime - head.mtime) < 5  # S3's LastModified has its own clock and 1 s resolution
    assert info.size == 100 and info.path == "f.bin"


async def test_put_returns_the_version_of_its_own_bytes(store: UnderStore) -> None:
    """Concurrent puts of one path: each put returns the version of what *it* wrote,
    never a concurrent writer's (the gateway pairs that version with an ETag)."""
    import asyncio

    bodies = [blob(4096 + i, seed=i) for i in range(6)]
    infos = await asyncio.gather(*[put(store, "race.bin", b) for b in bodies])
    assert len({i.version for i in infos}) == len(bodies)  # six writes, six versions
    final = await store.head("race.bin")
    winner = [b for b, i in zip(bodies, infos, strict=True) if i.version == final.version]
    assert len(winner) == 1
    assert await store.read_all("race.bin", 0, final.size) == winner[0]


# --------------------------------------------------------------------------- list


async def test_list_sorted_dirs_and_files(store: UnderStore) -> None:
    files = {"d/b.txt": b"bb", "d/a.txt": b"a", "d/sub/x": b"xx", "d/c/y": b"y", "d/Z": b"zzz"}
    for path, data in files.items():
        await put(store, path, data)
    await store.mkdir("d/empty")
    entries = await store.list("d")
    assert [e.path for e in entries] == ["d/Z", "d/a.txt", "d/b.txt", "d/c", "d/empty", "d/sub"]
    by_path = {e.path: e for e in entries}
    for path in ("d/c", "d/empty", "d/sub"):
        assert by_path[path].is_dir and by_path[path].version == ""
    for path in ("d/Z", "d/a.txt", "d/b.txt"):
        info = by_path[path]
        assert not info.is_dir
        assert info.size == len(files[path])
        assert info.version == (await store.head(path)).version


async def test_list_root_and_nested(store: UnderStore) -> None:
    await put(store, "top.txt", b"t")
    await put(store, "d/sub/deep/x", b"x")
    assert [(e.path, e.is_dir) for e in await store.list("")] == [("d", True), ("top.txt", False)]
    assert [(e.path, e.is_dir) for e in await store.list("d")] == [("d/sub", True)]
    assert [(e.path, e.is_dir) for e in await store.list("d/sub/deep")] == [("d/sub/deep/x", False)]


async def test_list_empty_root(store: UnderStore) -> None:
    assert await store.list("") == []


async def test_list_missing(store: UnderStore) -> None:
    await put(store, "d/x", b"x")
    for path in ("nope", "d/nope"):
        with pytest.raises(NotFound):
            await store.list(path)


async def test_list_file_is_not_a_directory(store: UnderStore) -> None:
    await put(store, "d/x", b"x")
    with pytest.raises(NotADirectory):
        await store.list("d/x")


async def test_unicode_and_spaces_in_names(store: UnderStore) -> None:
    name = "d/héllo wörld + 100%.txt"
    await put(store, name, b"unicode")
    assert [e.path for e in await store.list("d")] == [name]
    assert await store.read_all(name, 0, 100) == b"unicode"
    assert (await store.head(name)).size == 7


# --------------------------------------------------------------------------- get_range


async def test_get_range_full_and_partial(store: UnderStore) -> None:
    data = blob(1000, seed=1)
    await put(store, "f", data)
    assert await store.read_all("f", 0, 1000) == data
    assert await store.read_all("f", 0, 10**12) == data
    assert await store.read_all("f", 10, 20) == data[10:20]
    assert await store.read_all("f", 500, 1000) == data[500:]


async def test_get_range_boundaries(store: UnderStore) -> None:
    data = blob(1000, seed=2)
    await put(store, "f", data)
    assert await store.read_all("f", 0, 1) == data[:1]
    assert await store.read_all("f", 999, 1000) == data[999:]
    assert await store.read_all("f", 999, 5000) == data[999:]
    assert await store.read_all("f", 5, 5) == b""
    assert await store.read_all("f", 1000, 1001) == b""  # starts at the end
    assert await store.read_all("f", 2000, 3000) == b""  # past the end


async def test_get_range_empty_file(store: UnderStore) -> None:
    info = await put(store, "empty", b"")
    assert info.size == 0 and not info.is_dir
    assert await store.read_all("empty", 0, 10) == b""
    assert await store.read_all("empty", 0, 0) == b""
    assert await store.read_all("empty", 0, 10, info.version) == b""


async def test_get_range_large_crossing_chunks(store: UnderStore) -> None:
    data = blob(5 * MiB + 123, seed=3)
    await put(store, "big", data, chunk=MiB)
    for start, end in [
        (0, len(data)),
        (MiB - 7, 3 * MiB + 11),
        (MiB, 2 * MiB),
        (2 * MiB - 1, 2 * MiB + 1),
        (len(data) - 5, len(data) + MiB),
    ]:
        got = await store.read_all("big", start, end)
        assert sha(got) == sha(data[start:end]), (start, end)


async def test_get_range_streams_in_chunks(store: UnderStore) -> None:
    data = blob(3 * MiB + 5, seed=4)
    await put(store, "big", data, chunk=MiB)
    chunks = [c async for c in store.get_range("big", 0, len(data))]
    assert len(chunks) >= 3
    assert all(0 < len(c) <= 4 * MiB for c in chunks)
    assert b"".join(chunks) == data


async def test_get_range_missing_and_directory(store: UnderStore) -> None:
    await put(store, "d/x", b"x")
    with pytest.raises(NotFound):
        await store.read_all("nope", 0, 10)
    with pytest.raises(IsADirectory):
        await store.read_all("d", 0, 10)


async def test_version_changes_with_content(store: UnderStore) -> None:
    v1 = await put(store, "f", b"first version")
    v2 = await put(store, "f", b"second, longer version")
    assert v1.version and v2.version and v1.version != v2.version
    assert (await store.head("f")).version == v2.version
    assert await store.read_all("f", 0, 100, v2.version) == b"second, longer version"


async def test_get_range_with_old_version_fails(store: UnderStore) -> None:
    v1 = await put(store, "f", blob(2000, seed=5))
    await put(store, "f", blob(3000, seed=6))
    with pytest.raises(VersionChanged):
        await store.read_all("f", 0, 100, v1.version)
    with pytest.raises(VersionChanged):  # an empty range still checks the version
        await store.read_all("f", 10, 10, v1.version)
    with pytest.raises(VersionChanged):  # so does a range past the end
        await store.read_all("f", 10**9, 10**9 + 10, v1.version)


# --------------------------------------------------------------------------- put


async def test_put_replaces(store: UnderStore) -> None:
    await put(store, "f", b"old old old")
    info = await put(store, "f", b"new")
    assert info.size == 3
    assert await store.read_all("f", 0, 100) == b"new"


async def test_put_is_idempotent(store: UnderStore) -> None:
    data = blob(5000, seed=7)
    first = await put(store, "f", data)
    second = await put(store, "f", data)
    assert first.size == second.size == 5000
    assert await store.read_all("f", 0, 10**6) == data
    assert [e.path for e in await store.list("")] == ["f"]


async def test_put_creates_parents(store: UnderStore) -> None:
    await put(store, "x/y/z.txt", b"z")
    assert (await store.head("x/y")).is_dir
    assert [e.path for e in await store.list("x/y")] == ["x/y/z.txt"]


async def test_put_large_stream_round_trips(store: UnderStore) -> None:
    data = blob(20 * MiB + 4321, seed=8)
    info = await put(store, "large.bin", data, chunk=MiB + 3)  # chunks not aligned to parts
    assert info.size == len(data)
    assert (await store.head("large.bin")).size == len(data)
    assert sha(await store.read_all("large.bin", 0, len(data))) == sha(data)
    mid = 8 * MiB - 10  # across the first part boundary of a multipart upload
    assert await store.read_all("large.bin", mid, mid + 20) == data[mid : mid + 20]


@pytest.mark.parametrize("size,fail_after", [(3 * MiB, MiB), (20 * MiB, 17 * MiB)])
async def test_failed_put_leaves_old_object(store: UnderStore, size: int, fail_after: int) -> None:
    old = await put(store, "f", b"the old bytes")
    with pytest.raises(Boom):
        await store.put("f", failing_stream(blob(size, seed=9), fail_after))
    assert await store.read_all("f", 0, 100) == b"the old bytes"
    assert (await store.head("f")).version == old.version
    with pytest.raises(Boom):
        await store.put("new", failing_stream(blob(size, seed=9), fail_after))
    with pytest.raises(NotFound):
        await store.head("new")
    assert [e.path for e in await store.list("")] == ["f"]


# --------------------------------------------------------------------------- delete


async def test_delete_file_is_idempotent(store: UnderStore) -> None:
    await put(store, "d/f", b"x")
    await put(store, "d/g", b"y")
    await store.delete("d/f")
    with pytest.raises(NotFound):
        await store.head("d/f")
    await store.delete("d/f")
    assert [e.path for e in await store.list("d")] == ["d/g"]


async def test_delete_missing_is_ok(store: UnderStore) -> None:
    await store.delete("never-was")
    await store.delete("never/was/here")


async def test_delete_empty_directory(store: UnderStore) -> None:
    await store.mkdir("d")
    await store.delete("d")
    with pytest.raises(NotFound):
        await store.head("d")
    await store.delete("d")


async def test_delete_non_empty_directory(store: UnderStore) -> None:
    await store.mkdir("d")
    await put(store, "d/f", b"x")
    with pytest.raises(DirectoryNotEmpty):
        await store.delete("d")
    assert await store.read_all("d/f", 0, 10) == b"x"
    assert (await store.head("d")).is_dir


# --------------------------------------------------------------------------- mkdir


async def test_mkdir_is_idempotent_and_listed(store: UnderStore) -> None:
    await put(store, "a.txt", b"a")
    await store.mkdir("m")
    await store.mkdir("m")
    assert (await store.head("m")).is_dir
    assert [(e.path, e.is_dir) for e in await store.list("")] == [("a.txt", False), ("m", True)]
    assert await store.list("m") == []


async def test_mkdir_nested(store: UnderStore) -> None:
    await store.mkdir("p/q/r")
    assert (await store.head("p/q/r")).is_dir
    assert [(e.path, e.is_dir) for e in await store.list("p")] == [("p/q", True)]
    await put(store, "p/q/r/f", b"f")
    assert [e.path for e in await store.list("p/q/r")] == ["p/q/r/f"]


async def test_mkdir_over_file(store: UnderStore) -> None:
    await put(store, "f", b"x")
    with pytest.raises(NotADirectory):
        await store.mkdir("f")
    assert await store.read_all("f", 0, 10) == b"x"


# --------------------------------------------------------------------------- rename


async def test_rename_or_not_supported(store: UnderStore) -> None:
    await put(store, "src", b"payload")
    if store.capabilities.rename:
        await store.rename("src", "dir/dst")
        with pytest.raises(NotFound):
            await store.head("src")
        assert await store.read_all("dir/dst", 0, 100) == b"payload"
    else:
        with pytest.raises(NotSupported):
            await store.rename("src", "dst")
        assert await store.read_all("src", 0, 100) == b"payload"
        with pytest.raises(NotFound):
            await store.head("dst")


# --------------------------------------------------------------------------- mounting


async def test_unknown_scheme() -> None:
    with pytest.raises(MountError, match="unknown under-store scheme"):
        open_understore("gopher://host/x")
    with pytest.raises(MountError, match="no scheme"):
        open_understore("/just/a/path")


async def test_posix_check_missing_directory(tmp_path: Any) -> None:
    store = open_understore((tmp_path / "does-not-exist").as_uri())
    with pytest.raises(MountError):
        await store.check()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_s3_check_missing_bucket(s3_bucket: S3Bucket) -> None:
    store = open_understore("s3://no-such-bucket-here/p", s3_bucket.options)
    with pytest.raises(MountError) as e:
        await store.check()
    assert "no-such-bucket-here" in str(e.value) and s3_bucket.endpoint in str(e.value)
    with pytest.raises(NotFound, match="bucket"):  # operations say which bucket is missing
        await store.head("x")
    await store.close()


@pytest.mark.parametrize("which", ["access_key", "secret_key"])
async def test_s3_check_wrong_credentials(s3_bucket: S3Bucket, which: str) -> None:
    options = dict(s3_bucket.options)
    options[which] = "AKIAWRONGWRONGWRONG1" if which == "access_key" else "wrong-secret-s3cr3t"
    store = open_understore(s3_bucket.uri(), options)
    with pytest.raises(PermissionDenied) as e:
        await store.check()
    assert s3_bucket.name in str(e.value)
    with pytest.raises(PermissionDenied) as e2:
        await store.list("")
    for message in (str(e.value), str(e2.value)):
        assert options["secret_key"] not in message
    await store.close()


async def test_s3_check_unreachable_endpoint(s3_bucket: S3Bucket) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_understore(s3_bucket.uri(), {**s3_bucket.options, "endpoint": endpoint})
    with pytest.raises(UnderStoreError) as e:
        await store.check()
    assert endpoint in str(e.value)
    await store.close()


@pytest.mark.parametrize(
    "options",
    [
        {"addressing_style": "sideways"},
        {"max_connections": "many"},
        {"max_connections": "0"},
        {"anonymous": "perhaps"},
        {"endpoint": "ftp://example.com"},
        {"access_key": "AKIAONLYTHEKEY"},
        {"secret_kye": "typo"},
    ],
)
def test_s3_bad_options(options: dict[str, str]) -> None:
    with pytest.raises(MountError):
        open_understore("s3://bucket/prefix", options)


def test_s3_bad_uri() -> None:
    with pytest.raises(MountError):
        open_understore("s3:///no-bucket")


# --------------------------------------------------------------------------- S3 specifics


@pytest.fixture
async def s3_store(s3_bucket: S3Bucket) -> AsyncIterator[S3UnderStore]:
    store = open_understore(s3_bucket.uri(S3_PREFIX), s3_bucket.options)
    assert isinstance(store, S3UnderStore)
    yield store
    await store.close()


async def test_s3_keys_live_under_the_prefix(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket.name, Key="outside.txt", Body=b"o")
    client.put_object(Bucket=s3_bucket.name, Key="mount/prefixed-sibling", Body=b"o")
    await put(s3_store, "d/f.txt", b"inside")
    await s3_store.mkdir("m")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.name)["Contents"])
    assert keys == ["mount/prefix/d/f.txt", "mount/prefix/m/", "mount/prefixed-sibling",
                    "outside.txt"]
    assert [e.path for e in await s3_store.list("")] == ["d", "m"]
    with pytest.raises(NotFound):
        await s3_store.head("outside.txt")
    etag = client.head_object(Bucket=s3_bucket.name, Key="mount/prefix/d/f.txt")["ETag"]
    assert (await s3_store.head("d/f.txt")).version == etag.strip('"')


async def test_s3_range_read_fetches_only_the_range(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    data = blob(5 * MiB, seed=10)
    info = await put(s3_store, "big", data, chunk=MiB)
    key = f"{S3_PREFIX}/big"
    s3_server.reset_counters()
    chunks = [c async for c in s3_store.get_range("big", MiB + 1, MiB + 1 + 3 * MiB // 2,
                                                  info.version)]
    assert b"".join(chunks) == data[MiB + 1 : MiB + 1 + 3 * MiB // 2]
    assert max(len(c) for c in chunks) <= MiB  # streamed in 1 MiB reads
    assert s3_server.get_requests(s3_bucket.name, key) == 1
    assert s3_server.get_bytes(s3_bucket.name, key) == 3 * MiB // 2
    # An empty range sends no GET at all; a range past the end serves no bytes.
    assert await s3_store.read_all("big", 10, 10) == b""
    assert await s3_store.read_all("big", 6 * MiB, 7 * MiB) == b""
    assert s3_server.get_requests(s3_bucket.name, key) == 2
    assert s3_server.get_bytes(s3_bucket.name, key) == 3 * MiB // 2


async def test_s3_abandoned_read_does_not_fetch_everything(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    data = blob(4 * MiB, seed=11)
    await put(s3_store, "big", data, chunk=MiB)
    s3_server.reset_counters()
    reader = cast(AsyncGenerator[bytes, None], s3_store.get_range("big", 0, len(data)))
    first = await anext(reader)
    assert first == data[: len(first)]
    await reader.aclose()  # closes the HTTP response instead of draining it
    assert s3_server.get_requests(s3_bucket.name, f"{S3_PREFIX}/big") == 1


async def test_s3_put_small_is_one_request_large_is_multipart(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    small = await put(s3_store, "small", blob(8 * MiB, seed=12), chunk=MiB)
    assert "-" not in small.version  # a PutObject ETag (an MD5)
    large = await put(s3_store, "large", blob(20 * MiB, seed=13), chunk=MiB)
    assert large.version.endswith("-3")  # 8 + 8 + 4 MiB parts
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []


async def test_s3_failed_multipart_put_is_aborted(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    with pytest.raises(Boom):
        await s3_store.put("f", failing_stream(blob(30 * MiB), fail_after=20 * MiB))
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []


async def test_s3_cancelled_multipart_put_is_aborted(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        piece = blob(MiB, seed=14)
        for i in range(10**6):
            if i == 12:
                started.set()  # a multipart upload is under way by now
            yield piece

    task = asyncio.create_task(s3_store.put("f", endless()))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    client = s3_server.client()
    for _ in range(50):  # the abort runs shielded, it may finish just after the task
        if not client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []):
            break
        await asyncio.sleep(0.1)
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    with pytest.raises(NotFound):
        await s3_store.head("f")


async def test_s3_list_paginates(s3_store: S3UnderStore) -> None:
    for i in range(7):
        await put(s3_store, f"d/f{i}", b"x")
        await s3_store.mkdir(f"d/sub{i}")
    raw = s3_store._raw

    async def small_pages(op: str, **kwargs: Any) -> Any:
        if op == "list_objects_v2" and "Delimiter" in kwargs:
            kwargs["MaxKeys"] = 3  # force ListObjectsV2 to paginate
        return await raw(op, **kwargs)

    s3_store._raw = small_pages  # type: ignore[method-assign]
    entries = await s3_store.list("d")
    assert [e.path for e in entries] == sorted(
        [f"d/f{i}" for i in range(7)] + [f"d/sub{i}" for i in range(7)]
    )


async def test_s3_file_shadows_same_named_prefix(
    s3_store: S3UnderStore, s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket.name, Key=f"{S3_PREFIX}/a", Body=b"file")
    client.put_object(Bucket=s3_bucket.name, Key=f"{S3_PREFIX}/a/child", Body=b"child")
    entries = await s3_store.list("")
    assert [(e.path, e.is_dir) for e in entries] == [("a", False)]
    assert not (await s3_store.head("a")).is_dir
    assert [e.path for e in await s3_store.list("a")] == ["a/child"]


async def test_s3_closed_store_refuses(s3_store: S3UnderStore) -> None:
    await put(s3_store, "f", b"x")
    await s3_store.close()
    with pytest.raises(UnderStoreError, match="closed"):
        await s3_store.head("f")
    await s3_store.close()  # idempotent


@pytest.fixture(scope="module")
def open_s3_server() -> Iterator[S3Server]:
    """A second server, without authentication (moto answers unsigned requests)."""
    server = s3server.start(auth=False)
    yield server
    server.stop()


async def test_s3_anonymous_sends_unsigned_requests(open_s3_server: S3Server) -> None:
    client = open_s3_server.client()
    client.create_bucket(Bucket="public-data")
    client.put_object(
        Bucket="public-data", Key="ds/train.csv", Body=b"a,b\n1,2\n", ACL="public-read"
    )
    store = open_understore(
        "s3://public-data/ds",
        {"endpoint": open_s3_server.endpoint, "anonymous": "true"},
    )
    open_s3_server.reset_counters()
    await store.check()
    assert [e.path for e in await store.list("")] == ["train.csv"]
    assert await store.read_all("train.csv", 4, 100) == b"1,2\n"
    await store.close()
    counters = open_s3_server.counters()
    assert counters["requests"] == counters["unsigned_requests"] >= 3


async def test_server_counters_reset(s3_server: S3Server, s3_bucket: S3Bucket) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket.name, Key="k", Body=b"12345")
    client.get_object(Bucket=s3_bucket.name, Key="k")["Body"].read()
    counters = s3_server.counters()
    assert counters["get_requests"][f"{s3_bucket.name}/k"] == 1
    assert counters["get_bytes"][f"{s3_bucket.name}/k"] == 5
    assert counters["requests"] >= 3
    s3_server.reset_counters()
    assert s3_server.counters()["get_requests"] == {}
