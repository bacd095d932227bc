"""Write-back through every front end, per request where the front end can say it: the S3
gateway (``x-mesh-write-mode`` on PutObject, CopyObject and CreateMultipartUpload), WebHDFS
(``writemode=`` on CREATE and APPEND), ``MeshClient.put(writeback=)``, ``mesh://``
(``write_mode``), ``meshctl cp --write-back`` and meshfs ``--write-mode back``; and the
operator commands ``meshctl writeback status`` and ``flush``.

Real processes: one meshd (S3 and WebHDFS gateways on) over a real S3 endpoint (moto, its
own process here), boto3, requests, meshctl, a kernel FUSE mount. A write is proved
write-back by pausing the under-store (SIGSTOP of the S3 server): the front end's answer
comes anyway, the node lists the write as pending, readers see it, and the store does
not have it until the store runs again and ``meshctl writeback flush --wait`` returns.
A write-through write under a paused store would not answer at all: every such call runs
under :func:`answered`, which fails the test (and resumes the store) instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import fsspec
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from meshd.client.sdk import MeshClient
from meshd.errors import InvalidArgument
from tests import s3server
from tests.fuse_proc import MeshfsProcess, force_unmount
from tests.meshd_proc import MeshdProcess

AK, SK = "wbfront", "wbfront-secret"
REGION = "us-east-1"
T = TypeVar("T")


class Env:
    def __init__(self, store: s3server.S3Server, bucket: str, node: MeshdProcess, base: Path) -> None:
        self.store, self.bucket, self.node, self.base = store, bucket, node, base
        self.direct = store.client()  # the under-store itself, not through the mesh
        self.s3 = _gateway_client(node.endpoints["s3"])
        self.webhdfs = node.endpoints["webhdfs"].rstrip("/")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The under-store stops answering (its process stopped) until the block ends."""
        os.kill(self.store.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.store.process.pid, signal.SIGCONT)

    def in_store(self, key: str) -> bytes | None:
        try:
            return bytes(self.direct.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def status(self) -> dict[str, Any]:
        r = self.node.ctl("writeback", "status", "--json", check=True)
        got: dict[str, Any] = json.loads(r.stdout)
        return got

    def pending(self) -> set[str]:
        return {f["path"] for f in self.status()["files"]}

    def flush(self, path: str) -> None:
        r = self.node.ctl("writeback", "flush", path, "--wait", "--timeout", "60")
        assert r.returncode == 0, r.stderr.decode()


def _gateway_client(url: str) -> Any:
    conf = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                  retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=AK, aws_secret_access_key=SK,
                        region_name=REGION, config=conf)


def _with_mode(client: Any, mode: str) -> Any:
    """``client`` sending ``x-mesh-write-mode: mode`` on every request."""
    def add(request: Any, **_: Any) -> None:
        request.headers["x-mesh-write-mode"] = mode

    client.meta.events.register_first("before-sign.s3.*", add)
    return client


def answered(fn: Callable[[], T], what: str, env: Env | None = None, limit: float = 30.0) -> T:
    """``fn()``, which must answer while the under-store is paused (a write-through call
    would wait for the store): fails, after resuming the store, if it does not."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as e:
            out.append(("err", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if not out:
        if env is not None:
            os.kill(env.store.process.pid, signal.SIGCONT)
        t.join(60)
        pytest.fail(f"{what} did not answer while the under-store was paused: it waited for the store")
    kind, value = out[0]
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("wbfront")
    store = s3server.start(auth=False)
    bucket = f"wb-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    # sync_interval: the buckets' (mount roots') statuses are kept, so a PutObject's bucket check
    # does not ask the paused store (with 0, every request stats the mount root in the store)
    opts = ",".join(f"{k}={v}" for k, v in store.options().items()) + ",sync_interval=3600"
    node = MeshdProcess(base / "node", [f"/ckpt=s3://{bucket}/t,{opts}",
                                        f"/ckptb=s3://{bucket}/b,{opts},write_mode=back"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK]).start()
    try:
        yield Env(store, bucket, node, base)
    finally:
        node.stop()
        store.stop()


# ----------------------------------------------------------------------------- S3


def test_s3_put_write_back_keeps_etag_type_and_metadata_across_the_upload(env: Env) -> None:
    s3 = _with_mode(_gateway_client(env.node.endpoints["s3"]), "back")
    body = os.urandom(300_000)
    env.s3.put_object(Bucket="ckpt", Key="warm", Body=b"w")  # the bucket's status, known before the pause
    with env.paused():
        put = answered(lambda: s3.put_object(Bucket="ckpt", Key="s3/a.bin", Body=body, ContentType="x/ckpt",
                                             Metadata={"step": "42"}), "PutObject (back)", env)
        assert "/ckpt/s3/a.bin" in env.pending()
        head = answered(lambda: env.s3.head_object(Bucket="ckpt", Key="s3/a.bin"), "HeadObject", env)
        got = answered(lambda: env.s3.get_object(Bucket="ckpt", Key="s3/a.bin")["Body"].read(), "GetObject", env)
        assert got == body
    assert head["ETag"] == put["ETag"]
    assert head["ContentType"] == "x/ckpt" and head["Metadata"] == {"step": "42"}
    env.flush("/ckpt/s3")
    assert env.in_store("t/s3/a.bin") == body
    after = env.s3.head_object(Bucket="ckpt", Key="s3/a.bin")
    assert (after["ETag"], after["ContentType"], after["Metadata"]) == (head["ETag"], "x/ckpt", {"step": "42"})
    assert "/ckpt/s3/a.bin" not in env.pending()
    with MeshClient(env.node.endpoint) as c:
        assert not c.stat("/ckpt/s3/a.bin").version.startswith("wb:")


def test_s3_write_through_header_overrides_a_write_back_mount(env: Env) -> None:
    s3 = _with_mode(_gateway_client(env.node.endpoints["s3"]), "through")
    s3.put_object(Bucket="ckptb", Key="thru.bin", Body=b"through")
    assert env.in_store("b/thru.bin") == b"through"  # in the store when the PUT answered


def test_s3_bad_write_mode_is_invalid_argument(env: Env) -> None:
    s3 = _with_mode(_gateway_client(env.node.endpoints["s3"]), "sideways")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="ckpt", Key="bad.bin", Body=b"x")
    assert e.value.response["Error"]["Code"] == "InvalidArgument"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket="ckpt", Key="bad.bin")
    assert e.value.response["Error"]["Code"] == "InvalidArgument"
    assert env.in_store("t/bad.bin") is None


def test_s3_multipart_remembers_the_write_mode_until_complete(env: Env) -> None:
    s3b = _with_mode(_gateway_client(env.node.endpoints["s3"]), "back")
    up = s3b.create_multipart_upload(Bucket="ckpt", Key="mp.bin", ContentType="x/mp")["UploadId"]
    p1, p2 = os.urandom(5 << 20), os.urandom(1000)
    # the parts and the completion carry no header: the upload remembers it
    e1 = env.s3.upload_part(Bucket="ckpt", Key="mp.bin", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = env.s3.upload_part(Bucket="ckpt", Key="mp.bin", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
    with env.paused():
        done = answered(lambda: env.s3.complete_multipart_upload(Bucket="ckpt", Key="mp.bin", UploadId=up,
                                                                 MultipartUpload=parts), "Complete (back)", env)
        assert "/ckpt/mp.bin" in env.pending()
        head = answered(lambda: env.s3.head_object(Bucket="ckpt", Key="mp.bin"), "HeadObject", env)
    assert done["ETag"].endswith('-2"') and head["ETag"] == done["ETag"] and head["ContentType"] == "x/mp"
    env.flush("/ckpt/mp.bin")
    assert env.in_store("t/mp.bin") == p1 + p2
    after = env.s3.head_object(Bucket="ckpt", Key="mp.bin")
    assert (after["ETag"], after["ContentType"], after["ContentLength"]) == (done["ETag"], "x/mp", len(p1 + p2))


def test_s3_copy_object_write_back(env: Env) -> None:
    env.s3.put_object(Bucket="ckpt", Key="src.bin", Body=b"copy me")
    assert env.s3.get_object(Bucket="ckpt", Key="src.bin")["Body"].read() == b"copy me"  # cached: the copy reads no store
    s3b = _with_mode(_gateway_client(env.node.endpoints["s3"]), "back")
    with env.paused():
        answered(lambda: s3b.copy_object(Bucket="ckpt", Key="dst.bin", CopySource={"Bucket": "ckpt", "Key": "src.bin"}),
                 "CopyObject (back)", env)
        assert "/ckpt/dst.bin" in env.pending()
    env.flush("/ckpt/dst.bin")
    assert env.in_store("t/dst.bin") == b"copy me"


# ----------------------------------------------------------------------------- WebHDFS


def _webhdfs(env: Env, method: str, path: str, op: str, data: bytes | None = None, **params: str) -> Any:
    r = requests.request(method, f"{env.webhdfs}/webhdfs/v1{path}", params={"op": op, "user.name": "alice",
                                                                            **params}, allow_redirects=False,
                         timeout=60)
    if r.status_code == 307:
        r = requests.request(method, r.headers["Location"], data=data, timeout=60)
    return r


def test_webhdfs_create_and_append_write_back(env: Env) -> None:
    # CREATE asks whether the name is taken (HDFS's overwrite=false): a new name asks the
    # store, so the file exists (its status kept) before the store pauses
    assert _webhdfs(env, "PUT", "/ckpt/h/x.bin", "CREATE", b"old", overwrite="true").status_code == 201
    with env.paused():
        r = answered(lambda: _webhdfs(env, "PUT", "/ckpt/h/x.bin", "CREATE", b"hello ", writemode="back",
                                      overwrite="true"), "CREATE (back)", env)
        assert r.status_code == 201, r.text
        r = answered(lambda: _webhdfs(env, "POST", "/ckpt/h/x.bin", "APPEND", b"world", writemode="back"),
                     "APPEND (back)", env)
        assert r.status_code == 200, r.text
        assert "/ckpt/h/x.bin" in env.pending()
        got = answered(lambda: requests.get(f"{env.webhdfs}/webhdfs/v1/ckpt/h/x.bin",
                                            params={"op": "OPEN", "user.name": "alice"}, timeout=60).content,
                       "OPEN", env)
        assert got == b"hello world"
    env.flush("/ckpt/h")
    assert env.in_store("t/h/x.bin") == b"hello world"


def test_webhdfs_bad_writemode_is_illegal_argument(env: Env) -> None:
    for op, method in (("CREATE", "PUT"), ("APPEND", "POST")):
        r = _webhdfs(env, method, "/ckpt/h/bad.bin", op, b"x", writemode="later")
        assert r.status_code == 400, r.text
        assert r.json()["RemoteException"]["exception"] == "IllegalArgumentException"
        assert "writemode" in r.json()["RemoteException"]["message"]


# ----------------------------------------------------------------------------- clients, meshctl


def test_client_fsspec_and_meshctl_cp_write_back(env: Env) -> None:
    local = env.base / "local.bin"
    local.write_bytes(b"from meshctl")
    fs = fsspec.filesystem("mesh", endpoint=env.node.endpoint, write_mode="back", skip_instance_cache=True)
    fs_through = fsspec.filesystem("mesh", endpoint=env.node.endpoint, skip_instance_cache=True)
    with MeshClient(env.node.endpoint) as c:
        c.stat("/ckpt")
        with env.paused():
            answered(lambda: c.put("/ckpt/c/sdk.bin", b"from the sdk", writeback=True), "put(writeback=True)", env)
            r = answered(lambda: env.node.ctl("cp", "--write-back", str(local), "mesh:/ckpt/c/ctl.bin"),
                         "meshctl cp --write-back", env)
            assert r.returncode == 0, r.stderr.decode()
            answered(lambda: fs.pipe_file("/ckpt/c/fs.bin", b"from fsspec"), "mesh:// write_mode=back", env)

            def per_open() -> None:
                with fs_through.open("/ckpt/c/open.bin", "wb", write_mode="back") as f:
                    f.write(b"per open")

            answered(per_open, "open(wb, write_mode=back)", env)
            assert {"/ckpt/c/sdk.bin", "/ckpt/c/ctl.bin", "/ckpt/c/fs.bin", "/ckpt/c/open.bin"} <= env.pending()
            assert answered(lambda: c.cat("/ckpt/c/ctl.bin"), "cat", env) == b"from meshctl"
            # flush --wait cannot finish while the store is paused: exit 1, and why
            r = env.node.ctl("writeback", "flush", "/ckpt/c", "--wait", "--timeout", "1")
            assert r.returncode == 1 and b"still being uploaded" in r.stderr, r.stderr
            # the human status names the mount and its pending files
            out = env.node.ctl("writeback", "status", check=True).stdout.decode()
            assert "/ckpt" in out and "pending" in out
        env.flush("/ckpt/c")
    for name, body in (("sdk", b"from the sdk"), ("ctl", b"from meshctl"), ("fs", b"from fsspec"),
                       ("open", b"per open")):
        assert env.in_store(f"t/c/{name}.bin") == body, name
    fs_through.pipe_file("/ckpt/c/thru.bin", b"t")
    assert env.in_store("t/c/thru.bin") == b"t"


def test_meshctl_usage_errors(env: Env) -> None:
    r = env.node.ctl("cp", "--write-back", "mesh:/ckpt/warm", str(env.base / "out.bin"))
    assert r.returncode == 1 and b"copies into the mesh" in r.stderr
    r = env.node.ctl("cp", "--write-back", "--write-through", "a", "mesh:/ckpt/x")
    assert r.returncode == 2
    r = env.node.ctl("writeback", "flush", "/ckpt", "--timeout", "5")
    assert r.returncode == 1 and b"--timeout needs --wait" in r.stderr
    with pytest.raises(ValueError, match="back"):
        fsspec.filesystem("mesh", endpoint=env.node.endpoint, write_mode="sometimes", skip_instance_cache=True)
    r = env.node.ctl("writeback", "flush", "/ckpt")  # nothing pending: returns at once
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- meshfs


def test_meshfs_write_mode_back(env: Env) -> None:
    mnt = env.base / "mnt"
    fs = MeshfsProcess(mnt, env.node.endpoint, ["--write-mode", "back", "--ttl", "0"]).start()
    try:
        body = os.urandom(3 << 20)
        path = mnt / "ckpt" / "m.bin"
        f = open(path, "wb")  # created, not committed: the store is asked nothing at close but the commit
        f.write(body)
        g = open(mnt / "ckpt" / "synced.bin", "wb")
        g.write(b"fsynced")
        with env.paused():
            answered(f.close, "close on meshfs --write-mode back", env)
            answered(lambda: os.fsync(g.fileno()), "fsync on meshfs --write-mode back", env)
            assert {"/ckpt/m.bin", "/ckpt/synced.bin"} <= env.pending()
            answered(g.close, "close after fsync", env)
            before = answered(lambda: os.stat(path), "stat", env)
            assert answered(path.read_bytes, "read on the same mount", env) == body
            assert answered(lambda: env.s3.get_object(Bucket="ckpt", Key="m.bin")["Body"].read(),
                            "GetObject", env) == body
            held = open(path, "rb")
            assert held.read(1000) == body[:1000]
        try:
            env.flush("/ckpt")
            assert env.in_store("t/m.bin") == body and env.in_store("t/synced.bin") == b"fsynced"
            with MeshClient(env.node.endpoint) as c:
                assert not c.stat("/ckpt/m.bin").version.startswith("wb:")
            after = os.stat(path)
            assert (after.st_size, after.st_mtime) == (before.st_size, before.st_mtime)
            assert held.read() == body[1000:]  # the fd held across the switch reads the same bytes
        finally:
            held.close()
        # the commits handed the staged files over the local socket (no copy through it) ...
        status = json.loads(env.node.ctl("writeback", "status", "--json", check=True).stdout)
        assert status["handed_over"] >= 2
        staging = Path("/var/tmp") / f"meshfs-staging-{os.getuid()}"
        if os.stat(staging).st_dev == os.stat(env.node.data_dir).st_dev:
            assert status["linked"] >= 2  # ... and the node kept them as its spool: written once
        # ... so a write after a commit goes to a copy: the committed version stays as it was
        cow = mnt / "ckpt" / "cow.bin"
        with open(cow, "wb") as h, MeshClient(env.node.endpoint) as c:
            h.write(b"first")
            h.flush()
            os.fsync(h.fileno())
            v1 = c.stat("/ckpt/cow.bin").version
            h.seek(0)
            h.write(b"XX")
            h.flush()
            assert c.read_pinned("/ckpt/cow.bin", 0, 5, version=v1, size=5) == b"first"
        env.flush("/ckpt")
        assert env.in_store("t/cow.bin") == b"XXrst"
    finally:
        fs.stop()
        force_unmount(mnt)


def test_s3_attributes_of_many_small_write_back_puts_survive_their_upload(env: Env) -> None:
    """Small objects upload fast: the gateway records ETag, type and metadata for the
    pending version right after the write returns, maybe after the upload landed."""
    s3 = _with_mode(_gateway_client(env.node.endpoints["s3"]), "back")
    for i in range(40):
        s3.put_object(Bucket="ckpt", Key=f"many/{i}", Body=b"%d" % i, ContentType="x/many", Metadata={"i": str(i)})
    env.flush("/ckpt/many")
    for i in range(40):
        h = env.s3.head_object(Bucket="ckpt", Key=f"many/{i}")
        assert (h["ContentType"], h["Metadata"]) == ("x/many", {"i": str(i)}), i


# ----------------------------------------------------------------------------- a full spool disk


@pytest.fixture
def full_spool(tmp_path: Path) -> Iterator[MeshdProcess]:
    """A node whose write-back spool is a 4 MiB tmpfs, over a file:// store written back."""
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool)], check=True)
    config = tmp_path / "meshd.yaml"
    config.write_text(f"writeback:\n  dir: {spool}\n")
    node = MeshdProcess(tmp_path / "node", [f"/w={store.as_uri()},write_mode=back"],
                        ["--config", str(config), "--s3-access-key", AK, "--s3-secret-key", SK]).start()
    try:
        yield node
    finally:
        node.stop()
        for _ in range(50):
            if subprocess.run(["umount", str(spool)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(spool)], check=True)


def test_no_space_on_the_spool_disk_is_each_protocols_error(full_spool: MeshdProcess, tmp_path: Path) -> None:
    node, big = full_spool, os.urandom(6 << 20)
    s3 = _gateway_client(node.endpoints["s3"])
    s3.put_object(Bucket="w", Key="warm", Body=b"w")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="w", Key="big.bin", Body=big)
    assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    r = requests.put(f"{node.endpoints['webhdfs'].rstrip('/')}/webhdfs/v1/w/big2.bin",
                     params={"op": "CREATE", "user.name": "alice", "datanode": "true"}, data=big, timeout=60)
    assert r.status_code == 403 and r.json()["RemoteException"]["exception"] == "DSQuotaExceededException", r.text
    local = tmp_path / "big.bin"
    local.write_bytes(big)
    r = node.ctl("cp", str(local), "mesh:/w/big3.bin")
    assert r.returncode == 1 and b"NoSpace" in r.stderr, r.stderr
    # nothing of them is visible, and the node takes writes that fit
    with MeshClient(node.endpoint) as c:
        assert sorted(s.path for s in c.ls("/w")) == ["/w/warm"]
        c.put("/w/small.bin", b"fits")
        assert c.cat("/w/small.bin") == b"fits"


def test_put_with_a_size_sends_exactly_that_many_bytes(env: Env) -> None:
    """``size`` (meshfs passes the staged file's) is sent as Content-Length: the node can
    reserve the spool room at once. Data that disagrees is refused and nothing is written."""
    with MeshClient(env.node.endpoint) as c:
        for chunks in ([b"ab"], [b"abcd"]):
            with pytest.raises(InvalidArgument, match="size given"):
                c.put("/ckptb/sized.bin", iter(chunks), size=3, writeback=True)
        c.put("/ckptb/sized.bin", iter([b"a", b"bc"]), size=3, writeback=True)  # same thread, same client
        assert c.cat("/ckptb/sized.bin") == b"abc"
        assert c.stat("/ckptb/sized.bin").size == 3
