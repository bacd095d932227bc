"""``meshctl place JOBFILE`` and ``meshctl spread FILE``: placement from the shell.

``place`` reads a Kubernetes manifest (Pod, Deployment, Job, Kubeflow
PyTorchJob..., Volcano Job) naming its datasets in the annotation
``datamesh.io/datasets``, asks the mesh what it knows (``place.state``: where
the datasets' bytes are cached, per region and node, the topology, the links'
load), ranks the regions with ``topology.placement.place`` and prints the
ranking. ``--patch`` prints the manifest with scheduling hints instead (the
ranking goes to stderr, so ``meshctl place job.yaml --patch | kubectl apply
-f -`` works). ``--stage`` starts loading the datasets into the chosen region
and prints the ETA; ``--wait`` follows the staging until it is done.

Without a mesh: ``--state FILE`` reads the state document from a file (the
format: meshd/core/placing.py) and plans offline. ``--nodes FILE`` adds the
scheduler's view of the machines (``kubectl get nodes -o json``): their
regions and zones from the standard labels, and their allocatable GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import yaml

from meshd.client.sdk import MeshClient
from meshd.core.placing import state_from_doc
from meshd.errors import InvalidArgument, MeshError, NodeUnavailable
from topology import k8s
from topology.model import TopologyError, format_duration, format_rate, load
from topology.model import format_size as _human
from topology.placement import Candidate, Job, State, place


def register(sub: Any) -> None:
    p = sub.add_parser(
        "place", help="rank regions and nodes for a job by where its data is; add scheduling hints",
        description="Rank the regions (and their nodes) for each job in the JOBFILEs by where its "
                    "datasets' bytes are cached, what must cross which link and how long that takes "
                    "under the link quotas, and whether the pods fit. Without a running node, plan "
                    "offline: --state FILE --topology FILE (examples/jobs/state.yaml).")
    p.add_argument("jobfiles", nargs="+", metavar="JOBFILE",
                   help="Kubernetes manifest(s) (YAML or JSON); - for stdin")
    p.add_argument("--dataset", "-d", action="append", default=[], metavar="PATH",
                   help="a dataset the job reads, besides those in its datamesh.io/datasets annotation")
    p.add_argument("--state", metavar="FILE", help="plan offline from this state document (JSON/YAML) "
                   "instead of asking the mesh")
    p.add_argument("--topology", metavar="FILE", help="use this topology file instead of the mesh's")
    p.add_argument("--nodes", metavar="FILE", help="the machines as `kubectl get nodes -o json` prints "
                   "them: regions, zones and allocatable GPUs")
    p.add_argument("--region", help="use this region for --patch/--stage instead of the best one")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.add_argument("--patch", action="store_true", help="print the manifest with scheduling hints added")
    p.add_argument("--output", "-o", metavar="FILE", help="with --patch: write the manifest here")
    p.add_argument("--stage", action="store_true", help="start loading the datasets into the region")
    p.add_argument("--wait", action="store_true", help="with --stage: follow it until every byte is there")
    p.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after SECONDS")
    p.set_defaults(fn_place=cmd_place)

    s = sub.add_parser(
        "spread", help="add the recommended spread to the mesh's own StatefulSet/Deployment",
        description="Print FILE (the mesh's cache nodes as a StatefulSet or Deployment) with at most one "
                    "cache pod per machine and an even spread over zones.")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(fn_place=cmd_spread)


def run(a: argparse.Namespace, endpoint: str | None) -> int:
    try:
        return int(a.fn_place(a, endpoint))
    except (k8s.ManifestError, InvalidArgument) as e:
        print(f"meshctl: {e}", file=sys.stderr)
        return 1
    except TopologyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    except MeshError as e:
        print(f"meshctl: {e.kind}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # meshctl place ... | head
        return 0
    except OSError as e:
        print(f"meshctl: {e.strerror or e}: {getattr(e, 'filename', '') or ''}", file=sys.stderr)
        return 1


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _structured(path: str) -> Any:
    try:
        return yaml.safe_load(_read(path))
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{path}: not valid JSON or YAML: {e}") from None


def cmd_spread(a: argparse.Namespace, endpoint: str | None) -> int:
    docs = k8s.load_all(_read(a.file), a.file)
    out = [k8s.spread_cache_nodes(d) if d.get("kind") in ("StatefulSet", "Deployment") else d for d in docs]
    if out == docs and not any(d.get("kind") in ("StatefulSet", "Deployment") for d in docs):
        raise InvalidArgument(f"{a.file}: no StatefulSet or Deployment to spread")
    sys.stdout.write(k8s.dump_all(out))
    return 0


def _jobs(files: list[str], datasets: list[str]) -> tuple[list[dict[str, Any]], list[tuple[int, Job]]]:
    """Every document of the job files, in order, and (index, job) of those with a pod template."""
    if files.count("-") > 1:
        raise InvalidArgument("stdin (-) can be read once")
    docs: list[dict[str, Any]] = []
    jobs: list[tuple[int, Job]] = []
    for path in files:
        found = k8s.load_all(_read(path), path)
        mine = [(len(docs) + i, k8s.job_of(d, datasets)) for i, d in enumerate(found) if any(k8s.pod_templates(d))]
        if not mine:
            raise k8s.ManifestError(f"{path}: no object with a pod template")
        docs += found
        jobs += mine
    return docs, jobs


def _mesh_state(endpoint: str | None, names: list[str]) -> tuple[MeshClient, dict[str, Any]]:
    """The mesh's answer to ``place.state``; without a node, the error says how to plan offline."""
    client: MeshClient | None = None
    try:
        client = MeshClient(endpoint)
        return client, client.place_state(names)
    except NodeUnavailable as e:
        if client is not None:
            client.close()
        raise type(e)(f"{e}; to plan without a running node: --state FILE --topology FILE "
                      "(examples: examples/jobs/state.yaml, examples/topology.yaml)") from None


def cmd_place(a: argparse.Namespace, endpoint: str | None) -> int:
    docs, jobs = _jobs(a.jobfiles, a.dataset)
    names = list(dict.fromkeys(n for _, j in jobs for n in j.datasets))
    topo = load(a.topology) if a.topology else None
    client: MeshClient | None = None
    try:
        if a.state:
            doc = _structured(a.state)
        else:
            client, doc = _mesh_state(endpoint, names)
        state = state_from_doc(doc, topo)
        missing = [n for n in names if n not in state.datasets]
        if missing:
            raise InvalidArgument(f"the state says nothing of {', '.join(missing)}")
        if a.nodes:
            nodelist = _structured(a.nodes)
            items = nodelist.get("items") if isinstance(nodelist, dict) else None
            if not isinstance(items, list):
                raise InvalidArgument(f"{a.nodes}: expected a NodeList (kubectl get nodes -o json)")
            state = dataclasses.replace(
                state, nodes=k8s.nodes_of(items, state.topology, {n for n, v in state.nodes.items() if v.cache}))
        if a.region and a.region not in state.topology.regions:
            raise InvalidArgument(f"--region {a.region}: not a region of the topology "
                                  f"({', '.join(state.topology.regions)})")
        for r, err in sorted((doc.get("errors") or {}).items()):
            print(f"meshctl: warning: region {r} did not answer ({err}): its caches count as empty",
                  file=sys.stderr)
        rankings = [(i, job, place(job, state)) for i, job in jobs]
        out = sys.stderr if a.patch and not a.output else sys.stdout
        if a.json:
            print(json.dumps([{"job": job.name, "pods": job.pods, "gpus_per_pod": job.gpus_per_pod,
                               "datasets": list(job.datasets), "candidates": [c.to_dict() for c in ranked]}
                              for _, job, ranked in rankings], indent=2), file=out)
        else:
            for _, job, ranked in rankings:
                _table(job, ranked, state, out)
        if a.patch:
            patched = list(docs)
            for i, job, ranked in rankings:
                patched[i] = k8s.patch(docs[i], job, _chosen_first(ranked, a.region))
            text = k8s.dump_all(patched)
            if a.output:
                with open(a.output, "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
        if a.stage:
            return _stage(a, endpoint, doc, state, rankings)
    finally:
        if client is not None:
            client.close()
    return 0


def _chosen_first(ranked: list[Candidate], region: str | None) -> list[Candidate]:
    if region is None:
        return ranked
    return [c for c in ranked if c.region == region] + [c for c in ranked if c.region != region]


def _seconds(s: float) -> str:
    if s == float("inf"):
        return "never"
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 120:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return format_duration(s) if s else "0 s"


def _table(job: Job, ranked: list[Candidate], state: State, out: Any) -> None:
    gpus = f" x {job.gpus_per_pod} GPU" if job.gpus_per_pod else ""
    sizes = ", ".join(f"{d} ({_human(state.datasets[d].size)})" for d in job.datasets)
    print(f"job {job.name}: {job.pods} pod{'s' if job.pods != 1 else ''}{gpus}; datasets {sizes}", file=out)
    print(f"{'#':>2}  {'region':<16} {'pods':>7} {'local':>17} {'to move':>10}  {'staging':>9} "
          f"{'read rate':>12} {'cost':>7}  links", file=out)
    for n, c in enumerate(ranked, 1):
        fit = f"{min(c.pods_fit, job.pods)}/{job.pods}"
        local = f"{_human(c.bytes_local)} {100 * c.bytes_local / c.bytes_total if c.bytes_total else 100:.0f}%"
        links = ", ".join(f"{s}->{d} {_human(b)}" for (s, d), b in sorted(c.link_bytes.items())) or "-"
        print(f"{n:>2}  {c.region:<16} {fit:>7} {local:>17} {_human(c.bytes_to_move):>10}  "
              f"{_seconds(c.staging_seconds):>9} {format_rate(c.read_rate):>12} {c.cost:>7.2f}  {links}", file=out)
    best = ranked[0]
    placed = [f"{n.name} ({n.pods} pod{'s' if n.pods != 1 else ''}, {_human(n.cached_bytes)} cached)"
              for n in best.nodes if n.pods]
    if placed:
        print(f"nodes in {best.region}: " + ", ".join(placed), file=out)
    print(f"why {best.region}:", file=out)
    for r in best.reasons:
        print(f"  - {r}", file=out)
    print(file=out)


def _stage(a: argparse.Namespace, endpoint: str | None, doc: dict[str, Any], state: State,
           rankings: list[tuple[int, Job, list[Candidate]]]) -> int:
    region = a.region or rankings[0][2][0].region
    names = list(dict.fromkeys(n for _, j, _ in rankings for n in j.datasets))
    cands = [next(c for c in ranked if c.region == region) for _, _, ranked in rankings]
    if a.state:
        raise InvalidArgument("--stage needs a mesh (it cannot stage from a --state file)")
    targets = sorted(v["endpoint"] for v in (doc.get("nodes") or {}).values()
                     if v.get("region") == region and v.get("endpoint"))
    if not targets:
        raise InvalidArgument(f"--stage: no live mesh node in region {region} to load the data")
    started = None
    last: MeshError | None = None
    for target in targets[:3]:
        try:
            with MeshClient(target, route=False) as c:
                started = c.stage(names)
            break
        except MeshError as e:
            last = e
    if started is None:
        assert last is not None
        raise last
    move = sum(c.bytes_to_move for c in cands)
    eta = max(c.staging_seconds for c in cands)
    print(f"staging {_human(move)} into {region} (of {_human(sum(c.bytes_total for c in cands))}): "
          f"ETA {_seconds(eta)} under the link quotas", file=sys.stderr)
    if not a.wait:
        return 0
    deadline = time.monotonic() + a.timeout
    total = sum(state.datasets[n].size for n in names)
    while True:
        with MeshClient(endpoint) as c:
            now = c.place_state(names)
        have = sum(min(now["datasets"][n]["size"], sum(now["datasets"][n]["cached"].get(region, {}).values()))
                   for n in names)
        print(f"  {region}: {_human(have)} of {_human(total)} cached", file=sys.stderr)
        if have >= total:
            print(f"staged: every byte of {', '.join(names)} is cached in {region}", file=sys.stderr)
            return 0
        if time.monotonic() > deadline:
            print(f"meshctl: staging into {region} not done after {a.timeout:g} s "
                  f"({_human(have)} of {_human(total)})", file=sys.stderr)
            return 1
        time.sleep(float(os.environ.get("MESH_STAGE_POLL", "2")))
