"""The HTTP data path: file bytes over the node's HTTP data endpoint.

One keep-alive connection per thread (the node serves reads with sendfile).
A read is a GET of ``/v1/files/PATH`` with the range, the pin (``version``
and ``size``) and the reader's stream id (``X-Mesh-Stream``: the node reads
ahead per stream); a body that ends early is a cut read (``ReadCut``: the
node died, or aborted the read because the file changed). A write is a PUT,
streamed (chunked when its length is unknown).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any
from urllib.parse import quote, urlencode

from meshd.attrs import AttrChange, Attrs
from meshd.client.base import ClientState, NodeUnreachable, ReadCut, Status
from meshd.errors import InvalidArgument, MeshError, from_kind


class HttpData(ClientState):
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            ctx = getattr(self, "_ssl", None)
            conn = (http.client.HTTPSConnection(self._http_host, self._http_port, timeout=self.timeout, context=ctx)
                    if ctx is not None else
                    http.client.HTTPConnection(self._http_host, self._http_port, timeout=self.timeout))
            self._local.conn = conn
        return conn

    # A write's answer comes once the node has it (write-back) or the store has it
    # (write-through: an 8 GiB checkpoint over a shaped link takes minutes after its last
    # byte is sent): the wait for it is not bounded by the client's socket timeout.
    WRITE_ANSWER_TIMEOUT = 6 * 3600.0

    def _request(self, method: str, path: str, query: str = "", body: Any = None,
                 headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        url = "/v1/files" + quote(path if path.startswith("/") else "/" + path, safe="/") + query
        for attempt in (0, 1):
            conn = self._conn()
            try:
                if self.token:
                    headers = {**(headers or {}), "Authorization": f"Bearer {self.token}"}
                conn.request(method, url, body=body, headers=headers or {},
                             encode_chunked=(headers or {}).get("Transfer-Encoding") == "chunked")
                if method == "PUT" and conn.sock is not None:
                    conn.sock.settimeout(max(self.timeout, self.WRITE_ANSWER_TIMEOUT))
                try:
                    return conn.getresponse()
                finally:
                    if method == "PUT" and conn.sock is not None:
                        conn.sock.settimeout(self.timeout)
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                # a kept-alive connection may have been closed by the node: retry once on a new one
                if attempt or (body is not None and not isinstance(body, bytes | bytearray)):
                    raise NodeUnreachable(f"node HTTP endpoint {self._http_host}:{self._http_port}: {e}") from None
            except BaseException:  # e.g. the body's iterator failed: the request is cut half-way
                conn.close()
                self._local.conn = None
                raise
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

    def _http_read_into(self, path: str, view: memoryview, offset: int, length: int, nocache: bool,
                        stream_id: str | None, hint: dict[str, Any] | None) -> Iterator[int]:
        """Fill ``view`` again and again with the range's next bytes; yields how many."""
        resp, remaining = self.open_read(path, offset, length, nocache=nocache, stream_id=stream_id, hint=hint)
        while remaining > 0:
            k = resp.readinto(view[:min(remaining, len(view))])
            if not k:
                self._local.conn = None
                raise ReadCut(f"read of {path} ended {remaining} bytes early (node aborted it)")
            remaining -= k
            yield k

    def _http_cat(self, path: str, offset: int, length: int, nocache: bool, stream_id: str | None,
                  hint: dict[str, Any] | None) -> bytes:
        """The range's bytes, in one buffer sized by the response's length."""
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

    def put(self, path: str, data: bytes | IO[bytes] | Iterable[bytes], *, change: AttrChange | None = None,
            exclusive: bool = False, writeback: bool | None = None, size: int | None = None) -> Status:
        """Create or replace a whole file; ``data`` is streamed, not buffered. ``change``:
        the new version's mode, owner, mtime; ``exclusive``: AlreadyExists if the path is
        taken; ``writeback``: True returns once the bytes are durable on the node (uploaded
        to the under-store in the background), False once they are in the under-store,
        None as the mount's ``write_mode`` says. ``size``: the length of an iterable
        ``data``, when known (sent as Content-Length: the node reserves the room at once)."""
        headers: dict[str, str] = {}
        query: dict[str, str] = {}
        if change:
            query["attrs"] = json.dumps(change.to_wire())
        if exclusive:
            query["exclusive"] = "1"
        if writeback is not None:
            query["writeback"] = "back" if writeback else "through"
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
            if size is not None and size >= 0:
                headers["Content-Length"] = str(size)
                body = _exactly(body, size, path)
            else:
                headers["Transfer-Encoding"] = "chunked"
        resp = self._request("PUT", path, body=body, headers=headers, query="?" + urlencode(query) if query else "")
        self._raise_for(resp)
        d = json.loads(resp.read())
        return Status(d["path"], d["size"], d["mtime"], d["version"], False, Attrs.from_wire(d.get("attrs")))


def _exactly(chunks: Iterator[bytes], size: int, path: str) -> Iterator[bytes]:
    """``chunks``, which must add up to ``size`` bytes (the Content-Length sent)."""
    sent = 0
    for c in chunks:
        sent += len(c)
        if sent > size:
            raise InvalidArgument(f"put {path}: more bytes than the size given ({size})")
        yield c
    if sent != size:
        raise InvalidArgument(f"put {path}: {sent} bytes, not the size given ({size})")


__all__ = ["HttpData"]
