"""WebHDFS's read operations (GET): statuses, listings, summaries, access checks, the
mesh's state as xattrs, OPEN (a handle's read, sent by :mod:`meshd.servers.streaming`)
and GETFILECHECKSUM."""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web

from meshd import errors as me
from meshd import paths
from meshd.core import XATTR_NAMES, FileStatus
from meshd.servers.streaming import stream_response

from .webhdfs_base import (
    BATCH,
    BYTES_PER_CRC,
    INT_MAX,
    RemoteException,
    WebHdfsBase,
    acl_of,
    bool_arg,
    denied,
    long_arg,
)


class ReadOps(WebHdfsBase):
    """``op_<name>`` for each GET operation the gateway serves."""

    async def op_getfilestatus(self, request: web.Request, path: str, user: str) -> web.Response:
        st = await self.stat(path)
        return web.json_response({"FileStatus": self.file_status(st, user, "")})

    async def op_getaclstatus(self, request: web.Request, path: str, user: str) -> web.Response:
        """The ACL kept as ``hdfs.acl`` (named entries, mask and default entries: the base
        ones are the permission bits), with owner, group and permission as GETFILESTATUS."""
        st = await self.stat(path)
        fs = self.file_status(st, user, "")
        a = st.attrs
        mode = a.mode if a is not None and a.mode is not None else 0
        entries = [str(e) for e in acl_of(a.extra if a is not None else {}) if not e.is_base]
        return web.json_response({"AclStatus": {"entries": entries, "group": fs["group"], "owner": fs["owner"],
                                                "permission": fs["permission"],
                                                "stickyBit": bool(mode & 0o1000)}})

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
                    if child.attrs is not None and child.attrs.is_symlink:
                        files += 1  # a link counts as itself, as in HDFS: never followed (no loops)
                    elif child.is_dir:
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
            try:
                self.node.check_writable(path)
            except me.PermissionDenied:
                raise denied(f"Permission denied: user={user}, access=WRITE, path={path}: read-only") from None
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
        offset = long_arg(q, "offset", 0)
        length = long_arg(q, "length", None)
        long_arg(q, "buffersize", None, minimum=1, maximum=INT_MAX)
        assert offset is not None
        st = await self.stat(path)
        if st.is_dir:
            raise me.NotFound(f"Path is not a file: {path}")
        if offset > st.size:
            raise RemoteException("EOFException", "java.io.EOFException",
                                  f"Cannot seek after EOF: offset {offset} > length {st.size} of {path}", 403)
        if not bool_arg(q, "datanode"):
            return self.redirect(request)
        # the stream's own length: the version it is pinned to may be newer than st's
        # when the file changed before the first byte (the handle re-pins then)
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
        if not bool_arg(request.query, "datanode"):
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
