"""Short-circuit local reads: the node's page files, handed over its local socket.

When the node is on this machine (it announces a ``local`` endpoint, a unix
SEQPACKET socket; meshd/servers/shortcircuit.py), a read is one JSON request
and a stream of messages: ``H`` (a header), then per piece ``F`` (a page
file's descriptor, passed with SCM_RIGHTS, and where the range's bytes sit in
it) or ``D`` (bytes inline, for pages the node holds nowhere else), then ``E``
(the end) or ``X`` (an error). The client ``preadv``s the page files straight
into the caller's buffer; a client that keeps descriptors (meshfs) takes them
as they are (``page_pieces``). One connection per thread; one that is
abandoned mid-read is out of step and is dropped. A client that cannot connect
(another machine, no permission) reads over HTTP from then on.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from meshd.attrs import AttrChange, Attrs
from meshd.client.base import ClientState, Piece, ReadCut, Status
from meshd.errors import UnderStoreError, from_kind

_SC_MAX = (128 << 10) + 64
_FD_HEADER = struct.Struct("<cQQ")  # as meshd.servers.shortcircuit.FD_HEADER


def _close_passed(anc: list[tuple[int, int, bytes]]) -> None:
    for lvl, typ, data in anc:
        if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            for fd in array.array("i", data):
                os.close(fd)


class ShortCircuit(ClientState):
    def put_file(self, path: str, fd: int, size: int, *, change: AttrChange | None = None,
                 exclusive: bool = False, writeback: bool | None = None) -> Status | None:
        """Hand the open file ``fd`` (its first ``size`` bytes) to the node on this machine as
        ``path``'s new version: no bytes through a socket; in write-back mode an O_TMPFILE
        on the node's spool file system becomes the spool itself, so the caller must never
        write to ``fd`` again. None when the node is not local (use :meth:`put`)."""
        sock = self._sc()
        if sock is None:
            return None
        req = {"op": "put", "path": path, "size": size, "exclusive": exclusive,
               **({"change": change.to_wire()} if change else {}),
               **({} if writeback is None else {"writeback": writeback}),
               **({"t": self.token} if self.token else {})}
        try:
            sock.sendmsg([json.dumps(req).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            msg, anc, _, _ = sock.recvmsg(_SC_MAX, socket.CMSG_SPACE(4))
        except OSError:
            self._local.sc = None  # out of step: a new connection next time
            with contextlib.suppress(OSError):
                sock.close()
            return None
        _close_passed(anc)
        if msg[:1] == b"X":
            err = json.loads(msg[1:])
            raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
        if msg[:1] != b"S":
            raise UnderStoreError("unexpected answer to a short-circuit put")
        d = json.loads(msg[1:])
        return Status(d["path"], d["size"], d["mtime"], d["version"], False, Attrs.from_wire(d.get("attrs")))

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
               **(hint or {}), **({"t": self.token} if self.token else {})}
        done = False
        try:
            sock.sendall(json.dumps(req).encode())
            while True:
                msg, anc, flags, _ = sock.recvmsg(_SC_MAX, socket.CMSG_SPACE(4))
                if not msg:
                    raise ReadCut("node closed the local socket mid-read")
                if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                    _close_passed(anc)
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

    def _sc_read_into(self, path: str, view: memoryview, offset: int, length: int, nocache: bool,
                      stream_id: str | None, hint: dict[str, Any] | None) -> Iterator[int]:
        """Fill ``view`` again and again with the range's next bytes (``preadv`` of the page
        files); yields how many."""
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

    def _sc_cat(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                hint: dict[str, Any] | None) -> bytes:
        """The range's bytes, in one buffer sized by the header."""
        out = bytearray()
        pos = 0
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


__all__ = ["ShortCircuit"]
