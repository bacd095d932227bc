"""Multi-region: fan-out (N readers in one region, data homed in another) and exactly
once behind a slow store.

    ./dev bench multiregion [--scenario all|fanout|slow] [--quick] [--readers 1,5,20]
                            [--files 48] [--file-mib 4] [--capacity-mbit 200]
                            [--quota-mbit 200] [--repeat 3]
                            [--slow-delay-ms 30] [--slow-store-mbit 0]
    (= .venv/bin/python bench/bench_multiregion.py ...; needs root: network namespaces + tc)

**Slow store** (``--scenario slow``, issue 19): region-a's S3 server made slow
(``--slow-delay-ms`` before every GET's first byte, optionally a cap of
``--slow-store-mbit`` on what it sends), the a-b line 200 Mbit/s with a mesh
quota of 160 Mbit/s, 2 nodes in region-b. Two datasets, each fresh: ONE object
of 256 MiB (``--quick``: 128 MiB) and 64 objects of 4 MiB. Each is read whole
by 10 readers over region-b's 2 nodes (mesh), and, side by side in the same
run, by 1 reader straight from S3 (direct: the line's speed, no quota). Per
dataset: cross-link bytes / unique bytes (rx counter), store GET requests per
4 MiB page (counted at the S3 server), the peak 1-s rate of the link / quota,
and the mesh's time to finish / (size / quota) (goal: within 10 %; the mesh
charges 5 % framing per payload byte, so 1.05 is the floor).

The rest of this docstring is the fan-out scenario.

The real three-region environment of the tests (:class:`tests.multiregion.MultiRegion`:
one network namespace per region, veth links shaped by tbf to the topology's
capacities, etcd and the S3 server (moto) in region-a, 1 meshd node in region-a
and region-c, 2 in region-b), built under ``bench/.work``. The dataset is homed
in region-a's S3 (``s3://datasets``); the readers run inside region-b
(:mod:`tests.mr_reader`, one process, one thread per reader, each reader with
one client reused for every file, reading every file whole in the same order
and hashing it).

For each reader count N (1, 5, 20), each measurement on a FRESH dataset (new
keys: nothing of it is cached in any region):

* direct: the N readers read the S3 endpoint with boto3 from inside region-b,
  over the same a-b link. They are not subject to the mesh's quota: they may
  use the whole line.
* mesh: the N readers read through region-b's nodes (the ``/datasets`` mount,
  as the tests mount it: ``sync_interval`` 0, every open asks the under-store
  for the object's status). ``--repeat`` times (median time), a new dataset each.
* mesh, immutable mount (``--no-immutable`` skips it): the same through a
  second mount of the same bucket with ``sync_interval=-1`` (a dataset that
  does not change: opens are answered from the cached status). This isolates
  what the per-open status check costs.

Per measurement:

* cross-link bytes / unique bytes, two ways: the kernel's rx counter of
  region-b's interface to region-a (GSO: payload + ~0.1 %), and the frame
  bytes tbf sent from region-a to region-b (every 1500-byte frame with its
  headers: payload x 1514/1448 = 1.046 for one copy). 1.00 (counters) / 1.05
  (frames) = every byte crossed once; N readers reading directly move N x.
* seconds: the reader script's time to finish (all readers done), the mean
  rate of the link over it, the peak 1-second rate, and how long the link sat
  idle (< 10 % of its line rate) between the run's first and last data: time
  in which something other than the link held the readers up (the rx counter
  sampled every 10 ms);
* every reader's digest of every file is checked; S3 GETs, HEADs and bytes
  served (the S3 server's own counters) and the pages the mesh fetched;
* CPU seconds of the benchmark's processes (meshd nodes, S3 server, the
  reader process) and how busy the whole machine was: on 2 cores, CPU is the
  other thing that can limit a run.

The link: ``--capacity-mbit`` (tbf's rate, both directions) and
``--quota-mbit`` (what the mesh may use of it) of the a-b link; the other
links as in examples/topology.yaml. Default 200 / 200 Mbit/s: slow enough that
one mesh reader is bound by the quota (its transfers wait for tokens most of
the time) rather than by the 2 cores or moto, and quota = line so that the
mesh and the direct readers have the same bandwidth and their times compare.
With the example's 400 Mbit/s quota on a 1 Gbit/s line
(``--capacity-mbit 1000 --quota-mbit 400``) one mesh reader reaches only
~0.8 of the quota (per-file overheads weigh more at that rate) and the direct
readers get 2.5 x the mesh's bandwidth. Many 4 MiB objects rather than a few
large ones: moto copies the whole object for every ranged GET, and the mesh
sends one per page or run of pages (``--file-mib 16 --files 12`` is the same
192 MiB in 16 MiB objects).

Goals (issue 5): cross-link bytes / unique bytes 1.00 for the mesh (N for
direct); the mesh's time to finish for 20 readers within 1.2 x of one reader.
Results are printed as a table and written to bench/.work/multiregion.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import log_findings, print_findings  # noqa: E402
from tests.multiregion import BUCKET, MultiRegion, content  # noqa: E402
from tests.netns import Sampler, max_window_rate  # noqa: E402

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE = 0.01  # seconds between samples of the link's rx counter
FRAME = 1514 / 1448  # wire bytes per payload byte of bulk TCP over a 1500-MTU line
A, B, C = "region-a", "region-b", "region-c"
IMMUTABLE = "/frozen"  # the second mount: the same bucket, sync_interval=-1

# A helper inside region-a (next to the S3 server): uploads, deletes and counters,
# one JSON command per line on stdin, one JSON answer per line on stdout. One
# process for the whole run: boto3 is imported once.
_S3_HELPER = r"""
import json, random, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import boto3
url = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1")
try:
    s3.create_bucket(Bucket=sys.argv[2])
except Exception:  # it exists
    pass
def body(seed, size):  # tests.multiregion.content: the same draws, 16 MiB at a time
    rng, step = random.Random(seed), 16 << 20
    return b"".join(rng.randbytes(min(step, size - i)) for i in range(0, size, step))
for line in sys.stdin:
    cmd = json.loads(line)
    t = time.monotonic()
    try:
        if cmd["op"] == "put":
            def one(i):
                s3.put_object(Bucket=cmd["bucket"], Key=f"{cmd['prefix']}/f{i:03d}",
                              Body=body(cmd["seed"] + i, cmd["size"]))
            with ThreadPoolExecutor(4) as ex:
                list(ex.map(one, range(cmd["n"])))
            out = {}
        elif cmd["op"] == "delete":
            keys = [{"Key": f"{cmd['prefix']}/f{i:03d}"} for i in range(cmd["n"])]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=cmd["bucket"], Delete={"Objects": keys[i:i + 1000]})
            out = {}
        elif cmd["op"] == "counters":
            with urllib.request.urlopen(url + "/_mesh_counters", timeout=30) as r:
                out = {"counters": json.load(r)}
        else:
            raise ValueError(cmd["op"])
        out["seconds"] = time.monotonic() - t
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""


class S3Helper:
    def __init__(self, mr: MultiRegion) -> None:
        self.proc = mr.net.popen(A, [sys.executable, "-c", _S3_HELPER, mr.s3_url, BUCKET], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1)

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the S3 helper exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"S3 helper, {cmd['op']}: {out['error']}")
        return out

    def counters(self, prefix: str) -> dict[str, int]:
        """GET/HEAD requests and GET bytes the S3 server served for keys under ``prefix``."""
        c = self.call(op="counters")["counters"]
        want = f"{BUCKET}/{prefix}/"

        def total(name: str) -> int:
            return sum(n for k, n in c.get(name, {}).items() if k.startswith(want))

        return {"gets": total("get_requests"), "heads": total("head_requests"), "get_bytes": total("get_bytes")}


# ---- CPU ----------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK


def ns_pid(mr: MultiRegion, region: str, needle: str) -> int | None:
    out = subprocess.run(["ip", "netns", "pids", mr.net.ns(region)], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_text():
                return int(pid)
        except OSError:
            continue
    return None


# ---- one measurement -------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # "direct" | "mesh" | "mesh-immutable"
    readers: int
    prefix: str
    unique: int  # bytes of the dataset
    seconds: float = 0.0  # the reader script's time to finish
    reader_seconds: list[float] = field(default_factory=list)
    rx: int = 0  # region-b's rx counter on its a-b interface
    wire: int = 0  # frame bytes tbf sent a -> b
    rx_c: int = 0  # region-b's rx counter on its c-b interface (none of the data should come that way)
    peak: float = 0.0  # highest 1-s rate of the rx counter, bytes/s
    idle: float = 0.0  # seconds the link carried < 10 % of its line rate between the first and last data
    s3: dict[str, int] = field(default_factory=dict)
    mesh: dict[str, Any] = field(default_factory=dict)  # region-b's nodes: pages, quota waits
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # machine CPU seconds busy during the run (both cores)
    wrong: int = 0  # (reader, file) pairs with a wrong or missing digest
    errors: list[str] = field(default_factory=list)

    @property
    def rx_ratio(self) -> float:
        return self.rx / self.unique

    @property
    def wire_ratio(self) -> float:
        return self.wire / self.unique

    @property
    def rate(self) -> float:
        return self.rx / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rx_ratio=self.rx_ratio, wire_ratio=self.wire_ratio, rate=self.rate)
        return d


def region_b_report(mr: MultiRegion) -> dict[str, float]:
    """Sums over region-b's nodes: pages fetched, pages routed per source, the a>b quota's
    bytes, throttled seconds and remote grants."""
    out: dict[str, float] = {}
    for p in mr.nodes[B]:
        r = mr.report(p)
        out["page_fetches"] = out.get("page_fetches", 0) + r["page_fetches"]
        fed = r.get("federation") or {}
        for src, n in fed.get("routed_pages", {}).items():
            out[f"routed {src}"] = out.get(f"routed {src}", 0) + n
        for q in fed.get("links", []):
            if q["link"] == f"{A}>{B}":
                out["quota_bytes"] = out.get("quota_bytes", 0) + q["bytes"]
                out["throttled_seconds"] = out.get("throttled_seconds", 0) + q["throttled_seconds"]
                out["remote_grants"] = out.get("remote_grants", 0) + q["remote_grants"]
                out["quota_fallbacks"] = out.get("quota_fallbacks", 0) + q["fallbacks"]
    return out


def link_idle(samples: list[tuple[float, int]], line: float) -> float:
    """Seconds, between the first and the last 64 KiB of the run's data, in which the link
    carried less than 10 % of its line rate (``line`` bytes/s): time the link was not the limit."""
    if len(samples) < 2:
        return 0.0
    v0, v1 = samples[0][1], samples[-1][1]
    inside = [(t, v) for t, v in samples if v - v0 >= 64 << 10 and v1 - v >= 64 << 10]
    return sum(tb - ta for (ta, va), (tb, vb) in itertools.pairwise(inside)
               if tb > ta and (vb - va) / (tb - ta) < 0.1 * line)


class Bench:
    def __init__(self, mr: MultiRegion, helper: S3Helper, files: int, file_size: int, repeat: int,
                 line_bits: float) -> None:
        self.mr = mr
        self.line = line_bits
        self.helper = helper
        self.files = files
        self.file_size = file_size
        self.repeat = repeat
        self.seed = 1_000_000
        self.pids = {f"meshd {r[-1]}{i}": p.proc.pid for r in (A, B, C)
                     for i, p in enumerate(mr.nodes[r]) if p.proc is not None}
        for name, region, needle in (("s3 (moto)", A, "s3server.py"), ("etcd", A, "etcd")):
            pid = ns_pid(mr, region, needle)
            if pid is not None:
                self.pids[name] = pid
        self._report = region_b_report(mr)

    def dataset(self, tag: str) -> tuple[str, dict[str, str]]:
        """A fresh dataset in region-a's S3: its key prefix and {key: SHA-256}."""
        prefix = f"{tag}-{self.seed}"
        self.helper.call(op="put", bucket=BUCKET, prefix=prefix, seed=self.seed, size=self.file_size, n=self.files)
        expect = {f"{prefix}/f{i:03d}": hashlib.sha256(content(self.seed + i, self.file_size)).hexdigest()
                  for i in range(self.files)}
        self.seed += self.files
        return prefix, expect

    def drop(self, prefix: str) -> None:
        """Delete a measured dataset (moto keeps every object in memory)."""
        self.helper.call(op="delete", bucket=BUCKET, prefix=prefix, n=self.files)

    def measure(self, kind: str, readers: int, prefix: str, expect: dict[str, str]) -> Run:
        mr = self.mr
        root = {"direct": "/" + BUCKET, "mesh": "/" + BUCKET, "mesh-immutable": IMMUTABLE}[kind]
        paths = {f"{root}/{key}": digest for key, digest in expect.items()}
        run = Run(kind, readers, prefix, self.files * self.file_size)
        s3_before = self.helper.counters(prefix)
        rx0, wire0, rxc0 = mr.rx(B, A), mr.wire(A, B), mr.rx(B, C)
        cpu0 = {k: proc_cpu(p) for k, p in self.pids.items()}
        busy0, t0 = machine_busy(), time.monotonic()
        with Sampler(mr.net, B, A, interval=SAMPLE) as sampler:
            result = mr.read(B, sorted(paths), readers, timeout=3600, direct=kind == "direct",
                             read_timeout=120, one_client=True)
            samples = sampler.stop()
        wall = time.monotonic() - t0
        run.busy = machine_busy() - busy0
        run.cpu = {k: proc_cpu(p) - cpu0[k] for k, p in self.pids.items()}
        run.cpu["readers"] = float(result.get("cpu_seconds", 0.0))
        run.rx, run.wire, run.rx_c = mr.rx(B, A) - rx0, mr.wire(A, B) - wire0, mr.rx(B, C) - rxc0
        run.seconds = float(result["seconds"])
        run.reader_seconds = [float(r.get("seconds", 0.0)) for r in result["readers"]]
        try:
            run.peak = max_window_rate(samples, 1.0)
        except ValueError:  # the run took less than a second
            run.peak = run.rx / max(wall, 1e-9)
        run.idle = link_idle(samples, self.line / 8)
        after = self.helper.counters(prefix)
        run.s3 = {k: after[k] - s3_before[k] for k in after}
        if kind != "direct":
            report = region_b_report(mr)
            run.mesh = {k: report.get(k, 0) - self._report.get(k, 0) for k in report}
            self._report = report
        for n, r in enumerate(result["readers"]):
            if r.get("error"):
                run.errors.append(f"reader {n}: {r['error']}")
            run.wrong += sum(r.get("digests", {}).get(p) != d for p, d in paths.items())
        return run


# ---- the environment ------------------------------------------------------------------


def topology_text(capacity_mbit: float, quota_mbit: float, latency: str | None = None) -> str:
    """examples/topology.yaml with the a-b link's capacity and quota (and latency) replaced."""
    raw = yaml.safe_load(MultiRegion.example())
    for link in raw["links"]:
        pair = set(link.get("between") or (link.get("from"), link.get("to")))
        if pair == {A, B}:
            link["capacity"] = f"{capacity_mbit:g}Mbit/s"
            link["quota"] = f"{quota_mbit:g}Mbit/s"
            if latency is not None:
                link["latency"] = latency
    return yaml.safe_dump(raw, sort_keys=False)


def add_immutable_mount(mr: MultiRegion) -> None:
    """A second mount of the same bucket whose statuses never expire (sync_interval=-1)."""
    mr.ctl(A, "mount", "add", IMMUTABLE, f"s3://{BUCKET}", "-o", f"endpoint={mr.s3_url}",
           "-o", "access_key=test", "-o", "secret_key=test", "-o", "connect_timeout=2",
           "-o", "read_timeout=5", "-o", "max_attempts=2", "-o", "sync_interval=-1", "--no-check")
    deadline = time.monotonic() + 30
    for i in range(len(mr.nodes[B])):
        while IMMUTABLE not in mr.ctl(B, "mount", "ls", node=i).stdout:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{IMMUTABLE} never showed on region-b's nodes")
            time.sleep(0.3)


# ---- the slow-store scenario ------------------------------------------------------------

SLOW_CAPACITY, SLOW_QUOTA = 200.0, 160.0  # Mbit/s of the a-b line and the mesh's quota on it
SLOW_READERS = 10


@dataclass
class SlowRun:
    dataset: str
    kind: str  # "mesh" (10 readers over region-b's 2 nodes) | "direct" (1 reader, boto3)
    unique: int
    seconds: float = 0.0
    rx: int = 0
    peak: float = 0.0
    gets: int = 0
    pages: int = 0
    polls: int = 0  # "queued" answers from page owners (mesh)
    peer_failures: int = 0
    ok: bool = True


def _cluster_sums(mr: MultiRegion) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in mr.nodes[B]:
        c = mr.report(p).get("cluster", {})
        for k in ("page_polls", "peer_failures"):
            out[k] = out.get(k, 0) + c.get(k, 0)
    return out


def slow_measure(mr: MultiRegion, helper: S3Helper, name: str, kind: str, files: int, size: int,
                 seed: int) -> SlowRun:
    prefix = f"slow-{name}-{kind}-{seed}"
    helper.call(op="put", bucket=BUCKET, prefix=prefix, seed=seed, size=size, n=files)
    expect = {f"/{BUCKET}/{prefix}/f{i:03d}": hashlib.sha256(content(seed + i, size)).hexdigest()
              for i in range(files)}
    run = SlowRun(name, kind, files * size, pages=files * -(-size // (4 * MiB)))
    before, rx0 = _cluster_sums(mr), mr.rx(B, A)
    gets0 = helper.counters(prefix)["gets"]
    with Sampler(mr.net, B, A, interval=SAMPLE) as sampler:
        result = mr.read(B, sorted(expect), SLOW_READERS if kind == "mesh" else 1, timeout=3600,
                         direct=kind == "direct", read_timeout=120, one_client=True)
        samples = sampler.stop()
    run.seconds = float(result["seconds"])
    run.rx = mr.rx(B, A) - rx0
    run.peak = max_window_rate(samples, 1.0) if samples[-1][0] - samples[0][0] > 1.0 else 0.0
    run.gets = helper.counters(prefix)["gets"] - gets0
    after = _cluster_sums(mr)
    run.polls = int(after["page_polls"] - before["page_polls"])
    run.peer_failures = int(after["peer_failures"] - before["peer_failures"])
    run.ok = all(not r.get("error") and r.get("digests") == expect for r in result["readers"])
    helper.call(op="delete", bucket=BUCKET, prefix=prefix, n=files)
    return run


def slow_scenario(args: argparse.Namespace, workdir: Path) -> list[SlowRun]:
    big = (128 if args.quick else 256) * MiB
    datasets = [("one large object", 1, big), ("many small objects", big // (4 * MiB), 4 * MiB)]
    quota = SLOW_QUOTA * 1e6 / 8
    # The veth link has no delay (netem is not available): the topology says so, since the
    # mesh sizes its receive windows by the latency it is told.
    mr = MultiRegion(workdir, nodes={A: 1, B: 2}, topology=topology_text(SLOW_CAPACITY, SLOW_QUOTA, "0.2ms"))
    runs: list[SlowRun] = []
    try:
        helper = S3Helper(mr)
        mr.slow_store(delay=args.slow_delay_ms / 1000, rate=args.slow_store_mbit * 1e6 / 8)
        print(f"slow store: {args.slow_delay_ms:g} ms before each GET's first byte"
              + (f", {args.slow_store_mbit:g} Mbit/s at most" if args.slow_store_mbit else "")
              + f"; a-b line {SLOW_CAPACITY:g} Mbit/s, quota {SLOW_QUOTA:g} Mbit/s", flush=True)
        for n, (name, files, size) in enumerate(datasets):
            for kind in ("direct", "mesh"):
                run = slow_measure(mr, helper, name, kind, files, size, 7_000_000 + 1000 * n + (kind == "mesh"))
                runs.append(run)
                print(f"  {name:<20} {kind:<6} {run.seconds:6.1f} s  link/unique {run.rx / run.unique:6.3f}  "
                      f"GETs/page {run.gets / run.pages:5.2f}  peak 1 s {run.peak / quota:5.3f} x quota  "
                      f"'queued' answers {run.polls}  peers given up {run.peer_failures}  "
                      f"{'ok' if run.ok else 'WRONG BYTES'}", flush=True)
    finally:
        mr.close()
    return runs


def slow_report(runs: list[SlowRun]) -> dict[str, Any]:
    quota = SLOW_QUOTA * 1e6 / 8
    print()
    print(f"slow store: {SLOW_READERS} mesh readers over 2 nodes vs 1 direct reader, side by side")
    print(f"  {'dataset':<20} | {'link/unique':>11} {'GETs/page':>9} {'peak/quota':>10} {'s':>6} "
          f"{'s / (size/quota)':>16} | {'direct s':>8} {'mesh/direct s':>13}")
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r.dataset for r in runs):
        m = next(r for r in runs if r.dataset == name and r.kind == "mesh")
        d = next(r for r in runs if r.dataset == name and r.kind == "direct")
        ideal = m.unique / quota
        row = {"rx_ratio": m.rx / m.unique, "gets_per_page": m.gets / m.pages, "peak": m.peak / quota,
               "seconds": m.seconds, "vs_quota": m.seconds / ideal, "direct_seconds": d.seconds,
               "ok": m.ok and d.ok, "peer_failures": m.peer_failures, "polls": m.polls}
        summary[name] = row
        print(f"  {name:<20} | {row['rx_ratio']:11.3f} {row['gets_per_page']:9.2f} {row['peak']:10.3f} "
              f"{m.seconds:6.1f} {row['vs_quota']:16.2f} | {d.seconds:8.1f} {m.seconds / d.seconds:13.2f}")
    print("goals:")
    for name, row in summary.items():
        for text, value, ok in ((f"{name}: link / unique", row["rx_ratio"], row["rx_ratio"] <= 1.02),
                                (f"{name}: store GETs per page", row["gets_per_page"], row["gets_per_page"] <= 1),
                                (f"{name}: time / (size / quota)", row["vs_quota"], row["vs_quota"] <= 1.10),
                                (f"{name}: right bytes", float(row["ok"]), row["ok"])):
            print(f"  {'PASS' if ok else 'MISS'}  {text:<48} {value:8.3f}")
    return summary


def background_busy(seconds: float = 2.0) -> float:
    """How busy the machine is before the benchmark starts (cores' worth, 0..ncpu)."""
    b0, t0 = machine_busy(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy() - b0) / (time.monotonic() - t0)


# ---- main -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("all", "fanout", "slow"), default="all",
                    help="fan-out readers, exactly once behind a slow store, or both (all)")
    ap.add_argument("--slow-delay-ms", type=float, default=30.0,
                    help="slow scenario: ms before each GET's first byte at the store (30)")
    ap.add_argument("--slow-store-mbit", type=float, default=0.0,
                    help="slow scenario: cap on what the store sends, Mbit/s (0: none)")
    ap.add_argument("--quick", action="store_true", help="a smaller dataset, no repeats (a smoke run, ~2 min)")
    ap.add_argument("--readers", default="1,5,20", help="reader counts, comma-separated (the first is the base)")
    ap.add_argument("--files", type=int, help="objects per dataset (48; --quick 16)")
    ap.add_argument("--file-mib", type=int, default=4, help="MiB per object (4)")
    ap.add_argument("--capacity-mbit", type=float, default=200, help="a-b line rate, Mbit/s (tbf; 200)")
    ap.add_argument("--quota-mbit", type=float, help="a-b quota, Mbit/s (default: the capacity)")
    ap.add_argument("--repeat", type=int, help="mesh runs per reader count, each on a fresh dataset; "
                                              "the median time is reported (3; --quick 1)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct readers")
    ap.add_argument("--no-immutable", action="store_true", help="skip the sync_interval=-1 mount")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and its logs")
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="where the environment lives (a real disk: /tmp may be much slower)")
    ap.add_argument("--json", help="where to write the results (default WORKDIR/multiregion.json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_multiregion needs root (network namespaces, tc)")
    q = args.quick
    files = args.files or (16 if q else 48)
    file_size = args.file_mib * MiB
    repeat = args.repeat or (1 if q else 3)
    counts = [int(x) for x in args.readers.split(",") if x.strip()]
    capacity = args.capacity_mbit
    quota = args.quota_mbit if args.quota_mbit is not None else capacity
    unique = files * file_size
    base = counts[0]

    def on_term(signum: int, frame: Any) -> None:  # SIGTERM unwinds like Ctrl-C: the finally cleans up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(args.workdir) / "multiregion"
    json_path = Path(args.json) if args.json else Path(args.workdir) / "multiregion.json"
    idle = background_busy()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}; busy before the run: {idle:.2f} cores"
          + ("  ** something else is using the CPU: figures will be noisy **" if idle > 0.3 else ""),
          flush=True)

    if args.scenario in ("all", "slow"):
        slow_dir = Path(args.workdir) / "slowstore"
        try:
            slow = slow_report(slow_scenario(args, slow_dir))
        finally:
            if not args.keep:
                shutil.rmtree(slow_dir, ignore_errors=True)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.with_name(json_path.stem + "-slow.json").write_text(json.dumps(slow, indent=1))
        if args.scenario == "slow":
            return
        print()

    print(f"workdir {work}; a-b link {capacity:g} Mbit/s line (tbf), mesh quota {quota:g} Mbit/s; "
          f"datasets of {files} x {args.file_mib} MiB = {unique / MiB:.0f} MiB; readers {counts}; "
          f"mesh runs x{repeat}", flush=True)
    print("direct readers are not subject to the mesh's quota: they may use the whole line "
          f"({capacity:g} Mbit/s)" + (" (= the quota here)" if quota == capacity else ""), flush=True)
    t_start = time.monotonic()
    mr: MultiRegion | None = None
    runs: list[Run] = []
    try:
        t = time.monotonic()
        mr = MultiRegion(work, topology=topology_text(capacity, quota))
        helper = S3Helper(mr)
        if not args.no_immutable:
            add_immutable_mount(mr)
        bench = Bench(mr, helper, files, file_size, repeat, capacity * 1e6)
        print(f"three regions up in {time.monotonic() - t:.1f} s", flush=True)

        kinds = ["mesh"] + ([] if args.no_immutable else ["mesh-immutable"])
        for n in counts:
            plan: list[tuple[str, int]] = ([] if args.no_direct else [("direct", 0)])
            plan += [(k, i) for i in range(repeat) for k in kinds]
            for kind, i in plan:
                t = time.monotonic()
                prefix, expect = bench.dataset(f"{kind}-n{n}-r{i}")
                up = time.monotonic() - t
                run = bench.measure(kind, n, prefix, expect)
                bench.drop(prefix)
                runs.append(run)
                status = "ok" if not run.errors and not run.wrong else \
                    f"FAILED: {run.wrong} wrong digests, {run.errors[:2]}"
                print(f"  {kind:<15} N={n:<3} #{i + 1}: {run.seconds:7.1f} s  link/unique {run.rx_ratio:6.3f} "
                      f"(frames {run.wire_ratio:6.3f})  mean {run.rate * 8 / 1e6:6.1f} Mbit/s, peak 1 s "
                      f"{run.peak * 8 / 1e6:6.1f}, idle {run.idle:5.2f} s  machine busy {run.busy / run.seconds:4.2f} cores  "
                      f"[upload {up:.1f} s]  {status}", flush=True)

        # ---- report --------------------------------------------------------------------
        def median_run(kind: str, n: int) -> Run | None:
            rs = sorted((r for r in runs if r.kind == kind and r.readers == n), key=lambda r: r.seconds)
            return rs[(len(rs) - 1) // 2] if rs else None  # the (lower) median run

        def med(kind: str, n: int, get: Any) -> float:
            rs = [get(r) for r in runs if r.kind == kind and r.readers == n]
            return statistics.median(rs) if rs else float("nan")

        def secs(kind: str, n: int) -> float:
            return med(kind, n, lambda r: r.seconds)

        print()
        print(f"fan-out: {files} x {args.file_mib} MiB = {unique / MiB:.0f} MiB homed in region-a's S3, read whole "
              f"by N readers in region-b; a-b line {capacity:g} Mbit/s, mesh quota {quota:g} Mbit/s")
        print("  link/unique: region-b's rx counter on the a-b interface / unique bytes (1.00 = once);")
        print(f"  frames/unique: tbf's wire bytes a->b / unique bytes ({FRAME:.3f} = once, with 1500-byte "
              "frame headers); mesh seconds: median of "
              f"{repeat} (each a fresh dataset)")
        hdr = (f"  {'readers':>7} | {'mesh: link/unique':>17} {'frames/unique':>13} {'seconds':>8} | "
               f"{'direct: link/unique':>19} {'frames/unique':>13} {'seconds':>8} | {'mesh time vs ' + str(base):>15}")
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        for n in counts:
            m = median_run("mesh", n)
            d = median_run("direct", n)
            ms = (f"{med('mesh', n, lambda r: r.rx_ratio):17.3f} {med('mesh', n, lambda r: r.wire_ratio):13.3f} "
                  f"{secs('mesh', n):8.1f}") if m else f"{'':>17} {'':>13} {'':>8}"
            ds = (f"{d.rx_ratio:19.3f} {d.wire_ratio:13.3f} {d.seconds:8.1f}") if d else f"{'':>19} {'':>13} {'':>8}"
            print(f"  {n:>7} | {ms} | {ds} | {secs('mesh', n) / secs('mesh', base):15.2f}")
        if not args.no_immutable:
            print()
            print(f"  the same through the immutable mount ({IMMUTABLE}, sync_interval=-1: opens do not ask S3):")
            for n in counts:
                print(f"  {n:>7} | {med('mesh-immutable', n, lambda r: r.rx_ratio):17.3f} "
                      f"{med('mesh-immutable', n, lambda r: r.wire_ratio):13.3f} {secs('mesh-immutable', n):8.1f} | "
                      f"{'':>19} {'':>13} {'':>8} | {secs('mesh-immutable', n) / secs('mesh-immutable', base):15.2f}")

        print()
        print("  where the time goes (median run of each): link rate over the run, S3 requests, quota waits, CPU")
        print(f"  {'run':<22} {'mean Mbit/s':>11} {'peak 1s':>8} {'link idle s':>11} {'GETs':>6} {'HEADs':>6} "
              f"{'S3 bytes/u':>10} {'pages':>6} {'quota wait s':>12} {'busy cores':>10}  CPU seconds")
        for kind in ("direct", "mesh", "mesh-immutable"):
            for n in counts:
                r = median_run(kind, n)
                if r is None:
                    continue
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu.items() if v >= 0.05)
                wait = r.mesh.get("throttled_seconds", float("nan"))
                print(f"  {kind + ' N=' + str(n):<22} {r.rate * 8 / 1e6:11.1f} {r.peak * 8 / 1e6:8.1f} "
                      f"{r.idle:11.2f} {r.s3.get('gets', 0):6d} {r.s3.get('heads', 0):6d} {r.s3.get('get_bytes', 0) / unique:10.2f} "
                      f"{int(r.mesh.get('page_fetches', 0)) if r.mesh else '':>6} "
                      f"{wait:12.1f} {r.busy / r.seconds:10.2f}  {cpu}")
        print("  (link idle: seconds the a-b link carried < 10 % of its line rate between the run's first and")
        print("   last data (10 ms samples); quota wait: seconds region-b's transfers waited for tokens, summed")
        print("   over concurrent transfers; busy cores: the whole machine's CPU over the run, of "
              f"{os.cpu_count()})")

        print()
        print("goals:")
        failed = [r for r in runs if r.errors or r.wrong]

        def goal(text: str, value: float, ok: bool | None, target: str) -> None:
            mark = "    " if ok is None else ("PASS" if ok else "MISS")
            print(f"  {mark}  {text:<60} {value:8.3f}  ({target})")

        top = counts[-1]
        worst = max((r.rx_ratio for r in runs if r.kind == "mesh"), default=float("nan"))
        goal("mesh: cross-link bytes / unique bytes, worst run (counters)", worst, worst <= 1.02,
             "goal 1.00; <= 1.02 allows status calls and headers")
        worst_w = max((r.wire_ratio for r in runs if r.kind == "mesh"), default=float("nan"))
        goal("mesh: the same in tbf's wire frames", worst_w, worst_w <= 1.02 * FRAME, f"once = {FRAME:.3f}")
        if not args.no_direct:
            d = median_run("direct", top)
            if d is not None:
                goal(f"direct: cross-link bytes / unique bytes, N={top}", d.rx_ratio, None, f"information; N = {top}")
        ratio = secs("mesh", top) / secs("mesh", base)
        goal(f"mesh: time to finish, N={top} / N={base} (medians)", ratio, ratio <= 1.2, "goal <= 1.2")
        if not args.no_immutable:
            ri = secs("mesh-immutable", top) / secs("mesh-immutable", base)
            goal(f"  immutable mount: N={top} / N={base}", ri, ri <= 1.2, "goal <= 1.2")
        if not args.no_direct:
            goal(f"direct / mesh time to finish, N={top}", secs("direct", top) / secs("mesh", top), None,
                 "information")
        goal("every reader read the right bytes", len(failed), not failed, "runs with errors")
        findings = log_findings(work, "region-*.log")
        print()
        print_findings(findings, 20)
        total = time.monotonic() - t_start
        print(f"total time {total:.0f} s")

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version(), "busy_before": idle},
            "config": {"files": files, "file_mib": args.file_mib, "unique_bytes": unique, "readers": counts,
                       "capacity_mbit": capacity, "quota_mbit": quota, "repeat": repeat,
                       "immutable": not args.no_immutable, "direct": not args.no_direct},
            "summary": {
                kind: {str(n): {"seconds": secs(kind, n), "rx_ratio": med(kind, n, lambda r: r.rx_ratio),
                                "wire_ratio": med(kind, n, lambda r: r.wire_ratio)}
                       for n in counts if median_run(kind, n) is not None}
                for kind in ("mesh", "mesh-immutable", "direct")},
            "goals": {"mesh_rx_ratio_worst": worst, "mesh_time_ratio": ratio, "mesh_time_ratio_goal": 1.2,
                      "met": worst <= 1.02 and ratio <= 1.2 and not failed},
            "runs": [r.row() for r in runs],
            "node_log_findings": findings,
            "total_seconds": total,
        }, indent=1))
        print(f"results written to {json_path}")
    finally:
        if mr is not None:
            mr.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
