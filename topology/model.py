"""The deployment's topology: regions, the links between them, the under-stores' homes.

Operators write one YAML file per deployment (the format, every key and every
check: docs/TOPOLOGY.md; a commented example: examples/topology.yaml).
:func:`parse` turns the text into a :class:`Topology`, whose ``graph`` is a
networkx DiGraph with one node per region and one edge per link direction, or
raises :class:`TopologyError` listing *every* problem, each with its place in
the file (``file:line:col``) and a field path (``links[1].quota``).

How the checking works. The text is *composed* (``yaml.compose``), not
loaded: every value keeps its position, and duplicate mapping keys, which
``yaml.safe_load`` silently collapses to the last one, are still visible. One
``_Checker`` walks the node tree once. Each entry (a region, a link, a store)
is checked on its own; a bad entry is reported and skipped, never raised, so
one mistake cannot hide the next. The checks that need the whole picture
(asymmetric links, regions without links, store homes some region cannot
reach, stores with the same URI) run last, on the links as *declared*, so a
link with a bad figure does not also make its regions look unlinked. Problems
are reported in file order.

Units inside the model: rates in bytes per second, durations in seconds, cost
in cost units per GiB moved, overhead as a fraction of the payload.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import networkx as nx
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "ANY_REGION",
    "DEFAULT_COST_WEIGHT",
    "DEFAULT_OVERHEAD",
    "Link",
    "Problem",
    "Region",
    "Store",
    "Topology",
    "TopologyError",
    "format_duration",
    "format_rate",
    "format_size",
    "load",
    "parse",
    "parse_duration",
    "parse_overhead",
    "parse_rate",
    "problems",
    "read",
]

VERSION = 1
DEFAULT_OVERHEAD = 0.05     # framing charged per payload byte (HTTP, TCP/IP headers, TLS records)
DEFAULT_COST_WEIGHT = 1.0   # seconds of transfer time one cost unit is worth
ANY_REGION = "*"            # store endpoint key: every region without its own entry
GIB = 1 << 30

_TOP_KEYS = ("version", "name", "routing", "regions", "links", "stores")
_ROUTING_KEYS = ("cost_weight",)
_REGION_KEYS = ("zones", "nodes")
_NODE_KEYS = ("selector",)
_LINK_KEYS = ("between", "from", "to", "capacity", "latency", "cost", "quota", "overhead")
_STORE_KEYS = ("uri", "home", "endpoints")

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# ---------------------------------------------------------------- units

def _rate_units() -> dict[str, float]:
    units = {"": 1.0, "B/s": 1.0, "bit/s": 1 / 8, "bps": 1 / 8}
    for power, prefix in enumerate("KMGT", start=1):
        for p in (prefix, prefix.lower()) if prefix == "K" else (prefix,):
            units[f"{p}bit/s"] = 1000.0**power / 8
            units[f"{p}bps"] = 1000.0**power / 8
            units[f"{p}B/s"] = 1000.0**power
        units[f"{prefix}iB/s"] = 1024.0**power
    return units


_RATE_UNITS = _rate_units()
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_NUMBER_WITH_UNIT = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S*)")


def _split(value: Any, what: str, example: str) -> tuple[float, str]:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {what} such as {example}, got {value!r}")
    if isinstance(value, str):
        m = _NUMBER_WITH_UNIT.fullmatch(value.strip())
        if not m:
            raise ValueError(f"expected {what} such as {example}, got {value!r}")
        number, unit = float(m.group(1)), m.group(2)
    else:
        number, unit = float(value), ""
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number, unit


def parse_rate(value: Any) -> float:
    """``"400Mbit/s"`` -> 50e6 (bytes per second). A plain number is bytes per second.

    Bits: ``bit/s Kbit/s Mbit/s Gbit/s Tbit/s`` or ``bps Kbps Mbps Gbps Tbps``;
    bytes: ``B/s KB/s MB/s GB/s TB/s`` (all decimal) and ``KiB/s MiB/s GiB/s TiB/s``.
    """
    number, unit = _split(value, "a rate", "'1Gbit/s' or '400MB/s'")
    if unit not in _RATE_UNITS:
        raise ValueError(f"unknown rate unit {unit!r} in {value!r}; use bit/s, Kbit/s, Mbit/s, "
                         "Gbit/s, Tbit/s (or bps, Kbps, Mbps, Gbps, Tbps), B/s, KB/s, MB/s, GB/s, "
                         "KiB/s, MiB/s, GiB/s, or a plain number of bytes per second")
    return number * _RATE_UNITS[unit]


def parse_duration(value: Any) -> float:
    """``"20ms"`` -> 0.02 (seconds). Units ``us``, ``ms``, ``s``; a plain number is seconds."""
    number, unit = _split(value, "a duration", "'20ms' or '0.5s'")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {value!r}; use us, ms or s "
                         "(a plain number is seconds)")
    return number * _DURATION_UNITS[unit]


def parse_overhead(value: Any) -> float:
    """``"5%"`` or ``0.05`` -> 0.05; 0 <= overhead < 1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number, unit = _split(value.strip()[:-1], "an overhead", "'5%' or 0.05")
        number /= 100
    else:
        number, unit = _split(value, "an overhead", "'5%' or 0.05")
    if unit:
        raise ValueError(f"expected an overhead such as '5%' or 0.05, got {value!r}")
    if number >= 1:
        raise ValueError(f"overhead must be below 1 (100%), got {value!r}; write '5%' or 0.05 "
                         "for five per cent")
    return number


def _figure(v: float) -> str:
    if v >= 100 or v == int(v):
        return f"{v:.0f}"
    return (f"{v:.1f}" if v >= 10 else f"{v:.2f}").rstrip("0").rstrip(".")


def format_rate(bytes_per_s: float) -> str:
    """50e6 -> ``"400 Mbit/s"``: bits per second, decimal prefixes."""
    bits = bytes_per_s * 8
    for unit in ("bit/s", "Kbit/s", "Mbit/s", "Gbit/s"):
        if abs(bits) < 1000:
            return f"{_figure(bits)} {unit}"
        bits /= 1000
    return f"{_figure(bits)} Tbit/s"


def format_size(n: float) -> str:
    """1536 -> ``"1.5 KiB"``: bytes in binary units, one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def plural(n: int, word: str) -> str:
    """``plural(1, "store")`` -> ``"1 store"``, ``plural(3, "store")`` -> ``"3 stores"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_duration(seconds: float) -> str:
    """0.02 -> ``"20 ms"``."""
    if seconds == 0:
        return "0 ms"
    if seconds < 1e-3:
        return f"{_figure(seconds * 1e6)} us"
    if seconds < 1:
        return f"{_figure(seconds * 1e3)} ms"
    return f"{_figure(seconds)} s"


# ---------------------------------------------------------------- model

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology file, and where."""

    where: str      # "path/to/file.yaml:12:5" (1-based), or the source name alone
    field: str      # "links[1].quota", "stores.datasets.home"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}" if self.field else f"{self.where}: {self.message}"


class TopologyError(ValueError):
    """The topology is not valid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Region:
    name: str
    zones: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()                     # node names
    selectors: tuple[dict[str, str], ...] = ()      # label -> value; a node matching all labels of one belongs here


@dataclass(frozen=True)
class Link:
    """One direction of a link between regions."""

    src: str
    dst: str
    capacity: float     # bytes/s the line carries
    latency: float      # seconds, one way
    cost: float         # cost units per GiB moved from src to dst
    quota: float        # bytes/s (on the wire) the mesh may use; <= capacity
    overhead: float     # framing charged per payload byte, as a fraction


@dataclass(frozen=True)
class Store:
    """An under-store: the region it lives in and the endpoint each region uses."""

    name: str
    home: str
    uri: str = ""                                   # mount URIs starting with this use this store
    endpoints: dict[str, str] = dataclasses.field(default_factory=dict)  # region (or "*") -> endpoint URL

    def endpoint_for(self, region: str) -> str | None:
        """The region's own endpoint, else the ``"*"`` one, else None (use the mount's URI as is)."""
        return self.endpoints.get(region, self.endpoints.get(ANY_REGION))


class Topology:
    """A valid topology. Built by :func:`parse`/:func:`load`, or directly (simulations, tests)."""

    def __init__(self, regions: Iterable[Region], links: Iterable[Link], stores: Iterable[Store] = (),
                 *, name: str = "", cost_weight: float = DEFAULT_COST_WEIGHT, text: str = "",
                 source: str = "<topology>") -> None:
        self.name = name
        self.text = text
        self.source = source
        self.cost_weight = cost_weight
        self.regions: dict[str, Region] = {r.name: r for r in regions}
        self.links: dict[tuple[str, str], Link] = {(k.src, k.dst): k for k in links}
        self.stores: dict[str, Store] = {s.name: s for s in stores}
        self._paths: dict[tuple[str, str], list[str] | None] = {}
        self.graph = nx.DiGraph(name=name)
        for r in self.regions.values():
            self.graph.add_node(r.name, zones=r.zones, region=r)
        for k in self.links.values():
            self.graph.add_edge(k.src, k.dst, capacity=k.capacity, latency=k.latency, cost=k.cost,
                                quota=k.quota, overhead=k.overhead, link=k)

    def __repr__(self) -> str:
        return (f"Topology({self.name or self.source!r}: {plural(len(self.regions), 'region')}, "
                f"{plural(len(self.links), 'link')}, {plural(len(self.stores), 'store')})")

    def link(self, src: str, dst: str) -> Link | None:
        return self.links.get((src, dst))

    def path(self, src: str, dst: str) -> list[str] | None:
        """Regions from ``src`` to ``dst`` along the least total latency; None when there is no way."""
        if src == dst:
            return [src]
        key = (src, dst)
        if key not in self._paths:  # a Topology never changes: each path is searched once
            try:
                self._paths[key] = list(nx.shortest_path(self.graph, src, dst, weight="latency"))
            except (nx.NetworkXNoPath, nx.NodeNotFound):
                self._paths[key] = None
        found = self._paths[key]
        return list(found) if found is not None else None

    def store_for(self, uri: str, name: str | None = None) -> Store | None:
        """The store named ``name`` (mount option ``store=``), else the one whose ``uri`` is the
        longest prefix of ``uri`` ending at a path boundary (``s3://data`` matches ``s3://data/x``,
        not ``s3://database``)."""
        if name is not None:
            return self.stores.get(name)
        best: Store | None = None
        for s in self.stores.values():
            prefix = s.uri.rstrip("/")
            if not s.uri or not (uri == prefix or uri.startswith(prefix + "/")):
                continue
            if best is None or len(prefix) > len(best.uri.rstrip("/")):
                best = s
        return best

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: rates in bytes/s, latency in seconds."""
        return {
            "name": self.name,
            "source": self.source,
            "cost_weight": self.cost_weight,
            "regions": {r.name: {"zones": list(r.zones), "nodes": list(r.nodes),
                                 "selectors": [dict(s) for s in r.selectors]}
                        for r in self.regions.values()},
            "links": [{"src": k.src, "dst": k.dst, "capacity": k.capacity, "latency": k.latency,
                       "cost": k.cost, "quota": k.quota, "overhead": k.overhead}
                      for k in self.links.values()],
            "stores": {s.name: {"home": s.home, "uri": s.uri, "endpoints": dict(s.endpoints)}
                       for s in self.stores.values()},
        }


# ---------------------------------------------------------------- entry points

def problems(text: str, source: str = "<topology>") -> list[Problem]:
    """Every problem of the topology text, in file order; [] when valid. Never raises."""
    return _check(text, source)[1]


def parse(text: str, source: str = "<topology>") -> Topology:
    """The topology, or :class:`TopologyError` listing every problem."""
    topo, found = _check(text, source)
    if found or topo is None:
        raise TopologyError(found or [Problem(source, "", "not a valid topology")])
    return topo


def load(path: str | os.PathLike[str]) -> Topology:
    """Read and parse a topology file; the problems' ``where`` starts with ``path`` as given."""
    return parse(read(path), os.fspath(path))


def read(path: str | os.PathLike[str]) -> str:
    """The file's text; :class:`TopologyError` (one problem) when it cannot be read."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise TopologyError([Problem(source, "", f"cannot read {source}: {e.strerror or e}")]) from e
    except UnicodeDecodeError as e:
        raise TopologyError([Problem(source, "", f"not UTF-8 text (byte {e.start}): {e.reason}")]) from e


def _check(text: str, source: str) -> tuple[Topology | None, list[Problem]]:
    checker = _Checker(text, source)
    try:
        topo = checker.run()
    except Exception as e:  # a bug here must not take down `validate` or a node's watch
        checker.add(None, "", f"internal error while checking ({type(e).__name__}: {e}); please report it")
        topo = None
    return topo, checker.sorted_problems()


# ---------------------------------------------------------------- the checker

def _path(parent: str, key: str) -> str:
    """``regions`` + ``region-a`` -> ``regions.region-a``; other keys are quoted: ``endpoints["*"]``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{parent}.{key}" if parent else key


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
        return "nothing"
    if isinstance(node, ScalarNode) and node.tag.endswith((":int", ":float", ":bool")):
        return str(node.value)
    return repr(node.value)


def _unknown(key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}"


_Entry = tuple[ScalarNode, Node]     # (key node, value node)


class _Checker:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.found: list[tuple[tuple[int, int], Problem]] = []
        self.constructor = SafeConstructor()
        self.region_keys: dict[str, ScalarNode] = {}
        self.node_regions: dict[str, str] = {}
        # (src, dst) -> (index in links, link node): every direction declared, valid figures or not
        self.declared: dict[tuple[str, str], tuple[int, Node]] = {}
        self.in_links: set[str] = set()     # regions named by some link, even a broken one

    # -- reporting

    def add(self, node: Node | None, field: str, message: str) -> None:
        if node is None:
            self.found.append(((0, 0), Problem(self.source, field, message)))
            return
        mark = node.start_mark
        where = f"{self.source}:{mark.line + 1}:{mark.column + 1}"
        self.found.append(((mark.line, mark.column), Problem(where, field, message)))

    def sorted_problems(self) -> list[Problem]:
        return [p for _, p in sorted(self.found, key=lambda item: item[0])]

    # -- shapes

    def mapping(self, node: Node, field: str, allowed: tuple[str, ...] | None) -> dict[str, _Entry] | None:
        """The mapping's entries by key; None (reported) when not a mapping; null is empty.
        Duplicate keys and keys outside ``allowed`` are reported and dropped."""
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.add(node, field, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, _Entry] = {}
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag == _MERGE_TAG:
                self.add(k, field, "merge keys (<<) are not supported in a topology file")
                continue
            if not isinstance(k, ScalarNode) or k.tag == _NULL_TAG or k.value == "":
                self.add(k, field, f"expected a name as key, got {_kind(k)}")
                continue
            where = _path(field, k.value)
            if k.value in out:
                first = out[k.value][0].start_mark.line + 1
                self.add(k, where, f"duplicate key {k.value!r} (first at line {first}); "
                                   "YAML would silently keep only the last one")
                continue
            if allowed is not None and k.value not in allowed:
                self.add(k, where, _unknown(k.value, allowed))
                continue
            out[k.value] = (k, v)
        return out

    def sequence(self, node: Node, field: str) -> list[Node] | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return []
        if not isinstance(node, SequenceNode):
            self.add(node, field, f"expected a list, got {_kind(node)}")
            return None
        return list(node.value)

    def name(self, node: Node, field: str, what: str = "a name") -> str | None:
        """A scalar's text as written (so ``on`` stays "on" and ``1`` stays "1")."""
        if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG or node.value.strip() == "":
            self.add(node, field, f"expected {what}, got {_kind(node)}")
            return None
        return str(node.value)

    def figure(self, node: Node, field: str, parse: Callable[[Any], float]) -> float | None:
        if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG:
            self.add(node, field, f"expected a value, got {_kind(node)}")
            return None
        try:
            return parse(self.constructor.construct_object(node, deep=True))
        except (ValueError, yaml.YAMLError) as e:
            self.add(node, field, str(e))
            return None

    def region_ref(self, node: Node, field: str) -> str | None:
        name = self.name(node, field, "a region name")
        if name is not None and name not in self.region_keys:
            near = difflib.get_close_matches(name, list(self.region_keys), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            declared = ", ".join(self.region_keys) or "none"
            self.add(node, field, f"unknown region {name!r}{hint}; declared regions: {declared}")
            return None
        return name

    # -- sections

    def run(self) -> Topology | None:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            context = e.context or ""
            if context and e.context_mark is not None and e.problem_mark is not None \
                    and e.context_mark.line != e.problem_mark.line:
                context += f" (from line {e.context_mark.line + 1})"
            message = "invalid YAML: " + ", ".join(str(s) for s in (context, e.problem) if s)
            if mark is None:
                self.add(None, "", message)
            else:
                where = f"{self.source}:{mark.line + 1}:{mark.column + 1}"
                self.found.append(((mark.line, mark.column), Problem(where, "", message)))
            return None
        except yaml.YAMLError as e:     # e.g. a control character (ReaderError: no mark)
            self.add(None, "", f"invalid YAML: {e}")
            return None
        if root is None:
            self.add(None, "", "empty file: expected a mapping with version, regions, links and stores")
            return None
        if not isinstance(root, MappingNode):
            self.add(root, "", f"the top level must be a mapping (version, name, routing, regions, "
                               f"links, stores), got {_kind(root)}")
            return None
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return None

        if "version" in top:
            node = top["version"][1]
            if not (isinstance(node, ScalarNode) and node.tag.endswith(":int") and node.value == str(VERSION)):
                self.add(node, "version", f"unsupported version {_kind(node)}; this build reads version {VERSION}")
        name = ""
        if "name" in top:
            name = self.name(top["name"][1], "name", "a deployment name") or ""
        cost_weight = DEFAULT_COST_WEIGHT
        if "routing" in top:
            routing = self.mapping(top["routing"][1], "routing", _ROUTING_KEYS) or {}
            if "cost_weight" in routing:
                w = self.figure(routing["cost_weight"][1], "routing.cost_weight", _plain_number)
                cost_weight = cost_weight if w is None else w

        if "regions" not in top:
            self.add(root, "regions", "missing required key 'regions' (region name -> zones and nodes)")
        regions = self.regions(top["regions"][1]) if "regions" in top else []
        links = self.links(top["links"][1]) if "links" in top else []
        stores, homes, uris = self.stores(top["stores"][1]) if "stores" in top else ([], {}, {})
        self.whole(homes, uris)
        if self.found:
            return None
        return Topology(regions, links, stores, name=name, cost_weight=cost_weight, text=self.text,
                        source=self.source)

    def regions(self, node: Node) -> list[Region]:
        entries = self.mapping(node, "regions", None)
        if entries is None:
            return []
        if not entries:
            self.add(node, "regions", "no regions declared")
        # Every name is known before any body is checked, so a bad body does not also
        # make the links to its region "unknown".
        for name, (k, _) in entries.items():
            if name == ANY_REGION:
                self.add(k, _path("regions", name), "'*' cannot name a region (in store endpoints it "
                                                    "means every other region)")
            else:
                self.region_keys[name] = k
        out = []
        for name, (_, v) in entries.items():
            if name == ANY_REGION:
                continue
            field = _path("regions", name)
            body = self.mapping(v, field, _REGION_KEYS)
            if body is None:
                continue
            zones = self.names(body["zones"][1], f"{field}.zones", "a zone name") if "zones" in body else []
            nodes: list[str] = []
            selectors: list[dict[str, str]] = []
            if "nodes" in body:
                self.nodes(name, body["nodes"][1], f"{field}.nodes", nodes, selectors)
            out.append(Region(name, tuple(zones), tuple(nodes), tuple(selectors)))
        return out

    def names(self, node: Node, field: str, what: str) -> list[str]:
        items = self.sequence(node, field)
        out: list[str] = []
        for i, item in enumerate(items or []):
            n = self.name(item, f"{field}[{i}]", what)
            if n is not None and n in out:
                self.add(item, f"{field}[{i}]", f"{n!r} is listed twice")
            elif n is not None:
                out.append(n)
        return out

    def nodes(self, region: str, node: Node, field: str, names: list[str],
              selectors: list[dict[str, str]]) -> None:
        for i, item in enumerate(self.sequence(node, field) or []):
            where = f"{field}[{i}]"
            if isinstance(item, MappingNode):
                body = self.mapping(item, where, _NODE_KEYS)
                if body is None:
                    continue
                if "selector" not in body:
                    self.add(item, where, "expected a node name or {selector: {label: value}}")
                    continue
                labels = self.mapping(body["selector"][1], f"{where}.selector", None)
                if labels is None:
                    continue
                if not labels:
                    self.add(body["selector"][1], f"{where}.selector",
                             "empty selector: give at least one label: value")
                    continue
                selector = {}
                for label, (_, v) in labels.items():
                    value = self.name(v, _path(f"{where}.selector", label), "a label value")
                    if value is not None:
                        selector[label] = value
                selectors.append(selector)
                continue
            n = self.name(item, where, "a node name or {selector: {label: value}}")
            if n is None:
                continue
            if n in self.node_regions:
                other = self.node_regions[n]
                self.add(item, where, f"node {n!r} is already listed in region {other}"
                         if other != region else f"node {n!r} is listed twice")
                continue
            self.node_regions[n] = region
            names.append(n)

    def links(self, node: Node) -> list[Link]:
        out = []
        for i, item in enumerate(self.sequence(node, "links") or []):
            field = f"links[{i}]"
            body = self.mapping(item, field, _LINK_KEYS)
            if body is None:
                continue
            directions = self.directions(item, body, field)
            figures = self.figures(item, body, field)
            for src, dst in directions:
                if (src, dst) in self.declared:
                    j, first = self.declared[(src, dst)]
                    self.add(item, field, f"link {src} -> {dst} is declared twice (first in links[{j}] "
                                          f"at line {first.start_mark.line + 1})")
                    continue
                self.declared[(src, dst)] = (i, item)
                if figures is not None:
                    out.append(Link(src, dst, *figures))
        return out

    def directions(self, item: Node, body: dict[str, _Entry], field: str) -> list[tuple[str, str]]:
        one_way = "from" in body or "to" in body
        if "between" in body and one_way:
            self.add(item, field, "give either between: [A, B] (both directions) or from: A and to: B "
                                  "(one direction), not both")
            return []
        if "between" in body:
            node = body["between"][1]
            ends = self.sequence(node, f"{field}.between")
            if ends is None:
                return []
            if len(ends) != 2:
                self.add(node, f"{field}.between", f"expected two regions, got {len(ends)}")
                return []
            a = self.region_ref(ends[0], f"{field}.between[0]")
            b = self.region_ref(ends[1], f"{field}.between[1]")
            pairs = [(a, b), (b, a)]
        elif one_way:
            for key in ("from", "to"):
                if key not in body:
                    self.add(item, f"{field}.{key}", f"missing required key {key!r} (a one-way link "
                                                     "needs both from and to)")
            a = self.region_ref(body["from"][1], f"{field}.from") if "from" in body else None
            b = self.region_ref(body["to"][1], f"{field}.to") if "to" in body else None
            node = body["from"][1] if "from" in body else item
            pairs = [(a, b)]
        else:
            self.add(item, field, "missing link endpoints: give between: [A, B] (both directions) or "
                                  "from: A and to: B (one direction)")
            return []
        self.in_links.update(r for r in (a, b) if r is not None)
        if a is None or b is None:
            return []
        if a == b:
            self.add(node, field, f"link from region {a} to itself")
            return []
        return [(s, d) for s, d in pairs if s is not None and d is not None]

    def figures(self, item: Node, body: dict[str, _Entry],
                field: str) -> tuple[float, float, float, float, float] | None:
        """(capacity, latency, cost, quota, overhead), or None when one is missing or wrong."""
        ok = True

        def get(key: str, parse: Callable[[Any], float], default: float | None) -> float | None:
            nonlocal ok
            if key not in body:
                return default
            v = self.figure(body[key][1], f"{field}.{key}", parse)
            ok = ok and v is not None
            return v

        if "capacity" not in body:
            self.add(item, f"{field}.capacity", "missing required key 'capacity' (e.g. capacity: 10Gbit/s)")
            ok = False
        capacity = get("capacity", parse_rate, None)
        if capacity == 0:
            self.add(body["capacity"][1], f"{field}.capacity", "capacity must be above 0")
            ok = False
        latency = get("latency", parse_duration, 0.0)
        cost = get("cost", _plain_number, 0.0)
        quota = get("quota", parse_rate, capacity)
        overhead = get("overhead", parse_overhead, DEFAULT_OVERHEAD)
        if quota == 0 and "quota" in body:
            self.add(body["quota"][1], f"{field}.quota", "quota must be above 0 (to keep the mesh off a "
                                                         "link, leave the link out of the topology)")
            ok = False
        if capacity and quota is not None and quota > capacity:
            self.add(body["quota"][1], f"{field}.quota", f"quota {format_rate(quota)} is above the "
                                                         f"link's capacity {format_rate(capacity)}")
            ok = False
        if not ok or capacity is None or latency is None or cost is None or quota is None or overhead is None:
            return None
        return capacity, latency, cost, quota, overhead

    def stores(self, node: Node) -> tuple[list[Store], dict[str, Node], dict[str, Node]]:
        out: list[Store] = []
        homes: dict[str, Node] = {}      # store -> its home's node (valid homes only)
        uris: dict[str, Node] = {}       # store -> its uri's node
        entries = self.mapping(node, "stores", None)
        for name, (k, v) in (entries or {}).items():
            field = _path("stores", name)
            body = self.mapping(v, field, _STORE_KEYS)
            if body is None:
                continue
            ok = True
            home = None
            if "home" not in body:
                self.add(k, f"{field}.home", "missing required key 'home' (the region the store lives in)")
            else:
                home = self.region_ref(body["home"][1], f"{field}.home")
                if home is not None:
                    homes[name] = body["home"][1]
            uri = ""
            if "uri" in body:
                uri = self.name(body["uri"][1], f"{field}.uri", "a URI prefix") or ""
                if uri and not urlsplit(uri).scheme:
                    self.add(body["uri"][1], f"{field}.uri", f"uri {uri!r} has no scheme (expected e.g. "
                                                             "s3://bucket or file:///data)")
                    ok = False
                elif uri:
                    uris[name] = body["uri"][1]
            endpoints: dict[str, str] = {}
            if "endpoints" in body:
                e_field = f"{field}.endpoints"
                for region, (k, ev) in (self.mapping(body["endpoints"][1], e_field, None) or {}).items():
                    where = _path(e_field, region)
                    if region != ANY_REGION and self.region_ref(k, where) is None:
                        ok = False
                        continue
                    url = self.name(ev, where, "an endpoint URL")
                    if url is None:
                        ok = False
                        continue
                    parts = urlsplit(url)
                    if not parts.scheme or not parts.netloc:
                        self.add(ev, where, f"endpoint {url!r} is not a URL (expected scheme://host[:port])")
                        ok = False
                        continue
                    endpoints[region] = url
            if ok and home is not None:
                out.append(Store(name, home, uri, endpoints))
        return out, homes, uris

    def whole(self, homes: dict[str, Node], uris: dict[str, Node]) -> None:
        """The checks that need every region, link and store."""
        for (src, dst), (i, item) in self.declared.items():
            if (dst, src) not in self.declared:
                self.add(item, f"links[{i}]", f"asymmetric link: {src} -> {dst} is declared but "
                                              f"{dst} -> {src} is not (declare it too, or write "
                                              f"between: [{src}, {dst}])")
        if len(self.region_keys) >= 2:
            for name, k in self.region_keys.items():
                if name not in self.in_links:
                    self.add(k, _path("regions", name), f"missing link: region {name} has no link to "
                                                        "any other region")
        graph = nx.DiGraph()
        graph.add_nodes_from(self.region_keys)
        graph.add_edges_from(self.declared)
        for store, node in homes.items():
            home = str(node.value) if isinstance(node, ScalarNode) else ""
            cut = [r for r in self.region_keys
                   if r != home and not (nx.has_path(graph, r, home) and nx.has_path(graph, home, r))]
            if cut:
                self.add(node, _path(_path("stores", store), "home"),
                         f"home region {home} of store {store!r} is unreachable from (or cannot send to) "
                         f"{', '.join(cut)}")
        first: dict[str, str] = {}
        for store, node in uris.items():
            uri = str(node.value).rstrip("/") if isinstance(node, ScalarNode) else ""
            if uri in first:
                self.add(node, _path(_path("stores", store), "uri"),
                         f"stores {first[uri]!r} and {store!r} have the same uri {node.value!r}: "
                         "a mount could not tell them apart")
            else:
                first[uri] = store


def _plain_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite number >= 0, got {value!r}")
    return float(value)
