"""The WebHDFS REST API (Hadoop's ``/webhdfs/v1/<path>?op=...``) over the mesh's namespace.

Paths are mesh paths, one to one: a mount of ``hdfs://nn:8020/warehouse`` at
``/warehouse`` makes ``webhdfs://mesh:port/warehouse/x`` the same file as
``hdfs://nn:8020/warehouse/x``: a job changes only the scheme and the host.
Every operation and its status: docs/WEBHDFS_COMPAT.md.

Two steps, as a NameNode and a DataNode do. ``OPEN``, ``CREATE``, ``APPEND``
and ``GETFILECHECKSUM`` first answer ``307 Temporary Redirect`` with a
``Location`` naming this gateway again with ``datanode=true`` (or, with
``noredirect=true``, ``200 {"Location": ...}``); the bytes move on the second
request. Clients written for HDFS (HdfsCLI, fsspec, curl -L, Hadoop's
WebHdfsFileSystem) expect exactly that.

Users. Hadoop's simple auth: the caller names itself with ``user.name`` (or
``doas``); requests without it act as ``webhdfs.anonymous_user`` (``dr.who``)
unless ``webhdfs.allow_anonymous`` is off. With ``webhdfs.users`` set, only
those users are let in, each ``rw`` or ``ro``. A read-only mount refuses
writes to everyone. Refusals are ``AccessControlException``.

Errors. Every failure is a ``RemoteException`` JSON body with the Java
exception name clients map (``FileNotFoundException``,
``AccessControlException``, ``FileAlreadyExistsException``, ...) and the HTTP
status Hadoop's ExceptionHandler gives it (404 for FileNotFoundException, 403
for other IOExceptions and security exceptions, 400 for
IllegalArgumentException and UnsupportedOperationException); the mapping from
the mesh's errors is one table (``meshd.errors.hadoop_exception``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from meshd import errors as me
from meshd import paths
from meshd.config import WebHdfsConfig
from meshd.core.node import MeshNode
from meshd.core.placing import XATTR_NAMES
from meshd.metadata.shard import FileStatus
from meshd.servers.http_api import stream_response

log = logging.getLogger(__name__)

PREFIX = "/webhdfs/v1"
BATCH = 1000            # LISTSTATUS_BATCH entries per answer (HDFS's dfs.ls.limit)
BYTES_PER_CRC = 512     # GETFILECHECKSUM: HDFS's dfs.bytes-per-checksum
READ_CHUNK = 1 << 20

GET_OPS = {"OPEN", "GETFILESTATUS", "LISTSTATUS", "LISTSTATUS_BATCH", "GETCONTENTSUMMARY",
           "GETFILECHECKSUM", "GETHOMEDIRECTORY", "GETTRASHROOT", "CHECKACCESS", "GETXATTRS",
           "LISTXATTRS", "GETFILEBLOCKLOCATIONS", "GET_BLOCK_LOCATIONS", "GETACLSTATUS",
           "GETDELEGATIONTOKEN", "GETSERVERDEFAULTS", "GETSTORAGEPOLICY", "GETSNAPSHOTDIFF",
           "GETECPOLICY", "GETQUOTAUSAGE", "GETSTATUS", "GETALLSTORAGEPOLICY", "GETSNAPSHOTTABLEDIRECTORYLIST"}
PUT_OPS = {"CREATE", "MKDIRS", "RENAME", "SETPERMISSION", "SETOWNER", "SETREPLICATION", "SETTIMES",
           "CREATESYMLINK", "RENEWDELEGATIONTOKEN", "CANCELDELEGATIONTOKEN", "MODIFYACLENTRIES",
           "REMOVEACLENTRIES", "REMOVEDEFAULTACL", "REMOVEACL", "SETACL", "SETXATTR", "REMOVEXATTR",
           "CREATESNAPSHOT", "RENAMESNAPSHOT", "SETSTORAGEPOLICY", "SATISFYSTORAGEPOLICY",
           "ALLOWSNAPSHOT", "DISALLOWSNAPSHOT", "ENABLEECPOLICY", "DISABLEECPOLICY", "SETECPOLICY",
           "UNSETECPOLICY"}
POST_OPS = {"APPEND", "CONCAT", "TRUNCATE", "UNSETSTORAGEPOLICY"}
DELETE_OPS = {"DELETE", "DELETESNAPSHOT"}
OPS = {"GET": GET_OPS, "PUT": PUT_OPS, "POST": POST_OPS, "DELETE": DELETE_OPS}
_OP_CLASS = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}
WRITES = {"CREATE", "MKDIRS", "RENAME", "SETPERMISSION", "SETOWNER", "SETREPLICATION", "SETTIMES",
          "APPEND", "DELETE"}


class RemoteException(Exception):
    """A failure as WebHDFS reports it: Java exception name, class and HTTP status."""

    def __init__(self, exception: str, java_class: str, message: str, status: int) -> None:
        super().__init__(message)
        self.exception, self.java_class, self.message, self.status = exception, java_class, message, status

    def response(self) -> web.Response:
        return web.json_response({"RemoteException": {"exception": self.exception,
                                                      "javaClassName": self.java_class,
                                                      "message": self.message}}, status=self.status)


def illegal(message: str) -> RemoteException:
    return RemoteException("IllegalArgumentException", "java.lang.IllegalArgumentException", message, 400)


def unsupported(message: str) -> RemoteException:
    return RemoteException("UnsupportedOperationException", "java.lang.UnsupportedOperationException",
                           message, 400)


def denied(message: str) -> RemoteException:
    return RemoteException("AccessControlException", "org.apache.hadoop.security.AccessControlException",
                           message, 403)


def from_mesh(e: me.MeshError) -> RemoteException:
    name, java_class, status = me.hadoop_exception(e)
    return RemoteException(name, java_class, str(e), status)


def _param_error(name: str, value: str, why: str) -> RemoteException:
    return illegal(f'Invalid value for webhdfs parameter "{name}": {why}: "{value}"')


def _long(q: Any, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise _param_error(name, raw, "not a number") from None
    if v < minimum:
        raise _param_error(name, raw, f"must be at least {minimum}")
    return v


def _bool(q: Any, name: str, default: bool = False) -> bool:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low not in ("true", "false"):
        raise _param_error(name, raw, "expected true or false")
    return low == "true"


def _permission(q: Any, default: str) -> str:
    raw = q.get("permission") or default
    if not (1 <= len(raw) <= 4 and all(c in "01234567" for c in raw)):
        raise _param_error("permission", raw, "expected an octal mode, 0 to 1777")
    return raw


def _file_id(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:7], "big")


class WebHdfs:
    def __init__(self, node: MeshNode, cfg: WebHdfsConfig) -> None:
        self.node = node
        self.cfg = cfg

    # ---- request parsing ---------------------------------------------------

    def path_of(self, request: web.Request) -> str:
        raw = request.raw_path.split("?", 1)[0]
        if not raw.startswith(PREFIX):
            raise illegal(f"expected a path under {PREFIX}")
        try:
            path = unquote(raw[len(PREFIX):], errors="strict") or "/"
        except UnicodeDecodeError:
            raise illegal("the path is not valid UTF-8") from None
        try:
            return paths.normalize(path)
        except me.MeshError as e:
            raise illegal(f"Invalid path name {path}: {e}") from None

    def user_of(self, request: web.Request, op: str) -> str:
        q = request.query
        user = q.get("doas") or q.get("user.name") or ""
        if not user:
            if not self.cfg.allow_anonymous:
                raise RemoteException("SecurityException", "java.lang.SecurityException",
                                      "Failed to obtain user group information: "
                                      "org.apache.hadoop.security.authentication.util.SignerException: "
                                      "user.name is required", 401)
            user = self.cfg.anonymous_user
        if self.cfg.users:
            mode = self.cfg.users.get(user)
            if mode is None:
                raise denied(f"Permission denied: user={user} is not allowed by the gateway")
            if op in WRITES and mode != "rw":
                raise denied(f"Permission denied: user={user}, access=WRITE: read-only user")
        return user

    def location(self, request: web.Request, extra: dict[str, str]) -> str:
        """This gateway again, as the client reached it, with the DataNode step's marker."""
        q = {k: v for k, v in request.query.items() if k != "noredirect"}
        q.update(extra)
        q["datanode"] = "true"
        host = request.headers.get("Host") or f"{request.url.host}:{request.url.port}"
        return f"{request.scheme}://{host}{quote(request.raw_path.split('?', 1)[0], safe='/%')}?{urlencode(q)}"

    def redirect(self, request: web.Request, extra: dict[str, str] | None = None) -> web.Response:
        loc = self.location(request, extra or {})
        if _bool(request.query, "noredirect"):
            return web.json_response({"Location": loc})
        # Connection: close, as a NameNode's redirect to another host (a DataNode) means a new
        # connection anyway: the bytes then go on a fresh connection, which on loopback
        # streams ~10 % faster than one that carried the redirect (bench/bench_webhdfs.py).
        return web.Response(status=307, headers={"Location": loc, "Content-Type": "application/octet-stream",
                                                 "Connection": "close"}, body=b"")

    # ---- statuses ----------------------------------------------------------

    def file_status(self, st: FileStatus, user: str, suffix: str) -> dict[str, Any]:
        directory = st.is_dir
        return {
            "accessTime": 0 if directory else int(st.mtime * 1000),
            "blockSize": 0 if directory else self.cfg.block_size,
            "childrenNum": 0,
            # a file's id follows its bytes, as an HDFS inode id does: kept by a rename,
            # new with every rewrite (an HDFS mount of this gateway versions files by it)
            "fileId": _file_id(st.version if not directory and st.version else st.path),
            "group": "supergroup",
            "length": 0 if directory else st.size,
            "modificationTime": int(st.mtime * 1000),
            "owner": user,
            "pathSuffix": suffix,
            "permission": "755" if directory else "644",
            "replication": 0 if directory else 1,
            "storagePolicy": 0,
            "type": "DIRECTORY" if directory else "FILE",
        }

    def target(self, path: str) -> Any:
        """The mount target of ``path``, or None when no mount holds it (the root, a virtual
        directory above the mounts, a path outside every mount)."""
        try:
            return self.node.resolve(path)
        except me.NotFound:
            return None

    async def stat(self, path: str) -> FileStatus:
        try:
            st = await self.node.stat(path)
        except me.NotFound:
            raise me.NotFound(f"File does not exist: {path}") from None
        if path != "/" and st.is_dir and self.target(path) is None and \
                self.node.mounts.children_of_virtual(path) is None:
            raise me.NotFound(f"File does not exist: {path}")
        return st

    # ---- dispatch ----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            method = request.method
            raw_op = request.query.get("op", "")
            op = raw_op.upper()
            if not raw_op:
                raise illegal('Invalid value for webhdfs parameter "op": the parameter is missing')
            allowed = OPS.get(method)
            if allowed is None:
                raise illegal(f"{method} is not a WebHDFS method")
            if op not in allowed:
                raise illegal(f'Invalid value for webhdfs parameter "op": No enum constant '
                              f"org.apache.hadoop.hdfs.web.resources.{_OP_CLASS[method]}.Op.{raw_op}")
            path = self.path_of(request)
            user = self.user_of(request, op)
            fn = getattr(self, "op_" + op.lower(), None)
            if fn is None:
                raise unsupported(f"Operation {op} is not supported by the mesh's WebHDFS gateway "
                                  f"(docs/WEBHDFS_COMPAT.md)")
            return await fn(request, path, user)
        except RemoteException as e:
            return self._error(request, e)
        except me.MeshError as e:
            return self._error(request, from_mesh(e))

    @staticmethod
    def _error(request: web.Request, e: RemoteException) -> web.StreamResponse:
        resp = request.get("streaming")
        if isinstance(resp, web.StreamResponse) and resp.prepared:
            raise ConnectionResetError(e.message)  # mid-body: only cutting the stream tells the client
        return e.response()

    # ---- GET -----------------------------------------------------------------

    async def op_getfilestatus(self, request: web.Request, path: str, user: str) -> web.Response:
        st = await self.stat(path)
        return web.json_response({"FileStatus": self.file_status(st, user, "")})

    async def _listing(self, path: str) -> list[FileStatus]:
        st = await self.stat(path)
        if not st.is_dir:
            return [st]
        return sorted(await self.node.listdir(path), key=lambda s: paths.basename(s.path).encode())

    async def op_liststatus(self, request: web.Request, path: str, user: str) -> web.Response:
        entries = await self._listing(path)
        st_is_file = len(entries) == 1 and entries[0].path == path and not entries[0].is_dir
        out = [self.file_status(e, user, "" if st_is_file else paths.basename(e.path)) for e in entries]
        return web.json_response({"FileStatuses": {"FileStatus": out}})

    async def op_liststatus_batch(self, request: web.Request, path: str, user: str) -> web.Response:
        after = request.query.get("startAfter", "")
        entries = await self._listing(path)
        if len(entries) == 1 and entries[0].path == path and not entries[0].is_dir:
            page, rest = entries, 0
            out = [self.file_status(entries[0], user, "")]
        else:
            if after:
                entries = [e for e in entries if paths.basename(e.path).encode() > after.encode()]
            page, rest = entries[:BATCH], max(0, len(entries) - BATCH)
            out = [self.file_status(e, user, paths.basename(e.path)) for e in page]
        return web.json_response({"DirectoryListing": {"partialListing": {"FileStatuses": {"FileStatus": out}},
                                                       "remainingEntries": rest}})

    async def op_getcontentsummary(self, request: web.Request, path: str, user: str) -> web.Response:
        st = await self.stat(path)
        files = dirs = length = 0
        if st.is_dir:
            dirs = 1
            stack = [path]
            while stack:
                for child in await self.node.listdir(stack.pop()):
                    if child.is_dir:
                        dirs += 1
                        stack.append(child.path)
                    else:
                        files += 1
                        length += child.size
        else:
            files, length = 1, st.size
        return web.json_response({"ContentSummary": {
            "directoryCount": dirs, "fileCount": files, "length": length, "quota": -1,
            "spaceConsumed": length, "spaceQuota": -1, "typeQuota": {}}})

    async def op_gethomedirectory(self, request: web.Request, path: str, user: str) -> web.Response:
        return web.json_response({"Path": f"/user/{user}"})

    async def op_gettrashroot(self, request: web.Request, path: str, user: str) -> web.Response:
        return web.json_response({"Path": f"/user/{user}/.Trash"})

    async def op_checkaccess(self, request: web.Request, path: str, user: str) -> web.Response:
        await self.stat(path)
        fsaction = request.query.get("fsaction", "")
        if "w" in fsaction:
            self.user_of(request, "CREATE")
            t = self.target(path)
            if t is None or t.mount.read_only:
                raise denied(f"Permission denied: user={user}, access=WRITE, path={path}: read-only")
        return web.Response(status=200)

    async def op_listxattrs(self, request: web.Request, path: str, user: str) -> web.Response:
        await self.stat(path)
        return web.json_response({"XAttrNames": json.dumps(list(XATTR_NAMES))})

    async def op_getxattrs(self, request: web.Request, path: str, user: str) -> web.Response:
        """The mesh's state as extended attributes: the data's home region and, for a file,
        the bytes of it this region's caches hold."""
        await self.stat(path)
        values = (await self.node.mesh_state(path)).xattrs()
        names = request.query.getall("xattr.name", [])
        if names:
            missing = [n for n in names if n not in values]
            if missing:
                raise RemoteException("IOException", "java.io.IOException",
                                      f"At least one of the attributes provided was not found: {missing[0]}", 403)
            values = {n: values[n] for n in names}
        encoding = (request.query.get("encoding") or "text").lower()

        def enc(v: str) -> str:
            if encoding == "hex":
                return "0x" + v.encode().hex()
            if encoding == "base64":
                import base64

                return "0s" + base64.b64encode(v.encode()).decode()
            return f'"{v}"'

        return web.json_response({"XAttrs": [{"name": n, "value": enc(v)} for n, v in values.items()]})

    async def op_open(self, request: web.Request, path: str, user: str) -> web.StreamResponse:
        q = request.query
        offset = _long(q, "offset", 0)
        length = _long(q, "length", None)
        _long(q, "buffersize", None, minimum=1)
        assert offset is not None
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        if offset > st.size:
            raise RemoteException("EOFException", "java.io.EOFException",
                                  f"Cannot seek after EOF: offset {offset} > length {st.size} of {path}", 403)
        if not _bool(q, "datanode"):
            return self.redirect(request)
        # the stream's own length: the version it is pinned to may be newer than st's
        # when the file changed before the first byte (the handle re-pins once then)
        handle = await self.node.open(path, status=st)
        stream = await handle.read(offset, -1 if length is None else length)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = stream.length
        await stream_response(request, resp, self.node, stream)
        return resp

    async def op_getfilechecksum(self, request: web.Request, path: str, user: str) -> web.Response:
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        if not _bool(request.query, "datanode"):
            return self.redirect(request)
        algorithm, raw = await self.checksum(st)
        return web.json_response({"FileChecksum": {"algorithm": algorithm, "bytes": raw.hex(),
                                                   "length": len(raw)}})

    async def checksum(self, st: FileStatus) -> tuple[str, bytes]:
        """HDFS's MD5MD5CRC32C file checksum, as a DataNode computes it for blocks of
        ``block_size`` and a CRC32C per 512 bytes: MD5 of each block's CRCs, then MD5 of
        those. Two copies of the same bytes with the same block size agree (distcp -update)."""
        from crc32c import crc32c

        block = self.cfg.block_size
        block_md5s = hashlib.md5()
        blocks = 0
        cur = hashlib.md5()
        in_block = 0
        carry = b""
        handle = await self.node.open(st.path, version=st.version, size=st.size)
        stream = await handle.read(0, st.size)
        try:
            async for seg in stream.segments:
                try:
                    data = carry + await asyncio.to_thread(seg.bytes)
                finally:
                    seg.close()
                pos = 0
                while len(data) - pos >= BYTES_PER_CRC:
                    take = min(len(data) - pos - (len(data) - pos) % BYTES_PER_CRC, block - in_block)
                    crcs = b"".join(crc32c(data[i:i + BYTES_PER_CRC]).to_bytes(4, "big")
                                    for i in range(pos, pos + take, BYTES_PER_CRC))
                    cur.update(crcs)
                    in_block += take
                    pos += take
                    if in_block == block:
                        block_md5s.update(cur.digest())
                        blocks += 1
                        cur, in_block = hashlib.md5(), 0
                carry = data[pos:]
        finally:
            await stream.aclose()
        if carry:
            cur.update(crc32c(carry).to_bytes(4, "big"))
            in_block += len(carry)
        if in_block or blocks == 0:
            block_md5s.update(cur.digest())
            blocks += 1
        crc_per_block = block // BYTES_PER_CRC if blocks > 1 else 0
        raw = BYTES_PER_CRC.to_bytes(4, "big") + crc_per_block.to_bytes(8, "big") + block_md5s.digest()
        return f"MD5-of-{crc_per_block}MD5-of-{BYTES_PER_CRC}CRC32C", raw

    # ---- PUT -----------------------------------------------------------------

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk

    async def op_create(self, request: web.Request, path: str, user: str) -> web.Response:
        q = request.query
        overwrite = _bool(q, "overwrite")
        _permission(q, "644")
        _long(q, "blocksize", None, minimum=1)
        _long(q, "replication", None, minimum=1)
        _long(q, "buffersize", None, minimum=1)
        if path == "/":
            raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                  "/ already exists as a directory", 403)
        existing: FileStatus | None
        try:
            existing = await self.stat(path)
        except me.NotFound:
            existing = None
        if existing is not None and existing.is_dir:
            raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                  f"{path} already exists as a directory", 403)
        if existing is not None and not overwrite:
            raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                  f"{path} for client {request.remote} already exists", 403)
        t = self.target(path)
        if t is None:
            raise denied(f"Permission denied: user={user}, access=WRITE, path={path}: not inside a mount")
        t.mount.check_writable()
        if not _bool(q, "datanode"):
            return self.redirect(request)
        await self.node.write(path, self._body(request))
        return web.Response(status=201, headers={"Location": f"hdfs://{request.host}{quote(path)}",
                                                 "Content-Length": "0"})

    async def op_append(self, request: web.Request, path: str, user: str) -> web.Response:
        _long(request.query, "buffersize", None, minimum=1)
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        t = self.target(path)
        if t is not None:
            t.mount.check_writable()
        if not _bool(request.query, "datanode"):
            return self.redirect(request)
        await self.node.append(path, self._body(request))
        return web.Response(status=200)

    async def op_mkdirs(self, request: web.Request, path: str, user: str) -> web.Response:
        _permission(request.query, "755")
        try:
            st = await self.stat(path)
        except me.NotFound:
            st = None
        if st is not None:
            if not st.is_dir:
                raise RemoteException("FileAlreadyExistsException",
                                      "org.apache.hadoop.fs.FileAlreadyExistsException",
                                      f"Path is not a directory: {path}", 403)
            return web.json_response({"boolean": True})
        # every ancestor that exists must be a directory
        parent = paths.parent(path)
        while parent != "/":
            try:
                pst = await self.stat(parent)
            except me.NotFound:
                parent = paths.parent(parent)
                continue
            if not pst.is_dir:
                raise RemoteException("ParentNotDirectoryException",
                                      "org.apache.hadoop.fs.ParentNotDirectoryException",
                                      f"Parent path is not a directory: {parent}", 403)
            break
        await self.node.mkdir(path)
        return web.json_response({"boolean": True})

    async def op_rename(self, request: web.Request, path: str, user: str) -> web.Response:
        dst = request.query.get("destination")
        if not dst or not dst.startswith("/"):
            raise _param_error("destination", dst or "", "Invalid parameter value: must be an absolute path")
        try:
            dst = paths.normalize(dst)
        except me.MeshError as e:
            raise illegal(f"Invalid path name {dst}: {e}") from None
        options = {o.strip().upper() for o in request.query.get("renameoptions", "").split(",") if o.strip()}
        if options - {"NONE", "OVERWRITE", "TO_TRASH"}:
            raise _param_error("renameoptions", request.query["renameoptions"], "expected NONE, OVERWRITE")
        if options - {"NONE"}:
            return await self._rename_overwrite(path, dst, "OVERWRITE" in options)
        try:
            src_st = await self.stat(path)
        except me.NotFound:
            return web.json_response({"boolean": False})
        try:
            dst_st: FileStatus | None = await self.stat(dst)
        except me.NotFound:
            dst_st = None
        if dst_st is not None:
            if not dst_st.is_dir:
                return web.json_response({"boolean": False})  # HDFS: no rename onto an existing file
            dst = paths.join(dst, paths.basename(path))  # into an existing directory, as HDFS does
            try:
                await self.stat(dst)
                return web.json_response({"boolean": False})
            except me.NotFound:
                pass
        if src_st.is_dir and paths.is_within(dst, path):
            return web.json_response({"boolean": False})
        try:
            pst = await self.stat(paths.parent(dst))
        except me.NotFound:
            return web.json_response({"boolean": False})
        if not pst.is_dir:
            return web.json_response({"boolean": False})
        await self.node.rename(path, dst)
        return web.json_response({"boolean": True})

    async def _rename_overwrite(self, path: str, dst: str, overwrite: bool) -> web.Response:
        """HDFS's rename with options (FileContext.rename): errors are exceptions, and with
        OVERWRITE an existing file at the destination is replaced in one step."""
        src_st = await self.stat(path)
        try:
            dst_st: FileStatus | None = await self.stat(dst)
        except me.NotFound:
            dst_st = None
        if dst_st is not None:
            if dst_st.is_dir or src_st.is_dir:
                raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                      f"rename destination {dst} already exists", 403)
            if not overwrite:
                raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                      f"rename destination {dst} already exists", 403)
        try:
            pst = await self.stat(paths.parent(dst))
        except me.NotFound:
            raise me.NotFound(f"rename destination parent {paths.parent(dst)} not found.") from None
        if not pst.is_dir:
            raise RemoteException("ParentNotDirectoryException", "org.apache.hadoop.fs.ParentNotDirectoryException",
                                  f"rename destination parent {paths.parent(dst)} is a file.", 403)
        await self.node.rename(path, dst)
        return web.json_response({"boolean": True})

    async def op_setpermission(self, request: web.Request, path: str, user: str) -> web.Response:
        _permission(request.query, "755")
        await self.stat(path)
        return web.Response(status=200)

    async def op_setowner(self, request: web.Request, path: str, user: str) -> web.Response:
        if not request.query.get("owner") and not request.query.get("group"):
            raise illegal("Both owner and group are empty.")
        await self.stat(path)
        return web.Response(status=200)

    async def op_setreplication(self, request: web.Request, path: str, user: str) -> web.Response:
        _long(request.query, "replication", None, minimum=1)
        st = await self.stat(path)
        return web.json_response({"boolean": not st.is_dir})

    async def op_settimes(self, request: web.Request, path: str, user: str) -> web.Response:
        _long(request.query, "modificationtime", None, minimum=-1)
        _long(request.query, "accesstime", None, minimum=-1)
        await self.stat(path)
        return web.Response(status=200)

    # ---- DELETE --------------------------------------------------------------

    async def op_delete(self, request: web.Request, path: str, user: str) -> web.Response:
        recursive = _bool(request.query, "recursive")
        if path == "/":
            raise denied("Permission denied: cannot delete /")
        try:
            await self.stat(path)
        except me.NotFound:
            return web.json_response({"boolean": False})
        try:
            await self.node.delete(path, recursive=recursive)
        except me.DirectoryNotEmpty:
            raise RemoteException("PathIsNotEmptyDirectoryException",
                                  "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
                                  f"`{path} is non empty': Directory is not empty", 403) from None
        except me.NotFound:
            return web.json_response({"boolean": False})
        return web.json_response({"boolean": True})


def make_app(node: MeshNode, cfg: WebHdfsConfig) -> web.Application:
    gw = WebHdfs(node, cfg)

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status == 404:
                return illegal(f"{request.path}: not a WebHDFS path (expected {PREFIX}/<path>?op=...)").response()
            if e.status == 405:
                return illegal(f"{request.method} is not a WebHDFS method").response()
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            log.exception("WebHDFS %s %s failed", request.method, request.path_qs)
            return RemoteException("IOException", "java.io.IOException", f"internal error: {type(e).__name__}",
                                   500).response()

    app = web.Application(middlewares=[errors], client_max_size=1 << 20)
    for method in OPS:
        app.router.add_route(method, PREFIX + "{tail:.*}", gw.handle)
    return app


__all__ = ["PREFIX", "RemoteException", "WebHdfs", "make_app"]
