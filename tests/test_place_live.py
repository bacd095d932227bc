"""Placement against a live mesh: real etcd, two `meshd run` nodes in region-b, the
example topology applied, the real `meshctl place` and `meshd scheduler-extender`.

The nodes announce their Kubernetes names (``--label kubernetes.io/hostname=...``);
the dataset's pages land on their owners, and ``place.state`` must find each byte
on the node that holds it, through a mesh path and through the under-store URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.conftest import wait_members
from tests.etcdproc import EtcdProcess, end_process
from tests.meshd_proc import MESHCTL, MeshdProcess
from tests.test_extender import start_extender
from topology import k8s

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SIZES = {"f0": 3 * MIB + 5, "f1": 2 * MIB, "f2": 4 * MIB, "sub/f3": MIB + 17}


def job_file(tmp_path: Path, datasets: str) -> Path:
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "train", "annotations": {"datamesh.io/datasets": datasets}},
        "spec": {"parallelism": 2, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "t", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}))
    return f


def ctl(node: MeshdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*MESHCTL, "--endpoint", node.endpoint, *args], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "MESH_STAGE_POLL": "0.3"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def ranking(node: MeshdProcess, job: Path) -> dict[str, Any]:
    r = ctl(node, "place", str(job), "--json")
    assert r.returncode == 0, r.stderr
    (out,) = json.loads(r.stdout)
    return {c["region"]: c for c in out["candidates"]}


def test_place_stage_patch_and_extender_on_a_live_mesh(
        etcd: EtcdProcess, tmp_path: Path, cluster: Callable[..., list[MeshdProcess]]) -> None:
    store = tmp_path / "store"
    data = {}
    for name, size in SIZES.items():
        p = store / "ds" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        data[name] = os.urandom(size)
        p.write_bytes(data[name])
    (a,) = cluster(1, etcd, region="region-b", wait=False,
                   args=["--label", "kubernetes.io/hostname=gpu-b-1", "--page-size", "1MiB"])
    (b,) = cluster(1, etcd, region="region-b", wait=False,
                   args=["--label", "kubernetes.io/hostname=gpu-b-2", "--page-size", "1MiB"])
    wait_members([a, b], 2)
    r = subprocess.run([*MESHCTL, "topology", "apply", str(ROOT / "examples" / "topology.yaml"),
                        "--etcd", etcd.url, "--cluster", "test"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ctl(a, "mount", "add", "/lake", f"file://{store}", "-o", "home_region=region-a").returncode == 0
    for n in (a, b):  # both nodes know the topology before the reads route
        for _ in range(100):
            with n.client() as c:
                if (c.report()["federation"] or {}).get("topology") == "three-regions":
                    break
            subprocess.run(["sleep", "0.1"], check=True)

    # read two files: their pages are cached on their owners in region-b
    for name in ("f0", "sub/f3"):
        with a.client() as cl:
            assert cl.cat(f"/lake/ds/{name}") == data[name]
    cached = SIZES["f0"] + SIZES["sub/f3"]
    total = sum(SIZES.values())

    job = job_file(tmp_path, "/lake/ds")
    c = ranking(a, job)
    rb = c["region-b"]
    assert rb["bytes_total"] == total and rb["bytes_local"] == cached
    holders = {n["name"]: n["cached_bytes"] for n in rb["nodes"] if n["cached_bytes"]}
    assert set(holders) <= {"gpu-b-1", "gpu-b-2"} and sum(holders.values()) == cached
    # every page is on exactly the node the ring gives it to: ask each node what it holds
    held_by_node = {}
    for n, name in ((a, "gpu-b-1"), (b, "gpu-b-2")):
        with n.client() as cl:
            rep = cl.report()
        held_by_node[name] = rep["tiers"]["memory"]["pages"]
    assert {k for k, v in held_by_node.items() if v} == set(holders)
    # region-a is the home (its store needs no link), region-c must cross a->c
    assert c["region-c"]["links"][0]["src"] == "region-a" and c["region-c"]["bytes_local"] == 0
    assert c["region-a"]["links"] == []

    # the under-store URI names the same data
    c2 = ranking(a, job_file(tmp_path, f"file://{store}/ds"))
    assert c2["region-b"]["bytes_local"] == cached and c2["region-b"]["bytes_total"] == total

    # --patch: a valid Job naming the holders
    r = ctl(a, "place", str(job), "--patch", "--region", "region-b")
    assert r.returncode == 0, r.stderr
    (doc,) = yaml.safe_load_all(r.stdout)
    kubernetes_validate.validate(doc, "1.30", strict=True)
    terms = doc["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    hosts = {t["preference"]["matchExpressions"][0]["values"][0] for t in terms
             if t["preference"]["matchExpressions"][0]["key"] == k8s.HOST_LABEL}
    assert hosts == set(holders)

    # the extender, asking the live mesh
    proc, url = start_extender(["--endpoint", a.endpoint, "--first-wait", "30"])
    try:
        def node(name: str, region: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "labels": {k8s.REGION_LABEL: region}}}

        pod = {"metadata": {"name": "train-0", "annotations": {k8s.DATASETS: "/lake/ds"}}, "spec": {}}
        body = {"pod": pod, "nodes": {"items": [node("gpu-b-1", "region-b"), node("gpu-b-2", "region-b"),
                                               node("gpu-a-9", "region-a")]}}
        req = urllib.request.Request(url + "/kube/prioritize", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            scores = {h["host"]: h["score"] for h in json.loads(resp.read())}
        # 12 MiB: region-a's store (no link) is as quick as region-b's missing third over a->b,
        # so the region parts are close and the node holding the most bytes decides
        most = max(holders, key=lambda h: holders[h])
        assert scores[most] == max(scores.values()) > scores["gpu-a-9"]
        assert all(0 <= v <= 10 for v in scores.values())
    finally:
        end_process(proc, graceful=True)  # type: ignore[arg-type]

    # --stage --wait: the rest of the dataset comes into region-b, under the a->b quota
    r = ctl(a, "place", str(job), "--stage", "--wait", "--timeout", "120", "--region", "region-b")
    assert r.returncode == 0, r.stderr
    assert "ETA" in r.stderr and "staged: every byte" in r.stderr
    assert ranking(b, job)["region-b"]["bytes_local"] == total
    moved = 0
    for n in (a, b):  # each page was fetched by its owner: sum the region's members
        with n.client() as cl:
            moved += sum(q["bytes"] for q in cl.report()["federation"]["links"] if q["link"] == "region-a>region-b")
    assert moved >= total  # every byte crossed (was charged to) the a->b quota: read, then staged

    # errors are named
    r = ctl(a, "place", str(job_file(tmp_path, "/lake/nope")))
    assert r.returncode == 1 and "NotFound" in r.stderr
    r = ctl(a, "place", str(job_file(tmp_path, "s3://elsewhere/x")))
    assert r.returncode == 1 and "no mount covers s3://elsewhere/x" in r.stderr
    for name, blob in data.items():  # and the data is still the data
        with b.client() as cl:
            assert cl.cat(f"/lake/ds/{name}") == blob
