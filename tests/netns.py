"""An emulated multi-region network on one machine (Linux network namespaces, root only).

What is emulated
----------------
Each *region* is one network namespace. Every pair of regions named in ``links`` is
joined by a direct point-to-point "WAN link": a veth pair whose two ends live in the two
namespaces. Each end is shaped on egress with a token bucket filter (``tc ... tbf``), so
both directions of a link are limited to the configured rate independently (as on a
full-duplex line). There is no latency/loss emulation (netem is not available here) and
no forwarding: a region reaches another region only over the direct link between them
(``net.ipv4.ip_forward=0`` in every namespace; routes exist only for direct peers).
IPv6 is disabled in the namespaces so that idle links carry no traffic at all (no
router solicitations, DAD, MLD), which keeps the interface counters exact.

Names
-----
Each :class:`Regions` instance has a tag ``PREFIX + 4 hex digits`` (e.g. ``mt1a2b``).
Namespaces are ``<tag>-<region>`` (``mt1a2b-a``); the interface in region ``r`` leading to
``peer`` is ``<tag>-<peer>`` (``mt1a2b-b`` inside ``mt1a2b-a``), or ``<tag>-<index of
peer>`` if that would exceed the 15-character limit of interface names. Veth pairs are
created directly inside their namespaces and never appear in the host namespace.

An instance holds an exclusive ``flock`` on ``/run/mt-netns/<tag>.lock`` for its
lifetime; the kernel drops it when the owning process dies, however it dies.
:func:`cleanup_leftovers` removes the namespaces (and kills the processes in them) of
every tag whose lock is not held, i.e. of crashed runs only, so it is safe to call at
the start of a run even while other runs use the harness concurrently.

Addressing plan
---------------
* Region ``k`` (1-based, in the order of ``names``) has the *region address*
  ``10.77.<k>.1/32`` on its ``lo``. Servers in a region bind to it; other regions connect
  to it. Routes carry ``src <region address>``, so outgoing connections use it as their
  source address even when the client does not bind.
* Link ``n`` (1-based, in the order of ``links``) ``(x, y)`` is ``10.78.<n>.0/30``:
  ``x``'s end is ``10.78.<n>.1``, ``y``'s end ``10.78.<n>.2``.
* In ``x``: ``10.77.<k_y>.1/32 via 10.78.<n>.2 dev <x's end> src 10.77.<k_x>.1``, and
  symmetrically in ``y``. Nothing else is routable (no default route).
* MTU stays at 1500 (TCP MSS 1460, 1448 payload bytes per segment with timestamps).

Shaping parameters
------------------
``tc qdisc add dev X root tbf rate R burst B latency 50ms`` on both ends, with
``B = max(R / 8 * 10 ms, 16 KiB)`` bytes (:func:`tbf_burst`): 10 ms worth of the rate,
so that the shaper keeps up with scheduling jitter, and at least about ten full-size
frames. At 80 Mbit/s that is 100 000 bytes; the bucket lets at most B bytes through
above the rate, which is under 1 % of one second at any rate. ``latency 50ms`` bounds
the queue (limit = R * 50 ms + B). tbf charges every packet its length *including the
14-byte Ethernet header* (but no preamble/FCS/inter-frame gap) and, for GSO packets,
the headers of every segment, so a bulk TCP transfer achieves R on the wire, i.e.
``R * 1448 / 1514`` (95.6 %) in TCP payload. Measured (tests/test_netns_harness.py):
20 MB at 80 Mbit/s (and 10 MB at 40 Mbit/s) take 2.08 s; tbf charged 1.005 R (the
0.5 % is the initial bucket), the receiving interface's rx counter grew at 0.96 R
(GSO, below), and the highest 1 s window of that counter was 0.965 R.
:meth:`Regions.set_rate` replaces the qdisc (``tc qdisc replace``).

Counters and offloads
---------------------
:meth:`Regions.counters` reads the kernel's interface counters (``stats64``) inside the
namespace. veth counts ``skb->len`` per skb as handed to the device: L2 frames including
the 14-byte Ethernet header. Offloads are left at the kernel defaults (``ethtool`` is
not installed; shaping is correct either way because tbf accounts per segment): TCP over
veth then sends GSO "super-packets" of up to 64 KiB, and a super-packet of n segments is
counted as *one* packet of ``66 + n * 1448`` bytes, while on a real wire it would be n
frames of 1514 bytes. So with GSO, counter bytes are about payload + 0.1 % and about
4.4 % *less* than the wire bytes tbf charged (see :meth:`Regions.qdisc_stats`), and the
packet counters count super-packets. With ``Regions(..., gso=False)`` each veth end gets
``gso_max_segs 1`` (settable with ``ip link``), TCP sends single-segment skbs, and the
counters equal the wire frames exactly (rx bytes at one end == bytes tbf sent at the
other end), at the cost of ~one skb per 1448 bytes of CPU work.

Link failure
------------
:meth:`Regions.set_link` sets both ends administratively down, which also makes the
kernel delete the routes over them: new connections to the peer fail at once with
``ENETUNREACH`` and established connections stall (retransmissions have no route) until
socket timeouts fire. Bringing the link up restores the qdisc (which survives) and the
static routes.

Processes
---------
:meth:`Regions.popen` runs ``ip netns exec <ns> argv...`` (``ip`` execs ``argv``, so the
pid is the program's) in a new session/process group, with the caller's environment;
:meth:`Regions.close` SIGTERMs then SIGKILLs every such group and SIGKILLs anything else
still inside the namespaces before deleting them (which deletes the veths).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "PREFIX",
    "Regions",
    "Sampler",
    "cleanup_leftovers",
    "max_window_rate",
    "mean_rate",
    "tbf_burst",
]

PREFIX = "mt"
"""Fixed prefix of every tag (and so of every namespace) made by this harness."""

LOCK_DIR = Path("/run/mt-netns")
TBF_LATENCY_MS = 50
TBF_BURST_SECONDS = 0.01
TBF_MIN_BURST = 16 * 1024
IFNAMSIZ = 15

_TAG_RE = re.compile(rf"^({PREFIX}[0-9a-f]{{4}})-")
_REGION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_CMD_TIMEOUT = 20.0

Samples = list[tuple[float, int]]


# --------------------------------------------------------------------------- helpers


def _sh(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a setup command (``ip``/``tc``) and raise with its stderr if it fails."""
    cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def tbf_burst(rate_bits_per_s: float) -> int:
    """Bucket size in bytes for a tbf of this rate: 10 ms of rate, at least 16 KiB."""
    return max(int(rate_bits_per_s / 8 * TBF_BURST_SECONDS), TBF_MIN_BURST)


def _list_netns() -> list[str]:
    out = _sh(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    cp = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def _kill_namespaces(names: Iterable[str], wait: float = 5.0) -> None:
    """SIGKILL every process inside the namespaces, wait for them, delete the namespaces."""
    names = list(names)
    deadline = time.monotonic() + wait
    while True:
        pids = [pid for ns in names for pid in _netns_pids(ns)]
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for ns in names:
        cp = _sh(["ip", "netns", "del", ns], check=False)
        if cp.returncode != 0 and ns in _list_netns():
            raise RuntimeError(f"ip netns del {ns} failed: {cp.stderr.strip()}")


def _lock_path(tag: str) -> Path:
    return LOCK_DIR / f"{tag}.lock"


def _try_lock(path: Path) -> int | None:
    """Open and exclusively flock ``path`` (creating it); None if someone holds it.

    Also None if the file was unlinked/replaced between open and flock (a cleaner
    removed it), so a held lock always belongs to the file currently at ``path``.
    """
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _release_lock(path: Path, fd: int) -> None:
    """Unlink the lock file while still holding the lock, then drop it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def cleanup_leftovers() -> list[str]:
    """Remove namespaces left behind by crashed harness runs; return their names.

    Considers namespaces named ``<PREFIX><4 hex>-...``; a tag is a leftover when no live
    process holds its lock (see the module docstring), so namespaces of live instances,
    in this or any other process, are never touched. Processes still running inside the
    leftover namespaces are killed. Stale lock files are removed as well.
    """
    by_tag: dict[str, list[str]] = {}
    for name in _list_netns():
        m = _TAG_RE.match(name)
        if m:
            by_tag.setdefault(m.group(1), []).append(name)
    if LOCK_DIR.is_dir():
        for f in LOCK_DIR.glob(f"{PREFIX}*.lock"):
            by_tag.setdefault(f.name.removesuffix(".lock"), [])
    removed: list[str] = []
    for tag, names in sorted(by_tag.items()):
        path = _lock_path(tag)
        fd = _try_lock(path)
        if fd is None:
            continue  # owner alive
        try:
            _kill_namespaces(names)
            removed.extend(names)
        finally:
            _release_lock(path, fd)
    return removed


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- Regions


class _Link:
    def __init__(self, index: int, a: str, b: str, rate: float | None) -> None:
        self.index = index
        self.a, self.b = a, b
        self.rate = rate

    def p2p(self, region: str) -> str:
        """Address of ``region``'s end of this link."""
        return f"10.78.{self.index}.{1 if region == self.a else 2}"

    def other(self, region: str) -> str:
        return self.b if region == self.a else self.a


class Regions:
    """Namespaces for ``names`` joined by tbf-shaped veth links (see module docstring).

    ``links`` maps unordered region pairs to a rate in bits/s (None: unshaped). Use as a
    context manager or call :meth:`close`. Requires root.
    """

    def __init__(
        self,
        names: Sequence[str],
        links: Mapping[tuple[str, str], float | None],
        *,
        gso: bool = True,
        latency_ms: float = TBF_LATENCY_MS,
    ) -> None:
        self.names = list(names)
        self.gso = gso
        self.latency_ms = latency_ms
        self._validate(links)
        self._index = {r: k for k, r in enumerate(self.names, start=1)}
        self._links: dict[frozenset[str], _Link] = {}
        for n, ((a, b), rate) in enumerate(links.items(), start=1):
            self._links[frozenset((a, b))] = _Link(n, a, b, rate)
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._lock_fd: int | None = None
        self._closed = False
        self.tag = self._acquire_tag()
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- construction

    def _validate(self, links: Mapping[tuple[str, str], float | None]) -> None:
        if len(set(self.names)) != len(self.names) or not 1 <= len(self.names) <= 254:
            raise ValueError(f"need 1..254 distinct region names, got {self.names}")
        for r in self.names:
            if not _REGION_RE.match(r):
                raise ValueError(f"bad region name {r!r}")
        if len(links) > 255:
            raise ValueError("at most 255 links")
        seen: set[frozenset[str]] = set()
        for (a, b), rate in links.items():
            if a not in self.names or b not in self.names or a == b:
                raise ValueError(f"bad link {(a, b)}")
            if frozenset((a, b)) in seen:
                raise ValueError(f"duplicate link {(a, b)}")
            seen.add(frozenset((a, b)))
            if rate is not None and rate <= 0:
                raise ValueError(f"bad rate {rate} for link {(a, b)}")

    def _acquire_tag(self) -> str:
        existing = {m.group(1) for n in _list_netns() if (m := _TAG_RE.match(n))}
        for _ in range(1000):
            tag = PREFIX + secrets.token_hex(2)
            if tag in existing:
                continue
            fd = _try_lock(_lock_path(tag))
            if fd is None:
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            return tag
        raise RuntimeError("no free harness tag")

    def _setup(self) -> None:
        for r in self.names:
            ns = self.ns(r)
            _sh(["ip", "netns", "add", ns])
            self._created.append(ns)
            # Before any veth exists, so the veths inherit disable_ipv6 from "default".
            _sh(["ip", "netns", "exec", ns, "sh", "-ec",
                 "echo 0 > /proc/sys/net/ipv4/ip_forward;"
                 " echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6;"
                 " echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"])
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            _sh(["ip", "-n", ns, "addr", "add", f"{self.address(r)}/32", "dev", "lo"])
        for link in self._links.values():
            a, b = link.a, link.b
            _sh(["ip", "link", "add", self.dev(a, b), "netns", self.ns(a), "type", "veth",
                 "peer", "name", self.dev(b, a), "netns", self.ns(b)])
            for r in (a, b):
                ns, dev = self.ns(r), self.dev(r, link.other(r))
                if not self.gso:
                    _sh(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"])
                _sh(["ip", "-n", ns, "addr", "add", f"{link.p2p(r)}/30", "dev", dev])
                _sh(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
                if link.rate is not None:
                    self._shape(r, link.other(r), link.rate)
            for r in (a, b):
                self._route(r, link.other(r))

    def _shape(self, region: str, peer: str, rate: float, verb: str = "add") -> None:
        _sh(["tc", "-n", self.ns(region), "qdisc", verb, "dev", self.dev(region, peer),
             "root", "tbf", "rate", f"{int(rate)}bit", "burst", str(tbf_burst(rate)),
             "latency", f"{self.latency_ms}ms"])

    def _route(self, region: str, peer: str) -> None:
        link = self._link(region, peer)
        _sh(["ip", "-n", self.ns(region), "route", "replace", f"{self.address(peer)}/32",
             "via", link.p2p(peer), "dev", self.dev(region, peer), "src", self.address(region)])

    def _link(self, a: str, b: str) -> _Link:
        try:
            return self._links[frozenset((a, b))]
        except KeyError:
            raise KeyError(f"no link between {a!r} and {b!r}") from None

    # -- accessors

    def ns(self, region: str) -> str:
        """Name of the namespace of ``region``."""
        if region not in self._index:
            raise KeyError(region)
        return f"{self.tag}-{region}"

    def address(self, region: str) -> str:
        """The region address (on ``lo``) of ``region``: ``10.77.<k>.1``."""
        return f"10.77.{self._index[region]}.1"

    def dev(self, region: str, peer: str) -> str:
        """The interface inside ``region``'s namespace that leads to ``peer``."""
        self._link(region, peer)
        name = f"{self.tag}-{peer}"
        return name if len(name) <= IFNAMSIZ else f"{self.tag}-{self._index[peer]}"

    def rate(self, a: str, b: str) -> float | None:
        """The configured rate of link a-b in bits/s (None: unshaped)."""
        return self._link(a, b).rate

    # -- link control

    def set_link(self, a: str, b: str, up: bool) -> None:
        """Take both ends of the a-b link administratively down, or up again."""
        state = "up" if up else "down"
        for r, p in ((a, b), (b, a)):
            _sh(["ip", "-n", self.ns(r), "link", "set", "dev", self.dev(r, p), state])
        if up:  # the kernel deleted the routes over the link when it went down
            for r, p in ((a, b), (b, a)):
                self._route(r, p)

    def set_rate(self, a: str, b: str, bits_per_s: float) -> None:
        """Change the rate of both directions of link a-b (``tc qdisc replace``)."""
        if bits_per_s <= 0:
            raise ValueError(f"bad rate {bits_per_s}")
        link = self._link(a, b)
        for r, p in ((a, b), (b, a)):
            self._shape(r, p, bits_per_s, verb="replace")
        link.rate = bits_per_s

    # -- statistics

    def counters(self, region: str, peer: str) -> dict[str, int]:
        """Interface counters of ``dev(region, peer)``: rx/tx bytes and packets.

        Bytes are L2 frames incl. the Ethernet header; see the module docstring for GSO.
        """
        out = _sh(["ip", "-n", self.ns(region), "-s", "-j", "link", "show", "dev",
                   self.dev(region, peer)]).stdout
        st = json.loads(out)[0]["stats64"]
        return {
            "rx_bytes": st["rx"]["bytes"],
            "tx_bytes": st["tx"]["bytes"],
            "rx_packets": st["rx"]["packets"],
            "tx_packets": st["tx"]["packets"],
        }

    def qdisc_stats(self, region: str, peer: str) -> dict[str, int]:
        """Statistics of the root qdisc of ``dev(region, peer)`` (the egress shaper).

        ``bytes``/``packets`` are what tbf charged: wire frames incl. Ethernet header,
        with GSO packets counted per segment. Also ``drops``, ``overlimits``, ``backlog``.
        """
        out = _sh(["tc", "-n", self.ns(region), "-s", "-j", "qdisc", "show", "dev",
                   self.dev(region, peer), "root"]).stdout
        q = json.loads(out)[0]
        return {k: int(q.get(k, 0)) for k in ("bytes", "packets", "drops", "overlimits",
                                               "backlog")}

    # -- processes

    def popen(self, region: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``region``'s namespace in a new process group.

        Keyword arguments go to :class:`subprocess.Popen` (environment passes through
        unless ``env`` is given). The process group is killed by :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("Regions is closed")
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(region), *argv], **kw)
        self._procs = [p for p in self._procs if p.returncode is None]
        self._procs.append(proc)
        return proc

    def run(
        self,
        region: str,
        argv: Sequence[str],
        timeout: float = 60.0,
        *,
        check: bool = True,
        input: str | bytes | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``region`` to completion, capturing output (text by default).

        On timeout the whole process group is killed and TimeoutExpired raised; with
        ``check`` a non-zero exit raises CalledProcessError.
        """
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        proc = self.popen(region, argv, **kw)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.terminate(proc, grace=0)
            proc.communicate()
            raise
        cp = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    def terminate(self, proc: subprocess.Popen[Any], grace: float = 2.0) -> int:
        """SIGTERM ``proc``'s process group, SIGKILL it after ``grace`` s; return exit code."""
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            else:
                _killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        return proc.returncode

    # -- teardown

    def close(self, grace: float = 2.0) -> None:
        """Kill all processes, delete the namespaces (and so the veths). Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            live = [p for p in self._procs if p.returncode is None]
            for p in live:
                _killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
            for p in live:
                _killpg(p.pid, signal.SIGKILL)
                p.wait()
            for p in self._procs:
                for f in (p.stdin, p.stdout, p.stderr):
                    if f is not None:
                        with contextlib.suppress(OSError):
                            f.close()
            _kill_namespaces(self._created)
        finally:
            if self._lock_fd is not None:
                _release_lock(_lock_path(self.tag), self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Regions:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- sampling

_SAMPLER_SCRIPT = """\
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
interval = float(sys.argv[2])
out = sys.stdout
next_t = time.monotonic()
while True:
    value = int(os.pread(fd, 64, 0))
    out.write(f"{time.monotonic():.6f} {value}\\n")
    out.flush()
    next_t += interval
    time.sleep(max(0.0, next_t - time.monotonic()))
"""


class Sampler:
    """Samples a counter of ``dev(region, peer)`` every ``interval`` s in the background.

    A process inside the namespace reads ``/sys/class/net/<dev>/statistics/<counter>``
    (``ip netns exec`` mounts the namespace's sysfs) and prints ``<monotonic> <value>``
    lines; a thread collects them. CLOCK_MONOTONIC is system-wide, so the times compare
    with ``time.monotonic()`` in the test. The constructor returns once the first sample
    has arrived.
    """

    def __init__(
        self,
        regions: Regions,
        region: str,
        peer: str,
        interval: float = 0.05,
        counter: str = "rx_bytes",
    ) -> None:
        if not re.fullmatch(r"[a-z_]+", counter):
            raise ValueError(f"bad counter {counter!r}")
        self._regions = regions
        self._samples: Samples = []
        self._lock = threading.Lock()
        self._first = threading.Event()
        path = f"/sys/class/net/{regions.dev(region, peer)}/statistics/{counter}"
        self._proc = regions.popen(
            region, [sys.executable, "-c", _SAMPLER_SCRIPT, path, str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name=f"sampler-{region}-{peer}")
        self._thread.start()
        if not self._first.wait(10.0):
            self.stop()
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"sampler produced no sample: {err.strip()}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            t, v = line.split()
            with self._lock:
                self._samples.append((float(t), int(v)))
            self._first.set()
        self._first.set()

    def samples(self) -> Samples:
        """A copy of the samples so far."""
        with self._lock:
            return list(self._samples)

    def stop(self) -> Samples:
        """Stop sampling; return all samples as ``(monotonic time, counter value)``."""
        self._regions.terminate(self._proc, grace=1.0)
        self._thread.join(5.0)
        return self.samples()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def max_window_rate(samples: Sequence[tuple[float, int]], window: float = 1.0) -> float:
    """Largest rate (units/s) over any span between two samples that is >= ``window`` s.

    ``samples`` are ``(time, cumulative counter)`` sorted by time. Exact, in O(n * k)
    for k samples per window: for a start i let m be the first sample with
    ``t_m - t_i >= window``; a span [i, j] with ``t_j - t_m >= window`` splits at m into
    two spans that are both >= window, and its rate, a weighted mean of theirs, is at
    most the larger one, so only ends j with ``t_j - t_m < window`` need checking.
    Raises ValueError if no span is long enough.
    """
    if window <= 0:
        raise ValueError("window must be > 0")
    times = [t for t, _ in samples]
    best: float | None = None
    m = 0
    for i, (ti, vi) in enumerate(samples):
        m = max(m, i + 1)  # m(i) is non-decreasing in i
        while m < len(samples) and times[m] - ti < window:
            m += 1
        if m >= len(samples):
            break
        tm = times[m]
        for j in range(m, len(samples)):
            tj, vj = samples[j]
            if j > m and tj - tm >= window:
                break
            r = (vj - vi) / (tj - ti)
            if best is None or r > best:
                best = r
    if best is None:
        raise ValueError(f"samples span less than {window} s")
    return best


def mean_rate(samples: Sequence[tuple[float, int]], t0: float, t1: float) -> float:
    """Mean rate (units/s) between the first sample at/after ``t0`` and the last at/before
    ``t1`` (no interpolation). Raises ValueError if fewer than two samples lie in between.
    """
    inside = [(t, v) for t, v in samples if t0 <= t <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        raise ValueError(f"fewer than two samples in [{t0}, {t1}]")
    (ta, va), (tb, vb) = inside[0], inside[-1]
    return (vb - va) / (tb - ta)


def transfer_rates(samples: Sequence[tuple[float, int]], t0: float, t1: float) -> tuple[float, float, float, int]:
    """A transfer between ``t0`` and ``t1`` as a sampled counter saw it: (peak 1-s rate, mean
    rate, seconds, bytes moved). The mean is over the transfer proper, from 2 % to 98 % of
    its bytes (start-up calls and the last page's tail are not link time)."""
    during = [(t, b) for t, b in samples if t0 - 0.1 <= t <= t1 + 0.1]
    peak = max_window_rate(during, 1.0)
    base, moved = during[0][1], during[-1][1] - during[0][1]
    t_lo = next(t for t, b in during if b - base >= 0.02 * moved)
    t_hi = next(t for t, b in during if b - base >= 0.98 * moved)
    return peak, 0.96 * moved / (t_hi - t_lo), t_hi - t_lo, moved
