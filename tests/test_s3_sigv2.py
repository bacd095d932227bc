"""boto3's default presigned URLs (SigV2 query strings) work against the gateway."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from gateway.errors import S3Error
from gateway.sigv2 import verify_presigned_v2
from tests.meshd_proc import MeshdProcess

AK, SK = "AKMESHTEST", "secret-for-tests"


def client(endpoint: str, style: str = "path") -> object:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
                        region_name="us-east-1", config=Config(s3={"addressing_style": style}))


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> MeshdProcess:
    store = tmp_path / "store"
    (store / "dir").mkdir(parents=True)
    (store / "dir" / "a b+c.txt").write_bytes(b"presigned bytes")
    return meshd([f"/data=file://{store}"], ["--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount"])


def test_default_presigned_get_and_put(node: MeshdProcess, tmp_path: Path) -> None:
    s3 = client(node.endpoints["s3"])
    url = s3.generate_presigned_url("get_object", Params={  # type: ignore[attr-defined]
        "Bucket": "data", "Key": "dir/a b+c.txt", "ResponseContentType": "text/x-mesh"})
    assert "AWSAccessKeyId=" in url and "X-Amz-" not in url  # really SigV2
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"presigned bytes"
        assert r.headers["Content-Type"] == "text/x-mesh"
    put = s3.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": "up.bin"})  # type: ignore[attr-defined]
    parts = urlsplit(put)  # http.client: urllib would add a Content-Type, which SigV2 signs
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("PUT", parts.path + "?" + parts.query, body=b"uploaded")
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert (tmp_path / "store" / "up.bin").read_bytes() == b"uploaded"


def test_tampered_or_expired_presigned_url_is_refused(node: MeshdProcess) -> None:
    s3 = client(node.endpoints["s3"])
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "dir/a b+c.txt"})  # type: ignore[attr-defined]
    for bad in (url.replace("dir/a", "dir/A"), url.replace("Signature=", "Signature=x")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad)
        assert e.value.code == 403 and b"SignatureDoesNotMatch" in e.value.read()
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "dir/a b+c.txt"},  # type: ignore[attr-defined]
                                        ExpiresIn=-10)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(expired)
    assert e.value.code == 403 and b"expired" in e.value.read()


def test_virtual_hosted_presigned_url(node: MeshdProcess) -> None:
    ep = node.endpoints["s3"].replace("127.0.0.1", "localhost")
    url = client(ep, "virtual").generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": "data", "Key": "dir/a b+c.txt"})
    parts = urlsplit(url)
    assert parts.hostname == "data.localhost"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    conn.request("GET", parts.path + "?" + parts.query, headers={"Host": parts.netloc})
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"presigned bytes"


def test_unknown_key_and_missing_expiry() -> None:
    with pytest.raises(S3Error) as e:
        verify_presigned_v2("GET", "/b/k", "AWSAccessKeyId=nobody&Signature=x&Expires=99999999999", {},
                            {AK: SK})
    assert e.value.code == "InvalidAccessKeyId"
    with pytest.raises(S3Error) as e:
        verify_presigned_v2("GET", "/b/k", "AWSAccessKeyId=x&Signature=x&Expires=soon", {}, {AK: SK})
    assert e.value.code == "AccessDenied"
