"""The composition root (meshd/compose.py): what each mode wires, without servers or etcd."""

from __future__ import annotations

import base64
import dataclasses
import textwrap
from pathlib import Path

from meshd.cluster.membership import Etcd, EtcdMembership, StaticMembership
from meshd.compose import Clustered, Embedded, build, member
from meshd.config import CacheConfig, ClusterConfig, NodeConfig
from meshd.metadata.mounts import Mount
from meshd.metadata.shard import MetadataCache
from meshd.region.quota import ThrottledStore
from meshd.secrets import SecretsKey
from meshd.writeback.overlay import PendingStore
from topology.model import parse

PS = 64 << 10


def config(root: Path, cluster: bool = False) -> NodeConfig:
    cc = ClusterConfig(etcd=("127.0.0.1:1",), name="t", region="region-b") if cluster else ClusterConfig()
    return NodeConfig(data_dir=str(root), default_mount=False, cluster=cc,
                      cache=CacheConfig(page_size=PS, memory_capacity=1 << 20, disk_capacity=1 << 20))


def topology(endpoint: str) -> str:
    return textwrap.dedent(f"""
        regions: {{region-a: {{}}, region-b: {{}}}}
        links: [{{between: [region-a, region-b], capacity: 1Gbit/s, quota: 100MB/s}}]
        stores:
          data: {{uri: "file:///data", home: region-a, endpoints: {{region-b: "{endpoint}"}}}}
    """).lstrip("\n")


async def test_embedded_node_is_alone(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    parts = build(cfg, member(cfg, "n1", {"grpc": "h:1", "http": "http://h:2", "meta": "h:3"}))
    try:
        assert isinstance(parts.mode, Embedded) and isinstance(parts.membership, StaticMembership)
        assert parts.cluster is None and parts.federation is None and parts.node.cluster is None
        assert parts.me.region == "local" and parts.me.endpoints["grpc"] == "h:1"
        assert parts.node.mounts is parts.mounts and parts.node.cache is parts.cache
        assert isinstance(parts.node.shard, MetadataCache)
        text = parts.metrics.render().decode()
        assert "mesh_metadata_write_errors_total 0.0" in text and "mesh_cluster_members" not in text
        await parts.load()  # no shared state, no configured mount, no default mount
        assert parts.mounts.entries() == []
    finally:
        await parts.close()


async def test_cluster_mode_is_wired_at_construction(tmp_path: Path) -> None:
    cfg = config(tmp_path, cluster=True)
    me = member(cfg, "n1", {"grpc": "h:1", "http": "http://h:2", "meta": "h:3"})
    parts = build(cfg, me, Etcd(cfg.cluster.etcd))  # no call reaches etcd until load()
    try:
        mode = parts.mode
        assert isinstance(mode, Clustered) and isinstance(parts.membership, EtcdMembership)
        assert parts.node.cluster is mode.cluster and parts.node.federation is mode.federation
        assert mode.federation.cluster is mode.cluster and parts.mounts.shared is mode.shared
        fed, ms = mode.federation, mode.membership
        # The federation follows the membership: quotas re-divided on every change.
        fed.set_topology(parse(topology("http://one:9000"), "t.yaml"))
        q = fed.quotas.get("region-a", "region-b")
        assert q is not None and q.members == 1
        ms._set({"n2": dataclasses.replace(me, node_id="n2"), "n3": dataclasses.replace(me, node_id="n3")})
        assert q.members == 3 and len(mode.cluster.members) == 3
        # The mount table opens stores with the region's endpoint, throttled, and reopens
        # them when a new topology moves the endpoint.
        mount = Mount("/data", "file:///data")
        await parts.mounts.sync_shared([mount])
        store = parts.mounts.store(mount)
        # pending write-back writes over metrics over quotas over the store
        assert isinstance(store, PendingStore) and isinstance(store.inner.inner, ThrottledStore)  # type: ignore[attr-defined]
        assert parts.mounts.options_for(mount) == {"endpoint": "http://one:9000"}
        fed.set_topology(parse(topology("http://two:9000"), "t.yaml"))
        assert parts.mounts.store(mount) is not store
        assert parts.mounts.options_for(mount) == {"endpoint": "http://two:9000"}
        text = parts.metrics.render().decode()
        assert "mesh_cluster_members 3.0" in text and 'mesh_link_bytes_total' in text
    finally:
        await parts.close()


async def test_secrets_key_per_mode(tmp_path: Path) -> None:
    """Embedded: DATA_DIR/secrets.key, made 0600 once, beside (not in) RocksDB's directory.
    Cluster: cluster.secrets_key_file, or none (inline secrets then refused)."""
    cfg = config(tmp_path / "e")
    parts = build(cfg, member(cfg, "n1"))
    try:
        key = tmp_path / "e" / "secrets.key"
        assert parts.mounts.key is not None and (key.stat().st_mode & 0o777) == 0o600
        first = parts.mounts.key.id
    finally:
        await parts.close()
    parts = build(cfg, member(cfg, "n1"))  # the same key on the next start
    try:
        assert parts.mounts.key is not None and parts.mounts.key.id == first
    finally:
        await parts.close()
    cfg = config(tmp_path / "c", cluster=True)
    parts = build(cfg, member(cfg, "n1"), Etcd(cfg.cluster.etcd))
    try:
        assert parts.mounts.key is None and not (tmp_path / "c" / "secrets.key").exists()
    finally:
        await parts.close()
    shared = tmp_path / "shared.key"
    shared.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    shared.chmod(0o644)  # an operator's file others may read: tightened (it is ours)
    cfg = dataclasses.replace(cfg, data_dir=str(tmp_path / "c2"),
                              cluster=dataclasses.replace(cfg.cluster, secrets_key_file=str(shared)))
    parts = build(cfg, member(cfg, "n1"), Etcd(cfg.cluster.etcd))
    try:
        assert parts.mounts.key is not None and parts.mounts.key.id == SecretsKey(bytes(range(32)), "x").id
        assert (shared.stat().st_mode & 0o777) == 0o600
    finally:
        await parts.close()
