"""A local (or NFS-mounted) directory as an under-store: ``file:///abs/dir``.

Blocking calls run in the default thread pool. Writes go to a temporary file
in the target directory and are renamed into place, so a reader never sees a
half-written file and a failed put leaves the old file intact (a file with
several hard links is the exception: its new bytes are copied into it in place,
so that every name keeps seeing one file). The version of a file is
``"{mtime_ns}-{size}-{inode}"``.

Attributes live in the real file (docs/SEMANTICS.md): statuses come from
``lstat`` (``ObjectInfo.attrs``: the whole ``st_mode``, owner, times, links,
inode, device number, a symlink's target); ``Attrs.extra`` is kept as user
xattrs ``user.mesh.x.<name>`` (empty where the file system refuses xattrs).
A symlink that resolves beneath the root describes what it names in size,
version, is_dir and mtime (readers follow it), its ``attrs`` the link; a
dangling, looping or escaping one is a status of its own (version ``""``).
FIFOs, sockets and device nodes have a status but are never opened: reading,
appending, copying or truncating them is NotSupported (a FIFO would block; a
device node would be the machine's device). Every path is confined beneath the
root (``beneath.py``); calls that take no descriptor (xattrs, chmod) reach the
very file held open through ``/proc/self/fd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import stat as stat_mod
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from meshd.attrs import CREATE_MODE, AttrChange, Attrs
from meshd.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    MeshError,
    MountError,
    NotADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    PermissionDenied,
    VersionChanged,
    from_oserror,
)
from meshd.understore.base import Capabilities, ObjectInfo, Pace, UnderStore, file_chunks, finished
from meshd.understore.beneath import Beneath, Escapes, NotRegular, proc_path, reopen

CHUNK = 1 << 20
_T = TypeVar("_T")
TMP_PREFIX = ".mesh-tmp-"  # a write in progress (put): renamed into place when complete


def sweep_tmp(root: str, max_age: float) -> int:
    """Remove the ``.mesh-tmp-*`` files under ``root`` not modified for ``max_age``
    seconds: writes that crashed (a write in progress modifies its file at least every
    ``limits.body_timeout`` seconds, or is cut). Walks with directory descriptors and
    never follows a symlink, so nothing outside ``root`` is touched. How many were removed."""
    cutoff = time.time() - max_age
    removed = 0
    for _, _, files, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if stat_mod.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(name, dir_fd=dirfd)
                    removed += 1
    return removed


def _version(st: os.stat_result) -> str:
    # The inode makes every put a new version even when two same-size writes land
    # in one timestamp tick (coarse-timestamp filesystems): each put is a new file.
    return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"



XATTR_PREFIX = "user.mesh.x."  # Attrs.extra ``name`` is kept as the user xattr ``user.mesh.x.name``


def _attrs(st: os.stat_result, target: str | None = None, extra: dict[str, str] | None = None) -> Attrs:
    return Attrs(st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns / 1e9, st.st_ctime_ns / 1e9, st.st_nlink,
                 st.st_ino, st.st_rdev, target, extra or {})


def _info(path: str, st: os.stat_result, attrs: Attrs | None = None) -> ObjectInfo:
    """``st`` describes the data (what a link names), ``attrs`` the name itself."""
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    size = st.st_size if stat_mod.S_ISREG(st.st_mode) else 0
    return ObjectInfo(path, size, st.st_mtime, "" if is_dir else _version(st), is_dir, attrs)


def _extra(fd: int) -> dict[str, str]:
    """The mesh's extra attributes of the file ``fd`` holds (any descriptor, O_PATH too);
    empty where the file system keeps no xattrs."""
    p = proc_path(fd)
    try:
        names = os.listxattr(p)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith(XATTR_PREFIX):
            with contextlib.suppress(OSError):
                out[n[len(XATTR_PREFIX):]] = os.getxattr(p, n).decode("utf-8", "replace")
    return out


def _user_xattrs(fd: int) -> dict[str, bytes]:
    """Every ``user.*`` xattr of the file ``fd`` holds (what a replaced file keeps)."""
    p = proc_path(fd)
    out = {}
    with contextlib.suppress(OSError):
        for n in os.listxattr(p):
            if n.startswith("user."):
                with contextlib.suppress(OSError):
                    out[n] = os.getxattr(p, n)
    return out


def _set_extra(target: int | str, extra: Mapping[str, str | None]) -> None:
    """Apply a change of extra attributes (``None``: remove) to a descriptor or path."""
    for k, v in extra.items():
        if v is None:
            try:
                os.removexattr(target, XATTR_PREFIX + k)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        else:
            os.setxattr(target, XATTR_PREFIX + k, v.encode())


def _copy_bytes(src: int, dst: int, size: int) -> None:
    """Bytes [0, size) of ``src`` to the same offsets of ``dst`` (in the kernel when it can)."""
    pos = 0
    try:
        while pos < size:
            n = os.copy_file_range(src, dst, size - pos, pos, pos)
            if n == 0:
                return
            pos += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise
    while pos < size:  # file systems without copy_file_range
        chunk = os.pread(src, min(CHUNK, size - pos), pos)
        if not chunk:
            return
        done = 0
        while done < len(chunk):
            done += os.pwrite(dst, memoryview(chunk)[done:], pos + done)
        pos += len(chunk)


@contextlib.contextmanager
def _dir_locked(parent: int) -> Iterator[None]:
    """An exclusive ``flock`` of the directory ``parent`` (an ``O_PATH`` descriptor) while
    a write publishes a file in it: every put of this store's writers (threads of this
    process, other processes, other machines where the file system passes ``flock`` on, as
    NFS does as a lock of the whole file) checks and renames one after the other. Held for
    a stat and a rename only (a hard-linked file's in-place copy apart). A file system that
    refuses the lock (NFS, where an exclusive lock needs a descriptor open for writing,
    which a directory cannot be) is written without it: if_version writes there are
    checked but not serialised (docs/SEMANTICS.md)."""
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


def _ns(t: float) -> int:
    return round(t * 1e9)


class PosixUnderStore(UnderStore):
    scheme = "file"
    capabilities = Capabilities(rename=True, directories=True, append=True, attrs=True, symlinks=True, links=True,
                                special=True)

    def __init__(self, uri: str, options: Mapping[str, str]) -> None:
        super().__init__(uri, options)
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise MountError(f"file:// URI must name a local path, got host {parts.netloc!r}")
        root = unquote(parts.path)
        if not root.startswith("/"):
            raise MountError(f"file:// URI must hold an absolute path: {uri!r}")
        self.root = os.path.normpath(root)
        self._beneath = Beneath(self.root)  # every path resolved beneath the root, never outside

    def _fail(self, e: OSError, path: str) -> MeshError:
        if isinstance(e, Escapes):
            return PermissionDenied(f"{self._shown(path)}: the path leads outside the store (a symlink)")
        if isinstance(e, NotRegular):
            return NotSupported(f"{self._shown(path)}: not a regular file (a FIFO, socket or device node): "
                                "the file:// store reads and writes only regular files' bytes")
        if e.errno == errno.ELOOP:  # a link naming itself, or a chain longer than Linux follows
            return NotFound(f"{self._shown(path)}: a symlink loop (too many levels of symbolic links)")
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return NotSupported(f"{self._shown(path)}: the file system under the file:// store refuses this "
                                f"({e.strerror})")
        return from_oserror(e, self._shown(path))

    async def _run(self, path: str, fn: Callable[[], _T]) -> _T:
        """``fn`` in a thread, its OSErrors in the mesh's terms."""
        try:
            return await asyncio.to_thread(fn)
        except ValueError as e:  # a NUL in a name or target
            raise InvalidArgument(f"{self._shown(path)}: {e}") from None
        except OSError as e:
            raise self._fail(e, path) from None

    async def check(self) -> None:
        if not os.path.isdir(self.root):
            raise MountError(f"directory does not exist: {self.root}")

    async def close(self) -> None:
        self._beneath.close()

    async def sweep_tmp(self, max_age: float) -> int:
        return await asyncio.to_thread(sweep_tmp, self.root, max_age)

    # ---- statuses -------------------------------------------------------------------

    def _status_at(self, dirfd: int, name: str, rel: str) -> ObjectInfo:
        """The status of ``name`` in the directory ``dirfd`` (``rel`` from the root): its
        own attributes (lstat); a symlink's data described by what it names while that is
        beneath the root, else by the link itself (dangling or leading out)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISLNK(st.st_mode):
                target = os.readlink("", dir_fd=fd)  # readlinkat of the O_PATH link itself
                attrs = replace(_attrs(st, target), mtime=st.st_mtime_ns / 1e9)  # the link's own times
                try:
                    data = self._beneath.stat(rel)  # followed only while it stays beneath the root
                except OSError:  # dangling, a loop, or leading out: the link itself
                    return ObjectInfo(rel, len(os.fsencode(target)), st.st_mtime_ns / 1e9, "", False, attrs)
                return _info(rel, data, attrs)
            regular_or_dir = stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode)
            return _info(rel, st, _attrs(st, None, _extra(fd) if regular_or_dir else None))
        finally:
            os.close(fd)

    def _status(self, path: str) -> ObjectInfo:
        dirfd, name = self._beneath.at(path)
        try:
            return self._status_at(dirfd, name, path)
        finally:
            os.close(dirfd)

    async def head(self, path: str) -> ObjectInfo:
        return await self._run(path, lambda: self._status(path))

    async def list(self, path: str) -> list[ObjectInfo]:
        b = self._beneath

        def scan() -> list[ObjectInfo]:
            out = []
            fd = b.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = [e.name for e in os.scandir(fd) if not e.name.startswith(TMP_PREFIX)]
                for name in names:
                    rel = f"{path}/{name}" if path else name
                    try:
                        out.append(self._status_at(fd, name, rel))
                    except OSError:  # gone meanwhile: not listed
                        continue
            finally:
                os.close(fd)
            out.sort(key=lambda i: i.path)
            return out

        try:
            return await asyncio.to_thread(scan)
        except NotADirectoryError:
            raise NotADirectory(f"not a directory: {self._shown(path)}") from None
        except OSError as e:
            raise self._fail(e, path) from None

    # ---- bytes ----------------------------------------------------------------------

    def get_range(
        self, path: str, start: int, end: int, version: str | None = None, *, chunk: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._stream(path, start, end, version, chunk or CHUNK)

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        """A page: one pread in one thread hop."""
        parts = [c async for c in self._stream(path, start, end, version, max(end - start, 1))]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _stream(
        self, path: str, start: int, end: int, version: str | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        # only a regular file is opened: a FIFO would block, a device node is not data
        fd, st = await self._run(path, lambda: self._beneath.open_regular(path, os.O_RDONLY))
        try:
            if version is not None and _version(st) != version:
                raise VersionChanged(f"{self._shown(path)} changed in the under-store")
            end = min(end, st.st_size)
            pos = start
            while pos < end:
                n = min(chunk_size, end - pos)
                chunk = await asyncio.to_thread(os.pread, fd, n, pos)
                if not chunk:
                    break
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        fd, _ = await self._run(path, lambda: self._beneath.open_regular(path, os.O_WRONLY | os.O_APPEND))
        try:
            with os.fdopen(fd, "ab") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                st = os.fstat(f.fileno())
                info = _info(path, st, _attrs(st, None, _extra(f.fileno())))
        except OSError as e:
            raise self._fail(e, path) from None
        return info

    # ---- writes ---------------------------------------------------------------------

    def _parent_made(self, path: str) -> tuple[int, str]:
        """The parent directory of ``path`` (created, with its parents, if missing) and its name."""
        head = path.strip("/").rpartition("/")[0]
        try:
            self._beneath.makedirs(head)
        except FileExistsError:
            raise NotADirectory(f"a file is in the way: {self._shown(head)}") from None
        return self._beneath.parent(path)

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        """A write-back upload: its temp file is named after ``token``, so ``abort_put``
        finds what a crash left."""
        return await self._put(path, file_chunks(src, size, pace=pace), change=change, exclusive=False,
                               tmp=f"{TMP_PREFIX}wb-{token}" if token else None)

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:
        if not name:
            return

        def rm() -> None:
            try:
                parent, _ = self._beneath.parent(path)
            except (FileNotFoundError, NotADirectoryError):
                return  # no directory: no temp file in it
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{TMP_PREFIX}wb-{name}", dir_fd=parent)
            finally:
                os.close(parent)

        try:
            await self._run(path, rm)
        except NotFound:
            pass

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        return await self._put(path, chunks, change=change, exclusive=exclusive, if_version=if_version)

    async def _put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None,
                   exclusive: bool, tmp: str | None = None, if_version: str | None = None) -> ObjectInfo:
        if exclusive:  # fails early; the hard link below is what makes it atomic
            await self.check_absent(path)
        if if_version is not None:  # fails early; the check under the directory's lock decides
            await self.check_version(path, if_version)
        parent, name = await self._run(path, lambda: self._parent_made(path))
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)  # an earlier attempt's
        tmp = tmp or f"{TMP_PREFIX}{secrets.token_hex(8)}"
        # Rewriting a file changes its directory no more than an in-place write would: the
        # temp name's coming and going must not show in the directory's times (make, rsync
        # and POSIX see a directory change only when a name does). Its times are put back
        # unless this write created the name. (A name made by someone else in the same
        # moment loses its own mtime bump: a second's window at most, never a lost name.)
        dir_before = os.stat(".", dir_fd=parent)
        try:
            existed = stat_mod.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            existed = False
        created = False
        try:
            # (read-write: a hard-linked target gets its bytes copied from it, in place)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                info = await finished(self._publish, parent, name, tmp, f.fileno(),
                                      change or AttrChange(), exclusive, path, if_version)
                created = not existed
        except OSError as e:
            raise self._fail(e, path) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            if not created:
                with contextlib.suppress(OSError):
                    os.utime(".", ns=(dir_before.st_atime_ns, dir_before.st_mtime_ns), dir_fd=parent)
            os.close(parent)
        return info

    def _publish(self, parent: int, name: str, tmp: str, fd: int, change: AttrChange, exclusive: bool,
                 path: str, if_version: str | None = None) -> ObjectInfo:
        """Give the complete temp file ``tmp`` (open as ``fd``) its attributes and put it at
        ``name``: the new version appears with its mode, owner and times at once. Done
        under an exclusive ``flock`` of the directory (:func:`_dir_locked`), so that an
        ``if_version`` check and the rename that follows it are one step for every writer
        of the store, in this process or another (two nodes over one file system)."""
        with _dir_locked(parent):
            return self._publish_locked(parent, name, tmp, fd, change, exclusive, path, if_version)

    def _publish_locked(self, parent: int, name: str, tmp: str, fd: int, change: AttrChange, exclusive: bool,
                        path: str, if_version: str | None) -> ObjectInfo:
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if exclusive and old is not None:
            raise AlreadyExists(f"already exists: {self._shown(path)}")
        if if_version is not None:
            if old is None:
                raise NotFound(f"no such file: {self._shown(path)}")
            if not stat_mod.S_ISREG(old.st_mode) or _version(old) != if_version:
                raise VersionChanged(f"{self._shown(path)} is no longer at version {if_version}")
        if old is not None and stat_mod.S_ISDIR(old.st_mode):
            raise IsADirectory(f"is a directory: {self._shown(path)}")
        replacing = old is not None and stat_mod.S_ISREG(old.st_mode) and not exclusive
        if replacing and old is not None and old.st_nlink > 1:
            # A hard-linked file: every one of its names must keep seeing the same file, so
            # the new bytes go into the existing inode rather than a new file renamed over
            # one name. This is not atomic for readers (one reading during the copy can see
            # old and new bytes mixed, as with any in-place write), but the body is complete
            # in the temp file first: a client that goes away leaves the old bytes intact.
            return self._rewrite_in_place(parent, name, fd, change, path)
        kept: dict[str, bytes] = {}
        uid = gid = -1
        mode = CREATE_MODE  # what a plain create gives
        if replacing and old is not None:  # the replaced file's owner, mode and user xattrs
            uid, gid, mode = old.st_uid, old.st_gid, old.st_mode & 0o7777
            with contextlib.suppress(OSError):
                ofd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    kept = _user_xattrs(ofd)
                finally:
                    os.close(ofd)
        if replacing:
            with contextlib.suppress(PermissionError):  # another's file: kept if this process may
                os.fchown(fd, uid, gid)
        for k, v in kept.items():
            with contextlib.suppress(OSError):
                os.setxattr(fd, k, v)
        self._apply_fd(fd, change, default_mode=mode)
        if exclusive:  # a link fails if anything is there, even one created a moment ago
            try:
                os.link(tmp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                raise AlreadyExists(f"already exists: {self._shown(path)}") from None
            os.unlink(tmp, dir_fd=parent)
        else:
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        # The status of *this* write, from its descriptor: a later head() could already
        # see a concurrent writer's file.
        st = os.fstat(fd)
        return _info(path, st, _attrs(st, None, _extra(fd)))

    def _rewrite_in_place(self, parent: int, name: str, src: int, change: AttrChange, path: str) -> ObjectInfo:
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if not stat_mod.S_ISREG(os.fstat(pfd).st_mode):  # swapped meanwhile
                raise VersionChanged(f"{self._shown(path)} changed in the under-store while being written")
            wfd = reopen(pfd, os.O_WRONLY)
        finally:
            os.close(pfd)
        try:
            before = os.fstat(wfd)
            size = os.fstat(src).st_size
            _copy_bytes(src, wfd, size)
            os.ftruncate(wfd, size)
            self._apply_fd(wfd, change)
            st = os.fstat(wfd)
            if _version(st) == _version(before):
                # Same inode, same size, same mtime (within one tick of the kernel's clock,
                # or an mtime given that equals the old one): move mtime 1 ns on, so that the
                # new bytes are a new version and no page of the old ones is served for them.
                os.utime(wfd, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
                st = os.fstat(wfd)
            return _info(path, st, _attrs(st, None, _extra(wfd)))
        finally:
            os.close(wfd)

    @staticmethod
    def _apply_fd(fd: int, change: AttrChange, default_mode: int | None = None) -> None:
        """``change`` made to the open regular file ``fd`` (owner first: chown clears setuid)."""
        if change.uid is not None or change.gid is not None:
            os.fchown(fd, -1 if change.uid is None else change.uid, -1 if change.gid is None else change.gid)
        mode = change.mode if change.mode is not None else default_mode
        if mode is not None:
            os.fchmod(fd, mode)
        if change.extra:
            _set_extra(fd, change.extra)
        if change.atime is not None or change.mtime is not None:
            st = os.fstat(fd)
            os.utime(fd, ns=(st.st_atime_ns if change.atime is None else _ns(change.atime),
                             st.st_mtime_ns if change.mtime is None else _ns(change.mtime)))

    def _apply_at(self, dirfd: int, name: str, change: AttrChange, path: str) -> None:
        """``change`` made to ``name`` itself in ``dirfd`` (never to what a symlink names)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            link = stat_mod.S_ISLNK(st.st_mode)
            if change.extra and not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode)):
                raise NotPermitted(f"{self._shown(path)}: extra attributes are kept on files and directories "
                                   "only (Linux keeps no user xattrs on symlinks or special files)")
            if change.uid is not None or change.gid is not None:
                os.chown(name, -1 if change.uid is None else change.uid, -1 if change.gid is None else change.gid,
                         dir_fd=dirfd, follow_symlinks=False)
            if change.mode is not None and not link:  # Linux has no mode of a symlink (always 0777)
                os.chmod(proc_path(fd), change.mode)  # the very file held: never a link swapped in
            if change.extra:
                _set_extra(proc_path(fd), change.extra)
            if change.atime is not None or change.mtime is not None:
                os.utime(name, dir_fd=dirfd, follow_symlinks=False,
                         ns=(st.st_atime_ns if change.atime is None else _ns(change.atime),
                             st.st_mtime_ns if change.mtime is None else _ns(change.mtime)))
        finally:
            os.close(fd)

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        def do() -> ObjectInfo:
            dirfd, name = self._beneath.at(path)
            try:
                self._apply_at(dirfd, name, change, path)
                return self._status_at(dirfd, name, path)
            finally:
                os.close(dirfd)

        return await self._run(path, do)

    async def delete(self, path: str) -> None:
        def remove() -> None:
            parent, name = self._beneath.parent(path)
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)  # a symlink is removed, never what it names
            finally:
                os.close(parent)

        try:
            await asyncio.to_thread(remove)
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._fail(e, path) from None

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        if not path.strip("/"):
            return

        def make() -> None:
            parent, name = self._parent_made(path)
            try:
                try:
                    os.mkdir(name, 0o777 if change is None or change.mode is None else change.mode, dir_fd=parent)
                except FileExistsError:  # existing is not an error: a file (or a link leading out) is
                    os.close(self._beneath.open(path, os.O_PATH | os.O_DIRECTORY))
                    return
                if change:  # (the mode again: mkdir's was cut by the umask)
                    self._apply_at(parent, name, change, path)
            finally:
                os.close(parent)

        try:
            await self._run(path, make)
        except NotADirectory:
            raise NotADirectory(f"a file is in the way: {self._shown(path)}") from None

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        if change and change.extra:
            raise NotPermitted(f"{self._shown(path)}: Linux keeps no extra attributes (user xattrs) on symlinks")

        def make() -> ObjectInfo:
            parent, name = self._parent_made(path)
            try:
                os.symlink(target, name, dir_fd=parent)
                if change:
                    self._apply_at(parent, name, change, path)
                return self._status_at(parent, name, path)
            finally:
                os.close(parent)

        return await self._run(path, make)

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        kind = stat_mod.S_IFMT(mode)
        if kind not in (stat_mod.S_IFIFO, stat_mod.S_IFSOCK, stat_mod.S_IFCHR, stat_mod.S_IFBLK):
            raise InvalidArgument(f"mknod of mode {mode:o}: not a FIFO, socket or device node")
        if change and change.extra:
            raise NotPermitted(f"{self._shown(path)}: Linux keeps no extra attributes (user xattrs) on special files")
        perm = change.mode if change and change.mode is not None else mode & 0o7777

        def make() -> ObjectInfo:
            parent, name = self._parent_made(path)
            try:
                os.mknod(name, kind | perm, rdev, dir_fd=parent)  # a FIFO: mkfifo; devices: root only (EPERM)
                # the exact mode (mknod's was cut by the umask), then owner and times
                self._apply_at(parent, name, AttrChange(perm, *(
                    (change.uid, change.gid, change.atime, change.mtime, change.extra) if change else ())), path)
                return self._status_at(parent, name, path)
            finally:
                os.close(parent)

        return await self._run(path, make)

    async def link(self, src: str, dst: str) -> ObjectInfo:
        b = self._beneath

        def make() -> ObjectInfo:
            sp, sname = b.parent(src)
            try:
                dp, dname = self._parent_made(dst)
                try:
                    # the name itself: a symlink is linked, never followed (even beneath)
                    os.link(sname, dname, src_dir_fd=sp, dst_dir_fd=dp, follow_symlinks=False)
                    return self._status_at(dp, dname, dst)
                finally:
                    os.close(dp)
            finally:
                os.close(sp)

        return await self._run(f"{src} -> {dst}", make)

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        b = self._beneath

        def do() -> ObjectInfo:
            rfd, st = b.open_regular(src, os.O_RDONLY)
            try:
                if version and _version(st) != version:
                    raise VersionChanged(f"{self._shown(src)} changed in the under-store")
                xattrs = _user_xattrs(rfd)
                parent, name = self._parent_made(dst)
                tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
                try:
                    wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=parent)
                    try:
                        _copy_bytes(rfd, wfd, st.st_size)
                        if _version(os.fstat(rfd)) != _version(st):  # written to while copied
                            raise VersionChanged(f"{self._shown(src)} changed in the under-store while copied")
                        with contextlib.suppress(PermissionError):
                            os.fchown(wfd, st.st_uid, st.st_gid)
                        os.fchmod(wfd, st.st_mode & 0o7777)
                        for k, v in xattrs.items():
                            with contextlib.suppress(OSError):
                                os.setxattr(wfd, k, v)
                        os.utime(wfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                        with contextlib.suppress(FileNotFoundError):
                            if stat_mod.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                                raise IsADirectory(f"is a directory: {self._shown(dst)}")
                        os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
                        new = os.fstat(wfd)
                        return _info(dst, new, _attrs(new, None, _extra(wfd)))
                    finally:
                        os.close(wfd)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=parent)
                    os.close(parent)
            finally:
                os.close(rfd)

        return await self._run(f"{src} -> {dst}", do)

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        if size < 0:
            raise InvalidArgument(f"cannot truncate to a negative size ({size})")

        def do() -> ObjectInfo:
            fd, st = self._beneath.open_regular(path, os.O_WRONLY)  # (a link beneath: what it names)
            try:
                if version and _version(st) != version:
                    raise VersionChanged(f"{self._shown(path)} changed in the under-store")
                os.ftruncate(fd, size)  # in place: every hard link sees it
            finally:
                os.close(fd)
            return self._status(path)

        return await self._run(path, do)

    async def rename(self, src: str, dst: str) -> None:
        b = self._beneath

        def move() -> None:
            sp, sname = b.parent(src)
            try:
                os.stat(sname, dir_fd=sp, follow_symlinks=False)  # NotFound before anything is created
                b.makedirs(dst.strip("/").rpartition("/")[0])
                dp, dname = b.parent(dst)
                try:
                    os.rename(sname, dname, src_dir_fd=sp, dst_dir_fd=dp)
                finally:
                    os.close(dp)
            finally:
                os.close(sp)

        try:
            await asyncio.to_thread(move)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {self._shown(src)}") from None
        except OSError as e:
            raise self._fail(e, f"{src} -> {dst}") from None
