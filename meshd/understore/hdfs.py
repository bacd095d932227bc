"""HDFS as an under-store, through the WebHDFS REST API: no JVM, no native library.

URIs: ``hdfs://namenode[:rpc-port]/path`` (the REST endpoint is the
NameNode's HTTP address: option ``endpoint``, default
``http://namenode:9870``, Hadoop 3's NameNode HTTP port) or
``webhdfs://host:http-port/path`` (Hadoop's own scheme for it: the URI names
the HTTP address). HttpFS gateways speak the same API (``endpoint`` at their
port, usually 14000). The topology's per-region endpoints apply as for S3: a
region reaching the cluster over a link uses the address its store entry gives.

Options: ``endpoint``, ``user`` (``user.name`` of every request, Hadoop's
simple auth; default ``mesh``), ``connect_timeout`` (5 s), ``read_timeout``
(60 s per read).

How the contract is kept on a store that has neither conditional reads nor
atomic replace over this API:

* **Versions** are ``modificationTime-length-fileId``: the inode id changes
  with every create, so a rewrite is always a new version, even within one
  millisecond.
* **Reads of a version** (``get_range(..., version=v)``) check the status
  before reading and again after every ``VERIFY_EVERY`` bytes, and hand out
  bytes only once the check after them passed: a version never recurs, so
  bytes seen between two passing checks are that version's. A failed check is
  ``VersionChanged``. Bytes reach the caller in windows of ``VERIFY_EVERY``
  (one page): still streaming, one extra status call per window.
* **Writes** go to ``.mesh-tmp-<random>`` beside the target (two-step
  ``CREATE``), then ``RENAME`` with ``renameoptions=OVERWRITE`` replaces the
  target in one NameNode operation; a failed upload deletes the temporary
  file, and listings never show such names. A reader never sees a half
  written file and a failed put leaves the old one.
* **Append** is WebHDFS's own two-step ``APPEND``.

Errors come back as ``RemoteException`` JSON and are mapped by exception name
(FileNotFoundException -> NotFound, AccessControlException ->
PermissionDenied, ...); a refused connection or a timeout is UnderStoreError.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from meshd.attrs import AttrChange
from meshd.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    MeshError,
    MountError,
    NotADirectory,
    NotFound,
    NotSupported,
    PermissionDenied,
    UnderStoreError,
    VersionChanged,
)
from meshd.understore.base import (
    Capabilities,
    ObjectInfo,
    UnderStore,
    check_options,
    without_userinfo,
)

DEFAULT_HTTP_PORT = 9870
VERIFY_EVERY = 4 << 20
TMP_PREFIX = ".mesh-tmp-"
CHUNK = 1 << 20

_EXCEPTIONS: dict[str, type[MeshError]] = {
    "FileNotFoundException": NotFound,
    "AccessControlException": PermissionDenied,
    "SecurityException": PermissionDenied,
    "AuthorizationException": PermissionDenied,
    "FileAlreadyExistsException": AlreadyExists,
    "ParentNotDirectoryException": NotADirectory,
    "PathIsNotEmptyDirectoryException": DirectoryNotEmpty,
    "IllegalArgumentException": InvalidArgument,
    "UnsupportedOperationException": NotSupported,
}


def _float(options: Mapping[str, str], key: str, default: float) -> float:
    raw = options.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise MountError(f"hdfs option {key}={raw!r}: expected seconds") from None
    if v <= 0:
        raise MountError(f"hdfs option {key}={raw!r}: must be positive")
    return v


class HdfsUnderStore(UnderStore):
    scheme = "hdfs"
    capabilities = Capabilities(rename=True, directories=True, append=True)
    OPTIONS = frozenset({"endpoint", "user", "connect_timeout", "read_timeout"})

    def __init__(self, uri: str, options: Mapping[str, str]) -> None:
        super().__init__(uri, options)
        parts = urlsplit(uri)
        if parts.scheme not in ("hdfs", "webhdfs", "swebhdfs"):
            raise MountError(f"not an HDFS URI: {uri!r}")
        if not parts.hostname:
            raise MountError(f"{uri!r}: an HDFS URI names its NameNode: hdfs://namenode[:port]/path")
        self.scheme = parts.scheme
        endpoint = options.get("endpoint", "")
        if not endpoint:
            if parts.scheme == "hdfs":
                endpoint = f"http://{parts.hostname}:{DEFAULT_HTTP_PORT}"
            else:
                http = "https" if parts.scheme == "swebhdfs" else "http"
                endpoint = f"{http}://{parts.hostname}:{parts.port or DEFAULT_HTTP_PORT}"
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise MountError(f"hdfs option endpoint={endpoint!r}: expected http(s)://host:port")
        self.endpoint = endpoint.rstrip("/")
        self.root = "/" + parts.path.strip("/") if parts.path.strip("/") else ""
        self.user = options.get("user", "mesh")
        self._timeout = aiohttp.ClientTimeout(total=None, connect=_float(options, "connect_timeout", 5.0),
                                              sock_connect=_float(options, "connect_timeout", 5.0),
                                              sock_read=_float(options, "read_timeout", 60.0))
        check_options("hdfs", options, self.OPTIONS)
        self._session: aiohttp.ClientSession | None = None

    # ---- plumbing ----------------------------------------------------------

    def _abs(self, path: str) -> str:
        return (self.root + "/" + path.strip("/")) if path.strip("/") else (self.root or "/")

    def _url(self, path: str, op: str, **params: Any) -> URL:
        q = {"op": op, "user.name": self.user}
        q.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()})
        raw = self.endpoint + "/webhdfs/v1" + quote(self._abs(path), safe="/")
        return URL(raw, encoded=True).update_query(q)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _raise_for(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status < 400:
            return
        body = await resp.read()
        try:
            remote = json.loads(body)["RemoteException"]
            name, message = str(remote.get("exception", "")), str(remote.get("message", ""))
        except (ValueError, KeyError, TypeError):
            # the body (a proxy's page, ...) may name the NameNode and HDFS paths: not echoed
            raise UnderStoreError(f"{what}: HTTP {resp.status} from the NameNode") from None
        raise _EXCEPTIONS.get(name, UnderStoreError)(f"{what}: {name}{self._mesh_message(message)}")

    def _mesh_message(self, message: str) -> str:
        """The NameNode's message with HDFS paths named as mesh paths (``": ..."``); when the
        mount is the HDFS root they cannot be told apart from other text: left out."""
        if not self.root or not message:
            return ""
        return ": " + message.replace(self.root, self.shown.rstrip("/") or "/")

    async def _call(self, method: str, path: str, op: str, **params: Any) -> Any:
        """A one-step operation with a JSON answer (or none)."""
        what = f"{op} {self._shown(path.strip('/'))}"
        try:
            async with self.session().request(method, self._url(path, op, **params)) as resp:
                await self._raise_for(resp, what)
                body = await resp.read()
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise UnderStoreError(f"{what}: the NameNode is unreachable ({type(e).__name__})") from None
        return json.loads(body) if body.strip() else None

    async def _located(self, method: str, path: str, op: str, **params: Any) -> str:
        """Step one of a two-step operation: where the NameNode sends the bytes."""
        what = f"{op} {self._shown(path.strip('/'))}"
        try:
            async with self.session().request(method, self._url(path, op, **params),
                                              allow_redirects=False) as resp:
                await self._raise_for(resp, what)
                location = resp.headers.get("Location")
                if location is None and resp.status == 200:
                    location = (json.loads(await resp.read()) or {}).get("Location")
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            raise UnderStoreError(f"{what}: the NameNode is unreachable ({type(e).__name__})") from None
        if not location:
            raise UnderStoreError(f"{what}: the NameNode gave no DataNode location (HTTP {resp.status})")
        return location

    async def _send(self, method: str, location: str, chunks: AsyncIterator[bytes], what: str) -> None:
        """Step two: stream the bytes to the DataNode (chunked transfer). A failure of the
        caller's own stream is raised as itself, not as the connection error it causes."""
        failed: list[BaseException] = []

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for c in chunks:
                    yield c
            except BaseException as e:
                failed.append(e)
                raise

        try:
            async with self.session().request(method, URL(location, encoded=True), data=relay(),
                                              headers={"Content-Type": "application/octet-stream"}) as resp:
                await self._raise_for(resp, what)
                await resp.read()
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as e:
            if failed:
                raise failed[0] from None
            raise UnderStoreError(f"{what}: upload failed ({type(e).__name__})") from None

    def _info(self, path: str, st: dict[str, Any]) -> ObjectInfo:
        is_dir = st.get("type") == "DIRECTORY"
        mtime_ms = int(st.get("modificationTime", 0))
        size = 0 if is_dir else int(st.get("length", 0))
        version = "" if is_dir else f"{mtime_ms}-{size}-{st.get('fileId', 0)}"
        return ObjectInfo(path, size, mtime_ms / 1000.0, version, is_dir)

    # ---- the contract ------------------------------------------------------

    async def check(self) -> None:
        try:
            info = await self.head("")
        except NotFound:
            raise MountError(f"{self.uri}: no such directory in HDFS at {without_userinfo(self.endpoint)}") from None
        except UnderStoreError as e:
            raise MountError(f"{self.uri}: {e}") from None
        if not info.is_dir:
            raise MountError(f"{self.uri}: not a directory")

    async def head(self, path: str) -> ObjectInfo:
        out = await self._call("GET", path, "GETFILESTATUS")
        return self._info(path.strip("/"), out["FileStatus"])

    async def list(self, path: str) -> list[ObjectInfo]:
        rel = path.strip("/")
        entries: list[dict[str, Any]] = []
        after = ""
        while True:
            params = {"startAfter": after} if after else {}
            try:
                out = await self._call("GET", rel, "LISTSTATUS_BATCH", **params)
            except (NotSupported, InvalidArgument):  # an older NameNode or HttpFS: the plain listing
                out = await self._call("GET", rel, "LISTSTATUS")
                entries = out["FileStatuses"]["FileStatus"]
                break
            listing = out["DirectoryListing"]
            page = listing["partialListing"]["FileStatuses"]["FileStatus"]
            entries.extend(page)
            if not listing.get("remainingEntries") or not page:
                break
            after = page[-1]["pathSuffix"]
        if len(entries) == 1 and entries[0].get("pathSuffix") == "" and entries[0].get("type") == "FILE":
            raise NotADirectory(f"not a directory: {self._shown(rel)}")
        out_list = [self._info(f"{rel}/{e['pathSuffix']}".lstrip("/"), e) for e in entries
                    if not str(e.get("pathSuffix", "")).startswith(TMP_PREFIX)]
        return sorted(out_list, key=lambda i: i.path.encode())

    async def get_range(self, path: str, start: int, end: int,
                        version: str | None = None, *, chunk: int | None = None) -> AsyncIterator[bytes]:
        rel = path.strip("/")
        info = await self.head(rel)
        if info.is_dir:
            raise IsADirectory(f"is a directory: {self._shown(rel)}")
        if version is not None and info.version != version:
            raise VersionChanged(f"{self._shown(rel)} changed: {version} -> {info.version}")
        end = min(end, info.size)
        if start >= end:
            return
        held: list[bytes] = []
        held_bytes = 0
        try:
            async with self.session().get(self._url(rel, "OPEN", offset=start, length=end - start)) as resp:
                await self._raise_for(resp, f"OPEN {self._shown(rel)}")
                async for piece in resp.content.iter_chunked(chunk or CHUNK):
                    if version is None:
                        yield piece
                        continue
                    held.append(piece)
                    held_bytes += len(piece)
                    if held_bytes >= VERIFY_EVERY:
                        await self._verify(rel, version)
                        for c in held:
                            yield c
                        held, held_bytes = [], 0
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UnderStoreError(f"OPEN {self._shown(rel)}: read failed ({type(e).__name__})") from None
        if held:
            await self._verify(rel, version or "")
            for c in held:
                yield c

    async def _verify(self, rel: str, version: str) -> None:
        now = (await self.head(rel)).version
        if now != version:
            raise VersionChanged(f"{self._shown(rel)} changed while it was read: {version} -> {now}")

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False) -> ObjectInfo:
        if exclusive:
            await self.check_absent(path)
        rel = path.strip("/")
        if not rel:
            raise IsADirectory(f"{self._shown('')} is a directory")
        try:
            if (await self.head(rel)).is_dir:
                raise IsADirectory(f"is a directory: {self._shown(rel)}")
        except NotFound:
            pass
        parent, _, name = rel.rpartition("/")
        tmp = f"{parent}/{TMP_PREFIX}{secrets.token_hex(8)}-{name}".lstrip("/")
        try:
            location = await self._located("PUT", tmp, "CREATE", overwrite=False)
            await self._send("PUT", location, chunks, f"CREATE {self._shown(rel)}")
            info = await self.head(tmp)  # the version of *these* bytes: a rename keeps it
            await self._call("PUT", tmp, "RENAME", destination=self._abs(rel), renameoptions="OVERWRITE")
        except BaseException:
            try:
                await asyncio.shield(self._call("DELETE", tmp, "DELETE", recursive=False))
            except Exception:  # best effort: listings hide temporary names anyway
                pass
            raise
        return ObjectInfo(rel, info.size, info.mtime, info.version, False)

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        rel = path.strip("/")
        location = await self._located("POST", rel, "APPEND")
        await self._send("POST", location, chunks, f"APPEND {self._shown(rel)}")
        return await self.head(rel)

    async def delete(self, path: str) -> None:
        rel = path.strip("/")
        try:
            await self._call("DELETE", rel, "DELETE", recursive=False)
        except NotFound:
            pass

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        rel = path.strip("/")
        try:
            await self._call("PUT", rel, "MKDIRS")
        except AlreadyExists:
            raise NotADirectory(f"a file is in the way: {self._shown(rel)}") from None

    async def rename(self, src: str, dst: str) -> None:
        s, d = src.strip("/"), dst.strip("/")
        await self.head(s)  # NotFound with the source's name
        parent = d.rpartition("/")[0]
        if parent:
            await self.mkdir(parent)
        out = await self._call("PUT", s, "RENAME", destination=self._abs(d), renameoptions="OVERWRITE")
        if isinstance(out, dict) and out.get("boolean") is False:
            raise UnderStoreError(f"RENAME {self._shown(s)} -> {self._shown(d)} refused by the NameNode")
