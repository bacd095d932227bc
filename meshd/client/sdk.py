"""A synchronous Python client for a node: what meshctl and fsspec use.

Control and metadata calls go over gRPC; file bytes go over the node's HTTP
data endpoint (one keep-alive connection per thread), which the node serves
with sendfile. Errors arrive as :mod:`meshd.errors` exceptions, rebuilt from
the kind the node sent.

Finding the node: ``endpoint`` argument, else ``$MESH_ENDPOINT``, else the
``endpoints.json`` of the default data directory. An endpoint is a gRPC
``host:port``, or a data directory / ``endpoints.json`` path.

In a cluster the client learns the region's members from the node (the
metadata wire's ``info``) and uses them two ways:

- ``stat`` and ``ls`` go straight to the key's owner, computed with the same
  ring the nodes use (one hop instead of two), falling back to the node it
  is connected to;
- when the node it talks to dies, it moves to the next member and carries
  on: a read that was cut mid-stream resumes at the byte it had reached, so
  the caller sees no error.
"""

from __future__ import annotations

import array
import http.client
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlsplit

import grpc

from meshd import paths
from meshd.cluster.ring import HashRing
from meshd.config import default_data_dir
from meshd.errors import (
    InvalidArgument,
    IsADirectory,
    MeshError,
    NodeUnavailable,
    NotFound,
    UnderStoreError,
    VersionChanged,
    from_kind,
)
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from meshd.rpc.wire import SyncWireClient

T = TypeVar("T")
CHUNK = 1 << 20
_SC_MAX = (128 << 10) + 64
_FD_HEADER = struct.Struct("<cQQ")  # as meshd.servers.shortcircuit.FD_HEADER
_GRPC_TO_KIND = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.UNIMPLEMENTED: "NotSupported",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
}


class NodeUnreachable(NodeUnavailable):
    """No node answers at the endpoint."""


class ReadCut(UnderStoreError):
    """A read stopped mid-stream: the node died, or aborted the read. Retried on another node."""


@dataclass
class Piece:
    """Part of a read: ``length`` bytes at ``offset`` of descriptor ``fd``, or ``data``."""

    fd: int | None
    offset: int
    length: int
    data: bytes | None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class Status:
    path: str
    size: int
    mtime: float
    version: str
    is_dir: bool


def _status(s: pb.FileStatus) -> Status:
    return Status(s.path, s.size, s.mtime, s.version, s.is_dir)


def _hint(pin: Status | None) -> dict[str, Any] | None:
    """The version and size every request of a read pinned to ``pin`` carries."""
    if pin is None:
        return None
    if pin.is_dir:
        raise IsADirectory(f"is a directory: {pin.path}")
    if not pin.version:
        raise InvalidArgument(f"cannot pin {pin.path}: its status has no version")
    return {"version": pin.version, "size": pin.size}


def find_endpoint(endpoint: str | None = None) -> str:
    """The gRPC ``host:port`` of the node to talk to."""
    candidate = endpoint or os.environ.get("MESH_ENDPOINT") or default_data_dir()
    if "://" not in candidate and "/" in candidate and not candidate.endswith(".json"):
        candidate = os.path.join(candidate, "endpoints.json")  # a data directory, existing or not
    if candidate.endswith(".json"):
        try:
            with open(candidate) as f:
                return str(json.load(f)["grpc"])
        except FileNotFoundError:
            raise NodeUnreachable(f"no running node found: {candidate} does not exist "
                                  "(start one with `meshd embedded`, or pass --endpoint)") from None
        except (ValueError, KeyError) as e:
            raise NodeUnreachable(f"{candidate} is not a valid endpoints.json: {e}") from None
    if candidate.startswith(("http://", "grpc://")):
        candidate = urlsplit(candidate).netloc
    return candidate


class MeshClient:
    def __init__(self, endpoint: str | None = None, timeout: float = 60.0, *, route: bool = True) -> None:
        self.endpoint = find_endpoint(endpoint)
        self.timeout = timeout
        self._route = route  # send metadata and page reads to their owners when in a cluster
        self._peers: dict[str, MeshClient] = {}
        self._short_circuit = os.environ.get("MESH_SHORT_CIRCUIT", "1") not in ("0", "false", "no")
        self._lock = threading.Lock()
        self._generation = 0  # bumped on every switch to another node
        self.members: list[dict[str, Any]] = []
        self._ring: HashRing | None = None
        self._wires: dict[str, SyncWireClient] = {}
        self._dead: set[str] = set()
        self._suspect: dict[str, float] = {}
        self._connect(self.endpoint)

    def _connect(self, endpoint: str) -> None:
        """Talk to the node at gRPC ``endpoint`` from now on (raises NodeUnreachable)."""
        channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        stub = pb_grpc.MeshStub(channel)
        try:
            info = stub.GetInfo(pb.Empty(), timeout=min(self.timeout, 10.0))
        except grpc.RpcError as e:
            channel.close()
            raise NodeUnreachable(f"node at {endpoint} is unreachable: {e.details()}") from None
        old = getattr(self, "_channel", None)
        self.endpoint, self._channel, self._stub = endpoint, channel, stub
        self._local = threading.local()  # per-thread connections belong to the old node
        self._generation += 1
        if old is not None:
            old.close()
        self.node_id = info.node_id
        self.endpoints = dict(info.endpoints)
        self.page_size = info.page_size
        self._local_sock = self.endpoints.get("local", "")
        http_url = urlsplit(self.endpoints["http"])
        self._http_host, self._http_port = http_url.hostname or "127.0.0.1", http_url.port or 80
        self._meta = self._wire(self.endpoints["meta"]) if "meta" in self.endpoints else None
        self._learn_members()

    def _wire(self, address: str) -> SyncWireClient:
        w = self._wires.get(address)
        if w is None:
            w = self._wires[address] = SyncWireClient(address, self.timeout)
        return w

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

    def _failover(self, failed_generation: int, why: BaseException) -> bool:
        """The node stopped answering: move to another member. False if there is none."""
        with self._lock:
            if self._generation != failed_generation:
                return True  # another thread already moved on
            self._dead.add(self.endpoint)
            candidates = [m["grpc"] for m in self.members if m["grpc"] not in self._dead]
            if not candidates:
                self._dead.clear()
                return False
            for endpoint in candidates:
                try:
                    self._connect(endpoint)
                    self._dead.discard(endpoint)
                    return True
                except NodeUnreachable:
                    self._dead.add(endpoint)
            return False

    # ---- reads sent to each page's owner ------------------------------------

    def _plan(self, path: str, offset: int, length: int, hint: dict[str, Any] | None = None
              ) -> tuple[list[tuple[dict[str, Any], int, int]], dict[str, Any]] | None:
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
        info = self._meta_call(b"s:" + norm.encode(), "open", {"p": norm})
        st, fid, ps = info["s"], info["fid"], int(info["ps"])
        if st[4] or not fid:
            return None  # a directory: the node reports it
        hint = hint or {"version": st[3], "size": int(st[1])}
        size = int(hint["size"])
        start = min(offset, size)
        end = size if length < 0 else min(size, offset + length)
        by_id = {m["node_id"]: m for m in self.members}
        segments: list[tuple[dict[str, Any], int, int]] = []
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

    def _peer(self, member: dict[str, Any]) -> MeshClient | None:
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
            peer = MeshClient(member["grpc"], min(self.timeout, 30.0), route=False)
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

    def _retrying(self, fn: Any) -> Any:
        """Run ``fn()``; when the node is unreachable, again on the next member."""
        for _ in range(max(2, len(self.members) + 1)):
            gen = self._generation
            try:
                return fn()
            except NodeUnavailable as e:
                if not self._failover(gen, e):
                    raise
        return fn()

    def close(self) -> None:
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

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- gRPC ------------------------------------------------------------

    def _error(self, e: grpc.RpcError) -> MeshError:
        kind = ""
        for key, value in (e.trailing_metadata() or ()):
            if key == "mesh-error-kind":
                kind = value
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and not kind:
            return NodeUnreachable(f"node at {self.endpoint} is unreachable: {e.details()}")
        return from_kind(kind or _GRPC_TO_KIND.get(code, "MeshError"), e.details() or str(code))

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """A unary call; ``method`` is a stub attribute name (re-bound after a failover)."""
        def once() -> Any:
            try:
                return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                raise self._error(e) from None

        return self._retrying(once)

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        try:
            yield from getattr(self._stub, method)(request)
        except grpc.RpcError as e:
            raise self._error(e) from None

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
        if self._meta is None:
            raise NotImplementedError
        return self._meta.call(op, args)

    def open(self, path: str) -> Status:
        """The status a read of ``path`` would serve now (the metadata wire's ``open``):
        pass it as ``pin=`` to ``cat``, ``iter_read`` or ``read_chunks_into`` to read
        exactly that version (size and version), or fail with VersionChanged."""
        if self._meta is None:
            return self.stat(path)
        try:
            norm = paths.normalize(path)
        except MeshError:
            norm = path  # the node reports the problem
        w = self._meta_call(b"s:" + norm.encode(), "open", {"p": norm})["s"]
        return Status(w[0], w[1], w[2], w[3], w[4])

    def stat(self, path: str) -> Status:
        if self._meta is None:
            return _status(self._call("Stat", pb.PathRequest(path=path)))
        try:
            norm = paths.normalize(path)
        except MeshError:
            norm = path  # the node reports the problem
        w = self._meta_call(b"s:" + norm.encode(), "stat", {"p": norm})
        return Status(w[0], w[1], w[2], w[3], w[4])

    def ls_page(self, path: str, after: str = "", limit: int = 1000) -> tuple[list[Status], bool]:
        """One page of a directory's entries in name order, after the name ``after``."""
        if self._meta is None:
            entries = self.ls(path)
            entries = [e for e in entries if not after or e.path.rsplit("/", 1)[-1] > after]
            return entries[:limit], len(entries) > limit
        try:
            norm = paths.normalize(path)
        except MeshError:
            norm = path  # the node reports the problem
        r = self._meta_call(b"l:" + norm.encode(), "list", {"p": norm, "a": after, "n": limit})
        base = norm.rstrip("/")
        return [Status(f"{base}/{n}", s, m, v, d) for n, s, m, v, d in r["e"]], bool(r["more"])

    def iter_ls(self, path: str, page: int = 1000) -> Iterator[Status]:
        """Every entry of a directory, fetched ``page`` at a time (for huge directories)."""
        after, more = "", True
        while more:
            entries, more = self.ls_page(path, after, page)
            yield from entries
            if entries:
                after = entries[-1].path.rsplit("/", 1)[-1]

    def ls(self, path: str) -> list[Status]:
        if self._meta is not None:
            return list(self.iter_ls(path, 5000))
        return [_status(s) for s in self._call("List", pb.PathRequest(path=path)).entries]

    def rm(self, path: str, recursive: bool = False) -> int:
        return int(self._call("Delete", pb.DeleteRequest(path=path, recursive=recursive)).removed)

    def mkdir(self, path: str) -> None:
        self._call("Mkdir", pb.PathRequest(path=path))

    def rename(self, src: str, dst: str) -> None:
        self._call("Rename", pb.RenameRequest(src=src, dst=dst))

    def mount_add(self, path: str, uri: str, options: dict[str, str] | None = None,
                  check: bool = True) -> pb.MountInfo:
        return self._call("AddMount", pb.AddMountRequest(
            path=path, uri=uri, options=options or {}, no_check=not check))

    def mount_rm(self, path: str) -> pb.MountInfo:
        return self._call("RemoveMount", pb.PathRequest(path=path))

    def mounts(self) -> list[pb.MountInfo]:
        return list(self._call("ListMounts", pb.Empty()).mounts)

    def sync(self, path: str) -> int:
        return int(self._call("Sync", pb.PathRequest(path=path), timeout=3600).entries)

    def load(self, path: str) -> Iterator[pb.LoadProgress]:
        return self._stream("Load", pb.PathRequest(path=path))

    def free(self, path: str) -> int:
        return int(self._call("Free", pb.PathRequest(path=path)).bytes_freed)

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

    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._call("Report", pb.Empty()).json)
        return result

    # ---- short-circuit local reads (see meshd/servers/shortcircuit.py) ------------

    def _sc(self) -> socket.socket | None:
        """This thread's connection to the node's local socket, or None (use HTTP)."""
        if not (self._short_circuit and self._local_sock):
            return None
        sock = getattr(self._local, "sc", None)
        if sock is None:
            if getattr(self._local, "sc_failed", False):
                return None
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.connect(self._local_sock)
            except OSError:
                self._local.sc_failed = True  # another machine, or no permission: HTTP it is
                return None
            self._local.sc = sock
        return sock

    def _sc_messages(self, path: str, offset: int, length: int, nocache: bool,
                     stream_id: str | None, hint: dict[str, Any] | None = None) -> Iterator[tuple[bytes, Any, int]]:
        """Yield ("H", header, 0), then ("F", (fd, page_offset), length) / ("D", bytes, length)."""
        sock = self._sc()
        assert sock is not None
        req = {"path": path, "offset": offset, "length": length, "nocache": nocache, "stream": stream_id,
               **(hint or {})}
        done = False
        try:
            sock.sendall(json.dumps(req).encode())
            while True:
                msg, anc, flags, _ = sock.recvmsg(_SC_MAX, socket.CMSG_SPACE(4))
                if not msg:
                    raise ReadCut("node closed the local socket mid-read")
                if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                    for lvl, typ, data in anc:
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                            for fd in array.array("i", data):
                                os.close(fd)
                    raise UnderStoreError("short-circuit message truncated")
                kind = msg[:1]
                if kind == b"F":
                    fds = [fd for lvl, typ, data in anc if lvl == socket.SOL_SOCKET
                           and typ == socket.SCM_RIGHTS for fd in array.array("i", data)]
                    if len(fds) != 1:
                        raise UnderStoreError("short-circuit page arrived without its descriptor")
                    _, off, n = _FD_HEADER.unpack(msg)
                    try:
                        yield b"F", (fds[0], off), n
                    finally:
                        os.close(fds[0])
                elif kind == b"D":
                    yield b"D", msg[1:], len(msg) - 1
                elif kind == b"H":
                    yield b"H", json.loads(msg[1:]), 0
                elif kind == b"E":
                    done = True
                    return
                elif kind == b"X":
                    done = True
                    err = json.loads(msg[1:])
                    raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
                else:
                    raise UnderStoreError(f"unexpected short-circuit message {kind!r}")
        except OSError as e:
            raise ReadCut(f"local socket: {e}") from None
        finally:
            if not done:  # abandoned mid-read: the connection is out of step, drop it
                sock.close()
                self._local.sc = None

    def page_pieces(self, path: str, offset: int, length: int, *, version: str, size: int,
                    stream_id: str | None = None) -> list[Piece] | None:
        """The range as the node holds it, for a client that keeps descriptors (the FUSE
        client): each piece is an open descriptor of a page file (or memfd) and where the
        range's bytes sit in it, or bytes sent inline. The caller owns the descriptors.
        Pinned to ``version`` (VersionChanged if the file changed). None when the node is
        not on this machine (no short-circuit): read over HTTP instead."""
        if self._sc() is None:
            return None
        pieces: list[Piece] = []
        try:
            for kind, payload, n in self._sc_messages(path, offset, length, False, stream_id,
                                                      {"version": version, "size": size, "fds": True}):
                if kind == b"F":
                    fd, off = payload
                    pieces.append(Piece(os.dup(fd), off, n, None))
                elif kind == b"D":
                    pieces.append(Piece(None, 0, n, bytes(payload)))
        except BaseException:
            for p in pieces:
                p.close()
            raise
        return pieces

    def read_pinned(self, path: str, offset: int, length: int, *, version: str, size: int,
                    stream_id: str | None = None) -> bytes:
        """``length`` bytes at ``offset`` of ``path`` at ``version`` (fewer at the end), over
        HTTP or the local socket; VersionChanged if the file changed."""
        want = max(0, min(length, size - offset))
        buf = bytearray(min(want, CHUNK) or 1)
        out = bytearray()
        for n in self._read_direct(path, buf, offset, want, False, stream_id, {"version": version, "size": size}):
            out += memoryview(buf)[:n]
        return bytes(out)

    def read_chunks_into(self, path: str, buf: bytearray | memoryview, offset: int = 0,
                         length: int = -1, *, nocache: bool = False,
                         stream_id: str | None = None, pin: Status | None = None) -> Iterator[int]:
        """Fill ``buf`` again and again with the next bytes of the range; yields how many.

        The zero-allocation way to stream a file: short-circuit (``preadv`` of the
        node's page files) when the node is on this machine, HTTP otherwise. If the
        node dies mid-read, the rest of the range comes from another member.
        ``pin`` (a status from :meth:`open`): every request carries its version and
        size, so the bytes are that version's or the read fails with VersionChanged.
        """
        hint = _hint(pin)
        done, attempts = 0, 0
        while True:
            gen = self._generation
            try:
                rest = -1 if length < 0 else length - done
                for n in self._read_once(path, buf, offset + done, rest, nocache, stream_id, hint):
                    done += n
                    yield n
                return
            except (NodeUnavailable, ReadCut) as e:
                attempts += 1
                self._resume_or_raise(gen, attempts, e, path, hint)

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

    def _read_once(self, path: str, buf: bytearray | memoryview, offset: int, length: int,
                   nocache: bool, stream_id: str | None, pin: dict[str, Any] | None = None) -> Iterator[int]:
        plan = None if nocache else self._plan(path, offset, length, pin)
        if plan is None:
            yield from self._read_direct(path, buf, offset, length, nocache, stream_id, pin)
            return
        segments, hint = plan
        for member, off, n in segments:
            done = 0
            peer = self._peer(member)
            try:
                for k in (peer or self)._read_direct(path, buf, off, n, False, stream_id, hint):
                    done += k
                    yield k
                continue
            except (NodeUnavailable, ReadCut) as e:
                if peer is None:
                    raise
                self._drop_peer(member, e)
            yield from self._read_direct(path, buf, off + done, n - done, False, stream_id, hint)

    def _read_direct(self, path: str, buf: bytearray | memoryview, offset: int, length: int,
                     nocache: bool, stream_id: str | None, hint: dict[str, Any] | None = None) -> Iterator[int]:
        view = memoryview(buf)
        if self._sc() is not None:
            for kind, payload, n in self._sc_messages(path, offset, length, nocache, stream_id, hint):
                if kind == b"F":
                    fd, off = payload
                    while n > 0:
                        k = os.preadv(fd, [view[:min(n, len(view))]], off)
                        if k <= 0:
                            raise UnderStoreError(f"cache page of {path} is shorter than announced")
                        off += k
                        n -= k
                        yield k
                elif kind == b"D":
                    pos = 0
                    while pos < n:
                        k = min(n - pos, len(view))
                        view[:k] = payload[pos:pos + k]
                        pos += k
                        yield k
            return
        resp, remaining = self.open_read(path, offset, length, nocache=nocache, stream_id=stream_id, hint=hint)
        while remaining > 0:
            k = resp.readinto(view[:min(remaining, len(view))])
            if not k:
                self._local.conn = None
                raise ReadCut(f"read of {path} ended {remaining} bytes early (node aborted it)")
            remaining -= k
            yield k

    # ---- HTTP data path --------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._http_host, self._http_port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, query: str = "", body: Any = None,
                 headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        url = "/v1/files" + quote(path if path.startswith("/") else "/" + path, safe="/") + query
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, url, body=body, headers=headers or {},
                             encode_chunked=(headers or {}).get("Transfer-Encoding") == "chunked")
                return conn.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                # a kept-alive connection may have been closed by the node: retry once on a new one
                if attempt or (body is not None and not isinstance(body, bytes | bytearray)):
                    raise NodeUnreachable(f"node HTTP endpoint {self._http_host}:{self._http_port}: {e}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse) -> None:
        if resp.status < 300:
            return
        raw = resp.read()
        try:
            err = json.loads(raw)
            raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
        except ValueError:
            raise MeshError(f"HTTP {resp.status}: {raw[:200]!r}") from None

    def open_read(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
                  stream_id: str | None = None,
                  hint: dict[str, Any] | None = None) -> tuple[http.client.HTTPResponse, int]:
        """Start a read; returns the response and the number of bytes that will follow."""
        if offset < 0 or length < -1:
            raise InvalidArgument(f"bad range: offset={offset} length={length}")
        query = f"?offset={offset}&length={length}" + ("&nocache=1" if nocache else "")
        if hint:
            query += f"&version={quote(hint['version'], safe='')}&size={hint['size']}"
        headers = {"X-Mesh-Stream": stream_id} if stream_id else {}
        resp = self._request("GET", path, query, headers=headers)
        self._raise_for(resp)
        return resp, int(resp.headers.get("Content-Length", "0"))

    def iter_read(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
                  chunk_size: int = CHUNK, stream_id: str | None = None,
                  pin: Status | None = None) -> Iterator[bytes]:
        buf = bytearray(chunk_size)
        for n in self.read_chunks_into(path, buf, offset, length, nocache=nocache, stream_id=stream_id,
                                       pin=pin):
            yield bytes(buf[:n])

    def cat(self, path: str, offset: int = 0, length: int = -1, *, nocache: bool = False,
            stream_id: str | None = None, pin: Status | None = None) -> bytes:
        """The bytes of a range; ``pin`` as for :meth:`read_chunks_into`."""
        hint = _hint(pin)
        attempts = 0
        while True:
            gen = self._generation
            try:
                return self._cat_once(path, offset, length, nocache, stream_id, hint)
            except (NodeUnavailable, ReadCut) as e:
                attempts += 1
                self._resume_or_raise(gen, attempts, e, path, hint)

    def _cat_once(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                  pin: dict[str, Any] | None = None) -> bytes:
        plan = None if nocache else self._plan(path, offset, length, pin)
        if plan is None:
            return self._cat_direct(path, offset, length, nocache, stream_id, pin)
        segments, hint = plan
        parts = []
        for member, off, n in segments:
            peer = self._peer(member)
            try:
                parts.append((peer or self)._cat_direct(path, off, n, False, stream_id, hint))
                continue
            except (NodeUnavailable, ReadCut) as e:
                if peer is None:
                    raise
                self._drop_peer(member, e)
            parts.append(self._cat_direct(path, off, n, False, stream_id, hint))
        return b"".join(parts)

    def _cat_direct(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                    hint: dict[str, Any] | None = None) -> bytes:
        if self._sc() is not None:
            out = bytearray()
            for kind, payload, n in self._sc_messages(path, offset, length, nocache, stream_id, hint):
                if kind == b"H":
                    out = bytearray(payload["length"])
                    pos = 0
                elif kind == b"F":
                    fd, off = payload
                    got = os.preadv(fd, [memoryview(out)[pos:pos + n]], off)
                    if got != n:
                        raise UnderStoreError(f"cache page of {path} is shorter than announced")
                    pos += n
                else:
                    out[pos:pos + n] = payload
                    pos += n
            return bytes(out)
        resp, n = self.open_read(path, offset, length, nocache=nocache, stream_id=stream_id, hint=hint)
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = resp.readinto(view[got:])
            if not k:
                self._local.conn = None
                raise ReadCut(f"read of {path} ended {n - got} bytes early (node aborted it)")
            got += k
        return bytes(buf)

    def readinto(self, path: str, out: IO[bytes], offset: int = 0, length: int = -1, *,
                 nocache: bool = False, pin: Status | None = None) -> int:
        """Copy a range into a binary file object; returns the bytes copied."""
        n = 0
        for chunk in self.iter_read(path, offset, length, nocache=nocache, pin=pin):
            out.write(chunk)
            n += len(chunk)
        return n

    def put(self, path: str, data: bytes | IO[bytes] | Iterable[bytes]) -> Status:
        """Create or replace a whole file; ``data`` is streamed, not buffered."""
        headers: dict[str, str] = {}
        body: Any
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        elif hasattr(data, "read"):
            body = data
            try:
                headers["Content-Length"] = str(os.fstat(data.fileno()).st_size - data.tell())  # type: ignore[attr-defined]
            except (OSError, AttributeError, ValueError):
                headers["Transfer-Encoding"] = "chunked"
        else:
            body = iter(data)
            headers["Transfer-Encoding"] = "chunked"
        resp = self._request("PUT", path, body=body, headers=headers)
        self._raise_for(resp)
        d = json.loads(resp.read())
        return Status(d["path"], d["size"], d["mtime"], d["version"], False)

    @staticmethod
    def new_stream_id() -> str:
        return uuid.uuid4().hex
