"""Which local user is at the other end of a connection (Linux).

A Unix socket tells it directly (``SO_PEERCRED``). A TCP connection from this
machine is looked up with the kernel's socket diagnostics (``NETLINK_SOCK_DIAG``,
what ``ss -e`` uses): the client's socket, found by its exact address pair in
this network namespace, carries the uid that created it. A connection from
another machine (or another network namespace) has no local socket: ``None``,
and the client must present a credential.

This is PostgreSQL's ``peer``/``ident`` idea, used for one purpose only: the
user who runs the node (and root) may use it without a credential, as they
could read its credential file anyway.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_REQ = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
_MSG_UID_OFFSET = 4 + 48 + 12  # inet_diag_msg: family..retrans, sockid, expires/rqueue/wqueue, then uid


def _sockid(src: tuple[str, int], dst: tuple[str, int], family: int) -> bytes:
    def addr(host: str) -> bytes:
        packed = ipaddress.ip_address(host.split("%")[0]).packed
        return packed.ljust(16, b"\0")

    return (struct.pack(">HH", src[1], dst[1]) + addr(src[0]) + addr(dst[0])
            + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE))


def tcp_peer_uid(peer: tuple[str, int] | None, local: tuple[str, int] | None) -> int | None:
    """The uid owning the client socket of the TCP connection ``peer`` -> ``local``
    (as the server sees them), or None when it is not a socket of this machine."""
    if not peer or not local:
        return None
    try:
        ip = ipaddress.ip_address(peer[0].split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d (dual stack)
        mapped = ipaddress.ip_address(local[0].split("%")[0])
        peer = (str(ip.ipv4_mapped), peer[1])
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
            local = (str(mapped.ipv4_mapped), local[1])
        ip = ip.ipv4_mapped
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + _sockid(
        (peer[0], peer[1]), (local[0], local[1]), family)
    msg = _HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
            s.settimeout(1.0)
            s.sendto(msg, (0, 0))
            data = s.recv(8192)
    except OSError:
        return None
    if len(data) < _HDR.size:
        return None
    _length, kind, _flags, _seq, _pid = _HDR.unpack_from(data)
    if kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY:
        return None
    off = _HDR.size + _MSG_UID_OFFSET
    if len(data) < off + 4:
        return None
    return int(struct.unpack_from("=I", data, off)[0])


def unix_peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def is_owner(uid: int | None) -> bool:
    """The node's own user, or root: who may use the node without a credential."""
    return uid is not None and uid in (0, os.geteuid())
