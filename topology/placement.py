"""Where a job should run: a pure function from (job, state) to ranked regions and nodes.

``place(job, state)`` ranks every region of the topology for ``job`` (its
datasets, pods and GPUs per pod) given ``state``: the topology, where each
dataset's bytes are cached (per region and node), each dataset's size and
home region, the nodes with their free GPUs, and the current load on the
links. For each region it works out, and returns as reasons:

* **bytes local**: the dataset bytes the region's caches already hold;
* **bytes to move, and over which links**: the missing bytes of each dataset
  come from the sources :func:`topology.router.route` ranks for that region
  (a peer region's cache, else the home under-store), the way the daemon
  will fetch them. A peer region holding ``c`` of a dataset's ``s`` bytes is
  assumed to hold the same share of the bytes this region lacks (``c / s``
  of them): caches fill independently of each other, so nothing better is
  known without page lists. The under-store supplies the rest.
* **staging time under the quotas**: each link carries the bytes of every
  source whose path crosses it, framing included (``1 + overhead`` per
  payload byte, as the quota charges them). Links work in parallel, so
  staging takes ``max over links(bytes on the link / headroom)`` plus the
  longest path latency, where headroom is the link's quota minus its current
  load, floored at 5 % (a busy link is slow, not closed): the same figure the
  router uses.
* **the under-store's pace**: bytes that come from a home store, even one in
  the region itself, are a cache fill, not a hit: all of a job's store
  transfers share the store's ``store_rate`` (by default 250 MiB/s, an object
  store bucket's share for one job; set it in the state), so staging also
  takes at least ``store bytes / store_rate``. Data already cached beats data
  merely nearby.
* **expected read rate**: the region's caches serve ``cache_rate`` per cache
  node; bytes still remote arrive at the link's pace. A job that starts now
  reads its data once in ``max(bytes / cache rate, staging)`` seconds; the
  rate is the total over that.
* **GPUs**: how many of the job's pods fit on the region's free GPUs. A
  region where they do not all fit ranks after every region where they do,
  and among those, the more pods fit the better.

Regions are ranked by ``seconds + cost_weight * cost`` (the expected time to
read the data once, plus what moving it costs, valued as the router values
it), then by bytes local, then by name, so every caller ranks the same way.
Within a region the nodes are ranked by the job's bytes each holds, then by
free GPUs, and pods are spread over them in rounds (one pod per node per
round, best node first), so IO-heavy pods do not pile onto one machine.

Nothing here touches the network, a clock or global state: the daemon
(``meshctl place``, the scheduler extender) and ``simulations/`` call it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .model import Topology
from .model import format_size as _human
from .router import MIN_HEADROOM, route

DEFAULT_CACHE_RATE = 1 << 30  # bytes/s one cache node serves to readers in its region
DEFAULT_STORE_RATE = 250 << 20  # bytes/s a job's reads get from one under-store


@dataclass(frozen=True)
class Job:
    """What to place: datasets (mesh, ``s3://`` or ``hdfs://`` paths) and pods."""

    name: str
    datasets: tuple[str, ...]
    pods: int = 1
    gpus_per_pod: int = 0

    def __post_init__(self) -> None:
        if self.pods < 1:
            raise ValueError(f"job {self.name!r}: pods must be at least 1, not {self.pods}")
        if self.gpus_per_pod < 0:
            raise ValueError(f"job {self.name!r}: GPUs per pod must not be negative")


@dataclass(frozen=True)
class Dataset:
    """One dataset's size, home region and cached bytes (region -> node -> bytes)."""

    path: str
    size: int
    home: str
    cached: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def in_region(self, region: str) -> int:
        return min(self.size, sum(self.cached.get(region, {}).values()))


@dataclass(frozen=True)
class Node:
    """A machine jobs can run on. ``gpus_free`` None: unknown (the scheduler checks)."""

    name: str
    region: str
    zone: str = ""
    gpus_free: int | None = None
    cache: bool = False  # runs a mesh cache node


@dataclass
class State:
    topology: Topology
    datasets: Mapping[str, Dataset]                 # by the path the job names
    nodes: Mapping[str, Node] = field(default_factory=dict)
    load: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (src, dst) -> bytes/s in use
    cache_rate: float = DEFAULT_CACHE_RATE
    store_rate: float = DEFAULT_STORE_RATE

    @cached_property
    def nodes_by_region(self) -> dict[str, list[Node]]:
        """Each region's nodes, most free GPUs first (computed once: do not change ``nodes``
        of a State in use; make a new State)."""
        out: dict[str, list[Node]] = {}
        for n in sorted(self.nodes.values(), key=lambda n: (-(n.gpus_free or 0), n.name)):
            out.setdefault(n.region, []).append(n)
        return out


@dataclass(frozen=True)
class Transfer:
    """Bytes of one dataset a region must bring in from one source."""

    dataset: str
    source: str               # "cache:<region>" | "store:<region>"
    path: tuple[str, ...]     # regions crossed, source first
    bytes: int


@dataclass(frozen=True)
class NodeChoice:
    name: str
    zone: str
    cached_bytes: int         # of the job's datasets, on this node
    gpus_free: int | None
    pods: int                 # pods of the job this plan puts here
    cache: bool


@dataclass(frozen=True)
class Candidate:
    region: str
    feasible: bool            # all pods fit on the region's free GPUs
    pods_fit: int
    bytes_total: int
    bytes_local: int
    transfers: tuple[Transfer, ...]
    link_bytes: Mapping[tuple[str, str], int]   # wire bytes per link direction (framing included)
    staging_seconds: float    # to bring every missing byte in, under the quotas
    cost: float               # cost units of the transfers
    read_rate: float          # expected bytes/s reading the datasets once, starting now
    seconds: float            # expected time to read the datasets once
    score: float              # seconds + cost_weight * cost; lower is better
    nodes: tuple[NodeChoice, ...]   # those getting a pod or holding data, best first
    reasons: tuple[str, ...]

    @property
    def bytes_to_move(self) -> int:
        return self.bytes_total - self.bytes_local

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region, "feasible": self.feasible, "pods_fit": self.pods_fit,
            "bytes_total": self.bytes_total, "bytes_local": self.bytes_local,
            "bytes_to_move": self.bytes_to_move,
            "transfers": [{"dataset": t.dataset, "source": t.source, "path": list(t.path), "bytes": t.bytes}
                          for t in self.transfers],
            "links": [{"src": s, "dst": d, "bytes": b} for (s, d), b in sorted(self.link_bytes.items())],
            "staging_seconds": self.staging_seconds, "cost": self.cost, "read_rate": self.read_rate,
            "seconds": self.seconds, "score": self.score,
            "nodes": [{"name": n.name, "zone": n.zone, "cached_bytes": n.cached_bytes, "gpus_free": n.gpus_free,
                       "pods": n.pods, "cache": n.cache} for n in self.nodes],
            "reasons": list(self.reasons),
        }


def place(job: Job, state: State, regions: Iterable[str] | None = None) -> list[Candidate]:
    """Every region (or those named), best first. KeyError names a dataset missing from the state."""
    datasets = [state.datasets[d] for d in dict.fromkeys(job.datasets)]
    out = [_candidate(job, state, datasets, r) for r in (regions if regions is not None else state.topology.regions)]
    out.sort(key=lambda c: (not c.feasible, 0 if c.feasible else -c.pods_fit, c.score, -c.bytes_local, c.region))
    return out


def _candidate(job: Job, state: State, datasets: list[Dataset], region: str) -> Candidate:
    topo = state.topology
    total = local = 0
    transfers: list[Transfer] = []
    reasons: list[str] = []
    unreachable = False
    for d in datasets:
        have = d.in_region(region)
        total += d.size
        local += have
        missing = d.size - have
        if missing <= 0:
            continue
        holders = [r for r in d.cached if r != region and d.in_region(r) > 0]
        left = missing
        for src in route(topo, region, d.home, holders, missing, state.load):
            share = left if src.kind == "store" else min(left, d.in_region(src.region) * missing // d.size)
            if share <= 0:
                continue
            transfers.append(Transfer(d.path, src.name, src.path, share))
            left -= share
            if left <= 0:
                break
        if left > 0:
            unreachable = True
            reasons.append(f"{d.path}: {left} bytes cannot reach {region} (no path from {d.home})")

    link_bytes: dict[tuple[str, str], int] = {}
    cost = latency = 0.0
    for t in transfers:
        path_latency = 0.0
        for a, b in itertools.pairwise(t.path):
            link = topo.links[(a, b)]
            link_bytes[(a, b)] = link_bytes.get((a, b), 0) + int(t.bytes * (1 + link.overhead))
            cost += link.cost * t.bytes / (1 << 30)
            path_latency += link.latency
        latency = max(latency, path_latency)
    from_store = sum(t.bytes for t in transfers if t.source.startswith("store:"))
    staging = from_store / state.store_rate
    for (a, b), wire in link_bytes.items():
        link = topo.links[(a, b)]
        headroom = max(link.quota - state.load.get((a, b), 0.0), link.quota * MIN_HEADROOM)
        staging = max(staging, wire / headroom)
    staging += latency if link_bytes else 0.0
    if unreachable:
        staging = float("inf")

    nodes = state.nodes_by_region.get(region, [])
    cache_nodes = sum(1 for n in nodes if n.cache) or 1
    seconds = max(total / (state.cache_rate * cache_nodes), staging)
    read_rate = total / seconds if seconds > 0 else state.cache_rate * cache_nodes
    choices, fit = _spread(job, datasets, region, nodes, unknown=not state.nodes)
    feasible = fit >= job.pods and staging != float("inf")
    reasons[:0] = _explain(job, region, total, local, transfers, link_bytes, staging, fit, state, topo)
    return Candidate(region, feasible, fit, total, local, tuple(transfers), link_bytes, staging, cost,
                     read_rate, seconds, seconds + topo.cost_weight * cost, choices, tuple(reasons))


def _spread(job: Job, datasets: list[Dataset], region: str, nodes: list[Node],
            unknown: bool) -> tuple[tuple[NodeChoice, ...], int]:
    """The pods spread in rounds over the region's nodes, best first; returns the nodes that
    get a pod or hold some of the data (not every machine of the region) and the pods placed."""
    if unknown:  # the state names no nodes at all: GPUs are the scheduler's business
        return (), job.pods
    cached: dict[str, int] = {}
    for d in datasets:
        for name, b in d.cached.get(region, {}).items():
            cached[name] = cached.get(name, 0) + b
    # holders by their bytes, then every other node in the region's order (most free GPUs first)
    holders = sorted((n for n in nodes if cached.get(n.name)),
                     key=lambda n: (-cached[n.name], -(n.gpus_free or 0), n.name))
    ranked = holders + [n for n in nodes if not cached.get(n.name)] if holders else nodes
    per = job.gpus_per_pod
    room = [job.pods if n.gpus_free is None or per == 0 else n.gpus_free // per for n in ranked]
    pods = [0] * len(ranked)
    placed = 0
    open_ = [i for i, r in enumerate(room) if r > 0]
    while placed < job.pods and open_:
        still = []
        for i in open_:
            if placed >= job.pods:
                break
            pods[i] += 1
            placed += 1
            if pods[i] < room[i]:
                still.append(i)
        open_ = still
    choices = tuple(NodeChoice(n.name, n.zone, cached.get(n.name, 0), n.gpus_free, pods[i], n.cache)
                    for i, n in enumerate(ranked) if pods[i] or cached.get(n.name, 0))
    return choices, placed


def _explain(job: Job, region: str, total: int, local: int, transfers: list[Transfer],
             link_bytes: Mapping[tuple[str, str], int], staging: float, fit: int, state: State,
             topo: Topology) -> list[str]:
    out = [f"{_share(local, total)} of {_human(total)} already cached in {region}"]
    for t in transfers:
        out.append(f"{_human(t.bytes)} of {t.dataset} from {t.source} over {' -> '.join(t.path)}")
    for (a, b), wire in sorted(link_bytes.items()):
        link = topo.links[(a, b)]
        headroom = max(link.quota - state.load.get((a, b), 0.0), link.quota * MIN_HEADROOM)
        out.append(f"link {a} -> {b}: {_human(wire)} on the wire at {_human(headroom)}/s "
                   f"(quota {_human(link.quota)}/s) = {wire / headroom:.1f} s")
    from_store = sum(t.bytes for t in transfers if t.source.startswith("store:"))
    if from_store:
        out.append(f"under-store: {_human(from_store)} at {_human(state.store_rate)}/s "
                   f"= {from_store / state.store_rate:.1f} s")
    if transfers:
        out.append(f"staging ETA {staging:.1f} s under the link quotas")
    if state.nodes and not state.nodes_by_region.get(region):
        out.append(f"no nodes known in {region}")
    elif job.gpus_per_pod and state.nodes:
        out.append(f"{min(fit, job.pods)} of {job.pods} pods fit ({job.gpus_per_pod} GPU each)")
    elif not state.nodes:
        out.append("free GPUs unknown: the scheduler checks them")
    return out


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "100%"
