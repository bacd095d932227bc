"""The node's gRPC service: a thin adapter from proto messages to MeshNode.

Errors: a :class:`~meshd.errors.MeshError` becomes its gRPC status code with
the message as details and the error's kind in the trailing metadata key
``mesh-error-kind`` (the client rebuilds the same exception). Anything else
is logged with its traceback here and reported as INTERNAL without one.

Identity (:class:`Authenticate`, a server interceptor): every call runs as the
principal of its ``authorization: Bearer <token>`` metadata, or of its
connection (the node's own user on this machine); a call with neither fails
with UNAUTHENTICATED before any handler runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from meshd import __version__, auth
from meshd.auth import ADMIN
from meshd.core.handle import ReadStream
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError, PermissionDenied, SlowDown, log_internal
from meshd.limits import log_rejected
from meshd.metadata.shard import FileStatus
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from meshd.tls import peer_identity

log = logging.getLogger(__name__)
T = TypeVar("T")
ERROR_KIND_KEY = "mesh-error-kind"
READ_CHUNK = 1 << 20


def status_pb(s: FileStatus) -> pb.FileStatus:
    return pb.FileStatus(path=s.path, size=s.size, mtime=s.mtime, version=s.version, is_dir=s.is_dir)


async def _abort(context: grpc.aio.ServicerContext, e: BaseException) -> None:
    if isinstance(e, MeshError):
        context.set_trailing_metadata(((ERROR_KIND_KEY, e.kind),))
        await context.abort(getattr(grpc.StatusCode, e.grpc_code), str(e))
    log_internal(log, "a gRPC handler", e)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")


async def _guard(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        await _abort(context, e)
        raise AssertionError("unreachable") from e


def _peer(peer: str) -> tuple[str, int] | None:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> (host, port)."""
    kind, _, rest = peer.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class Authenticate(grpc.aio.ServerInterceptor):
    """Runs every call as its principal (see the module's docstring). ``port``: the gRPC
    port, set once bound (a local client's socket is found by its address pair)."""

    def __init__(self, access: Callable[[], auth.Access]) -> None:
        self.access = access
        self.port = 0

    async def principal(self, context: Any) -> auth.Principal:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                token = token.strip() if scheme.lower() == "bearer" else ""
        if token:
            p = self.access().by_token(token)
            if p is not None:
                return p
            log_rejected("gRPC call", context.peer(), "invalid token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the token presented is not valid for this node")
        by_cert = self.access().by_certificate(peer_identity(context))
        if by_cert is not None:
            return by_cert
        peer = _peer(context.peer())
        if peer is not None and self.access().local(peer, (peer[0], self.port)).kind == "operator":
            return auth.OPERATOR
        log_rejected("gRPC call", context.peer(), "no credential")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "this call carries no credential (metadata authorization: Bearer <token>; "
                            "meshctl --token-file, $MESH_TOKEN_FILE; see THREAT_MODEL.md)")
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def serving(self, context: Any) -> AsyncIterator[None]:
        """The call's body runs as its principal, in one of its tenant's slots; over the
        tenant's cap, RESOURCE_EXHAUSTED."""
        p = await self.principal(context)
        try:
            with self.access().serving(p):
                yield
        except SlowDown as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        serving = self.serving
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                async with serving(context):
                    return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> Any:
                async with serving(context):
                    async for item in inner_us(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: Any) -> Any:
                async with serving(context):
                    return await inner_su(request_iterator, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer,
                                                        handler.response_serializer)
        return None  # no stream-stream methods: refuse what does not exist


def _admin(node: MeshNode, what: str) -> None:
    if not node.access.allowed(auth.current(), ADMIN, "/"):
        raise PermissionDenied(f"{what} needs an operator (the mount table is the node's), not {auth.current()}")


class MeshService(pb_grpc.MeshServicer):
    def __init__(self, node: MeshNode, endpoints: Callable[[], dict[str, str]], node_id: str) -> None:
        self.node = node
        self._endpoints = endpoints
        self._node_id = node_id

    async def GetInfo(self, request: pb.Empty, context: Any) -> pb.NodeInfo:
        return pb.NodeInfo(node_id=self._node_id, version=__version__, endpoints=self._endpoints(),
                           page_size=self.node.cache.page_size)

    async def Read(self, request: pb.ReadRequest, context: Any) -> AsyncIterator[pb.ReadChunk]:
        async def start() -> ReadStream:
            handle = await self.node.open(request.path, version=request.version or None,
                                          size=request.size if request.version else None)
            return await handle.read(request.offset, request.length, nocache=request.nocache)

        stream = await _guard(context, start)
        first = True
        try:
            async for seg in stream.segments:
                data = seg.bytes()
                seg.close()
                for i in range(0, max(len(data), 1), READ_CHUNK):
                    chunk = pb.ReadChunk(data=data[i:i + READ_CHUNK])
                    if first:
                        chunk.status.CopyFrom(status_pb(stream.status))
                        first = False
                    yield chunk
            if first:
                yield pb.ReadChunk(status=status_pb(stream.status))
        except MeshError as e:
            await _abort(context, e)
        finally:
            await stream.aclose()

    async def Write(self, request_iterator: AsyncIterator[pb.WriteChunk], context: Any) -> pb.FileStatus:
        it = request_iterator.__aiter__()
        try:
            head = await it.__anext__()
        except StopAsyncIteration:
            await _abort(context, InvalidArgument("Write needs at least one message naming the path"))
            raise
        if not head.path:
            await _abort(context, InvalidArgument("the first Write message must name the path"))

        async def chunks() -> AsyncIterator[bytes]:
            if head.data:
                yield head.data
            async for msg in it:
                if msg.data:
                    yield msg.data

        return status_pb(await _guard(context, lambda: self.node.write(head.path, chunks())))

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        n = await _guard(context, lambda: self.node.delete(request.path, request.recursive))
        return pb.DeleteResponse(removed=n)

    async def Mkdir(self, request: pb.PathRequest, context: Any) -> pb.Empty:
        await _guard(context, lambda: self.node.mkdir(request.path))
        return pb.Empty()

    async def Rename(self, request: pb.RenameRequest, context: Any) -> pb.Empty:
        await _guard(context, lambda: self.node.rename(request.src, request.dst))
        return pb.Empty()

    async def AddMount(self, request: pb.AddMountRequest, context: Any) -> pb.MountInfo:
        async def add() -> Any:
            _admin(self.node, "mount add")
            return await self.node.mounts.add(request.path, request.uri, dict(request.options),
                                              check=not request.no_check)

        m = await _guard(context, add)
        return pb.MountInfo(path=m.path, uri=m.uri, options=m.redacted_options())

    async def RemoveMount(self, request: pb.PathRequest, context: Any) -> pb.MountInfo:
        async def remove() -> Any:
            _admin(self.node, "mount rm")
            return await self.node.mounts.remove(request.path)

        m = await _guard(context, remove)
        await self.node.metadata.forget_subtree(m.path)
        return pb.MountInfo(path=m.path, uri=m.uri, options=m.redacted_options())

    async def ListMounts(self, request: pb.Empty, context: Any) -> pb.ListMountsResponse:
        """Operators see every mount; anyone else the mounts they may read something in,
        without the store's URI (meshfs needs each mount's path and options)."""
        access, who = self.node.access, auth.current()
        admin = access.allowed(who, ADMIN, "/")
        return pb.ListMountsResponse(mounts=[
            pb.MountInfo(path=m.path, uri=m.uri if admin else "", options=m.redacted_options())
            for m in self.node.mounts.entries() if admin or access.sees(m.path, who)])

    async def Sync(self, request: pb.PathRequest, context: Any) -> pb.SyncResponse:
        return pb.SyncResponse(entries=await _guard(context, lambda: self.node.sync(request.path)))

    async def Load(self, request: pb.PathRequest, context: Any) -> AsyncIterator[pb.LoadProgress]:
        try:
            async for p in self.node.load(request.path):
                yield pb.LoadProgress(path=p.path, files_done=p.files_done, files_total=p.files_total,
                                      bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                      bytes_fetched=p.bytes_fetched)
        except Exception as e:
            await _abort(context, e)

    async def Free(self, request: pb.PathRequest, context: Any) -> pb.FreeResponse:
        return pb.FreeResponse(bytes_freed=await _guard(context, lambda: self.node.free(request.path)))

    async def WritebackFlush(self, request: pb.WritebackFlushRequest, context: Any) -> pb.WritebackFlushResponse:
        """``meshctl writeback flush``: the node's ``writeback_flush`` (UnderStoreError when
        the writes are still being uploaded after ``timeout`` seconds)."""
        def flush() -> Awaitable[int]:
            if not math.isfinite(request.timeout) or request.timeout < 0:
                raise InvalidArgument(f"bad flush timeout {request.timeout!r}: seconds, 0 for no limit")
            return self.node.writeback_flush(request.path, request.wait, request.timeout or None)

        return pb.WritebackFlushResponse(pending=await _guard(context, flush))

