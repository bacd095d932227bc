"""The topology in etcd: `meshctl topology apply` validates before it stores, and a
running node applies changes without a restart while ignoring an invalid text
written behind the CLI's back (real etcd, a real `meshd run`)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import wait_until
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MESHCTL, MeshdProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "topology.yaml"


def _apply(etcd: EtcdProcess, path: Path, cluster: str = "test") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCTL, "topology", "apply", str(path), "--etcd", etcd.url, "--cluster", cluster],
                          capture_output=True, text=True, timeout=60)


def _topology(node: MeshdProcess) -> dict[str, object]:
    with node.client() as c:
        fed = c.report()["federation"]
    assert isinstance(fed, dict)
    return fed


def test_apply_refuses_an_invalid_file_and_stores_nothing(etcd: EtcdProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("quota: 400Mbit/s", "quota: 4Gbit/s", 1))
    r = _apply(etcd, bad)
    assert r.returncode == 1
    assert "above" in r.stderr and "not applied" in r.stderr and "Traceback" not in r.stderr
    assert etcd.ctl("get", "/mesh/test/topology").strip() == ""


def test_apply_with_etcd_down_says_so(tmp_path: Path) -> None:
    r = subprocess.run([*MESHCTL, "topology", "apply", str(EXAMPLE), "--etcd", "127.0.0.1:9", "--cluster", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cannot store the topology in etcd" in r.stderr and "Traceback" not in r.stderr


def test_nodes_follow_the_topology_without_a_restart(etcd: EtcdProcess, tmp_path: Path,
                                                     cluster: Callable[..., list[MeshdProcess]]) -> None:
    (node,) = cluster(1, etcd, region="region-b")
    assert _topology(node)["topology"] is None  # none applied yet: no links, no quotas
    r = _apply(etcd, EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "applied to cluster test" in r.stdout

    def link_quota() -> object:
        fed = _topology(node)
        rows = [q for q in fed["links"] if q["link"] == "region-a>region-b"]  # type: ignore[index, union-attr]
        return (fed["topology"], rows[0]["quota"] if rows else None)

    wait_until(link_quota, lambda v: v == ("three-regions", 50e6), 15, "the node never applied the topology")

    changed = tmp_path / "changed.yaml"
    changed.write_text(EXAMPLE.read_text().replace("quota: 400Mbit/s", "quota: 200Mbit/s", 1))
    assert _apply(etcd, changed).returncode == 0
    wait_until(link_quota, lambda v: v == ("three-regions", 25e6), 15, "the node never applied the change")

    # Written behind meshctl's back: the node keeps the last good topology and says why.
    etcd.ctl("put", "/mesh/test/topology", "regions: [not, a, mapping")
    wait_until(lambda: node.log.read_text(), lambda t: "ignoring the topology in etcd" in t, 15,
               "no log line for the invalid topology")
    assert link_quota() == ("three-regions", 25e6)
    assert node.alive()
