"""gateway.sigv4: SigV4 verification against what botocore really sends, AWS's published
vectors, and property tests (any input gives an AuthResult or an S3Error, never anything
else, and never hangs).

Requests are signed by botocore itself: a boto3 client whose ``before-send`` hook
captures the request and answers it (no network), ``generate_presigned_url``, or
``S3SigV4Auth``/``S3SigV4QueryAuth`` on an ``AWSRequest``, with botocore's clock frozen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import io
import random
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import unquote_to_bytes, urlsplit

import boto3
import crc32c
import pytest
import yarl
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha1Checksum, Sha256Checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import S3Error
from gateway.sigv4 import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    AuthResult,
    check_checksum,
    check_sha256,
    decode_aws_chunked,
    verify_request,
)

AK = "AKIDGATEWAYTEST"
SK = "s3cr3t/Key+With=Odd~Chars"
KEYS = {AK: SK, "OTHERKEY": "other-secret"}
FIXED = datetime(2026, 3, 4, 5, 6, 7)  # botocore's clock (naive UTC)
NOW = FIXED.replace(tzinfo=UTC)  # the server's clock
FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Req:
    """A request as the gateway sees it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""

    def verify(self, keys: dict[str, str] | None = None, *, now: datetime = NOW,
               allow_anonymous: bool = False) -> AuthResult:
        return verify_request(self.method, self.path, self.query, self.headers,
                              KEYS if keys is None else keys, allow_anonymous=allow_anonymous,
                              now=now)

    def with_headers(self, **changes: str | None) -> Req:
        headers = dict(self.headers)
        for name, value in changes.items():
            name = name.replace("_", "-")
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return replace(self, headers=headers)


def from_url(method: str, url: str, headers: Any, body: bytes = b"") -> Req:
    parts = urlsplit(url)
    hdrs = {"host": parts.netloc}
    for name, value in headers.items():
        hdrs[name.lower()] = value.decode() if isinstance(value, bytes) else str(value)
    return Req(method, parts.path, parts.query, hdrs, body)


@contextmanager
def frozen(when: datetime = FIXED) -> Iterator[None]:
    """botocore's clock stopped at ``when``: its own signers' and, when awscrt is installed
    (botocore then signs with the CRT's), those too."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("botocore.auth.get_current_datetime", return_value=when))
        if importlib.util.find_spec("awscrt") is not None:
            aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
            stack.enter_context(mock.patch("botocore.crt.auth.get_current_datetime",
                                           side_effect=lambda remove_tzinfo=True: when if remove_tzinfo else aware))
        yield


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter([b""])

    def read(self, *_: Any) -> bytes:
        return b""


def client(endpoint: str = "http://localhost:9000", style: str = "path", *,
           region: str = "us-east-1", key: str = AK, secret: str = SK,
           signature_version: str | None = None) -> Any:
    session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                    region_name=region)
    return session.client("s3", endpoint_url=endpoint,
                          config=Config(s3={"addressing_style": style},
                                        retries={"max_attempts": 1},
                                        signature_version=signature_version))


def capture(op: Callable[[Any], Any], endpoint: str = "http://localhost:9000",
            style: str = "path", **kw: Any) -> Req:
    """What a boto3 client sends for ``op``: the first request, answered without network."""
    c = client(endpoint, style, **kw)
    got: list[Req] = []

    def hook(request: Any, **_: Any) -> AWSResponse:
        body = request.body
        data = body.read() if hasattr(body, "read") else (body or b"")
        got.append(from_url(request.method, request.url, request.headers,
                            data.encode() if isinstance(data, str) else data))
        return AWSResponse(request.url, 200, {}, _Raw())

    c.meta.events.register("before-send", hook)
    with frozen():
        try:
            op(c)
        except Exception:  # the empty 200 answer may not parse: only the request matters
            pass
    return got[0]


def sign(method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"", *,
         secret: str = SK, region: str = "us-east-1", signer: type = S3SigV4Auth) -> Req:
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    with frozen():
        signer(Credentials(AK, secret), "s3", region).add_auth(request)
    return from_url(method, request.url, request.headers, body)


def presign(method: str, url: str, expires: int = 60, headers: dict[str, str] | None = None,
            secret: str = SK) -> Req:
    request = AWSRequest(method=method, url=url, headers=headers or {})
    with frozen():
        S3SigV4QueryAuth(Credentials(AK, secret), "s3", "us-east-1", expires=expires).add_auth(
            request)
    return from_url(method, request.url, request.headers)


def error(fn: Callable[[], object]) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn()
    return info.value


def error_text(e: S3Error) -> str:
    return " ".join([e.code, e.message, *e.extra.values()])


async def aiter_of(data: bytes, splits: list[int] | int) -> AsyncIterator[bytes]:
    if isinstance(splits, int):
        for i in range(0, len(data), splits):
            yield data[i:i + splits]
        return
    last = 0
    for s in [*sorted(splits), len(data)]:
        if s > last:
            yield data[last:s]
            last = s


async def collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in it])


def decode(body: bytes, auth: AuthResult, splits: list[int] | int = 65536,
           decoded_length: int | None = None) -> bytes:
    async def run() -> bytes:
        return await asyncio.wait_for(collect(decode_aws_chunked(
            aiter_of(body, splits), auth, decoded_length=decoded_length)), timeout=30)
    return asyncio.run(run())


def key_for(secret: str, date: str, region: str = "us-east-1") -> bytes:
    """The signing key, computed here independently of gateway.sigv4."""
    k = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_signed(data: bytes, chunk: int, key: bytes, amz_date: str, scope: str, seed: str,
                  trailers: list[tuple[str, str]] | None = None) -> bytes:
    """An aws-chunked body with chunk signatures (and signed trailers), per the AWS spec."""
    out, prev = bytearray(), seed

    def sig(kind: str, *lines: str) -> str:
        sts = "\n".join([kind, amz_date, scope, prev, *lines])
        return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()

    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        prev = sig("AWS4-HMAC-SHA256-PAYLOAD", EMPTY_SHA256, sha(piece))
        out += f"{len(piece):x};chunk-signature={prev}\r\n".encode() + piece + b"\r\n"
    prev = sig("AWS4-HMAC-SHA256-PAYLOAD", EMPTY_SHA256, EMPTY_SHA256)
    out += f"0;chunk-signature={prev}\r\n".encode()
    if trailers:
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
        for n, v in trailers:
            out += f"{n}:{v}\r\n".encode()
        signature = sig("AWS4-HMAC-SHA256-TRAILER", sha(canonical.encode()))
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return bytes(out + b"\r\n")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


class _StreamingSigner(S3SigV4Auth):
    """botocore's S3 signer, for a STREAMING-AWS4-HMAC-SHA256-PAYLOAD seed signature
    (botocore itself never sends signed chunks)."""

    mode = STREAMING_PAYLOAD

    def payload(self, request: Any) -> str:
        return self.mode


class _StreamingTrailerSigner(_StreamingSigner):
    mode = STREAMING_PAYLOAD_TRAILER


# --------------------------------------------------------------------------- what botocore sends

WEIRD_KEY = "dir one/a b+c=d&e~f%g$h@i,j;k:l'm(n)!o*p/ü日本 語.txt"
BUCKET = "bucket"

OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "get": lambda c: c.get_object(Bucket=BUCKET, Key="plain.txt"),
    "get-weird-key": lambda c: c.get_object(Bucket=BUCKET, Key=WEIRD_KEY),
    "get-range-response-params": lambda c: c.get_object(
        Bucket=BUCKET, Key=WEIRD_KEY, Range="bytes=0-9",
        ResponseContentDisposition='attachment; filename="a b+c.txt"'),
    "head": lambda c: c.head_object(Bucket=BUCKET, Key=WEIRD_KEY),
    "delete": lambda c: c.delete_object(Bucket=BUCKET, Key=WEIRD_KEY),
    "put": lambda c: c.put_object(Bucket=BUCKET, Key=WEIRD_KEY, Body=b"hello world"),
    "put-metadata": lambda c: c.put_object(
        Bucket=BUCKET, Key="k", Body=b"x" * 1000,
        Metadata={"note": "  spaced   out  value ", "other": "a,b"}, ContentType="text/plain"),
    "put-empty": lambda c: c.put_object(Bucket=BUCKET, Key="empty", Body=b""),
    "upload-fileobj": lambda c: c.upload_fileobj(io.BytesIO(b"data" * 100), BUCKET, WEIRD_KEY),
    "list-v2": lambda c: c.list_objects_v2(Bucket=BUCKET, Prefix="a b+c/é", Delimiter="/",
                                           ContinuationToken="tok+/=en==", MaxKeys=7),
    "list-buckets": lambda c: c.list_buckets(),
    "delete-objects-post": lambda c: c.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": "a b"}, {"Key": WEIRD_KEY}]}),
    "create-multipart-post": lambda c: c.create_multipart_upload(Bucket=BUCKET, Key=WEIRD_KEY),
    "upload-part": lambda c: c.upload_part(Bucket=BUCKET, Key=WEIRD_KEY, PartNumber=3,
                                           UploadId="up/load+id=", Body=b"part"),
    "copy": lambda c: c.copy_object(Bucket=BUCKET, Key="dst key",
                                    CopySource={"Bucket": BUCKET, "Key": WEIRD_KEY}),
}
ENDPOINTS = [("http://localhost:9000", "path"), ("http://s3.example.test", "virtual"),
             ("https://localhost:9443", "path"), ("https://s3.example.test:8443", "virtual")]


@pytest.mark.parametrize("endpoint,style", ENDPOINTS)
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_botocore_client_requests_verify(op: str, endpoint: str, style: str) -> None:
    req = capture(OPERATIONS[op], endpoint, style)
    result = req.verify()
    assert result.access_key == AK
    assert result.payload_hash == req.headers["x-amz-content-sha256"]
    assert result.amz_date == FIXED.strftime("%Y%m%dT%H%M%SZ")
    assert result.scope == "20260304/us-east-1/s3/aws4_request"
    assert result.seed_signature in req.headers["authorization"]
    if style == "virtual" and op != "list-buckets":
        assert req.headers["host"].startswith(BUCKET + ".")
    # Same request from a case-insensitive multidict, with the headers' original case.
    md = CIMultiDict((k.title(), v) for k, v in req.headers.items())
    assert verify_request(req.method, req.path, req.query, md, KEYS, allow_anonymous=False,
                          now=NOW).access_key == AK


def test_what_botocore_sends_for_put_object() -> None:
    """Plain http: the body's hex sha256 plus an x-amz-checksum-crc32 header, no aws-chunked;
    https: aws-chunked with STREAMING-UNSIGNED-PAYLOAD-TRAILER and a crc32 trailer."""
    body = b"hello world"
    for op in ("put", "upload-fileobj"):
        plain = capture(OPERATIONS[op], "http://localhost:9000")
        expected = body if op == "put" else b"data" * 100
        assert plain.headers["x-amz-content-sha256"] == sha(expected)
        assert plain.headers["x-amz-checksum-crc32"] == crc32_b64(expected)
        assert "content-encoding" not in plain.headers and plain.body == expected
        tls = capture(OPERATIONS[op], "https://localhost:9443")
        assert tls.headers["x-amz-content-sha256"] == STREAMING_UNSIGNED_TRAILER
        assert tls.headers["content-encoding"] == "aws-chunked"
        assert tls.headers["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert tls.headers["x-amz-decoded-content-length"] == str(len(expected))
        assert tls.body.endswith(f"0\r\nx-amz-checksum-crc32:{crc32_b64(expected)}\r\n\r\n"
                                 .encode())
        auth = tls.verify()
        assert auth.trailer == "x-amz-checksum-crc32"
        assert decode(tls.body, auth, 1, len(expected)) == expected


def test_botocore_repeated_headers_and_regions() -> None:
    req = AWSRequest(method="GET", url="http://localhost:9000/b/k")
    req.headers["x-amz-meta-multi"] = "first  value"
    req.headers["x-amz-meta-multi"] = " second"  # email.message: a second header
    with frozen():
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
    md = CIMultiDict([("Host", "localhost:9000")])
    for name, value in req.headers.items():
        md.add(name, value)
    assert len(md.getall("x-amz-meta-multi")) == 2
    assert verify_request("GET", "/b/k", "", md, KEYS, allow_anonymous=False,
                          now=NOW).access_key == AK
    for region in ("eu-central-1", "local", "anything-at-all"):
        signed = capture(OPERATIONS["get"], region=region)
        assert signed.verify().scope == f"20260304/{region}/s3/aws4_request"


def test_date_header_instead_of_x_amz_date() -> None:
    req = sign("GET", "http://localhost:9000/b/k", {"Date": "whatever"})
    assert "x-amz-date" not in req.headers and "date" in req.headers
    assert req.verify().amz_date == "20260304T050607Z"
    e = error(lambda: req.with_headers(date="Wed, 04 Mar 2026 05:06:08 GMT").verify())
    assert e.code == "SignatureDoesNotMatch"
    e = error(lambda: req.with_headers(date="not a date").verify())
    assert (e.code, e.status) == ("AccessDenied", 403)


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("key", [
    "a b", "a+b", "a=b&c", "tilde~x", "per%cent", "ünï/cödé/日本", "slash//double", "dot/./x",
    "q?mark#hash", "sp ace/ +=&~%"])
def test_keys_botocore_encodes_and_other_encodings(key: str) -> None:
    req = capture(lambda c: c.get_object(Bucket=BUCKET, Key=key))
    assert req.verify().access_key == AK
    # Other clients encode the same key differently: lower-case escapes, unreserved or
    # sub-delims characters left as they are. The key is the same, so is the signature.
    variants = {req.path.replace("%3D", "=").replace("%26", "&").replace("%2B", "+"),
                req.path.replace("~", "%7E"),
                re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), req.path)}
    for path in variants:
        assert replace(req, path=path).verify().access_key == AK, path


def test_path_signed_verbatim_is_accepted() -> None:
    # A client that signs its request target as sent, with '=' and '&' not encoded.
    req = sign("GET", "http://localhost:9000/b/a=b&c,d")
    assert req.path == "/b/a=b&c,d"
    assert req.verify().access_key == AK
    e = error(lambda: replace(req, path="/b/a=b&c,e").verify())
    assert e.code == "SignatureDoesNotMatch"


def test_plus_in_query_means_space() -> None:
    """aiohttp (yarl) reads '+' in a query as a space, so the signature must too."""
    assert yarl.URL("http://h/?prefix=a+b").query["prefix"] == "a b"
    plus = capture(lambda c: c.list_objects_v2(Bucket=BUCKET, Prefix="a+b"))
    space = capture(lambda c: c.list_objects_v2(Bucket=BUCKET, Prefix="a b"))
    assert "prefix=a%2Bb" in plus.query and "prefix=a%20b" in space.query
    assert plus.verify().access_key == space.verify().access_key == AK
    # The signed "a+b" cannot be replayed as "a b" ...
    replayed = replace(plus, query=plus.query.replace("a%2Bb", "a+b"))
    assert error(replayed.verify).code == "SignatureDoesNotMatch"
    # ... while other spellings of the same value verify.
    assert replace(space, query=space.query.replace("a%20b", "a+b")).verify()
    assert replace(plus, query=plus.query.replace("a%2Bb", "a%2bb")).verify()


def test_query_order_and_empty_values() -> None:
    req = sign("GET", "http://localhost:9000/b?uploads&b=2&a=1&a=0&empty=")
    assert req.verify().access_key == AK
    assert replace(req, query="a=0&empty=&b=2&uploads=&a=1").verify()
    assert error(lambda: replace(req, query="a=1&b=2&uploads&empty=").verify()).code == \
        "SignatureDoesNotMatch"


# --------------------------------------------------------------------------- rejections


@pytest.fixture
def signed_put() -> Req:
    return capture(lambda c: c.put_object(Bucket=BUCKET, Key="k y+ü", Body=b"body",
                                          Metadata={"m": "v"}))


def test_wrong_secret_never_leaks(signed_put: Req) -> None:
    e = error(lambda: signed_put.verify({AK: "wrong-secret"}))
    assert (e.code, e.status) == ("SignatureDoesNotMatch", 403)
    # What the server computed with its secret: botocore signing the same request with it.
    server_side = capture(lambda c: c.put_object(Bucket=BUCKET, Key="k y+ü", Body=b"body",
                                                 Metadata={"m": "v"}), secret="wrong-secret")
    computed = server_side.headers["authorization"].rsplit("Signature=", 1)[1]
    text = error_text(e)
    assert "wrong-secret" not in text and SK not in text and computed not in text
    assert e.extra["CanonicalRequest"].startswith("PUT\n/bucket/k%20y%2B%C3%BC\n")


@pytest.mark.parametrize("tamper", ["path", "query", "method", "header", "payload", "date",
                                    "host", "signed-headers"])
def test_tampering_is_detected(signed_put: Req, tamper: str) -> None:
    r = signed_put
    if tamper == "path":
        r = replace(r, path=r.path + "x")
    elif tamper == "query":
        r = replace(r, query="versionId=1")
    elif tamper == "method":
        r = replace(r, method="POST")
    elif tamper == "header":
        r = r.with_headers(x_amz_meta_m="w")
    elif tamper == "payload":
        r = r.with_headers(x_amz_content_sha256=sha(b"other body"))
    elif tamper == "date":
        r = r.with_headers(x_amz_date="20260304T050608Z")
    elif tamper == "host":
        r = r.with_headers(host="localhost:9001")
    else:
        r = r.with_headers(authorization=r.headers["authorization"].replace(
            "SignedHeaders=", "SignedHeaders=content-md5;"))
    assert error(r.verify).code == "SignatureDoesNotMatch"


def test_unknown_key_skew_and_missing_headers(signed_put: Req) -> None:
    e = error(lambda: signed_put.verify({"SOMEONE": SK}))
    assert (e.code, e.status, e.extra["AWSAccessKeyId"]) == ("InvalidAccessKeyId", 403, AK)
    for skew in (timedelta(minutes=16), -timedelta(minutes=16), timedelta(days=400)):
        e = error(lambda s=skew: signed_put.verify(now=NOW + s))
        assert (e.code, e.status) == ("RequestTimeTooSkewed", 403)
    assert signed_put.verify(now=NOW + timedelta(minutes=14)).access_key == AK
    assert signed_put.verify(now=FIXED - timedelta(minutes=14)).access_key == AK  # naive: UTC
    e = error(lambda: signed_put.with_headers(x_amz_content_sha256=None).verify())
    assert (e.code, e.status) == ("InvalidRequest", 400)
    assert e.message == "Missing required header for this request: x-amz-content-sha256"
    e = error(lambda: signed_put.with_headers(x_amz_content_sha256="STREAMING-FOO").verify())
    assert (e.code, e.status) == ("InvalidArgument", 400)
    e = error(lambda: signed_put.with_headers(x_amz_acl="public-read").verify())
    assert (e.code, e.status, e.extra["HeadersNotSigned"]) == ("AccessDenied", 403, "x-amz-acl")
    e = error(lambda: signed_put.with_headers(x_amz_date=None).verify())
    assert (e.code, e.status) == ("AccessDenied", 403)


@pytest.mark.parametrize("auth,code", [
    ("AWS AKID:c2lnbmF0dXJl", "InvalidRequest"),
    ("AWS4-ECDSA-P256-SHA256 Credential=x", "InvalidRequest"),
    ("Bearer abc", "InvalidArgument"),
    ("", "InvalidArgument"),
    ("AWS4-HMAC-SHA256", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/s3/aws4_request, "
     "SignedHeaders=host;x-amz-content-sha256;x-amz-date", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/s3, SignedHeaders=host, "
     "Signature={sig}", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260305/us-east-1/s3/aws4_request, SignedHeaders=host, "
     "Signature={sig}", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/ec2/aws4_request, SignedHeaders=host,"
     " Signature={sig}", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/s3/aws5_request, SignedHeaders=host,"
     " Signature={sig}", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/s3/aws4_request, "
     "SignedHeaders=x-amz-date, Signature={sig}", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304/us-east-1/s3/aws4_request, "
     "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=xyz",
     "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential={ak}/20260304//s3/aws4_request, SignedHeaders=host,"
     " Signature={sig}", "AuthorizationHeaderMalformed"),
])
def test_malformed_authorization(auth: str, code: str) -> None:
    req = sign("GET", "http://localhost:9000/b/k")
    bad = req.with_headers(authorization=auth.format(ak=AK, sig="0" * 64))
    e = error(bad.verify)
    assert (e.code, e.status) == (code, 400)
    if auth.startswith("AWS "):
        assert "Version 2" in e.message


def test_anonymous_and_mixed_mechanisms() -> None:
    anon = Req("GET", "/b/k", "", {"host": "localhost"})
    assert error(anon.verify).code == "AccessDenied"
    assert anon.verify(allow_anonymous=True) == AuthResult(None, UNSIGNED_PAYLOAD)
    hashed = anon.with_headers(x_amz_content_sha256=sha(b"x"))
    assert hashed.verify(allow_anonymous=True).payload_hash == sha(b"x")
    e = error(lambda: anon.with_headers(x_amz_content_sha256="nope").verify(
        allow_anonymous=True))
    assert e.code == "InvalidArgument"
    e = error(lambda: anon.with_headers(x_amz_content_sha256=STREAMING_PAYLOAD).verify(
        allow_anonymous=True))
    assert e.code == "InvalidRequest"
    sigv2 = replace(anon, query="AWSAccessKeyId=AK&Expires=1&Signature=abc")
    e = error(lambda: sigv2.verify(allow_anonymous=True))
    assert e.code == "InvalidRequest" and "Version 2" in e.message
    url = presign("GET", "http://localhost:9000/b/k")
    both = url.with_headers(authorization=sign("GET", "http://localhost:9000/b/k")
                            .headers["authorization"])
    assert error(lambda: both.verify(allow_anonymous=True)).code == "InvalidArgument"


def test_aws_documentation_get_vector() -> None:
    """docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html, GET Object."""
    headers = {
        "host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": "20130524T000000Z",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
        "s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature="
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"}
    result = verify_request("GET", "/test.txt", "", headers, AWS_DOC_KEYS, allow_anonymous=False,
                            now=AWS_DOC_NOW)
    assert result.access_key == "AKIAIOSFODNN7EXAMPLE"
    e = error(lambda: verify_request("GET", "/test.txt", "", {**headers, "range": "bytes=0-8"},
                                     AWS_DOC_KEYS, allow_anonymous=False, now=AWS_DOC_NOW))
    assert e.code == "SignatureDoesNotMatch"


# --------------------------------------------------------------------------- presigned URLs


@pytest.mark.parametrize("endpoint,style", ENDPOINTS[:2])
@pytest.mark.parametrize("method,op", [("GET", "get_object"), ("PUT", "put_object"),
                                       ("HEAD", "head_object"), ("DELETE", "delete_object")])
def test_presigned_urls_from_boto3(endpoint: str, style: str, method: str, op: str) -> None:
    c = client(endpoint, style, signature_version="s3v4")
    with frozen():
        url = c.generate_presigned_url(op, Params={"Bucket": BUCKET, "Key": WEIRD_KEY},
                                       ExpiresIn=60)
    req = from_url(method, url, {})
    result = req.verify(now=NOW + timedelta(seconds=30))
    assert (result.access_key, result.payload_hash) == (AK, UNSIGNED_PAYLOAD)
    assert req.verify(now=NOW - timedelta(minutes=14)).access_key == AK  # clock skew
    e = error(lambda: req.verify(now=NOW + timedelta(seconds=61)))
    assert (e.code, e.status, e.message) == ("AccessDenied", 403, "Request has expired")
    e = error(lambda: req.verify(now=NOW - timedelta(minutes=16)))
    assert (e.code, e.status) == ("AccessDenied", 403)
    other = "POST" if method != "POST" else "GET"
    assert error(lambda: replace(req, method=other).verify()).code == "SignatureDoesNotMatch"
    assert error(lambda: replace(req, path=req.path + "x").verify()).code == \
        "SignatureDoesNotMatch"
    longer = replace(req, query=req.query.replace("X-Amz-Expires=60", "X-Amz-Expires=3600"))
    assert error(longer.verify).code == "SignatureDoesNotMatch"
    assert error(lambda: req.verify({AK: "nope"})).code == "SignatureDoesNotMatch"
    assert error(lambda: req.verify({})).code == "InvalidAccessKeyId"
    e = error(lambda: req.with_headers(x_amz_acl="public-read").verify())
    assert e.extra["HeadersNotSigned"] == "x-amz-acl"
    # An unsigned x-amz-content-sha256 header is ignored: the payload stays unsigned.
    assert req.with_headers(x_amz_content_sha256=sha(b"x")).verify().payload_hash == \
        UNSIGNED_PAYLOAD


def test_boto3_default_presigned_urls_are_sigv2_in_us_east_1() -> None:
    """boto3 presigns with SigV2 unless told otherwise (Config(signature_version="s3v4"))
    in the regions that once supported it; the error says so."""
    c = client()
    with frozen():
        url = c.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    assert "AWSAccessKeyId=" in url and "X-Amz-Algorithm" not in url
    e = error(from_url("GET", url, {}).verify)
    assert (e.code, e.status) == ("InvalidRequest", 400) and "Version 2" in e.message
    with frozen():
        url = client(region="eu-central-1").generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "k"})
    assert from_url("GET", url, {}).verify().access_key == AK


def test_presigned_with_query_params_and_signed_headers() -> None:
    req = presign("GET", "http://localhost:9000/b/a%20b?response-content-type=text%2Fplain"
                  "&versionId=v%2B1", expires=604800, headers={"x-amz-meta-a": "b"})
    assert req.verify(now=NOW + timedelta(days=6)).access_key == AK
    assert error(lambda: req.with_headers(x_amz_meta_a="c").verify()).code == \
        "SignatureDoesNotMatch"
    signed_sha = presign("PUT", "http://localhost:9000/b/k",
                         headers={"x-amz-content-sha256": sha(b"body")})
    assert signed_sha.verify().payload_hash == sha(b"body")


@pytest.mark.parametrize("change,code", [
    (("X-Amz-Expires=60", "X-Amz-Expires=604801"), "AuthorizationQueryParametersError"),
    (("X-Amz-Expires=60", "X-Amz-Expires=0"), "AuthorizationQueryParametersError"),
    (("X-Amz-Expires=60", "X-Amz-Expires=9" * 30), "AuthorizationQueryParametersError"),
    (("X-Amz-Expires=60&", ""), "AuthorizationQueryParametersError"),
    (("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
     "AuthorizationQueryParametersError"),
    (("X-Amz-Date=20260304T050607Z", "X-Amz-Date=2026-03-04"),
     "AuthorizationQueryParametersError"),
    (("%2Fs3%2F", "%2Fiam%2F"), "AuthorizationQueryParametersError"),
    (("X-Amz-Signature=", "X-Amz-Signature=zz"), "AuthorizationQueryParametersError"),
    (("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
     "AuthorizationQueryParametersError"),
])
def test_presigned_malformed(change: tuple[str, str], code: str) -> None:
    req = presign("GET", "http://localhost:9000/b/k")
    assert change[0] in req.query
    bad = replace(req, query=req.query.replace(*change))
    e = error(lambda: bad.verify(now=NOW))
    assert (e.code, e.status) == (code, 400)
    dup = replace(req, query=req.query + "&X-Amz-Date=20260304T050607Z")
    assert error(dup.verify).code == code


# --------------------------------------------------------------------------- payload checks


async def test_check_sha256_raises_after_the_last_chunk() -> None:
    data = [b"abc", b"", b"def" * 1000]
    assert await collect(check_sha256(aiter_of(b"".join(data), 7), sha(b"".join(data)))) == \
        b"".join(data)
    assert await collect(check_sha256(aiter_of(b"x", 1), sha(b"x").upper())) == b"x"
    seen: list[bytes] = []
    with pytest.raises(S3Error) as info:
        async for piece in check_sha256(aiter_of(b"abcdef", 2), sha(b"abcdeF")):
            seen.append(piece)
    assert seen == [b"ab", b"cd", b"ef"]
    assert (info.value.code, info.value.status) == ("XAmzContentSHA256Mismatch", 400)
    with pytest.raises(S3Error) as info:
        await collect(check_sha256(aiter_of(b"x", 1), UNSIGNED_PAYLOAD))
    assert info.value.code == "InvalidArgument"


async def test_check_checksum_header_from_botocore() -> None:
    req = capture(OPERATIONS["put"])
    crc = req.headers["x-amz-checksum-crc32"]
    assert await collect(check_checksum(aiter_of(req.body, 3), "x-amz-checksum-crc32", crc)) \
        == req.body
    with pytest.raises(S3Error) as info:
        await collect(check_checksum(aiter_of(req.body + b"!", 3), "x-amz-checksum-crc32", crc))
    assert (info.value.code, info.value.status) == ("BadDigest", 400)
    for name, digest in (("x-amz-checksum-sha1", hashlib.sha1(b"q").digest()),
                         ("x-amz-checksum-sha256", hashlib.sha256(b"q").digest())):
        assert await collect(check_checksum(aiter_of(b"q", 1), name, b64(digest))) == b"q"
        with pytest.raises(S3Error):
            await collect(check_checksum(aiter_of(b"Q", 1), name, b64(digest)))
    # CRC-32C and CRC-64/NVME too (awscrt); "123456789" is the CRC catalogue's check input
    for name, good in (("x-amz-checksum-crc32c", "4waSgw=="),
                       ("x-amz-checksum-crc64nvme", "rosUhgp5mIg=")):
        assert await collect(check_checksum(aiter_of(b"123456789", 4), name, good)) == \
            b"123456789"
        with pytest.raises(S3Error) as info:
            await collect(check_checksum(aiter_of(b"123456780", 4), name, good))
        assert (info.value.code, info.value.status) == ("BadDigest", 400)
    with pytest.raises(S3Error) as info:
        await collect(check_checksum(aiter_of(b"q", 1), "x-amz-checksum-crc32c", "not b64"))
    assert (info.value.code, info.value.message) == (
        "InvalidRequest", "Value for x-amz-checksum-crc32c header is invalid.")


# --------------------------------------------------------------------------- aws-chunked

AWS_DOC_KEYS = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
AWS_DOC_NOW = datetime(2013, 5, 24, 0, 1, tzinfo=UTC)
AWS_DOC_DATA = b"a" * 66560


def aws_doc_request(trailer: bool) -> tuple[AuthResult, bytes]:
    """docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html and
    sigv4-streaming-trailers.html: 66560 bytes of 'a' in 64 KiB chunks."""
    if trailer:
        seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
        sigs = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
        signed = ("content-encoding;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer")
        tail = (b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
                b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n")
    else:
        seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        sigs = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
        signed = ("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class")
        tail = b"\r\n"
    headers = {
        "host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY", "content-encoding": "aws-chunked",
        "x-amz-content-sha256": STREAMING_PAYLOAD_TRAILER if trailer else STREAMING_PAYLOAD,
        "x-amz-decoded-content-length": "66560", "content-length": "66824",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
        f"s3/aws4_request,SignedHeaders={signed},Signature={seed}"}
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
    auth = verify_request("PUT", "/examplebucket/chunkObject.txt", "", headers, AWS_DOC_KEYS,
                          allow_anonymous=False, now=AWS_DOC_NOW)
    body = (f"10000;chunk-signature={sigs[0]}\r\n".encode() + b"a" * 65536 + b"\r\n"
            + f"400;chunk-signature={sigs[1]}\r\n".encode() + b"a" * 1024 + b"\r\n"
            + f"0;chunk-signature={sigs[2]}\r\n".encode() + tail)
    if not trailer:
        assert len(body) == 66824
    return auth, body


@pytest.mark.parametrize("trailer", [False, True])
def test_aws_documentation_chunked_vectors(trailer: bool) -> None:
    auth, body = aws_doc_request(trailer)
    assert auth.seed_signature in ("4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa"
                                   "80a0a9", "106e2a8a18243abcf37539882f36619c00e2dfc72633413f"
                                   "02d3b74544bfeb8e")
    assert auth.signing_key == key_for(AWS_DOC_KEYS["AKIAIOSFODNN7EXAMPLE"], "20130524")
    for splits in (1 << 20, 65536, 8191, 1000, [65540, 65600, 66700]):
        assert decode(body, auth, splits, 66560) == AWS_DOC_DATA
    assert decode(body, auth, 1) == AWS_DOC_DATA  # one byte at a time
    # Tampering: a data byte, a signature, the seed, the order of chunks, the length.
    flipped = bytearray(body)
    flipped[60000] = ord("b")
    assert error(lambda: decode(bytes(flipped), auth)).code == "SignatureDoesNotMatch"
    at = body.index(b"chunk-signature=") + len(b"chunk-signature=")
    bad_sig = body[:at] + b"0" * 64 + body[at + 64:]
    assert error(lambda: decode(bad_sig, auth)).code == "SignatureDoesNotMatch"
    other_seed = replace(auth, seed_signature="1" * 64)
    assert error(lambda: decode(body, other_seed)).code == "SignatureDoesNotMatch"
    assert error(lambda: decode(body, auth, decoded_length=66559)).code == "IncompleteBody"
    assert error(lambda: decode(body, auth, decoded_length=66561)).code == "IncompleteBody"
    for cut in (10, 65600, len(body) - len(b"\r\n") - 40 if trailer else len(body) - 3):
        e = error(lambda c=cut: decode(body[:c], auth))
        assert e.code in ("IncompleteBody", "InvalidRequest"), cut
    if trailer:
        tampered = body.replace(b"sOO8/Q==", b"sOO8/R==")
        assert error(lambda: decode(tampered, auth)).code == "SignatureDoesNotMatch"
        no_sig = body[:body.index(b"x-amz-trailer-signature")] + b"\r\n"
        assert error(lambda: decode(no_sig, auth)).code == "InvalidRequest"
        missing = body[:body.index(b"x-amz-checksum-crc32c")] + b"\r\n"
        assert error(lambda: decode(missing, auth)).code == "InvalidRequest"


def streaming_request(mode: str = STREAMING_PAYLOAD, trailer: str | None = None) -> AuthResult:
    headers = {"Content-Encoding": "aws-chunked"}
    if trailer:
        headers["X-Amz-Trailer"] = trailer
    signer = _StreamingTrailerSigner if mode == STREAMING_PAYLOAD_TRAILER else _StreamingSigner
    req = sign("PUT", "http://localhost:9000/b/k%20y", headers, signer=signer)
    auth = req.verify()
    assert auth.payload_hash == mode
    return auth


def signed_body(data: bytes, chunk: int, auth: AuthResult,
                trailers: list[tuple[str, str]] | None = None) -> bytes:
    key = key_for(SK, "20260304")
    return encode_signed(data, chunk, key, "20260304T050607Z", "20260304/us-east-1/s3/"
                         "aws4_request", auth.seed_signature, trailers)


def test_signed_chunks_from_a_botocore_seed() -> None:
    auth = streaming_request()
    data = random.Random(1).randbytes(300_000)
    body = signed_body(data, 65536, auth)
    assert decode(body, auth, 4096, len(data)) == data
    assert decode(body, auth, 1 << 20) == data
    small = signed_body(data[:10], 3, auth)
    assert decode(small, auth, 1) == data[:10]
    # Swapping two (validly signed) chunks of the same length breaks the chain.
    framed = len(f"10000;chunk-signature={'0' * 64}\r\n") + 65536 + 2
    swapped = body[framed:2 * framed] + body[:framed] + body[2 * framed:]
    assert error(lambda: decode(swapped, auth)).code == "SignatureDoesNotMatch"
    unsigned = body.replace(b";chunk-signature=", b";chunk-signaturX=", 1)
    assert error(lambda: decode(unsigned, auth)).code == "InvalidRequest"
    # An unsigned result cannot decode a signed body's framing as signed.
    assert error(lambda: decode(body, AuthResult(None, STREAMING_PAYLOAD))).code == \
        "InvalidRequest"


def test_signed_trailers_with_verifiable_checksums() -> None:
    data = random.Random(2).randbytes(70_000)
    for name, digest in (("x-amz-checksum-crc32", zlib.crc32(data).to_bytes(4, "big")),
                         ("x-amz-checksum-sha1", hashlib.sha1(data).digest()),
                         ("x-amz-checksum-sha256", hashlib.sha256(data).digest())):
        auth = streaming_request(STREAMING_PAYLOAD_TRAILER, name)
        assert auth.trailer == name
        body = signed_body(data, 8192, auth, [(name, b64(digest))])
        assert decode(body, auth, 1000, len(data)) == data
        wrong = signed_body(data, 8192, auth, [(name, b64(bytes(len(digest))))])
        assert error(lambda b=wrong, a=auth: decode(b, a)).code == "BadDigest"
        corrupt = body.replace(data[100:110], bytes(10), 1)
        assert error(lambda b=corrupt, a=auth: decode(b, a)).code == "SignatureDoesNotMatch"


def test_botocore_unsigned_trailer_bodies() -> None:
    """botocore's own aws-chunked encoder (AwsChunkedWrapper), as used over https."""
    data = random.Random(3).randbytes(2_500_000)
    req = capture(lambda c: c.put_object(Bucket=BUCKET, Key="big", Body=data),
                  "https://localhost:9443")
    auth = req.verify()
    assert (auth.payload_hash, auth.trailer) == (STREAMING_UNSIGNED_TRAILER,
                                                 "x-amz-checksum-crc32")
    assert req.body.count(b"\r\n") > 6  # several 1 MiB chunks
    rng = random.Random(4)
    for splits in (1 << 20, 65536, 777, sorted(rng.sample(range(len(req.body)), 50))):
        assert decode(req.body, auth, splits, len(data)) == data
    corrupt = bytearray(req.body)
    corrupt[500_000] ^= 1
    assert error(lambda: decode(bytes(corrupt), auth)).code == "BadDigest"
    bad_crc = req.body.replace(crc32_b64(data).encode(), crc32_b64(data + b"!").encode())
    assert error(lambda: decode(bad_crc, auth)).code == "BadDigest"
    assert error(lambda: decode(req.body, auth, decoded_length=len(data) + 1)).code == \
        "IncompleteBody"
    assert error(lambda: decode(req.body[:-30], auth)).code in ("IncompleteBody",
                                                                "InvalidRequest")
    # The declared trailer must arrive; an undeclared verifiable one is refused.
    without = req.body[:req.body.index(b"x-amz-checksum")] + b"\r\n"
    assert error(lambda: decode(without, auth)).code == "InvalidRequest"
    assert error(lambda: decode(req.body, replace(auth, trailer=""))).code == "InvalidRequest"


@pytest.mark.parametrize("cls,name", [(Crc32Checksum, "x-amz-checksum-crc32"),
                                      (Sha1Checksum, "x-amz-checksum-sha1"),
                                      (Sha256Checksum, "x-amz-checksum-sha256"),
                                      (None, None)])
def test_aws_chunked_wrapper_small_chunks(cls: Any, name: str | None) -> None:
    data = random.Random(5).randbytes(5000)
    body = AwsChunkedWrapper(io.BytesIO(data), cls, name or "x-amz-checksum",
                             chunk_size=333).read()
    auth = AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer=name or "")
    assert decode(body, auth, 1, len(data)) == data
    assert decode(body, auth, 1 << 20) == data


def test_unverifiable_and_unusual_trailers() -> None:
    data = b"hello"
    base = b"5\r\nhello\r\n0\r\n"
    auth = AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer="x-amz-checksum-crc32c")
    good = base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big"))
    assert decode(base + b"x-amz-checksum-crc32c:" + good + b"\r\n\r\n", auth) == data
    assert error(lambda: decode(base + b"x-amz-checksum-crc32c:AAAAAA==\r\n\r\n", auth)).code == \
        "BadDigest"
    assert error(lambda: decode(base + b"x-amz-checksum-crc32c:AAA\r\n\r\n", auth)).code == \
        "InvalidRequest"
    odd = AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer="x-amz-checksum-md7")
    assert decode(base + b"x-amz-checksum-md7:AAAAAA==\r\n\r\n", odd) == data  # no such algorithm
    plain = AuthResult(AK, STREAMING_UNSIGNED_TRAILER)
    assert decode(base + b"\r\n", plain) == data
    assert decode(base, plain) == data  # final empty line missing: tolerated
    assert decode(base + b"x-custom:1\r\n", plain) == data
    assert decode(base + b"\r\nx-custom:1\r\n\r\n", plain) == data  # empty line before trailers
    assert error(lambda: decode(base + b"\r\nextra\r\n", plain)).code == "InvalidRequest"
    assert error(lambda: decode(base + b"\r\n\r\n\r\n", plain)).code == "InvalidRequest"
    assert error(lambda: decode(b"5\nhello\r\n0\r\n\r\n", plain)).code == "InvalidRequest"
    assert error(lambda: decode(b"5\r\nhello!\r\n0\r\n\r\n", plain)).code == "InvalidRequest"
    assert error(lambda: decode(b"zz\r\nhello\r\n0\r\n\r\n", plain)).code == "InvalidRequest"
    assert error(lambda: decode(b"1" * 10000, plain)).code == "InvalidRequest"
    assert error(lambda: decode(b"", plain)).code == "IncompleteBody"
    sig = base + b"x-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n"
    assert error(lambda: decode(sig, plain)).code == "InvalidRequest"
    # chunk extensions are ignored in unsigned bodies
    assert decode(b"5;foo=bar\r\nhello\r\n0\r\n\r\n", plain) == data


async def test_decoder_input_types_and_streaming() -> None:
    """bytearray/memoryview input; data comes out before the body has ended."""
    plain = AuthResult(AK, STREAMING_UNSIGNED_TRAILER)
    gate = asyncio.Event()

    async def body() -> AsyncIterator[Any]:  # not only bytes
        yield bytearray(b"5\r\nhel")
        yield memoryview(b"lo\r\n")
        await gate.wait()
        yield b"0\r\n\r\n"

    it = decode_aws_chunked(body(), plain, decoded_length=5)
    assert await it.__anext__() == b"hel"
    assert await it.__anext__() == b"lo"
    gate.set()
    assert [p async for p in it] == []


# --------------------------------------------------------------------------- property tests

_names = st.sampled_from(["authorization", "Authorization", "x-amz-date", "date", "host",
                          "x-amz-content-sha256", "x-amz-trailer", "x-amz-meta-a", "range",
                          "X-Amz-Date"])
_pieces = st.sampled_from([
    AK, "20260304", "20260304T050607Z", "us-east-1", "s3", "aws4_request", "host", ";", "/",
    ",", "=", " ", "Credential=", "SignedHeaders=", "Signature=", "AWS4-HMAC-SHA256 ", "0" * 64,
    "x-amz-date", "x-amz-content-sha256", UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, "%", "%2", "%zz",
    "+", "&", "X-Amz-Algorithm=", "X-Amz-Credential=", "X-Amz-Signature=", "X-Amz-Date=",
    "X-Amz-Expires=", "X-Amz-SignedHeaders=", "AWS4-HMAC-SHA256", "\x00", "\udc80", "\ud800",
    "ü", "Wed, 04 Mar 2026 05:06:07 GMT", "99999999999999999999", "AWSAccessKeyId=", "AWS "])
_texty = st.one_of(st.text(max_size=80), st.lists(st.one_of(_pieces, st.text(max_size=5)),
                                                  max_size=14).map("".join))


@FUZZ
@given(method=st.sampled_from(["GET", "PUT", "get", "", "X"]), path=_texty, query=_texty,
       headers=st.dictionaries(_names, _texty, max_size=6), anonymous=st.booleans(),
       now=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))))
def test_fuzz_verify_request_only_raises_s3error(method: str, path: str, query: str,
                                                 headers: dict[str, str], anonymous: bool,
                                                 now: datetime | None) -> None:
    try:
        result = verify_request(method, path, query, headers, KEYS, allow_anonymous=anonymous,
                                now=now)
    except S3Error as e:
        assert 400 <= e.status < 500
        assert SK not in error_text(e)
    else:
        assert result.access_key is None or result.access_key in KEYS


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_botocore_requests(data: st.DataObject) -> None:
    """Small edits of real signed requests: an S3Error, or an AuthResult only when the
    edit left the request's meaning unchanged (checked for path edits)."""
    base = data.draw(st.sampled_from(FUZZ_BASES))
    fields = ["method", "path", "query"] + [f"h:{n}" for n in base.headers]
    target = data.draw(st.sampled_from(fields))
    insert = data.draw(_texty)
    if target == "method":
        original = base.method
    elif target == "path":
        original = base.path
    elif target == "query":
        original = base.query
    else:
        original = base.headers[target[2:]]
    start = data.draw(st.integers(0, len(original)))
    end = data.draw(st.integers(start, len(original)))
    edited = original[:start] + insert + original[end:]
    if target == "method":
        req = replace(base, method=edited)
    elif target == "path":
        req = replace(base, path=edited)
    elif target == "query":
        req = replace(base, query=edited)
    else:
        req = base.with_headers(**{target[2:].replace("-", "_"): edited})
    try:
        result = req.verify(now=NOW + timedelta(seconds=1))
    except S3Error as e:
        assert e.status in (400, 403)
        assert SK not in error_text(e)
    else:
        # Accepted: the edit did not change what the request means.
        assert result.access_key == AK
        assert req.method == base.method
        assert unquote_to_bytes(_utf8(req.path or "/")) == unquote_to_bytes(_utf8(base.path))
        assert _query_meaning(req.query) == _query_meaning(base.query)


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _query_meaning(query: str) -> list[tuple[bytes, bytes]]:
    """The parameters as aiohttp would read them ('+' is a space), signature aside."""
    pairs = []
    for seg in query.split("&"):
        k, _, v = seg.partition("=")
        key, value = (unquote_to_bytes(_utf8(x).replace(b"+", b" ")) for x in (k, v))
        if seg and key != b"X-Amz-Signature":
            pairs.append((key, value))
    return sorted(pairs)


FUZZ_BASES = [
    capture(OPERATIONS["put"]),
    capture(OPERATIONS["list-v2"], "https://s3.example.test", "virtual"),
    capture(OPERATIONS["put"], "https://localhost:9443"),
    presign("GET", "http://localhost:9000/b/a%20b?versionId=1"),
]


@FUZZ
@given(data=st.binary(max_size=3000), chunk=st.integers(1, 700), mode=st.sampled_from(
    ["crc32", "sha256", "none", "signed", "signed-trailer"]), rnd=st.randoms(use_true_random=False))
def test_fuzz_random_split_points_decode_identically(data: bytes, chunk: int, mode: str,
                                                     rnd: random.Random) -> None:
    if mode.startswith("signed"):
        trailer = "x-amz-checksum-sha256" if mode == "signed-trailer" else None
        auth = SIGNED_AUTH[mode]
        body = signed_body(data, chunk, auth,
                           [(trailer, b64(hashlib.sha256(data).digest()))] if trailer else None)
    else:
        cls: Any = {"crc32": Crc32Checksum, "sha256": Sha256Checksum, "none": None}[mode]
        name = f"x-amz-checksum-{mode}" if cls else None
        body = AwsChunkedWrapper(io.BytesIO(data), cls, name or "x-amz-checksum",
                                 chunk_size=chunk).read()
        auth = AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer=name or "")
    splits = sorted(rnd.sample(range(len(body) + 1), min(len(body) + 1, rnd.randint(0, 40))))
    assert decode(body, auth, splits, len(data)) == data


SIGNED_AUTH = {"signed": streaming_request(),
               "signed-trailer": streaming_request(STREAMING_PAYLOAD_TRAILER,
                                                   "x-amz-checksum-sha256")}


def _garbage_check(body: bytes, auth: AuthResult, splits: list[int]) -> None:
    try:
        decode(body, auth, splits)
    except S3Error as e:
        assert e.status in (400, 403)


@FUZZ
@given(body=st.one_of(st.binary(max_size=500), st.lists(st.sampled_from(
    [b"0", b"5", b"ffffffffffffffff", b";chunk-signature=", b"\r\n", b"\n", b"hello", b":", b"x",
     b"x-amz-checksum-crc32:AAAAAA==", b"x-amz-trailer-signature:", b"0" * 64]),
    max_size=20).map(b"".join)), mode=st.sampled_from(["unsigned", "signed", "signed-trailer"]),
    rnd=st.randoms(use_true_random=False))
def test_fuzz_garbage_bodies(body: bytes, mode: str, rnd: random.Random) -> None:
    auth = (AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer="x-amz-checksum-crc32")
            if mode == "unsigned" else SIGNED_AUTH[mode])
    _garbage_check(body, auth, sorted(rnd.sample(range(len(body) + 1),
                                                 min(len(body) + 1, 10))))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 8), st.binary(max_size=8)),
                      min_size=1, max_size=4),
       mode=st.sampled_from(["unsigned", "signed", "signed-trailer"]),
       rnd=st.randoms(use_true_random=False))
def test_fuzz_mutated_bodies(edits: list[tuple[int, int, bytes]], mode: str,
                             rnd: random.Random) -> None:
    data = b"0123456789" * 50
    if mode == "unsigned":
        auth = AuthResult(AK, STREAMING_UNSIGNED_TRAILER, trailer="x-amz-checksum-crc32")
        body = AwsChunkedWrapper(io.BytesIO(data), Crc32Checksum, "x-amz-checksum-crc32",
                                 chunk_size=128).read()
    else:
        auth = SIGNED_AUTH[mode]
        trailers = ([("x-amz-checksum-sha256", b64(hashlib.sha256(data).digest()))]
                    if mode == "signed-trailer" else None)
        body = signed_body(data, 128, auth, trailers)
    mutated = bytearray(body)
    for pos, length, insert in edits:
        pos %= len(mutated) + 1
        mutated[pos:pos + length] = insert
    splits = sorted(rnd.sample(range(len(mutated) + 1), min(len(mutated) + 1, 8)))
    try:
        out = decode(bytes(mutated), auth, splits)
    except S3Error as e:
        assert e.status in (400, 403)
    else:
        # Whatever survives every check is the original data (signatures and checksums
        # cover all of it).
        assert out == data
