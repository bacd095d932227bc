"""Topology file, graph and the pure routing/placement functions.

``topology.model`` reads and checks the operators' topology file (docs/TOPOLOGY.md)
into a :class:`Topology`; ``topology.show`` draws it (text or image);
``topology.cli`` is ``meshctl topology validate|show``.
"""

from .model import (
    ANY_REGION,
    DEFAULT_COST_WEIGHT,
    DEFAULT_OVERHEAD,
    Link,
    Problem,
    Region,
    Store,
    Topology,
    TopologyError,
    format_duration,
    format_rate,
    load,
    parse,
    parse_duration,
    parse_overhead,
    parse_rate,
    problems,
    read,
)

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
    "load",
    "parse",
    "parse_duration",
    "parse_overhead",
    "parse_rate",
    "problems",
    "read",
]
