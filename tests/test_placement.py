"""The placement function (``topology/placement.py``): scenarios with known answers.

Every expected figure below is computed by hand from the topology's numbers
(quota, overhead, latency), not read back from the function.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.model import Link, Region, Store, Topology, load
from topology.placement import Dataset, Job, Node, State, place

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "topology.yaml"
GIB = 1 << 30
MBIT = 1e6 / 8


def three(quota_ab: float = 400 * MBIT, quota_ac: float = 100 * MBIT, quota_bc: float = 400 * MBIT,
          overhead: float = 0.05) -> Topology:
    def both(a: str, b: str, quota: float, latency: float, cost: float) -> list[Link]:
        return [Link(a, b, 1e9 / 8, latency, cost, quota, overhead), Link(b, a, 1e9 / 8, latency, cost, quota, overhead)]

    return Topology([Region("A", zones=("a1",)), Region("B", zones=("b1", "b2")), Region("C", zones=("c1",))],
                    both("A", "B", quota_ab, 0.020, 0.05) + both("A", "C", quota_ac, 0.030, 0.01)
                    + both("B", "C", quota_bc, 0.005, 0.01),
                    [Store("lake", "A", "s3://lake")])


def nodes(spec: dict[str, tuple[str, str, int]]) -> dict[str, Node]:
    return {name: Node(name, region, zone, gpus, cache=True) for name, (region, zone, gpus) in spec.items()}


def test_data_cached_in_b_with_gpus_in_a_and_b_goes_to_b() -> None:
    topo = three()
    size = 100 * GIB
    ds = Dataset("s3://lake/imagenet", size, "A", {"B": {"b-1": 60 * GIB, "b-2": 40 * GIB}})
    state = State(topo, {ds.path: ds}, nodes({"a-1": ("A", "a1", 8), "a-2": ("A", "a1", 8),
                                              "b-1": ("B", "b1", 8), "b-2": ("B", "b2", 8)}))
    ranked = place(Job("train", (ds.path,), pods=2, gpus_per_pod=4), state)
    best = ranked[0]
    assert best.region == "B"
    assert best.bytes_local == size and best.bytes_to_move == 0 and best.staging_seconds == 0
    assert best.feasible and best.pods_fit == 2
    # the node holding more of the data first; the two pods spread, one per node
    assert [(n.name, n.pods) for n in best.nodes] == [("b-1", 1), ("b-2", 1)]
    a = next(c for c in ranked if c.region == "A")
    assert a.bytes_local == 0 and a.feasible
    # A is the home: it reads its own store, over no link (cheaper than B's cache over B->A)
    assert [t.source for t in a.transfers] == ["store:A"] and a.link_bytes == {}
    # C has no GPUs: infeasible, last
    assert ranked[-1].region == "C" and not ranked[-1].feasible


def test_home_region_without_gpus_goes_where_staging_is_cheapest_with_eta_from_quota() -> None:
    # data only in A's under-store; no GPUs in A. B is reached at 400 Mbit/s, C at 100 Mbit/s.
    topo = three(quota_ab=400 * MBIT, quota_ac=100 * MBIT)
    size = 10 * GIB
    ds = Dataset("s3://lake/ckpt", size, "A")
    state = State(topo, {ds.path: ds}, nodes({"a-1": ("A", "a1", 0), "b-1": ("B", "b1", 8),
                                              "c-1": ("C", "c1", 8)}))
    ranked = place(Job("ft", (ds.path,), pods=1, gpus_per_pod=8), state)
    assert [c.region for c in ranked] == ["B", "C", "A"]
    b, c, a = ranked
    assert not a.feasible and a.pods_fit == 0
    # ETA: the bytes with 5 % framing over the A->B quota, plus the link's latency
    assert b.link_bytes == {("A", "B"): int(size * 1.05)}
    assert b.staging_seconds == pytest.approx(size * 1.05 / (400 * MBIT) + 0.020, rel=1e-9)
    assert c.staging_seconds == pytest.approx(size * 1.05 / (100 * MBIT) + 0.030, rel=1e-9)
    assert b.transfers[0].source == "store:A" and b.transfers[0].path == ("A", "B")
    assert any("staging ETA" in r for r in b.reasons)


def test_current_load_shrinks_headroom_and_can_flip_the_choice() -> None:
    topo = three(quota_ab=400 * MBIT, quota_ac=300 * MBIT)
    size = 10 * GIB
    ds = Dataset("s3://lake/x", size, "A")
    state = State(topo, {ds.path: ds}, nodes({"b-1": ("B", "b1", 8), "c-1": ("C", "c1", 8)}))
    job = Job("j", (ds.path,), 1, 8)
    assert place(job, state)[0].region == "B"
    state.load = {("A", "B"): 350 * MBIT}  # 50 Mbit/s left on A->B
    ranked = place(job, state)
    assert ranked[0].region == "C"
    b = next(c for c in ranked if c.region == "B")
    assert b.staging_seconds == pytest.approx(size * 1.05 / (50 * MBIT) + 0.020, rel=1e-9)
    # a saturated link is floored at 5 % of its quota: slow, never infinite
    state.load = {("A", "B"): 10_000 * MBIT}
    b = next(c for c in place(job, state) if c.region == "B")
    assert b.staging_seconds == pytest.approx(size * 1.05 / (0.05 * 400 * MBIT) + 0.020, rel=1e-9)


def test_peer_cache_supplies_its_share_and_the_store_the_rest() -> None:
    # B holds half the dataset; C reads the half B has from B's cache (b-c is cheap and fast)
    # and the other half from A's store.
    topo = three(quota_ab=400 * MBIT, quota_ac=400 * MBIT, quota_bc=400 * MBIT)
    size = 8 * GIB
    ds = Dataset("s3://lake/half", size, "A", {"B": {"b-1": size // 2}})
    state = State(topo, {ds.path: ds}, nodes({"c-1": ("C", "c1", 8)}))
    c = place(Job("j", (ds.path,), 1, 1), state, regions=["C"])[0]
    assert {t.source: t.bytes for t in c.transfers} == {"cache:B": size // 2, "store:A": size // 2}
    assert c.link_bytes == {("B", "C"): int(size // 2 * 1.05), ("A", "C"): int(size // 2 * 1.05)}
    # the two links work in parallel: the ETA is the slower one, not the sum
    assert c.staging_seconds == pytest.approx(size // 2 * 1.05 / (400 * MBIT) + 0.030, rel=1e-9)
    # a region holding part of the data needs only the rest: C holds a quarter
    ds2 = Dataset(ds.path, size, "A", {"B": {"b-1": size // 2}, "C": {"c-1": size // 4}})
    state2 = State(topo, {ds.path: ds2}, state.nodes)
    c2 = place(Job("j", (ds.path,), 1, 1), state2, regions=["C"])[0]
    assert c2.bytes_local == size // 4 and c2.bytes_to_move == 3 * size // 4
    # B's half overlaps C's quarter as much as chance says: B supplies half of what C lacks
    assert {t.source: t.bytes for t in c2.transfers} == {"cache:B": 3 * size // 8, "store:A": 3 * size // 8}


def test_several_datasets_share_a_link() -> None:
    topo = three()
    d1 = Dataset("/lake/a", 4 * GIB, "A")
    d2 = Dataset("/lake/b", 6 * GIB, "A")
    state = State(topo, {d1.path: d1, d2.path: d2})
    b = place(Job("j", (d1.path, d2.path, d1.path)), state, regions=["B"])[0]
    assert b.bytes_total == 10 * GIB  # a dataset named twice counts once
    assert b.link_bytes == {("A", "B"): int(4 * GIB * 1.05) + int(6 * GIB * 1.05)}
    assert b.staging_seconds == pytest.approx(10 * GIB * 1.05 / (400 * MBIT) + 0.020, rel=1e-6)
    assert b.cost == pytest.approx(0.05 * 10)


def test_unknown_gpus_leave_every_region_feasible_and_rank_by_data() -> None:
    topo = three()
    ds = Dataset("/lake/a", GIB, "A", {"C": {"c-1": GIB}})
    ranked = place(Job("j", (ds.path,), pods=4, gpus_per_pod=8), State(topo, {ds.path: ds}))
    assert all(c.feasible for c in ranked)
    # A is the home (store local, no link) and C holds it all: both stage nothing; B must
    assert {ranked[0].region, ranked[1].region} == {"A", "C"} and ranked[2].region == "B"
    assert any("unknown" in r for r in ranked[0].reasons)


def test_pods_spread_in_rounds_within_gpu_limits() -> None:
    topo = three()
    ds = Dataset("/lake/a", 30 * GIB, "B", {"B": {"b-1": 20 * GIB, "b-2": 10 * GIB}})
    state = State(topo, {ds.path: ds}, nodes({"b-1": ("B", "b1", 8), "b-2": ("B", "b1", 4),
                                              "b-3": ("B", "b2", 8)}))
    b = place(Job("j", (ds.path,), pods=5, gpus_per_pod=4), state, regions=["B"])[0]
    assert [(n.name, n.pods) for n in b.nodes] == [("b-1", 2), ("b-2", 1), ("b-3", 2)]
    assert b.feasible and b.pods_fit == 5
    b = place(Job("j", (ds.path,), pods=6, gpus_per_pod=4), state, regions=["B"])[0]
    assert not b.feasible and b.pods_fit == 5
    assert any("5 of 6 pods fit" in r for r in b.reasons)


def test_unreachable_home_is_never_feasible() -> None:
    topo = Topology([Region("A"), Region("B")], [], [Store("s", "A")])
    ds = Dataset("/x", GIB, "A")
    b = place(Job("j", (ds.path,)), State(topo, {ds.path: ds}), regions=["B"])[0]
    assert not b.feasible and b.staging_seconds == float("inf")
    assert any("cannot reach" in r for r in b.reasons)


def test_example_topology_and_json() -> None:
    topo = load(EXAMPLE)
    ds = Dataset("s3://datasets/x", 2 * GIB, "region-a", {"region-c": {"n1": 2 * GIB}})
    ranked = place(Job("j", (ds.path,)), State(topo, {ds.path: ds}))
    d = ranked[0].to_dict()
    assert d["region"] in ("region-a", "region-c") and d["bytes_to_move"] == 0
    # region-b gets it from region-c's cache (5 ms, cost .01) rather than region-a's store
    b = next(c for c in ranked if c.region == "region-b")
    assert [t.source for t in b.transfers] == ["cache:region-c"]


def test_bad_jobs_are_refused() -> None:
    with pytest.raises(ValueError, match="pods"):
        Job("j", ("/x",), pods=0)
    with pytest.raises(ValueError, match="GPUs"):
        Job("j", ("/x",), gpus_per_pod=-1)
    with pytest.raises(KeyError):
        place(Job("j", ("/missing",)), State(three(), {}))
