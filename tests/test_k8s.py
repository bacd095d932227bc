"""Manifests in and out of placement (``topology/k8s.py``).

The patched manifests are checked against Kubernetes' own OpenAPI schemas
(``kubernetes-validate``, offline, strict: unknown fields are errors). Custom
kinds have no schema there: a PyTorchJob's and a Volcano Job's pod templates
are checked as Pods, and the Volcano Job's own fields against the structure
of its CRD (batch.volcano.sh/v1alpha1 ``jobs.batch.volcano.sh``; the types
and enums below are the CRD's).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from topology import k8s
from topology.model import Link, Region, Store, Topology
from topology.placement import Candidate, Dataset, Job, Node, State, place

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "jobs"
K8S_VERSION = "1.30"
GIB = 1 << 30

_EVENTS = ["*", "PodPending", "PodRunning", "PodFailed", "PodEvicted", "Unknown", "TaskCompleted",
           "OutOfSync", "CommandIssued", "JobUpdated", "TaskFailed"]
_POLICY = {"type": "object", "additionalProperties": False, "properties": {
    "action": {"type": "string"}, "event": {"type": "string", "enum": _EVENTS},
    "events": {"type": "array", "items": {"type": "string", "enum": _EVENTS}},
    "exitCode": {"type": "integer"}, "timeout": {"type": "string"}}}
VOLCANO_JOB = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "batch.volcano.sh/v1alpha1"}, "kind": {"const": "Job"},
        "metadata": {"type": "object"}, "status": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "maxRetry": {"type": "integer"}, "minAvailable": {"type": "integer"},
            "minSuccess": {"type": "integer", "minimum": 1},
            "networkTopology": {"type": "object"},
            "plugins": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            "policies": {"type": "array", "items": _POLICY},
            "priorityClassName": {"type": "string"}, "queue": {"type": "string"},
            "runningEstimate": {"type": "string"}, "schedulerName": {"type": "string"},
            "ttlSecondsAfterFinished": {"type": "integer"},
            "volumes": {"type": "array"},
            "tasks": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "dependsOn": {"type": "object"}, "maxRetry": {"type": "integer"},
                "minAvailable": {"type": "integer"}, "name": {"type": "string"},
                "policies": {"type": "array", "items": _POLICY}, "replicas": {"type": "integer"},
                "topologyPolicy": {"type": "string"},
                "template": {"type": "object", "properties": {
                    "metadata": {"type": "object", "additionalProperties": False, "properties": {
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "finalizers": {"type": "array", "items": {"type": "string"}},
                        "name": {"type": "string"}, "namespace": {"type": "string"}}},
                    "spec": {"type": "object"}}}}}},
        }},
    },
}


def topology() -> Topology:
    def both(a: str, b: str) -> list[Link]:
        return [Link(a, b, 1.25e8, 0.02, 0.05, 5e7, 0.05), Link(b, a, 1.25e8, 0.02, 0.05, 5e7, 0.05)]

    return Topology([Region("region-a"), Region("region-b"), Region("region-c")],
                    both("region-a", "region-b") + both("region-a", "region-c") + both("region-b", "region-c"),
                    [Store("datasets", "region-a", "s3://datasets")])


def ranking(job: Job) -> list[Candidate]:
    """Data cached on two nodes of region-b (zones b1, b2), GPUs everywhere."""
    datasets = {p: Dataset(p, 100 * GIB, "region-a", {"region-b": {"gpu-b-1": 70 * GIB, "gpu-b-2": 30 * GIB}})
                for p in job.datasets}
    nodes = {n.name: n for n in [Node("gpu-a-1", "region-a", "a1", 8, True),
                                 Node("gpu-b-1", "region-b", "b1", 8, True),
                                 Node("gpu-b-2", "region-b", "b2", 8, True),
                                 Node("gpu-b-3", "region-b", "b2", 8, False),
                                 Node("gpu-c-1", "region-c", "c1", 8, True)]}
    return place(job, State(topology(), datasets, nodes))


def validate(doc: dict[str, Any]) -> None:
    """Strict Kubernetes schema validation; custom kinds via their pod templates (and the CRD)."""
    if doc["apiVersion"].startswith(("batch.volcano.sh/", "kubeflow.org/")):
        if doc["apiVersion"].startswith("batch.volcano.sh/"):
            jsonschema.validate(doc, VOLCANO_JOB)
        for _, tpl, _ in k8s.pod_templates(doc):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **(tpl.get("metadata") or {})},
                   "spec": tpl["spec"]}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def leaves(obj: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, (*path, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, i))
    else:
        yield path, obj


def lookup(obj: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def assert_preserved(original: Any, patched: Any) -> None:
    """Every field of the original is still there with its value, down to each list item
    at its index (hints are appended to lists, never inserted)."""
    for path, value in leaves(original):
        assert lookup(patched, path) == value, path


@pytest.mark.parametrize("name", ["pod.yaml", "deployment.yaml", "job.yaml", "pytorchjob.yaml",
                                  "volcano-job.yaml"])
def test_examples_patch_validate_and_preserve(name: str) -> None:
    (doc,) = k8s.load_all((EXAMPLES / name).read_text(), name)
    validate(doc)  # the example itself is a valid manifest
    job = k8s.job_of(doc)
    ranked = ranking(job)
    assert ranked[0].region == "region-b"
    out = k8s.patch(doc, job, ranked)
    validate(out)
    assert_preserved(doc, out)
    assert out != doc and doc == k8s.load_all((EXAMPLES / name).read_text())[0]  # input untouched
    templates = list(k8s.pod_templates(out))
    assert templates
    for _, tpl, _ in templates:
        terms = tpl["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        ours = {(t["preference"]["matchExpressions"][0]["key"], t["preference"]["matchExpressions"][0]["values"][0]):
                t["weight"] for t in terms}
        assert ours[(k8s.REGION_LABEL, "region-b")] == 100
        assert ours[(k8s.REGION_LABEL, "region-a")] == 50  # home: the next best
        assert ours[(k8s.HOST_LABEL, "gpu-b-1")] == 60 and ours[(k8s.HOST_LABEL, "gpu-b-2")] == 1 + round(59 * 3 / 7)
        assert (k8s.HOST_LABEL, "gpu-b-3") not in ours  # holds nothing
        assert ours[(k8s.ZONE_LABEL, "b1")] == 30 and ours[(k8s.ZONE_LABEL, "b2")] == 1 + round(29 * 3 / 7)
        assert ours[(k8s.CACHE_NODE_LABEL, "true")] == 10
        assert all(1 <= t["weight"] <= 100 for t in terms)
        anns = tpl["metadata"]["annotations"]
        assert anns[k8s.REGION] == "region-b" and anns[k8s.DATASETS] == ",".join(job.datasets)
        spread = [s for s in tpl["spec"]["topologySpreadConstraints"] if s["topologyKey"] == k8s.HOST_LABEL]
        assert spread == [{"maxSkew": 1, "topologyKey": k8s.HOST_LABEL, "whenUnsatisfiable": "ScheduleAnyway",
                           "labelSelector": {"matchLabels": {k8s.JOB_LABEL: job.name}}}]
        assert tpl["metadata"]["labels"][k8s.JOB_LABEL] == job.name


def test_patch_is_idempotent_and_keeps_user_terms() -> None:
    (doc,) = k8s.load_all((EXAMPLES / "job.yaml").read_text())
    job = k8s.job_of(doc)
    once = k8s.patch(doc, job, ranking(job))
    twice = k8s.patch(once, job, ranking(job))
    assert twice == once
    # the data moves to region-c: re-patching replaces the mesh's terms, keeps the user's
    moved = [c for c in ranking(job) if c.region == "region-c"] + [c for c in ranking(job) if c.region != "region-c"]
    again = k8s.patch(once, job, moved)
    terms = again["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["preference"]["matchExpressions"][0]["key"] == "node.kubernetes.io/instance-type"
    regions = [(t["weight"], t["preference"]["matchExpressions"][0]["values"][0]) for t in terms
               if t["preference"]["matchExpressions"][0]["key"] == k8s.REGION_LABEL]
    assert regions[0] == (100, "region-c") and len(regions) == 3
    validate(again)


def test_job_of_reads_pods_gpus_and_datasets() -> None:
    docs = {p.name: k8s.load_all(p.read_text())[0] for p in EXAMPLES.glob("*.yaml") if p.name != "state.yaml"}
    assert k8s.job_of(docs["pod.yaml"]) == Job("resnet-probe", ("s3://datasets/imagenet",), 1, 1)
    assert k8s.job_of(docs["deployment.yaml"]) == Job("llm-serve", ("/models/llama-70b",), 4, 2)
    assert k8s.job_of(docs["job.yaml"]) == Job("embed-corpus", ("s3://datasets/corpus-2026",
                                                                "s3://datasets/stopwords"), 8, 1)
    assert k8s.job_of(docs["pytorchjob.yaml"]) == Job("llm-pretrain", ("s3://datasets/tokens-v3",), 4, 8)
    assert k8s.job_of(docs["volcano-job.yaml"]) == Job("ctr-train", ("hdfs://warehouse/ctr/2026-11",), 5, 4)
    assert k8s.job_of(docs["pod.yaml"], ["/extra"]).datasets == ("s3://datasets/imagenet", "/extra")


def test_bad_manifests_say_what_is_wrong() -> None:
    with pytest.raises(k8s.ManifestError, match="not valid YAML"):
        k8s.load_all("a: [b", "job.yaml")
    with pytest.raises(k8s.ManifestError, match="no kind"):
        k8s.load_all("- 1\n- 2\n", "job.yaml")
    with pytest.raises(k8s.ManifestError, match="no pod template"):
        k8s.job_of({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(k8s.ManifestError, match="names no dataset"):
        k8s.job_of({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}})
    with pytest.raises(k8s.ManifestError, match="not a GPU count"):
        k8s.job_of({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "annotations": {k8s.DATASETS: "/d"}},
                    "spec": {"containers": [{"name": "c", "image": "i",
                                             "resources": {"limits": {k8s.GPU: "lots"}}}]}})


def test_spread_cache_nodes() -> None:
    (doc,) = k8s.load_all((EXAMPLES / "meshd-statefulset.yaml").read_text())
    validate(doc)
    bare = copy.deepcopy(doc)
    del bare["spec"]["template"]["spec"]["affinity"]
    del bare["spec"]["template"]["spec"]["topologySpreadConstraints"]
    out = k8s.spread_cache_nodes(bare)
    validate(out)
    assert out["spec"]["template"]["spec"]["affinity"] == doc["spec"]["template"]["spec"]["affinity"]
    assert out["spec"]["template"]["spec"]["topologySpreadConstraints"] == \
        doc["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert k8s.spread_cache_nodes(out) == out  # idempotent
    assert_preserved(bare, out)
    with pytest.raises(k8s.ManifestError, match="DaemonSet"):
        k8s.spread_cache_nodes({"kind": "DaemonSet"})


def test_hints_json_annotation_round_trips() -> None:
    (doc,) = k8s.load_all((EXAMPLES / "pod.yaml").read_text())
    job = k8s.job_of(doc)
    out = k8s.patch(doc, job, ranking(job))
    added = json.loads(out["metadata"]["annotations"][k8s.HINTS])
    assert added["terms"] == out["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
