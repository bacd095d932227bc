"""A read sent as the body of an aiohttp response, zero copy where possible.

Shared by the node's HTTP API (:mod:`meshd.servers.http_api`) and the gateways
(S3 GET, WebHDFS OPEN): the one place that turns a :class:`~meshd.core.ReadStream`
into bytes on a socket. It is aiohttp-specific (a response, a request's transport),
so it sits with the servers, not in the facade.

A page held by the disk tier is sent with ``loop.sendfile`` on the request's
transport (the kernel copies page file -> socket), as aiohttp's own
``FileResponse`` does (the file was checked against its CRC-32C when the cache
opened it for this read: docs/SEMANTICS.md, "Integrity of cached pages"); pages in memory are written as ``memoryview`` slices,
without copying. Only public API: ``StreamResponse.prepare`` (which, once the
response is prepared, just returns its writer), the writer's ``send_headers``
(headers aiohttp may hold back for a first write must be on the socket before
the kernel sends file bytes), ``request.transport``. A response without a
Content-Length (chunked framing) or with compression, a missing transport, a
transport without sendfile (TLS), or ``use_sendfile=False`` get the page read
and written instead.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from meshd.cache.pages import DiskPage, MemPage
from meshd.core import MeshNode, ReadStream, Segment

log = logging.getLogger(__name__)


def _may_sendfile(request: web.Request, resp: web.StreamResponse) -> bool:
    """Whether the body may bypass aiohttp's writer: a transport, a Content-Length (no
    chunked framing) and no compression."""
    return request.transport is not None and resp.content_length is not None and not resp.compression


async def _sendfile_ready(request: web.Request, resp: web.StreamResponse) -> asyncio.Transport | None:
    """The transport, once the headers are on it, if the body may bypass aiohttp's
    writer. Called only when a page file is about to be sent: aiohttp holds the headers
    back to go out with the first write, and a body served from memory keeps that (one
    send for headers and a small body, not two)."""
    transport = request.transport
    if transport is None or not _may_sendfile(request, resp):
        return None
    writer = await resp.prepare(request)  # prepared already: returns its writer
    if writer is None:  # the body is complete
        return None
    send_headers = getattr(writer, "send_headers", None)  # aiohttp < 3.12 wrote them in prepare
    if send_headers is not None:
        send_headers()
    return transport


async def send_segment(request: web.Request, resp: web.StreamResponse, seg: Segment,
                       use_sendfile: bool = True) -> None:
    """Write one segment of a prepared response: sendfile for a page file, a memoryview
    for bytes (no copy)."""
    sendfile_to = None
    if use_sendfile and isinstance(seg.page, DiskPage):
        sendfile_to = await _sendfile_ready(request, resp)
    await _send(resp, seg, sendfile_to)


async def _send(resp: web.StreamResponse, seg: Segment, sendfile_to: asyncio.Transport | None) -> None:
    page = seg.page
    if isinstance(page, MemPage):
        await resp.write(memoryview(page.data)[seg.offset:seg.offset + seg.length])
        return
    assert isinstance(page, DiskPage)
    if sendfile_to is not None:
        try:
            await asyncio.get_running_loop().sendfile(sendfile_to, page.file, seg.offset, seg.length)
            return
        except NotImplementedError:
            pass
    await resp.write(await asyncio.to_thread(seg.bytes))


async def stream_response(request: web.Request, resp: web.StreamResponse, node: MeshNode,
                          stream: ReadStream, use_sendfile: bool = True) -> None:
    """Send a read as the body of ``resp`` (zero copy where possible).

    Once the headers are out, a failure can only cut the connection: a second
    response would land inside the body. The read is always closed.
    """
    try:
        await resp.prepare(request)
        request["streaming"] = resp
        may_sendfile = use_sendfile and _may_sendfile(request, resp)
        sendfile_to: asyncio.Transport | None = None
        async for seg in stream.segments:
            try:
                if may_sendfile:
                    await node.prefer_file(seg)
                    if sendfile_to is None and isinstance(seg.page, DiskPage):
                        sendfile_to = await _sendfile_ready(request, resp)
                await _send(resp, seg, sendfile_to)
            finally:
                seg.close()
        await resp.write_eof()
    except asyncio.CancelledError:
        raise
    except Exception as e:
        if _client_gone(request, e):
            log.debug("reader of %s went away mid-response", request.path)
        else:
            log.exception("read of %s failed after the response started; aborting", request.path)
        if request.transport is not None:
            request.transport.abort()
    finally:
        await stream.aclose()


def _client_gone(request: web.Request, e: Exception) -> bool:
    """A reader that hung up is not an error of ours (aiohttp says so in several ways)."""
    transport = request.transport
    return (isinstance(e, ConnectionError) or transport is None or transport.is_closing()
            or (isinstance(e, RuntimeError) and "closing" in str(e).lower()))


__all__ = ["send_segment", "stream_response"]
