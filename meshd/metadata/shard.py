"""The metadata shard: file status and directory listings cached from the
under-stores, in the node's KV store (RocksDB).

Keys: ``s:<mesh path>`` -> status; ``l:<mesh dir>`` -> a listing's header
(when it was fetched, how many entries) and ``e:<mesh dir>\\0<name>`` -> each
entry. Each value
records when it was fetched; an entry is trusted for the mount's
``sync_interval`` seconds (``0``: always ask the under-store, ``-1``: until an
explicit sync). A listing also refreshes the status of every child, so
``ls`` followed by ``stat`` of each file costs one under-store request.

A status carries the object's version (ETag or mtime+size+inode). The page cache
keys pages by it: when a re-fetched status shows a new version, the old pages
are simply never asked for again (and are dropped eagerly by the node).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from meshd import paths
from meshd.attrs import Attrs
from meshd.errors import MeshError
from meshd.metadata.kv import KV
from meshd.metadata.mounts import Mount
from meshd.understore import ObjectInfo, UnderStore
from meshd.understore.base import VERSION_PIN

log = logging.getLogger(__name__)
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes a str with (C)
_NUMBER = (int, float)


@dataclass(frozen=True)
class FileStatus:
    path: str  # mesh path
    size: int
    mtime: float
    version: str
    is_dir: bool
    fetched_at: float = 0.0
    attrs: Attrs | None = None  # mode, owner, times, link target (meshd/attrs.py); None: not kept
    # the store's id of the kept version a write made (S3 x-amz-version-id): on a write's
    # answer only, never recorded
    version_id: str | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        if self.attrs is not None:
            return json.dumps([self.size, self.mtime, self.version, self.is_dir, self.fetched_at,
                               self.attrs.to_wire()]).encode()
        return _json_row(self.size, self.mtime, self.version, self.is_dir, self.fetched_at)

    @classmethod
    def from_json(cls, path: str, raw: bytes) -> FileStatus:
        row = json.loads(raw)
        size, mtime, version, is_dir, t = row[:5]
        return cls(path, size, mtime, version, is_dir, t, Attrs.from_wire(row[5]) if len(row) > 5 else None)

    @classmethod
    def of(cls, path: str, info: ObjectInfo, now: float) -> FileStatus:
        return cls(path, info.size, info.mtime, info.version, info.is_dir, now, info.attrs, info.version_id)


def page_of(entries: list[FileStatus], after: str, limit: int) -> tuple[list[FileStatus], bool]:
    """The entries (in name order) after the name ``after``, at most ``limit`` (0: all),
    and whether more follow: one page of a listing held in memory."""
    if after:
        entries = [s for s in entries if paths.basename(s.path).encode() > after.encode()]
    return (entries[:limit], len(entries) > limit) if limit else (entries, False)


def _json_row(size: int, mtime: float, version: str, is_dir: bool, t: float | None = None) -> bytes:
    """``json.dumps([size, mtime, version, is_dir] + ([t] if t is not None else []))``, a few
    times quicker (a listing writes two of these per entry); anything but plain finite
    numbers (``x - x == 0`` is false for inf and nan) takes json.dumps."""
    if (type(size) is int and type(mtime) in _NUMBER and mtime - mtime == 0
            and (t is None or (type(t) in _NUMBER and t - t == 0))):
        d = "true" if is_dir else "false"
        if t is None:
            return f"[{size},{mtime!r},{_json_str(version)},{d}]".encode()
        return f"[{size},{mtime!r},{_json_str(version)},{d},{t!r}]".encode()
    return json.dumps([size, mtime, version, is_dir] if t is None else [size, mtime, version, is_dir, t]).encode()


def _entry(s: FileStatus) -> bytes:
    if s.attrs is not None:
        return json.dumps([s.size, s.mtime, s.version, s.is_dir, s.attrs.to_wire()]).encode()
    return _json_row(s.size, s.mtime, s.version, s.is_dir)


def _fresh(fetched_at: float, interval: float, now: float) -> bool:
    if interval < 0:
        return True
    return now - fetched_at < interval


class MetadataCache:
    """Cached statuses and listings. Writes are best effort: a full or failing
    metadata disk costs freshness (the next stat asks the under-store again),
    never a read."""

    def __init__(self, kv: KV, clock: Callable[[], float] | None = None) -> None:
        self._kv = kv
        self._clock = clock or time.time
        self.write_errors = 0
        self._last_error_log = 0.0
        self._loading: dict[str, asyncio.Future[list[FileStatus]]] = {}
        # told of every status recorded here (a write's, from any node): the node notes
        # pending write-back versions at once, before the registry's watch would
        self.on_record: Callable[[Sequence[FileStatus]], None] | None = None

    def _put(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        try:
            self._kv.write_batch(puts, deletes)
        except MeshError as e:
            self.write_errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.error("metadata cache write failed; serving without caching metadata: %s", e)

    @staticmethod
    def _skey(path: str) -> bytes:
        return b"s:" + path.encode()

    @staticmethod
    def _lkey(path: str) -> bytes:
        return b"l:" + path.encode()

    @staticmethod
    def _hkey(path: str) -> bytes:
        """``h:<dir>``: some child of ``dir`` has a status with attributes stored (then a
        listing, which has none, reads its children's statuses to keep them)."""
        return b"h:" + path.encode()

    @staticmethod
    def _ekey(path: str) -> bytes:
        return b"e:" + path.encode() + b"\x00"

    def cached_status(self, path: str) -> FileStatus | None:
        raw = self._kv.get(self._skey(path))
        return None if raw is None else FileStatus.from_json(path, raw)

    async def stat(self, mount: Mount, store: UnderStore, path: str, rel: str,
                   *, fresh: bool = False) -> tuple[FileStatus, FileStatus | None]:
        """The status to use, and the one cached before (for version-change checks).

        One metadata read serves the freshness check, the "unchanged" check and
        the caller's comparison: this runs on every open.
        """
        now = self._clock()
        previous = self.cached_status(path)
        if not fresh and previous is not None and _fresh(previous.fetched_at, mount.sync_interval, now):
            return previous, previous
        info = await store.head(rel)
        status = FileStatus.of(path, info, now)
        unchanged = not fresh and previous is not None and (
            previous.version, previous.size, previous.is_dir) == (status.version, status.size, status.is_dir)
        if not (unchanged and mount.sync_interval == 0):  # with 0, fetched_at never matters
            puts = {self._skey(path): status.to_json()}
            if status.attrs is not None:
                puts[self._hkey(paths.parent(path))] = b""
            self._put(puts, [])
        return status, previous

    def _listing_fresh(self, path: str, mount: Mount, now: float) -> float | None:
        """The listing's fetch time if a fresh one is cached, else None."""
        raw = self._kv.get(self._lkey(path))
        if raw is None:
            return None
        head = json.loads(raw)
        if "n" not in head or not _fresh(head["t"], mount.sync_interval, now):
            return None
        return float(head["t"])

    async def listdir(self, mount: Mount, store: UnderStore, path: str, rel: str, after: str = "",
                      limit: int = 0, *, children_here: bool = True,
                      on_load: Callable[[list[FileStatus]], Awaitable[None]] | None = None,
                      ) -> tuple[list[FileStatus], bool]:
        """Entries of directory ``path`` in name order, after the name ``after``; at most
        ``limit`` (0: all). Returns (entries, more).

        A listing is stored one key per entry (``e:<dir>\\0<name>``) under a header
        ``l:<dir>``, so a page of a huge directory is one range scan. A load from the
        under-store also records each child's status here (``children_here``), or hands
        the children to ``on_load`` (a cluster sends them to their owners). Concurrent
        loads of one directory share one under-store listing. Big listings are encoded
        and written in a thread: the event loop keeps serving (and keeping the node's
        etcd lease alive) meanwhile.
        """
        now = self._clock()
        t = self._listing_fresh(path, mount, now)
        if t is None:
            loading = self._loading.get(path)
            if loading is None:
                loading = asyncio.ensure_future(self._load_listing(store, path, rel, now, children_here, on_load))
                self._loading[path] = loading
                loading.add_done_callback(lambda _f: self._loading.pop(path, None))
            return page_of(await asyncio.shield(loading), after, limit)
        if limit and limit <= 1000:
            return self._scan_listing(path, after, limit, t)
        return await asyncio.to_thread(self._scan_listing, path, after, limit, t)

    async def _load_listing(self, store: UnderStore, path: str, rel: str, now: float, children_here: bool,
                            on_load: Callable[[list[FileStatus]], Awaitable[None]] | None) -> list[FileStatus]:
        infos = await store.list(rel)
        if len(infos) > 1000:
            out = await asyncio.to_thread(self._store_listing, path, infos, now, children_here)
        else:
            out = self._store_listing(path, infos, now, children_here)
        if on_load is not None:
            await on_load(out)
        return out

    def _store_listing(self, path: str, infos: list[ObjectInfo], now: float, children_here: bool) -> list[FileStatus]:
        named = sorted((((n := paths.basename(i.path)).encode(), paths.child(path, n), i) for i in infos),
                       key=lambda e: e[0])
        out = [FileStatus(child, i.size, i.mtime, i.version, i.is_dir, now, i.attrs) for _, child, i in named]
        if children_here:
            out = self._keep_attrs(out, path)
        base = self._ekey(path)
        deletes = [k for k, _ in self._kv.scan(base)]
        puts = {base + name: _entry(s) for (name, _, _), s in zip(named, out, strict=True)}
        if children_here:
            puts.update({self._skey(s.path): s.to_json() for s in out})
        puts[self._lkey(path)] = json.dumps({"t": now, "n": len(out)}).encode()
        self._put(puts, deletes)
        return out

    def _scan_listing(self, path: str, after: str, limit: int, t: float) -> tuple[list[FileStatus], bool]:
        base = self._ekey(path)
        start = base + after.encode() + b"\x00" if after else None
        entries: list[FileStatus] = []
        for k, v in self._kv.scan(base, start):
            if limit and len(entries) == limit:
                return entries, True
            row = json.loads(v)
            entries.append(FileStatus(paths.join(path, k[len(base):].decode()), row[0], row[1], row[2], row[3], t,
                                      Attrs.from_wire(row[4]) if len(row) > 4 else None))
        return entries, False

    def _keep_attrs(self, statuses: list[FileStatus], parent: str | None = None) -> list[FileStatus]:
        """``statuses``, where one without attributes (a listing's: S3 ListObjects has none)
        takes the attributes and mtime of the status stored for its path if that one is of
        the same version: a listing must not erase what a HEAD learnt. One read per such
        status, and none in a directory (``parent``; None: each status's own) none of whose
        children had attributes stored (``h:<dir>``); only a stored row that has attributes
        (it ends ``]]``) is parsed."""
        get, out = self._kv.get, statuses
        marked: dict[str, bool] = {}
        if parent is not None:
            marked[parent] = get(self._hkey(parent)) is not None
            if not marked[parent]:
                return statuses
        for n, s in enumerate(statuses):
            if s.attrs is not None:
                continue
            up = paths.parent(s.path) if parent is None else parent
            if up not in marked:
                marked[up] = get(self._hkey(up)) is not None
            if not marked[up]:
                continue
            raw = get(b"s:" + s.path.encode())
            if raw is None or raw[-2:] != b"]]":
                continue
            old = FileStatus.from_json(s.path, raw)
            if old.attrs is not None and (old.version, old.size, old.is_dir) == (s.version, s.size, s.is_dir):
                if out is statuses:
                    out = list(statuses)
                out[n] = replace(s, mtime=old.mtime, attrs=old.attrs)
        return out

    def record_many(self, statuses: Sequence[FileStatus], drop_listings: Sequence[str] = ()) -> None:
        """Store statuses (sent by a listing's owner, or learnt by a write); one without
        attributes keeps those stored for the same version (:meth:`_keep_attrs`)."""
        statuses = self._keep_attrs(list(statuses))
        if self.on_record is not None:
            self.on_record(statuses)
        puts = {self._skey(s.path): s.to_json() for s in statuses}
        puts.update({self._hkey(paths.parent(s.path)): b"" for s in statuses if s.attrs is not None})
        self._put(puts, [self._lkey(d) for d in drop_listings])

    def drop(self, statuses: Sequence[str] = (), listings: Sequence[str] = ()) -> None:
        self._put({}, [self._skey(p) for p in statuses] + [self._lkey(p) for p in listings])

    def record(self, status: FileStatus) -> None:
        """Remember a status learnt from a write; the parent listing is now stale."""
        if self.on_record is not None:
            self.on_record([status])
        self._put({self._skey(status.path): status.to_json()}, [self._lkey(paths.parent(status.path))])

    def invalidate(self, path: str) -> None:
        self._put({}, [self._skey(path), self._lkey(path), self._lkey(paths.parent(path))])

    # ---- object attributes (set by the S3 gateway) -------------------------
    # Key ``a:<path>\0<version>`` -> {"v": version, "t": set at, ...}: S3's ETag,
    # content type and user metadata of the version the gateway wrote. Keyed by
    # version, so attributes can never describe bytes they were not written
    # with, whatever order two racing writers' attributes arrive in (they may
    # come from two nodes). Other versions' entries older than ATTRS_GRACE are
    # removed when a new one is set; younger ones may belong to a racing writer.
    # Entries of a store's kept version (``version_pin(id)``: an S3 bucket with
    # versioning on) stay while the version does: neither a new version nor a
    # delete (a delete marker) removes them.

    ATTRS_GRACE = 60.0

    @staticmethod
    def _akey(path: str, version: str = "") -> bytes:
        return b"a:" + path.encode() + b"\x00" + version.encode()

    def attrs(self, path: str, version: str) -> dict[str, Any] | None:
        raw = self._kv.get(self._akey(path, version))
        if raw is None:
            raw = self._kv.get(b"a:" + path.encode())  # written by an older release
            if raw is None:
                return None
        d: dict[str, Any] = json.loads(raw)
        return d if d.get("v") == version else None

    def set_attrs(self, path: str, version: str, attrs: dict[str, Any]) -> None:
        now = self._clock()
        stale = [b"a:" + path.encode()]
        kept = self._akey(path, VERSION_PIN)
        for k, v in self._kv.scan(self._akey(path)):
            if not k.endswith(b"\x00" + version.encode()) and not k.startswith(kept) \
                    and now - float(json.loads(v).get("t", 0)) > self.ATTRS_GRACE:
                stale.append(k)
        self._put({self._akey(path, version): json.dumps({**attrs, "v": version, "t": now}).encode()}, stale)

    def drop_attrs(self, path: str) -> None:
        kept = self._akey(path, VERSION_PIN)
        self._put({}, [b"a:" + path.encode(),
                       *(k for k, _ in self._kv.scan(self._akey(path)) if not k.startswith(kept))])

    def counts(self) -> dict[str, int]:
        """Keys held by this shard: statuses, listings, listing entries (a full scan)."""
        return {"statuses": self._kv.count(b"s:"), "listings": self._kv.count(b"l:"),
                "entries": self._kv.count(b"e:")}

    def cached_paths(self, path: str) -> list[str]:
        """Mesh paths at or below ``path`` whose status is cached."""
        out = [path] if self._kv.get(self._skey(path)) is not None else []
        below = self._skey(path.rstrip("/") + "/")
        out.extend(k[2:].decode() for k, _ in self._kv.scan(below))
        return out

    def forget_subtree(self, path: str) -> int:
        """Drop every cached entry at or below ``path``; returns how many."""
        doomed = [self._lkey(paths.parent(path))]
        for prefix in (b"s:", b"l:", b"e:", b"h:"):
            exact = prefix + path.encode()
            if path == "/" and prefix != b"e:":
                pass  # "s:/" is also the prefix of everything below: counted there
            elif prefix == b"e:":
                doomed.extend(k for k, _ in self._kv.scan(exact + b"\x00"))
            elif self._kv.get(exact) is not None:
                doomed.append(exact)
            below = prefix + (path.rstrip("/") + "/").encode()
            doomed.extend(k for k, _ in self._kv.scan(below))
        self._put({}, doomed)
        return sum(1 for k in doomed[1:] if k.startswith(b"s:"))
