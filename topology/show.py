"""Draw a topology: as text for a terminal (:func:`render_text`) or as an image (:func:`export_image`).

The text drawing lists the regions, then the links with both directions of a
pair together (``◀──▶`` when they carry the same figures), then the stores.
The image is drawn with networkx on a bare matplotlib Figure with the Agg
canvas (no pyplot state, no display needed); matplotlib is imported only when
an image is asked for, since nodes never draw (``pip install 'datamesh[viz]'``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .model import DEFAULT_OVERHEAD, Link, Topology, format_duration, format_rate

__all__ = ["IMAGE_SUFFIXES", "export_image", "format_duration", "format_rate", "render_text"]

IMAGE_SUFFIXES = (".png", ".svg")


def _figures(k: Link) -> str:
    share = f" ({k.quota / k.capacity:.0%})" if k.capacity else ""
    text = (f"{format_rate(k.capacity)}, quota {format_rate(k.quota)}{share}, "
            f"{format_duration(k.latency)}, cost {k.cost:g}/GiB")
    if k.overhead != DEFAULT_OVERHEAD:
        text += f", overhead {k.overhead:.1%}".replace(".0%", "%")
    return text


def _same(a: Link, b: Link) -> bool:
    return (a.capacity, a.latency, a.cost, a.quota, a.overhead) == (b.capacity, b.latency, b.cost,
                                                                     b.quota, b.overhead)


def _link_pairs(topo: Topology) -> list[tuple[Link, Link | None]]:
    """Each link with its reverse direction (None when there is none), in declaration order."""
    out: list[tuple[Link, Link | None]] = []
    seen: set[tuple[str, str]] = set()
    for (src, dst), k in topo.links.items():
        if (src, dst) in seen:
            continue
        seen.update([(src, dst), (dst, src)])
        out.append((k, topo.links.get((dst, src))))
    return out


def render_text(topo: Topology) -> str:
    """A drawing for a terminal, one line per region, link pair and store."""
    homes: dict[str, list[str]] = {}
    for s in topo.stores.values():
        homes.setdefault(s.home, []).append(s.name)
    lines = [f"topology {topo.name or '(unnamed)'}  ({topo.source})", "", "regions"]
    width = max((len(r) for r in topo.regions), default=0)
    for r in topo.regions.values():
        parts = []
        if r.zones:
            parts.append("zones " + ", ".join(r.zones))
        members = list(r.nodes) + ["{" + ", ".join(f"{k}={v}" for k, v in s.items()) + "}"
                                   for s in r.selectors]
        if members:
            parts.append("nodes " + ", ".join(members))
        if r.name in homes:
            parts.append("home of " + ", ".join(homes[r.name]))
        lines.append(f"  {r.name:<{width}}  {'  '.join(parts)}".rstrip())

    lines += ["", "links"]
    for k, back in _link_pairs(topo):
        if back is not None and _same(k, back):
            lines.append(f"  {k.src:<{width}} ◀──▶ {k.dst:<{width}}  {_figures(k)}")
            continue
        lines.append(f"  {k.src:<{width}} ──▶ {k.dst:<{width}}   {_figures(k)}")
        if back is not None:
            lines.append(f"  {back.src:<{width}} ──▶ {back.dst:<{width}}   {_figures(back)}")
    if not topo.links:
        lines.append("  (none)")

    lines += ["", "stores"]
    swidth = max((len(s) for s in topo.stores), default=0)
    for s in topo.stores.values():
        endpoints = ", ".join(f"{region}={url}" for region, url in s.endpoints.items())
        lines.append(f"  {s.name:<{swidth}}  home {s.home}  {s.uri or '(store= only)'}  "
                     f"endpoints: {endpoints or '(the mount URI)'}")
    if not topo.stores:
        lines.append("  (none)")
    lines += ["", f"routing: one cost unit is worth {topo.cost_weight:g} s of transfer time"]
    return "\n".join(lines) + "\n"


def export_image(topo: Topology, path: str | os.PathLike[str]) -> Path:
    """Draw the topology to ``path``, PNG or SVG by its suffix; returns the path written."""
    out = Path(path)
    kind = out.suffix.lower()
    if kind not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot draw to {os.fspath(path)!r}: the file name must end in "
                         f"{' or '.join(IMAGE_SUFFIXES)}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise RuntimeError("drawing an image needs matplotlib: pip install 'datamesh[viz]'") from e
    import networkx as nx

    g = topo.graph
    size = max(6.0, 2.2 * len(g) ** 0.5 + 3)
    fig = Figure(figsize=(size, size * 0.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(f"topology {topo.name or topo.source}")
    pos = nx.circular_layout(g) if len(g) > 1 else {n: (0.0, 0.0) for n in g}

    # Fixed limits before anything is drawn: the arcs and their labels are placed in
    # display coordinates, which autoscaling after the fact would squash.
    xs = [float(x) for x, _ in pos.values()] or [0.0]
    ys = [float(y) for _, y in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
    ax.set_aspect("equal")

    _draw_regions(topo, ax, pos)
    _draw_links(topo, ax, pos)
    fig.savefig(out, format=kind[1:], dpi=120, bbox_inches="tight")
    return out


_NODE_SIZE = 2600  # of a region's disc, in points^2 (the arrows stop at its edge)


def _draw_regions(topo: Topology, ax: Any, pos: Any) -> None:
    """The regions as discs at ``pos``, labelled; those that are a store's home in amber,
    with the stores named."""
    import networkx as nx

    g = topo.graph
    homes: dict[str, list[str]] = {}
    for s in topo.stores.values():
        homes.setdefault(s.home, []).append(s.name)
    plain = [n for n in g if n not in homes]
    home = [n for n in g if n in homes]
    nx.draw_networkx_nodes(g, pos, nodelist=plain, ax=ax, node_size=_NODE_SIZE, node_color="#cfe3f5",
                           edgecolors="#3a6ea5")
    nx.draw_networkx_nodes(g, pos, nodelist=home, ax=ax, node_size=_NODE_SIZE, node_color="#ffd98e",
                           edgecolors="#b07d10", linewidths=2.5)
    nx.draw_networkx_labels(g, pos, labels={n: n for n in g}, ax=ax, font_size=9)
    below = (_NODE_SIZE / math.pi) ** 0.5 + 3  # the disc's radius in points, and a gap
    for n, stores in homes.items():
        if n in pos:  # under the disc: a store list does not fit inside it
            ax.annotate("home: " + ", ".join(stores), xy=pos[n], xytext=(0, -below), textcoords="offset points",
                        ha="center", va="top", fontsize=8, color="#7a5a10")


def _draw_links(topo: Topology, ax: Any, pos: Any) -> None:
    """The links between the regions at ``pos``, with their figures.

    Both directions are drawn as arcs so each stays visible; a symmetric pair with the
    same figures gets one label.
    """
    import networkx as nx

    g = topo.graph
    style = "arc3,rad=0.12"
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowstyle="-|>", arrowsize=14,
                           node_size=_NODE_SIZE, connectionstyle=style, edge_color="#555555")
    edge_labels: dict[tuple[str, str], str] = {}
    for k, back in _link_pairs(topo):
        for link in (k, back):
            if link is None or (link is back and _same(k, link)):
                continue
            edge_labels[(link.src, link.dst)] = (f"{format_rate(link.capacity)}\nquota "
                                                 f"{format_rate(link.quota)}\n"
                                                 f"{format_duration(link.latency)}")
    nx.draw_networkx_edge_labels(g, pos, edge_labels=edge_labels, ax=ax, font_size=7,
                                 node_size=_NODE_SIZE, connectionstyle=style,
                                 bbox={"boxstyle": "round", "fc": "white", "ec": "#bbbbbb", "alpha": 0.9})
