"""The node's gRPC service: a thin adapter from proto messages to MeshNode.

Errors: a :class:`~meshd.errors.MeshError` becomes its gRPC status code with
the message as details and the error's kind in the trailing metadata key
``mesh-error-kind`` (the client rebuilds the same exception). Anything else
is logged with its traceback here and reported as INTERNAL without one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from meshd import __version__
from meshd.core.handle import ReadStream
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError, log_internal
from meshd.metadata.shard import FileStatus
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc

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
        m = await _guard(context, lambda: self.node.mounts.add(
            request.path, request.uri, dict(request.options), check=not request.no_check))
        return pb.MountInfo(path=m.path, uri=m.uri, options=m.redacted_options())

    async def RemoveMount(self, request: pb.PathRequest, context: Any) -> pb.MountInfo:
        m = await _guard(context, lambda: self.node.mounts.remove(request.path))
        await self.node.metadata.forget_subtree(m.path)
        return pb.MountInfo(path=m.path, uri=m.uri, options=m.redacted_options())

    async def ListMounts(self, request: pb.Empty, context: Any) -> pb.ListMountsResponse:
        return pb.ListMountsResponse(mounts=[
            pb.MountInfo(path=m.path, uri=m.uri, options=m.redacted_options())
            for m in self.node.mounts.entries()])

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

