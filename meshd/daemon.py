"""The one wiring place: builds a node's objects and owns their lifecycle.

Start-up order: lock the data directory (one daemon per directory), open
RocksDB, load the page index from disk (pages survive restarts), open the
mount table and apply the configured mounts, start the gRPC and HTTP servers,
then publish ``DATA_DIR/endpoints.json`` atomically. Shutdown runs the same
list backwards and removes ``endpoints.json`` first, so a script that finds
the file finds a node that answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import grpc
from aiohttp import web

from meshd.cache.pages import PageCache
from meshd.cache.readahead import ReadAhead
from meshd.cluster.membership import (
    Etcd,
    EtcdMembership,
    EtcdMounts,
    Member,
    Membership,
    StaticMembership,
    cluster_config,
)
from meshd.cluster.peers import Cluster
from meshd.config import NodeConfig
from meshd.core.metrics import InstrumentedStore, Metrics, Stats
from meshd.core.mounts import Mount, MountTable
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError
from meshd.metadata.kv import RocksKV
from meshd.metadata.shard import MetadataCache
from meshd.region.federation import EtcdFederation, Federation
from meshd.region.quota import Quotas, ThrottledStore
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from meshd.rpc.wire import WireServer
from meshd.servers.grpc_api import MeshService
from meshd.servers.http_api import make_app
from meshd.servers.meta_api import handlers as meta_handlers
from meshd.servers.shortcircuit import ShortCircuitServer
from meshd.understore import UnderStore

log = logging.getLogger(__name__)

DEFAULT_MOUNT_PATH = "/local"
WELCOME = b"""Hello from the data mesh.

This file lives in a local directory mounted at /local by `meshd embedded`.
You are reading it through the node's page cache: read it twice and
`meshctl report` shows the second read served from the cache.
"""


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


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = os.path.abspath(config.data_dir)
        self.endpoints: dict[str, str] = {}
        self.node_id = ""
        self._lock_file: IO[str] | None = None
        self._kv: RocksKV | None = None
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._sc: ShortCircuitServer | None = None
        self._s3_runner: web.AppRunner | None = None
        self._webhdfs_runner: web.AppRunner | None = None
        self.node: MeshNode | None = None
        self.metrics: Metrics | None = None
        self._etcd: Etcd | None = None
        self._membership: Membership | None = None
        self._etcd_mounts: EtcdMounts | None = None
        self._cluster: Cluster | None = None
        self._wire: WireServer | None = None
        self._federation: Federation | None = None
        self._etcd_fed: EtcdFederation | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _lock(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
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
        cfg = self.config
        # Under-store clients (boto3) and page-file I/O block in threads; the
        # default pool (cores + 4) would cap a cold read's fetch window.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="meshd-io"))
        self._lock()
        cc = cfg.cluster
        self.node_id = cc.node_id or self._node_id()
        page_size = cfg.cache.page_size
        if cc.enabled:
            self._etcd = Etcd(cc.etcd)
            try:
                shared = await cluster_config(self._etcd, cc.name, {"page_size": page_size})
            except MeshError:
                raise
            except Exception as e:
                raise MeshError(f"cannot reach etcd at {', '.join(cc.etcd)}: {type(e).__name__} {e}") from None
            if int(shared.get("page_size", page_size)) != page_size:
                log.warning("cluster %s uses %d-byte pages; using them instead of the configured %d",
                            cc.name, shared["page_size"], page_size)
                page_size = int(shared["page_size"])
        self._kv = RocksKV(os.path.join(self.data_dir, "meta"))
        stats = Stats()
        cache = PageCache(os.path.join(self.data_dir, "pages"), page_size,
                          cfg.cache.memory_capacity, cfg.cache.disk_capacity,
                          cfg.cache.high_watermark, cfg.cache.low_watermark, cfg.cache.write_behind)
        self.metrics = metrics = Metrics(stats, cache)
        fed: Federation | None = None
        if cc.enabled:
            fed = self._federation = Federation(
                cc.region, Quotas(), members=lambda: len(self._cluster.members) if self._cluster else 1)

            def wrap(store: UnderStore, mount: Mount) -> UnderStore:
                assert fed is not None
                throttled = ThrottledStore(store, lambda: fed.crossing(fed.home_of(mount)),
                                           lambda: fed.outbound(fed.home_of(mount)))
                return InstrumentedStore(throttled, metrics)

            mounts = MountTable(self._kv, wrap=wrap, options_for=fed.store_options)
        else:
            mounts = MountTable(self._kv, wrap=lambda store, mount: InstrumentedStore(store, metrics))
        readahead = ReadAhead(page_size, max_pages=cfg.cache.readahead_pages)

        host = _url_host(cc.advertise_host or cfg.host)
        http_sock = _bind(cfg.host, cfg.http_port)
        meta_sock = _bind(cfg.host, cc.meta_port)
        http_url = f"http://{host}:{http_sock.getsockname()[1]}"
        meta_addr = f"{host}:{meta_sock.getsockname()[1]}"
        grpc_port = cfg.grpc_port
        self._grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                              ("grpc.max_send_message_length", 64 << 20)])
        bind = f"[{cfg.host}]:{grpc_port}" if ":" in cfg.host else f"{cfg.host}:{grpc_port}"
        try:
            grpc_port = self._grpc.add_insecure_port(bind)
        except RuntimeError as e:
            raise InvalidArgument(f"cannot listen on {bind} for gRPC: {e}") from None
        me = Member(node_id=self.node_id, cluster=cc.name or "embedded", region=cc.region or "local",
                    grpc=f"{host}:{grpc_port}", http=http_url, meta=meta_addr, zone=cc.zone,
                    capacity=cc.capacity or cfg.cache.disk_capacity, labels=dict(cc.labels),
                    host=socket.gethostname(), data_dir=self.data_dir, pid=os.getpid(), started=time.time())
        if cc.enabled:
            assert self._etcd is not None
            self._membership = EtcdMembership(self._etcd, me, cc.lease_ttl)
            self._cluster = Cluster(self._membership)
            if fed is not None:
                fed.cluster = self._cluster
                self._membership.subscribe(lambda _members: fed.refresh_quotas())
        else:
            self._membership = StaticMembership(me)
        self.node = node = MeshNode(mounts, MetadataCache(self._kv), cache, stats, readahead,
                                    cfg.cache.load_parallelism, cluster=self._cluster, federation=fed)
        metrics.collector.metadata_write_errors = lambda: node.metadata.write_errors
        if self._cluster is not None:
            c = self._cluster
            metrics.collector.cluster = lambda: {
                "members": len(c.members), "etcd_up": int(c.membership.etcd_ok), "ring_changes": c.ring_changes,
                "peer_failures": c.peer_failures, "forwarded": node.metadata.forwarded,
                "fallbacks": node.metadata.fallbacks}
        if cc.enabled:
            assert self._etcd is not None
            self._etcd_mounts = EtcdMounts(self._etcd, cc.name, mounts)
            mounts.shared = self._etcd_mounts
            try:
                await self._etcd_mounts.start()
            except Exception as e:
                raise MeshError(f"cannot read the mount table from etcd: {type(e).__name__} {e}") from None
            assert fed is not None
            fed.on_change(lambda: self._spawn(mounts.reopen_changed()))
            metrics.collector.federation = fed
            self._etcd_fed = EtcdFederation(self._etcd, cc.name, fed)
            try:
                await self._etcd_fed.start()
            except Exception as e:
                raise MeshError(f"cannot read the topology from etcd: {type(e).__name__} {e}") from None
        for m in cfg.mounts:
            await mounts.add(m.path, m.uri, m.options, replace=True)
        if not mounts.entries() and cfg.default_mount and not cc.enabled:
            local = os.path.join(self.data_dir, "local-store")
            os.makedirs(local, exist_ok=True)
            welcome = os.path.join(local, "hello.txt")
            if not os.path.exists(welcome):
                with open(welcome, "wb") as f:  # noqa: ASYNC230 - start-up, once
                    f.write(WELCOME)
            await mounts.add(DEFAULT_MOUNT_PATH, "file://" + local, {})
            log.info("no mounts configured: mounted %s at %s", local, DEFAULT_MOUNT_PATH)

        pb_grpc.add_MeshServicer_to_server(MeshService(node, lambda: self.endpoints, self.node_id), self._grpc)
        await self._grpc.start()
        self._wire = WireServer(meta_handlers(node, self._info))
        await self._wire.start(meta_sock)
        self._runner = web.AppRunner(make_app(node, metrics.render), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, http_sock).start()
        self._sc = ShortCircuitServer(node, os.path.join(self.data_dir, "local.sock"))
        await self._sc.start()
        s3_url = await self._start_s3(node, host) if cfg.s3.enabled else None
        self.endpoints = {
            "grpc": me.grpc,
            "http": http_url,
            "meta": meta_addr,
            "metrics": f"{http_url}/metrics",
            "local": self._sc.path,
        }
        if s3_url:
            self.endpoints["s3"] = s3_url
        if cfg.webhdfs.enabled:
            self.endpoints["webhdfs"] = await self._start_webhdfs(node, host)
        if cc.enabled:  # join the ring last: peers see this node only once it answers
            assert isinstance(self._membership, EtcdMembership)
            self._membership.me = me = dataclasses.replace(me, endpoints=dict(self.endpoints))
            await self._membership.start()
        self._publish()
        log.info("meshd %s ready: %s", self.node_id, json.dumps(self.endpoints))

    async def _start_s3(self, node: MeshNode, host: str) -> str:
        """The S3 gateway (gateway/) on its own port; returns its URL."""
        from gateway.app import make_app as make_s3_app
        from gateway.multipart import MultipartStore

        s3 = self.config.s3
        sock = _bind(self.config.host, s3.port)
        uploads = MultipartStore(os.path.join(self.data_dir, "multipart"))
        removed = await uploads.cleanup(time.time() - s3.multipart_expiry)
        if removed:
            log.info("removed %d abandoned multipart uploads", removed)
        self._s3_runner = web.AppRunner(make_s3_app(node, s3, uploads), access_log=None, handle_signals=False)
        await self._s3_runner.setup()
        await web.SockSite(self._s3_runner, sock).start()
        url = f"http://{host}:{sock.getsockname()[1]}"
        if s3.anonymous:
            log.warning("*** S3 gateway at %s accepts ANONYMOUS requests: anyone who reaches it can read "
                        "and write every mount. Configure s3.access_keys (or --s3-access-key/--s3-secret-key) "
                        "before exposing it. ***", url)
        else:
            log.info("S3 gateway at %s (%d access key(s))", url, len(s3.access_keys))
        return url

    async def _start_webhdfs(self, node: MeshNode, host: str) -> str:
        """The WebHDFS gateway (gateway/webhdfs.py) on its own port; returns its URL
        (the REST root is ``<url>/webhdfs/v1``)."""
        from gateway.webhdfs import make_app as make_webhdfs_app

        wh = self.config.webhdfs
        sock = _bind(self.config.host, wh.port)
        self._webhdfs_runner = web.AppRunner(make_webhdfs_app(node, wh), access_log=None, handle_signals=False)
        await self._webhdfs_runner.setup()
        await web.SockSite(self._webhdfs_runner, sock).start()
        url = f"http://{host}:{sock.getsockname()[1]}"
        log.info("WebHDFS gateway at %s/webhdfs/v1 (%s)", url,
                 f"{len(wh.users)} user(s) allowed" if wh.users else "simple auth: every user.name")
        return url

    def _info(self) -> dict[str, Any]:
        """What the metadata wire's ``info`` tells clients: this node and its region."""
        assert self.node is not None and self._membership is not None
        members = self._membership.members.values()
        return {"node_id": self.node_id, "page_size": self.node.cache.page_size, "endpoints": self.endpoints,
                "cluster": self._membership.me.cluster, "region": self._membership.me.region,
                "vnodes": self._cluster.vnodes if self._cluster else 128,
                "members": [{"node_id": m.node_id, "grpc": m.grpc, "http": m.http, "meta": m.meta,
                             "capacity": m.capacity, "endpoints": m.endpoints} for m in members]}

    def _publish(self) -> None:
        path = os.path.join(self.data_dir, "endpoints.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"node_id": self.node_id, "pid": os.getpid(), **self.endpoints}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        try:
            os.unlink(os.path.join(self.data_dir, "endpoints.json"))
        except FileNotFoundError:
            pass
        if self._membership is not None:
            await self._membership.stop()  # leave the ring first
        if self._etcd_mounts is not None:
            await self._etcd_mounts.stop()
        if self._etcd_fed is not None:
            await self._etcd_fed.stop()
        if self._wire is not None:
            await self._wire.stop()
        if self._sc is not None:
            await self._sc.stop()
        if self._s3_runner is not None:
            await self._s3_runner.cleanup()
        if self._webhdfs_runner is not None:
            await self._webhdfs_runner.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        if self.node is not None:
            await self.node.close()
        if self._cluster is not None:
            await self._cluster.close()
        if self._etcd is not None:
            await self._etcd.close()
        if self._kv is not None:
            self._kv.close()
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
