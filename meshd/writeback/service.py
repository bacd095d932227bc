"""Write-back: a write acknowledged once durable on this node, uploaded in the background.

:class:`Writeback` is the node's part that owns it:

- **accept** streams a new version into a spool file under a bounded budget
  (writers wait, never fail, while the bytes not yet uploaded fill it), fsyncs
  it, commits its journal record (:mod:`meshd.writeback.journal`) and publishes
  it in the mesh-wide *pending registry* (:class:`Registry`; etcd in cluster
  mode), all before the write is acknowledged;
- **visibility**: every node's under-stores are wrapped in
  :class:`~meshd.writeback.overlay.PendingStore`, which answers ``head`` and
  ``list`` with the pending version and serves its bytes from the writing node
  (:meth:`read`): a reader anywhere sees the new file as soon as it is
  acknowledged, through the same metadata and page paths as any file;
- **upload**: workers upload entries oldest first (``put_file``: S3 multipart
  with parallel parts), retrying with backoff for as long as it takes, under
  the link quotas (the mount's store is the quota'd one); then the node's hook
  switches the status to the store's version, the registry entry goes, and the
  spool file is kept ``retain`` seconds for readers still pinned to it;
- **crash**: on restart every journal record is uploaded again, after the
  store's leftovers of the interrupted attempt (a multipart upload, a temp
  file) are cleared (``abort_put``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import stat
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from meshd import paths
from meshd.attrs import AttrChange, Attrs
from meshd.cluster.membership import follow_prefix
from meshd.config import WritebackConfig
from meshd.errors import (
    InvalidArgument,
    MeshError,
    NodeUnavailable,
    NoSpace,
    NotFound,
    VersionChanged,
)
from meshd.understore import ObjectInfo, UnderStore
from meshd.understore.base import file_chunks
from meshd.writeback.journal import (
    VERSION_PREFIX,
    Entry,
    Journal,
    is_pending_version,
    new_id,
    writer_of,
)

log = logging.getLogger(__name__)

SPOOL_WRITE = 4 << 20  # bytes gathered before one write to the spool file
READ_PIECE = 1 << 20
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")  # a node id, as it names a replica's file
SWITCH_MEMORY = 600.0  # seconds a pending version's store version is remembered after its spool went
LEFTOVER = b"wx:"  # wx:<id> -> a dropped entry whose upload's leftovers are still to remove from its store
REPLICA = b"r:"  # r:<writer>:<id> -> the entry of a write this node keeps a copy of


class Budget:
    """Bytes acknowledged but not yet in their store, bounded: a writer that would go
    over waits (first come, first served) until uploads free room; one write alone may
    always go (a piece larger than the budget waits for an empty budget, then goes)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.waited_seconds = 0.0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    async def take(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        t0 = time.monotonic()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted in the same instant: hand it on
            raise
        finally:
            self.waited_seconds += time.monotonic() - t0

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)
        while self._waiters:
            want, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(want):
                break
            self._waiters.popleft()
            self.used += want
            fut.set_result(None)


class Registry:
    """What is pending mesh-wide: mesh path -> the latest acknowledged entry not yet in its
    store. Embedded mode: this node's entries only. :class:`EtcdRegistry` shares it."""

    def __init__(self) -> None:
        self.by_path: dict[str, Entry] = {}
        self.by_version: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = defaultdict(set)
        self._dirs: dict[str, int] = defaultdict(int)  # every ancestor directory of a pending path: how many
        self._noted: set[str] = set()  # versions known from a recorded status only
        self.removed: Callable[[Entry], None] | None = None  # an entry another node removed (etcd)

    def _add(self, e: Entry) -> None:
        old = self.by_path.get(e.path)
        if old is not None and old.version != e.version:
            if old.created > e.created:
                return  # a newer acknowledged write of the path is already known
            self.by_version.pop(old.version, None)
        self._noted.discard(e.version)
        if old is None or old.path != e.path:
            for d in _ancestors(e.path):
                self._dirs[d] += 1
        self.by_path[e.path] = e
        self.by_version[e.version] = e
        self._children[paths.parent(e.path)].add(e.path)

    def _remove(self, path: str, version: str | None = None) -> None:
        old = self.by_path.get(path)
        if old is None or (version is not None and old.version != version):
            if version is not None:
                self.by_version.pop(version, None)
            return
        del self.by_path[path]
        self.by_version.pop(old.version, None)
        for d in _ancestors(path):
            self._dirs[d] -= 1
            if self._dirs[d] <= 0:
                del self._dirs[d]
        kids = self._children.get(paths.parent(path))
        if kids is not None:
            kids.discard(path)
            if not kids:
                del self._children[paths.parent(path)]

    def get(self, path: str) -> Entry | None:
        return self.by_path.get(path)

    def note(self, e: Entry) -> None:
        """A pending version learnt from its status (recorded here by the writer, as the
        path's status owner), ahead of the registry's own news of it."""
        if e.version not in self.by_version:
            self._add(e)
            self._noted.add(e.version)

    def noted_replaced(self, path: str, version: str) -> None:
        """A write recorded a newer status of ``path``: a pending version known only from
        its status (not from the registry) is over."""
        e = self.by_path.get(path)
        if e is not None and e.version in self._noted and e.version != version:
            self._noted.discard(e.version)
            self._remove(path, e.version)

    def children(self, directory: str) -> list[Entry]:
        return [self.by_path[p] for p in self._children.get(directory, ()) if p in self.by_path]

    def has_dir(self, path: str) -> bool:
        """Some pending path lies below ``path`` (a directory the upload will make)."""
        return path in self._dirs

    def subdirs(self, directory: str) -> list[str]:
        """Names of the directories directly in ``directory`` that hold pending paths."""
        if not self._dirs or (directory != "/" and directory not in self._dirs):
            return []
        return [paths.basename(d) for d in self._dirs if d != directory and paths.parent(d) == directory]

    def under(self, path: str) -> list[Entry]:
        return [e for p, e in self.by_path.items() if paths.is_within(p, path)]

    async def publish(self, e: Entry) -> None:
        self._add(e)

    async def unpublish(self, e: Entry) -> None:
        self._remove(e.path, e.version)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class EtcdRegistry(Registry):
    """The pending registry in etcd (``/mesh/<cluster>/writeback/<mesh path>``), mirrored
    on every node of every region by a watch (and a full re-read every 10 s). A write is
    acknowledged after its key is put; other nodes see it once the watch delivers
    (milliseconds; docs/SEMANTICS.md)."""

    RESYNC = 10.0

    def __init__(self, etcd: Any, cluster: str) -> None:
        super().__init__()
        self.etcd = etcd
        self.prefix = f"/mesh/{cluster}/writeback"
        self._tasks: list[asyncio.Task[None]] = []
        self.unpublished: dict[str, Entry] = {}  # put failed (etcd away): retried
        self.unremoved: dict[str, Entry] = {}  # delete failed (etcd away): retried, or readers would
        # be sent to a version its writer no longer holds
        self._removing: set[str] = set()  # versions this node removes itself (their delete events are no news)

    def _key(self, path: str) -> bytes:
        return (self.prefix + path).encode()

    async def publish(self, e: Entry) -> None:
        self._add(e)
        try:
            await self.etcd.call(self.etcd.client.put(self._key(e.path), e.to_json()))
            self.unpublished.pop(e.path, None)
        except Exception as err:  # durable here anyway: other nodes learn of it once etcd answers
            self.unpublished[e.path] = e
            log.warning("write-back: cannot publish %s in etcd (%s); other nodes see it once etcd answers",
                        e.path, type(err).__name__)

    async def unpublish(self, e: Entry) -> None:
        self._remove(e.path, e.version)
        self.unpublished.pop(e.path, None)
        self.unremoved.pop(e.path, None)
        self._removing.add(e.version)
        asyncio.get_running_loop().call_later(60.0, self._removing.discard, e.version)
        c = self.etcd.client
        tx = c.transactions
        key = self._key(e.path)
        try:  # only our own entry: a newer write of the path may have replaced it
            await self.etcd.call(c.transaction(compare=[tx.value(key) == e.to_json()],
                                               success=[tx.delete(key)], failure=[]))
            resp = await self.etcd.call(c.get(key))
            if resp is not None and Entry.from_json(resp.value).version == e.version:
                await self.etcd.call(c.delete(key))  # its record changed (state) but it is ours
        except Exception as err:
            self.unremoved.setdefault(e.path, e)
            log.warning("write-back: cannot remove %s from the pending registry (%s); retried at the next resync",
                        e.path, type(err).__name__)

    async def load(self) -> int:
        resp = await self.etcd.call(self.etcd.client.get_prefix((self.prefix + "/").encode()))
        seen: dict[str, Entry] = {}
        for kv in resp:
            try:
                e = Entry.from_json(kv.value)
            except (ValueError, TypeError, KeyError):
                continue
            seen[e.path] = e
        for e in self.unpublished.values():
            seen.setdefault(e.path, e)
        for e in self.unremoved.values():
            if seen.get(e.path) is not None and seen[e.path].version == e.version:
                del seen[e.path]  # gone here; etcd is told at the next resync
        for path in [p for p in self.by_path if p not in seen]:
            self._remove(path)
        for e in seen.values():
            self._add(e)
        return int(resp.header.revision)

    async def start(self) -> None:
        try:
            revision = await self.load()
        except Exception as e:
            log.warning("write-back: cannot read the pending registry from etcd (%s); retrying", type(e).__name__)
            revision = 0
        self._tasks = [asyncio.ensure_future(self._watch(revision + 1)), asyncio.ensure_future(self._resync())]

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.RESYNC)
            for e in list(self.unpublished.values()):
                await self.publish(e)
            for e in list(self.unremoved.values()):
                await self.unpublish(e)
            with contextlib.suppress(Exception):
                await self.load()

    async def _watch(self, revision: int) -> None:
        import aetcd

        async def changed(event: Any) -> None:
            path = event.kv.key.decode()[len(self.prefix):]
            if event.kind == aetcd.EventKind.DELETE:
                gone: Entry | None = None
                if event.prev_kv is not None:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        gone = Entry.from_json(event.prev_kv.value)
                self._remove(path, gone.version if gone is not None else None)
                if gone is not None and gone.version not in self._removing and self.removed is not None:
                    self.removed(gone)  # another node removed it: a change it made replaces it
            else:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    self._add(Entry.from_json(event.kv.value))

        await follow_prefix(self.etcd, (self.prefix + "/").encode(), revision, changed, self.load, prev_kv=True)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Landed = Callable[[Entry, ObjectInfo], Awaitable[None]]
StoreOf = Callable[[str], "tuple[Any, UnderStore] | None"]  # mount path -> (mount, the store under the overlay)


class Writeback:
    """The node's write-back: journal, budget, pending registry, uploads (module doc)."""

    def __init__(self, journal: Journal, registry: Registry, config: WritebackConfig, *, node_id: str,
                 region: str = "", http: str = "") -> None:
        self.journal = journal
        self.registry = registry
        registry.removed = self._removed_elsewhere
        self.config = config
        self.node_id, self.region, self.http = node_id, region, http
        self.budget = Budget(config.budget)
        self.entries: dict[str, Entry] = {}  # this node's, by id
        self.store_of: StoreOf = lambda _m: None  # set by the node: the store an entry goes to
        self.landed: Landed | None = None  # set by the node: switch the status to the store's version
        self.peer_session: Callable[[], Any] | None = None  # cluster mode: an aiohttp session to peers
        self.crossing: Callable[[str], Any] | None = None  # federation: the link quota from a region
        self.find_node: Callable[[str], tuple[str, str] | None] = lambda _n: None  # node id -> (http, region)
        self.peers: Callable[[str], list[tuple[str, str]]] = lambda _p: []  # (node id, http): replica holders
        self.alive: Callable[[], set[str]] = lambda: set()  # ids of the region's live members
        self.replicas_held: dict[tuple[str, str], tuple[Entry, float]] = {}  # (writer, id) -> (entry, since)
        self._replica_http: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.adopted = 0
        self.handed_over = 0  # files handed over by a local writer (meshfs) ...
        self.linked = 0  # ... of which linked into the spool without a copy
        self.switched: dict[str, str] = {}  # pending version -> the store's, while its spool is retained
        self._tails: dict[str, asyncio.Task[None]] = {}  # path -> a cancelled upload still finishing
        self._store_back = asyncio.Event()  # set (and replaced) each time an upload succeeds
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._uploading: dict[str, asyncio.Task[None]] = {}
        self._retired: dict[str, tuple[float, int]] = {}  # entry id -> (until, size): spool kept for readers
        self._workers: list[asyncio.Task[None]] = []
        self._started = False
        self._done = asyncio.Condition()
        # counters (metrics, meshctl writeback status)
        self.uploaded_files = 0
        self.uploaded_bytes = 0
        self.retries = 0
        self.superseded = 0
        self.rate: dict[str, _Rate] = defaultdict(_Rate)  # per mount: bytes/s of recent uploads

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Recover the journal (uploads resume, leftovers of interrupted ones cleared),
        join the registry, start the upload workers. Once; the first write-back write
        starts it if the node did not."""
        if self._started:
            return
        self._started = True
        for e in self.journal.recover():
            self.entries[e.id] = e
            self.budget.used += e.size
            self._queue.append(e.id)
        if self.entries:
            log.info("write-back: %d acknowledged write(s), %d bytes, to upload (from the journal)",
                     len(self.entries), sum(e.size for e in self.entries.values()))
        await self.registry.start()
        for e in sorted(self.entries.values(), key=lambda e: e.id):
            await self.registry.publish(e)
        # This node's entries the registry still has but its journal does not: uploaded or
        # dropped before a crash, whose removal from etcd did not happen. Readers sent there
        # would find nothing (every write this node acknowledged is in its journal).
        for e in [e for e in self.registry.by_path.values() if e.node == self.node_id and e.id not in self.entries]:
            log.info("write-back: %s (entry %s) is no longer pending here; removed from the registry", e.path, e.id)
            await self.registry.unpublish(e)
        self._workers = [asyncio.ensure_future(self._worker()) for _ in range(max(1, self.config.parallel))]
        self._recover_replicas()
        for _, raw in self.journal.kv.scan(LEFTOVER):
            with contextlib.suppress(ValueError, TypeError):
                self._spawn(self._clear_leftovers(Entry.from_json(raw)))
        self._workers.append(asyncio.ensure_future(self._watch_replicas()))
        self._wake.set()

    async def close(self) -> None:
        for t in self._workers:
            t.cancel()
        for t in [*self._uploading.values(), *self._background]:
            t.cancel()
        await asyncio.gather(*self._workers, *self._uploading.values(), *self._background, return_exceptions=True)
        self._workers = []
        await self.registry.stop()
        self.journal.close()

    # ---- accepting a write -------------------------------------------------------

    async def accept(self, path: str, mount: str, rel: str, chunks: AsyncIterator[bytes] | None,
                     change: AttrChange | None, attrs: Attrs | None, size_hint: int = -1,
                     src: int | None = None) -> Entry:
        """Spool ``chunks`` as the new version of ``path``; durable and published on return.
        ``src`` instead of chunks: a local writer's file (meshfs's staged file, passed over
        the local socket), ``size_hint`` bytes, taken as it is (:meth:`_take_file`)."""
        await self.start()
        eid = new_id()
        part = self.journal.part(eid)
        loop = asyncio.get_running_loop()
        if src is not None:
            await self.budget.take(size_hint)
            try:
                linked = await loop.run_in_executor(None, self._take_file, src, part, size_hint)
            except BaseException as e:
                self.budget.give(size_hint)
                with contextlib.suppress(OSError):
                    os.unlink(part)
                if isinstance(e, OSError):
                    raise self._disk_error(e, path) from None
                raise
            self.handed_over += 1
            self.linked += linked
            chunks, taken_already = _nothing(), size_hint
        else:
            taken_already = 0
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if src is not None else os.O_EXCL), 0o600)
        except OSError as e:
            self.budget.give(taken_already)
            raise self._disk_error(e, path) from None
        size, taken = (size_hint, taken_already) if src is not None else (0, 0)
        writing: asyncio.Future[None] | None = None
        assert chunks is not None
        try:
            try:
                if size_hint > 0 and src is None:
                    try:
                        os.posix_fallocate(fd, 0, size_hint)  # ENOSPC now, not half-way
                    except OSError as e:
                        if e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        # a file system without fallocate: find out while writing
                # batches of SPOOL_WRITE bytes, each written (writev: no joining copy) in a
                # thread while the next one is received
                batch: list[bytes] = []
                n = 0

                async def spill() -> None:
                    nonlocal writing, taken, size, batch, n
                    await self.budget.take(n)
                    taken += n
                    if writing is not None:
                        await writing
                    writing = loop.run_in_executor(None, _writev_all, fd, batch)
                    size += n
                    batch, n = [], 0

                async for chunk in chunks:
                    batch.append(chunk)
                    n += len(chunk)
                    if n >= SPOOL_WRITE or len(batch) >= 512:
                        await spill()
                if batch:
                    await spill()
                if writing is not None:
                    await writing
                    writing = None
                if size_hint > size and src is None:
                    os.ftruncate(fd, size)
                await loop.run_in_executor(None, os.fsync, fd)
            finally:
                if writing is not None:  # never close the file under a write in flight
                    await asyncio.wait([writing])
                os.close(fd)
            await loop.run_in_executor(None, self.journal.seal, eid)
            mtime = change.mtime if change is not None and change.mtime is not None else time.time()
            # the store's copy gets the mtime readers saw meanwhile
            wire = replace(change or AttrChange(), mtime=mtime).to_wire()
            shown = None
            if attrs is not None:
                shown = Attrs(attrs.mode, attrs.uid, attrs.gid, attrs.atime if attrs.atime is not None else mtime,
                              mtime, 1, None, None, None, dict(attrs.extra)).to_wire()
            entry = Entry(eid, path, mount, rel, size, mtime, self.node_id, self.region, self.http, time.time(),
                          change=wire, attrs=shown)
            if self.config.replicas > 1:
                entry.replicas = await self._replicate(entry)
            self.journal.commit(entry)
        except BaseException as e:
            self.budget.give(taken)
            with contextlib.suppress(OSError):
                os.unlink(part)
            with contextlib.suppress(OSError):
                os.unlink(self.journal.spool(eid))
            if isinstance(e, OSError):
                raise self._disk_error(e, path) from None
            raise
        self.budget.give(taken - size)
        self.entries[eid] = entry
        for old in [o for o in self.entries.values() if o.path == path and o.id != eid]:
            await self._drop(old, "superseded by a newer write")
        await self.registry.publish(entry)
        self._queue.append(eid)
        self._wake.set()
        return entry

    # ---- replicas (writeback.replicas > 1): the bytes on other nodes before the ack ----

    async def _replicate(self, e: Entry) -> list[str]:
        """Copy the sealed spool of ``e`` to ``replicas - 1`` other live nodes of the region
        (the ring's successors of the path first), each fsynced and journalled there;
        their ids. NodeUnavailable if the region has too few nodes that take it."""
        want = self.config.replicas - 1
        placed: list[tuple[str, str]] = []
        import aiohttp

        from meshd.errors import from_kind

        for node_id, http in self.peers(e.path):
            if len(placed) == want:
                break
            url = f"{http}/v1/writeback/{e.id}?writer={quote(self.node_id, safe='')}"
            # the holder learns the holders before it: on a takeover the first live one uploads
            announced = Entry(**{**e.__dict__, "replicas": [n for n, _ in placed] + [node_id]})
            try:
                assert self.peer_session is not None
                async with self.peer_session().put(
                        url, data=file_chunks(self.journal.spool(e.id), e.size),
                        headers={"X-Mesh-Entry": announced.to_json().decode(), "Content-Length": str(e.size)},
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=30)) as r:
                    if r.status >= 300:
                        err = await r.json(content_type=None)
                        raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
                placed.append((node_id, http))
            except Exception as err:
                log.warning("write-back: node %s did not take a replica of %s: %s", node_id, e.path, err)
        if len(placed) < want:
            for _, http in placed:
                await self._unreplicate(http, e.id)
            raise NodeUnavailable(f"write-back of {e.path} needs {want} other live node(s) of the region for its "
                                  f"replicas (writeback.replicas = {self.config.replicas}); {len(placed)} took one")
        self._replica_http.update(placed)
        return [n for n, _ in placed]

    async def _unreplicate(self, http: str, eid: str) -> None:
        if self.peer_session is None:
            return
        with contextlib.suppress(Exception):
            async with self.peer_session().delete(
                    f"{http}/v1/writeback/{eid}?writer={quote(self.node_id, safe='')}") as r:
                await r.read()

    def _drop_replicas(self, e: Entry) -> None:
        for node_id in e.replicas:
            http = self._replica_http.get(node_id) or (self.find_node(node_id) or ("", ""))[0]
            if http:
                self._spawn(self._unreplicate(http, e.id))

    async def hold_replica(self, writer: str, raw_entry: str, chunks: AsyncIterator[bytes]) -> None:
        """Keep a copy of another node's acknowledged write (fsynced, journalled as
        ``r:<writer>:<id>``) until its upload lands, or adopt it if the writer is lost."""
        try:
            e = Entry.from_json(raw_entry)
        except (ValueError, TypeError) as err:
            raise InvalidArgument(f"bad write-back entry: {err}") from None
        if e.node != writer or not _SAFE.fullmatch(writer) or not e.id.isalnum():
            raise InvalidArgument("bad write-back entry: writer or id")
        name = f"r-{writer}-{e.id}"
        part = self.journal.part(name)
        loop = asyncio.get_running_loop()
        size = 0
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                async for chunk in chunks:
                    await loop.run_in_executor(None, _write_all, fd, chunk)
                    size += len(chunk)
                await loop.run_in_executor(None, os.fsync, fd)
            finally:
                os.close(fd)
            if size != e.size:
                raise InvalidArgument(f"replica of {e.path}: {size} bytes sent, {e.size} announced")
            await loop.run_in_executor(None, self.journal.seal, name)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(part)
            if isinstance(err, OSError):
                raise self._disk_error(err, e.path) from None
            raise
        self.journal.kv.write_batch({REPLICA + f"{writer}:{e.id}".encode(): e.to_json()}, [], sync=True)
        self.replicas_held[(writer, e.id)] = (e, time.monotonic())

    def drop_replica(self, writer: str, eid: str) -> None:
        if not _SAFE.fullmatch(writer) or not eid.isalnum():
            raise InvalidArgument(f"bad replica name: writer={writer[:100]!r} id={eid[:100]!r}")
        self.replicas_held.pop((writer, eid), None)
        self.journal.kv.write_batch({}, [REPLICA + f"{writer}:{eid}".encode()], sync=True)
        self.journal.remove_spool(f"r-{writer}-{eid}")

    async def _watch_replicas(self) -> None:
        """Adopt the replicas of a writer gone from the region for ``takeover_after``
        seconds whose writes are still pending (the first live holder in the entry's
        order takes it); forget replicas whose writes are no longer pending."""
        absent: dict[str, float] = {}
        while True:
            await asyncio.sleep(min(5.0, max(0.5, self.config.takeover_after / 4)))
            now = time.monotonic()
            alive = self.alive()
            for writer in {w for w, _ in self.replicas_held}:
                if writer in alive:
                    absent.pop(writer, None)
                else:
                    absent.setdefault(writer, now)
            for (writer, eid), (e, since) in list(self.replicas_held.items()):
                pending = self.registry.by_version.get(e.version)
                if pending is None:
                    if now - since > max(60.0, self.config.retain):
                        self.drop_replica(writer, eid)  # landed (its drop notice was lost) or replaced
                    continue
                gone = absent.get(writer)
                if gone is None or now - gone < self.config.takeover_after:
                    continue
                first = next((n for n in e.replicas if n == self.node_id or n in alive), None)
                if first == self.node_id:
                    await self._adopt(writer, e)

    async def _adopt(self, writer: str, old: Entry) -> None:
        """Take over the upload of a lost writer's acknowledged write from our replica."""
        eid = new_id()
        os.rename(self.journal.spool(f"r-{writer}-{old.id}"), self.journal.spool(eid))
        e = Entry(eid, old.path, old.mount, old.rel, old.size, old.mtime, self.node_id, self.region, self.http,
                  old.created + 1e-6, change=old.change, attrs=old.attrs,
                  attempt_at=old.created)  # the lost writer's attempts may have left uploads behind
        self.journal.kv.write_batch({b"w:" + eid.encode(): e.to_json()}, [REPLICA + f"{writer}:{old.id}".encode()],
                                    sync=True)
        self.replicas_held.pop((writer, old.id), None)
        self.entries[eid] = e
        self.budget.used += e.size
        self.adopted += 1
        log.warning("write-back: node %s is gone; this node took over the upload of %s (%d bytes) from its replica",
                    writer, e.path, e.size)
        await self.registry.publish(e)
        self._queue.append(eid)
        self._wake.set()

    def _recover_replicas(self) -> None:
        for k, v in self.journal.kv.scan(REPLICA):
            try:
                e = Entry.from_json(v)
            except (ValueError, TypeError):
                continue
            if os.path.exists(self.journal.spool(f"r-{e.node}-{e.id}")):
                self.replicas_held[(e.node, e.id)] = (e, time.monotonic())
            else:
                self.journal.kv.write_batch({}, [k], sync=True)

    @staticmethod
    def _take_file(src: int, part: str, size: int) -> bool:
        """Make ``part`` hold the ``size`` bytes of the open file ``src``: the same file,
        linked into the spool (no copy: an O_TMPFILE on the spool's file system, which the
        writer promises never to write again), else an in-kernel copy. True if linked."""
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument("the file handed over is not a regular file")
        if st.st_size == size and st.st_nlink == 0:
            d = os.open(os.path.dirname(part), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:  # (a dir fd makes Python call linkat(AT_SYMLINK_FOLLOW), not link(), which would not follow)
                os.link(f"/proc/self/fd/{src}", os.path.basename(part), dst_dir_fd=d, follow_symlinks=True)
                return True
            except OSError:
                pass  # another file system, or not an O_TMPFILE: copy
            finally:
                os.close(d)
        out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            while pos < size:
                n = os.copy_file_range(src, out, min(size - pos, 1 << 30), pos, pos)
                if n == 0:
                    raise InvalidArgument(f"the file handed over has {pos} bytes, not {size}")
                pos += n
        finally:
            os.close(out)
        return False

    def _disk_error(self, e: OSError, path: str) -> MeshError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"no space left on this node's write-back disk ({self.journal.dir}) for {path}")
        return MeshError(f"write-back spool of {path}: {e.strerror or e}")

    # ---- what is pending --------------------------------------------------------

    def pending(self, path: str) -> Entry | None:
        """The pending (acknowledged, not yet uploaded) version of ``path``, mesh-wide."""
        return self.registry.get(path)

    def pending_children(self, directory: str) -> list[Entry]:
        return self.registry.children(directory)

    def local(self, path: str) -> Entry | None:
        for e in self.entries.values():
            if e.path == path:
                return e
        return None

    # ---- reads of pending versions --------------------------------------------------

    async def read(self, version: str, start: int, end: int, chunk: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the pending version ``version``: from this node's spool,
        else from the writing node. VersionChanged when the writer no longer has it (it
        was uploaded, and retired; the reader re-pins to the store's version)."""
        node, eid = writer_of(version)
        if node == self.node_id:
            async for piece in self.read_local(eid, start, end, chunk):
                yield piece
            return
        async for piece in self._read_remote(version, node, eid, start, end):
            yield piece

    def spool_size(self, eid: str) -> int | None:
        e = self.entries.get(eid)
        if e is not None:
            return e.size
        r = self._retired.get(eid)
        return r[1] if r is not None else None

    async def read_local(self, eid: str, start: int, end: int, chunk: int | None = None) -> AsyncIterator[bytes]:
        size = self.spool_size(eid)
        if size is None:
            raise VersionChanged(f"write-back version {eid} is no longer held here (uploaded)")
        try:
            fd = os.open(self.journal.spool(eid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VersionChanged(f"write-back version {eid} is no longer held here (uploaded)") from None
        loop = asyncio.get_running_loop()
        try:
            pos, end = start, min(end, size)
            step = chunk or READ_PIECE
            while pos < end:
                data = await loop.run_in_executor(None, os.pread, fd, min(step, end - pos), pos)
                if not data:
                    raise VersionChanged(f"write-back version {eid} shrank under a reader")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    async def _read_remote(self, version: str, node: str, eid: str, start: int, end: int) -> AsyncIterator[bytes]:
        e = self.registry.by_version.get(version)
        where = (e.http, e.region) if e is not None else self.find_node(node)
        if where is None or not where[0] or self.peer_session is None:
            raise VersionChanged(f"the node holding write-back version {version} is not known here")
        http, region = where
        url = f"{http}/v1/writeback/{eid}?start={start}&end={end}"
        crossing = self.crossing(region) if self.crossing is not None and region != self.region else None
        import aiohttp

        from meshd.errors import from_kind

        session = self.peer_session()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=15)) as r:
                if r.status >= 300:
                    try:
                        err = await r.json(content_type=None)
                        raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
                    except (ValueError, aiohttp.ContentTypeError):
                        raise NodeUnavailable(f"node {node}: HTTP {r.status}") from None
                async for piece in r.content.iter_chunked(READ_PIECE):
                    if crossing:
                        await crossing.take(len(piece), "fill")
                    yield piece
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise NodeUnavailable(f"node {node} holding {version} at {http}: {type(err).__name__} {err}") from None

    # ---- changes of pending paths ------------------------------------------------

    async def supersede(self, path: str, why: str = "replaced") -> None:
        """``path`` is about to be replaced or removed in the store by another change: its
        pending write (any node's) must not be uploaded over it, and an upload of it
        already on the wire ends before this returns: another node's, by asking it (if it
        cannot be reached, it drops the write when it sees the registry entry go)."""
        for e in [e for e in self.entries.values() if e.path == path]:
            await self._drop(e, why)
        other = self.registry.get(path)
        if other is not None:
            if other.node != self.node_id:
                await self._drop_at_writer(other)
            await self.registry.unpublish(other)
        await self.settled(path)

    async def _drop_at_writer(self, e: Entry) -> None:
        """Ask the node that holds the pending write ``e`` to drop it (and wait for its
        upload's last request): a change made here then lands after anything of it."""
        http = e.http or (self.find_node(e.node) or ("", ""))[0]
        if not http or self.peer_session is None:
            return
        import aiohttp

        try:
            async with self.peer_session().post(f"{http}/v1/writeback/{e.id}/drop", params={"path": e.path},
                                                timeout=aiohttp.ClientTimeout(total=120, sock_connect=3)) as r:
                await r.read()
                if r.status >= 300:
                    raise MeshError(f"HTTP {r.status}")
        except Exception as err:
            log.warning("write-back: cannot ask node %s to drop its pending write of %s (%s); it drops it when "
                        "it sees the registry entry go", e.node, e.path, err)

    async def drop_pending(self, eid: str, path: str, why: str) -> bool:
        """Drop this node's pending write ``eid`` of ``path`` (another node is about to
        replace it); returns once an upload of the path on the wire has ended. False if
        it was not held (any more)."""
        e = self.entries.get(eid)
        held = e is not None and e.path == path
        if e is not None and held:
            await self._drop(e, why)
        await self.settled(path)
        return held

    def _removed_elsewhere(self, gone: Entry) -> None:
        """The registry lost an entry of ours that another node removed (its change of the
        path replaces ours): drop it here too, so it is never uploaded over that change."""
        e = self.entries.get(gone.id)
        if e is not None and e.version == gone.version and e.path == gone.path:
            self._spawn(self._drop(e, "replaced by a change made through another node"))

    def _tail_done(self, path: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(path) is task:
            del self._tails[path]

    async def settled(self, path: str) -> None:
        """Wait for a cancelled upload of ``path`` whose last request is still on the wire."""
        tail = self._tails.get(path)
        if tail is not None:
            await asyncio.gather(tail, return_exceptions=True)

    async def retarget(self, src: str, dst: str, mount: str, rel: str) -> Entry | None:
        """A rename of a file this node holds pending: the upload goes to the new name.
        None when ``src`` is not pending here."""
        e = self.local(src)
        if e is None:
            return None
        task = self._uploading.pop(e.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its request on the wire ends first
        await self.registry.unpublish(e)
        if e.token or e.attempt_at:  # an attempt under the old name may have left an upload there
            self.journal.kv.write_batch({LEFTOVER + e.id.encode(): e.to_json()}, [], sync=True)
            self._spawn(self._clear_leftovers(Entry.from_json(e.to_json())))
            e.token, e.attempt_at = "", 0.0
        for old in [o for o in self.entries.values() if o.path == dst and o.id != e.id]:
            await self._drop(old, "renamed over")
        e.path, e.mount, e.rel, e.created = dst, mount, rel, time.time()
        self.journal.update(e)
        await self.registry.publish(e)
        if e.id not in self._queue:
            self._queue.append(e.id)
        self._wake.set()
        return e

    async def _drop(self, e: Entry, why: str) -> None:
        task = self._uploading.pop(e.id, None)
        if task is not None and task is not asyncio.current_task():
            # its request on the wire ends first (a PUT may still land): the next upload of the
            # path, and a change through to the store (``settled``), wait for that; the
            # writer whose write replaced it does not
            task.cancel()
            self._tails[e.path] = task
            task.add_done_callback(functools.partial(self._tail_done, e.path))
        if e.id not in self.entries:
            return
        self._retire(e)  # before it leaves ``entries``: a reader pinned to it is never cut mid-read
        del self.entries[e.id]
        self.superseded += 1
        log.info("write-back: %s (entry %s) not uploaded: %s", e.path, e.id, why)
        await self.registry.unpublish(e)
        if e.token or e.attempt_at:  # its upload may have left something in the store
            self.journal.kv.write_batch({LEFTOVER + e.id.encode(): e.to_json()}, [], sync=True)
            self._spawn(self._clear_leftovers(e, after=task))
        self.journal.forget(e)
        self._drop_replicas(e)
        self.budget.give(e.size)
        async with self._done:
            self._done.notify_all()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _clear_leftovers(self, e: Entry, after: asyncio.Future[Any] | None = None) -> None:
        """What a dropped entry's upload attempts left in the store (an incomplete multipart
        upload, a temp file), removed however long the store takes to answer; the job is
        journalled (``wx:<id>``), so a restart takes it up again. ``after``: the cancelled
        upload, whose requests on the wire end first (an upload it is still creating would
        otherwise appear after this looked). A failed try is repeated with backoff, and at
        once when an upload succeeds (the store is back)."""
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        delay = 0.5
        while True:
            found = self.store_of(e.mount)
            try:
                if found is not None:
                    await found[1].abort_put(e.rel, e.token, name=e.id, since=e.attempt_at)
                self.journal.kv.write_batch({}, [LEFTOVER + e.id.encode()], sync=True)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("write-back: cannot yet remove what the upload of %s left in its store: %s", e.path, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._store_back.wait(), delay)
            delay = min(self.config.retry_max, delay * 2)

    def _retire(self, e: Entry) -> None:
        """Keep the spool file ``retain`` seconds for readers pinned to its version."""
        self._retired[e.id] = (time.monotonic() + self.config.retain, e.size)
        asyncio.get_running_loop().call_later(self.config.retain, self._unretire, e.id)

    def _unretire(self, eid: str) -> None:
        version = f"{VERSION_PREFIX}{self.node_id}:{eid}"
        # a reader still pinned to the pending version goes on at the store's (same bytes) a
        # while longer: the switch is remembered past the spool (a few bytes per upload)
        asyncio.get_running_loop().call_later(SWITCH_MEMORY, self.switched.pop, version, None)
        if self._retired.pop(eid, None) is not None:
            self.journal.remove_spool(eid)

    # ---- flush and status -------------------------------------------------------

    async def flush(self, path: str, wait: bool = True, deadline: float | None = None) -> int:
        """Upload what is pending at or below ``path`` first; ``wait``: until every such
        write (of any node: the registry) is in its store. Returns how many were pending."""
        mine = [e for e in self.entries.values() if paths.is_within(e.path, path)]
        for e in sorted(mine, key=lambda e: e.id, reverse=True):
            with contextlib.suppress(ValueError):
                self._queue.remove(e.id)
            if e.id not in self._uploading:
                self._queue.appendleft(e.id)
        self._wake.set()
        n = len({e.path for e in mine} | {e.path for e in self.registry.under(path)})
        if not wait:
            return n

        def clear() -> bool:
            return not any(paths.is_within(e.path, path) for e in self.entries.values()) and \
                not self.registry.under(path)

        async def until_clear() -> None:
            while not clear():
                async with self._done:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._done.wait(), 0.2)

        await asyncio.wait_for(until_clear(), deadline)
        return n

    def status(self) -> dict[str, Any]:
        now = time.time()
        mine = list(self.entries.values())
        by_mount: dict[str, dict[str, Any]] = {}
        for e in mine:
            m = by_mount.setdefault(e.mount, {"files": 0, "bytes": 0, "oldest_seconds": 0.0})
            m["files"] += 1
            m["bytes"] += e.size
            m["oldest_seconds"] = max(m["oldest_seconds"], now - e.created)
        for mount, r in self.rate.items():
            by_mount.setdefault(mount, {"files": 0, "bytes": 0, "oldest_seconds": 0.0})["upload_rate"] = r.value()
        failing = [{"path": e.path, "attempts": e.attempts, "error": e.error} for e in mine if e.error]
        return {
            "node": self.node_id,
            "pending_files": len(mine),
            "pending_bytes": sum(e.size for e in mine),
            "oldest_seconds": max((now - e.created for e in mine), default=0.0),
            "uploading": len(self._uploading),
            "budget_bytes": self.budget.limit,
            "budget_used": self.budget.used,
            "writers_waiting": self.budget.waiting,
            "budget_wait_seconds": round(self.budget.waited_seconds, 3),
            "uploaded_files": self.uploaded_files,
            "uploaded_bytes": self.uploaded_bytes,
            "retries": self.retries,
            "superseded": self.superseded,
            "replicas": self.config.replicas,
            "replicas_held": len(self.replicas_held),
            "adopted": self.adopted,
            "handed_over": self.handed_over,
            "linked": self.linked,
            "mesh_pending_files": len(self.registry.by_path),
            "mesh_pending_bytes": sum(e.size for e in self.registry.by_path.values()),
            "mounts": by_mount,
            "failing": failing[:20],
            "files": [{"path": e.path, "bytes": e.size, "age_seconds": round(now - e.created, 3), "state": e.state,
                       "attempts": e.attempts} for e in sorted(mine, key=lambda e: e.id)[:100]],
        }

    # ---- uploads -------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            eid = self._queue.popleft()
            e = self.entries.get(eid)
            if e is None or eid in self._uploading:
                continue
            task = asyncio.ensure_future(self._upload(e))
            self._uploading[eid] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # the worker itself is cancelled (close)
                    raise
            except Exception:
                log.exception("write-back: upload of %s failed unexpectedly", e.path)
            finally:
                if self._uploading.get(eid) is task:
                    del self._uploading[eid]

    async def _upload(self, e: Entry) -> None:
        await self.settled(e.path)  # a replaced version's upload must not land after this one
        found = self.store_of(e.mount)
        newer = self.registry.get(e.path)
        if newer is not None and newer.version != e.version and newer.created > e.created:
            await self._drop(e, f"a newer write of the path was acknowledged by node {newer.node}")
            return
        if found is None:
            self._failed(e, NotFound(f"mount {e.mount} is gone"))
            return
        _, store = found
        try:
            if e.token or e.attempt_at:  # an earlier attempt (this run, or before a crash) left something?
                await store.abort_put(e.rel, e.token, name=e.id, since=e.attempt_at)
                e.token = ""  # only once the store said it is gone
            e.state, e.attempts, e.attempt_at = "uploading", e.attempts + 1, time.time()
            self.journal.update(e)  # before the store is asked: a crash from here on is found by attempt_at

            async def started(token: str) -> None:
                e.token = token
                self.journal.update(e)

            t0 = time.monotonic()
            change = AttrChange.from_wire(e.change)
            if change.mtime is None:
                change = replace(change, mtime=e.mtime)
            info = await store.put_file(e.rel, self.journal.spool(e.id), e.size, change=change, token=e.id,
                                        started=started, parallel=self.config.parts)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._failed(e, err)
            return
        self.rate[e.mount].add(e.size, time.monotonic() - t0)
        self._store_back.set()  # leftover jobs waiting out a failure try again now
        self._store_back = asyncio.Event()
        if self.entries.get(e.id) is not e:
            return  # dropped while uploading
        self.switched[e.version] = info.version
        if self.landed is not None:
            try:
                await self.landed(e, info)
            except Exception as err:  # the store has it; the status catches up at the next stat
                log.warning("write-back: %s is in its store, but recording its status failed: %s", e.path, err)
        self._retire(e)  # before it leaves ``entries``: a reader pinned to it is never cut mid-read
        self.entries.pop(e.id, None)
        await self.registry.unpublish(e)
        self.journal.forget(e)
        self._drop_replicas(e)
        self.budget.give(e.size)
        self.uploaded_files += 1
        self.uploaded_bytes += e.size
        async with self._done:
            self._done.notify_all()

    def _failed(self, e: Entry, err: BaseException) -> None:
        """Try again later (backoff up to ``retry_max``); never give up: the bytes are
        acknowledged. Errors show in ``meshctl writeback status`` and the metrics."""
        self.retries += 1
        e.state, e.error = "pending", f"{type(err).__name__}: {str(err)[:300]}"
        with contextlib.suppress(MeshError):
            self.journal.update(e)
        delay = min(self.config.retry_max, 0.5 * 2 ** min(e.attempts, 10))
        log.warning("write-back: upload of %s failed (attempt %d, again in %.1f s): %s", e.path, e.attempts,
                    delay, e.error)

        def again() -> None:
            if e.id in self.entries and e.id not in self._queue:
                self._queue.append(e.id)
                self._wake.set()

        asyncio.get_running_loop().call_later(delay, again)


def _ancestors(path: str) -> list[str]:
    out = []
    d = paths.parent(path)
    while d and d != "/":
        out.append(d)
        d = paths.parent(d)
    return out


class _Rate:
    """Bytes per second of recent uploads (an exponentially weighted mean)."""

    def __init__(self) -> None:
        self._bps = 0.0

    def add(self, nbytes: int, seconds: float) -> None:
        if seconds > 0:
            bps = nbytes / seconds
            self._bps = bps if self._bps == 0 else 0.7 * self._bps + 0.3 * bps

    def value(self) -> float:
        return round(self._bps, 1)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _writev_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.writev(fd, views)
        while n and views:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


__all__ = ["Budget", "Entry", "EtcdRegistry", "Journal", "Registry", "Writeback", "WritebackConfig",
           "is_pending_version"]
