"""File attributes on s3:// under-stores: object user metadata in s3fs-fuse's and rclone's
conventions (x-amz-meta-mode/-uid/-gid/-mtime/-atime/-ctime/-rdev, mesh-<name> extras),
symlinks and special files as s3fs writes them, server-side copy, truncate and rename.
Against a real S3 endpoint (moto in a subprocess, tests/s3server.py); what our writes put
on the wire is checked with a plain boto3 client, as s3fs or rclone would read it."""

from __future__ import annotations

# The S3 fixtures are imported and then used as test parameters.
# ruff: noqa: F811
import asyncio
import errno
import stat
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshd.attrs import AttrChange, Attrs
from meshd.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    MountError,
    NotADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    VersionChanged,
)
from meshd.metadata.kv import MemoryKV
from meshd.metadata.shard import FileStatus, MetadataCache
from meshd.understore import ObjectInfo
from meshd.understore import s3 as s3mod
from meshd.understore.s3 import S3UnderStore
from tests.conftest_s3 import S3Bucket, s3_bucket, s3_server  # noqa: F401 (fixtures)

MiB = 1 << 20
PREFIX = "mnt"


async def chunks(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
    if not data:
        yield b""


def blob(n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


@pytest.fixture
async def store(s3_bucket: S3Bucket) -> AsyncIterator[S3UnderStore]:
    s = S3UnderStore(s3_bucket.uri(PREFIX), s3_bucket.options)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def raw(s3_server: Any, s3_bucket: S3Bucket) -> Any:
    """A plain boto3 client on the bucket (what s3fs or rclone would see)."""
    client = s3_server.client()
    yield client
    client.close()


def key(path: str) -> str:
    return f"{PREFIX}/{path}" if path else f"{PREFIX}/"


def meta_of(raw: Any, bucket: S3Bucket, path: str) -> dict[str, str]:
    return dict(raw.head_object(Bucket=bucket.name, Key=key(path))["Metadata"])


# --------------------------------------------------------------------------- the conventions


async def test_put_writes_s3fs_metadata(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    change = AttrChange(mode=0o640, uid=1001, gid=1002, mtime=1700000000.123456789, extra={"color": "blå"})
    before = time.time()
    info = await store.put("a.txt", chunks(b"hello"), change=change)
    meta = meta_of(raw, s3_bucket, "a.txt")
    assert meta["mode"] == str(stat.S_IFREG | 0o640) == "33184"  # s3fs: the whole st_mode, decimal
    assert (meta["uid"], meta["gid"]) == ("1001", "1002")
    assert meta["mtime"].startswith("1700000000.12345") and len(meta["mtime"].split(".")[1]) == 9
    assert float(meta["ctime"]) >= before - 1
    assert meta["mesh-color"] == "bl%C3%A5"  # percent-encoded UTF-8: S3 metadata is ASCII
    assert info.attrs is not None and info.attrs.mode == 0o100640 and info.mtime == pytest.approx(1700000000.1234567)
    head = await store.head("a.txt")
    assert head.attrs == Attrs(0o100640, 1001, 1002, None, head.attrs.ctime if head.attrs else 0, extra={"color": "blå"})
    assert head.mtime == pytest.approx(1700000000.1234567) and head.version == info.version and head.size == 5


async def test_reads_s3fs_and_rclone_metadata(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    # s3fs-fuse: decimal st_mode, integer seconds
    raw.put_object(Bucket=s3_bucket.name, Key=key("s3fs"), Body=b"x", Metadata={
        "mode": "33261", "uid": "1000", "gid": "100", "mtime": "1600000000", "atime": "1600000001",
        "ctime": "1600000002"})
    # rclone: octal st_mode with a leading 0, fractional seconds
    raw.put_object(Bucket=s3_bucket.name, Key=key("rclone"), Body=b"yy", Metadata={
        "mode": "0100600", "uid": "0", "gid": "0", "mtime": "1650000000.5", "atime": "1650000001.25"})
    # permission bits only, unreadable values and no metadata at all
    raw.put_object(Bucket=s3_bucket.name, Key=key("bare"), Body=b"", Metadata={"mode": "420", "uid": "x"})
    raw.put_object(Bucket=s3_bucket.name, Key=key("none"), Body=b"z")
    a = await store.head("s3fs")
    assert a.attrs == Attrs(0o100755, 1000, 100, 1600000001.0, 1600000002.0)
    assert a.mtime == 1600000000.0
    b = await store.head("rclone")
    assert b.attrs == Attrs(0o100600, 0, 0, 1650000001.25, None) and b.mtime == 1650000000.5
    c = await store.head("bare")
    assert c.attrs == Attrs(stat.S_IFREG | 0o644, None, None)
    d = await store.head("none")
    assert d.attrs == Attrs() and d.mtime > 0  # LastModified
    # a listing has no metadata: not fetched
    listed = {i.path: i for i in await store.list("")}
    assert set(listed) == {"s3fs", "rclone", "bare", "none"}
    assert all(i.attrs is None for i in listed.values())


async def test_capabilities_and_options(s3_bucket: S3Bucket) -> None:
    s = S3UnderStore(s3_bucket.uri(PREFIX), s3_bucket.options)
    caps = s.capabilities
    assert (caps.attrs, caps.symlinks, caps.special, caps.links, caps.rename) == (True, True, True, False, True)
    refuse = S3UnderStore(s3_bucket.uri(PREFIX), {**s3_bucket.options, "rename": "refuse"})
    assert refuse.capabilities.rename is False
    with pytest.raises(NotSupported, match="rename=copy"):
        await refuse.rename("a", "b")
    with pytest.raises(MountError, match="copy or refuse"):
        S3UnderStore(s3_bucket.uri(PREFIX), {**s3_bucket.options, "rename": "atomic"})
    with pytest.raises(NotPermitted):
        await s.link("a", "b")
    await s.close()
    await refuse.close()


async def test_extra_names_must_be_lower_case(store: S3UnderStore) -> None:
    with pytest.raises(InvalidArgument, match="lower-case"):
        await store.put("x", chunks(b"1"), change=AttrChange(mode=0o644, uid=1, gid=1, extra={"Color": "red"}))
    with pytest.raises(NotFound):
        await store.head("x")  # refused before anything was written


# --------------------------------------------------------------------------- put


async def test_replacing_put_keeps_mode_and_owner(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    await store.put("f", chunks(b"one"), change=AttrChange(mode=0o600, uid=7, gid=8, extra={"k": "v"}))
    await store.put("f", chunks(b"3"), change=AttrChange(mtime=1234.5))  # partial change: the rest kept
    head = await store.head("f")
    assert head.attrs is not None and (head.attrs.mode, head.attrs.uid, head.attrs.extra) == (0o100600, 7, {"k": "v"})
    assert head.mtime == 1234.5
    info = await store.put("f", chunks(b"two!"))  # no change (an S3 PUT): S3's rule, a new object
    assert info.attrs is not None and (info.attrs.mode, info.attrs.uid, info.attrs.gid) == (None, None, None)
    assert "mode" not in meta_of(raw, s3_bucket, "f")


async def test_failed_replacing_put_leaves_the_old_object(store: S3UnderStore) -> None:
    await store.put("f", chunks(b"old"), change=AttrChange(mode=0o600, uid=7, gid=8))

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * MiB
        raise ConnectionResetError("client went away")

    for _ in range(2):  # failing before and after the HEAD the write makes for the old mode
        with pytest.raises(ConnectionResetError):
            await store.put("f", broken())
        await asyncio.sleep(0.2)
    head = await store.head("f")
    assert head.size == 3 and head.attrs is not None and head.attrs.mode == 0o100600


async def test_exclusive_put(store: S3UnderStore) -> None:
    await store.put("e", chunks(b"first"), exclusive=True)
    with pytest.raises(AlreadyExists):
        await store.put("e", chunks(b"second"), exclusive=True)
    assert await store.read_all("e", 0, 100) == b"first"


async def test_exclusive_put_race(store: S3UnderStore) -> None:
    """Many creators at once (all pass any HEAD first): If-None-Match lets one win."""
    store._conditional = True  # as on AWS: no HEAD first, the condition alone decides

    async def create(i: int) -> int | None:
        try:
            await store.put("race", chunks(f"writer {i}".encode()), exclusive=True)
        except AlreadyExists:
            return None
        return i

    results = await asyncio.gather(*(create(i) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.read_all("race", 0, 100) == f"writer {winners[0]}".encode()


async def test_exclusive_multipart_put(store: S3UnderStore) -> None:
    store._conditional = True
    data = blob(17 * MiB)  # three parts
    await store.put("big", chunks(data), exclusive=True)
    with pytest.raises(AlreadyExists):
        await store.put("big", chunks(data), exclusive=True)
    assert not await asyncio.to_thread(lambda: store._get_client().list_multipart_uploads(
        Bucket=store.bucket).get("Uploads"))  # the refused upload was aborted


# --------------------------------------------------------------------------- setattr


async def test_setattr_file(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    raw.put_object(Bucket=s3_bucket.name, Key=key("f"), Body=b"data", ContentType="text/csv",
                   Metadata={"mode": "33188", "uid": "1", "gid": "2", "md5chksum": "abc"})
    before = await store.head("f")
    info = await store.setattr("f", AttrChange(mode=0o711, uid=5, atime=100.0, mtime=200.0, extra={"tag": "x y"}))
    assert info.attrs is not None
    assert (info.attrs.mode, info.attrs.uid, info.attrs.gid, info.attrs.atime) == (0o100711, 5, 2, 100.0)
    assert info.attrs.extra == {"tag": "x y"} and info.mtime == 200.0 and info.size == 4
    assert info.version == before.version  # same bytes
    h = raw.head_object(Bucket=s3_bucket.name, Key=key("f"))
    assert h["ContentType"] == "text/csv"
    assert h["Metadata"]["md5chksum"] == "abc"  # another tool's metadata is kept
    assert h["Metadata"]["mode"] == "33225"
    assert await store.read_all("f", 0, 10) == b"data"
    # removing an extra attribute
    info = await store.setattr("f", AttrChange(extra={"tag": None}))
    assert info.attrs is not None and info.attrs.extra == {} and info.attrs.uid == 5


async def test_setattr_directory_and_root(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket,
                                          ) -> None:
    await store.put("d/inner", chunks(b"1"))  # a prefix without a marker
    d = await store.head("d")
    assert d.is_dir and d.attrs == Attrs()
    info = await store.setattr("d", AttrChange(uid=42))  # creates the marker, mode 755 by default
    assert info.is_dir and info.attrs is not None and (info.attrs.mode, info.attrs.uid) == (0o40755, 42)
    assert meta_of(raw, s3_bucket, "d/")["mode"] == str(0o40755)
    info = await store.setattr("d", AttrChange(mode=0o700))
    assert info.attrs is not None and (info.attrs.mode, info.attrs.uid) == (0o40700, 42)
    assert [i.path for i in await store.list("d")] == ["d/inner"]
    with pytest.raises(NotFound):
        await store.setattr("missing", AttrChange(mode=0o600))
    # a prefixed mount's root keeps them in its marker; a whole bucket's root cannot
    root = await store.setattr("", AttrChange(mode=0o750))
    assert root.attrs is not None and root.attrs.mode == 0o40750
    assert (await store.head("")).attrs == root.attrs
    whole = S3UnderStore(s3_bucket.uri(), s3_bucket.options)
    with pytest.raises(NotSupported, match="root"):
        await whole.setattr("", AttrChange(mode=0o755))
    await whole.close()


async def test_setattr_large_object_by_part_copy(store: S3UnderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "COPY_LIMIT", 6 * MiB)  # above it: UploadPartCopy, as above 5 GiB
    monkeypatch.setattr(s3mod, "COPY_PART", 5 * MiB)
    data = blob(12 * MiB + 5)
    await store.put("big", chunks(data), change=AttrChange(mode=0o644, uid=1, gid=1))
    info = await store.setattr("big", AttrChange(mode=0o600))
    assert info.attrs is not None and info.attrs.mode == 0o100600 and info.size == len(data)
    assert await store.read_all("big", 0, len(data)) == data


# --------------------------------------------------------------------------- mkdir, symlink, mknod


async def test_mkdir_marker_carries_attrs(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    await store.mkdir("dir", AttrChange(mode=0o750, uid=3, gid=4, mtime=500.0))
    meta = meta_of(raw, s3_bucket, "dir/")
    assert (meta["mode"], meta["uid"], meta["gid"], meta["mtime"]) == (str(0o40750), "3", "4", "500.000000000")
    info = await store.head("dir")
    assert info.is_dir and info.attrs is not None and info.attrs.mode == 0o40750 and info.mtime == 500.0
    await store.mkdir("dir", AttrChange(mode=0o777))  # existing: not an error, attributes kept
    assert meta_of(raw, s3_bucket, "dir/")["mode"] == str(0o40750)
    await store.mkdir("plain")
    assert meta_of(raw, s3_bucket, "plain/")["mode"] == str(0o40755)


async def test_symlink_as_s3fs_writes_it(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    info = await store.symlink("ln", "../some/target ✓", AttrChange(uid=9, gid=9))
    obj = raw.get_object(Bucket=s3_bucket.name, Key=key("ln"))
    assert obj["Body"].read() == "../some/target ✓".encode()
    assert obj["Metadata"]["mode"] == str(stat.S_IFLNK | 0o777) == "41471"
    assert info.attrs is not None and info.attrs.target == "../some/target ✓"
    head = await store.head("ln")
    assert head.attrs is not None and head.attrs.is_symlink and head.attrs.target == "../some/target ✓"
    assert (head.attrs.mode, head.attrs.uid) == (0o120777, 9)
    with pytest.raises(AlreadyExists):
        await store.symlink("ln", "other")
    await store.mkdir("d")
    with pytest.raises(AlreadyExists):
        await store.symlink("d", "other")
    # one s3fs made
    raw.put_object(Bucket=s3_bucket.name, Key=key("s3fs-link"), Body=b"/etc/hosts", Metadata={"mode": "41471"})
    other = await store.head("s3fs-link")
    assert other.attrs is not None and other.attrs.target == "/etc/hosts"


async def test_mknod(store: S3UnderStore, raw: Any, s3_bucket: S3Bucket) -> None:
    fifo = await store.mknod("fifo", stat.S_IFIFO | 0o600)
    assert fifo.attrs is not None and fifo.attrs.is_special and fifo.size == 0
    dev = await store.mknod("dev", stat.S_IFCHR | 0o660, rdev=(4 << 8) | 1)
    assert dev.attrs is not None and dev.attrs.rdev == (4 << 8) | 1
    meta = meta_of(raw, s3_bucket, "dev")
    assert (meta["mode"], meta["rdev"]) == (str(stat.S_IFCHR | 0o660), str((4 << 8) | 1))
    head = await store.head("dev")
    assert head.attrs is not None and head.attrs.mode == stat.S_IFCHR | 0o660 and head.attrs.rdev == 1025
    with pytest.raises(AlreadyExists):
        await store.mknod("fifo", stat.S_IFIFO | 0o600)
    with pytest.raises(InvalidArgument):
        await store.mknod("x", stat.S_IFDIR | 0o755)


# --------------------------------------------------------------------------- copy, truncate


async def test_copy_keeps_metadata(store: S3UnderStore) -> None:
    src = await store.put("src", chunks(b"payload"), change=AttrChange(mode=0o604, uid=11, gid=12, mtime=99.0))
    info = await store.copy("src", "dir/dst", src.version)
    assert info.path == "dir/dst" and info.size == 7 and info.attrs is not None and info.attrs.uid == 11
    head = await store.head("dir/dst")
    assert head.attrs is not None and (head.attrs.mode, head.attrs.uid, head.mtime) == (0o100604, 11, 99.0)
    assert await store.read_all("dir/dst", 0, 100) == b"payload"
    with pytest.raises(VersionChanged):
        await store.copy("src", "x", "0" * 32)
    with pytest.raises(IsADirectory):
        await store.copy("dir", "y")
    with pytest.raises(NotFound):
        await store.copy("nothing", "y")


async def test_truncate_small(store: S3UnderStore) -> None:
    await store.put("t", chunks(b"0123456789"), change=AttrChange(mode=0o640, uid=5, gid=6, mtime=10.0))
    info = await store.truncate("t", 4)
    assert info.size == 4 and await store.read_all("t", 0, 100) == b"0123"
    head = await store.head("t")
    assert head.attrs is not None and (head.attrs.mode, head.attrs.uid) == (0o100640, 5) and head.mtime > 10.0
    await store.truncate("t", 8)
    assert await store.read_all("t", 0, 100) == b"0123\0\0\0\0"
    v = (await store.head("t")).version
    await store.truncate("t", 0, v)
    empty = await store.head("t")
    assert empty.size == 0 and empty.attrs is not None and empty.attrs.uid == 5
    with pytest.raises(VersionChanged):
        await store.truncate("t", 3, v)


async def test_truncate_large_server_side(store: S3UnderStore, s3_server: Any, s3_bucket: S3Bucket) -> None:
    data = blob(13 * MiB)
    await store.put("big", chunks(data), change=AttrChange(mode=0o600, uid=1, gid=2))
    s3_server.reset_counters()
    down = await store.truncate("big", 6 * MiB + 3)
    assert down.size == 6 * MiB + 3
    # the kept bytes were copied inside S3, not read back through the mesh
    assert s3_server.get_bytes(s3_bucket.name, key("big")) == 0
    up = await store.truncate("big", 15 * MiB)
    assert s3_server.get_bytes(s3_bucket.name, key("big")) == 0
    got = await store.read_all("big", 0, 20 * MiB)
    assert s3_server.get_bytes(s3_bucket.name, key("big")) == 15 * MiB  # (the counter counts)
    assert got == data[:6 * MiB + 3] + bytes(15 * MiB - (6 * MiB + 3))
    head = await store.head("big")
    assert head.version == up.version and head.attrs is not None and head.attrs.mode == 0o100600


# --------------------------------------------------------------------------- rename


async def test_rename_file(store: S3UnderStore) -> None:
    await store.put("a", chunks(b"A"), change=AttrChange(mode=0o600, uid=3, gid=3, mtime=77.0))
    await store.rename("a", "sub/b")
    with pytest.raises(NotFound):
        await store.head("a")
    b = await store.head("sub/b")
    assert b.attrs is not None and (b.attrs.mode, b.attrs.uid, b.mtime) == (0o100600, 3, 77.0)
    await store.mkdir("d")
    with pytest.raises(IsADirectory):
        await store.rename("sub/b", "d")
    with pytest.raises(NotFound):
        await store.rename("nothing", "x")


async def test_rename_directory(store: S3UnderStore) -> None:
    await store.mkdir("src", AttrChange(mode=0o711))
    for p in ("src/a", "src/b/c", "src/b/d"):
        await store.put(p, chunks(p.encode()))
    await store.mkdir("src/empty")
    await store.rename("src", "dst")
    with pytest.raises(NotFound):
        await store.head("src")
    assert [i.path for i in await store.list("dst")] == ["dst/a", "dst/b", "dst/empty"]
    assert await store.read_all("dst/b/d", 0, 100) == b"src/b/d"
    d = await store.head("dst")
    assert d.attrs is not None and d.attrs.mode == 0o40711
    await store.put("other/x", chunks(b"x"))
    with pytest.raises(DirectoryNotEmpty):
        await store.rename("dst", "other")
    with pytest.raises(NotADirectory):
        await store.rename("dst", "other/x")
    with pytest.raises(InvalidArgument):
        await store.rename("dst", "dst/inside")


# --------------------------------------------------------------------------- the metadata shard


def test_listing_keeps_attributes_a_head_learnt() -> None:
    cache = MetadataCache(MemoryKV())
    attrs = Attrs(0o100600, 1, 2)
    cache.record_many([FileStatus("/m/d/a", 3, 50.0, "v1", False, 1.0, attrs),
                       FileStatus("/m/d/b", 3, 50.0, "v1", False, 1.0, attrs)])
    listed = [ObjectInfo("d/a", 3, 60.0, "v1"), ObjectInfo("d/b", 4, 60.0, "v2"), ObjectInfo("d/c", 1, 60.0, "v3")]
    out = {s.path: s for s in cache._store_listing("/m/d", listed, 2.0, True)}
    assert out["/m/d/a"].attrs == attrs and out["/m/d/a"].mtime == 50.0  # same version: kept
    assert out["/m/d/b"].attrs is None and out["/m/d/b"].mtime == 60.0  # a new version: not
    assert out["/m/d/c"].attrs is None
    stored = cache.cached_status("/m/d/a")
    assert stored is not None and stored.attrs == attrs and stored.fetched_at == 2.0
    b = cache.cached_status("/m/d/b")
    assert b is not None and b.attrs is None
    # a listing's owner handing children over (a cluster): the same
    cache.record_many([FileStatus("/m/d/a", 3, 60.0, "v1", False, 3.0)])
    again = cache.cached_status("/m/d/a")
    assert again is not None and again.attrs == attrs


async def test_a_key_past_s3s_limit_is_enametoolong(store: S3UnderStore) -> None:
    """S3 keys are at most 1,024 bytes: a longer mesh path below an s3:// mount is
    ENAMETOOLONG before any request (pjdfstest's PATH_MAX paths; docs/SEMANTICS.md)."""
    from meshd.errors import NameTooLong

    deep = "/".join(["d" * 200] * 6)  # 1,205 bytes
    with pytest.raises(NameTooLong) as e:
        await store.put(deep, chunks(b"x"))
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(NameTooLong):
        await store.head(deep)
    await store.put("/".join(["d" * 200] * 5), chunks(b"fits"))  # 1,004 bytes: fine
