"""The topology file: parsing, every validation problem with its place, drawing, CLI."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import pytest

from topology import (
    Link,
    Problem,
    Region,
    Store,
    Topology,
    TopologyError,
    load,
    parse,
    parse_duration,
    parse_overhead,
    parse_rate,
    problems,
)
from topology import cli as topology_cli
from topology.show import export_image, format_duration, format_rate, render_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "topology.yaml"
MBIT = 1e6 / 8
GBIT = 1e9 / 8


def yaml_text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def only(text: str) -> Problem:
    found = problems(yaml_text(text), "t.yaml")
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def line_of(p: Problem) -> int:
    source, line, _col = p.where.rsplit(":", 2)
    assert source == "t.yaml"
    return int(line)


# ---------------------------------------------------------------- the example

def test_example_is_valid() -> None:
    assert problems(EXAMPLE.read_text(), str(EXAMPLE)) == []


def test_example_graph() -> None:
    t = load(EXAMPLE)
    assert t.source == str(EXAMPLE) and t.text == EXAMPLE.read_text()
    assert set(t.regions) == {"region-a", "region-b", "region-c"}
    assert t.regions["region-a"].zones == ("a1",)
    g = t.graph
    assert set(g.nodes) == set(t.regions) and g.nodes["region-b"]["zones"] == ("b1",)
    assert set(g.edges) == {(a, b) for a in t.regions for b in t.regions if a != b}
    ab, ba = g.edges["region-a", "region-b"], g.edges["region-b", "region-a"]
    assert ab["capacity"] == pytest.approx(GBIT) == ba["capacity"]
    assert ab["quota"] == pytest.approx(400 * MBIT)
    assert ab["latency"] == pytest.approx(0.020) and g.edges["region-b", "region-c"]["latency"] == pytest.approx(0.005)
    assert ab["cost"] == 0.05 and g.edges["region-c", "region-b"]["cost"] == 0.01
    assert ab["overhead"] == 0.05
    assert ab["link"] == t.link("region-a", "region-b") == Link(
        "region-a", "region-b", GBIT, 0.020, 0.05, 400 * MBIT, 0.05)
    assert t.link("region-a", "nowhere") is None
    assert len(t.links) == 6 and t.cost_weight == 1.0 and t.name == "three-regions"


def test_path_follows_least_latency() -> None:
    t = load(EXAMPLE)
    assert t.path("region-a", "region-a") == ["region-a"]
    assert t.path("region-b", "region-a") == ["region-b", "region-a"]      # 20 ms, not 5 + 25
    assert t.path("region-c", "region-b") == ["region-c", "region-b"]
    slow = parse(yaml_text("""
        regions: {a: {}, b: {}, c: {}}
        links:
          - {between: [a, b], capacity: 1Gbit/s, latency: 10ms}
          - {between: [b, c], capacity: 1Gbit/s, latency: 10ms}
          - {between: [a, c], capacity: 1Gbit/s, latency: 50ms}
    """))
    assert slow.path("a", "c") == ["a", "b", "c"]
    apart = Topology([Region("x"), Region("y")], [])
    assert apart.path("x", "y") is None and apart.path("x", "nowhere") is None
    assert apart.path("x", "x") == ["x"]


def test_store_for_by_name_and_longest_prefix() -> None:
    t = parse(yaml_text("""
        regions: {a: {}}
        stores:
          data: {uri: s3://data, home: a}
          data-train: {uri: "s3://data/train/", home: a}
          named: {home: a}
    """))
    def store(uri: str, name: str | None = None) -> str | None:
        s = t.store_for(uri, name)
        return s.name if s else None

    assert store("s3://data/x.bin") == "data"
    assert store("s3://data") == "data"
    assert store("s3://data/train/x") == "data-train"
    assert store("s3://data/train") == "data-train"
    assert store("s3://data/trainer/x") == "data"                         # path boundary
    assert store("s3://database/x") is None
    assert store("s3://anything", name="named") == "named"
    assert t.store_for("s3://data/x", name="unknown") is None


def test_endpoint_for_falls_back_to_star() -> None:
    s = load(EXAMPLE).stores["datasets"]
    assert s.home == "region-a" and s.uri == "s3://datasets"
    assert s.endpoint_for("region-a") == "http://10.77.1.1:5000"
    assert s.endpoint_for("region-c") == "http://10.77.1.1:5000"
    t = parse(yaml_text("""
        regions: {a: {}, b: {}}
        links: [{between: [a, b], capacity: 1Gbit/s}]
        stores:
          x: {home: a, endpoints: {a: "http://in:9000", "*": "https://out.example.com"}}
          y: {home: a, endpoints: {a: "http://in:9000"}}
    """))
    assert t.stores["x"].endpoint_for("a") == "http://in:9000"
    assert t.stores["x"].endpoint_for("b") == "https://out.example.com"
    assert t.stores["y"].endpoint_for("b") is None
    assert Store("z", "a").endpoint_for("a") is None


def test_defaults_and_one_way_links() -> None:
    t = parse(yaml_text("""
        regions:
          a:
            nodes: [n1, {selector: {topology.kubernetes.io/region: a, tier: "1"}}]
          b: {}
        links:
          - {from: a, to: b, capacity: 100MB/s}
          - {from: b, to: a, capacity: 10Gbps, latency: 1, cost: 2, quota: 1GiB/s, overhead: 0.1}
    """))
    ab, ba = t.link("a", "b"), t.link("b", "a")
    assert ab is not None and ba is not None
    assert (ab.capacity, ab.latency, ab.cost, ab.quota, ab.overhead) == (100e6, 0.0, 0.0, 100e6, 0.05)
    assert (ba.capacity, ba.latency, ba.cost, ba.quota, ba.overhead) == (10e9 / 8, 1.0, 2.0, 1 << 30, 0.1)
    assert t.regions["a"].nodes == ("n1",)
    assert t.regions["a"].selectors == ({"topology.kubernetes.io/region": "a", "tier": "1"},)
    assert t.name == "" and t.cost_weight == 1.0


def test_to_dict_is_json() -> None:
    d = json.loads(json.dumps(load(EXAMPLE).to_dict()))
    assert d["stores"]["datasets"]["home"] == "region-a"
    assert {(k["src"], k["dst"]) for k in d["links"]} >= {("region-a", "region-b"), ("region-b", "region-a")}
    assert d["regions"]["region-c"]["zones"] == ["c1"]


# ---------------------------------------------------------------- units

@pytest.mark.parametrize(("text", "bytes_per_s"), [
    ("1Gbit/s", 125e6), ("400 Mbit/s", 50e6), ("8bit/s", 1), ("1Kbit/s", 125), ("1kbit/s", 125),
    ("2Tbit/s", 250e9), ("1Gbps", 125e6), ("1Mbps", 125e3), ("8bps", 1), ("1Kbps", 125),
    ("1Tbps", 125e9), ("10B/s", 10), ("1KB/s", 1e3), ("1.5MB/s", 1.5e6), ("2GB/s", 2e9),
    ("1KiB/s", 1024), ("1MiB/s", 1 << 20), ("1GiB/s", 1 << 30), (1000, 1000), (2.5, 2.5),
    ("1000", 1000), (".5GB/s", 5e8), ("1e3MB/s", 1e9), (0, 0),
])
def test_parse_rate(text: object, bytes_per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(bytes_per_s)


@pytest.mark.parametrize("bad", ["1Gb/s", "fast", "-1Gbit/s", "1 Gbit", "", True, None, [1], "nan", "1e999"])
def test_parse_rate_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)


@pytest.mark.parametrize(("text", "seconds"), [
    ("20ms", 0.02), ("5 ms", 0.005), ("500us", 0.0005), ("1s", 1.0), ("0.5s", 0.5), (2, 2.0), ("3", 3.0),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["20 min", "-5ms", "soon", False])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_parse_overhead() -> None:
    assert parse_overhead("5%") == pytest.approx(0.05)
    assert parse_overhead("2.5 %") == pytest.approx(0.025)
    assert parse_overhead(0.05) == 0.05 and parse_overhead(0) == 0
    for bad in ("100%", 1, 5, "-1%", "five", "5ms"):
        with pytest.raises(ValueError, match="overhead"):
            parse_overhead(bad)


def test_format_units() -> None:
    assert format_rate(50e6) == "400 Mbit/s"
    assert format_rate(125e6) == "1 Gbit/s"
    assert format_rate(1.5e9 / 8) == "1.5 Gbit/s"
    assert format_rate(12.5) == "100 bit/s"
    assert format_rate(2e12) == "16 Tbit/s"
    assert format_duration(0.02) == "20 ms"
    assert format_duration(0.0005) == "500 us"
    assert format_duration(1.5) == "1.5 s"
    assert format_duration(0) == "0 ms"


# ---------------------------------------------------------------- every problem, with its place

# Line 1 regions, 2 links, 3 the link, 4 its capacity; cases append from line 5.
TWO = """
regions: {a: {}, b: {}}
links:
  - between: [a, b]
    capacity: 1Gbit/s
"""

# (YAML, text the message must contain, field, line of the problem)
CASES = [
    ("regions: {a: {}\n", "invalid YAML", "", 2),
    ("regions:\n  a: {}\n\tb: {}\n", "invalid YAML", "", 3),
    ("- a\n- b\n", "top level must be a mapping", "", 1),
    ("", "empty file", "", 0),
    ("version: 2\nregions: {a: {}}\n", "unsupported version 2", "version", 1),
    ("regions: {a: {}}\nlinkz: []\n", "unknown key 'linkz' (did you mean 'links'?)", "linkz", 2),
    ("regions:\n  a: {zone: [a1]}\n", "unknown key 'zone'", "regions.a.zone", 2),
    (TWO + "    capcity: 2\n", "unknown key 'capcity' (did you mean 'capacity'?)", "links[0].capcity", 5),
    ("regions: {a: {}}\nstores:\n  s: {home: a, url: s3://x}\n", "unknown key 'url'", "stores.s.url", 3),
    ("name: x\n", "missing required key 'regions'", "regions", 1),
    ("regions: {}\n", "no regions declared", "regions", 1),
    ("regions: {a: {}, b: {}}\nlinks:\n  - between: [a, b]\n    latency: 5ms\n",
     "missing required key 'capacity'", "links[0].capacity", 3),
    ("regions: {a: {}}\nlinks:\n  - {capacity: 1Gbit/s}\n", "missing link endpoints", "links[0]", 3),
    ("regions: {a: {}}\nlinks:\n  - {from: a, capacity: 1Gbit/s}\n", "missing required key 'to'",
     "links[0].to", 3),
    ("regions: {a: {}}\nstores:\n  s:\n    uri: s3://x\n", "missing required key 'home'", "stores.s.home", 3),
    (TWO.replace("1Gbit/s", "1Gb/s"), "unknown rate unit 'Gb/s'", "links[0].capacity", 4),
    (TWO + "    latency: -5ms\n", "duration must be a finite number >= 0", "links[0].latency", 5),
    (TWO + "    latency: soon\n", "expected a duration", "links[0].latency", 5),
    (TWO + "    cost: cheap\n", "expected a number, got 'cheap'", "links[0].cost", 5),
    (TWO + "    cost: -1\n", "expected a finite number >= 0", "links[0].cost", 5),
    (TWO + "    overhead: 120%\n", "overhead must be below 1", "links[0].overhead", 5),
    (TWO.replace("1Gbit/s", "0"), "capacity must be above 0", "links[0].capacity", 4),
    (TWO + "routing: {cost_weight: x}\n", "expected a number", "routing.cost_weight", 5),
    (TWO.replace("[a, b]", "[a, x]") + "  - {between: [a, b], capacity: 1}\n",
     "unknown region 'x'", "links[0].between[1]", 3),
    (TWO + "stores:\n  s: {home: c}\n", "unknown region 'c'", "stores.s.home", 6),
    (TWO + "stores:\n  s:\n    home: a\n    endpoints:\n      c: http://x\n", "unknown region 'c'",
     "stores.s.endpoints.c", 9),
    (TWO + "stores:\n  s:\n    home: a\n    endpoints: {'*': 's3.example.com'}\n", "is not a URL",
     'stores.s.endpoints["*"]', 8),
    (TWO + "stores:\n  s: {home: a, uri: bucket}\n", "has no scheme", "stores.s.uri", 6),
    (TWO + "  - {from: b, to: b, capacity: 1Gbit/s}\n", "link from region b to itself", "links[1]", 5),
    (TWO + "  - {from: a, to: b, capacity: 1Gbit/s}\n", "link a -> b is declared twice (first in links[0] at line 3)",
     "links[1]", 5),
    ("regions: {a: {}, b: {}}\nlinks:\n  - {from: a, to: b, capacity: 1Gbit/s}\n",
     "asymmetric link: a -> b is declared but b -> a is not", "links[0]", 3),
    ("regions: {a: {}, b: {}, c: {}}\nlinks:\n  - {between: [a, b], capacity: 1Gbit/s}\n",
     "missing link: region c has no link", "regions.c", 1),
    (TWO + "    quota: 2Gbit/s\n", "quota 2 Gbit/s is above the link's capacity 1 Gbit/s", "links[0].quota", 5),
    ("regions:\n  a: {}\n  b: {}\n  a: {zones: [z]}\nlinks: [{between: [a, b], capacity: 1}]\n",
     "duplicate key 'a' (first at line 2)", "regions.a", 4),
    ("regions:\n  a: {zones: [z1, z1]}\n", "'z1' is listed twice", "regions.a.zones[1]", 2),
    ("regions:\n  a: {nodes: [n1]}\n  b: {nodes: [n1]}\nlinks: [{between: [a, b], capacity: 1}]\n",
     "node 'n1' is already listed in region a", "regions.b.nodes[0]", 3),
    ("regions:\n  a:\n    nodes:\n      - selector: {}\n", "empty selector", "regions.a.nodes[0].selector", 4),
    ("regions:\n  '*': {}\n", "'*' cannot name a region", 'regions["*"]', 2),
    ("regions: {a: {}}\nstores:\n  s: {home: a, uri: s3://x}\n  t: {home: a, uri: s3://x/}\n",
     "stores 's' and 't' have the same uri", "stores.t.uri", 4),
    ("regions: {a: [1]}\n", "expected a mapping, got a list", "regions.a", 1),
    ("regions: {a: {}}\nlinks: {a: b}\n", "expected a list, got a mapping", "links", 2),
    ("regions: {a: {}}\n<<: {x: 1}\n", "merge keys", "", 2),
]


@pytest.mark.parametrize(("text", "message", "field", "line"), CASES,
                         ids=[c[1].split("(")[0][:40] for c in CASES])
def test_each_problem_is_named_and_placed(text: str, message: str, field: str, line: int) -> None:
    p = only(text)
    assert message in p.message
    assert p.field == field
    if line:
        assert line_of(p) == line, str(p)
    else:
        assert p.where == "t.yaml"
    with pytest.raises(TopologyError) as e:
        parse(yaml_text(text), "t.yaml")
    assert e.value.problems == [p] and str(e.value) == str(p)


def test_unreachable_home() -> None:
    found = problems(yaml_text("""
        regions: {a: {}, b: {}, c: {}, d: {}}
        links:
          - {between: [a, b], capacity: 1Gbit/s}
          - {between: [c, d], capacity: 1Gbit/s}
        stores:
          datasets: {home: a}
    """), "t.yaml")
    (p,) = found
    assert "unreachable" in p.message and "datasets" in p.message
    assert "home region a" in p.message and "c, d" in p.message and "b," not in p.message
    assert p.field == "stores.datasets.home" and line_of(p) == 6


def test_column_is_reported() -> None:
    p = only(TWO + "    quota: 2Gbit/s\n")
    assert p.where == "t.yaml:5:12"
    assert str(p) == f"t.yaml:5:12: links[0].quota: {p.message}"
    assert str(Problem("t.yaml", "", "empty file")) == "t.yaml: empty file"


def test_every_problem_of_a_file_is_reported() -> None:
    text = yaml_text("""
        version: 1
        regions:
          region-a: {zones: [a1]}
          region-b: {zoness: [b1]}
          region-c: {}
        links:
          - between: [region-a, region-b]
            capacity: 1Gbit/s
            quota: 4Gbit/s
          - from: region-b
            to: region-x
            capacity: fast
          - {between: [region-a, region-a], capacity: 1}
        stores:
          datasets: {home: region-q, uri: s3://datasets}
    """)
    found = problems(text, "t.yaml")
    expected = [(4, "unknown key 'zoness'"), (5, "missing link: region region-c"),
                (9, "quota 4 Gbit/s is above"), (11, "unknown region 'region-x'"),
                (12, "expected a rate such as"), (13, "to itself"), (15, "unknown region 'region-q'")]
    assert len(found) == len(expected), "\n".join(map(str, found))
    for p, (line, message) in zip(found, expected, strict=True):
        assert message in p.message and line_of(p) == line, str(p)
    with pytest.raises(TopologyError) as e:
        parse(text, "t.yaml")
    assert len(str(e.value).splitlines()) == len(expected)


def test_problems_never_raise() -> None:
    for text in ["\x00", "{{{{", ": :", "regions: !!python/object:os.system {}", "a: &x [*x]",
                 "regions: {a: {nodes: [[1]]}}", "regions: {a: {}}\nlinks: [[a, b]]"]:
        assert problems(text)


def test_load_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as e:
        load(missing)
    (p,) = e.value.problems
    assert p.message == f"cannot read {missing}: No such file or directory"
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(TopologyError, match="UTF-8"):
        load(tmp_path / "latin1.yaml")


# ---------------------------------------------------------------- drawing

def test_render_text() -> None:
    text = render_text(load(EXAMPLE))
    assert "region-a ◀──▶ region-b  1 Gbit/s, quota 400 Mbit/s (40%), 20 ms, cost 0.05/GiB" in text
    assert "region-b ◀──▶ region-c  1 Gbit/s, quota 400 Mbit/s (40%), 5 ms, cost 0.01/GiB" in text
    assert "datasets  home region-a  s3://datasets  endpoints: region-a=http://10.77.1.1:5000, " \
           "*=http://10.77.1.1:5000" in text
    assert "home of datasets" in text


def test_render_text_shows_both_directions_when_they_differ() -> None:
    t = parse(yaml_text("""
        regions: {a: {zones: [a1, a2], nodes: [n1]}, b: {}}
        links:
          - {from: a, to: b, capacity: 1Gbit/s, latency: 5ms, overhead: 2%}
          - {from: b, to: a, capacity: 10Gbit/s, latency: 5ms}
    """))
    lines = render_text(t).splitlines()
    i = next(n for n, line in enumerate(lines) if "a ──▶ b" in line)
    assert "1 Gbit/s" in lines[i] and "overhead 2%" in lines[i]
    assert "b ──▶ a" in lines[i + 1] and "10 Gbit/s, quota 10 Gbit/s (100%)" in lines[i + 1]
    assert any("zones a1, a2  nodes n1" in line for line in lines)


def test_store_homes_are_labelled_below_their_region_disc() -> None:
    """The "home: datasets" label used to sit inside the disc and spill over its edge."""
    import math

    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from topology.show import _NODE_SIZE, _draw_regions

    t = load(EXAMPLE)
    fig = Figure(figsize=(6, 5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pos = nx.circular_layout(t.graph)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    _draw_regions(t, ax, pos)
    renderer = canvas.get_renderer()
    homes = [x for x in ax.texts if x.get_text().startswith("home: ")]
    assert [x.get_text() for x in homes] == ["home: datasets"]
    center = ax.transData.transform(pos["region-a"])
    radius = math.sqrt(_NODE_SIZE / math.pi) * fig.dpi / 72
    box = homes[0].get_window_extent(renderer)
    assert box.y1 <= center[1] - radius  # wholly below the disc
    assert box.x0 < center[0] < box.x1  # and centred under it
    names = {x.get_text() for x in ax.texts} - {"home: datasets"}
    assert names == {"region-a", "region-b", "region-c"}


def test_export_image_png_and_svg(tmp_path: Path) -> None:
    t = load(EXAMPLE)
    png = export_image(t, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = export_image(t, str(tmp_path / "t.SVG"))
    assert "<svg" in svg.read_text()
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        export_image(t, tmp_path / "t.jpg")
    assert not (tmp_path / "t.jpg").exists()


# ---------------------------------------------------------------- CLI

def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshctl")
    topology_cli.register(parser.add_subparsers(dest="cmd", required=True))
    return topology_cli.run(parser.parse_args(list(argv)))


def test_cli_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("topology", "validate", str(EXAMPLE)) == 0
    out, err = capsys.readouterr()
    assert out == f"{EXAMPLE}: OK (3 regions, 6 links, 1 store)\n" and err == ""


def test_cli_validate_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text(TWO + "    quota: 2Gbit/s\n  - {from: b, to: c, capacity: 1}\n"))
    assert run_cli("topology", "validate", str(bad)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}:5:12: links[0].quota: quota 2 Gbit/s is above")
    assert lines[1].startswith(f"{bad}:6:19: links[1].to: unknown region 'c'")
    assert "Traceback" not in err


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    for command in ("validate", "show"):
        assert run_cli("topology", command, str(missing)) == 1
        out, err = capsys.readouterr()
        assert out == "" and err == f"cannot read {missing}: No such file or directory\n"


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("topology", "show", str(EXAMPLE)) == 0
    out, _ = capsys.readouterr()
    assert "region-a ◀──▶ region-c  1 Gbit/s, quota 400 Mbit/s (40%), 22 ms" in out
    image = tmp_path / "topo.png"
    assert run_cli("topology", "show", str(EXAMPLE), "--image", str(image)) == 0
    out, err = capsys.readouterr()
    assert "◀──▶" in out and str(image) in err
    assert image.read_bytes().startswith(b"\x89PNG")
    assert run_cli("topology", "show", str(EXAMPLE), "--image", str(tmp_path / "topo.gif")) == 2
    assert ".png or .svg" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: {a: {}}\nlinks: 3\n")
    assert run_cli("topology", "show", str(bad)) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{bad}:2:8: links: expected a list")


def test_cli_can_be_extended() -> None:
    parser = argparse.ArgumentParser(prog="meshctl")
    topology = topology_cli.register(parser.add_subparsers(dest="cmd", required=True))
    extra = topology_cli.subcommands(topology).add_parser("apply")
    extra.set_defaults(fn_topology=lambda args: 7)
    assert topology_cli.run(parser.parse_args(["topology", "apply"])) == 7


def test_export_image_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(RuntimeError, match=r"pip install 'datamesh\[viz\]'"):
        export_image(load(EXAMPLE), tmp_path / "t.png")


def test_cli_show_cannot_write_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("topology", "show", str(EXAMPLE), "--image", str(tmp_path / "no" / "t.svg")) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
