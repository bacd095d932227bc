"""A synchronous Python client for a node: what meshctl and fsspec use.

Control and metadata calls go over gRPC; file bytes go over the node's HTTP
data endpoint (one keep-alive connection per thread), which the node serves
with sendfile. Errors arrive as :mod:`meshd.errors` exceptions, rebuilt from
the kind the node sent.

Finding the node: ``endpoint`` argument, else ``$MESH_ENDPOINT``, else the
``endpoints.json`` of the default data directory. An endpoint is a gRPC
``host:port``, or a data directory / ``endpoints.json`` path.
"""

from __future__ import annotations

import array
import http.client
import json
import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlsplit

import grpc

from .config import default_data_dir
from .errors import InvalidArgument, MeshError, NodeUnavailable, UnderStoreError, from_kind
from .rpc import mesh_pb2 as pb
from .rpc import mesh_pb2_grpc as pb_grpc

T = TypeVar("T")
CHUNK = 1 << 20
_SC_MAX = (128 << 10) + 64
_FD_HEADER = struct.Struct("<cQQ")  # as meshd.shortcircuit.FD_HEADER
_GRPC_TO_KIND = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.UNIMPLEMENTED: "NotSupported",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
}


class NodeUnreachable(NodeUnavailable):
    """No node answers at the endpoint."""


@dataclass(frozen=True)
class Status:
    path: str
    size: int
    mtime: float
    version: str
    is_dir: bool


def _status(s: pb.FileStatus) -> Status:
    return Status(s.path, s.size, s.mtime, s.version, s.is_dir)


def find_endpoint(endpoint: str | None = None) -> str:
    """The gRPC ``host:port`` of the node to talk to."""
    candidate = endpoint or os.environ.get("MESH_ENDPOINT") or default_data_dir()
    if "://" not in candidate and "/" in candidate and not candidate.endswith(".json"):
        candidate = os.path.join(candidate, "endpoints.json")  # a data directory, existing or not
    if candidate.endswith(".json"):
        try:
            with open(candidate) as f:
                return str(json.load(f)["grpc"])
        except FileNotFoundError:
            raise NodeUnreachable(f"no running node found: {candidate} does not exist "
                                  "(start one with `meshd embedded`, or pass --endpoint)") from None
        except (ValueError, KeyError) as e:
            raise NodeUnreachable(f"{candidate} is not a valid endpoints.json: {e}") from None
    if candidate.startswith(("http://", "grpc://")):
        candidate = urlsplit(candidate).netloc
    return candidate


class MeshClient:
    def __init__(self, endpoint: str | None = None, timeout: float = 60.0) -> None:
        self.endpoint = find_endpoint(endpoint)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(self.endpoint, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self._stub = pb_grpc.MeshStub(self._channel)
        self._local = threading.local()
        info = self._call(self._stub.GetInfo, pb.Empty())
        self.node_id = info.node_id
        self.endpoints = dict(info.endpoints)
        self.page_size = info.page_size
        self._local_sock = self.endpoints.get("local", "")
        self._short_circuit = os.environ.get("MESH_SHORT_CIRCUIT", "1") not in ("0", "false", "no")
        http_url = urlsplit(self.endpoints["http"])
        self._http_host, self._http_port = http_url.hostname or "127.0.0.1", http_url.port or 80

    def close(self) -> None:
        self._channel.close()
        for name in ("conn", "sc"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- gRPC ------------------------------------------------------------

    def _error(self, e: grpc.RpcError) -> MeshError:
        kind = ""
        for key, value in (e.trailing_metadata() or ()):
            if key == "mesh-error-kind":
                kind = value
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and not kind:
            return NodeUnreachable(f"node at {self.endpoint} is unreachable: {e.details()}")
        return from_kind(kind or _GRPC_TO_KIND.get(code, "MeshError"), e.details() or str(code))

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        try:
            yield from method(request)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def stat(self, path: str) -> Status:
        return _status(self._call(self._stub.Stat, pb.PathRequest(path=path)))

    def ls(self, path: str) -> list[Status]:
        return [_status(s) for s in self._call(self._stub.List, pb.PathRequest(path=path)).entries]

    def rm(self, path: str, recursive: bool = False) -> int:
        return int(self._call(self._stub.Delete, pb.DeleteRequest(path=path, recursive=recursive)).removed)

    def mkdir(self, path: str) -> None:
        self._call(self._stub.Mkdir, pb.PathRequest(path=path))

    def rename(self, src: str, dst: str) -> None:
        self._call(self._stub.Rename, pb.RenameRequest(src=src, dst=dst))

    def mount_add(self, path: str, uri: str, options: dict[str, str] | None = None,
                  check: bool = True) -> pb.MountInfo:
        return self._call(self._stub.AddMount, pb.AddMountRequest(
            path=path, uri=uri, options=options or {}, no_check=not check))

    def mount_rm(self, path: str) -> pb.MountInfo:
        return self._call(self._stub.RemoveMount, pb.PathRequest(path=path))

    def mounts(self) -> list[pb.MountInfo]:
        return list(self._call(self._stub.ListMounts, pb.Empty()).mounts)

    def sync(self, path: str) -> int:
        return int(self._call(self._stub.Sync, pb.PathRequest(path=path), timeout=3600).entries)

    def load(self, path: str) -> Iterator[pb.LoadProgress]:
        return self._stream(self._stub.Load, pb.PathRequest(path=path))

    def free(self, path: str) -> int:
        return int(self._call(self._stub.Free, pb.PathRequest(path=path)).bytes_freed)

    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._call(self._stub.Report, pb.Empty()).json)
        return result

    # ---- short-circuit local reads (see meshd/shortcircuit.py) ------------

    def _sc(self) -> socket.socket | None:
        """This thread's connection to the node's local socket, or None (use HTTP)."""
        if not (self._short_circuit and self._local_sock):
            return None
        sock = getattr(self._local, "sc", None)
        if sock is None:
            if getattr(self._local, "sc_failed", False):
                return None
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.connect(self._local_sock)
            except OSError:
                self._local.sc_failed = True  # another machine, or no permission: HTTP it is
                return None
            self._local.sc = sock
        return sock

    def _sc_messages(self, path: str, offset: int, length: int, nocache: bool,
                     stream_id: str | None) -> Iterator[tuple[bytes, Any, int]]:
        """Yield ("H", header, 0), then ("F", (fd, page_offset), length) / ("D", bytes, length)."""
        sock = self._sc()
        assert sock is not None
        req = {"path": path, "offset": offset, "length": length, "nocache": nocache, "stream": stream_id}
        done = False
        try:
            sock.sendall(json.dumps(req).encode())
            while True:
                msg, anc, flags, _ = sock.recvmsg(_SC_MAX, socket.CMSG_SPACE(4))
                if not msg:
                    raise UnderStoreError("node closed the local socket mid-read")
                if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                    for lvl, typ, data in anc:
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                            for fd in array.array("i", data):
                                os.close(fd)
                    raise UnderStoreError("short-circuit message truncated")
                kind = msg[:1]
                if kind == b"F":
                    fds = [fd for lvl, typ, data in anc if lvl == socket.SOL_SOCKET
                           and typ == socket.SCM_RIGHTS for fd in array.array("i", data)]
                    if len(fds) != 1:
                        raise UnderStoreError("short-circuit page arrived without its descriptor")
                    _, off, n = _FD_HEADER.unpack(msg)
                    try:
                        yield b"F", (fds[0], off), n
                    finally:
                        os.close(fds[0])
                elif kind == b"D":
                    yield b"D", msg[1:], len(msg) - 1
                elif kind == b"H":
                    yield b"H", json.loads(msg[1:]), 0
                elif kind == b"E":
                    done = True
                    return
                elif kind == b"X":
                    done = True
                    err = json.loads(msg[1:])
                    raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
                else:
                    raise UnderStoreError(f"unexpected short-circuit message {kind!r}")
        finally:
            if not done:  # abandoned mid-read: the connection is out of step, drop it
                sock.close()
                self._local.sc = None

    def read_chunks_into(self, path: str, buf: bytearray | memoryview, offset: int = 0,
                         length: int = -1, *, nocache: bool = False,
                         stream_id: str | None = None) -> Iterator[int]:
        """Fill ``buf`` again and again with the next bytes of the range; yields how many.

        The zero-allocation way to stream a file: short-circuit (``preadv`` of the
        node's page files) when the node is on this machine, HTTP otherwise.
        """
        view = memoryview(buf)
        if self._sc() is not None:
            for kind, payload, n in self._sc_messages(path, offset, length, nocache, stream_id):
                if kind == b"F":
                    fd, off = payload
                    while n > 0:
                        k = os.preadv(fd, [view[:min(n, len(view))]], off)
                        if k <= 0:
                            raise UnderStoreError(f"cache page of {path} is shorter than announced")
                        off += k
                        n -= k
                        yield k
                elif kind == b"D":
                    pos = 0
                    while pos < n:
                        k = min(n - pos, len(view))
                        view[:k] = payload[pos:pos + k]
                        pos += k
                        yield k
            return
        resp, remaining = self.open_read(path, offset, length, nocache=nocache, stream_id=stream_id)
        while remaining > 0:
            k = resp.readinto(view[:min(remaining, len(view))])
            if not k:
                self._local.conn = None
                raise UnderStoreError(f"read of {path} ended {remaining} bytes early (node aborted it)")
            remaining -= k
            yield k

    # ---- HTTP data path --------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._http_host, self._http_port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, query: str = "", body: Any = None,
                 headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        url = "/v1/files" + quote(path if path.startswith("/") else "/" + path, safe="/") + query
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, url, body=body, headers=headers or {},
                             encode_chunked=(headers or {}).get("Transfer-Encoding") == "chunked")
                return conn.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                # a kept-alive connection may have been closed by the node: retry once on a new one
                if attempt or (body is not None and not isinstance(body, bytes | bytearray)):
                    raise NodeUnreachable(f"node HTTP endpoint {self._http_host}:{self._http_port}: {e}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse) -> None:
        if resp.status < 300:
            return
        raw = resp.read()
        try:
            err = json.loads(raw)
            raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
        except ValueError:
            raise MeshError(f"HTTP {resp.status}: {raw[:200]!r}") from None

    def open_read(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
                  stream_id: str | None = None) -> tuple[http.client.HTTPResponse, int]:
        """Start a read; returns the response and the number of bytes that will follow."""
        if offset < 0 or length < -1:
            raise InvalidArgument(f"bad range: offset={offset} length={length}")
        query = f"?offset={offset}&length={length}" + ("&nocache=1" if nocache else "")
        headers = {"X-Mesh-Stream": stream_id} if stream_id else {}
        resp = self._request("GET", path, query, headers=headers)
        self._raise_for(resp)
        return resp, int(resp.headers.get("Content-Length", "0"))

    def iter_read(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
                  chunk_size: int = CHUNK, stream_id: str | None = None) -> Iterator[bytes]:
        buf = bytearray(chunk_size)
        for n in self.read_chunks_into(path, buf, offset, length, nocache=nocache, stream_id=stream_id):
            yield bytes(buf[:n])

    def cat(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
            stream_id: str | None = None) -> bytes:
        if self._sc() is not None:
            out = bytearray()
            for kind, payload, n in self._sc_messages(path, offset, length, nocache, stream_id):
                if kind == b"H":
                    out = bytearray(payload["length"])
                    pos = 0
                elif kind == b"F":
                    fd, off = payload
                    got = os.preadv(fd, [memoryview(out)[pos:pos + n]], off)
                    if got != n:
                        raise UnderStoreError(f"cache page of {path} is shorter than announced")
                    pos += n
                else:
                    out[pos:pos + n] = payload
                    pos += n
            return bytes(out)
        resp, n = self.open_read(path, offset, length, nocache=nocache, stream_id=stream_id)
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = resp.readinto(view[got:])
            if not k:
                self._local.conn = None
                raise UnderStoreError(f"read of {path} ended {n - got} bytes early (node aborted it)")
            got += k
        return bytes(buf)

    def readinto(self, path: str, out: IO[bytes], offset: int = 0, length: int = -1, *,
                 nocache: bool = False) -> int:
        """Copy a range into a binary file object; returns the bytes copied."""
        n = 0
        for chunk in self.iter_read(path, offset, length, nocache=nocache):
            out.write(chunk)
            n += len(chunk)
        return n

    def put(self, path: str, data: bytes | IO[bytes] | Iterable[bytes]) -> Status:
        """Create or replace a whole file; ``data`` is streamed, not buffered."""
        headers: dict[str, str] = {}
        body: Any
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        elif hasattr(data, "read"):
            body = data
            try:
                headers["Content-Length"] = str(os.fstat(data.fileno()).st_size - data.tell())  # type: ignore[attr-defined]
            except (OSError, AttributeError, ValueError):
                headers["Transfer-Encoding"] = "chunked"
        else:
            body = iter(data)
            headers["Transfer-Encoding"] = "chunked"
        resp = self._request("PUT", path, body=body, headers=headers)
        self._raise_for(resp)
        d = json.loads(resp.read())
        return Status(d["path"], d["size"], d["mtime"], d["version"], False)

    @staticmethod
    def new_stream_id() -> str:
        return uuid.uuid4().hex
