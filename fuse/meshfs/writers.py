"""meshfs's write path: a new file streamed to the node as it is written, committed at close.

A new file (``create``, or ``open`` with ``O_TRUNC``) streams to the node as
it is written, through a bounded queue (``WRITE_QUEUE`` chunks: a slow store
slows the writer, it never fills memory), and the node streams it on to the
under-store (``MeshClient.put`` with a generator). The file is committed at
the first ``close`` after bytes were written (the flush before any write is
a dup()ed descriptor closing, as a shell's ``> file`` does), at ``fsync``, or
at the last close; until then other clients do not see it, and a failed
upload leaves the old file. A write after the commit is EBADF. Writes must be
sequential: a write at any other offset is ``EINVAL``. There is no retry on
another node mid-stream (the chunks already sent would be lost): the error is
returned at close.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from meshd.client.sdk import Status
from meshd.errors import errno_of
from meshfs.metadata import Metadata
from meshfs.node import FSError, Node

log = logging.getLogger(__name__)

WRITE_QUEUE = 16
_DONE = object()
_ABORT = object()


class Writer:
    """A new file streamed to the node as it is written; committed by ``Writers.finish``."""

    def __init__(self, node: Node, path: str) -> None:
        self.path = path
        self.offset = 0
        self.closed = False
        self.q: queue.Queue[Any] = queue.Queue(maxsize=WRITE_QUEUE)
        self.started = time.time()
        # no retry on another connection: the chunks already sent would be lost
        self.future: Future[Status] = node.pool.submit(lambda: node.client().put(path, self._chunks()))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if item is _ABORT:
                raise OSError(errno.ECANCELED, "write abandoned")
            yield item

    def feed(self, item: Any, timeout: float) -> None:
        """Queue ``item`` for the upload (blocking while the queue is full); raises the
        upload's own error if it has failed."""
        deadline = time.monotonic() + timeout
        while True:
            if self.future.done():
                exc = self.future.exception()
                raise exc if exc is not None else FSError(errno.EIO, "upload ended early")
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    raise FSError(errno.EIO, f"write to {self.path}: the node took no data for {timeout:g} s") from None

    def abort(self) -> None:
        if not self.closed:
            try:
                self.q.put_nowait(_ABORT)
            except queue.Full:
                pass


class Writers:
    def __init__(self, node: Node, meta: Metadata) -> None:
        self.node, self.meta = node, meta
        self.writing: dict[str, Writer] = meta.writing  # path -> its writer (the metadata shows it)

    def start(self, path: str) -> Writer:
        if path in self.writing:
            raise FSError(errno.EBUSY, f"{path} is already being written")
        w = Writer(self.node, path)
        self.writing[path] = w
        self.meta.invalidate(path)
        return w

    async def write(self, w: Writer, off: int, buf: bytes) -> int:
        if w.closed:
            raise FSError(errno.EBADF, f"{w.path} was already committed (flush/fsync ends a write)")
        if off != w.offset:
            raise FSError(errno.EINVAL, f"{w.path}: writes must be sequential (expected offset {w.offset}, "
                                        f"got {off})")
        data = bytes(buf)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.node.pool, w.feed, data, self.node.timeout)
        except FSError:
            raise
        except Exception as e:
            raise FSError(errno_of(e), str(e)) from None
        w.offset += len(data)
        return len(data)

    async def flush(self, w: Writer, fsync: bool) -> None:
        """``close`` (flush) commits a file once bytes were written to it; ``fsync`` commits
        it whatever its size. A flush before any write does not: a shell's ``> file`` opens,
        dup()s and closes the first descriptor before it writes through the second."""
        if w.closed:
            return
        if w.future.done() and w.future.exception() is not None:
            await self.finish(w)  # raises the upload's error now, at close()
        elif fsync or w.offset > 0:
            await self.finish(w)

    async def finish(self, w: Writer) -> None:
        """End the stream and wait for the node's commit (errors are the upload's)."""
        w.closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.node.pool, w.feed, _DONE, self.node.timeout)
            st = await asyncio.wait_for(asyncio.wrap_future(w.future), self.node.timeout + 60)
        except TimeoutError:
            raise FSError(errno.EIO, f"{w.path}: the upload did not finish") from None
        except FSError:
            raise
        except Exception as e:
            raise FSError(errno_of(e), str(e)) from None
        finally:
            if self.writing.get(w.path) is w:
                del self.writing[w.path]
            self.meta.invalidate(w.path)
        self.meta.remember_status(st, w.path)

    async def release(self, w: Writer) -> None:
        """The last close: commit what was not committed yet."""
        if not w.closed:
            try:
                await self.finish(w)
            except FSError as e:
                log.warning("committing %s at release failed: %s", w.path, e)


__all__ = ["WRITE_QUEUE", "Writer", "Writers"]
