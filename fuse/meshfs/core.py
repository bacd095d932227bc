"""meshfs's filesystem core: the POSIX view of the mesh, apart from the FUSE binding.

``fuse/meshfs/ops.py`` adapts pyfuse3's callbacks to this class; everything that
decides something lives here, so the same core could serve another binding.

**Inodes.** A path gets an inode number the first time the kernel sees it
(lookup, create, mkdir, readdir) and keeps it while the kernel holds a
reference (``forget`` releases it); a rename moves the path, the inode stays.

**Metadata.** File statuses, whole directory listings and "not found" answers
are kept here, and the kernel is told to keep entries and attributes as
long: ``ttl`` seconds (default 1 s), or, on a mount whose ``sync_interval``
is longer, that long (at most ``max_ttl``, default 300 s): the mount's owner
has said the node itself may answer from metadata that old, so this client
adds no staleness of its own for changes made behind the mesh's back. Changes
made through the mesh by *other* clients show here after that time too (as
with rclone's ``--dir-cache-time``); this client's own changes update or drop
the entries at once. An ``open`` never trusts a status older than ``ttl``: it
asks the node, pins the version it gets, and, when that is not what the
kernel was told, has the kernel drop the inode's attributes so its next read
learns the new size. At most ``MAX_META`` statuses and ``MAX_LISTED`` listed
entries are kept (LRU). ``drop_caches()`` forgets them all and every page
descriptor (``meshfs drop-cache MOUNTPOINT``, which sets the xattr
``user.mesh.drop_cache`` on the mount).

**Reads.** ``open`` pins the file's version: every read of the handle asks
for that version (a file replaced meanwhile reads as ESTALE, never as a mix).
Bytes come from the local node's short-circuit socket as page-file
descriptors, kept in one ``PageTable`` (fuse/meshfs/pages.py) for all handles: a
descriptor covers its whole page, so later reads of any part of that page,
by any handle, are a ``pread`` with no round trip to the node, and
concurrent reads of one page wait for one fetch. A sequential reader asks
for whole pages and has the next ``READ_AHEAD_PAGES`` pages' descriptors
fetched in the background, ``READ_AHEAD_BATCH`` per request (the node reads
ahead on the handle's stream id too); a random reader asks for exactly its
range, so nothing beyond the covering pages is fetched from the under-store.
With no local node, reads go over HTTP, exactly the range asked. Memory does
not grow with bytes read: the table holds descriptors, not bytes, and a
handle at most ``INLINE_PAGES`` inline segments (NoCache mounts). The kernel
keeps a file's pages in its page cache across opens while the file's version
is unchanged.

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
import functools
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
from meshd.client.sdk import MeshClient, Piece, Status
from meshd.errors import MeshError, NodeUnavailable, NotFound, errno_of
from meshfs.pages import Cached, PageTable, whole_page

log = logging.getLogger(__name__)

ROOT = 1
MAX_META = 100_000
INLINE_PAGES = 2
READ_AHEAD_PAGES = 6  # page descriptors fetched ahead of a sequential reader (< pages.MAX_MEMFD)
READ_AHEAD_BATCH = 4  # pages per read-ahead request to the node
DIRS_AHEAD = 2  # sibling directories listed ahead of a tree walk (mounts that keep listings)
LIST_AFTER = 4  # lookups in one directory before it is listed whole (mounts that keep listings)
MAX_LISTED = 200_000  # statuses kept in cached directory listings, all directories together
WRITE_QUEUE = 16
LIST_PAGE = 1000
T = TypeVar("T")


class FSError(OSError):
    """An errno for the kernel, decided by meshfs itself (the node's errors carry
    theirs: :func:`meshd.errors.errno_of` is the one table)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    version: str
    ttl: float = 1.0  # how long the kernel may keep it (entry and attribute timeout)


@dataclass
class Reader:
    path: str
    version: str
    size: int
    stream: str
    page_size: int
    inline: OrderedDict[int, Cached] = field(default_factory=OrderedDict)  # bytes, not descriptors
    next_offset: int = 0
    ahead: int = -1  # the last page index a read-ahead was started for

    def close(self) -> None:
        self.inline.clear()

    def find_inline(self, pos: int) -> Cached | None:
        c = self.inline.get(pos // self.page_size)
        if c is not None and c.start <= pos < c.end:
            self.inline.move_to_end(pos // self.page_size)
            return c
        return None

    def keep_inline(self, index: int, c: Cached) -> None:
        self.inline.pop(index, None)
        self.inline[index] = c
        while len(self.inline) > INLINE_PAGES:
            self.inline.popitem(last=False)


@dataclass
class DirHandle:
    path: str
    page: list[tuple[int, Status]]  # (entry id, status), the ids consecutive
    more: bool  # the node has entries after this page
    seen: list[Status] | None  # everything listed so far, from the start (for the listing cache)


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
                 client_factory: Callable[[str | None, float], MeshClient] | None = None,
                 max_ttl: float = 300.0) -> None:
        self.endpoint = endpoint
        self.ttl = ttl
        self.max_ttl = max(ttl, max_ttl)
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
        self.meta: OrderedDict[str, tuple[float, float, Status | None]] = OrderedDict()  # expires, fetched
        self.listings: OrderedDict[str, tuple[float, list[Status]]] = OrderedDict()  # whole directories
        self._listed = 0  # statuses in self.listings
        self._lookups_in: dict[str, int] = {}  # directory -> lookups of names not known in it
        self._unlistable: set[str] = set()  # directories too big to list for a lookup
        self._dirs_ahead: dict[str, asyncio.Task[None]] = {}  # directory read-ahead in flight
        self._sibling_order: dict[str, tuple[list[Status], dict[str, int]]] = {}
        self._last_opened: dict[str, int] = {}  # parent -> index of the child directory opened last
        self.pages = PageTable()
        self._tasks: set[asyncio.Task[None]] = set()  # read-aheads in flight
        self.handles: dict[int, Reader | Writer] = {}
        self.writing: dict[str, Writer] = {}
        self.versions: dict[int, str] = {}  # the version each inode had at its last open (keep_cache)
        self.told: dict[int, str] = {}  # the version of each inode's attributes the kernel was last given
        self._next_fh = 1
        self.dirs: dict[int, DirHandle] = {}
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
        await self._refresh_mounts()
        best = self._mount_of(path)
        if best is None or best[0] == path:
            raise FSError(errno.EACCES, f"{path} is not inside a mount")
        if best[1].get("read_only", "false").lower() in ("1", "true", "yes", "on"):
            raise FSError(errno.EROFS, f"{best[0]} is mounted read-only")

    async def _refresh_mounts(self) -> None:
        now = time.monotonic()
        if now - self._mounts_at > max(self.ttl, 5.0):
            got = await self.call(lambda c: [(m.path, dict(m.options)) for m in c.mounts()])
            self._mounts, self._mounts_at = got, now

    def _mount_of(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The mount ``path`` is in (its mount point included), from the last mount table seen."""
        best: tuple[str, dict[str, str]] | None = None
        for mpath, options in self._mounts:
            if paths.is_within(path, mpath) and (best is None or len(mpath) > len(best[0])):
                best = (mpath, options)
        return best

    def ttl_of(self, path: str) -> float:
        """How long a status of ``path`` is kept here and in the kernel: as long as the node
        itself trusts it (the mount's ``sync_interval``; -1, "until a sync", counts as
        ``max_ttl``), at least ``ttl``, at most ``max_ttl``."""
        m = self._mount_of(path)
        if m is None:
            return self.ttl
        try:
            interval = float(m[1].get("sync_interval", "0"))
        except ValueError:
            return self.ttl
        if interval < 0:
            interval = self.max_ttl
        return max(self.ttl, min(self.max_ttl, interval))

    def children_ttl(self, path: str) -> float | None:
        """``ttl_of`` every entry of directory ``path`` when they share one (``path`` is inside
        a mount), else None (a directory above mount points: each entry may be one)."""
        m = self._mount_of(path)
        if m is None or self.writing:
            return None
        return self.ttl_of(paths.join(path, "x"))

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
        self.told.pop(ino, None)

    def moved(self, src: str, dst: str) -> None:
        """A rename: every known path under ``src`` now lives under ``dst``."""
        for path in [p for p in self.inodes if paths.is_within(p, src)]:
            ino = self.inodes.pop(path)
            new = dst + path[len(src):]
            old_ino = self.inodes.get(new)
            if old_ino is not None and old_ino != ino:  # the replaced file's inode is orphaned
                self.paths.pop(old_ino, None)
            self.inodes[new], self.paths[ino] = ino, new

    def remember_status(self, st: Status | None, path: str, now: float | None = None) -> None:
        """Keep a status the node gave (``ttl_of`` its path), or a "not found" (``ttl``)."""
        now = time.monotonic() if now is None else now
        self.meta[path] = (now + (self.ttl if st is None else self.ttl_of(path)), now, st)
        self.meta.move_to_end(path)
        while len(self.meta) > MAX_META:
            self.meta.popitem(last=False)

    def _unlist(self, path: str) -> None:
        got = self.listings.pop(path, None)
        if got is not None:
            self._listed -= len(got[1])

    def invalidate(self, path: str) -> None:
        """``path`` changed here: forget its status, its parent's, and both listings."""
        parent = paths.parent(path)
        self.meta.pop(path, None)
        self.meta.pop(parent, None)
        self._unlist(path)
        self._unlist(parent)

    def drop_caches(self) -> int:
        """Forget every status, listing and page descriptor (``meshfs drop-cache``)."""
        n = len(self.meta)
        self.meta.clear()
        self.listings.clear()
        self._listed = 0
        self.pages.clear()
        return n

    async def status(self, path: str, fresh_within: float | None = None) -> Status:
        """The status of ``path``: from this client's cache while it is kept, or fetched
        when it is older than ``fresh_within`` seconds (if given)."""
        w = self.writing.get(path)
        if w is not None:
            return Status(path, w.offset, w.started, "", False)
        await self._refresh_mounts()
        now = time.monotonic()
        hit = self.meta.get(path)
        if hit is not None and hit[0] > now and (fresh_within is None or now - hit[1] <= fresh_within):
            if hit[2] is None:
                raise FSError(errno.ENOENT)
            return hit[2]
        if fresh_within is None and await self._listed_parent(path, now):
            return await self.status(path)
        try:
            st = await self.call(lambda c: c.stat(path))
        except NotFound:
            self.remember_status(None, path)
            raise FSError(errno.ENOENT) from None
        self.remember_status(st, path)
        return st

    async def _listed_parent(self, path: str, now: float) -> bool:
        """After ``LIST_AFTER`` lookups in one directory on a mount whose listings are kept
        (``ttl_of`` above ``ttl``), list the directory once instead of asking for each name
        (one request to the store instead of one per name, as a walk of a tree needs). Only
        a directory that fits in one page is kept so; a bigger one is not tried again.
        True when the listing now answers for ``path``."""
        parent = paths.parent(path)
        if parent == path or parent in self._unlistable or self.ttl_of(parent) <= self.ttl:
            return False
        n = self._lookups_in.get(parent, 0) + 1
        self._lookups_in[parent] = n
        if len(self._lookups_in) > 10_000:
            self._lookups_in.clear()
        if n < LIST_AFTER:
            return False
        self._lookups_in.pop(parent, None)
        try:
            got, more = await self.call(lambda c: c.ls_page(parent, "", LIST_PAGE))
        except (MeshError, FSError) as e:
            log.debug("listing %s for a lookup: %s", parent, e)
            return False
        if more:
            self._unlistable.add(parent)
            if len(self._unlistable) > 10_000:
                self._unlistable.clear()
            return False
        for s in got:
            self.remember_status(s, s.path, now)
        if parent not in self._writing_dirs():
            self._keep_listing(parent, got, now)
        names = {s.path for s in got}
        if path not in names:
            self.remember_status(None, path, now)
        return True

    async def maybe_status(self, path: str) -> Status | None:
        """The status, or None when nothing is at ``path``."""
        try:
            return await self.status(path)
        except FSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None

    def attr(self, st: Status, ino: int) -> Attr:
        """What the kernel is told of ``st``; it may keep it as long as this client does."""
        ttl = self.ttl if st.path in self.writing else self.ttl_of(st.path)
        self.told[ino] = st.version
        return Attr(ino, st.is_dir, st.size, st.mtime, st.version, ttl)

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
        self._walking(path)
        pending = self._dirs_ahead.get(path)
        if pending is not None:  # listed ahead of a walk: it is arriving
            try:
                await asyncio.shield(pending)
            except Exception:  # listed here instead
                pass
        fh = self._new_fh()
        listed = self.listings.get(path)
        if listed is not None and listed[0] > time.monotonic() and path not in self._writing_dirs():
            self.listings.move_to_end(path)
            self.dirs[fh] = DirHandle(path, list(enumerate(listed[1], 1)), False, None)
        else:
            self.dirs[fh] = DirHandle(path, [], True, [])
        return fh

    def _walking(self, path: str) -> None:
        """Directory read-ahead. A tree walk (find, du, rsync, os.walk, a dataset scan) opens
        the directories of a listed parent one after another, in listing order, and waits
        for each listing: on a mount that keeps listings, once two siblings were opened in
        that order, the next ``DIRS_AHEAD`` sibling directories are listed in the background."""
        parent = paths.parent(path)
        listed = self.listings.get(parent)
        if parent == path or listed is None or self.ttl_of(parent) <= self.ttl:
            return
        order = self._sibling_order.get(parent)
        if order is None or order[0] is not listed[1]:
            order = (listed[1], {st.path: i for i, st in enumerate(listed[1]) if st.is_dir})
            self._sibling_order[parent] = order
            if len(self._sibling_order) > 64:
                self._sibling_order.pop(next(iter(self._sibling_order)))
        i = order[1].get(path)
        if i is None:
            return
        last = self._last_opened.get(parent)
        self._last_opened[parent] = i
        if len(self._last_opened) > 1000:
            self._last_opened.clear()
        if last is None or not 0 < i - last <= 2:
            return
        queued = 0
        now = time.monotonic()
        for st in order[0][i + 1:]:
            if queued == DIRS_AHEAD:
                break
            if not st.is_dir:
                continue
            queued += 1
            got = self.listings.get(st.path)
            if st.path in self._dirs_ahead or (got is not None and got[0] > now):
                continue
            task = asyncio.ensure_future(self._list_ahead(st.path))
            self._dirs_ahead[st.path] = task
            task.add_done_callback(functools.partial(self._ahead_done, st.path))

    def _ahead_done(self, path: str, task: asyncio.Task[None]) -> None:
        self._dirs_ahead.pop(path, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("listing %s ahead of a walk: %s", path, task.exception())

    async def _list_ahead(self, path: str) -> None:
        now = time.monotonic()
        seen: list[Status] = []
        after = ""
        while True:
            got, more = await self.call(functools.partial(_ls_page, path=path, after=after))
            seen.extend(got)
            if not more:
                break
            if len(seen) > MAX_LISTED // 4 or not got:
                return  # too big to keep: it streams when it is opened
            after = got[-1].path.rsplit("/", 1)[-1]
        for st in seen:
            self.remember_status(st, st.path, now)
        if path not in self._writing_dirs():
            self._keep_listing(path, seen, now)

    async def entries(self, fh: int, start: int) -> list[tuple[int, Status]]:
        """Entries ``(id, status)`` after id ``start`` (0: from the beginning), one page of
        the directory at a time as the kernel asks for them: huge directories stream. A
        directory read whole from the start is kept (``ttl_of`` it, ``MAX_LISTED`` statuses
        in all) and the next ``opendir`` lists it from here."""
        d = self.dirs[fh]
        page = d.page
        if page and page[0][0] - 1 <= start < page[-1][0]:
            return [e for e in page if e[0] > start]
        if page and start >= page[-1][0]:
            if not d.more:
                return []
            after, first_id = page[-1][1].path.rsplit("/", 1)[-1], page[-1][0] + 1
        else:  # the beginning, or a seek back before this page: list from the start
            after, first_id = "", 1
            if d.seen is not None:
                d.seen = []
        path = d.path
        now = time.monotonic()
        got, more = await self.call(lambda c: c.ls_page(path, after, LIST_PAGE))
        if not after and path in self._writing_dirs():
            got = sorted(self._merge_writing(path, got), key=lambda s: s.path.rsplit("/", 1)[-1].encode())
            d.seen = None  # not the node's listing: not for the cache
        for s in got:
            self.remember_status(s, s.path, now)
        d.page, d.more = [(first_id + i, s) for i, s in enumerate(got)], more
        if d.seen is not None:
            d.seen.extend(got)
            if len(d.seen) > MAX_LISTED // 4:
                d.seen = None  # too big to keep: it streams every time
            elif not more:
                self._keep_listing(path, d.seen, now)
                d.seen = None
        if not d.page:
            return []
        if start >= d.page[-1][0]:
            return await self.entries(fh, start)
        return [e for e in d.page if e[0] > start]

    def _keep_listing(self, path: str, listed: list[Status], now: float) -> None:
        self._unlist(path)
        self.listings[path] = (now + self.ttl_of(path), listed)
        self._listed += len(listed)
        while self._listed > MAX_LISTED and self.listings:
            _, (_, gone) = self.listings.popitem(last=False)
            self._listed -= len(gone)

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
        self.pages.drop_file(path)

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
        for p in [p for p in self.listings if paths.is_within(p, src)]:
            self._unlist(p)
        self.pages.drop_file(src)
        self.pages.drop_file(dst)
        self.moved(src, dst)

    # ---- files -------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        """A handle; whether the kernel may keep the file's cached pages; whether the
        attributes the kernel holds are stale (the file changed since it was told: the
        caller has the kernel drop them, so the next read learns the new size).

        An open pins the version it finds: a status older than ``ttl`` is fetched again
        first, however long listings are kept, so a file replaced elsewhere is read new."""
        path = self.path_of(ino)
        mode = flags & os.O_ACCMODE
        if mode != os.O_RDONLY:
            await self.writable(path)
            if flags & os.O_TRUNC:
                return self._writer(path), False, False
            if path in self.writing:
                raise FSError(errno.EBUSY, f"{path} is being written by another handle")
            raise FSError(errno.ENOTSUP, "files are written whole: open with O_TRUNC (random overwrite "
                                         "and append are not supported)")
        if path in self.writing:
            raise FSError(errno.EBUSY, f"{path} is being written; it can be read once closed")
        st = await self.status(path, fresh_within=self.ttl)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        fh = self._new_fh()
        self.handles[fh] = Reader(path, st.version, st.size, MeshClient.new_stream_id(),
                                  self.client().page_size or (4 << 20))
        keep = self.versions.get(ino) == st.version
        self.versions[ino] = st.version
        stale = self.told.get(ino, st.version) != st.version
        self.told[ino] = st.version
        return fh, keep, stale

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
        ps = h.page_size
        # the kernel's read-ahead sends several READs at once: they arrive close together,
        # not always in order
        sequential = abs(off - h.next_offset) <= ps
        h.next_offset = end
        out: list[bytes] = []
        pos, tries = off, 0
        while pos < end:
            c = self.pages.find((h.path, h.version, pos // ps), pos) or h.find_inline(pos)
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
        return await self.call(lambda c: c.read_pinned(h.path, pos, end - pos, version=h.version, size=h.size,
                                                       stream_id=h.stream))

    def _read_ahead(self, h: Reader, end: int) -> None:
        """Fetch the descriptors of the next pages of a sequential reader in the background,
        so its reads never wait at a page boundary: up to ``READ_AHEAD_PAGES`` past the
        page being read, ``READ_AHEAD_BATCH`` pages per request to the node (a request
        costs the node and the client more than a page in it does)."""
        ps = h.page_size
        last = (h.size - 1) // ps
        # a handle served inline bytes (NoCache) keeps only INLINE_PAGES of them: reading
        # further ahead would fetch bytes it then drops and asks for again
        ahead, batch = (INLINE_PAGES - 1, 1) if h.inline else (READ_AHEAD_PAGES, READ_AHEAD_BATCH)
        target = min(last, (end - 1) // ps + ahead)
        h.ahead = max(h.ahead, (end - 1) // ps)
        while h.ahead < target and (target - h.ahead >= batch or target == last):
            lo, hi = h.ahead + 1, min(target, h.ahead + batch)
            h.ahead = hi
            while lo <= hi and self.pages.has((h.path, h.version, lo)):
                lo += 1
            while hi >= lo and self.pages.has((h.path, h.version, hi)):
                hi -= 1
            if lo > hi:
                continue
            task = asyncio.ensure_future(self._prefetch(h, lo, hi))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, h: Reader, first: int, last: int) -> None:
        ps = h.page_size
        try:
            await self._load(h, first * ps, min(h.size, (last + 1) * ps), True)
        except Exception as e:  # the reader's own read will ask again, and report the error
            log.debug("read-ahead of %s pages %d-%d: %s", h.path, first, last, e)

    async def _load(self, h: Reader, pos: int, end: int, sequential: bool) -> None:
        """Bring the pages covering ``[pos, end)`` into the page table (whole pages for a
        sequential reader, exactly the range for a random one: a descriptor received covers
        its whole page anyway), once: a fetch of the same page in flight is waited for."""
        ps = h.page_size
        if sequential:
            start, stop = (pos // ps) * ps, min(h.size, ((end - 1) // ps + 1) * ps)
        else:
            start, stop = pos, end
        keys = [(h.path, h.version, i) for i in range(start // ps, (stop - 1) // ps + 1)]
        mine, fut = self.pages.begin(keys)
        if not mine:
            try:
                await asyncio.shield(fut)
            except Exception:  # the caller looks again, and fetches itself
                pass
            return
        try:
            pieces = await self.call(lambda c: c.page_pieces(h.path, start, stop - start, version=h.version,
                                                            size=h.size, stream_id=h.stream))
            if pieces is None:  # no local node: HTTP, exactly the range
                data = await self._read_exact(h, pos, end)
                h.keep_inline(pos // ps, Cached(pos, pos + len(data), data=data))
            else:
                self._keep_pieces(h, start, pieces)
        except BaseException as e:
            self.pages.done(keys, fut, e)
            raise
        self.pages.done(keys, fut)

    def _keep_pieces(self, h: Reader, start: int, pieces: list[Piece]) -> None:
        """Descriptors to the page table (as whole pages), inline bytes to the handle."""
        ps = h.page_size
        logical = start
        inline: list[bytes] = []  # consecutive inline pieces of one page become one entry
        inline_at = start

        def keep_inline() -> None:
            if inline:
                data = inline[0] if len(inline) == 1 else b"".join(inline)
                h.keep_inline(inline_at // ps, Cached(inline_at, inline_at + len(data), data=data))
                inline.clear()

        try:
            for p in pieces:
                if p.data is not None:
                    if inline and (logical // ps != inline_at // ps):
                        keep_inline()
                    if not inline:
                        inline_at = logical
                    inline.append(p.data)
                else:
                    keep_inline()
                    if p.length > 0 and p.fd is not None:
                        c = whole_page(p.fd, logical, p.offset, p.length, ps, h.size)
                        p.fd = None  # the table owns it now
                        self.pages.put((h.path, h.version, c.start // ps), c)
                logical += p.length
            keep_inline()
        finally:
            for p in pieces:
                p.close()

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
        state = await self.call(lambda c: c.mesh_state(path))
        return {k: v.encode() for k, v in state.items()}

    def close(self) -> None:
        log.info("page table: %d reads from held descriptors, %d fetches", self.pages.hits, self.pages.fetches)
        for task in [*self._tasks, *self._dirs_ahead.values()]:
            task.cancel()
        self.pages.clear()
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


def _ls_page(c: MeshClient, path: str, after: str) -> tuple[list[Status], bool]:
    return c.ls_page(path, after, LIST_PAGE)


def mode_of(fs: MeshFS, a: Attr) -> int:
    return (stat.S_IFDIR | fs.dir_mode) if a.is_dir else (stat.S_IFREG | fs.file_mode)


__all__ = ["ROOT", "Attr", "FSError", "MeshFS", "mode_of"]
