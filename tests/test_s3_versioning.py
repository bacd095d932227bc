"""Object versions through the S3 gateway, passed through to a versioned S3 under-store.

A real ``meshd embedded`` with the gateway mounts buckets of a real S3 endpoint (moto in
a subprocess, tests/s3server.py): ``/vers`` a prefix ``p`` of a bucket with versioning
on, ``/plain`` a bucket that never had it, ``/ro`` the versioned bucket read-only,
``/toggle`` a bucket whose versioning the tests turn on and off through the gateway,
``/local`` a directory (a store that keeps no versions).
boto3 (current, default checksums) talks to the gateway; a plain boto3 client on the
store checks what landed there (versions under the mount's prefix, their ids).
"""

from __future__ import annotations

# The S3 fixtures are imported and then used as test parameters.
# ruff: noqa: F811
import contextlib
import hashlib
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest_s3 import s3_server  # noqa: F401 (fixture)
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

AK = "AKIDMESHVERSIONS"
SK = "versions/secret+Key=7"
MiB = 1 << 20
PREFIX = "p"
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class Setup:
    node: MeshdProcess
    s3: Any  # boto3 on the gateway
    store: Any  # boto3 on the under-store
    versioned: str  # the under-store buckets
    plain: str
    toggle: str


def _drop_bucket(client: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
        client.delete_bucket(Bucket=name)


def _mount(path: str, server: S3Server, uri: str, **extra: str) -> str:
    opts = {**server.options(), **extra}
    return f"{path}={uri}," + ",".join(f"{k}={v}" for k, v in opts.items())


@pytest.fixture(scope="module")
def setup(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    store = s3_server.client()
    versioned, plain, toggle = (f"mesh-{n}-{uuid.uuid4().hex[:12]}" for n in ("vers", "plain", "toggle"))
    for name in (versioned, plain, toggle):
        store.create_bucket(Bucket=name)
    store.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    base: Path = tmp_path_factory.mktemp("s3vers")
    (base / "local").mkdir()
    node = MeshdProcess(base / "node", [
        _mount("/vers", s3_server, f"s3://{versioned}/{PREFIX}", sync_interval="600"),
        _mount("/plain", s3_server, f"s3://{plain}"),
        _mount("/ro", s3_server, f"s3://{versioned}/{PREFIX}", read_only="true"),
        _mount("/toggle", s3_server, f"s3://{toggle}"),
        f"/local=file://{base / 'local'}",
    ], ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount", "--page-size", "1MiB"]).start()
    s3 = boto3.client("s3", endpoint_url=node.endpoints["s3"], aws_access_key_id=AK, aws_secret_access_key=SK,
                      region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}))
    try:
        yield Setup(node, s3, store, versioned, plain, toggle)
    finally:
        s3.close()
        node.stop()
        for name in (versioned, plain, toggle):
            _drop_bucket(store, name)
        store.close()


def err(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return str(e.value.response["Error"]["Code"]), int(e.value.response["ResponseMetadata"]["HTTPStatusCode"])


def headers(e: pytest.ExceptionInfo[ClientError]) -> dict[str, str]:
    return dict(e.value.response["ResponseMetadata"]["HTTPHeaders"])


def md5(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def three_versions(setup: Setup, key: str, size: int = 3 * MiB + 5) -> list[tuple[str, bytes]]:
    """Three PUTs of ``key`` through the gateway: (version id, bytes) oldest first."""
    out = []
    for _ in range(3):
        data = os.urandom(size)
        r = setup.s3.put_object(Bucket="vers", Key=key, Body=data)
        assert r["ETag"] == md5(data)
        out.append((r["VersionId"], data))
    return out


def versions_of(s3: Any, bucket: str, **kw: Any) -> list[tuple[str, str, bool, bool]]:
    """Every (key, version id, is latest, is delete marker) of a listing, by key, the
    latest first (botocore splits versions and markers into two lists; each in S3's order)."""
    out: list[tuple[str, str, bool, bool]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, **kw):
        out += [(v["Key"], v["VersionId"], v["IsLatest"], False) for v in page.get("Versions", [])]
        out += [(v["Key"], v["VersionId"], v["IsLatest"], True) for v in page.get("DeleteMarkers", [])]
    return sorted(out, key=lambda v: (v[0].encode(), not v[2]))


# --------------------------------------------------------------------------- bucket versioning


def test_bucket_versioning_is_the_stores(setup: Setup) -> None:
    assert setup.s3.get_bucket_versioning(Bucket="vers")["Status"] == "Enabled"
    assert "Status" not in setup.s3.get_bucket_versioning(Bucket="plain")
    assert "Status" not in setup.s3.get_bucket_versioning(Bucket="toggle")
    # PutBucketVersioning goes to the store, for the whole bucket
    setup.s3.put_bucket_versioning(Bucket="toggle", VersioningConfiguration={"Status": "Enabled"})
    assert setup.s3.get_bucket_versioning(Bucket="toggle")["Status"] == "Enabled"
    assert setup.store.get_bucket_versioning(Bucket=setup.toggle)["Status"] == "Enabled"
    first = setup.s3.put_object(Bucket="toggle", Key="t", Body=b"1")["VersionId"]
    second = setup.s3.put_object(Bucket="toggle", Key="t", Body=b"2")["VersionId"]
    assert setup.s3.get_object(Bucket="toggle", Key="t", VersionId=first)["Body"].read() == b"1"
    setup.s3.put_bucket_versioning(Bucket="toggle", VersioningConfiguration={"Status": "Suspended"})
    assert setup.s3.get_bucket_versioning(Bucket="toggle")["Status"] == "Suspended"
    assert setup.store.get_bucket_versioning(Bucket=setup.toggle)["Status"] == "Suspended"
    # suspended: the versions made stay
    assert [(vid, latest) for _, vid, latest, _ in versions_of(setup.s3, "toggle")] == [
        (second, True), (first, False)]
    # a write while suspended is the "null" version (moto then drops the older ones, and
    # answers a HEAD by version id in a suspended bucket with 400: neither is checked)
    assert "VersionId" not in setup.s3.put_object(Bucket="toggle", Key="t", Body=b"3")
    assert setup.s3.get_object(Bucket="toggle", Key="t")["Body"].read() == b"3"
    assert versions_of(setup.s3, "toggle")[0][1:3] == ("null", True)
    with pytest.raises(ClientError) as e:  # a read-only mount changes nothing
        setup.s3.put_bucket_versioning(Bucket="ro", VersioningConfiguration={"Status": "Suspended"})
    assert err(e) == ("AccessDenied", 403)
    assert setup.store.get_bucket_versioning(Bucket=setup.versioned)["Status"] == "Enabled"
    with pytest.raises(ClientError) as e:
        setup.s3.put_bucket_versioning(Bucket="vers", VersioningConfiguration={"Status": "Sometimes"})
    assert err(e) == ("MalformedXML", 400)
    # a store that keeps no versions: never enabled, and cannot be
    assert "Status" not in setup.s3.get_bucket_versioning(Bucket="local")
    with pytest.raises(ClientError) as e:
        setup.s3.put_bucket_versioning(Bucket="local", VersioningConfiguration={"Status": "Enabled"})
    assert err(e) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as e:
        setup.s3.put_bucket_versioning(Bucket="nosuchbucket", VersioningConfiguration={"Status": "Enabled"})
    assert err(e) == ("NoSuchBucket", 404)


# --------------------------------------------------------------------------- versions


def test_three_versions_listed_read_and_headed(setup: Setup) -> None:
    vs = three_versions(setup, "doc.bin")
    ids = [vid for vid, _ in vs]
    assert len(set(ids)) == 3 and "null" not in ids
    # the store holds them under the mount's prefix, with the same ids
    raw = setup.store.list_object_versions(Bucket=setup.versioned, Prefix=f"{PREFIX}/doc.bin")
    assert sorted(v["VersionId"] for v in raw["Versions"]) == sorted(ids)
    listed = versions_of(setup.s3, "vers", Prefix="doc.bin")
    assert listed == [("doc.bin", ids[2], True, False), ("doc.bin", ids[1], False, False),
                      ("doc.bin", ids[0], False, False)]
    r = setup.s3.list_object_versions(Bucket="vers", Prefix="doc.bin")
    assert {v["VersionId"]: v["ETag"] for v in r["Versions"]} == {vid: md5(d) for vid, d in vs}
    assert all(v["Size"] == len(d) for v, (_, d) in zip(r["Versions"], reversed(vs), strict=True))
    for vid, data in vs:
        got = setup.s3.get_object(Bucket="vers", Key="doc.bin", VersionId=vid)
        assert got["Body"].read() == data
        assert got["VersionId"] == vid and got["ETag"] == md5(data)
        h = setup.s3.head_object(Bucket="vers", Key="doc.bin", VersionId=vid)
        assert h["ContentLength"] == len(data) and h["VersionId"] == vid and h["ETag"] == md5(data)
        part = setup.s3.get_object(Bucket="vers", Key="doc.bin", VersionId=vid, Range="bytes=1048570-2097160")
        assert part["Body"].read() == data[1048570:2097161]
        assert part["ContentRange"] == f"bytes 1048570-2097160/{len(data)}"
    assert setup.s3.get_object(Bucket="vers", Key="doc.bin")["Body"].read() == vs[2][1]
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket="vers", Key="doc.bin", VersionId="no-such-version-id")
    assert err(e) == ("NoSuchVersion", 404)


def test_old_version_is_cached_and_never_the_latest_pages(setup: Setup, s3_server: S3Server) -> None:
    vs = three_versions(setup, "cached.bin", 2 * MiB + 3)
    store_key = f"{PREFIX}/cached.bin"
    # the latest is read (and cached) first; same size, same keys of pages but for the version
    assert setup.s3.get_object(Bucket="vers", Key="cached.bin")["Body"].read() == vs[2][1]
    for vid, data in vs[:2]:
        assert setup.s3.get_object(Bucket="vers", Key="cached.bin", VersionId=vid)["Body"].read() == data
    fetched = s3_server.get_bytes(setup.versioned, store_key)
    gets = s3_server.get_requests(setup.versioned, store_key)
    for vid, data in vs:  # again: from the cache, each version its own bytes
        assert setup.s3.get_object(Bucket="vers", Key="cached.bin", VersionId=vid)["Body"].read() == data
    first = setup.s3.get_object(Bucket="vers", Key="cached.bin", VersionId=vs[0][0])["Body"].read()
    assert first == vs[0][1]
    # the two old versions are not fetched again (the latest by id once: its pages are keyed by the id)
    assert s3_server.get_bytes(setup.versioned, store_key) - fetched <= len(vs[2][1])
    assert s3_server.get_requests(setup.versioned, store_key) - gets <= 3


def test_delete_marker_and_deleting_versions(setup: Setup) -> None:
    vs = three_versions(setup, "gone.txt", 100)
    d = setup.s3.delete_object(Bucket="vers", Key="gone.txt")
    assert d["DeleteMarker"] is True
    marker = d["VersionId"]
    assert marker not in [vid for vid, _ in vs]
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket="vers", Key="gone.txt")
    assert err(e) == ("NoSuchKey", 404)
    assert headers(e)["x-amz-delete-marker"] == "true" and headers(e)["x-amz-version-id"] == marker
    with pytest.raises(ClientError) as e:
        setup.s3.head_object(Bucket="vers", Key="gone.txt")
    assert err(e)[1] == 404 and headers(e)["x-amz-delete-marker"] == "true"
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket="vers", Key="gone.txt", VersionId=marker)
    assert err(e) == ("MethodNotAllowed", 405) and headers(e)["x-amz-delete-marker"] == "true"
    assert "gone.txt" not in [o["Key"] for o in setup.s3.list_objects_v2(Bucket="vers").get("Contents", [])]
    listed = versions_of(setup.s3, "vers", Prefix="gone.txt")
    assert ("gone.txt", marker, True, True) in listed and len(listed) == 4
    assert [x for x in listed if x[2]] == [("gone.txt", marker, True, True)]
    # old versions stay readable
    assert setup.s3.get_object(Bucket="vers", Key="gone.txt", VersionId=vs[0][0])["Body"].read() == vs[0][1]
    # removing the marker brings the last version back
    d = setup.s3.delete_object(Bucket="vers", Key="gone.txt", VersionId=marker)
    assert d["VersionId"] == marker and d["DeleteMarker"] is True
    assert setup.s3.get_object(Bucket="vers", Key="gone.txt")["Body"].read() == vs[2][1]
    # removing one version for good
    d = setup.s3.delete_object(Bucket="vers", Key="gone.txt", VersionId=vs[1][0])
    assert d["VersionId"] == vs[1][0] and not d.get("DeleteMarker")
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket="vers", Key="gone.txt", VersionId=vs[1][0])
    assert err(e) == ("NoSuchVersion", 404)
    assert versions_of(setup.s3, "vers", Prefix="gone.txt") == [("gone.txt", vs[2][0], True, False),
                                                                  ("gone.txt", vs[0][0], False, False)]
    # removing the latest makes the one before it current
    setup.s3.delete_object(Bucket="vers", Key="gone.txt", VersionId=vs[2][0])
    assert setup.s3.get_object(Bucket="vers", Key="gone.txt")["Body"].read() == vs[0][1]


def test_copy_from_a_version_and_restore(setup: Setup) -> None:
    vs = three_versions(setup, "src.bin", 1000)
    c = setup.s3.copy_object(Bucket="vers", Key="copy.bin",
                             CopySource={"Bucket": "vers", "Key": "src.bin", "VersionId": vs[0][0]})
    assert c["CopySourceVersionId"] == vs[0][0]
    assert c["VersionId"] and c["CopyObjectResult"]["ETag"] == md5(vs[0][1])
    got = setup.s3.get_object(Bucket="vers", Key="copy.bin")
    assert got["Body"].read() == vs[0][1]
    assert setup.s3.get_object(Bucket="vers", Key="copy.bin", VersionId=c["VersionId"])["Body"].read() == vs[0][1]
    # S3's way to restore an old version: copy it onto its own key
    r = setup.s3.copy_object(Bucket="vers", Key="src.bin",
                             CopySource={"Bucket": "vers", "Key": "src.bin", "VersionId": vs[1][0]})
    assert setup.s3.get_object(Bucket="vers", Key="src.bin")["Body"].read() == vs[1][1]
    assert versions_of(setup.s3, "vers", Prefix="src.bin")[0][1] == r["VersionId"]
    with pytest.raises(ClientError) as e:
        setup.s3.copy_object(Bucket="vers", Key="x.bin",
                             CopySource={"Bucket": "vers", "Key": "src.bin", "VersionId": "not-a-version"})
    assert err(e) == ("NoSuchVersion", 404)


def test_multipart_complete_returns_its_version(setup: Setup) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    up = setup.s3.create_multipart_upload(Bucket="vers", Key="mp.bin", ContentType="application/x-test",
                                          Metadata={"colour": "teal"})
    etags = [setup.s3.upload_part(Bucket="vers", Key="mp.bin", UploadId=up["UploadId"], PartNumber=i + 1,
                                  Body=p)["ETag"] for i, p in enumerate(parts)]
    done = setup.s3.complete_multipart_upload(
        Bucket="vers", Key="mp.bin", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": t} for i, t in enumerate(etags)]})
    assert done["VersionId"]
    assert versions_of(setup.s3, "vers", Prefix="mp.bin") == [("mp.bin", done["VersionId"], True, False)]
    got = setup.s3.get_object(Bucket="vers", Key="mp.bin", VersionId=done["VersionId"])
    assert got["Body"].read() == b"".join(parts) and got["ETag"] == done["ETag"]
    # its ETag (the parts', not the store's), type and metadata outlive a newer version and a delete
    setup.s3.put_object(Bucket="vers", Key="mp.bin", Body=b"newer")
    setup.s3.delete_object(Bucket="vers", Key="mp.bin")
    h = setup.s3.head_object(Bucket="vers", Key="mp.bin", VersionId=done["VersionId"])
    assert h["ETag"] == done["ETag"] and done["ETag"].endswith('-2"')
    assert h["ContentType"] == "application/x-test" and h["Metadata"] == {"colour": "teal"}
    listed = setup.s3.list_object_versions(Bucket="vers", Prefix="mp.bin")["Versions"]
    assert {v["VersionId"]: v["ETag"] for v in listed}[done["VersionId"]] == done["ETag"]


def test_listing_pages_markers_and_prefixes(setup: Setup) -> None:
    setup.store.put_object(Bucket=setup.versioned, Key="outside-the-mount", Body=b"x")
    for key in ("l/a", "l/b", "l/c/d"):
        for i in range(2):
            setup.s3.put_object(Bucket="vers", Key=key, Body=f"{key} {i}".encode())
    setup.s3.delete_object(Bucket="vers", Key="l/b")
    whole = versions_of(setup.s3, "vers", Prefix="l/")
    assert [(k, latest, marker) for k, _, latest, marker in whole] == [
        ("l/a", True, False), ("l/a", False, False),
        ("l/b", True, True), ("l/b", False, False), ("l/b", False, False),
        ("l/c/d", True, False), ("l/c/d", False, False)]
    # the XML interleaves versions and markers in S3's order (botocore's two lists hide it)
    bodies: list[bytes] = []

    def keep(http_response: Any = None, **_: Any) -> None:
        bodies.append(http_response.content)

    setup.s3.meta.events.register("after-call.s3.ListObjectVersions", keep)
    try:
        setup.s3.list_object_versions(Bucket="vers", Prefix="l/b")
    finally:
        setup.s3.meta.events.unregister("after-call.s3.ListObjectVersions", keep)
    root = ET.fromstring(bodies[0])
    assert [(el.tag.split("}")[-1], el.findtext(f"{NS}IsLatest")) for el in root
            if el.tag.endswith(("}Version", "}DeleteMarker"))] == [
        ("DeleteMarker", "true"), ("Version", "false"), ("Version", "false")]
    seen: list[tuple[str, str]] = []
    kw: dict[str, str] = {}
    for _ in range(10):  # by hand, two at a time
        r = setup.s3.list_object_versions(Bucket="vers", Prefix="l/", MaxKeys=2, **kw)
        seen += [(v["Key"], v["VersionId"]) for v in r.get("Versions", []) + r.get("DeleteMarkers", [])]
        if not r["IsTruncated"]:
            break
        kw = {"KeyMarker": r["NextKeyMarker"], "VersionIdMarker": r["NextVersionIdMarker"]}
    assert sorted(seen) == sorted((k, vid) for k, vid, _, _ in whole) and len(seen) == len(whole)
    r = setup.s3.list_object_versions(Bucket="vers", Prefix="l/", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["l/c/"]
    assert {v["Key"] for v in r["Versions"]} == {"l/a", "l/b"}
    everything = versions_of(setup.s3, "vers")
    assert all(not k.startswith(("outside", PREFIX)) for k, _, _, _ in everything)


@pytest.mark.parametrize("bucket", ["plain", "local"])
def test_unversioned_mount_answers_null(setup: Setup, bucket: str) -> None:
    r = setup.s3.put_object(Bucket=bucket, Key="n.txt", Body=b"one")
    assert "VersionId" not in r
    setup.s3.put_object(Bucket=bucket, Key="n.txt", Body=b"two")
    listed = setup.s3.list_object_versions(Bucket=bucket, Prefix="n.txt")["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listed] == [("n.txt", "null", True)]
    got = setup.s3.get_object(Bucket=bucket, Key="n.txt", VersionId="null")
    assert got["Body"].read() == b"two" and "VersionId" not in got
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket=bucket, Key="n.txt", VersionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
    assert err(e) == ("NoSuchVersion", 404)
    setup.s3.delete_object(Bucket=bucket, Key="n.txt", VersionId="null")
    with pytest.raises(ClientError) as e:
        setup.s3.get_object(Bucket=bucket, Key="n.txt")
    assert err(e) == ("NoSuchKey", 404) and "x-amz-delete-marker" not in headers(e)
    if bucket == "plain":
        assert setup.store.list_object_versions(Bucket=setup.plain, Prefix="n.txt").get("Versions", []) == []


def test_delete_objects_by_version(setup: Setup) -> None:
    vs = three_versions(setup, "many.txt", 10)
    marker = setup.s3.delete_object(Bucket="vers", Key="many.txt")["VersionId"]
    r = setup.s3.delete_objects(Bucket="vers", Delete={"Objects": [
        {"Key": "many.txt", "VersionId": vs[0][0]}, {"Key": "many.txt", "VersionId": marker},
        {"Key": "many.txt", "VersionId": "never-was"}]})
    assert not r.get("Errors")
    deleted = {d["VersionId"]: d.get("DeleteMarker", False) for d in r["Deleted"]}
    assert deleted == {vs[0][0]: False, marker: True, "never-was": False}
    # no delete marker was made by these: the last version is current again
    assert versions_of(setup.s3, "vers", Prefix="many.txt") == [("many.txt", vs[2][0], True, False),
                                                                  ("many.txt", vs[1][0], False, False)]
    assert setup.s3.get_object(Bucket="vers", Key="many.txt")["Body"].read() == vs[2][1]
    # a version that does not exist is deleted already (S3: success, with its id)
    d = setup.s3.delete_object(Bucket="vers", Key="many.txt", VersionId="never-was")
    assert d["VersionId"] == "never-was" and d["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert len(versions_of(setup.s3, "vers", Prefix="many.txt")) == 2


def test_listings_follow_a_removed_delete_marker(setup: Setup) -> None:
    v = setup.s3.put_object(Bucket="vers", Key="deep/er/x", Body=b"x")["VersionId"]

    def prefixes() -> list[str]:
        r = setup.s3.list_objects_v2(Bucket="vers", Prefix="deep/", Delimiter="/")
        return [p["Prefix"] for p in r.get("CommonPrefixes", [])]

    assert prefixes() == ["deep/er/"]
    marker = setup.s3.delete_object(Bucket="vers", Key="deep/er/x")["VersionId"]
    assert prefixes() == []
    setup.s3.delete_object(Bucket="vers", Key="deep/er/x", VersionId=marker)
    assert prefixes() == ["deep/er/"]  # cached listings of its directories are not believed
    assert setup.s3.list_objects_v2(Bucket="vers", Prefix="deep/er/")["Contents"][0]["Key"] == "deep/er/x"
    assert setup.s3.head_object(Bucket="vers", Key="deep/er/x")["ContentLength"] == 1
    assert setup.s3.get_object(Bucket="vers", Key="deep/er/x", VersionId=v)["Body"].read() == b"x"


def test_upload_part_copy_from_a_version(setup: Setup) -> None:
    vs = three_versions(setup, "big.bin", 6 * MiB + 7)
    old, data = vs[0]
    setup.s3.put_object(Bucket="vers", Key="big.bin", Body=os.urandom(7 * MiB))  # a longer latest
    up = setup.s3.create_multipart_upload(Bucket="vers", Key="parts.bin")
    src = {"Bucket": "vers", "Key": "big.bin", "VersionId": old}
    p1 = setup.s3.upload_part_copy(Bucket="vers", Key="parts.bin", UploadId=up["UploadId"], PartNumber=1,
                                   CopySource=src, CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    p2 = setup.s3.upload_part_copy(Bucket="vers", Key="parts.bin", UploadId=up["UploadId"], PartNumber=2,
                                   CopySource=src, CopySourceRange=f"bytes={5 * MiB}-{len(data) - 1}")
    with pytest.raises(ClientError) as e:  # a range past the end of that version (not of the latest)
        setup.s3.upload_part_copy(Bucket="vers", Key="parts.bin", UploadId=up["UploadId"], PartNumber=3,
                                  CopySource=src, CopySourceRange=f"bytes=0-{len(data)}")
    assert err(e) == ("InvalidRange", 416)
    setup.s3.complete_multipart_upload(Bucket="vers", Key="parts.bin", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert setup.s3.get_object(Bucket="vers", Key="parts.bin")["Body"].read() == data
    # boto3's managed copy of a version (UploadPartCopy with versionId above its threshold)
    from boto3.s3.transfer import TransferConfig

    setup.s3.copy(src, "vers", "managed.bin", Config=TransferConfig(multipart_threshold=5 * MiB,
                                                                    multipart_chunksize=5 * MiB))
    assert setup.s3.get_object(Bucket="vers", Key="managed.bin")["Body"].read() == data


async def test_versioning_that_cannot_be_asked_is_never_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that may not GetBucketVersioning, or an endpoint without it: the mount
    lists and reads as before (no versions) instead of failing; other errors still fail."""
    from meshd.errors import UnderStoreError
    from meshd.understore.s3 import S3UnderStore

    store = S3UnderStore("s3://b/p", {"endpoint": "http://127.0.0.1:9", "access_key": "a", "secret_key": "b"})
    answer = {"Code": "AccessDenied", "status": 403}

    async def refused(op: str, **kw: Any) -> Any:
        assert op == "get_bucket_versioning"
        raise ClientError({"Error": {"Code": answer["Code"]},
                           "ResponseMetadata": {"HTTPStatusCode": answer["status"]}}, "GetBucketVersioning")

    monkeypatch.setattr(store, "_raw", refused)
    try:
        assert await store.versioning() == ""
        store._versioning = None
        answer.update(Code="NotImplemented", status=501)
        assert await store.versioning() == ""
        store._versioning = None
        answer.update(Code="ServiceUnavailable", status=503)
        with pytest.raises(UnderStoreError):
            await store.versioning()
    finally:
        await store.close()
