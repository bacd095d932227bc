"""A file opened for reading: bound to one version, whatever front end reads it.

``MeshNode.open(path)`` returns a :class:`FileHandle` pinned to the status it
found (size, version, and so the page keys). Every read of every front end
(S3, WebHDFS, HTTP, gRPC, short-circuit, and through them ``mesh://`` and
meshfs) goes through a handle, so "old bytes or an error, never a mix" holds by
construction: each page of each read is asked for at the pinned version, and a
page fetched from the under-store is version-checked there. When the object
has changed, the read fails with :class:`~meshd.errors.VersionChanged`.

One exception, and only before any byte is delivered: a handle opened from
the node's own (possibly cached) status that finds the object changed when
fetching the first page of its first read stats again and re-pins to the new
version; a few times (``REPINS``) while each stat finds yet another version (a
file rewritten in a burst, a write-back version switching to the store's), never
to a version that has already failed. A handle opened with a version the caller names (``version=``: a
client that reads one file from several nodes or in several requests) never
re-pins.

A read (:meth:`FileHandle.read`) fetches its first page before it returns, so
"not found", "under-store down" and "object changed" are reported before a
front end commits to a response. Later pages are fetched ``window`` ahead of
the page being sent (pipelining inside one read), launched half a window at a
time so that missing pages coalesce into extents; read-ahead beyond the read's
end only happens for readers proven sequential (:mod:`meshd.cache.readahead`). A
NoCache read streams the requested range from the under-store and touches no
tier.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from meshd.cache.pages import DiskPage, MemPage, Page, PageKey, file_id, version_id
from meshd.cache.readahead import ReadAhead
from meshd.cache.sources import Got, PageSources, Pinned, Source, Target, close_unused
from meshd.errors import InvalidArgument, IsADirectory, VersionChanged
from meshd.metadata.shard import FileStatus

REPINS = 3  # versions a handle may try before its first byte (the first pin included)


@dataclass
class Segment:
    """``length`` bytes at ``offset`` of a page: bytes, or an open page file."""

    page: Page
    offset: int
    length: int
    key: PageKey | None = None

    def bytes(self) -> bytes:
        if isinstance(self.page, MemPage):
            return self.page.data[self.offset:self.offset + self.length]
        return os.pread(self.page.file.fileno(), self.length, self.offset)

    def close(self) -> None:
        if isinstance(self.page, DiskPage):
            self.page.close()


@dataclass
class ReadStream:
    status: FileStatus
    offset: int
    length: int
    segments: AsyncIterator[Segment]

    async def aclose(self) -> None:
        await self.segments.aclose()  # type: ignore[attr-defined]


def pin(t: Target, status: FileStatus) -> Pinned:
    if status.is_dir:
        raise IsADirectory(f"is a directory: {t.path}")
    return Pinned(t, status, file_id(t.mount.identity, t.rel), version_id(status.version))


class FileHandle:
    """One file at one version; any number of reads, each a :class:`ReadStream`."""

    def __init__(self, sources: PageSources, readahead: ReadAhead, file: Pinned, *,
                 restat: Callable[[Target], Awaitable[FileStatus]] | None = None) -> None:
        self._sources = sources
        self._readahead = readahead
        self._file = file
        self._restat = restat  # None: the caller named the version; never re-pinned
        self._delivered = False
        self._failed: set[str] = set()  # versions found changed before the first byte

    @property
    def status(self) -> FileStatus:
        return self._file.status

    @property
    def file(self) -> Pinned:
        return self._file

    async def read(self, offset: int = 0, length: int = -1, *, nocache: bool = False,
                   stream_key: str | None = None) -> ReadStream:
        """Bytes ``[offset, offset + length)`` (``length`` -1: to the end) of the pinned version."""
        if offset < 0 or length < -1:
            raise InvalidArgument(f"bad range: offset={offset} length={length}")
        while True:
            f = self._file
            end = f.status.size if length < 0 else min(f.status.size, offset + length)
            start = min(offset, f.status.size)
            if nocache or f.target.mount.nocache:
                self._delivered = True
                return ReadStream(f.status, start, end - start, self._nocache(f, start, end))
            extra = self._readahead.on_read(stream_key or f.fid, start, end)
            pages = self._sources.cache.page_range(start, end)
            first: Got | None = None
            if pages:
                try:
                    first = await self._sources.get(f, pages[0])
                except VersionChanged:
                    if self._delivered or self._restat is None:
                        raise
                    await self._repin()
                    continue
            self._delivered = True
            return ReadStream(f.status, start, end - start, self._segments(f, start, end, extra, first))

    async def _repin(self) -> None:
        """The object changed before this handle delivered a byte: pin the new version.
        VersionChanged when a stat finds no version not yet tried, or after ``REPINS``."""
        assert self._restat is not None
        t = self._file.target
        self._failed.add(self._file.status.version)
        status = await self._restat(t)
        if status.version in self._failed:
            raise VersionChanged(f"{t.path} changed while it was being opened")
        self._file = pin(t, status)
        if len(self._failed) + 1 >= REPINS:
            self._restat = None  # the last try: a further change fails the read

    async def _segments(self, f: Pinned, start: int, end: int, extra: int,
                        first: Got | None) -> AsyncIterator[Segment]:
        src = self._sources
        ps = src.cache.page_size
        pages = src.cache.page_range(start, end)
        last_page = (f.status.size - 1) // ps if f.status.size else -1
        ahead_stop = min(pages.stop + extra, last_page + 1)
        window = self._readahead.in_read_window()
        batch = max(1, window // 2)
        pending: dict[int, asyncio.Future[Got]] = {}
        next_launch = pages.start + 1
        try:
            for i in pages:
                if first is not None:
                    got, first = first, None
                else:
                    got = await pending.pop(i)
                # Keep up to `window` pages in flight ahead of the one being sent,
                # launched `batch` at a time so that missing pages coalesce into
                # extents (one under-store request each).
                if next_launch < ahead_stop and next_launch - i <= window - batch:
                    stop = min(next_launch + batch, ahead_stop)
                    pending.update(src.launch(f, range(next_launch, min(stop, pages.stop))))
                    if stop > pages.stop:  # read-ahead for a proven-sequential reader
                        src.prefetch(f, range(max(next_launch, pages.stop), stop))
                    next_launch = stop
                lo = max(start, i * ps) - i * ps
                hi = min(end, (i + 1) * ps) - i * ps
                src.deliver(got, f.page_len(i, ps))
                yield Segment(got.page, lo, hi - lo, f.key(i))
        finally:
            if first is not None and isinstance(first.page, DiskPage):
                first.page.close()
            for fut in pending.values():
                fut.add_done_callback(close_unused)

    async def _nocache(self, f: Pinned, start: int, end: int) -> AsyncIterator[Segment]:
        if end <= start:
            return
        t = f.target
        async for chunk in t.store.get_range(t.rel, start, end, f.status.version):
            self._sources.deliver(Got(MemPage(chunk), Source.NOCACHE), len(chunk))
            yield Segment(MemPage(chunk), 0, len(chunk))
