"""Unmodified S3 clients against the gateway of a real ``meshd embedded``, over real sockets.

boto3 (and its transfer manager, presigned URLs, virtual-hosted addressing), the aws
CLI, s3fs, pyarrow's S3 file system and the minio client each round-trip data through
the gateway, byte-exactly (sha256), into two buckets of one node:

* ``data``: a mount of a local directory (``file://``);
* ``s3m``: a mount of a bucket of a real S3 wire-protocol server (moto, in a subprocess).

Every test runs against both. What a client wrote must also be what the under-store
holds: the same bytes in a file at the same path below the directory, or in an object
of the same key in the backing bucket.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest_s3 import _remove_bucket
from tests.data import payload
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

AK = "AKIDCLIENTTEST"
SK = "client/secret+key=7"
REGION = "us-east-1"
MiB = 1 << 20
AWS = Path(sys.executable).parent / "aws"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def multipart_etag(data: bytes, part: int) -> str:
    parts = [data[i:i + part] for i in range(0, len(data), part)]
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


# --------------------------------------------------------------------------- fixtures


@dataclass
class Node:
    proc: MeshdProcess
    directory: Path  # behind bucket "data"
    server: S3Server  # behind bucket "s3m"
    backing: str  # the server's bucket

    @property
    def url(self) -> str:
        return self.proc.endpoints["s3"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("s3clients")
    directory = base / "dir"
    directory.mkdir()
    backing = f"mesh-gw-{uuid.uuid4().hex[:12]}"
    admin = s3_server.client()
    admin.create_bucket(Bucket=backing)
    opts = ",".join(f"{k}={v}" for k, v in s3_server.options().items())
    proc = MeshdProcess(base / "node", [f"/data=file://{directory}", f"/s3m=s3://{backing},{opts}"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount"]).start()
    try:
        yield Node(proc, directory, s3_server, backing)
    finally:
        proc.stop()
        _remove_bucket(admin, backing)
        admin.close()


@dataclass
class Bucket:
    """One gateway bucket and a fresh key prefix of the test in it."""

    node: Node
    name: str  # "data" or "s3m"
    prefix: str  # "<uuid>/"

    @property
    def url(self) -> str:
        return self.node.url

    def stored(self, key: str) -> bytes:
        """The bytes the under-store holds for ``key`` (which includes the prefix)."""
        if self.name == "data":
            return (self.node.directory / key).read_bytes()
        c = self.node.server.client()
        try:
            body: bytes = c.get_object(Bucket=self.node.backing, Key=key)["Body"].read()
            return body
        finally:
            c.close()

    def exists(self, key: str) -> bool:
        if self.name == "data":
            return (self.node.directory / key).exists()
        c = self.node.server.client()
        try:
            c.head_object(Bucket=self.node.backing, Key=key)
            return True
        except ClientError:
            return False
        finally:
            c.close()


@pytest.fixture(params=["data", "s3m"])
def bucket(request: pytest.FixtureRequest, node: Node) -> Bucket:
    return Bucket(node, request.param, f"{uuid.uuid4().hex[:10]}/")


def s3client(url: str, **cfg: Any) -> Any:
    conf = Config(signature_version="s3v4", s3=cfg.pop("s3", {"addressing_style": "path"}),
                  retries={"max_attempts": 1, "mode": "standard"}, **cfg)
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=AK, aws_secret_access_key=SK,
                        region_name=REGION, config=conf)


@pytest.fixture(scope="module")
def s3(node: Node) -> Iterator[Any]:
    c = s3client(node.url)
    yield c
    c.close()


# --------------------------------------------------------------------------- boto3


def test_boto3_basic_round_trip(s3: Any, bucket: Bucket) -> None:
    b, p = bucket.name, bucket.prefix
    data = payload(1_234_567, seed=1)
    r = s3.put_object(Bucket=b, Key=p + "one.bin", Body=data, Metadata={"k": "v"})
    assert r["ETag"] == md5_etag(data)
    s3.put_object(Bucket=b, Key=p + "sub/two.txt", Body=b"two")
    g = s3.get_object(Bucket=b, Key=p + "one.bin")
    assert sha(g["Body"].read()) == sha(data)
    assert g["Metadata"] == {"k": "v"} and g["ETag"] == md5_etag(data)
    h = s3.head_object(Bucket=b, Key=p + "one.bin")
    assert h["ContentLength"] == len(data)
    assert sha(bucket.stored(p + "one.bin")) == sha(data)
    listed = s3.list_objects_v2(Bucket=b, Prefix=p)
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(p + "one.bin", len(data)),
                                                                    (p + "sub/two.txt", 3)]
    top = s3.list_objects_v2(Bucket=b, Prefix=p, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == [p + "one.bin"]
    assert [c["Prefix"] for c in top["CommonPrefixes"]] == [p + "sub/"]
    s3.delete_object(Bucket=b, Key=p + "one.bin")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=b, Key=p + "one.bin")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert not bucket.exists(p + "one.bin")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix=p)["Contents"]] == [p + "sub/two.txt"]


def test_boto3_listing_order_and_outside_writes(s3: Any, bucket: Bucket) -> None:
    """Keys in S3's order whatever the under-store ("a-b" < "a/x" < "a0"), paged one by one;
    an object the under-store got another way is an object too, with a consistent ETag."""
    b, p = bucket.name, bucket.prefix
    keys = [p + k for k in ("a0", "a/x", "a-b", "a/y/z", "b c", "é")]
    for k in keys:
        s3.put_object(Bucket=b, Key=k, Body=k.encode())
    want = sorted(keys, key=lambda k: k.encode())
    got, token = [], None
    for _ in range(20):
        r = s3.list_objects_v2(Bucket=b, Prefix=p, MaxKeys=1, **({"ContinuationToken": token} if token else {}))
        got += [o["Key"] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert got == want
    r = s3.list_objects_v2(Bucket=b, Prefix=p, Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == [p + "a-b", p + "a0", p + "b c", p + "é"]
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == [p + "a/"]
    # written into the under-store directly
    outside = payload(10_000, seed=11)
    if bucket.name == "data":
        (bucket.node.directory / p / "outside.bin").write_bytes(outside)
    else:
        admin = bucket.node.server.client()
        admin.put_object(Bucket=bucket.node.backing, Key=p + "outside.bin", Body=outside)
        admin.close()
    g = s3.get_object(Bucket=b, Key=p + "outside.bin")
    assert sha(g["Body"].read()) == sha(outside)
    etag = g["ETag"]
    if bucket.name == "s3m":
        assert etag == md5_etag(outside)  # the under-store's ETag
    assert s3.head_object(Bucket=b, Key=p + "outside.bin")["ETag"] == etag
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=b, Prefix=p)["Contents"]}
    assert listed[p + "outside.bin"] == etag
    assert s3.get_object(Bucket=b, Key=p + "outside.bin", IfMatch=etag)["ContentLength"] == len(outside)


def test_boto3_transfer_manager_multipart(s3: Any, bucket: Bucket) -> None:
    b, key = bucket.name, bucket.prefix + "big/23mib.bin"
    data = payload(23 * MiB, seed=2)
    up = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), b, key, Config=up)
    h = s3.head_object(Bucket=b, Key=key)
    assert h["ETag"].endswith('-5"')
    assert h["ETag"] == multipart_etag(data, 5 * MiB)
    assert h["ContentLength"] == len(data)
    assert s3.list_multipart_uploads(Bucket=b, Prefix=bucket.prefix).get("Uploads", []) == []
    requests: list[str] = []
    s3.meta.events.register("before-send.s3.GetObject",
                            lambda request, **_: requests.append(request.headers.get("Range", "")))
    down = TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB, max_concurrency=8)
    out = io.BytesIO()
    try:
        s3.download_fileobj(b, key, out, Config=down)
    finally:
        s3.meta.events.unregister("before-send.s3.GetObject")
    assert sha(out.getvalue()) == sha(data)
    assert len(requests) >= 23 and all(requests)  # really ranged, in parallel
    assert sha(bucket.stored(key)) == sha(data)


def test_boto3_presigned_get_and_put(s3: Any, bucket: Bucket) -> None:
    b, key = bucket.name, bucket.prefix + "presigned/ü x.bin"
    data = payload(300_000, seed=3)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": key}, ExpiresIn=300)
    assert "X-Amz-Signature=" in put_url
    req = urllib.request.Request(put_url, data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == md5_etag(data)
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=30) as resp:
        assert sha(resp.read()) == sha(data)
    ranged = urllib.request.Request(get_url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(ranged, timeout=30) as resp:
        assert resp.status == 206 and resp.read() == data[10:20]
    assert sha(bucket.stored(key)) == sha(data)
    # the signature covers the key and the method
    other = get_url.replace("presigned/", "presigned2/")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(other, timeout=30)
    assert e.value.code == 403 and b"SignatureDoesNotMatch" in e.value.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(get_url, data=b"x", method="PUT"), timeout=30)
    assert e.value.code == 403
    assert sha(bucket.stored(key)) == sha(data)
    if bucket.name != "data":
        return  # expiry is the gateway's, whatever the mount: checked once
    old = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": key}, ExpiresIn=1)
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(old, timeout=30)
    assert e.value.code == 403 and b"AccessDenied" in e.value.read()


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 80)
        return True
    except OSError:
        return False


def _signed_raw(url: str, method: str, host: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request to the gateway with ``Host: host``, signed by botocore for that host."""
    req = AWSRequest(method=method, url=f"http://{host}{target}", data=body)
    S3SigV4Auth(Credentials(AK, SK), "s3", REGION).add_auth(req)
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    try:
        # botocore may have put a "host" header in already (newer releases): exactly one goes out
        headers = {k: v for k, v in req.headers.items() if k.lower() != "host"}
        headers["Host"] = host
        conn.request(method, target, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _via_loopback(port: int) -> Callable[..., Any]:
    """A botocore ``before-send`` hook that sends the request, as prepared and signed, to
    127.0.0.1:port with its own Host header (for when BUCKET.localhost does not resolve)."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    class Raw:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
            yield self.data

        def read(self, *_: Any, **__: Any) -> bytes:
            data, self.data = self.data, b""
            return data

    def send(request: Any, **_: Any) -> Any:
        u = urlsplit(request.url)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            headers["Host"] = u.netloc
            body = request.body
            if hasattr(body, "read"):
                body = body.read()
            target = u.path + ("?" + u.query if u.query else "")
            conn.request(request.method, target, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return AWSResponse(request.url, r.status, HTTPHeaders(r.getheaders()), Raw(data))
        finally:
            conn.close()

    return send


def test_boto3_virtual_hosted_addressing(node: Node, bucket: Bucket) -> None:
    b, p = bucket.name, bucket.prefix
    host = f"{b}.localhost:{node.port}"
    data = payload(50_000, seed=4)
    c = s3client(f"http://localhost:{node.port}", s3={"addressing_style": "virtual"})
    urls: list[str] = []
    c.meta.events.register("before-send.s3", lambda request, **_: urls.append(request.url))
    if not _resolves(f"{b}.localhost"):
        c.meta.events.register_last("before-send.s3", _via_loopback(node.port))
    c.put_object(Bucket=b, Key=p + "virtual/obj", Body=data)
    assert sha(c.get_object(Bucket=b, Key=p + "virtual/obj")["Body"].read()) == sha(data)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=b, Prefix=p)["Contents"]]
    assert keys == [p + "virtual/obj"]
    assert all(urlsplit(u).netloc == host for u in urls), urls  # really virtual-hosted
    assert all(not urlsplit(u).path.startswith(f"/{b}/") for u in urls)
    c.close()
    # and the same by hand: raw requests, signed by botocore for Host BUCKET.localhost
    status, _ = _signed_raw(node.url, "PUT", host, f"/{p}virtual/raw", b"raw bytes")
    assert status == 200
    status, body = _signed_raw(node.url, "GET", host, f"/{p}virtual/raw")
    assert (status, body) == (200, b"raw bytes")
    status, body = _signed_raw(node.url, "GET", host, f"/?list-type=2&prefix={p}virtual/")
    assert status == 200 and body.count(b"<Key>") == 2
    assert bucket.stored(p + "virtual/raw") == b"raw bytes"
    assert sha(bucket.stored(p + "virtual/obj")) == sha(data)


# --------------------------------------------------------------------------- aws CLI


def aws(node: Node, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    r = subprocess.run([str(AWS), "--endpoint-url", node.url, *args], env=env, capture_output=True,
                       text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def tree_of(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_aws_cli(node: Node, bucket: Bucket, tmp_path: Path) -> None:
    b, p = bucket.name, bucket.prefix
    big = payload(12 * MiB + 7, seed=5)
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    aws(node, "s3", "cp", str(src), f"s3://{b}/{p}cp/big.bin")  # > 8 MiB: multipart
    assert sha(bucket.stored(p + "cp/big.bin")) == sha(big)
    s3 = s3client(node.url)
    assert s3.head_object(Bucket=b, Key=p + "cp/big.bin")["ETag"].endswith('-2"')
    dst = tmp_path / "down.bin"
    aws(node, "s3", "cp", f"s3://{b}/{p}cp/big.bin", str(dst))
    assert sha(dst.read_bytes()) == sha(big)

    up = tmp_path / "up"
    files = {"a.txt": b"alpha", "dir/b.bin": payload(70_000, 6), "dir/sub/c d.txt": b"with space",
             "dir/sub/ü.txt": "ünïcode".encode(), "empty": b"", "z/y/x/w.txt": b"deep"}
    past = time.time() - 3600  # S3 LastModified has second resolution: no race with "now"
    for rel, data in files.items():
        (up / rel).parent.mkdir(parents=True, exist_ok=True)
        (up / rel).write_bytes(data)
        os.utime(up / rel, (past, past))
    aws(node, "s3", "sync", str(up), f"s3://{b}/{p}sync")
    for rel, data in files.items():
        assert bucket.stored(f"{p}sync/{rel}") == data
    back = tmp_path / "back"
    aws(node, "s3", "sync", f"s3://{b}/{p}sync", str(back))
    assert tree_of(back) == tree_of(up)
    # a second sync has nothing to do
    again = aws(node, "s3", "sync", str(up), f"s3://{b}/{p}sync")
    assert "upload:" not in again.stdout

    ls = aws(node, "s3", "ls", "--recursive", f"s3://{b}/{p}").stdout
    listed = {line.split(None, 3)[3]: int(line.split(None, 3)[2]) for line in ls.splitlines() if line.strip()}
    want = {f"{p}sync/{rel}": len(data) for rel, data in files.items()}
    want[f"{p}cp/big.bin"] = len(big)
    assert listed == want
    top = aws(node, "s3", "ls", f"s3://{b}/{p}").stdout
    assert "PRE cp/" in top and "PRE sync/" in top

    aws(node, "s3", "rm", "--recursive", f"s3://{b}/{p}")
    assert aws(node, "s3", "ls", "--recursive", f"s3://{b}/{p}", check=False).stdout.strip() == ""
    assert s3.list_objects_v2(Bucket=b, Prefix=p).get("Contents", []) == []
    assert not bucket.exists(p + "cp/big.bin")
    s3.close()


# --------------------------------------------------------------------------- s3fs


def test_s3fs(node: Node, bucket: Bucket) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key=AK, secret=SK, client_kwargs={"endpoint_url": node.url, "region_name": REGION},
                           skip_instance_cache=True, use_listings_cache=False)
    b, p = bucket.name, bucket.prefix
    base = f"{b}/{p}".rstrip("/")
    data = payload(3 * MiB + 11, seed=7)
    with fs.open(f"{base}/f/data.bin", "wb", block_size=5 * MiB) as f:
        f.write(data)
    with fs.open(f"{base}/f/small.txt", "wb") as f:
        f.write(b"small file")
    fs.pipe(f"{base}/g/h/piped", b"piped bytes")
    assert sha(bucket.stored(p + "f/data.bin")) == sha(data)
    assert sorted(fs.ls(base)) == [f"{base}/f", f"{base}/g"]
    detail = {e["name"]: e for e in fs.ls(f"{base}/f", detail=True)}
    assert detail[f"{base}/f/data.bin"]["size"] == len(data)
    assert detail[f"{base}/f/small.txt"]["type"] == "file"
    assert fs.info(f"{base}/g")["type"] == "directory"
    assert fs.cat(f"{base}/g/h/piped") == b"piped bytes"
    with fs.open(f"{base}/f/data.bin", "rb", block_size=256 * 1024) as f:
        assert f.read(100) == data[:100]
        f.seek(2 * MiB + 5)
        assert f.read(1000) == data[2 * MiB + 5:2 * MiB + 1005]
        f.seek(-10, 2)
        assert f.read() == data[-10:]
        f.seek(0)
        assert sha(f.read()) == sha(data)
    assert fs.cat_file(f"{base}/f/data.bin", start=5, end=25) == data[5:25]
    assert sorted(fs.find(base)) == [f"{base}/f/data.bin", f"{base}/f/small.txt", f"{base}/g/h/piped"]
    assert fs.exists(f"{base}/f/small.txt") and not fs.exists(f"{base}/f/nope")
    fs.rm(f"{base}/f/small.txt")
    assert not fs.exists(f"{base}/f/small.txt")
    assert not bucket.exists(p + "f/small.txt")
    fs.rm(base, recursive=True)
    assert fs.find(base) == []
    assert not bucket.exists(p + "f/data.bin")


# --------------------------------------------------------------------------- pyarrow


def test_pyarrow_parquet_dataset(node: Node, bucket: Bucket) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    fs = pafs.S3FileSystem(access_key=AK, secret_key=SK, endpoint_override=f"127.0.0.1:{node.port}",
                           scheme="http", region=REGION)
    n = 30_000
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "part": pa.array([f"p{i % 3}" for i in range(n)]),
        "value": pa.array([i * 0.5 for i in range(n)]),
        "text": pa.array([f"row {i} ü" for i in range(n)]),
    })
    base = f"{bucket.name}/{bucket.prefix}ds"
    ds.write_dataset(table, base, filesystem=fs, format="parquet", partitioning=["part"],
                     partitioning_flavor="hive", max_rows_per_file=8_000, max_rows_per_group=4_000)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    assert {f.split("/")[-2] for f in files} == {"part=p0", "part=p1", "part=p2"}
    assert len(files) >= 3
    for f in files:  # the files are real Parquet files in the under-store
        key = f[len(bucket.name) + 1:]
        assert bucket.stored(key)[:4] == b"PAR1"
    back = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive").to_table()
    back = back.select(["id", "part", "value", "text"]).sort_by("id")
    back = back.cast(table.schema) if back.schema != table.schema else back
    assert back.equals(table)
    one = pq.read_table(files[0], filesystem=fs)
    assert one.num_rows > 0
    # a single file written and read by pyarrow's own streams
    with fs.open_output_stream(f"{base}-raw.bin") as out:
        out.write(payload(2 * MiB, seed=8))
    with fs.open_input_file(f"{base}-raw.bin") as f:
        f.seek(MiB)
        assert f.read(100) == payload(2 * MiB, seed=8)[MiB:MiB + 100]
    fs.delete_dir(base)
    assert not bucket.exists(files[0][len(bucket.name) + 1:])


# --------------------------------------------------------------------------- minio


def test_minio_client(node: Node, bucket: Bucket, tmp_path: Path) -> None:
    from minio import Minio
    from minio.error import S3Error as MinioError

    m = Minio(f"127.0.0.1:{node.port}", access_key=AK, secret_key=SK, secure=False)
    b, p = bucket.name, bucket.prefix
    assert m.bucket_exists(b)
    assert not m.bucket_exists("no-such-bucket-here")
    data = payload(700_000, seed=9)
    w = m.put_object(b, p + "m/obj.bin", io.BytesIO(data), len(data), content_type="application/x-m",
                     metadata={"x-amz-meta-who": "minio"})
    assert w.etag == md5_etag(data).strip('"')
    resp = m.get_object(b, p + "m/obj.bin")
    try:
        assert sha(resp.read()) == sha(data)
    finally:
        resp.close()
        resp.release_conn()
    resp = m.get_object(b, p + "m/obj.bin", offset=1000, length=500)
    try:
        assert resp.read() == data[1000:1500]
    finally:
        resp.close()
        resp.release_conn()
    st = m.stat_object(b, p + "m/obj.bin")
    assert st.size == len(data) and st.etag == md5_etag(data).strip('"')
    assert st.content_type == "application/x-m"
    assert st.metadata is not None and st.metadata.get("x-amz-meta-who") == "minio"

    big = payload(12 * MiB + 3, seed=10)
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    m.fput_object(b, p + "m/big.bin", str(src), part_size=5 * MiB)
    st = m.stat_object(b, p + "m/big.bin")
    assert st.size == len(big) and st.etag == multipart_etag(big, 5 * MiB).strip('"')
    dst = tmp_path / "fget.bin"
    m.fget_object(b, p + "m/big.bin", str(dst))
    assert sha(dst.read_bytes()) == sha(big)
    assert sha(bucket.stored(p + "m/big.bin")) == sha(big)

    names = [o.object_name for o in m.list_objects(b, prefix=p, recursive=True)]
    assert names == [p + "m/big.bin", p + "m/obj.bin"]
    top = [(o.object_name, o.is_dir) for o in m.list_objects(b, prefix=p)]
    assert top == [(p + "m/", True)]
    m.remove_object(b, p + "m/obj.bin")
    with pytest.raises(MinioError) as e:
        m.stat_object(b, p + "m/obj.bin")
    assert e.value.code in ("NoSuchKey", "ResponseCode(404)") or "404" in str(e.value) or "NoSuchKey" in str(e.value)
    assert not bucket.exists(p + "m/obj.bin")
    m.remove_object(b, p + "m/big.bin")
    assert list(m.list_objects(b, prefix=p, recursive=True)) == []
