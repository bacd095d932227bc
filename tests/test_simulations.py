"""simulations/fanout.py: the router's fan-out replay (no network, no clock)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.fanout import parse_readers, render, simulate
from topology.model import load
from topology.router import route

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "topology.yaml"
MIB = 1 << 20
PAGE = 4 * MIB
DATA = 64 * MIB + 12_345  # 17 pages, the last one short


def run(readers: dict[str, int], start: dict[str, float] | None = None, size: int = DATA) -> dict:
    return simulate(load(EXAMPLE), "region-a", readers, size, PAGE, start)


@pytest.mark.parametrize("readers", [{"region-b": 1, "region-c": 1}, {"region-b": 20, "region-c": 5},
                                     {"region-b": 500, "region-c": 3, "region-a": 7}])
def test_each_region_pulls_the_unique_bytes_once(readers: dict[str, int]) -> None:
    got = run(readers)
    assert got["pages"] == 17 and got["unique_bytes"] == DATA
    for region in ("region-b", "region-c"):
        r = got["regions"][region]
        assert r["bytes_in"] == DATA and r["ratio"] == 1.0
        assert sum(r["sources"].values()) == 17
        assert r["direct_bytes_in"] == readers[region] * DATA
    links = {x["link"]: x for x in got["links"]}
    assert links["region-a>region-b"]["direct_bytes"] == readers["region-b"] * DATA
    assert links["region-a>region-c"]["direct_bytes"] == readers["region-c"] * DATA  # 22 ms < 5 + 20
    assert got["total"]["direct_bytes"] == (readers["region-b"] + readers["region-c"]) * DATA
    assert got["total"]["bytes"] == 2 * DATA  # two remote regions, each byte once
    if "region-a" in readers:  # the home region reads its store inside the region
        assert got["regions"]["region-a"]["bytes_in"] == 0
        assert got["regions"]["region-a"]["direct_bytes_in"] == 0


def test_reader_counts_change_only_the_direct_column() -> None:
    few, many = run({"region-b": 1, "region-c": 1}), run({"region-b": 40, "region-c": 9})
    for key in ("bytes", "ratio", "cost"):
        assert [x[key] for x in few["links"]] == [x[key] for x in many["links"]]
    assert {r: v["sources"] for r, v in few["regions"].items()} == \
        {r: v["sources"] for r, v in many["regions"].items()}


def test_a_later_region_pulls_from_its_cheaper_peer() -> None:
    # region-b reads first; region-c starts once b holds everything: b's cache (5 ms, 0.01/GiB)
    # beats the store (22 ms, 0.05/GiB).
    got = run({"region-b": 20, "region-c": 5}, {"region-c": 1000.0})
    assert got["regions"]["region-b"]["sources"] == {"store:region-a": 17}
    assert got["regions"]["region-c"]["sources"] == {"cache:region-b": 17}
    links = {x["link"]: x["bytes"] for x in got["links"]}
    assert links == {"region-a>region-b": DATA, "region-b>region-c": DATA, "region-a>region-c": 0}
    # And the other way round.
    got = run({"region-b": 20, "region-c": 5}, {"region-b": 1000.0})
    assert got["regions"]["region-b"]["sources"] == {"cache:region-c": 17}
    assert got["regions"]["region-c"]["sources"] == {"store:region-a": 17}


def test_finish_times_add_the_routers_estimates() -> None:
    topo = load(EXAMPLE)
    got = simulate(topo, "region-a", {"region-b": 1}, 3 * PAGE, PAGE, {"region-b": 2.0})
    per_page = route(topo, "region-b", "region-a", [], PAGE)[0].seconds
    assert got["regions"]["region-b"]["finish"] == pytest.approx(2.0 + 3 * per_page)
    assert got["total"]["finish"] == got["regions"]["region-b"]["finish"]


def test_deterministic_and_json() -> None:
    a = run({"region-b": 3, "region-c": 2})
    assert a == run({"region-b": 3, "region-c": 2})
    assert json.loads(json.dumps(a, allow_nan=False)) == a
    assert "region-a>region-b" in render(a)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        run({"region-z": 1})
    with pytest.raises(ValueError, match="page size"):
        simulate(load(EXAMPLE), "region-a", {"region-b": 1}, DATA, 0)
    assert parse_readers("region-b:20, region-c:5@30,region-a") == (
        {"region-b": 20, "region-c": 5, "region-a": 1}, {"region-c": 30.0})
    for bad in ("region-b:x", "region-b:-1", "region-b@soon", "region-b,region-b", ""):
        with pytest.raises(ValueError):
            parse_readers(bad)
    empty = run({"region-b": 2}, size=0)
    assert empty["pages"] == 0 and empty["total"]["bytes"] == 0


def fanout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.fanout", "--topology", str(EXAMPLE), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_cli_prints_the_table() -> None:
    p = fanout("--dataset-gib", "1", "--readers", "region-b:20,region-c:5", "--page-mib", "4")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "256 pages of 4.00 MiB" in out
    for text in ("region-a>region-b", "direct", "20.00 GiB", "store:region-a", "x fewer bytes"):
        assert text in out
    p = fanout("--dataset-gib", "0.25", "--readers", "region-b:2,region-c:1@100", "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["regions"]["region-c"]["sources"] == {"cache:region-b": 64}


def test_cli_refuses_bad_input() -> None:
    p = fanout("--readers", "region-z:3")
    assert p.returncode == 2 and "unknown region 'region-z'" in p.stderr
    p = fanout("--readers", "region-b:3", "--store", "nope")
    assert p.returncode == 2 and "no store 'nope'" in p.stderr
