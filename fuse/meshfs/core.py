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
- ``files.py``: files open for writing, staged on local disk and committed whole
  at close or fsync (``Staging``).

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
reads as ESTALE, never as a mix; so does a handle whose file this mount has
since seen at another version); the kernel keeps a file's pages in its page
cache across opens while the file's version is unchanged. **Writes** at any
offset, truncates to any size, ``O_APPEND``: through a staged copy committed
whole (``files.py``). **Attributes** (mode, owner, times, symlinks, hard
links, special files) are the store's own, kept as the store can
(docs/SEMANTICS.md); a store that keeps none shows the mount's defaults
(``--uid``, ``--gid``, 0644/0755) and refuses changes with ENOTSUP... except
chmod/chown/utimens that change nothing, which succeed (``cp -p`` into an
object store).

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
from dataclasses import dataclass

from meshd import paths
from meshd.attrs import AttrChange, Attrs
from meshd.client.sdk import MeshClient, Status
from meshd.errors import MeshError, NotSupported, errno_of
from meshfs.dirs import Directories
from meshfs.files import Staged, Staging
from meshfs.inodes import ROOT, Attr, Inodes
from meshfs.metadata import Metadata, lstat_view
from meshfs.node import FSError, Node
from meshfs.readers import Reader, Readers

# directory entries to the binding: (entry id, status, inode, ttl for every entry or None) -> room for more
Emit = Callable[[int, Status, int, float | None], bool]


@dataclass
class Open:
    """A handle on a staged file (files.py): reads always, writes if opened for writing."""

    staged: Staged
    writable: bool
    append: bool = False


class MeshFS:
    def __init__(self, endpoint: str | None, ttl: float = 1.0, timeout: float = 30.0, uid: int | None = None,
                 gid: int | None = None, file_mode: int = 0o644, dir_mode: int = 0o755,
                 client_factory: Callable[[str | None, float], MeshClient] | None = None,
                 max_ttl: float = 300.0, readahead: str = "sequential", staging_dir: str | None = None,
                 owners: str | None = None, writeback: bool | None = None) -> None:
        self.ttl = ttl
        # whose files: the store's owners (root's mount), or all the mounting user's (docs/SEMANTICS.md)
        self.owners_from_store = (owners or ("store" if os.getuid() == 0 else "mount")) == "store"
        self.timeout = timeout
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.file_mode, self.dir_mode = file_mode, dir_mode
        self.node = Node(endpoint, timeout, client_factory)
        self.inodes = Inodes()
        self.staging = Staging(self.node, staging_dir, send_owner=self.owners_from_store, writeback=writeback)
        self.meta = Metadata(self.node, ttl, max_ttl, self.staging.files)
        self.dirs = Directories(self.node, self.meta)
        self.reads = Readers(self.node, readahead)
        self.handles: dict[int, Reader | Open] = {}
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
        """What the kernel is told of ``st``; it may keep it as long as this client does
        (its attributes not at all when the store keeps them and this status lacks them:
        an entry of an S3 listing; the kernel asks getattr)."""
        st = lstat_view(st)
        self.inodes.told[ino] = st.version
        mtime = st.mtime if st.mtime or not st.is_dir else self.mounted_at  # not 1970
        a = Attr(ino, st.is_dir, st.size, mtime, st.version, self.meta.attr_ttl(st.path), st.attrs)
        if self.meta.ask_attrs(st):
            a.attr_ttl = 0.0
        return a

    async def _bound(self, path: str, st: Status, lookup: bool = True) -> Attr:
        """``st`` of ``path`` with its inode (one per hard-linked file); the kernel holds
        one more reference if ``lookup``."""
        ino = self.inodes.bind(path, st, self.meta.mount_root(path))
        if lookup:
            self.inodes.lookups[ino] = self.inodes.lookups.get(ino, 0) + 1
        return self.attr(st, ino)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        path = self.inodes.child(parent, name)
        st = await self.meta.status(path)
        return await self._bound(path, st)

    async def getattr(self, ino: int) -> Attr:
        orphan = self.inodes.orphans.get(ino)
        if orphan is not None:
            return self.attr(self._orphan_status(ino, orphan), ino)
        path = self.inodes.path_of(ino)
        st = await self.meta.status(path)
        if self.meta.ask_attrs(st) and path not in self.staging.files:
            st = await self.meta.status(path, fresh_within=0.0)  # a listing's entry: ask for the whole status
        return self.attr(st, ino)

    def _orphan_status(self, ino: int, last: Status) -> Status:
        for h in self.handles.values():
            if isinstance(h, Open) and h.staged.unlinked and self.inodes.by_path.get(h.staged.path) != ino:
                if h.staged.path == last.path:
                    return h.staged.status()
        a = last.attrs or Attrs()
        return Status(last.path, last.size, last.mtime, last.version, last.is_dir,
                      Attrs(a.mode, a.uid, a.gid, a.atime, a.ctime, 0, a.ino, a.rdev, a.target, a.extra))

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

    def _changed(self, path: str, st: Status | None = None) -> None:
        """``path`` changed here: forget what was kept of it and its directory (and of every
        other name of a hard-linked file: its attributes are theirs); keep ``st``."""
        self.meta.invalidate(path)
        ino = self.inodes.by_path.get(path)
        if ino is not None and ino in self.inodes.key_of:
            for other in self.inodes.names_of(ino):
                if other != path:
                    self.meta.invalidate(other)
        if st is not None:
            self.meta.remember_status(st, path)

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

    async def _new_owner(self, parent: str, uid: int, gid: int, mode: int) -> tuple[int, int]:
        """The group and mode a new file or directory in ``parent`` gets: the parent's
        group (and, for a directory, its set-group-ID bit) when the parent has it set."""
        pst = await self.meta.status(parent)
        if not pst.is_dir:
            raise FSError(errno.ENOTDIR)
        pa = pst.attrs
        if pa is not None and pa.mode is not None and pa.mode & stat.S_ISGID and pa.gid is not None:
            return pa.gid, mode | (stat.S_ISGID if stat.S_ISDIR(mode) else 0)
        return gid, mode

    async def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int | None = None,
                    gid: int | None = None) -> Attr:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        if await self.meta.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        g, m = await self._new_owner(paths.parent(path), self.uid if uid is None else uid,
                                     self.gid if gid is None else gid, stat.S_IFDIR | (mode & 0o7777))
        change = AttrChange(stat.S_IMODE(m), *self._owner(uid, g))
        st = await self.node.call(lambda c: c.mkdir_with(path, change))
        self._changed(path, st)
        return await self._bound(path, st)

    def _owner(self, uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
        """The owner a new file is given in its store: the caller's on a mount showing the
        store's owners, else the store's default (its process's)."""
        return (uid, gid) if self.owners_from_store else (None, None)

    async def rmdir(self, parent: int, name: bytes) -> None:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        st = await self.meta.status(path)
        if not st.is_dir:
            raise FSError(errno.ENOTDIR)
        await self.node.call(lambda c: c.rm(path))
        self._changed(path)
        self.inodes.unlinked(path, None)

    async def unlink(self, parent: int, name: bytes) -> None:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        st = await self.meta.status(path)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        staged = await self.staging.unlink(path)  # detached, after a commit in flight
        if staged is None or staged.exists:
            try:
                await self.node.call(lambda c: c.rm(path))
            except MeshError as e:
                if staged is None or errno_of(e) != errno.ENOENT:
                    raise
        self._changed(path)
        self.reads.pages.drop_file(path)
        self.inodes.unlinked(path, st)

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        src, dst = self.inodes.child(parent, name), self.inodes.child(new_parent, new_name)
        noreplace = getattr(os, "RENAME_NOREPLACE", 1)
        if flags & ~noreplace:
            raise FSError(errno.EINVAL, "RENAME_EXCHANGE and RENAME_WHITEOUT are not supported")
        await self.meta.writable(src)
        await self.meta.writable(dst)
        st = await self.meta.status(src)
        dst_st = await self.meta.maybe_status(dst)
        if src == dst:
            return
        if dst_st is not None:
            if flags & noreplace:
                raise FSError(errno.EEXIST)
            if st.is_dir and not dst_st.is_dir:
                raise FSError(errno.ENOTDIR)
            if not st.is_dir and dst_st.is_dir:
                raise FSError(errno.EISDIR)
        if st.is_dir and paths.is_within(dst, src):
            raise FSError(errno.EINVAL, "cannot move a directory into itself")
        for p, s in list(self.staging.files.items()):  # what the store must have before it moves
            if (p == src or paths.is_within(p, src)) and (s.dirty or not s.exists):
                got = await self.staging.commit(s)
                if got is not None:
                    self._changed(p, got)
        await self.node.call(lambda c: c.rename(src, dst))
        self.staging.moved(src, dst)
        for p in (src, dst):
            self.meta.invalidate(p)
        self.meta.cache.forget_under(src)
        self.reads.pages.drop_file(src)
        self.reads.pages.drop_file(dst)
        if dst_st is not None and not dst_st.is_dir:
            self.inodes.unlinked(dst, dst_st)
        self.inodes.moved(src, dst)

    # ---- links and special files ------------------------------------------------

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        try:
            text = target.decode()
        except UnicodeDecodeError:
            raise FSError(errno.EINVAL, "symlink targets must be UTF-8") from None
        if await self.meta.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        g, _ = await self._new_owner(paths.parent(path), uid, gid, stat.S_IFLNK)
        st = await self.node.call(lambda c: c.symlink(path, text, AttrChange(None, *self._owner(uid, g))))
        self._changed(path, st)
        return await self._bound(path, st)

    async def readlink(self, ino: int) -> bytes:
        path = self.inodes.path_of(ino)
        st = await self.meta.status(path)
        if st.attrs is None or st.attrs.target is None:
            st = await self.meta.status(path, fresh_within=0.0)
        if st.attrs is None or st.attrs.target is None:
            raise FSError(errno.EINVAL, f"{path} is not a symlink")
        return st.attrs.target.encode()

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        if await self.meta.maybe_status(path) is not None:
            raise FSError(errno.EEXIST)
        g, m = await self._new_owner(paths.parent(path), uid, gid, mode)
        st = await self.node.call(lambda c: c.mknod(path, m, rdev, AttrChange(None, *self._owner(uid, g))))
        self._changed(path, st)
        return await self._bound(path, st)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        src = self.inodes.path_of(ino)
        dst = self.inodes.child(new_parent, new_name)
        await self.meta.writable(dst)
        if ino in self.inodes.orphans:
            raise FSError(errno.ENOENT, "the file was unlinked")
        if await self.meta.maybe_status(dst) is not None:
            raise FSError(errno.EEXIST)
        s = self.staging.files.get(src)
        if s is not None and (s.dirty or not s.exists):
            self._changed(src, await self.staging.commit(s))
        st = await self.node.call(lambda c: c.link(src, dst))
        self._changed(src)
        self._changed(dst, st)
        self.inodes.linked(ino, dst)
        key = st.attrs.ino if st.attrs is not None else None
        mount = self.meta.mount_root(dst)
        if key is not None and mount is not None:
            old = self.inodes.key_of.pop(ino, None)
            if old is not None:
                self.inodes.by_key.pop(old, None)
            self.inodes.by_key[(mount, key)], self.inodes.key_of[ino] = ino, (mount, key)
        if s is not None:
            s.nlink = st.attrs.nlink or s.nlink if st.attrs is not None else s.nlink
        self.inodes.lookups[ino] = self.inodes.lookups.get(ino, 0) + 1
        return self.attr(st, ino)

    # ---- attributes --------------------------------------------------------

    async def setattr(self, ino: int, fh: int | None, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, atime: float | None = None,
                      mtime: float | None = None) -> Attr:
        """chmod, chown, utimens and truncate: of the staged file while one is open for
        writing, else in the store (its own terms)."""
        h = self.handles.get(fh) if fh is not None else None
        staged = h.staged if isinstance(h, Open) else None
        orphan = self.inodes.orphans.get(ino)
        path = orphan.path if orphan is not None else self.inodes.path_of(ino)
        if staged is None and orphan is None:
            staged = self.staging.files.get(path)
        if staged is None and orphan is not None:
            raise FSError(errno.ENOENT, "the file was unlinked")
        if orphan is None:
            await self.meta.writable(path)
        if not self.owners_from_store and (uid is not None or gid is not None):
            if uid not in (None, self.uid) or gid not in (None, self.gid):
                raise FSError(errno.EPERM, "this mount shows every file as its user's (--owners mount)")
            uid = gid = None
        change = AttrChange(mode & 0o7777 if mode is not None else None, uid, gid, atime, mtime)
        if staged is not None:
            if size is not None:
                await self.staging.truncate(staged, size)
            if change:
                got = await self.staging.set_attrs(staged, change, lambda: self._setattr(path, change))
                if got is not None:
                    self._changed(path, got)
            return self.attr(staged.status(), ino)
        st = await self.meta.status(path)
        if size is not None:
            if st.is_dir:
                raise FSError(errno.EISDIR)
            if size != st.size:
                st = await self.node.call(lambda c: c.truncate(path, size))
                self._changed(path, st)
                self.reads.pages.drop_file(path)
        if change:
            st = await self._setattr(path, change)
            self._changed(path, st)
        return self.attr(st, ino)

    async def _setattr(self, path: str, change: AttrChange) -> Status:
        """A change of attributes in the store; on a store that keeps none, chmod, chown
        and utimens succeed and change nothing (tools like ``cp -p`` carry on)."""
        try:
            return await self.node.call(lambda c: c.setattr(path, change))
        except NotSupported:
            if self.meta.keeps_attrs(path):
                raise
            return await self.meta.status(path, fresh_within=0.0)

    # ---- files -------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        """A handle; whether the kernel may keep the file's cached pages; whether the
        attributes the kernel holds are stale (the file changed since it was told: the
        caller has the kernel drop them, so the next read learns the new size).

        A read-only open pins the version it finds (a status older than ``ttl`` is
        fetched again first, however long listings are kept), unless the file is staged
        here (open for writing in this mount): then it reads the staged bytes. An open
        for writing stages the file (files.py)."""
        orphan = self.inodes.orphans.get(ino)
        if orphan is not None:
            raise FSError(errno.ENOENT, "the file was unlinked")
        path = self.inodes.path_of(ino)
        mode = flags & os.O_ACCMODE
        staged = self.staging.files.get(path)
        if mode != os.O_RDONLY or (flags & os.O_TRUNC):
            await self.meta.writable(path)
            st = None if staged is not None else await self.meta.status(path, fresh_within=self.ttl)
            if st is not None and st.is_dir:
                raise FSError(errno.EISDIR)
            if st is not None and st.attrs is not None and (st.attrs.is_special or st.attrs.is_symlink):
                raise FSError(errno.ENXIO if st.attrs.is_special else errno.ELOOP)
            s = self.staging.open(path, st, truncate=bool(flags & os.O_TRUNC), mode=0o644, uid=self.uid,
                                  gid=self.gid)
            fh = self._new_fh()
            self.handles[fh] = Open(s, mode != os.O_RDONLY, bool(flags & os.O_APPEND))
            self.meta.invalidate(path)
            return fh, False, True
        if staged is not None:
            staged.handles += 1
            fh = self._new_fh()
            self.handles[fh] = Open(staged, False)
            return fh, False, False
        st = await self.meta.status(path, fresh_within=self.ttl)
        if st.is_dir:
            raise FSError(errno.EISDIR)
        if st.attrs is not None and st.attrs.is_special:
            raise FSError(errno.ENXIO, f"{path} is a special file: the mesh serves no bytes of it")
        fh = self._new_fh()
        self.handles[fh] = self.reads.open(path, st, ino)
        keep, stale = self.inodes.opened(ino, st.version)
        return fh, keep, stale

    async def create(self, parent: int, name: bytes, flags: int, mode: int = 0o644, uid: int | None = None,
                     gid: int | None = None) -> tuple[int, Attr]:
        path = self.inodes.child(parent, name)
        await self.meta.writable(path)
        existing = await self.meta.maybe_status(path)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FSError(errno.EEXIST)
            ino = self.inodes.remember(path)
            fh, _, _ = await self.open(ino, flags)
            h = self.handles[fh]
            return fh, self.attr(h.staged.status() if isinstance(h, Open) else existing, ino)
        u = self.uid if uid is None else uid
        g, m = await self._new_owner(paths.parent(path), u, self.gid if gid is None else gid,
                                     stat.S_IFREG | (mode & 0o7777))
        s = self.staging.open(path, None, truncate=True, mode=stat.S_IMODE(m), uid=u, gid=g)
        fh = self._new_fh()
        self.handles[fh] = Open(s, (flags & os.O_ACCMODE) != os.O_RDONLY, bool(flags & os.O_APPEND))
        self.meta.invalidate(path)
        ino = self.inodes.remember(path)
        return fh, self.attr(s.status(), ino)

    def read(self, fh: int, off: int, size: int) -> Awaitable[bytes]:
        """The bytes (Readers.read: the hot path, so no coroutine of its own here)."""
        h = self.handles.get(fh)
        if isinstance(h, Reader):
            if self.inodes.told.get(h.ino, h.version) != h.version:  # the kernel's size is another version's
                raise FSError(errno.ESTALE, f"{h.path} changed since it was opened")
            return self.reads.read(h, off, size)
        if isinstance(h, Open):
            return self.staging.read(h.staged, off, size)
        raise FSError(errno.EBADF, "not an open file")

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles.get(fh)
        if not isinstance(h, Open) or not h.writable:
            raise FSError(errno.EBADF, "not open for writing")
        if h.append:
            off = h.staged.size
        return await self.staging.write(h.staged, off, buf)

    async def flush(self, fh: int, fsync: bool = False) -> None:
        """``close`` (flush) or ``fsync``: commit what the staged file has not committed."""
        h = self.handles.get(fh)
        if isinstance(h, Open) and (h.writable or fsync) and h.staged.dirty and not h.staged.unlinked:
            st = await self.staging.commit(h.staged)
            if st is not None:
                self._committed(h.staged, st)

    def _committed(self, s: Staged, st: Status) -> None:
        self._changed(s.path, st)
        self.reads.pages.drop_file(s.path)
        ino = self.inodes.by_path.get(s.path)
        if ino is not None:
            self.inodes.told[ino] = st.version
            self.inodes.versions[ino] = st.version

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if isinstance(h, Reader):
            h.close()
        elif isinstance(h, Open):
            st = await self.staging.release(h.staged)
            if st is not None:
                self._committed(h.staged, st)

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
        self.handles.clear()
        self.staging.close()
        self.node.close()


def mode_of(fs: MeshFS, a: Attr) -> int:
    """The st_mode shown: the store's when it keeps one, else the mount's defaults."""
    if a.attrs is not None and a.attrs.target is not None:
        return stat.S_IFLNK | 0o777
    m = a.attrs.mode if a.attrs is not None else None
    if m is not None and stat.S_IFMT(m):
        return m
    if m is not None:
        return (stat.S_IFDIR if a.is_dir else stat.S_IFREG) | m
    return (stat.S_IFDIR | fs.dir_mode) if a.is_dir else (stat.S_IFREG | fs.file_mode)


__all__ = ["ROOT", "Attr", "FSError", "MeshFS", "mode_of"]
