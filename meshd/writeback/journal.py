"""The write-back journal: acknowledged writes not yet in their under-store.

A write-back write streams into a spool file (``DATA_DIR/writeback/<id>.part``),
is fsynced, renamed to ``<id>`` and then recorded as ``w:<id>`` in the node's
RocksDB with a synced write: that record is the commit point, after which the
write is acknowledged. On restart every record is uploaded again (the spool file
is the whole new version); a spool file without a record was never
acknowledged and is removed. See docs/SEMANTICS.md ("Write-back").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from meshd.metadata.kv import KV

log = logging.getLogger(__name__)

PREFIX = b"w:"
VERSION_PREFIX = "wb:"  # a version served from a writing node's spool, not (yet) the store's


def is_pending_version(version: str | None) -> bool:
    return bool(version) and str(version).startswith(VERSION_PREFIX)


def writer_of(version: str) -> tuple[str, str]:
    """(node id, entry id) of a ``wb:<node>:<id>`` version."""
    _, node, entry = version.split(":", 2)
    return node, entry


@dataclass
class Entry:
    """One acknowledged write: where it goes, what it is, and how its upload stands."""

    id: str
    path: str  # mesh path
    mount: str  # the mount's path
    rel: str  # the path inside the mount
    size: int
    mtime: float
    node: str  # the writing node's id
    region: str
    http: str  # the writing node's HTTP base URL (other nodes read the bytes there)
    created: float  # when the write was acknowledged
    change: dict[str, Any] | None = None  # AttrChange wire: what the upload sets
    attrs: list[Any] | None = None  # Attrs wire: what the status shows meanwhile
    state: str = "pending"  # pending | uploading
    token: str = ""  # the store's temporary artefact of an upload in flight (S3 upload id)
    attempt_at: float = 0.0  # when the last upload attempt began (0: none yet): its leftovers are found by it
    attempts: int = 0
    error: str = ""
    replicas: list[str] = field(default_factory=list)  # other nodes holding a copy of the bytes

    @property
    def version(self) -> str:
        return f"{VERSION_PREFIX}{self.node}:{self.id}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        d = json.loads(raw)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def new_id() -> str:
    """Ids sort by creation time (the upload order), unique per node."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


class Journal:
    """The node's write-back records (``w:<id>`` in its KV) and spool files."""

    def __init__(self, kv: KV, directory: str) -> None:
        self.kv = kv
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def spool(self, entry_id: str) -> str:
        return os.path.join(self.dir, entry_id)

    def part(self, entry_id: str) -> str:
        return os.path.join(self.dir, entry_id + ".part")

    def seal(self, entry_id: str) -> None:
        """The spool file is complete and fsynced: give it its final name, durably."""
        os.rename(self.part(entry_id), self.spool(entry_id))
        os.fsync(self._dir_fd)

    def commit(self, entry: Entry) -> None:
        """Record ``entry`` (synced to disk): from here on the write is acknowledged."""
        self.kv.write_batch({PREFIX + entry.id.encode(): entry.to_json()}, [], sync=True)

    def update(self, entry: Entry) -> None:
        self.kv.write_batch({PREFIX + entry.id.encode(): entry.to_json()}, [], sync=True)

    def forget(self, entry: Entry) -> None:
        """The entry is in its store (or superseded): drop its record (the spool file is
        the caller's: it may keep serving readers pinned to the version a while)."""
        self.kv.write_batch({}, [PREFIX + entry.id.encode()], sync=True)

    def remove_spool(self, entry_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool(entry_id))

    def entries(self) -> list[Entry]:
        out = []
        for k, v in self.kv.scan(PREFIX):
            try:
                out.append(Entry.from_json(v))
            except (ValueError, TypeError) as e:
                log.error("write-back journal: unreadable record %r (%s); its bytes, if any, stay in %s",
                          k, e, self.dir)
        return out

    def recover(self) -> list[Entry]:
        """At start: the acknowledged entries (each to upload again); spool files of writes
        that were never acknowledged (no record) are removed."""
        entries = self.entries()
        known = {e.id for e in entries}
        for name in os.listdir(self.dir):
            if name.startswith("r-") and not name.endswith(".part"):
                continue  # another node's write this node keeps a replica of (service.REPLICA)
            stem = name.removesuffix(".part")
            if name.endswith(".part") or stem not in known:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))
        alive = []
        for e in entries:
            try:
                size = os.stat(self.spool(e.id)).st_size
            except FileNotFoundError:
                size = -1
            if size != e.size:
                log.error("write-back journal: the bytes of %s (entry %s, %d bytes) are missing or short on "
                          "this node's disk (%d): that write is lost; its record is dropped", e.path, e.id,
                          e.size, size)
                self.forget(e)
                continue
            alive.append(e)
        return sorted(alive, key=lambda e: e.id)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)
