"""A region's cache cluster: metadata ops/s and CPU per op with 1, 2 and 4 nodes,
warm read throughput with 1 vs 4 nodes, and how many keys a membership change moves.

    .venv/bin/python bench/bench_cluster.py [--quick] [--nodes 1,2,4] [--duration 5] [--repeat 3]

One etcd; then, for each cluster size N (largest first), a fresh cluster (its own
``--cluster`` name) of N ``meshd run`` processes sharing two file:// mounts with
``sync_interval=-1`` (warm = cached metadata, no under-store request):

* ``/meta``: ``--files`` small files in ``--dirs`` directories. Warm-up lists
  every directory and stats every file once. Then ``--procs`` client
  processes (each with its own MeshClient, connected to node ``i % N``) run
  for ``--duration`` seconds, ``--repeat`` times (medians are reported):

  - stat: ``MeshClient.stat`` of random files. In a cluster the client sends
    it straight to the key's owner over the metadata wire.
  - list: ``MeshClient.ls_page(dir, limit=1000)`` of random directories (one
    op = one page request). The client sends it to the node it is connected
    to, which forwards it to the listing's owner.

  Per op: ops/s, and CPU microseconds: ``/proc/PID/stat`` of every meshd
  process (server), plus ``os.times()`` of the client processes (total).
  Two cores cap ops/s here; CPU per op is what projects to many machines.

  Equal per-node load: closed-loop clients at N=4 give each node ~1/4 of the
  requests N=1 gets, so each request pays more of its own wake-up (less
  batching) and the raw N=4 / N=1 CPU per op mixes cluster size with per-node
  load. So each smaller N is also measured with its clients paced (fixed
  ``time.perf_counter`` slots, sleeping in between, the clients' slots
  staggered) to N x the ops/s each node got at the largest N: "stat @ N=4
  per-node rate" (every smaller N) and "list @ N=4 per-node rate" (smallest
  N only). Its /node column and achieved / target show the rate was matched.
  The CPU flatness goal compares the largest N with the smallest at that
  equal per-node load; the raw ratio is printed as information.

  Two more controls at the largest N: "stat, one owner's keys" (the clients
  stat only keys one node owns, so one warm server process answers all of
  them: this is N=1's full per-node load again, not a fair control for
  cluster size), and "list, sent to owner" (the page request goes straight
  to the listing's owner, as stat does; this uses the client's internal
  ``_meta_call``).

* ``/blob``: ``--read-files`` files of ``--read-mib`` MiB, loaded into the
  cluster (``meshctl load``), then ``--readers`` processes read whole files
  (``read_chunks_into``, 1 MiB buffer) from nodes ``i % N``: aggregate MB/s,
  short-circuit (``MESH_SHORT_CIRCUIT=1``) and HTTP (``=0``), against the
  same processes reading the same files from local disk (kernel page cache
  warm) in the same run.

* Membership change: :func:`meshd.cluster.ring.moved_fraction` over random keys, one
  member joining N-1 and one leaving N, for N = 2..16: moved fraction x N
  (1.0 is the ideal: exactly the joining or leaving member's share moves).

Goals (issue: region cache cluster): >= 5,000 warm stat ops/s through one
node; server CPU per op at N=4 within 20% of N=1 (at equal per-node load); a
membership change moves <= 1.2/N of the keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import log_findings, print_findings  # noqa: E402
from meshd.client.sdk import MeshClient  # noqa: E402
from meshd.cluster.ring import DEFAULT_VNODES, HashRing, moved_fraction  # noqa: E402
from tests.etcdproc import EtcdProcess  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


# ---- client processes --------------------------------------------------------
# Persistent worker processes (spawned, not forked: the parent holds gRPC
# channels). The parent sends a job; each worker connects and warms its
# client, answers "ready", waits for the common start time, runs the job
# for its duration and answers with its counts and CPU seconds.


@dataclass
class Job:
    kind: str  # "stat" | "list" | "list-owner" | "read" | "local"
    endpoint: str  # the node's data dir ("" for "local")
    items: list[str]  # paths to stat, directories to list, files to read
    duration: float
    seed: int
    short_circuit: bool = True
    page_limit: int = 1000
    rate: float = 0.0  # metadata ops/s for this client; 0 = closed loop (as fast as it can)
    phase: float = 0.0  # paced: this client's slots are offset by this fraction of an interval


@dataclass
class Result:
    ops: int = 0
    units: int = 0  # list entries / bytes read
    cpu: float = 0.0  # this client process's CPU seconds in the window
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def _list_owner(client: MeshClient, d: str, limit: int) -> int:
    """One page of ``d`` asked of the listing's owner directly (what stat does)."""
    r = client._meta_call(b"l:" + d.encode(), "list", {"p": d, "a": "", "n": limit})
    return len(r["e"])


def _paced(op: Callable[[], int], rate: float, phase: float, deadline: float) -> tuple[int, int]:
    """Call ``op`` at ``rate`` calls/s until ``deadline`` (``time.monotonic``); returns (calls, units).

    Fixed slots on ``time.perf_counter``, the first offset by ``phase`` of an interval (so the
    clients do not fire in lockstep). The client sleeps until its next slot, never busy-waits
    (its CPU is counted). A late call is made at once, so the schedule does not drift. After the
    last slot it sleeps to the deadline, so ops / elapsed is the achieved rate over the window.
    """
    interval = 1.0 / rate
    now = time.perf_counter()
    end = now + (deadline - time.monotonic())
    first = now + phase * interval
    ops = units = 0
    while (slot := first + ops * interval) < end:
        wait = slot - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        units += op()
        ops += 1
    time.sleep(max(0.0, end - time.perf_counter()))
    return ops, units


def _run_job(job: Job, client: MeshClient | None, start_at: float) -> Result:
    rng = random.Random(job.seed)
    items = job.items
    res = Result()
    deadline = start_at + job.duration
    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
    cpu0 = _cpu_self()
    t0 = time.monotonic()
    if job.rate > 0:
        assert client is not None
        c = client

        def one_stat() -> int:
            c.stat(items[rng.randrange(len(items))])
            return 0

        def one_list() -> int:
            d = items[rng.randrange(len(items))]
            if job.kind == "list":
                return len(c.ls_page(d, "", job.page_limit)[0])
            return _list_owner(c, d, job.page_limit)

        if job.kind not in ("stat", "list", "list-owner"):
            raise ValueError(f"pacing is for metadata ops, not {job.kind}")
        res.ops, res.units = _paced(one_stat if job.kind == "stat" else one_list, job.rate, job.phase, deadline)
    elif job.kind == "stat":
        assert client is not None
        stat = client.stat
        while time.monotonic() < deadline:
            for _ in range(64):
                stat(items[rng.randrange(len(items))])
            res.ops += 64
    elif job.kind in ("list", "list-owner"):
        assert client is not None
        while time.monotonic() < deadline:
            for _ in range(4):
                d = items[rng.randrange(len(items))]
                if job.kind == "list":
                    res.units += len(client.ls_page(d, "", job.page_limit)[0])
                else:
                    res.units += _list_owner(client, d, job.page_limit)
            res.ops += 4
    elif job.kind in ("read", "local"):
        buf = bytearray(MiB)
        view = memoryview(buf)
        i = job.seed  # readers start on different files
        while time.monotonic() < deadline:  # whole files: the one in progress is finished
            path = items[i % len(items)]
            i += 1
            if job.kind == "read":
                assert client is not None
                for k in client.read_chunks_into(path, buf):
                    res.units += k
            else:
                with open(path, "rb", buffering=0) as f:
                    while k := f.readinto(view):
                        res.units += k
            res.ops += 1
    else:
        raise ValueError(job.kind)
    res.elapsed = time.monotonic() - t0
    res.cpu = _cpu_self() - cpu0
    return res


def _worker(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up; Ctrl-C reaches it
    clients: dict[tuple[str, bool], MeshClient] = {}
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            if msg == "reset":
                for c in clients.values():
                    c.close()
                clients.clear()
                conn.send("ok")
                continue
            job: Job = msg
            try:
                client = None
                if job.kind != "local":
                    key = (job.endpoint, job.short_circuit)
                    client = clients.get(key)
                    if client is None:
                        os.environ["MESH_SHORT_CIRCUIT"] = "1" if job.short_circuit else "0"
                        client = clients[key] = MeshClient(job.endpoint)
                    # warm this client's connections (one op, untimed)
                    if job.kind == "stat":
                        client.stat(job.items[0])
                    elif job.kind == "list":
                        client.ls_page(job.items[0], "", job.page_limit)
                    elif job.kind == "list-owner":
                        _list_owner(client, job.items[0], job.page_limit)
                    elif job.kind == "read":
                        client.cat(job.items[0], 0, 4096)
                conn.send("ready")
                start_at = conn.recv()
                conn.send(_run_job(job, client, start_at))
            except Exception as e:  # reported by the parent
                conn.send(Result(errors=[f"{type(e).__name__}: {e}"]))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        for c in clients.values():
            c.close()


class Workers:
    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child,), daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def run(self, jobs: list[Job], on_start: Callable[[], None], on_end: Callable[[], None]) -> list[Result]:
        """Run one job per worker (the first ``len(jobs)`` workers) over a common window."""
        pipes = self.pipes[:len(jobs)]
        for pipe, job in zip(pipes, jobs, strict=True):
            pipe.send(job)
        replies = [pipe.recv() for pipe in pipes]
        failed = [r for r in replies if isinstance(r, Result)]
        if failed:  # a worker could not prepare: let the others run an empty window, then fail
            for pipe, r in zip(pipes, replies, strict=True):
                if r == "ready":
                    pipe.send(time.monotonic() - 2 * jobs[0].duration)
                    pipe.recv()
            raise RuntimeError(f"worker failed: {failed[0].errors}")
        start_at = time.monotonic() + 0.3
        for pipe in pipes:
            pipe.send(start_at)
        time.sleep(max(0.0, start_at - time.monotonic()))
        on_start()
        results = [pipe.recv() for pipe in pipes]
        on_end()
        errors = [e for r in results for e in r.errors]
        if errors:
            raise RuntimeError(f"worker failed: {errors[0]}")
        return results

    def reset(self) -> None:
        """Close every client (the cluster they talk to is going away)."""
        for pipe in self.pipes:
            pipe.send("reset")
        for pipe in self.pipes:
            pipe.recv()

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


# ---- the cluster -----------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds a set of processes used between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._t0 = self.seconds = 0.0

    def _now(self) -> float:
        return sum(proc_cpu(p) for p in self.pids)

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> None:
        self.seconds = self._now() - self._t0


def stop_all(nodes: list[MeshdProcess]) -> None:
    if nodes:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda p: p.stop(), nodes))


def start_cluster(work: Path, etcd: EtcdProcess, n: int, page_size: str) -> list[MeshdProcess]:
    name = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    args = ["--etcd", etcd.url, "--cluster", name, "--region", "r1", "--no-s3", "--lease-ttl", "5",
            "--page-size", page_size, "--log-level", "WARNING"]
    nodes = [MeshdProcess(work / f"c{n}-node{i}", [], args, command="run") for i in range(n)]
    try:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda p: p.start(timeout=60), nodes))
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def members_converged(nodes: list[MeshdProcess]) -> bool:
    for node in nodes:
        with node.client() as c:
            members = c.report().get("cluster", {}).get("members", [])
            if len(members) != len(nodes) or any(m.get("state") not in ("self", "up") for m in members):
                return False
    return True


def mounts_everywhere(nodes: list[MeshdProcess], wanted: set[str]) -> bool:
    for node in nodes:
        with node.client() as c:
            if not wanted <= {m.path for m in c.mounts()}:
                return False
    return True


def reports(nodes: list[MeshdProcess]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        with node.client() as c:
            out.append(c.report())
    return out


def region_ring(node: MeshdProcess) -> HashRing:
    """The ring every node and client builds from the member list (node ids, capacities)."""
    with node.client() as c:
        members = c.report()["cluster"]["members"]
    return HashRing({m["node_id"]: float(m.get("capacity") or 1) for m in members}, DEFAULT_VNODES)


def understore_requests(reps: list[dict[str, Any]]) -> int:
    return sum(sum(r["understore_requests"].values()) for r in reps)


@dataclass
class Window:
    ops: int
    units: int
    rate: float  # ops/s: the sum of each client's ops / its own elapsed time
    unit_rate: float  # entries/s or bytes/s, likewise
    server_cpu: float
    client_cpu: float
    understore: int  # under-store requests during the window (0 = warm)
    forwarded: int  # metadata calls nodes forwarded to owners during the window

    @property
    def server_us(self) -> float:
        return 1e6 * self.server_cpu / max(1, self.ops)

    @property
    def total_us(self) -> float:
        return 1e6 * (self.server_cpu + self.client_cpu) / max(1, self.ops)


@dataclass
class Measure:
    """Repeated windows of one measurement; each figure is the median over them."""

    name: str
    nodes: int
    windows: list[Window]
    target: float = 0.0  # paced: the total ops/s the clients were paced to (0 = closed loop)

    def _median(self, get: Callable[[Window], float]) -> float:
        return statistics.median(get(w) for w in self.windows)

    @property
    def rate(self) -> float:
        return self._median(lambda w: w.rate)

    @property
    def unit_rate(self) -> float:
        return self._median(lambda w: w.unit_rate)

    @property
    def server_us(self) -> float:
        return self._median(lambda w: w.server_us)

    @property
    def total_us(self) -> float:
        return self._median(lambda w: w.total_us)

    @property
    def server_per_unit(self) -> float:
        return self._median(lambda w: w.server_cpu / max(1, w.units))

    @property
    def achieved(self) -> float:
        """Paced: the median ops/s over the target (1.00 = the rate was matched)."""
        return self.rate / self.target if self.target else float("nan")

    @property
    def spread(self) -> str:
        """(max - min) / max of the windows' rates."""
        if len(self.windows) < 2:
            return "n/a"
        lo, hi = min(w.rate for w in self.windows), max(w.rate for w in self.windows)
        return f"{100 * (hi - lo) / max(hi, 1e-9):.0f}%"

    @property
    def understore(self) -> int:
        return sum(w.understore for w in self.windows)

    @property
    def forwarded_per_op(self) -> float:
        return sum(w.forwarded for w in self.windows) / max(1, sum(w.ops for w in self.windows))


def measure(name: str, workers: Workers, nodes: list[MeshdProcess], jobs: list[Job],
            repeat: int) -> Measure:
    meter = CpuMeter([n.proc.pid for n in nodes if n.proc is not None])
    windows = []
    for rep in range(repeat):
        before = reports(nodes)
        results = workers.run([dataclasses.replace(j, seed=j.seed + 7919 * rep) for j in jobs],
                              meter.start, meter.stop)
        after = reports(nodes)
        windows.append(Window(
            sum(r.ops for r in results), sum(r.units for r in results),
            sum(r.ops / r.elapsed for r in results), sum(r.units / r.elapsed for r in results),
            meter.seconds, sum(r.cpu for r in results),
            understore_requests(after) - understore_requests(before),
            sum(a["metadata_forwarded"] - b["metadata_forwarded"] for a, b in zip(after, before, strict=True))))
    return Measure(name, len(nodes), windows)


# ---- datasets ----------------------------------------------------------------------


def make_meta_tree(root: Path, files: int, dirs: int) -> list[str]:
    """``files`` small files spread over ``dirs`` directories; returns mesh paths under /meta."""
    out = []
    per = files // dirs
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(per):
            name = f"f{i:06d}"
            (sub / name).write_bytes(b"x" * (i % 97))
            out.append(f"/meta/d{d:03d}/{name}")
    return out


def make_blobs(root: Path, count: int, mib: int) -> list[str]:
    root.mkdir(parents=True)
    block = bytearray(os.urandom(MiB))
    names = []
    for i in range(count):
        with open(root / f"r{i:02d}.bin", "wb") as f:
            for j in range(mib):
                block[:8] = (i * 1_000_003 + j).to_bytes(8, "big")  # no two MiB alike
                f.write(block)
        names.append(f"r{i:02d}.bin")
    return names


# ---- membership change ---------------------------------------------------------------


def ring_moves(max_nodes: int, nkeys: int, seed: int = 7) -> list[tuple[int, float, float]]:
    """(N, moved x N when one member joins N-1, moved x N when one of N leaves)."""
    rng = random.Random(seed)
    keys = [f"s:/meta/d{rng.randrange(1000):03d}/f{rng.randrange(10**6):06d}".encode() for _ in range(nkeys)]
    ids = [f"{rng.getrandbits(48):012x}" for _ in range(max_nodes)]  # like generated node ids
    rows = []
    for n in range(2, max_nodes + 1):
        smaller, full = HashRing(ids[:n - 1]), HashRing(ids[:n])
        join = moved_fraction(smaller, full, keys) * n
        gone = rng.randrange(n)
        leave = moved_fraction(full, HashRing([m for j, m in enumerate(ids[:n]) if j != gone]), keys) * n
        rows.append((n, join, leave))
    return rows


# ---- logs ----------------------------------------------------------------------------



# ---- main ----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, short windows, no repeats (a smoke run)")
    ap.add_argument("--nodes", default="1,2,4", help="cluster sizes, comma-separated")
    ap.add_argument("--files", type=int, help="small files for the metadata benchmark (20000)")
    ap.add_argument("--dirs", type=int, help="directories they are spread over (20)")
    ap.add_argument("--duration", type=float, help="seconds per measurement window (5)")
    ap.add_argument("--repeat", type=int, help="windows per measurement; medians are reported (3)")
    ap.add_argument("--procs", type=int, default=3, help="client processes for metadata ops")
    ap.add_argument("--readers", type=int, default=4, help="reader processes for the read benchmark")
    ap.add_argument("--read-files", type=int, help="files for the read benchmark (8)")
    ap.add_argument("--read-mib", type=int, help="MiB per file (64)")
    ap.add_argument("--page-size", default="4MiB")
    ap.add_argument("--ring-keys", type=int, help="random keys for the membership-change figure (100000)")
    ap.add_argument("--no-http", action="store_true", help="skip the MESH_SHORT_CIRCUIT=0 read variant")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and its node logs")
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="where the under-store, etcd and node data live (a real disk: "
                         "/tmp may be much slower)")
    args = ap.parse_args()
    q = args.quick
    files = args.files or (4000 if q else 20000)
    dirs = args.dirs or (8 if q else 20)
    duration = args.duration or (2.0 if q else 5.0)
    repeat = args.repeat or (1 if q else 3)
    read_files = args.read_files or (4 if q else 8)
    read_mib = args.read_mib or (16 if q else 64)
    ring_keys = args.ring_keys or (20000 if q else 100000)
    sizes = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    lo, hi = sizes[0], sizes[-1]
    page_limit = min(1000, files // dirs)

    def on_term(signum: int, frame: Any) -> None:  # SIGTERM unwinds like Ctrl-C: the finally cleans up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-cluster-", dir=args.workdir))
    print(f"workdir {work} ({os.cpu_count()} cores); {files} files in {dirs} dirs, "
          f"{read_files} x {read_mib} MiB to read; {repeat} x {duration:g} s windows; "
          f"{args.procs} metadata clients, {args.readers} readers", flush=True)
    etcd: EtcdProcess | None = None
    workers: Workers | None = None
    nodes: list[MeshdProcess] = []
    meta: dict[tuple[str, int], Measure] = {}
    reads: dict[tuple[str, int], Measure] = {}
    placement: dict[int, list[int]] = {}
    per_node: dict[str, float] = {}  # op -> ops/s each node saw at N=hi (the paced runs' load)

    def paced_name(op: str) -> str:
        return f"{op} @ N={hi} per-node rate"

    t_start = time.monotonic()
    try:
        workers = Workers(max(args.procs, args.readers))
        store = work / "store"
        t = time.perf_counter()
        stat_paths = make_meta_tree(store / "meta", files, dirs)
        dir_paths = sorted({p.rsplit("/", 1)[0] for p in stat_paths})
        blob_names = make_blobs(store / "blob", read_files, read_mib)
        blob_paths = [f"/blob/{b}" for b in blob_names]
        local_paths = [str(store / "blob" / b) for b in blob_names]
        print(f"datasets written in {time.perf_counter() - t:.1f} s", flush=True)
        etcd = EtcdProcess(work / "etcd").start()

        # the local-disk reference for reads: the same reader processes, the same files
        for p in local_paths:
            with open(p, "rb") as f:
                while f.read(8 * MiB):
                    pass
        local = measure("local disk", workers, [],
                        [Job("local", "", local_paths, duration, i) for i in range(args.readers)], repeat)
        print(f"  local disk, {args.readers} readers: {local.unit_rate / MiB:8.0f} MB/s", flush=True)

        # largest first: the smaller clusters' paced runs need its per-node ops/s
        for n in sorted(sizes, reverse=True):
            t = time.perf_counter()
            nodes = start_cluster(work, etcd, n, args.page_size)
            wait_until(f"{n} members on every node", functools.partial(members_converged, nodes))
            with nodes[0].client() as c:
                c.mount_add("/meta", f"file://{store / 'meta'}", {"sync_interval": "-1"})
                c.mount_add("/blob", f"file://{store / 'blob'}", {"sync_interval": "-1"})
            wait_until("the mounts on every node", functools.partial(mounts_everywhere, nodes, {"/meta", "/blob"}))
            print(f"N={n}: cluster up in {time.perf_counter() - t:.1f} s", flush=True)

            # warm-up: list every directory, stat every file (through every node)
            t = time.perf_counter()
            clients = [node.client() for node in nodes]
            try:
                listed = 0
                for i, d in enumerate(dir_paths):
                    listed += sum(1 for _ in clients[i % n].iter_ls(d, page_limit))
                assert listed == len(stat_paths), (listed, len(stat_paths))
                for i, p in enumerate(stat_paths):
                    st = clients[i % n].stat(p)
                    assert (st.size, st.is_dir) == (int(p.rsplit("f", 1)[1]) % 97, False), (p, st)
            finally:
                for c in clients:
                    c.close()
            print(f"  warm-up (list {len(dir_paths)} dirs, stat {len(stat_paths)} files): "
                  f"{time.perf_counter() - t:.1f} s", flush=True)

            def meta_measure(ns: list[MeshdProcess], name: str, kind: str, items: list[str], seed: int,
                             target: float = 0.0) -> None:
                """``target`` > 0: the clients are paced to that many ops/s in total (each an equal share)."""
                assert workers is not None
                jobs = [Job(kind, str(ns[i % len(ns)].data_dir), items, duration, seed + i, page_limit=page_limit,
                            rate=target / args.procs, phase=i / args.procs)
                        for i in range(args.procs)]
                m = meta[(name, len(ns))] = measure(name, workers, ns, jobs, repeat)
                m.target = target
                extra = f" ({m.unit_rate:7.0f} entries/s)" if kind != "stat" else ""
                paced = f", paced to {target:.0f} ({m.achieved:.2f} of it)" if target else ""
                print(f"  {name:<24} {m.rate:8.0f} ops/s{extra}, server {m.server_us:7.1f} us/op, "
                      f"total {m.total_us:7.1f} us/op (spread {m.spread}){paced}", flush=True)

            meta_measure(nodes, "stat", "stat", stat_paths, 100)
            meta_measure(nodes, "list", "list", dir_paths, 200)
            if n == hi:
                per_node = {op: meta[(op, hi)].rate / hi for op in ("stat", "list")}
            else:
                # the fair control for CPU/op flatness: this cluster at the load each node had at N=hi
                meta_measure(nodes, paced_name("stat"), "stat", stat_paths, 500, n * per_node["stat"])
                if n == lo:
                    meta_measure(nodes, paced_name("list"), "list", dir_paths, 600, n * per_node["list"])
            if n == hi and n > 1:
                ring = region_ring(nodes[0])
                mine = nodes[0].endpoints["node_id"]
                owned = [p for p in stat_paths if ring.owner(b"s:" + p.encode()) == mine]
                meta_measure(nodes, "stat, one owner's keys", "stat", owned, 300)
                meta_measure(nodes, "list, sent to owner", "list-owner", dir_paths, 400)

            if n in (lo, hi):
                t = time.perf_counter()
                with nodes[0].client() as c:
                    for _ in c.load("/blob"):
                        pass
                placement[n] = [r["tiers"]["memory"]["pages"] for r in reports(nodes)]
                print(f"  /blob loaded in {time.perf_counter() - t:.1f} s; pages per node {placement[n]}",
                      flush=True)
                for label, sc in [("short-circuit", True)] + ([] if args.no_http else [("HTTP", False)]):
                    jobs = [Job("read", str(nodes[i % n].data_dir), blob_paths, duration, i, short_circuit=sc)
                            for i in range(args.readers)]
                    m = reads[(label, n)] = measure(f"read {label}", workers, nodes, jobs, repeat)
                    print(f"  read ({label}): {m.unit_rate / MiB:8.0f} MB/s (spread {m.spread})", flush=True)

            workers.reset()
            stop_all(nodes)
            nodes = []

        print(f"ring: moved fraction over {ring_keys} keys ...", flush=True)
        moves = ring_moves(16, ring_keys)
        findings = log_findings(work, "c*-node*.log")

        # ---- report ---------------------------------------------------------------
        print()
        print(f"metadata, warm (sync_interval=-1), {args.procs} client processes, "
              f"median of {repeat} x {duration:g} s (2 cores cap the total):")
        print(f"  {'op':<24} {'N':>2} {'ops/s':>8} {'/node':>7} {'entries/s':>10} {'server us/op':>13} "
              f"{'total us/op':>12} {'fwd/op':>7} {'under-store':>11}")
        for (name, n), m in sorted(meta.items(), key=lambda kv: kv[0][1]):  # by N, then as measured
            ent = f"{m.unit_rate:10.0f}" if name.startswith("list") else f"{'':>10}"
            print(f"  {name:<24} {n:>2} {m.rate:8.0f} {m.rate / n:7.0f} {ent} {m.server_us:13.1f} "
                  f"{m.total_us:12.1f} {m.forwarded_per_op:7.2f} {m.understore:11d}")
        print("  (server = CPU of all meshd processes; total = server + clients; fwd/op = calls a node "
              "forwarded to an owner" + (";" if lo != hi else ")"))
        if lo != hi:
            print(f"  '@ N={hi} per-node rate' = the clients paced so that each node gets the ops/s each node "
                  f"got at N={hi}: compare /node)")
        local_mbps = local.unit_rate / MiB
        print()
        print(f"warm reads, {args.readers} reader processes, whole {read_mib} MiB files, 1 MiB buffer, "
              f"median of {repeat} x {duration:g} s:")
        print(f"  {'path':<24} {'N':>2} {'MB/s':>8} {'x local':>8} {'server CPU s/GiB':>17} "
              f"{'under-store':>11}  pages per node")
        print(f"  {'local disk (page cache)':<24} {'':>2} {local_mbps:8.0f} {1.0:8.2f}")
        for (label, n), m in sorted(reads.items()):
            mbps = m.unit_rate / MiB
            print(f"  {'mesh ' + label:<24} {n:>2} {mbps:8.0f} {mbps / local_mbps:8.2f} "
                  f"{m.server_per_unit * (1 << 30):17.2f} {m.understore:11d}  {placement.get(n)}")
        print()
        print(f"membership change, {ring_keys} random keys, {DEFAULT_VNODES} vnodes per member "
              "(moved fraction x N; 1.00 = ideal):")
        print("  N    " + "".join(f"{n:>6}" for n, _, _ in moves))
        print("  join " + "".join(f"{j:6.2f}" for _, j, _ in moves))
        print("  leave" + "".join(f"{v:6.2f}" for _, _, v in moves))

        print()
        print("goals:")

        def goal(text: str, value: float, ok: bool | None, target: str) -> None:
            mark = "    " if ok is None else ("PASS" if ok else "MISS")
            print(f"  {mark}  {text:<58} {value:9.2f}  ({target})")

        if ("stat", 1) in meta:
            r = meta[("stat", 1)].rate
            goal("warm stat ops/s through one node (N=1)", r, r >= 5000, "goal >= 5000")
        if lo != hi:
            for op in ("stat", "list"):
                top, base = meta[(op, hi)], meta[(op, lo)]
                paced = meta.get((paced_name(op), lo))
                raw = top.server_us / base.server_us
                if paced is None:  # (not measured: the raw ratio is the best there is)
                    goal(f"{op} server CPU/op, N={hi} / N={lo}", raw, raw <= 1.2, "goal <= 1.2")
                else:
                    # the goal: cluster size at equal per-node load (N=lo paced to N=hi's ops/s per node)
                    ratio = top.server_us / paced.server_us
                    goal(f"{op} server CPU/op, N={hi} / N={lo} at equal per-node load", ratio, ratio <= 1.2,
                         "goal <= 1.2")
                    goal(f"  N={lo} paced to N={hi}'s per-node ops/s: achieved / target", paced.achieved,
                         None, "information; 0.90-1.10 = matched")
                    for n in sizes[1:-1]:
                        if (paced_name(op), n) in meta:
                            mid = meta[(paced_name(op), n)]
                            goal(f"  N={n} / N={lo}, both paced to N={hi}'s per-node ops/s",
                                 mid.server_us / paced.server_us, None,
                                 f"information; N={n} achieved {mid.achieved:.2f} of target")
                    goal(f"  raw: N={hi} / N={lo} unpaced (N={lo} at {hi / lo:g}x the per-node load)", raw,
                         None, "information")
                goal(f"  raw: {op} total CPU/op (server + clients), N={hi} / N={lo}", top.total_us / base.total_us,
                     None, "information")
                control = "stat, one owner's keys" if op == "stat" else "list, sent to owner"
                if (control, hi) in meta:
                    goal(f"  control '{control}' (N={hi}) / N={lo} unpaced",
                         meta[(control, hi)].server_us / base.server_us, None, "information")
            if ("short-circuit", hi) in reads and ("short-circuit", lo) in reads:
                goal(f"warm read MB/s (short-circuit), N={hi} / N={lo}",
                     reads[("short-circuit", hi)].unit_rate / reads[("short-circuit", lo)].unit_rate,
                     None, "information")
        worst = max(max(j, v) for _, j, v in moves)
        goal("membership change: worst moved fraction x N", worst, worst <= 1.2, "goal <= 1.2, N = 2..16")
        print()
        print_findings(findings, 30)
        print(f"total time {time.monotonic() - t_start:.0f} s")
    finally:
        stop_all(nodes)
        if workers is not None:
            workers.stop()
        if etcd is not None:
            etcd.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
