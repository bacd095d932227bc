"""A local (or NFS-mounted) directory as an under-store: ``file:///abs/dir``.

Blocking calls run in the default thread pool. Writes go to a temporary file
in the target directory and are renamed into place, so a reader never sees a
half-written file and a failed put leaves the old file intact. The version of
a file is ``"{mtime_ns}-{size}"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat as stat_mod
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote, urlsplit

from meshd.attrs import AttrChange
from meshd.errors import (
    IsADirectory,
    MeshError,
    MountError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    VersionChanged,
    from_oserror,
)
from meshd.understore.base import Capabilities, ObjectInfo, UnderStore
from meshd.understore.beneath import Beneath, Escapes

CHUNK = 1 << 20
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


_UMASK = os.umask(0)
os.umask(_UMASK)


def _info(path: str, st: os.stat_result) -> ObjectInfo:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return ObjectInfo(path, 0 if is_dir else st.st_size, st.st_mtime, "" if is_dir else _version(st), is_dir)


class PosixUnderStore(UnderStore):
    scheme = "file"
    capabilities = Capabilities(rename=True, directories=True, append=True)

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
        return from_oserror(e, self._shown(path))

    async def check(self) -> None:
        if not os.path.isdir(self.root):
            raise MountError(f"directory does not exist: {self.root}")

    async def close(self) -> None:
        self._beneath.close()

    async def sweep_tmp(self, max_age: float) -> int:
        return await asyncio.to_thread(sweep_tmp, self.root, max_age)

    async def head(self, path: str) -> ObjectInfo:
        try:
            st = await asyncio.to_thread(self._beneath.stat, path)
        except OSError as e:
            raise self._fail(e, path) from None
        return _info(path, st)

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
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat_mod.S_ISLNK(st.st_mode):
                            st = b.stat(rel)  # followed only while it stays beneath the root
                    except OSError:  # gone meanwhile, dangling, or leading out: not listed
                        continue
                    out.append(_info(rel, st))
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
        try:
            fd = await asyncio.to_thread(self._beneath.open, path, os.O_RDONLY)
        except OSError as e:
            raise self._fail(e, path) from None
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectory(f"is a directory: {self._shown(path)}")
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
        try:
            fd = await asyncio.to_thread(self._beneath.open, path, os.O_WRONLY | os.O_APPEND)
        except IsADirectoryError:
            raise IsADirectory(f"is a directory: {self._shown(path)}") from None
        except OSError as e:
            raise self._fail(e, path) from None
        try:
            with os.fdopen(fd, "ab") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                st = os.fstat(f.fileno())
        except OSError as e:
            raise self._fail(e, path) from None
        return _info(path, st)

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False) -> ObjectInfo:
        if exclusive:
            await self.check_absent(path)
        b = self._beneath
        head = path.strip("/").rpartition("/")[0]
        try:
            await asyncio.to_thread(b.makedirs, head)
            parent, name = await asyncio.to_thread(b.parent, path)
        except FileExistsError:
            raise NotADirectory(f"a file is in the way: {self._shown(head)}") from None
        except OSError as e:
            raise self._fail(e, path) from None
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                # created 0600 while being written: give it the mode a plain create would
                # (or keep the mode of the file it replaces)
                try:
                    old = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    old = None
                if old is not None and stat_mod.S_ISDIR(old.st_mode):
                    raise IsADirectory(f"is a directory: {self._shown(path)}")
                mode = old.st_mode & 0o7777 if old is not None and stat_mod.S_ISREG(old.st_mode) else 0o666 & ~_UMASK
                os.fchmod(f.fileno(), mode)
                # The version of *this* write, taken before the rename: a later
                # head() could already see a concurrent writer's file.
                st = os.fstat(f.fileno())
            await asyncio.to_thread(os.replace, tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as e:
            raise self._fail(e, path) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            os.close(parent)
        return _info(path, st)

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
        try:
            await asyncio.to_thread(self._beneath.makedirs, path)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectory(f"a file is in the way: {self._shown(path)}") from None
        except OSError as e:
            raise self._fail(e, path) from None

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
