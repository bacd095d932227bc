"""Secrets at rest: a mount's credentials never in clear text on disk (RocksDB's SST, LOG,
MANIFEST, WAL), in etcd, in the node's log or /metrics; errors name mesh paths, never the
store's URL, bucket or directory. Real meshd processes, a real S3 endpoint, a real etcd."""

from __future__ import annotations

import io
import json
import os
import stat
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import s3server
from tests.conftest import cluster_args, wait_members, wait_until
from tests.conftest_s3 import S3Bucket
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

DATA = b"secret-free bytes\n" * 1000


def mount_flag(path: str, bucket: S3Bucket, **extra: str) -> str:
    opts = {**bucket.options, **extra}
    return f"{path}={bucket.uri()}," + ",".join(f"{k}={v}" for k, v in opts.items())


def upload(server: S3Server, bucket: str, key: str, data: bytes) -> None:
    c = server.client()
    c.upload_fileobj(io.BytesIO(data), bucket, key)
    c.close()


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``root`` (RocksDB's SST, LOG, MANIFEST, WAL included) holding a needle."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_socket() or not p.is_file():
                continue
            data = p.read_bytes()
            found += [f"{p}: {n!r}" for n in needles if n in data]
    return found


def metrics(node: MeshdProcess) -> bytes:
    with urllib.request.urlopen(node.http + "/metrics", timeout=10) as r:
        return bytes(r.read())


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, bytes(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_inline_secrets_are_sealed_at_rest_and_survive_a_restart(
    tmp_path: Path, s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    upload(s3_server, s3_bucket.name, "a/obj.bin", DATA)
    secret, access = s3_bucket.options["secret_key"], s3_bucket.options["access_key"]
    needles = [secret.encode(), access.encode()]
    d = tmp_path / "node"
    node = MeshdProcess(d, [mount_flag("/s3", s3_bucket)]).start()
    try:
        assert node.client().cat("/s3/a/obj.bin") == DATA
        # a second mount, added over gRPC (meshctl) with the secret inline
        r = node.ctl("mount", "add", "/s3b", s3_bucket.uri(), *(x for k, v in s3_bucket.options.items()
                                                                 for x in ("-o", f"{k}={v}")))
        assert r.returncode == 0, r.stderr
        assert node.client().cat("/s3b/a/obj.bin") == DATA
        ls = node.ctl("mount", "ls", check=True).stdout
        assert b"secret_key=***" in ls and b"access_key=***" in ls and not any(n in ls for n in needles)
        assert not any(n in metrics(node) for n in needles)
    finally:
        node.stop()
    key = d / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not (d / "meta" / "secrets.key").exists()  # the key is not inside the RocksDB directory
    assert list((d / "meta").iterdir()), "RocksDB wrote nothing?"
    assert files_holding(d, needles) == []
    assert not any(n in node.log.read_bytes() for n in needles)
    # the node restarts from its own table (no --mount) and opens the mounts with the key
    again = MeshdProcess(d).start()
    try:
        with again.client() as c:
            assert c.cat("/s3/a/obj.bin") == DATA and c.cat("/s3b/a/obj.bin") == DATA
    finally:
        again.stop()
    assert files_holding(d, needles) == [] and not any(n in again.log.read_bytes() for n in needles)
    # without its key the node cannot read the mounts' secrets: each says so, naming the mount
    key.rename(tmp_path / "moved.key")
    keyless = MeshdProcess(d, ["/local=file://" + str(tmp_path)]).start()
    try:
        r = keyless.ctl("cat", "/s3/a/obj.bin")
        err = r.stderr.decode()
        assert r.returncode != 0 and "/s3" in err and "secrets key" in err, err
        assert "Traceback" not in err and not any(n.decode() in err for n in needles)
        (tmp_path / "plain.txt").write_bytes(b"still served")
        assert keyless.client().cat("/local/plain.txt") == b"still served"  # the other mount serves
    finally:
        keyless.stop()


def test_secret_references_from_a_file_and_the_environment(
    tmp_path: Path, s3_server: S3Server, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(s3_server, s3_bucket.name, "obj", DATA)
    secret, access = s3_bucket.options["secret_key"], s3_bucket.options["access_key"]
    secret_file = tmp_path / "s3.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    var = f"MESH_TEST_AK_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(var, access)  # the node's environment (MeshdProcess passes it on)
    d = tmp_path / "node"
    node = MeshdProcess(d).start()
    try:
        r = node.ctl("mount", "add", "/s3", s3_bucket.uri(), "-o", f"endpoint={s3_bucket.endpoint}",
                     "-o", f"region={s3_bucket.options['region']}", "-o", f"secret_key_file={secret_file}",
                     "-o", f"access_key_env={var}")
        assert r.returncode == 0, r.stderr
        assert node.client().cat("/s3/obj") == DATA
        ls = node.ctl("mount", "ls", "--json", check=True).stdout
        (m,) = [m for m in json.loads(ls) if m["path"] == "/s3"]
        assert m["options"]["secret_key_file"] == str(secret_file) and m["options"]["access_key_env"] == var
        # a reference that does not resolve is refused with the option's name, not a value
        r = node.ctl("mount", "add", "/bad", s3_bucket.uri(), "-o", f"endpoint={s3_bucket.endpoint}",
                     "-o", f"secret_key_file={tmp_path / 'missing'}", "-o", f"access_key_env={var}")
        err = r.stderr.decode()
        assert r.returncode != 0 and "secret_key_file" in err and "No such file" in err, err
        r = node.ctl("mount", "add", "/bad", s3_bucket.uri(), "-o", f"endpoint={s3_bucket.endpoint}",
                     "-o", f"secret_key_file={secret_file}", "-o", f"access_key_env={var}_UNSET")
        err = r.stderr.decode()
        assert r.returncode != 0 and f"access_key_env names {var}_UNSET, which is not set" in err, err
        assert secret not in err and access not in err
        # a secret given twice is refused
        r = node.ctl("mount", "add", "/bad", s3_bucket.uri(), "-o", "secret_key=x",
                     "-o", f"secret_key_file={secret_file}", "-o", "access_key=y")
        assert r.returncode != 0 and b"both give secret_key" in r.stderr, r.stderr
    finally:
        node.stop()
    assert files_holding(d, [secret.encode(), access.encode()]) == []
    again = MeshdProcess(d).start()  # the references are resolved again on restart
    try:
        assert again.client().cat("/s3/obj") == DATA
    finally:
        again.stop()


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """An S3 endpoint of this test alone (it is stopped in the middle of the test)."""
    server = s3server.start(auth=True)
    yield server
    server.stop()


def test_store_failures_name_mesh_paths_only(
    meshd: Callable[..., MeshdProcess], tmp_path: Path, own_s3: S3Server
) -> None:
    bucket = f"hidden-bucket-{uuid.uuid4().hex[:8]}"
    c = own_s3.client()
    c.create_bucket(Bucket=bucket)
    c.close()
    upload(own_s3, bucket, "cached.bin", DATA)
    upload(own_s3, bucket, "cold.bin", DATA)
    store = tmp_path / "hidden-store-dir"
    store.mkdir()
    (store / "gone.txt").write_bytes(b"soon gone")
    # a WebHDFS NameNode: another mesh node's gateway, serving a directory as /hdfsroot
    hdfs_dir = tmp_path / "hidden-hdfs-dir"
    hdfs_dir.mkdir()
    (hdfs_dir / "cold.bin").write_bytes(DATA)
    namenode = meshd([f"/hdfsroot=file://{hdfs_dir}"])
    opts = own_s3.options()
    node = meshd([f"/s3=s3://{bucket},sync_interval=-1,max_attempts=1,connect_timeout=2," + ",".join(f"{k}={v}" for k, v in opts.items()),
                  f"/local=file://{store},sync_interval=-1",
                  f"/h=hdfs://127.0.0.1/hdfsroot,endpoint={namenode.endpoints['webhdfs']},sync_interval=-1"],
                 ["--s3-allow-anonymous"])
    with node.client() as client:
        assert client.stat("/s3/cold.bin").size == len(DATA)  # known, not cached
        assert client.stat("/local/gone.txt").size == 9
        assert client.stat("/h/cold.bin").size == len(DATA)
    # the NameNode's own message names its path: translated to the mesh path
    (hdfs_dir / "gone.bin").write_bytes(b"x")
    with node.client() as client:
        assert client.stat("/h/gone.bin").size == 1
    (hdfs_dir / "gone.bin").unlink()
    for text in (node.ctl("cat", "/h/gone.bin").stderr.decode(),
                 http_get(node.endpoints["webhdfs"] + "/webhdfs/v1/h/gone.bin?op=OPEN")[1].decode()):
        assert "/h/gone.bin" in text and "FileNotFound" in text and "hdfsroot" not in text, text
    (store / "gone.txt").unlink()
    own_s3.stop()  # the S3 endpoint goes away
    namenode.stop()  # and the NameNode
    port = own_s3.endpoint.rsplit(":", 1)[1]
    nn_port = namenode.endpoints["webhdfs"].rsplit(":", 1)[1]
    forbidden = [bucket, str(store), "hidden", own_s3.endpoint, f":{port}", opts["secret_key"], opts["access_key"],
                 "s3://", "file://", "hdfs://", "hdfsroot", f":{nn_port}"]
    cases = {"/s3/cold.bin": "unreachable", "/local/gone.txt": "no such file", "/h/cold.bin": "unreachable"}
    for mesh_path, why in cases.items():
        answers = {}
        r = node.ctl("cat", mesh_path)
        assert r.returncode != 0
        answers["meshctl"] = r.stderr.decode()
        status, body = http_get(node.http + "/v1/files" + mesh_path)
        assert status >= 400
        answers["http"] = body.decode()
        status, body = http_get(node.endpoints["webhdfs"] + "/webhdfs/v1" + mesh_path + "?op=OPEN")
        assert status >= 400
        answers["webhdfs"] = body.decode()
        status, body = http_get(node.endpoints["s3"] + mesh_path)
        assert status >= 400
        answers["s3"] = body.decode()
        for front, text in answers.items():
            assert "Traceback" not in text, (front, text)
            leaked = [f for f in forbidden if f in text]
            assert not leaked, (front, leaked, text)
        for front in ("meshctl", "http", "webhdfs"):  # the fronts that carry a message name the mesh path
            assert mesh_path in answers[front] and why in answers[front].lower(), (front, answers[front])
    log = node.log.read_text()
    assert opts["secret_key"] not in log and opts["access_key"] not in log
    assert opts["secret_key"].encode() not in metrics(node)


def test_cluster_mount_secrets_in_etcd_are_sealed(
    cluster: Callable[..., list[MeshdProcess]], etcd: EtcdProcess, tmp_path: Path,
    s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    upload(s3_server, s3_bucket.name, "obj", DATA)
    secret, access = s3_bucket.options["secret_key"], s3_bucket.options["access_key"]
    a, b = cluster(2, etcd, name="sec")
    r = a.ctl("mount", "add", "/s3", s3_bucket.uri(), *(x for k, v in s3_bucket.options.items()
                                                         for x in ("-o", f"{k}={v}")))
    assert r.returncode == 0, r.stderr
    value = etcd.ctl("get", "/mesh/sec/mounts/s3", "--print-value-only")
    assert "enc:v1:" in value and secret not in value and access not in value, value
    with b.client() as c:  # the second node opens the store with the shared key
        assert c.cat("/s3/obj") == DATA
    assert files_holding(etcd.data_dir, [secret.encode(), access.encode()]) == []  # etcd's WAL and db
    # an entry an older version wrote in clear text: read, and written back sealed (its old
    # revision stays in etcd's history until the operator compacts it)
    legacy = {"path": "/legacy", "uri": s3_bucket.uri(), "options": s3_bucket.options}
    etcd.ctl("put", "/mesh/sec/mounts/legacy", json.dumps(legacy))
    wait_until(lambda: etcd.ctl("get", "/mesh/sec/mounts/legacy", "--print-value-only"),
               lambda v: "enc:v1:" in v and secret not in v and access not in v, 30, "legacy entry resealed")
    with b.client() as c:
        assert c.cat("/legacy/obj") == DATA
    # a node of the cluster without the key file: inline secrets refused, naming both ways
    args = cluster_args(etcd, "sec", "r2")
    i = args.index("--secrets-key-file")
    del args[i:i + 2]
    keyless = MeshdProcess(tmp_path / "keyless", [], args, command="run").start()
    try:
        r = keyless.ctl("mount", "add", "/s3x", s3_bucket.uri(), *(x for k, v in s3_bucket.options.items()
                                                                   for x in ("-o", f"{k}={v}")))
        err = r.stderr.decode()
        assert r.returncode != 0 and "secrets_key_file" in err and "secret_key_file=/path" in err \
            and "secret_key_env=" in err and secret not in err, err
        # its own store of the shared mount cannot open: it says so, naming the mount
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "f").write_bytes(b"plain")
        a.ctl("mount", "add", "/plain", f"file://{tmp_path / 'shared'}", check=True)
        with keyless.client() as c:
            paths_seen = {m.path for m in c.mounts()}
        assert "/s3" in paths_seen
        r = keyless.ctl("cat", "/s3/obj")
        err = r.stderr.decode()
        assert r.returncode != 0 and "/s3" in err and "secrets key" in err and "Traceback" not in err, err
        assert keyless.client().cat("/plain/f") == b"plain"  # the other mounts serve
    finally:
        keyless.stop()
    wait_members([a, b], 2)
    for n in (a, b, keyless):
        assert not any(x in n.log.read_text() for x in (secret, access))
        assert files_holding(n.data_dir, [secret.encode(), access.encode()]) == []
