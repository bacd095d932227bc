"""meshfs's filesystem core: the POSIX view of the mesh, apart from the FUSE binding.

``fuse/ops.py`` adapts pyfuse3's callbacks to this class; everything that
decides something lives here, so the same core could serve another binding.

**Inodes.** A path gets an inode number the first time the kernel sees it
(lookup, create, mkdir, readdir) and keeps it while the kernel holds a
reference (``forget`` releases it); a rename moves the path, the inode stays.

**Metadata.** File statuses and "not found" answers are kept ``ttl`` seconds
(default 1 s), at most ``MAX_META`` of them, and the kernel is told to keep
entries and attributes as long; this client's own changes update or drop
them at once. ``drop_caches()`` forgets them all (``meshfs drop-cache
MOUNTPOINT``, which sets the xattr ``user.mesh.drop_cache`` on the mount).

**Reads.** ``open`` pins the file's version: every read of the handle asks
for that version (a file replaced meanwhile reads as ESTALE, never as a mix).
Bytes come from the local node's short-circuit socket as page-file
descriptors, kept per handle (the last ``PAGES_PER_HANDLE`` pages): the next
reads of a page are a ``pread`` of a descriptor already held, with no round
trip to the node. A sequential reader asks for whole pages (the node reads
ahead on the handle's stream id); a random reader asks for exactly its range,
so nothing beyond the covering pages is fetched. With no local node, reads go
over HTTP, exactly the range asked. Memory does not grow with bytes read: a
handle holds descriptors, not bytes, and at most ``INLINE_PAGES`` inline
segments (NoCache mounts). The kernel keeps a file's pages in its page cache
across opens while the file's version is unchanged.

**Writes.** A new file (``create``, or ``open`` with ``O_TRUNC``) streams to
the node as it is written, through a bounded queue (``WRITE_QUEUE`` chunks:
a slow store slows the writer, it never fills memory), and the node streams
it on to the under-store. The file is committed at the first ``close`` after
bytes were written (the flush before any write is a dup()ed descriptor
closing, as a shell's ``> file`` does), at ``fsync``, or at the last close;
until then other clients do not see it, and a failed upload leaves the old
file. A write after the commit is EBADF. Writes must be sequential: a write at any
other offset is ``EINVAL``; writing into an existing file without ``O_TRUNC``
(random overwrite) is ``ENOTSUP``; so is truncating to a size other than 0 or
the current size. ``chmod``, ``chown`` and ``utimens`` are accepted and change
nothing (the under-stores keep no owners or modes; docs/SEMANTICS.md).

**Failures.** Errors become errnos through the mesh's one table
(``MeshError.errno``). A node that stops answering is reconnected (the
endpoint is read again, so a restarted node on new ports is found) and the
call retried once; calls time out after ``timeout`` seconds: EIO, never a
hang.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshd import paths
from meshd.client import MeshClient, Status
from meshd.errors import MeshError, NodeUnavailable, NotFound

log = logging.getLogger(__name__)

ROOT = 1
MAX_META = 100_000
PAGES_PER_HANDLE = 8
INLINE_PAGES = 2
WRITE_QUEUE = 16
LIST_PAGE = 1000
T = TypeVar("T")


class FSError(Exception):
    """An errno for the kernel."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno_))
        self.errno = errno_


def errno_of(e: BaseException) -> int:
    if isinstance(e, FSError):
        return e.errno
    if isinstance(e, MeshError):
        return e.errno
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return errno.EIO


@dataclass
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    version: str


@dataclass
class Cached:
    """One cached range of a page: a descriptor and the file offset of ``start``, or bytes."""

    start: int
    end: int
    fd: int | None = None
    base: int = 0
    data: bytes | None = None


@dataclass
class Reader:
    path: str
    version: str
    size: int
    stream: str
    page_size: int
    pages: OrderedDict[int, Cached] = field(default_factory=OrderedDict)
    next_offset: int = 0

    def close(self) -> None:
        for c in self.pages.values():
            if c.fd is not None:
                os.close(c.fd)
        self.pages.clear()

    def find(self, pos: int) -> Cached | None:
        c = self.pages.get(pos // self.page_size)
        if c is not None and c.start <= pos < c.end:
            self.pages.move_to_end(pos // self.page_size)
            return c
        return None

    def keep(self, index: int, c: Cached) -> None:
        old = self.pages.pop(index, None)
        if old is not None and old.fd is not None:
            os.close(old.fd)
        self.pages[index] = c
        inline = [i for i, v in self.pages.items() if v.data is not None]
        while len(self.pages) > PAGES_PER_HANDLE or len(inline) > INLINE_PAGES:
            victim = inline.pop(0) if len(inline) > INLINE_PAGES else next(iter(self.pages))
            gone = self.pages.pop(victim)
            if gone.fd is not None:
                os.close(gone.fd)
            inline = [i for i, v in self.pages.items() if v.data is not None]


_DONE = object()
_ABORT = object()


class Writer:
    """A new file streamed to the node as it is written; committed by ``finish``."""

    def __init__(self, core: MeshFS, path: str) -> None:
        self.path = path
        self.offset = 0
        self.closed = False
        self.q: queue.Queue[Any] = queue.Queue(maxsize=WRITE_QUEUE)
        self.started = time.time()
        # no retry on another connection: the chunks already sent would be lost
        self.future: Future[Status] = core.pool.submit(lambda: core.client().put(path, self._chunks()))

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


class MeshFS:
    def __init__(self, endpoint: str | None, ttl: float = 1.0, timeout: float = 30.0, uid: int | None = None,
                 gid: int | None = None, file_mode: int = 0o644, dir_mode: int = 0o755,
                 client_factory: Callable[[str | None, float], MeshClient] | None = None) -> None:
        self.endpoint = endpoint
        self.ttl = ttl
        self.timeout = timeout
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.file_mode, self.dir_mode = file_mode, dir_mode
        self._factory = client_factory or (lambda ep, t: MeshClient(ep, t))
        self._client: MeshClient | None = None
        self._client_lock = threading.Lock()
        self._reconnected = 0.0
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="meshfs")
        self.paths: dict[int, str] = {ROOT: "/"}
        self.inodes: dict[str, int] = {"/": ROOT}
        self.lookups: dict[int, int] = {ROOT: 1}
        self._next_ino = ROOT + 1
        self.meta: OrderedDict[str, tuple[float, Status | None]] = OrderedDict()
        self.handles: dict[int, Reader | Writer] = {}
        self.writing: dict[str, Writer] = {}
        self.versions: dict[int, str] = {}  # the version each inode had at its last open (keep_cache)
        self._next_fh = 1
        self.dirs: dict[int, tuple[str, list[tuple[int, Status]], bool]] = {}
        self._mounts: list[tuple[str, dict[str, str]]] = []
        self._mounts_at = -1e9

    # ---- the node --------------------------------------------------------

    def client(self) -> MeshClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._factory(self.endpoint, self.timeout)
            return self._client

    def _reconnect(self, why: BaseException) -> bool:
        """Drop the client so the next call finds the node again; at most once a second."""
        with self._client_lock:
            if time.monotonic() - self._reconnected < 1.0:
                return False
            self._reconnected = time.monotonic()
            old, self._client = self._client, None
        log.warning("node unreachable (%s): reconnecting", why)
        if old is not None:
            try:
                old.close()
            except Exception:  # the old client's sockets are dead anyway
                pass
        return True

    def with_client(self, fn: Callable[[MeshClient], T]) -> T:
        """``fn(client)``, once more with a fresh client if the node was unreachable."""
        try:
            return fn(self.client())
        except (NodeUnavailable, ConnectionError) as e:
            if not self._reconnect(e):
                raise
            return fn(self.client())

    async def call(self, fn: Callable[[MeshClient], T]) -> T:
        """A blocking client call on the pool, bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.pool, self.with_client, fn), self.timeout)
        except TimeoutError:
            raise FSError(errno.EIO, f"the mesh did not answer within {self.timeout:g} s") from None

    async def writable(self, path: str) -> None:
        """Fail early, before a write starts: EROFS on a read-only mount, EACCES outside every
        mount (the directories above the mount points are the mesh's, not the user's)."""
        now = time.monotonic()
        if now - self._mounts_at > max(self.ttl, 5.0):
            got = await self.call(lambda c: [(m.path, dict(m.options)) for m in c.mounts()])
            self._mounts, self._mounts_at = got, now
        best: tuple[str, dict[str, str]] | None = None
        for mpath, options in self._mounts:
            if paths.is_within(path, mpath) and path != mpath and (best is None or len(mpath) > len(best[0])):
                best = (mpath, options)
        if best is None:
            raise FSError(errno.EACCES, f"{path} is not inside a mount")
        if best[1].get("read_only", "false").lower() in ("1", "true", "yes", "on"):
            raise FSError(errno.EROFS, f"{best[0]} is mounted read-only")

    # ---- inodes and metadata ---------------------------------------------

    def path_of(self, ino: int) -> str:
        p = self.paths.get(ino)
        if p is None:
            raise FSError(errno.ESTALE, f"inode {ino} is gone")
        return p

    def child(self, parent: int, name: bytes) -> str:
        try:
            n = name.decode()
        except UnicodeDecodeError:
            raise FSError(errno.EINVAL, "file names must be UTF-8") from None
        if n in ("", ".", "..") or "/" in n or "\0" in n:
            raise FSError(errno.EINVAL, f"bad name {n!r}")
        return paths.join(self.path_of(parent), n)

    def ino(self, path: str) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self.inodes[path], self.paths[ino] = ino, path
            self.lookups[ino] = 0
        return ino

    def remember(self, path: str) -> int:
        """The kernel now holds one more reference to ``path``'s inode."""
        ino = self.ino(path)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return ino

    def forget(self, ino: int, n: int) -> None:
        if ino == ROOT:
            return
        left = self.lookups.get(ino, 0) - n
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        path = self.paths.pop(ino, None)
        if path is not None and self.inodes.get(path) == ino:
            del self.inodes[path]
        self.versions.pop(ino, None)

    def moved(self, src: str, dst: str) -> None:
        """A rename: every known path under ``src`` now lives under ``dst``."""
        for path in [p for p in self.inodes if paths.is_within(p, src)]:
            ino = self.inodes.pop(path)
            new = dst + path[len(src):]
            old_ino = self.inodes.get(new)
            if old_ino is not None and old_ino != ino:  # the replaced file's inode is orphaned
                self.paths.pop(old_ino, None)
            self.inodes[new], self.paths[ino] = ino, new

    def remember_status(self, st: Status | None, path: str) -> None:
        self.meta[path] = (time.monotonic() + self.ttl, st)
        self.meta.move_to_end(path)
        while len(self.meta) > MAX_META:
            self.meta.popitem(last=False)

    def invalidate(self, path: str) -> None:
        self.meta.pop(path, None)
        self.meta.pop(paths.parent(path), None)

    def drop_caches(self) -> int:
        n = len(self.meta)
        self.meta.clear()
        return n

    async def status(self, path: str) -> Status:
        w = self.writing.get(path)
        if w is not None:
            return Status(path, w.offset, w.started, "", False)
        hit = self.meta.get(path)
        if hit is not None and hit[0] > time.monotonic():
            if hit[1] is None:
                raise FSError(errno.ENOENT)
            return hit[1]
        try:
            st = await self.call(lambda c: c.stat(path))
        except NotFound:
            self.remember_status(None, path)
            raise FSError(errno.ENOENT) from None
        self.remember_status(st, path)
        return st

    async def maybe_status(self, path: str) -> Status | None:
        """The status, or None when nothing is at ``path``."""
        try:
            return await self.status(path)
        except FSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None

    def attr(self, st: Status, ino: int) -> Attr:
        return Attr(ino, st.is_dir, st.size, st.mtime, st.version)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        path = self.child(parent, name)
        st = await self.status(path)
        return self.attr(st, self.remember(path))

    async def getattr(self, ino: int) -> Attr:
        path = self.path_of(ino)
        return self.attr(await self.status(path), ino)

    # ---- directories -----------------------------------------------------

    async def opendir(self, ino: int) -> int:
        path = self.path_of(ino)
        st = await self.status(path)
        if not st.is_dir:
            raise FSError(errno.ENOTDIR)
        fh = self._new_fh()
        self.dirs[fh] = (path, [], True)
        return fh

    async def entries(self, fh: int, start: int) -> list[tuple[int, Status]]:
        """Entries ``(id, status)`` after id ``start`` (0: from the beginning), one page of
        the directory at a time as the kernel asks for them: huge directories stream."""
        path, page, more = self.dirs[fh]
        if page and page[0][0] - 1 <= start < page[-1][0]:
            return [e for e in page if e[0] > start]
        if page and start >= page[-1][0]:
            if not more:
                return []
            after, first_id = page[-1][1].path.rsplit("/", 1)[-1], page[-1][0] + 1
        else:  # the beginning, or a seek back before this page: list from the start
            after, first_id = "", 1
        got, more = await self.call(lambda c: c.ls_page(path, after, LIST_PAGE))
        if not after and path in self._writing_dirs():
            got = sorted(self._merge_writing(path, got), key=lambda s: s.path.rsplit("/", 1)[-1].encode())
        for s in got:
            self.remember_status(s, s.path)
        page = [(first_id + i, s) for i, s in enumerate(got)]
        self.dirs[fh] = (path, page, more)
        if not page:
            return []
        if start >= page[-1][0]:
            return await self.entries(fh, start)
        return [e for e in page if e[0] > start]

    def _writing_dirs(self) -> set[str]:
        return {paths.parent(p) for p in self.writing}

    def _merge_writing(self, path: str, got: list[Status]) -> list[Status]:
        names = {s.path for s in got}
        extra = [Status(p, w.offset, w.started, "", False) for p, w in self.writing.items()
                 if paths.parent(p) == path and p not in names]
        return got + extra

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def mkdir(self, parent: int, name: bytes) -> Attr:
        path = self.child(parent, name)
        await self.writable(path)
        if await self.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        await self.call(lambda c: c.mkdir(path))
        self.invalidate(path)
        return self.attr(await self.status(path), self.remember(path))

    async def rmdir(self, parent: int, name: bytes) -> None:
        path = self.child(parent, name)
        await self.writable(path)
        st = await self.status(path)
        if not st.is_dir:
            raise FSError(errno.ENOTDIR)
        await self.call(lambda c: c.rm(path))
        self.invalidate(path)

    async def unlink(self, parent: int, name: bytes) -> None:
        path = self.child(parent, name)
        await self.writable(path)
        st = await self.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        await self.call(lambda c: c.rm(path))
        self.invalidate(path)

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        src, dst = self.child(parent, name), self.child(new_parent, new_name)
        if flags:
            raise FSError(errno.EINVAL, "rename flags (RENAME_NOREPLACE, RENAME_EXCHANGE) are not supported")
        await self.writable(src)
        await self.writable(dst)
        if src in self.writing:
            raise FSError(errno.EBUSY, f"{src} is still being written")
        st = await self.status(src)
        dst_st = await self.maybe_status(dst)
        if dst_st is not None:
            if st.is_dir and not dst_st.is_dir:
                raise FSError(errno.ENOTDIR)
            if not st.is_dir and dst_st.is_dir:
                raise FSError(errno.EISDIR)
        if st.is_dir and paths.is_within(dst, src):
            raise FSError(errno.EINVAL, "cannot move a directory into itself")
        await self.call(lambda c: c.rename(src, dst))
        for p in (src, dst):
            self.invalidate(p)
        for p in [p for p in self.meta if paths.is_within(p, src)]:
            self.meta.pop(p, None)
        self.moved(src, dst)

    # ---- files -------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle, and whether the kernel may keep the file's cached pages."""
        path = self.path_of(ino)
        mode = flags & os.O_ACCMODE
        if mode != os.O_RDONLY:
            await self.writable(path)
            if flags & os.O_TRUNC:
                return self._writer(path), False
            if path in self.writing:
                raise FSError(errno.EBUSY, f"{path} is being written by another handle")
            raise FSError(errno.ENOTSUP, "files are written whole: open with O_TRUNC (random overwrite "
                                         "and append are not supported)")
        st = await self.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        if path in self.writing:
            raise FSError(errno.EBUSY, f"{path} is being written; it can be read once closed")
        fh = self._new_fh()
        self.handles[fh] = Reader(path, st.version, st.size, MeshClient.new_stream_id(),
                                  self.client().page_size or (4 << 20))
        keep = self.versions.get(ino) == st.version
        self.versions[ino] = st.version
        return fh, keep

    def _writer(self, path: str) -> int:
        if path in self.writing:
            raise FSError(errno.EBUSY, f"{path} is already being written")
        w = Writer(self, path)
        self.writing[path] = w
        fh = self._new_fh()
        self.handles[fh] = w
        self.invalidate(path)
        return fh

    async def create(self, parent: int, name: bytes, flags: int) -> tuple[int, Attr]:
        path = self.child(parent, name)
        await self.writable(path)
        if flags & os.O_EXCL and await self.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        parent_path = paths.parent(path)
        pst = await self.status(parent_path)
        if not pst.is_dir:
            raise FSError(errno.ENOTDIR)
        fh = self._writer(path)
        w = self.handles[fh]
        assert isinstance(w, Writer)
        return fh, Attr(self.remember(path), False, 0, w.started, "")

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if not isinstance(h, Reader):
            raise FSError(errno.EBADF, "not open for reading")
        end = min(h.size, off + size)
        if off >= end:
            return b""
        sequential = off == h.next_offset
        h.next_offset = end
        out: list[bytes] = []
        pos = off
        while pos < end:
            c = h.find(pos)
            if c is None:
                await self._fetch(h, pos, end, sequential)
                c = h.find(pos)
                if c is None:  # inline bytes beyond the handle's budget: read exactly this range
                    out.append(await self._read_exact(h, pos, end))
                    break
            stop = min(end, c.end)
            if c.fd is not None:
                data = os.pread(c.fd, stop - pos, c.base + pos - c.start)
                if len(data) != stop - pos:
                    raise FSError(errno.EIO, f"cache page of {h.path} is shorter than announced")
            else:
                assert c.data is not None
                data = c.data[pos - c.start:stop - c.start]
            out.append(data)
            pos = stop
        return out[0] if len(out) == 1 else b"".join(out)

    async def _read_exact(self, h: Reader, pos: int, end: int) -> bytes:
        return await self.call(lambda c: c.read_pinned(h.path, pos, end - pos, version=h.version, size=h.size,
                                                       stream_id=h.stream))

    async def _fetch(self, h: Reader, pos: int, end: int, sequential: bool) -> None:
        ps = h.page_size
        if sequential:  # whole pages: the next reads of them need no round trip
            start, stop = (pos // ps) * ps, min(h.size, ((end - 1) // ps + 1) * ps)
        else:
            start, stop = pos, end
        pieces = await self.call(lambda c: c.page_pieces(h.path, start, stop - start, version=h.version,
                                                        size=h.size, stream_id=h.stream))
        if pieces is None:  # no local node: HTTP, exactly the range
            data = await self._read_exact(h, pos, end)
            h.keep(pos // ps, Cached(pos, pos + len(data), data=data))
            return
        logical = start
        inline: list[bytes] = []  # consecutive inline pieces of one page become one entry
        inline_at = start

        def keep_inline() -> None:
            if inline:
                data = inline[0] if len(inline) == 1 else b"".join(inline)
                h.keep(inline_at // ps, Cached(inline_at, inline_at + len(data), data=data))
                inline.clear()

        for p in pieces:
            if p.data is not None:
                if inline and (logical // ps != inline_at // ps):
                    keep_inline()
                if not inline:
                    inline_at = logical
                inline.append(p.data)
            else:
                keep_inline()
                if p.length > 0:
                    h.keep(logical // ps, Cached(logical, logical + p.length, fd=p.fd, base=p.offset))
                elif p.fd is not None:
                    os.close(p.fd)
                p.fd = None  # the handle owns it now
            logical += p.length
        keep_inline()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        w = self.handles.get(fh)
        if not isinstance(w, Writer):
            raise FSError(errno.EBADF, "not open for writing")
        if w.closed:
            raise FSError(errno.EBADF, f"{w.path} was already committed (flush/fsync ends a write)")
        if off != w.offset:
            raise FSError(errno.EINVAL, f"{w.path}: writes must be sequential (expected offset {w.offset}, "
                                        f"got {off})")
        data = bytes(buf)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, w.feed, data, self.timeout)
        except FSError:
            raise
        except Exception as e:
            raise FSError(errno_of(e), str(e)) from None
        w.offset += len(data)
        return len(data)

    async def flush(self, fh: int, fsync: bool = False) -> None:
        """``close`` (flush) commits a file once bytes were written to it; ``fsync`` commits
        it whatever its size. A flush before any write does not: a shell's ``> file`` opens,
        dup()s and closes the first descriptor before it writes through the second."""
        h = self.handles.get(fh)
        if isinstance(h, Writer) and not h.closed:
            if h.future.done() and h.future.exception() is not None:
                await self._finish(h)  # raises the upload's error now, at close()
            elif fsync or h.offset > 0:
                await self._finish(h)

    async def _finish(self, w: Writer) -> None:
        w.closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, w.feed, _DONE, self.timeout)
            st = await asyncio.wait_for(asyncio.wrap_future(w.future), self.timeout + 60)
        except TimeoutError:
            raise FSError(errno.EIO, f"{w.path}: the upload did not finish") from None
        except FSError:
            raise
        except Exception as e:
            raise FSError(errno_of(e), str(e)) from None
        finally:
            if self.writing.get(w.path) is w:
                del self.writing[w.path]
            self.invalidate(w.path)
        self.remember_status(st, w.path)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if isinstance(h, Reader):
            h.close()
        elif isinstance(h, Writer) and not h.closed:
            try:
                await self._finish(h)
            except FSError as e:
                log.warning("committing %s at release failed: %s", h.path, e)

    async def truncate(self, ino: int, size: int, fh: int | None) -> None:
        path = self.path_of(ino)
        await self.writable(path)
        w = self.writing.get(path)
        if w is not None:
            if size == w.offset:
                return
            raise FSError(errno.ENOTSUP, "a file being written can only be truncated to its current size")
        st = await self.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        if size == st.size:
            return
        if size != 0:
            raise FSError(errno.ENOTSUP, "truncate to a size other than 0 is not supported")
        new = await self.call(lambda c: c.put(path, b""))
        self.invalidate(path)
        self.remember_status(new, path)

    async def statfs(self) -> tuple[int, int, int]:
        """(block size, total blocks, free blocks) of the node's cache."""
        r = await self.call(lambda c: c.report())
        tiers = r.get("tiers", {})
        total = sum(int(t.get("capacity", 0)) for t in tiers.values())
        used = sum(int(t.get("used", 0)) for t in tiers.values())
        bs = 1 << 16
        return bs, max(1, total // bs), max(0, (total - used) // bs)

    async def mesh_xattrs(self, ino: int) -> dict[str, bytes]:
        """The mesh's state of a file or directory: its home region and the bytes of it
        this region's caches hold."""
        path = self.path_of(ino)
        doc = await self.call(lambda c: c.place_state([path]))
        d = doc["datasets"][path]
        region = doc.get("region") or "local"
        cached = min(int(d["size"]), sum(int(b) for b in d["cached"].get(region, {}).values()))
        return {"user.mesh.home_region": str(d["home"]).encode(), "user.mesh.cached_bytes": str(cached).encode(),
                "user.mesh.region": str(region).encode()}

    def close(self) -> None:
        for h in self.handles.values():
            if isinstance(h, Reader):
                h.close()
            elif not h.closed:
                try:
                    h.q.put_nowait(_ABORT)
                except queue.Full:
                    pass
        self.handles.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()


def mode_of(fs: MeshFS, a: Attr) -> int:
    return (stat.S_IFDIR | fs.dir_mode) if a.is_dir else (stat.S_IFREG | fs.file_mode)


__all__ = ["ROOT", "Attr", "FSError", "MeshFS", "errno_of", "mode_of"]
