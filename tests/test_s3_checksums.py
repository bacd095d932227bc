"""S3's flexible checksums through the gateway, with the clients that send them by default.

boto3 >= 1.36 (``request_checksum_calculation="when_supported"``, its default) sends a
CRC32 with every PutObject and UploadPart, and with ``ChecksumMode="ENABLED"`` checks
the checksum a GetObject answer carries against the bytes it receives: every GET here
with that mode is an end-to-end check of what the gateway stored. The aws CLI and
boto3's transfer manager make multipart uploads with per-part checksums. aws-chunked
bodies whose trailer does not match their bytes are crafted by hand (signed per chunk,
and unsigned), as are requests no SDK sends.

Expected values come from independent implementations: zlib (CRC32), the crc32c
package (CRC32C), awscrt (CRC64NVME, what botocore uses), hashlib (SHA1, SHA256).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import crc32c
import pytest
from awscrt import checksums as crt
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from gateway import checksums
from gateway.multipart import MultipartStore
from tests.data import payload
from tests.meshd_proc import MeshdProcess
from tests.test_s3_gateway import AK, REGION, SK, Gateway, raw, s3client, sign

MiB = 1 << 20
AWS = Path(sys.executable).parent / "aws"
ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def digest(alg: str, data: bytes) -> bytes:
    if alg == "CRC32":
        return zlib.crc32(data).to_bytes(4, "big")
    if alg == "CRC32C":
        return crc32c.crc32c(data).to_bytes(4, "big")
    if alg == "CRC64NVME":
        return int(crt.crc64nvme(data)).to_bytes(8, "big")
    return hashlib.new(alg.lower(), data).digest()


def b64(alg: str, data: bytes) -> str:
    return base64.b64encode(digest(alg, data)).decode()


def composite(alg: str, parts: list[bytes]) -> str:
    of_parts = b"".join(digest(alg, p) for p in parts)
    return f"{b64(alg, of_parts)}-{len(parts)}"


def err(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    r = e.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r["Error"].get("Message", "")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("s3cksum")
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
    c = s3client(gw.url)  # boto3's defaults: request_checksum_calculation="when_supported"
    yield c
    c.close()


@pytest.fixture
def bucket(gw: Gateway, s3: Any) -> str:
    name = f"c-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def absent(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        return bool(e.response["ResponseMetadata"]["HTTPStatusCode"] == 404)
    return False


# --------------------------------------------------------------------------- single objects


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_put_and_get_every_algorithm(s3: Any, bucket: str, alg: str) -> None:
    data = payload(300_001, seed=len(alg))
    put = s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm=alg)
    assert put[f"Checksum{alg}"] == b64(alg, data) and put["ChecksumType"] == "FULL_OBJECT"
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head[f"Checksum{alg}"] == b64(alg, data) and head["ChecksumType"] == "FULL_OBJECT"
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got[f"Checksum{alg}"] == b64(alg, data)
    assert got["Body"].read() == data  # boto3 verified the checksum while reading
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert (listed["ChecksumAlgorithm"], listed["ChecksumType"]) == ([alg], "FULL_OBJECT")
    # a value the client computed itself (header form, no algorithm header)
    s3.put_object(Bucket=bucket, Key="k2", Body=b"123456789", **{f"Checksum{alg}": b64(alg, b"123456789")})
    assert s3.head_object(Bucket=bucket, Key="k2", ChecksumMode="ENABLED")[f"Checksum{alg}"] == \
        b64(alg, b"123456789")


def test_boto3_default_and_no_checksum(gw: Gateway, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="default", Body=b"abc")  # boto3 adds a CRC32 by itself
    head = s3.head_object(Bucket=bucket, Key="default", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == b64("CRC32", b"abc")
    assert "ChecksumCRC32" not in s3.head_object(Bucket=bucket, Key="default")  # only when asked
    plain = s3client(gw.url, request_checksum_calculation="when_required")
    try:
        plain.put_object(Bucket=bucket, Key="none", Body=b"abc")
    finally:
        plain.close()
    # no checksum sent: S3 stores its default, a CRC64NVME of the whole object
    head = s3.head_object(Bucket=bucket, Key="none", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == b64("CRC64NVME", b"abc") and head["ChecksumType"] == "FULL_OBJECT"


def test_algorithm_header_without_value_is_computed(gw: Gateway, s3: Any, bucket: str) -> None:
    r = raw(gw.url, "PUT", f"/{bucket}/k", {"x-amz-sdk-checksum-algorithm": "SHA1"}, body=b"data")
    assert r.status == 200 and r.headers["x-amz-checksum-sha1"] == b64("SHA1", b"data")
    assert s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")["ChecksumSHA1"] == \
        b64("SHA1", b"data")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_wrong_checksum_is_bad_digest_and_nothing_is_stored(s3: Any, bucket: str, alg: str) -> None:
    s3.put_object(Bucket=bucket, Key="old", Body=b"original")
    for key in ("new", "old"):
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket=bucket, Key=key, Body=b"123456789",
                          **{f"Checksum{alg}": b64(alg, b"123456780")})
        assert err(e) == ("BadDigest", 400, f"The {alg} you specified did not match the calculated checksum.")
    assert absent(s3, bucket, "new")
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"original"


def test_malformed_and_conflicting_checksum_headers(gw: Gateway, s3: Any, bucket: str) -> None:
    for headers, message in [
        ({"x-amz-checksum-crc32": "short==="}, "Value for x-amz-checksum-crc32 header is invalid."),
        ({"x-amz-checksum-sha256": b64("SHA1", b"x")}, "Value for x-amz-checksum-sha256 header is invalid."),
        ({"x-amz-checksum-crc32": b64("CRC32", b"x"), "x-amz-checksum-sha1": b64("SHA1", b"x")},
         "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."),
        ({"x-amz-sdk-checksum-algorithm": "SHA1", "x-amz-checksum-crc32": b64("CRC32", b"x")},
         "Value for x-amz-sdk-checksum-algorithm header is invalid."),
        ({"x-amz-sdk-checksum-algorithm": "MD7"}, "Value for x-amz-sdk-checksum-algorithm header is invalid."),
    ]:
        r = raw(gw.url, "PUT", f"/{bucket}/k", headers, body=b"x")
        assert (r.status, r.code(), r.xml().findtext("Message")) == (400, "InvalidRequest", message)
    for headers in ({"x-amz-sdk-checksum-algorithm": "SHA512"}, {"x-amz-checksum-xxhash64": "AAAAAAAAAAA="}):
        r = raw(gw.url, "PUT", f"/{bucket}/k", headers, body=b"x")  # newer algorithms: never unchecked
        assert (r.status, r.code()) == (501, "NotImplemented")
    assert absent(s3, bucket, "k")


def test_checksum_only_on_whole_object_answers(gw: Gateway, s3: Any, bucket: str) -> None:
    data = b"0123456789"
    s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="SHA256")
    whole = s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert whole["ChecksumSHA256"] == b64("SHA256", data) and whole["Body"].read() == data
    part = s3.get_object(Bucket=bucket, Key="k", Range="bytes=1-4", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in part and part["Body"].read() == b"1234"
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"]
    r = raw(gw.url, "GET", f"/{bucket}/k", {"If-None-Match": etag, "x-amz-checksum-mode": "ENABLED"})
    assert r.status == 304 and "x-amz-checksum-sha256" not in r.headers


# --------------------------------------------------------------------------- aws-chunked bodies


def chunked(data: bytes, trailer: str, value: str, sizes: int = 4000) -> bytes:
    chunks = [data[i:i + sizes] for i in range(0, len(data), sizes)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return body + f"0\r\n{trailer}:{value}\r\n\r\n".encode()


def trailer_headers(n: int, trailer: str) -> dict[str, str]:
    return {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(n),
            "x-amz-trailer": trailer}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_unsigned_trailer_is_verified(gw: Gateway, s3: Any, bucket: str, alg: str) -> None:
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER, as botocore sends over https."""
    data = payload(10_000, seed=3)
    name = f"x-amz-checksum-{alg.lower()}"
    h = trailer_headers(len(data), name)
    good = raw(gw.url, "PUT", f"/{bucket}/ok", h, body=chunked(data, name, b64(alg, data)),
               payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert good.status == 200, good.body
    got = s3.get_object(Bucket=bucket, Key="ok", ChecksumMode="ENABLED")
    assert got[f"Checksum{alg}"] == b64(alg, data) and got["Body"].read() == data
    corrupted = bytearray(data)
    corrupted[5000] ^= 1  # one bit flipped in transit; the trailer is the sender's, correct-looking
    for key in ("bad", "ok"):
        r = raw(gw.url, "PUT", f"/{bucket}/{key}", h, body=chunked(bytes(corrupted), name, b64(alg, data)),
                payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert (r.status, r.code()) == (400, "BadDigest"), r.body
    assert absent(s3, bucket, "bad")
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == data
    # a trailer declared for a body that is not aws-chunked could never be checked
    r = raw(gw.url, "PUT", f"/{bucket}/plain", {"x-amz-trailer": name}, body=data)
    assert (r.status, r.code()) == (400, "InvalidRequest")
    assert absent(s3, bucket, "plain")


def signed_chunked_put(gw: Gateway, target: str, data: bytes, trailer: str, value: str) -> int:
    """A PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: every chunk and the trailer
    correctly signed (the request's signature is the seed), whatever ``value`` says."""
    h = sign("PUT", gw.url + target, trailer_headers(len(data), trailer),
             payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    seed = h["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = h["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = b"AWS4" + SK.encode()
    for part in (amz_date[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()

    def signature(string_to_sign: str) -> str:
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    prev, body = seed, b""
    for c in [data[i:i + 8192] for i in range(0, len(data), 8192)] + [b""]:
        prev = signature(f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{prev}\n{EMPTY_SHA256}\n"
                         f"{hashlib.sha256(c).hexdigest()}")
        body += b"%x;chunk-signature=%s\r\n" % (len(c), prev.encode())
        body += c + b"\r\n" if c else b""
    line = f"{trailer}:{value}\n".encode()
    tsig = signature(f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{prev}\n{hashlib.sha256(line).hexdigest()}")
    body += line.replace(b"\n", b"\r\n") + f"x-amz-trailer-signature:{tsig}\r\n\r\n".encode()
    r = raw(gw.url, "PUT", target, h, body=body, signed=False)
    return r.status if r.status == 200 else r.status * 1000 + (r.code() == "BadDigest")


def test_signed_chunks_with_a_wrong_trailer_are_refused(gw: Gateway, s3: Any, bucket: str) -> None:
    data = payload(20_000, seed=9)
    assert signed_chunked_put(gw, f"/{bucket}/ok", data, "x-amz-checksum-crc64nvme",
                              b64("CRC64NVME", data)) == 200
    assert s3.head_object(Bucket=bucket, Key="ok", ChecksumMode="ENABLED")["ChecksumCRC64NVME"] == \
        b64("CRC64NVME", data)
    corrupted = data[:100] + b"X" + data[101:]  # signed as sent: only the checksum can tell
    assert signed_chunked_put(gw, f"/{bucket}/bad", corrupted, "x-amz-checksum-crc64nvme",
                              b64("CRC64NVME", data)) == 400_001
    assert absent(s3, bucket, "bad")


# --------------------------------------------------------------------------- multipart


def upload_parts(s3: Any, bucket: str, key: str, parts: list[bytes], alg: str, **create: Any) -> tuple[str, list[dict[str, Any]]]:
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=alg, **create)
    assert up["ChecksumAlgorithm"] == alg
    done = []
    for n, p in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=p,
                           ChecksumAlgorithm=alg)
        assert r[f"Checksum{alg}"] == b64(alg, p)
        done.append({"PartNumber": n, "ETag": r["ETag"], f"Checksum{alg}": r[f"Checksum{alg}"]})
    return up["UploadId"], done


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_multipart_composite(s3: Any, bucket: str, alg: str) -> None:
    parts = [payload(5 * MiB, seed=1), payload(1234, seed=2)]
    upload_id, done = upload_parts(s3, bucket, "mp", parts, alg)
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    assert [p[f"Checksum{alg}"] for p in listed["Parts"]] == [b64(alg, p) for p in parts]
    assert (listed["ChecksumAlgorithm"], listed["ChecksumType"]) == (alg, "COMPOSITE")
    r = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                     MultipartUpload={"Parts": done})
    assert r[f"Checksum{alg}"] == composite(alg, parts) and r["ChecksumType"] == "COMPOSITE"
    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert head[f"Checksum{alg}"] == composite(alg, parts) and head["ChecksumType"] == "COMPOSITE"
    assert s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")["Body"].read() == b"".join(parts)
    attrs = s3.get_object_attributes(Bucket=bucket, Key="mp", MaxParts=1,
                                     ObjectAttributes=["Checksum", "ObjectParts", "ObjectSize"])
    assert attrs["Checksum"] == {f"Checksum{alg}": composite(alg, parts), "ChecksumType": "COMPOSITE"}
    assert attrs["ObjectSize"] == sum(map(len, parts))
    op = attrs["ObjectParts"]
    assert (op["TotalPartsCount"], op["IsTruncated"], op["NextPartNumberMarker"]) == (2, True, 1)
    assert op["Parts"] == [{"PartNumber": 1, "Size": 5 * MiB, f"Checksum{alg}": b64(alg, parts[0])}]
    rest = s3.get_object_attributes(Bucket=bucket, Key="mp", PartNumberMarker=1, ObjectAttributes=["ObjectParts"])
    assert rest["ObjectParts"]["Parts"] == [{"PartNumber": 2, "Size": 1234, f"Checksum{alg}": b64(alg, parts[1])}]


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "CRC64NVME"])
def test_multipart_full_object(s3: Any, bucket: str, alg: str) -> None:
    parts = [payload(5 * MiB, seed=4), payload(4321, seed=5)]
    whole = b"".join(parts)
    upload_id, done = upload_parts(s3, bucket, "mp", parts, alg, ChecksumType="FULL_OBJECT")
    with pytest.raises(ClientError) as e:  # the client's whole-object checksum is checked too
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                     MultipartUpload={"Parts": done},
                                     **{f"Checksum{alg}": b64(alg, whole[:-1])})
    assert err(e)[:2] == ("BadDigest", 400)
    assert absent(s3, bucket, "mp")
    r = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                     MultipartUpload={"Parts": done}, **{f"Checksum{alg}": b64(alg, whole)})
    assert r[f"Checksum{alg}"] == b64(alg, whole) and r["ChecksumType"] == "FULL_OBJECT"
    got = s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert got["ChecksumType"] == "FULL_OBJECT" and got["Body"].read() == whole  # verified by boto3


def test_multipart_checksum_rules(s3: Any, gw: Gateway, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA1", ChecksumType="FULL_OBJECT")
    assert err(e) == ("InvalidRequest", 400, "The FULL_OBJECT checksum type cannot be used with the sha1 "
                      "checksum algorithm.")
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC64NVME", ChecksumType="COMPOSITE")
    assert err(e)[:2] == ("InvalidRequest", 400)
    up = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")
    uid = up["UploadId"]
    assert up["ChecksumType"] == "COMPOSITE"
    with pytest.raises(ClientError) as e:  # boto3 sends its default CRC32: not the upload's algorithm
        s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=1, Body=b"x")
    assert err(e) == ("InvalidRequest", 400, "Checksum Type mismatch occurred, expected checksum Type: sha256, "
                      "actual checksum Type: crc32")
    r = raw(gw.url, "PUT", f"/{bucket}/k?partNumber=1&uploadId={uid}", {}, body=b"x")  # none at all
    assert (r.status, r.code()) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=1, Body=b"x",
                       ChecksumSHA256=b64("SHA256", b"y"))
    assert err(e)[:2] == ("BadDigest", 400)
    p = s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=1, Body=b"x", ChecksumAlgorithm="SHA256")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert err(e) == ("InvalidRequest", 400, "The upload was created using a sha256 checksum. The complete "
                      "request must include the checksum for each part. It was missing for part 1 in the request.")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": p["ETag"], "ChecksumSHA256": b64("SHA256", b"y")}]})
    assert err(e)[:2] == ("InvalidPart", 400)
    good = {"Parts": [{"PartNumber": 1, "ETag": p["ETag"], "ChecksumSHA256": p["ChecksumSHA256"]}]}
    whole = composite("SHA256", [b"x"])  # "<base64>-1": the client may send it, with or without "-1"
    for sent, code in ((whole[:-1] + "2", "BadDigest"), (whole[:-1] + "a", "InvalidRequest"),
                       (b64("SHA256", b"x"), "BadDigest")):
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload=good,
                                         ChecksumSHA256=sent)
        assert err(e)[:2] == (code, 400)
    assert absent(s3, bucket, "k")
    r2 = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload=good,
                                      ChecksumSHA256=whole.split("-")[0])
    assert r2["ChecksumSHA256"] == whole


def test_transfer_manager_and_low_level_multipart_without_algorithm(s3: Any, bucket: str) -> None:
    data = payload(11 * MiB + 3, seed=8)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "tm", Config=cfg)  # s3transfer: CRC32, composite
    head = s3.head_object(Bucket=bucket, Key="tm", ChecksumMode="ENABLED")
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert head["ChecksumCRC32"] == composite("CRC32", parts)
    assert s3.get_object(Bucket=bucket, Key="tm")["Body"].read() == data
    # created without an algorithm (boto3 still sends CRC32 with each part): S3's default
    up = s3.create_multipart_upload(Bucket=bucket, Key="low")
    p = s3.upload_part(Bucket=bucket, Key="low", UploadId=up["UploadId"], PartNumber=1, Body=b"abc")
    r = s3.complete_multipart_upload(Bucket=bucket, Key="low", UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert r["ChecksumCRC64NVME"] == b64("CRC64NVME", b"abc") and r["ChecksumType"] == "FULL_OBJECT"


# --------------------------------------------------------------------------- attributes, copy, CLI


def test_get_object_attributes(gw: Gateway, s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"hello", ChecksumAlgorithm="CRC32C")
    a = s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=[
        "ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"])
    assert a["ETag"] == put["ETag"].strip('"') and a["ObjectSize"] == 5 and a["StorageClass"] == "STANDARD"
    assert a["Checksum"] == {"ChecksumCRC32C": b64("CRC32C", b"hello"), "ChecksumType": "FULL_OBJECT"}
    assert "ObjectParts" not in a and a["LastModified"] is not None
    with pytest.raises(ClientError) as e:
        s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["Colour"])
    assert err(e)[:2] == ("InvalidArgument", 400)
    r = raw(gw.url, "GET", f"/{bucket}/k?attributes", {})
    assert (r.status, r.code()) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as e:
        s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    assert err(e)[:2] == ("NoSuchKey", 404)


def test_copy_object_computes_the_checksum(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload", ChecksumAlgorithm="SHA1")
    r = s3.copy_object(Bucket=bucket, Key="same", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ChecksumSHA1"] == b64("SHA1", b"payload")
    r = s3.copy_object(Bucket=bucket, Key="new", CopySource={"Bucket": bucket, "Key": "src"},
                       ChecksumAlgorithm="SHA256")
    assert r["CopyObjectResult"]["ChecksumSHA256"] == b64("SHA256", b"payload")
    got = s3.get_object(Bucket=bucket, Key="new", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == b64("SHA256", b"payload") and got["Body"].read() == b"payload"


def test_aws_cli_cp_round_trip(gw: Gateway, s3: Any, bucket: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    for name, size in (("small.bin", 70_001), ("big.bin", 9 * MiB + 1)):  # big: multipart
        data = payload(size, seed=size % 97)
        src, back = tmp_path / name, tmp_path / ("back-" + name)
        src.write_bytes(data)
        for a, b in ((str(src), f"s3://{bucket}/{name}"), (f"s3://{bucket}/{name}", str(back))):
            r = subprocess.run([str(AWS), "--endpoint-url", gw.url, "s3", "cp", a, b], env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
        assert back.read_bytes() == data
        head = s3.head_object(Bucket=bucket, Key=name, ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"].split("-")[0]  # the CLI's default CRC32 was kept
        if size < 8 * MiB:
            assert head["ChecksumCRC32"] == b64("CRC32", data)


async def test_parts_written_before_checksums_are_still_read(tmp_path: Path) -> None:
    """Part files of the earlier format (32-byte header, no checksum) left by an older
    gateway complete as before; new parts carry their checksum in the header."""
    ms = MultipartStore(str(tmp_path), min_part_size=1, fsync=False)
    u = await ms.create("bkt", "k", {}, "")
    old = b"old part"
    (tmp_path / u.upload_id / "part-00001").write_bytes(
        struct.pack(">8s16sQ", b"S3MPART1", hashlib.md5(old).digest(), len(old)) + old)

    async def feed(data: bytes) -> AsyncIterator[bytes]:
        yield data

    cks = checksums.RequestChecksum("CRC32C")
    new = await ms.put_part(u, 2, cks.wrap(feed(b"new part")), checksum=cks)
    assert (new.checksum_algorithm, new.checksum) == ("CRC32C", b64("CRC32C", b"new part"))
    parts, _ = await ms.list_parts(u)
    assert [(p.number, p.size, p.checksum) for p in parts] == [
        (1, len(old), None), (2, 8, b64("CRC32C", b"new part"))]
    done = await ms.complete_parts(u, [(p.number, p.etag) for p in parts])
    assert b"".join([c async for c in done.stream]) == old + b"new part"
