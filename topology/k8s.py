"""Kubernetes manifests in and out of placement: read a job, write scheduling hints.

Pure functions over parsed manifests (dicts), no cluster access:

* :func:`pod_templates` finds the pod templates of a Pod, Deployment,
  StatefulSet, ReplicaSet, DaemonSet, Job, CronJob, any Kubeflow training job
  (``spec.<kind>ReplicaSpecs``: PyTorchJob, TFJob, MPIJob...) and a Volcano
  Job (``batch.volcano.sh/v1alpha1``, ``spec.tasks[].template``), with the
  number of pods each makes.
* :func:`job_of` turns a manifest into a placement :class:`~topology.placement.Job`:
  the datasets named in the annotation ``datamesh.io/datasets`` (on the
  object or on a pod template; paths separated by commas or whitespace), the
  pods, and the GPUs per pod (``nvidia.com/gpu`` limits, else requests, summed
  over the containers).
* :func:`patch` returns a copy of the manifest with scheduling hints on every
  pod template, every original field kept:

  - weighted *preferred* node affinity (never required: a hint must not make
    a job unschedulable) on ``topology.kubernetes.io/region`` (the best
    regions, 100/50/25), ``topology.kubernetes.io/zone`` (zones of the best
    region holding the data, 1-30 by their share), ``kubernetes.io/hostname``
    (up to 10 nodes holding the data, 1-60 by their share) and the mesh's
    node label ``datamesh.io/cache-node=true`` (10: a machine running a
    cache node reads the data over shared memory);
  - a ``topologySpreadConstraint`` over hostnames (maxSkew 1, ScheduleAnyway)
    on the label ``datamesh.io/job``, unless the template already spreads
    over hostnames: IO-heavy pods of one job spread over the machines instead
    of being bin-packed onto one;
  - annotations: the datasets, the chosen region, the staging ETA, and
    ``datamesh.io/hints``, the JSON of what was added, so that patching a
    patched manifest replaces the hints instead of stacking them.
* :func:`spread_cache_nodes` adds the recommended spread to the mesh's own
  pods (a StatefulSet or Deployment of meshd): one cache node per machine
  (required pod anti-affinity on hostnames) and an even spread over zones.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from .model import Topology
from .placement import Candidate, Job, Node

DATASETS = "datamesh.io/datasets"
REGION = "datamesh.io/region"
ETA = "datamesh.io/staging-eta-seconds"
HINTS = "datamesh.io/hints"
JOB_LABEL = "datamesh.io/job"
CACHE_NODE_LABEL = "datamesh.io/cache-node"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOST_LABEL = "kubernetes.io/hostname"
GPU = "nvidia.com/gpu"

REGION_WEIGHTS = (100, 50, 25)
MAX_HOSTS = 10

_WORKLOADS = {"Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "ReplicationController"}


class ManifestError(ValueError):
    """The manifest is not one placement can read; the message names the field."""


def load_all(text: str, source: str = "<manifest>") -> list[dict[str, Any]]:
    """The YAML (or JSON) documents of a manifest file, empty documents skipped."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"{source}: not valid YAML: {e}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or "kind" not in d:
            raise ManifestError(f"{source}: document {i + 1} is not a Kubernetes object (no kind)")
    return docs


class _NoAliases(yaml.SafeDumper):
    """A dumper that writes a value shared by two places twice, never as ``&id001``/``*id001``
    (kubectl takes anchors, but people read and diff these manifests)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_NoAliases, sort_keys=False, default_flow_style=False)


def _name(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("name") or doc.get("kind", "job")).lower()


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(field path, template, pods) for each pod template of ``doc``; the template is the
    object inside ``doc`` (edit it to edit the manifest). A Pod is its own template."""
    kind, spec = doc.get("kind"), doc.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    api = str(doc.get("apiVersion", ""))
    if kind == "Pod":
        yield "", doc, 1
    elif kind in _WORKLOADS and isinstance(spec.get("template"), dict):
        yield "spec.template", spec["template"], _int(spec.get("replicas"), 1)
    elif kind == "Job" and api.startswith("batch.volcano.sh/"):
        for i, task in enumerate(spec.get("tasks") or []):
            if isinstance(task, dict) and isinstance(task.get("template"), dict):
                yield f"spec.tasks[{i}].template", task["template"], _int(task.get("replicas"), 1)
    elif kind == "Job" and isinstance(spec.get("template"), dict):
        pods = _int(spec.get("parallelism"), 1)
        yield "spec.template", spec["template"], pods
    elif kind == "CronJob":
        job = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        if isinstance(job.get("template"), dict):
            yield "spec.jobTemplate.spec.template", job["template"], _int(job.get("parallelism"), 1)
    else:
        for key, replicas in spec.items():  # Kubeflow: pytorchReplicaSpecs, tfReplicaSpecs, mpiReplicaSpecs...
            if key.endswith("ReplicaSpecs") and isinstance(replicas, dict):
                for role, rs in replicas.items():
                    if isinstance(rs, dict) and isinstance(rs.get("template"), dict):
                        yield f"spec.{key}.{role}.template", rs["template"], _int(rs.get("replicas"), 1)


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p for p in re.split(r"[,\s]+", str(value or "")) if p]


def datasets_of(doc: dict[str, Any]) -> list[str]:
    """The datasets named in the object's (or its pod templates') ``datamesh.io/datasets``."""
    found: list[str] = []
    found += _split(((doc.get("metadata") or {}).get("annotations") or {}).get(DATASETS))
    for _, tpl, _ in pod_templates(doc):
        found += _split(((tpl.get("metadata") or {}).get("annotations") or {}).get(DATASETS))
    return list(dict.fromkeys(found))


def _quantity(v: Any) -> int:
    try:
        return int(float(str(v)))
    except ValueError:
        raise ManifestError(f"{GPU}: {v!r} is not a GPU count") from None


def gpus_of(template: dict[str, Any]) -> int:
    total = 0
    for c in (template.get("spec") or {}).get("containers") or []:
        res = (c or {}).get("resources") or {}
        want = (res.get("limits") or {}).get(GPU, (res.get("requests") or {}).get(GPU, 0))
        total += _quantity(want)
    return total


def job_of(doc: dict[str, Any], extra_datasets: list[str] | None = None) -> Job:
    """The placement job a manifest describes; ManifestError when it has no pod template
    or names no dataset."""
    templates = list(pod_templates(doc))
    if not templates:
        raise ManifestError(f"{doc.get('kind')} {_name(doc)}: no pod template found (supported: Pod, "
                            f"Deployment, StatefulSet, Job, CronJob, Kubeflow *ReplicaSpecs, Volcano Job)")
    datasets = list(dict.fromkeys(datasets_of(doc) + list(extra_datasets or [])))
    if not datasets:
        raise ManifestError(f"{doc.get('kind')} {_name(doc)}: names no dataset: add the annotation "
                            f"{DATASETS}: \"s3://bucket/path, /mesh/path\" (or pass --dataset)")
    pods = sum(n for _, _, n in templates) or 1
    gpus = max(gpus_of(t) for _, t, _ in templates)
    return Job(_name(doc), tuple(datasets), pods, gpus)


# ---------------------------------------------------------------- nodes

def region_of(name: str, labels: dict[str, str], topo: Topology) -> str | None:
    """A Kubernetes node's region: its ``topology.kubernetes.io/region`` label when that names
    a region of the topology, else the region listing the node by name, else the region one
    of whose selectors its labels match."""
    label = labels.get(REGION_LABEL)
    if label in topo.regions:
        return label
    for r in topo.regions.values():
        if name in r.nodes:
            return r.name
    for r in topo.regions.values():
        if any(all(labels.get(k) == v for k, v in sel.items()) for sel in r.selectors):
            return r.name
    return None


def node_of(obj: dict[str, Any], topo: Topology, cache_nodes: set[str] | frozenset[str] = frozenset()) -> Node | None:
    """The placement Node of a Kubernetes Node object (None when no region claims it).
    Its GPUs are the allocatable ``nvidia.com/gpu``: the node object does not say how many
    are in use; the scheduler checks that."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    region = region_of(name, labels, topo) if name else None
    if region is None:
        return None
    alloc = ((obj.get("status") or {}).get("allocatable") or {})
    gpus = _quantity(alloc[GPU]) if GPU in alloc else 0
    cache = labels.get(CACHE_NODE_LABEL) == "true" or name in cache_nodes
    return Node(name, region, labels.get(ZONE_LABEL, ""), gpus, cache)


def nodes_of(objs: list[dict[str, Any]], topo: Topology,
             cache_nodes: set[str] | frozenset[str] = frozenset()) -> dict[str, Node]:
    """Placement Nodes of Kubernetes Node objects (a NodeList's items), those in a region."""
    out = {}
    for obj in objs:
        n = node_of(obj, topo, cache_nodes)
        if n is not None:
            out[n.name] = n
    return out


# ---------------------------------------------------------------- hints

def hints(candidates: list[Candidate]) -> list[dict[str, Any]]:
    """The weighted preferred node-affinity terms for a ranking (best candidate first)."""
    terms: list[dict[str, Any]] = []

    def term(weight: int, key: str, value: str) -> None:
        terms.append({"weight": weight, "preference": {"matchExpressions": [
            {"key": key, "operator": "In", "values": [value]}]}})

    # in rank order (regions where the pods fit come first); never a region the data cannot reach
    ok = [c for c in candidates if c.staging_seconds != float("inf")]
    for weight, c in zip(REGION_WEIGHTS, ok, strict=False):
        term(weight, REGION_LABEL, c.region)
    if not ok:
        return terms
    best = ok[0]
    zones: dict[str, int] = {}
    for n in best.nodes:
        if n.zone and n.cached_bytes:
            zones[n.zone] = zones.get(n.zone, 0) + n.cached_bytes
    top = max(zones.values(), default=0)
    for zone, b in sorted(zones.items(), key=lambda kv: (-kv[1], kv[0])):
        term(1 + round(29 * b / top), ZONE_LABEL, zone)
    holders = [n for n in best.nodes if n.cached_bytes > 0][:MAX_HOSTS]
    most = max((n.cached_bytes for n in holders), default=0)
    for n in holders:
        term(1 + round(59 * n.cached_bytes / most), HOST_LABEL, n.name)
    term(10, CACHE_NODE_LABEL, "true")
    return terms


def patch(doc: dict[str, Any], job: Job, candidates: list[Candidate]) -> dict[str, Any]:
    """A copy of ``doc`` with the hints of ``candidates`` (best first) on every pod template."""
    out = copy.deepcopy(doc)
    terms = hints(candidates)
    best = candidates[0] if candidates else None
    notes = {DATASETS: ",".join(job.datasets)}
    if best is not None:
        notes[REGION] = best.region
        notes[ETA] = f"{best.staging_seconds:.0f}" if best.staging_seconds != float("inf") else "never"
    _annotate(out, notes)
    for _, tpl, _ in pod_templates(out):
        meta = tpl.setdefault("metadata", {})
        old = json.loads((meta.get("annotations") or {}).get(HINTS) or "{}")
        spec = tpl.setdefault("spec", {})
        pref = (spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
                .setdefault("preferredDuringSchedulingIgnoredDuringExecution", []))
        pref[:] = [t for t in pref if t not in old.get("terms", [])] + terms
        added: dict[str, Any] = {"terms": terms}
        meta.setdefault("labels", {})[JOB_LABEL] = job.name
        spreads = spec.get("topologySpreadConstraints") or []
        spreads = [s for s in spreads if s != old.get("spread")]
        if not any(s.get("topologyKey") == HOST_LABEL for s in spreads):
            spread = {"maxSkew": 1, "topologyKey": HOST_LABEL, "whenUnsatisfiable": "ScheduleAnyway",
                      "labelSelector": {"matchLabels": {JOB_LABEL: job.name}}}
            spreads.append(spread)
            added["spread"] = spread
        spec["topologySpreadConstraints"] = spreads
        _annotate(tpl, {**notes, HINTS: json.dumps(added, sort_keys=True, separators=(",", ":"))})
    return out


def _annotate(obj: dict[str, Any], notes: dict[str, str]) -> None:
    meta = obj.setdefault("metadata", {})
    anns = meta.get("annotations")
    if not isinstance(anns, dict):
        anns = meta["annotations"] = {}
    for key, value in notes.items():
        if key == DATASETS and key in anns and _split(anns[key]) == _split(value):
            continue  # the user's own spelling of the same list stays
        anns[key] = value


def spread_cache_nodes(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of the mesh's own StatefulSet/Deployment with its cache pods spread: at most
    one per machine (required anti-affinity on hostnames) and evenly over zones."""
    if doc.get("kind") not in ("StatefulSet", "Deployment", "ReplicaSet"):
        raise ManifestError(f"spread: expected the mesh's StatefulSet or Deployment, not {doc.get('kind')} "
                            f"(a DaemonSet already runs one cache pod per machine)")
    out = copy.deepcopy(doc)
    tpl = out.setdefault("spec", {}).setdefault("template", {})
    labels = (tpl.get("metadata") or {}).get("labels") or {}
    if not labels:
        raise ManifestError(f"spread: {_name(doc)}: the pod template has no labels to select its own pods by")
    spec = tpl.setdefault("spec", {})
    selector = {"matchLabels": dict(labels)}
    anti = spec.setdefault("affinity", {}).setdefault("podAntiAffinity", {})
    req = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
    one_per_host = {"labelSelector": selector, "topologyKey": HOST_LABEL}
    if one_per_host not in req:
        req.append(one_per_host)
    spreads = spec.setdefault("topologySpreadConstraints", [])
    for key in (ZONE_LABEL,):
        if not any(s.get("topologyKey") == key for s in spreads):
            spreads.append({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": selector})
    return out
