"""pyfuse3's Operations over the meshfs core (fuse/meshfs/core.py): a thin adapter.

One pyfuse3 operation, one call of the core. Every handler turns the core's
answer into pyfuse3's types and any failure into
``FUSEError(errno)`` (errnos from the mesh's one table; a bug is logged and
reported as EIO, never allowed to escape into pyfuse3). Entries and
attributes carry the core's TTL as the kernel's entry and attribute timeouts.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from meshd.client.sdk import Status
from meshd.errors import MeshError, errno_of
from meshfs import DROP_CACHE
from meshfs.core import Attr, MeshFS, mode_of

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
BLKSIZE = 1 << 20  # st_blksize: cp, dd and friends size their buffers by it
MAX_BUILT = 200_000  # readdir entries kept built


def _fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            code = errno_of(e)  # meshd's one table: MeshError kinds, OSErrors (FSError) as they are
            if code != errno.EIO:
                log.debug("%s: %s", fn.__name__, e)
            elif isinstance(e, MeshError | OSError):  # the caller sees only "Input/output error": say why
                log.warning("%s: %s", fn.__name__, e)
            else:  # a bug: no errno was decided for it
                log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(code) from None

    return wrapper


class MeshOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, core: MeshFS, after_init: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.core = core
        self.after_init = after_init
        self._built: dict[int, tuple[Status, float | None, pyfuse3.EntryAttributes]] = {}  # readdir's entries

    def init(self) -> None:
        """Runs inside the kernel's INIT request, before libfuse answers it; ``after_init``
        runs once the answer is sent (the answer resets the mount's read-ahead)."""
        if self.after_init is not None:
            asyncio.get_running_loop().call_soon(self.after_init)

    def entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        """The kernel's view of ``a``: the store's mode, owner, times and links where it keeps
        them (``a.attrs``), else the mount's defaults."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(a.ino)
        e.generation = 0
        e.entry_timeout = a.ttl
        e.attr_timeout = a.ttl if a.attr_ttl is None else a.attr_ttl
        mode = mode_of(self.core, a)
        e.st_mode = pyfuse3.ModeT(mode)
        x = a.attrs
        size = a.size
        if x is not None and x.target is not None:
            size = len(x.target.encode())
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            size = 0
        e.st_nlink = x.nlink if x is not None and x.nlink is not None else (2 if a.is_dir else 1)
        own = self.core.owners_from_store and x is not None
        e.st_uid = x.uid if own and x.uid is not None else self.core.uid  # type: ignore[union-attr]
        e.st_gid = x.gid if own and x.gid is not None else self.core.gid  # type: ignore[union-attr]
        e.st_rdev = x.rdev if x is not None and x.rdev is not None else 0
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        ns = int(a.mtime * 1e9)
        e.st_mtime_ns = ns
        e.st_atime_ns = int(x.atime * 1e9) if x is not None and x.atime is not None else ns
        e.st_ctime_ns = int(x.ctime * 1e9) if x is not None and x.ctime is not None else ns
        return e

    @_fuse_errors
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.lookup(parent_inode, name))

    @_fuse_errors
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.getattr(inode))

    @_fuse_errors
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: pyfuse3.FileHandleT | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        f = fields
        return self.entry(await self.core.setattr(
            inode, fh, size=attr.st_size if f.update_size else None,
            mode=stat.S_IMODE(attr.st_mode) if f.update_mode else None,
            uid=attr.st_uid if f.update_uid else None, gid=attr.st_gid if f.update_gid else None,
            atime=attr.st_atime_ns / 1e9 if f.update_atime else None,
            mtime=attr.st_mtime_ns / 1e9 if f.update_mtime else None))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for ino, n in inode_list:
            if self.core.forget(ino, n):
                self._built.pop(ino, None)

    @_fuse_errors
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(await self.core.opendir(inode))

    @_fuse_errors
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """The hot loop of a listing: the entry of a status already given is reused."""
        core, built = self.core, self._built

        def reply(eid: int, st: Status, ino: int, ttl: float | None) -> bool:
            got = built.get(ino)
            if got is not None and got[0] is st and got[1] == ttl:
                e = got[2]
            else:
                a = core.attr(st, ino)
                if ttl is not None:
                    a.ttl = ttl
                e = self.entry(a)
                built[ino] = (st, ttl, e)
                if len(built) > MAX_BUILT:
                    built.clear()
            return bool(pyfuse3.readdir_reply(token, pyfuse3.FileNameT(st.path.rsplit("/", 1)[-1].encode()), e, eid))

        await core.readdir(fh, start_id, reply)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.core.releasedir(fh)

    @_fuse_errors
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: pyfuse3.ModeT,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.mkdir(parent_inode, name, mode & ~ctx.umask, ctx.uid, ctx.gid))

    @_fuse_errors
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        await self.core.rmdir(parent_inode, name)

    @_fuse_errors
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        await self.core.unlink(parent_inode, name)

    @_fuse_errors
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT, flags: pyfuse3.FlagT,
                     ctx: pyfuse3.RequestContext) -> None:
        await self.core.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_fuse_errors
    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, keep, stale = await self.core.open(inode, flags)
        if stale:  # the kernel's size is older than the version just pinned: it asks again at the first read
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)  # no lock of ours is held in open
            except OSError:
                pass
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep)

    @_fuse_errors
    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: pyfuse3.ModeT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, a = await self.core.create(parent_inode, name, flags, mode & ~ctx.umask, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh)), self.entry(a)

    @_fuse_errors
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.symlink(parent_inode, name, bytes(target), ctx.uid, ctx.gid))

    @_fuse_errors
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        return pyfuse3.FileNameT(await self.core.readlink(inode))

    @_fuse_errors
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: pyfuse3.ModeT, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.mknod(parent_inode, name, mode & ~ctx.umask, rdev, ctx.uid, ctx.gid))

    @_fuse_errors
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(await self.core.link(inode, new_parent_inode, new_name))

    @_fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return await self.core.read(fh, off, size)

    @_fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return await self.core.write(fh, off, buf)

    @_fuse_errors
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        await self.core.flush(fh)

    @_fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.core.flush(fh, fsync=True)

    @_fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        await self.core.release(fh)

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        bs, total, free = await self.core.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = bs
        s.f_blocks, s.f_bfree, s.f_bavail = total, free, free
        s.f_files, s.f_ffree, s.f_favail = 1 << 32, 1 << 31, 1 << 31
        s.f_namemax = 255
        return s

    @_fuse_errors
    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        if not bytes(name).startswith(b"user.mesh."):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        values = await self.core.mesh_xattrs(inode)
        value = values.get(bytes(name).decode())
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_fuse_errors
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(n) for n in (b"user.mesh.home_region", b"user.mesh.cached_bytes",
                                                 b"user.mesh.region")]

    @_fuse_errors
    async def setxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if bytes(name) == DROP_CACHE:
            n, inodes = self.core.drop_caches()

            def invalidate() -> None:  # not from inside this handler: the kernel holds a lock of ours
                for ino in inodes:
                    try:
                        pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=False)
                    except OSError:  # not in the kernel's cache: nothing to drop
                        pass

            asyncio.get_running_loop().run_in_executor(None, invalidate)
            log.info("dropped %d cached statuses; dropping the kernel's cached pages", n)
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_fuse_errors
    async def removexattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                          ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)


__all__ = ["DROP_CACHE", "MeshOps"]
