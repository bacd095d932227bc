"""Pending writes shown as if they were in the store.

:class:`PendingStore` wraps a mount's under-store on every node. A path with an
acknowledged write-back write not yet uploaded (any node's: the pending
registry) has, for ``head`` and ``list``, the pending version (``wb:<node>:<id>``),
and ``get_range`` at such a version reads the writer's spool file. Everything
above (metadata shards, page cache, single-flight, the router, every front end)
then treats a pending file like any other file: a version, pages, a status.
The writer's uploads go to :attr:`PendingStore.inner`, never through this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from meshd import paths
from meshd.attrs import AttrChange, Attrs
from meshd.errors import AlreadyExists, NotFound, VersionChanged
from meshd.understore import ObjectInfo, UnderStore
from meshd.understore.base import Pace
from meshd.writeback.journal import Entry, is_pending_version
from meshd.writeback.service import Writeback


def info_of(e: Entry, rel: str) -> ObjectInfo:
    return ObjectInfo(rel, e.size, e.mtime, e.version, False, Attrs.from_wire(e.attrs) if e.attrs else None)


class PendingStore(UnderStore):
    def __init__(self, inner: UnderStore, mount: Any, wb: Writeback) -> None:
        super().__init__(inner.uri, inner.options)
        self.inner, self.mount, self.wb = inner, mount, wb
        self.scheme = inner.scheme
        self.capabilities = inner.capabilities

    @property
    def shown(self) -> str:
        return self.inner.shown

    @shown.setter
    def shown(self, value: str) -> None:
        if hasattr(self, "inner"):
            self.inner.shown = value

    def _mesh(self, rel: str) -> str:
        rel = rel.strip("/")
        if not rel:
            return self.mount.path
        return (self.mount.path.rstrip("/") + "/" + rel) if self.mount.path != "/" else "/" + rel

    # ---- what readers see ---------------------------------------------------------

    async def head(self, path: str) -> ObjectInfo:
        e = self.wb.pending(self._mesh(path))
        if e is not None:
            return info_of(e, path.strip("/"))
        try:
            return await self.inner.head(path)
        except NotFound:
            if self.wb.registry.has_dir(self._mesh(path)):
                return ObjectInfo(path.strip("/"), 0, 0.0, "", True)
            raise

    async def list(self, path: str) -> list[ObjectInfo]:
        mesh = self._mesh(path)
        pending = self.wb.pending_children(mesh)
        dirs = self.wb.registry.subdirs(mesh)
        if not pending and not dirs:
            return await self.inner.list(path)
        try:
            entries = await self.inner.list(path)
        except NotFound:
            if not self.wb.registry.has_dir(mesh):
                raise
            entries = []
        rel = path.strip("/")
        by_name = {paths.basename(i.path): i for i in entries}
        for e in pending:
            name = paths.basename(e.path)
            by_name[name] = info_of(e, f"{rel}/{name}" if rel else name)
        for name in dirs:
            if name not in by_name:
                by_name[name] = ObjectInfo(f"{rel}/{name}" if rel else name, 0, 0.0, "", True)
        return [by_name[n] for n in sorted(by_name, key=lambda n: n.encode())]

    async def get_range(self, path: str, start: int, end: int, version: str | None = None, *,
                        chunk: int | None = None) -> AsyncIterator[bytes]:
        """At a pending version: the spool's bytes; once the spool is gone (uploaded), the
        rest at the store version it switched to, when this node made the switch (the same
        bytes, version-checked by the store): a reader is not cut by the upload landing."""
        pos = start
        if version is not None and is_pending_version(version):
            try:
                async for piece in self.wb.read(version, start, end, chunk):
                    pos += len(piece)
                    yield piece
                return
            except VersionChanged:
                landed = self.wb.switched.get(version)
                if landed is None:
                    raise
                version = landed
        async for piece in self.inner.get_range(path, pos, end, version, chunk=chunk):
            yield piece

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        if version is not None and is_pending_version(version):
            return b"".join([p async for p in self.get_range(path, start, end, version)])
        return await self.inner.read_all(path, start, end, version)

    async def check_absent(self, path: str) -> None:
        if self.wb.pending(self._mesh(path)) is not None:
            raise AlreadyExists(f"already exists: {self._shown(path)}")
        await self.inner.check_absent(path)

    # ---- everything else is the store's -------------------------------------------

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        if exclusive and self.wb.pending(self._mesh(path)) is not None:
            raise AlreadyExists(f"already exists: {self._shown(path)}")
        return await self.inner.put(path, chunks, change=change, exclusive=exclusive, if_version=if_version)

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        return await self.inner.put_file(path, src, size, change=change, token=token, started=started,
                                         parallel=parallel, pace=pace)

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:
        await self.inner.abort_put(path, token, name=name, since=since)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        await self.inner.mkdir(path, change)

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        return await self.inner.setattr(path, change)

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        return await self.inner.symlink(path, target, change)

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        return await self.inner.mknod(path, mode, rdev, change)

    async def link(self, src: str, dst: str) -> ObjectInfo:
        return await self.inner.link(src, dst)

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        return await self.inner.copy(src, dst, version)

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        return await self.inner.truncate(path, size, version)

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(src, dst)

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        return await self.inner.append(path, chunks)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()

    async def sweep_tmp(self, max_age: float) -> int:
        return await self.inner.sweep_tmp(max_age)

    def limit_receive_buffer(self, nbytes: int) -> bool:
        return self.inner.limit_receive_buffer(nbytes)
