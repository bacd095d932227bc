"""A minimal read-only pyfuse3 passthrough filesystem: the ceiling of a Python FUSE client.

    .venv/bin/python bench/passthroughfs.py SRC MOUNTPOINT [--readahead-kb 1024] [--ttl 1]

Exposes the directory SRC at MOUNTPOINT, read-only, in pyfuse3's asyncio mode
(the same binding, mode and worker-task settings as ``meshfs mount``): reads
are an ``os.pread`` of a real descriptor, run on the event loop (a read from
the page cache is microseconds; a thread hop would cost more than the read).
Nothing else happens per request, so this is what any Python FUSE client pays
for the kernel round trip, the request dispatch and the copy of the bytes.

Like meshfs (fuse/meshfs/cli.py) it sets the mount's kernel read-ahead
(``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb``, default 1024 KiB, the meshfs
default; 0 keeps the kernel's 128 KiB), which makes the kernel send 1 MiB
read requests instead of 128 KiB ones on a sequential read. It is written
once the kernel's INIT request has been answered (see ``Passthrough.init``):
written before, as fuse/meshfs/cli.py does, the INIT reply resets it to 128 KiB. Entries and
attributes are kept ``--ttl`` seconds by the kernel (meshfs's default: 1 s),
and opened files keep their pages in the kernel's page cache across opens
(the source is not expected to change while mounted).

Prints ``passthroughfs: mounted SRC at MOUNTPOINT`` once mounted; SIGTERM or
SIGINT unmount it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence

import pyfuse3
import pyfuse3.asyncio

log = logging.getLogger("passthroughfs")


def set_readahead(mountpoint: str, kb: int) -> None:
    """The same bdi read-ahead trick as ``meshfs mount --readahead-kb`` (fuse/meshfs/cli.py)."""
    from meshfs.cli import _set_readahead

    _set_readahead(mountpoint, kb)


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, src: str, ttl: float, mountpoint: str = "", readahead_kb: int = 0) -> None:
        super().__init__()
        self.ttl = ttl
        self.mountpoint, self.readahead_kb = mountpoint, readahead_kb
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: src}
        self.inodes: dict[str, int] = {src: pyfuse3.ROOT_INODE}
        self.lookups: dict[int, int] = {pyfuse3.ROOT_INODE: 1}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.dirs: dict[int, tuple[str, list[tuple[bytes, os.stat_result]]]] = {}
        self.next_dh = 1

    def init(self) -> None:
        """Called in the kernel's INIT request, before libfuse replies to it. The reply makes
        the kernel set the mount's read-ahead to min(current, max_readahead = 128 KiB), so a
        read_ahead_kb written earlier (right after pyfuse3.init(), as fuse/meshfs/cli.py does) is
        undone: write it once the reply is sent (call_soon runs after this request)."""
        if self.mountpoint and self.readahead_kb > 0:
            asyncio.get_running_loop().call_soon(set_readahead, self.mountpoint, self.readahead_kb)

    # ---- inodes --------------------------------------------------------------

    def _path(self, ino: int) -> str:
        p = self.paths.get(ino)
        if p is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return p

    def _ino(self, path: str) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self.next_ino
            self.next_ino += 1
            self.inodes[path], self.paths[ino] = ino, path
            self.lookups[ino] = 0
        return ino

    def _remember(self, path: str) -> int:
        ino = self._ino(path)
        self.lookups[ino] += 1
        return ino

    def _entry(self, st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(ino)
        e.generation = 0
        e.entry_timeout = self.ttl
        e.attr_timeout = self.ttl
        e.st_mode = pyfuse3.ModeT(st.st_mode & ~0o222)  # read-only
        e.st_nlink = st.st_nlink
        e.st_uid, e.st_gid = st.st_uid, st.st_gid
        e.st_rdev = 0
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return e

    @staticmethod
    def _lstat(path: str) -> os.stat_result:
        try:
            return os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    # ---- metadata ------------------------------------------------------------

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        n = os.fsdecode(bytes(name))
        if n in (".", ".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = os.path.join(self._path(parent_inode), n)
        st = self._lstat(path)
        return self._entry(st, self._remember(path))

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._lstat(self._path(inode)), inode)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for ino, n in inode_list:
            if ino == pyfuse3.ROOT_INODE:
                continue
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            path = self.paths.pop(ino, None)
            if path is not None and self.inodes.get(path) == ino:
                del self.inodes[path]

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        s = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(s, attr, getattr(sv, attr))
        return s

    # ---- directories ---------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        path = self._path(inode)
        try:
            with os.scandir(path) as it:
                entries = sorted((os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        dh = self.next_dh
        self.next_dh += 1
        self.dirs[dh] = (path, entries)
        return pyfuse3.FileHandleT(dh)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path, entries = self.dirs[fh]
        for i in range(start_id, len(entries)):
            name, st = entries[i]
            child = os.path.join(path, os.fsdecode(name))
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), self._entry(st, self._ino(child)), i + 1):
                return
            self._remember(child)  # readdirplus: the kernel now holds a reference

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.dirs.pop(fh, None)

    # ---- files ---------------------------------------------------------------

    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        if stat.S_ISDIR(self._lstat(path).st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fd), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        os.close(fh)


async def serve(src: str, mountpoint: str, readahead_kb: int, ttl: float, debug: bool) -> int:
    pyfuse3.asyncio.enable()
    ops = Passthrough(src, ttl, mountpoint, readahead_kb)
    options = set(pyfuse3.default_options) | {"fsname=passthroughfs", "subtype=passthrough", "ro"}
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        print(f"passthroughfs: cannot mount at {mountpoint}: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    print(f"passthroughfs: mounted {src} at {mountpoint}", flush=True)
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)  # as meshfs (fuse/meshfs/cli.py)
    finally:
        pyfuse3.close(unmount=True)
        print(f"passthroughfs: unmounted {mountpoint}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Read-only pyfuse3 passthrough of SRC at MOUNTPOINT.")
    p.add_argument("src")
    p.add_argument("mountpoint")
    p.add_argument("--readahead-kb", type=int, default=1024,
                   help="kernel read-ahead for the mount, KiB (default 1024 as meshfs; 0 keeps the kernel's)")
    p.add_argument("--ttl", type=float, default=1.0, help="kernel entry/attribute timeout, s (default 1)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    src, mnt = os.path.abspath(args.src), os.path.abspath(args.mountpoint)
    if not os.path.isdir(src) or not os.path.isdir(mnt):
        print("passthroughfs: SRC and MOUNTPOINT must be directories", file=sys.stderr)
        return 1
    return asyncio.run(serve(src, mnt, args.readahead_kb, args.ttl, args.debug))


if __name__ == "__main__":
    sys.exit(main())
