"""Bounds on every aiohttp listener of a node (HTTP data port, S3, WebHDFS, the
scheduler extender): slow senders are cut, and requests in flight per client capped.

aiohttp has no timeout for a request's head, nor for a body that stops arriving
(its ``keepalive_timeout`` only closes connections idle *between* requests). So each
connection's protocol is wrapped (:class:`GuardedSite`) in a small watch that sees
every byte arrive, and a middleware (:meth:`Guard.middleware`) tells it when a
request's head is complete (its handler runs) and when it is done. Once a second
(or faster for short limits) the guard cuts every connection that:

- has sent the first byte of a request head (or, on a new connection, nothing at
  all) and no complete head ``limits.header_timeout`` seconds later; or
- is in a request whose body is still expected, and has sent no byte for
  ``limits.body_timeout`` seconds while the node is reading (a node that pauses
  reading, because its handler is busy, never counts against the client).

Idle keep-alive connections between requests are aiohttp's to close
(``limits.keepalive_timeout``). Each cut is one line of :func:`meshd.limits.log_rejected`.

The middleware also caps requests in flight per client (``limits.max_in_flight_per_client``,
keyed by the remote address: :class:`meshd.limits.InFlight`); over it the request is
answered by the app's own refusal (``app[REFUSE]``: S3 ``SlowDown``, WebHDFS
``RetriableException``), by default HTTP 503 with a JSON body.

A request head aiohttp's parser refuses (``Content-Length: -1``, a malformed
header line) never reaches the app: aiohttp answers 400 in plain text and logs
a traceback. An app that sets ``app[BAD_REQUEST]`` answers it in its own words
instead (S3's XML error), and the refusal is one line of
:func:`meshd.limits.log_rejected` (a bad client, not a fault of the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from meshd.config import LimitsConfig
from meshd.errors import SlowDown
from meshd.limits import InFlight, log_rejected

Refuse = Callable[[web.Request, SlowDown], web.StreamResponse]
REFUSE = web.AppKey[Refuse]("guard_refuse")
BadRequest = Callable[[int, str], web.Response]  # (status, aiohttp's reason) -> the app's answer
BAD_REQUEST = web.AppKey[BadRequest]("guard_bad_request")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_refusal(request: web.Request, e: SlowDown) -> web.StreamResponse:
    return web.json_response({"error": e.kind, "message": str(e)}, status=e.http_status,
                             headers={"Retry-After": "1"})


class _Watch(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the times the guard checks outside."""

    def __init__(self, guard: Guard, inner: RequestHandler) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.since = self.rx_at = guard.now()
        self.head_since: float | None = None
        self.requests = 0  # finished
        self.active = 0  # in a handler
        self.payload: Any = None  # the body of the request in a handler

    # asyncio.Protocol, delegated
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.guard.watches[self.inner] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.watches.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.rx_at = now = self.guard.now()
        if self.active == 0 and self.head_since is None:
            self.head_since = now
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[func-returns-value]

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # what the middleware tells
    def begin(self, request: web.Request) -> None:
        self.active += 1
        self.head_since = None
        self.payload = request.content
        self.rx_at = max(self.rx_at, self.guard.now())

    def end(self) -> None:
        self.active -= 1
        self.requests += 1
        self.head_since = None
        self.payload = None

    def overdue(self, now: float, limits: LimitsConfig) -> str | None:
        if self.active == 0:
            start = self.head_since if self.head_since is not None else (self.since if not self.requests else None)
            if start is not None and now - start > limits.header_timeout:
                return f"no complete request head within {limits.header_timeout:g} s"
        elif (self.payload is not None and not self.payload.is_eof() and self.transport is not None
              and self.transport.is_reading() and now - self.rx_at > limits.body_timeout):
            return f"no byte of the request body for {limits.body_timeout:g} s"
        return None


class Guard:
    """The bounds of one listener (``name``: "HTTP", "S3", ...)."""

    def __init__(self, name: str, limits: LimitsConfig) -> None:
        self.name = name
        self.limits = limits
        self.clients = InFlight(limits.max_in_flight_per_client, "requests")
        self.watches: dict[RequestHandler, _Watch] = {}
        self.cut = 0  # connections cut, for tests and the curious
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def protocol(self, inner: RequestHandler) -> asyncio.Protocol:
        if self._task is None:
            self._task = asyncio.ensure_future(self._patrol())
        return _Watch(self, inner)

    async def _patrol(self) -> None:
        limits = self.limits
        every = max(0.05, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4))
        while True:
            await asyncio.sleep(every)
            now = self.now()
            for watch in list(self.watches.values()):
                why = watch.overdue(now, limits)
                if why is not None and watch.transport is not None:
                    self.cut += 1
                    log_rejected(f"{self.name} connection", watch.peer, why + "; connection closed")
                    watch.transport.abort()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Outermost middleware of every guarded app: marks the head complete for the
        watch, and holds one of the client's in-flight slots while the handler runs."""
        watch = self.watches.get(request.protocol)
        if watch is not None:
            watch.begin(request)
        key = request.remote or ""
        try:
            if not self.clients.try_acquire(key):
                e = SlowDown(f"more than {self.clients.limit} requests in flight from this client: slow down")
                log_rejected(f"{self.name} {request.method} {request.path[:100]}", key, str(e))
                return request.app.get(REFUSE, _json_refusal)(request, e)
            try:
                return await handler(request)
            finally:
                self.clients.release(key)
        finally:
            if watch is not None:
                watch.end()

    def install(self, app: web.Application) -> None:
        """Make the guard's middleware the app's outermost (before the app is frozen)."""
        app.middlewares.insert(0, self.middleware)


class _Answering(RequestHandler):
    """aiohttp's protocol for one connection, whose answer to a request head its parser
    refused is the app's ``BAD_REQUEST``, logged as one rejected-request line."""

    __slots__ = ("_answer", "_where")

    def __init__(self, server: web.Server, answer: BadRequest, where: str) -> None:
        # aiohttp builds its protocol as server() does; its kwargs are the runner's settings
        super().__init__(server, loop=server._loop, **server._kwargs)
        self._answer = answer
        self._where = where

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = (message or exc.message or "malformed request").strip().splitlines()[0]
        log_rejected(f"{self._where} request", request.remote or "", f"{status}: {reason}")
        resp = self._answer(status, reason)
        resp.force_close()
        return resp


class GuardedSite(web.SockSite):
    """``web.SockSite`` whose connections are watched by ``guard``."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: Guard, **kw: Any) -> None:
        super().__init__(runner, sock, **kw)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self._guard
        runner = self._runner
        answer = runner.app.get(BAD_REQUEST) if isinstance(runner, web.AppRunner) else None

        def protocol() -> asyncio.Protocol:
            return guard.protocol(server() if answer is None else _Answering(server, answer, guard.name))

        self._server = await asyncio.get_running_loop().create_server(
            protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog)

    async def stop(self) -> None:
        self._guard.stop()
        await super().stop()


async def serve(app: web.Application, sock: socket.socket, guard: Guard, **kw: Any) -> web.AppRunner:
    """Run ``app`` on ``sock`` with ``guard``'s bounds; the caller cleans the runner up."""
    guard.install(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=guard.limits.keepalive_timeout)
    await runner.setup()
    try:
        await GuardedSite(runner, sock, guard, **kw).start()
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    return runner
