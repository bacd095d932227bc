"""Write-back in one node (meshd/writeback): acknowledged once on the node's disk, visible
at once, uploaded in the background, resumed after a restart, bounded by its budget.

Real stores (file://, the S3 endpoint); the front ends, crashes of a real process,
store outages and other regions are in test_writeback_frontends.py,
test_writeback_crash.py and test_writeback_regions.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.attrs import AttrChange
from meshd.config import from_dict
from meshd.errors import AlreadyExists, InvalidArgument, MountError, NoSpace
from meshd.writeback import Entry, Registry
from meshd.writeback.journal import is_pending_version
from tests.conftest_s3 import S3Bucket
from tests.nodeutil import NodeBox


async def chunks(data: bytes, n: int = 1 << 20) -> AsyncIterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i:i + n]


def rnd(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    h = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[NodeBox]:
    b = NodeBox(tmp_path / "node")
    b.open()
    yield b
    await b.close()


async def file_mount(box: NodeBox, tmp_path: Path, mode: str = "back") -> Path:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    assert box.node is not None
    await box.node.mounts.add("/m", f"file://{store}", {"write_mode": mode})
    return store


class Held:
    """A store whose uploads wait for ``gate`` (a slow store)."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self.inner, self.gate = inner, gate

    async def put_file(self, *a: Any, **kw: Any) -> Any:
        await self.gate.wait()
        return await self.inner.put_file(*a, **kw)

    async def abort_put(self, *a: Any, **kw: Any) -> None:
        await self.inner.abort_put(*a, **kw)


def hold_uploads(node: Any) -> asyncio.Event:
    """Make ``node``'s write-back uploads wait until the returned event is set."""
    gate = asyncio.Event()
    real = node.writeback.store_of

    def held(mount: str) -> Any:
        found = real(mount)
        return None if found is None else (found[0], Held(found[1], gate))

    node.writeback.store_of = held
    return gate


async def test_acknowledged_before_upload_visible_at_once_then_in_the_store(box: NodeBox, tmp_path: Path) -> None:
    store = await file_mount(box, tmp_path)
    node = box.node
    assert node is not None
    gate = hold_uploads(node)
    data = rnd(3 << 20)
    st = await node.write("/m/run/ckpt.bin", chunks(data))
    assert is_pending_version(st.version) and st.size == len(data)
    assert not (store / "run" / "ckpt.bin").exists()  # acknowledged, not uploaded
    assert (await node.stat("/m/run/ckpt.bin")).version == st.version
    assert [e.path for e in await node.listdir("/m")] == ["/m/run"]  # a directory the upload will make
    assert [(e.path, e.size) for e in await node.listdir("/m/run")] == [("/m/run/ckpt.bin", len(data))]
    assert await node.read_bytes("/m/run/ckpt.bin") == data
    assert await node.read_bytes("/m/run/ckpt.bin", 1000, 5000) == data[1000:6000]
    status = await node.writeback_status()
    assert status["pending_files"] == 1 and status["pending_bytes"] == len(data)
    gate.set()
    assert await node.writeback_flush("/m", True, 30) == 1
    assert (store / "run" / "ckpt.bin").read_bytes() == data
    after = await node.stat("/m/run/ckpt.bin")
    assert not is_pending_version(after.version)
    assert (after.size, after.mtime) == (st.size, st.mtime)  # the switch shows only in the version
    assert await node.read_bytes("/m/run/ckpt.bin") == data
    status = await node.writeback_status()
    assert status["pending_files"] == 0 and status["uploaded_files"] == 1 and status["budget_used"] == 0


async def test_s3_upload_is_multipart_with_parallel_parts_and_leaves_nothing(box: NodeBox, s3_bucket: S3Bucket) -> None:
    node = box.node
    assert node is not None
    await node.mounts.add("/s3", s3_bucket.uri("ck"), {**s3_bucket.options, "write_mode": "back"})
    data = rnd(21 << 20, 1)
    st = await node.write("/s3/step-100/model.pt", chunks(data), change=AttrChange(mode=0o640))
    assert is_pending_version(st.version)
    await node.writeback_flush("/s3", True, 60)
    c = boto(s3_bucket)
    got = c.get_object(Bucket=s3_bucket.name, Key="ck/step-100/model.pt")
    assert got["Body"].read() == data
    assert "-" in got["ETag"]  # a multipart upload (3 parts of 8 MiB)
    assert got["Metadata"].get("mode") in ("33184", "0640", "100640")  # the change went with it
    assert c.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert (await node.stat("/s3/step-100/model.pt")).version == got["ETag"].strip('"')


def boto(b: S3Bucket) -> Any:
    import boto3

    o = b.options
    return boto3.client("s3", endpoint_url=b.endpoint, region_name=o.get("region", "us-east-1"),
                        aws_access_key_id=o.get("access_key"), aws_secret_access_key=o.get("secret_key"))


async def test_rename_of_a_pending_file_uploads_under_the_new_name(box: NodeBox, tmp_path: Path) -> None:
    store = await file_mount(box, tmp_path)
    node = box.node
    assert node is not None
    await node.write("/m/ckpt.tmp", chunks(b"weights" * 1000))
    await node.rename("/m/ckpt.tmp", "/m/ckpt")
    assert is_pending_version((await node.stat("/m/ckpt")).version)
    assert await node.read_bytes("/m/ckpt") == b"weights" * 1000
    await node.writeback_flush("/m", True, 30)
    assert (store / "ckpt").read_bytes() == b"weights" * 1000
    assert not (store / "ckpt.tmp").exists()
    assert sorted(os.listdir(store)) == ["ckpt"]


async def test_delete_and_overwrite_of_a_pending_file_win(box: NodeBox, tmp_path: Path) -> None:
    store = await file_mount(box, tmp_path)
    node = box.node
    assert node is not None
    await node.write("/m/gone", chunks(b"a" * 100))
    await node.delete("/m/gone")
    await node.write("/m/replaced", chunks(b"old" * 100))
    await node.write("/m/replaced", chunks(b"new"), writeback=False)  # through: the pending one must not land over it
    await node.write("/m/twice", chunks(b"first" * 10))
    await node.write("/m/twice", chunks(b"second" * 10))
    await node.writeback_flush("/m", True, 30)
    assert not (store / "gone").exists()
    assert (store / "replaced").read_bytes() == b"new"
    assert (store / "twice").read_bytes() == b"second" * 10
    assert await node.read_bytes("/m/replaced") == b"new"
    assert (await node.writeback_status())["superseded"] >= 2


async def test_exclusive_create_sees_a_pending_file(box: NodeBox, tmp_path: Path) -> None:
    await file_mount(box, tmp_path)
    node = box.node
    assert node is not None
    await node.write("/m/lock", chunks(b"1"))
    with pytest.raises(AlreadyExists):
        await node.write("/m/lock", chunks(b"2"), exclusive=True)
    with pytest.raises(AlreadyExists):
        await node.write("/m/lock", chunks(b"2"), exclusive=True, writeback=False)
    await node.writeback_flush("/m", True, 30)
    assert await node.read_bytes("/m/lock") == b"1"


async def test_append_and_setattr_of_pending_files(box: NodeBox, tmp_path: Path) -> None:
    store = await file_mount(box, tmp_path)
    node = box.node
    assert node is not None
    await node.write("/m/log", chunks(b"one\n"))
    st = await node.append("/m/log", chunks(b"two\n"))
    assert is_pending_version(st.version)
    assert await node.read_bytes("/m/log") == b"one\ntwo\n"
    await node.setattr("/m/log", AttrChange(mode=0o600))  # waits for the upload, then chmods in the store
    assert (store / "log").read_bytes() == b"one\ntwo\n"
    assert (store / "log").stat().st_mode & 0o777 == 0o600


async def test_restart_resumes_uploads_from_the_journal(tmp_path: Path) -> None:
    box = NodeBox(tmp_path / "node")
    node = box.open()
    store = await file_mount(box, tmp_path)
    node.writeback.store_of = lambda _m: None  # type: ignore[union-attr]  # nothing can upload
    files = {f"/m/d{i}/f{i}": rnd(1000 * i + 1, i) for i in range(5)}
    for p, data in files.items():
        await node.write(p, chunks(data))
    assert not any(store.rglob("f*"))
    await box.close()  # the node goes away with its uploads pending
    node = box.open()
    await node.mounts.add("/m", f"file://{store}", {"write_mode": "back"}, replace=True)
    await node.writeback.start()  # type: ignore[union-attr]  # what the daemon's load does
    for p, data in files.items():
        assert await node.read_bytes(p) == data  # visible again at once, from the spool
    await node.writeback_flush("/m", True, 30)
    for p, data in files.items():
        assert (store / p[3:]).read_bytes() == data
    await box.close()


async def test_restart_aborts_the_interrupted_multipart_upload(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    box = NodeBox(tmp_path / "node")
    node = box.open()
    await node.mounts.add("/s3", s3_bucket.uri(), {**s3_bucket.options, "write_mode": "back"})
    node.writeback.store_of = lambda _m: None  # type: ignore[union-attr]
    data = rnd(17 << 20, 7)
    await node.write("/s3/big", chunks(data))
    # what a node killed half-way through the upload leaves: an upload id in the journal
    c = boto(s3_bucket)
    up = c.create_multipart_upload(Bucket=s3_bucket.name, Key="big")["UploadId"]
    c.upload_part(Bucket=s3_bucket.name, Key="big", UploadId=up, PartNumber=1, Body=b"x" * (5 << 20))
    wb = node.writeback
    assert wb is not None
    (entry,) = wb.entries.values()
    entry.token = up
    wb.journal.update(entry)
    await box.close()
    node = box.open()
    await node.mounts.add("/s3", s3_bucket.uri(), {**s3_bucket.options, "write_mode": "back"}, replace=True)
    await node.writeback.start()  # type: ignore[union-attr]
    await node.writeback_flush("/s3", True, 60)
    assert c.get_object(Bucket=s3_bucket.name, Key="big")["Body"].read() == data
    assert c.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    await box.close()


async def test_a_full_budget_makes_writers_wait_not_fail(tmp_path: Path) -> None:
    box = NodeBox(tmp_path / "node")
    box.config = dataclasses.replace(box.config, writeback=dataclasses.replace(box.config.writeback,
                                                                                 budget=6 << 20))
    node = box.open()
    store = await file_mount(box, tmp_path)
    gate = hold_uploads(node)
    await node.write("/m/a", chunks(rnd(5 << 20, 1)))  # 5 of 6 MiB
    third = asyncio.ensure_future(node.write("/m/b", chunks(rnd(5 << 20, 2))))
    for _ in range(50):
        await asyncio.sleep(0.02)
    assert not third.done()  # waiting for room, not failed
    status = await node.writeback_status()
    assert status["writers_waiting"] == 1 and status["budget_used"] <= 6 << 20
    gate.set()
    st = await asyncio.wait_for(third, 30)
    assert is_pending_version(st.version) or st.size == 5 << 20
    await node.writeback_flush("/m", True, 30)
    assert (store / "b").read_bytes() == rnd(5 << 20, 2)
    assert (await node.writeback_status())["budget_used"] == 0
    await box.close()


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system for the spool (tmpfs: CI runs as root)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], check=True)
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=False)


async def test_a_full_spool_disk_is_enospc_and_leaves_nothing(tmp_path: Path, small_spool: Path) -> None:
    box = NodeBox(tmp_path / "node")
    box.config = dataclasses.replace(box.config, writeback=dataclasses.replace(box.config.writeback,
                                                                                 dir=str(small_spool)))
    node = box.open()
    store = await file_mount(box, tmp_path)
    try:
        with pytest.raises(NoSpace, match="no space left"):
            await node.write("/m/huge", chunks(rnd(4 << 20)))
        assert os.listdir(small_spool) == []
        assert (await node.writeback_status())["budget_used"] == 0
        with pytest.raises(NoSpace):  # told before any byte is sent when the length is known
            await node.write("/m/huge", chunks(rnd(4 << 20)), size_hint=4 << 20)
        await node.write("/m/small", chunks(b"fits"))  # the disk is usable again at once
        await node.writeback_flush("/m", True, 30)
        assert (store / "small").read_bytes() == b"fits" and not (store / "huge").exists()
    finally:
        await box.close()


def test_registry_keeps_the_latest_acknowledged_write_of_a_path() -> None:
    r = Registry()

    def e(eid: str, path: str, created: float) -> Entry:
        return Entry(eid, path, "/m", path[3:], 1, 0.0, "n1", "r", "", created)

    asyncio.run(r.publish(e("2", "/m/a/b/x", 2.0)))
    asyncio.run(r.publish(e("1", "/m/a/b/x", 1.0)))  # older news of the same path arrives late
    assert r.get("/m/a/b/x").id == "2"  # type: ignore[union-attr]
    assert r.has_dir("/m/a") and r.has_dir("/m/a/b") and not r.has_dir("/m/a/b/x")
    assert r.subdirs("/m") == ["a"] and r.subdirs("/m/a") == ["b"]
    asyncio.run(r.unpublish(e("1", "/m/a/b/x", 1.0)))  # not the current one: nothing happens
    assert r.get("/m/a/b/x") is not None
    asyncio.run(r.unpublish(e("2", "/m/a/b/x", 2.0)))
    assert r.get("/m/a/b/x") is None and not r.has_dir("/m/a") and r.subdirs("/m") == []


def test_config_and_mount_option() -> None:
    cfg = from_dict({"writeback": {"budget": "64MiB", "parallel": 2, "parts": 8, "retain": 0}})
    assert (cfg.writeback.budget, cfg.writeback.parallel, cfg.writeback.parts) == (64 << 20, 2, 8)
    with pytest.raises(InvalidArgument, match=r"writeback\.parallel"):
        from_dict({"writeback": {"parallel": 0}})
    with pytest.raises(InvalidArgument, match="unknown key"):
        from_dict({"writeback": {"budjet": 1}})
    from meshd.metadata.mounts import validate

    assert validate("/m", "file:///tmp", {"write_mode": "back"}).write_back
    assert not validate("/m", "file:///tmp", {}).write_back
    with pytest.raises(MountError, match="write_mode"):
        validate("/m", "file:///tmp", {"write_mode": "later"})


async def test_replicas_that_cannot_be_placed_refuse_the_write(tmp_path: Path) -> None:
    box = NodeBox(tmp_path / "node")
    box.config = dataclasses.replace(box.config, writeback=dataclasses.replace(box.config.writeback, replicas=2))
    node = box.open()
    store = await file_mount(box, tmp_path)
    try:
        from meshd.errors import NodeUnavailable

        with pytest.raises(NodeUnavailable, match="replicas"):  # a node alone holds no second copy
            await node.write("/m/x", chunks(b"data"))
        assert os.listdir(tmp_path / "node" / "writeback") == []
        assert (await node.writeback_status())["budget_used"] == 0
        await node.write("/m/x", chunks(b"data"), writeback=False)  # write-through still works
        assert (store / "x").read_bytes() == b"data"
    finally:
        await box.close()


async def test_a_newer_acknowledged_write_by_another_node_is_not_overwritten(box: NodeBox, tmp_path: Path) -> None:
    store = await file_mount(box, tmp_path)
    node = box.node
    assert node is not None and node.writeback is not None
    wb = node.writeback
    real = wb.store_of
    wb.store_of = lambda _m: None  # the first attempt fails: the upload waits for its retry
    await node.write("/m/shared", chunks(b"older"))
    (mine,) = wb.entries.values()
    # meanwhile another node acknowledged a newer write of the same path
    await wb.registry.publish(Entry("1" * 24, "/m/shared", "/m", "shared", 5, 0.0, "other-node", "r", "",
                                    mine.created + 1))
    wb.store_of = real
    for _ in range(100):
        if not wb.entries:
            break
        await asyncio.sleep(0.05)
    assert not wb.entries and wb.superseded == 1  # dropped at its retry, never uploaded
    assert not (store / "shared").exists()
    assert wb.journal.entries() == []


async def test_a_reader_pinned_to_the_pending_version_reads_it_across_the_switch(box: NodeBox, tmp_path: Path) -> None:
    await file_mount(box, tmp_path)
    node = box.node
    assert node is not None and node.writeback is not None
    wb = node.writeback
    data = rnd(2 << 20, 3)
    st = await node.write("/m/f", chunks(data))
    handle = await node.open("/m/f")  # pinned to the pending version
    landing = asyncio.Event()
    real = wb.registry.unpublish

    async def slow(e: Entry) -> None:  # the upload has landed; its entry is being unpublished
        landing.set()
        await asyncio.sleep(0.3)
        await real(e)

    wb.registry.unpublish = slow  # type: ignore[method-assign]

    async def read_all() -> bytes:
        stream = await handle.read(0, -1)
        out = []
        async for seg in stream.segments:
            out.append(seg.bytes())
            seg.close()
        return b"".join(out)

    await asyncio.wait_for(landing.wait(), 30)  # (landing dropped the pending version's cached pages)
    assert await read_all() == data  # in the middle of the switch
    await node.writeback_flush("/m", True, 30)
    assert (await node.stat("/m/f")).version != st.version
    assert await read_all() == data  # after it, from the retained spool


async def test_a_reader_pinned_to_the_pending_version_goes_on_at_the_store_version_once_the_spool_is_gone(
        box: NodeBox, tmp_path: Path) -> None:
    """``retain: 0``: the spool goes the moment the upload lands. A handle pinned to the
    pending version then reads the same bytes at the store's version, not VersionChanged."""
    await file_mount(box, tmp_path)
    node = box.node
    assert node is not None and node.writeback is not None
    wb = node.writeback
    wb.config = dataclasses.replace(wb.config, retain=0)
    data = rnd(3 << 20, 4)
    st = await node.write("/m/f", chunks(data))
    handle = await node.open("/m/f")
    assert handle.status.version == st.version and is_pending_version(st.version)
    stream = await handle.read(0, -1)  # its first bytes come from the spool ...
    segments = stream.segments.__aiter__()
    first = await segments.__anext__()
    out = [first.bytes()]
    first.close()
    await node.writeback_flush("/m", True, 30)  # ... then the upload lands
    await asyncio.sleep(0.1)  # the retirement (call_later(0)) has run
    assert not [p for p in (box.root / "writeback").iterdir() if p.is_file()], "the spool was kept"
    assert st.version in wb.switched
    async for seg in segments:
        out.append(seg.bytes())
        seg.close()
    assert b"".join(out) == data  # the rest at the store's version: the same bytes, not cut
