"""Write-back with replicas (``writeback.replicas: 2``): a write is acknowledged only once
its bytes are on a second node of the region too, so losing the writer for good (its
disk gone) loses no acknowledged write: the replica's holder uploads it instead.

Real nodes of one region (etcd, ``meshd run``), a file:// store that refuses writes
until the test lets it (its directory is missing), kill -9 of the writer and removal of
its data directory."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from meshd.client.sdk import MeshClient
from tests.conftest import wait_until
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess


def test_a_lost_writers_acknowledged_writes_are_uploaded_by_their_replica(
        tmp_path: Path, etcd: EtcdProcess, cluster: Callable[..., list[MeshdProcess]]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    cfg = tmp_path / "wb.yaml"
    cfg.write_text("writeback:\n  replicas: 2\n  takeover_after: 2\n  retry_max: 1\n")
    nodes = cluster(3, etcd, ["--config", str(cfg)])
    nodes[0].ctl("mount", "add", "/ck", f"file://{store}", "-o", "write_mode=back", check=True)
    shutil.rmtree(store)  # the store is away: nothing can be uploaded
    files = {f"/ck/step-{i}/shard-{i}.pt": os.urandom(300_000 * (i + 1)) for i in range(3)}
    with MeshClient(nodes[0].endpoint) as c:
        for path, data in files.items():
            st = c.put(path, data)
            assert st.version.startswith("wb:")  # acknowledged, not uploaded
    for other in nodes[1:]:  # every node reads the pending bytes (from the writer)
        with MeshClient(other.endpoint) as c:
            for path, data in files.items():
                assert hashlib.sha256(c.cat(path)).digest() == hashlib.sha256(data).digest()
    held = sum(len([n for n in os.listdir(n.data_dir / "writeback") if n.startswith("r-")]) for n in nodes[1:])
    assert held == len(files)  # each write has one replica on another node
    nodes[0].kill()  # the writer dies ...
    shutil.rmtree(nodes[0].data_dir)  # ... with its disk
    store.mkdir()  # the store is back
    for path, data in files.items():
        target = store / path.removeprefix("/ck/")
        wait_until(lambda t=target: t.read_bytes() if t.exists() else b"", lambda b, d=data: b == d, 60,
                   f"{path} uploaded by the node holding its replica")
    with MeshClient(nodes[1].endpoint) as c:
        for path, data in files.items():
            assert c.cat(path) == data
            assert not c.stat(path).version.startswith("wb:")
    wait_until(lambda: [n for p in nodes[1:] for n in os.listdir(p.data_dir / "writeback") if n.startswith("r-")],
               lambda left: left == [], 30, "replica files gone once uploaded")
