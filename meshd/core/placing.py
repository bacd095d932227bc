"""The daemon's side of placement: what the mesh knows, gathered for ``topology.placement``.

``place.state`` (a metadata-wire op, any node answers) returns the *state
document* below for a list of datasets; ``meshctl place`` and the scheduler
extender turn it into a :class:`topology.placement.State` with
:func:`state_from_doc` and run the same pure ``place()`` on it. ``meshctl
place --state FILE`` reads the same document from a file (JSON or YAML), so a
placement can be planned, or replayed, without a mesh::

    {"region": "region-b",                  # the answering node's region
     "topology": "<topology YAML text>",    # null: one region, no links
     "datasets": {"s3://datasets/imagenet": {   # keyed by the name the job used
         "path": "/datasets/imagenet", "size": 1099511627776, "files": 1281167,
         "sampled": 2000, "home": "region-a",
         "cached": {"region-b": {"gpu-b-1": 549755813888}}}},
     "nodes": {"gpu-b-1": {"region": "region-b", "zone": "b1", "cache": true,
                           "gpus_free": null, "endpoint": "10.0.0.5:7070"}},
     "load": {"region-a>region-b": 12500000.0},  # bytes/s in use now, per link direction
     "cache_rate": 1073741824,              # optional: bytes/s one cache node serves (1 GiB/s)
     "store_rate": 262144000,               # optional: bytes/s a job gets from a store (250 MiB/s)
     "errors": {"region-c": "..."}}              # regions that did not answer

How the bytes are found. A dataset (a file or a directory tree) is listed
through the mesh's metadata; for each file, each page's owner in a region
says whether it holds the page (``shard.held``, the question routed reads
already ask), so the bytes land on the node that holds them. Every region
answers for itself (``region.cached``, one call per region with every
dataset). A dataset of more than ``SAMPLE_FILES`` files is sampled: that many
files, evenly spaced in listing order, are asked about and their cached
share is applied to the whole; the sizes are always exact.

A node's name is its ``kubernetes.io/hostname`` label when it announces one
(``cluster.labels`` in meshd's config; on Kubernetes, the node's name), else
its node id: the name a scheduler knows the machine by.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshd.errors import InvalidArgument, MeshError, NotFound
from topology.model import Region, Topology, parse
from topology.placement import Dataset, Node, State

if TYPE_CHECKING:
    from meshd.cluster.membership import Member
    from meshd.core.node import MeshNode

SAMPLE_FILES = 2000       # files per dataset asked about; more are sampled evenly
HELD_PARALLEL = 16        # files asked about at once
REGION_WAIT = 60.0        # seconds a peer region has to answer region.cached
HOSTNAME_LABEL = "kubernetes.io/hostname"


def node_name(m: Member) -> str:
    return m.labels.get(HOSTNAME_LABEL) or m.node_id


def _names(node: MeshNode) -> dict[str, str]:
    """node id -> scheduler name, for this region's members."""
    c = node.cluster
    return {m.node_id: node_name(m) for m in c.members.values()} if c is not None else {"": "local"}


async def region_cached(node: MeshNode, mesh_paths: list[str]) -> dict[str, Any]:
    """This region's share of each dataset: {"datasets": {path: {size, files, sampled, nodes:
    {name: bytes}}}, "links": {"src>dst": bytes/s into this region now}}."""
    names = _names(node)
    ps = node.cache.page_size
    out: dict[str, Any] = {}
    sem = asyncio.Semaphore(HELD_PARALLEL)
    for path in mesh_paths:
        files = [f async for f in node.walk_files(path)]
        total = sum(f.size for f in files)
        step = max(1, len(files) / SAMPLE_FILES)
        sample = [files[int(i * step)] for i in range(min(len(files), SAMPLE_FILES))]
        per_node: Counter[str] = Counter()

        async def one(f: Any, per_node: Counter[str] = per_node) -> None:
            async with sem:
                for node_id, pages in (await node.held_by_owner(f.path, f.version, f.size)).items():
                    per_node[names.get(node_id, node_id)] += sum(min(ps, f.size - i * ps) for i in pages)

        await asyncio.gather(*(one(f) for f in sample if f.size > 0))
        sampled = sum(f.size for f in sample)
        scale = total / sampled if sampled else 0.0
        out[path] = {"size": total, "files": len(files), "sampled": len(sample),
                     "nodes": {n: min(total, round(b * scale)) for n, b in sorted(per_node.items())}}
    return {"datasets": out, "links": await _link_rates(node)}


@dataclass(frozen=True)
class MeshState:
    """What the mesh knows of one path, shown as extended attributes by meshfs
    (``getfattr``) and WebHDFS (``GETXATTRS``) alike."""

    home_region: str  # where the path's under-store is
    region: str  # the region answering
    cached_bytes: int  # of the file, or of every file below the directory, held in this region

    def xattrs(self) -> dict[str, str]:
        return {"user.mesh.home_region": self.home_region, "user.mesh.cached_bytes": str(self.cached_bytes),
                "user.mesh.region": self.region}


XATTR_NAMES = tuple(MeshState("", "", 0).xattrs())


async def mesh_state(node: MeshNode, path: str) -> MeshState:
    """The one computation of a path's :class:`MeshState` (sampled like ``place.state``
    for directories of more than SAMPLE_FILES files)."""
    await node.stat(path)  # NotFound first
    fed = node.federation
    region = fed.region if fed is not None else "local"
    t = node.resolve(path)
    home = fed.home_of(t.mount) if fed is not None and t is not None else region
    d = (await region_cached(node, [path]))["datasets"][path]
    return MeshState(home, region, min(int(d["size"]), sum(d["nodes"].values())))


async def _link_rates(node: MeshNode) -> dict[str, float]:
    """Bytes/s this region moves into itself now, per link (its members' rates summed)."""
    fed = node.federation
    if fed is None:
        return {}
    rates: dict[str, float] = {}
    for row in await node.cluster_report(wait=2.0) if node.cluster is not None else []:
        for q in row.get("links", []):
            if q["dst"] == fed.region:
                key = f"{q['src']}>{q['dst']}"
                rates[key] = rates.get(key, 0.0) + float(q["rate"])
    return dict(rates)


async def gather(node: MeshNode, names: list[str]) -> dict[str, Any]:
    """The state document for datasets named as a job names them (mesh paths, s3://,
    hdfs:// URIs the mount table resolves). NotFound names a dataset no mount covers.
    No name at all: the region and topology alone (``meshctl topology show``)."""
    if not all(isinstance(n, str) and n for n in names):
        raise InvalidArgument("place.state: name at least one dataset")
    fed = node.federation
    cluster = node.cluster
    region = fed.region if fed is not None else (cluster.me.region if cluster is not None else "local")
    topo = fed.topology if fed is not None else None
    if not names:
        return {"region": region, "topology": topo.text if topo is not None else None, "datasets": {},
                "nodes": {}, "load": {}, "errors": {}}
    mesh = {n: node.mounts.mesh_path(n) for n in names}
    homes: dict[str, str] = {}
    for n, p in mesh.items():
        found = node.resolve(p)
        if found is None:
            raise NotFound(f"no mount covers {n}")
        homes[n] = fed.home_of(found.mount) if fed is not None else region
        await node.stat(p)  # NotFound now, with the dataset's name, rather than a region's error later
    wanted = sorted(set(mesh.values()))
    answers: dict[str, dict[str, Any]] = {region: await region_cached(node, wanted)}
    errors: dict[str, str] = {}
    peers = fed.peers if fed is not None else {}

    async def ask(r: str, members: dict[str, Member]) -> None:
        assert cluster is not None
        last: Exception | None = None
        for m in sorted(members.values(), key=lambda m: m.node_id)[:2]:
            try:
                answers[r] = await cluster.call(m, "region.cached", {"ps": wanted}, wait=REGION_WAIT)
                return
            except MeshError as e:
                last = e
        errors[r] = f"{type(last).__name__}: {last}" if last else "no live member"

    if cluster is not None:
        await asyncio.gather(*(ask(r, ms) for r, ms in sorted(peers.items())))

    datasets: dict[str, Any] = {}
    for n, p in mesh.items():
        here = answers[region]["datasets"][p]
        datasets[n] = {"path": p, "size": here["size"], "files": here["files"], "sampled": here["sampled"],
                       "home": homes[n],
                       "cached": {r: a["datasets"].get(p, {}).get("nodes", {}) for r, a in sorted(answers.items())}}
    nodes: dict[str, Any] = {}
    members = ([*cluster.members.values(), *(m for ms in peers.values() for m in ms.values())]
               if cluster is not None else [])
    for m in members:
        nodes[node_name(m)] = {"region": m.region, "zone": m.zone, "cache": True, "gpus_free": None,
                               "endpoint": m.grpc}
    load: dict[str, float] = {}
    for a in answers.values():
        load.update(a.get("links", {}))
    return {"region": region, "topology": topo.text if topo is not None else None, "datasets": datasets,
            "nodes": nodes, "load": load, "errors": errors}


async def stage(node: MeshNode, names: list[str]) -> dict[str, Any]:
    """Start warming this region with the datasets (a load each, in the background, through
    the same single-flight and link quotas as reads); returns at once with what started."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidArgument("stage: name at least one dataset")
    mesh = [node.mounts.mesh_path(n) for n in names]
    for p in mesh:
        await node.stat(p)  # NotFound before anything starts

    async def load(path: str) -> None:
        async for _ in node.load(path):
            pass

    for p in mesh:
        node.spawn(load(p))
    return {"region": node.federation.region if node.federation is not None else "local", "started": mesh}


# ---------------------------------------------------------------- document -> State

def _size(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise InvalidArgument(f"{where}: expected a byte count, got {v!r}")
    return int(v)


def state_from_doc(doc: Any, topology: Topology | None = None) -> State:
    """The placement State of a state document; InvalidArgument names the bad field."""
    if not isinstance(doc, dict):
        raise InvalidArgument("state: expected a mapping with datasets, nodes, topology")
    region = str(doc.get("region") or "local")
    if topology is None:
        text = doc.get("topology")
        topology = parse(text, "state.topology") if text else Topology([Region(region)], [])
    datasets: dict[str, Dataset] = {}
    for name, d in (doc.get("datasets") or {}).items():
        where = f"datasets.{name}"
        if not isinstance(d, dict):
            raise InvalidArgument(f"{where}: expected a mapping")
        home = str(d.get("home") or region)
        if home not in topology.regions:
            raise InvalidArgument(f"{where}.home: {home!r} is not a region of the topology")
        cached = {str(r): {str(n): _size(b, f"{where}.cached.{r}.{n}") for n, b in (ns or {}).items()}
                  for r, ns in (d.get("cached") or {}).items()}
        datasets[str(name)] = Dataset(str(name), _size(d.get("size", 0), f"{where}.size"), home, cached)
    nodes: dict[str, Node] = {}
    for name, n in (doc.get("nodes") or {}).items():
        if not isinstance(n, dict) or not isinstance(n.get("region"), str):
            raise InvalidArgument(f"nodes.{name}: expected a mapping with a region")
        gpus = n.get("gpus_free")
        nodes[str(name)] = Node(str(name), n["region"], str(n.get("zone") or ""),
                                None if gpus is None else _size(gpus, f"nodes.{name}.gpus_free"),
                                bool(n.get("cache", False)))
    load: dict[tuple[str, str], float] = {}
    for key, rate in (doc.get("load") or {}).items():
        src, sep, dst = str(key).partition(">")
        if not sep:
            raise InvalidArgument(f"load.{key}: expected 'src>dst'")
        load[(src, dst)] = float(_size(rate, f"load.{key}"))
    rates = {k: float(_size(doc[k], k)) for k in ("cache_rate", "store_rate") if doc.get(k) is not None}
    return State(topology, datasets, nodes, load, **rates)
