"""A tiny ordered key-value interface, and its two implementations.

The metadata shard needs only: get, put, delete, a prefix scan and an atomic
batch. :class:`RocksKV` (rocksdict, i.e. RocksDB) is what nodes run;
:class:`MemoryKV` is the in-memory double for unit tests. Keys and values are
bytes; callers own their encoding.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from meshd.errors import MeshError, NoSpace

log = logging.getLogger(__name__)


class KV(abc.ABC):
    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with ``prefix``, in key order, from ``start`` (inclusive) on."""

    @abc.abstractmethod
    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes], sync: bool = False) -> None:
        """Apply deletes then puts atomically; ``sync``: on disk (fsynced) before returning
        (the write-back journal's commit point; a process crash never loses an unsynced
        batch either, a machine crash may)."""

    def purge(self, prefix: bytes) -> None:  # noqa: B027 - optional hook
        """Drop from the files on disk the old versions of the keys under ``prefix``
        (overwritten values that held secrets in clear text)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def count(self, prefix: bytes) -> int:
        """How many keys start with ``prefix`` (a scan; for reports and tests)."""
        return sum(1 for _ in self.scan(prefix))


class MemoryKV(KV):
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        if self._data.pop(key, None) is not None:
            self._keys.pop(bisect.bisect_left(self._keys, key))

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self._keys, max(prefix, start or b""))
        keys = []
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            keys.append(self._keys[i])
            i += 1
        for k in keys:
            yield k, self._data[k]

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes], sync: bool = False) -> None:
        for k in deletes:
            self.delete(k)
        for k, v in puts.items():
            self.put(k, v)


def _write_error(e: Exception) -> MeshError:
    """RocksDB raises a bare Exception; name the usual cause."""
    text = str(e)
    if "No space" in text or "ENOSPC" in text:
        return NoSpace(f"metadata store: no space left on device ({text[:200]})")
    return MeshError(f"metadata store write failed: {text[:200]}")


class RocksKV(KV):
    """RocksDB through rocksdict, raw bytes keys and values.

    A full disk: a failed write raises :class:`~meshd.errors.NoSpace`. RocksDB
    then refuses every write until reopened (rocksdict has no ``resume()``),
    so the next failing write reopens it, at most every ``REOPEN_EVERY``
    seconds and only when the filesystem has ``REOPEN_MIN_FREE`` bytes free
    again. If a reopen fails the store is *unavailable*: gets miss, scans are
    empty and writes fail, which callers that cache (metadata) survive; it
    comes back with the next successful reopen.
    """

    REOPEN_EVERY = 10.0
    REOPEN_MIN_FREE = 16 << 20

    def __init__(self, path: str) -> None:
        self._path = path
        self._last_reopen = 0.0
        self._db: Any = self._open()

    def _open(self) -> Any:
        from rocksdict import Options, Rdict

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        return Rdict(self._path, options=opts)

    def _reopen(self) -> bool:
        now = time.monotonic()
        if now - self._last_reopen < self.REOPEN_EVERY:
            return False
        self._last_reopen = now
        try:
            st = os.statvfs(self._path)
            if st.f_bavail * st.f_frsize < self.REOPEN_MIN_FREE:
                return False
        except OSError:
            return False
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
        try:
            self._db = self._open()
        except Exception as e:
            log.error("metadata store unavailable, will retry: %s", str(e)[:200])
            return False
        log.warning("metadata store reopened after a write failure")
        return True

    def _guard(self, fn: Callable[[Any], None]) -> None:
        if self._db is None and not self._reopen():
            raise MeshError("metadata store is unavailable (disk full?)")
        try:
            fn(self._db)
            return
        except Exception as e:
            first = e
        if self._reopen():
            try:
                fn(self._db)
                return
            except Exception:
                pass
        raise _write_error(first) from None

    def get(self, key: bytes) -> bytes | None:
        if self._db is None:
            return None
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._guard(lambda db: db.__setitem__(key, value))

    def delete(self, key: bytes) -> None:
        self._guard(lambda db: db.__delitem__(key))

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if self._db is None:
            return
        it = self._db.iter()
        it.seek(max(prefix, start or b""))
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    def count(self, prefix: bytes) -> int:
        if self._db is None:
            return 0
        it = self._db.iter()
        it.seek(prefix)
        n = 0
        while it.valid() and bytes(it.key()).startswith(prefix):
            n += 1
            it.next()
        return n

    def purge(self, prefix: bytes) -> None:
        """Flush the memtable (the WAL holding the old values is then dropped) and rewrite
        the SST files holding ``prefix``, down to the bottom level: RocksDB keeps
        overwritten values until a compaction reaches them."""
        from rocksdict import BottommostLevelCompaction, CompactOptions

        if self._db is None:
            return
        opts = CompactOptions()
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        try:
            self._db.flush()
            self._db.compact_range(prefix, end, opts)
        except Exception as e:  # a full disk: the next purge (next start) tries again
            log.warning("metadata store: cannot compact %r: %s", prefix, str(e)[:200])

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes], sync: bool = False) -> None:
        from rocksdict import WriteBatch, WriteOptions

        def write(db: Any) -> None:
            wb = WriteBatch(raw_mode=True)  # rebuilt per attempt: a write consumes it
            for k in deletes:
                wb.delete(k)
            for k, v in puts.items():
                wb.put(k, v)
            if sync:
                opts = WriteOptions()
                opts.sync = True
                db.write(wb, opts)
            else:
                db.write(wb)

        self._guard(write)

    def close(self) -> None:
        if self._db is None:
            return
        try:
            self._db.close()
        except Exception as e:  # e.g. a final flush on a full disk: the WAL keeps the data
            log.warning("closing the metadata store: %s", str(e)[:200])
        self._db = None
