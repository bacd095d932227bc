"""What every part of the client shares: the statuses and pieces it returns, its own
errors, how it finds the node, and the state :class:`meshd.client.sdk.MeshClient`'s
parts (connection, metadata calls, routing, short-circuit and HTTP data paths)
keep on the one client object (:class:`ClientState`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshd.attrs import Attrs
from meshd.cluster.ring import HashRing
from meshd.config import default_data_dir, parse_write_mode
from meshd.errors import InvalidArgument, IsADirectory, NodeUnavailable, UnderStoreError
from meshd.rpc.wire import SyncWireClient

CHUNK = 1 << 20


def write_mode(value: str | bool | None) -> bool | None:
    """A write mode as a caller gives it (``"back"``, ``"through"``, a bool, or None for
    the mount's ``write_mode``), as :meth:`MeshClient.put`'s ``writeback`` takes it."""
    if value is None or isinstance(value, bool):
        return value
    return parse_write_mode(str(value))


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
    attrs: Attrs | None = None  # mode, owner, times, link target, when the store keeps them


def pin_hint(pin: Status | None) -> dict[str, Any] | None:
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
                                  "(start one with `meshd embedded`, or name a running node: meshctl "
                                  "--endpoint, endpoint= in Python and fsspec, or $MESH_ENDPOINT)") from None
        except (ValueError, KeyError) as e:
            raise NodeUnreachable(f"{candidate} is not a valid endpoints.json: {e}") from None
    if candidate.startswith(("http://", "grpc://", "https://", "grpcs://")):  # grpcs, https: TLS (meshd.tls)
        candidate = urlsplit(candidate).netloc
    return candidate


class ClientState:
    """The attributes the client's parts share (set by ``MeshClient.__init__`` and
    ``Connection._connect``): declared once here so each part can be read alone."""

    endpoint: str
    timeout: float
    node_id: str
    endpoints: dict[str, str]
    page_size: int
    members: list[dict[str, Any]]
    _route: bool  # send metadata and page reads to their owners when in a cluster
    _short_circuit: bool  # read through the node's local socket when it is on this machine
    _lock: threading.Lock
    _generation: int  # bumped on every switch to another node
    _ring: HashRing | None
    _wires: dict[str, SyncWireClient]
    _meta: SyncWireClient | None  # the metadata wire of the node this client talks to
    _dead: set[str]
    _suspect: dict[str, float]
    _channel: Any
    _stub: Any
    token: str | None  # presented on every connection (find_token); None: the node's owner only
    _auth_md: tuple[tuple[str, str], ...]  # gRPC metadata carrying it
    _local: threading.local  # per-thread connections (HTTP ``conn``, short-circuit ``sc``)
    _local_sock: str
    _http_host: str
    _http_port: int
    _tls: Any  # meshd.tls.ClientTLS when the node speaks TLS, else None
    _ssl: Any  # its ssl.SSLContext (HTTPS, metadata wire), else None


__all__ = ["CHUNK", "ClientState", "NodeUnreachable", "Piece", "ReadCut", "Status", "find_endpoint", "pin_hint",
           "write_mode"]
