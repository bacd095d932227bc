"""The page cache: a memory tier and a disk tier of fixed-size pages.

Keys. A page is named by ``(file_id, version_id, index)``: ``file_id`` hashes
the mount's URI and the file's path, ``version_id`` hashes the object's version
(ETag / mtime+size+inode). A changed object therefore has new keys: stale bytes are
unreachable by construction, and all versions of one file share a directory so
``free`` and "drop the old versions" are one ``rmtree``.

Tiers. Every fetched page goes to both tiers. The memory tier (``bytes`` in an
LRU dict) serves the pages fetched most recently without a syscall; the disk
tier keeps them across restarts and is served with ``sendfile``. A disk hit is
not promoted to memory: the kernel's page cache already keeps hot page files
in RAM, and promoting would copy each page through Python once more.

Eviction. Each tier is an LRU with a high and a low watermark: when a put
takes the tier above ``high * capacity`` it evicts least-recently-used pages
until it is below ``low * capacity``.

Integrity. A disk page's file name carries its length and CRC-32C
(``<version_id>_<index>_c<crc32c>_<len>``); it is written to a temporary name,
made read-only and renamed into place, so a page file is whole or absent and
is never written again. Every time a page file is opened to serve a reader
(any front end, a peer, a short-circuit client's descriptor) its size and
``fstat`` (inode, size, mtime, ctime) are checked and, with ``verify`` on (the
default), its bytes are hashed (CRC-32C, in a thread, just before they are
sent) unless the same unchanged file was hashed less than ``verify_window``
seconds ago (0: every serve hashes). With ``verify`` off a page is hashed on
first use and again whenever its ``fstat`` changes (any write through the
filesystem), which misses media corruption under the kernel's page cache.
A mismatch, a short file or a read error drops the page (counted in
``mesh_cache_corrupt_pages_total``, one log line each) and the read treats it
as a miss: the page is fetched again from its source. Page files named with
the CRC32 of earlier versions are dropped at start-up (a miss each).

Failure. A full or failing cache disk never fails a read: the page is still
served from memory, the error is counted (``mesh_cache_write_errors_total``)
and logged once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import crc32c as _crc32c

log = logging.getLogger(__name__)

VERIFY_CHUNK = 1 << 20  # page files are checked in 1 MiB reads into a per-thread buffer
_buffers = threading.local()


def checksum(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (hardware-accelerated: SSE4.2 / ARMv8; the GIL is released on large buffers)."""
    return int(_crc32c.crc32c(data, value))


def file_checksum(fd: int, length: int) -> tuple[int, int]:
    """CRC-32C of the first ``length`` bytes of ``fd`` and how many bytes it had (``pread``:
    a mapping would kill the process with SIGBUS if the file were truncated meanwhile)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = memoryview(bytearray(VERIFY_CHUNK))
    crc = done = 0
    while done < length:
        n = os.preadv(fd, [buf[:min(VERIFY_CHUNK, length - done)]], done)
        if n <= 0:
            break
        crc = checksum(buf[:n], crc)
        done += n
    return crc, done


@dataclass(frozen=True, slots=True)
class PageKey:
    file_id: str
    version_id: str
    index: int


def file_id(uri: str, rel_path: str) -> str:
    return hashlib.sha256(f"{uri}\x00{rel_path}".encode()).hexdigest()[:32]


def version_id(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()[:16]


@dataclass(slots=True)
class MemPage:
    data: bytes


class DiskPage:
    """An open page file; the reader sends it (sendfile) and closes it."""

    __slots__ = ("file", "length")

    def __init__(self, file: IO[bytes], length: int) -> None:
        self.file = file
        self.length = length

    def close(self) -> None:
        self.file.close()


Page = MemPage | DiskPage


@dataclass
class TierStats:
    capacity: int
    used: int = 0
    pages: int = 0
    hits: int = 0
    evicted_pages: int = 0
    evicted_bytes: int = 0


class MemoryTier:
    def __init__(self, capacity: int, high: float, low: float) -> None:
        self.stats = TierStats(capacity)
        self._high, self._low = high, low
        self._lru: OrderedDict[PageKey, bytes] = OrderedDict()

    def get(self, key: PageKey) -> bytes | None:
        data = self._lru.get(key)
        if data is not None:
            self._lru.move_to_end(key)
            self.stats.hits += 1
        return data

    def put(self, key: PageKey, data: bytes) -> None:
        if self.stats.capacity <= 0 or len(data) > self.stats.capacity:
            return
        old = self._lru.pop(key, None)
        if old is not None:
            self.stats.used -= len(old)
            self.stats.pages -= 1
        self._lru[key] = data
        self.stats.used += len(data)
        self.stats.pages += 1
        if self.stats.used > self._high * self.stats.capacity:
            target = self._low * self.stats.capacity
            while self.stats.used > target and self._lru:
                _, victim = self._lru.popitem(last=False)
                self.stats.used -= len(victim)
                self.stats.pages -= 1
                self.stats.evicted_pages += 1
                self.stats.evicted_bytes += len(victim)

    def drop(self, pred: Callable[[PageKey], bool]) -> int:
        freed = 0
        for key in [k for k in self._lru if pred(k)]:
            data = self._lru.pop(key)
            freed += len(data)
            self.stats.used -= len(data)
            self.stats.pages -= 1
        return freed


Stamp = tuple[int, int, int, int]  # a page file's inode, size, mtime and ctime (ns)


@dataclass(slots=True)
class _DiskEntry:
    length: int
    crc: int
    stamp: Stamp | None = None  # the file as it was when last checked (None: never)
    checked: float = 0.0  # when (monotonic)


class DiskTier:
    def __init__(self, root: str, capacity: int, high: float, low: float, verify: bool = True,
                 verify_window: float = 0.0) -> None:
        self.root = root
        self.verify = verify  # check every serve (else: first use, and after any change of the file)
        self.verify_window = verify_window  # a check also covers serves of the unchanged file this long
        self.stats = TierStats(capacity)
        self.write_errors = 0
        self.corrupt_pages = 0
        self.verified_bytes = 0  # bytes hashed by checks (from several threads: a close count)
        self._high, self._low = high, low
        self._lru: OrderedDict[PageKey, _DiskEntry] = OrderedDict()
        self._last_error_log = 0.0
        os.makedirs(root, exist_ok=True)
        self._load()

    def _dir(self, fid: str) -> str:
        return os.path.join(self.root, fid[:2], fid)

    def _path(self, key: PageKey, e: _DiskEntry) -> str:
        return os.path.join(self._dir(key.file_id), f"{key.version_id}_{key.index}_c{e.crc:08x}_{e.length}")

    def _load(self) -> None:
        """Rebuild the index from the page files left by a previous run."""
        found: list[tuple[float, PageKey, _DiskEntry]] = []
        old = 0
        for dirpath, _dirs, files in os.walk(self.root):
            fid = os.path.basename(dirpath)
            for name in files:
                full = os.path.join(dirpath, name)
                parts = name.split("_")
                if name.endswith(".tmp") or len(parts) != 4 or not parts[2].startswith("c"):
                    old += not name.endswith(".tmp") and len(parts) == 4
                    with contextlib.suppress(OSError):
                        os.unlink(full)  # an interrupted write, or a page named with a CRC32
                    continue
                try:
                    key = PageKey(fid, parts[0], int(parts[1]))
                    entry = _DiskEntry(int(parts[3]), int(parts[2][1:], 16))
                    found.append((os.stat(full).st_mtime, key, entry))
                except (ValueError, OSError):
                    with contextlib.suppress(OSError):
                        os.unlink(full)
        if old:
            log.info("dropped %d cache page files of an earlier format (CRC32): they are fetched again", old)
        for _mtime, key, entry in sorted(found, key=lambda t: t[0]):
            self._lru[key] = entry
            self.stats.used += entry.length
            self.stats.pages += 1

    def lookup(self, key: PageKey) -> _DiskEntry | None:
        return self._lru.get(key)

    def open(self, key: PageKey, entry: _DiskEntry) -> tuple[DiskPage | None, str]:
        """Open a page file to serve it, and check it: pure I/O, run in a thread.

        Returns the page and ``"ok"``, or None and ``"missing"`` / ``"corrupt"``
        (one log line); the caller updates the index on the event loop.
        """
        path = self._path(key, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None, "missing"
        bad = None
        try:
            st = os.fstat(fd)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if st.st_size != entry.length:
                bad = f"{st.st_size} bytes, expected {entry.length}"
            elif entry.stamp != stamp or (self.verify and time.monotonic() - entry.checked >= self.verify_window):
                crc, n = file_checksum(fd, entry.length)
                self.verified_bytes += n
                if n != entry.length:
                    bad = f"{n} bytes readable, expected {entry.length}"
                elif crc != entry.crc:
                    bad = f"CRC-32C {crc:08x}, expected {entry.crc:08x}"
                else:
                    entry.stamp, entry.checked = stamp, time.monotonic()
        except OSError as e:
            bad = f"unreadable: {e.strerror}"
        if bad is not None:
            os.close(fd)
            log.warning("corrupt cache page %s (%s): dropped, fetched again", path, bad)
            return None, "corrupt"
        return DiskPage(os.fdopen(fd, "rb", buffering=0), entry.length), "ok"

    def touch(self, key: PageKey) -> None:
        if key in self._lru:
            self._lru.move_to_end(key)
            self.stats.hits += 1

    def write(self, key: PageKey, data: bytes) -> _DiskEntry | None:
        """Write a page file (blocking; run in a thread). None when it failed."""
        if self.stats.capacity <= 0 or len(data) > self.stats.capacity:
            return None
        entry = _DiskEntry(len(data), checksum(data))
        path = self._path(key, entry)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o444)  # never written again: only replaced or removed
            os.replace(tmp, path)
        except OSError as e:
            self.write_errors += 1
            try:
                os.unlink(tmp)
            except OSError:
                pass
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.error("cache disk write failed (%s); serving from memory only: %s", self.root, e)
            return None
        return entry

    def admit(self, key: PageKey, entry: _DiskEntry) -> None:
        """Index a written page file and evict down to the low watermark."""
        if key in self._lru:
            self._forget(key)
        self._lru[key] = entry
        self.stats.used += entry.length
        self.stats.pages += 1
        if self.stats.used > self._high * self.stats.capacity:
            target = self._low * self.stats.capacity
            while self.stats.used > target and self._lru:
                victim = next(iter(self._lru))
                self.stats.evicted_pages += 1
                self.stats.evicted_bytes += self._lru[victim].length
                self._remove(victim)

    def _forget(self, key: PageKey) -> _DiskEntry | None:
        entry = self._lru.pop(key, None)
        if entry is not None:
            self.stats.used -= entry.length
            self.stats.pages -= 1
        return entry

    def _remove(self, key: PageKey) -> None:
        entry = self._forget(key)
        if entry is not None:
            try:
                os.unlink(self._path(key, entry))
            except OSError:
                pass

    def drop_file(self, fid: str, keep_version: str | None = None) -> int:
        keys = [k for k in self._lru if k.file_id == fid and k.version_id != keep_version]
        freed = 0
        for k in keys:
            freed += self._lru[k].length
            self._remove(k)
        if keep_version is None:
            shutil.rmtree(self._dir(fid), ignore_errors=True)
        return freed


class SingleFlight:
    """At most one fetch per key at a time; everyone else waits for its result.

    Two ways in: :meth:`do` runs a function for one key; :meth:`claim` lets a
    caller that fetches many keys at once (a coalesced extent) register a
    future for each key it will resolve itself.
    """

    def __init__(self) -> None:
        self._inflight: dict[Any, asyncio.Future[Any]] = {}

    def get(self, key: Any) -> asyncio.Future[Any] | None:
        return self._inflight.get(key)

    def claim(self, key: Any) -> asyncio.Future[Any] | None:
        """Register a future for ``key``; None when a fetch is already in flight."""
        if key in self._inflight:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return fut

    async def do(self, key: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once for all concurrent callers with ``key``.

        The work runs in a task of its own: a caller that is cancelled (a
        reader hung up) stops waiting but never cancels the fetch the others
        wait for.
        """
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(fn())
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(fut)


class PageCache:
    """The two tiers behind one get/put, plus page geometry."""

    def __init__(self, root: str, page_size: int, memory_capacity: int, disk_capacity: int,
                 high: float = 0.9, low: float = 0.8, write_behind: int = 256 << 20,
                 writer_threads: int = 2, verify: bool = True, verify_window: float = 0.0) -> None:
        if not 4096 <= page_size <= 64 << 20:
            raise ValueError(f"page size must be between 4 KiB and 64 MiB, got {page_size}")
        if not 0 < low < high <= 1:
            raise ValueError(f"watermarks must satisfy 0 < low < high <= 1, got low={low} high={high}")
        self.page_size = page_size
        self.memory = MemoryTier(memory_capacity, high, low)
        self.disk = DiskTier(root, disk_capacity, high, low, verify, verify_window)
        self.write_behind = write_behind
        self._queued = 0
        self._room = asyncio.Condition()
        self._pending: dict[PageKey, bytes] = {}  # fetched, disk write queued
        self._writes: set[asyncio.Task[None]] = set()
        # Page files are written by a few dedicated threads: many concurrent
        # creates+renames in one directory contend in the filesystem (measured:
        # 40x slower per page with 64 writers than with one).
        self._writer = ThreadPoolExecutor(max_workers=writer_threads, thread_name_prefix="meshd-pagewrite")

    async def get(self, key: PageKey) -> Page | None:
        data = self.memory.get(key)
        if data is None:
            data = self._pending.get(key)
        if data is not None:
            return MemPage(data)
        return await self._open_disk(key, hit=True)

    async def _open_disk(self, key: PageKey, hit: bool) -> DiskPage | None:
        """The page's disk file, checked (:meth:`DiskTier.open`); None when it has none or
        it failed its check (then dropped: a miss)."""
        entry = self.disk.lookup(key)
        if entry is None:
            return None
        page, outcome = await asyncio.to_thread(self.disk.open, key, entry)
        if outcome == "corrupt":
            self.disk.corrupt_pages += 1
        if self.disk.lookup(key) is not entry:  # evicted or replaced meanwhile:
            return page  # an open file stays readable after its unlink
        if outcome == "corrupt":
            self.disk._remove(key)
            data = self.memory._lru.get(key)
            if data is not None:  # a good copy in memory: write the page file again
                task = asyncio.ensure_future(self.put(key, data))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        elif outcome == "missing":
            self.disk._forget(key)
        elif hit:
            self.disk.touch(key)
        else:
            self.disk._lru.move_to_end(key)
        return page

    def contains(self, key: PageKey) -> bool:
        return key in self.memory._lru or key in self._pending or key in self.disk._lru

    async def open_disk(self, key: PageKey) -> DiskPage | None:
        """The page's disk file, checked, if it has a good one (for zero-copy senders of a
        page also held in memory: a corrupt file is dropped, the memory copy is served)."""
        return await self._open_disk(key, hit=False)

    async def put(self, key: PageKey, data: bytes) -> None:
        """Admit a fetched page: memory now, disk behind (bounded).

        The caller (a reader) does not wait for the disk write: only for room
        in the write-behind budget, so a cache disk slower than the
        under-store throttles cold reads only once ``write_behind`` bytes are
        queued, and no fetched page is ever dropped on the floor.
        """
        self.memory.put(key, data)
        if self.disk.stats.capacity <= 0 or len(data) > self.disk.stats.capacity:
            return
        async with self._room:
            while self._queued and self._queued + len(data) > self.write_behind:
                await self._room.wait()
            self._queued += len(data)
        self._pending[key] = data
        task = asyncio.ensure_future(self._write(key, data))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: PageKey, data: bytes) -> None:
        try:
            entry = await asyncio.get_running_loop().run_in_executor(
                self._writer, self.disk.write, key, data)
            if entry is not None:
                if self._pending.get(key) is data:
                    self.disk.admit(key, entry)
                elif self.disk.lookup(key) is None:
                    # dropped (free, rm, new version) while queued: the file must not
                    # outlive its index entry, or a restart would bring it back
                    with contextlib.suppress(OSError):
                        os.unlink(self.disk._path(key, entry))
        finally:
            if self._pending.get(key) is data:
                del self._pending[key]
            async with self._room:
                self._queued -= len(data)
                self._room.notify_all()

    async def drain(self) -> None:
        """Wait until every queued disk write has landed."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def drop_file(self, fid: str, keep_version: str | None = None) -> int:
        """Drop a file's pages (all versions but ``keep_version``); returns distinct bytes freed."""
        def pred(k: PageKey) -> bool:
            return k.file_id == fid and k.version_id != keep_version

        sizes = {k: len(v) for k, v in self.memory._lru.items() if pred(k)}
        sizes.update({k: e.length for k, e in self.disk._lru.items() if pred(k)})
        for k in [k for k in self._pending if pred(k)]:
            del self._pending[k]  # its write lands, but is not admitted (see _write)
        self.memory.drop(pred)
        self.disk.drop_file(fid, keep_version)
        return sum(sizes.values())

    def page_range(self, offset: int, end: int) -> range:
        """Indices of the pages covering bytes [offset, end)."""
        if end <= offset:
            return range(0)
        return range(offset // self.page_size, (end - 1) // self.page_size + 1)
