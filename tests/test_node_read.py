"""The read path of the node core, in process, over a real local directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.core.node import MeshNode
from meshd.errors import IsADirectory, NotFound
from meshd.understore.posix import PosixUnderStore
from tests.nodeutil import NodeBox

PS = 64 << 10


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[NodeBox]:
    store = tmp_path / "store"
    store.mkdir()
    b = NodeBox(tmp_path / "node", page_size=PS)
    node = b.open()
    await node.mounts.add("/data", f"file://{store}", {})
    b.store_dir = store  # type: ignore[attr-defined]
    yield b
    await b.close()


def put(box: NodeBox, name: str, data: bytes) -> None:
    p = box.store_dir / name  # type: ignore[attr-defined]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


async def test_cold_warm_and_ranges_at_page_boundaries(box: NodeBox) -> None:
    data = os.urandom(5 * PS + 123)
    put(box, "f.bin", data)
    node = box.node
    assert node is not None
    assert await node.read_bytes("/data/f.bin") == data
    cold_gets = box.gets()
    assert box.stats.page_fetches == 6  # each page fetched once...
    assert box.stats.understore_bytes["file"] == len(data)  # ...and no byte twice
    assert 1 <= cold_gets <= 6  # consecutive missing pages coalesce into one request
    assert await node.read_bytes("/data/f.bin") == data
    assert box.gets() == cold_gets  # warm: no under-store traffic
    for off, ln in [(0, PS), (PS - 1, 2), (PS, PS), (2 * PS - 1, PS + 2), (5 * PS, 123),
                    (5 * PS + 122, 10), (0, 0), (len(data), 5), (len(data) + 10, 1), (3, -1)]:
        want = data[off:] if ln < 0 else data[off:off + ln]
        assert await node.read_bytes("/data/f.bin", off, ln) == want, (off, ln)
    assert box.stats.bytes_by_source["memory"] > 0


async def test_empty_file_and_directory(box: NodeBox) -> None:
    put(box, "empty", b"")
    put(box, "d/x", b"x")
    node = box.node
    assert node is not None
    assert await node.read_bytes("/data/empty") == b""
    assert box.gets() == 0
    with pytest.raises(IsADirectory):
        await node.read_bytes("/data/d")
    with pytest.raises(NotFound):
        await node.read_bytes("/data/missing")
    names = [s.path for s in await node.listdir("/data")]
    assert names == ["/data/d", "/data/empty"]
    assert [s.path for s in await node.listdir("/")] == ["/data"]


async def test_changed_object_is_never_served_stale(box: NodeBox) -> None:
    node = box.node
    assert node is not None
    put(box, "f", b"A" * (3 * PS))
    assert await node.read_bytes("/data/f") == b"A" * (3 * PS)
    p = box.store_dir / "f"  # type: ignore[attr-defined]
    p.write_bytes(b"B" * (3 * PS))
    os.utime(p, ns=(1, 10**18))  # make sure mtime differs even on coarse clocks
    assert await node.read_bytes("/data/f") == b"B" * (3 * PS)
    await box.cache.drain()
    # old version's pages were dropped eagerly
    assert box.cache.disk.stats.pages == 3


async def test_file_larger_than_the_cache(tmp_path: Path) -> None:
    store = tmp_path / "s"
    store.mkdir()
    b = NodeBox(tmp_path / "n", page_size=PS, memory=4 * PS, disk=8 * PS)
    node = b.open()
    try:
        await node.mounts.add("/d", f"file://{store}", {})
        data = os.urandom(40 * PS + 7)
        (store / "big").write_bytes(data)
        assert sha(await node.read_bytes("/d/big")) == sha(data)
        await b.cache.drain()
        assert b.cache.disk.stats.used <= 8 * PS
        assert b.cache.memory.stats.used <= 4 * PS
        assert b.cache.disk.stats.evicted_pages > 0
    finally:
        await b.close()


async def test_restart_reuses_pages_and_metadata(box: NodeBox) -> None:
    data = os.urandom(4 * PS)
    put(box, "f", data)
    assert box.node is not None
    await box.node.mounts.add("/data", box.node.mounts.entries()[0].uri, {"sync_interval": "-1"}, replace=True)
    assert await box.node.read_bytes("/data/f") == data
    node = await box.reopen()
    assert [m.path for m in node.mounts.entries()] == ["/data"]  # mount table persisted
    assert await node.read_bytes("/data/f") == data
    assert box.gets() == 0  # pages came from disk, verified by checksum
    assert box.stats.understore_requests == {}  # metadata too (sync_interval=-1)
    assert box.stats.bytes_by_source["disk"] == len(data)


async def test_corrupt_page_is_a_miss(box: NodeBox) -> None:
    data = os.urandom(2 * PS)
    put(box, "f", data)
    assert box.node is not None
    assert await box.node.read_bytes("/data/f") == data
    node = await box.reopen()
    pages = sorted(Path(box.cache.disk.root).rglob("*_0_*"))
    assert len(pages) == 1
    raw = bytearray(pages[0].read_bytes())
    raw[100] ^= 0xFF
    pages[0].write_bytes(bytes(raw))
    assert await node.read_bytes("/data/f") == data
    assert box.cache.disk.corrupt_pages == 1
    assert box.gets() == 1  # only the corrupt page was fetched again


async def test_truncated_page_file_is_a_miss(box: NodeBox) -> None:
    data = os.urandom(PS)
    put(box, "f", data)
    assert box.node is not None
    await box.node.read_bytes("/data/f")
    node = await box.reopen()
    (page,) = Path(box.cache.disk.root).rglob("*_0_*")
    page.write_bytes(page.read_bytes()[:10])
    assert await node.read_bytes("/data/f") == data
    assert box.cache.disk.corrupt_pages == 1


async def test_nocache_read_fills_no_tier(box: NodeBox) -> None:
    data = os.urandom(3 * PS)
    put(box, "f", data)
    node = box.node
    assert node is not None
    assert await node.read_bytes("/data/f", 10, PS, nocache=True) == data[10:10 + PS]
    await box.cache.drain()
    assert box.cache.memory.stats.pages == 0 and box.cache.disk.stats.pages == 0
    assert box.stats.bytes_by_source["nocache"] == PS


class GatedStore(PosixUnderStore):
    """Page 0 flows; every later page fetch waits until the test opens the gate."""

    gate: asyncio.Event

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        if start > 0:
            await self.gate.wait()
        return await super().read_all(path, start, end, version)

    async def get_range(self, path: str, start: int, end: int,  # type: ignore[override]
                        version: str | None = None) -> AsyncIterator[bytes]:
        if start > 0:
            await self.gate.wait()
        async for chunk in super().get_range(path, start, end, version):
            yield chunk


async def test_streaming_first_bytes_before_the_object_is_fetched(box: NodeBox) -> None:
    data = os.urandom(8 * PS)
    put(box, "f", data)
    node = box.node
    assert node is not None
    store = GatedStore(f"file://{box.store_dir}", {})  # type: ignore[attr-defined]
    store.gate = asyncio.Event()
    node.mounts._stores["/data"] = store
    stream = await (await node.open("/data/f")).read()
    seg = await asyncio.wait_for(stream.segments.__anext__(), 5)
    assert seg.bytes() == data[:PS]  # the first page is here...
    await box.cache.drain()
    assert box.cache.disk.stats.pages == 1  # ...while no other page has been fetched yet
    store.gate.set()
    rest = b"".join([s.bytes() async for s in stream.segments])
    assert data[:PS] + rest == data


async def test_concurrent_readers_single_flight(box: NodeBox) -> None:
    data = os.urandom(10 * PS + 1)
    put(box, "f", data)
    node = box.node
    assert node is not None
    results = await asyncio.gather(*[node.read_bytes("/data/f") for _ in range(16)])
    assert all(r == data for r in results)
    assert box.stats.page_fetches == 11
    assert box.stats.understore_bytes["file"] == len(data)
    assert box.gets() <= 11


async def sequential_reads(node: MeshNode, path: str, size: int, step: int, key: str) -> None:
    for off in range(0, size, step):
        stream = await (await node.open(path)).read(off, step, stream_key=key)
        async for s in stream.segments:
            s.close()


async def test_sequential_reader_gets_readahead_random_does_not(box: NodeBox) -> None:
    data = os.urandom(32 * PS)
    put(box, "seq", data)
    put(box, "rnd", data)
    node = box.node
    assert node is not None
    await sequential_reads(node, "/data/seq", 4 * PS, PS, "reader-1")
    await asyncio.sleep(0.2)  # let read-ahead land
    await box.cache.drain()
    seq_pages = box.cache.disk.stats.pages
    assert seq_pages > 4  # pages beyond what was asked were fetched ahead
    before = box.cache.disk.stats.pages
    for off in (20 * PS, 3 * PS, 27 * PS, 9 * PS):
        stream = await (await node.open("/data/rnd")).read(off, PS, stream_key="reader-2")
        async for s in stream.segments:
            s.close()
    await asyncio.sleep(0.2)
    await box.cache.drain()
    assert box.cache.disk.stats.pages - before == 4  # exactly the pages asked for


async def test_sync_interval_trusts_metadata_until_sync(box: NodeBox) -> None:
    node = box.node
    assert node is not None
    await node.mounts.add("/data", node.mounts.entries()[0].uri, {"sync_interval": "-1"}, replace=True)
    put(box, "a", b"1")
    assert [s.path for s in await node.listdir("/data")] == ["/data/a"]
    put(box, "b", b"2")
    assert [s.path for s in await node.listdir("/data")] == ["/data/a"]  # trusted
    assert await node.sync("/data") == 2
    assert [s.path for s in await node.listdir("/data")] == ["/data/a", "/data/b"]


async def test_write_delete_mkdir_rename(box: NodeBox) -> None:
    node = box.node
    assert node is not None

    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    st = await node.write("/data/dir/new", chunks([b"ab", b"cd"]))
    assert st.size == 4 and (box.store_dir / "dir/new").read_bytes() == b"abcd"  # type: ignore[attr-defined]
    assert await node.read_bytes("/data/dir/new") == b"abcd"
    await node.write("/data/dir/new", chunks([b"xyz"]))
    assert await node.read_bytes("/data/dir/new") == b"xyz"
    await node.mkdir("/data/empty")
    assert (await node.stat("/data/empty")).is_dir
    await node.rename("/data/dir/new", "/data/dir/renamed")
    assert await node.read_bytes("/data/dir/renamed") == b"xyz"
    with pytest.raises(NotFound):
        await node.stat("/data/dir/new")
    assert await node.delete("/data/dir", recursive=True) == 2
    with pytest.raises(NotFound):
        await node.stat("/data/dir")
