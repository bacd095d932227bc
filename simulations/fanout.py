"""Fan-out of one dataset to many regions: bytes per link, with and without the mesh.

    python -m simulations.fanout --topology examples/topology.yaml \\
        --dataset-gib 1 --readers region-b:20,region-c:5@30 --page-mib 4

Each reader region reads the whole dataset, page by page, from its start time
(``REGION:READERS[@START_SECONDS]``, start 0 by default). The model follows
the daemon:

* **One fetch per page and region** (single-flight at the page's owner): a
  region's readers share its fetch, so the number of readers changes nothing
  on the links. It only scales the *direct* column: every reader going to the
  home store itself, ``readers x dataset`` bytes per region.
* **The router decides.** For each page a region does not hold, it calls
  :func:`topology.router.route` -- the function ``meshd`` calls -- with the
  regions that hold the page *at that moment* as holders, and takes the first
  source. ``load`` is empty, as in the daemon (a region's own transfers queue
  for its quota; they do not push it onto a dearer link).
* **Caches fill as pages arrive.** A region fetches one page at a time; a page
  arrives ``source.seconds`` (the router's own estimate: latency plus transfer
  time under the quota) after the fetch starts, and from then on the region is
  a holder other regions may be routed to. A page still in flight is not held
  (meshd asks peers which pages they *hold*).

No network, no clock, no randomness: the same input gives the same output.
Reads inside a region are not timed (the topology has no intra-region figures),
so readers in the home region hold each page as soon as they start. The
finish times add up the router's per-page estimates, one page in flight per
region: a yardstick to compare topologies, not a benchmark.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from topology.model import Topology, TopologyError, format_duration, load
from topology.router import network_path, route

__all__ = ["main", "parse_readers", "render", "simulate"]

GIB = float(1 << 30)
MIB = float(1 << 20)


def simulate(topo: Topology, home: str, readers: Mapping[str, int], dataset_bytes: int, page: int,
             start: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Replay ``readers`` (region -> reader count) reading ``dataset_bytes`` homed in ``home``.

    Returns a JSON-able dict: ``links`` (one entry per link direction that
    moved bytes, mesh or direct: ``bytes``, ``ratio`` to the unique bytes,
    ``cost``, and the same for ``direct_*``), ``regions`` (per reader region:
    ``bytes_in`` over its inbound links, ``sources`` used as ``{"cache:r" |
    "store:r": pages}``, ``finish`` in seconds, ``direct_bytes_in``) and
    ``total``. ValueError for a region the topology does not know, or one
    that cannot reach the store or any holder.
    """
    start = dict(start or {})
    _check_inputs(topo, home, readers, dataset_bytes, page, start)
    pages = math.ceil(dataset_bytes / page)
    sizes = [min(page, dataset_bytes - i * page) for i in range(pages)]
    regions, direct_bytes, queue = _start_readers(topo, home, readers, dataset_bytes, pages, start)
    mesh_bytes = _replay_pages(topo, home, sizes, regions, queue)
    links = _link_figures(topo, mesh_bytes, direct_bytes, dataset_bytes)
    for r in regions.values():
        r["ratio"] = _ratio(r["bytes_in"], dataset_bytes)
        r["sources"] = dict(sorted(r["sources"].items()))
    return {
        "topology": topo.name,
        "home": home,
        "unique_bytes": dataset_bytes,
        "page": page,
        "pages": pages,
        "links": links,
        "regions": regions,
        "total": {
            "bytes": sum(x["bytes"] for x in links),
            "direct_bytes": sum(x["direct_bytes"] for x in links),
            "cost": sum(x["cost"] for x in links),
            "direct_cost": sum(x["direct_cost"] for x in links),
            "finish": max((r["finish"] for r in regions.values()), default=0.0),
        },
    }


# Replay events: (time, rank, region, page index); the rank (order given) breaks ties.
_Event = tuple[float, int, str, int]


def _check_inputs(topo: Topology, home: str, readers: Mapping[str, int], dataset_bytes: int, page: int,
                  start: Mapping[str, float]) -> None:
    """ValueError for a size out of range, an unknown region or a negative reader count."""
    if page <= 0:
        raise ValueError(f"page size must be above 0, got {page}")
    if dataset_bytes < 0:
        raise ValueError(f"dataset size must be >= 0, got {dataset_bytes}")
    for region in [home, *readers, *start]:
        if region not in topo.regions:
            raise ValueError(f"unknown region {region!r}; the topology has {', '.join(sorted(topo.regions))}")
    for region, count in readers.items():
        if count < 0:
            raise ValueError(f"reader count of {region} must be >= 0, got {count}")


def _start_readers(topo: Topology, home: str, readers: Mapping[str, int], dataset_bytes: int, pages: int,
                   start: Mapping[str, float]
                   ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], int], list[_Event]]:
    """Each reader region's figures at its start, the bytes direct reads move per link,
    and the queue of first-page events."""
    regions: dict[str, dict[str, Any]] = {}
    direct_bytes: dict[tuple[str, str], int] = {}
    queue: list[_Event] = []
    for rank, (region, count) in enumerate(readers.items()):
        t0 = float(start.get(region, 0.0))
        regions[region] = {"readers": count, "start": t0, "bytes_in": 0, "ratio": 0.0,
                           "sources": {}, "finish": t0, "direct_bytes_in": 0}
        if count > 0 and pages:
            heapq.heappush(queue, (t0, rank, region, 0))
        if count > 0 and region != home:
            hops = network_path(topo, home, region)
            if hops is None:
                raise ValueError(f"region {region} cannot reach the store's home {home}")
            for a, b in itertools.pairwise(hops):
                direct_bytes[(a, b)] = direct_bytes.get((a, b), 0) + count * dataset_bytes
            regions[region]["direct_bytes_in"] = count * dataset_bytes
    return regions, direct_bytes, queue


def _replay_pages(topo: Topology, home: str, sizes: Sequence[int], regions: dict[str, dict[str, Any]],
                  queue: list[_Event]) -> dict[tuple[str, str], int]:
    """Run the events in time order, each region fetching its pages one at a time through the
    router; updates ``regions`` (bytes in, sources, finish) and returns the mesh's bytes per link."""
    mesh_bytes: dict[tuple[str, str], int] = {}
    arrived: list[dict[str, float]] = [{} for _ in sizes]  # page -> region -> arrival time
    while queue:
        now, rank, region, i = heapq.heappop(queue)
        holders = [r for r, at in arrived[i].items() if at <= now and r != region]
        sources = route(topo, region, home, holders, sizes[i])
        if not sources:
            raise ValueError(f"region {region} can reach neither the store's home {home} "
                             f"nor any region holding page {i}")
        best = sources[0]
        for link in best.links:
            mesh_bytes[link] = mesh_bytes.get(link, 0) + sizes[i]
        r = regions[region]
        if best.links:
            r["bytes_in"] += sizes[i]
        r["sources"][best.name] = r["sources"].get(best.name, 0) + 1
        done = now + best.seconds
        arrived[i][region] = done
        r["finish"] = done
        if i + 1 < len(sizes):
            heapq.heappush(queue, (done, rank, region, i + 1))
    return mesh_bytes


def _ratio(n: float, unique_bytes: int) -> float:
    unique = float(unique_bytes)
    return n / unique if unique else 0.0


def _link_figures(topo: Topology, mesh_bytes: Mapping[tuple[str, str], int],
                  direct_bytes: Mapping[tuple[str, str], int], unique_bytes: int) -> list[dict[str, Any]]:
    """One entry per link direction that moved bytes: bytes, ratio and cost, mesh and direct."""
    links = []
    for key in sorted(set(mesh_bytes) | set(direct_bytes)):
        figures = topo.links[key]
        mesh, direct = mesh_bytes.get(key, 0), direct_bytes.get(key, 0)
        links.append({"link": f"{key[0]}>{key[1]}", "src": key[0], "dst": key[1],
                      "bytes": mesh, "ratio": _ratio(mesh, unique_bytes), "cost": figures.cost * mesh / GIB,
                      "direct_bytes": direct, "direct_ratio": _ratio(direct, unique_bytes),
                      "direct_cost": figures.cost * direct / GIB})
    return links


# ---- command line ----------------------------------------------------------------------------

def parse_readers(text: str) -> tuple[dict[str, int], dict[str, float]]:
    """``"region-b:20,region-c:5@30"`` -> ({"region-b": 20, "region-c": 5}, {"region-c": 30.0})."""
    readers: dict[str, int] = {}
    start: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        spec, _, at = item.partition("@")
        region, sep, count = spec.partition(":")
        try:
            n = int(count) if sep else 1
            t = float(at) if at else 0.0
        except ValueError:
            raise ValueError(f"bad reader spec {item!r}: expected REGION[:READERS][@START_SECONDS]") from None
        if not region or n < 0 or not math.isfinite(t) or t < 0:
            raise ValueError(f"bad reader spec {item!r}: expected REGION[:READERS][@START_SECONDS]")
        if region in readers:
            raise ValueError(f"region {region} is listed twice in --readers")
        readers[region] = n
        if at:
            start[region] = t
    if not readers:
        raise ValueError("--readers names no region")
    return readers, start


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024.0)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _table(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def render(result: dict[str, Any]) -> str:
    """The result as text tables: per link, per region, totals."""
    unique = result["unique_bytes"]
    out = [f"dataset {_size(unique)} homed in {result['home']}: {result['pages']} pages of "
           f"{_size(result['page'])}" + (f" (topology {result['topology']})" if result["topology"] else ""),
           ""]
    rows = [["link", "mesh", "x unique", "cost", "direct", "x unique", "cost"]]
    for x in result["links"]:
        rows.append([x["link"], _size(x["bytes"]), f"{x['ratio']:.2f}", f"{x['cost']:.3f}",
                     _size(x["direct_bytes"]), f"{x['direct_ratio']:.2f}", f"{x['direct_cost']:.3f}"])
    t = result["total"]
    rows.append(["all links", _size(t["bytes"]), f"{t['bytes'] / unique if unique else 0:.2f}",
                 f"{t['cost']:.3f}", _size(t["direct_bytes"]),
                 f"{t['direct_bytes'] / unique if unique else 0:.2f}", f"{t['direct_cost']:.3f}"])
    out += _table(rows, {1, 2, 3, 4, 5, 6})
    out.append("")
    rows = [["region", "readers", "start", "into region", "x unique", "direct", "finish", "sources (pages)"]]
    for name, r in result["regions"].items():
        sources = ", ".join(f"{s} {n}" for s, n in r["sources"].items()) or "-"
        rows.append([name, str(r["readers"]), format_duration(r["start"]), _size(r["bytes_in"]),
                     f"{r['ratio']:.2f}", _size(r["direct_bytes_in"]), format_duration(r["finish"]),
                     sources])
    out += _table(rows, {1, 2, 3, 4, 5, 6})
    if t["bytes"]:
        out += ["", f"the mesh moves {t['direct_bytes'] / t['bytes']:.1f}x fewer bytes across links "
                    f"than direct reads ({_size(t['bytes'])} instead of {_size(t['direct_bytes'])})"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simulations.fanout",
        description="Replay regions reading one dataset through the mesh's router; print the "
                    "bytes per link, with the mesh (one fetch per page and region) and direct "
                    "(every reader to the home store).")
    p.add_argument("--topology", required=True, metavar="FILE", help="topology file (docs/TOPOLOGY.md)")
    p.add_argument("--dataset-gib", type=float, default=1.0, metavar="GIB", help="dataset size (default 1)")
    p.add_argument("--page-mib", type=float, default=4.0, metavar="MIB", help="page size (default 4)")
    p.add_argument("--readers", required=True, metavar="SPEC",
                   help="REGION[:READERS][@START_SECONDS],... e.g. region-b:20,region-c:5@30")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", metavar="NAME", help="the dataset's store (its home region); "
                                                       "default: the topology's only store")
    where.add_argument("--home", metavar="REGION", help="the dataset's home region")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        topo = load(args.topology)
    except TopologyError as e:
        print("\n".join(str(x) for x in e.problems), file=sys.stderr)
        return 2
    if args.home:
        home = args.home
    elif args.store:
        if args.store not in topo.stores:
            p.error(f"no store {args.store!r} in {args.topology} (stores: {', '.join(topo.stores) or 'none'})")
        home = topo.stores[args.store].home
    elif len(topo.stores) == 1:
        home = next(iter(topo.stores.values())).home
    else:
        p.error(f"{args.topology} has {len(topo.stores)} stores: name one with --store, or give --home")
    if not (math.isfinite(args.dataset_gib) and args.dataset_gib >= 0):
        p.error("--dataset-gib must be a number >= 0")
    if not (math.isfinite(args.page_mib) and args.page_mib > 0):
        p.error("--page-mib must be a number above 0")
    try:
        readers, start = parse_readers(args.readers)
        result = simulate(topo, home, readers, int(args.dataset_gib * GIB), max(1, int(args.page_mib * MIB)),
                          start)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
