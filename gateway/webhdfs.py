"""The WebHDFS REST API (Hadoop's ``/webhdfs/v1/<path>?op=...``) over the mesh's namespace.

Paths are mesh paths, one to one: a mount of ``hdfs://nn:8020/warehouse`` at
``/warehouse`` makes ``webhdfs://mesh:port/warehouse/x`` the same file as
``hdfs://nn:8020/warehouse/x``: a job changes only the scheme and the host.
Every operation and its status: docs/WEBHDFS_COMPAT.md.

Two steps, as a NameNode and a DataNode do. ``OPEN``, ``CREATE``, ``APPEND``
and ``GETFILECHECKSUM`` first answer ``307 Temporary Redirect`` with a
``Location`` naming this gateway again with ``datanode=true`` (or, with
``noredirect=true``, ``200 {"Location": ...}``); the bytes move on the second
request. Clients written for HDFS (HdfsCLI, fsspec, curl -L, Hadoop's
WebHdfsFileSystem) expect exactly that.

Users. Hadoop's simple auth: the caller names itself with ``user.name`` (``doas``
only for ``webhdfs.proxy_users``); requests without it act as ``webhdfs.anonymous_user`` (``dr.who``)
unless ``webhdfs.allow_anonymous`` is off. With ``webhdfs.users`` set, only
those users are let in, each ``rw`` or ``ro``. A read-only mount refuses
writes to everyone. Refusals are ``AccessControlException``.

Errors. Every failure is a ``RemoteException`` JSON body with the Java
exception name clients map (``FileNotFoundException``,
``AccessControlException``, ``FileAlreadyExistsException``, ...) and the HTTP
status Hadoop's ExceptionHandler gives it (404 for FileNotFoundException, 403
for other IOExceptions and security exceptions, 400 for
IllegalArgumentException and UnsupportedOperationException); the mapping from
the mesh's errors is one table (``meshd.errors.hadoop_exception``).

Modules. This one dispatches (:class:`WebHdfs`) and builds the app; the operations
are in :mod:`gateway.webhdfs_read` (GET) and :mod:`gateway.webhdfs_write` (PUT, POST,
DELETE), over :mod:`gateway.webhdfs_base` (parameters, errors, users, statuses).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshd import auth
from meshd import errors as me
from meshd.config import WebHdfsConfig
from meshd.core import MeshNode
from meshd.servers.guard import REFUSE

from .webhdfs_base import OP_CLASS, OPS, PREFIX, RemoteException, from_mesh, illegal, unsupported
from .webhdfs_read import ReadOps
from .webhdfs_write import WriteOps

log = logging.getLogger(__name__)


class WebHdfs(ReadOps, WriteOps):
    """The gateway: each request dispatched to its ``op_<name>`` (reads in
    :class:`~gateway.webhdfs_read.ReadOps`, writes in :class:`~gateway.webhdfs_write.WriteOps`)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            method = request.method
            raw_op = request.query.get("op", "")
            op = raw_op.upper()
            if not raw_op:
                raise illegal('Invalid value for webhdfs parameter "op": the parameter is missing')
            allowed = OPS.get(method)
            if allowed is None:
                raise illegal(f"{method} is not a WebHDFS method")
            if op not in allowed:
                raise illegal(f'Invalid value for webhdfs parameter "op": No enum constant '
                              f"org.apache.hadoop.hdfs.web.resources.{OP_CLASS[method]}.Op.{raw_op}")
            path = self.path_of(request)
            user = self.user_of(request, op)
            fn = getattr(self, "op_" + op.lower(), None)
            if fn is None:
                raise unsupported(f"Operation {op} is not supported by the mesh's WebHDFS gateway "
                                  f"(docs/WEBHDFS_COMPAT.md)")
            with self.node.access.serving(auth.current()):  # the tenant's slot, while it is served
                return await fn(request, path, user)
        except RemoteException as e:
            return self._error(request, e)
        except me.MeshError as e:
            return self._error(request, from_mesh(e))

    @staticmethod
    def _error(request: web.Request, e: RemoteException) -> web.StreamResponse:
        resp = request.get("streaming")
        if isinstance(resp, web.StreamResponse) and resp.prepared:
            raise ConnectionResetError(e.message)  # mid-body: only cutting the stream tells the client
        return e.response()


def make_app(node: MeshNode, cfg: WebHdfsConfig) -> web.Application:
    gw = WebHdfs(node, cfg)

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status == 404:
                return illegal(f"{request.path}: not a WebHDFS path (expected {PREFIX}/<path>?op=...)").response()
            if e.status == 405:
                return illegal(f"{request.method} is not a WebHDFS method").response()
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            me.log_internal(log, f"WebHDFS {request.method} {request.path}", e)
            return RemoteException("IOException", "java.io.IOException", f"internal error: {type(e).__name__}",
                                   500).response()

    app = web.Application(middlewares=[errors], client_max_size=1 << 20)
    for method in OPS:
        app.router.add_route(method, PREFIX + "{tail:.*}", gw.handle)
    app[REFUSE] = lambda request, e: from_mesh(e).response()  # RetriableException, 503
    return app


__all__ = ["PREFIX", "RemoteException", "WebHdfs", "make_app"]
