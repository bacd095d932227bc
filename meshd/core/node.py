"""The namespace facade of a node: one namespace over the mounts, cached.

Every front end (gRPC service, HTTP data API, S3, WebHDFS, and through the
node meshfs and ``mesh://``) is a thin adapter over :class:`MeshNode`. Paths
are mesh paths; errors are :mod:`meshd.errors`.

Read path: ``open(path)`` resolves the mount and pins the file's status (the
metadata cache, per the mount's sync interval) in a :class:`~meshd.core.handle.FileHandle`;
each ``handle.read(offset, length)`` then gets the pages covering the range from
the page-source chain (:mod:`meshd.cache.sources`: memory tier | disk tier | owner node
| peer region | home store), at the pinned version only.

Access: every operation is checked here, once, against the principal the front
end authenticated the request as (:mod:`meshd.auth`; ``self.access``): the same
rules on every front end. A node built without credentials (``auth.OPEN``)
allows everything.

Write path: a write goes through to the under-store (``write_mode: through``, the
default), or, in write-back mode (the mount's ``write_mode: back``, or the request's
own choice), is acknowledged once durable on this node and uploaded in the background
(:mod:`meshd.writeback`; readers everywhere see it at once). Either way the file's
status is recorded and its old cached pages dropped. A change of a path whose
write-back upload is still pending either replaces it (write, delete: the pending
write is never uploaded over the change), moves it (rename), or waits for the upload
first (attributes, truncate, append, copy, link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from meshd import auth, paths
from meshd.attrs import CREATE_MODE, AttrChange, Attrs
from meshd.auth import ADMIN, READ, WRITE
from meshd.cache.pages import MemPage, Page, PageCache, file_id, version_id
from meshd.cache.readahead import ReadAhead
from meshd.cache.sources import PageSources, Pinned, Target
from meshd.cluster.peers import Cluster
from meshd.core import admin, placing
from meshd.core.admin import LoadProgress
from meshd.core.handle import FileHandle, Segment, pin
from meshd.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    NotFound,
    NotSupported,
    PermissionDenied,
    UnderStoreError,
    VersionChanged,
)
from meshd.metadata.mounts import MountTable
from meshd.metadata.shard import FileStatus, MetadataCache, page_of
from meshd.metadata.sharded import ShardedMetadata
from meshd.metrics import Stats
from meshd.region.federation import Federation
from meshd.understore import ObjectInfo
from meshd.understore.base import ObjectVersion, UnderStore, VersionPage, file_chunks, version_pin
from meshd.writeback import Entry, Writeback, is_pending_version
from meshd.writeback.journal import writer_of
from meshd.writeback.overlay import PendingStore, info_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountPoint:
    """A mount as a front end sees it: where it is in the namespace, and whether it takes writes."""

    path: str
    read_only: bool


class MeshNode:
    """One namespace over the mounts, cached. Front ends (the gateways, through
    :mod:`meshd.core`) call its methods only, never its parts (``mounts``,
    ``metadata``, ``cache``, ...): what they need of those has a method here, named
    for what it means (mount points, S3 object attributes, ...)."""

    def __init__(self, mounts: MountTable, metadata: MetadataCache, cache: PageCache,
                 stats: Stats, readahead: ReadAhead | None = None, load_parallelism: int = 8,
                 cluster: Cluster | None = None, federation: Federation | None = None,
                 writeback: Writeback | None = None) -> None:
        self.mounts = mounts
        self.federation = federation
        self.shard = metadata  # this node's own RocksDB shard
        self.cluster = cluster
        self.metadata = ShardedMetadata(metadata, cluster)  # every key at its owner
        self.cache = cache
        self.stats = stats
        self.readahead = readahead or ReadAhead(cache.page_size)
        self.sources = PageSources(cache, stats, cluster, federation)
        self.load_parallelism = load_parallelism
        self.access: auth.Access = auth.OPEN  # set by the composition root
        self._turns: dict[str, list[Any]] = {}  # path -> [lock, users]: conditional writes take turns
        self.writeback = writeback
        if writeback is not None:
            writeback.store_of = self._upload_store
            writeback.landed = self._landed
            if cluster is not None:
                c = cluster
                writeback.peer_session = c.session
                writeback.peers = lambda path: [(m.node_id, m.http) for m in c.chain(b"w:" + path.encode(),
                                                                                      len(c.members))
                                                if not c.is_me(m)]
                writeback.alive = lambda: set(c.members)
            if federation is not None:
                writeback.crossing = federation.crossing
            writeback.find_node = self._find_node
            metadata.on_record = self._noted

    # ---- namespace -------------------------------------------------------

    def resolve(self, path: str) -> Target | None:
        """The mount of ``path``; None for a virtual directory above mounts."""
        path = paths.normalize(path)
        found = self.mounts.resolve(path)
        if found is None:
            if self.mounts.children_of_virtual(path) is None:
                raise NotFound(f"no mount covers {path}")
            return None
        mount, rel = found
        return Target(path, mount, self.mounts.store(mount), rel)

    def _target(self, path: str) -> Target:
        """Resolve a path that is to be changed: it must lie inside a mount."""
        try:
            t = self.resolve(path)
        except NotFound:
            t = None
        if t is None:
            raise PermissionDenied(f"{paths.normalize(path)} is not inside a mount")
        return t

    async def _stat(self, t: Target, fresh: bool = False) -> FileStatus:
        status, before = await self.metadata.stat(t.mount, t.store, t.path, t.rel, fresh=fresh)
        return self._drop_if_changed(t, status, before)

    def _drop_if_changed(self, t: Target, status: FileStatus, before: FileStatus | None) -> FileStatus:
        """A stat revealed a new version: drop the old version's pages held here."""
        if before is not None and before.version and before.version != status.version:
            self.cache.drop_file(file_id(t.mount.identity, t.rel), keep_version=version_id(status.version))
        return status

    def _see(self, path: str) -> None:
        """Stat and list: allowed on what the principal may read, and on the directories
        leading there (their names are not secret from those who may go through them)."""
        if not self.access.sees(path):
            self.access.check(READ, paths.normalize(path))

    def _filter(self, path: str, entries: list[FileStatus]) -> list[FileStatus]:
        if self.access.check_list(paths.normalize(path)):
            return entries
        return [e for e in entries if self.access.sees(e.path)]

    async def stat(self, path: str) -> FileStatus:
        self._see(path)
        t = self.resolve(path)
        if t is None:
            return FileStatus(paths.normalize(path), 0, 0.0, "", True)
        return await self._stat(t)

    async def listdir(self, path: str) -> list[FileStatus]:
        self._see(path)
        t = self.resolve(path)
        if t is None:
            norm = paths.normalize(path)
            names = self.mounts.children_of_virtual(norm) or []
            return self._filter(norm, [FileStatus(paths.join(norm, n), 0, 0.0, "", True) for n in names])
        return self._filter(t.path, await self.metadata.listdir(t.mount, t.store, t.path, t.rel))

    async def list_page(self, path: str, after: str = "", limit: int = 1000) -> tuple[list[FileStatus], bool]:
        """Entries of a directory in name order after the name ``after``: (page, more)."""
        if limit < 0:
            raise InvalidArgument(f"bad listing limit {limit}")
        self._see(path)
        t = self.resolve(path)
        if t is None:
            return page_of(await self.listdir(path), after, limit)
        if self.access.check_list(t.path):
            return await self.metadata.list_page(t.mount, t.store, t.path, t.rel, after, limit)
        return page_of(await self.listdir(path), after, limit)

    async def open_info(self, path: str, *, local: bool = False) -> tuple[FileStatus, str]:
        """A file's status and its file id (the key of its pages on the ring), so a
        client can send each page range to the page's owner."""
        self.access.check(READ, paths.normalize(path))
        status = await (self.local_stat(path) if local else self.stat(path))
        t = self.resolve(path)
        fid = file_id(t.mount.identity, t.rel) if t is not None and not status.is_dir else ""
        return status, fid

    # ---- the namespace's shape, for front ends ---------------------------

    def mount_points(self) -> list[MountPoint]:
        """Every mount: its path and whether it is read-only (S3's buckets)."""
        return [MountPoint(m.path, m.read_only) for m in self.mounts.entries()]

    def inside_mount(self, path: str) -> bool:
        """Whether a mount holds ``path``: False for a directory above the mounts
        (:meth:`is_virtual_dir`) and for a path no mount covers."""
        return self.mounts.resolve(paths.normalize(path)) is not None

    def is_virtual_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory above mount points that no mount holds
        (the root, when nothing is mounted at ``/``)."""
        norm = paths.normalize(path)
        return self.mounts.resolve(norm) is None and self.mounts.children_of_virtual(norm) is not None

    def check_writable(self, path: str) -> None:
        """PermissionDenied unless ``path`` lies inside a mount that takes writes, and the
        request's principal may write there."""
        self.access.check(WRITE, paths.normalize(path))
        self._target(path).mount.check_writable()

    # ---- S3 object attributes (ETag, content type, user metadata) ---------

    async def object_attrs(self, path: str, version: str) -> dict[str, Any] | None:
        """The attributes a front end recorded for ``path`` at ``version``; None if none
        were (written by other means, or since rewritten)."""
        self.access.check(READ, paths.normalize(path))
        return await self.metadata.attrs(path, version)

    async def set_object_attrs(self, path: str, version: str, attrs: dict[str, Any]) -> None:
        """Record attributes of ``path`` at ``version`` (JSON-serialisable values)."""
        self.access.check(WRITE, paths.normalize(path))
        await self.metadata.set_attrs(path, version, attrs)
        landed = self.writeback.switched.get(version) if self.writeback is not None else None
        if landed is not None:  # a write-back upload already landed: they belong to its new version too
            await self.metadata.set_attrs(path, landed, attrs)

    async def version_attrs(self, path: str, version_id: str) -> dict[str, Any] | None:
        """The attributes a front end recorded for the store's kept version ``version_id``
        of ``path`` (kept while the version is: :meth:`set_version_attrs`); None if none."""
        self.access.check(READ, paths.normalize(path))
        return await self.metadata.attrs(path, version_pin(version_id))

    async def set_version_attrs(self, path: str, version_id: str, attrs: dict[str, Any]) -> None:
        """Record attributes of the kept version ``version_id`` of ``path`` (a write's
        ``FileStatus.version_id``): unlike :meth:`set_object_attrs`'s, neither the next
        write nor a delete (a delete marker) removes them."""
        self.access.check(WRITE, paths.normalize(path))
        await self.metadata.set_attrs(path, version_pin(version_id), attrs)

    async def drop_object_attrs(self, path: str) -> None:
        self.access.check(WRITE, paths.normalize(path))
        await self.metadata.drop_attrs(path)

    # ---- bucket configuration (S3: CORS rules, bucket tags) ---------------
    # Kept as the attributes of the bucket's path under the fixed version key
    # BUCKET_CONFIG, in the metadata store: the region's shards, so every node of
    # the region serves the same configuration. One entry per name; setting one
    # keeps the others.

    BUCKET_CONFIG = "bucket-config"
    PUBLIC_BUCKET_CONFIG = frozenset({"cors"})  # evaluated for unsigned CORS preflights, as S3 does

    async def bucket_config(self, path: str, name: str) -> Any:
        """The configuration ``name`` of the directory ``path`` (an S3 bucket), None if unset.
        Needs READ there, except for PUBLIC_BUCKET_CONFIG (a browser's preflight carries
        no credential; the rules show in the answers anyway)."""
        norm = paths.normalize(path)
        if name not in self.PUBLIC_BUCKET_CONFIG:
            self.access.check(READ, norm)
        found = await self.metadata.attrs(norm, self.BUCKET_CONFIG)
        return (found or {}).get(name)

    async def set_bucket_config(self, path: str, name: str, value: Any) -> None:
        """Set (None: remove) the configuration ``name`` of the directory ``path``: WRITE there."""
        norm = paths.normalize(path)
        self.access.check(WRITE, norm)
        found = dict(await self.metadata.attrs(norm, self.BUCKET_CONFIG) or {})
        found.pop("v", None)
        found.pop("t", None)
        if value is None:
            found.pop(name, None)
        else:
            found[name] = value
        await self.metadata.set_attrs(norm, self.BUCKET_CONFIG, found)

    # ---- kept versions (an S3 bucket with versioning on: docs/S3_COMPAT.md) ----
    # A version is read with ``open(path, version=v.pin, size=v.size)``: its pages are
    # keyed by the pin, so a read of it is cached, single-flight, and never served bytes
    # of another version.

    async def versioning(self, path: str) -> str:
        """The versioning of the store holding ``path``: ``"Enabled"``, ``"Suspended"``,
        or ``""`` (never on, a store that keeps no versions, a directory above mounts)."""
        self._see(path)
        t = self.resolve(path)
        if t is None:
            return ""
        store = _own_store(t.store)
        return await store.versioning() if store.capabilities.versions else ""

    async def set_versioning(self, path: str, enabled: bool) -> None:
        """Turn the versioning of the store holding ``path`` on or off (suspended): the
        store's whole bucket, so ADMIN on the path and a writable mount."""
        self.access.check(ADMIN, paths.normalize(path))
        t = self._target(path)
        t.mount.check_writable()
        await _own_store(t.store).set_versioning(enabled)

    async def stat_version(self, path: str, version_id: str) -> ObjectVersion:
        """The kept version ``version_id`` of the file ``path`` (or a delete marker)."""
        self.access.check(READ, paths.normalize(path))
        t = self.resolve(path)
        if t is None:
            raise NotFound(f"no such version of {paths.normalize(path)}")
        return replace(await _own_store(t.store).head_version(t.rel, version_id), path=t.path)

    async def delete_version(self, path: str, version_id: str) -> ObjectVersion:
        """Remove one kept version of ``path`` for good (a delete marker too); what it was.
        The file's current version may change: its status is looked up again next time."""
        self.access.check(WRITE, paths.normalize(path))
        t = self._target(path)
        t.mount.check_writable()
        v = await _own_store(t.store).delete_version(t.rel, version_id)
        await self.metadata.forget_subtree(t.path)
        up = t.path
        while up != t.mount.path and up != "/":  # a file back from a delete marker: its directories too
            up = paths.parent(up)
            await self.metadata.invalidate(up)
        return replace(v, path=t.path)

    async def versions(self, prefix: str, *, after: str = "", after_version_id: str = "", limit: int = 1000,
                       delimiter: str = "") -> VersionPage:
        """Kept versions and delete markers of the files whose mesh path starts with the
        string ``prefix`` (``/bucket/dir/fi``: the mount of ``/bucket/dir``), by path then
        newest first, after (``after``, a mesh path, and ``after_version_id``), at most
        ``limit``; paths are mesh paths. Nothing for a directory above mounts."""
        head, _, tail = prefix.rpartition("/")
        self._see(head or "/")
        t = self.resolve(head or "/")
        if t is None:
            return VersionPage([], [], False)
        mp = t.mount.path.rstrip("/")

        def rel(mesh: str) -> str:
            return mesh[len(mp) + 1:] if mesh.startswith(mp + "/") else ""

        page = await _own_store(t.store).list_versions(
            (t.rel + "/" if t.rel else "") + tail, after_path=rel(after) if after else "",
            after_version_id=after_version_id, limit=limit, delimiter=delimiter)
        found = [replace(v, path=f"{mp}/{v.path}") for v in page.versions]
        if not self.access.check_list(head or "/"):
            found = [v for v in found if self.access.sees(v.path)]
        return replace(page, versions=found, prefixes=[f"{mp}/{p}" for p in page.prefixes],
                       next_path=f"{mp}/{page.next_path}" if page.next_path else "")

    # ---- this node's shard (calls forwarded by peers that do not own the key) ----

    async def local_stat(self, path: str, fresh: bool = False) -> FileStatus:
        self._see(path)
        t = self.resolve(path)
        if t is None:
            return FileStatus(paths.normalize(path), 0, 0.0, "", True)
        return await self._local_stat(t, fresh)

    async def _local_stat(self, t: Target, fresh: bool = False) -> FileStatus:
        status, before = await self.shard.stat(t.mount, t.store, t.path, t.rel, fresh=fresh)
        return self._drop_if_changed(t, status, before)

    async def local_list(self, path: str, after: str = "", limit: int = 0) -> tuple[list[FileStatus], bool]:
        t = self.resolve(path)
        if t is None or not self.access.check_list(t.path):
            return await self.list_page(path, after, limit)
        return await self.metadata.local_list(t.mount, t.store, t.path, t.rel, after, limit)

    # ---- read path -------------------------------------------------------

    async def open(self, path: str, *, version: str | None = None, size: int | None = None,
                   status: FileStatus | None = None, local: bool = False) -> FileHandle:
        """Open a file for reading, pinned to one version (:mod:`meshd.core.handle`).

        ``version`` and ``size``: the caller pins a version it already knows (a client
        reading one file in several requests, or from several nodes): every read serves
        exactly that version or fails with VersionChanged. Otherwise the node's status
        is pinned: ``status``, one the caller has just got from :meth:`stat` (no second
        lookup), else a lookup per the mount's ``sync_interval`` (``local``: this node's
        shard). Such a handle re-pins (a few times, :data:`~meshd.core.handle.REPINS`) if the
        object changed before its first byte."""
        self.access.check(READ, paths.normalize(path))
        t = self.resolve(path)
        if t is None:
            raise IsADirectory(f"is a directory: {paths.normalize(path)}")
        if version is not None or size is not None:
            if not isinstance(version, str) or not version or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"bad version pin: version={version!r} size={size!r}")
            return FileHandle(self.sources, self.readahead, pin(t, FileStatus(t.path, size, 0.0, version, False)))
        if status is None:
            status = await (self._local_stat(t) if local else self._stat(t))
        return FileHandle(self.sources, self.readahead, pin(t, status),
                          restat=lambda t: self._stat(t, fresh=True))

    async def serve_page(self, path: str, version: str, size: int, index: int,
                         cached_only: bool = False, hold: float | None = None) -> tuple[Page, int, bool] | None:
        """A peer asks this node, as the page's owner, for page ``index`` of ``path`` at
        ``version`` (``size`` bytes long). Served from the tiers or fetched once (version-checked).
        Returns the page, its length, and whether it had to be fetched. ``cached_only`` (a
        peer *region* asking): NotFound unless the page is held here; nothing is fetched.
        ``hold``: None when the page is still queued after that many seconds (its fetch
        goes on; the peer asks again)."""
        self.access.check(READ, paths.normalize(path))
        t = self._target(path)
        ps = self.cache.page_size
        if size < 0 or index < 0 or index * ps >= max(size, 1) or not version:
            raise InvalidArgument(f"bad page request: index={index} size={size} version={version!r}")
        f = pin(t, FileStatus(t.path, size, 0.0, version, False))
        serving = self.sources.serve(f, index, cached_only)
        if hold is None:
            got, fetched = await serving
        else:
            try:
                got, fetched = await asyncio.wait_for(serving, hold)
            except TimeoutError:
                self.stats.pages_held += 1
                return None
        length = f.page_len(index, ps)
        if not cached_only:
            self.sources.deliver(got, length)
        return got.page, length, fetched

    def _pinned(self, path: str, version: str, size: int = 0) -> Pinned:
        t = self._target(path)
        return pin(t, FileStatus(t.path, size, 0.0, version, False))

    def held_here(self, path: str, version: str, indices: list[int]) -> list[int]:
        """Which of the pages ``indices`` of ``path`` at ``version`` this node holds."""
        return self.sources.held(self._pinned(path, version), indices)

    async def prefer_file(self, seg: Segment, min_length: int = 256 << 10) -> None:
        """Swap a large in-memory segment for its page file, for zero-copy senders."""
        if isinstance(seg.page, MemPage) and seg.key is not None and seg.length >= min_length:
            disk = await self.cache.open_disk(seg.key)
            if disk is not None:
                seg.page = disk

    async def read_bytes(self, path: str, offset: int = 0, length: int = -1, *,
                         nocache: bool = False) -> bytes:
        """Convenience for small reads (tests, RPC): the whole range as bytes."""
        stream = await (await self.open(path)).read(offset, length, nocache=nocache)
        out = []
        async for seg in stream.segments:
            out.append(seg.bytes())
            seg.close()
        return b"".join(out)

    # ---- write path ------------------------------------------------------

    async def write(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                    exclusive: bool = False, if_version: str | None = None, writeback: bool | None = None,
                    size_hint: int = -1) -> FileStatus:
        """Create or replace a whole file. ``change``: attributes of the new version
        (mode, owner, mtime; kept by stores that keep them); ``exclusive``:
        AlreadyExists if something is at ``path`` (O_EXCL, ``open(..., "xb")``, S3's
        ``If-None-Match: *``); ``if_version``: replace the file only while it is at that
        version (a compare-and-swap, S3's ``If-Match``): VersionChanged if it is at
        another, NotFound if there is none. Conditional writes of one path take turns on
        this node; the store makes them atomic across nodes where it can
        (docs/SEMANTICS.md, "Writes"). ``writeback``: acknowledge once on this
        node's disk (True) or once in the store (False); None: the mount's
        ``write_mode``. ``size_hint``: the length, if known."""
        t = self._changing(path, change)
        if not t.rel:
            raise IsADirectory(f"{t.path} is a mount point")
        if exclusive and if_version is not None:
            raise InvalidArgument("a write is either exclusive (a create) or conditional on a version, not both")
        back = self.writeback is not None and (t.mount.write_back if writeback is None else writeback)
        if not exclusive and if_version is None:
            if back:
                return await self._write_back(t, chunks, change, False, size_hint)
            await self._replacing(t.path)
            return await self._written(t, await t.store.put(t.rel, chunks, change=change))
        async with self._taking_turns(t.path):
            if back:
                return await self._write_back(t, chunks, change, exclusive, size_hint, if_version=if_version)
            if exclusive and self.writeback is not None and self.writeback.pending(t.path) is not None:
                raise AlreadyExists(f"already exists: {t.path}")
            if if_version is not None:
                if_version = await self._store_version(t, if_version)
            await self._replacing(t.path)
            info = await t.store.put(t.rel, chunks, change=change, exclusive=exclusive, if_version=if_version)
            return await self._written(t, info)

    @contextlib.asynccontextmanager
    async def _taking_turns(self, path: str) -> AsyncIterator[None]:
        """One conditional write of ``path`` at a time on this node: its check and its
        write are one step for this node's writers, whatever the store can do."""
        turn = self._turns.setdefault(path, [asyncio.Lock(), 0])
        turn[1] += 1
        try:
            async with turn[0]:
                yield
        finally:
            turn[1] -= 1
            if not turn[1]:
                del self._turns[path]

    async def _store_version(self, t: Target, version: str) -> str:
        """``version`` of ``t`` as its store knows it: a write-back write still pending is
        uploaded first, and its version becomes the store's; VersionChanged if another
        write is pending."""
        wb = self.writeback
        if wb is None:
            return version
        e = wb.pending(t.path)
        if e is not None and e.version != version:
            raise VersionChanged(f"{t.path} is no longer at version {version}")
        if e is None and not is_pending_version(version):
            return version
        await self._settled(t.path)
        return wb.switched.get(version, version)

    async def write_file(self, path: str, src: int, size: int, *, change: AttrChange | None = None,
                         exclusive: bool = False, writeback: bool | None = None) -> FileStatus:
        """:meth:`write` of the first ``size`` bytes of the open file ``src``, handed over by a
        writer on this machine (meshfs, over the local socket). In write-back mode the file
        itself becomes the spool when it can (an O_TMPFILE on the spool's file system: no
        copy); the writer must not write to it again."""
        t = self._changing(path, change)
        if not t.rel:
            raise IsADirectory(f"{t.path} is a mount point")
        if size < 0:
            raise InvalidArgument(f"bad size {size}")
        if self.writeback is not None and (t.mount.write_back if writeback is None else writeback):
            if not exclusive:
                return await self._write_back(t, None, change, False, size, src=src)
            async with self._taking_turns(t.path):
                return await self._write_back(t, None, change, True, size, src=src)
        return await self.write(path, file_chunks(f"/proc/self/fd/{src}", size), change=change,
                                exclusive=exclusive, writeback=False, size_hint=size)

    async def _write_back(self, t: Target, chunks: AsyncIterator[bytes] | None, change: AttrChange | None,
                          exclusive: bool, size_hint: int, src: int | None = None,
                          if_version: str | None = None) -> FileStatus:
        """Acknowledged once the bytes are durable here and the write is published as
        pending (:mod:`meshd.writeback`); uploaded in the background. ``exclusive`` and
        ``if_version`` are checked against what the path shows now (a pending version
        too), then the write is accepted: one step for the writers of this node (the
        caller takes turns), not for another node's."""
        assert self.writeback is not None
        if exclusive:
            await t.store.check_absent(t.rel)
        if if_version is not None:
            await t.store.check_version(t.rel, if_version)
        attrs = None
        if t.store.capabilities.attrs:
            c = change or AttrChange()
            mode = c.mode if c.mode is not None else CREATE_MODE
            attrs = Attrs(stat.S_IFREG | mode, c.uid if c.uid is not None else os.geteuid(),
                          c.gid if c.gid is not None else os.getegid(), c.atime,
                          extra={k: v for k, v in c.extra.items() if v is not None})
        e = await self.writeback.accept(t.path, t.mount.path, t.rel, chunks, change, attrs, size_hint, src=src)
        return await self._pending_status(t, e)

    async def hold_replica(self, writer: str, entry: str, chunks: AsyncIterator[bytes]) -> None:
        """Keep a copy of a write another node of the region acknowledged in write-back
        mode (``writeback.replicas``) until it is uploaded; nodes only."""
        self.access.check(ADMIN, "/")
        if self.writeback is None:
            raise NotSupported("this node does no write-back")
        await self.writeback.hold_replica(writer, entry, chunks)

    def drop_replica(self, writer: str, entry_id: str) -> None:
        self.access.check(ADMIN, "/")
        if self.writeback is not None:
            self.writeback.drop_replica(writer, entry_id)

    async def _pending_status(self, t: Target, e: Entry) -> FileStatus:
        return await self._written(t, info_of(e, t.rel))

    async def _replacing(self, path: str, recursive: bool = False) -> None:
        """``path`` (and, ``recursive``, what is below) is about to be replaced or removed:
        a pending write-back write of it must never be uploaded over the change."""
        wb = self.writeback
        if wb is None:
            return
        doomed = wb.registry.under(path) if recursive else [e for e in (wb.pending(path),) if e is not None]
        doomed += [e for e in wb.entries.values() if e.path == path or (recursive and paths.is_within(e.path, path))]
        for p in {e.path for e in doomed}:
            await wb.supersede(p)

    async def _settled(self, path: str, recursive: bool = False) -> None:
        """Wait until the pending write-back uploads of ``path`` (and below) are in the
        store: for changes the store must make to the file itself."""
        wb = self.writeback
        if wb is not None and (wb.registry.under(path) if recursive else wb.pending(path) is not None):
            await wb.flush(path, wait=True)

    def _upload_store(self, mount_path: str) -> tuple[Any, Any] | None:
        """The mount of a write-back entry and the store its upload goes to (under the
        pending overlay: link quotas and metrics included)."""
        mount = self.mounts.get(mount_path)
        if mount is None:
            return None
        store: Any = self.mounts.store(mount)
        return mount, store.inner if isinstance(store, PendingStore) else store

    async def _landed(self, e: Entry, info: ObjectInfo) -> None:
        """A write-back upload is in the store: the path's status becomes the store's
        version (same bytes), with the S3 attributes the gateway kept for it."""
        t = self._target(e.path)
        kept = await self.metadata.attrs(t.path, e.version)
        if kept is not None:
            await self.metadata.set_attrs(t.path, info.version, {k: v for k, v in kept.items() if k not in ("v", "t")})
        await self._written(t, info)

    def _noted(self, statuses: Sequence[FileStatus]) -> None:
        """Statuses recorded in this node's shard (it owns their paths): a pending write-back
        version becomes known to this node's overlay at once, so the next stat here (which
        asks the store, per the mount's sync interval) keeps it; a newer write ends one."""
        wb = self.writeback
        if wb is None:
            return
        for s in statuses:
            if not is_pending_version(s.version):
                if s.path in wb.registry.by_path:
                    wb.registry.noted_replaced(s.path, s.version)
                continue
            if s.version in wb.registry.by_version:
                continue
            found = self.mounts.resolve(s.path)
            if found is None:
                continue
            node, eid = writer_of(s.version)
            http, region = self._find_node(node) or ("", "")
            wb.registry.note(Entry(eid, s.path, found[0].path, found[1], s.size, s.mtime, node, region, http,
                                   s.fetched_at or time.time(),
                                   attrs=s.attrs.to_wire() if s.attrs is not None else None))

    def _find_node(self, node_id: str) -> tuple[str, str] | None:
        """The HTTP address and region of a node of the mesh, by id."""
        if self.cluster is not None and node_id in self.cluster.members:
            m = self.cluster.members[node_id]
            return m.http, m.region
        if self.federation is not None:
            for region, ms in self.federation.peers.items():
                if node_id in ms:
                    return ms[node_id].http, region
        return None

    async def writeback_status(self) -> dict[str, Any]:
        """This node's write-back: pending files and bytes, oldest age, rates, errors."""
        self.access.check(ADMIN, "/")
        if self.writeback is None:
            return {"enabled": False}
        return {"enabled": True, **self.writeback.status()}

    async def writeback_flush(self, path: str, wait: bool = True, deadline: float | None = None) -> int:
        """Upload the pending writes at or below ``path`` first; ``wait``: until they are all
        in their stores (any node's). How many were pending."""
        self.access.check(WRITE, paths.normalize(path))
        if self.writeback is None:
            return 0
        try:
            return await self.writeback.flush(paths.normalize(path), wait, deadline)
        except TimeoutError:
            raise UnderStoreError(f"writes under {paths.normalize(path)} are still being uploaded after "
                                   f"{deadline:g} s") from None

    async def writeback_drop(self, entry_id: str, path: str) -> bool:
        """A peer is about to replace ``path``, pending here as write-back entry ``entry_id``:
        it is never uploaded; returns once an upload of it on the wire has ended. Whether it
        was held here."""
        self.access.check(ADMIN, "/")  # nodes (the cluster token) and operators only
        if self.writeback is None:
            return False
        return await self.writeback.drop_pending(entry_id, paths.normalize(path),
                                                 "replaced by a change made through another node")

    def read_spool(self, entry_id: str, start: int, end: int) -> tuple[int, AsyncIterator[bytes]]:
        """A peer reads a pending version this node holds (write-back): the bytes
        [start, end) clipped to its size, and that size. VersionChanged once it is gone."""
        self.access.check(ADMIN, "/")  # nodes (the cluster token) and operators only, never a tenant
        size = self.writeback.spool_size(entry_id) if self.writeback is not None else None
        if size is None or self.writeback is None:
            raise VersionChanged(f"write-back version {entry_id} is no longer held here")
        if not 0 <= start <= end:
            raise InvalidArgument(f"bad range: start={start} end={end}")
        end = min(end, size)
        return end - min(start, end), self.writeback.read_local(entry_id, start, end)

    async def _written(self, t: Target, info: ObjectInfo) -> FileStatus:
        """Record the status a change returned; drop the pages of the file's older versions."""
        status = FileStatus.of(t.path, info, time.time())
        await self.metadata.record(status)
        if not status.is_dir:
            self.cache.drop_file(file_id(t.mount.identity, t.rel), keep_version=version_id(status.version))
        return status

    def _changing(self, path: str, change: AttrChange | None = None, mode: int = 0) -> Target:
        """The target of a change of ``path``: allowed to the principal, inside a writable
        mount. Giving a file away (an owner or group other than the node process's own,
        which a file gets anyway), set-user/group-ID bits and device nodes need ADMIN on
        the path: the node's process may be root, and a tenant must not make root's files
        or other users' through it (THREAT_MODEL.md)."""
        norm = paths.normalize(path)
        self.access.check(WRITE, norm)
        bits = (change.mode or 0) if change is not None else 0
        given = change is not None and (change.uid not in (None, os.geteuid()) or change.gid not in (None, os.getegid()))
        if given or bits & 0o6000 or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or mode & 0o6000:
            self.access.check(ADMIN, norm)
        t = self._target(path)
        t.mount.check_writable()
        return t

    # ---- attributes, links, special files (docs/SEMANTICS.md) -------------

    async def setattr(self, path: str, change: AttrChange) -> FileStatus:
        """chmod, chown, utimes (and WebHDFS's extra attributes) of a file or directory,
        in the store's own terms; the new status. A mount point is its store's root."""
        t = self._changing(path, change)
        await self._settled(t.path)
        info = await t.store.setattr(t.rel, change)
        return await self._written(t, info)

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> FileStatus:
        if not target or "\x00" in target or len(target.encode("utf-8", "surrogatepass")) > paths.LINK_MAX:
            raise InvalidArgument(f"a symlink's target must be 1 to {paths.LINK_MAX} bytes, without NUL")
        t = self._changing(path, change)
        if not t.rel:
            raise AlreadyExists(f"{t.path} is a mount point")
        if self.writeback is not None and self.writeback.pending(t.path) is not None:
            raise AlreadyExists(f"already exists: {t.path}")
        return await self._written(t, await t.store.symlink(t.rel, target, change))

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> FileStatus:
        """A FIFO, socket or device node (``mode`` with its type bits)."""
        if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFREG):
            raise InvalidArgument(f"mknod of mode {mode:o}: not a FIFO, socket, device or regular file")
        t = self._changing(path, change, mode)
        if not t.rel:
            raise AlreadyExists(f"{t.path} is a mount point")
        if stat.S_ISREG(mode):
            info = await t.store.put(t.rel, _nothing(), change=replace(change or AttrChange(), mode=stat.S_IMODE(mode)),
                                     exclusive=True)
        else:
            info = await t.store.mknod(t.rel, mode, rdev, change)
        return await self._written(t, info)

    async def link(self, src: str, dst: str) -> FileStatus:
        """A hard link ``dst`` to the file ``src``: the file's new status (as ``dst``)."""
        s, d = self._changing(src), self._changing(dst)
        if s.mount.path != d.mount.path:
            raise NotSupported(f"a hard link across mounts ({s.mount.path} -> {d.mount.path}) is not possible")
        if not s.rel or not d.rel:
            raise AlreadyExists("a mount point cannot be linked")
        await self._settled(s.path)
        info = await s.store.link(s.rel, d.rel)
        await self.metadata.invalidate(s.path)
        return await self._written(d, replace(info, path=d.rel))

    async def copy(self, src: str, dst: str) -> FileStatus:
        """A copy of the file ``src`` at ``dst`` with its attributes: server-side within a
        store (S3 CopyObject, a local copy on POSIX), else streamed through this node."""
        self.access.check(READ, paths.normalize(src))
        d = self._changing(dst)
        s = self._target(src)
        if not d.rel:
            raise IsADirectory(f"{d.path} is a mount point")
        await self._settled(s.path)
        await self._replacing(d.path)
        st = await self._stat(s, fresh=True)
        if st.is_dir:
            raise IsADirectory(f"cannot copy a directory: {s.path}")
        if s.mount.path == d.mount.path:
            info = await s.store.copy(s.rel, d.rel, st.version)
        else:
            change = None
            if st.attrs is not None:
                a = st.attrs
                change = AttrChange(a.mode & 0o7777 if a.mode is not None else None, a.uid, a.gid, a.atime, st.mtime)
            info = await d.store.put(d.rel, s.store.get_range(s.rel, 0, st.size, st.version), change=change)
        return await self._written(d, info)

    async def truncate(self, path: str, size: int, version: str | None = None) -> FileStatus:
        """Cut or extend (zeros) a file to ``size`` bytes: a new version (in place on
        POSIX; a rewrite, with the unchanged bytes copied, elsewhere)."""
        if size < 0:
            raise InvalidArgument(f"cannot truncate to a negative size ({size})")
        t = self._changing(path)
        await self._settled(t.path)
        st = await self._stat(t, fresh=True)
        if st.is_dir:
            raise IsADirectory(f"is a directory: {t.path}")
        if version and st.version != version:
            raise VersionChanged(f"{t.path} changed (version {st.version}, expected {version})")
        top = t.store.capabilities.max_size
        if top and size > top:
            raise InvalidArgument(f"cannot truncate {t.path} to {size} bytes: its store holds files of at most {top}")
        return await self._written(t, await t.store.truncate(t.rel, size, st.version))

    async def append(self, path: str, chunks: AsyncIterator[bytes], *, writeback: bool | None = None) -> FileStatus:
        """Add bytes at the end of an existing file. A store that appends in place does
        (``capabilities.append``: POSIX, HDFS); any other (S3) gets the whole file again:
        its old bytes streamed back from the under-store, then the new ones (a full
        rewrite per call, documented in docs/WEBHDFS_COMPAT.md)."""
        self.access.check(WRITE, paths.normalize(path))
        t = self._target(path)
        t.mount.check_writable()
        old = await self._stat(t, fresh=True)
        if old.is_dir:
            raise IsADirectory(f"is a directory: {t.path}")
        if self.writeback is not None and (t.mount.write_back if writeback is None else writeback):
            # write-back: the whole new version is spooled here (the old bytes read through
            # the cache, at the version just pinned), then uploaded like any write
            handle = await self.open(t.path, status=old)

            async def whole() -> AsyncIterator[bytes]:
                stream = await handle.read(0, old.size)
                async for seg in stream.segments:
                    try:
                        yield seg.bytes()
                    finally:
                        seg.close()
                async for c in chunks:
                    yield c

            keep = None
            if old.attrs is not None:
                a = old.attrs
                keep = AttrChange(a.mode & 0o7777 if a.mode is not None else None, a.uid, a.gid)
            return await self._write_back(t, whole(), keep, False, -1)
        await self._settled(t.path)
        if t.store.capabilities.append:
            info = await t.store.append(t.rel, chunks)
        else:
            async def joined() -> AsyncIterator[bytes]:
                async for c in t.store.get_range(t.rel, 0, old.size, old.version):
                    yield c
                async for c in chunks:
                    yield c

            info = await t.store.put(t.rel, joined())
        return await self._written(t, info)

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        """Create a directory and its parents; ``change``: the new directory's mode and
        owner (stores that keep them)."""
        t = self._changing(path, change)
        if t.rel:
            await t.store.mkdir(t.rel, change)
        await self.metadata.invalidate(t.path)

    async def delete(self, path: str, recursive: bool = False) -> int:
        """Delete a file or directory; returns the number of entries removed."""
        self.access.check(WRITE, paths.normalize(path))
        t = self._target(path)
        t.mount.check_writable()
        if not t.rel:
            raise PermissionDenied(f"{t.path} is a mount point: unmount it instead")
        status = await self._stat(t, fresh=True)
        await self._replacing(t.path, recursive=status.is_dir)
        removed = 0
        if status.is_dir and not (status.attrs is not None and status.attrs.target is not None):  # a link: itself
            children = await t.store.list(t.rel)
            if children and not recursive:
                raise DirectoryNotEmpty(f"directory not empty: {t.path}")
            for child in children:
                removed += await self.delete(paths.join(t.path, paths.basename(child.path)), True)
        else:
            self.cache.drop_file(file_id(t.mount.identity, t.rel))
        await t.store.delete(t.rel)
        await self.metadata.forget_subtree(t.path)
        return removed + 1

    async def remove_empty_dirs(self, path: str) -> None:
        """Remove a directory tree that holds no file (asking the under-store, not the
        cache); DirectoryNotEmpty as soon as a file is found, and nothing is unlinked."""
        self.access.check(WRITE, paths.normalize(path))
        t = self._target(path)
        t.mount.check_writable()

        async def rm(rel: str) -> None:
            for child in await t.store.list(rel):
                if not child.is_dir:
                    raise DirectoryNotEmpty(f"directory not empty: {paths.join(t.path, child.path)}")
                await rm(child.path)
            await t.store.delete(rel)  # a directory: rmdir, which refuses if a file appeared

        await rm(t.rel)
        await self.metadata.forget_subtree(t.path)

    async def rename(self, src: str, dst: str) -> None:
        self.access.check(WRITE, paths.normalize(src))
        self.access.check(WRITE, paths.normalize(dst))
        s, d = self._target(src), self._target(dst)
        if s.mount.path != d.mount.path:
            raise NotSupported(f"rename across mounts ({s.mount.path} -> {d.mount.path}) is not supported")
        s.mount.check_writable()
        if not s.rel or not d.rel:
            raise PermissionDenied("a mount point cannot be renamed")
        if not s.store.capabilities.rename:
            raise NotSupported(f"rename is not supported by {s.store.scheme}:// under-stores "
                               f"(mount {s.mount.path}); copy and delete instead")
        wb = self.writeback
        if wb is not None and wb.local(s.path) is not None:
            # a file still being uploaded from here: its upload goes to the new name (the
            # checkpoint pattern, save to a temp name then rename, never waits for the store)
            await self._replacing(d.path, recursive=True)
            e = await wb.retarget(s.path, d.path, d.mount.path, d.rel)
            if e is not None:
                # the old name goes from the store too: an older object there, or what an
                # upload under the old name (now cancelled, and finished) left
                with contextlib.suppress(NotFound):
                    await s.store.delete(s.rel)
                self.cache.drop_file(file_id(s.mount.identity, s.rel))
                await self.metadata.forget_subtree(s.path)
                await self.metadata.forget_subtree(d.path)
                await self._pending_status(d, e)
                return
        await self._settled(s.path, recursive=True)
        await self._replacing(d.path, recursive=True)
        await s.store.rename(s.rel, d.rel)
        self.cache.drop_file(file_id(s.mount.identity, s.rel))
        await self.metadata.forget_subtree(s.path)
        await self.metadata.forget_subtree(d.path)

    # ---- cache management ------------------------------------------------

    async def walk_files(self, path: str) -> AsyncIterator[FileStatus]:
        status = await self.stat(path)
        if not status.is_dir:
            yield status
            return
        for child in await self.listdir(path):
            if child.is_dir:
                async for f in self.walk_files(child.path):
                    yield f
            else:
                yield child

    async def load(self, path: str, progress_interval: float = 0.2) -> AsyncIterator[LoadProgress]:
        """Warm the cache with every page under ``path``; yields progress (:func:`admin.load`)."""
        self.access.check(ADMIN, paths.normalize(path))
        async for p in admin.load(self, path, progress_interval):
            yield p

    async def free(self, path: str) -> int:
        """Drop the cached pages of every known file at or below ``path``; returns bytes."""
        self.access.check(ADMIN, paths.normalize(path))
        return await admin.free(self, path)

    def free_ids(self, ids: list[str]) -> int:
        return admin.free_ids(self, ids)

    async def sync(self, path: str) -> int:
        """Forget cached metadata under ``path`` and reload it from the under-store."""
        self.access.check(ADMIN, paths.normalize(path))
        return await admin.sync(self, path)

    def report(self) -> dict[str, Any]:
        return admin.report(self)

    async def full_report(self) -> dict[str, Any]:
        """The report and, in a cluster, the cluster's name, etcd's state and every member's row."""
        return await admin.full_report(self)

    async def cluster_report(self, wait: float = 2.0) -> list[dict[str, Any]]:
        """Every member of the region: state, capacity and use (asked of each, in parallel)."""
        return await admin.cluster_report(self, wait)

    async def held_in_region(self, path: str, version: str, size: int) -> list[int]:
        """Which pages of ``path`` at ``version`` this region holds (each page's owner answers)."""
        return await admin.held_in_region(self, path, version, size)

    async def held_by_owner(self, path: str, version: str, size: int) -> dict[str, list[int]]:
        return await admin.held_by_owner(self, path, version, size)

    async def mesh_state(self, path: str) -> placing.MeshState:
        """The mesh's state of a path (home region, bytes cached in this region): the one
        computation behind meshfs's and WebHDFS's ``user.mesh.*`` attributes."""
        self._see(path)
        return await placing.mesh_state(self, path)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; cancelled when the node closes."""
        self.sources.spawn(coro)

    async def close(self) -> None:
        if self.writeback is not None:
            await self.writeback.close()
        await self.metadata.close()
        await self.sources.close()
        await self.cache.drain()
        await self.mounts.close()

    # ---- snapshots (HDFS's, passed through to an hdfs:// mount's NameNode) -------

    def _snapshots(self, path: str, op: str) -> tuple[Target, Any]:
        """The target of a snapshot operation (a change: WRITE access, a writable mount)
        and its store's ``op`` method; NotSupported on stores without snapshots."""
        t = self._changing(path)
        store: Any = t.store
        while getattr(store, op, None) is None and getattr(store, "inner", None) is not None:
            store = store.inner  # the wrappers (metrics, link quotas) forward the store contract only
        fn = getattr(store, op, None)
        if fn is None:
            raise NotSupported(f"snapshots need an hdfs:// under-store: {t.mount.path} is "
                               f"{t.store.scheme}:// ({t.path})")
        return t, fn

    async def create_snapshot(self, path: str, name: str | None = None) -> str:
        """A snapshot of the directory ``path`` (named by the NameNode when ``name`` is
        None); the snapshot's mesh path (``<path>/.snapshot/<name>``)."""
        t, fn = self._snapshots(path, "create_snapshot")
        made = str(await fn(t.rel, name))
        return paths.join(t.mount.path, made) if made.strip("/") else t.mount.path

    async def delete_snapshot(self, path: str, name: str) -> None:
        t, fn = self._snapshots(path, "delete_snapshot")
        await fn(t.rel, name)

    async def rename_snapshot(self, path: str, old: str, new: str) -> None:
        t, fn = self._snapshots(path, "rename_snapshot")
        await fn(t.rel, old, new)


def _own_store(store: UnderStore) -> UnderStore:
    """The mount's own store under its wrappers (metrics, link quotas, the write-back
    overlay), which forward the store contract only, not kept versions."""
    inner: Any = store
    while getattr(inner, "inner", None) is not None:
        inner = inner.inner
    found: UnderStore = inner
    return found


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator of no chunks
