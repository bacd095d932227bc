"""The client core meshfs reads through (unit tests): meshd/client/pages.py, the page-descriptor
table meshfs shares between handles (with real descriptors: page files in a temporary directory
and memfds), meshd/client/readahead.py, the read-ahead policies, and meshd/client/metacache.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from meshd.client import readahead
from meshd.client.base import Status
from meshd.client.metacache import MetaCache, MountRules
from meshd.client.pages import Cached, PageTable, whole_page

PS = 1 << 16  # a small page size keeps the files small


def page_file(tmp_path: Path, index: int, size: int = PS) -> int:
    p = tmp_path / f"page-{index}"
    p.write_bytes(bytes([index % 256]) * size)
    return os.open(p, os.O_RDONLY)


def test_a_piece_of_a_page_file_covers_its_whole_page(tmp_path: Path) -> None:
    fd = page_file(tmp_path, 3)
    # a 100-byte read at file offset 3*PS + 500 arrived as (fd, 500, 100)
    c = whole_page(fd, 3 * PS + 500, 500, 100, PS, 10 * PS)
    assert (c.start, c.end, c.base, c.memfd) == (3 * PS, 4 * PS, 0, False)
    assert c.read(3 * PS + 10, 3 * PS + 20) == b"\x03" * 10
    c.close()


def test_the_last_short_page_and_a_piece_off_the_grid(tmp_path: Path) -> None:
    fd = page_file(tmp_path, 2, size=1000)
    c = whole_page(fd, 2 * PS + 10, 10, 90, PS, 2 * PS + 1000)
    assert (c.start, c.end) == (2 * PS, 2 * PS + 1000)
    c.close()
    # a descriptor whose size does not match the page grid is kept for its own range only
    fd = page_file(tmp_path, 5, size=PS + 7)
    c = whole_page(fd, 5 * PS + 10, 10, 90, PS, 10 * PS)
    assert (c.start, c.end, c.base) == (5 * PS + 10, 5 * PS + 100, 10)
    c.close()


def test_a_memfd_is_recognised(tmp_path: Path) -> None:
    fd = os.memfd_create("mesh-page")
    os.write(fd, b"m" * PS)
    c = whole_page(fd, 0, 0, 10, PS, PS)
    assert c.memfd and (c.start, c.end) == (0, PS)
    c.close()


def test_a_short_descriptor_is_an_error_not_short_bytes(tmp_path: Path) -> None:
    fd = page_file(tmp_path, 1, size=100)
    c = Cached(0, 200, fd=fd)  # announced longer than the file
    with pytest.raises(OSError):
        c.read(50, 150)
    c.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_bounds_close_what_they_evict(tmp_path: Path) -> None:
    before = open_fds()
    t = PageTable(max_pages=4, max_memfd=1)
    for i in range(10):
        t.put(("/f", "v1", i), whole_page(page_file(tmp_path, i), i * PS, 0, 1, PS, 100 * PS))
    assert len(t) == 4 and open_fds() == before + 4
    assert t.find(("/f", "v1", 9), 9 * PS + 5) is not None
    assert t.find(("/f", "v1", 0), 5) is None  # evicted, least recently used first
    for i in range(3):  # memfds: at most one kept
        fd = os.memfd_create("mesh-page")
        os.write(fd, b"x" * PS)
        t.put(("/g", "v1", i), whole_page(fd, i * PS, 0, 1, PS, 100 * PS))
    assert sum(1 for i in range(3) if t.find(("/g", "v1", i), i * PS) is not None) == 1
    # another version of a file is another page; dropping a file and clearing close everything
    assert t.find(("/f", "v2", 9), 9 * PS) is None
    t.drop_file("/f")
    assert all(t.find(("/f", "v1", i), i * PS) is None for i in range(10))
    t.clear()
    assert len(t) == 0 and open_fds() == before


def test_a_wider_range_replaces_a_narrower_one_never_the_reverse(tmp_path: Path) -> None:
    t = PageTable(max_pages=4)
    key = ("/f", "v", 0)
    narrow = Cached(10, 20, fd=page_file(tmp_path, 0), base=10)
    t.put(key, narrow)
    t.put(key, whole_page(page_file(tmp_path, 1), 0, 0, 1, PS, PS))
    c = t.find(key, 5000)
    assert c is not None and (c.start, c.end) == (0, PS)
    t.put(key, Cached(30, 40, fd=page_file(tmp_path, 2), base=30))  # covered: dropped, not kept
    c = t.find(key, 5000)
    assert c is not None and (c.start, c.end) == (0, PS)
    t.clear()


def test_single_flight_one_fetch_for_concurrent_readers() -> None:
    async def main() -> None:
        t = PageTable(max_pages=8)
        keys = [("/f", "v", 0), ("/f", "v", 1)]
        fetched = 0

        async def reader() -> str:
            nonlocal fetched
            mine, fut = t.begin(keys)
            if not mine:
                await fut
                return "waited"
            fetched += 1
            await asyncio.sleep(0.01)
            t.done(keys, fut)
            return "fetched"

        got = await asyncio.gather(*(reader() for _ in range(5)))
        assert sorted(got) == ["fetched"] + ["waited"] * 4 and fetched == 1
        assert not t.has(keys[0])  # nothing in flight, nothing kept (the fetch kept nothing)
        # a failed fetch reaches its waiters as an error, and the next one fetches again
        mine, fut = t.begin(keys)
        assert mine
        again, same = t.begin(keys[1:])
        assert not again and same is fut
        t.done(keys, fut, OSError(5, "node gone"))
        with pytest.raises(OSError):
            await same
        mine, fut = t.begin(keys)
        assert mine
        t.done(keys, fut, asyncio.CancelledError())  # a cancelled fetcher: waiters see an OSError
        assert isinstance(fut.exception(), OSError)

    asyncio.run(main())


def test_a_sequential_reader_fetches_descriptors_ahead_in_batches() -> None:
    """meshfs's Readers._read_ahead, with the "sequential" policy: every page of a sequential read
    is asked for once, never more than READ_AHEAD_PAGES past the page being read,
    READ_AHEAD_BATCH pages per request (the last request of the file may be shorter); pages
    already held are not asked for."""
    from meshfs.node import Node
    from meshfs.readers import Reader, Readers

    async def scenario(held: set[int]) -> list[tuple[int, int]]:
        node = Node(None, 30.0, lambda ep, t: None)  # type: ignore[arg-type,return-value]
        reads = Readers(node)
        asked: list[tuple[int, int]] = []
        page = 0  # the page the reader is in when a request is made

        def prefetch(h: Reader, first: int, last: int) -> Coroutine[Any, Any, None]:
            # recorded when _read_ahead asks (the task it makes runs later)
            assert page < first <= last <= page + readahead.READ_AHEAD_PAGES, (page, first, last)
            asked.append((first, last))
            return asyncio.sleep(0)

        reads._prefetch = prefetch  # type: ignore[method-assign,assignment]
        h = Reader("/f", "v1", "s", readahead.Cursor(PS, 37 * PS + 5), held.__contains__)
        for off in range(0, h.size, PS // 4):  # 16 KiB reads, in order
            end = min(h.size, off + PS // 4)
            page = (end - 1) // PS
            reads._read_ahead(h, end)
        await asyncio.sleep(0)
        node.pool.shutdown()
        return asked

    asked = asyncio.run(scenario(set()))
    pages = [i for first, last in asked for i in range(first, last + 1)]
    assert pages == list(range(1, 38))  # page 0 is the reader's own, each other page once
    assert all(last - first + 1 == readahead.READ_AHEAD_BATCH for first, last in asked[:-1])
    assert len(asked) == 10  # 37 pages ahead in batches of 4: 9 full and one of 1

    # held already: a batch of them is not asked for, and one at a batch's end is trimmed off
    # (one in its middle goes along: the request is made either way)
    asked = asyncio.run(scenario({5, 6, 7, 8, 20, 22}))
    assert (5, 8) not in asked and (17, 19) in asked and (21, 24) in asked
    pages = [i for first, last in asked for i in range(first, last + 1)]
    assert sorted(pages) == [i for i in range(1, 38) if i not in (5, 6, 7, 8, 20)]


def test_read_ahead_policies() -> None:
    """The registry, "none", and a handle served bytes reading ahead one page at a time."""
    assert readahead.policy_names() == ["none", "sequential"]
    with pytest.raises(ValueError, match="unknown read-ahead policy"):
        readahead.get_policy("nope")
    with pytest.raises(ValueError, match="already registered"):
        readahead.register_policy(readahead.Sequential)

    none = readahead.get_policy("none")
    cur = readahead.Cursor(PS, 10 * PS)
    assert not none.sequential(cur, 0, 100) and not none.sequential(cur, 100, 200)
    assert none.span(cur, 100, 200, False) == (100, 200)
    assert not none.ahead(cur, 200, lambda i: False)

    seq = readahead.get_policy("sequential")
    cur = readahead.Cursor(PS, 10 * PS)
    assert seq.sequential(cur, 0, 100)  # from the start
    assert seq.sequential(cur, 100 + PS, 200 + PS)  # within a page of where the last ended
    assert not seq.sequential(cur, 5 * PS, 5 * PS + 10)  # a jump
    assert seq.span(cur, PS + 5, PS + 10, True) == (PS, 2 * PS)  # whole pages
    assert seq.span(cur, 9 * PS + 5, 10 * PS, True) == (9 * PS, 10 * PS)  # up to the end
    assert seq.span(cur, PS + 5, PS + 10, False) == (PS + 5, PS + 10)  # exactly the range
    # a handle served bytes (inline pages, or a mesh:// file) reads one page ahead at a time
    cur = readahead.Cursor(PS, 10 * PS, bytes_only=True)
    assert seq.ahead(cur, 100, lambda i: False) == [(1, 1)]
    assert not seq.ahead(cur, PS // 2, lambda i: False)  # asked for already
    assert seq.ahead(cur, PS + 1, lambda i: False) == [(2, 2)]
    cur = readahead.Cursor(PS, 10 * PS)
    cur.keep_inline(0, Cached(0, PS, data=b"x" * PS))  # a NoCache mount's inline page
    assert seq.ahead(cur, 100, lambda i: False) == [(1, 1)]


def test_read_bytes_keeps_the_version_and_reads_ahead_a_page() -> None:
    """readahead.read_bytes (a mesh:// file): "none" fetches exactly each range; "sequential"
    fetches whole pages and the page ahead in one request, and serves the next reads from them."""
    data = bytes(range(256)) * (10 * PS // 256 + 1)
    data = data[:10 * PS - 7]
    fetched: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        fetched.append((offset, length))
        return data[offset:offset + length]

    for name in ("none", "sequential"):
        fetched.clear()
        policy, cur = readahead.get_policy(name), readahead.Cursor(PS, len(data), bytes_only=True)
        out = bytearray()
        for off in range(0, len(data), PS // 4):
            out += readahead.read_bytes(policy, cur, off, off + PS // 4, fetch)
        assert out == data, name
        if name == "none":
            assert len(fetched) == 40 and all(n == PS // 4 for _, n in fetched[:-1])
        else:  # a miss fetches its page and the one ahead, in one request
            assert fetched == [(i * PS, min(2 * PS, len(data) - i * PS)) for i in range(0, 10, 2)], fetched
            assert len(cur.inline) <= readahead.INLINE_PAGES
        assert readahead.read_bytes(policy, cur, len(data), len(data) + 5, fetch) == b""
    # random reads: exactly their ranges, nothing kept
    fetched.clear()
    policy, cur = readahead.get_policy("sequential"), readahead.Cursor(PS, len(data), bytes_only=True)
    for off in (5 * PS + 3, PS + 9, 8 * PS):
        assert readahead.read_bytes(policy, cur, off, off + 100, fetch) == data[off:off + 100]
    assert fetched == [(5 * PS + 3, 100), (PS + 9, 100), (8 * PS, 100)] and not cur.inline


def test_metadata_cache_and_mount_rules() -> None:
    rules = MountRules(ttl=1.0, max_ttl=300.0)
    assert rules.due(0.0)
    rules.update([("/", {}), ("/data", {"sync_interval": "60", "read_only": "true"}),
                  ("/forever", {"sync_interval": "-1"}), ("/bad", {"sync_interval": "x"})], 10.0)
    assert not rules.due(12.0) and rules.due(16.0)
    assert rules.ttl_of("/data/x") == 60.0 and rules.ttl_of("/forever/x") == 300.0
    assert rules.ttl_of("/bad/x") == 1.0 and rules.ttl_of("/other") == 1.0
    m = rules.mount_of("/data/x")
    assert m is not None and m[0] == "/data" and rules.read_only(m)

    cache = MetaCache(max_statuses=3, max_listed=3)
    st = Status("/d/a", 1, 0.0, "v", False)
    cache.put("/d/a", st, 5.0, 100.0)
    cache.put("/d/gone", None, 1.0, 100.0)
    assert cache.get("/d/a", 104.0) == (True, st)
    assert cache.get("/d/a", 104.0, fresh_within=1.0) == (False, None)  # kept, but older than that
    assert cache.get("/d/a", 105.0) == (False, None)  # expired
    assert cache.get("/d/gone", 100.5) == (True, None)  # "not found", kept
    cache.keep_listing("/d", [st], 5.0, 100.0)
    assert cache.listing("/d", 101.0) == [st] and cache.listing("/d", 106.0) is None
    cache.keep_listing("/e", [st, st, st], 5.0, 100.0)  # over max_listed: the oldest goes
    assert cache.listed("/d") is None and cache.n_listed == 3
    cache.invalidate("/e/x")  # the parent's listing goes
    assert cache.listed("/e") is None and cache.n_listed == 0
    for i in range(4):
        cache.put(f"/f{i}", st, 5.0, 100.0)
    assert len(cache) == 3 and cache.get("/d/a", 100.0) == (False, None)  # LRU
    cache.forget_under("/f1")
    assert cache.get("/f1", 100.0) == (False, None) and cache.clear() == 2
