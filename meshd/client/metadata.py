"""The client's metadata calls: every call of the metadata wire, in one place.

``open``, ``stat`` and ``ls_page`` go over the node's metadata wire
(meshd/rpc/wire.py), straight to the key's owner when the client knows the
region's ring (one hop instead of two: ``_meta_call``), falling back to the
node it is connected to; a node without a metadata wire is asked over gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from meshd import paths
from meshd.attrs import AttrChange, Attrs
from meshd.client.base import Status
from meshd.client.connection import Connection
from meshd.cluster.ring import HashRing
from meshd.errors import MeshError, NodeUnavailable
from meshd.rpc import mesh_pb2 as pb


def _status(s: pb.FileStatus) -> Status:
    return Status(s.path, s.size, s.mtime, s.version, s.is_dir)


def _wire_status(w: list[Any]) -> Status:
    return Status(w[0], w[1], w[2], w[3], w[4], Attrs.from_wire(w[6]) if len(w) > 6 else None)


def _normal(path: str) -> str:
    try:
        return paths.normalize(path)
    except MeshError:
        return path  # the node reports the problem


class MetadataCalls(Connection):
    def _learn_members(self) -> None:
        if self._meta is None:
            return
        try:
            info = self._meta.call("info", {})
        except MeshError:
            return
        self.members = list(info.get("members", []))
        if self._route and len(self.members) > 1:
            self._ring = HashRing({m["node_id"]: float(m.get("capacity") or 1) for m in self.members},
                                  int(info.get("vnodes", 128)))
        else:
            self._ring = None

    def _meta_call(self, key: bytes, op: str, args: dict[str, Any]) -> Any:
        """A metadata call: to the key's owner if known (``shard.<op>``), else any node."""
        if self._ring is not None:
            owner = self._ring.owner(key)
            member = next((m for m in self.members if m["node_id"] == owner), None)
            if member is not None and self._suspect.get(member["meta"], 0) < time.monotonic():
                try:
                    return self._wire(member["meta"]).call("shard." + op, args)
                except NodeUnavailable:  # the node we talk to forwards or falls back
                    self._suspect[member["meta"]] = time.monotonic() + 5
        return self._retrying(lambda: self._meta_once(op, args))

    def _meta_once(self, op: str, args: dict[str, Any]) -> Any:
        if self._meta is None:  # every node serves the metadata wire: one home for metadata
            raise NodeUnavailable(f"the node at {self.endpoint} announces no metadata endpoint")
        return self._meta.call(op, args)

    def open(self, path: str) -> Status:
        """The status a read of ``path`` would serve now (the metadata wire's ``open``):
        pass it as ``pin=`` to ``cat``, ``iter_read`` or ``read_chunks_into`` to read
        exactly that version (size and version), or fail with VersionChanged."""
        return _wire_status(self._open_wire(_normal(path))["s"])

    def _open_wire(self, norm: str) -> dict[str, Any]:
        """The metadata wire's ``open`` of normalized ``norm``: ``s`` its status (a list),
        ``fid`` its file id, ``ps`` the page size (what a read plan needs)."""
        got: dict[str, Any] = self._meta_call(b"s:" + norm.encode(), "open", {"p": norm})
        return got

    def stat(self, path: str) -> Status:
        norm = _normal(path)
        return _wire_status(self._meta_call(b"s:" + norm.encode(), "stat", {"p": norm}))

    def ls_page(self, path: str, after: str = "", limit: int = 1000) -> tuple[list[Status], bool]:
        """One page of a directory's entries in name order, after the name ``after``."""
        norm = _normal(path)
        r = self._meta_call(b"l:" + norm.encode(), "list", {"p": norm, "a": after, "n": limit})
        base = norm.rstrip("/")
        return [Status(f"{base}/{e[0]}", e[1], e[2], e[3], e[4], Attrs.from_wire(e[5]) if len(e) > 5 else None)
                for e in r["e"]], bool(r["more"])

    def iter_ls(self, path: str, page: int = 1000) -> Iterator[Status]:
        """Every entry of a directory, fetched ``page`` at a time (for huge directories)."""
        after, more = "", True
        while more:
            entries, more = self.ls_page(path, after, page)
            yield from entries
            if entries:
                after = entries[-1].path.rsplit("/", 1)[-1]

    def ls(self, path: str) -> list[Status]:
        return list(self.iter_ls(path, 5000))

    # ---- namespace changes beyond whole-file writes ----------------------------

    def _change(self, op: str, args: dict[str, Any]) -> Status:
        """A namespace change over the metadata wire (retried on another node only when
        the call never reached one: every one of them is idempotent but ``link``,
        ``symlink`` and ``mknod``, which a retry answers with AlreadyExists)."""
        return _wire_status(self._retrying(lambda: self._meta_once(op, args)))

    def setattr(self, path: str, change: AttrChange) -> Status:
        """chmod / chown / utimes (and extra attributes) in the store's own terms."""
        return self._change("setattr", {"p": path, "c": change.to_wire()})

    def mkdir_with(self, path: str, change: AttrChange | None = None) -> Status:
        """mkdir (and its parents) with the new directory's mode and owner; its status."""
        return self._change("mkdir", {"p": path, "c": change.to_wire() if change else {}})

    def symlink(self, path: str, target: str, change: AttrChange | None = None) -> Status:
        return self._change("symlink", {"p": path, "t": target, "c": change.to_wire() if change else {}})

    def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> Status:
        return self._change("mknod", {"p": path, "m": mode, "r": rdev, "c": change.to_wire() if change else {}})

    def link(self, src: str, dst: str) -> Status:
        """A hard link ``dst`` to ``src`` (EPERM on stores without them)."""
        return self._change("link", {"s": src, "d": dst})

    def copy(self, src: str, dst: str) -> Status:
        """Server-side copy of a file, with its attributes."""
        return self._change("copy", {"s": src, "d": dst})

    def truncate(self, path: str, size: int, version: str = "") -> Status:
        return self._change("truncate", {"p": path, "n": size, "v": version})

    def place_state(self, datasets: list[str]) -> dict[str, Any]:
        """What the mesh knows for placing a job on ``datasets`` (meshd/core/placing.py)."""
        return dict(self._retrying(lambda: self._meta_once("place.state", {"d": datasets})))

    def mesh_state(self, path: str) -> dict[str, str]:
        """A path's ``user.mesh.*`` attributes (home region, region, bytes cached there):
        the node's one computation of them, as WebHDFS shows them too."""
        return {str(k): str(v) for k, v in
                dict(self._retrying(lambda: self._meta_once("mesh.state", {"p": path}))).items()}

    def stage(self, datasets: list[str]) -> dict[str, Any]:
        """Start loading ``datasets`` into this node's region, in the background."""
        return dict(self._meta_once("stage", {"d": datasets}))


__all__ = ["MetadataCalls"]
