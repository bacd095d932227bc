"""meshfs's filesystem core: the POSIX view of the mesh, apart from the FUSE binding.

``fuse/meshfs/ops.py`` adapts pyfuse3's callbacks to this class, one call per
operation; everything that decides something lives here and in the modules
it is split into, so the same core could serve another binding:

- ``inodes.py``: an inode per path while the kernel holds it (``Inodes``);
- ``node.py``: the node, its calls bounded by ``timeout`` and retried once on a
  fresh connection (``Node``, ``FSError``);
- ``metadata.py``: statuses and listings in the client core's metadata cache
  (meshd/client/metacache.py), for ``ttl_of`` their path (``Metadata``);
- ``dirs.py``: directory handles, listings streamed and read ahead (``Directories``);
- ``readers.py``: pinned read handles over the client core's page table and
  read-ahead policy (meshd/client/pages.py, readahead.py) (``Readers``);
- ``writers.py``: new files streamed to the node, committed at close (``Writers``).

**Metadata.** File statuses, whole directory listings and "not found" answers
are kept, and the kernel is told to keep entries and attributes as long:
``ttl`` seconds (default 1 s), or, on a mount whose ``sync_interval`` is
longer, that long (at most ``max_ttl``, default 300 s). This client's own
changes update or drop the entries at once. An ``open`` never trusts a
status older than ``ttl``: it asks the node, pins the version it gets, and,
when that is not what the kernel was told, has the kernel drop the inode's
attributes so its next read learns the new size. ``drop_caches()`` forgets
every status, listing and page descriptor (``meshfs drop-cache MOUNTPOINT``,
which sets the xattr ``user.mesh.drop_cache`` on the mount).

**Reads** are pinned to the version found at open (a file replaced meanwhile
reads as ESTALE, never as a mix); the kernel keeps a file's pages in its page
cache across opens while the file's version is unchanged. **Writes** replace
whole files, sequentially: writing into an existing file without ``O_TRUNC``
(random overwrite) is ``ENOTSUP``; so is truncating to a size other than 0 or
the current size. ``chmod``, ``chown`` and ``utimens`` are accepted and
change nothing (the under-stores keep no owners or modes; docs/SEMANTICS.md).

**Failures.** Errors become errnos through the mesh's one table
(``MeshError.errno``, :func:`meshd.errors.errno_of`); calls time out after
``timeout`` seconds: EIO, never a hang.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable

from meshd import paths
from meshd.client.sdk import MeshClient, Status
from meshfs.dirs import Directories
from meshfs.inodes import ROOT, Attr, Inodes
from meshfs.metadata import Metadata
from meshfs.node import FSError, Node
from meshfs.readers import Reader, Readers
from meshfs.writers import Writer, Writers

# directory entries to the binding: (entry id, status, inode, ttl for every entry or None) -> room for more
Emit = Callable[[int, Status, int, float | None], bool]


class MeshFS:
    def __init__(self, endpoint: str | None, ttl: float = 1.0, timeout: float = 30.0, uid: int | None = None,
                 gid: int | None = None, file_mode: int = 0o644, dir_mode: int = 0o755,
                 client_factory: Callable[[str | None, float], MeshClient] | None = None,
                 max_ttl: float = 300.0, readahead: str = "sequential") -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.file_mode, self.dir_mode = file_mode, dir_mode
        self.node = Node(endpoint, timeout, client_factory)
        self.inodes = Inodes()
        self.meta = Metadata(self.node, ttl, max_ttl, {})
        self.dirs = Directories(self.node, self.meta)
        self.reads = Readers(self.node, readahead)
        self.writes = Writers(self.node, self.meta)
        self.handles: dict[int, Reader | Writer] = {}
        self._next_fh = 1
        self.mounted_at = time.time()  # the time shown for directories the store dates not (S3, /)

    def client(self) -> MeshClient:
        return self.node.client()

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # ---- inodes and metadata ---------------------------------------------

    def attr(self, st: Status, ino: int) -> Attr:
        """What the kernel is told of ``st``; it may keep it as long as this client does."""
        self.inodes.told[ino] = st.version
        mtime = st.mtime if st.mtime or not st.is_dir else self.mounted_at  # not 1970
        return Attr(ino, st.is_dir, st.size, mtime, st.version, self.meta.attr_ttl(st.path))

    async def lookup(self, parent: int, name: bytes) -> Attr:
        path = self.inodes.child(parent, name)
        st = await self.meta.status(path)
        return self.attr(st, self.inodes.remember(path))

    async def getattr(self, ino: int) -> Attr:
        return self.attr(await self.meta.status(self.inodes.path_of(ino)), ino)

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped ``n`` references to ``ino``; True when its path is unknown now."""
        self.inodes.forget(ino, n)
        return ino not in self.inodes.paths

    def drop_caches(self) -> tuple[int, list[int]]:
        """Forget every status, listing and page descriptor (``meshfs drop-cache``): how many
        statuses were kept, and every inode (for the binding to drop the kernel's caches)."""
        n = self.meta.cache.clear()
        self.reads.pages.clear()
        return n, list(self.inodes.paths)

    # ---- directories -----------------------------------------------------

    async def opendir(self, ino: int) -> int:
        path = self.inodes.path_of(ino)
        st = await self.meta.status(path)
        if not st.is_dir:
            raise FSError(errno.ENOTDIR)
        fh = self._new_fh()
        await self.dirs.open(fh, path)
        return fh

    async def readdir(self, fh: int, start: int, emit: Emit) -> None:
        """The entries after id ``start`` to ``emit(id, status, inode, ttl)`` until it
        returns False (the kernel's buffer is full); the kernel holds a reference to each
        entry emitted. ``ttl``: the one of every entry, when they share one."""
        inodes, lookups, told = self.inodes.by_path, self.inodes.lookups, self.inodes.told
        ttl = self.meta.children_ttl(self.dirs.path_of(fh))
        while True:
            batch = await self.dirs.entries(fh, start)
            if not batch:
                return
            for eid, st in batch:
                ino = inodes.get(st.path) or self.inodes.ino(st.path)
                told[ino] = st.version
                if not emit(eid, st, ino, ttl):
                    return
                lookups[ino] = lookups.get(ino, 0) + 1  # the kernel now holds a reference
                start = eid

    def releasedir(self, fh: int) -> None:
        self.dirs.release(fh)

    async def mkdir(self, parent: int, name: bytes) -> Attr:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        if await self.meta.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        await self.node.call(lambda c: c.mkdir(path))
        self.meta.invalidate(path)
        return self.attr(await self.meta.status(path), self.inodes.remember(path))

    async def rmdir(self, parent: int, name: bytes) -> None:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        st = await self.meta.status(path)
        if not st.is_dir:
            raise FSError(errno.ENOTDIR)
        await self.node.call(lambda c: c.rm(path))
        self.meta.invalidate(path)

    async def unlink(self, parent: int, name: bytes) -> None:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        st = await self.meta.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        await self.node.call(lambda c: c.rm(path))
        self.meta.invalidate(path)
        self.reads.pages.drop_file(path)

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        src, dst = self.inodes.child(parent, name), self.inodes.child(new_parent, new_name)
        if flags:
            raise FSError(errno.EINVAL, "rename flags (RENAME_NOREPLACE, RENAME_EXCHANGE) are not supported")
        await self.meta.writable(src)
        await self.meta.writable(dst)
        if src in self.writes.writing:
            raise FSError(errno.EBUSY, f"{src} is still being written")
        st = await self.meta.status(src)
        dst_st = await self.meta.maybe_status(dst)
        if dst_st is not None:
            if st.is_dir and not dst_st.is_dir:
                raise FSError(errno.ENOTDIR)
            if not st.is_dir and dst_st.is_dir:
                raise FSError(errno.EISDIR)
        if st.is_dir and paths.is_within(dst, src):
            raise FSError(errno.EINVAL, "cannot move a directory into itself")
        await self.node.call(lambda c: c.rename(src, dst))
        for p in (src, dst):
            self.meta.invalidate(p)
        self.meta.cache.forget_under(src)
        self.reads.pages.drop_file(src)
        self.reads.pages.drop_file(dst)
        self.inodes.moved(src, dst)

    # ---- files -------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        """A handle; whether the kernel may keep the file's cached pages; whether the
        attributes the kernel holds are stale (the file changed since it was told: the
        caller has the kernel drop them, so the next read learns the new size).

        An open pins the version it finds: a status older than ``ttl`` is fetched again
        first, however long listings are kept, so a file replaced elsewhere is read new."""
        path = self.inodes.path_of(ino)
        mode = flags & os.O_ACCMODE
        if mode != os.O_RDONLY:
            await self.meta.writable(path)
            if flags & os.O_TRUNC:
                return self._writer(path), False, False
            if path in self.writes.writing:
                raise FSError(errno.EBUSY, f"{path} is being written by another handle")
            raise FSError(errno.ENOTSUP, "files are written whole: open with O_TRUNC (random overwrite "
                                         "and append are not supported)")
        if path in self.writes.writing:
            raise FSError(errno.EBUSY, f"{path} is being written; it can be read once closed")
        st = await self.meta.status(path, fresh_within=self.ttl)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        fh = self._new_fh()
        self.handles[fh] = self.reads.open(path, st)
        keep, stale = self.inodes.opened(ino, st.version)
        return fh, keep, stale

    def _writer(self, path: str) -> int:
        w = self.writes.start(path)
        fh = self._new_fh()
        self.handles[fh] = w
        return fh

    async def create(self, parent: int, name: bytes, flags: int) -> tuple[int, Attr]:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        if flags & os.O_EXCL and await self.meta.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        pst = await self.meta.status(paths.parent(path))
        if not pst.is_dir:
            raise FSError(errno.ENOTDIR)
        fh = self._writer(path)
        w = self.handles[fh]
        assert isinstance(w, Writer)
        return fh, Attr(self.inodes.remember(path), False, 0, w.started, "")

    def read(self, fh: int, off: int, size: int) -> Awaitable[bytes]:
        """The bytes (Readers.read: the hot path, so no coroutine of its own here)."""
        h = self.handles.get(fh)
        if not isinstance(h, Reader):
            raise FSError(errno.EBADF, "not open for reading")
        return self.reads.read(h, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        w = self.handles.get(fh)
        if not isinstance(w, Writer):
            raise FSError(errno.EBADF, "not open for writing")
        return await self.writes.write(w, off, buf)

    async def flush(self, fh: int, fsync: bool = False) -> None:
        """``close`` (flush) or ``fsync``: may commit a file being written (Writers.flush)."""
        h = self.handles.get(fh)
        if isinstance(h, Writer):
            await self.writes.flush(h, fsync)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if isinstance(h, Reader):
            h.close()
        elif isinstance(h, Writer):
            await self.writes.release(h)

    async def truncate(self, ino: int, size: int, fh: int | None) -> None:
        path = self.inodes.path_of(ino)
        await self.meta.writable(path)
        w = self.writes.writing.get(path)
        if w is not None:
            if size == w.offset:
                return
            raise FSError(errno.ENOTSUP, "a file being written can only be truncated to its current size")
        st = await self.meta.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        if size == st.size:
            return
        if size != 0:
            raise FSError(errno.ENOTSUP, "truncate to a size other than 0 is not supported")
        new = await self.node.call(lambda c: c.put(path, b""))
        self.meta.invalidate(path)
        self.meta.remember_status(new, path)

    async def statfs(self) -> tuple[int, int, int]:
        """(block size, total blocks, free blocks) of the node's cache."""
        r = await self.node.call(lambda c: c.report())
        tiers = r.get("tiers", {})
        total = sum(int(t.get("capacity", 0)) for t in tiers.values())
        used = sum(int(t.get("used", 0)) for t in tiers.values())
        bs = 1 << 16
        return bs, max(1, total // bs), max(0, (total - used) // bs)

    async def mesh_xattrs(self, ino: int) -> dict[str, bytes]:
        """The mesh's state of a file or directory: its home region and the bytes of it
        this region's caches hold."""
        path = self.inodes.path_of(ino)
        state = await self.node.call(lambda c: c.mesh_state(path))
        return {k: v.encode() for k, v in state.items()}

    def close(self) -> None:
        self.reads.close()
        self.dirs.cancel()
        for h in self.handles.values():
            if isinstance(h, Reader):
                h.close()
            else:
                h.abort()
        self.handles.clear()
        self.node.close()


def mode_of(fs: MeshFS, a: Attr) -> int:
    return (stat.S_IFDIR | fs.dir_mode) if a.is_dir else (stat.S_IFREG | fs.file_mode)


__all__ = ["ROOT", "Attr", "FSError", "MeshFS", "mode_of"]
