"""Regression tests for defects found in review of the S3 gateway (real meshd, boto3)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.meshd_proc import MeshdProcess

AK, SK = "AKREVIEW", "review-secret"


def s3(node: MeshdProcess) -> object:
    return boto3.client("s3", endpoint_url=node.endpoints["s3"], aws_access_key_id=AK, aws_secret_access_key=SK,
                        region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> MeshdProcess:
    (tmp_path / "store").mkdir()
    return meshd([f"/data=file://{tmp_path / 'store'}"], ["--s3-access-key", AK, "--s3-secret-key", SK,
                                                          "--no-default-mount"])


def test_concurrent_puts_never_pair_bytes_with_another_writers_etag(node: MeshdProcess) -> None:
    c = s3(node)
    bodies = [os.urandom(100_000 + i) for i in range(8)]
    for _round in range(15):
        def put(i: int) -> None:
            c.put_object(Bucket="data", Key="race", Body=bodies[i], Metadata={"who": str(i)})  # type: ignore[attr-defined]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(8)))
        got = c.get_object(Bucket="data", Key="race")  # type: ignore[attr-defined]
        body = got["Body"].read()
        assert got["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        assert body == bodies[int(got["Metadata"]["who"])]


def test_delete_bucket_never_deletes_a_file_a_stale_listing_missed(
    meshd: Callable[..., MeshdProcess], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    node = meshd([f"/=file://{root},sync_interval=300"], ["--s3-access-key", AK, "--s3-secret-key", SK,
                                                           "--no-default-mount"])
    c = s3(node)
    c.create_bucket(Bucket="victim")  # type: ignore[attr-defined]
    assert c.list_objects_v2(Bucket="victim")["KeyCount"] == 0  # type: ignore[attr-defined]  # now cached
    (root / "victim" / "sub").mkdir()
    (root / "victim" / "sub" / "important.parquet").write_bytes(b"precious")  # behind the cache's back
    with pytest.raises(ClientError) as e:
        c.delete_bucket(Bucket="victim")  # type: ignore[attr-defined]
    assert code(e) == "BucketNotEmpty"
    assert (root / "victim" / "sub" / "important.parquet").read_bytes() == b"precious"
    (root / "victim" / "sub" / "important.parquet").unlink()
    c.delete_bucket(Bucket="victim")  # type: ignore[attr-defined]  # only empty directories: fine
    assert not (root / "victim").exists()


def test_conditional_puts_are_honoured_not_ignored(node: MeshdProcess, tmp_path: Path) -> None:
    c = s3(node)
    c.put_object(Bucket="data", Key="k", Body=b"first")  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="data", Key="k", Body=b"second", IfNoneMatch="*")  # type: ignore[attr-defined]
    assert code(e) == "PreconditionFailed"  # tests/test_s3_conditional.py covers the rest
    assert (tmp_path / "store" / "k").read_bytes() == b"first"


def test_suffix_range_of_an_empty_object_is_416(node: MeshdProcess) -> None:
    c = s3(node)
    c.put_object(Bucket="data", Key="empty", Body=b"")  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="data", Key="empty", Range="bytes=-5")  # type: ignore[attr-defined]
    assert code(e) == "InvalidRange"


def test_files_written_through_s3_get_a_normal_mode(node: MeshdProcess, tmp_path: Path) -> None:
    c = s3(node)
    c.put_object(Bucket="data", Key="m", Body=b"x")  # type: ignore[attr-defined]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "store" / "m").stat().st_mode) == 0o666 & ~umask
    os.chmod(tmp_path / "store" / "m", 0o640)
    c.put_object(Bucket="data", Key="m", Body=b"y")  # type: ignore[attr-defined]  # replacing keeps the mode
    assert stat.S_IMODE((tmp_path / "store" / "m").stat().st_mode) == 0o640


def test_object_prefix_conflicts_are_clear_and_leak_no_paths(node: MeshdProcess, tmp_path: Path) -> None:
    c = s3(node)
    c.put_object(Bucket="data", Key="a", Body=b"x")  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="data", Key="a/b", Body=b"y")  # type: ignore[attr-defined]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert code(e) == "InvalidRequest"
    assert str(tmp_path) not in str(e.value)
