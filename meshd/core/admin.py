"""Cache management and the node's report: load, free, sync, which pages a region holds,
the report and the region's members' reports. Functions of a :class:`MeshNode`, which
offers each as a method (the facade); here so the facade stays a facade.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshd import paths
from meshd.cache.pages import file_id
from meshd.cache.sources import Pinned
from meshd.cluster.membership import Member
from meshd.core.handle import pin
from meshd.errors import InvalidArgument, MeshError, NodeUnavailable

if TYPE_CHECKING:
    from meshd.core.node import MeshNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadProgress:
    path: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    bytes_fetched: int  # of bytes_done, how many came from the under-store


async def load(node: MeshNode, path: str, progress_interval: float = 0.2) -> AsyncIterator[LoadProgress]:
    """Warm the cache with every page under ``path``; yields progress.

    Pages are fetched ``load_parallelism`` at a time through the same
    single-flight as reads, so a load racing readers fetches nothing twice.
    Progress is yielded at most every ``progress_interval`` seconds, after
    each file, and once at the end.
    """
    files = [f async for f in node.walk_files(path)]
    total = sum(f.size for f in files)
    done = fetched = 0
    ps = node.cache.page_size
    sem = asyncio.Semaphore(node.load_parallelism)
    last = time.monotonic()

    async def one(f: Pinned, index: int) -> tuple[int, bool]:
        async with sem:
            return f.page_len(index, ps), await node.sources.warm(f, index)

    for n, st in enumerate(files):
        f = pin(node._target(st.path), st)
        for coro in asyncio.as_completed([one(f, i) for i in node.cache.page_range(0, st.size)]):
            size, was_fetched = await coro
            done += size
            fetched += size if was_fetched else 0
            if time.monotonic() - last >= progress_interval:
                last = time.monotonic()
                yield LoadProgress(st.path, n, len(files), done, total, fetched)
        yield LoadProgress(st.path, n + 1, len(files), done, total, fetched)
    if not files:
        yield LoadProgress(paths.normalize(path), 0, 0, 0, 0, 0)

async def free(node: MeshNode, path: str) -> int:
    """Drop the cached pages of every known file at or below ``path``; returns bytes.

    In a cluster a file's pages are on every node: the files are found by
    walking the (cached) listings, and every member drops their pages."""
    norm = paths.normalize(path)
    if node.cluster is None or node.cluster.single:
        cached = node.metadata.cached_paths(norm)
        if not cached:
            await node.stat(norm)  # NotFound for a path that does not exist, as sync and load say
        return free_ids(node, _file_ids(node, cached))
    ids = _file_ids(node, [f.path async for f in node.walk_files(norm)])
    freed = free_ids(node, ids)
    for node_id, r in (await node.cluster.broadcast("free", {"ids": ids}, wait=120)).items():
        if isinstance(r, Exception):
            log.warning("free %s on %s failed: %s", norm, node_id, r)
        else:
            freed += int(r)
    return freed

def _file_ids(node: MeshNode, fpaths: list[str]) -> list[str]:
    ids = []
    for fpath in fpaths:
        found = node.mounts.resolve(fpath)
        if found is not None:
            mount, rel = found
            ids.append(file_id(mount.identity, rel))
    return ids

def free_ids(node: MeshNode, ids: list[str]) -> int:
    return sum(node.cache.drop_file(i) for i in ids)

async def sync(node: MeshNode, path: str) -> int:
    """Forget cached metadata under ``path`` and reload it from the under-store."""
    norm = paths.normalize(path)
    await node.metadata.forget_subtree(norm)
    count = 0
    async for _f in node.walk_files(norm):
        count += 1
    return count

def report(node: MeshNode) -> dict[str, Any]:
    s, c = node.stats, node.cache
    by_source = dict(s.bytes_by_source)
    return {
        "page_size": c.page_size,
        "tiers": {
            name: {"capacity": st.capacity, "used": st.used, "pages": st.pages, "hits": st.hits,
                   "evicted_pages": st.evicted_pages}
            for name, st in (("memory", c.memory.stats), ("disk", c.disk.stats))
        },
        "hits": s.hits,
        "misses": s.misses,
        "page_fetches": s.page_fetches,
        "hit_ratio": s.hit_ratio(),
        "bytes_by_source": by_source,
        "bytes_from_cache": by_source["memory"] + by_source["disk"],
        "bytes_from_understore": by_source["understore"] + by_source["nocache"],
        "understore_requests": {f"{k[0]}:{k[1]}": v for k, v in sorted(s.understore_requests.items())},
        "cache_write_errors": c.disk.write_errors,
        "metadata_write_errors": node.metadata.write_errors,
        "corrupt_pages": c.disk.corrupt_pages,
        "mounts": len(node.mounts.entries()),
        "metadata_forwarded": node.metadata.forwarded,
        "metadata_fallbacks": node.metadata.fallbacks,
        "region_served": s.region_served,
        "federation": node.federation.report() if node.federation is not None else None,
    }

async def full_report(node: MeshNode) -> dict[str, Any]:
    r = report(node)
    c = node.cluster
    if c is not None:
        r["cluster"] = {"name": c.me.cluster, "region": c.me.region, "node_id": c.me.node_id,
                        "etcd_ok": c.membership.etcd_ok, "ring_changes": c.ring_changes,
                        "peer_failures": c.peer_failures, "page_polls": c.page_polls,
                        "page_wait_seconds": round(c.queued_seconds, 3),
                        "page_wait_max_seconds": round(c.queued_seconds_max, 3),
                        "pages_held": node.stats.pages_held,
                        "members": await cluster_report(node)}
    return r


def member_usage(tiers: dict[str, dict[str, int]]) -> dict[str, int]:
    """A member's use in its report row, each tier on its own: a page in memory is
    usually on disk as well, so the tiers do not add up. ``used`` is the disk tier's,
    like the member's ``capacity``; ``pages`` stays the sum of both tiers' entries."""
    mem, disk = tiers["memory"], tiers["disk"]
    return {"used": disk["used"], "disk_used": disk["used"], "disk_capacity": disk["capacity"],
            "memory_used": mem["used"], "memory_capacity": mem["capacity"],
            "pages": mem["pages"] + disk["pages"], "disk_pages": disk["pages"], "memory_pages": mem["pages"]}


async def cluster_report(node: MeshNode, wait: float = 2.0) -> list[dict[str, Any]]:
    """Every member of the region: state, capacity and use (asked of each, in parallel)."""
    c = node.cluster
    if c is None:
        return []

    async def one(m: Member) -> dict[str, Any]:
        row: dict[str, Any] = {"node_id": m.node_id, "region": m.region, "zone": m.zone,
                               "grpc": m.grpc, "capacity": m.capacity, "labels": m.labels,
                               "state": c.state(m)}
        try:
            r = report(node) if c.is_me(m) else await c.call(m, "report", {}, wait)
            row.update(member_usage(r["tiers"]))
            row["hit_ratio"] = r["hit_ratio"]
            if r.get("federation"):
                row["links"] = r["federation"]["links"]
        except NodeUnavailable:
            row["state"] = "unreachable"
        except Exception as e:
            row["state"] = f"error: {e}"
        return row

    rows = await asyncio.gather(*(one(m) for m in c.members.values()))
    return sorted(rows, key=lambda r: r["node_id"])


async def held_in_region(node: MeshNode, path: str, version: str, size: int) -> list[int]:
    """Which pages of ``path`` at ``version`` this region holds: each page's owner
    answers for it (a peer region asks before choosing where to fetch from)."""
    by_owner = await held_by_owner(node, path, version, size)
    return sorted(i for pages in by_owner.values() for i in pages)

async def held_by_owner(node: MeshNode, path: str, version: str, size: int) -> dict[str, list[int]]:
    """The pages of ``path`` at ``version`` this region holds, by the node holding them
    (its node id): each page's owner answers for its pages."""
    if size < 0 or not version:
        raise InvalidArgument(f"bad held request: size={size} version={version!r}")
    t = node._target(path)
    fid = file_id(t.mount.identity, t.rel)
    indices = list(node.cache.page_range(0, size))
    cluster = node.cluster
    if cluster is None or cluster.single:
        held = node.held_here(path, version, indices)
        return {cluster.me.node_id if cluster is not None else "": held} if held else {}
    by_owner: dict[str, list[int]] = {}
    owners: dict[str, Member] = {}
    for i in indices:
        chain = cluster.chain(f"p:{fid}:{i}".encode(), 1)
        if chain:
            by_owner.setdefault(chain[0].node_id, []).append(i)
            owners[chain[0].node_id] = chain[0]

    async def one(node_id: str, pages: list[int]) -> list[int]:
        m = owners[node_id]
        if cluster.is_me(m):
            return node.held_here(path, version, pages)
        try:
            got = await cluster.call(m, "shard.held", {"p": path, "v": version, "i": pages}, wait=5.0)
            return [int(i) for i in got]
        except MeshError:
            return []  # an owner that cannot answer holds nothing we can count on

    results = await asyncio.gather(*(one(n, ps) for n, ps in by_owner.items()))
    return {n: r for n, r in zip(by_owner, results, strict=True) if r}
