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
* **Attributes** are the NameNode's own: a status's ``permission``, ``owner``,
  ``group`` (names, kept as the extra attributes ``hdfs.owner`` / ``hdfs.group``,
  and as uid / gid when this machine knows the names), ``accessTime``,
  ``replication`` (``hdfs.replication``) and ``symlink``; ``setattr`` is
  ``SETPERMISSION`` / ``SETOWNER`` / ``SETTIMES`` / ``SETREPLICATION`` /
  ``SETACL`` (``hdfs.acl``); ``symlink`` is ``CREATESYMLINK``; a write sends its
  mode as ``permission=`` and keeps a replaced file's mode and owner.
* **Snapshots** (``create_snapshot``, ``delete_snapshot``, ``rename_snapshot``)
  are the NameNode's ``CREATESNAPSHOT`` / ``DELETESNAPSHOT`` / ``RENAMESNAPSHOT``.

Errors come back as ``RemoteException`` JSON and are mapped by exception name
(FileNotFoundException -> NotFound, AccessControlException ->
PermissionDenied, ...); a refused connection or a timeout is UnderStoreError.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import secrets
import stat
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from meshd.attrs import AttrChange, Attrs, gid_of, group_name, symlink_mode, uid_of, user_name
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

# the extra attributes (meshd/attrs.py) HDFS keeps beside mode and times: WebHDFS's names
X_OWNER, X_GROUP, X_REPLICATION, X_ACL = "hdfs.owner", "hdfs.group", "hdfs.replication", "hdfs.acl"
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
    "AclException": InvalidArgument,
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






def _base_acl(mode: int) -> str:
    """The base entries (``user::``, ``group::``, ``other::``) of a permission: SETACL
    replaces the whole ACL and a NameNode requires them."""
    def text(bits: int) -> str:
        return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")

    return f"user::{text(mode >> 6 & 7)},group::{text(mode >> 3 & 7)},other::{text(mode & 7)}"


class HdfsUnderStore(UnderStore):
    scheme = "hdfs"
    capabilities = Capabilities(rename=True, directories=True, append=True, attrs=True, symlinks=True)
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

    def _info(self, path: str, st: dict[str, Any], acl: str | None = None) -> ObjectInfo:
        kind = st.get("type")
        is_dir = kind == "DIRECTORY"
        mtime_ms = int(st.get("modificationTime", 0))
        size = 0 if is_dir else int(st.get("length", 0))
        version = "" if is_dir else f"{mtime_ms}-{size}-{st.get('fileId', 0)}"
        return ObjectInfo(path, size, mtime_ms / 1000.0, version, is_dir, self._attrs(path, st, acl))

    def _attrs(self, path: str, st: dict[str, Any], acl: str | None) -> Attrs:
        """A FileStatus's attributes: its permission as a whole st_mode, the owner's and
        group's names beside (and their local ids when this machine knows the names)."""
        kind = st.get("type")
        try:
            perm = int(str(st.get("permission", "0")), 8) & 0o7777
        except ValueError:
            perm = 0
        target = None
        if kind == "SYMLINK":
            mode = symlink_mode()
            target = self._link_target(path, str(st.get("symlink", "")))
        else:
            mode = (stat.S_IFDIR if kind == "DIRECTORY" else stat.S_IFREG) | perm
        extra: dict[str, str] = {}
        owner, group = str(st.get("owner") or ""), str(st.get("group") or "")
        if owner:
            extra[X_OWNER] = owner
        if group:
            extra[X_GROUP] = group
        replication = st.get("replication")
        if kind == "FILE" and isinstance(replication, int) and replication > 0:
            extra[X_REPLICATION] = str(replication)
        if acl:
            extra[X_ACL] = acl
        atime_ms = st.get("accessTime")
        atime = atime_ms / 1000.0 if isinstance(atime_ms, int | float) and atime_ms > 0 else None
        return Attrs(mode=mode, uid=uid_of(owner) if owner else None, gid=gid_of(group) if group else None,
                     atime=atime, target=target, extra=extra)

    def _link_target(self, path: str, target: str) -> str:
        """An HDFS link's target as the mesh sees it: relative to the link's directory when
        it lies under the mount's root (so it names the same file through the mesh)."""
        root = self.root or "/"
        if target.startswith("/") and (target == root or target.startswith(root.rstrip("/") + "/")):
            return posixpath.relpath(target, posixpath.dirname(self._abs(path)))
        return target

    async def _acl_text(self, rel: str, st: dict[str, Any]) -> str | None:
        """The extended ACL entries of a status whose ``aclBit`` is set (one more call)."""
        if not st.get("aclBit"):
            return None
        try:
            out = await self._call("GET", rel, "GETACLSTATUS")
        except (NotSupported, InvalidArgument):
            return None
        entries = [str(e) for e in (out or {}).get("AclStatus", {}).get("entries", [])]
        return ",".join(entries) or None

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
        rel = path.strip("/")
        st = (await self._call("GET", path, "GETFILESTATUS"))["FileStatus"]
        return self._info(rel, st, await self._acl_text(rel, st))

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
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        if exclusive:
            await self.check_absent(path)
        if if_version is not None:  # checked, not atomically: WebHDFS has no conditional create
            await self.check_version(path, if_version)
        rel = path.strip("/")
        if not rel:
            raise IsADirectory(f"{self._shown('')} is a directory")
        old: ObjectInfo | None = None
        try:
            old = await self.head(rel)
            if old.is_dir:
                raise IsADirectory(f"is a directory: {self._shown(rel)}")
        except NotFound:
            pass
        # a replaced file keeps its mode and owner: the new bytes get them before they replace it
        keep = _kept(old.attrs if old is not None else None)
        # the kept owner is best effort (a NameNode lets only its superuser chown); the caller's is not
        owner_optional = change is None or (change.uid is None and change.gid is None
                                            and X_OWNER not in change.extra and X_GROUP not in change.extra)
        change = _merged(keep, change)
        params: dict[str, Any] = {"overwrite": False}
        if change is not None and change.mode is not None:
            params["permission"] = format(change.mode, "o")
        parent, _, name = rel.rpartition("/")
        tmp = f"{parent}/{TMP_PREFIX}{secrets.token_hex(8)}-{name}".lstrip("/")
        try:
            location = await self._located("PUT", tmp, "CREATE", **params)
            await self._send("PUT", location, chunks, f"CREATE {self._shown(rel)}")
            info = await self.head(tmp)  # the version of *these* bytes: a rename keeps it
            if change:
                info = await self._apply(tmp, change, info, owner_optional=owner_optional)
            await self._call("PUT", tmp, "RENAME", destination=self._abs(rel), renameoptions="OVERWRITE")
        except BaseException:
            try:
                await asyncio.shield(self._call("DELETE", tmp, "DELETE", recursive=False))
            except Exception:  # best effort: listings hide temporary names anyway
                pass
            raise
        return ObjectInfo(rel, info.size, info.mtime, info.version, False, info.attrs)

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
        existed = False
        if change and rel:
            try:
                existed = (await self.head(rel)).is_dir  # an existing directory keeps its attributes
            except NotFound:
                pass
        params = {"permission": format(change.mode, "o")} if change and change.mode is not None else {}
        try:
            await self._call("PUT", rel, "MKDIRS", **params)
        except AlreadyExists:
            raise NotADirectory(f"a file is in the way: {self._shown(rel)}") from None
        if change and rel and not existed:
            await self._apply(rel, change, await self.head(rel))

    # ---- attributes ----------------------------------------------------------

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        rel = path.strip("/")
        return await self._apply(rel, change, await self.head(rel))

    async def _apply(self, rel: str, change: AttrChange, info: ObjectInfo, *,
                     owner_optional: bool = False) -> ObjectInfo:
        """Make ``change`` with the NameNode's setters, each only when something changes;
        the new status. ``owner_optional``: a refused SETOWNER is let go."""
        a = info.attrs or Attrs()
        extra = dict(change.extra)
        unknown = set(extra) - {X_OWNER, X_GROUP, X_REPLICATION, X_ACL}
        if unknown:
            raise NotSupported(f"{self.scheme}:// under-stores keep no extra attribute {sorted(unknown)[0]!r} "
                               f"({self._shown(rel)})")
        done = False
        perm = a.mode & 0o7777 if a.mode is not None else None
        if change.mode is not None and change.mode != perm:
            await self._call("PUT", rel, "SETPERMISSION", permission=format(change.mode, "o"))
            perm, done = change.mode, True
        owner = extra.get(X_OWNER) or (user_name(change.uid) if change.uid is not None else None)
        group = extra.get(X_GROUP) or (group_name(change.gid) if change.gid is not None else None)
        params = {k: v for k, v in (("owner", owner), ("group", group))
                  if v and v != a.extra.get(X_OWNER if k == "owner" else X_GROUP)}
        if params:
            try:
                await self._call("PUT", rel, "SETOWNER", **params)
                done = True
            except PermissionDenied:
                if not owner_optional:
                    raise
        if change.atime is not None or change.mtime is not None:
            await self._call("PUT", rel, "SETTIMES",
                             modificationtime=-1 if change.mtime is None else int(change.mtime * 1000),
                             accesstime=-1 if change.atime is None else int(change.atime * 1000))
            done = True
        replication = extra.get(X_REPLICATION)
        if replication and not info.is_dir and replication != a.extra.get(X_REPLICATION):
            await self._call("PUT", rel, "SETREPLICATION", replication=replication)
            done = True
        if X_ACL in extra:
            acl = extra[X_ACL]
            if acl:
                base = _base_acl(perm if perm is not None else (0o755 if info.is_dir else 0o644))
                await self._call("PUT", rel, "SETACL", aclspec=f"{base},{acl}")
            elif a.extra.get(X_ACL):
                await self._call("PUT", rel, "REMOVEACL")
            done = True
        return await self.head(rel) if done else info

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        """CREATESYMLINK (a NameNode allows it only with ``test.SymlinkTest.enabled``; else
        NotSupported). A relative target is resolved from the link's directory: WebHDFS
        takes absolute ones only. The status is built here: a NameNode's GETFILESTATUS
        follows links."""
        rel = path.strip("/")
        dst = target if target.startswith("/") else posixpath.normpath(
            posixpath.join(posixpath.dirname(self._abs(rel)), target))
        await self._call("PUT", rel, "CREATESYMLINK", destination=dst, createParent=False)
        shown = self._link_target(rel, dst)
        extra = {k: v for k, v in (change.extra if change else {}).items() if v and k in (X_OWNER, X_GROUP)}
        if extra:
            try:
                await self._call("PUT", rel, "SETOWNER", **{("owner" if k == X_OWNER else "group"): v
                                                            for k, v in extra.items()})
            except MeshError:
                pass  # a link's owner is its creator's where the NameNode will not change it
        return ObjectInfo(rel, len(shown.encode()), time.time(), "", False,
                          Attrs(mode=symlink_mode(), target=shown, extra=extra))

    # ---- snapshots: the NameNode's own ----------------------------------------

    async def create_snapshot(self, path: str, name: str | None = None) -> str:
        """A snapshot of the snapshottable directory ``path``; the snapshot's path relative
        to the mount's root (``<path>/.snapshot/<name>``)."""
        rel = path.strip("/")
        out = await self._call("PUT", rel, "CREATESNAPSHOT", **({"snapshotname": name} if name else {}))
        made = str((out or {}).get("Path", ""))
        root = self.root or "/"
        if made == root:
            return ""
        if made.startswith(root.rstrip("/") + "/"):
            return made[len(root.rstrip("/")) + 1:]
        name = name or made.rpartition("/")[2]
        return f"{rel}/.snapshot/{name}".lstrip("/")

    async def delete_snapshot(self, path: str, name: str) -> None:
        await self._call("DELETE", path.strip("/"), "DELETESNAPSHOT", snapshotname=name)

    async def rename_snapshot(self, path: str, old: str, new: str) -> None:
        await self._call("PUT", path.strip("/"), "RENAMESNAPSHOT", oldsnapshotname=old, snapshotname=new)

    async def rename(self, src: str, dst: str) -> None:
        s, d = src.strip("/"), dst.strip("/")
        await self.head(s)  # NotFound with the source's name
        parent = d.rpartition("/")[0]
        if parent:
            await self.mkdir(parent)
        out = await self._call("PUT", s, "RENAME", destination=self._abs(d), renameoptions="OVERWRITE")
        if isinstance(out, dict) and out.get("boolean") is False:
            raise UnderStoreError(f"RENAME {self._shown(s)} -> {self._shown(d)} refused by the NameNode")


def _kept(a: Attrs | None) -> AttrChange | None:
    """What a rewrite keeps of the file it replaces: its permission and owner."""
    if a is None:
        return None
    return AttrChange(mode=a.mode & 0o7777 if a.mode is not None else None,
                      extra={k: v for k, v in a.extra.items() if k in (X_OWNER, X_GROUP)})


def _merged(keep: AttrChange | None, change: AttrChange | None) -> AttrChange | None:
    """``change`` over ``keep``: what the caller sets wins."""
    if keep is None:
        return change
    if change is None:
        return keep
    return AttrChange(mode=change.mode if change.mode is not None else keep.mode,
                      uid=change.uid, gid=change.gid, atime=change.atime, mtime=change.mtime,
                      extra={**keep.extra, **change.extra})
