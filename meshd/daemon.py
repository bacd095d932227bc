"""The meshd process: binds its ports, has the composition root build the node, serves it.

Start-up order: lock the data directory (one daemon per directory), bind every
port (so the node's member record carries its addresses), build and load the
node through :mod:`meshd.compose` (cluster mode: etcd first; RocksDB, the page
index from disk, the mount table), start the gRPC, metadata-wire, HTTP, local
socket, S3 and WebHDFS servers, join the region's ring (cluster mode), then
publish ``DATA_DIR/endpoints.json`` atomically. Shutdown runs the same list
backwards and removes ``endpoints.json`` first, so a script that finds the file
finds a node that answers.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import IO, Any

import grpc
from aiohttp import web

from meshd import auth
from meshd.compose import NodeParts, member, open_node
from meshd.config import NodeConfig
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError
from meshd.metrics import Metrics
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from meshd.rpc.wire import WireServer
from meshd.servers.grpc_api import Authenticate, MeshService
from meshd.servers.guard import Guard, serve
from meshd.servers.http_api import make_app
from meshd.servers.meta_api import handlers as meta_handlers
from meshd.servers.shortcircuit import ShortCircuitServer
from meshd.tls import grpc_server_credentials, server_context

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {e.strerror}") from None
    s.listen(1024)
    s.setblocking(False)
    return s


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _private(path: str) -> None:
    """The data directory holds the mount table (with store credentials), the pages and
    the node's local socket: readable by its owner only (0700). A directory made with
    looser permissions is tightened, with a line saying so."""
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, st.st_mode & 0o700 | 0o700)
        log.warning("data directory %s was mode %o: made it 0700 (it holds the mount table's "
                    "credentials and the node's socket)", path, st.st_mode & 0o777)


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = os.path.abspath(config.data_dir)
        self.endpoints: dict[str, str] = {}
        self.node_id = ""
        self.parts: NodeParts | None = None
        self.node: MeshNode | None = None
        self.metrics: Metrics | None = None
        self._lock_file: IO[str] | None = None
        self._published = False  # endpoints.json is ours to remove only once we wrote it
        self._socks: dict[str, socket.socket] = {}  # bound, until a server takes them
        self._grpc: grpc.aio.Server | None = None
        self._wire: WireServer | None = None
        self._sc: ShortCircuitServer | None = None
        self._runners: list[web.AppRunner] = []  # HTTP, S3, WebHDFS
        self._authn: Authenticate | None = None
        self._refresh: asyncio.Task[None] | None = None
        # TLS on every TCP listener when tls.cert is configured (docs/TLS.md)
        self._ssl: ssl.SSLContext | None = server_context(config.tls) if config.tls.enabled else None
        self._sweeper: asyncio.Future[None] | None = None  # temporary files of crashed writes

    def _lock(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        _private(self.data_dir)
        f = open(os.path.join(self.data_dir, "lock"), "a+")  # held for the daemon's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise InvalidArgument(f"another meshd is using data directory {self.data_dir}") from None
        self._lock_file = f

    def _node_id(self) -> str:
        path = os.path.join(self.data_dir, "node-id")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            node_id = uuid.uuid4().hex[:12]
            with open(path, "w") as f:
                f.write(node_id + "\n")
            return node_id

    async def start(self) -> None:
        # Under-store clients (boto3) and page-file I/O block in threads; the
        # default pool (cores + 4) would cap a cold read's fetch window.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="meshd-io"))
        self._lock()
        self.node_id = self.config.cluster.node_id or self._node_id()
        self._listen()  # every port bound: the member record names them
        self.parts = parts = await open_node(self.config, member(self.config, self.node_id, self.endpoints))
        self.node, self.metrics = parts.node, parts.metrics
        await self._serve(parts)
        self._sweeper = asyncio.ensure_future(self._sweep_tmp(parts))
        await parts.join()  # join the ring last: peers see this node only once it answers
        self._publish()
        log.info("meshd %s ready: %s", self.node_id, json.dumps(self.endpoints))

    def _listen(self) -> None:
        """Bind every port and name the endpoints (``endpoints.json``) before anything is built."""
        cfg = self.config
        host = _url_host(cfg.cluster.advertise_host or cfg.host)
        socks = self._socks
        socks["http"] = _bind(cfg.host, cfg.http_port)
        socks["meta"] = _bind(cfg.host, cfg.cluster.meta_port)
        scheme = "https" if self._ssl is not None else "http"
        http_url = f"{scheme}://{host}:{socks['http'].getsockname()[1]}"
        self.endpoints = {"grpc": f"{host}:{self._listen_grpc()}", "http": http_url,
                          "meta": f"{host}:{socks['meta'].getsockname()[1]}", "metrics": f"{http_url}/metrics",
                          "local": os.path.join(self.data_dir, "local.sock")}
        if self._ssl is not None:  # grpc and meta stay host:port; this key says they speak TLS
            self.endpoints["tls"] = cfg.tls.client_auth
        gateways = (("s3", cfg.s3.enabled, cfg.s3.port), ("webhdfs", cfg.webhdfs.enabled, cfg.webhdfs.port))
        for name, enabled, port in gateways:
            if enabled:
                socks[name] = _bind(cfg.host, port)
                self.endpoints[name] = f"{scheme}://{host}:{socks[name].getsockname()[1]}"

    def _listen_grpc(self) -> int:
        cfg = self.config
        self._authn = authn = Authenticate(lambda: self.node.access if self.node else auth.Access())
        self._grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                              ("grpc.max_send_message_length", 64 << 20)],
                                     interceptors=[authn])
        bind = f"[{cfg.host}]:{cfg.grpc_port}" if ":" in cfg.host else f"{cfg.host}:{cfg.grpc_port}"
        try:
            if cfg.tls.enabled:
                authn.port = int(self._grpc.add_secure_port(bind, grpc_server_credentials(cfg.tls)))
            else:
                authn.port = int(self._grpc.add_insecure_port(bind))
            return authn.port
        except RuntimeError as e:
            raise InvalidArgument(f"cannot listen on {bind} for gRPC: {e}") from None

    async def _serve(self, parts: NodeParts) -> None:
        node, socks = parts.node, self._socks
        assert self._grpc is not None
        pb_grpc.add_MeshServicer_to_server(MeshService(node, lambda: self.endpoints, self.node_id), self._grpc)
        await self._grpc.start()
        self._wire = WireServer(meta_handlers(node, self._info), self.config.limits, node.access,
                                ssl_context=self._ssl)
        await self._wire.start(socks["meta"])
        app = make_app(node, parts.metrics.render, use_sendfile=self._ssl is None)  # no sendfile under TLS
        app.router.add_get("/", self._index)
        await self._site(app, socks["http"])
        self._sc = ShortCircuitServer(node, self.endpoints["local"])
        await self._sc.start()
        if "s3" in socks:
            await self._start_s3(node, socks["s3"])
        if "webhdfs" in socks:
            await self._start_webhdfs(node, socks["webhdfs"])
        if node.access.file:
            self._refresh = asyncio.ensure_future(self._reload_access(node))
        if not node.access.enforce:
            log.warning("*** auth.enforce is false: EVERY request acts as an operator, from anyone who reaches "
                        "a port. For measuring only. ***")
        log.info("credentials for other users and machines: %s (0600); the node's own user needs none",
                 os.path.join(self.data_dir, "credentials.json"))

    async def _reload_access(self, node: MeshNode) -> None:
        """The access file is read again whenever it changes: new rules without a restart."""
        while True:
            await asyncio.sleep(1.0)
            node.access.refresh()

    async def _site(self, app: web.Application, sock: socket.socket, name: str = "HTTP") -> None:
        """Serve ``app`` on ``sock`` under the node's limits (meshd.servers.guard: slow
        senders cut, requests in flight per client capped), with TLS when configured."""
        self._runners.append(await serve(app, sock, Guard(name, self.config.limits), ssl_context=self._ssl))

    async def _start_s3(self, node: MeshNode, sock: socket.socket) -> None:
        """The S3 gateway (gateway/) on its own port."""
        from gateway.app import make_app as make_s3_app
        from gateway.multipart import MultipartStore

        s3 = self.config.s3
        uploads = MultipartStore(os.path.join(self.data_dir, "multipart"))
        removed = await uploads.cleanup(time.time() - s3.multipart_expiry)
        if removed:
            log.info("removed %d abandoned multipart uploads", removed)
        await self._site(make_s3_app(node, s3, uploads), sock, "S3")
        url = self.endpoints["s3"]
        if s3.allow_anonymous:
            log.warning("*** S3 gateway at %s accepts ANONYMOUS requests (s3.allow_anonymous): anyone who "
                        "reaches it acts as %s. ***", url,
                        "the access file's tenant 'anonymous'" if "anonymous" in node.access.tenants
                        else "an operator: reads and writes every mount")
        else:
            log.info("S3 gateway at %s (%d configured access key(s); the node's own key pair is in "
                     "credentials.json)", url, len(s3.access_keys))

    async def _start_webhdfs(self, node: MeshNode, sock: socket.socket) -> None:
        """The WebHDFS gateway (gateway/webhdfs.py) on its own port (the REST root is
        ``<url>/webhdfs/v1``)."""
        from gateway.webhdfs import make_app as make_webhdfs_app

        wh = self.config.webhdfs
        if wh.anonymous_writes is None:  # anonymous writes only while nothing else needs credentials
            wh = replace(wh, anonymous_writes=not (self.config.s3.access_keys or wh.users or node.access.tenants))
        await self._site(make_webhdfs_app(node, wh), sock, "WebHDFS")
        log.info("WebHDFS gateway at %s/webhdfs/v1 (%s)", self.endpoints["webhdfs"],
                 f"{len(wh.users)} user(s) allowed" if wh.users else "simple auth: every user.name")

    async def _sweep_tmp(self, parts: NodeParts) -> None:
        """Temporary files of crashed writes: removed at start-up, then every
        ``limits.tmp_sweep_interval`` seconds (0: at start-up only)."""
        interval = self.config.limits.tmp_sweep_interval
        while True:
            removed = await parts.sweep_tmp()
            if removed:
                log.info("removed %d temporary file(s) of crashed writes from the stores", removed)
            if not interval:
                return
            await asyncio.sleep(interval)

    async def _index(self, request: web.Request) -> web.Response:
        """``GET /`` on the HTTP port: what this port serves, and the node's other endpoints
        (a browser or curl pointed at the node finds its way from here)."""
        return web.json_response({
            "service": "meshd", "node_id": self.node_id, "endpoints": self.endpoints,
            "paths": {"/v1/files/<path>": "GET: read a file (offset, length, nocache=1); PUT: write it",
                      "/v1/pages/<path>": "between nodes: one page of a file",
                      "/metrics": "Prometheus metrics (METRICS.md)", "/healthz": "ok while the node serves"},
        }, dumps=lambda d: json.dumps(d, indent=2) + "\n")

    def _info(self) -> dict[str, Any]:
        """What the metadata wire's ``info`` tells clients: this node and its region."""
        assert self.parts is not None
        ms, cluster = self.parts.membership, self.parts.cluster
        return {"node_id": self.node_id, "page_size": self.parts.cache.page_size, "endpoints": self.endpoints,
                "cluster": ms.me.cluster, "region": ms.me.region,
                "vnodes": cluster.vnodes if cluster else 128,
                "members": [{"node_id": m.node_id, "grpc": m.grpc, "http": m.http, "meta": m.meta,
                             "capacity": m.capacity, "endpoints": m.endpoints} for m in ms.members.values()]}

    def _publish_ca(self) -> None:
        """With TLS, the CA beside endpoints.json (``DATA_DIR/tls/ca.pem``): local clients
        that find the node there find what to verify it with (meshd.tls.find_client_tls)."""
        tls_dir = os.path.join(self.data_dir, "tls")
        os.makedirs(tls_dir, mode=0o700, exist_ok=True)
        if self.config.tls.ca:
            shutil.copyfile(self.config.tls.ca, os.path.join(tls_dir, "ca.pem.tmp"))
            os.replace(os.path.join(tls_dir, "ca.pem.tmp"), os.path.join(tls_dir, "ca.pem"))

    def _publish(self) -> None:
        if self._ssl is not None:
            self._publish_ca()
        path = os.path.join(self.data_dir, "endpoints.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"node_id": self.node_id, "pid": os.getpid(), **self.endpoints}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
        self._published = True

    async def stop(self) -> None:
        if self._published:  # a daemon refused the directory's lock must not unpublish the one holding it
            self._published = False
            try:
                os.unlink(os.path.join(self.data_dir, "endpoints.json"))
            except FileNotFoundError:
                pass
        if self._refresh is not None:
            self._refresh.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.parts is not None:
            await self.parts.leave()  # leave the ring first
        if self._wire is not None:
            await self._wire.stop()
        if self._sc is not None:
            await self._sc.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        for sock in self._socks.values():
            sock.close()  # those no server took (start-up failed); closing twice is harmless
        if self.parts is not None:
            await self.parts.close()
        if self._lock_file is not None:
            self._lock_file.close()

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except MeshError:
            await self.stop()
            raise
        try:
            await stop.wait()
        finally:
            log.info("meshd stopping")
            await self.stop()
