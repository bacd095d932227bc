"""meshfs's write path: files open for writing, staged on local disk, committed whole.

A file opened for writing (``create``, ``O_WRONLY``/``O_RDWR``, ``O_TRUNC``,
``O_APPEND``) gets one *staged* copy in this mount, shared by every handle of
the file: a temporary file in the staging directory (``--staging-dir``),
unlinked as soon as it is made, so a crash leaves nothing behind. Writes at any
offset, truncates to any size, and reads through any handle of the mount while
it is staged, go to it; its mode, owner and times change with it.

**Commit.** The staged bytes become a new version of the file in one upload
(the node's whole-file write, with the file's mode, owner and mtime): at
every close of a writable handle (``flush``) and every ``fsync`` that finds
anything not committed (bytes written, a new or truncated file: ``touch f``
is in the store when close returns, and ``echo x > f`` commits an empty file
at the shell's first close, then ``x``, as a local file system shows them),
and at the last close (``release``) if attribute changes came after. A
failed upload leaves the previous version in the store and is reported by
that ``close`` or ``fsync``. With ``--write-mode back`` (or a mount whose
``write_mode`` is ``back``) the node acknowledges the commit once the bytes are
durable on its disk and uploads them in the background: ``close`` and ``fsync``
return then (docs/SEMANTICS.md, "Write-back"); ``--write-mode through`` waits for
the under-store whatever the mount says.

**An existing file's bytes** are copied into the staged file at the first
read or write that needs them, pinned to the version opened (a file changed
meanwhile gives ESTALE), not at open: ``open(O_RDWR)`` then ``ftruncate(0)``
copies nothing.

**Unlink** of a staged file detaches it: its handles keep reading and writing
the staged bytes (``fstat`` shows ``nlink`` 0) and nothing is committed.
**Rename** of a staged file commits it first, then renames it in the store.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from meshd.attrs import AttrChange, Attrs
from meshd.client.sdk import MeshClient, Status
from meshd.errors import MeshError, errno_of
from meshfs.node import FSError, Node

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per piece of an upload or a fill


@dataclass(eq=False)
class Staged:
    """A file open for writing in this mount: its staged bytes and attributes."""

    path: str
    fd: int
    size: int
    mode: int  # st_mode, with S_IFREG
    uid: int
    gid: int
    atime: float
    mtime: float
    ctime: float
    base: Status | None  # the version the staged bytes come from, until they are copied (None: none)
    exists: bool  # the store has a version of this path (this one, or the base)
    nlink: int = 1
    version: str = ""  # the store's version the staged bytes are ("" once changed here)
    handles: int = 0
    dirty: bool = False  # anything not committed (bytes, size, a new file)
    unlinked: bool = False
    handed: bool = False  # the file was handed to the node at a commit: write to a copy from now on
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def status(self) -> Status:
        """What stat shows of the file while it is staged."""
        return Status(self.path, self.size, self.mtime, "" if self.dirty else self.version, False,
                      Attrs(self.mode, self.uid, self.gid, self.atime, self.ctime,
                            0 if self.unlinked else self.nlink))

    def change(self, owner: bool = True) -> AttrChange:
        """What the commit sets: mode, times, and the owner when the mount shows the store's."""
        return AttrChange(stat.S_IMODE(self.mode), self.uid if owner else None, self.gid if owner else None,
                          self.atime, self.mtime)


class Staging:
    """Every staged file of the mount, by path (the metadata layer shows them)."""

    def __init__(self, node: Node, directory: str | None = None, send_owner: bool = True,
                 writeback: bool | None = None) -> None:
        self.node = node
        self.send_owner = send_owner
        self.writeback = writeback  # every commit's write mode (--write-mode); None: the mount's
        self.dir = directory or os.path.join("/var/tmp", f"meshfs-staging-{os.getuid()}")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise FSError(errno.EPERM, f"staging directory {self.dir} must be a directory of uid {os.getuid()} "
                                       "that no one else can enter (mode 0700)")
        self.files: dict[str, Staged] = {}

    def _tempfile(self) -> int:
        try:
            return os.open(self.dir, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:  # a file system without O_TMPFILE
            fd, name = tempfile.mkstemp(dir=self.dir, prefix=".meshfs-")
            os.unlink(name)
            return fd

    def open(self, path: str, st: Status | None, *, truncate: bool, mode: int, uid: int, gid: int) -> Staged:
        """The staged file of ``path`` (made on first open for writing), with one more
        handle. ``st``: the file's current status (None: a new file, with ``mode``,
        ``uid``, ``gid``)."""
        s = self.files.get(path)
        now = time.time()
        if s is None:
            a = st.attrs if st is not None else None
            base = st if st is not None and st.size and not truncate else None
            s = Staged(path, self._tempfile(), base.size if base else 0,
                       (a.mode if a and a.mode is not None else stat.S_IFREG | mode) if st else stat.S_IFREG | mode,
                       (a.uid if a and a.uid is not None else uid) if st else uid,
                       (a.gid if a and a.gid is not None else gid) if st else gid,
                       (a.atime if a and a.atime is not None else st.mtime) if st else now,
                       st.mtime if st else now, (a.ctime if a and a.ctime is not None else st.mtime) if st else now,
                       base, st is not None, (a.nlink or 1) if a else 1)
            s.dirty = st is None or (truncate and st.size > 0)
            s.version = st.version if st is not None else ""
            if truncate and st is not None and st.size:
                s.mtime = s.ctime = now
            self.files[path] = s
        elif truncate and s.size:
            self._truncate(s, 0)
        s.handles += 1
        return s

    # ---- bytes -------------------------------------------------------------

    async def _fill(self, s: Staged) -> None:
        """Copy the base version's bytes into the staged file (once, pinned to it)."""
        base = s.base
        if base is None:
            return
        async with s.lock:
            if s.base is not base:
                return
            end = min(base.size, s.size)  # a truncate below the base's size keeps only that much
            fd, path = s.fd, base.path

            def fill() -> None:
                pos = 0
                client = self.node.client()
                while pos < end:
                    n = min(CHUNK, end - pos)
                    data = client.read_pinned(path, pos, n, version=base.version, size=base.size)
                    if not data:
                        raise FSError(errno.ESTALE, f"{path} changed while it was being copied for writing")
                    os.pwrite(fd, data, pos)
                    pos += len(data)

            try:
                await asyncio.get_running_loop().run_in_executor(self.node.pool, fill)
            except MeshError as e:
                raise FSError(errno_of(e), str(e)) from None
            s.base = None

    async def read(self, s: Staged, off: int, size: int) -> bytes:
        if off >= s.size:
            return b""
        if s.base is not None:
            await self._fill(s)
        return os.pread(s.fd, min(size, s.size - off), off)

    def _own(self, s: Staged) -> None:
        """Before writing to a staged file whose file was handed to the node at a commit:
        continue in a copy (the node may keep that file as its write-back spool)."""
        if not s.handed:
            return
        fd = self._tempfile()
        try:
            pos = 0
            while pos < s.size:
                n = os.copy_file_range(s.fd, fd, s.size - pos, pos, pos)
                if n == 0:
                    break
                pos += n
        except OSError:
            os.close(fd)
            raise
        os.close(s.fd)
        s.fd, s.handed = fd, False

    async def write(self, s: Staged, off: int, buf: bytes) -> int:
        if s.base is not None:
            await self._fill(s)
        self._own(s)
        n = os.pwrite(s.fd, buf, off)
        s.size = max(s.size, off + n)
        s.mtime = s.ctime = time.time()
        s.dirty = True
        return n

    async def truncate(self, s: Staged, size: int) -> None:
        if s.base is not None and size > 0:
            await self._fill(s)
        self._truncate(s, size)

    def _truncate(self, s: Staged, size: int) -> None:
        if size == 0:
            s.base = None
        self._own(s)
        os.ftruncate(s.fd, size)
        s.size = size
        s.mtime = s.ctime = time.time()
        s.dirty = True

    # ---- commit --------------------------------------------------------------

    async def commit(self, s: Staged) -> Status | None:
        """Upload the staged file as the path's new version; its status (None when the
        file was unlinked meanwhile: nothing to commit)."""
        if s.base is not None:
            await self._fill(s)
        async with s.lock:
            if s.unlinked:
                return None
            s.dirty = False
            size, fd, path, change = s.size, s.fd, s.path, s.change(self.send_owner)

            def chunks() -> Iterator[bytes]:
                pos = 0
                while pos < size:
                    data = os.pread(fd, min(CHUNK, size - pos), pos)
                    if not data:
                        raise FSError(errno.EIO, f"staged copy of {path} is shorter than {size} bytes")
                    yield data
                    pos += len(data)

            def put(c: MeshClient) -> Status:
                # a node on this machine takes the staged file itself (no copy through a socket;
                # in write-back mode it may become the node's spool: never written again here)
                st = c.put_file(path, fd, size, change=change, writeback=self.writeback)
                if st is not None:
                    s.handed = True
                    return st
                return c.put(path, chunks(), change=change, writeback=self.writeback, size=size)

            try:
                st = await asyncio.get_running_loop().run_in_executor(
                    self.node.pool, lambda: self.node.with_client(put))
            except BaseException as e:
                s.dirty = True
                if isinstance(e, MeshError):
                    raise FSError(errno_of(e), str(e)) from None
                raise
            s.exists = True
            s.version = st.version
            if st.attrs is not None:
                a = st.attrs
                s.ctime = a.ctime if a.ctime is not None else s.ctime
                s.nlink = a.nlink or s.nlink
            return st

    async def release(self, s: Staged) -> Status | None:
        """One handle fewer; at the last, commit what is left and drop the staged file."""
        s.handles -= 1
        if s.handles > 0:
            return None
        st = None
        try:
            # again if attributes changed during the upload; not if the file was opened again
            # meanwhile (its handles use the staged file, and their last close commits)
            while s.dirty and not s.unlinked and s.handles == 0:
                st = await self.commit(s)
        finally:
            if s.handles == 0:
                if self.files.get(s.path) is s:
                    del self.files[s.path]
                os.close(s.fd)
                s.fd = -1
        return st

    async def set_attrs(self, s: Staged, c: AttrChange,
                        apply: Callable[[], Awaitable[Status]]) -> Status | None:
        """chmod/chown/utimens of a staged file: in the store at once (``apply``) when the
        store has its bytes already, else carried by the next commit. Never during a
        commit: its upload took the attributes when it began."""
        async with s.lock:
            if c.mode is not None:
                s.mode = stat.S_IFMT(s.mode) | c.mode
            s.uid = c.uid if c.uid is not None else s.uid
            s.gid = c.gid if c.gid is not None else s.gid
            s.atime = c.atime if c.atime is not None else s.atime
            s.mtime = c.mtime if c.mtime is not None else s.mtime
            s.ctime = time.time()
            if s.exists and not s.dirty and not s.unlinked:
                return await apply()
            s.dirty = True
            return None

    async def unlink(self, path: str) -> Staged | None:
        """``path`` is being unlinked: its staged file (if any) is detached, after any
        commit in flight (which the caller's delete then removes)."""
        s = self.files.get(path)
        if s is None:
            return None
        async with s.lock:
            return self.unlinked(path)

    def unlinked(self, path: str) -> Staged | None:
        """``path`` was unlinked: its staged file (if any) lives on for its handles only."""
        s = self.files.pop(path, None)
        if s is not None:
            s.unlinked = True
            s.ctime = time.time()
        return s

    def moved(self, src: str, dst: str) -> None:
        """A rename: staged files under ``src`` now live under ``dst``."""
        replaced = self.files.pop(dst, None)
        if replaced is not None:
            replaced.unlinked = True
        for p in [p for p in self.files if p == src or p.startswith(src.rstrip("/") + "/")]:
            s = self.files.pop(p)
            s.path = dst + p[len(src):]
            self.files[s.path] = s

    def close(self) -> None:
        for s in self.files.values():
            try:
                os.close(s.fd)
            except OSError:
                pass
        self.files.clear()


__all__ = ["CHUNK", "Staged", "Staging"]
