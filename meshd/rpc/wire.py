"""The metadata wire: small pipelined JSON requests over one TCP connection.

Why not gRPC for this: a warm ``stat`` costs ~300 us of server CPU in
``grpc.aio`` on these machines, of which our own code is ~6 % (measured with
py-spy). Metadata operations are tiny and numerous (a directory of 100,000
files, a dataloader stat-ing every sample), and nodes forward them to the
shard that owns the key, so the per-call cost is the metadata layer's
throughput. This framing costs a few tens of microseconds a call. gRPC stays
the control API (proto/mesh.proto); metadata and the report have their one home
here, and their schema in :mod:`meshd.rpc.messages`.

Frame (both directions): ``!II`` = body length, request id; then the body,
JSON. Request body ``[op, args]``; reply ``{"r": result}`` or
``{"e": error kind, "m": message}`` (kinds from :mod:`meshd.errors`). Replies
may come back in any order; the id matches them to requests.

Identity: a connection starts as whoever :func:`meshd.auth.peer.tcp_peer_uid` finds at
its other end (the node's own user: the operator; anyone else: anonymous), until
an ``["auth", {"t": token}]`` request names a principal for the rest of the
connection (clients send it first, pipelined). Each request runs as the
connection's principal (:func:`meshd.auth.current`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshd import auth
from meshd.config import LimitsConfig
from meshd.errors import (
    InvalidArgument,
    MeshError,
    NodeUnavailable,
    PermissionDenied,
    SlowDown,
    from_kind,
    log_internal,
)
from meshd.limits import InFlight, loads, log_rejected
from meshd.tls import peer_identity

log = logging.getLogger(__name__)

HEADER = struct.Struct("!II")
SLOWDOWN_FIRST_PAUSE, SLOWDOWN_MAX_PAUSE = 0.01, 0.5  # seconds, between retries of a SlowDown answer
MAX_FRAME = 256 << 20
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _encode(req_id: int, body: Any) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return HEADER.pack(len(raw), req_id) + raw


def take_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Remove the first complete frame from ``buf``: (request id, body), or None
    until one has fully arrived. ValueError for a frame above MAX_FRAME."""
    if len(buf) < HEADER.size:
        return None
    size, req_id = HEADER.unpack_from(buf)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes refused")
    if len(buf) < HEADER.size + size:
        return None
    body = bytes(buf[HEADER.size:HEADER.size + size])
    del buf[:HEADER.size + size]
    return req_id, body


def _error_body(e: BaseException) -> dict[str, str]:
    if isinstance(e, MeshError):
        return {"e": e.kind, "m": str(e)}
    log_internal(log, "a metadata wire handler", e)
    return {"e": "MeshError", "m": f"internal error: {type(e).__name__}"}


MAX_REQUEST_FRAME = 64 << 20  # a request: the largest legitimate one (a batch of 5,000 statuses) is ~2 MiB
_LARGE_FRAME = 1 << 20  # above this, a frame may take longer than header_timeout to arrive


class _ServerProtocol(asyncio.Protocol):
    """One client connection. Bounded (``limits``): requests in flight on it and from
    its address, how long a frame may take to arrive, how deep its JSON nests."""

    def __init__(self, server: WireServer) -> None:
        self._server = server
        self._handlers = server.handlers
        self._live = server._live
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peer = ""  # the client's address (its key for the per-client cap)
        self.frame_since: float | None = None  # first byte of a frame not complete yet
        self.rx_at = 0.0
        self._access = server.access
        self.principal = auth.SYSTEM if server.access is None else auth.ANONYMOUS
        self.cert_cn: str | None = None  # the verified client certificate's CN (TLS), else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.frame_since = self.rx_at = asyncio.get_running_loop().time()  # a first frame is due
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cert_cn = peer_identity(transport)
        if self._access is None:
            return
        by_cert = self._access.by_certificate(self.cert_cn)
        if by_cert is not None:
            self.principal = by_cert
        else:
            self.principal = self._access.local(transport.get_extra_info("peername"),
                                                transport.get_extra_info("sockname"))

    def _auth(self, args: dict[str, Any]) -> Any:
        if self._access is None:
            return {"as": "system"}
        p = self._access.by_token(str(args.get("t", "")))
        if p is None:
            self.principal = auth.Principal("anonymous", "invalid token")
            log_rejected("metadata wire auth", self.peer, "invalid token")
            raise PermissionDenied("the token presented is not valid for this node")
        self.principal = p
        return {"as": p.kind}

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._live.discard(self)
        for t in self._tasks:
            t.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def overdue(self, now: float, limits: LimitsConfig) -> str | None:
        """Why this connection is to be cut now (a frame arriving too slowly), or None.
        Idle between frames is fine once a first frame arrived."""
        if self.frame_since is None:
            return None
        if len(self._buf) >= HEADER.size and HEADER.unpack_from(self._buf)[0] > _LARGE_FRAME:
            if now - self.rx_at > limits.body_timeout:
                return f"no byte of a large frame for {limits.body_timeout:g} s"
        elif now - self.frame_since > limits.header_timeout:
            return f"no complete frame within {limits.header_timeout:g} s"
        return None

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.rx_at = now
        if self.frame_since is None:
            self.frame_since = now
        self._buf += data
        while True:
            if len(self._buf) >= HEADER.size and HEADER.unpack_from(self._buf)[0] > MAX_REQUEST_FRAME:
                log_rejected("metadata wire frame", self.peer,
                             f"frame of {HEADER.unpack_from(self._buf)[0]} bytes; connection closed")
                if self._transport is not None:
                    self._transport.close()
                return
            frame = take_frame(self._buf)
            if frame is None:
                break
            self.frame_since = now if self._buf else None
            req_id, body = frame
            if len(self._tasks) >= self._server.limits.max_in_flight_per_connection:
                self._refuse(req_id, f"more than {len(self._tasks)} requests in flight on this connection")
                continue
            if not self._server.clients.try_acquire(self.peer):
                self._refuse(req_id, f"more than {self._server.clients.limit} requests in flight from this client")
                continue
            task = asyncio.ensure_future(self._serve(req_id, body))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._server.clients.release(self.peer)

    def _refuse(self, req_id: int, why: str) -> None:
        log_rejected("metadata wire request", self.peer, why)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_encode(req_id, {"e": "SlowDown", "m": why + ": slow down"}))

    async def _serve(self, req_id: int, body: bytes) -> None:
        try:
            try:
                request = loads(body, "metadata wire request")
                op, args = request
                handler = self._handlers[op] if op != "auth" else None
            except InvalidArgument as e:
                log_rejected("metadata wire request", self.peer, str(e))
                raise
            except (ValueError, TypeError, KeyError):
                log_rejected("metadata wire request", self.peer, f"malformed: {body[:60]!r}")
                raise InvalidArgument(f"malformed metadata wire request: {body[:100]!r}") from None
            if not isinstance(args, dict):
                raise InvalidArgument(f"metadata wire request {op!r}: arguments must be an object")
            if handler is None:
                reply: Any = {"r": self._auth(args)}
            else:
                if self.principal.kind == "anonymous":
                    raise PermissionDenied("the metadata wire needs a credential: send [\"auth\", {\"t\": "
                                           "token}] first (THREAT_MODEL.md)")
                if self._access is None:
                    reply = {"r": await handler(args)}
                else:
                    with self._access.serving(self.principal):
                        reply = {"r": await handler(args)}
        except asyncio.CancelledError:
            return
        except Exception as e:
            reply = _error_body(e)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_encode(req_id, reply))


class WireServer:
    def __init__(self, handlers: dict[str, Handler], limits: LimitsConfig | None = None,
                 access: auth.Access | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handlers = handlers
        self.access = access  # None: every connection is trusted (in-process tests of the wire)
        self.ssl = ssl_context  # TLS on the listener (meshd.tls.server_context)
        self.limits = limits or LimitsConfig()
        self.clients = InFlight(self.limits.max_in_flight_per_client, "requests")
        self._server: asyncio.base_events.Server | None = None
        self._live: set[_ServerProtocol] = set()
        self._patrol_task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerProtocol(self), sock=sock, ssl=self.ssl)
        self._patrol_task = asyncio.ensure_future(self._patrol())

    async def _patrol(self) -> None:
        """Cut connections whose frames arrive too slowly (a slowloris client)."""
        limits = self.limits
        every = max(0.05, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for proto in list(self._live):
                why = proto.overdue(now, limits)
                if why is not None:
                    log_rejected("metadata wire connection", proto.peer, why + "; connection closed")
                    proto.abort()

    async def stop(self) -> None:
        """Stop listening and cut every connection: callers fail over at once."""
        if self._patrol_task is not None:
            self._patrol_task.cancel()
        if self._server is not None:
            self._server.close()
            for proto in list(self._live):
                proto.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)


def _raise(reply: dict[str, Any], where: str) -> Any:
    if "e" in reply:
        raise from_kind(reply["e"], reply.get("m", ""))
    if "r" not in reply:
        raise MeshError(f"malformed reply from {where}")
    return reply["r"]


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, owner: WireClient) -> None:
        self._owner = owner
        self._buf = bytearray()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(exc)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            try:
                frame = take_frame(self._buf)
            except ValueError:
                if self._transport is not None:
                    self._transport.close()  # connection_lost fails the pending calls
                return
            if frame is None:
                break
            req_id, body = frame
            fut = self._owner._pending.pop(req_id, None)
            if fut is not None and not fut.done():
                try:
                    fut.set_result(json.loads(body))
                except ValueError:
                    fut.set_exception(MeshError("malformed reply on the metadata wire"))


class WireClient:
    """Async client for one peer: one connection, many requests in flight."""

    def __init__(self, address: str, connect_timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 token: str | None = None) -> None:
        self.address = address
        self._ssl = ssl_context
        self._token = token
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0

    async def _connect(self) -> asyncio.Transport:
        if self._transport is not None and not self._transport.is_closing():
            return self._transport
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        assert self._transport is not None
        return self._transport

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(self), self._host, self._port,
                                       ssl=self._ssl, server_hostname=self._host if self._ssl else None),
                self._connect_timeout)
        except (TimeoutError, OSError) as e:  # ssl.SSLError is an OSError
            raise NodeUnavailable(f"cannot connect to {self.address}: {e or 'timed out'}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert isinstance(transport, asyncio.Transport)
        if self._token:  # first on the connection; its reply (id 0) is not waited for
            transport.write(_encode(0, ["auth", {"t": self._token}]))
        self._transport = transport

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(NodeUnavailable(f"connection to {self.address} lost"))

    async def call(self, op: str, args: dict[str, Any], wait: float = 10.0) -> Any:
        """``op`` at the peer; a SlowDown answer (the peer's cap on requests in flight)
        is retried with a growing pause for up to ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + wait, SLOWDOWN_FIRST_PAUSE
        while True:
            try:
                return await self._call_once(op, args, wait)
            except SlowDown:
                if loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, SLOWDOWN_MAX_PAUSE)

    async def _call_once(self, op: str, args: dict[str, Any], wait: float) -> Any:
        transport = await self._connect()
        self._next = (self._next + 1) & 0xFFFFFFFF
        req_id = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        transport.write(_encode(req_id, [op, args]))
        try:
            reply = await asyncio.wait_for(fut, wait)
        except TimeoutError:
            self._pending.pop(req_id, None)
            raise NodeUnavailable(f"{self.address} did not answer {op} within {wait:g} s") from None
        return _raise(reply, self.address)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class SyncWireClient:
    """Blocking client (meshctl, fsspec, benchmarks): one connection per thread."""

    def __init__(self, address: str, timeout: float = 60.0, ssl_context: ssl.SSLContext | None = None,
                 token: str | None = None) -> None:
        self.address = address
        self._ssl = ssl_context
        self._token = token
        host, _, port = address.rpartition(":")
        self._addr = (host.strip("[]"), int(port))
        self._timeout = timeout
        self._local = threading.local()

    def _sock(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            try:
                sock = socket.create_connection(self._addr, timeout=self._timeout)
                if self._ssl is not None:
                    try:
                        sock = self._ssl.wrap_socket(sock, server_hostname=self._addr[0])
                    except OSError:
                        sock.close()
                        raise
            except OSError as e:
                raise NodeUnavailable(f"cannot connect to {self.address}: {e}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.sock = sock
            self._local.buf = bytearray()
            if self._token:
                self._exchange(sock, "auth", {"t": self._token})
        return sock

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """``op`` at the node; SlowDown answers are retried as by :meth:`WireClient.call`."""
        deadline, pause = time.monotonic() + self._timeout, SLOWDOWN_FIRST_PAUSE
        while True:
            try:
                return self._call_once(op, args)
            except SlowDown:
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, SLOWDOWN_MAX_PAUSE)

    def _call_once(self, op: str, args: dict[str, Any]) -> Any:
        return self._exchange(self._sock(), op, args)

    def _exchange(self, sock: socket.socket, op: str, args: dict[str, Any]) -> Any:
        try:
            sock.sendall(_encode(1, [op, args]))
            buf: bytearray = self._local.buf
            while (frame := take_frame(buf)) is None:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionResetError("closed by the node")
                buf += chunk
            _, body = frame
        except (OSError, ValueError) as e:
            self.close_thread()
            raise NodeUnavailable(f"metadata wire to {self.address}: {e}") from None
        try:
            reply = json.loads(body)
        except ValueError:
            raise MeshError(f"malformed reply from {self.address}") from None
        return _raise(reply, self.address)

    def close_thread(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close()
            self._local.sock = None
