"""Pytest fixtures for tests that need a real S3 endpoint (moto in a subprocess).

Import them where needed (``from tests.conftest_s3 import s3_bucket, s3_server``)
or re-export them from ``tests/conftest.py``. Importing them into several
modules is harmless: all definitions share one server process per session.

* ``s3_server`` (session): an :class:`tests.s3server.S3Server` with IAM
  authentication on. ``.endpoint``, ``.region``, ``.access_key``,
  ``.secret_key``, ``.options()`` (mount options), ``.client()`` (boto3 S3
  client with valid credentials), ``.counters()`` / ``.reset_counters()``,
  ``.get_requests(bucket, key)`` / ``.get_bytes(bucket, key)``.
* ``s3_bucket`` (function): a fresh, uniquely named, empty bucket, as an
  :class:`S3Bucket` ``(endpoint, name, options)`` named tuple; ``.uri(prefix)``
  builds the mount URI. The bucket and its contents are removed afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from tests import s3server
from tests.s3server import S3Server

_shared: S3Server | None = None


def shared_server() -> S3Server:
    """The session's server, started on first use."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        _shared = s3server.start(auth=True)
    return _shared


class S3Bucket(NamedTuple):
    endpoint: str
    name: str
    options: dict[str, str]  # mount options: endpoint, region, access_key, secret_key

    def uri(self, prefix: str = "") -> str:
        prefix = prefix.strip("/")
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    global _shared
    server = shared_server()
    yield server
    server.stop()
    _shared = None


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    name = f"mesh-test-{uuid.uuid4().hex[:16]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(s3_server.endpoint, name, s3_server.options())
    finally:
        _remove_bucket(client, name)
        client.close()


def _remove_bucket(client: Any, name: str) -> None:
    """Free the server's memory; errors here must not fail the test."""
    with contextlib.suppress(Exception):
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for up in uploads:
            client.abort_multipart_upload(
                Bucket=name, Key=up["Key"], UploadId=up["UploadId"]
            )
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)
