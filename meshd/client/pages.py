"""Page descriptors shared by every handle of a client, fetched once each (the client core;
meshfs keeps one table for its whole mount).

The local node hands a read's bytes over as descriptors of its page files
(``MeshClient.page_pieces``). A page file holds one whole, verified page of
one version of one file (meshd/cache/pages.py: written under a temporary name and
renamed, so it is whole or absent), so a descriptor received for *any* range
of a page serves *every* later read of that page by a ``pread``, with no
round trip to the node. ``PageTable`` keeps those descriptors, keyed by
``(path, version, page index)``, for all handles of a client: four threads
reading one file at random share them, and so do a file's successive opens.

**Whole pages.** A piece ``(fd, offset_in_page, length)`` that arrives for
file offset ``L`` belongs to the page starting at ``L - offset_in_page``; its
length is the descriptor's size (``fstat``). A piece that does not line up
with the mount's page grid is kept for its own range only.

**Single flight.** Concurrent kernel READs of one page (the kernel's
read-ahead sends several at once) wait for the one fetch in flight instead of
each asking the node: ``begin`` returns the future to wait on, or registers
the caller as the fetcher, who must call ``done`` (or ``failed``) once.

**Unchanged files only.** The node checks a page file's CRC-32C when it hands
the descriptor over; the table keeps with it the file's inode, size, mtime and
ctime then, and a later read whose ``fstat`` finds any of them changed (the
file was written or truncated in place) drops the descriptor and asks the
node again, which checks the file, drops it as corrupt and fetches the page
anew. One ``fstat`` per read, no hashing in the client.

**Bounds.** At most ``max_pages`` descriptors (default 1024, fewer when the
process may open fewer than four times that many files; the disk space they
keep alive after the node evicts their pages is at most that many pages,
4 GiB with 4 MiB pages), of which at most
``max_memfd`` may be memfds: a page the node held only in memory arrives as a
memfd, which is memory, not disk, so only a few are kept. The least recently
used goes first. Holding a descriptor costs the client no memory of its own
(the bytes stay in the kernel's page cache), so a client's memory (meshfs's)
does not grow with bytes read.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from meshd.client.base import Piece

PageId = tuple[str, str, int]  # (path, version, page index)
MAX_PAGES = 1024
MAX_MEMFD = 8


@dataclass
class Cached:
    """File bytes ``[start, end)``: at ``base`` of descriptor ``fd``, or in ``data``."""

    start: int
    end: int
    fd: int | None = None
    base: int = 0
    data: bytes | None = None
    memfd: bool = False
    stamp: tuple[int, int, int, int] | None = None  # the file's (inode, size, mtime, ctime) when received

    def unchanged(self) -> bool:
        """Whether the descriptor's file is as it was when the node handed it over."""
        if self.fd is None or self.stamp is None:
            return True
        try:
            return file_stamp(os.fstat(self.fd)) == self.stamp
        except OSError:
            return False

    def read(self, pos: int, stop: int) -> bytes:
        """The bytes ``[pos, stop)`` (within this range)."""
        if self.fd is None:
            assert self.data is not None
            return self.data[pos - self.start:stop - self.start]
        data = os.pread(self.fd, stop - pos, self.base + pos - self.start)
        if len(data) != stop - pos:
            raise OSError(5, "cache page is shorter than announced")  # EIO
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def is_memfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    except OSError:
        return False


def whole_page(fd: int, logical: int, offset_in_page: int, length: int, page_size: int,
               file_size: int) -> Cached:
    """The range a received piece's descriptor covers: its whole page where it lines up with
    the page grid (the usual case), else just the piece."""
    start = logical - offset_in_page
    try:
        st = os.fstat(fd)
        size, stamp = st.st_size, file_stamp(st)
    except OSError:
        size, stamp = -1, None
    memfd = is_memfd(fd)
    if start >= 0 and start % page_size == 0 and offset_in_page + length <= size <= page_size \
            and start + size <= file_size:
        return Cached(start, start + size, fd=fd, base=0, memfd=memfd, stamp=stamp)
    return Cached(logical, logical + length, fd=fd, base=offset_in_page, memfd=memfd, stamp=stamp)


class PageTable:
    def __init__(self, max_pages: int | None = None, max_memfd: int = MAX_MEMFD) -> None:
        if max_pages is None:
            max_pages = max(16, min(MAX_PAGES, _open_files_limit() // 4))
        self.max_pages, self.max_memfd = max_pages, max_memfd
        self._pages: OrderedDict[PageId, Cached] = OrderedDict()
        self._memfds = 0
        self._inflight: dict[PageId, asyncio.Future[None]] = {}
        self.hits = self.fetches = 0

    def __len__(self) -> int:
        return len(self._pages)

    def find(self, key: PageId, pos: int) -> Cached | None:
        c = self._pages.get(key)
        if c is not None and not c.unchanged():  # written in place since: ask the node again
            self._drop(key)
            return None
        if c is not None and c.start <= pos < c.end:
            self._pages.move_to_end(key)
            self.hits += 1
            return c
        return None

    def has(self, key: PageId) -> bool:
        return key in self._pages or key in self._inflight

    def put(self, key: PageId, c: Cached) -> None:
        """Keep ``c`` (the table owns its descriptor from now on)."""
        old = self._pages.get(key)
        if old is not None:
            if old.start <= c.start and c.end <= old.end and not (old.memfd and not c.memfd):
                c.close()  # what we hold already covers it
                self._pages.move_to_end(key)
                return
            self._drop(key)
        self._pages[key] = c
        self._memfds += c.memfd
        while len(self._pages) > self.max_pages or self._memfds > self.max_memfd:
            victim = next((k for k, v in self._pages.items() if v.memfd), None) \
                if self._memfds > self.max_memfd else next(iter(self._pages))
            assert victim is not None
            self._drop(victim)

    def _drop(self, key: PageId) -> None:
        c = self._pages.pop(key)
        self._memfds -= c.memfd
        c.close()

    def begin(self, keys: list[PageId]) -> tuple[bool, asyncio.Future[None]]:
        """A fetch of ``keys`` is wanted. ``(False, future)``: one is in flight for the first
        key, wait for it and look again; ``(True, future)``: the caller fetches, then calls
        ``done(keys, future)`` whatever happens."""
        fut = self._inflight.get(keys[0])
        if fut is not None:
            return False, fut
        self.fetches += 1
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mine.add_done_callback(_retrieve)
        for k in keys:
            self._inflight.setdefault(k, mine)
        return True, mine

    def done(self, keys: list[PageId], mine: asyncio.Future[None], error: BaseException | None = None) -> None:
        for k in keys:
            if self._inflight.get(k) is mine:
                del self._inflight[k]
        if not mine.done():
            if error is None:
                mine.set_result(None)
            else:
                mine.set_exception(error if isinstance(error, Exception) else OSError(4, "fetch interrupted"))

    def keep_pieces(self, path: str, version: str, start: int, pieces: list[Piece], page_size: int,
                    file_size: int, keep_inline: Callable[[int, Cached], None]) -> None:
        """What ``MeshClient.page_pieces`` returned for a range starting at ``start``:
        descriptors to the table (as whole pages), inline bytes to ``keep_inline(page
        index, bytes)`` (consecutive inline pieces of one page as one entry). Every
        piece's descriptor is the table's or closed afterwards."""
        ps = page_size
        logical = start
        inline: list[bytes] = []
        inline_at = start

        def flush_inline() -> None:
            if inline:
                data = inline[0] if len(inline) == 1 else b"".join(inline)
                keep_inline(inline_at // ps, Cached(inline_at, inline_at + len(data), data=data))
                inline.clear()

        try:
            for p in pieces:
                if p.data is not None:
                    if inline and (logical // ps != inline_at // ps):
                        flush_inline()
                    if not inline:
                        inline_at = logical
                    inline.append(p.data)
                else:
                    flush_inline()
                    if p.length > 0 and p.fd is not None:
                        c = whole_page(p.fd, logical, p.offset, p.length, ps, file_size)
                        p.fd = None  # the table owns it now
                        self.put((path, version, c.start // ps), c)
                logical += p.length
            flush_inline()
        finally:
            for p in pieces:
                p.close()

    def drop_file(self, path: str) -> None:
        for key in [k for k in self._pages if k[0] == path]:
            self._drop(key)

    def clear(self) -> int:
        n = len(self._pages)
        for key in list(self._pages):
            self._drop(key)
        return n


def _open_files_limit() -> int:
    """This process's limit of open files, raised to the hard limit first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def _retrieve(f: asyncio.Future[None]) -> None:
    if not f.cancelled():
        f.exception()  # a failed fetch nobody waited for is not an "unretrieved" error


__all__ = ["MAX_MEMFD", "MAX_PAGES", "Cached", "PageId", "PageTable", "whole_page"]
