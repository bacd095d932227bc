"""S3 semantics of the gateway, over the wire, against a real ``meshd embedded``.

boto3 drives most requests; raw ``http.client`` requests (signed by botocore's own
``S3SigV4Auth``) are used where boto3 hides what is checked: status codes, headers,
error bodies, request shapes boto3 will not send. The module's node mounts a local
directory at ``/`` so that top-level directories are buckets (and CreateBucket works);
each test makes its own bucket, so tests do not depend on each other.

Expected values are computed independently of the gateway (MD5s, multipart ETags,
S3's UTF-8 byte order of keys), and objects written through S3 are checked to be
plain files with the same bytes at the same path below the mount's directory.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import http.client
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit

import boto3
import pytest
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.data import payload
from tests.meshd_proc import MeshdProcess

AK = "AKIDMESHGATEWAY"
SK = "gateway/secret+Key=42"
REGION = "us-east-1"
MiB = 1 << 20
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


# --------------------------------------------------------------------------- helpers


def s3client(endpoint: str, ak: str | None = AK, sk: str | None = SK, **cfg: Any) -> Any:
    """A boto3 S3 client, path style, no retries (an error must show, not be retried)."""
    conf = Config(signature_version=cfg.pop("signature_version", "s3v4"),
                  s3=cfg.pop("s3", {"addressing_style": "path"}),
                  retries={"max_attempts": 1, "mode": "standard"},
                  connect_timeout=10, read_timeout=60, **cfg)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name=REGION, config=conf)


@dataclass
class Resp:
    status: int
    headers: Message
    body: bytes

    def code(self) -> str | None:
        """The S3 error code of an XML error body."""
        if not self.body:
            return None
        root = ET.fromstring(self.body)
        assert root.tag == "Error", self.body
        return root.findtext("Code")

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


def sign(method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"",
         ak: str = AK, sk: str = SK, payload_hash: str | None = None) -> dict[str, str]:
    """Headers of ``method url`` signed by botocore (SigV4, header form)."""

    class Signer(S3SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            return payload_hash if payload_hash is not None else super().payload(request)

    req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    Signer(Credentials(ak, sk), "s3", REGION).add_auth(req)
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in req.headers.items()}


def raw(endpoint: str, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes | None = None, *, signed: bool = True, ak: str = AK, sk: str = SK,
        payload_hash: str | None = None, timeout: float = 30) -> Resp:
    """One HTTP request; ``target`` is the request target as sent (already percent-encoded)."""
    hdrs = dict(headers or {})
    if signed:
        hdrs = sign(method, endpoint + target, hdrs, body or b"", ak, sk, payload_hash)
    u = urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


def put_as_given(endpoint: str, target: str, headers: dict[str, str], send: bytes = b"") -> Resp:
    """A PUT whose headers go out exactly as given (http.client adds no Content-Length),
    followed by ``send`` and nothing more."""
    u = urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if send:
            conn.send(send)
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


def err(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def key_order(keys: list[str]) -> list[str]:
    """S3's listing order: UTF-8 bytes of the whole key."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def list_all_v2(s3: Any, bucket: str, **kw: Any) -> tuple[list[str], list[str], int]:
    """Every key and common prefix of a ListObjectsV2 walk by continuation token; pages."""
    keys: list[str] = []
    prefixes: list[str] = []
    pages = 0
    token = None
    while True:
        args = dict(kw)
        if token:
            args["ContinuationToken"] = token
        r = s3.list_objects_v2(Bucket=bucket, **args)
        pages += 1
        keys += [o["Key"] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        assert r["KeyCount"] == len(r.get("Contents", [])) + len(r.get("CommonPrefixes", []))
        if not r["IsTruncated"]:
            assert "NextContinuationToken" not in r
            return keys, prefixes, pages
        token = r["NextContinuationToken"]
        assert pages < 200, "listing does not terminate"


# --------------------------------------------------------------------------- fixtures


@dataclass
class Gateway:
    node: MeshdProcess
    root: Path  # the directory mounted at "/"

    @property
    def url(self) -> str:
        return self.node.endpoints["s3"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("s3gw")
    root = base / "root"
    root.mkdir()
    node = MeshdProcess(base / "node", [f"/=file://{root}"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount"]).start()
    try:
        yield Gateway(node, root)
    finally:
        node.stop()


@pytest.fixture(scope="module")
def s3(gw: Gateway) -> Iterator[Any]:
    c = s3client(gw.url)
    yield c
    c.close()


@pytest.fixture
def bucket(gw: Gateway, s3: Any) -> str:
    """A fresh, empty bucket of this test (a directory below the "/" mount)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    assert (gw.root / name).is_dir()
    return name


# --------------------------------------------------------------------------- objects


def test_put_get_head_is_a_plain_file(gw: Gateway, s3: Any, bucket: str) -> None:
    data = payload(300_000, seed=1)
    r = s3.put_object(Bucket=bucket, Key="dir/sub/obj.bin", Body=data, ContentType="application/x-test",
                      Metadata={"colour": "blue", "Mixed-Case": "Value With Spaces"})
    assert r["ETag"] == md5_etag(data)
    # transparency: the object is a file with the same bytes at the same relative path
    assert (gw.root / bucket / "dir" / "sub" / "obj.bin").read_bytes() == data
    g = s3.get_object(Bucket=bucket, Key="dir/sub/obj.bin")
    assert hashlib.sha256(g["Body"].read()).digest() == hashlib.sha256(data).digest()
    assert g["ETag"] == md5_etag(data)
    assert g["ContentLength"] == len(data)
    assert g["ContentType"] == "application/x-test"
    assert g["Metadata"] == {"colour": "blue", "mixed-case": "Value With Spaces"}
    h = s3.head_object(Bucket=bucket, Key="dir/sub/obj.bin")
    assert h["ContentLength"] == len(data) and h["ETag"] == md5_etag(data)
    assert h["Metadata"] == g["Metadata"]
    assert h["ResponseMetadata"]["HTTPHeaders"]["accept-ranges"] == "bytes"
    # a file dropped into the directory is an object too
    (gw.root / bucket / "dropped.txt").write_bytes(b"from the side")
    assert s3.get_object(Bucket=bucket, Key="dropped.txt")["Body"].read() == b"from the side"


def test_etag_follows_changes_made_outside(gw: Gateway, s3: Any, bucket: str) -> None:
    """An object changed in the directory by someone else: new bytes, a new ETag, and
    conditions on the old ETag fail."""
    old = b"written through S3"
    etag = s3.put_object(Bucket=bucket, Key="shared.txt", Body=old)["ETag"]
    (gw.root / bucket / "shared.txt").write_bytes(b"rewritten in the directory, longer")
    g = s3.get_object(Bucket=bucket, Key="shared.txt")
    assert g["Body"].read() == b"rewritten in the directory, longer"
    assert g["ETag"] != etag
    r = raw(gw.url, "GET", f"/{bucket}/shared.txt", {"If-Match": etag})
    assert (r.status, r.code()) == (412, "PreconditionFailed")
    assert raw(gw.url, "GET", f"/{bucket}/shared.txt", {"If-None-Match": etag}).status == 200
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [("shared.txt", g["ETag"], 34)]
    (gw.root / bucket / "later.txt").write_bytes(b"new file")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["later.txt", "shared.txt"]
    (gw.root / bucket / "shared.txt").unlink()
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="shared.txt")
    assert err(e)[1] == 404


def test_empty_object_and_overwrite(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="e", Body=b"")
    g = s3.get_object(Bucket=bucket, Key="e")
    assert g["Body"].read() == b"" and g["ETag"] == md5_etag(b"")
    s3.put_object(Bucket=bucket, Key="e", Body=b"second")
    assert s3.get_object(Bucket=bucket, Key="e")["Body"].read() == b"second"
    assert (gw.root / bucket / "e").read_bytes() == b"second"


KEYS = ["sp ace.txt", "plus+sign", "pct%41not-decoded", "eq=&amp;", "ünï/cødé/日本.bin", "tilde~_.-",
        "q?mark", "hash#tag", "semi;colon", "quote'\"", "brackets[x]{y}", "emoji-\U0001F600"]


@pytest.mark.parametrize("key", KEYS)
def test_odd_keys_round_trip(gw: Gateway, s3: Any, bucket: str, key: str) -> None:
    data = key.encode() * 3
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert (gw.root / bucket / key).read_bytes() == data
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == [key]
    s3.delete_object(Bucket=bucket, Key=key)
    assert not (gw.root / bucket / key).exists()


@pytest.mark.parametrize("key", ["line\nbreak", "carriage\rreturn", "both\r\n/x", "\nlead", "tab\tchar"])
def test_keys_with_line_breaks(gw: Gateway, s3: Any, bucket: str, key: str) -> None:
    """S3 keys may hold any UTF-8 character, CR and LF included (percent-encoded on the wire)."""
    s3.put_object(Bucket=bucket, Key=key, Body=b"lf")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"lf"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert (gw.root / bucket / key).read_bytes() == b"lf"


def test_invalid_utf8_key_is_refused(gw: Gateway, s3: Any, bucket: str) -> None:
    """A key is UTF-8: a path whose percent-encoding is not UTF-8 must not be silently turned
    into another key (U+FFFD), which a later GET of what was listed would not find again."""
    r = raw(gw.url, "PUT", f"/{bucket}/bad%e2%82utf8", body=b"x")
    assert r.status == 400 and r.code() in ("InvalidURI", "InvalidArgument"), (r.status, r.body)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert list((gw.root / bucket).iterdir()) == []


@pytest.mark.parametrize("key", ["a//b", "a/./b", "a/../b", "..", "./x"])
def test_keys_that_cannot_be_files_are_invalid(gw: Gateway, bucket: str, key: str) -> None:
    target = f"/{bucket}/" + quote(key, safe="/")
    r = raw(gw.url, "PUT", target, body=b"x")
    assert (r.status, r.code()) == (400, "InvalidArgument")
    assert sorted(p.name for p in (gw.root / bucket).iterdir()) == []
    # nothing escaped the bucket either
    assert sorted(p.name for p in gw.root.iterdir() if p.is_file()) == []


@pytest.mark.parametrize("key", ["a%00b", "ctl%01x/y"])
def test_error_document_is_well_formed_for_any_key(gw: Gateway, bucket: str, key: str) -> None:
    """The error names the key in <Resource>: characters XML 1.0 cannot carry must not break it."""
    r = raw(gw.url, "PUT" if "%00" in key else "GET", f"/{bucket}/{key}", body=b"x" if "%00" in key else None)
    assert r.status in (400, 404)
    assert r.code() in ("InvalidArgument", "NoSuchKey")  # parses: a well-formed document


def test_missing_key_bucket_and_head_without_body(gw: Gateway, s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="nope")
    assert err(e) == ("NoSuchKey", 404)
    r = raw(gw.url, "HEAD", f"/{bucket}/nope")
    assert r.status == 404 and r.body == b""
    r = raw(gw.url, "GET", f"/{bucket}/nope")
    assert r.status == 404 and r.code() == "NoSuchKey"
    assert r.headers["Content-Type"].startswith("application/xml")
    # a directory (a prefix) is not an object
    s3.put_object(Bucket=bucket, Key="d/inner", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="d")
    assert err(e) == ("NoSuchKey", 404)


def test_no_such_bucket(gw: Gateway, s3: Any) -> None:
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    for call in (lambda: s3.list_objects_v2(Bucket=missing),
                 lambda: s3.list_objects(Bucket=missing),
                 lambda: s3.put_object(Bucket=missing, Key="k", Body=b"x"),
                 lambda: s3.delete_object(Bucket=missing, Key="k"),
                 lambda: s3.create_multipart_upload(Bucket=missing, Key="k"),
                 lambda: s3.delete_bucket(Bucket=missing)):
        with pytest.raises(ClientError) as e:
            call()
        assert err(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=missing)
    assert err(e)[1] == 404
    assert not (gw.root / missing).exists()


def test_get_object_of_missing_bucket_is_no_such_bucket(gw: Gateway, s3: Any) -> None:
    """S3 answers GetObject in a bucket that does not exist with NoSuchBucket, not NoSuchKey."""
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=missing, Key="k")
    assert err(e) == ("NoSuchBucket", 404)


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("spec,start,end", [
    ("bytes=0-9", 0, 10),
    ("bytes=100-199", 100, 200),
    ("bytes=1000-", 1000, 5000),
    ("bytes=-300", 4700, 5000),
    ("bytes=4990-999999", 4990, 5000),  # last past the end: up to the end
    ("bytes=-99999", 0, 5000),  # suffix longer than the object: all of it
    ("bytes=4999-4999", 4999, 5000),
])
def test_range_get(gw: Gateway, s3: Any, bucket: str, spec: str, start: int, end: int) -> None:
    data = payload(5000, seed=2)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    r = raw(gw.url, "GET", f"/{bucket}/r", {"Range": spec})
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/5000"
    assert int(r.headers["Content-Length"]) == end - start
    assert r.body == data[start:end]
    g = s3.get_object(Bucket=bucket, Key="r", Range=spec)
    assert g["Body"].read() == data[start:end]
    assert g["ContentRange"] == f"bytes {start}-{end - 1}/5000"
    h = raw(gw.url, "HEAD", f"/{bucket}/r", {"Range": spec})
    assert h.status == 206 and h.headers["Content-Range"] == f"bytes {start}-{end - 1}/5000"


@pytest.mark.parametrize("spec", ["bytes=5000-", "bytes=5000-5001", "bytes=9999-"])
def test_range_past_end_is_416(gw: Gateway, s3: Any, bucket: str, spec: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=payload(5000))
    r = raw(gw.url, "GET", f"/{bucket}/r", {"Range": spec})
    assert (r.status, r.code()) == (416, "InvalidRange")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range=spec)
    assert err(e) == ("InvalidRange", 416)


@pytest.mark.parametrize("spec", ["bytes=9-3", "bytes=0-1,5-6", "items=0-5", "garbage"])
def test_unusable_range_is_ignored(gw: Gateway, s3: Any, bucket: str, spec: str) -> None:
    data = payload(100)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    r = raw(gw.url, "GET", f"/{bucket}/r", {"Range": spec})
    assert r.status == 200 and r.body == data and "Content-Range" not in r.headers


def test_version_ids(gw: Gateway, s3: Any, bucket: str) -> None:
    """Unversioned: versionId "null" names the object, any other id is NoSuchVersion."""
    s3.put_object(Bucket=bucket, Key="v", Body=b"current")
    assert s3.get_object(Bucket=bucket, Key="v", VersionId="null")["Body"].read() == b"current"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="v", VersionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
    assert err(e) == ("NoSuchVersion", 404)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="w", CopySource={"Bucket": bucket, "Key": "v", "VersionId": "abc"})
    assert err(e) == ("NoSuchVersion", 404)


def test_part_number_one(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="p", Body=b"whole")
    assert s3.get_object(Bucket=bucket, Key="p", PartNumber=1)["Body"].read() == b"whole"


# --------------------------------------------------------------------------- conditionals


def test_conditional_get(gw: Gateway, s3: Any, bucket: str) -> None:
    data = b"conditional body"
    etag = s3.put_object(Bucket=bucket, Key="c", Body=data)["ETag"]
    lm = s3.head_object(Bucket=bucket, Key="c")["LastModified"].timestamp()
    past = email.utils.formatdate(lm - 3600, usegmt=True)
    future = email.utils.formatdate(lm + 3600, usegmt=True)
    same = email.utils.formatdate(lm, usegmt=True)
    t = f"/{bucket}/c"

    def get(method: str = "GET", **h: str) -> Resp:
        return raw(gw.url, method, t, {k.replace("_", "-"): v for k, v in h.items()})

    assert get(If_Match=etag).body == data
    assert get(If_Match=f'"nope", {etag}').status == 200
    assert get(If_Match="*").status == 200
    r = get(If_Match='"0123456789abcdef0123456789abcdef"')
    assert (r.status, r.code()) == (412, "PreconditionFailed")
    r = get(If_None_Match=etag)
    assert r.status == 304 and r.body == b"" and r.headers["ETag"] == etag
    assert get(If_None_Match='"other"').status == 200
    assert get(If_Modified_Since=future).status == 304
    assert get(If_Modified_Since=same).status == 304
    assert get(If_Modified_Since=past).body == data
    r = get(If_Unmodified_Since=past)
    assert (r.status, r.code()) == (412, "PreconditionFailed")
    assert get(If_Unmodified_Since=future).status == 200
    # If-Match that holds wins over If-Unmodified-Since that does not (RFC 7232, as S3)
    assert get(If_Match=etag, If_Unmodified_Since=past).status == 200
    # If-None-Match that holds (no match) wins over If-Modified-Since
    assert get(If_None_Match='"other"', If_Modified_Since=future).status == 200
    # HEAD: the same, status only
    assert get("HEAD", If_None_Match=etag).status == 304
    h = get("HEAD", If_Match='"x"')
    assert h.status == 412 and h.body == b""
    # through boto3
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"x"')
    assert err(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert err(e)[1] == 304


def test_response_header_overrides(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o.bin", Body=b"data", ContentType="application/octet-stream")
    g = s3.get_object(Bucket=bucket, Key="o.bin", ResponseContentType="text/csv",
                      ResponseContentDisposition='attachment; filename="x y.csv"',
                      ResponseCacheControl="no-cache", ResponseContentLanguage="de",
                      ResponseContentEncoding="identity")
    h = g["ResponseMetadata"]["HTTPHeaders"]
    assert h["content-type"] == "text/csv"
    assert h["content-disposition"] == 'attachment; filename="x y.csv"'
    assert h["cache-control"] == "no-cache"
    assert h["content-language"] == "de"
    assert g["Body"].read() == b"data"


def test_response_overrides_cannot_inject_headers(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"data")
    for name in ("response-content-type", "response-content-disposition", "response-cache-control"):
        r = raw(gw.url, "GET", f"/{bucket}/o?{name}=text/plain%0D%0AX-Injected:%201")
        assert r.status == 400 and r.code() == "InvalidArgument", (name, r.status, r.body[:300])
        assert "X-Injected" not in r.headers
        h = raw(gw.url, "HEAD", f"/{bucket}/o?{name}=a%0Ab")
        assert h.status == 400


# --------------------------------------------------------------------------- put checks


def test_content_md5(gw: Gateway, s3: Any, bucket: str) -> None:
    old, new = b"old contents", b"new contents!"
    s3.put_object(Bucket=bucket, Key="m", Body=old, ContentMD5=b64md5(old))
    assert (gw.root / bucket / "m").read_bytes() == old
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="m", Body=new, ContentMD5=b64md5(b"something else"))
    assert err(e) == ("BadDigest", 400)
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == old
    assert (gw.root / bucket / "m").read_bytes() == old
    assert s3.head_object(Bucket=bucket, Key="m")["ETag"] == md5_etag(old)
    # a failed first put leaves no object at all
    r = raw(gw.url, "PUT", f"/{bucket}/fresh", {"Content-MD5": b64md5(b"zz")}, body=b"yy")
    assert (r.status, r.code()) == (400, "BadDigest")
    assert not (gw.root / bucket / "fresh").exists()
    assert [p.name for p in (gw.root / bucket).iterdir()] == ["m"]  # no temporary left over
    # not base64 / not 16 bytes
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        r = raw(gw.url, "PUT", f"/{bucket}/m", {"Content-MD5": bad}, body=new)
        assert (r.status, r.code()) == (400, "InvalidDigest")
    assert (gw.root / bucket / "m").read_bytes() == old


def test_big_put_with_bad_md5_leaves_old_object(gw: Gateway, s3: Any, bucket: str) -> None:
    old, new = payload(3 * MiB, seed=3), payload(9 * MiB, seed=4)
    s3.put_object(Bucket=bucket, Key="big", Body=old)
    r = raw(gw.url, "PUT", f"/{bucket}/big", {"Content-MD5": b64md5(old)}, body=new)
    assert (r.status, r.code()) == (400, "BadDigest")
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == old


def test_content_sha256_mismatch(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="h", Body=b"original")
    url = f"{gw.url}/{bucket}/h"
    headers = sign("PUT", url, {}, b"signed body")  # signs sha256(b"signed body")
    r = raw(gw.url, "PUT", f"/{bucket}/h", headers, body=b"sent  body!", signed=False)
    assert (r.status, r.code()) == (400, "XAmzContentSHA256Mismatch")
    assert (gw.root / bucket / "h").read_bytes() == b"original"


def test_checksum_header_is_verified(gw: Gateway, s3: Any, bucket: str) -> None:
    """boto3 sends x-amz-checksum-crc32 with every PutObject; a wrong one is BadDigest in S3."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"original")
    good = s3.put_object(Bucket=bucket, Key="ok", Body=b"abc", ChecksumCRC32=base64.b64encode(
        zlib.crc32(b"abc").to_bytes(4, "big")).decode())
    assert good["ETag"] == md5_etag(b"abc")
    wrong = base64.b64encode((0x12345678).to_bytes(4, "big")).decode()
    r = raw(gw.url, "PUT", f"/{bucket}/k", {"x-amz-checksum-crc32": wrong}, body=b"replacement")
    assert (r.status, r.code()) == (400, "BadDigest")
    assert (gw.root / bucket / "k").read_bytes() == b"original"


def test_user_metadata_limits(gw: Gateway, s3: Any, bucket: str) -> None:
    meta = {"a": "1", "b-c": "x" * 100}
    s3.put_object(Bucket=bucket, Key="u", Body=b"", Metadata=meta)
    assert s3.head_object(Bucket=bucket, Key="u")["Metadata"] == meta
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="u2", Body=b"", Metadata={"big": "y" * 2100})
    assert err(e) == ("MetadataTooLarge", 400)
    assert not (gw.root / bucket / "u2").exists()


def test_entity_too_large_is_refused_up_front(gw: Gateway, bucket: str) -> None:
    headers = sign("PUT", f"{gw.url}/{bucket}/huge", {}, b"", payload_hash="UNSIGNED-PAYLOAD")
    headers["Content-Length"] = str((5 << 30) + 1)
    # 1000 bytes and nothing more: the answer must not wait for 5 GiB
    r = put_as_given(gw.url, f"/{bucket}/huge", headers, b"x" * 1000)
    assert r.status == 400 and ET.fromstring(r.body).findtext("Code") == "EntityTooLarge"
    assert not (gw.root / bucket / "huge").exists()


def test_missing_content_length(gw: Gateway, bucket: str) -> None:
    r = put_as_given(gw.url, f"/{bucket}/nolen", sign("PUT", f"{gw.url}/{bucket}/nolen", {}, b""))
    assert r.status == 411
    assert ET.fromstring(r.body).findtext("Code") == "MissingContentLength"


# --------------------------------------------------------------------------- copy


def test_copy_object_directives(gw: Gateway, s3: Any, bucket: str) -> None:
    data = payload(70_000, seed=5)
    s3.put_object(Bucket=bucket, Key="src", Body=data, ContentType="text/x-src", Metadata={"m": "1"})
    r = s3.copy_object(Bucket=bucket, Key="dst-copy", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == md5_etag(data)
    h = s3.head_object(Bucket=bucket, Key="dst-copy")
    assert (h["ContentType"], h["Metadata"]) == ("text/x-src", {"m": "1"})
    assert (gw.root / bucket / "dst-copy").read_bytes() == data
    s3.copy_object(Bucket=bucket, Key="dst-repl", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   ContentType="text/x-new", Metadata={"n": "2"})
    h = s3.head_object(Bucket=bucket, Key="dst-repl")
    assert (h["ContentType"], h["Metadata"]) == ("text/x-new", {"n": "2"})
    assert s3.get_object(Bucket=bucket, Key="dst-repl")["Body"].read() == data
    # across buckets, and into a key with odd characters
    other = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=other, Key="x y/ü", CopySource={"Bucket": bucket, "Key": "src"})
    assert (gw.root / other / "x y" / "ü").read_bytes() == data
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="d", CopySource={"Bucket": bucket, "Key": "missing"})
    assert err(e) == ("NoSuchKey", 404)
    # copy-source conditions
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="d", CopySource=f"{bucket}/src", CopySourceIfMatch='"nope"')
    assert err(e) == ("PreconditionFailed", 412)
    s3.copy_object(Bucket=bucket, Key="d", CopySource=f"{bucket}/src", CopySourceIfMatch=md5_etag(data))
    assert not (gw.root / bucket / "missing").exists()


def test_copy_onto_itself(gw: Gateway, s3: Any, bucket: str) -> None:
    data = payload(3 * MiB + 17, seed=6)  # several pages
    s3.put_object(Bucket=bucket, Key="self", Body=data, Metadata={"v": "1"})
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="self", CopySource=f"{bucket}/self")
    assert err(e) == ("InvalidRequest", 400)
    s3.copy_object(Bucket=bucket, Key="self", CopySource=f"{bucket}/self", MetadataDirective="REPLACE",
                   Metadata={"v": "2"})
    g = s3.get_object(Bucket=bucket, Key="self")
    assert g["Metadata"] == {"v": "2"}
    assert g["Body"].read() == data
    assert (gw.root / bucket / "self").read_bytes() == data


# --------------------------------------------------------------------------- delete


def test_delete_object_is_idempotent(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"x")
    for _ in range(2):
        r = s3.delete_object(Bucket=bucket, Key="a/b")
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="never/was")["ResponseMetadata"]["HTTPStatusCode"] == 204
    # deleting a prefix does not delete what is below it
    s3.put_object(Bucket=bucket, Key="p/q", Body=b"y")
    s3.delete_object(Bucket=bucket, Key="p")
    assert s3.get_object(Bucket=bucket, Key="p/q")["Body"].read() == b"y"
    assert not (gw.root / bucket / "a" / "b").exists()
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="a/b")
    assert err(e) == ("NoSuchKey", 404)


def test_delete_objects_1000_quiet(gw: Gateway, s3: Any, bucket: str) -> None:
    keys = [f"many/{i // 100:02d}/{i:04d}" for i in range(1000)]
    for k in keys:  # files made in the directory directly: they are objects
        p = gw.root / bucket / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(k.encode())
    assert len(list_all_v2(s3, bucket)[0]) == 1000
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    assert "Deleted" not in r and "Errors" not in r
    assert list_all_v2(s3, bucket)[0] == []
    assert [p for p in (gw.root / bucket).rglob("*") if p.is_file()] == []


def test_delete_objects_verbose_and_errors(gw: Gateway, s3: Any, bucket: str) -> None:
    for k in ("x", "y/z"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x"}, {"Key": "y/z"}, {"Key": "absent"},
                                                             {"Key": "bad//key"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["absent", "x", "y/z"]
    assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("bad//key", "InvalidArgument")]
    assert not (gw.root / bucket / "x").exists()


def test_delete_objects_over_1000_is_malformed(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k0", Body=b"kept")
    with pytest.raises(ClientError) as e:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)]})
    assert err(e) == ("MalformedXML", 400)
    assert (gw.root / bucket / "k0").read_bytes() == b"kept"
    for body in (b"<Delete></Delete>", b"<Delete><Object><Key>k0", b"<NotDelete/>"):
        r = raw(gw.url, "POST", f"/{bucket}?delete", {"Content-MD5": b64md5(body)}, body=body)
        assert (r.status, r.code()) == (400, "MalformedXML")
    body = b"<Delete><Object><Key>k0</Key></Object></Delete>"
    r = raw(gw.url, "POST", f"/{bucket}?delete", {"Content-MD5": b64md5(b"other")}, body=body)
    assert (r.status, r.code()) == (400, "BadDigest")
    assert (gw.root / bucket / "k0").read_bytes() == b"kept"


# --------------------------------------------------------------------------- listings

TREE = ["a-b", "a/x", "a/y/z", "a/y0", "a0", "b/c/d/e", "c d", "c+d", "é/ü", "z\u00ff",
        "\U0001F600", "ctl\x01x"]


@pytest.fixture
def tree(gw: Gateway, s3: Any, bucket: str) -> str:
    for k in TREE:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    return bucket


TREE_KEYS = key_order(TREE)


def test_list_v2_order_is_utf8_byte_order(s3: Any, tree: str) -> None:
    keys, prefixes, _ = list_all_v2(s3, tree)
    assert keys == TREE_KEYS  # "a-b" < "a/x" < "a0": not directory order
    assert prefixes == []
    r = s3.list_objects_v2(Bucket=tree)
    assert r["KeyCount"] == len(TREE_KEYS) and not r["IsTruncated"]
    sizes = {o["Key"]: o["Size"] for o in r["Contents"]}
    assert sizes == {k: len(k.encode()) for k in TREE_KEYS}
    assert all(o["ETag"] == md5_etag(o["Key"].encode()) for o in r["Contents"])


@pytest.mark.parametrize("max_keys", [1, 2, 3, 7])
def test_list_v2_paging(s3: Any, tree: str, max_keys: int) -> None:
    keys, _, pages = list_all_v2(s3, tree, MaxKeys=max_keys)
    assert keys == TREE_KEYS
    assert pages == -(-len(TREE_KEYS) // max_keys)


@pytest.mark.parametrize("max_keys", [1, 2, 1000])
@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/y", "b/", "nothing"])
def test_list_v2_delimiter(s3: Any, tree: str, prefix: str, max_keys: int) -> None:
    keys, prefixes, _ = list_all_v2(s3, tree, Prefix=prefix, Delimiter="/", MaxKeys=max_keys)
    exp_keys, exp_prefixes = [], []
    for k in TREE_KEYS:
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        if "/" in rest:
            cp = prefix + rest.split("/", 1)[0] + "/"
            if cp not in exp_prefixes:
                exp_prefixes.append(cp)
        else:
            exp_keys.append(k)
    assert keys == exp_keys
    assert prefixes == key_order(exp_prefixes)


def test_list_v2_other_delimiter(s3: Any, tree: str) -> None:
    keys, prefixes, _ = list_all_v2(s3, tree, Delimiter="y", MaxKeys=2)
    assert prefixes == ["a/y"]
    assert keys == [k for k in TREE_KEYS if "y" not in k]


def test_list_v2_start_after_and_prefix(s3: Any, tree: str) -> None:
    for after in ("", "a-b", "a/x", "a/y/z", "a0", "a1", "c", "zzzz", "\U0010ffff"):
        r = s3.list_objects_v2(Bucket=tree, StartAfter=after)
        got = [o["Key"] for o in r.get("Contents", [])]
        assert got == [k for k in TREE_KEYS if k.encode() > after.encode()], after
        if after:
            assert r["StartAfter"] == after
    r = s3.list_objects_v2(Bucket=tree, Prefix="a/")
    assert [o["Key"] for o in r["Contents"]] == ["a/x", "a/y/z", "a/y0"]
    assert r["Prefix"] == "a/"


def test_list_v2_fetch_owner(s3: Any, tree: str) -> None:
    r = s3.list_objects_v2(Bucket=tree, MaxKeys=2)
    assert all("Owner" not in o for o in r["Contents"])
    r = s3.list_objects_v2(Bucket=tree, MaxKeys=2, FetchOwner=True)
    assert all(o["Owner"]["ID"] for o in r["Contents"])


def test_list_v2_encoding_type_url(gw: Gateway, s3: Any, tree: str) -> None:
    r = raw(gw.url, "GET", f"/{tree}?list-type=2&encoding-type=url&prefix=c")
    assert r.status == 200
    root = r.xml()
    assert root.findtext(f"{NS}EncodingType") == "url"
    raw_keys = [c.findtext(f"{NS}Key") or "" for c in root.findall(f"{NS}Contents")]
    assert [unquote_plus(k) for k in raw_keys] == ["c d", "c+d", "ctl\x01x"]
    assert all(" " not in k and "+" not in k and "\x01" not in k for k in raw_keys)
    r = raw(gw.url, "GET", f"/{tree}?list-type=2&encoding-type=url&prefix=%C3%A9")
    keys = [unquote_plus(c.findtext(f"{NS}Key") or "") for c in r.xml().findall(f"{NS}Contents")]
    assert keys == ["é/ü"]
    r = raw(gw.url, "GET", f"/{tree}?list-type=2&encoding-type=bogus")
    assert (r.status, r.code()) == (400, "InvalidArgument")


def test_list_v2_bad_arguments(gw: Gateway, tree: str) -> None:
    for q in ("max-keys=-1", "max-keys=abc", "continuation-token=%21%21notbase64"):
        r = raw(gw.url, "GET", f"/{tree}?list-type=2&{q}")
        assert (r.status, r.code()) == (400, "InvalidArgument"), q


def test_list_v1_marker_paging(s3: Any, tree: str) -> None:
    got: list[str] = []
    marker = ""
    for _ in range(50):
        r = s3.list_objects(Bucket=tree, Marker=marker, MaxKeys=3)
        page = [o["Key"] for o in r.get("Contents", [])]
        got += page
        assert all("Owner" in o for o in r.get("Contents", []))
        if not r["IsTruncated"]:
            break
        marker = r.get("NextMarker") or page[-1]
    assert got == TREE_KEYS
    # with a delimiter NextMarker is given
    r = s3.list_objects(Bucket=tree, Delimiter="/", MaxKeys=2)
    assert r["IsTruncated"] and r["NextMarker"]
    pages = list(s3.get_paginator("list_objects").paginate(Bucket=tree, Delimiter="/",
                                                           PaginationConfig={"PageSize": 2}))
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert keys == [k for k in TREE_KEYS if "/" not in k]
    assert prefixes == ["a/", "b/", "é/"]


def test_list_object_versions(s3: Any, tree: str) -> None:
    r = s3.list_object_versions(Bucket=tree, Prefix="a")
    vs = r["Versions"]
    assert [v["Key"] for v in vs] == [k for k in TREE_KEYS if k.startswith("a")]
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in vs)
    assert all(v["ETag"] == md5_etag(v["Key"].encode()) for v in vs)
    pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=tree, Prefix="a",
                                                                   PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert [v["Key"] for p in pages for v in p.get("Versions", [])] == [k for k in TREE_KEYS if k.startswith("a")]


def test_list_object_versions_encoding_type_url(gw: Gateway, s3: Any, tree: str) -> None:
    """boto3 always asks ListObjectVersions for encoding-type=url; keys that XML 1.0 cannot
    carry (a control character) need it."""
    r = raw(gw.url, "GET", f"/{tree}?versions&encoding-type=url&prefix=c")
    assert r.status == 200
    root = r.xml()  # well-formed
    assert root.findtext(f"{NS}EncodingType") == "url"
    raw_keys = [v.findtext(f"{NS}Key") or "" for v in root.findall(f"{NS}Version")]
    assert [unquote_plus(k) for k in raw_keys] == ["c d", "c+d", "ctl\x01x"]
    versions = [v["Key"] for p in s3.get_paginator("list_object_versions").paginate(Bucket=tree)
                for v in p.get("Versions", [])]
    assert versions == TREE_KEYS


def test_no_ghost_prefixes_after_delete(gw: Gateway, s3: Any, bucket: str) -> None:
    """In S3 a prefix exists only while a key has it: deleting the last object below
    "g/h/" leaves no CommonPrefix "g/" and an empty bucket (that can be deleted)."""
    s3.put_object(Bucket=bucket, Key="g/h/i", Body=b"1")
    s3.put_object(Bucket=bucket, Key="top", Body=b"2")
    s3.delete_object(Bucket=bucket, Key="g/h/i")
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in r.get("Contents", [])] == ["top"]
    assert r.get("CommonPrefixes", []) == []
    assert s3.list_objects_v2(Bucket=bucket, Prefix="g/", Delimiter="/")["KeyCount"] == 0
    # nor does a PUT that failed
    bad = raw(gw.url, "PUT", f"/{bucket}/x/y/z", {"Content-MD5": b64md5(b"other")}, body=b"data")
    assert bad.code() == "BadDigest"
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert r.get("CommonPrefixes", []) == []
    s3.delete_object(Bucket=bucket, Key="top")
    s3.delete_bucket(Bucket=bucket)  # empty in S3's eyes
    assert not (gw.root / bucket).exists()


def test_bucket_level_reads(gw: Gateway, s3: Any, bucket: str) -> None:
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert bucket in names
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") in (None, "")
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


# --------------------------------------------------------------------------- multipart


def test_multipart_full_cycle(gw: Gateway, s3: Any, bucket: str) -> None:
    src = payload(6 * MiB, seed=7)
    s3.put_object(Bucket=bucket, Key="copy-src", Body=src)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp/obj.bin", ContentType="application/x-mp",
                                    Metadata={"origin": "multipart"})
    uid = up["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("mp/obj.bin", uid)]
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix="zz").get("Uploads", []) == []
    p1 = src[:5 * MiB]  # UploadPartCopy with a range
    p2 = payload(5 * MiB + 3, seed=8)
    p3 = src  # UploadPartCopy of the whole object (last part: any size)
    r1 = s3.upload_part_copy(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "copy-src"},
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    assert r1["CopyPartResult"]["ETag"] == md5_etag(p1)
    r2 = s3.upload_part(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, PartNumber=2, Body=p2,
                        ContentMD5=b64md5(p2))
    assert r2["ETag"] == md5_etag(p2)
    r3 = s3.upload_part_copy(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, PartNumber=3,
                             CopySource=f"{bucket}/copy-src")
    assert r3["CopyPartResult"]["ETag"] == md5_etag(p3)
    parts = s3.list_parts(Bucket=bucket, Key="mp/obj.bin", UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts["Parts"]] == [
        (1, len(p1), md5_etag(p1)), (2, len(p2), md5_etag(p2)), (3, len(p3), md5_etag(p3))]
    page = s3.list_parts(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, MaxParts=2)
    assert [p["PartNumber"] for p in page["Parts"]] == [1, 2] and page["IsTruncated"]
    assert page["NextPartNumberMarker"] == 2
    page = s3.list_parts(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, PartNumberMarker=2)
    assert [p["PartNumber"] for p in page["Parts"]] == [3] and not page["IsTruncated"]
    assert not (gw.root / bucket / "mp" / "obj.bin").exists()  # nothing visible before Complete
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp/obj.bin", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in
                  ((1, r1["CopyPartResult"]["ETag"]), (2, r2["ETag"]), (3, r3["CopyPartResult"]["ETag"]))]})
    want = multipart_etag([p1, p2, p3])
    assert done["ETag"] == want
    whole = p1 + p2 + p3
    assert (gw.root / bucket / "mp" / "obj.bin").read_bytes() == whole
    g = s3.get_object(Bucket=bucket, Key="mp/obj.bin")
    assert hashlib.sha256(g["Body"].read()).digest() == hashlib.sha256(whole).digest()
    assert g["ETag"] == want and g["ContentType"] == "application/x-mp"
    assert g["Metadata"] == {"origin": "multipart"}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="mp/obj.bin", UploadId=uid)
    assert err(e) == ("NoSuchUpload", 404)


def test_multipart_abort(gw: Gateway, s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
    r = s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=2, Body=b"y")
    assert err(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]})
    assert err(e) == ("NoSuchUpload", 404)
    # an upload id is only valid for its own key
    uid2 = s3.create_multipart_upload(Bucket=bucket, Key="mine")["UploadId"]
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="other", UploadId=uid2, PartNumber=1, Body=b"y")
    assert err(e) == ("NoSuchUpload", 404)
    for bad in ("0", "10001", "x"):
        r = raw(gw.url, "PUT", f"/{bucket}/mine?partNumber={bad}&uploadId={uid2}", body=b"z")
        assert (r.status, r.code()) == (400, "InvalidArgument")
    r = raw(gw.url, "PUT", f"/{bucket}/mine?partNumber=1&uploadId={uid2}",
            {"Content-MD5": b64md5(b"other")}, body=b"z")
    assert (r.status, r.code()) == (400, "BadDigest")
    assert s3.list_parts(Bucket=bucket, Key="mine", UploadId=uid2).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="mine", UploadId=uid2)
    assert not (gw.root / bucket / "ab").exists()


def test_upload_part_copy_range_must_lie_in_the_source(gw: Gateway, s3: Any, bucket: str) -> None:
    """x-amz-copy-source-range is bytes=first-last (S3: InvalidArgument) inside the source
    (past its end: S3's InvalidRange, 416)."""
    s3.put_object(Bucket=bucket, Key="src", Body=payload(1000))
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    ok = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                             CopySource=f"{bucket}/src", CopySourceRange="bytes=10-19")
    assert ok["CopyPartResult"]["ETag"] == md5_etag(payload(1000)[10:20])
    for rng, want in (("bytes=0-1000", ("InvalidRange", 416)), ("bytes=500-5000", ("InvalidRange", 416)),
                      ("bytes=10-", ("InvalidArgument", 400)), ("bytes=20-10", ("InvalidArgument", 400))):
        with pytest.raises(ClientError) as e:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2,
                                CopySource=f"{bucket}/src", CopySourceRange=rng)
        assert err(e) == want, rng
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="dst", UploadId=uid)["Parts"]] == [1]
    s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid)


def test_multipart_complete_rules(gw: Gateway, s3: Any, bucket: str) -> None:
    key = "rules"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    big1, small, big3, last = payload(5 * MiB, 1), payload(MiB, 2), payload(5 * MiB, 3), b"tail"
    tags = {}
    for n, data in ((1, big1), (2, small), (3, big3), (4, last)):
        tags[n] = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=data)["ETag"]

    def complete(parts: list[tuple[int, str]]) -> Any:
        return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    with pytest.raises(ClientError) as e:
        complete([(1, tags[1]), (3, md5_etag(b"not it"))])
    assert err(e) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as e:
        complete([(1, tags[1]), (7, tags[1])])  # a part that was never uploaded
    assert err(e) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as e:
        complete([(3, tags[3]), (1, tags[1])])
    assert err(e) == ("InvalidPartOrder", 400)
    with pytest.raises(ClientError) as e:
        complete([(1, tags[1]), (1, tags[1])])
    assert err(e) == ("InvalidPartOrder", 400)
    with pytest.raises(ClientError) as e:
        complete([(1, tags[1]), (2, tags[2]), (3, tags[3])])  # 1 MiB middle part
    assert err(e) == ("EntityTooSmall", 400)
    r = raw(gw.url, "POST", f"/{bucket}/{key}?uploadId={uid}", body=b"<CompleteMultipartUpload/>")
    assert (r.status, r.code()) == (400, "MalformedXML")
    r = raw(gw.url, "POST", f"/{bucket}/{key}?uploadId={uid}", body=b"<Complete")
    assert (r.status, r.code()) == (400, "MalformedXML")
    assert not (gw.root / bucket / key).exists()
    # still usable after the failures; a subset of parts; quotes on ETags optional
    done = complete([(1, tags[1].strip('"')), (3, tags[3]), (4, tags[4])])
    assert done["ETag"] == multipart_etag([big1, big3, last])
    assert (gw.root / bucket / key).read_bytes() == big1 + big3 + last
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"')


# --------------------------------------------------------------------------- buckets


def test_create_and_delete_bucket_under_root_mount(gw: Gateway, s3: Any) -> None:
    name = f"new-{uuid.uuid4().hex[:10]}"
    r = s3.create_bucket(Bucket=name)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (gw.root / name).is_dir()
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    # re-creating your own bucket: us-east-1's 200 (the gateway's region); another region's 409
    assert s3.create_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert err(e) == ("BucketAlreadyOwnedByYou", 409)
    s3.put_object(Bucket=name, Key="k", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert err(e) == ("BucketNotEmpty", 409)
    assert (gw.root / name / "k").exists()
    s3.delete_object(Bucket=name, Key="k")
    r = s3.delete_bucket(Bucket=name)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert not (gw.root / name).exists()
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=name)
    assert err(e)[1] == 404
    for bad in ("UPPER", "ab", "-lead", "x" * 64, "under_score"):
        with pytest.raises(ClientError) as e:
            s3.create_bucket(Bucket=bad)
        assert err(e) == ("InvalidBucketName", 400), bad
        assert not (gw.root / bad).exists()


def test_bucket_create_refused_without_root_mount(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    node = meshd(mounts=[f"/data=file://{d}"], args=["--s3-access-key", AK, "--s3-secret-key", SK,
                                                     "--no-default-mount"])
    s3 = s3client(node.endpoints["s3"])
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="newbucket")
    assert err(e) == ("AccessDenied", 403)
    assert "mount" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="data")
    assert err(e) == ("AccessDenied", 403)
    assert d.is_dir()
    assert s3.create_bucket(Bucket="data")["ResponseMetadata"]["HTTPStatusCode"] == 200  # yours (us-east-1)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["data"]
    s3.close()


# --------------------------------------------------------------------------- auth


def test_auth_errors(gw: Gateway, bucket: str) -> None:
    (gw.root / bucket / "secret").write_bytes(b"s")
    wrong = s3client(gw.url, AK, SK + "x")
    with pytest.raises(ClientError) as e:
        wrong.get_object(Bucket=bucket, Key="secret")
    assert err(e) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as e:
        wrong.put_object(Bucket=bucket, Key="written", Body=b"x")
    assert err(e) == ("SignatureDoesNotMatch", 403)
    unknown = s3client(gw.url, "AKIDUNKNOWN", SK)
    with pytest.raises(ClientError) as e:
        unknown.list_objects_v2(Bucket=bucket)
    assert err(e) == ("InvalidAccessKeyId", 403)
    anon = s3client(gw.url, signature_version=UNSIGNED)
    with pytest.raises(ClientError) as e:
        anon.get_object(Bucket=bucket, Key="secret")
    assert err(e) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as e:
        anon.put_object(Bucket=bucket, Key="written", Body=b"x")
    assert err(e) == ("AccessDenied", 403)
    r = raw(gw.url, "GET", f"/{bucket}/secret", signed=False)
    assert (r.status, r.code()) == (403, "AccessDenied") and b"<Code>" in r.body
    r = raw(gw.url, "GET", "/", signed=False)
    assert (r.status, r.code()) == (403, "AccessDenied")
    # a SigV2 header with a made-up signature is refused (whether SigV2 is supported or not)
    r = raw(gw.url, "GET", f"/{bucket}/secret", {"Authorization": f"AWS {AK}:c2lnbmF0dXJl",
                                                 "Date": email.utils.formatdate(usegmt=True)}, signed=False)
    assert r.status in (400, 403), r.body
    assert r.code() in ("InvalidRequest", "AccessDenied", "SignatureDoesNotMatch")
    # a presigned URL signed with the wrong secret
    url = wrong.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "secret"})
    u = urlsplit(url)
    r = raw(gw.url, "GET", f"{u.path}?{u.query}", signed=False)
    assert (r.status, r.code()) == (403, "SignatureDoesNotMatch")
    assert not (gw.root / bucket / "written").exists()
    for c in (wrong, unknown, anon):
        c.close()


def test_signature_binds_path_query_and_headers(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="one", Body=b"1")
    s3.put_object(Bucket=bucket, Key="two", Body=b"2")
    h = sign("GET", f"{gw.url}/{bucket}/one")
    assert raw(gw.url, "GET", f"/{bucket}/one", h, signed=False).body == b"1"
    r = raw(gw.url, "GET", f"/{bucket}/two", h, signed=False)  # replayed on another key
    assert (r.status, r.code()) == (403, "SignatureDoesNotMatch")
    h = sign("GET", f"{gw.url}/{bucket}?list-type=2&prefix=o")
    r = raw(gw.url, "GET", f"/{bucket}?list-type=2&prefix=t", h, signed=False)
    assert (r.status, r.code()) == (403, "SignatureDoesNotMatch")
    h = sign("GET", f"{gw.url}/{bucket}/one", {"Range": "bytes=0-0"})
    r = raw(gw.url, "GET", f"/{bucket}/one", {**h, "Range": "bytes=0-5"}, signed=False)
    assert (r.status, r.code()) == (403, "SignatureDoesNotMatch")
    h = sign("GET", f"{gw.url}/{bucket}/one")
    r = raw(gw.url, "GET", f"/{bucket}/one", {**h, "x-amz-meta-sneaky": "1"}, signed=False)
    assert (r.status, r.code()) == (403, "AccessDenied")  # x-amz-* headers must be signed
    old = datetime(2020, 1, 1, tzinfo=UTC)
    stale = {"X-Amz-Date": old.strftime("%Y%m%dT%H%M%SZ")}
    h = sign("GET", f"{gw.url}/{bucket}/one", stale)
    h["Authorization"] = h["Authorization"].replace(
        datetime.now(UTC).strftime("%Y%m%d"), old.strftime("%Y%m%d"))
    r = raw(gw.url, "GET", f"/{bucket}/one", {**h, **stale}, signed=False)
    assert r.status == 403 and r.code() in ("RequestTimeTooSkewed", "SignatureDoesNotMatch")


def test_anonymous_allowed_without_keys(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    node = meshd(mounts=[f"/data=file://{d}"], args=["--no-default-mount"])
    anon = s3client(node.endpoints["s3"], signature_version=UNSIGNED)
    anon.put_object(Bucket="data", Key="anon.txt", Body=b"anonymous")
    assert (d / "anon.txt").read_bytes() == b"anonymous"
    assert anon.get_object(Bucket="data", Key="anon.txt")["Body"].read() == b"anonymous"
    assert [o["Key"] for o in anon.list_objects_v2(Bucket="data")["Contents"]] == ["anon.txt"]
    r = raw(node.endpoints["s3"], "GET", "/data/anon.txt", signed=False)
    assert (r.status, r.body) == (200, b"anonymous")
    anon.close()


def test_anonymous_allowed_with_keys_when_asked(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "pub.txt").write_bytes(b"public")
    node = meshd(mounts=[f"/data=file://{d}"], args=["--s3-access-key", AK, "--s3-secret-key", SK,
                                                     "--no-default-mount", "--s3-allow-anonymous"])
    anon = s3client(node.endpoints["s3"], signature_version=UNSIGNED)
    assert anon.get_object(Bucket="data", Key="pub.txt")["Body"].read() == b"public"
    good = s3client(node.endpoints["s3"])
    assert good.get_object(Bucket="data", Key="pub.txt")["Body"].read() == b"public"
    bad = s3client(node.endpoints["s3"], AK, "wrong")
    with pytest.raises(ClientError) as e:  # a bad signature is not downgraded to anonymous
        bad.get_object(Bucket="data", Key="pub.txt")
    assert err(e) == ("SignatureDoesNotMatch", 403)
    for c in (anon, good, bad):
        c.close()


# --------------------------------------------------------------------------- unsupported


@pytest.mark.parametrize("sub", ["lifecycle", "website", "encryption", "replication", "notification"])
def test_not_implemented_subresources(gw: Gateway, s3: Any, bucket: str, sub: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    for target in (f"/{bucket}?{sub}", f"/{bucket}/k?{sub}"):
        for method in ("GET", "PUT", "DELETE"):
            r = raw(gw.url, method, target, body=b"<x/>" if method == "PUT" else None)
            assert (r.status, r.code()) == (501, "NotImplemented"), (method, target)
    assert (gw.root / bucket / "k").read_bytes() == b"1"


def test_not_implemented_through_boto3(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    for call in (lambda: s3.get_object_retention(Bucket=bucket, Key="k"),
                 lambda: s3.get_object_legal_hold(Bucket=bucket, Key="k"),
                 lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket),
                 lambda: s3.get_bucket_website(Bucket=bucket),
                 lambda: s3.get_bucket_encryption(Bucket=bucket)):
        with pytest.raises(ClientError) as e:
            call()
        assert err(e) == ("NotImplemented", 501)


def test_method_not_allowed(gw: Gateway) -> None:
    r = raw(gw.url, "DELETE", "/")
    assert r.status == 405 and r.code() == "MethodNotAllowed"


# --------------------------------------------------------------------------- aws-chunked


def _chunk_signing_key(date: str) -> bytes:
    k = hmac.new(("AWS4" + SK).encode(), date.encode(), hashlib.sha256).digest()
    for part in (REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def signed_chunked(url: str, data: bytes, chunk: int, trailer: tuple[str, str] | None = None,
                   tamper: bool = False) -> tuple[dict[str, str], bytes]:
    """Headers (signed by botocore) and an aws-chunked body with chunk signatures computed
    here from the AWS documentation's algorithm (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER])."""
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    encoded_len_placeholder = {"Content-Encoding": "aws-chunked",
                               "x-amz-decoded-content-length": str(len(data))}
    if trailer:
        encoded_len_placeholder["x-amz-trailer"] = trailer[0]
    headers = sign("PUT", url, encoded_len_placeholder, b"", payload_hash=mode)
    auth = headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1].strip()
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = _chunk_signing_key(amz_date[:8])
    empty = hashlib.sha256(b"").hexdigest()
    prev = seed
    out = bytearray()
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for n, piece in enumerate(pieces):
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty,
                         hashlib.sha256(piece).hexdigest()])
        sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        prev = sig
        sent = piece
        if tamper and n == 1:
            sent = bytes([piece[0] ^ 1]) + piece[1:]
        out += f"{len(piece):x};chunk-signature={sig}\r\n".encode() + sent + b"\r\n"
    if trailer:
        line = f"{trailer[0]}:{trailer[1]}"
        sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, prev,
                         hashlib.sha256((line + "\n").encode()).hexdigest()])
        tsig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out += f"{line}\r\nx-amz-trailer-signature:{tsig}\r\n\r\n".encode()
    headers["Content-Length"] = str(len(out))
    return headers, bytes(out)


def test_aws_chunked_signed_payload(gw: Gateway, s3: Any, bucket: str) -> None:
    data = payload(200_000, seed=9)
    url = f"{gw.url}/{bucket}/chunked/obj"
    headers, body = signed_chunked(url, data, 64 * 1024)
    r = raw(gw.url, "PUT", f"/{bucket}/chunked/obj", headers, body=body, signed=False)
    assert r.status == 200, r.body
    assert r.headers["ETag"] == md5_etag(data)
    assert (gw.root / bucket / "chunked" / "obj").read_bytes() == data
    assert s3.get_object(Bucket=bucket, Key="chunked/obj")["Body"].read() == data
    # one flipped bit in the second chunk: refused, the object is unchanged
    headers, body = signed_chunked(url, payload(200_000, seed=10), 64 * 1024, tamper=True)
    r = raw(gw.url, "PUT", f"/{bucket}/chunked/obj", headers, body=body, signed=False)
    assert (r.status, r.code()) == (403, "SignatureDoesNotMatch")
    assert (gw.root / bucket / "chunked" / "obj").read_bytes() == data


def test_aws_chunked_signed_payload_with_trailer(gw: Gateway, bucket: str) -> None:
    data = payload(100_000, seed=11)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    url = f"{gw.url}/{bucket}/trailed"
    headers, body = signed_chunked(url, data, 30_000, trailer=("x-amz-checksum-crc32", crc))
    r = raw(gw.url, "PUT", f"/{bucket}/trailed", headers, body=body, signed=False)
    assert r.status == 200, r.body
    assert (gw.root / bucket / "trailed").read_bytes() == data
    bad = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    headers, body = signed_chunked(url, payload(100_000, seed=12), 30_000,
                                   trailer=("x-amz-checksum-crc32", bad))
    r = raw(gw.url, "PUT", f"/{bucket}/trailed", headers, body=body, signed=False)
    assert (r.status, r.code()) == (400, "BadDigest")
    assert (gw.root / bucket / "trailed").read_bytes() == data


def _force_trailer(params: dict[str, Any], **_: Any) -> None:
    """Make botocore send its aws-chunked body with a trailing checksum over plain http
    (it only does so over https by itself): STREAMING-UNSIGNED-PAYLOAD-TRAILER."""
    algo = params.get("context", {}).get("checksum", {}).get("request_algorithm")
    if isinstance(algo, dict):
        algo["in"] = "trailer"


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA1", "SHA256"])
def test_aws_chunked_unsigned_trailer_from_boto3(gw: Gateway, bucket: str, algorithm: str) -> None:
    c = s3client(gw.url, request_checksum_calculation="when_supported")
    c.meta.events.register("before-call.s3.PutObject", _force_trailer)
    c.meta.events.register("before-call.s3.UploadPart", _force_trailer)
    seen: list[dict[str, Any]] = []
    c.meta.events.register("before-send.s3", lambda request, **_: seen.append(dict(request.headers)))
    data = payload(1_500_000, seed=13)
    c.put_object(Bucket=bucket, Key="trailer.bin", Body=data, ChecksumAlgorithm=algorithm)
    sent = {k.lower(): v for k, v in seen[-1].items()}
    assert sent["x-amz-content-sha256"] in (b"STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                            "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert (gw.root / bucket / "trailer.bin").read_bytes() == data
    assert c.get_object(Bucket=bucket, Key="trailer.bin")["Body"].read() == data
    # multipart parts too
    uid = c.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm=algorithm)["UploadId"]
    p1, p2 = payload(5 * MiB, 14), payload(1000, 15)
    r1 = c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=p1,
                       ChecksumAlgorithm=algorithm)
    r2 = c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=p2,
                       ChecksumAlgorithm=algorithm)
    e1, e2 = r1["ETag"], r2["ETag"]
    assert (e1, e2) == (md5_etag(p1), md5_etag(p2))
    cs = "Checksum" + algorithm  # an upload created with an algorithm needs each part's (as S3)
    c.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1, cs: r1[cs]}, {"PartNumber": 2, "ETag": e2, cs: r2[cs]}]})
    assert (gw.root / bucket / "mp").read_bytes() == p1 + p2
    c.close()


def test_unsigned_trailer_with_wrong_checksum(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"before")
    data = b"hello trailer world"
    bad = base64.b64encode(b"\0\0\0\0").decode()
    body = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
            + f"x-amz-checksum-crc32:{bad}\r\n\r\n".encode())
    h = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
         "x-amz-trailer": "x-amz-checksum-crc32"}
    r = raw(gw.url, "PUT", f"/{bucket}/t", h, body=body, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert (r.status, r.code()) == (400, "BadDigest")
    assert (gw.root / bucket / "t").read_bytes() == b"before"


# --------------------------------------------------------------------------- misc


def test_server_headers_and_request_ids(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    a = raw(gw.url, "GET", f"/{bucket}/k")
    b = raw(gw.url, "GET", f"/{bucket}/missing")
    for r in (a, b):
        assert r.headers["x-amz-request-id"]
    assert a.headers["x-amz-request-id"] != b.headers["x-amz-request-id"]
    root = b.xml()
    assert root.findtext("RequestId") == b.headers["x-amz-request-id"]
    assert root.findtext("Resource") == f"/{bucket}/missing"
    assert email.utils.parsedate_to_datetime(a.headers["Last-Modified"]).timestamp() <= time.time() + 1
