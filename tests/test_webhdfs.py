"""The WebHDFS gateway (gateway/webhdfs.py) with real clients over a real socket.

HdfsCLI (the ``hdfs`` package: ``InsecureClient`` and the ``hdfscli``
command) and fsspec's ``webhdfs`` filesystem talk to a ``meshd embedded`` with
a local-directory mount, a read-only mount, and a WebHDFS user list (alice may
write, bob may only read). Errors are checked as Hadoop returns them: the
RemoteException's exception name, Java class and HTTP status. Last, a second
mesh mounts the first one's gateway as ``hdfs://`` (a mesh in front of a
remote "HDFS"): the same bytes under the mesh path and under the hdfs:// URI.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hdfs import HdfsError, InsecureClient

from tests.meshd_proc import MESHCTL, MeshdProcess

MIB = 1 << 20


class Mesh:
    def __init__(self, node: MeshdProcess, store: Path, ro: Path) -> None:
        self.node, self.store, self.ro = node, store, ro
        self.url = node.endpoints["webhdfs"]

    def client(self, user: str = "alice") -> InsecureClient:
        return InsecureClient(self.url, user=user)

    def raw(self, method: str, path: str, query: str, body: bytes | None = None,
            follow: bool = True) -> tuple[int, dict[str, str], bytes]:
        url = f"{self.url}/webhdfs/v1{path}?{query}"
        for _ in range(3):
            parts = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(parts.netloc, timeout=30)
            try:
                conn.request(method, f"{parts.path}?{parts.query}", body=body)
                r = conn.getresponse()
                status, headers, data = r.status, dict(r.getheaders()), r.read()
            finally:
                conn.close()
            if status == 307 and follow:
                url = headers["Location"]
                continue
            return status, headers, data
        raise AssertionError("redirect loop")

    def remote(self, method: str, path: str, query: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        status, _, data = self.raw(method, path, query, body)
        return status, json.loads(data)["RemoteException"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("webhdfs")
    store, ro = base / "store", base / "ro"
    store.mkdir()
    ro.mkdir()
    (ro / "fixed.txt").write_bytes(b"read me only")
    cfg = base / "meshd.yaml"
    cfg.write_text("webhdfs:\n  users: {alice: rw, bob: ro}\n  proxy_users: [alice]\n")
    node = MeshdProcess(base / "node", [f"/data={store.as_uri()}", f"/ro={ro.as_uri()},read_only=true"],
                        ["--config", str(cfg), "--no-s3"]).start()
    try:
        yield Mesh(node, store, ro)
    finally:
        node.stop()


def test_endpoints_publish_webhdfs(mesh: Mesh) -> None:
    assert mesh.url.startswith("http://127.0.0.1:")
    status, _, body = mesh.raw("GET", "/", "op=GETHOMEDIRECTORY&user.name=alice")
    assert status == 200 and json.loads(body) == {"Path": "/user/alice"}


def test_hdfscli_round_trip(mesh: Mesh, tmp_path: Path) -> None:
    c = mesh.client()
    data = os.urandom(3 * MIB + 123)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    c.makedirs("/data/cli/in")
    assert c.upload("/data/cli/in/up.bin", str(local)) == "/data/cli/in/up.bin"
    assert (mesh.store / "cli" / "in" / "up.bin").read_bytes() == data  # the under-store's file, byte for byte
    st = c.status("/data/cli/in/up.bin")
    assert st["type"] == "FILE" and st["length"] == len(data) and st["owner"] == "alice"
    assert c.list("/data/cli/in") == ["up.bin"]
    with c.read("/data/cli/in/up.bin", offset=MIB - 7, length=4096) as r:  # a ranged read
        assert r.read() == data[MIB - 7: MIB - 7 + 4096]
    out = tmp_path / "down.bin"
    c.download("/data/cli/in/up.bin", str(out))
    assert out.read_bytes() == data
    c.write("/data/cli/small.txt", data=b"hello", overwrite=True)
    c.write("/data/cli/small.txt", data=b" world", append=True)
    with c.read("/data/cli/small.txt") as r:
        assert r.read() == b"hello world"
    c.rename("/data/cli/small.txt", "/data/cli/in")  # into an existing directory, as HDFS does
    assert sorted(c.list("/data/cli/in")) == ["small.txt", "up.bin"]
    summary = c.content("/data/cli")
    assert (summary["fileCount"], summary["directoryCount"], summary["length"]) == (2, 2, len(data) + 11)
    assert c.delete("/data/cli/in/small.txt") is True
    assert c.delete("/data/cli/in/small.txt") is False  # gone: false, not an error
    with pytest.raises(HdfsError, match="non empty"):
        c.delete("/data/cli")
    assert c.delete("/data/cli", recursive=True) is True
    assert not (mesh.store / "cli").exists()


def test_checksum_is_hdfs_md5_of_md5_of_crc32c(mesh: Mesh) -> None:
    from crc32c import crc32c

    data = os.urandom(5000)
    c = mesh.client()
    c.write("/data/sum.bin", data=data, overwrite=True)
    got = c.checksum("/data/sum.bin")
    crcs = b"".join(crc32c(data[i:i + 512]).to_bytes(4, "big") for i in range(0, len(data), 512))
    expected = (512).to_bytes(4, "big") + (0).to_bytes(8, "big") + hashlib.md5(hashlib.md5(crcs).digest()).digest()
    assert got == {"algorithm": "MD5-of-0MD5-of-512CRC32C", "bytes": expected.hex(), "length": 28}


def test_hdfscli_command(mesh: Mesh, tmp_path: Path) -> None:
    cfg = tmp_path / "hdfscli.cfg"
    cfg.write_text(f"[global]\ndefault.alias = mesh\n\n[mesh.alias]\nurl = {mesh.url}\nuser = alice\n")
    local = tmp_path / "f.txt"
    local.write_bytes(b"from the hdfscli command\n")
    env = {**os.environ, "HDFSCLI_CONFIG": str(cfg)}
    hdfscli = [os.path.join(os.path.dirname(sys.executable), "hdfscli")]
    r = subprocess.run([*hdfscli, "upload", "--force", str(local), "/data/cmd/f.txt"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    back = tmp_path / "back.txt"
    r = subprocess.run([*hdfscli, "download", "/data/cmd/f.txt", str(back)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == local.read_bytes()


def test_fsspec_webhdfs(mesh: Mesh, tmp_path: Path) -> None:
    host, port = mesh.url.removeprefix("http://").split(":")
    fs = fsspec.filesystem("webhdfs", host=host, port=int(port), user="alice", skip_instance_cache=True)
    data = os.urandom(2 * MIB + 99)
    with fs.open("/data/fs/a.bin", "wb", block_size=MIB) as f:  # CREATE, then APPENDs of 1 MiB
        f.write(data)
    assert (mesh.store / "fs" / "a.bin").read_bytes() == data
    assert fs.info("/data/fs/a.bin")["size"] == len(data)
    assert fs.cat_file("/data/fs/a.bin", start=MIB, end=MIB + 100) == data[MIB:MIB + 100]
    local = tmp_path / "l.txt"
    local.write_bytes(b"local")
    fs.put_file(str(local), "/data/fs/l.txt")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/data/fs", detail=False)) == ["a.bin", "l.txt"]
    fs.mv("/data/fs/l.txt", "/data/fs/m.txt")
    assert fs.cat_file("/data/fs/m.txt") == b"local"
    fs.get_file("/data/fs/a.bin", str(tmp_path / "a.bin"))
    assert (tmp_path / "a.bin").read_bytes() == data
    fs.rm("/data/fs", recursive=True)
    assert not fs.exists("/data/fs")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/data/fs/a.bin")


def test_listing_batches_and_status_fields(mesh: Mesh) -> None:
    d = mesh.store / "many"
    d.mkdir()
    for i in range(1205):
        (d / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    status, _, body = mesh.raw("GET", "/data/many", "op=LISTSTATUS_BATCH&user.name=alice")
    listing = json.loads(body)["DirectoryListing"]
    page = listing["partialListing"]["FileStatuses"]["FileStatus"]
    assert status == 200 and len(page) == 1000 and listing["remainingEntries"] == 205
    status, _, body = mesh.raw("GET", "/data/many", f"op=LISTSTATUS_BATCH&user.name=alice&startAfter={page[-1]['pathSuffix']}")
    rest = json.loads(body)["DirectoryListing"]
    assert len(rest["partialListing"]["FileStatuses"]["FileStatus"]) == 205 and rest["remainingEntries"] == 0
    st = page[3]
    assert set(st) >= {"accessTime", "blockSize", "childrenNum", "fileId", "group", "length", "modificationTime",
                       "owner", "pathSuffix", "permission", "replication", "type"}
    assert st["pathSuffix"] == "f00003" and st["length"] == 3 and st["type"] == "FILE"
    status, _, body = mesh.raw("GET", "/", "op=LISTSTATUS&user.name=bob")
    assert [s["pathSuffix"] for s in json.loads(body)["FileStatuses"]["FileStatus"]] == ["data", "ro"]
    # no user.name: the anonymous user (dr.who), who is not on this gateway's list
    got, remote = mesh.remote("GET", "/", "op=LISTSTATUS")
    assert got == 403 and remote["exception"] == "AccessControlException" and "dr.who" in remote["message"]


def test_xattrs_carry_mesh_state(mesh: Mesh) -> None:
    (mesh.store / "x.bin").write_bytes(b"y" * 1000)
    c = mesh.client()
    with c.read("/data/x.bin") as r:
        r.read()  # now cached
    status, _, body = mesh.raw("GET", "/data/x.bin", "op=GETXATTRS&user.name=alice&encoding=text")
    xattrs = {x["name"]: x["value"] for x in json.loads(body)["XAttrs"]}
    assert status == 200 and xattrs == {"user.mesh.home_region": '"local"', "user.mesh.cached_bytes": '"1000"',
                                    "user.mesh.region": '"local"'}


@pytest.mark.parametrize(("method", "path", "query", "status", "exception", "java_class"), [
    ("GET", "/data/missing.txt", "op=GETFILESTATUS&user.name=alice", 404, "FileNotFoundException",
     "java.io.FileNotFoundException"),
    ("GET", "/data/missing.txt", "op=OPEN&user.name=alice", 404, "FileNotFoundException",
     "java.io.FileNotFoundException"),
    ("GET", "/data", "op=FROBNICATE&user.name=alice", 400, "IllegalArgumentException",
     "java.lang.IllegalArgumentException"),
    ("GET", "/data", "user.name=alice", 400, "IllegalArgumentException", "java.lang.IllegalArgumentException"),
    ("PUT", "/data/x", "op=OPEN&user.name=alice", 400, "IllegalArgumentException",
     "java.lang.IllegalArgumentException"),
    ("GET", "/data/e.txt", "op=OPEN&offset=-1&user.name=alice", 400, "IllegalArgumentException",
     "java.lang.IllegalArgumentException"),
    ("GET", "/data/e.txt", "op=OPEN&offset=abc&user.name=alice", 400, "IllegalArgumentException",
     "java.lang.IllegalArgumentException"),
    ("GET", "/data/e.txt", "op=OPEN&offset=999&user.name=alice", 403, "EOFException", "java.io.EOFException"),
    ("PUT", "/data/bob.txt", "op=CREATE&user.name=bob", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("DELETE", "/data/e.txt", "op=DELETE&user.name=bob", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("GET", "/data/e.txt", "op=GETFILESTATUS&user.name=mallory", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("PUT", "/ro/new.txt", "op=CREATE&user.name=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("DELETE", "/ro/fixed.txt", "op=DELETE&user.name=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("PUT", "/data/e.txt", "op=CREATE&user.name=alice", 403, "FileAlreadyExistsException",
     "org.apache.hadoop.fs.FileAlreadyExistsException"),
    ("PUT", "/data/e.txt/sub", "op=MKDIRS&user.name=alice", 403, "ParentNotDirectoryException",
     "org.apache.hadoop.fs.ParentNotDirectoryException"),
    ("POST", "/data/e.txt", "op=CONCAT&sources=/data/a&user.name=alice", 400, "UnsupportedOperationException",
     "java.lang.UnsupportedOperationException"),
    ("PUT", "/outside.txt", "op=CREATE&user.name=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("PUT", "/data/e.txt", "op=RENAME&destination=relative&user.name=alice", 400, "IllegalArgumentException",
     "java.lang.IllegalArgumentException"),
    # doas: only a proxy user may act as another (an unlisted eve used to get in as alice)
    ("GET", "/data/e.txt", "op=GETFILESTATUS&user.name=eve&doas=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("DELETE", "/data/e.txt", "op=DELETE&user.name=bob&doas=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("DELETE", "/data/e.txt", "op=DELETE&doas=alice", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
    ("DELETE", "/data/e.txt", "op=DELETE&user.name=alice&doas=bob", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),  # alice acting as read-only bob
    ("PUT", "/data/anon.txt", "op=CREATE", 403, "AccessControlException",
     "org.apache.hadoop.security.AccessControlException"),
])
def test_errors_are_remote_exceptions(mesh: Mesh, method: str, path: str, query: str, status: int,
                                      exception: str, java_class: str) -> None:
    (mesh.store / "e.txt").write_bytes(b"exists")
    got, remote = mesh.remote(method, path, query)
    assert (got, remote["exception"], remote["javaClassName"]) == (status, exception, java_class), remote
    assert remote["message"] and "Traceback" not in remote["message"]
    assert (mesh.store / "e.txt").read_bytes() == b"exists"  # no refusal changed anything
    assert not (mesh.ro / "new.txt").exists() and (mesh.ro / "fixed.txt").exists()


def test_a_proxy_user_acts_as_another(mesh: Mesh) -> None:
    (mesh.store / "p.txt").write_bytes(b"by proxy")
    status, _, data = mesh.raw("GET", "/data/p.txt", "op=OPEN&user.name=alice&doas=bob")
    assert (status, data) == (200, b"by proxy")  # alice may act as bob, who may read


def test_anonymous_writes_are_refused_once_any_credential_is_set(meshd: Callable[..., MeshdProcess],
                                                                  tmp_path: Path) -> None:
    """S3 keys set, no WebHDFS users: anyone naming a user.name may still write (Hadoop's
    simple auth), but a request naming nobody may only read."""
    store = tmp_path / "s"
    store.mkdir()
    (store / "r.txt").write_bytes(b"readable")
    node = meshd(mounts=[f"/data={store.as_uri()}"], args=["--s3-access-key", "k", "--s3-secret-key", "s3cret"])
    m = Mesh(node, store, store)
    status, remote = m.remote("PUT", "/data/anon.txt", "op=CREATE")
    assert status == 403 and "anonymous writes are refused" in remote["message"]
    assert not (store / "anon.txt").exists()
    status, _, data = m.raw("GET", "/data/r.txt", "op=OPEN")
    assert (status, data) == (200, b"readable")
    status, _, _ = m.raw("PUT", "/data/named.txt", "op=CREATE&user.name=carol", b"carol's")
    assert status == 201 and (store / "named.txt").read_bytes() == b"carol's"


def test_clients_surface_the_errors(mesh: Mesh) -> None:
    with pytest.raises(HdfsError, match="File does not exist: /data/nope"):
        mesh.client().status("/data/nope")
    with pytest.raises(HdfsError, match="read-only user"):
        mesh.client("bob").write("/data/b.txt", data=b"x")
    host, port = mesh.url.removeprefix("http://").split(":")
    fs = fsspec.filesystem("webhdfs", host=host, port=int(port), user="bob", skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.mkdir("/data/bobdir")
    assert mesh.client("bob").status("/ro/fixed.txt")["length"] == 12  # bob reads


def test_open_redirect_and_noredirect(mesh: Mesh) -> None:
    (mesh.store / "r.txt").write_bytes(b"0123456789")
    status, headers, _ = mesh.raw("GET", "/data/r.txt", "op=OPEN&offset=3&length=4&user.name=alice", follow=False)
    assert status == 307 and "datanode=true" in headers["Location"] and "offset=3" in headers["Location"]
    status, _, body = mesh.raw("GET", "/data/r.txt", "op=OPEN&offset=3&length=4&user.name=alice")
    assert status == 200 and body == b"3456"
    status, _, body = mesh.raw("GET", "/data/r.txt", "op=OPEN&noredirect=true&user.name=alice")
    assert status == 200 and "datanode=true" in json.loads(body)["Location"]
    status, _, body = mesh.raw("GET", "/data/r.txt", "op=OPEN&offset=10&user.name=alice")
    assert status == 200 and body == b""  # at EOF: nothing, not an error


def test_hdfs_understore_is_the_same_bytes(mesh: Mesh, tmp_path: Path) -> None:
    """A second mesh mounts the first one's gateway as hdfs://: `meshctl cat
    hdfs://namenode/warehouse/x` resolves through the mount table to the mesh path's bytes."""
    data = os.urandom(MIB + 5)
    (mesh.store / "wh").mkdir()
    (mesh.store / "wh" / "part-0").write_bytes(data)
    front = MeshdProcess(tmp_path / "front", [
        f"/warehouse=hdfs://namenode.example:8020/data/wh,endpoint={mesh.url},user=alice"], ["--no-s3"]).start()
    try:
        def ctl(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([*MESHCTL, "--endpoint", front.endpoint, *args], capture_output=True, timeout=60)

        by_path = ctl("cat", "/warehouse/part-0")
        by_uri = ctl("cat", "hdfs://namenode.example/data/wh/part-0")  # no port: matches the mount's
        assert by_path.returncode == 0 and by_uri.returncode == 0, by_uri.stderr
        assert by_path.stdout == by_uri.stdout == data
        assert ctl("cat", "hdfs://namenode.example:8020/data/wh/part-0").stdout == data
        r = ctl("cat", "hdfs://other-nn/data/wh/part-0")
        assert r.returncode == 1 and b"no mount covers hdfs://other-nn/data/wh/part-0" in r.stderr
        r = ctl("ls", "hdfs://namenode.example/data/wh")
        assert r.returncode == 0 and r.stdout.decode().split() == ["part-0"]
        # writes through the front mesh land in the back mesh's store
        w = subprocess.run([*MESHCTL, "--endpoint", front.endpoint, "cp", "-", "hdfs://namenode.example/data/wh/new.txt"],
                           input=b"through two meshes", capture_output=True, timeout=60)
        assert w.returncode == 0, w.stderr
        assert (mesh.store / "wh" / "new.txt").read_bytes() == b"through two meshes"
    finally:
        front.stop()


def test_store_errors_name_mesh_paths(mesh: Mesh) -> None:
    """An under-store's refusal reads in the client's terms: /data/..., not file:///<store>/..."""
    (mesh.store / "e.txt").write_bytes(b"exists")
    for method, path, query in (("PUT", "/data/e.txt/sub", "op=MKDIRS&user.name=alice"),
                                ("GET", "/data/e.txt/x", "op=LISTSTATUS&user.name=alice")):
        _, remote = mesh.remote(method, path, query)
        assert "file://" not in remote["message"] and str(mesh.store) not in remote["message"], remote
        assert "/data/e.txt" in remote["message"], remote
