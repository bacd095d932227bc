"""WebHDFS's attribute operations (issue 22) with real clients over a real socket.

SETPERMISSION, SETOWNER, SETTIMES and SETREPLICATION, then GETFILESTATUS and
LISTSTATUS show what was set; the ACL operations over ``hdfs.acl``;
CREATESYMLINK; snapshots (refused on a ``file://`` mount, passed through to an
``hdfs://`` mount's NameNode); Hadoop's errors for bad input. HdfsCLI
(``InsecureClient``) and plain HTTP talk to a ``meshd`` with a ``file://``
mount, whose store keeps mode, owner, times and links in the real file: the
test checks the real file too. Last, a second mesh mounts the first one's
gateway as ``hdfs://`` and everything set through the front lands in the
back (the mesh playing the NameNode).
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hdfs import HdfsError, InsecureClient

from tests.meshd_proc import MeshdProcess

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)


class Gateway:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, user: str = "alice") -> InsecureClient:
        return InsecureClient(self.url, user=user)

    def raw(self, method: str, path: str, query: str, body: bytes | None = None) -> tuple[int, bytes]:
        url = f"{self.url}/webhdfs/v1{urllib.parse.quote(path)}?{query}"
        for _ in range(3):
            parts = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(parts.netloc, timeout=30)
            try:
                conn.request(method, f"{parts.path}?{parts.query}", body=body)
                r = conn.getresponse()
                status, headers, data = r.status, dict(r.getheaders()), r.read()
            finally:
                conn.close()
            if status == 307:
                url = headers["Location"]
                continue
            return status, data
        raise AssertionError("redirect loop")

    def json(self, method: str, path: str, query: str) -> tuple[int, Any]:
        status, data = self.raw(method, path, query + "&user.name=alice")
        return status, json.loads(data) if data else None

    def status(self, path: str) -> dict[str, Any]:
        code, body = self.json("GET", path, "op=GETFILESTATUS")
        assert code == 200, body
        return dict(body["FileStatus"])

    def acl(self, path: str) -> dict[str, Any]:
        code, body = self.json("GET", path, "op=GETACLSTATUS")
        assert code == 200, body
        return dict(body["AclStatus"])

    def remote(self, method: str, path: str, query: str) -> tuple[int, dict[str, Any]]:
        code, body = self.json(method, path, query)
        return code, body["RemoteException"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    base = tmp_path_factory.mktemp("webhdfs-attrs")
    store = base / "store"
    store.mkdir()
    node = MeshdProcess(base / "node", [f"/data={store.as_uri()}"], ["--no-s3"]).start()
    try:
        yield Gateway(node.endpoints["webhdfs"]), store
    finally:
        node.stop()


def _file(gw: Gateway, path: str, data: bytes = b"some bytes") -> None:
    gw.client().write(path, data=data, overwrite=True)


def test_setpermission_is_kept_in_the_file(mesh: tuple[Gateway, Path]) -> None:
    gw, store = mesh
    _file(gw, "/data/perm.txt")
    gw.client().set_permission("/data/perm.txt", "640")
    assert gw.status("/data/perm.txt")["permission"] == "640"
    assert stat.S_IMODE(os.stat(store / "perm.txt").st_mode) == 0o640
    gw.client().makedirs("/data/tmpdir")
    gw.client().set_permission("/data/tmpdir", "1777")  # the sticky bit, as /tmp
    st = gw.status("/data/tmpdir")
    assert (st["permission"], st["type"]) == ("1777", "DIRECTORY")
    assert stat.S_IMODE(os.stat(store / "tmpdir").st_mode) == 0o1777
    assert gw.acl("/data/tmpdir")["stickyBit"] is True
    # CREATE's and MKDIRS's permission= is the new file's mode
    code, _ = gw.raw("PUT", "/data/p600.txt", "op=CREATE&permission=600&user.name=alice", b"x")
    assert code == 201 and gw.status("/data/p600.txt")["permission"] == "600"
    code, _ = gw.json("PUT", "/data/d700", "op=MKDIRS&permission=700")
    assert code == 200 and gw.status("/data/d700")["permission"] == "700"


def test_the_creator_owns_a_new_file(mesh: tuple[Gateway, Path]) -> None:
    gw, _ = mesh
    gw.client("carol").write("/data/carols.txt", data=b"mine", overwrite=True)
    assert gw.client("dave").status("/data/carols.txt")["owner"] == "carol"


def test_setowner_keeps_names_and_local_ids(mesh: tuple[Gateway, Path]) -> None:
    gw, store = mesh
    _file(gw, "/data/own.txt")
    c = gw.client()
    c.set_owner("/data/own.txt", owner="hive", group="hadoop")  # names this machine does not know
    st = gw.status("/data/own.txt")
    assert (st["owner"], st["group"]) == ("hive", "hadoop")
    c.set_owner("/data/own.txt", group="analysts")  # one of the two: the other is kept
    st = gw.status("/data/own.txt")
    assert (st["owner"], st["group"]) == ("hive", "analysts")
    # a name the node knows: the file's uid and gid too
    c.set_owner("/data/own.txt", owner=NOBODY.pw_name, group=NOGROUP.gr_name)
    st = gw.status("/data/own.txt")
    assert (st["owner"], st["group"]) == (NOBODY.pw_name, NOGROUP.gr_name)
    real = os.lstat(store / "own.txt")
    assert (real.st_uid, real.st_gid) == (NOBODY.pw_uid, NOGROUP.gr_gid)


def test_settimes_sets_mtime_and_atime(mesh: tuple[Gateway, Path]) -> None:
    gw, store = mesh
    _file(gw, "/data/times.txt")
    mtime_ms, atime_ms = 1_500_000_000_123, 1_600_000_000_456
    gw.client().set_times("/data/times.txt", access_time=atime_ms, modification_time=mtime_ms)
    st = gw.status("/data/times.txt")
    assert (st["modificationTime"], st["accessTime"]) == (mtime_ms, atime_ms)
    real = os.stat(store / "times.txt")
    assert (round(real.st_mtime_ns / 1e6), round(real.st_atime_ns / 1e6)) == (mtime_ms, atime_ms)
    # -1: unchanged
    code, _ = gw.json("PUT", "/data/times.txt", "op=SETTIMES&modificationtime=-1&accesstime=1700000000000")
    assert code == 200
    st = gw.status("/data/times.txt")
    assert (st["modificationTime"], st["accessTime"]) == (mtime_ms, 1_700_000_000_000)
    # the listing shows the same
    code, body = gw.json("GET", "/data", "op=LISTSTATUS")
    entry = next(e for e in body["FileStatuses"]["FileStatus"] if e["pathSuffix"] == "times.txt")
    assert (entry["modificationTime"], entry["accessTime"]) == (mtime_ms, 1_700_000_000_000)


def test_setreplication(mesh: tuple[Gateway, Path]) -> None:
    gw, _ = mesh
    _file(gw, "/data/rep.txt")
    gw.client().set_replication("/data/rep.txt", 3)
    assert gw.status("/data/rep.txt")["replication"] == 3
    code, body = gw.json("GET", "/data", "op=LISTSTATUS")
    assert next(e for e in body["FileStatuses"]["FileStatus"] if e["pathSuffix"] == "rep.txt")["replication"] == 3
    gw.client().makedirs("/data/repdir")
    code, body = gw.json("PUT", "/data/repdir", "op=SETREPLICATION&replication=2")
    assert (code, body) == (200, {"boolean": False})  # as HDFS: a directory has none
    with pytest.raises(HdfsError, match="not a file"):
        gw.client().set_replication("/data/repdir", 2)


def test_acls(mesh: tuple[Gateway, Path]) -> None:
    gw, _ = mesh
    c = gw.client()
    c.makedirs("/data/acl")
    assert "aclBit" not in gw.status("/data/acl")
    assert gw.acl("/data/acl")["entries"] == []
    c.set_acl("/data/acl", "user::rwx,user:bob:r-x,group::r-x,mask::r-x,other::---,default:user:bob:rwx")
    st = gw.status("/data/acl")
    assert st["aclBit"] is True and st["permission"] == "750"  # the base entries are the permission
    got = gw.acl("/data/acl")
    assert got["entries"] == ["user:bob:r-x", "mask::r-x", "default:user:bob:rwx"]
    assert (got["permission"], got["stickyBit"], got["owner"]) == ("750", False, "alice")
    c.set_acl("/data/acl", "group:staff:rwx,user:bob:rwx", clear=False)  # MODIFYACLENTRIES: merged
    assert gw.acl("/data/acl")["entries"] == ["user:bob:rwx", "group:staff:rwx", "mask::r-x",
                                              "default:user:bob:rwx"]
    c.remove_acl_entries("/data/acl", "user:bob,mask::")
    assert gw.acl("/data/acl")["entries"] == ["group:staff:rwx", "default:user:bob:rwx"]
    c.remove_default_acl("/data/acl")
    assert gw.acl("/data/acl")["entries"] == ["group:staff:rwx"]
    c.remove_acl("/data/acl")
    assert gw.acl("/data/acl")["entries"] == [] and "aclBit" not in gw.status("/data/acl")
    assert gw.status("/data/acl")["permission"] == "750"


@pytest.mark.parametrize(("method", "path", "query", "status", "exception", "message"), [
    ("PUT", "/data/e.txt", "op=SETPERMISSION&permission=999", 400, "IllegalArgumentException", "permission"),
    ("PUT", "/data/e.txt", "op=SETPERMISSION&permission=2000", 400, "IllegalArgumentException", "permission"),
    ("PUT", "/data/e.txt", "op=SETPERMISSION&permission=rwx", 400, "IllegalArgumentException", "permission"),
    ("PUT", "/data/e.txt", "op=SETOWNER", 400, "IllegalArgumentException", "Both owner and group are empty"),
    ("PUT", "/data/e.txt", "op=SETOWNER&owner=a:b", 400, "IllegalArgumentException", "owner"),
    ("PUT", "/data/e.txt", "op=SETTIMES&modificationtime=-2", 400, "IllegalArgumentException", "modificationtime"),
    ("PUT", "/data/e.txt", "op=SETTIMES&accesstime=9223372036854775807", 400, "IllegalArgumentException",
     "accesstime"),
    ("PUT", "/data/e.txt", "op=SETREPLICATION&replication=0", 400, "IllegalArgumentException", "replication"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=user:bob:rwz", 400, "IllegalArgumentException",
     "Invalid permission in <aclSpec> : user:bob:rwz"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=robot:bob:rwx", 400, "IllegalArgumentException",
     "Invalid type of acl in <aclSpec> :robot:bob:rwx"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=user:bob", 400, "IllegalArgumentException",
     "Invalid <aclSpec> : user:bob"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=user:bob:rwx:x", 400, "IllegalArgumentException", "Invalid <aclSpec>"),
    ("PUT", "/data/e.txt", "op=SETACL", 400, "IllegalArgumentException", "Invalid <aclSpec>"),
    ("PUT", "/data/e.txt", "op=MODIFYACLENTRIES&aclspec=default", 400, "IllegalArgumentException",
     "Invalid <aclSpec> : default"),
    ("PUT", "/data/e.txt", "op=REMOVEACLENTRIES&aclspec=user:bob:rwx", 400, "IllegalArgumentException",
     "Invalid <aclSpec>"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=mask:bob:rwx", 403, "AclException", "must not have a name"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=user:bob:rwx,user:bob:r--", 403, "AclException", "multiple entries"),
    ("PUT", "/data/e.txt", "op=SETACL&aclspec=default:user:bob:rwx", 403, "AclException",
     "only directories may have a default ACL"),
    ("PUT", "/data/e.txt", "op=REMOVEACLENTRIES&aclspec=user::", 403, "AclException", "entries are required"),
    ("PUT", "/data/missing", "op=SETPERMISSION&permission=600", 404, "FileNotFoundException", "/data/missing"),
    ("PUT", "/data/missing", "op=SETACL&aclspec=user:bob:rwx", 404, "FileNotFoundException", "/data/missing"),
    ("PUT", "/data/sl", "op=CREATESYMLINK&destination=relative", 400, "IllegalArgumentException", "destination"),
    ("PUT", "/data/e.txt", "op=CREATESYMLINK&destination=/data/x", 403, "FileAlreadyExistsException", "exists"),
    ("PUT", "/data/nodir/sl", "op=CREATESYMLINK&destination=/data/e.txt", 404, "FileNotFoundException",
     "Parent directory doesn't exist: /data/nodir"),
    ("PUT", "/data", "op=CREATESNAPSHOT&snapshotname=s1", 400, "UnsupportedOperationException",
     "snapshots need an hdfs:// under-store"),
    ("PUT", "/data", "op=RENAMESNAPSHOT&oldsnapshotname=s1&snapshotname=s2", 400, "UnsupportedOperationException",
     "snapshots need an hdfs:// under-store"),
    ("DELETE", "/data", "op=DELETESNAPSHOT&snapshotname=s1", 400, "UnsupportedOperationException",
     "snapshots need an hdfs:// under-store"),
    ("DELETE", "/data", "op=DELETESNAPSHOT", 400, "IllegalArgumentException", "snapshotname"),
    ("PUT", "/data", "op=CREATESNAPSHOT&snapshotname=a/b", 400, "IllegalArgumentException", "snapshotname"),
])
def test_bad_input_is_a_remote_exception(mesh: tuple[Gateway, Path], method: str, path: str, query: str,
                                         status: int, exception: str, message: str) -> None:
    gw, store = mesh
    (store / "e.txt").write_bytes(b"exists")
    os.chmod(store / "e.txt", 0o644)
    before = gw.status("/data/e.txt")
    got, remote = gw.remote(method, path, query)
    assert (got, remote["exception"]) == (status, exception), remote
    assert message in remote["message"] and "Traceback" not in remote["message"], remote
    after = gw.status("/data/e.txt")
    assert (after["permission"], after["owner"], after.get("aclBit")) == \
        (before["permission"], before["owner"], before.get("aclBit"))  # nothing changed
    assert (store / "e.txt").read_bytes() == b"exists" and not (store / "sl").exists()


def test_createsymlink(mesh: tuple[Gateway, Path]) -> None:
    gw, store = mesh
    _file(gw, "/data/target.txt", b"linked bytes")
    code, _ = gw.json("PUT", "/data/links/to-target", "op=CREATESYMLINK&destination=/data/target.txt"
                                                      "&createParent=true")
    assert code == 200
    # within the mount the link is relative: the store resolves it in its own terms
    assert os.readlink(store / "links" / "to-target") == "../target.txt"
    st = gw.status("/data/links/to-target")
    assert (st["type"], st["symlink"]) == ("SYMLINK", "/data/target.txt")
    code, body = gw.json("GET", "/data/links", "op=LISTSTATUS")
    [entry] = body["FileStatuses"]["FileStatus"]
    assert (entry["pathSuffix"], entry["type"], entry["symlink"]) == ("to-target", "SYMLINK", "/data/target.txt")
    with gw.client().read("/data/links/to-target") as r:  # a read follows the link
        assert r.read() == b"linked bytes"
    # outside the mount: kept as given, a dangling link of its own
    code, _ = gw.json("PUT", "/data/links/away", "op=CREATESYMLINK&destination=/elsewhere/x")
    assert code == 200 and os.readlink(store / "links" / "away") == "/elsewhere/x"
    st = gw.status("/data/links/away")
    assert (st["type"], st["symlink"]) == ("SYMLINK", "/elsewhere/x")
    # a link to an ancestor: a summary counts the link, never walks through it (no loop)
    code, _ = gw.json("PUT", "/data/links/up", "op=CREATESYMLINK&destination=/data")
    assert code == 200 and os.readlink(store / "links" / "up") == ".."
    summary = gw.client().content("/data/links")
    assert (summary["fileCount"], summary["directoryCount"], summary["length"]) == (3, 1, 0)


# --------------------------------------------------------------------------- hdfs:// round trip


@pytest.fixture(scope="module")
def front(mesh: tuple[Gateway, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second mesh mounting the first one's gateway as hdfs:// (the first plays the NameNode)."""
    back, store = mesh
    (store / "wh").mkdir(exist_ok=True)
    base = tmp_path_factory.mktemp("webhdfs-front")
    node = MeshdProcess(base / "front", [
        f"/warehouse=hdfs://namenode.example:8020/data/wh,endpoint={back.url},user=etl"], ["--no-s3"]).start()
    try:
        yield Gateway(node.endpoints["webhdfs"])
    finally:
        node.stop()


def test_hdfs_mount_round_trip(mesh: tuple[Gateway, Path], front: Gateway) -> None:
    back, store = mesh
    c = front.client()
    c.write("/warehouse/t/part-0", data=b"through two meshes", overwrite=True)
    assert (store / "wh" / "t" / "part-0").read_bytes() == b"through two meshes"
    c.set_permission("/warehouse/t/part-0", "604")
    c.set_owner("/warehouse/t/part-0", owner="hive", group="hadoop")
    c.set_times("/warehouse/t/part-0", access_time=1_600_000_000_000, modification_time=1_500_000_000_000)
    c.set_replication("/warehouse/t/part-0", 2)
    c.set_acl("/warehouse/t/part-0", "user:bob:r--", clear=False)
    for gw, path in ((front, "/warehouse/t/part-0"), (back, "/data/wh/t/part-0")):
        st = gw.status(path)
        assert (st["permission"], st["owner"], st["group"], st["replication"]) == ("604", "hive", "hadoop", 2), gw
        assert (st["modificationTime"], st["accessTime"], st["aclBit"]) == (1_500_000_000_000, 1_600_000_000_000,
                                                                            True)
        assert gw.acl(path)["entries"] == ["user:bob:r--"]
    real = os.stat(store / "wh" / "t" / "part-0")
    assert stat.S_IMODE(real.st_mode) == 0o604 and round(real.st_mtime_ns / 1e6) == 1_500_000_000_000
    # a rewrite through the hdfs:// store keeps the file's mode and owner
    c.write("/warehouse/t/part-0", data=b"again", overwrite=True)
    st = back.status("/data/wh/t/part-0")
    assert (st["permission"], st["owner"], st["length"]) == ("604", "hive", 5)
    # a symlink through the front lands in the back's store, relative
    code, _ = front.json("PUT", "/warehouse/t/latest", "op=CREATESYMLINK&destination=/warehouse/t/part-0")
    assert code == 200
    assert os.readlink(store / "wh" / "t" / "latest") == "part-0"
    assert front.status("/warehouse/t/latest")["symlink"] == "/warehouse/t/part-0"
    assert back.status("/data/wh/t/latest")["symlink"] == "/data/wh/t/part-0"
    # snapshots go to the NameNode, which (a file:// mount behind it) refuses them in its own words
    code, remote = front.remote("PUT", "/warehouse/t", "op=CREATESNAPSHOT&snapshotname=s1")
    assert (code, remote["exception"]) == (400, "UnsupportedOperationException"), remote
    assert "CREATESNAPSHOT /warehouse/t" in remote["message"] and "file://" in remote["message"], remote
    code, remote = front.remote("DELETE", "/warehouse/t", "op=DELETESNAPSHOT&snapshotname=s1")
    assert code == 400 and "DELETESNAPSHOT /warehouse/t" in remote["message"], remote
    code, remote = front.remote("PUT", "/warehouse/t", "op=RENAMESNAPSHOT&oldsnapshotname=s1&snapshotname=s2")
    assert code == 400 and "RENAMESNAPSHOT /warehouse/t" in remote["message"], remote
