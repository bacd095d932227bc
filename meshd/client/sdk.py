"""A synchronous Python client for a node: what meshctl, meshfs and fsspec use.

Control calls go over gRPC, metadata calls over the node's metadata wire; file
bytes come from the node's short-circuit socket when it is on this machine
(page-file descriptors), else its HTTP data endpoint (one keep-alive
connection per thread), which the node serves with sendfile. Errors arrive as
:mod:`meshd.errors` exceptions, rebuilt from the kind the node sent.

Finding the node: ``endpoint`` argument, else ``$MESH_ENDPOINT``, else the
``endpoints.json`` of the default data directory. An endpoint is a gRPC
``host:port``, or a data directory / ``endpoints.json`` path.

In a cluster the client learns the region's members from the node (the
metadata wire's ``info``) and uses them two ways:

- ``stat`` and ``ls`` go straight to the key's owner, computed with the same
  ring the nodes use (one hop instead of two), falling back to the node it
  is connected to;
- when the node it talks to dies, it moves to the next member and carries
  on: a read that was cut mid-stream resumes at the byte it had reached, so
  the caller sees no error.

``MeshClient`` is assembled from one part per concern, each in its module:

- ``connection.py``: gRPC, the members, failover (``Connection``);
- ``metadata.py``: every metadata-wire call: ``open``, ``stat``, ``ls``... (``MetadataCalls``);
- ``routing.py``: reads split by page owner, resumed after a failure (``Routing``);
- ``shortcircuit.py``: the local socket's page files (``ShortCircuit``, ``page_pieces``);
- ``httpdata.py``: the HTTP data path, reads and ``put`` (``HttpData``);

and this module: the control calls and the read API that ties them together.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any

from meshd.auth.credentials import find_token
from meshd.client.base import (
    CHUNK,
    NodeUnreachable,
    Piece,
    ReadCut,
    Status,
    find_endpoint,
    pin_hint,
)
from meshd.client.httpdata import HttpData
from meshd.client.routing import Routing
from meshd.client.shortcircuit import ShortCircuit
from meshd.errors import NodeUnavailable
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc.messages import Report
from meshd.tls import ClientTLS, find_client_tls


class MeshClient(Routing, ShortCircuit, HttpData):
    def __init__(self, endpoint: str | None = None, timeout: float = 60.0, *, route: bool = True,
                 token: str | None = None, tls: ClientTLS | None = None) -> None:
        self.token = find_token(endpoint, token)  # None: only the node's own user gets in
        self._auth_md = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        # TLS: as given, else as $MESH_TLS_* / grpcs:// / the node's endpoints.json say (meshd/tls.py)
        self._tls = tls or find_client_tls(endpoint)
        self._ssl = self._tls.context() if self._tls is not None else None
        self.endpoint = find_endpoint(endpoint)
        self.timeout = timeout
        self._route = route
        self._peers = {}
        self._short_circuit = os.environ.get("MESH_SHORT_CIRCUIT", "1") not in ("0", "false", "no")
        self._lock = threading.Lock()
        self._generation = 0
        self.members = []
        self._ring = None
        self._wires = {}
        self._dead = set()
        self._suspect = {}
        self._connect(self.endpoint)

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- control calls (gRPC) ----------------------------------------------

    def rm(self, path: str, recursive: bool = False) -> int:
        return int(self._call("Delete", pb.DeleteRequest(path=path, recursive=recursive)).removed)

    def mkdir(self, path: str) -> None:
        self._call("Mkdir", pb.PathRequest(path=path))

    def rename(self, src: str, dst: str) -> None:
        self._call("Rename", pb.RenameRequest(src=src, dst=dst))

    def mount_add(self, path: str, uri: str, options: dict[str, str] | None = None,
                  check: bool = True) -> pb.MountInfo:
        return self._call("AddMount", pb.AddMountRequest(
            path=path, uri=uri, options=options or {}, no_check=not check))

    def mount_rm(self, path: str) -> pb.MountInfo:
        return self._call("RemoveMount", pb.PathRequest(path=path))

    def mounts(self) -> list[pb.MountInfo]:
        return list(self._call("ListMounts", pb.Empty()).mounts)

    def sync(self, path: str) -> int:
        return int(self._call("Sync", pb.PathRequest(path=path), timeout=3600).entries)

    def load(self, path: str) -> Iterator[pb.LoadProgress]:
        return self._stream("Load", pb.PathRequest(path=path))

    def free(self, path: str) -> int:
        return int(self._call("Free", pb.PathRequest(path=path)).bytes_freed)

    def writeback_status(self) -> dict[str, Any]:
        """The node's write-back: pending files and bytes, oldest age, upload rate per
        mount, retries, failing uploads (``writeback.status`` on the metadata wire)."""
        return dict(self._retrying(lambda: self._meta_once("writeback.status", {})))

    def writeback_flush(self, path: str, wait: bool = True, timeout: float | None = None) -> int:
        """Upload the write-back writes pending at or below ``path`` first; ``wait``: return
        once all are in their under-stores (UnderStoreError after ``timeout`` seconds).
        How many were pending."""
        limit = (timeout + 30 if timeout else 10 * 365 * 86400) if wait else None
        req = pb.WritebackFlushRequest(path=path, wait=wait, timeout=timeout or 0)
        return int(self._call("WritebackFlush", req, timeout=limit).pending)

    def report(self) -> dict[str, Any]:
        """The node's report with its region's members (``report`` on the metadata wire),
        checked against the one Report type (meshd/rpc/messages.py)."""
        return Report.from_wire(self._retrying(lambda: self._meta_once("report", {"m": True}))).to_wire()

    # ---- reads -------------------------------------------------------------

    def read_pinned(self, path: str, offset: int, length: int, *, version: str, size: int,
                    stream_id: str | None = None) -> bytes:
        """``length`` bytes at ``offset`` of ``path`` at ``version`` (fewer at the end), over
        HTTP or the local socket; VersionChanged if the file changed."""
        want = max(0, min(length, size - offset))
        buf = bytearray(min(want, CHUNK) or 1)
        out = bytearray()
        for n in self._read_direct(path, buf, offset, want, False, stream_id, {"version": version, "size": size}):
            out += memoryview(buf)[:n]
        return bytes(out)

    def read_chunks_into(self, path: str, buf: bytearray | memoryview, offset: int = 0,
                         length: int = -1, *, nocache: bool = False,
                         stream_id: str | None = None, pin: Status | None = None) -> Iterator[int]:
        """Fill ``buf`` again and again with the next bytes of the range; yields how many.

        The zero-allocation way to stream a file: short-circuit (``preadv`` of the
        node's page files) when the node is on this machine, HTTP otherwise. If the
        node dies mid-read, the rest of the range comes from another member.
        ``pin`` (a status from :meth:`open`): every request carries its version and
        size, so the bytes are that version's or the read fails with VersionChanged.
        """
        hint = pin_hint(pin)
        done, attempts = 0, 0
        while True:
            gen = self._generation
            try:
                rest = -1 if length < 0 else length - done
                for n in self._read_once(path, buf, offset + done, rest, nocache, stream_id, hint):
                    done += n
                    yield n
                return
            except (NodeUnavailable, ReadCut) as e:
                attempts += 1
                self._resume_or_raise(gen, attempts, e, path, hint)

    def _read_once(self, path: str, buf: bytearray | memoryview, offset: int, length: int,
                   nocache: bool, stream_id: str | None, pin: dict[str, Any] | None = None) -> Iterator[int]:
        plan = None if nocache else self._plan(path, offset, length, pin)
        if plan is None:
            yield from self._read_direct(path, buf, offset, length, nocache, stream_id, pin)
            return
        segments, hint = plan
        for member, off, n in segments:
            done = 0
            peer = self._peer(member)
            try:
                for k in (peer or self)._read_direct(path, buf, off, n, False, stream_id, hint):
                    done += k
                    yield k
                continue
            except (NodeUnavailable, ReadCut) as e:
                if peer is None:
                    raise
                self._drop_peer(member, e)
            yield from self._read_direct(path, buf, off + done, n - done, False, stream_id, hint)

    def _read_direct(self, path: str, buf: bytearray | memoryview, offset: int, length: int,
                     nocache: bool, stream_id: str | None, hint: dict[str, Any] | None = None) -> Iterator[int]:
        view = memoryview(buf)
        if self._sc() is not None:
            yield from self._sc_read_into(path, view, offset, length, nocache, stream_id, hint)
        else:
            yield from self._http_read_into(path, view, offset, length, nocache, stream_id, hint)

    def iter_read(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
                  chunk_size: int = CHUNK, stream_id: str | None = None,
                  pin: Status | None = None) -> Iterator[bytes]:
        buf = bytearray(chunk_size)
        for n in self.read_chunks_into(path, buf, offset, length, nocache=nocache, stream_id=stream_id,
                                       pin=pin):
            yield bytes(buf[:n])

    def cat(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
            stream_id: str | None = None, pin: Status | None = None) -> bytes:
        """The bytes of a range; ``pin`` as for :meth:`read_chunks_into`."""
        hint = pin_hint(pin)
        attempts = 0
        while True:
            gen = self._generation
            try:
                return self._cat_once(path, offset, length, nocache, stream_id, hint)
            except (NodeUnavailable, ReadCut) as e:
                attempts += 1
                self._resume_or_raise(gen, attempts, e, path, hint)

    def _cat_once(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                  pin: dict[str, Any] | None = None) -> bytes:
        plan = None if nocache else self._plan(path, offset, length, pin)
        if plan is None:
            return self._cat_direct(path, offset, length, nocache, stream_id, pin)
        segments, hint = plan
        parts = []
        for member, off, n in segments:
            peer = self._peer(member)
            try:
                parts.append((peer or self)._cat_direct(path, off, n, False, stream_id, hint))
                continue
            except (NodeUnavailable, ReadCut) as e:
                if peer is None:
                    raise
                self._drop_peer(member, e)
            parts.append(self._cat_direct(path, off, n, False, stream_id, hint))
        return b"".join(parts)

    def _cat_direct(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                    hint: dict[str, Any] | None = None) -> bytes:
        if self._sc() is not None:
            return self._sc_cat(path, offset, length, nocache, stream_id, hint)
        return self._http_cat(path, offset, length, nocache, stream_id, hint)

    def readinto(self, path: str, out: IO[bytes], offset: int = 0, length: int = -1, *,
                 nocache: bool = False, pin: Status | None = None) -> int:
        """Copy a range into a binary file object; returns the bytes copied."""
        n = 0
        for chunk in self.iter_read(path, offset, length, nocache=nocache, pin=pin):
            out.write(chunk)
            n += len(chunk)
        return n

    @staticmethod
    def new_stream_id() -> str:
        return uuid.uuid4().hex


__all__ = ["CHUNK", "MeshClient", "NodeUnreachable", "Piece", "ReadCut", "Status", "find_endpoint"]
