"""An fsspec filesystem for ``mesh://`` URLs, over :class:`meshd.client.sdk.MeshClient`.

``fsspec.open("mesh://datasets/train/part-0.parquet")`` and every library that
takes fsspec URLs (pandas, pyarrow datasets, Hugging Face datasets, torch
datapipes) read through the mesh. The host part of the URL is the first path
component: ``mesh://datasets/x`` is the mesh path ``/datasets/x``. The node is
found like meshctl finds it (``endpoint=`` storage option, ``$MESH_ENDPOINT``,
the default data directory).

Reads fetch exactly the requested ranges (fsspec's read-ahead cache on top is
the usual ``cache_type`` option). A file opened for reading keeps the version
it was opened at: every range is read pinned to that version and size, and if
the file changed since, the read fails with ESTALE rather than mix versions.
Writes are whole-file: bytes are spooled to a temporary file and sent to the
node on close. Errors are Python's built-in exceptions (FileNotFoundError,
IsADirectoryError, ...).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from meshd.client.sdk import MeshClient, Status
from meshd.errors import MeshError, to_oserror


@contextmanager
def _oserrors() -> Iterator[None]:
    try:
        yield
    except MeshError as e:
        raise to_oserror(e) from None


def _entry(s: Status) -> dict[str, Any]:
    return {"name": s.path, "size": s.size, "type": "directory" if s.is_dir else "file",
            "mtime": s.mtime, "version": s.version}


class MeshFileSystem(AbstractFileSystem):
    protocol = "mesh"
    root_marker = "/"

    def __init__(self, endpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
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

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        with _oserrors():
            st = self.client.stat(path)
            entries = [_entry(s) for s in self.client.ls(path)] if st.is_dir else [_entry(st)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        with _oserrors():
            return _entry(self.client.stat(self._strip_protocol(path)))

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

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        with _oserrors():
            self.client.put(self._strip_protocol(path), value)

    def _rm(self, path: str) -> None:
        with _oserrors():
            self.client.rm(self._strip_protocol(path))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = path if isinstance(path, list) else [path]
        with _oserrors():
            for p in paths:
                self.client.rm(self._strip_protocol(p), recursive=recursive)
        self.invalidate_cache()

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        with _oserrors():
            self.client.mkdir(self._strip_protocol(path))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if not exist_ok and self.exists(path):
            raise FileExistsError(path)
        self.mkdir(path)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        with _oserrors():
            self.client.rename(self._strip_protocol(path1), self._strip_protocol(path2))

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> MeshFile:
        return MeshFile(self, self._strip_protocol(path), mode, block_size or "default",
                        autocommit, cache_options=cache_options, **kwargs)


class MeshFile(AbstractBufferedFile):
    """A mesh file. Opened for reading, it is pinned to the status it had at open
    (``pin``): its ``size`` is that size, and every range is read at that version."""

    fs: MeshFileSystem

    def __init__(self, fs: MeshFileSystem, path: str, mode: str = "rb", block_size: Any = "default",
                 autocommit: bool = True, **kwargs: Any) -> None:
        self._spool: Any = None
        self._stream_id = MeshClient.new_stream_id()
        self.pin: Status | None = None
        if mode == "rb":
            with _oserrors():
                self.pin = fs.client.open(path)
            if self.pin.is_dir:
                raise IsADirectoryError(f"is a directory: {path}")
            kwargs["size"] = self.pin.size
            self.details = _entry(self.pin)
        super().__init__(fs, path, mode, block_size, autocommit, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _oserrors():
            return self.fs.client.cat(self.path, start, max(0, end - start), stream_id=self._stream_id,
                                      pin=self.pin)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)

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

            with _oserrors():
                self.fs.client.put(self.path, chunks())
            self._spool.close()
        return True
