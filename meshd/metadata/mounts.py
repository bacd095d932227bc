"""The mount table: mesh path -> under-store URI + options.

A mount's path is a normalised mesh path; mounts may not overlap (one may not
lie inside another) because a path must resolve to exactly one under-store.
Options that the mesh itself understands (all others go to the under-store, and
an option neither takes is refused, with the closest known name):

=================  =======  ==================================================
option             default  meaning
=================  =======  ==================================================
``sync_interval``  ``0``    seconds a cached file status / listing is trusted
                            before the under-store is asked again; ``0`` =
                            always check, ``-1`` = never (until ``meshctl
                            sync``)
``nocache``        false    every read streams from the under-store, uncached
``read_only``      false    refuse writes, deletes, mkdir and rename
``store``          (none)   the topology store this mount reads (its home
                            region and per-region endpoint); by default the
                            store whose ``uri`` prefixes the mount's
``home_region``    (own)    the home region when no topology store matches
=================  =======  ==================================================

Secret options (``access_key``, ``secret_key``, ``session_token``, ...: see
:mod:`meshd.secrets`) are stored encrypted with the node's secrets key, or given by
reference (``secret_key_file=/path``, ``secret_key_env=NAME``) and resolved when the
store opens: the table never holds one in clear text. Entries an older version wrote
in clear text are read as they are and written back encrypted when the node has a key.

The table persists in the node's KV store (key ``m:<path>``). In cluster mode
it lives in etcd (``/mesh/<cluster>/mounts/<path>``, shared by every node and
region): changes are written there, every node applies them from its watch,
and the KV copy is the last known table, used if etcd is away at start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from meshd import paths, secrets
from meshd.errors import MeshError, MountError, NotFound, PermissionDenied
from meshd.metadata.kv import KV
from meshd.secrets import SecretsKey
from meshd.understore import UnderStore, open_understore, options_of
from meshd.understore.base import check_options

MESH_OPTIONS = {"sync_interval", "nocache", "read_only", "store", "home_region", "write_mode"}
SECRET_OPTIONS = secrets.SECRET_OPTIONS
log = logging.getLogger("meshd.mounts")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_PREFIX = b"m:"


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise MountError(f"option {name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Mount:
    path: str
    uri: str
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def sync_interval(self) -> float:
        raw = self.options.get("sync_interval", "0")
        try:
            value = float(raw)
        except ValueError:
            raise MountError(f"option sync_interval must be a number of seconds, got {raw!r}") from None
        if math.isnan(value) or (value < 0 and value != -1):
            raise MountError(f"option sync_interval must be >= 0 or -1 (never), got {raw!r}")
        return value

    @property
    def nocache(self) -> bool:
        return _bool("nocache", self.options.get("nocache", "false"))

    @property
    def write_back(self) -> bool:
        """``write_mode: back``: writes are acknowledged once on the node's disk and uploaded
        in the background (docs/SEMANTICS.md); ``through`` (the default): once in the store."""
        raw = self.options.get("write_mode", "through").strip().lower()
        if raw not in ("back", "through"):
            raise MountError(f"option write_mode must be 'back' or 'through', got {raw!r}")
        return raw == "back"

    @property
    def read_only(self) -> bool:
        return _bool("read_only", self.options.get("read_only", "false"))

    @property
    def identity(self) -> str:
        """What names the data: the URI plus the endpoint that serves it.

        Page keys hash this (with the path and version), so two mounts of the
        same bucket on two different S3 endpoints never share pages, while two
        mounts of the same location do.
        """
        endpoint = self.options.get("endpoint", "")
        return f"{self.uri}#{endpoint}" if endpoint else self.uri

    def store_options(self) -> dict[str, str]:
        return {k: v for k, v in self.options.items() if k not in MESH_OPTIONS}

    def redacted_options(self) -> dict[str, str]:
        return secrets.redact(self.options)

    def check_writable(self) -> None:
        if self.read_only:
            raise PermissionDenied(f"mount {self.path} is read-only")

    def to_json(self) -> bytes:
        return json.dumps({"path": self.path, "uri": self.uri, "options": dict(self.options)}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Mount:
        d = json.loads(raw)
        return cls(d["path"], d["uri"], d.get("options", {}))


def validate(path: str, uri: str, options: Mapping[str, str]) -> Mount:
    """Check a mount's own shape (not its relation to other mounts)."""
    try:
        path = paths.normalize(path)
    except Exception as e:
        raise MountError(f"bad mount path {path!r}: {e}") from None
    parts = urlsplit(uri)
    if not parts.scheme or "\x00" in uri:
        raise MountError(f"malformed under-store URI {uri!r}: expected scheme://location")
    for key in options:
        if not key or not key.replace("_", "").isalnum():
            raise MountError(f"malformed option name {key!r}")
    known = options_of(uri)
    check_options(parts.scheme, options, MESH_OPTIONS | known | secrets.reference_options(known))
    secrets.check_references(options)
    mount = Mount(path, uri.rstrip("/") if parts.path not in ("", "/") else uri, dict(options))
    _ = mount.sync_interval, mount.nocache, mount.read_only, mount.write_back  # validate values
    return mount


def _uri_key(uri: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, "/" + parts.path.strip("/")


def mesh_path_of(mounts: Iterable[tuple[str, str]], name: str) -> str:
    """The mesh path for ``name``: a mesh path as is (a ``mesh:`` prefix allowed); an
    under-store URI (``s3://bucket/x``, ``hdfs://nn/warehouse/x``) through the mount
    (``(path, uri)`` pairs) whose URI is its longest prefix at a path boundary. Scheme
    and host must match; a port counts only when both sides name one
    (``hdfs://nn/x`` is ``hdfs://nn:8020/x``). NotFound when no mount covers it."""
    if name.startswith("mesh:"):
        return paths.normalize("/" + name[len("mesh:"):].lstrip("/"))
    if "://" not in name:
        return paths.normalize(name)
    scheme, host, port, path = _uri_key(name)
    best: tuple[int, str, str] | None = None
    for mount_path, uri in mounts:
        m_scheme, m_host, m_port, m_path = _uri_key(uri)
        if (m_scheme, m_host) != (scheme, host) or (m_port is not None and port is not None and m_port != port):
            continue
        if m_path == "/" or path == m_path or path.startswith(m_path + "/"):
            depth = len(m_path)
            if best is None or depth > best[0]:
                rest = path[len(m_path):].strip("/") if m_path != "/" else path.strip("/")
                best = (depth, mount_path, rest)
    if best is None:
        raise NotFound(f"no mount covers {name}")
    _, mount_path, rest = best
    return paths.join(mount_path, rest) if rest else paths.normalize(mount_path)


async def _close_later(store: UnderStore, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await store.close()


class SharedMounts(Protocol):
    """Where a cluster keeps its mount table (etcd)."""

    async def put(self, mount: Mount) -> None: ...

    async def delete(self, path: str) -> None: ...


class StoreEndpoints(Protocol):
    """The options a mount's under-store opens with, per the mesh's topology (a region's
    own endpoint of the store): the node's Federation in cluster mode."""

    def store_options(self, mount: Mount) -> dict[str, str]: ...

    def on_change(self, fn: Callable[[], Any]) -> None: ...


class MountTable:
    """Mounts of one node, each with its open under-store.

    ``wrap`` wraps every under-store opened (metrics, link quotas); ``shared`` is the
    cluster's table (etcd), written before this node's copy; ``endpoints`` gives the
    options stores open with, and says when they change (the stores then reopen)."""

    def __init__(self, kv: KV, wrap: Callable[[UnderStore, Mount], UnderStore] | None = None, *,
                 shared: SharedMounts | None = None, endpoints: StoreEndpoints | None = None,
                 key: SecretsKey | None = None) -> None:
        self._kv = kv
        self.key = key  # seals inline secrets; None: they are refused (cluster mode without a key)
        self._warned_clear: set[str] = set()
        self.shared = shared
        self._wrap = wrap or (lambda store, mount: store)
        self.options_for: Callable[[Mount], dict[str, str]] = (
            endpoints.store_options if endpoints is not None else Mount.store_options)
        if endpoints is not None:
            endpoints.on_change(self.reopen_changed)
        self._opened_with: dict[str, dict[str, str]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._mounts: dict[str, Mount] = {}
        self._stores: dict[str, UnderStore] = {}
        rewritten = False
        for _, raw in list(kv.scan(_PREFIX)):
            m = Mount.from_json(raw)
            if secrets.has_clear(m.options):  # written by an older version
                if key is not None:
                    m = dataclasses.replace(m, options=secrets.seal(m.options, key, m.path))
                    kv.put(_PREFIX + m.path.encode(), m.to_json())
                    log.info("mount %s: its secret options were in clear text: encrypted them", m.path)
                    rewritten = True
                elif shared is not None:  # etcd has them: this copy loses them (_install)
                    self._mounts[m.path] = m
                    self._kv_put(m)
                    rewritten = True
                    continue
            self._mounts[m.path] = m
        if rewritten:
            kv.purge(_PREFIX)  # the clear values are gone from RocksDB's files too

    def entries(self) -> list[Mount]:
        return [self._mounts[p] for p in sorted(self._mounts)]

    def get(self, path: str) -> Mount | None:
        """The mount at exactly ``path``."""
        return self._mounts.get(path)

    def _overlap(self, path: str) -> Mount | None:
        for other in self._mounts.values():
            if other.path != path and (paths.is_within(path, other.path) or paths.is_within(other.path, path)):
                return other
        return None

    async def add(self, path: str, uri: str, options: Mapping[str, str], *, check: bool = True,
                  replace: bool = False) -> Mount:
        mount = validate(path, uri, options)
        mount = dataclasses.replace(mount, options=self._seal(mount, self._mounts.get(mount.path)))
        if mount.path in self._mounts and not replace:
            raise MountError(f"{mount.path} is already mounted ({self._mounts[mount.path].uri})")
        other = self._overlap(mount.path)
        if other is not None:
            raise MountError(f"{mount.path} overlaps the existing mount {other.path} ({other.uri}); "
                             "mounts may not be nested")
        store = self._open(mount, detail=True)
        if check:
            try:
                await store.check()
            except BaseException:
                await store.close()
                raise
        if self.shared is not None:
            try:
                await self.shared.put(mount)
            except BaseException:
                await store.close()
                raise
        await self._install(mount, store)
        return mount

    def _seal(self, mount: Mount, previous: Mount | None) -> dict[str, str]:
        """``mount``'s options as stored: inline secrets sealed. A secret equal to the one
        ``previous`` holds keeps its sealed value (re-adding a mount changes nothing)."""
        options = dict(mount.options)
        if previous is not None and self.key is not None:
            for k, v in previous.options.items():
                if k in SECRET_OPTIONS and secrets.is_sealed(v) and k in options:
                    try:
                        if self.key.unseal(k, v, mount.path) == options[k]:
                            options[k] = v
                    except MountError:
                        pass
        return secrets.seal(options, self.key, mount.path)

    async def _install(self, mount: Mount, store: UnderStore | None) -> None:
        old = self._stores.pop(mount.path, None)
        if old is not None:
            await old.close()
        self._mounts[mount.path] = mount
        if store is not None:
            self._stores[mount.path] = store
        self._kv_put(mount)

    def _kv_put(self, mount: Mount) -> None:
        stored = mount
        if secrets.has_clear(mount.options):  # an old clear entry of etcd, no key: not to disk
            stored = dataclasses.replace(mount, options={
                k: v for k, v in mount.options.items() if k not in SECRET_OPTIONS})
        self._kv.put(_PREFIX + mount.path.encode(), stored.to_json())

    async def remove(self, path: str) -> Mount:
        path = paths.normalize(path)
        mount = self._mounts.get(path)
        if mount is None:
            raise MountError(f"nothing is mounted at {path}")
        if self.shared is not None:
            await self.shared.delete(path)
        await self._forget(path)
        return mount

    async def _forget(self, path: str) -> None:
        self._mounts.pop(path, None)
        self._kv.delete(_PREFIX + path.encode())
        store = self._stores.pop(path, None)
        if store is not None:
            await store.close()

    async def sync_shared(self, mounts: list[Mount]) -> None:
        """Make this node's table the shared one (from etcd): add, change, remove."""
        wanted = {m.path: m for m in mounts}
        for path in list(self._mounts):
            if path not in wanted:
                await self._forget(path)
        for m in wanted.values():
            if secrets.has_clear(m.options):
                m = await self._reseal_shared(m)
            if self._mounts.get(m.path) != m:
                await self._install(m, None)  # its under-store opens on first use
                try:
                    secrets.unseal(m.options, self.key, m.path)
                except MountError as e:  # its requests fail with this; the other mounts serve
                    log.error("%s", e)

    async def _reseal_shared(self, m: Mount) -> Mount:
        """An entry an older version wrote to etcd with secrets in clear text: written back
        sealed when this node has the key (nodes racing to do it converge on the last
        write), else used as it is, with a warning."""
        if self.key is None or self.shared is None:
            if m.path not in self._warned_clear:
                self._warned_clear.add(m.path)
                log.warning("mount %s holds secret options in clear text in the cluster's mount "
                            "table; give the nodes cluster.secrets_key_file to encrypt them", m.path)
            return m
        sealed = dataclasses.replace(m, options=secrets.seal(m.options, self.key, m.path))
        try:
            await self.shared.put(sealed)
            log.info("mount %s: its secret options were in clear text in etcd: encrypted them", m.path)
        except MeshError as e:
            log.warning("mount %s: cannot write its secrets back encrypted: %s", m.path, e)
        return sealed

    def resolve(self, path: str) -> tuple[Mount, str] | None:
        """The mount holding ``path`` and the path relative to its root."""
        best: Mount | None = None
        for m in self._mounts.values():
            if paths.is_within(path, m.path) and (best is None or len(m.path) > len(best.path)):
                best = m
        if best is None:
            return None
        rel = path[len(best.path):].strip("/") if best.path != "/" else path.strip("/")
        return best, rel

    def mesh_path(self, name: str) -> str:
        """The mesh path a user's name for data stands for (see :func:`mesh_path_of`)."""
        return mesh_path_of(((m.path, m.uri) for m in self._mounts.values()), name)

    def _open(self, mount: Mount, *, detail: bool = False) -> UnderStore:
        """``mount``'s under-store, opened with its secrets resolved (in memory only).
        ``detail``: errors of the store's own (they may name its URI) go to the caller
        as they are (``mount add``, by an operator); else they are logged and the caller
        is told only that the mount's store cannot be opened."""
        options = self.options_for(mount)
        resolved = secrets.unseal(options, self.key, mount.path)  # errors name the mount only
        try:
            raw = open_understore(mount.uri, resolved)
        except MeshError as e:
            if detail:
                raise
            log.error("mount %s: cannot open its under-store: %s", mount.path, e)
            raise MountError(f"mount {mount.path}: its under-store cannot be opened "
                             "(the node's log says why)") from None
        raw.shown = mount.path  # errors name the mesh path the user gave, not file:///...
        store = self._wrap(raw, mount)
        self._opened_with[mount.path] = options
        return store

    def store(self, mount: Mount) -> UnderStore:
        store = self._stores.get(mount.path)
        if store is None:
            store = self._open(mount)
            self._stores[mount.path] = store
        return store

    def reopen_changed(self) -> list[str]:
        """Close the stores whose options changed (a new topology moved their
        endpoint); they reopen on next use. Returns the mount paths."""
        changed = [p for p in self._stores
                   if p in self._mounts and self.options_for(self._mounts[p]) != self._opened_with.get(p)]
        for p in changed:
            old = self._stores.pop(p)
            # Reads in flight keep the old client; close it once they have had time to end.
            task = asyncio.ensure_future(_close_later(old, 60.0))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return changed

    def children_of_virtual(self, path: str) -> list[str] | None:
        """Names below ``path`` when it is an ancestor of mount points (a virtual dir)."""
        names: set[str] = set()
        for m in self._mounts.values():
            if m.path != path and paths.is_within(m.path, path):
                rest = paths.split(m.path)[len(paths.split(path)):]
                names.add(rest[0])
        if not names and path != "/":
            return None
        return sorted(names)

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
        for task in list(self._closing):
            task.cancel()  # closes the store now (the finally in _close_later)
        await asyncio.gather(*self._closing, return_exceptions=True)
