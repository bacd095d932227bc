"""Reads sent to each page's owner, and reads resumed after a node failed.

In a cluster the client knows the region's ring (the same one the nodes use),
so it splits a read into runs of pages by owner and sends each run straight
to that owner (``_plan``, ``_peer``): one hop per byte. A read cut mid-stream
resumes at the byte it had reached, on another member if the node is gone
(``_resume_or_raise``), so the caller sees no error, unless the file changed
under a pinned read: that is VersionChanged.
"""

from __future__ import annotations

import time
from typing import Any, Self

from meshd import paths
from meshd.client.base import ReadCut
from meshd.client.metadata import MetadataCalls
from meshd.errors import MeshError, NodeUnavailable, NotFound, VersionChanged

Segment = tuple[dict[str, Any], int, int]  # (owner member, offset, length)


class Routing(MetadataCalls):
    _peers: dict[str, Self]

    def _plan(self, path: str, offset: int, length: int, hint: dict[str, Any] | None = None
              ) -> tuple[list[Segment], dict[str, Any]] | None:
        """Split a read into (owner, offset, length) runs of pages, and the status to pin.

        One hop per byte: each run goes straight to the node that holds (or
        fetches) those pages, on this machine through its local socket. The
        runs carry the file's version, so every node serves the same version
        or fails with VersionChanged: a read is never stitched from two.
        ``hint``: the version and size the caller pinned, sent instead of the
        status the owner reports now (which only gives the file id).
        """
        if self._ring is None or offset < 0 or length < -1:
            return None
        try:
            norm = paths.normalize(path)
        except MeshError:
            return None
        info = self._open_wire(norm)
        st, fid, ps = info["s"], info["fid"], int(info["ps"])
        if st[4] or not fid:
            return None  # a directory: the node reports it
        hint = hint or {"version": st[3], "size": int(st[1])}
        size = int(hint["size"])
        start = min(offset, size)
        end = size if length < 0 else min(size, offset + length)
        by_id = {m["node_id"]: m for m in self.members}
        segments: list[Segment] = []
        pos = start
        while pos < end:
            i = pos // ps
            stop = min(end, (i + 1) * ps)
            owner = by_id.get(self._ring.owner(f"p:{fid}:{i}".encode()) or "")
            if owner is None:
                return None
            if segments and segments[-1][0] is owner:
                m, off, n = segments[-1]
                segments[-1] = (m, off, n + stop - pos)
            else:
                segments.append((owner, pos, stop - pos))
            pos = stop
        return segments, hint

    def _peer(self, member: dict[str, Any]) -> Self | None:
        """A direct client to ``member``; None for the node this client talks to, or a suspect."""
        if member["node_id"] == self.node_id:
            return None
        with self._lock:
            peer = self._peers.get(member["node_id"])
            if peer is not None:
                return peer
            if self._suspect.get(member["grpc"], 0) > time.monotonic():
                return None
        try:
            peer = type(self)(member["grpc"], min(self.timeout, 30.0), route=False)  # type: ignore[call-arg]
        except NodeUnavailable as e:
            self._drop_peer(member, e)
            return None
        peer._short_circuit = self._short_circuit
        with self._lock:
            return self._peers.setdefault(member["node_id"], peer)

    def _drop_peer(self, member: dict[str, Any], why: BaseException) -> None:
        with self._lock:
            self._suspect[member["grpc"]] = time.monotonic() + 5
            peer = self._peers.pop(member["node_id"], None)
        if peer is not None:
            peer.close()

    def close(self) -> None:
        """Close the connections: to the peers, the node's gRPC and metadata wire, and this
        thread's HTTP and short-circuit ones."""
        for peer in list(self._peers.values()):
            peer.close()
        self._peers.clear()
        self._channel.close()
        for w in self._wires.values():
            w.close_thread()
        for name in ("conn", "sc"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()

    def _resume_or_raise(self, gen: int, attempts: int, why: MeshError, path: str,
                         hint: dict[str, Any] | None) -> None:
        """After a read was cut (``attempts`` times): return to read on (on another
        member if the node is gone), or raise.

        A node cuts a pinned read mid-stream when a page it has yet to fetch is of
        another version (over HTTP the body just ends): if the file is no longer at
        the pinned version, that is VersionChanged, not a node failure.
        """
        if hint is not None and isinstance(why, ReadCut):
            try:
                now = self.open(path)
            except NotFound:
                raise VersionChanged(f"{path} was deleted while it was being read: {why}") from None
            except NodeUnavailable:
                pass  # the node is gone: resume elsewhere, still pinned
            else:
                if (now.version, now.size) != (hint["version"], hint["size"]):
                    raise VersionChanged(f"{path} changed while it was being read: {why}") from None
        if attempts > len(self.members) or not self._failover(gen, why):
            raise why


__all__ = ["Routing", "Segment"]
