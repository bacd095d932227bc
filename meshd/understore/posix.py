"""A local (or NFS-mounted) directory as an under-store: ``file:///abs/dir``.

Blocking calls run in the default thread pool. Writes go to a temporary file
in the target directory and are renamed into place, so a reader never sees a
half-written file and a failed put leaves the old file intact. The version of
a file is ``"{mtime_ns}-{size}"``.
"""

from __future__ import annotations

import asyncio
import os
import stat as stat_mod
import tempfile
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote, urlsplit

from meshd.errors import MountError, NotADirectory, NotFound, VersionChanged, from_oserror
from meshd.understore.base import Capabilities, ObjectInfo, UnderStore

CHUNK = 1 << 20


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

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    async def check(self) -> None:
        if not os.path.isdir(self.root):
            raise MountError(f"directory does not exist: {self.root}")

    async def head(self, path: str) -> ObjectInfo:
        try:
            st = await asyncio.to_thread(os.stat, self._abs(path))
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        return _info(path, st)

    async def list(self, path: str) -> list[ObjectInfo]:
        def scan() -> list[ObjectInfo]:
            out = []
            with os.scandir(self._abs(path)) as it:
                for entry in it:
                    if entry.name.startswith(".mesh-tmp-"):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    out.append(_info(f"{path}/{entry.name}" if path else entry.name, st))
            out.sort(key=lambda i: i.path)
            return out

        try:
            return await asyncio.to_thread(scan)
        except NotADirectoryError:
            raise NotADirectory(f"not a directory: {self._shown(path)}") from None
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None

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
            f = await asyncio.to_thread(open, self._abs(path), "rb", buffering=0)
        except IsADirectoryError:
            from meshd.errors import IsADirectory

            raise IsADirectory(f"is a directory: {self._shown(path)}") from None
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        try:
            st = os.fstat(f.fileno())
            if version is not None and _version(st) != version:
                raise VersionChanged(f"{self._shown(path)} changed in the under-store")
            end = min(end, st.st_size)
            pos = start
            while pos < end:
                n = min(chunk_size, end - pos)
                chunk = await asyncio.to_thread(os.pread, f.fileno(), n, pos)
                if not chunk:
                    break
                pos += len(chunk)
                yield chunk
        finally:
            f.close()

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        target = self._abs(path)
        try:
            fd = await asyncio.to_thread(os.open, target, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        try:
            with os.fdopen(fd, "ab") as f:
                if stat_mod.S_ISDIR(os.fstat(f.fileno()).st_mode):
                    from meshd.errors import IsADirectory

                    raise IsADirectory(f"is a directory: {self._shown(path)}")
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                st = os.fstat(f.fileno())
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        return _info(path, st)

    async def put(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        target = self._abs(path)
        directory = os.path.dirname(target)
        try:
            await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
            fd, tmp = await asyncio.to_thread(tempfile.mkstemp, prefix=".mesh-tmp-", dir=directory)
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
                f.flush()
                # mkstemp makes 0600 files: give the file the mode a plain create
                # would (or keep the mode of the file it replaces)
                try:
                    mode = os.stat(target).st_mode & 0o7777
                except OSError:
                    mode = 0o666 & ~_UMASK
                os.fchmod(f.fileno(), mode)
                # The version of *this* write, taken before the rename: a later
                # head() could already see a concurrent writer's file.
                st = os.fstat(f.fileno())
            if os.path.isdir(target):
                from meshd.errors import IsADirectory

                raise IsADirectory(f"is a directory: {self._shown(path)}")
            await asyncio.to_thread(os.replace, tmp, target)
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return _info(path, st)

    async def delete(self, path: str) -> None:
        target = self._abs(path)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                await asyncio.to_thread(os.rmdir, target)
            else:
                await asyncio.to_thread(os.unlink, target)
        except FileNotFoundError:
            return
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None

    async def mkdir(self, path: str) -> None:
        try:
            await asyncio.to_thread(os.makedirs, self._abs(path), exist_ok=True)
        except FileExistsError:
            raise NotADirectory(f"a file is in the way: {self._shown(path)}") from None
        except OSError as e:
            raise from_oserror(e, self._shown(path)) from None

    async def rename(self, src: str, dst: str) -> None:
        if not os.path.lexists(self._abs(src)):
            raise NotFound(f"no such file or directory: {self._shown(src)}")
        try:
            await asyncio.to_thread(os.makedirs, os.path.dirname(self._abs(dst)), exist_ok=True)
            await asyncio.to_thread(os.rename, self._abs(src), self._abs(dst))
        except OSError as e:
            raise from_oserror(e, f"{self._shown(src)} -> {self._shown(dst)}") from None
