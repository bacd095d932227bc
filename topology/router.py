"""Where a region gets a page it does not hold: a pure function.

``route(topo, reader, home, holders, size, load)`` ranks the sources of one
page missing in region ``reader``:

* the cache of every other region in ``holders`` (regions whose owners hold
  the page, as they answered), and
* the home under-store of the page's mount, in region ``home``,

each reached over the path the network carries its bytes on (:func:`network_path`:
the direct link, else the least-latency path; the mesh does not relay). A source's
*score* is what moving ``size`` bytes over that path costs, in seconds::

    score = sum(latency)                           one round trip of setup
          + size / min(headroom of each link)      transfer time under the quotas
          + cost_weight * sum(cost) * size / GiB   money, as seconds (routing.cost_weight)

where a link's headroom is its quota minus the reader region's current use
of it (``load``), floored at 5 % of the quota so that a busy link is slow,
not unusable. Sources are returned cheapest first; the caller tries them in
order and falls back to the next on failure. A source the topology cannot
reach is left out. Ties go to caches before the under-store (a cache read
spares the under-store a request), then to region name, so every node of a
region (and every simulation) ranks the same way.

The function touches no network, clock or global state: the daemon calls it
per page and ``simulations/`` call it to replay workloads.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import Link, Topology

GIB = float(1 << 30)
MIN_HEADROOM = 0.05  # a saturated link still counts as this share of its quota


@dataclass(frozen=True)
class Source:
    """One way to get the page into the reader's region."""

    kind: str  # "cache" (a peer region's cache) | "store" (the home under-store)
    region: str  # the region the bytes come from
    path: tuple[str, ...]  # regions the bytes cross, source first, reader last
    seconds: float  # latency + transfer time under the quotas
    cost: float  # cost units for this page
    score: float

    @property
    def links(self) -> list[tuple[str, str]]:
        """The (src, dst) link directions the bytes cross."""
        return list(itertools.pairwise(self.path))

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.region}"


def network_path(topo: Topology, src: str, dst: str) -> list[str] | None:
    """The regions a transfer from ``src`` to ``dst`` crosses: the direct link when there
    is one, else the least-latency path. The mesh does not relay bytes through a third
    region: a connection goes where the network routes it, so a source's path (and the
    quotas its bytes are charged to) is the network's, and the router chooses between
    *sources*, not between paths to one source."""
    if src == dst:
        return [src] if src in topo.regions else None
    if topo.link(src, dst) is not None:
        return [src, dst]
    return topo.path(src, dst)


def path_links(topo: Topology, path: Iterable[str]) -> list[Link]:
    hops = list(path)
    out = []
    for a, b in itertools.pairwise(hops):
        link = topo.link(a, b)
        if link is None:
            raise ValueError(f"no link {a} -> {b} in the topology")
        out.append(link)
    return out


def price(topo: Topology, path: tuple[str, ...], size: int,
          load: Mapping[tuple[str, str], float] | None = None) -> tuple[float, float, float]:
    """(seconds, cost, score) of moving ``size`` bytes along ``path``."""
    links = path_links(topo, path)
    if not links:
        return 0.0, 0.0, 0.0
    latency = sum(link.latency for link in links)
    headroom = min(max(link.quota - (load or {}).get((link.src, link.dst), 0.0), link.quota * MIN_HEADROOM)
                   for link in links)
    seconds = latency + (size / headroom if headroom > 0 else float("inf"))
    cost = sum(link.cost for link in links) * size / GIB
    return seconds, cost, seconds + topo.cost_weight * cost


def route(topo: Topology, reader: str, home: str, holders: Iterable[str] = (), size: int = 4 << 20,
          load: Mapping[tuple[str, str], float] | None = None) -> list[Source]:
    """Sources of a page missing in ``reader``, cheapest first (see the module doc)."""
    found: list[Source] = []
    candidates = [("cache", r) for r in sorted(set(holders)) if r != reader] + [("store", home)]
    for kind, region in candidates:
        if region not in topo.regions and not (kind == "store" and region == reader):
            continue
        hops = network_path(topo, region, reader) if region != reader else [reader]
        if hops is None:
            continue
        path = tuple(hops)
        seconds, cost, score = price(topo, path, size, load)
        found.append(Source(kind, region, path, seconds, cost, score))
    found.sort(key=lambda s: (s.score, s.kind != "cache", s.region))
    return found


def worth_asking(topo: Topology, reader: str, home: str, size: int = 4 << 20,
                 load: Mapping[tuple[str, str], float] | None = None) -> list[str]:
    """Peer regions whose cache would beat the home under-store if it held the page:
    the only regions worth asking which pages they hold."""
    others = [r for r in topo.regions if r != reader]
    ranked = route(topo, reader, home, others, size, load)
    out = []
    for s in ranked:
        if s.kind == "store":
            break
        out.append(s.region)
    return out
