"""simulations/placement.py: the synthetic world and the placement replay (no timing asserted)."""

from __future__ import annotations

import dataclasses
import pickle

import networkx as nx
import pytest
import yaml

from simulations.placement import GPUS_PER_POD, jobs, main, replay, synthetic
from topology.model import problems
from topology.placement import Job, State, place

GIB = 1 << 30
TIB = 1 << 40
GBIT = 1e9 / 8

SIZES = [(20, 2000, 200, 1), (20, 2000, 200, 7), (8, 200, 30, 3), (3, 30, 10, 2), (2, 10, 5, 4), (1, 5, 3, 5)]


@pytest.fixture(scope="module")
def default() -> State:
    return synthetic()


def as_yaml(state: State) -> str:
    """The synthetic topology as a topology file, for the project's own checker."""
    topo = state.topology
    return yaml.safe_dump({
        "version": 1, "name": topo.name,
        "regions": {r.name: {"zones": list(r.zones), "nodes": list(r.nodes)} for r in topo.regions.values()},
        "links": [{"from": k.src, "to": k.dst, "capacity": k.capacity, "latency": k.latency, "cost": k.cost,
                   "quota": k.quota, "overhead": k.overhead} for k in topo.links.values()],
        "stores": {s.name: {"uri": s.uri, "home": s.home} for s in topo.stores.values()},
    }, sort_keys=False)


def test_the_same_seed_gives_the_same_world_and_placements() -> None:
    a, b = synthetic(seed=11), synthetic(seed=11)
    assert a.topology.to_dict() == b.topology.to_dict()
    assert a.datasets == b.datasets and a.nodes == b.nodes and a.load == b.load
    ja, jb = jobs(a, 60, seed=5), jobs(b, 60, seed=5)
    assert ja == jb
    # Placements compared whole: every candidate's figures, transfers, nodes and reasons.
    assert pickle.dumps([place(j, a) for j in ja]) == pickle.dumps([place(j, b) for j in jb])
    ra, rb = replay(a, ja), replay(b, jb)
    del ra["seconds"], rb["seconds"]
    assert ra == rb
    # Another seed gives another world.
    c = synthetic(seed=12)
    assert c.datasets != a.datasets and jobs(c, 60, seed=6) != ja


@pytest.mark.parametrize(("regions", "nodes", "datasets", "seed"), SIZES)
def test_the_topology_is_connected_and_valid(regions: int, nodes: int, datasets: int, seed: int) -> None:
    state = synthetic(regions, nodes, datasets, seed)
    topo = state.topology
    assert sorted(topo.regions) == [f"r{i:02d}" for i in range(regions)]
    assert all(len(r.zones) == 2 for r in topo.regions.values())
    assert nx.is_strongly_connected(topo.graph)
    for (src, dst), k in topo.links.items():
        assert (dst, src) in topo.links, f"{src} -> {dst} declared one way only"
        back = topo.links[(dst, src)]
        assert (back.capacity, back.quota, back.latency, back.cost) == (k.capacity, k.quota, k.latency, k.cost)
        assert 1 * GBIT <= k.capacity <= 100 * GBIT
        assert 0 < k.quota <= k.capacity
        assert 0.001 <= k.latency <= 0.080
        assert 0 <= k.cost <= 0.1 and k.overhead == 0.05
    if regions > 2:
        ring = {(f"r{i:02d}", f"r{(i + 1) % regions:02d}") for i in range(regions)}
        assert ring <= set(topo.links)
        assert len(topo.links) > 2 * regions or regions == 3  # chords too (3: the ring is complete)
    assert topo.stores and all(s.home in topo.regions for s in topo.stores.values())
    # The project's own checker accepts it as a topology file.
    assert problems(as_yaml(state)) == []
    # Nodes: all there, each in a zone of its region, listed by its region.
    assert len(state.nodes) == nodes
    for name, n in state.nodes.items():
        assert n.name == name and n.zone in topo.regions[n.region].zones
        assert n.gpus_free is not None and 0 <= n.gpus_free <= 8
        assert name in topo.regions[n.region].nodes
    if nodes >= regions:
        assert all(state.nodes_by_region.get(r) for r in topo.regions)
    if nodes >= 100:
        assert 0.5 < sum(n.cache for n in state.nodes.values()) / nodes < 1
    # Load only on links, never negative.
    assert set(state.load) <= set(topo.links) and all(v >= 0 for v in state.load.values())


@pytest.mark.parametrize(("regions", "nodes", "datasets", "seed"), SIZES)
def test_cached_bytes_never_exceed_the_dataset(regions: int, nodes: int, datasets: int, seed: int) -> None:
    state = synthetic(regions, nodes, datasets, seed)
    assert len(state.datasets) == datasets
    homes = {s.home for s in state.topology.stores.values()}
    for path, d in state.datasets.items():
        assert d.path == path and d.home in homes
        assert 10 * GIB <= d.size <= 10 * TIB
        for region, on in d.cached.items():
            assert region in state.topology.regions and on
            assert sum(on.values()) <= d.size
            assert d.in_region(region) == sum(on.values())
            for node, b in on.items():
                assert b > 0 and state.nodes[node].region == region
    # Some datasets cached nowhere, some in several regions, some whole in a region.
    if datasets >= 100:
        counts = [len(d.cached) for d in state.datasets.values()]
        assert 0 in counts and max(counts) >= 2
        assert any(d.in_region(r) == d.size for d in state.datasets.values() for r in d.cached)


def test_every_job_gets_a_ranking_of_every_region(default: State) -> None:
    job_list = jobs(default, 150, seed=2)
    regions = sorted(default.topology.regions)
    for job in job_list:
        assert 1 <= len(job.datasets) <= 3 and len(set(job.datasets)) == len(job.datasets)
        assert set(job.datasets) <= set(default.datasets)
        assert 1 <= job.pods <= 16 and job.gpus_per_pod in GPUS_PER_POD
        ranked = place(job, default)
        assert sorted(c.region for c in ranked) == regions
        assert [c.feasible for c in ranked] == sorted((c.feasible for c in ranked), reverse=True)
        for c in ranked:
            assert 0 <= c.bytes_local <= c.bytes_total == sum(default.datasets[d].size for d in job.datasets)
            assert sum(t.bytes for t in c.transfers) == c.bytes_to_move
            assert c.feasible == (c.pods_fit >= job.pods)  # every region reaches every home
            assert sum(n.pods for n in c.nodes) == c.pods_fit <= job.pods


def test_replay_summary(default: State) -> None:
    job_list = jobs(default, 100, seed=3)
    r = replay(default, job_list)
    assert r["jobs"] == len(r["placements"]) == len(r["seconds"]) == 100
    assert [p["job"] for p in r["placements"]] == [j.name for j in job_list]
    assert 0 <= r["placed_mostly_local"] <= r["with_mostly_local_region"] <= 100
    assert r["infeasible"] == sum(not p["feasible"] for p in r["placements"])
    assert r["mean_bytes_moved"] == pytest.approx(sum(p["bytes_to_move"] for p in r["placements"]) / 100)
    for p in r["placements"]:
        assert p["ranking"][0] == p["region"] and len(p["ranking"]) == 20
        assert 0 <= p["bytes_over_links"] <= p["bytes_to_move"] == p["bytes_total"] - p["bytes_local"]


def test_a_region_holding_every_byte_ranks_first(default: State) -> None:
    """Datasets entirely cached in exactly one region X, which is also their home, so every
    other region must stage every byte over its links; X has the GPUs. X ranks first.

    Precondition of the model, checked here: X's caches serve faster than any link's quota
    (cache_rate per cache node), else a region with more cache nodes behind a fast link
    could read the moved bytes sooner than X reads its own."""
    state = default
    nodes = state.nodes_by_region
    x = max(state.topology.regions, key=lambda r: (sum(n.cache for n in nodes.get(r, [])), r))
    cache_nodes = [n for n in nodes[x] if n.cache]
    assert len(cache_nodes) * state.cache_rate > max(k.quota for k in state.topology.links.values())
    job = Job("sanity", tuple(sorted(state.datasets))[:3], pods=2, gpus_per_pod=1)
    assert sum(n.gpus_free or 0 for n in nodes[x]) >= job.pods
    before = pickle.dumps(state.datasets)
    datasets = dict(state.datasets)
    for i, path in enumerate(job.datasets):
        d = datasets[path]
        on = cache_nodes[i % len(cache_nodes)].name
        datasets[path] = dataclasses.replace(d, home=x, cached={x: {on: d.size}})
    edited = dataclasses.replace(state, datasets=datasets)
    assert pickle.dumps(state.datasets) == before  # copies were edited, not the shared state
    ranked = place(job, edited)
    assert ranked[0].region == x
    best = ranked[0]
    assert best.feasible and best.bytes_local == best.bytes_total and not best.transfers
    for c in ranked[1:]:
        assert c.bytes_local == 0 and c.staging_seconds > 0 and c.link_bytes
        assert c.score > best.score
    # The same job against the unedited state still ranks every region.
    assert len(place(job, state)) == len(ranked)


def test_main_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--regions", "5", "--nodes", "50", "--datasets", "20", "--jobs", "30", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("5 regions", "50 nodes", "30 jobs", "placed where most of their data is cached",
                 "mean bytes moved per job", "infeasible", "time per decision: median"):
        assert text in out
