"""Write-back across the nodes of one region: the last acknowledged change of a path
wins, whichever node made it.

Node A holds a write-back write of a path it cannot upload yet (its file:// store is
away, so its retries back off); the store comes back and node B changes the path at
once (a write-through write, or a delete). A's upload must never land over B's change:
B asks A to drop its pending write (and waits for an upload of it on the wire) before
it changes the store. Real nodes (etcd, ``meshd run``), the mesh client."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.client.sdk import MeshClient
from tests.conftest import wait_until
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess


@pytest.mark.parametrize("change", ["write", "delete"])
def test_a_change_through_another_node_wins_over_an_older_pending_write(
        tmp_path: Path, etcd: EtcdProcess, cluster: Callable[..., list[MeshdProcess]], change: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    cfg = tmp_path / "wb.yaml"
    cfg.write_text("writeback:\n  retry_max: 4\n")
    a, b = cluster(2, etcd, ["--config", str(cfg)])
    a.ctl("mount", "add", "/ck", f"file://{store}", "-o", "write_mode=back", check=True)
    shutil.rmtree(store)  # the store is away: A's upload fails, and its retries back off
    old, new = os.urandom(200_000), os.urandom(100_000)
    with MeshClient(a.endpoint) as ca:
        assert ca.put("/ck/model.pt", old).version.startswith("wb:")  # acknowledged by A
        wait_until(lambda: ca.writeback_status()["retries"], lambda n: n >= 3, 60, "A never retried")
    with MeshClient(b.endpoint) as cb:
        wait_until(lambda: cb.stat("/ck/model.pt").version, lambda v: v.startswith("wb:"), 30,
                   "B never learnt of A's pending write")
        store.mkdir()  # the store is back; A's next retry is seconds away
        if change == "write":
            assert not cb.put("/ck/model.pt", new, writeback=False).version.startswith("wb:")
        else:
            cb.rm("/ck/model.pt")
    with MeshClient(a.endpoint) as ca:
        wait_until(lambda: ca.writeback_status()["pending_files"], lambda n: n == 0, 30,
                   "A still holds its replaced write")
        time.sleep(5)  # past A's next retry time: nothing of A's lands late
        target = store / "model.pt"
        if change == "write":
            assert target.read_bytes() == new
            assert ca.cat("/ck/model.pt") == new
        else:
            assert not target.exists()
        assert ca.writeback_status()["superseded"] >= 1
