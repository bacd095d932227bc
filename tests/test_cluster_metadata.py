"""Metadata at scale across the shards: a million entries, a 100,000-entry directory.

The under-store is a real directory with 1,000,000 empty files (900,000 in
nine directories, 100,000 in one). Listing them through the cluster loads each
listing at its owner and hands every file's status to the status's owner, so
the million statuses end up spread over the four nodes' RocksDB shards. Then
every status is served from a shard (no under-store request), and the big
directory pages correctly through any node.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshd.rpc.wire import SyncWireClient
from tests.conftest import wait_until
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess

Cluster = Callable[..., list[MeshdProcess]]
DIRS = 9
PER_DIR = 100_000
BIG = 100_000


def make_tree(root: Path) -> None:
    def fill(d: Path, n: int) -> None:
        d.mkdir(parents=True)
        for i in range(n):
            os.close(os.open(d / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda a: fill(*a), [(root / f"d{k}", PER_DIR) for k in range(DIRS)] + [(root / "big", BIG)]))


def shard_counts(node: MeshdProcess) -> dict[str, int]:
    return dict(SyncWireClient(node.endpoints["meta"]).call("shard.counts", {}))


def test_a_million_entries_across_the_shards(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_tree(store)
    nodes = cluster(4, etcd, ttl=10)  # the default lease: this test loads both cores for minutes
    nodes[0].ctl("mount", "add", "/m", f"file://{store}", "-o", "sync_interval=-1", check=True)

    # list every directory, each through a different node, one page at a time
    def list_dir(k: int) -> list[str]:
        d = f"/m/d{k}" if k < DIRS else "/m/big"
        with nodes[k % 4].client() as c:
            return [e.path for e in c.iter_ls(d, page=5000)]

    with ThreadPoolExecutor(4) as ex:
        listed = list(ex.map(list_dir, range(DIRS + 1)))
    assert sum(len(x) for x in listed) == DIRS * PER_DIR + BIG == 1_000_000
    for k, names in enumerate(listed):
        d = f"/m/d{k}" if k < DIRS else "/m/big"
        assert names == [f"{d}/f{i:06d}" for i in range(PER_DIR if k < DIRS else BIG)]

    # the listings' owners hand the statuses to their owners in the background
    counts = wait_until(lambda: [shard_counts(n) for n in nodes],
                        lambda cs: sum(c["statuses"] for c in cs) >= 1_000_000
                        and not any(c["pushes_pending"] for c in cs), 300, "statuses still in flight", interval=1)
    statuses = [c["statuses"] for c in counts]
    assert sum(statuses) == 1_000_000, statuses  # each status in exactly one shard
    assert min(statuses) > 0.15 * 1_000_000, statuses  # and spread: no shard holds a master's share
    assert sum(c["listings"] for c in counts) >= DIRS + 1

    # every status is now served by its shard: stats through any node cost the store nothing
    before = [sum(n.client().report()["understore_requests"].values()) for n in nodes]
    rnd = random.Random(7)
    sample = [f"/m/d{rnd.randrange(DIRS)}/f{rnd.randrange(PER_DIR):06d}" for _ in range(2000)]
    for i, path in enumerate(sample):
        with_node = nodes[i % 4]
        st = SyncWireClient(with_node.endpoints["meta"]).call("stat", {"p": path})
        assert st[0] == path and st[1] == 0 and not st[4]
    after = [sum(n.client().report()["understore_requests"].values()) for n in nodes]
    assert after == before, (before, after)


def test_listing_a_100k_directory_pages_correctly(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    d = tmp_path / "store" / "big"
    d.mkdir(parents=True)
    names = [f"{i:06d}-{'x' * (i % 7)}" for i in range(BIG)]
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    names.sort(key=str.encode)
    nodes = cluster(3, etcd)
    nodes[0].ctl("mount", "add", "/m", f"file://{tmp_path / 'store'}", "-o", "sync_interval=-1", check=True)
    for node in nodes:  # the listing's owner answers; the others forward to it
        with node.client() as c:
            seen: list[str] = []
            after, more, pages = "", True, 0
            while more:
                page, more = c.ls_page("/m/big", after, 1000)
                assert len(page) == 1000 or not more
                seen.extend(e.path.rsplit("/", 1)[-1] for e in page)
                after = seen[-1]
                pages += 1
            assert pages == 100
            assert seen == names
            # resuming in the middle, and past the end
            mid, more = c.ls_page("/m/big", names[49_999], 3)
            assert [e.path.rsplit("/", 1)[-1] for e in mid] == names[50_000:50_003] and more
            tail, more = c.ls_page("/m/big", names[-1], 1000)
            assert tail == [] and not more
