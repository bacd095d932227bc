"""Tests of the emulated multi-region network (tests/netns.py). Need root, ip and tc."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.netns import Regions, Sampler, cleanup_leftovers, max_window_rate, mean_rate

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
RATE = 80_000_000  # bits/s
MB = 1_000_000

# A one-connection TCP server: "sink" reads until EOF, "source" sends N bytes (N < 0:
# until an error). Prints "ready" once listening, then "ok <bytes> <peer address>" or
# "error <exception> <bytes>" (exit 3). Socket operations time out after TIMEOUT s.
SERVER = """\
import socket, sys
host, port, mode, n, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1)
print("ready", flush=True)
s.settimeout(30)
c, peer = s.accept()
c.settimeout(timeout)
done = 0
try:
    if mode == "sink":
        while d := c.recv(1 << 20):
            done += len(d)
    else:
        buf = b"x" * (1 << 16)
        while n < 0 or done < n:
            done += c.send(buf if n < 0 else buf[: n - done])
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
except OSError as e:
    print("error", type(e).__name__, done, flush=True)
    sys.exit(3)
print("ok", done, peer[0], flush=True)
"""

# A TCP client bound to its region address: "send N" or "recv" (until EOF). Prints
# "ok <bytes> <t_connected> <t_done>" (time.monotonic()) or "error <exception> <bytes>".
CLIENT = """\
import socket, sys, time
host, port, mode, n, src, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
done = 0
try:
    c = socket.create_connection((host, port), timeout=timeout, source_address=(src, 0))
    t0 = time.monotonic()
    if mode == "send":
        buf = b"y" * (1 << 16)
        while done < n:
            done += c.send(buf[: n - done])
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
    else:
        while d := c.recv(1 << 20):
            done += len(d)
    t1 = time.monotonic()
    c.close()
except OSError as e:
    print("error", type(e).__name__, done, flush=True)
    sys.exit(3)
print("ok", done, t0, t1, flush=True)
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Regions]:
    cleanup_leftovers()
    with Regions(["a", "b", "c"],
                 {("a", "b"): RATE, ("b", "c"): RATE, ("a", "c"): RATE}) as r:
        yield r


def start_server(net: Regions, region: str, port: int, mode: str, n: int = 0,
                 timeout: float = 10.0) -> subprocess.Popen[str]:
    p = net.popen(region, [PY, "-c", SERVER, net.address(region), str(port), mode, str(n),
                           str(timeout)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def client(net: Regions, region: str, server: str, port: int, mode: str, n: int = 0,
           timeout: float = 10.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    return net.run(region, [PY, "-c", CLIENT, net.address(server), str(port), mode, str(n),
                            net.address(region), str(timeout)], timeout=60, **kw)


def all_counters(net: Regions) -> dict[tuple[str, str], dict[str, int]]:
    return {(r, p): net.counters(r, p) for r in net.names for p in net.names if r != p}


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- layout


def test_names_and_addresses(net: Regions) -> None:
    assert net.tag.startswith(netns.PREFIX) and len(net.tag) == 6
    assert [net.address(r) for r in "abc"] == ["10.77.1.1", "10.77.2.1", "10.77.3.1"]
    assert net.ns("a") == f"{net.tag}-a" and net.ns("a") in netns_list()
    assert net.dev("a", "b") == f"{net.tag}-b" and net.dev("b", "a") == f"{net.tag}-a"
    for r in net.names:
        for p in net.names:
            if r != p:
                assert len(net.dev(r, p)) <= 15
    routes = net.run("b", ["ip", "-4", "route"]).stdout
    assert f"10.77.1.1 via 10.78.1.1 dev {net.dev('b', 'a')} src 10.77.2.1" in routes
    assert f"10.77.3.1 via 10.78.2.2 dev {net.dev('b', 'c')} src 10.77.2.1" in routes
    assert "default" not in routes
    q = net.run("a", ["tc", "qdisc", "show", "dev", net.dev("a", "b")]).stdout
    assert "tbf" in q and "rate 80Mbit" in q and "burst 100000b" in q, q


def test_long_region_names_fall_back_to_index() -> None:
    with Regions(["region-one", "region-two"], {("region-one", "region-two"): None}) as r:
        assert r.dev("region-one", "region-two") == f"{r.tag}-2"
        assert r.dev("region-two", "region-one") == f"{r.tag}-1"
        server = start_server(r, "region-two", 5000, "sink")
        cp = client(r, "region-one", "region-two", 5000, "send", 1000)
        assert cp.stdout.split()[:2] == ["ok", "1000"]
        assert server.communicate(timeout=10)[0].split() == ["ok", "1000", "10.77.1.1"]


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(("src", "dst"), [("b", "a"), ("c", "b")])
def test_traffic_uses_only_the_direct_link(net: Regions, src: str, dst: str) -> None:
    n = 3 * MB
    server = start_server(net, dst, 5001, "sink")
    before = all_counters(net)
    cp = client(net, src, dst, 5001, "send", n)
    out, _ = server.communicate(timeout=20)
    after = all_counters(net)
    assert cp.stdout.split()[:2] == ["ok", str(n)]
    # The server saw the client's region address (not a link address).
    assert out.split() == ["ok", str(n), net.address(src)]
    delta = {k: {c: after[k][c] - before[k][c] for c in after[k]} for k in after}
    assert delta[(src, dst)]["tx_bytes"] >= n
    assert delta[(dst, src)]["rx_bytes"] >= n
    assert delta[(dst, src)]["rx_bytes"] == delta[(src, dst)]["tx_bytes"]
    assert delta[(dst, src)]["tx_bytes"] > 0  # ACKs
    for key, d in delta.items():
        if set(key) != {src, dst}:
            assert d == {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0}, key


def test_no_forwarding_through_a_third_region() -> None:
    # Only a-b and b-c: a cannot reach c (b does not forward, a has no route).
    with Regions(["a", "b", "c"], {("a", "b"): None, ("b", "c"): None}) as r:
        cp = r.run("a", [PY, "-c", "import socket,sys; socket.create_connection("
                         "(sys.argv[1], 9), timeout=3)", r.address("c")], check=False)
        assert cp.returncode != 0 and "Network is unreachable" in cp.stderr, cp.stderr
        assert r.run("b", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"


# --------------------------------------------------------------------------- shaping


@pytest.mark.parametrize(("rate", "size"), [(RATE, 20 * MB), (RATE // 2, 10 * MB)])
def test_shaping_achieves_rate(net: Regions, rate: int, size: int) -> None:
    net.set_rate("a", "b", rate)
    try:
        q = net.run("a", ["tc", "-j", "qdisc", "show", "dev", net.dev("a", "b")]).stdout
        assert f'"rate":{rate // 8},' in q
        server = start_server(net, "a", 5002, "source", size)
        sampler = Sampler(net, "b", "a", interval=0.05)
        wire0 = net.qdisc_stats("a", "b")["bytes"]
        try:
            cp = client(net, "b", "a", 5002, "recv")
        finally:
            samples = sampler.stop()
        wire = net.qdisc_stats("a", "b")["bytes"] - wire0
        server.wait(10)
    finally:
        net.set_rate("a", "b", RATE)
    _, got, t0, t1 = cp.stdout.split()
    assert int(got) == size
    # Counters count L2 bytes incl. Ethernet header but, with GSO, one set of headers per
    # super-packet, i.e. ~4.4 % below the wire bytes tbf charges (module docstring): the
    # measured rate is ~0.96 of the configured one.
    bytes_per_s = rate / 8
    achieved = mean_rate(samples, float(t0), float(t1)) / bytes_per_s
    peak = max_window_rate(samples, 1.0) / bytes_per_s
    # What tbf charged (wire frames) over the transfer, incl. the bucket's initial burst.
    on_wire = wire / (float(t1) - float(t0)) / bytes_per_s
    print(f"rate {rate / 1e6:.0f} Mbit/s: counters mean {achieved:.3f}, max 1 s window"
          f" {peak:.3f}, wire (tbf) {on_wire:.3f} of configured"
          f" ({len(samples)} samples over {float(t1) - float(t0):.2f} s)")
    assert 0.85 <= achieved <= 1.05
    assert peak <= 1.1
    assert 0.95 <= on_wire <= 1.05


def test_without_gso_counters_equal_wire_bytes() -> None:
    with Regions(["x", "y"], {("x", "y"): RATE}, gso=False) as r:
        srv = start_server(r, "x", 5003, "source", 4 * MB)
        q0, c0 = r.qdisc_stats("x", "y"), r.counters("y", "x")
        client(r, "y", "x", 5003, "recv")
        srv.wait(10)
        q1, c1 = r.qdisc_stats("x", "y"), r.counters("y", "x")
        wire = q1["bytes"] - q0["bytes"]
        assert c1["rx_bytes"] - c0["rx_bytes"] == wire
        assert c1["rx_packets"] - c0["rx_packets"] == q1["packets"] - q0["packets"]
        # 1448 payload bytes per 1514-byte frame.
        assert 4 * MB * 1514 / 1448 <= wire < 4 * MB * 1514 / 1448 * 1.01


def test_with_gso_counters_undercount_wire_bytes(net: Regions) -> None:
    srv = start_server(net, "c", 5004, "source", 4 * MB)
    q0, c0 = net.qdisc_stats("c", "a"), net.counters("a", "c")
    client(net, "a", "c", 5004, "recv")
    srv.wait(10)
    q1, c1 = net.qdisc_stats("c", "a"), net.counters("a", "c")
    wire, counted = q1["bytes"] - q0["bytes"], c1["rx_bytes"] - c0["rx_bytes"]
    assert 4 * MB * 1514 / 1448 <= wire
    assert 4 * MB <= counted < wire
    assert c1["rx_packets"] - c0["rx_packets"] < q1["packets"] - q0["packets"]


# --------------------------------------------------------------------------- link failure


def test_link_down_mid_transfer_then_up(net: Regions) -> None:
    server = start_server(net, "a", 5005, "source", -1, timeout=2.0)
    receiver = net.popen("b", [PY, "-c", CLIENT, net.address("a"), "5005", "recv", "0",
                               net.address("b"), "2.0"], stdout=subprocess.PIPE, text=True)
    start = net.counters("b", "a")["rx_bytes"]
    deadline = time.monotonic() + 10
    while net.counters("b", "a")["rx_bytes"] - start < 2 * MB:
        assert time.monotonic() < deadline and receiver.poll() is None
        time.sleep(0.05)
    others = {k: net.counters(*k) for k in [("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")]}
    t_down = time.monotonic()
    net.set_link("a", "b", False)
    try:
        out, _ = server.communicate(timeout=15)
        assert server.returncode == 3 and out.startswith("error"), out
        rout, _ = receiver.communicate(timeout=15)
        assert receiver.returncode == 3 and rout.startswith("error"), rout
        assert time.monotonic() - t_down < 10
        assert "state DOWN" in net.run("a", ["ip", "link", "show", net.dev("a", "b")]).stdout
        # No detour over c while a-b is down.
        assert {k: net.counters(*k) for k in others} == others
        cp = client(net, "b", "a", 5006, "send", 1000, timeout=2.0, check=False)
        assert cp.returncode == 3 and "OSError" in cp.stdout  # ENETUNREACH
    finally:
        net.set_link("a", "b", True)
    server = start_server(net, "a", 5007, "sink")
    cp = client(net, "b", "a", 5007, "send", MB)
    assert cp.stdout.split()[:2] == ["ok", str(MB)]
    assert server.communicate(timeout=10)[0].split()[:2] == ["ok", str(MB)]
    assert "rate 80Mbit" in net.run("a", ["tc", "qdisc", "show", "dev", net.dev("a", "b")]).stdout


# --------------------------------------------------------------------------- rates (unit)


def brute_force_max(samples: list[tuple[float, int]], window: float) -> float:
    return max((vj - vi) / (tj - ti) for i, (ti, vi) in enumerate(samples)
               for tj, vj in samples[i + 1:] if tj - ti >= window)


def test_max_window_rate_constant_rate() -> None:
    samples = [(i * 0.05, i * 500) for i in range(101)]  # 10 000 units/s for 5 s
    assert max_window_rate(samples, 1.0) == pytest.approx(10_000)
    assert mean_rate(samples, 0.0, 5.0) == pytest.approx(10_000)
    assert mean_rate(samples, 0.02, 1.03) == pytest.approx(10_000)  # samples 0.05..1.0


def test_max_window_rate_burst_inside_sliding_window() -> None:
    # 1 unit/s, except 100 units between t=2.2 and t=2.4 (not aligned to whole seconds).
    samples, v = [], 0.0
    for i in range(101):
        t = i * 0.05
        samples.append((t, round(v)))
        v += 0.05 + (25 if 2.2 <= t < 2.4 else 0)
    best = max_window_rate(samples, 1.0)
    assert best == pytest.approx(101, abs=0.5)
    assert best == pytest.approx(brute_force_max(samples, 1.0))
    # Windows must be >= window long: a 0.2 s burst does not count as 500 units/s.
    assert best < 200


def test_max_window_rate_matches_brute_force_on_irregular_samples() -> None:
    rng = random.Random(1)
    for _ in range(200):
        t, v, samples = 0.0, 0, []
        for _ in range(rng.randint(2, 60)):
            samples.append((t, v))
            t += rng.choice([0.01, 0.05, 0.3, 0.7, 1.5]) * rng.random() + 1e-6
            v += rng.choice([0, 1, 10, 1000]) * rng.randint(0, 5)
        window = rng.choice([0.1, 0.5, 1.0, 2.0])
        if samples[-1][0] - samples[0][0] < window:
            with pytest.raises(ValueError):
                max_window_rate(samples, window)
            continue
        assert max_window_rate(samples, window) == pytest.approx(
            brute_force_max(samples, window))


def test_rate_helpers_reject_short_input() -> None:
    with pytest.raises(ValueError):
        max_window_rate([(0.0, 0), (0.5, 10)], 1.0)
    with pytest.raises(ValueError):
        mean_rate([(0.0, 0), (0.5, 10)], 0.1, 0.6)


# --------------------------------------------------------------------------- teardown


def test_close_kills_processes_and_removes_namespaces() -> None:
    r = Regions(["x", "y"], {("x", "y"): 10_000_000})
    tag = r.tag
    lock = netns.LOCK_DIR / f"{tag}.lock"
    assert lock.exists()
    # A group leader with a child: the whole process group must go.
    p = r.popen("x", ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                text=True)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    q = r.popen("y", ["sleep", "60"])
    r.close()
    assert p.poll() is not None and q.poll() is not None
    assert not process_alive(child)
    assert not [n for n in netns_list() if n.startswith(tag)]
    assert not lock.exists()
    r.close()  # idempotent
    with pytest.raises(RuntimeError):
        r.popen("x", ["true"])


def test_context_manager_and_half_way_setup_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with Regions(["x"], {}) as r:
        assert r.ns("x") in netns_list()
    assert r.ns("x") not in netns_list()

    tags: list[str] = []

    def fail(self: Regions, *args: object, **kw: object) -> None:
        tags.append(self.tag)
        raise RuntimeError("injected")

    monkeypatch.setattr(Regions, "_shape", fail)
    with pytest.raises(RuntimeError, match="injected"):
        Regions(["x", "y", "z"], {("x", "y"): RATE, ("y", "z"): RATE})
    assert tags and not [n for n in netns_list() if n.startswith(tags[0])]
    assert not (netns.LOCK_DIR / f"{tags[0]}.lock").exists()


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_cleanup_leftovers_removes_crashed_instance_only(net: Regions) -> None:
    # Another process builds regions, starts a process in one and waits; SIGKILL makes
    # it a crashed run.
    owner_code = ("import subprocess, sys\n"
                  "from tests.netns import Regions\n"
                  "r = Regions(['a', 'b'], {('a', 'b'): 1_000_000})\n"
                  "p = r.popen('a', ['sleep', '60'], stdout=subprocess.DEVNULL,"
                  " stderr=subprocess.DEVNULL)\n"
                  "print(r.tag, p.pid, flush=True)\n"
                  "sys.stdin.read()\n")
    owner = subprocess.Popen([PY, "-c", owner_code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert owner.stdout is not None
        tag, pid = owner.stdout.readline().split()
        names = {f"{tag}-a", f"{tag}-b"}
        assert names <= set(netns_list()) and process_alive(int(pid))
        # While its owner lives, an instance is not a leftover, in any process.
        assert not names & set(cleanup_leftovers())
        assert names <= set(netns_list()) and process_alive(int(pid))
    finally:
        owner.kill()
        owner.wait()
    removed = cleanup_leftovers()
    # (A cleaner of a concurrent run may have been first; the result is the same.)
    assert names <= set(removed) or not names & set(netns_list())
    assert not [n for n in netns_list() if n.startswith(tag)]
    assert not (netns.LOCK_DIR / f"{tag}.lock").exists()
    deadline = time.monotonic() + 5
    while process_alive(int(pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The live instance of this process is untouched and still works.
    assert not [n for n in removed if n.startswith(net.tag)]
    assert all(net.ns(r) in netns_list() for r in net.names)
    assert net.run("a", ["ip", "link", "show", net.dev("a", "b")]).returncode == 0
