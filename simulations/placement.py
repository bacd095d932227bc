"""Placement of many jobs over a synthetic multi-region topology: where do they go, what moves.

    python -m simulations.placement [--regions 20 --nodes 2000 --jobs 1000 --seed 1]

:func:`synthetic` builds a random but seeded world (the same seed gives the
same world): ``regions`` regions ``r00``, ``r01``, ... with two zones each,
linked in a ring plus random chords (both directions declared, the same
figures each way: 1-100 Gbit/s, a quota at or under the line, 1-80 ms, cost
0-0.1 per GiB, overhead 0.05), a few under-stores with their homes, ``nodes``
machines spread over the regions (0-8 free GPUs, most running a cache node),
``datasets`` datasets of 10 GiB to 10 TiB homed at a store, each cached in
part (or whole) on a few nodes of a few regions, and some load on a random
share of the links. :func:`jobs` draws jobs over those datasets.

:func:`replay` calls :func:`topology.placement.place` -- the function the
daemon and the scheduler extender call -- for every job and returns plain
data: each job's ranking and the best region's figures. It keeps no state
between jobs (a placement does not reserve GPUs or fill caches): it measures
the decision, not a schedule. The only clock is the one timing each call.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from topology.model import Link, Region, Store, Topology
from topology.placement import Dataset, Job, Node, State, place

__all__ = ["jobs", "main", "replay", "synthetic"]

GIB = 1 << 30
TIB = 1 << 40
GBIT = 1e9 / 8          # bytes/s in one Gbit/s
OVERHEAD = 0.05
GPUS_PER_POD = (0, 1, 2, 4, 8)


def _region(i: int) -> str:
    return f"r{i:02d}"


def synthetic(regions: int = 20, nodes: int = 2000, datasets: int = 200, seed: int = 1) -> State:
    """A seeded random world: topology, nodes, datasets with cached bytes, link load."""
    if regions < 1:
        raise ValueError(f"regions must be at least 1, got {regions}")
    if nodes < 0 or datasets < 0:
        raise ValueError("nodes and datasets must be >= 0")
    rng = random.Random(seed)
    names = [_region(i) for i in range(regions)]
    node_list = _synthetic_nodes(rng, names, nodes)
    by_region: dict[str, list[str]] = {}
    for n in node_list:
        by_region.setdefault(n.region, []).append(n.name)
    region_objs = [Region(r, zones=(f"{r}a", f"{r}b"), nodes=tuple(by_region.get(r, ()))) for r in names]
    links = _synthetic_links(rng, names)
    stores = [Store(f"store-{i}", rng.choice(names), f"s3://store-{i}")
              for i in range(max(1, min(5, regions)))]
    topo = Topology(region_objs, links, stores, name=f"synthetic-{regions}r-seed{seed}")
    ds = _synthetic_datasets(rng, datasets, stores, [r for r in names if by_region.get(r)], by_region)

    # Load: a third of the link directions carry up to their whole quota (some more: the floor).
    load = {(k.src, k.dst): k.quota * rng.uniform(0.0, 1.1) for k in links if rng.random() < 1 / 3}
    return State(topo, ds, {n.name: n for n in node_list}, load)


def _synthetic_nodes(rng: random.Random, names: Sequence[str], nodes: int) -> list[Node]:
    """Nodes: every region gets at least one when there are enough, the rest at random."""
    where = [names[i % len(names)] for i in range(min(nodes, len(names)))]
    where += [rng.choice(names) for _ in range(nodes - len(where))]
    node_list: list[Node] = []
    count: dict[str, int] = {}
    for region in where:
        k = count[region] = count.get(region, -1) + 1
        node_list.append(Node(f"{region}-n{k:04d}", region, f"{region}{'ab'[k % 2]}",
                              gpus_free=rng.randint(0, 8), cache=rng.random() < 0.85))
    return node_list


def _synthetic_links(rng: random.Random, names: Sequence[str]) -> list[Link]:
    """Links, both directions alike: a ring (connected) plus about one random chord per region."""
    regions = len(names)
    pairs: set[tuple[str, str]] = set()
    for i in range(regions if regions > 1 else 0):
        a, b = sorted((names[i], names[(i + 1) % regions]))
        pairs.add((a, b))
    for _ in range(min(regions, regions * (regions - 1) // 2 - len(pairs))):
        while True:
            a, b = sorted(rng.sample(names, 2))
            if (a, b) not in pairs:
                pairs.add((a, b))
                break
    links: list[Link] = []
    for a, b in sorted(pairs):
        capacity = rng.uniform(1, 100) * GBIT
        quota = capacity * rng.uniform(0.2, 1.0)
        latency = rng.uniform(0.001, 0.080)
        cost = round(rng.uniform(0, 0.1), 4)
        links += [Link(a, b, capacity, latency, cost, quota, OVERHEAD),
                  Link(b, a, capacity, latency, cost, quota, OVERHEAD)]
    return links


def _synthetic_datasets(rng: random.Random, datasets: int, stores: Sequence[Store], holding: Sequence[str],
                        by_region: dict[str, list[str]]) -> dict[str, Dataset]:
    """Datasets: log-uniform sizes, homed at a store, cached on a few nodes of a few of the
    ``holding`` regions (those with nodes)."""
    ds: dict[str, Dataset] = {}
    for i in range(datasets):
        store = rng.choice(stores)
        size = int(10 * GIB * (1024 ** rng.random()))  # 10 GiB .. 10 TiB
        size = min(size, 10 * TIB)
        cached: dict[str, dict[str, int]] = {}
        for region in rng.sample(holding, min(len(holding), rng.choice((0, 1, 1, 2, 3)))):
            share = 1.0 if rng.random() < 0.3 else rng.uniform(0.05, 0.95)
            total = int(size * share)
            on = rng.sample(by_region[region], min(len(by_region[region]), rng.randint(1, 4)))
            cuts = sorted(rng.randint(0, total) for _ in range(len(on) - 1))
            parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
            cached[region] = {n: p for n, p in zip(on, parts, strict=True) if p > 0}
        path = f"{store.uri}/ds{i:03d}"
        ds[path] = Dataset(path, size, store.home, cached)
    return ds


def jobs(state: State, n: int = 1000, seed: int = 1) -> list[Job]:
    """``n`` seeded jobs, each naming 1-3 of the state's datasets."""
    rng = random.Random(seed)
    paths = sorted(state.datasets)
    if not paths:
        raise ValueError("the state has no datasets")
    return [Job(f"job-{i:04d}", tuple(rng.sample(paths, min(len(paths), rng.randint(1, 3)))),
                pods=rng.randint(1, 16), gpus_per_pod=rng.choice(GPUS_PER_POD))
            for i in range(n)]


def _mostly_local(job: Job, state: State) -> set[str]:
    """Regions whose caches hold more than half of the job's bytes."""
    ds = [state.datasets[d] for d in dict.fromkeys(job.datasets)]
    total = sum(d.size for d in ds)
    return {r for r in state.topology.regions if 2 * sum(d.in_region(r) for d in ds) > total}


def replay(state: State, job_list: Sequence[Job],
           clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Place every job; plain data. ``seconds`` (per decision) is the only non-deterministic part."""
    placements: list[dict[str, Any]] = []
    seconds: list[float] = []
    for job in job_list:
        t = clock()
        ranked = place(job, state)
        seconds.append(clock() - t)
        best = ranked[0]
        placements.append({
            "job": job.name, "region": best.region, "feasible": best.feasible,
            "ranking": [c.region for c in ranked], "bytes_total": best.bytes_total,
            "bytes_local": best.bytes_local, "bytes_to_move": best.bytes_to_move,
            "bytes_over_links": sum(t.bytes for t in best.transfers if len(t.path) > 1),
            "staging_seconds": best.staging_seconds, "score": best.score,
            "mostly_local": sorted(_mostly_local(job, state)),
            "nodes": {n.name: n.pods for n in best.nodes if n.pods},
        })
    with_local = [p for p in placements if p["mostly_local"]]
    return {
        "jobs": len(placements),
        "placements": placements,
        "with_mostly_local_region": len(with_local),
        "placed_mostly_local": sum(p["region"] in p["mostly_local"] for p in with_local),
        "infeasible": sum(not p["feasible"] for p in placements),
        "mean_bytes_moved": statistics.fmean(p["bytes_to_move"] for p in placements) if placements else 0.0,
        "mean_bytes_over_links": (statistics.fmean(p["bytes_over_links"] for p in placements)
                                  if placements else 0.0),
        "seconds": seconds,
    }


def _percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.placement",
                                description="Place synthetic jobs over a synthetic multi-region topology "
                                            "with topology.placement.place; print a summary.")
    p.add_argument("--regions", type=int, default=20)
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--datasets", type=int, default=200)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.regions < 1 or args.nodes < 0 or args.datasets < 1 or args.jobs < 1:
        p.error("--regions, --datasets and --jobs must be at least 1, --nodes at least 0")
    state = synthetic(args.regions, args.nodes, args.datasets, args.seed)
    result = replay(state, jobs(state, args.jobs, args.seed))
    ms = [s * 1e3 for s in result["seconds"]]
    n = result["jobs"]
    print(f"{state.topology!r}, {len(state.nodes)} nodes, {len(state.datasets)} datasets, {n} jobs")
    print(f"placed where most of their data is cached: {result['placed_mostly_local']} of "
          f"{result['with_mostly_local_region']} jobs that have such a region")
    print(f"mean bytes moved per job: {result['mean_bytes_moved'] / GIB:.1f} GiB, of which "
          f"{result['mean_bytes_over_links'] / GIB:.1f} GiB over links (the rest: the home store, in-region)")
    print(f"infeasible (no region fits every pod): {result['infeasible']} of {n}")
    print(f"time per decision: median {statistics.median(ms):.2f} ms, p99 {_percentile(ms, 0.99):.2f} ms, "
          f"max {max(ms):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
