"""meshfs's read path: pinned handles over one page table, read ahead by the client core's policy.

``open`` pins the file's version: every read of the handle asks for that
version (a file replaced meanwhile reads as ESTALE, never as a mix). Bytes
come from the local node's short-circuit socket as page-file descriptors,
kept in one :class:`meshd.client.pages.PageTable` for all handles: a
descriptor covers its whole page, so later reads of any part of that page, by
any handle, are a ``pread`` with no round trip to the node, and concurrent
reads of one page wait for one fetch. What is fetched, and what ahead, is the
read-ahead policy's decision (meshd/client/readahead.py; "sequential" by
default: a sequential reader asks for whole pages and has the next pages'
descriptors fetched in the background, a few per request, while the node
reads ahead on the handle's stream id too; a random reader asks for exactly
its range). With no local node, reads go over HTTP, exactly the range asked.
Memory does not grow with bytes read: the table holds descriptors, not
bytes, and a handle at most ``INLINE_PAGES`` inline pages (NoCache mounts).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

from meshd.client.pages import Cached, PageTable
from meshd.client.readahead import Cursor, ReadAhead, get_policy
from meshd.client.sdk import MeshClient, Status
from meshd.errors import NotFound
from meshfs.node import FSError, Node

log = logging.getLogger(__name__)


@dataclass
class Reader:
    """An open file: its path, the version and size it is pinned to (in ``cursor``), the
    node's stream id for its reads; ``held(i)``: its page ``i`` is in the page table or on
    its way there."""

    path: str
    version: str
    stream: str
    cursor: Cursor
    held: Callable[[int], bool] = lambda i: False
    ino: int = 0  # its inode: a read after this mount saw the file at another version is ESTALE

    @property
    def size(self) -> int:
        return self.cursor.size

    def close(self) -> None:
        self.cursor.close()


class Readers:
    def __init__(self, node: Node, policy: str = "sequential") -> None:
        self.node = node
        self.policy: ReadAhead = get_policy(policy)
        self.pages = PageTable()
        self._tasks: set[asyncio.Task[None]] = set()  # read-aheads in flight

    def open(self, path: str, st: Status, ino: int = 0) -> Reader:
        """A handle on ``path`` pinned to ``st`` (its version and size)."""
        ps = self.node.client().page_size or (4 << 20)
        has, version = self.pages.has, st.version
        return Reader(path, version, MeshClient.new_stream_id(), Cursor(ps, st.size),
                      lambda i: has((path, version, i)), ino)

    async def read(self, h: Reader, off: int, size: int) -> bytes:
        cur = h.cursor
        end = min(cur.size, off + size)
        if off >= end:
            return b""
        ps = cur.page_size
        sequential = self.policy.sequential(cur, off, end)
        out: list[bytes] = []
        pos, tries = off, 0
        while pos < end:
            c = self.pages.find((h.path, h.version, pos // ps), pos) or cur.find_inline(pos)
            if c is None:
                tries += 1
                if tries > 2:  # beyond what the handle keeps (inline bytes): exactly this range
                    out.append(await self._read_exact(h, pos, end))
                    break
                await self._load(h, pos, end, sequential)
                continue
            stop = min(end, c.end)
            try:
                out.append(c.read(pos, stop))
            except OSError as e:
                raise FSError(errno.EIO, f"cache page of {h.path}: {e.strerror}") from None
            pos, tries = stop, 0
        if sequential:
            self._read_ahead(h, end)
        return out[0] if len(out) == 1 else b"".join(out)

    async def _read_exact(self, h: Reader, pos: int, end: int) -> bytes:
        try:
            return await self.node.call(lambda c: c.read_pinned(h.path, pos, end - pos, version=h.version,
                                                                size=h.size, stream_id=h.stream))
        except NotFound:
            raise _gone(h) from None

    def _read_ahead(self, h: Reader, end: int) -> None:
        """Fetch in the background the pages the policy reads ahead of a sequential read that
        ended at ``end`` (each batch one request), so the reader never waits at a page
        boundary; pages held or on their way are not asked for again."""
        for first, last in self.policy.ahead(h.cursor, end, h.held):
            task = asyncio.ensure_future(self._prefetch(h, first, last))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, h: Reader, first: int, last: int) -> None:
        ps = h.cursor.page_size
        try:
            await self._load(h, first * ps, min(h.size, (last + 1) * ps), True)
        except Exception as e:  # the reader's own read will ask again, and report the error
            log.debug("read-ahead of %s pages %d-%d: %s", h.path, first, last, e)

    async def _load(self, h: Reader, pos: int, end: int, sequential: bool) -> None:
        """Bring the pages covering ``[pos, end)`` into the page table (the policy's span:
        whole pages for a sequential reader, exactly the range for a random one; a
        descriptor received covers its whole page anyway), once: a fetch of the same page
        in flight is waited for."""
        cur = h.cursor
        ps = cur.page_size
        start, stop = self.policy.span(cur, pos, end, sequential)
        keys = [(h.path, h.version, i) for i in range(start // ps, (stop - 1) // ps + 1)]
        mine, fut = self.pages.begin(keys)
        if not mine:
            try:
                await asyncio.shield(fut)
            except Exception:  # the caller looks again, and fetches itself
                pass
            return
        try:
            try:
                pieces = await self.node.call(lambda c: c.page_pieces(h.path, start, stop - start,
                                                                     version=h.version, size=h.size,
                                                                     stream_id=h.stream))
            except NotFound:
                raise _gone(h) from None
            if pieces is None:  # no local node: HTTP, exactly the range
                data = await self._read_exact(h, pos, end)
                cur.keep_inline(pos // ps, Cached(pos, pos + len(data), data=data))
            else:
                self.pages.keep_pieces(h.path, h.version, start, pieces, ps, h.size, cur.keep_inline)
        except BaseException as e:
            self.pages.done(keys, fut, e)
            raise
        self.pages.done(keys, fut)

    def close(self) -> None:
        log.info("page table: %d reads from held descriptors, %d fetches", self.pages.hits, self.pages.fetches)
        for task in self._tasks:
            task.cancel()
        self.pages.clear()


def _gone(h: Reader) -> FSError:
    """A pinned read of a file no longer in the store (unlinked, replaced): the version the
    handle opened is gone, so ESTALE (docs/SEMANTICS.md), not ENOENT."""
    return FSError(errno.ESTALE, f"{h.path}: the version opened is no longer in the store")


__all__ = ["Reader", "Readers"]
