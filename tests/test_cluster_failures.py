"""The cluster under failure: real processes killed, real etcd killed.

Invariant 7: a dead node fails no read. Readers are real ``MeshClient``s on
several nodes, reading whole files and random ranges and checking every
byte against the source, while nodes are SIGKILLed and restarted and while
etcd is down. Also the bad inputs membership must shrug off.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.client.sdk import MeshClient
from tests.conftest import cluster_args, wait_members, wait_until
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess

MiB = 1 << 20
Cluster = Callable[..., list[MeshdProcess]]


def make_dataset(root: Path, files: int, size: int) -> dict[str, bytes]:
    (root / "ds").mkdir(parents=True)
    out = {}
    for i in range(files):
        data = os.urandom(size + i * 4097)
        (root / "ds" / f"part-{i:03d}.bin").write_bytes(data)
        out[f"/data/ds/part-{i:03d}.bin"] = data
    return out


class Storm:
    """Readers on every node, forever until stopped; every byte verified."""

    def __init__(self, nodes: list[MeshdProcess], dataset: dict[str, bytes], readers: int) -> None:
        self.nodes = nodes
        self.dataset = dataset
        self.digests = {p: hashlib.sha256(d).hexdigest() for p, d in dataset.items()}
        self.stop = threading.Event()
        self.reads = 0
        self.bytes = 0
        self.failures: list[str] = []
        self.moved = 0  # readers whose node died under them and who moved to another member
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(readers)]

    def _run(self, i: int) -> None:
        rnd = random.Random(i)
        try:
            # half the readers send each page run to its owner; the others talk only to their
            # node, which fetches other owners' pages itself (and must fail over itself)
            client = MeshClient(self.nodes[i % len(self.nodes)].endpoint, timeout=30, route=i % 4 < 2)
        except Exception as e:
            self.failures.append(f"reader {i} could not connect: {e!r}")
            return
        client._short_circuit = i % 2 == 0  # and half over page descriptors, half over HTTP
        paths = sorted(self.dataset)
        first = client.endpoint
        with client:
            while not self.stop.is_set():
                path = rnd.choice(paths)
                data = self.dataset[path]
                try:
                    if rnd.random() < 0.5:
                        got = hashlib.sha256(client.cat(path)).hexdigest()
                        ok, n = got == self.digests[path], len(data)
                    else:
                        off = rnd.randrange(len(data))
                        length = rnd.randrange(1, 3 * MiB)
                        buf = bytearray(256 << 10)
                        parts = []
                        for k in client.read_chunks_into(path, buf, off, length):
                            parts.append(bytes(buf[:k]))
                        got_b = b"".join(parts)
                        ok, n = got_b == data[off:off + length], len(got_b)
                    with self._lock:
                        self.reads += 1
                        self.bytes += n
                        if not ok:
                            self.failures.append(f"reader {i}: wrong bytes for {path}")
                except Exception as e:
                    with self._lock:
                        self.failures.append(f"reader {i}: {path}: {type(e).__name__}: {e}")
            if client.endpoint != first:
                with self._lock:
                    self.moved += 1

    def __enter__(self) -> Storm:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a reader hung"

    def wait_reads(self, more: int, timeout: float = 60) -> None:
        target = self.reads + more
        deadline = time.monotonic() + timeout
        while self.reads < target:
            assert time.monotonic() < deadline, f"reads stalled at {self.reads} (wanted {target})"
            assert not self.failures, self.failures[:5]
            time.sleep(0.05)


def mount(node: MeshdProcess, store: Path) -> None:
    node.ctl("mount", "add", "/data", f"file://{store}", check=True)


def test_read_storm_survives_sigkill_and_restart(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "store", 6, 9 * MiB)
    nodes = cluster(4, etcd, ["--page-size", "1MiB"])
    mount(nodes[0], tmp_path / "store")
    with Storm(nodes, dataset, readers=8) as storm:
        storm.wait_reads(20)
        nodes[3].kill()  # SIGKILL: no goodbye, its lease lives on for a while
        storm.wait_reads(20)
        nodes[2].restart()  # a clean restart: leaves the ring, comes back with its pages
        storm.wait_reads(20)
        wait_members(nodes[:3], 3)  # the dead node's lease expired: it left the ring
        storm.wait_reads(20)
    assert storm.failures == [], storm.failures[:10]
    assert storm.reads >= 80
    assert storm.moved >= 2  # the readers of the killed node (at least) carried on elsewhere
    r = nodes[0].client().report()
    assert {m["node_id"] for m in r["cluster"]["members"]} == {n.endpoints["node_id"] for n in nodes[:3]}
    # operators see it in the metrics: the ring changed, peers failed and were routed around
    metrics = scrape(nodes[0])
    assert metrics["mesh_cluster_members"] == 3 and metrics["mesh_cluster_etcd_up"] == 1
    assert metrics["mesh_cluster_ring_changes_total"] >= 3
    assert sum(scrape(n)["mesh_cluster_peer_failures_total"] for n in nodes[:3]) >= 1


def scrape(node: MeshdProcess) -> dict[str, float]:
    text = urllib.request.urlopen(node.endpoints["metrics"], timeout=10).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("mesh_") and " " in line}


def test_reads_continue_while_etcd_is_down(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "store", 4, 6 * MiB)
    nodes = cluster(3, etcd, ["--page-size", "1MiB"])
    mount(nodes[0], tmp_path / "store")
    with Storm(nodes, dataset, readers=6) as storm:
        storm.wait_reads(15)
        etcd.kill()
        # the nodes notice, and say so
        wait_until(lambda: etcd_ok(nodes[1]), lambda ok: not ok, 30, "no node noticed etcd was gone")
        time.sleep(4)  # longer than the lease TTL (3 s): no member may be dropped meanwhile
        with nodes[2].client() as c:
            assert len(c.report()["cluster"]["members"]) == 3
        storm.wait_reads(15)
        etcd.start()
        wait_members(nodes, 3, timeout=60)
        wait_until(lambda: [etcd_ok(n) for n in nodes], all, 30, "not every node is back in touch with etcd")
        storm.wait_reads(10)
    assert storm.failures == [], storm.failures[:10]
    out = etcd.ctl("get", "--prefix", "/mesh/test/regions/r1/members/", "--keys-only")
    assert len([k for k in out.splitlines() if k.strip()]) == 3


def etcd_ok(node: MeshdProcess) -> bool:
    with node.client() as c:
        return bool(c.report()["cluster"]["etcd_ok"])


def test_client_falls_back_when_its_node_dies(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "store", 1, 5 * MiB)
    nodes = cluster(3, etcd, ["--page-size", "1MiB"])
    mount(nodes[0], tmp_path / "store")
    (path, data), = dataset.items()
    routed = MeshClient(nodes[1].endpoint)  # sends page runs to their owners
    with MeshClient(nodes[1].endpoint, route=False) as c, routed:
        assert c.cat(path) == data and routed.cat(path) == data
        nodes[1].kill()
        assert c.cat(path) == data  # moved to another member
        assert c.stat(path).size == len(data)
        assert c.endpoint != nodes[1].endpoint
        assert routed.cat(path) == data  # the dead owner's runs come through another node
        assert routed.stat(path).size == len(data)


# ---- bad input: the ring must not notice ----------------------------------------------------


def test_duplicate_node_id_is_refused(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    nodes = cluster(2, etcd)
    taken = nodes[0].endpoints["node_id"]
    dup = MeshdProcess(tmp_path / "dup", [], [*cluster_args(etcd), "--node-id", taken], command="run")
    with pytest.raises(RuntimeError) as e:
        dup.start()
    log = dup.log.read_text()
    assert f"node id {taken!r} is already registered" in log, log[-2000:]
    assert "Traceback" not in log
    assert "exited with 2" in str(e.value)
    wait_members(nodes, 2)
    with nodes[1].client() as c:
        ids = {m["node_id"] for m in c.report()["cluster"]["members"]}
    assert ids == {n.endpoints["node_id"] for n in nodes}


def test_malformed_and_foreign_member_records_are_ignored(cluster: Cluster, etcd: EtcdProcess) -> None:
    nodes = cluster(2, etcd)
    prefix = "/mesh/test/regions/r1/members/"
    etcd.ctl("put", prefix + "garbage", "this is not json")
    etcd.ctl("put", prefix + "half", '{"node_id": "half", "cluster": "test"}')
    foreign = ('{"node_id": "alien", "cluster": "other", "region": "r1", "grpc": "10.0.0.1:1", '
               '"http": "http://10.0.0.1:2", "meta": "10.0.0.1:3"}')
    etcd.ctl("put", prefix + "alien", foreign)
    want = [f"ignoring member record {prefix}garbage: not valid JSON",
            f"ignoring member record {prefix}half: field 'region' missing",
            f"ignoring member record {prefix}alien: it belongs to cluster 'other'"]
    wait_until(nodes[0].log.read_text, lambda log: all(w in log for w in want), 20,
               "the bad records were not all reported")
    wait_members(nodes, 2)
    with nodes[0].client() as c:
        assert len(c.report()["cluster"]["members"]) == 2


def test_a_node_of_another_cluster_stays_out(cluster: Cluster, etcd: EtcdProcess) -> None:
    ours = cluster(2, etcd)
    theirs = cluster(1, etcd, name="other")
    wait_members(ours, 2)
    with theirs[0].client() as c:
        assert [m["node_id"] for m in c.report()["cluster"]["members"]] == [theirs[0].endpoints["node_id"]]


def test_a_killed_node_restarting_takes_its_record_over(cluster: Cluster, etcd: EtcdProcess) -> None:
    nodes = cluster(2, etcd, ttl=30)  # a long lease: waiting for it to expire would take 30 s
    node_id = nodes[1].endpoints["node_id"]
    nodes[1].kill()
    started = time.monotonic()
    nodes[1].start()
    assert time.monotonic() - started < 15
    assert nodes[1].endpoints["node_id"] == node_id
    assert "took over member record" in nodes[1].log.read_text()
    wait_members(nodes, 2)


def test_mount_add_while_etcd_is_down_fails_at_once_with_a_clear_error(
        cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    """The mount table lives in etcd: with etcd gone, ``meshctl mount add`` must say so
    within a few seconds (not block a minute and report "Deadline Exceeded")."""
    (tmp_path / "store").mkdir()
    node, = cluster(1, etcd)
    etcd.kill()
    wait_until(lambda: etcd_ok(node), lambda ok: not ok, 30, "the node did not notice etcd was gone")
    t0 = time.monotonic()
    r = node.ctl("mount", "add", "/late", f"file://{tmp_path / 'store'}")
    took = time.monotonic() - t0
    err = r.stderr.decode()
    assert r.returncode != 0, r.stdout
    assert "etcd" in err and "Deadline" not in err and "Traceback" not in err, err
    assert took < 20, f"meshctl mount add took {took:.1f} s with etcd down"
    with node.client() as c:  # and the node still serves
        assert c.report()["cluster"]["etcd_ok"] is False
