"""The under-store contract: the only thing the mesh asks of a real store.

Every operation is idempotent (a retry after an unknown outcome is safe):
``put`` replaces, ``delete`` of a missing object succeeds, ``mkdir`` of an
existing directory succeeds. Paths are relative to the mount root, use ``/``
and never start with one (``""`` is the root itself).

An object's *version* is an opaque string that changes whenever its bytes do
(an S3 ETag; ``mtime_ns-size-inode`` for POSIX). The page cache keys pages by it,
so a changed object is a different key and can never be served stale.
``get_range(..., version=v)`` fails with :class:`~meshd.errors.VersionChanged`
instead of returning bytes of another version.

Implementations register by URI scheme (see ``meshd.understore``) and all pass
``tests/test_understore_conformance.py``.
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from meshd.errors import MountError


@dataclass(frozen=True)
class ObjectInfo:
    path: str  # relative to the mount root
    size: int
    mtime: float  # seconds since the epoch
    version: str  # "" for directories
    is_dir: bool = False


@dataclass(frozen=True)
class Capabilities:
    rename: bool = False  # atomic rename of files (and directories)
    directories: bool = False  # real directories (False: prefixes / markers)
    append: bool = False  # bytes can be added at the end of a file in place


def without_userinfo(url: str) -> str:
    """``url`` without the ``user:password@`` it may carry: how logs and messages name it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def check_options(scheme: str, options: Iterable[str], known: Iterable[str]) -> None:
    """MountError for the first option of ``options`` not in ``known``, with the closest
    known name (a misspelt ``read_only`` must not mount writable)."""
    known = sorted(set(known))
    for key in sorted(options):
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise MountError(f"unknown {scheme} mount option {key!r}{hint} ({scheme} mounts take: "
                         f"{', '.join(known) or 'none'})")


class UnderStore(abc.ABC):
    """Async interface over one under-store location (a mount's URI)."""

    scheme: str = ""
    capabilities = Capabilities()
    OPTIONS: frozenset[str] = frozenset()  # the mount options this store takes (others are refused)

    def __init__(self, uri: str, options: Mapping[str, str]) -> None:
        self.uri = uri
        self.options = dict(options)
        self.shown = uri  # what error messages call the root: the mount table sets the mesh path

    def _shown(self, path: str) -> str:
        """``path`` (relative to the root) as error messages name it: the mesh path once mounted."""
        root = self.shown.rstrip("/")
        return f"{root}/{path}" if path else (self.shown or "/")

    @abc.abstractmethod
    async def head(self, path: str) -> ObjectInfo:
        """Status of a file or directory; NotFound when neither exists."""

    @abc.abstractmethod
    async def list(self, path: str) -> list[ObjectInfo]:
        """Direct children of a directory, sorted by name; NotFound/NotADirectory."""

    @abc.abstractmethod
    def get_range(
        self, path: str, start: int, end: int, version: str | None = None, *, chunk: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a file, clipped at its size, as ONE request to the
        store. ``chunk``: read the source at most this many bytes at a time, each piece
        only when the consumer asks for the next one (a reader pacing a quota'd link sets
        its grain: the socket is then read at the quota's pace and TCP holds the sender
        back). None: the store's own read size."""

    @abc.abstractmethod
    async def put(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Create or replace a whole file from a stream of chunks."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove a file or an empty directory; missing is not an error."""

    @abc.abstractmethod
    async def mkdir(self, path: str) -> None:
        """Create a directory (and its parents); existing is not an error."""

    async def rename(self, src: str, dst: str) -> None:
        from meshd.errors import NotSupported

        raise NotSupported(f"rename is not supported by {self.scheme}:// under-stores")

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Add bytes at the end of an existing file (``capabilities.append``); NotFound
        when it does not exist. The mesh rewrites whole files on stores without it."""
        from meshd.errors import NotSupported

        raise NotSupported(f"append is not supported by {self.scheme}:// under-stores")

    def limit_receive_buffer(self, nbytes: int) -> bool:
        """Give the store's connections opened from now on a fixed ``nbytes`` TCP receive
        buffer (SO_RCVBUF: Linux then stops growing it). A reader pacing a quota'd link
        needs it: the window it advertises is then known and small, so the store cannot
        put megabytes on the wire past the quota. False when the store cannot."""
        return False

    async def check(self) -> None:
        """Verify the store is reachable with the given options (at mount time)."""
        await self.head("")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""

    async def sweep_tmp(self, max_age: float) -> int:
        """Remove temporary files of writes that crashed (older than ``max_age`` seconds);
        how many were removed. Stores whose writes leave none have nothing to do."""
        return 0

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        parts = [c async for c in self.get_range(path, start, end, version)]
        return b"".join(parts)
