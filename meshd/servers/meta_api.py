"""The metadata wire's operations (a thin adapter, like grpc_api.py for gRPC); their
arguments are typed and checked by the schema in :mod:`meshd.rpc.messages`.

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
node's own, as is ``writeback.status`` (``meshctl writeback status``: this node's
pending write-back writes, uploads and errors).

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
from collections.abc import Awaitable, Callable
from typing import Any

from meshd import auth, paths
from meshd.core import placing
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, PermissionDenied
from meshd.metadata.shard import FileStatus
from meshd.metadata.sharded import status_from_wire, status_to_wire
from meshd.rpc import messages as msg
from meshd.rpc.wire import Handler


def _listing(path: str, page: tuple[list[FileStatus], bool]) -> dict[str, Any]:
    entries, more = page
    t = entries[0].fetched_at if entries else 0.0
    return {"e": [[paths.basename(s.path), s.size, s.mtime, s.version, s.is_dir] if s.attrs is None else
                  [paths.basename(s.path), s.size, s.mtime, s.version, s.is_dir, s.attrs.to_wire()] for s in entries],
            "t": t, "more": more}


class MetaApi:
    """Every operation of :data:`meshd.rpc.messages.OPS`: one method each, its arguments
    parsed and checked by the schema before the method sees them."""

    def __init__(self, node: MeshNode, info: Callable[[], dict[str, Any]]) -> None:
        self.node = node
        self.shard = node.shard
        self.info = info

    async def op_info(self, m: msg.Empty) -> Any:
        return self.info()

    async def op_stat(self, m: msg.PathArgs) -> Any:
        return status_to_wire(await self.node.stat(m.path))

    async def op_list(self, m: msg.ListArgs) -> Any:
        return _listing(m.path, await self.node.list_page(m.path, m.after, m.limit))

    async def op_open(self, m: msg.PathArgs) -> Any:
        status, fid = await self.node.open_info(m.path)
        return {"s": status_to_wire(status), "fid": fid, "ps": self.node.cache.page_size}

    async def op_shard_open(self, m: msg.PathArgs) -> Any:
        status, fid = await self.node.open_info(m.path, local=True)
        return {"s": status_to_wire(status), "fid": fid, "ps": self.node.cache.page_size}

    async def op_shard_stat(self, m: msg.ShardStatArgs) -> Any:
        return status_to_wire(await self.node.local_stat(m.path, m.fresh))

    async def op_shard_list(self, m: msg.ListArgs) -> Any:
        return _listing(m.path, await self.node.local_list(m.path, m.after, m.limit))

    async def op_put(self, m: msg.StatusBatch) -> Any:
        try:
            statuses = [status_from_wire(w) for w in m.statuses]
        except (TypeError, ValueError, IndexError):
            raise InvalidArgument("self.shard.put: malformed status list") from None
        if len(statuses) > 500:
            await asyncio.to_thread(self.shard.record_many, statuses)
        else:
            self.shard.record_many(statuses)
        return len(statuses)

    async def op_drop(self, m: msg.DropArgs) -> Any:
        self.shard.drop(statuses=m.statuses, listings=m.listings)
        return None

    async def op_forget(self, m: msg.PathArgs) -> Any:
        return await asyncio.to_thread(self.shard.forget_subtree, paths.normalize(m.path))

    async def op_attrs(self, m: msg.AttrsArgs) -> Any:
        return self.shard.attrs(m.path, m.version)

    async def op_set_attrs(self, m: msg.SetAttrsArgs) -> Any:
        self.shard.set_attrs(m.path, m.version, m.attrs)
        return None

    async def op_drop_attrs(self, m: msg.PathArgs) -> Any:
        self.shard.drop_attrs(m.path)
        return None

    # ---- namespace changes beyond whole-file writes (meshfs, mesh://, WebHDFS) ----

    async def op_setattr(self, m: msg.ChangeArgs) -> Any:
        return status_to_wire(await self.node.setattr(m.path, m.attr_change("setattr")))

    async def op_mkdir(self, m: msg.ChangeArgs) -> Any:
        await self.node.mkdir(m.path, m.attr_change("mkdir") or None)
        return status_to_wire(await self.node.stat(m.path))

    async def op_symlink(self, m: msg.SymlinkArgs) -> Any:
        change = msg.ChangeArgs(m.path, m.change).attr_change("symlink")
        return status_to_wire(await self.node.symlink(m.path, m.target, change or None))

    async def op_mknod(self, m: msg.MknodArgs) -> Any:
        change = msg.ChangeArgs(m.path, m.change).attr_change("mknod")
        return status_to_wire(await self.node.mknod(m.path, m.mode, m.rdev, change or None))

    async def op_link(self, m: msg.TwoPathArgs) -> Any:
        return status_to_wire(await self.node.link(m.src, m.dst))

    async def op_copy(self, m: msg.TwoPathArgs) -> Any:
        return status_to_wire(await self.node.copy(m.src, m.dst))

    async def op_truncate(self, m: msg.TruncateArgs) -> Any:
        return status_to_wire(await self.node.truncate(m.path, m.size, m.version or None))

    async def op_free(self, m: msg.FreeArgs) -> Any:
        return self.node.free_ids(m.file_ids)

    async def op_report(self, m: msg.ReportArgs) -> Any:
        report = await self.node.full_report() if m.members else self.node.report()
        return msg.Report.from_wire(report).to_wire()  # checked against the schema here

    async def op_writeback_status(self, m: msg.Empty) -> Any:
        """This node's write-back (``meshctl writeback status``); operators only (the facade checks)."""
        return await self.node.writeback_status()

    async def op_region_held(self, m: msg.RegionHeldArgs) -> Any:
        return await self.node.held_in_region(m.path, m.version, m.size)

    async def op_quota_take(self, m: msg.QuotaTakeArgs) -> Any:
        if self.node.federation is None:
            return 0.0
        return await self.node.federation.serve_grant(m.link, m.tokens)

    async def op_shard_held(self, m: msg.ShardHeldArgs) -> Any:
        return self.node.held_here(m.path, m.version, m.indices)

    async def op_region_cached(self, m: msg.RegionCachedArgs) -> Any:
        return await placing.region_cached(self.node, [paths.normalize(p) for p in m.paths])

    async def op_place_state(self, m: msg.DatasetsArgs) -> Any:
        return await placing.gather(self.node, m.names)

    async def op_mesh_state(self, m: msg.PathArgs) -> Any:
        return (await self.node.mesh_state(m.path)).xattrs()

    async def op_stage(self, m: msg.DatasetsArgs) -> Any:
        return await placing.stage(self.node, m.names)

    async def op_shard_counts(self, m: msg.Empty) -> Any:
        """Keys in this node's shard, and status pushes still in flight (tests, benchmarks)."""
        counts = await asyncio.to_thread(self.shard.counts)
        return {**counts, "pushes_pending": self.node.metadata.pending}


OPS: dict[str, str] = {  # wire op -> MetaApi method
    "region.cached": "op_region_cached",
    "place.state": "op_place_state",
    "stage": "op_stage",
    "mesh.state": "op_mesh_state",
    "region.held": "op_region_held",
    "shard.held": "op_shard_held",
    "quota.take": "op_quota_take",
    "info": "op_info",
    "stat": "op_stat",
    "list": "op_list",
    "open": "op_open",
    "shard.open": "op_shard_open",
    "shard.stat": "op_shard_stat",
    "shard.list": "op_shard_list",
    "shard.put": "op_put",
    "shard.drop": "op_drop",
    "shard.forget": "op_forget",
    "shard.attrs": "op_attrs",
    "shard.set_attrs": "op_set_attrs",
    "shard.drop_attrs": "op_drop_attrs",
    "free": "op_free",
    "report": "op_report",
    "writeback.status": "op_writeback_status",
    "shard.counts": "op_shard_counts",
    "setattr": "op_setattr", "mkdir": "op_mkdir", "symlink": "op_symlink", "mknod": "op_mknod",
    "link": "op_link", "copy": "op_copy", "truncate": "op_truncate",
}


# Operations only nodes (and operators) may call: they write a shard directly, take quota,
# drop pages or start loads. Client operations are checked by the facade (meshd/core/node.py).
TRUSTED_OPS = frozenset({"shard.put", "shard.drop", "shard.forget", "shard.attrs", "shard.set_attrs",
                         "shard.drop_attrs", "shard.held", "shard.counts", "free", "region.held",
                         "region.cached", "quota.take", "stage"})


def handlers(node: MeshNode, info: Callable[[], dict[str, Any]]) -> dict[str, Handler]:
    """The wire server's handler table: every op of the schema, bound to a :class:`MetaApi`."""
    assert OPS.keys() == msg.OPS.keys(), "the schema and the handlers list different operations"
    api = MetaApi(node, info)
    return {op: _typed(op, msg.OPS[op], getattr(api, name), op in TRUSTED_OPS) for op, name in OPS.items()}


def _typed(op: str, cls: type[msg.Msg], fn: Callable[[Any], Awaitable[Any]], trusted: bool) -> Handler:
    def handle(args: dict[str, Any]) -> Awaitable[Any]:
        if trusted and not auth.current().trusted:
            raise PermissionDenied(f"{op} is for the cluster's nodes and operators, not {auth.current()}")
        return fn(cls.from_wire(args, op))  # no coroutine of its own: the wire awaits fn's

    return handle
