"""The scheduler extender (``meshd scheduler-extender``, meshd/servers/extender.py) over a real socket.

The requests have the shapes kube-scheduler and Volcano send: kube-scheduler's
ExtenderArgs (``pod`` plus ``nodes``, a v1.NodeList, or ``nodenames`` when the
extender is nodeCacheCapable) with lower-case JSON keys, and Volcano's
PredicateRequest/PrioritizeRequest, whose TaskInfo and NodeInfo are Go structs
encoded without JSON tags (``Pod``, ``Name``, ``Node``...). The process answers
from a fixed state document (``--state``), so every expected score below is
worked out by hand from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.etcdproc import end_process

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30

STATE = {
    "region": "region-b",
    "datasets": {
        "s3://datasets/imagenet": {"size": 100 * GIB, "home": "region-a",
                                   "cached": {"region-b": {"gpu-b-1": 70 * GIB, "gpu-b-2": 30 * GIB}}},
        "/datasets/unreached": {"size": GIB, "home": "region-a"},
    },
    "nodes": {"gpu-b-1": {"region": "region-b", "zone": "b1", "cache": True},
              "gpu-b-2": {"region": "region-b", "zone": "b1", "cache": True},
              "mesh-c-1": {"region": "region-c", "zone": "c1", "cache": True}},
}


def pod(datasets: str | None = "s3://datasets/imagenet", strict: bool = False, name: str = "train-0") -> dict[str, Any]:
    anns = {}
    if datasets is not None:
        anns["datamesh.io/datasets"] = datasets
    if strict:
        anns["datamesh.io/placement"] = "strict"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "uid": "4f1c", "annotations": anns},
            "spec": {"containers": [{"name": "t", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def node(name: str, region: str | None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if region:
        labels["topology.kubernetes.io/region"] = region
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": "64", "nvidia.com/gpu": "8"}}}


NODES = [node("gpu-a-1", "region-a"), node("gpu-b-1", "region-b"), node("gpu-b-2", "region-b"),
         node("gpu-b-3", "region-b"), node("gpu-x-1", None)]


class Extender:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def start_extender(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "meshd.cli.meshd", "scheduler-extender",
                             "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on http://" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
    return proc, line.strip().rsplit(" ", 1)[1]


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Extender]:
    state = tmp_path_factory.mktemp("ext") / "state.yaml"
    state.write_text(yaml.safe_dump(STATE))
    proc, url = start_extender(["--state", str(state), "--topology", str(ROOT / "examples" / "topology.yaml")])
    try:
        yield Extender(url)
    finally:
        end_process(proc, graceful=True)  # type: ignore[arg-type]
        assert proc.returncode == 0  # SIGTERM: a clean exit


def test_kube_filter_passes_every_reachable_node(ext: Extender) -> None:
    status, r = ext.post("/kube/filter", {"pod": pod(), "nodes": {"items": NODES}})
    assert status == 200
    assert [n["metadata"]["name"] for n in r["nodes"]["items"]] == [n["metadata"]["name"] for n in NODES]
    assert r["failedNodes"] == {} and r["error"] == ""


def test_kube_filter_strict_keeps_the_best_region(ext: Extender) -> None:
    status, r = ext.post("/kube/filter", {"pod": pod(strict=True), "nodes": {"items": NODES}})
    assert status == 200
    kept = [n["metadata"]["name"] for n in r["nodes"]["items"]]
    assert kept == ["gpu-b-1", "gpu-b-2", "gpu-b-3", "gpu-x-1"]  # the unknown-region node is not judged
    assert set(r["failedNodes"]) == {"gpu-a-1"}
    assert "region-b" in r["failedNodes"]["gpu-a-1"] and "strict" in r["failedNodes"]["gpu-a-1"]


def test_kube_filter_with_node_names_uses_the_mesh_regions(ext: Extender) -> None:
    # nodeCacheCapable: names only; mesh-c-1's region comes from the mesh's node list
    status, r = ext.post("/kube/filter", {"pod": pod(strict=True), "nodenames": ["gpu-b-1", "mesh-c-1"]})
    assert status == 200
    assert r["nodenames"] == ["gpu-b-1"] and set(r["failedNodes"]) == {"mesh-c-1"}


def test_kube_prioritize_scores_by_region_then_bytes_on_the_node(ext: Extender) -> None:
    status, r = ext.post("/kube/prioritize", {"pod": pod(), "nodes": {"items": NODES}})
    assert status == 200
    scores = {h["host"]: h["score"] for h in r}
    # region-b holds everything (region part 1); gpu-b-1 holds the most (node part 1): 10.
    # gpu-b-2: 7 + 3 * 30/70 = 8.29 -> 8. gpu-b-3 holds nothing: 7.
    # region-a is the home: nothing crosses a link, but 100 GiB must come from its store at
    # 250 MiB/s (400 s) where region-b's two cache nodes serve it in 50 s: 7 * 51/401 -> 1.
    assert scores["gpu-a-1"] == 1
    assert scores["gpu-b-1"] == 10 and scores["gpu-b-2"] == 8 and scores["gpu-b-3"] == 7
    assert scores["gpu-a-1"] < 7 and scores["gpu-x-1"] == 0
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())


def test_pod_without_datasets_is_not_ours(ext: Extender) -> None:
    status, r = ext.post("/kube/prioritize", {"pod": pod(datasets=None), "nodes": {"items": NODES}})
    assert status == 200 and {h["score"] for h in r} == {0}
    status, r = ext.post("/kube/filter", {"pod": pod(datasets=None, strict=True), "nodes": {"items": NODES}})
    assert status == 200 and len(r["nodes"]["items"]) == len(NODES) and r["failedNodes"] == {}


def task(p: dict[str, Any]) -> dict[str, Any]:
    """A Volcano TaskInfo as encoding/json writes it (no JSON tags: Go field names)."""
    return {"UID": "4f1c", "Job": "ml/ctr-train", "Name": p["metadata"]["name"], "Namespace": "ml",
            "Resreq": {"MilliCPU": 1000, "Memory": 1 << 30, "ScalarResources": {"nvidia.com/gpu": 1000}},
            "NodeName": "", "Status": 1, "Priority": 1, "VolumeReady": False, "Pod": p}


def node_info(n: dict[str, Any]) -> dict[str, Any]:
    return {"Name": n["metadata"]["name"], "Node": n, "State": {"Phase": "Ready", "Reason": ""},
            "Idle": {"MilliCPU": 64000}, "Capability": {"MilliCPU": 64000}}


def test_volcano_predicate(ext: Extender) -> None:
    status, r = ext.post("/volcano/predicate", {"task": task(pod(strict=True)), "node": node_info(NODES[1])})
    assert status == 200 and r == {"status": "", "code": 0}
    status, r = ext.post("/volcano/predicate", {"task": task(pod(strict=True)), "node": node_info(NODES[0])})
    assert status == 200 and r["code"] == 2 and "region-b" in r["status"]
    status, r = ext.post("/volcano/predicate", {"task": task(pod()), "node": node_info(NODES[0])})
    assert r == {"status": "", "code": 0}  # not strict: a hint, not a rule


def test_volcano_prioritize(ext: Extender) -> None:
    status, r = ext.post("/volcano/prioritize", {"task": task(pod()), "nodes": [node_info(n) for n in NODES]})
    assert status == 200 and r["errorMessage"] == ""
    s = r["nodeScore"]
    assert s["gpu-b-1"] == 100.0 and s["gpu-b-2"] == pytest.approx(100 * (0.7 + 0.3 * 3 / 7), abs=1e-3)
    assert s["gpu-b-3"] == pytest.approx(70.0) and s["gpu-x-1"] == 0.0 and s["gpu-a-1"] < 70
    for verb in ("onSessionOpen", "onSessionClose"):
        assert ext.post(f"/volcano/{verb}", {}) == (200, {})


@pytest.mark.parametrize(("path", "raw", "message"), [
    ("/kube/filter", b"{not json", "not valid JSON"),
    ("/kube/filter", b"[1, 2]", "must be a JSON object"),
    ("/kube/prioritize", json.dumps({"nodes": {"items": []}}).encode(), "pod is missing"),
    ("/kube/filter", json.dumps({"pod": {}}).encode(), "nodenames"),
    ("/volcano/predicate", json.dumps({"node": {}}).encode(), "task is missing"),
    ("/volcano/predicate", json.dumps({"task": {"Pod": {}}, "node": {"Idle": {}}}).encode(), "no Name"),
    ("/volcano/prioritize", json.dumps({"task": {"Pod": {}}, "nodes": 3}).encode(), "list of node infos"),
    # nested deeper than meshd.limits.MAX_JSON_DEPTH: refused before parsing, never a RecursionError
    ("/kube/filter", b'{"pod": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 64"),
    ("/kube/filter", b'{"pod": ' + b'{"a":' * 65 + b"1" + b"}" * 65 + b"}", "nested deeper than 64"),
])
def test_malformed_requests_get_400_with_a_message(ext: Extender, path: str, raw: bytes, message: str) -> None:
    status, r = ext.post(path, None, raw=raw)
    assert status == 400 and message in r["error"]
    # and the extender still answers
    assert ext.post("/kube/filter", {"pod": pod(), "nodenames": ["gpu-b-1"]})[0] == 200


def test_bad_flags_are_named() -> None:
    r = subprocess.run([sys.executable, "-m", "meshd.cli.meshd", "scheduler-extender", "--listen", "nope",
                        "--state", "/nonexistent.yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read the state file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "meshd.cli.meshd", "scheduler-extender", "--listen", "nope",
                        "--state", str(ROOT / "examples" / "jobs" / "state.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected HOST:PORT" in r.stderr and "Traceback" not in r.stderr
