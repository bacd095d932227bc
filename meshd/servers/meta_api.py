"""The metadata wire's operations (a thin adapter, like service.py for gRPC).

Client operations (any node answers them, forwarding to owners as needed):

=============  ==========================  ====================================
op             args                        result
=============  ==========================  ====================================
``info``       {}                          node id, page size, endpoints, and the
                                           region's members (so clients can build
                                           the same ring and ask owners directly)
``stat``       p: path                     [path, size, mtime, version, is_dir, t]
``list``       p, a: after name, n: limit  {"e": [[name, size, mtime, version,
                                           is_dir]...], "t": fetched, "more": bool}
``open``       p: path                     {"s": status, "fid": file id, "ps": page
                                           size}: what a client needs to send each
                                           page range to the page's owner
=============  ==========================  ====================================

Shard operations (``shard.*``; sent by a node that does not own the key, or
by a client that computed the owner itself) are served from *this* node's
shard whatever its ring says, so two nodes with momentarily different member
lists never bounce a call between them. ``free`` and ``report`` are this
node's own.

Between regions: ``region.held`` {p, v: version, z: size} asks a node of
another region which pages of a file *its region* holds (it asks each page's
owner with ``shard.held`` {p, v, i: indices} and answers the union).
``quota.take`` {l: "<src>><dst>", t: tokens} asks the link's quota owner in
this region for tokens; it answers once they are granted (meshd/region/quota.py).

Placement (meshd/core/placing.py): ``place.state`` {d: [dataset names]} answers
the state document ``meshctl place`` and the scheduler extender rank regions
with; it asks every peer region ``region.cached`` {ps: [mesh paths]} (that
region's cached bytes per node and its links' current rates). ``stage`` {d}
starts loading the datasets into this node's region in the background.
``mesh.state`` {p} answers a path's ``user.mesh.*`` attributes (home region,
this region, bytes cached here), the ones meshfs and WebHDFS show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshd import paths
from meshd.core import placing
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument
from meshd.metadata.shard import FileStatus
from meshd.metadata.sharded import status_from_wire, status_to_wire
from meshd.rpc.wire import Handler


def _str(args: dict[str, Any], key: str, default: str | None = None) -> str:
    v = args.get(key, default)
    if not isinstance(v, str):
        raise InvalidArgument(f"argument {key!r} must be a string")
    return v


def _int(args: dict[str, Any], key: str, default: int = 0) -> int:
    v = args.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(f"argument {key!r} must be an integer")
    return v


def _listing(path: str, page: tuple[list[FileStatus], bool]) -> dict[str, Any]:
    entries, more = page
    t = entries[0].fetched_at if entries else 0.0
    return {"e": [[paths.basename(s.path), s.size, s.mtime, s.version, s.is_dir] for s in entries],
            "t": t, "more": more}


def handlers(node: MeshNode, info: Callable[[], dict[str, Any]]) -> dict[str, Handler]:
    shard = node.shard

    async def op_info(a: dict[str, Any]) -> Any:
        return info()

    async def op_stat(a: dict[str, Any]) -> Any:
        return status_to_wire(await node.stat(_str(a, "p")))

    async def op_list(a: dict[str, Any]) -> Any:
        p = _str(a, "p")
        return _listing(p, await node.list_page(p, _str(a, "a", ""), _int(a, "n", 1000)))

    async def op_open(a: dict[str, Any]) -> Any:
        status, fid = await node.open_info(_str(a, "p"))
        return {"s": status_to_wire(status), "fid": fid, "ps": node.cache.page_size}

    async def op_shard_open(a: dict[str, Any]) -> Any:
        status, fid = await node.open_info(_str(a, "p"), local=True)
        return {"s": status_to_wire(status), "fid": fid, "ps": node.cache.page_size}

    async def op_shard_stat(a: dict[str, Any]) -> Any:
        return status_to_wire(await node.local_stat(_str(a, "p"), bool(a.get("f"))))

    async def op_shard_list(a: dict[str, Any]) -> Any:
        p = _str(a, "p")
        return _listing(p, await node.local_list(p, _str(a, "a", ""), _int(a, "n", 0)))

    async def op_put(a: dict[str, Any]) -> Any:
        try:
            statuses = [status_from_wire(w) for w in a.get("s", [])]
        except (TypeError, ValueError, IndexError):
            raise InvalidArgument("shard.put: malformed status list") from None
        if len(statuses) > 500:
            await asyncio.to_thread(shard.record_many, statuses)
        else:
            shard.record_many(statuses)
        return len(statuses)

    async def op_drop(a: dict[str, Any]) -> Any:
        s, ls = a.get("s", []), a.get("l", [])
        if not all(isinstance(x, str) for x in [*s, *ls]):
            raise InvalidArgument("shard.drop: paths must be strings")
        shard.drop(statuses=s, listings=ls)
        return None

    async def op_forget(a: dict[str, Any]) -> Any:
        return await asyncio.to_thread(shard.forget_subtree, paths.normalize(_str(a, "p")))

    async def op_attrs(a: dict[str, Any]) -> Any:
        return shard.attrs(_str(a, "p"), _str(a, "v"))

    async def op_set_attrs(a: dict[str, Any]) -> Any:
        attrs = a.get("a")
        if not isinstance(attrs, dict):
            raise InvalidArgument("shard.set_attrs: attributes must be an object")
        shard.set_attrs(_str(a, "p"), _str(a, "v"), attrs)
        return None

    async def op_drop_attrs(a: dict[str, Any]) -> Any:
        shard.drop_attrs(_str(a, "p"))
        return None

    async def op_free(a: dict[str, Any]) -> Any:
        ids = a.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidArgument("free: ids must be a list of strings")
        return node.free_ids(ids)

    async def op_report(a: dict[str, Any]) -> Any:
        return node.report()

    async def op_region_held(a: dict[str, Any]) -> Any:
        return await node.held_in_region(_str(a, "p"), _str(a, "v"), _int(a, "z", -1))

    async def op_quota_take(a: dict[str, Any]) -> Any:
        tokens = a.get("t")
        if not isinstance(tokens, int | float) or isinstance(tokens, bool) or not 0 <= tokens < 1 << 40:
            raise InvalidArgument("quota.take: t must be a token count")
        if node.federation is None:
            return 0.0
        return await node.federation.serve_grant(_str(a, "l"), float(tokens))

    async def op_shard_held(a: dict[str, Any]) -> Any:
        indices = a.get("i", [])
        if not isinstance(indices, list) or not all(isinstance(i, int) and i >= 0 for i in indices):
            raise InvalidArgument("shard.held: i must be a list of page indices")
        return node.held_here(_str(a, "p"), _str(a, "v"), indices)

    def _names(a: dict[str, Any], key: str) -> list[str]:
        v = a.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise InvalidArgument(f"argument {key!r} must be a list of dataset names")
        return v

    async def op_region_cached(a: dict[str, Any]) -> Any:
        return await placing.region_cached(node, [paths.normalize(p) for p in _names(a, "ps")])

    async def op_place_state(a: dict[str, Any]) -> Any:
        return await placing.gather(node, _names(a, "d"))

    async def op_mesh_state(a: dict[str, Any]) -> Any:
        return (await node.mesh_state(_str(a, "p"))).xattrs()

    async def op_stage(a: dict[str, Any]) -> Any:
        return await placing.stage(node, _names(a, "d"))

    async def op_shard_counts(a: dict[str, Any]) -> Any:
        """Keys in this node's shard, and status pushes still in flight (tests, benchmarks)."""
        counts = await asyncio.to_thread(shard.counts)
        return {**counts, "pushes_pending": node.metadata.pending}

    return {
        "region.cached": op_region_cached, "place.state": op_place_state, "stage": op_stage,
        "mesh.state": op_mesh_state,
        "region.held": op_region_held, "shard.held": op_shard_held, "quota.take": op_quota_take,
        "info": op_info, "stat": op_stat, "list": op_list, "open": op_open, "shard.open": op_shard_open,
        "shard.stat": op_shard_stat, "shard.list": op_shard_list, "shard.put": op_put,
        "shard.drop": op_drop, "shard.forget": op_forget, "shard.attrs": op_attrs,
        "shard.set_attrs": op_set_attrs, "shard.drop_attrs": op_drop_attrs,
        "free": op_free, "report": op_report, "shard.counts": op_shard_counts,
    }
