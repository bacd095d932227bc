"""WebHDFS's write operations (PUT, POST, DELETE): CREATE and APPEND (the body streamed
into the node), MKDIRS, RENAME (with HDFS's two semantics), the attribute setters the
mesh accepts without keeping (permissions, owners, replication, times) and DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from meshd import errors as me
from meshd import paths
from meshd.core import FileStatus

from .webhdfs_base import (
    INT_MAX,
    READ_CHUNK,
    SHORT_MAX,
    RemoteException,
    WebHdfsBase,
    bool_arg,
    denied,
    illegal,
    long_arg,
    param_error,
    permission_arg,
)


class WriteOps(WebHdfsBase):
    """``op_<name>`` for each PUT, POST and DELETE operation the gateway serves."""

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk

    async def op_create(self, request: web.Request, path: str, user: str) -> web.Response:
        q = request.query
        overwrite = bool_arg(q, "overwrite")
        permission_arg(q, "644")
        long_arg(q, "blocksize", None, minimum=1)
        long_arg(q, "replication", None, minimum=1, maximum=SHORT_MAX)
        long_arg(q, "buffersize", None, minimum=1, maximum=INT_MAX)
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
        if not self.node.inside_mount(path):
            raise denied(f"Permission denied: user={user}, access=WRITE, path={path}: not inside a mount")
        self.node.check_writable(path)
        if not bool_arg(q, "datanode"):
            return self.redirect(request)
        await self.node.write(path, self._body(request))
        return web.Response(status=201, headers={"Location": f"hdfs://{request.host}{quote(path)}",
                                                 "Content-Length": "0"})

    async def op_append(self, request: web.Request, path: str, user: str) -> web.Response:
        long_arg(request.query, "buffersize", None, minimum=1, maximum=INT_MAX)
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        if self.node.inside_mount(path):
            self.node.check_writable(path)
        if not bool_arg(request.query, "datanode"):
            return self.redirect(request)
        await self.node.append(path, self._body(request))
        return web.Response(status=200)

    async def op_mkdirs(self, request: web.Request, path: str, user: str) -> web.Response:
        permission_arg(request.query, "755")
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
            raise param_error("destination", dst or "", "Invalid parameter value: must be an absolute path")
        try:
            dst = paths.normalize(dst)
        except me.MeshError as e:
            raise illegal(f"Invalid path name {dst}: {e}") from None
        options = {o.strip().upper() for o in request.query.get("renameoptions", "").split(",") if o.strip()}
        if options - {"NONE", "OVERWRITE", "TO_TRASH"}:
            raise param_error("renameoptions", request.query["renameoptions"], "expected NONE, OVERWRITE")
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
        permission_arg(request.query, "755")
        await self.stat(path)
        return web.Response(status=200)

    async def op_setowner(self, request: web.Request, path: str, user: str) -> web.Response:
        if not request.query.get("owner") and not request.query.get("group"):
            raise illegal("Both owner and group are empty.")
        await self.stat(path)
        return web.Response(status=200)

    async def op_setreplication(self, request: web.Request, path: str, user: str) -> web.Response:
        long_arg(request.query, "replication", None, minimum=1, maximum=SHORT_MAX)
        st = await self.stat(path)
        return web.json_response({"boolean": not st.is_dir})

    async def op_settimes(self, request: web.Request, path: str, user: str) -> web.Response:
        long_arg(request.query, "modificationtime", None, minimum=-1)
        long_arg(request.query, "accesstime", None, minimum=-1)
        await self.stat(path)
        return web.Response(status=200)

    # ---- DELETE ----------------------------------------------------------------

    async def op_delete(self, request: web.Request, path: str, user: str) -> web.Response:
        recursive = bool_arg(request.query, "recursive")
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
