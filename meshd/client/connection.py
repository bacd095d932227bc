"""The client's connection to a node: gRPC (control calls), the region's members, failover.

The client talks to one node. It learns the region's members from it (the
metadata wire's ``info``); when that node dies it moves to the next member
and carries on (``_failover``, ``_retrying``): every call is retried once per
member before the error reaches the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc

from meshd.client.base import ClientState, NodeUnreachable
from meshd.errors import MeshError, NodeUnavailable, from_kind
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from meshd.rpc.wire import SyncWireClient

T = TypeVar("T")
_GRPC_TO_KIND = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.UNAUTHENTICATED: "PermissionDenied",
    grpc.StatusCode.UNIMPLEMENTED: "NotSupported",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
}


class Connection(ClientState):
    def _connect(self, endpoint: str) -> None:
        """Talk to the node at gRPC ``endpoint`` from now on (raises NodeUnreachable)."""
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        tls = getattr(self, "_tls", None)
        channel = (grpc.secure_channel(endpoint, tls.grpc_credentials(), options=options) if tls is not None
                   else grpc.insecure_channel(endpoint, options=options))
        stub = pb_grpc.MeshStub(channel)
        try:
            info = stub.GetInfo(pb.Empty(), timeout=min(self.timeout, 10.0), metadata=self._auth_md)
        except grpc.RpcError as e:
            channel.close()
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise self._error(e) from None
            hint = (" (over TLS without a client certificate: give one with --tls-cert/--tls-key or "
                    "$MESH_TLS_CERT/$MESH_TLS_KEY if the node requires it)" if tls is not None and not tls.cert else "")
            raise NodeUnreachable(f"node at {endpoint} is unreachable: {e.details()}{hint}") from None
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
            w = self._wires[address] = SyncWireClient(address, self.timeout, ssl_context=getattr(self, "_ssl", None),
                                                      token=self.token)
        return w

    def _learn_members(self) -> None:
        """Learn the region's members from the node: the metadata wire's ``info``
        (``MetadataCalls`` provides it; a client without one stays with this node)."""

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

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Run ``fn()``; when the node is unreachable, again on the next member."""
        for _ in range(max(2, len(self.members) + 1)):
            gen = self._generation
            try:
                return fn()
            except NodeUnavailable as e:
                if not self._failover(gen, e):
                    raise
        return fn()

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

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call; ``method`` is a stub attribute name (re-bound after a failover)."""
        def once() -> Any:
            try:
                return getattr(self._stub, method)(request, timeout=timeout or self.timeout,
                                                   metadata=self._auth_md)
            except grpc.RpcError as e:
                raise self._error(e) from None

        return self._retrying(once)

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        try:
            yield from getattr(self._stub, method)(request, metadata=self._auth_md)
        except grpc.RpcError as e:
            raise self._error(e) from None


__all__ = ["Connection"]
