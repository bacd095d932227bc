"""Scheduler extender: kube-scheduler's and Volcano's HTTP extender protocols over placement.

``meshd scheduler-extender --listen HOST:PORT`` serves, as JSON over HTTP POST:

===========================  =============================================  ===================================
route                        request (as the scheduler sends it)            answer
===========================  =============================================  ===================================
``/kube/filter``             ExtenderArgs ``{pod, nodes: NodeList |         ExtenderFilterResult ``{nodes |
                             nodenames: [..]}``                             nodenames, failedNodes, error}``
``/kube/prioritize``         ExtenderArgs                                   HostPriorityList ``[{host, score}]``,
                                                                            score 0-10
``/volcano/predicate``       ``{task: TaskInfo, node: NodeInfo}``           ``{status: "" | reason, code}``
``/volcano/prioritize``      ``{task: TaskInfo, nodes: [NodeInfo]}``        ``{nodeScore: {name: 0-100},
                                                                            errorMessage}``
``/volcano/onSessionOpen``,  anything                                       ``{}``
``/volcano/onSessionClose``
``/healthz``                 GET                                            ``ok``
===========================  =============================================  ===================================

Volcano's TaskInfo and NodeInfo are Go structs encoded without JSON tags
(``Pod``, ``Name``, ``Node``); field names are matched case-insensitively,
as Go's decoder does.

What it decides. A pod names its datasets in the annotation
``datamesh.io/datasets`` (``meshctl place --patch`` puts it there); a pod
that names none is not the mesh's business: every node passes, every score is
0. For the others, ``topology.placement.place`` ranks the regions for one pod
(the scheduler has already checked resources, so GPUs are not judged here):

* **filter/predicate** passes every node, except nodes of a region the
  datasets cannot reach at all (no path in the topology), and, when the pod
  asks for it with ``datamesh.io/placement: strict``, nodes outside the best
  region. A node whose region is unknown passes.
* **prioritize** scores a node by its region (``7 x (best + 1) / (this + 1)``
  over the regions' expected seconds to read the data) plus the share of the
  datasets' bytes cached on the node itself (``3 x bytes / most bytes on any
  node asked about``), scaled to 0-10 for kube-scheduler and 0-100 for
  Volcano.

A node's region comes from its ``topology.kubernetes.io/region`` label, else
from the mesh (the mesh node of that name), else from the topology's node
lists and selectors.

Never slow the scheduler. What the mesh knows comes from ``place.state``,
kept per set of datasets for ``ttl`` seconds and refreshed in the background
while the old answer is still served. A set asked about for the first time
waits at most ``first_wait`` seconds; if the mesh has not answered by then
the pod is treated as naming no dataset (everything passes, scores 0) and the
next cycle gets the answer. Malformed JSON gets a 400 with a message.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshd.config import LimitsConfig
from meshd.core.placing import state_from_doc
from meshd.errors import InvalidArgument, log_internal
from meshd.limits import loads, log_rejected
from meshd.servers.guard import Guard
from meshd.servers.guard import serve as guarded
from topology import k8s
from topology.model import Topology
from topology.placement import Candidate, Job, Node, State, place

log = logging.getLogger(__name__)

STRICT = "datamesh.io/placement"
KUBE_MAX = 10        # kube-scheduler's MaxExtenderPriority
VOLCANO_MAX = 100.0  # Volcano's node score scale
UNSCHEDULABLE = 2    # Volcano api.Unschedulable
UNRESOLVABLE = 3     # Volcano api.UnschedulableAndUnresolvable


class BadRequest(ValueError):
    pass


def field(obj: Any, name: str) -> Any:
    """``obj[name]``, matched case-insensitively (Go's JSON decoding); None when absent."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    low = name.lower()
    return next((v for k, v in obj.items() if isinstance(k, str) and k.lower() == low), None)


class StateCache:
    """State documents per set of datasets, fetched from the mesh, served while fresh
    and refreshed in the background when stale."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[dict[str, Any]]],
                 topology: Topology | None = None, ttl: float = 10.0, first_wait: float = 0.5) -> None:
        self._fetch = fetch
        self._topology = topology
        self.ttl = ttl
        self.first_wait = first_wait
        self._states: dict[tuple[str, ...], tuple[float, State]] = {}
        self._pending: dict[tuple[str, ...], asyncio.Task[State]] = {}
        self.fetches = 0
        self.errors = 0

    async def _load(self, key: tuple[str, ...]) -> State:
        try:
            self.fetches += 1
            state = state_from_doc(await self._fetch(list(key)), self._topology)
            self._states[key] = (time.monotonic() + self.ttl, state)
            # Out of the cyclic collector's sight: a full collection walking every state
            # was the whole slow tail of a decision (bench/bench_placement.py: max 15 ms ->
            # 3 ms). States hold no cycles; reference counting still frees old ones.
            gc.freeze()
            return state
        except Exception as e:
            self.errors += 1
            log.warning("placement state for %s: %s", ", ".join(key), e)
            raise
        finally:
            self._pending.pop(key, None)

    def _refresh(self, key: tuple[str, ...]) -> asyncio.Task[State]:
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(self._load(key))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def get(self, datasets: list[str]) -> State | None:
        key = tuple(sorted(set(datasets)))
        held = self._states.get(key)
        if held is not None:
            if held[0] <= time.monotonic():
                self._refresh(key)
            return held[1]
        task = self._refresh(key)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.first_wait)
        except Exception:
            return None

    async def close(self) -> None:
        for t in list(self._pending.values()):
            t.cancel()


class Decision:
    """One pod's placement over the nodes a scheduler asked about."""

    def __init__(self, pod: dict[str, Any], nodes: list[dict[str, Any]], names: list[str],
                 state: State | None) -> None:
        self.names = names
        self.region: dict[str, str | None] = {}
        self.cached: dict[str, int] = {}
        self.ranked: dict[str, Candidate] = {}
        self.best: Candidate | None = None
        anns = ((pod.get("metadata") or {}).get("annotations") or {}) if isinstance(pod, dict) else {}
        self.strict = str(anns.get(STRICT, "")).lower() == "strict"
        datasets = k8s.datasets_of(pod) if isinstance(pod, dict) else []
        if state is None or not datasets or any(d not in state.datasets for d in datasets):
            return
        objs = {str((n.get("metadata") or {}).get("name")): n for n in nodes if isinstance(n, dict)}
        for name in names:
            self.region[name] = self._region_of(name, objs.get(name), state)
        job = Job(str((pod.get("metadata") or {}).get("name") or "pod"), tuple(datasets), 1, 0)
        # The scheduler has checked resources: every node it asks about is a candidate.
        # The mesh's own nodes stay (they set each region's cache rate); only names asked get scores.
        asked = {n: Node(n, r, cache=n in state.nodes and state.nodes[n].cache)
                 for n, r in self.region.items() if r is not None}
        ranked = place(job, State(state.topology, state.datasets, {**state.nodes, **asked}, state.load,
                                  state.cache_rate, state.store_rate))
        self.ranked = {c.region: c for c in ranked}
        self.best = ranked[0] if ranked else None
        for c in ranked:
            for n in c.nodes:
                self.cached[n.name] = n.cached_bytes

    @staticmethod
    def _region_of(name: str, obj: dict[str, Any] | None, state: State) -> str | None:
        labels = {str(k): str(v) for k, v in (((obj or {}).get("metadata") or {}).get("labels") or {}).items()}
        topo = state.topology
        if labels.get(k8s.REGION_LABEL) in topo.regions:
            return labels[k8s.REGION_LABEL]
        mesh = state.nodes.get(name)
        if mesh is not None and mesh.region in topo.regions:
            return mesh.region
        return k8s.region_of(name, labels, topo)

    @property
    def active(self) -> bool:
        return self.best is not None

    def refusal(self, name: str) -> tuple[str, int] | None:
        """Why ``name`` cannot take the pod (reason, Volcano code), or None."""
        region = self.region.get(name)
        if not self.active or region is None:
            return None
        c = self.ranked.get(region)
        if c is None:
            return None
        if c.staging_seconds == float("inf"):
            return f"the pod's datasets cannot reach region {region}: no path from their home", UNRESOLVABLE
        if self.strict and self.best is not None and region != self.best.region:
            return (f"strict placement: the datasets are best read in {self.best.region}, "
                    f"node is in {region}", UNSCHEDULABLE)
        return None

    def score(self, name: str) -> float:
        """0..1: 0.7 for the region's rank, 0.3 for the node's own share of the bytes."""
        if not self.active or self.best is None:
            return 0.0
        region = self.region.get(name)
        c = self.ranked.get(region) if region is not None else None
        if c is None or c.score == float("inf"):
            region_part = 0.0
        else:
            region_part = (self.best.score + 1.0) / (c.score + 1.0)
        most = max((self.cached.get(n, 0) for n in self.names), default=0)
        node_part = self.cached.get(name, 0) / most if most else 0.0
        return 0.7 * region_part + 0.3 * node_part


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


MAX_BODY = 64 << 20  # ExtenderArgs with every node object of a large cluster: tens of MiB


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = loads(await request.read(), "request body")  # deep nesting refused, never a RecursionError
    except InvalidArgument as e:
        log_rejected(f"extender {request.path}", request.remote or "", str(e))
        raise BadRequest(str(e)) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _kube_nodes(args: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], bool]:
    """(node objects, node names, whether the scheduler sent names only)."""
    nodes = field(args, "nodes")
    names = field(args, "nodenames")
    if isinstance(nodes, dict) and isinstance(nodes.get("items"), list):
        items = [n for n in nodes["items"] if isinstance(n, dict)]
        return items, [str((n.get("metadata") or {}).get("name")) for n in items], False
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return [], list(names), True
    raise BadRequest("ExtenderArgs needs nodes (a NodeList with items) or nodenames (a list of names)")


def _pod(obj: Any, what: str) -> dict[str, Any]:
    pod = obj
    if not isinstance(pod, dict):
        raise BadRequest(f"{what} is missing or not an object")
    return pod


def _task_pod(args: dict[str, Any]) -> dict[str, Any]:
    """The pod of a Volcano request's ``task`` (a TaskInfo)."""
    task = field(args, "task")
    if not isinstance(task, dict):
        raise BadRequest("task is missing or not an object")
    return _pod(field(task, "Pod"), "task.Pod")


def _node_info(info: Any) -> tuple[dict[str, Any], str]:
    """(node object, node name) of a Volcano NodeInfo."""
    if not isinstance(info, dict):
        raise BadRequest("node info is not an object")
    obj = field(info, "Node")
    if not isinstance(obj, dict):
        obj = {}
    name = field(info, "Name") or (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("node info has no Name")
    return (obj or {"metadata": {"name": name}}), name


class ExtenderHandlers:
    """The extender's POST routes, deciding over the states of one :class:`StateCache`."""

    def __init__(self, cache: StateCache) -> None:
        self.cache = cache

    async def decide(self, pod: dict[str, Any], nodes: list[dict[str, Any]], names: list[str]) -> Decision:
        datasets = k8s.datasets_of(pod)
        state = await self.cache.get(datasets) if datasets else None
        return Decision(pod, nodes, names, state)

    async def kube_filter(self, request: web.Request) -> web.Response:
        args = await _body(request)
        pod = _pod(field(args, "pod"), "pod")
        nodes, names, names_only = _kube_nodes(args)
        d = await self.decide(pod, nodes, names)
        failed = {}
        for n in names:
            why = d.refusal(n)
            if why is not None:
                failed[n] = why[0]
        if names_only:
            return _json({"nodenames": [n for n in names if n not in failed], "failedNodes": failed, "error": ""})
        kept = [o for o, n in zip(nodes, names, strict=True) if n not in failed]
        return _json({"nodes": {"apiVersion": "v1", "kind": "NodeList", "items": kept},
                      "failedNodes": failed, "error": ""})

    async def kube_prioritize(self, request: web.Request) -> web.Response:
        args = await _body(request)
        pod = _pod(field(args, "pod"), "pod")
        nodes, names, _ = _kube_nodes(args)
        d = await self.decide(pod, nodes, names)
        return _json([{"host": n, "score": round(KUBE_MAX * d.score(n))} for n in names])

    async def volcano_predicate(self, request: web.Request) -> web.Response:
        args = await _body(request)
        pod = _task_pod(args)
        obj, name = _node_info(field(args, "node"))
        d = await self.decide(pod, [obj], [name])
        why = d.refusal(name)
        return _json({"status": "", "code": 0} if why is None else {"status": why[0], "code": why[1]})

    async def volcano_prioritize(self, request: web.Request) -> web.Response:
        args = await _body(request)
        pod = _task_pod(args)
        infos = field(args, "nodes")
        if not isinstance(infos, list):
            raise BadRequest("nodes must be a list of node infos")
        pairs = [_node_info(i) for i in infos]
        d = await self.decide(pod, [o for o, _ in pairs], [n for _, n in pairs])
        return _json({"nodeScore": {n: round(VOLCANO_MAX * d.score(n), 3) for _, n in pairs}, "errorMessage": ""})


async def _session(request: web.Request) -> web.Response:
    return _json({})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        return _json({"error": str(e)}, status=400)
    except web.HTTPException:
        raise
    except Exception as e:  # never a traceback to the scheduler; it retries or ignores
        log_internal(log, f"extender {request.path}", e)
        return _json({"error": f"{type(e).__name__}: {e}"}, status=500)


def make_app(cache: StateCache) -> web.Application:
    handlers = ExtenderHandlers(cache)
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app.router.add_post("/kube/filter", handlers.kube_filter)
    app.router.add_post("/kube/prioritize", handlers.kube_prioritize)
    app.router.add_post("/volcano/predicate", handlers.volcano_predicate)
    app.router.add_post("/volcano/prioritize", handlers.volcano_prioritize)
    app.router.add_post("/volcano/onSessionOpen", _session)
    app.router.add_post("/volcano/onSessionClose", _session)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve(listen: str, fetch: Callable[[list[str]], Awaitable[dict[str, Any]]],
                topology: Topology | None = None, ttl: float = 10.0, first_wait: float = 0.5,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints ``listening on http://host:port`` once bound
    (``https://`` with ``ssl_context``: meshd scheduler-extender --tls-cert)."""
    import signal

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    cache = StateCache(fetch, topology, ttl, first_wait)
    host = host.strip("[]") or "0.0.0.0"
    sock = socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                backlog=1024)
    sock.setblocking(False)
    bound = sock.getsockname()
    # the node's limits: slow senders cut, requests in flight per client capped (meshd.servers.guard)
    runner = await guarded(make_app(cache), sock, Guard("extender", LimitsConfig()), ssl_context=ssl_context)
    scheme = "https" if ssl_context is not None else "http"
    print(f"scheduler extender listening on {scheme}://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cache.close()
        await runner.cleanup()
