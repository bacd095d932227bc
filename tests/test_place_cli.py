"""``meshctl place`` and ``meshctl spread`` offline (``--state``): the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.meshd_proc import MESHCTL, env_without_endpoint
from topology import k8s

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "examples" / "jobs"
TOPOLOGY = ROOT / "examples" / "topology.yaml"
STATE = JOBS / "state.yaml"


def ctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*MESHCTL, *args], capture_output=True, text=True, timeout=120, input=stdin,
                       env=env_without_endpoint())
    assert "Traceback" not in r.stderr, r.stderr
    return r


def place(*args: str) -> subprocess.CompletedProcess[str]:
    return ctl("place", *args, "--state", str(STATE), "--topology", str(TOPOLOGY))


def test_table_ranks_regions_with_reasons() -> None:
    r = place(str(JOBS / "volcano-job.yaml"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("job ctr-train: 5 pods x 4 GPU; datasets hdfs://warehouse/ctr/2026-11 (50.0 GiB)")
    ranks = [line.split()[1] for line in lines[2:5]]
    # region-a (the home) has no free GPU; region-c fits 4 of 5 pods; region-b fits all five
    assert ranks == ["region-b", "region-c", "region-a"]
    assert "5/5" in lines[2] and "4/5" in lines[3] and "0/5" in lines[4]
    assert "why region-b:" in r.stdout and "staging ETA" in r.stdout
    assert "nodes in region-b: gpu-b-01 (2 pods" in r.stdout


def test_json_has_every_figure() -> None:
    r = place(str(JOBS / "pod.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    (job,) = json.loads(r.stdout)
    assert job["job"] == "resnet-probe" and job["pods"] == 1 and job["gpus_per_pod"] == 1
    cands = {c["region"]: c for c in job["candidates"]}
    b = cands["region-b"]
    assert b["bytes_local"] == 96636764160 and b["bytes_total"] == 161061273600
    assert b["links"] == [{"src": "region-a", "dst": "region-b", "bytes": int((161061273600 - 96636764160) * 1.05)}]
    # 200 Mbit/s of the 400 Mbit/s a->b quota is in use: 25 MB/s of headroom
    assert b["staging_seconds"] == pytest.approx((161061273600 - 96636764160) * 1.05 / 25e6 + 0.020, rel=1e-6)
    assert not cands["region-a"]["feasible"]  # no free GPU there


def test_patch_prints_a_valid_manifest_and_the_table_on_stderr(tmp_path: Path) -> None:
    r = place(str(JOBS / "deployment.yaml"), "--patch")
    assert r.returncode == 0, r.stderr
    assert "job llm-serve" in r.stderr and "job llm-serve" not in r.stdout
    (doc,) = yaml.safe_load_all(r.stdout)
    kubernetes_validate.validate(doc, "1.30", strict=True)
    tpl = doc["spec"]["template"]
    assert tpl["metadata"]["annotations"][k8s.REGION] == doc["metadata"]["annotations"][k8s.REGION]
    # --region overrides the choice; -o writes the file and leaves stdout alone
    out = tmp_path / "patched.yaml"
    r = place(str(JOBS / "deployment.yaml"), "--patch", "--region", "region-c", "-o", str(out))
    assert r.returncode == 0 and "job llm-serve" in r.stdout
    (doc,) = yaml.safe_load_all(out.read_text())
    terms = doc["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0] == {"weight": 100, "preference": {"matchExpressions": [
        {"key": k8s.REGION_LABEL, "operator": "In", "values": ["region-c"]}]}}


def test_patch_reads_stdin_and_keeps_other_documents() -> None:
    text = (JOBS / "job.yaml").read_text() + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n"
    text = text.replace("s3://datasets/corpus-2026, s3://datasets/stopwords", "s3://datasets/unheard-of")
    r = ctl("place", "-", "--state", str(STATE), "--topology", str(TOPOLOGY), "--patch",
            "--dataset", "s3://datasets/imagenet", stdin=text)
    assert r.returncode == 1 and "the state says nothing of s3://datasets/unheard-of" in r.stderr
    text = text.replace("s3://datasets/unheard-of", "s3://datasets/imagenet")
    r = ctl("place", "-", "--state", str(STATE), "--topology", str(TOPOLOGY), "--patch", stdin=text)
    assert r.returncode == 0, r.stderr
    job, cm = yaml.safe_load_all(r.stdout)
    assert cm == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "b"}}
    kubernetes_validate.validate(job, "1.30", strict=True)


def nodelist(tmp_path: Path) -> Path:
    def node(name: str, region: str, zone: str, gpus: int, cache: bool = False) -> dict[str, Any]:
        labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/region": region,
                  "topology.kubernetes.io/zone": zone}
        if cache:
            labels["datamesh.io/cache-node"] = "true"
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": "96", "nvidia.com/gpu": str(gpus)}}}

    f = tmp_path / "nodes.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        node("gpu-a-01", "region-a", "a1", 8, True), node("gpu-a-02", "region-a", "a1", 8),
        node("gpu-a-03", "region-a", "a1", 8), node("gpu-b-01", "region-b", "b1", 0, True)]}))
    return f


def test_nodes_from_kubectl_decide_where_pods_fit(tmp_path: Path) -> None:
    r = place(str(JOBS / "volcano-job.yaml"), "--nodes", str(nodelist(tmp_path)), "--json")
    assert r.returncode == 0, r.stderr
    (job,) = json.loads(r.stdout)
    first = job["candidates"][0]
    # now region-a (the home) has 24 GPUs and region-b none: the pods go to the data's home
    assert first["region"] == "region-a" and first["feasible"] and first["pods_fit"] == 5
    assert sorted((n["name"], n["pods"]) for n in first["nodes"]) == [("gpu-a-01", 2), ("gpu-a-02", 2),
                                                                     ("gpu-a-03", 1)]
    assert not next(c for c in job["candidates"] if c["region"] == "region-b")["feasible"]


def test_spread_adds_the_recommendation(tmp_path: Path) -> None:
    doc = yaml.safe_load((JOBS / "meshd-statefulset.yaml").read_text())
    expected_affinity = doc["spec"]["template"]["spec"].pop("affinity")
    expected_spread = doc["spec"]["template"]["spec"].pop("topologySpreadConstraints")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(doc))
    r = ctl("spread", str(bare))
    assert r.returncode == 0, r.stderr
    (out,) = yaml.safe_load_all(r.stdout)
    assert out["spec"]["template"]["spec"]["affinity"] == expected_affinity
    assert out["spec"]["template"]["spec"]["topologySpreadConstraints"] == expected_spread
    kubernetes_validate.validate(out, "1.30", strict=True)


@pytest.mark.parametrize(("args", "message"), [
    (["place", "/nonexistent/job.yaml"], "No such file"),
    (["place", str(TOPOLOGY)], "is not a Kubernetes object"),
    (["place", str(JOBS / "meshd-statefulset.yaml"), "--state", str(STATE)], "names no dataset"),
    (["place", str(JOBS / "pod.yaml"), "--state", str(STATE), "--topology", str(TOPOLOGY), "--region", "mars"],
     "--region mars: not a region"),
    (["place", str(JOBS / "pod.yaml"), "--state", str(STATE), "--topology", str(TOPOLOGY), "--stage"],
     "--stage needs a mesh"),
    (["place", str(JOBS / "pod.yaml"), "--state", str(JOBS / "pod.yaml")], "the state says nothing of"),
    (["place", str(JOBS / "pod.yaml"), "--state", str(STATE)], "'region-a' is not a region of the topology"),
    (["place", str(JOBS / "pod.yaml"), "--state", str(STATE), "--topology", str(TOPOLOGY), "--nodes", str(STATE)],
     "expected a NodeList"),
    (["spread", str(JOBS / "pod.yaml")], "no StatefulSet or Deployment"),
])
def test_errors_name_the_problem(args: list[str], message: str) -> None:
    r = ctl(*args)
    assert r.returncode == 1, r.stdout
    assert message in r.stderr and r.stderr.startswith(("meshctl: ", "/")), r.stderr


def test_no_mesh_is_a_clear_error(tmp_path: Path) -> None:
    r = ctl("--endpoint", "127.0.0.1:9", "place", str(JOBS / "pod.yaml"))
    assert r.returncode == 1 and "meshctl: NodeUnreachable" in r.stderr and "unreachable" in r.stderr
    assert "--state FILE --topology FILE" in r.stderr
    r = ctl("--endpoint", str(tmp_path), "place", str(JOBS / "pod.yaml"))  # no node ever started here
    assert r.returncode == 1 and "no running node found" in r.stderr
    assert "--state FILE --topology FILE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


JOB_EXAMPLES = sorted(p.name for p in JOBS.glob("*.yaml") if p.name not in ("state.yaml", "meshd-statefulset.yaml"))


@pytest.mark.parametrize("name", JOB_EXAMPLES)
def test_every_shipped_job_example_places_offline(name: str) -> None:
    """Each job under examples/jobs works as docs/SCHEDULING.md shows it, with no mesh running."""
    r = place(str(JOBS / name))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("job ") and "why region-" in r.stdout
    r = place(str(JOBS / name), "--patch")
    assert r.returncode == 0, r.stderr
    assert "&id" not in r.stdout and "*id" not in r.stdout  # no YAML anchors in what people read
    (doc,) = yaml.safe_load_all(r.stdout)
    assert k8s.REGION in doc["metadata"]["annotations"]
    if doc["apiVersion"] in ("v1", "apps/v1", "batch/v1"):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_shipped_statefulset_example_spreads() -> None:
    r = ctl("spread", str(JOBS / "meshd-statefulset.yaml"))
    assert r.returncode == 0, r.stderr
    assert "&id" not in r.stdout
    kubernetes_validate.validate(yaml.safe_load(r.stdout), "1.30", strict=True)


def test_several_job_files_at_once() -> None:
    r = place(str(JOBS / "pod.yaml"), str(JOBS / "volcano-job.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    assert [j["job"] for j in json.loads(r.stdout)] == ["resnet-probe", "ctr-train"]
    r = place(str(JOBS / "pod.yaml"), str(JOBS / "deployment.yaml"), "--patch")
    assert r.returncode == 0, r.stderr
    assert [d["kind"] for d in yaml.safe_load_all(r.stdout)] == ["Pod", "Deployment"]
    r = place(str(JOBS / "pod.yaml"), str(TOPOLOGY))
    assert r.returncode == 1 and "is not a Kubernetes object" in r.stderr
