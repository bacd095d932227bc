"""WebHDFS's write operations (PUT, POST, DELETE): CREATE and APPEND (the body streamed
into the node), MKDIRS, RENAME (with HDFS's two semantics), the attribute setters
(permissions, owners, replication, times: the facade's ``setattr``), ACLs (kept as the
extra attribute ``hdfs.acl``), CREATESYMLINK, snapshots (hdfs:// mounts) and DELETE."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import quote

from aiohttp import web

from meshd import errors as me
from meshd import paths
from meshd.attrs import EXTRA_VALUE_MAX, AttrChange, gid_of, uid_of
from meshd.config import parse_write_mode
from meshd.core import FileStatus

from .webhdfs_base import (
    ACL_MAX_ENTRIES,
    INT_MAX,
    READ_CHUNK,
    SHORT_MAX,
    X_ACL,
    X_GROUP,
    X_OWNER,
    X_REPLICATION,
    AclEntry,
    RemoteException,
    WebHdfsBase,
    acl_error,
    acl_of,
    bool_arg,
    denied,
    illegal,
    long_arg,
    param_error,
    parse_acl_spec,
    perm_bits,
    permission_arg,
    unsupported,
)

_SHIFT = {"user": 6, "group": 3, "other": 0}
TIME_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def writemode_arg(q: Mapping[str, str]) -> bool | None:
    """``writemode=back|through`` (our extension, docs/WEBHDFS_COMPAT.md): acknowledge
    CREATE/APPEND once on the node's disk, or once in the under-store; absent: the mount's."""
    raw = q.get("writemode")
    try:
        return parse_write_mode(raw)
    except me.InvalidArgument:
        raise illegal(f'Invalid value for webhdfs parameter "writemode": back or through: "{raw}"') from None


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
        permission = permission_arg(q, "644")
        long_arg(q, "blocksize", None, minimum=1)
        long_arg(q, "replication", None, minimum=1, maximum=SHORT_MAX)
        long_arg(q, "buffersize", None, minimum=1, maximum=INT_MAX)
        mode = writemode_arg(q)
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
        # the creator owns a new file, as in HDFS; a replaced one keeps its owner and mode
        # (the under-store contract, as POSIX's O_TRUNC), unless permission= is given
        change = AttrChange(mode=int(permission, 8) if q.get("permission") else None,
                            extra={X_OWNER: user} if existing is None else {})
        await self.node.write(path, self._body(request), change=change or None, writeback=mode,
                              size_hint=request.content_length if request.content_length is not None else -1)
        return web.Response(status=201, headers={"Location": f"hdfs://{request.host}{quote(path)}",
                                                 "Content-Length": "0"})

    async def op_append(self, request: web.Request, path: str, user: str) -> web.Response:
        long_arg(request.query, "buffersize", None, minimum=1, maximum=INT_MAX)
        mode = writemode_arg(request.query)
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        if self.node.inside_mount(path):
            self.node.check_writable(path)
        if not bool_arg(request.query, "datanode"):
            return self.redirect(request)
        await self.node.append(path, self._body(request), writeback=mode)
        return web.Response(status=200)

    async def op_mkdirs(self, request: web.Request, path: str, user: str) -> web.Response:
        permission = permission_arg(request.query, "755")
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
        mode = int(permission, 8) if request.query.get("permission") else None
        await self.node.mkdir(path, AttrChange(mode=mode, extra={X_OWNER: user}))
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

    # ---- attributes: the facade's setattr, in the store's own terms --------------

    async def _setattr(self, path: str, change: AttrChange) -> None:
        """Set attributes; on a store that keeps none, accepted without effect (as
        Hadoop's S3A connector does: a job's chmod or distcp -p does not fail)."""
        try:
            await self.node.setattr(path, change)
        except me.NotSupported:
            pass

    async def op_setpermission(self, request: web.Request, path: str, user: str) -> web.Response:
        mode = int(permission_arg(request.query, "755"), 8)
        await self.stat(path)
        await self._setattr(path, AttrChange(mode=mode))
        return web.Response(status=200)

    async def op_setowner(self, request: web.Request, path: str, user: str) -> web.Response:
        owner, group = request.query.get("owner") or "", request.query.get("group") or ""
        if not owner and not group:
            raise illegal("Both owner and group are empty.")
        for name, v in (("owner", owner), ("group", group)):
            if v and (len(v) > 255 or any(c in v for c in ":,/\x00") or v.strip() != v):
                raise param_error(name, v[:40], "not a user or group name")
        await self.stat(path)
        extra: dict[str, str | None] = {}
        if owner:
            extra[X_OWNER] = owner
        if group:
            extra[X_GROUP] = group
        # the names are what HDFS shows; the local ids too when this machine knows the names
        uid, gid = uid_of(owner) if owner else None, gid_of(group) if group else None
        try:
            await self.node.setattr(path, AttrChange(uid=uid, gid=gid, extra=extra))
        except me.NotPermitted:
            if uid is None and gid is None:
                raise
            await self._setattr(path, AttrChange(extra=extra))  # the node may not chown: the names only
        except me.NotSupported:
            if uid is not None or gid is not None:
                await self._setattr(path, AttrChange(uid=uid, gid=gid))  # no extra attributes: the ids
        return web.Response(status=200)

    async def op_setreplication(self, request: web.Request, path: str, user: str) -> web.Response:
        replication = long_arg(request.query, "replication", None, minimum=1, maximum=SHORT_MAX)
        st = await self.stat(path)
        if st.is_dir:
            return web.json_response({"boolean": False})  # as HDFS: directories have none
        if replication is not None:
            await self._setattr(path, AttrChange(extra={X_REPLICATION: str(replication)}))
        return web.json_response({"boolean": True})

    async def op_settimes(self, request: web.Request, path: str, user: str) -> web.Response:
        # times to the end of year 9999: what a file system and Python's datetime can hold
        mtime = long_arg(request.query, "modificationtime", -1, minimum=-1, maximum=TIME_MAX_MS)
        atime = long_arg(request.query, "accesstime", -1, minimum=-1, maximum=TIME_MAX_MS)
        await self.stat(path)
        change = AttrChange(atime=None if atime is None or atime < 0 else atime / 1000.0,
                            mtime=None if mtime is None or mtime < 0 else mtime / 1000.0)
        if change:
            await self._setattr(path, change)
        return web.Response(status=200)

    # ---- ACLs: POSIX ACL entries kept as the extra attribute hdfs.acl -------------

    def _aclspec(self, request: web.Request, with_perms: bool = True) -> list[AclEntry]:
        entries = parse_acl_spec(request.query.get("aclspec", ""), with_perms)
        seen: set[tuple[bool, str, str]] = set()
        for e in entries:
            if e.key in seen:
                raise acl_error(f"Invalid ACL: multiple entries with the same scope, type and name: {e}")
            seen.add(e.key)
        return entries

    async def _acl_change(self, path: str, spec: list[AclEntry],
                          edit: Callable[[dict[tuple[bool, str, str], AclEntry]], None]) -> web.Response:
        """Apply ``edit`` to the ACL kept for ``path`` (entries by scope, type and name); the
        base entries of ``spec`` (``user::``, ``group::``, ``other::``) set the permission bits."""
        st = await self.stat(path)
        a = st.attrs
        entries = {e.key: e for e in acl_of(a.extra if a is not None else {})}
        edit(entries)
        kept = [e for e in entries.values() if not e.is_base]
        if not st.is_dir and any(e.default for e in kept):
            raise acl_error("Invalid ACL: only directories may have a default ACL.")
        for scope in (False, True):
            if sum(1 for e in kept if e.default == scope) > ACL_MAX_ENTRIES:
                raise acl_error(f"Invalid ACL: ACL has {len(kept)} entries, which exceeds maximum of "
                                f"{ACL_MAX_ENTRIES}.")
        kept.sort(key=lambda e: (e.default, ("user", "group", "mask", "other").index(e.type), e.name))
        text = ",".join(str(e) for e in kept)
        if len(text.encode()) > EXTRA_VALUE_MAX:
            raise acl_error(f"Invalid ACL: more than {EXTRA_VALUE_MAX} bytes of entries")
        mode = None
        base = [e for e in spec if e.is_base and e.perm is not None]
        if base:
            mode = a.mode & 0o7777 if a is not None and a.mode is not None else (0o755 if st.is_dir else 0o644)
            for e in base:
                assert e.perm is not None
                shift = _SHIFT[e.type]
                mode = (mode & ~(7 << shift)) | (perm_bits(e.perm) << shift)
        try:
            await self.node.setattr(path, AttrChange(mode=mode, extra={X_ACL: text or None}))
        except me.NotSupported as e:
            raise unsupported(f"ACLs need an under-store that keeps extra attributes ({e})") from None
        return web.Response(status=200)

    async def op_setacl(self, request: web.Request, path: str, user: str) -> web.Response:
        spec = self._aclspec(request)

        def replace(entries: dict[tuple[bool, str, str], AclEntry]) -> None:
            entries.clear()
            entries.update((e.key, e) for e in spec)

        return await self._acl_change(path, spec, replace)

    async def op_modifyaclentries(self, request: web.Request, path: str, user: str) -> web.Response:
        spec = self._aclspec(request)
        return await self._acl_change(path, spec, lambda entries: entries.update((e.key, e) for e in spec))

    async def op_removeaclentries(self, request: web.Request, path: str, user: str) -> web.Response:
        spec = self._aclspec(request, with_perms=False)
        if any(e.is_base for e in spec):
            raise acl_error("Invalid ACL: the user, group and other entries are required.")

        def remove(entries: dict[tuple[bool, str, str], AclEntry]) -> None:
            for e in spec:
                entries.pop(e.key, None)

        return await self._acl_change(path, spec, remove)

    async def op_removedefaultacl(self, request: web.Request, path: str, user: str) -> web.Response:
        def remove(entries: dict[tuple[bool, str, str], AclEntry]) -> None:
            for k in [k for k in entries if k[0]]:
                del entries[k]

        return await self._acl_change(path, [], remove)

    async def op_removeacl(self, request: web.Request, path: str, user: str) -> web.Response:
        return await self._acl_change(path, [], lambda entries: entries.clear())

    # ---- symlinks and snapshots -------------------------------------------------------

    async def op_createsymlink(self, request: web.Request, path: str, user: str) -> web.Response:
        """``path`` becomes a link to ``destination`` (an absolute mesh path, as Hadoop's
        DestinationParam requires). Within the link's mount the link is written relative
        (``../x``), so the store resolves it in its own terms (a file:// store's real
        file, an HDFS path); a destination outside it is kept as given."""
        q = request.query
        dst = q.get("destination") or ""
        if not dst.startswith("/"):
            raise param_error("destination", dst, "Invalid parameter value: must be an absolute path")
        try:
            dst = paths.normalize(dst)
        except me.MeshError as e:
            raise illegal(f"Invalid path name {dst}: {e}") from None
        create_parent = bool_arg(q, "createParent") or bool_arg(q, "createparent")
        if path == "/" or not self.node.inside_mount(path):
            raise denied(f"Permission denied: user={user}, access=WRITE, path={path}: not inside a mount")
        try:
            await self.stat(path)
            raise RemoteException("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException",
                                  f"{path} already exists", 403)
        except me.NotFound:
            pass
        parent = paths.parent(path)
        try:
            pst = await self.stat(parent)
            if not pst.is_dir:
                raise RemoteException("ParentNotDirectoryException", "org.apache.hadoop.fs.ParentNotDirectoryException",
                                      f"Parent path is not a directory: {parent}", 403)
        except me.NotFound:
            if not create_parent:
                raise me.NotFound(f"Parent directory doesn't exist: {parent}") from None
            await self.node.mkdir(parent)
        mounts = [m.path for m in self.node.mount_points() if paths.is_within(path, m.path)]
        target = dst
        if mounts and paths.is_within(dst, max(mounts, key=len)):
            target = posixpath.relpath(dst, parent)
        await self.node.symlink(path, target)  # no owner name: Linux keeps no user xattrs on a link
        return web.Response(status=200)

    def _snapshot_name(self, request: web.Request, name: str, required: bool = True) -> str | None:
        v = request.query.get(name) or ""
        if not v:
            if required:
                raise param_error(name, v, "a snapshot name is required")
            return None
        if "/" in v or v in (".", "..") or "\x00" in v or len(v.encode()) > paths.NAME_MAX:
            raise param_error(name, v[:40], "not a snapshot name")
        return v

    async def op_createsnapshot(self, request: web.Request, path: str, user: str) -> web.Response:
        name = self._snapshot_name(request, "snapshotname", required=False)
        await self.stat(path)
        made = await self.node.create_snapshot(path, name)
        return web.json_response({"Path": made})

    async def op_renamesnapshot(self, request: web.Request, path: str, user: str) -> web.Response:
        old = self._snapshot_name(request, "oldsnapshotname")
        new = self._snapshot_name(request, "snapshotname")
        assert old is not None and new is not None
        await self.stat(path)
        await self.node.rename_snapshot(path, old, new)
        return web.Response(status=200)

    async def op_deletesnapshot(self, request: web.Request, path: str, user: str) -> web.Response:
        name = self._snapshot_name(request, "snapshotname")
        assert name is not None
        await self.stat(path)
        await self.node.delete_snapshot(path, name)
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
