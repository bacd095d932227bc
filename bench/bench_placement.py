"""Placement decisions: time per ``place(job, state)`` call over a large synthetic topology.

    .venv/bin/python bench/bench_placement.py [--jobs 1000] [--regions 20] [--nodes 2000]
                                              [--datasets 200] [--seed 1]

The issue's benchmark: placement of 1,000 jobs over a 20-region, 2,000-node
topology, time per decision. Goal: well under 10 ms, so that a scheduler
extender calling :func:`topology.placement.place` never slows the scheduler.

The world and the jobs come from :mod:`simulations.placement` (``synthetic``,
``jobs``: seeded, the same every run). Every call is timed on its own with
``time.perf_counter``; the garbage collector stays on (the extender runs with
it). Side by side, in the same run, because these machines are noisy
(compare the ratios to the goal, not the absolute milliseconds):

* place(): every job against the full state: median, p90, p99, max, and
  decisions per second;
* place() after gc.freeze(): the full run again with the objects alive at that point
  (the state) frozen out of the cyclic garbage collector, which otherwise walks them
  whenever a decision's allocations trigger a full collection: the share of the tail
  that is the collector's;
* place() without nodes: the same jobs against the same state with no nodes
  (GPUs unknown: the scheduler's business), so no node is ranked and no pod
  spread; the difference to the full run is what scoring the nodes costs;
* route(): one call of :func:`topology.router.route` (the per-page router)
  for a 1 GiB miss, from a region with no direct link to the dataset's home,
  with the peer regions that cache it as holders: the unit place() calls
  once per (region, dataset the region lacks).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulations.placement import jobs, synthetic  # noqa: E402
from topology.placement import Job, State, place  # noqa: E402
from topology.router import route  # noqa: E402

GOAL_MS = 10.0
GIB = 1 << 30


def percentile(xs: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def time_place(job_list: Sequence[Job], state: State) -> list[float]:
    out = []
    for job in job_list:
        t = time.perf_counter()
        place(job, state)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def route_case(state: State) -> tuple[str, str, list[str]]:
    """(reader, home, holders) of a 1 GiB miss: a dataset cached in some peer regions, read
    from a region linked directly to none of them nor to the home (every source needs a
    path search), else the best case there is."""
    topo = state.topology

    def direct(reader: str, home: str, holders: list[str]) -> int:
        return sum(topo.link(r, reader) is not None for r in [home, *holders])

    cases = []
    for path in sorted(state.datasets):
        d = state.datasets[path]
        holders = sorted(r for r in d.cached if d.in_region(r) > 0)
        for reader in sorted(topo.regions):
            if reader != d.home and reader not in holders:
                cases.append((direct(reader, d.home, holders), -len(holders), reader, d.home, holders))
    if not cases:
        raise SystemExit("no dataset has a region that lacks it: nothing to route")
    _, _, reader, home, holders = min(cases)
    return reader, home, holders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs to place (1000)")
    ap.add_argument("--regions", type=int, default=20, help="regions of the synthetic topology (20)")
    ap.add_argument("--nodes", type=int, default=2000, help="nodes over the regions (2000)")
    ap.add_argument("--datasets", type=int, default=200, help="datasets (200)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the topology and the jobs (1)")
    ap.add_argument("--route-calls", type=int, default=2000, help="route() calls timed (2000)")
    args = ap.parse_args()
    if args.jobs < 1 or args.regions < 1 or args.nodes < 0 or args.datasets < 1:
        ap.error("--jobs, --regions and --datasets must be at least 1, --nodes at least 0")

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}", flush=True)
    t0 = time.perf_counter()
    state = synthetic(args.regions, args.nodes, args.datasets, args.seed)
    bare = State(state.topology, state.datasets, {}, state.load, state.cache_rate)
    job_list = jobs(state, args.jobs, args.seed)
    built = time.perf_counter() - t0
    topo = state.topology
    lacking = statistics.fmean(
        sum(1 for r in topo.regions for d in dict.fromkeys(j.datasets)
            if state.datasets[d].in_region(r) < state.datasets[d].size)
        for j in job_list)
    print(f"{topo!r}, {len(state.nodes)} nodes, {len(state.datasets)} datasets, {len(job_list)} jobs "
          f"(built in {built:.1f} s); a decision calls route() {lacking:.1f} times on average "
          f"(once per region and dataset the region lacks)", flush=True)

    # Warm up (imports, the nodes-by-region index, networkx's first calls), then measure.
    for job in job_list[:20]:
        place(job, state)
        place(job, bare)
    t = time.perf_counter()
    full = time_place(job_list, state)
    full_wall = time.perf_counter() - t
    t = time.perf_counter()
    nodeless = time_place(job_list, bare)
    nodeless_wall = time.perf_counter() - t
    # The same full run with every object alive now moved out of the collector's sight:
    # what of the tail is the cyclic GC walking the state (gc.freeze, as a server would
    # after loading it).
    gc.collect()
    gc.freeze()
    t = time.perf_counter()
    frozen = time_place(job_list, state)
    frozen_wall = time.perf_counter() - t
    gc.unfreeze()

    reader, home, holders = route_case(state)
    route_ms = time_calls(lambda: route(topo, reader, home, holders, GIB, state.load), args.route_calls)
    sources = route(topo, reader, home, holders, GIB, state.load)
    hops = max(len(src.path) - 1 for src in sources)

    nodes_ms = [a - b for a, b in zip(full, nodeless, strict=True)]  # per job: the same job, both states
    print()
    print(f"time per decision, ms ({len(job_list)} jobs, each call timed on its own):")
    print(f"  {'':<34} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'decisions/s':>12}  "
          f"{'median / goal':>13}")

    def row(name: str, ms: Sequence[float], per_s: float | None) -> None:
        rate = f"{per_s:12.0f}" if per_s is not None else f"{'':>12}"
        print(f"  {name:<34} {statistics.median(ms):8.3f} {percentile(ms, 0.90):8.3f} "
              f"{percentile(ms, 0.99):8.3f} {max(ms):8.3f} {rate}  {statistics.median(ms) / GOAL_MS:13.3f}")

    row("place(), full state", full, len(full) / full_wall)
    row("place(), full state, gc.freeze()", frozen, len(frozen) / frozen_wall)
    row("place(), no nodes", nodeless, len(nodeless) / nodeless_wall)
    row("  nodes' share (full - no nodes)", nodes_ms, None)
    row("route(), one 1 GiB miss", route_ms, None)
    share = statistics.median(nodes_ms) / statistics.median(full)
    print(f"  route(): {reader} lacks a dataset homed in {home} and cached in {len(holders)} peer "
          f"region(s): {len(sources)} sources ranked, paths of up to {hops} hops; "
          f"{args.route_calls} calls")
    print(f"  scoring the nodes is {share:.0%} of the median decision")

    # What the decision buys: the placed region against a data-blind choice (the region
    # with the most free GPUs where the pods fit, what a GPU-first scheduler does).
    free: dict[str, int] = {}
    for n in state.nodes.values():
        free[n.region] = free.get(n.region, 0) + (n.gpus_free or 0)
    placed_link = blind_link = 0
    placed_stage: list[float] = []
    blind_stage: list[float] = []
    for job in job_list:
        ranked = place(job, state)
        best = ranked[0]
        fits = [c for c in ranked if c.feasible] or ranked
        blind = max(fits, key=lambda c: (free.get(c.region, 0), c.region))
        placed_link += sum(best.link_bytes.values())
        blind_link += sum(blind.link_bytes.values())
        placed_stage.append(best.staging_seconds)
        blind_stage.append(blind.staging_seconds)
    print()
    print("what placement buys (the same jobs; data-blind = the region with the most free GPUs that fits):")
    print(f"  bytes over links, all jobs: placed {placed_link / (1 << 40):.1f} TiB, data-blind "
          f"{blind_link / (1 << 40):.1f} TiB: placed / data-blind {placed_link / max(1, blind_link):.3f}")
    print(f"  staging ETA, median: placed {statistics.median(placed_stage):.0f} s, data-blind "
          f"{statistics.median(blind_stage):.0f} s; p90: {percentile(placed_stage, 0.9):.0f} s vs "
          f"{percentile(blind_stage, 0.9):.0f} s")

    print()
    print("goals:")

    def goal(text: str, value: float, ok: bool | None, target: str) -> None:
        mark = "    " if ok is None else ("PASS" if ok else "MISS")
        print(f"  {mark}  {text:<52} {value:8.3f}  ({target})")

    med, p99, worst = statistics.median(full), percentile(full, 0.99), max(full)
    goal("place(): median ms / goal", med / GOAL_MS, med / GOAL_MS <= 0.5,
         f"goal {GOAL_MS:g} ms; 'well under': <= 0.5")
    goal("place(): p99 ms / goal", p99 / GOAL_MS, p99 <= GOAL_MS, f"<= 1: the tail under {GOAL_MS:g} ms")
    goal("place(): max ms / goal", worst / GOAL_MS, None, "information")
    goal("place() after gc.freeze(): p99 ms / goal", percentile(frozen, 0.99) / GOAL_MS, None, "information")
    goal("place() without nodes: median ms / goal", statistics.median(nodeless) / GOAL_MS, None, "information")
    goal("route(), 1 GiB miss: median ms / goal", statistics.median(route_ms) / GOAL_MS, None, "information")
    print(f"total time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
