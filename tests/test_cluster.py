"""A region's cache cluster: real etcd, four real ``meshd run`` processes.

What is proven here: one owner per page and per metadata key (pages of a file
spread over the nodes; any node gives the same answers), single-flight across
the cluster (counted at the S3 server), the mount table shared through etcd,
and ``meshctl report`` listing the members.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshd.client.sdk import MeshClient
from tests.conftest_s3 import S3Bucket
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess
from tests.s3server import S3Server

MiB = 1 << 20
Cluster = Callable[..., list[MeshdProcess]]


def s3_mount_options(bucket: S3Bucket) -> list[str]:
    return [f"{k}={v}" for k, v in bucket.options.items()]


def test_pages_spread_and_any_node_answers_the_same(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "ds").mkdir(parents=True)
    data = os.urandom(40 * MiB + 123)
    (store / "ds" / "big.bin").write_bytes(data)
    for i in range(30):
        (store / "ds" / f"small-{i:02d}").write_bytes(b"x" * i)
    nodes = cluster(4, etcd, ["--page-size", "1MiB"])
    nodes[0].ctl("mount", "add", "/data", f"file://{store}", check=True)
    for n in nodes:  # the mount table is shared through etcd
        out = n.ctl("mount", "ls", check=True).stdout.decode()
        assert "/data" in out, out

    digest = hashlib.sha256(data).hexdigest()
    for n in nodes:
        # a client that sends each key and page to its owner, and one that only talks to its node
        for c in (n.client(), MeshClient(n.endpoint, route=False)):
            with c:
                assert hashlib.sha256(c.cat("/data/ds/big.bin")).hexdigest() == digest
                st = c.stat("/data/ds/big.bin")
                assert (st.size, st.is_dir) == (len(data), False)
                names = [e.path.rsplit("/", 1)[-1] for e in c.ls("/data/ds")]
                assert names == sorted(["big.bin"] + [f"small-{i:02d}" for i in range(30)])
                buf = bytearray(1 << 20)
                got = bytearray()
                for k in c.read_chunks_into("/data/ds/big.bin", buf, 5 * MiB - 3, 7 * MiB):
                    got += buf[:k]
                assert got == data[5 * MiB - 3:12 * MiB - 3]

    reports = []
    for n in nodes:
        with n.client() as c:
            reports.append(c.report())
    pages = [r["tiers"]["memory"]["pages"] for r in reports]
    assert sum(pages) == 41, pages  # each page cached once, at its owner, in the whole cluster
    assert all(p >= 3 for p in pages), pages  # and spread: every node owns a share
    assert sum(r["metadata_forwarded"] for r in reports) > 0
    members = reports[0]["cluster"]["members"]
    assert sorted(m["node_id"] for m in members) == sorted(n.endpoints["node_id"] for n in nodes)
    assert {m["state"] for m in members} == {"self", "up"}
    text = nodes[1].ctl("report", check=True).stdout.decode()
    assert "cluster test, region r1: 4 members, etcd ok" in text, text


def test_single_flight_holds_across_the_cluster(cluster: Cluster, etcd: EtcdProcess, s3_server: S3Server,
                                                s3_bucket: S3Bucket) -> None:
    size = 48 * MiB
    data = os.urandom(size)
    c = s3_server.client()
    c.upload_fileobj(io.BytesIO(data), s3_bucket.name, "hot/obj.bin")
    c.close()
    nodes = cluster(4, etcd, ["--page-size", "4MiB"])
    nodes[0].ctl("mount", "add", "/s3", s3_bucket.uri(), *[a for o in s3_mount_options(s3_bucket)
                                                           for a in ("-o", o)], check=True)
    s3_server.reset_counters()
    digest = hashlib.sha256(data).hexdigest()

    def reader(i: int) -> str:
        # half read each page from its owner, half through their node (which asks the owner)
        with MeshClient(nodes[i % 4].endpoint, route=i < 8) as cl:
            return hashlib.sha256(cl.cat("/s3/hot/obj.bin")).hexdigest()

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(reader, range(16)))
    assert results == [digest] * 16
    # 16 readers on 4 nodes: every byte crossed the under-store link once
    assert s3_server.get_bytes(s3_bucket.name, "hot/obj.bin") == size
    # at most one GET per page (an owner's consecutive pages may share one ranged GET)
    assert s3_server.get_requests(s3_bucket.name, "hot/obj.bin") <= size // (4 * MiB)


def test_report_and_members_as_json(cluster: Cluster, etcd: EtcdProcess) -> None:
    nodes = cluster(2, etcd, ["--zone", "z9", "--label", "gpu=a100"])
    r = json.loads(nodes[0].ctl("report", "--json", check=True).stdout)
    members = r["cluster"]["members"]
    assert len(members) == 2
    assert all(m["zone"] == "z9" and m["labels"] == {"gpu": "a100"} for m in members)
    assert all(m["capacity"] > 0 and "used" in m for m in members)
    # the record in etcd is the one documented in ARCHITECTURE.md
    out = etcd.ctl("get", "--prefix", "/mesh/test/regions/r1/members/", "--print-value-only")
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(rec["node_id"] for rec in records) == sorted(m["node_id"] for m in members)
    assert all(rec["cluster"] == "test" and rec["region"] == "r1" and rec["meta"] for rec in records)


def test_writes_are_seen_by_every_node_and_s3_attrs_are_shared(cluster: Cluster, etcd: EtcdProcess,
                                                               tmp_path: Path) -> None:
    import boto3

    store = tmp_path / "store"
    store.mkdir()
    nodes = cluster(3, etcd, ["--page-size", "1MiB", "--s3-access-key", "AK", "--s3-secret-key", "SK"], s3=True)
    nodes[0].ctl("mount", "add", "/bkt", f"file://{store}", check=True)
    first, second = os.urandom(3 * MiB + 5), os.urandom(2 * MiB + 7)
    with nodes[0].client() as c:
        c.put("/bkt/obj", first)
    for n in nodes:
        with n.client() as c:
            assert c.cat("/bkt/obj") == first
    with nodes[1].client() as c:
        c.put("/bkt/obj", second)  # overwritten through another node
    for n in nodes:  # never stale: every node sees the new version at once
        with n.client() as c:
            assert c.cat("/bkt/obj") == second

    def s3(node: MeshdProcess):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=node.endpoints["s3"], aws_access_key_id="AK",
                            aws_secret_access_key="SK", region_name="us-east-1")

    put = s3(nodes[0]).put_object(Bucket="bkt", Key="doc.json", Body=b'{"a": 1}', ContentType="application/json",
                                  Metadata={"owner": "team-a"})
    for n in nodes:  # ETag, content type and user metadata live at the key's owner: same answer everywhere
        head = s3(n).head_object(Bucket="bkt", Key="doc.json")
        assert head["ETag"] == put["ETag"]
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"owner": "team-a"}


def test_meshd_run_from_a_config_file(etcd: EtcdProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"""
cluster:
  etcd: [{etcd.url}]
  name: fromfile
  region: eu-1
  zone: eu-1a
  lease_ttl: 5
  labels: {{rack: r7}}
s3: {{enabled: false}}
""")
    node = MeshdProcess(tmp_path / "n", [], ["--config", str(cfg)], command="run").start()
    try:
        r = node.client().report()
        assert r["cluster"]["name"] == "fromfile" and r["cluster"]["region"] == "eu-1"
        (m,) = r["cluster"]["members"]
        assert m["zone"] == "eu-1a" and m["labels"] == {"rack": "r7"}
        assert etcd.ctl("get", "--prefix", "/mesh/fromfile/regions/eu-1/members/", "--keys-only").strip()
    finally:
        node.stop()
    # the same file given to `meshd embedded` is refused with a message naming the problem
    bad = MeshdProcess(tmp_path / "e", [], ["--config", str(cfg)])
    try:
        bad.start()
        raise AssertionError("meshd embedded accepted a cluster config")
    except RuntimeError as e:
        assert "start it with `meshd run`" in str(e)


def test_a_pinned_version_is_served_or_refused_never_mixed(meshd: Callable[..., MeshdProcess],
                                                            tmp_path: Path) -> None:
    """Clients reading one file from several owners pin its version on every request."""
    import urllib.error
    import urllib.request

    store = tmp_path / "store"
    store.mkdir()
    (store / "f").write_bytes(b"a" * 5000)
    node = meshd([f"/m=file://{store}"], ["--page-size", "4KiB", "--no-s3"])
    with node.client() as c:
        old = c.stat("/m/f")
        (store / "f").write_bytes(b"b" * 5000)  # changed behind the mesh's back
        url = f"{node.http}/v1/files/m/f?offset=0&length=100&version={old.version}&size={old.size}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 412 and b"VersionChanged" in e.value.read()
        assert c.cat("/m/f") == b"b" * 5000  # without a pin, the new version
        bad = f"{node.http}/v1/files/m/f?version=x&size=-5"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 400


def test_load_free_and_sync_act_on_the_whole_cluster(cluster: Cluster, etcd: EtcdProcess, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "ds").mkdir(parents=True)
    for i in range(3):
        (store / "ds" / f"f{i}").write_bytes(os.urandom(6 * MiB))
    nodes = cluster(3, etcd, ["--page-size", "1MiB"])
    nodes[0].ctl("mount", "add", "/data", f"file://{store}", "-o", "sync_interval=-1", check=True)

    def pages() -> list[int]:
        out = []
        for n in nodes:
            with n.client() as c:
                t = c.report()["tiers"]
                out.append(max(t["memory"]["pages"], t["disk"]["pages"]))
        return out

    nodes[1].ctl("load", "/data/ds", check=True)
    assert sum(pages()) == 18 and min(pages()) > 0  # warmed at the owners, once each
    with nodes[2].client() as c:
        assert c.cat("/data/ds/f1") == (store / "ds" / "f1").read_bytes()
    freed = nodes[2].ctl("free", "/data/ds", check=True).stdout.decode()
    assert "18.0 MiB" in freed or "18874368" in freed, freed
    assert sum(pages()) == 0  # every node dropped its share
    (store / "ds" / "f3").write_bytes(b"new")
    with nodes[1].client() as c:  # sync_interval -1: the cached listing stands ...
        assert len(c.ls("/data/ds")) == 3
    nodes[0].ctl("sync", "/data/ds", check=True)  # ... until a sync forgets it on every shard
    with nodes[1].client() as c:
        assert [e.path for e in c.ls("/data/ds")][-1] == "/data/ds/f3"


def test_meshd_run_without_a_reachable_etcd_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.etcdproc import free_port

    r = subprocess.run([sys.executable, "-m", "meshd.cli.meshd", "run", "--etcd", f"127.0.0.1:{free_port()}",
                        "--cluster", "c", "--region", "r", "--data-dir", str(tmp_path / "d"), "--no-s3"],
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "cannot reach etcd at 127.0.0.1:" in err and "Traceback" not in err, err
