"""The node's HTTP endpoint: bulk data, metrics, health.

=======================================  ====================================
``GET  /v1/files/<path>``                read; query ``offset``, ``length``,
                                         ``nocache=1``; header
                                         ``X-Mesh-Stream`` names the reader
                                         for sequential detection
``PUT  /v1/files/<path>``                write the request body (streamed)
``GET  /v1/pages/<path>``                (between nodes) page ``index`` of a
                                         file at ``version``, ``size`` bytes
                                         long, from this node as its owner;
                                         ``warm=1``: cache it, send nothing;
                                         ``cached=1`` (a peer region): only
                                         if held here, else 404; ``start``,
                                         ``length``: a part of the page;
                                         ``hold=S``: if the page is still
                                         being fetched after S seconds,
                                         answer ``202 {"queued": true}``
                                         (the fetch goes on; ask again)
``GET  /``                               an index of what the port serves
                                         and the node's endpoints (added by
                                         :mod:`meshd.daemon`, which knows them)
``GET  /metrics``                        Prometheus text format
``GET  /healthz``                        ``ok``
=======================================  ====================================

Every path but ``/healthz`` needs a principal (:mod:`meshd.auth.http`): a bearer
token, or a local connection of the node's own user. Without one: ``401`` with
``WWW-Authenticate: Bearer``; what a principal may do is checked by the facade.

Zero copy (:mod:`meshd.servers.streaming`, shared with the gateways). A page
held by the disk tier is sent with ``loop.sendfile`` (the kernel copies page
file -> socket); pages in memory are written as ``memoryview`` slices without
copying. Where sendfile is unavailable (TLS, platforms without it) the page is
read and written instead.

A read's status line and headers (``Content-Length``, ``X-Mesh-Size``,
``X-Mesh-Version``) are sent only after the first page is in hand, so errors
are proper HTTP errors (JSON body ``{"error": kind, "message": ...}`` with the
status from :mod:`meshd.errors`). A failure after that point can only abort
the connection; the client sees a short body and raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from meshd.attrs import AttrChange
from meshd.auth.http import principal
from meshd.config import parse_write_mode
from meshd.core import MeshNode, Segment
from meshd.errors import InvalidArgument, MeshError, PermissionDenied, SlowDown, log_internal
from meshd.limits import log_rejected, parse_int
from meshd.servers.streaming import send_segment, stream_response

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(e: BaseException) -> web.Response:
    if isinstance(e, MeshError):
        return web.json_response({"error": e.kind, "message": str(e)}, status=e.http_status)
    log_internal(log, "an HTTP handler", e)
    return web.json_response({"error": "MeshError", "message": f"internal error: {type(e).__name__}"},
                             status=500)


def _int_arg(request: web.Request, name: str, default: int, low: int = -1) -> int:
    """An integer query parameter in [low, 2**63 - 1]; anything else is a 400."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, f"query parameter {name}", low)


_NODE = web.AppKey("node", MeshNode)
_RENDER_METRICS = web.AppKey[Callable[[], bytes]]("render_metrics")
_USE_SENDFILE = web.AppKey("use_sendfile", bool)


MAX_HOLD = 30.0


def _hold_arg(request: web.Request) -> float | None:
    """``hold=S``: answer 202 "queued" if the page is not ready within S seconds."""
    raw = request.query.get("hold")
    if raw is None:
        return None
    try:
        hold = float(raw)
    except ValueError:
        raise InvalidArgument(f"hold must be a number of seconds, not {raw[:40]!r}") from None
    if not 0 < hold <= MAX_HOLD:
        raise InvalidArgument(f"hold must be in (0, {MAX_HOLD:g}] seconds, not {raw[:40]!r}")
    return hold


async def _get_file(request: web.Request) -> web.StreamResponse:
    node = request.app[_NODE]
    try:
        offset = _int_arg(request, "offset", 0, low=0)
        length = _int_arg(request, "length", -1)
        nocache = request.query.get("nocache", "") in ("1", "true", "yes")
        path = "/" + request.match_info["path"]
        handle = await node.open(path, version=request.query.get("version"),
                                 size=_int_arg(request, "size", -1) if "size" in request.query else None)
        stream = await handle.read(offset, length, nocache=nocache,
                                   stream_key=request.headers.get("X-Mesh-Stream"))
    except Exception as e:
        return _error(e)
    resp = web.StreamResponse(status=200, headers={
        "X-Mesh-Size": str(stream.status.size),
        "X-Mesh-Version": stream.status.version,
        "X-Mesh-Offset": str(stream.offset),
        "Content-Type": "application/octet-stream",
    })
    resp.content_length = stream.length
    await stream_response(request, resp, node, stream, request.app[_USE_SENDFILE])
    return resp


async def _put_file(request: web.Request) -> web.Response:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(1 << 20):
            yield chunk

    try:
        change = None
        if "attrs" in request.query:
            try:
                change = AttrChange.from_wire(json.loads(request.query["attrs"]))
            except ValueError as e:  # JSONDecodeError too
                raise InvalidArgument(f"attrs: {e}") from None
        exclusive = request.query.get("exclusive", "") == "1"
        mode = parse_write_mode(request.query.get("writeback"), aliases=True)
        status = await request.app[_NODE].write("/" + request.match_info["path"], body(), change=change,
                                                exclusive=exclusive, writeback=mode,
                                                size_hint=request.content_length or -1)
    except Exception as e:
        return _error(e)
    return web.json_response({"path": status.path, "size": status.size, "version": status.version,
                              "mtime": status.mtime,
                              "attrs": None if status.attrs is None else status.attrs.to_wire()}, status=201)


async def _get_spool(request: web.Request) -> web.StreamResponse:
    """``GET /v1/writeback/<id>?start=&end=``: bytes of a write-back version still on this
    node's disk, for a peer serving a reader (nodes and operators only)."""
    try:
        start = _int_arg(request, "start", 0, low=0)
        end = _int_arg(request, "end", 0, low=0)
        length, pieces = request.app[_NODE].read_spool(request.match_info["id"], start, end)
    except Exception as e:
        return _error(e)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
    resp.content_length = length
    await resp.prepare(request)
    async for piece in pieces:
        await resp.write(piece)
    await resp.write_eof()
    return resp


async def _put_replica(request: web.Request) -> web.Response:
    """``PUT /v1/writeback/<id>?writer=<node>`` (header ``X-Mesh-Entry``): keep a replica
    of a peer's write-back write (nodes only)."""
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(1 << 20):
            yield chunk

    try:
        entry = request.headers.get("X-Mesh-Entry", "")
        writer = request.query.get("writer", "")
        if not entry or not writer:
            raise InvalidArgument("a replica needs ?writer= and an X-Mesh-Entry header")
        await request.app[_NODE].hold_replica(writer, entry, body())
    except Exception as e:
        return _error(e)
    return web.json_response({"held": request.match_info["id"]}, status=201)


async def _delete_replica(request: web.Request) -> web.Response:
    try:
        request.app[_NODE].drop_replica(request.query.get("writer", ""), request.match_info["id"])
    except Exception as e:
        return _error(e)
    return web.json_response({"dropped": request.match_info["id"]})


async def _drop_pending(request: web.Request) -> web.Response:
    """``POST /v1/writeback/<id>/drop?path=``: a peer is about to replace ``path``; this
    node's pending write of it is dropped, its upload's last request ended (nodes only)."""
    try:
        path = request.query.get("path", "")
        if not path:
            raise InvalidArgument("drop needs ?path=")
        held = await request.app[_NODE].writeback_drop(request.match_info["id"], path)
    except Exception as e:
        return _error(e)
    return web.json_response({"dropped": held})


async def _get_page(request: web.Request) -> web.StreamResponse:
    node = request.app[_NODE]
    try:
        index = _int_arg(request, "index", -1)
        size = _int_arg(request, "size", -1)
        version = request.query.get("version", "")
        warm = request.query.get("warm", "") == "1"
        cached_only = request.query.get("cached", "") == "1"
        start = _int_arg(request, "start", 0, low=0)
        want = _int_arg(request, "length", -1)
        hold = _hold_arg(request)
        served = await node.serve_page("/" + request.match_info["path"], version, size, index,
                                       cached_only=cached_only, hold=hold)
    except Exception as e:
        return _error(e)
    if served is None:  # still queued here (behind the quota or a slow store): ask again
        return web.json_response({"queued": True, "held": hold}, status=202)
    page, length, fetched = served
    if not 0 <= start <= length or want < -1:
        seg = Segment(page, 0, 0)
        seg.close()
        return _error(InvalidArgument(f"bad page sub-range: start={start} length={want} of {length}"))
    length = length - start if want < 0 else min(want, length - start)
    seg = Segment(page, start, length)
    if cached_only:
        node.stats.region_served += length
    if warm:
        seg.close()
        return web.json_response({"fetched": fetched})
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
    resp.content_length = length
    try:
        await resp.prepare(request)
        await send_segment(request, resp, seg, request.app[_USE_SENDFILE])
        await resp.write_eof()
    finally:
        seg.close()
    return resp


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_RENDER_METRICS](), content_type="text/plain", charset="utf-8")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    try:
        p = principal(request, request.app[_NODE].access)
        if p.kind == "anonymous":
            raise PermissionDenied(f"{request.path[:200]}: this request carries no credential (Authorization: "
                                   "Bearer <token>; see THREAT_MODEL.md)")
    except PermissionDenied as e:
        log_rejected(f"HTTP {request.method} {request.path[:200]}", request.remote or "", str(e))
        return web.json_response({"error": e.kind, "message": str(e)}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="mesh"'})
    try:
        with request.app[_NODE].access.serving(p):
            return await handler(request)
    except SlowDown as e:  # the tenant's requests in flight are at their cap
        return _error(e)


def make_app(node: MeshNode, render_metrics: Callable[[], bytes], use_sendfile: bool = True) -> web.Application:
    app = web.Application(client_max_size=0, middlewares=[_authenticate])
    app[_NODE] = node
    app[_RENDER_METRICS] = render_metrics
    app[_USE_SENDFILE] = use_sendfile
    app.router.add_get("/v1/files/{path:.*}", _get_file)
    app.router.add_put("/v1/files/{path:.*}", _put_file)
    app.router.add_get("/v1/pages/{path:.*}", _get_page)
    app.router.add_get("/v1/writeback/{id}", _get_spool)
    app.router.add_put("/v1/writeback/{id}", _put_replica)
    app.router.add_delete("/v1/writeback/{id}", _delete_replica)
    app.router.add_post("/v1/writeback/{id}/drop", _drop_pending)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app
