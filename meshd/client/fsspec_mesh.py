"""An fsspec filesystem for ``mesh://`` URLs, over :class:`meshd.client.sdk.MeshClient`.

``fsspec.open("mesh://datasets/train/part-0.parquet")`` and every library that
takes fsspec URLs (pandas, pyarrow datasets, Hugging Face datasets, torch
datapipes) read through the mesh. The host part of the URL is the first path
component: ``mesh://datasets/x`` is the mesh path ``/datasets/x``. The node is
found like meshctl finds it (``endpoint=`` storage option, ``$MESH_ENDPOINT``,
the default data directory).

Reads go through the client core's read-ahead policy (meshd/client/readahead.py),
chosen by name with the ``readahead`` option (of the filesystem, or of one
``open``): ``"none"`` (the default) fetches exactly the ranges fsspec asks
for (fsspec's own read-ahead cache on top is the usual ``cache_type``
option); ``"sequential"`` is meshfs's policy for a handle served bytes: a
sequential reader gets whole pages and the page ahead in one request, and the
pages past its read serve its next reads. A file opened for reading keeps the
version it was opened at: every range is read pinned to that version and
size, and if the file changed since, the read fails with ESTALE rather than
mix versions.

Metadata: with ``ttl=N`` (seconds, default 0: every call asks the node),
statuses and listings are kept N seconds in the client core's metadata cache
(meshd/client/metacache.py), as meshfs keeps them; this filesystem's own
changes drop them at once (``invalidate_cache`` drops them all). Opening a
file never uses them: it pins the status the node gives then.

Writes are whole-file: bytes are spooled to a temporary file and sent to the
node on close; ``"ab"`` starts from the file's bytes as they were at open (the
append fails with ESTALE if the file changed since). Exclusive create (``open(path,
"xb")``, ``pipe_file``/``put_file`` with ``mode="create"``) fails with
FileExistsError at once if the path is taken, and the write itself is exclusive at
the node: of two racing creators one gets FileExistsError, nothing is overwritten.
Write mode: ``write_mode="back"`` (a storage option, or per write:
``open(path, "wb", write_mode="back")``, ``pipe_file``/``put_file`` too) makes the
close return once the bytes are durable on the node, uploaded to the under-store in
the background (docs/SEMANTICS.md, "Write-back"); ``"through"`` once they are in the
under-store; unset, the mount's ``write_mode`` decides.
``cp_file``/``copy`` copy on the node (server-side within a store: a local copy on
POSIX, CopyObject on S3; streamed through the node between stores). Errors are
Python's built-in exceptions (FileNotFoundError, IsADirectoryError, ...).

``info`` shows the attributes the store keeps (meshd/attrs.py) under the names
fsspec's LocalFileSystem uses: ``mode`` (a whole st_mode), ``uid``, ``gid``,
``mtime``, ``atime``, ``created`` (ctime), ``ino``, ``nlink``, ``islink`` and
``destination`` (the target of a symlink); ``type`` is ``"other"`` for special
files and for a symlink that names nothing readable in the mesh. ``chmod``,
``chown`` and ``touch(path, truncate=False)`` (mtime and atime to now) change them.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from meshd.attrs import AttrChange
from meshd.client.base import write_mode
from meshd.client.metacache import MetaCache
from meshd.client.readahead import Cursor, get_policy, read_bytes
from meshd.client.sdk import MeshClient, Status
from meshd.errors import IsADirectory, MeshError, NotFound, to_oserror


@contextmanager
def _oserrors() -> Iterator[None]:
    try:
        yield
    except MeshError as e:
        raise to_oserror(e) from None


def _entry(s: Status) -> dict[str, Any]:
    """fsspec's info dict of a status, with the attributes the store keeps under
    LocalFileSystem's names."""
    a = s.attrs
    kind = "directory" if s.is_dir else "file"
    e: dict[str, Any] = {"name": s.path, "size": s.size, "type": kind, "mtime": s.mtime,
                         "version": s.version}
    if a is None:
        return e
    link = a.is_symlink
    if a.is_special or (link and not s.version and not s.is_dir):
        e["type"] = "other"  # no bytes to read: a FIFO, a device, a link naming nothing readable
    e["islink"] = link
    if link and a.target is not None:
        e["destination"] = a.target
    for name, v in (("mode", a.mode), ("uid", a.uid), ("gid", a.gid), ("atime", a.atime),
                    ("created", a.ctime), ("ino", a.ino), ("nlink", a.nlink)):
        if v is not None:
            e[name] = v
    return e


def _create_mode(mode: str) -> bool:
    """``True`` for fsspec's exclusive ``mode="create"``, ``False`` for ``"overwrite"``."""
    if mode not in ("create", "overwrite"):
        raise ValueError(f"mode must be 'create' or 'overwrite', not {mode!r}")
    return mode == "create"


def _mode(value: str | bool | None) -> bool | None:
    try:
        return write_mode(value)
    except MeshError as e:
        raise ValueError(str(e)) from None


class MeshFileSystem(AbstractFileSystem):
    protocol = "mesh"
    root_marker = "/"

    def __init__(self, endpoint: str | None = None, readahead: str = "none", ttl: float = 0.0,
                 write_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        # "back" | "through": every write's mode (per open: open(path, "wb", write_mode=...));
        # None: the mount's write_mode
        self.write_mode = _mode(write_mode)
        self.readahead = readahead
        get_policy(readahead)  # a bad name fails here, not at the first read
        self.ttl = ttl
        self._meta = MetaCache() if ttl > 0 else None
        self._client: MeshClient | None = None

    @property
    def client(self) -> MeshClient:
        if self._client is None:
            with _oserrors():
                self._client = MeshClient(self.endpoint)
        return self._client

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("mesh://"):
            path = path[len("mesh://"):]
        elif path.startswith("mesh:"):
            path = path[len("mesh:"):]
        return "/" + path.strip("/")

    def _stat(self, path: str) -> Status:
        """The status of ``path``, from the metadata cache while it keeps it (``ttl``)."""
        if self._meta is None:
            return self.client.stat(path)
        now = time.monotonic()
        hit, st = self._meta.get(path, now)
        if hit:
            if st is None:
                raise NotFound(f"not found: {path}")
            return st
        try:
            st = self.client.stat(path)
        except NotFound:
            self._meta.put(path, None, self.ttl, now)
            raise
        self._meta.put(path, st, self.ttl, now)
        return st

    def _ls(self, path: str) -> list[Status]:
        """The entries of directory ``path``, from the metadata cache while it keeps them."""
        if self._meta is None:
            return self.client.ls(path)
        now = time.monotonic()
        got = self._meta.listing(path, now)
        if got is None:
            got = self.client.ls(path)
            for s in got:
                self._meta.put(s.path, s, self.ttl, now)
            self._meta.keep_listing(path, got, self.ttl, now)
        return got

    def _changed(self, path: str) -> None:
        """``path`` was changed through this filesystem: forget what is kept of it and its parent."""
        if self._meta is not None:
            self._meta.invalidate(path)
            self._meta.forget_under(path)

    def invalidate_cache(self, path: str | None = None) -> None:
        if self._meta is not None:
            if path is None:
                self._meta.clear()
            else:
                self._changed(self._strip_protocol(path))
        super().invalidate_cache(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        with _oserrors():
            st = self._stat(path)
            entries = [_entry(s) for s in self._ls(path)] if st.is_dir else [_entry(st)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        with _oserrors():
            return _entry(self._stat(self._strip_protocol(path)))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        with _oserrors():
            if (start is not None and start < 0) or (end is not None and end < 0):
                size = self.client.stat(path).size
                start = max(0, size + start) if start is not None and start < 0 else start
                end = max(0, size + end) if end is not None and end < 0 else end
            offset = start or 0
            length = -1 if end is None else max(0, end - offset)
            return self.client.cat(path, offset, length)

    def _writeback(self, kwargs: dict[str, Any]) -> bool | None:
        """A call's ``write_mode`` (``"back"`` / ``"through"``), else the filesystem's."""
        given = _mode(kwargs.get("write_mode"))
        return self.write_mode if given is None else given

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` as the whole file; ``mode="create"``: FileExistsError if the path
        is taken (checked by the node as it commits). ``write_mode``: ``"back"`` or
        ``"through"`` for this write."""
        path = self._strip_protocol(path)
        exclusive = _create_mode(mode)
        wb = self._writeback(kwargs)
        try:
            with _oserrors():
                self.client.put(path, value, exclusive=exclusive, writeback=wb)
        finally:
            self._changed(path)

    def put_file(self, lpath: str, rpath: str, callback: Callback = DEFAULT_CALLBACK,
                 mode: str = "overwrite", **kwargs: Any) -> None:
        """Send a local file, streamed straight from it; a local directory makes one.
        ``mode="create"``: FileExistsError if ``rpath`` is taken."""
        rpath = self._strip_protocol(rpath)
        exclusive = _create_mode(mode)
        wb = self._writeback(kwargs)
        if os.path.isdir(lpath):
            if exclusive and self.exists(rpath):
                raise FileExistsError(errno.EEXIST, "already exists", rpath)
            self.makedirs(rpath, exist_ok=True)
            return
        with open(lpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            callback.set_size(size)

            def chunks() -> Iterator[bytes]:
                while chunk := f.read(1 << 20):
                    yield chunk
                    callback.relative_update(len(chunk))

            try:
                with _oserrors():
                    self.client.put(rpath, chunks(), exclusive=exclusive, writeback=wb)
            finally:
                self._changed(rpath)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy one file on the node (server-side within a store); a directory makes an
        empty one at ``path2`` (``copy(..., recursive=True)`` then copies its files)."""
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        try:
            with _oserrors():
                try:
                    self.client.copy(src, dst)
                except IsADirectory:
                    if not self._stat(src).is_dir:
                        raise
                    self.client.mkdir(dst)
        finally:
            self._changed(dst)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits (``mode & 0o7777``), in the store's own terms."""
        self._setattr(path, AttrChange(mode=mode & 0o7777))

    def chown(self, path: str, uid: int | None = None, gid: int | None = None) -> None:
        """Set the owner and/or group (PermissionError where the node's process may not)."""
        self._setattr(path, AttrChange(uid=uid, gid=gid))

    def _setattr(self, path: str, change: AttrChange) -> None:
        path = self._strip_protocol(path)
        try:
            with _oserrors():
                self.client.setattr(path, change)
        finally:
            self._changed(path)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        """Create an empty file; ``truncate=False`` on an existing one sets its mtime and
        atime to now and leaves its bytes."""
        path = self._strip_protocol(path)
        if not truncate:
            now = time.time()
            try:
                with _oserrors():
                    self.client.setattr(path, AttrChange(atime=now, mtime=now))
                return
            except FileNotFoundError:
                pass
            finally:
                self._changed(path)
        self.pipe_file(path, b"")

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        with _oserrors():
            self.client.rm(path)
        self._changed(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = path if isinstance(path, list) else [path]
        with _oserrors():
            for p in paths:
                self.client.rm(self._strip_protocol(p), recursive=recursive)
        self.invalidate_cache()

    def mkdir(self, path: str, create_parents: bool = True, mode: int | None = None, **kwargs: Any) -> None:
        """Make a directory and its parents (an existing one is no error); ``mode``: its
        permission bits."""
        path = self._strip_protocol(path)
        with _oserrors():
            if mode is None:
                self.client.mkdir(path)
            else:
                self.client.mkdir_with(path, AttrChange(mode=mode & 0o7777))
        self._changed(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if not exist_ok and self.exists(path):
            raise FileExistsError(path)
        self.mkdir(path)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        with _oserrors():
            self.client.rename(src, dst)
        self._changed(src)
        self._changed(dst)

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> MeshFile:
        return MeshFile(self, self._strip_protocol(path), mode, block_size or "default",
                        autocommit, cache_options=cache_options, **kwargs)


class MeshFile(AbstractBufferedFile):
    """A mesh file. Opened for reading, it is pinned to the status it had at open
    (``pin``): its ``size`` is that size, and every range is read at that version,
    as the read-ahead policy ``readahead`` (a name; the filesystem's by default) says.
    Opened for writing, its bytes are spooled and sent as the whole file on close:
    ``"xb"`` fails at open if the path is taken and commits exclusively; ``"ab"``
    starts from the bytes of the version it had at open (``pin``)."""

    fs: MeshFileSystem

    def __init__(self, fs: MeshFileSystem, path: str, mode: str = "rb", block_size: Any = "default",
                 autocommit: bool = True, readahead: str | None = None, write_mode: str | None = None,
                 **kwargs: Any) -> None:
        self._spool: Any = None
        self._writeback = fs._writeback({"write_mode": write_mode})
        self._stream_id = MeshClient.new_stream_id()
        self._policy = get_policy(readahead or fs.readahead)
        self.pin: Status | None = None
        if mode == "rb":
            with _oserrors():
                self.pin = fs.client.open(path)
            if self.pin.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            kwargs["size"] = self.pin.size
            self.details = _entry(self.pin)
            self._cursor = Cursor(fs.client.page_size or (4 << 20), self.pin.size, bytes_only=True)
        elif mode in ("xb", "ab"):
            try:
                with _oserrors():
                    st = fs.client.open(path)
            except FileNotFoundError:
                st = None
            if st is not None and mode == "xb":
                raise FileExistsError(errno.EEXIST, "already exists", path)
            if st is not None and st.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            self.pin = st
        super().__init__(fs, path, mode, block_size, autocommit, **kwargs)
        if mode == "ab" and self.pin is not None:
            self.loc = self.pin.size

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _oserrors():
            return read_bytes(self._policy, self._cursor, start, end, self._fetch)

    def _fetch(self, offset: int, length: int) -> bytes:
        return self.fs.client.cat(self.path, offset, length, stream_id=self._stream_id, pin=self.pin)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        if self.mode == "ab" and self.pin is not None and self.pin.size:
            with _oserrors():
                self.fs.client.readinto(self.path, self._spool, 0, self.pin.size, pin=self.pin)

    def _upload_chunk(self, final: bool = False) -> bool:
        if self._spool is None:
            self._initiate_upload()
        self.buffer.seek(0)
        self._spool.write(self.buffer.read())
        if final:
            self._spool.seek(0)

            def chunks() -> Iterator[bytes]:
                while chunk := self._spool.read(1 << 20):
                    yield chunk

            try:
                with _oserrors():
                    self.fs.client.put(self.path, chunks(), exclusive=self.mode == "xb",
                                       writeback=self._writeback)
            finally:
                self.fs._changed(self.path)
                self._spool.close()
        return True
