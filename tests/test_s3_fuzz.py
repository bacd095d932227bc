"""Property tests: random requests against the S3 gateway of a real ``meshd embedded``.

Hypothesis builds requests from S3's vocabulary and from garbage alike (methods, paths
with ``%00``, ``..``, very long, non-ASCII and broken percent-encodings, sub-resource
query strings, conditional/range/checksum/copy headers, Authorization values, bodies,
aws-chunked framing) and sends each over a raw socket as valid HTTP/1.1. Whatever the
request, the answer must be an S3 answer: a success, or a 4xx/5xx whose body (for
anything but HEAD) is an S3 XML error document with a ``<Code>``, never a 500
``InternalError``, and it must arrive within the socket timeout (10 s). Afterwards the
node must still be alive and serve a normal PUT and GET.

The node accepts anonymous requests besides its access key (``--s3-allow-anonymous``)
so that unsigned requests reach the handlers; a share of the requests is signed
properly by botocore, so the handlers are also reached through SigV4.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meshd_proc import MeshdProcess

AK = "AKIDFUZZ"
SK = "fuzz-secret"
TIMEOUT = 10.0
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@dataclass
class Target:
    node: MeshdProcess
    root: Path
    host: str
    port: int


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("s3fuzz")
    root = base / "root"
    (root / "data" / "dir").mkdir(parents=True)
    (root / "data" / "obj.txt").write_bytes(b"0123456789" * 100)
    (root / "data" / "dir" / "inner.bin").write_bytes(bytes(range(256)) * 40)
    (root / "empty-bucket").mkdir()
    node = MeshdProcess(base / "node", [f"/=file://{root}"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK, "--s3-allow-anonymous",
                         "--no-default-mount"]).start()
    url = node.endpoints["s3"]
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    try:
        yield Target(node, root, host, int(port))
    finally:
        node.stop()


# --------------------------------------------------------------------------- strategies

PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7f))


def _encode(s: str) -> str:
    return quote(s.encode("utf-8", "surrogatepass"), safe="/")


segment = st.one_of(
    st.sampled_from(["data", "obj.txt", "dir", "inner.bin", "empty-bucket", "nobucket", "..", ".", "",
                     "%00", "%2e%2e", "%2F", "%zz", "%", "%e2%82", "%ff%fe", "%C3%A9", "%c0%af", "a%00b",
                     "~", "UPPER", "x" * 300, "%20", "+", "?", "#"]),
    st.text(alphabet=PCHAR, max_size=20),
    st.text(max_size=12).map(_encode),  # any unicode, percent-encoded as UTF-8
    st.binary(max_size=8).map(lambda b: "".join(f"%{x:02x}" for x in b)),  # any bytes
)

path = st.one_of(
    st.lists(segment, min_size=0, max_size=6).map(lambda segs: "/" + "/".join(segs)),
    st.sampled_from(["/", "//", "/data", "/data/", "/data/obj.txt", "/data/dir/", "/data/dir/inner.bin",
                     "/data//x", "/data/../data/obj.txt", "/" + "a" * 5000, "/data/" + "k/" * 600,
                     "/data/" + "%41" * 1100]),
)

QUERY_KEYS = ["uploads", "uploadId", "partNumber", "list-type", "max-keys", "continuation-token", "delete",
              "acl", "versionId", "response-content-type", "response-content-disposition", "encoding-type",
              "prefix", "delimiter", "marker", "start-after", "fetch-owner", "location", "versioning",
              "versions", "tagging", "part-number-marker", "max-parts", "key-marker", "upload-id-marker",
              "max-uploads", "x-id", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature", "AWSAccessKeyId", "Signature", "policy", "select",
              "restore", "cors", "website", "attributes"]
query_value = st.one_of(
    st.sampled_from(["", "1", "2", "0", "-1", "1000", "1001", "99999999999999999999", "true", "url", "/", "%2F",
                     "null", "AWS4-HMAC-SHA256", "AK/20240101/us-east-1/s3/aws4_request", "20240101T000000Z",
                     "604801", "host", "0" * 64, "%zz", "%00", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "==",
                     "text/plain%0D%0AX-Injected:%201", "a%0Ab", "%C3%A9"]),
    st.text(alphabet=PCHAR, max_size=30),
    st.text(max_size=20).map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
)
query = st.one_of(
    st.just(""),
    st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), st.text(alphabet=PCHAR, max_size=10)),
                       st.one_of(st.none(), query_value)), max_size=6)
    .map(lambda kv: "&".join(k if v is None else f"{k}={v}" for k, v in kv)),
    st.text(alphabet=VISIBLE, max_size=40).map(lambda s: s.replace("#", "%23")),
)

header_value = st.one_of(
    st.sampled_from(["", "*", "bytes=0-0", "bytes=-1", "bytes=5-", "bytes=99999-", "bytes=0-1,3-4", "bytes=x",
                     '"etag"', "W/\"x\"", "Mon, 01 Jan 2024 00:00:00 GMT", "not a date", "0", "-1",
                     "18446744073709551616", "UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                     "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                     "0" * 64, hashlib.sha256(b"").hexdigest(), "1B2M2Y8AsgTpgAmY7PhCfg==", "AAAAAA==", "%%%",
                     "aws-chunked", "x-amz-checksum-crc32", "x-amz-checksum-sha256,x-amz-checksum-crc32",
                     "COPY", "REPLACE", "data/obj.txt", "/data/obj.txt", "data/dir/inner.bin?versionId=null",
                     "data/obj.txt?versionId=abc", "nobucket/x", "data", "/data/%zz", "20240101T000000Z",
                     "data.localhost", "empty-bucket.localhost:1", "localhost", "\u00e9\u00ff"]),
    st.text(alphabet=VISIBLE + " \u00e9\u00ff", max_size=60),
)

AUTH = st.one_of(
    st.sampled_from([
        "", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 ", "AWS AKID:c2ln", "Bearer x", "AWS4-HMAC-SHA512 Credential=x",
        f"AWS4-HMAC-SHA256 Credential={AK}/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "Signature=" + "0" * 64,
        f"AWS4-HMAC-SHA256 Credential={AK}/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date,"
        " Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=/20240101/us-east-1/s3/aws4_request, SignedHeaders=, Signature=",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/e/f/g, SignedHeaders=HOST;;, Signature=zz",
        "AWS4-HMAC-SHA256 Credential=x, Credential=y, SignedHeaders=host, Signature=" + "1" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/99999999/r/s3/aws4_request,SignedHeaders=host,Signature=" + "f" * 64,
    ]),
    st.text(alphabet=VISIBLE + " ", max_size=200),
)

HEADER_NAMES = ["Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Content-MD5",
                "Content-Type", "x-amz-content-sha256", "x-amz-decoded-content-length", "x-amz-copy-source",
                "x-amz-copy-source-range", "x-amz-copy-source-if-match", "x-amz-metadata-directive",
                "x-amz-meta-a", "x-amz-meta-" + "m" * 50, "Content-Encoding", "x-amz-trailer",
                "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-checksum-crc32c", "x-amz-date", "Date",
                "Host", "x-mesh-nocache", "Expect", "x-amz-checksum-algorithm", "x-amz-sdk-checksum-algorithm",
                "x-amz-server-side-encryption", "x-amz-acl", "x-amz-tagging"]

# Expect is "100-continue" here: other values are test_unknown_expect's (aiohttp answers them itself).
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=6).map(
    lambda h: {k: ("100-continue" if k == "Expect" else v) for k, v in h.items()})


def _chunked(data: bytes, sizes: list[int], trailer: str) -> bytes:
    out = bytearray()
    i = 0
    for n in sizes:
        piece = data[i:i + n]
        i += n
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n" + trailer.encode() + b"\r\n"
    return bytes(out)


body = st.one_of(
    st.just(b""),
    st.binary(max_size=3000),
    st.sampled_from([
        b"<Delete><Object><Key>obj.txt</Key></Object><Quiet>true</Quiet></Delete>",
        b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>99999999999999999999</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
        b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><Delete><Object><Key>&b;</Key>'
        b"</Object></Delete>",
        b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "file:///etc/passwd"><Delete/>',
        b"<Delete><Object><Key></Key></Object></Delete>",
        b"<Delete><Object></Object></Delete>",
        b"\xff\xfe<\x00",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"5;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n",
        b"zz\r\n",
        b"ffffffffffffffff\r\nx",
        b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
        b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:not base64\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
    ]),
    st.builds(_chunked, st.binary(max_size=500), st.lists(st.integers(0, 200), max_size=5),
              st.sampled_from(["", "x-amz-checksum-crc32:AAAAAA==\r\n", "garbage\r\n",
                               "x-amz-checksum-sha256:" + "A" * 44 + "\r\n"])),
)

# Methods the HTTP parser knows (it refuses others before the gateway sees them).
METHOD = st.one_of(st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]),
                   st.sampled_from(["OPTIONS", "PATCH", "TRACE", "PROPFIND", "COPY", "MKCOL", "MOVE", "LOCK",
                                    "SEARCH", "REPORT", "PURGE", "LINK"]))


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    chunked: bool  # send the body with Transfer-Encoding: chunked
    sign: bool  # signed by botocore with the node's key


requests = st.builds(
    Request,
    method=METHOD,
    target=st.tuples(path, query).map(lambda pq: pq[0] + ("?" + pq[1] if pq[1] else "")),
    headers=st.one_of(headers, st.tuples(headers, AUTH).map(lambda ha: {**ha[0], "Authorization": ha[1]})),
    body=body,
    chunked=st.booleans(),
    sign=st.booleans(),
)


# --------------------------------------------------------------------------- sending


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send(t: Target, req: Request) -> Answer:
    hdrs = dict(req.headers)
    hdrs.setdefault("Host", f"{t.host}:{t.port}")
    if req.sign:
        hdrs.pop("Authorization", None)
        hdrs.pop("x-amz-content-sha256", None)
        host = hdrs["Host"]
        aws = AWSRequest(method=req.method, url=f"http://{host}{req.target}", headers=dict(hdrs), data=req.body)
        try:
            S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
            hdrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in aws.headers.items()}
        except Exception:  # botocore cannot sign this one (e.g. an odd Host): send it unsigned
            pass
    if req.chunked and req.method not in ("GET", "HEAD"):
        hdrs["Transfer-Encoding"] = "chunked"
        hdrs.pop("Content-Length", None)
        payload = (b"".join(f"{len(req.body[i:i + 700]):x}\r\n".encode() + req.body[i:i + 700] + b"\r\n"
                            for i in range(0, len(req.body), 700)) + b"0\r\n\r\n")
    else:
        hdrs["Content-Length"] = str(len(req.body))
        payload = req.body
    hdrs["Connection"] = "close"
    head = f"{req.method} {req.target} HTTP/1.1\r\n".encode("ascii")
    for k, v in hdrs.items():
        head += k.encode("latin-1") + b": " + v.encode("latin-1", "replace") + b"\r\n"
    sock = socket.create_connection((t.host, t.port), timeout=TIMEOUT)
    try:
        sock.sendall(head + b"\r\n" + payload)
        resp = http.client.HTTPResponse(sock, method=req.method)
        resp.begin()  # skips a 100 Continue
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        sock.close()


def check(req: Request, ans: Answer) -> None:
    assert ans.status != 500, (req, ans)
    assert 100 <= ans.status < 600, (req, ans)
    if ans.status < 400:
        return
    if req.method == "HEAD":
        assert ans.body == b""
        return
    try:
        root = ET.fromstring(ans.body)
    except ET.ParseError as e:
        raise AssertionError(f"not an XML error document ({e}): {req!r} -> {ans!r}") from None
    assert root.tag == "Error", (req, ans)
    code = root.findtext("Code")
    assert code, (req, ans)
    assert code != "InternalError", (req, ans)


def assert_healthy(t: Target) -> None:
    assert t.node.alive()
    c = boto3.client("s3", endpoint_url=f"http://{t.host}:{t.port}", aws_access_key_id=AK,
                     aws_secret_access_key=SK, region_name="us-east-1",
                     config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                   retries={"max_attempts": 1}, connect_timeout=TIMEOUT, read_timeout=TIMEOUT))
    try:
        c.head_bucket(Bucket="data")
        c.put_object(Bucket="data", Key="health/check.bin", Body=b"still alive" * 1000)
        got: Any = c.get_object(Bucket="data", Key="health/check.bin")["Body"].read()
        assert got == b"still alive" * 1000
        assert (t.root / "data" / "health" / "check.bin").read_bytes() == got
    finally:
        c.close()


# --------------------------------------------------------------------------- properties


def test_random_requests_get_s3_answers(target: Target) -> None:
    @FUZZ
    @given(req=requests)
    def prop(req: Request) -> None:
        check(req, send(target, req))

    prop()
    assert_healthy(target)


def test_signed_requests_on_real_objects(target: Target) -> None:
    """Properly signed requests with any key and headers, on the bucket holding objects."""

    @settings(FUZZ, max_examples=60)
    @given(method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST"]),
           key=st.text(min_size=1, max_size=40).map(_encode),
           sub=st.sampled_from(["", "?uploads", "?uploadId=" + "A" * 32, "?partNumber=1&uploadId=x", "?delete",
                                "?list-type=2&encoding-type=url", "?versions", "?versionId=null",
                                "?response-content-type=a%0Db"]),
           hdrs=headers, data=body)
    def prop(method: str, key: str, sub: str, hdrs: dict[str, str], data: bytes) -> None:
        hdrs.pop("Host", None)
        req = Request(method, f"/data/{key}{sub}", hdrs, data, chunked=False, sign=True)
        check(req, send(target, req))

    prop()
    assert_healthy(target)


@pytest.mark.parametrize("expect", ["*", "200-ok", ""])
def test_unknown_expect_gets_s3_answer(target: Target, expect: str) -> None:
    """An Expect header the server does not understand still gets an S3 answer, not the
    web framework's own text/plain response."""
    for method, body in (("GET", b""), ("PUT", b"expect body")):
        req = Request(method, "/data/expect-test", {"Expect": expect}, body, chunked=False, sign=False)
        ans = send(target, req)
        check(req, ans)
        assert "x-amz-request-id" in ans.headers, ans


def test_node_alive_after_fuzzing(target: Target) -> None:
    """After the properties (in file order): the node still works and logged no internal error."""
    assert_healthy(target)
    log = target.node.log.read_text(errors="replace")
    assert "internal error in S3 request" not in log, log[-5000:]
