"""The node's ``/metrics`` endpoint (Prometheus text format), scraped from a
real ``meshd embedded`` process while it serves cold, warm and uncached reads.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.errors import NotFound
from tests.data import payload
from tests.meshd_proc import MeshdProcess

KiB, MiB = 1 << 10, 1 << 20


class Scrape:
    """One scrape: families by name, and sample values by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for fam in self.families.values():
            for s in fam.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        """The value of a sample; 0 for a labelled series not exported yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labels(self, name: str, label: str) -> set[str]:
        return {dict(k)[label] for (n, k) in self.samples if n == name and label in dict(k)}


def scrape(node: MeshdProcess) -> Scrape:
    with urllib.request.urlopen(node.endpoints["metrics"], timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers.get_content_type() == "text/plain"
        return Scrape(resp.read().decode())


def scrape_when(node: MeshdProcess, pred: Callable[[Scrape], bool], timeout: float = 15) -> Scrape:
    """The first scrape for which ``pred`` holds: the disk tier is written behind the reads."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(node)
        if pred(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def page_files(node: MeshdProcess) -> dict[str, int]:
    """Completed page files on the cache disk (name -> size); writes in flight are skipped."""
    out = {}
    for p in (node.data_dir / "pages").rglob("*"):
        if p.name.endswith(".tmp"):
            continue
        try:
            if p.is_file():
                out[str(p)] = p.stat().st_size
        except FileNotFoundError:  # evicted meanwhile
            pass
    return out


def disk_bytes(node: MeshdProcess) -> int:
    return sum(page_files(node).values())


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after(name, **labels) - before(name, **labels)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


def test_exposition_has_the_documented_metrics(meshd: Callable[..., MeshdProcess], store: Path) -> None:
    (store / "f.bin").write_bytes(payload(300 * KiB))
    node = meshd(mounts=[f"/data=file://{store}"], args=["--page-size", "256KiB"])
    with node.client() as c:
        c.cat("/data/f.bin")
    m = scrape(node)
    expected_types = {
        "mesh_read_bytes": "counter",
        "mesh_cache_hits": "counter",
        "mesh_cache_misses": "counter",
        "mesh_pages_evicted": "counter",
        "mesh_understore_requests": "counter",
        "mesh_understore_request_seconds": "histogram",
        "mesh_cache_bytes_used": "gauge",
        "mesh_cache_bytes_capacity": "gauge",
        "mesh_cache_write_errors": "counter",
    }
    for name, typ in expected_types.items():
        assert name in m.families, f"{name} missing from:\n{m.text}"
        assert m.families[name].type == typ, name
    for line in ("mesh_read_bytes_total{source=", "mesh_cache_hits_total", "mesh_cache_misses_total",
                 "mesh_pages_evicted_total", "mesh_understore_requests_total",
                 "mesh_understore_request_seconds_bucket", "mesh_cache_bytes_used{tier="):
        assert line in m.text, line
    assert m.labels("mesh_read_bytes_total", "source") == {"memory", "disk", "peer", "region", "understore", "nocache"}
    assert m.labels("mesh_cache_bytes_used", "tier") == {"memory", "disk"}
    assert m.labels("mesh_cache_hits_total", "tier") == {"memory", "disk"}
    assert m.labels("mesh_pages_evicted_total", "tier") == {"memory", "disk"}
    assert m("mesh_cache_bytes_capacity", tier="memory") == 1 << 30  # the default
    assert 1 <= m("mesh_understore_requests_total", scheme="file", op="get") <= 2  # 2 pages
    # a histogram's +Inf bucket is its count, and its buckets are cumulative
    for op in ("get", "head"):
        count = m("mesh_understore_request_seconds_count", scheme="file", op=op)
        assert count > 0
        assert m("mesh_understore_request_seconds_bucket", scheme="file", op=op, le="+Inf") == count
        les = sorted((float(dict(k)["le"]), v) for (n, k), v in m.samples.items()
                     if n == "mesh_understore_request_seconds_bucket"
                     and dict(k)["op"] == op and dict(k)["scheme"] == "file")
        values = [v for _, v in les]
        assert values == sorted(values)


def test_cold_then_warm_read(meshd: Callable[..., MeshdProcess], store: Path) -> None:
    size = 1 * MiB + 1000  # five 256 KiB pages, the last one short
    pages = 5
    data = payload(size)
    (store / "f.bin").write_bytes(data)
    node = meshd(mounts=[f"/data=file://{store}"], args=["--page-size", "256KiB"])
    c = node.client()

    m0 = scrape(node)
    assert m0("mesh_cache_bytes_used", tier="memory") == 0
    assert m0("mesh_cache_misses_total") == 0

    assert c.cat("/data/f.bin") == data  # cold
    m1 = scrape_when(node, lambda m: m("mesh_cache_bytes_used", tier="disk") == size)
    assert delta(m1, m0, "mesh_read_bytes_total", source="understore") == size
    assert delta(m1, m0, "mesh_read_bytes_total", source="memory") == 0
    assert delta(m1, m0, "mesh_read_bytes_total", source="disk") == 0
    assert delta(m1, m0, "mesh_cache_misses_total") == pages
    assert delta(m1, m0, "mesh_cache_hits_total", tier="memory") == 0
    # one request per page at most (adjacent missing pages may be fetched as one extent)
    gets = delta(m1, m0, "mesh_understore_requests_total", scheme="file", op="get")
    assert 1 <= gets <= pages
    assert delta(m1, m0, "mesh_understore_request_seconds_count", scheme="file", op="get") == gets
    assert delta(m1, m0, "mesh_understore_request_seconds_sum", scheme="file", op="get") > 0
    assert delta(m1, m0, "mesh_understore_read_bytes_total", scheme="file") == size
    assert m1("mesh_cache_bytes_used", tier="memory") == size
    assert m1("mesh_cache_bytes_used", tier="disk") == size

    assert c.cat("/data/f.bin") == data  # warm
    m2 = scrape(node)
    assert delta(m2, m1, "mesh_read_bytes_total", source="memory") == size
    assert delta(m2, m1, "mesh_read_bytes_total", source="understore") == 0
    assert delta(m2, m1, "mesh_cache_hits_total", tier="memory") == pages
    assert delta(m2, m1, "mesh_cache_misses_total") == 0
    assert delta(m2, m1, "mesh_understore_requests_total", scheme="file", op="get") == 0
    assert delta(m2, m1, "mesh_understore_request_seconds_count", scheme="file", op="get") == 0
    assert delta(m2, m1, "mesh_understore_read_bytes_total", scheme="file") == 0
    assert m2("mesh_cache_bytes_used", tier="memory") == size

    # a range read counts only the bytes it returned, from the pages it touched
    assert c.cat("/data/f.bin", 300 * KiB, 10) == data[300 * KiB:300 * KiB + 10]
    m3 = scrape(node)
    assert delta(m3, m2, "mesh_read_bytes_total", source="memory") + \
        delta(m3, m2, "mesh_read_bytes_total", source="disk") > 0
    assert delta(m3, m2, "mesh_cache_misses_total") == 0

    # an uncached read: nocache bytes, nothing new in the tiers
    assert c.cat("/data/f.bin", nocache=True) == data
    m4 = scrape(node)
    assert delta(m4, m3, "mesh_read_bytes_total", source="nocache") == size
    assert delta(m4, m3, "mesh_cache_misses_total") == 0
    assert delta(m4, m3, "mesh_understore_read_bytes_total", scheme="file") == size
    assert m4("mesh_cache_bytes_used", tier="memory") == size

    # a restart keeps the disk tier: the first read after it is a disk hit
    c.close()
    node.restart()
    m5 = scrape(node)
    assert m5("mesh_cache_bytes_used", tier="disk") == size
    assert m5("mesh_cache_bytes_used", tier="memory") == 0
    with node.client() as c2:
        assert c2.cat("/data/f.bin") == data
    m6 = scrape(node)
    assert delta(m6, m5, "mesh_read_bytes_total", source="disk") == size
    assert delta(m6, m5, "mesh_cache_hits_total", tier="disk") == pages
    assert delta(m6, m5, "mesh_cache_misses_total") == 0
    assert delta(m6, m5, "mesh_understore_requests_total", scheme="file", op="get") == 0


def test_understore_errors_are_counted(meshd: Callable[..., MeshdProcess], store: Path) -> None:
    node = meshd(mounts=[f"/data=file://{store}"])
    m0 = scrape(node)
    with node.client() as c, pytest.raises(NotFound):
        c.cat("/data/missing.bin")
    m1 = scrape(node)
    assert delta(m1, m0, "mesh_understore_errors_total", scheme="file", op="head") == 1
    assert delta(m1, m0, "mesh_understore_requests_total", scheme="file", op="head") == 1
    assert delta(m1, m0, "mesh_cache_misses_total") == 0


def test_memory_eviction(meshd: Callable[..., MeshdProcess], store: Path) -> None:
    size = 12 * MiB
    data = payload(size, seed=1)
    (store / "big.bin").write_bytes(data)
    node = meshd(mounts=[f"/data=file://{store}"],
                 args=["--memory-capacity", "8MiB", "--page-size", "1MiB"])
    m0 = scrape(node)
    assert m0("mesh_pages_evicted_total", tier="memory") == 0
    assert m0("mesh_cache_bytes_capacity", tier="memory") == 8 * MiB
    with node.client() as c:
        assert c.cat("/data/big.bin") == data
        m1 = scrape_when(node, lambda m: m("mesh_cache_bytes_used", tier="disk") == size)
        evicted = delta(m1, m0, "mesh_pages_evicted_total", tier="memory")
        assert evicted > 0
        # 12 pages went in; what is left must fit under the high watermark
        used = m1("mesh_cache_bytes_used", tier="memory")
        assert used <= 0.9 * 8 * MiB
        assert used + evicted * MiB == size
        assert m1("mesh_pages_evicted_total", tier="disk") == 0
        assert m1("mesh_cache_bytes_used", tier="disk") == size

        # the evicted (oldest) pages now come from the disk tier, not the under-store
        assert c.cat("/data/big.bin", 0, 2 * MiB) == data[:2 * MiB]
        m2 = scrape(node)
        assert delta(m2, m1, "mesh_read_bytes_total", source="disk") == 2 * MiB
        assert delta(m2, m1, "mesh_read_bytes_total", source="understore") == 0
        assert delta(m2, m1, "mesh_cache_hits_total", tier="disk") == 2

        # reading more keeps evicting
        assert c.cat("/data/big.bin") == data
        m3 = scrape(node)
        assert delta(m3, m2, "mesh_pages_evicted_total", tier="memory") >= 0
        assert m3("mesh_cache_bytes_used", tier="memory") <= 0.9 * 8 * MiB
        assert m3("mesh_read_bytes_total", source="understore") == size


def test_disk_eviction(meshd: Callable[..., MeshdProcess], store: Path) -> None:
    size = 12 * MiB
    data = payload(size, seed=2)
    (store / "big.bin").write_bytes(data)
    node = meshd(mounts=[f"/data=file://{store}"],
                 args=["--memory-capacity", "4MiB", "--disk-capacity", "8MiB", "--page-size", "1MiB"])
    with node.client() as c:
        assert c.cat("/data/big.bin") == data

        def settled(m: Scrape) -> bool:  # every page written to disk, or evicted from it
            return (m("mesh_cache_bytes_used", tier="disk")
                    + m("mesh_pages_evicted_total", tier="disk") * MiB) == size

        m1 = scrape_when(node, settled)
        assert settled(m1)
        assert m1("mesh_pages_evicted_total", tier="disk") > 0
        assert m1("mesh_pages_evicted_total", tier="memory") > 0
        assert m1("mesh_cache_bytes_used", tier="disk") <= 0.9 * 8 * MiB
        assert disk_bytes(node) == m1("mesh_cache_bytes_used", tier="disk")
        # the first page is in neither tier any more: it is a miss again
        assert c.cat("/data/big.bin", 0, 10) == data[:10]
        m2 = scrape(node)
        assert delta(m2, m1, "mesh_cache_misses_total") == 1
        assert delta(m2, m1, "mesh_read_bytes_total", source="understore") == MiB
    node.stop()  # drains the disk writes
    assert disk_bytes(node) <= 0.9 * 8 * MiB


def test_s3_requests_match_the_server(meshd: Callable[..., MeshdProcess], s3_server: Any,
                                      s3_bucket: Any) -> None:
    size = 1 * MiB
    data = payload(size, seed=3)
    s3_server.client().put_object(Bucket=s3_bucket.name, Key="p/f.bin", Body=data)
    opts = ",".join(f"{k}={v}" for k, v in s3_bucket.options.items())
    node = meshd(mounts=[f"/s3={s3_bucket.uri('p')},{opts}"], args=["--page-size", "256KiB"])
    m0 = scrape(node)
    gets0 = s3_server.get_requests(s3_bucket.name, "p/f.bin")
    bytes0 = s3_server.get_bytes(s3_bucket.name, "p/f.bin")
    with node.client() as c:
        assert c.cat("/s3/f.bin") == data
        m1 = scrape(node)
        gets1 = s3_server.get_requests(s3_bucket.name, "p/f.bin")
        assert 1 <= gets1 - gets0 <= 4  # at most one GET per 256 KiB page
        # what the node counts is what the server saw
        assert delta(m1, m0, "mesh_understore_requests_total", scheme="s3", op="get") == gets1 - gets0
        assert delta(m1, m0, "mesh_understore_request_seconds_count", scheme="s3", op="get") == \
            gets1 - gets0
        assert delta(m1, m0, "mesh_understore_read_bytes_total", scheme="s3") == size
        assert s3_server.get_bytes(s3_bucket.name, "p/f.bin") - bytes0 == size
        assert c.cat("/s3/f.bin") == data
        m2 = scrape(node)
        assert s3_server.get_requests(s3_bucket.name, "p/f.bin") == gets1
        assert delta(m2, m1, "mesh_understore_requests_total", scheme="s3", op="get") == 0
        assert delta(m2, m1, "mesh_read_bytes_total", source="memory") == size


def test_disk_bytes_used_matches_the_page_files_after_free(meshd: Callable[..., MeshdProcess],
                                                          store: Path) -> None:
    """``free`` racing the write-behind of the disk tier must not leave page files behind.

    Every page file on the cache disk is accounted for in
    ``mesh_cache_bytes_used{tier="disk"}`` (and so bounded by the capacity): a
    freed page whose disk write was still queued must not land as an orphan
    file that no eviction will ever remove. The race window is small, so the
    test loads and frees many files back to back.
    """
    n = 24
    for i in range(n):
        (store / f"f{i}.bin").write_bytes(payload(4 * MiB, seed=10 + i))
    (store / "kept.bin").write_bytes(payload(MiB, seed=99))
    node = meshd(mounts=[f"/data=file://{store}"], args=["--page-size", "64KiB"])
    with node.client() as c:
        assert c.cat("/data/kept.bin") == payload(MiB, seed=99)
        for i in range(n):
            list(c.load(f"/data/f{i}.bin"))
            assert c.free(f"/data/f{i}.bin") == 4 * MiB
    m = scrape_when(node, lambda m: m("mesh_cache_bytes_used", tier="disk") == MiB)
    assert m("mesh_cache_bytes_used", tier="disk") == MiB  # kept.bin's 16 pages, nothing else
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # let queued writes land
        on_disk = disk_bytes(node)
        time.sleep(0.2)
        if on_disk == disk_bytes(node):
            break
    assert disk_bytes(node) == MiB, f"{len(page_files(node))} page files on disk, 16 accounted for"
    node.stop()
    assert disk_bytes(node) == MiB
