"""Short-circuit local reads: cached pages handed to a co-located client as file descriptors.

A client on the node's own machine (the usual case: meshd runs on the GPU
node whose job reads the data) should not pay for a TCP loopback copy. It
connects to ``DATA_DIR/local.sock`` (``AF_UNIX``, ``SOCK_SEQPACKET``:
message boundaries and passed descriptors stay together) and sends one
request; the node resolves, fetches, verifies and caches exactly as for any
read, then answers with messages:

=====================  ======================================================
``H`` + JSON           status: ``size``, ``version``, ``offset``, ``length``
``F`` + <offset, len>  one page held by the disk tier; the page file's open
                       descriptor rides along (SCM_RIGHTS); the client
                       ``preadv``\\ s ``len`` bytes at ``offset`` into its buffer
``D`` + bytes          small segments held only in memory, and NoCache reads, inline
                       (a request with ``"fds": true``, from a client that keeps
                       descriptors, gets one for any cached page, however small)
``E``                  end of the read
``X`` + JSON           error ``{"error": kind, "message": ...}``
=====================  ======================================================

A page held only in memory (just fetched: its disk write is still queued)
is copied once into a ``memfd`` and that descriptor is passed instead, so
twenty readers waiting for one fresh page cost one copy, not twenty inline
streams through the event loop. The last ``MEMFD_KEEP`` such pages keep
their memfd; a client's received descriptor outlives its eviction.

Passing descriptors (as HDFS short-circuit reads do) needs no file
permissions on the cache directory, and an eviction racing the read is
harmless: an open descriptor outlives the unlink. The node stays the only
writer of its cache; the client only ever reads pages the node verified: a page
file's CRC-32C is checked when it is opened for the read, before its descriptor
is sent (docs/SEMANTICS.md, "Integrity of cached pages").
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections import OrderedDict

from meshd import auth
from meshd.attrs import AttrChange
from meshd.auth.peer import is_owner, unix_peer_uid
from meshd.cache.pages import DiskPage, MemPage, PageKey
from meshd.core.handle import Segment
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError, PermissionDenied, log_internal
from meshd.limits import loads, log_rejected, parse_int

log = logging.getLogger(__name__)

REQUEST_MAX = 64 << 10
INLINE_CHUNK = 128 << 10  # below the default SO_SNDBUF, so one message always fits
FD_HEADER = struct.Struct("<cQQ")
MEMFD_MIN = 256 << 10  # smaller in-memory segments go inline
MEMFD_KEEP = 16  # fresh pages kept as memfds (at most 16 pages' worth of extra memory)


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, *parts: bytes | memoryview,
                fd: int | None = None) -> None:
    """Send one message (gathered from ``parts``, no copy), with a descriptor if given."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
    while True:
        try:
            sock.sendmsg(parts, anc)
            return
        except BlockingIOError:
            await _ready(loop, sock, write=True)


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request message and the descriptors that came with it (a put hands one over)."""
    while True:
        try:
            msg, anc, flags, _ = sock.recvmsg(REQUEST_MAX, socket.CMSG_SPACE(4 * 4))
        except BlockingIOError:
            await _ready(loop, sock, write=False)
            continue
        fds = [fd for lvl, typ, data in anc if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS
               for fd in array.array("i", data[:len(data) - len(data) % 4])]
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            return b"{}", []  # answered as a malformed request
        return msg, fds


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, write: bool) -> None:
    """Until ``sock`` can be written to (``write``) or read from."""
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, _wake, fut)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _error(e: BaseException) -> bytes:
    if isinstance(e, MeshError):
        return b"X" + json.dumps({"error": e.kind, "message": str(e)}).encode()
    log_internal(log, "a short-circuit read", e)
    return b"X" + json.dumps({"error": "MeshError", "message": f"internal error: {type(e).__name__}"}).encode()


class ShortCircuitServer:
    def __init__(self, node: MeshNode, path: str) -> None:
        self.node = node
        self.path = path
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._memfds: OrderedDict[PageKey, int] = OrderedDict()

    def _memfd(self, seg: Segment, min_length: int = MEMFD_MIN) -> int | None:
        """A memfd holding the in-memory page of ``seg`` (made once per page); None: send inline."""
        if seg.key is None or seg.length < min_length or not isinstance(seg.page, MemPage) \
                or not hasattr(os, "memfd_create"):
            return None
        fd = self._memfds.get(seg.key)
        if fd is not None:
            self._memfds.move_to_end(seg.key)
            return fd
        try:
            fd = os.memfd_create("mesh-page", os.MFD_CLOEXEC)
        except OSError:
            return None
        try:
            view, done = memoryview(seg.page.data), 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except OSError:
            os.close(fd)
            return None
        self._memfds[seg.key] = fd
        while len(self._memfds) > MEMFD_KEEP:
            os.close(self._memfds.popitem(last=False)[1])
        return fd

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path)
        os.chmod(self.path, 0o660)
        sock.listen(256)
        sock.setblocking(False)
        self._sock = sock
        self._accept_task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            if not is_owner(unix_peer_uid(conn)):  # the socket's directory is 0700: not expected
                log_rejected("local socket connection", f"uid {unix_peer_uid(conn)}", "not the node's user")
                conn.close()
                continue
            conn.setblocking(False)
            task = asyncio.ensure_future(self._serve(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                raw, fds = await _recv(loop, conn)
                if not raw:
                    for fd in fds:
                        os.close(fd)
                    return
                if fds:
                    try:
                        await self._put(loop, conn, raw, fds)
                    finally:
                        for fd in fds:
                            os.close(fd)
                    continue
                await self._read(loop, conn, raw)
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            conn.close()

    async def _put(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, raw: bytes, fds: list[int]) -> None:
        """``{"op": "put", "path", "size", "change", "exclusive", "writeback"}`` with a file's
        descriptor: write it as the path's new version (meshfs's commit of a staged
        file: no copy through a socket). Answers ``S`` + the status, or ``X``."""
        try:
            try:
                req = loads(raw, "short-circuit put")
                if req.get("op") != "put" or len(fds) != 1:
                    raise ValueError
                path, size = str(req["path"]), parse_int(req["size"], "size")
                change = AttrChange.from_wire(req["change"]) if req.get("change") else None
                mode = req.get("writeback")
                token = req.get("t")
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InvalidArgument("malformed short-circuit put") from None
            if token:
                p = self.node.access.by_token(str(token))
                if p is None:
                    raise PermissionDenied("the token presented is not valid for this node")
                auth.set_current(p)
            else:
                auth.set_current(auth.OPERATOR)
            st = await self.node.write_file(path, fds[0], size, change=change, exclusive=bool(req.get("exclusive")),
                                            writeback=None if mode is None else bool(mode))
        except Exception as e:
            await _send(loop, conn, _error(e))
            return
        await _send(loop, conn, b"S" + json.dumps({
            "path": st.path, "size": st.size, "version": st.version, "mtime": st.mtime,
            "attrs": None if st.attrs is None else st.attrs.to_wire()}).encode())

    async def _read(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, raw: bytes) -> None:
        try:
            try:
                req = loads(raw, "short-circuit request")
                path = str(req["path"])
                offset = parse_int(req.get("offset", 0), "offset")
                length = parse_int(req.get("length", -1), "length", low=-1)
                version, size = req.get("version"), req.get("size")
                # a client that keeps descriptors (meshfs) gets one for every cached page, however
                # small the range: the descriptor serves its later reads of the whole page
                keeps = bool(req.get("fds"))
                token = req.get("t")
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InvalidArgument("malformed short-circuit request") from None
            if token:  # a client holding a token acts as its principal here too
                p = self.node.access.by_token(str(token))
                if p is None:
                    raise PermissionDenied("the token presented is not valid for this node")
                auth.set_current(p)
            else:
                auth.set_current(auth.OPERATOR)
            handle = await self.node.open(path, version=version, size=size)
            stream = await handle.read(offset, length, nocache=bool(req.get("nocache")),
                                       stream_key=req.get("stream") or None)
        except Exception as e:
            await _send(loop, conn, _error(e))
            return
        st = stream.status
        await _send(loop, conn, b"H" + json.dumps({"size": st.size, "version": st.version,
                                                   "offset": stream.offset, "length": stream.length}).encode())
        try:
            async for seg in stream.segments:
                try:
                    await self.node.prefer_file(seg, 0 if keeps else MEMFD_MIN)
                    memfd = None if isinstance(seg.page, DiskPage) else self._memfd(seg, 0 if keeps else MEMFD_MIN)
                    if isinstance(seg.page, DiskPage):
                        await _send(loop, conn, FD_HEADER.pack(b"F", seg.offset, seg.length),
                                    fd=seg.page.file.fileno())
                    elif memfd is not None:
                        fd = os.dup(memfd)  # ours for the send: an eviction meanwhile cannot close it
                        try:
                            await _send(loop, conn, FD_HEADER.pack(b"F", seg.offset, seg.length), fd=fd)
                        finally:
                            os.close(fd)
                    else:
                        view = memoryview(seg.page.data)[seg.offset:seg.offset + seg.length]
                        for i in range(0, len(view), INLINE_CHUNK):
                            await _send(loop, conn, b"D", view[i:i + INLINE_CHUNK])
                finally:
                    seg.close()
            await _send(loop, conn, b"E")
        except (ConnectionError, BrokenPipeError):
            raise
        except Exception as e:
            await _send(loop, conn, _error(e))
        finally:
            await stream.aclose()

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
        while self._memfds:
            os.close(self._memfds.popitem()[1])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
