"""Write-back across regions (network namespaces, tbf-shaped links, real etcd and
meshd nodes: tests/multiregion.py): a write acknowledged in region-b is read with
its new bytes in region-c and region-a while its upload to the store (in region-a)
is still in flight, and after the upload too, with the same bytes.

The S3 server holds every write request (tests/s3server.py ``hold``) until the
reads are done, so "before the upload finishes" does not depend on timing: the
store is checked directly to lack the new bytes at the moment of the reads.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.multiregion import MultiRegion

MiB = 1 << 20
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiRegion]:
    env = MultiRegion(tmp_path_factory.mktemp("wb-regions"),
                      nodes={"region-a": 1, "region-b": 1, "region-c": 1},
                      mount_options={"write_mode": "back"})
    try:
        yield env
    finally:
        env.store_config(hold=False)
        env.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat(mr: MultiRegion, region: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(mr.ctl(region, "stat", path).stdout)
    return out


def digests(mr: MultiRegion, region: str, paths: list[str]) -> dict[str, str]:
    result = mr.read(region, paths, readers=1, read_timeout=60)
    r = result["readers"][0]
    assert r["error"] is None, f"{region}: {r['error']}"
    out: dict[str, str] = r["digests"]
    return out


def test_other_regions_read_new_bytes_before_the_upload(mr: MultiRegion, tmp_path: Path) -> None:
    rng = random.Random(23)
    old_key, new_key = "wb/replaced.bin", "wb/new.bin"
    old_path, new_path = f"/datasets/{old_key}", f"/datasets/{new_key}"
    old_sha = mr.put(old_key, 7, 3 * MiB + 5)  # in the store; read (and cached) everywhere first
    for region in ("region-a", "region-c"):
        assert digests(mr, region, [old_path]) == {old_path: old_sha}

    new = {old_key: rng.randbytes(10 * MiB + 17),  # > 8 MiB: the upload is a multipart upload
           new_key: rng.randbytes(300 << 10)}
    mr.store_config(hold=True)  # every upload request waits at the store from now on
    try:
        for key, data in new.items():
            src = tmp_path / key.replace("/", "_")
            src.write_bytes(data)
            mr.ctl("region-b", "cp", str(src), f"mesh:/datasets/{key}")  # acknowledged: write-back
        want = {f"/datasets/{k}": sha(v) for k, v in new.items()}
        for region in ("region-c", "region-a", "region-b"):
            assert digests(mr, region, sorted(want)) == want, f"{region} read other bytes than were written"
            listed = mr.ctl(region, "ls", "/datasets/wb").stdout
            assert "new.bin" in listed and "replaced.bin" in listed, listed
            for path, key in ((old_path, old_key), (new_path, new_key)):
                st = stat(mr, region, path)
                assert st["size"] == len(new[key]) and st["version"].startswith("wb:"), st
        # the store still has the old bytes and lacks the new file: the reads came from region-b
        assert mr.store_digest(new_key) is None
        assert mr.store_digest(old_key) == old_sha
    finally:
        mr.store_config(hold=False)

    deadline = time.monotonic() + 120
    while any(mr.store_digest(k) != sha(v) for k, v in new.items()):
        assert time.monotonic() < deadline, "the uploads did not land in the store"
        time.sleep(0.5)
    for region in ("region-c", "region-a", "region-b"):
        assert digests(mr, region, sorted(want)) == want, f"{region}: bytes changed with the upload"
    deadline = time.monotonic() + 60
    while stat(mr, "region-c", old_path)["version"].startswith("wb:"):  # the store's version, at last
        assert time.monotonic() < deadline, "the status never switched to the store's version"
        time.sleep(0.5)
    assert digests(mr, "region-c", sorted(want)) == want
