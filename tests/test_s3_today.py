"""S3 as today's clients speak it: the gateway's answers where they used to differ from AWS's.

One test per defect of issue 24 ("Wrong today", "Multipart details"), each against a real
``meshd embedded`` serving a local directory at ``/`` (so buckets can be created), driven by
real clients: boto3 (current, default checksums), the aws CLI, minio-py, and raw HTTP where
a client cannot send what is tested (non-ASCII header bytes, a negative Content-Length).
Expected values come from AWS's documentation (cited in each test), not from the gateway.
"""

from __future__ import annotations

import email.header
import gzip
import hashlib
import hmac
import http.client
import io
import os
import socket
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.data import payload
from tests.meshd_proc import MeshdProcess

AK, SK, REGION = "AKIDTODAY", "today/secret+Key=24", "us-east-1"
MiB = 1 << 20
EMPTY_MD5 = '"d41d8cd98f00b204e9800998ecf8427e"'
AWS = Path(sys.executable).parent / "aws"


@dataclass
class Node:
    proc: MeshdProcess
    root: Path  # the directory mounted at "/"

    @property
    def url(self) -> str:
        return self.proc.endpoints["s3"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("today")
    root = base / "root"
    root.mkdir()
    proc = MeshdProcess(base / "node", [f"/=file://{root}"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount"]).start()
    try:
        yield Node(proc, root)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def s3(node: Node) -> Iterator[Any]:
    c = boto3.client("s3", endpoint_url=node.url, aws_access_key_id=AK, aws_secret_access_key=SK,
                     region_name=REGION, config=Config(s3={"addressing_style": "path"},
                                                       retries={"max_attempts": 1, "mode": "standard"}))
    yield c
    c.close()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def err(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def raw_headers(r: dict[str, Any]) -> dict[str, str]:
    return dict(r["ResponseMetadata"]["HTTPHeaders"])


def signed_put(url: str, target: str, headers: dict[str, bytes], body: bytes) -> tuple[int, bytes]:
    """A SigV4-signed PUT whose header values go out as the exact bytes given (botocore
    signs text, so it cannot sign a header of non-UTF-8 bytes): S3 signs the bytes sent."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{now[:8]}/{REGION}/s3/aws4_request"
    u = urlsplit(url)
    h = {k.lower(): v for k, v in headers.items()}
    h.update({"host": u.netloc.encode(), "x-amz-date": now.encode(), "x-amz-content-sha256": b"UNSIGNED-PAYLOAD"})
    names = sorted(h)
    canonical = b"\n".join([b"PUT", target.encode(), b"", b"".join(n.encode() + b":" + h[n].strip() + b"\n"
                                                                    for n in names),
                            ";".join(names).encode(), b"UNSIGNED-PAYLOAD"])
    to_sign = f"AWS4-HMAC-SHA256\n{now}\n{scope}\n{hashlib.sha256(canonical).hexdigest()}".encode()
    key = ("AWS4" + SK).encode()
    for part in (now[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign, hashlib.sha256).hexdigest()
    h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={';'.join(names)}, "
                          f"Signature={signature}").encode()
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.putrequest("PUT", target, skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def aws(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    r = subprocess.run([str(AWS), "--endpoint-url", node.url, *args], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"aws {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


# ---------------------------------------------------------------- 1. prefixes no key can have


def test_prefixes_that_no_key_can_start_with_list_nothing(s3: Any, bucket: str) -> None:
    for k in ("a/b", "a/c/d", "top"):
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    for prefix in ("/", "//", "/a", "/a/b", "a//", "a//b", "a/./", "a/../", "./a"):
        for delimiter in ("", "/"):
            v2 = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter=delimiter)
            assert (v2["KeyCount"], v2.get("Contents"), v2.get("CommonPrefixes")) == (0, None, None), prefix
            v1 = s3.list_objects(Bucket=bucket, Prefix=prefix, Delimiter=delimiter)
            assert (v1.get("Contents"), v1.get("CommonPrefixes")) == (None, None), prefix
            versions = s3.list_object_versions(Bucket=bucket, Prefix=prefix, Delimiter=delimiter)
            assert versions.get("Versions") is None, prefix
    # prefixes keys do start with still list them
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]] == ["a/b", "a/c/d"]
    s3.put_object(Bucket=bucket, Key="a/.hidden", Body=b"h")  # "a/." is a prefix of a key
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket, Prefix="a/.")["Contents"]] == ["a/.hidden"]
    assert [p["Prefix"] for p in s3.list_objects_v2(Bucket=bucket, Prefix="", Delimiter="/")["CommonPrefixes"]] \
        == ["a/"]


# ---------------------------------------------------------------- 2. Content-Encoding: gzip


def test_gzip_bodies_are_stored_as_sent(node: Node, s3: Any, bucket: str, tmp_path: Path) -> None:
    text = b"the same words, again and again\n" * 2000
    gz = gzip.compress(text)
    src = tmp_path / "data.gz"
    src.write_bytes(gz)
    # the aws CLI: high-level cp and low-level put-object (each signs the payload's SHA-256)
    aws(node, "s3", "cp", str(src), f"s3://{bucket}/cli.gz", "--content-encoding", "gzip")
    aws(node, "s3api", "put-object", "--bucket", bucket, "--key", "api.gz", "--body", str(src),
        "--content-encoding", "gzip")
    # boto3 with its default checksums (aws-chunked: Content-Encoding "gzip,aws-chunked" on the wire)
    s3.put_object(Bucket=bucket, Key="boto.gz", Body=gz, ContentEncoding="gzip")
    # a presigned PUT (a browser or curl holding the URL)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "presigned.gz",
                                                          "ContentEncoding": "gzip"})
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.request("PUT", f"{u.path}?{u.query}", body=gz, headers={"Content-Encoding": "gzip"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"")
    finally:
        conn.close()
    for key in ("cli.gz", "api.gz", "boto.gz", "presigned.gz"):
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == gz, key  # botocore does not decode: the stored bytes
        assert got["ContentEncoding"] == "gzip", key
        assert got["ETag"] == md5_etag(gz), key
        assert (node.root / bucket / key).read_bytes() == gz, key


# ---------------------------------------------------------------- 3. standard content headers


CONTENT = {"CacheControl": "max-age=3600, public", "ContentDisposition": 'attachment; filename="report.csv"',
           "ContentEncoding": "identity", "ContentLanguage": "de-CH"}
EXPIRES = "Thu, 01 Dec 2033 16:00:00 GMT"
WIRE = {"cache-control": CONTENT["CacheControl"], "content-disposition": CONTENT["ContentDisposition"],
        "content-encoding": "identity", "content-language": "de-CH", "expires": EXPIRES}


def content_of(r: dict[str, Any]) -> dict[str, str | None]:
    h = raw_headers(r)
    return {k: h.get(k) for k in WIRE}


def test_content_headers_are_kept_and_returned(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="doc", Body=b"a,b\n", Expires=EXPIRES, **CONTENT)
    assert content_of(s3.head_object(Bucket=bucket, Key="doc")) == WIRE
    got = s3.get_object(Bucket=bucket, Key="doc")
    assert content_of(got) == WIRE and got["Body"].read() == b"a,b\n"
    # response-* overrides win over the kept values
    over = s3.get_object(Bucket=bucket, Key="doc", ResponseCacheControl="no-store",
                         ResponseContentDisposition="inline")
    assert (over["CacheControl"], over["ContentDisposition"], over["ContentLanguage"]) == \
        ("no-store", "inline", "de-CH")
    # CopyObject: COPY keeps the source's, REPLACE takes the request's (and only those)
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "doc"})
    assert content_of(s3.head_object(Bucket=bucket, Key="copy")) == WIRE
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource={"Bucket": bucket, "Key": "doc"},
                   MetadataDirective="REPLACE", CacheControl="no-cache")
    assert content_of(s3.head_object(Bucket=bucket, Key="replaced")) == {**dict.fromkeys(WIRE),
                                                                         "cache-control": "no-cache"}
    # CreateMultipartUpload's headers are the completed object's
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", Expires=EXPIRES, **CONTENT)["UploadId"]
    tag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": tag}]})
    assert content_of(s3.head_object(Bucket=bucket, Key="mp")) == WIRE
    # an object written without them has none
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    assert content_of(s3.head_object(Bucket=bucket, Key="plain")) == dict.fromkeys(WIRE)


# ---------------------------------------------------------------- 4. non-ASCII user metadata


def test_non_ascii_metadata_comes_back_as_aws_returns_it(node: Node, s3: Any, bucket: str) -> None:
    # A client that encodes Unicode itself (RFC 2047; boto3 and minio-py refuse non-ASCII
    # metadata) gets its value back exactly; so does plain ASCII.
    word = email.header.Header("Zürich — 東京", "utf-8").encode()
    s3.put_object(Bucket=bucket, Key="encoded", Body=b"x", Metadata={"city": word, "plain": "ascii only"})
    meta = s3.head_object(Bucket=bucket, Key="encoded")["Metadata"]
    assert meta == {"city": word, "plain": "ascii only"}
    assert str(email.header.make_header(email.header.decode_header(meta["city"]))) == "Zürich — 東京"
    # Raw non-ASCII bytes: S3 reads them as ISO-8859-1 and returns the value RFC 2047-encoded.
    # The S3 User Guide's example: "ÄMÄZÕÑ S3" sent as UTF-8 comes back as below.
    status, body = signed_put(node.url, f"/{bucket}/raw", {"x-amz-meta-nonascii": "ÄMÄZÕÑ S3".encode(),
                                                           "x-amz-meta-latin": "été".encode("latin-1")}, b"x")
    assert status == 200, body
    meta = s3.head_object(Bucket=bucket, Key="raw")["Metadata"]
    assert meta["nonascii"] == "=?UTF-8?B?w4PChE3Dg8KEWsODwpXDg8KRIFMz?="
    assert meta["latin"] == "=?UTF-8?B?w6l0w6k=?="  # "été", read as ISO-8859-1
    assert s3.get_object(Bucket=bucket, Key="raw")["Metadata"] == meta


# ---------------------------------------------------------------- 5. conditional deletes


def test_conditional_deletes(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.delete_object(Bucket=bucket, Key="k", IfMatch=md5_etag(b"other"))
    assert err(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v1"
    assert s3.delete_object(Bucket=bucket, Key="k", IfMatch=etag)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k")
    assert err(e)[1] == 404
    # a missing key with If-Match (any value, "*" too) is NoSuchKey; without, the delete is idempotent
    for cond in (etag, "*"):
        with pytest.raises(ClientError) as e:
            s3.delete_object(Bucket=bucket, Key="k", IfMatch=cond)
        assert err(e) == ("NoSuchKey", 404)
    assert s3.delete_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.put_object(Bucket=bucket, Key="star", Body=b"s")
    s3.delete_object(Bucket=bucket, Key="star", IfMatch="*")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    # DeleteObjects: a per-object ETag that does not match is that key's PreconditionFailed
    tags = {k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["ETag"] for k in ("a", "b", "c")}
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a", "ETag": md5_etag(b"not a")}, {"Key": "b", "ETag": tags["b"]}, {"Key": "c"},
        {"Key": "gone", "ETag": tags["a"]}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["b", "c"]
    assert sorted((x["Key"], x["Code"]) for x in r["Errors"]) == [("a", "PreconditionFailed"),
                                                                  ("gone", "NoSuchKey")]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a"]


# ---------------------------------------------------------------- 6. unquoted ETags (minio-py)


def test_unquoted_etags_match(node: Node, s3: Any, bucket: str) -> None:
    from minio import Minio
    from minio.commonconfig import ComposeSource, CopySource
    from minio.error import S3Error as MinioError

    m = Minio(urlsplit(node.url).netloc, access_key=AK, secret_key=SK, secure=False)
    data = payload(100_000, seed=6)
    etag = m.put_object(bucket, "src", io.BytesIO(data), len(data)).etag
    assert etag == md5_etag(data).strip('"')  # minio-py hands ETags out unquoted ...
    # ... and sends them back so: conditional GETs
    resp = m.get_object(bucket, "src", request_headers={"If-Match": etag})
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    with pytest.raises(MinioError) as e:
        m.get_object(bucket, "src", request_headers={"If-Match": "0" * 32})
    assert e.value.code == "PreconditionFailed"
    with pytest.raises(ClientError) as ce:
        s3.get_object(Bucket=bucket, Key="src", IfNoneMatch=etag)  # unquoted, through boto3 too
    assert err(ce)[1] == 304
    # copies with x-amz-copy-source-if-match / -if-none-match
    m.copy_object(bucket, "copy", CopySource(bucket, "src", match_etag=etag))
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == data
    with pytest.raises(MinioError) as e:
        m.copy_object(bucket, "copy2", CopySource(bucket, "src", not_match_etag=etag))
    assert e.value.code == "PreconditionFailed"
    # compose_object sends the source's unquoted ETag with every part it copies (UploadPartCopy)
    big = payload(6 * MiB, seed=7)
    m.put_object(bucket, "big", io.BytesIO(big), len(big))
    m.compose_object(bucket, "composed", [ComposeSource(bucket, "big"), ComposeSource(bucket, "src")])
    assert s3.get_object(Bucket=bucket, Key="composed")["Body"].read() == big + data


# ---------------------------------------------------------------- 7. folder markers


def test_folder_marker_is_an_empty_object(node: Node, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pre/dir/", Body=b"", Metadata={"kind": "folder"})
    assert (node.root / bucket / "pre" / "dir").is_dir()
    h = s3.head_object(Bucket=bucket, Key="pre/dir/")
    assert (h["ResponseMetadata"]["HTTPStatusCode"], h["ContentLength"], h["ETag"], h["Metadata"]) == \
        (200, 0, EMPTY_MD5, {"kind": "folder"})
    g = s3.get_object(Bucket=bucket, Key="pre/dir/")
    assert (g["Body"].read(), g["ETag"]) == (b"", EMPTY_MD5)
    # a file is not a folder marker, nor a folder marker a file
    s3.put_object(Bucket=bucket, Key="pre/file", Body=b"f")
    for key in ("pre/file/", "pre/dir", "pre/none/"):
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket=bucket, Key=key)
        assert err(e)[1] == 404, key
    s3.delete_object(Bucket=bucket, Key="pre/file/")  # names no object: the file stays
    assert s3.get_object(Bucket=bucket, Key="pre/file")["Body"].read() == b"f"


# ---------------------------------------------------------------- 8. bucket names


def test_bucket_names_follow_aws_rules(node: Node, s3: Any) -> None:
    suffix = uuid.uuid4().hex[:8]
    bad = ["ab", "x" * 64, "UPPER" + suffix, "under_score" + suffix, "-lead" + suffix, suffix + "-",
           "." + suffix, suffix + ".", f"a..{suffix}", "192.168.5.4", f"xn--{suffix}", f"sthree-{suffix}",
           f"sthree-configurator{suffix}", f"amzn-s3-demo-{suffix}", f"{suffix}-s3alias", f"{suffix}--ol-s3",
           f"{suffix}.mrap", f"{suffix}--table-s3"]
    for name in bad:
        with pytest.raises(ClientError) as e:
            s3.create_bucket(Bucket=name)
        assert err(e) == ("InvalidBucketName", 400), name
        assert not (node.root / name).exists(), name
    # botocore takes a name ending in --x-s3 for a directory bucket (another auth): sent raw
    status, body = signed_put(node.url, f"/{suffix}--x-s3", {}, b"")
    assert (status, ET.fromstring(body).findtext("Code")) == (400, "InvalidBucketName")
    good = [f"a.b-c.{suffix}", f"1{suffix}", f"{suffix}-xn--s3alias.x", "n" + suffix.ljust(62, "0")]
    for name in good:
        s3.create_bucket(Bucket=name)
        assert (node.root / name).is_dir(), name


# ---------------------------------------------------------------- 9. a bad Content-Length


def test_bad_content_length_is_an_s3_error(node: Node, s3: Any, bucket: str) -> None:
    u = urlsplit(node.url)
    log_start = node.proc.log.stat().st_size
    for value in (b"-1", b"abc", b"1e3", b"99999999999999999999999999999"):
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(b"PUT /" + bucket.encode() + b"/k HTTP/1.1\r\nHost: x\r\nContent-Length: " + value +
                      b"\r\n\r\nbody")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", reply
        assert b"content-type: application/xml" in head.lower(), reply
        root = ET.fromstring(body)
        assert (root.tag, root.findtext("Code"), root.findtext("ArgumentName")) == \
            ("Error", "InvalidArgument", "Content-Length"), body
    log = node.proc.log.read_bytes()[log_start:]
    assert b"Traceback" not in log and b"rejected S3 request" in log
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"fine")  # and the node serves on
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"fine"


# ---------------------------------------------------------------- 10. multipart details


def upload(s3: Any, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[dict[str, Any]]]:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n,
                                                     Body=p)["ETag"]} for n, p in enumerate(parts, 1)]
    return uid, done


def test_a_repeated_complete_answers_the_same(s3: Any, bucket: str) -> None:
    parts = [payload(5 * MiB, seed=1), b"tail"]
    uid, done = upload(s3, bucket, "mp", parts)
    first = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
    again = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
    assert (again["ETag"], again["Key"], again["Bucket"]) == (first["ETag"], "mp", bucket)
    assert first["ETag"].endswith('-2"')
    for other in ([done[0]], [{**done[0], "ETag": md5_etag(b"x")}, done[1]]):  # another part list
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": other})
        assert err(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as e:  # another key
        s3.complete_multipart_upload(Bucket=bucket, Key="mp2", UploadId=uid, MultipartUpload={"Parts": done})
    assert err(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as e:  # a completed upload takes no parts
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=3, Body=b"late")
    assert err(e) == ("NoSuchUpload", 404)
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"".join(parts)


def test_part_numbers_of_get_and_head(s3: Any, bucket: str) -> None:
    parts = [payload(5 * MiB, seed=2), payload(5 * MiB + 17, seed=3), b"last"]
    uid, done = upload(s3, bucket, "mp", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
    total = sum(len(p) for p in parts)
    start = 0
    for n, p in enumerate(parts, 1):
        h = s3.head_object(Bucket=bucket, Key="mp", PartNumber=n)
        assert (h["ResponseMetadata"]["HTTPStatusCode"], h["ContentLength"], h["PartsCount"]) == (206, len(p), 3)
        assert h["ContentRange"] == f"bytes {start}-{start + len(p) - 1}/{total}"
        g = s3.get_object(Bucket=bucket, Key="mp", PartNumber=n)
        assert (g["PartsCount"], g["ETag"]) == (3, h["ETag"])
        assert g["Body"].read() == p
        start += len(p)
    assert "PartsCount" not in s3.head_object(Bucket=bucket, Key="mp")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=4)
    assert err(e) == ("InvalidPartNumber", 416)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=1, Range="bytes=0-9")
    assert err(e) == ("InvalidRequest", 400)
    # an object of one PUT is one part: partNumber=1 is all of it, 2 is past its end
    s3.put_object(Bucket=bucket, Key="plain", Body=b"whole")
    g = s3.get_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert (g["Body"].read(), g["ContentRange"], "PartsCount" in g) == (b"whole", "bytes 0-4/5", False)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="plain", PartNumber=2)
    assert err(e)[1] == 416
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")  # no byte range to name: all of it, 200
    g = s3.get_object(Bucket=bucket, Key="empty", PartNumber=1)
    assert (g["ResponseMetadata"]["HTTPStatusCode"], g["Body"].read(), "ContentRange" in g) == (200, b"", False)


def test_duplicate_part_numbers_are_invalid_part_order(s3: Any, bucket: str) -> None:
    uid, done = upload(s3, bucket, "dup", [payload(5 * MiB, seed=4), b"end"])
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="dup", UploadId=uid,
                                     MultipartUpload={"Parts": [done[0], done[0], done[1]]})
    assert err(e) == ("InvalidPartOrder", 400)
    s3.complete_multipart_upload(Bucket=bucket, Key="dup", UploadId=uid, MultipartUpload={"Parts": done})


def test_list_buckets_pages(s3: Any) -> None:
    pfx = f"lb-{uuid.uuid4().hex[:8]}-"
    names = [pfx + c for c in ("c", "a", "b", "d", "e")]
    for n in names:
        s3.create_bucket(Bucket=n)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        args: dict[str, Any] = {"Prefix": pfx, "MaxBuckets": 2}
        if token:
            args["ContinuationToken"] = token
        r = s3.list_buckets(**args)
        pages += 1
        assert r["Prefix"] == pfx and len(r["Buckets"]) <= 2
        seen += [b["Name"] for b in r["Buckets"]]
        token = r.get("ContinuationToken")
        if token is None:
            break
    assert (seen, pages) == (sorted(names), 3)
    assert [b["Name"] for b in s3.list_buckets(Prefix=pfx)["Buckets"]] == sorted(names)
    assert pfx + "a" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    paged = [b["Name"] for page in s3.get_paginator("list_buckets").paginate(Prefix=pfx, MaxBuckets=1)
             for b in page["Buckets"]]
    assert paged == sorted(names)
    with pytest.raises(ClientError) as e:
        s3.list_buckets(MaxBuckets=10001)
    assert err(e) == ("InvalidArgument", 400)


def test_upload_part_copy_past_the_end_is_invalid_range(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=payload(1000, seed=5))
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    for rng in ("bytes=0-1000", "bytes=1000-1001", "bytes=999-5000"):
        with pytest.raises(ClientError) as e:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=rng)
        assert err(e) == ("InvalidRange", 416), rng
    ok = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=990-999")
    assert ok["CopyPartResult"]["ETag"] == md5_etag(payload(1000, seed=5)[990:])
