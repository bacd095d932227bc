"""A tiny ordered key-value interface, and its two implementations.

The metadata shard needs only: get, put, delete, a prefix scan and an atomic
batch. :class:`RocksKV` (rocksdict, i.e. RocksDB) is what nodes run;
:class:`MemoryKV` is the in-memory double for unit tests. Keys and values are
bytes; callers own their encoding.
"""

from __future__ import annotations

import abc
import bisect
from collections.abc import Iterator


class KV(abc.ABC):
    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        """Apply deletes then puts atomically."""

    def delete_prefix(self, prefix: bytes) -> int:
        keys = [k for k, _ in self.scan(prefix)]
        self.write_batch({}, keys)
        return len(keys)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


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

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self._keys, prefix)
        keys = []
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            keys.append(self._keys[i])
            i += 1
        for k in keys:
            yield k, self._data[k]

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        for k in deletes:
            self.delete(k)
        for k, v in puts.items():
            self.put(k, v)


class RocksKV(KV):
    """RocksDB through rocksdict, raw bytes keys and values."""

    def __init__(self, path: str) -> None:
        from rocksdict import Options, Rdict

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(path, options=opts)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        del self._db[key]

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    def write_batch(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k in deletes:
            wb.delete(k)
        for k, v in puts.items():
            wb.put(k, v)
        self._db.write(wb)

    def close(self) -> None:
        self._db.close()
