"""The WebHDFS gateway's shared part: parameters, errors as WebHDFS reports them, request
parsing, users, the NameNode step's redirect and file statuses (:mod:`gateway.webhdfs`
composes it with the operations in :mod:`gateway.webhdfs_read` and :mod:`gateway.webhdfs_write`)."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from meshd import auth, paths
from meshd import errors as me
from meshd.attrs import group_name, user_name
from meshd.auth.http import bearer, connection_principal, principal
from meshd.config import WebHdfsConfig
from meshd.core import FileStatus, MeshNode
from meshd.limits import log_rejected

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
OP_CLASS = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}
WRITES = {"CREATE", "MKDIRS", "RENAME", "SETPERMISSION", "SETOWNER", "SETREPLICATION", "SETTIMES",
          "APPEND", "DELETE", "CREATESYMLINK", "SETACL", "MODIFYACLENTRIES", "REMOVEACLENTRIES",
          "REMOVEDEFAULTACL", "REMOVEACL", "CREATESNAPSHOT", "RENAMESNAPSHOT", "DELETESNAPSHOT"}

# The extra attributes (meshd/attrs.py) WebHDFS keeps beside mode, owner and times
X_OWNER, X_GROUP, X_REPLICATION, X_ACL = "hdfs.owner", "hdfs.group", "hdfs.replication", "hdfs.acl"


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


def param_error(name: str, value: str, why: str) -> RemoteException:
    return illegal(f'Invalid value for webhdfs parameter "{name}": {why}: "{value}"')


INT_MAX = (1 << 31) - 1  # Java's int: buffersize
SHORT_MAX = (1 << 15) - 1  # Java's short: replication
LONG_MAX = (1 << 63) - 1  # Java's long: offset, length, blocksize, times


def long_arg(q: Any, name: str, default: int | None = None, minimum: int = 0,
             maximum: int = LONG_MAX) -> int | None:
    """A number parameter, parsed as Hadoop's Java type would be: digits only, within
    [minimum, maximum] (thousands of digits are an IllegalArgumentException, not a 500)."""
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise param_error(name, raw[:40], "not a number")
    v = int(raw)
    if v < minimum:
        raise param_error(name, raw, f"must be at least {minimum}")
    if v > maximum:
        raise param_error(name, raw, f"must be at most {maximum}")
    return v


def bool_arg(q: Any, name: str, default: bool = False) -> bool:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low not in ("true", "false"):
        raise param_error(name, raw, "expected true or false")
    return low == "true"


def permission_arg(q: Any, default: str) -> str:
    """Hadoop's PermissionParam: an octal short, 0 to 1777 (the sticky bit and rwx for three)."""
    raw = q.get("permission") or default
    if not (1 <= len(raw) <= 4 and all(c in "01234567" for c in raw)) or int(raw, 8) > 0o1777:
        raise param_error("permission", raw, "expected an octal mode, 0 to 1777")
    return raw





# ---- ACLs: Hadoop's AclEntry, kept as aclspec text in the extra attribute hdfs.acl -------

ACL_TYPES = ("user", "group", "mask", "other")
ACL_MAX_ENTRIES = 32  # per scope, HDFS's ScopedAclEntries.MAX_ENTRIES
_FS_ACTIONS = {"---", "--x", "-w-", "-wx", "r--", "r-x", "rw-", "rwx"}


@dataclass(frozen=True)
class AclEntry:
    default: bool
    type: str
    name: str
    perm: str | None  # None in a REMOVEACLENTRIES spec

    @property
    def key(self) -> tuple[bool, str, str]:
        return self.default, self.type, self.name

    @property
    def is_base(self) -> bool:
        """An access entry of the owner, the group or others: the permission bits."""
        return not self.default and not self.name and self.type in ("user", "group", "other")

    def __str__(self) -> str:
        head = ("default:" if self.default else "") + f"{self.type}:{self.name}"
        return head if self.perm is None else f"{head}:{self.perm}"


def parse_acl_spec(spec: str, with_perms: bool = True) -> list[AclEntry]:
    """Hadoop's AclEntry.parseAclSpec: comma-separated ``[default:]type:[name][:perm]``;
    IllegalArgumentException with Hadoop's messages."""
    out = []
    for text in spec.split(","):
        parts = text.split(":")
        while parts and parts[-1] == "":  # Java's String.split drops trailing empty strings
            parts.pop()
        if not parts:
            raise illegal(f"Invalid <aclSpec> : {text}")
        i = 0
        default = parts[0] == "default"
        if default:
            i += 1
        if len(parts) <= i:
            raise illegal(f"Invalid <aclSpec> : {text}")
        kind = parts[i].lower()
        if kind not in ACL_TYPES:
            raise illegal(f"Invalid type of acl in <aclSpec> :{text}")
        i += 1
        name = ""
        if len(parts) > i:
            name = parts[i]
            if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9._@$-]*", name):
                raise illegal(f"Invalid name in <aclSpec> : {text}")
            i += 1
        perm = None
        if with_perms:
            if len(parts) <= i:
                raise illegal(f"Invalid <aclSpec> : {text}")
            perm = parts[i]
            if perm not in _FS_ACTIONS:
                raise illegal(f"Invalid permission in <aclSpec> : {text}")
            i += 1
        if len(parts) > i:
            raise illegal(f"Invalid <aclSpec> : {text}")
        if name and kind in ("mask", "other"):
            raise acl_error(f"Invalid ACL: this entry type must not have a name: {text}")
        out.append(AclEntry(default, kind, name, perm))
    return out


def acl_error(message: str) -> RemoteException:
    """HDFS's AclException (an IOException: 403)."""
    return RemoteException("AclException", "org.apache.hadoop.hdfs.protocol.AclException", message, 403)


def acl_of(extra: Any) -> list[AclEntry]:
    """The ACL entries kept in a file's extra attributes (none when unset or unreadable)."""
    raw = extra.get(X_ACL) if extra else None
    if not raw:
        return []
    try:
        return parse_acl_spec(raw)
    except RemoteException:
        return []


def perm_bits(perm: str) -> int:
    return (4 if perm[0] == "r" else 0) | (2 if perm[1] == "w" else 0) | (1 if perm[2] == "x" else 0)


def perm_text(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def _file_id(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:7], "big")


class WebHdfsBase:
    """What every operation uses: request parsing, users, redirects, statuses."""

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
        """The user a request acts as, and (:func:`meshd.auth.set_current`) its principal.

        A token (WebHDFS's ``delegation`` parameter, or ``Authorization: Bearer``) is the
        principal; ``user.name`` then only names the user shown as owner. Without one,
        Hadoop's simple auth: ``user.name`` names the caller; ``doas`` another user it
        acts for, allowed only to the configured proxy users (Hadoop's rule). With
        ``users`` set, the caller must be listed, and the user acted as gives the mode.
        A user listed under a tenant of the access file acts as that tenant; any other
        request must come from the node's own user on this machine, or is refused."""
        q = request.query
        caller, doas = q.get("user.name") or "", q.get("doas") or ""
        token = q.get("delegation") or bearer(request)
        if token:
            try:
                p = principal(request, self.node.access, token)
            except me.PermissionDenied as e:
                raise RemoteException("SecurityException", "java.lang.SecurityException", str(e), 401) from None
            if doas and doas != caller and not p.trusted:
                raise denied(f"{p} may not impersonate {doas}: doas is for operators and webhdfs.proxy_users")
            auth.set_current(p)
            return doas or caller or p.tenant or "mesh"
        user = self._simple_user(request, op, caller, doas)
        tenant = self.node.access.webhdfs_user(user)
        if tenant is not None:
            auth.set_current(tenant)
        elif (conn := connection_principal(request, self.node.access)).kind != "anonymous":
            auth.set_current(conn)  # the node's own user, or a client certificate's holder
        elif caller and caller in self.cfg.users:
            auth.set_current(auth.Principal("operator", f"webhdfs user {caller}"))
        else:
            log_rejected(f"WebHDFS {op} {request.path[:200]}", request.remote or "", "no credential")
            raise RemoteException("SecurityException", "java.lang.SecurityException",
                                   "Authentication required: give delegation=<token> (or Authorization: "
                                   "Bearer), or a user.name the gateway lists (webhdfs.users, a tenant's "
                                   "webhdfs_users)", 401)
        return user

    def _simple_user(self, request: web.Request, op: str, caller: str, doas: str) -> str:
        """Hadoop's simple auth (see :meth:`user_of`)."""
        anonymous = not caller
        if anonymous:
            if not self.cfg.allow_anonymous:
                raise RemoteException("SecurityException", "java.lang.SecurityException",
                                      "Failed to obtain user group information: "
                                      "org.apache.hadoop.security.authentication.util.SignerException: "
                                      "user.name is required", 401)
            caller = self.cfg.anonymous_user
        if anonymous and op in WRITES and self.cfg.anonymous_writes is False:
            raise denied(f"Permission denied: anonymous writes are refused while credentials are configured "
                         f"(give user.name), access=WRITE, op={op}")
        user = caller
        if doas and doas != caller:
            if anonymous or caller not in self.cfg.proxy_users:
                raise denied(f"User: {caller} is not allowed to impersonate {doas} (webhdfs.proxy_users)")
            user = doas
        if self.cfg.users:
            if caller not in self.cfg.users:
                raise denied(f"Permission denied: user={caller} is not allowed by the gateway")
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
        if bool_arg(request.query, "noredirect"):
            return web.json_response({"Location": loc})
        # Connection: close, as a NameNode's redirect to another host (a DataNode) means a new
        # connection anyway: the bytes then go on a fresh connection, which on loopback
        # streams ~10 % faster than one that carried the redirect (bench/bench_webhdfs.py).
        return web.Response(status=307, headers={"Location": loc, "Content-Type": "application/octet-stream",
                                                 "Connection": "close"}, body=b"")

    # ---- statuses ----------------------------------------------------------

    def file_status(self, st: FileStatus, user: str, suffix: str) -> dict[str, Any]:
        """Hadoop's FileStatus JSON. From the attributes the store keeps (``st.attrs``):
        permission, owner and group (the HDFS names kept beside, else the local names of
        uid and gid), access time, replication, the ACL bit and symlinks; where it keeps
        none (or a listing did not fetch them: S3), the defaults: the caller as owner,
        ``supergroup``, 644/755, replication 1."""
        directory = st.is_dir
        a = st.attrs
        extra = a.extra if a is not None else {}
        owner, group = user, "supergroup"
        permission = "755" if directory else "644"
        atime = 0 if directory else round(st.mtime * 1000)
        replication = 0 if directory else 1
        kind = "DIRECTORY" if directory else "FILE"
        if a is not None:
            if a.mode is not None:
                permission = format(a.mode & 0o7777, "o")
            owner = extra.get(X_OWNER) or (user_name(a.uid) if a.uid is not None else user)
            group = extra.get(X_GROUP) or (group_name(a.gid) if a.gid is not None else group)
            if a.atime is not None:
                atime = round(a.atime * 1000)
            if not directory and (r := extra.get(X_REPLICATION, "")).isdigit():
                replication = int(r)
            if a.is_symlink:
                kind = "SYMLINK"
        out = {
            "accessTime": atime,
            "blockSize": 0 if directory else self.cfg.block_size,
            "childrenNum": 0,
            # a file's id follows its bytes, as an HDFS inode id does: kept by a rename,
            # new with every rewrite (an HDFS mount of this gateway versions files by it)
            "fileId": _file_id(st.version if not directory and st.version else st.path),
            "group": group,
            "length": 0 if directory else st.size,
            "modificationTime": round(st.mtime * 1000),
            "owner": owner,
            "pathSuffix": suffix,
            "permission": permission,
            "replication": replication,
            "storagePolicy": 0,
            "type": kind,
        }
        if kind == "SYMLINK" and a is not None:
            out["symlink"] = self.link_target(st.path, a.target or "")
        if extra.get(X_ACL):
            out["aclBit"] = True
        return out

    @staticmethod
    def link_target(path: str, target: str) -> str:
        """A link's target as a mesh path: a relative one (how the gateway writes links
        within a mount) from the link's directory; an absolute one as it is."""
        if target.startswith("/") or not target:
            return target
        return posixpath.normpath(posixpath.join(paths.parent(path), target))

    async def stat(self, path: str) -> FileStatus:
        try:
            st = await self.node.stat(path)
        except me.NotFound:
            raise me.NotFound(f"File does not exist: {path}") from None
        if path != "/" and st.is_dir and not self.node.inside_mount(path) and \
                not self.node.is_virtual_dir(path):
            raise me.NotFound(f"File does not exist: {path}")
        return st
