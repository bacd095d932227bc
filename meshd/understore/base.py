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

Kept versions (``capabilities.versions``: an S3 bucket with versioning on) are
the store's own: each write makes one, named by a *version id* (S3's
``x-amz-version-id``), and old ones stay readable until deleted by id. A read
of one passes ``version=version_pin(id)``: that exact version, from the store,
never another (its pages are keyed by the pin, so never shared with the
current version's). Stores without kept versions refuse the ``*_version``
methods (NotFound: no such version) and say ``versioning() == ""``.

Implementations register by URI scheme (see ``meshd.understore``) and all pass
``tests/test_understore_conformance.py``.
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from meshd.attrs import AttrChange, Attrs
from meshd.errors import AlreadyExists, MountError, NotPermitted, NotSupported, VersionChanged

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    path: str  # relative to the mount root
    size: int
    mtime: float  # seconds since the epoch
    version: str  # "" for directories
    is_dir: bool = False
    attrs: Attrs | None = None  # mode, owner, times, link target: None when the store keeps none
    version_id: str | None = None  # the store's id of the kept version a write made (S3 x-amz-version-id)


VERSION_PIN = "vid:"  # a ``version`` naming one kept version of the store by its id


def version_pin(version_id: str) -> str:
    """The ``version`` argument of a read of the kept version ``version_id``."""
    return VERSION_PIN + version_id


def pinned_version_id(version: str | None) -> str | None:
    """The kept version's id a ``version`` pins (:func:`version_pin`); None for any other."""
    if version and version.startswith(VERSION_PIN):
        return version[len(VERSION_PIN):]
    return None


@dataclass(frozen=True)
class ObjectVersion:
    """One kept version of a file, or a delete marker (a version saying "deleted")."""

    path: str  # relative to the mount root (a mesh path once the facade hands it out)
    version_id: str  # the store's id ("null": the version made while versioning was off)
    is_latest: bool  # the current version (known in listings; False where not known)
    delete_marker: bool = False
    size: int = 0
    mtime: float = 0.0
    etag: str = ""  # the store's ETag, unquoted ("" for a delete marker)

    @property
    def pin(self) -> str:
        """The ``version`` a read of exactly this version passes (pages keyed by it)."""
        return version_pin(self.version_id)


@dataclass(frozen=True)
class VersionPage:
    """One page of a listing of kept versions, in the store's order (key, newest first)."""

    versions: list[ObjectVersion]
    prefixes: list[str]  # common prefixes (with a delimiter), ending in it
    truncated: bool
    next_path: str = ""  # where the next page starts: a path and a version id
    next_version_id: str = ""


@dataclass(frozen=True)
class Capabilities:
    rename: bool = False  # atomic rename of files (and directories)
    directories: bool = False  # real directories (False: prefixes / markers)
    append: bool = False  # bytes can be added at the end of a file in place
    attrs: bool = False  # keeps mode, owner and times (``setattr``), returns them in ``attrs``
    symlinks: bool = False  # ``symlink``: links shown as links (``attrs.target``)
    links: bool = False  # ``link``: hard links
    special: bool = False  # ``mknod``: FIFOs, sockets, device nodes
    max_size: int = 0  # the largest file the store holds (0: the file system says, with EFBIG)
    versions: bool = False  # keeps old versions when versioning is on (``versioning``, ``*_version``)


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
    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        """Create or replace a whole file from a stream of chunks. A replaced file keeps
        its mode and owner (stores with ``capabilities.attrs``); ``change`` sets
        attributes of the new version (ignored by stores that keep none). ``exclusive``:
        AlreadyExists if something is at ``path`` (checked as atomically as the store can:
        a hard link on POSIX, ``If-None-Match: *`` on S3). ``if_version``: replace only
        the file at that version (a compare-and-swap): VersionChanged if another is
        there, NotFound if none is (checked as atomically as the store can: under a lock
        of the directory on POSIX, ``If-Match`` on S3; :func:`check_version` otherwise)."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove a file or an empty directory; missing is not an error."""

    @abc.abstractmethod
    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        """Create a directory (and its parents); existing is not an error. ``change``:
        the new directory's mode, owner, times (not its parents'; ignored by stores
        that keep none)."""

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        """Change mode, owner, times or extra attributes of a file or directory (a symlink
        itself, not what it names); the new status. ``capabilities.attrs``."""
        raise NotSupported(f"{self.scheme}:// under-stores keep no file attributes (mode, owner, times)")

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        """Create a symbolic link at ``path`` naming ``target`` (any string; not checked);
        AlreadyExists if something is there. ``capabilities.symlinks``."""
        raise NotSupported(f"{self.scheme}:// under-stores keep no symbolic links")

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        """Create a FIFO, socket or device node (``mode`` with its type bits);
        AlreadyExists if something is there. ``capabilities.special``."""
        raise NotSupported(f"{self.scheme}:// under-stores keep no special files")

    async def link(self, src: str, dst: str) -> ObjectInfo:
        """A hard link ``dst`` to the file ``src``; the file's new status (its ``nlink``).
        Stores without hard links: NotPermitted (EPERM, as Linux answers for a file
        system that has none)."""
        raise NotPermitted(f"{self.scheme}:// under-stores have no hard links")

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        """A copy of the file ``src`` (at ``version``, else its current one) at ``dst``,
        with its attributes; stores override it with a server-side copy."""
        info = await self.head(src)
        if info.is_dir:
            from meshd.errors import IsADirectory

            raise IsADirectory(f"cannot copy a directory: {self._shown(src)}")
        version = version or info.version
        change = _keep(info.attrs, info.mtime)
        return await self.put(dst, self.get_range(src, 0, info.size, version), change=change)

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        """Cut or extend (with zeros) the file at ``path`` to ``size`` bytes, as a new
        version; VersionChanged if it is no longer ``version``. Stores that can do it in
        place override this whole rewrite."""
        info = await self.head(path)
        if info.is_dir:
            from meshd.errors import IsADirectory

            raise IsADirectory(f"is a directory: {self._shown(path)}")
        keep = min(size, info.size)

        async def body() -> AsyncIterator[bytes]:
            if keep:
                async for c in self.get_range(path, 0, keep, version or info.version):
                    yield c
            left = size - keep
            while left > 0:
                n = min(left, 1 << 20)
                yield bytes(n)
                left -= n

        return await self.put(path, body())

    async def rename(self, src: str, dst: str) -> None:
        from meshd.errors import NotSupported

        raise NotSupported(f"rename is not supported by {self.scheme}:// under-stores")

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Add bytes at the end of an existing file (``capabilities.append``); NotFound
        when it does not exist. The mesh rewrites whole files on stores without it."""
        from meshd.errors import NotSupported

        raise NotSupported(f"append is not supported by {self.scheme}:// under-stores")

    async def check_absent(self, path: str) -> None:
        """AlreadyExists if something is at ``path`` (for ``exclusive`` writes of stores
        that cannot check atomically)."""
        from meshd.errors import NotFound

        try:
            await self.head(path)
        except NotFound:
            return
        raise AlreadyExists(f"already exists: {self._shown(path)}")

    async def check_version(self, path: str, version: str) -> None:
        """VersionChanged unless the file at ``path`` is at ``version``; NotFound if there is
        none (for ``if_version`` writes of stores that cannot check atomically, and to fail
        early, before a body is received)."""
        now = await self.head(path)
        if now.is_dir or now.version != version:
            raise VersionChanged(f"{self._shown(path)} is no longer at version {version}")

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

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        """Upload the local file ``src`` (``size`` bytes) as ``path``: what write-back
        uploads. ``token`` names this upload's temporary artefacts where the store picks
        the name (a temp file), and ``started(token)`` is awaited with the store's own
        name for them (an S3 upload id) before any byte is sent: after a crash,
        :meth:`abort_put` clears them. ``parallel``: requests in flight (S3
        parts); ``pace(n)``: awaited before ``n`` bytes are sent (a link's quota). This
        default streams the file through :meth:`put`."""
        return await self.put(path, file_chunks(src, size, pace=pace), change=change)

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:  # noqa: B027
        """Remove what an interrupted :meth:`put_file` left: the artefact ``started`` named
        (``token``), the temp file named after its ``token`` argument (``name``), and,
        ``since`` a time, any upload of ``path`` begun from then on whose name was never
        learnt (a crash between the store's answer and ``started``). Raises if the store
        cannot be asked (the caller keeps what it knows and tries again); a store that
        leaves nothing behind has nothing to do."""

    async def sweep_tmp(self, max_age: float) -> int:
        """Remove temporary files of writes that crashed (older than ``max_age`` seconds);
        how many were removed. Stores whose writes leave none have nothing to do."""
        return 0

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        parts = [c async for c in self.get_range(path, start, end, version)]
        return b"".join(parts)

    # ---- kept versions (``capabilities.versions``) ----------------------------

    async def versioning(self) -> str:
        """The store's versioning: ``"Enabled"``, ``"Suspended"`` or ``""`` (never on)."""
        return ""

    async def set_versioning(self, enabled: bool) -> None:
        """Turn versioning on (``Enabled``) or off (``Suspended``: kept versions stay)."""
        raise NotSupported(f"{self.scheme}:// under-stores keep no versions")

    async def head_version(self, path: str, version_id: str) -> ObjectVersion:
        """The kept version ``version_id`` of ``path`` (a delete marker too); NotFound."""
        from meshd.errors import NotFound

        raise NotFound(f"no such version of {self._shown(path)}: {self.scheme}:// under-stores keep none")

    async def delete_version(self, path: str, version_id: str) -> ObjectVersion:
        """Remove the kept version ``version_id`` of ``path`` for good (a delete marker
        too, which makes the version before it current again); what was removed."""
        from meshd.errors import NotFound

        raise NotFound(f"no such version of {self._shown(path)}: {self.scheme}:// under-stores keep none")

    async def list_versions(self, prefix: str, *, after_path: str = "", after_version_id: str = "",
                            limit: int = 1000, delimiter: str = "") -> VersionPage:
        """Kept versions and delete markers of the paths starting with the string
        ``prefix`` (not only a directory: ``dir/fi`` too), by path, newest first, after
        (``after_path``, ``after_version_id``), at most ``limit``; with ``delimiter``,
        paths with it after the prefix are rolled up into ``prefixes``."""
        raise NotSupported(f"{self.scheme}:// under-stores keep no versions")


def _keep(attrs: Attrs | None, mtime: float) -> AttrChange | None:
    """The change that gives a copy the mode, owner and mtime of ``attrs``."""
    if attrs is None:
        return None
    mode = attrs.mode & 0o7777 if attrs.mode is not None else None
    return AttrChange(mode, attrs.uid, attrs.gid, attrs.atime, mtime, dict(attrs.extra))


Pace = Callable[[int], Awaitable[None]]


async def file_chunks(src: str, size: int, piece: int = 8 << 20, pace: Pace | None = None) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of the local file ``src``, read in a thread a piece at a
    time (each after ``pace(len)``, when given)."""
    import asyncio
    import os

    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = 0
        while pos < size:
            data = await asyncio.to_thread(os.pread, fd, min(piece, size - pos), pos)
            if not data:
                raise OSError(f"{src} is shorter than {size} bytes")
            pos += len(data)
            if pace is not None:
                await pace(len(data))
            yield data
    finally:
        os.close(fd)


async def finished(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread. A cancellation waits until ``fn`` has returned, then
    propagates: a change a store is making (a PUT on the wire, a rename) is never still
    under way once its caller has moved on (a cancelled write-back upload must not land
    after the write that replaced it)."""
    import asyncio
    import functools

    fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise
