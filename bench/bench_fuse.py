"""meshfs (the FUSE mount) against local disk, a bare pyfuse3 passthrough and ``rclone mount``.

    .venv/bin/python bench/bench_fuse.py [--size-mib 2048] [--files 100000] [--quick]
                                         [--random-reads 1024] [--cold-reps 3] [--pin-server]
                                         [--profile DIR]

All figures come from one run on one machine, side by side (these machines
are noisy: compare the ratios). The data: one random file of ``--size-mib``
MiB and ``--files`` small files (1 KiB, in 100 directories), on local disk
and, the same files (hard links, so no second copy), in the file-backed
directory of an s3rver S3 server (its on-disk layout: ``KEY._S3rver_object``
plus the ETag in ``KEY._S3rver_object.md5``; written straight there, which is
far faster than 100,000 PUTs). The contenders:

* local        the files on local disk, read by Python directly;
* passthrough  bench/passthroughfs.py, a bare read-only pyfuse3 passthrough
               (asyncio mode, os.pread on the event loop) over the local copy:
               the ceiling of a Python FUSE client; with the kernel's default
               128 KiB read-ahead and with 1024 KiB (the meshfs default);
* meshfs       ``meshfs mount`` on a ``meshd embedded`` node that mounts the
               bucket at /s3 (s3:// on the s3rver endpoint; ``sync_interval``
               300 s, as long as rclone's default --dir-cache-time 5m);
* rclone       Debian's ``rclone mount`` of the same bucket on the same
               endpoint, ``--vfs-cache-mode full`` (fresh cache dir) and
               ``--use-server-modtime`` (without it rclone HEADs every object
               to learn its mtime: a stat would cost a request per file).

The rows (1 MiB reads into a reused buffer for sequential reads; "first" rows
are the median of ``--repeat`` runs, each on a fresh mount):

* seq first read from S3  the warm-up, one run: nothing cached anywhere (meshfs, rclone);
* seq first read          the file cached by the mesh node / in rclone's VFS cache
                          (and in the host's page cache), the mount's kernel page
                          cache cold (a fresh mount); local: the file's pages dropped
                          (posix_fadvise DONTNEED: read from the disk);
* seq re-read             the same file again (the mount's page cache), median of 5;
* random 128K x4 first    4 threads x ``--random-reads`` preads of 128 KiB at seeded
                          4 KiB-aligned offsets (the same for everyone), fresh mount;
* random 128K x4 re-read  the same offsets again;
* list / stat cold        os.scandir of the 100 directories, then os.stat of every
                          file, on a fresh mount (for meshfs the node's very first
                          listing of these directories: from S3, as rclone's; for
                          the S3 clients the median of ``--cold-reps`` walks,
                          meshfs and rclone alternating, meshfs on a fresh node
                          each time), every contender after
                          ``echo 2 > /proc/sys/vm/drop_caches``: the kernel's
                          dentries and inodes (of the local copy and of s3rver's
                          directory alike) are dropped before every cold listing,
                          so no contender walks a tree another one warmed;
                          the S3 clients start with the bucket's root listed (rclone's
                          mount check lists it and rclone keeps it; meshfs is given
                          the same listing before the timer) and nothing below it;
* list / stat warm        both again.
* meshfs only: list / stat after ``meshfs drop-cache`` (the mount cold, the node's
  metadata warm), and the first read with the mount's read-ahead written from
  outside once the mount is up (meshfs asks for 1024 KiB but gets 128 KiB: its
  read_ahead_kb is written before the kernel's FUSE INIT is answered, and the
  INIT reply sets it back to min(that, 128 KiB); bench/passthroughfs.py writes
  it after).

Goals (issue): meshfs first sequential read >= 0.8 x the passthrough (same
read-ahead setting); meshfs re-read at kernel page-cache speed (>= 0.8 x the
passthrough's re-read counted as PASS: a re-read of either is served by the
kernel's page cache of a FUSE file (three re-reads of the 2 GiB file sent
meshfs 30 READs, of 6,144 MiB), which serves 0.4-0.75 of what an ext4 file's
does here; the ratio to local is printed too); meshfs faster than rclone on
every row.

``--pin-server`` gives s3rver a core of its own (the last one; ``taskset`` on all its
threads) and every other process the remaining cores. s3rver stands for a remote
object store: without pinning, a listing costs s3rver ~70 ms of CPU per 1000 keys and
the server competes with the client under test for the same two cores, so the
listing rows measure how little CPU a client takes from the server as much as how
fast the client is. Both runs are reported in docs/BENCHMARKS.md.

``--profile DIR`` records every meshfs row with py-spy (meshfs and meshd
processes, collapsed stacks in DIR/ROW.meshfs.txt and ROW.meshd.txt); the
sampling slows meshfs, so figures of a profiled run are not the benchmark's.
Every mount is unmounted and every process stopped on the way out, errors or not.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_read import S3rver  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_TOKEN,
    VERIFY_NODES,
    log_findings,
    print_findings,
    security_args,
    verify_args,
)

from tests.fuse_proc import MESHFS, MeshfsProcess, force_unmount, is_mounted  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20
RAND_SIZE = 128 << 10
THREADS = 4
NDIRS = 100
SMALL = 1024
SUFFIX = "._S3rver_object"
PY_SPY = ROOT / ".venv/bin/py-spy"


# ---- mounts -------------------------------------------------------------------


def read_ahead_kb(mountpoint: Path) -> int | None:
    """The kernel read-ahead of the mount at ``mountpoint`` (its bdi), KiB."""
    target = os.path.abspath(mountpoint)
    dev = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and parts[4] == target:
                dev = parts[2]
    if dev is None:
        return None
    try:
        return int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())
    except OSError:
        return None


def set_read_ahead_kb(mountpoint: Path, kb: int) -> None:
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        devs = [p[2] for p in (line.split() for line in f) if len(p) > 4 and p[4] == target]
    Path(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb").write_text(str(kb))


class MountProc:
    """A FUSE daemon in the foreground (passthroughfs, rclone): started, waited for until its
    mount is there, stopped with SIGTERM (a clean unmount), detached if it was not."""

    def __init__(self, name: str, cmd: list[str], mountpoint: Path, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.mountpoint, self.log, self.env = name, cmd, mountpoint, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> MountProc:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if is_mounted(self.mountpoint):
                try:
                    os.listdir(self.mountpoint)  # the daemon answers
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not mount:\n{self.log.read_text(errors='replace')[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        force_unmount(self.mountpoint)


# ---- measurements -------------------------------------------------------------


def seq_read(path: Path) -> int:
    buf = bytearray(MiB)
    view = memoryview(buf)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(view):
            n += k
    return n


def random_offsets(size: int, per_thread: int, seed: int = 42) -> list[list[int]]:
    rng = random.Random(seed)
    top = (size - RAND_SIZE) // 4096
    return [[rng.randint(0, top) * 4096 for _ in range(per_thread)] for _ in range(THREADS)]


def random_read(path: Path, offsets: list[list[int]]) -> tuple[float, int]:
    """All threads start together; seconds until the last one is done, and bytes read."""
    barrier = threading.Barrier(len(offsets) + 1)

    def worker(offs: list[int]) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            barrier.wait()
            n = 0
            for off in offs:
                k = len(os.pread(fd, RAND_SIZE, off))
                if k != RAND_SIZE:
                    raise AssertionError(f"short read at {off}: {k}")
                n += k
            return n
        finally:
            os.close(fd)

    with ThreadPoolExecutor(len(offsets)) as pool:
        futures = [pool.submit(worker, offs) for offs in offsets]
        barrier.wait()
        t = time.perf_counter()
        n = sum(f.result() for f in futures)
        return time.perf_counter() - t, n


def listing(root: Path, dirs: list[str]) -> int:
    n = 0
    for d in dirs:
        with os.scandir(root / d) as it:
            for _ in it:
                n += 1
    return n


def stat_all(root: Path, files: list[str]) -> int:
    base = str(root)
    for rel in files:
        os.stat(f"{base}/{rel}")
    return len(files)


def drop_file_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_dentries() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2")


def same_bytes(a: Path, b: Path, size: int, samples: int = 16) -> bool:
    rng = random.Random(7)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off in [0, size - 4096] + [rng.randrange(0, size - 4096) for _ in range(samples)]:
            fa.seek(off)
            fb.seek(off)
            if fa.read(4096) != fb.read(4096):
                return False
    return True


# ---- data ---------------------------------------------------------------------


def make_data(data: Path, bucket: Path, size_mib: int, nfiles: int) -> tuple[list[str], list[str]]:
    """The big file and the small files on local disk, hard-linked into s3rver's bucket
    directory with their ETags; returns (directories, files) relative to the roots."""
    t = time.perf_counter()
    data.mkdir(parents=True)
    bucket.mkdir(parents=True)
    big = data / "big.bin"
    md5 = hashlib.md5()
    rng = random.Random(1)
    with open(big, "wb") as f:
        for _ in range(size_mib):
            chunk = rng.randbytes(MiB)
            md5.update(chunk)
            f.write(chunk)
    os.link(big, bucket / f"big.bin{SUFFIX}")
    (bucket / f"big.bin{SUFFIX}.md5").write_text(md5.hexdigest())
    per_dir = max(1, nfiles // NDIRS)
    ndirs = (nfiles + per_dir - 1) // per_dir
    dirs, files = [], []
    filler = rng.randbytes(SMALL)
    for d in range(ndirs):
        rel = f"d{d:03d}"  # top level: s3rver's delimiter listing misses prefixes two levels down
        dirs.append(rel)
        (data / rel).mkdir(parents=True)
        (bucket / rel).mkdir(parents=True)
        for i in range(min(per_dir, nfiles - d * per_dir)):
            name = f"{rel}/f{i:04d}.bin"
            body = f"{name}\n".encode() + filler[: SMALL - len(name) - 1]
            (data / name).write_bytes(body)
            os.link(data / name, bucket / f"{name}{SUFFIX}")
            (bucket / f"{name}{SUFFIX}.md5").write_text(hashlib.md5(body).hexdigest())
            files.append(name)
    print(f"  data: {size_mib} MiB file, {len(files)} files of {SMALL} B in {len(dirs)} directories "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    return dirs, files


# ---- the run ------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.size = args.size_mib * MiB
        self.rows: dict[str, dict[str, float]] = {}
        self.units: dict[str, str] = {}
        self.order: list[str] = []
        self.profile_dir = Path(args.profile).resolve() if args.profile else None
        self.meshfs: MeshfsProcess | None = None
        self.node: MeshdProcess | None = None

    def record(self, row: str, who: str, value: float, unit: str, note: str = "") -> float:
        if row not in self.rows:
            self.rows[row], self.units[row] = {}, unit
            self.order.append(row)
        self.rows[row][who] = value
        print(f"  {row:<30} {who:<16} {value:10.1f} {unit}  {note}", flush=True)
        return value

    @contextlib.contextmanager
    def profiled(self, who: str, row: str, rep: int = 0) -> Iterator[None]:
        """py-spy record meshfs and meshd while a meshfs row runs (with --profile)."""
        procs: list[subprocess.Popen[bytes]] = []
        if self.profile_dir is not None and who == "meshfs":
            assert self.meshfs is not None and self.node is not None and self.node.proc is not None
            tag = row.replace(" ", "_").replace("/", "-") + (f".{rep}" if rep else "")
            for name, pid in (("meshfs", self.meshfs.pid), ("meshd", self.node.proc.pid)):
                out = self.profile_dir / f"{tag}.{name}.txt"
                procs.append(subprocess.Popen([str(PY_SPY), "record", "-p", str(pid), "-r", "250", "-f", "raw",
                                               "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.5)  # py-spy attaches
        try:
            yield
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def timed(self, row: str, who: str, prepare: Callable[[], Path], fn: Callable[[Path], int],
              repeat: int) -> tuple[float, int]:
        """Median seconds of ``fn(prepare())`` over ``repeat`` runs (``prepare`` untimed: a fresh
        mount, dropped pages, or just the path), and the count ``fn`` returned."""
        times, n = [], 0
        for i in range(repeat):
            path = prepare()
            with self.profiled(who, row, i):
                t = time.perf_counter()
                n = fn(path)
                times.append(time.perf_counter() - t)
        return statistics.median(times), n

    @staticmethod
    def _note(secs: float, repeat: int, extra: str = "") -> str:
        return f"({secs:.2f} s{extra}" + (f", median of {repeat})" if repeat > 1 else ")")

    def seq(self, row: str, who: str, prepare: Callable[[], Path], repeat: int = 1) -> float:
        secs, n = self.timed(row, who, prepare, seq_read, repeat)
        assert n == self.size, (row, who, n)
        return self.record(row, who, self.size / MiB / secs, "MB/s", self._note(secs, repeat))

    def rand(self, row: str, who: str, prepare: Callable[[], Path], offsets: list[list[int]],
             repeat: int = 1) -> float:
        samples, n = [], 0
        for i in range(repeat):
            path = prepare()
            with self.profiled(who, row, i):
                secs, n = random_read(path, offsets)  # timed inside, once the threads opened the file
            samples.append(secs)
        secs = statistics.median(samples)
        return self.record(row, who, n / MiB / secs, "MB/s",
                           self._note(secs, repeat, f", {n // RAND_SIZE / secs:.0f} reads/s"))

    def ops(self, row: str, who: str, fn: Callable[[], int], expect: int) -> float:
        secs, n = self.timed(row, who, lambda: Path("."), lambda _p: fn(), 1)
        assert n == expect, (row, who, n, expect)
        return self.record(row, who, n / secs, "ops/s", self._note(secs, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=None, help="the big file, MiB (default 2048; quick: 512)")
    ap.add_argument("--files", type=int, default=None, help="small files (default 100000; quick: 10000)")
    ap.add_argument("--random-reads", type=int, default=None,
                    help="random 128 KiB reads per thread (default 1024; quick: 256)")
    ap.add_argument("--quick", action="store_true", help="a smaller run: 512 MiB, 10,000 files")
    ap.add_argument("--repeat", type=int, default=3,
                    help="first reads and random reads: median of this many, each on a fresh mount (3)")
    ap.add_argument("--cold-reps", type=int, default=None,
                    help="cold walks of the S3 clients: median of this many, alternating (default 3; quick: 1)")
    ap.add_argument("--sync-interval", default="300",
                    help="the mesh mount's sync_interval, s (default 300: rclone's --dir-cache-time)")
    ap.add_argument("--rclone-args", default="--use-server-modtime",
                    help="extra rclone mount flags (default: --use-server-modtime)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy record meshfs and meshd during every meshfs row")
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="where data, S3 server, caches and mounts live (a real disk; /tmp is slow here)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--verify", choices=["on", "strict", "off"], default="on",
                    help="the node's page verification (bench/benchlib.py VERIFY_NODES; run the bench "
                         "once with each to compare: meshfs checks happen when descriptors are handed out)")
    ap.add_argument("--security", choices=["on", "off"],
                    help="instead of --verify: on = a tenant's token presented by meshfs, its rules checked, "
                         "pages verified; off = auth.enforce: false and cache.verify: false (benchlib.SECURITY_LEGEND)")
    ap.add_argument("--pin-server", action="store_true",
                    help="s3rver on a core of its own, everything else on the others (the server as a remote one)")
    args = ap.parse_args()
    args.size_mib = args.size_mib or (512 if args.quick else 2048)
    args.files = args.files or (10_000 if args.quick else 100_000)
    args.random_reads = args.random_reads or (256 if args.quick else 1024)
    args.cold_reps = args.cold_reps or (1 if args.quick else 3)
    if os.geteuid() != 0:
        sys.exit("bench_fuse needs root (FUSE mounts, /proc/sys/vm/drop_caches, /sys/class/bdi)")
    for tool in ("rclone", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_fuse needs {tool}")
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-fuse-", dir=args.workdir))
    cores = sorted(os.sched_getaffinity(0))
    if args.pin_server and len(cores) < 2:
        sys.exit(f"--pin-server needs at least 2 cores; this process may use {len(cores)}")
    if args.profile:
        if not PY_SPY.exists():
            sys.exit("--profile needs py-spy: .venv/bin/python -m pip install py-spy")
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"workdir {work} ({os.cpu_count()} cores); {args.size_mib} MiB file, {args.files} small files, "
          f"{THREADS} x {args.random_reads} random reads"
          + (f"; s3rver pinned to core {cores[-1]}, the rest to {cores[:-1]}" if args.pin_server else ""),
          flush=True)
    b = Bench(args, work)
    server: S3rver | None = None
    mounts: list[MountProc] = []
    mountpoints: list[Path] = []
    try:
        data, s3root = work / "data", work / "s3"
        dirs, files = make_data(data, s3root / "bench", args.size_mib, args.files)
        # s3rver signs v2 continuation tokens with DES, which Node's OpenSSL 3 refuses without the
        # legacy provider: every truncated ListObjectsV2 (e.g. the mesh's MaxKeys=2 directory probe)
        # would be an HTTP 500
        os.environ["NODE_OPTIONS"] = (os.environ.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip()
        server = S3rver(s3root)
        if args.pin_server:  # before any other process starts: they inherit the bench's cores
            subprocess.run(["taskset", "-a", "-p", "-c", str(cores[-1]), str(server.proc.pid)],
                           check=True, capture_output=True)
            os.sched_setaffinity(0, set(cores[:-1]))
        opts = ",".join(f"{k}={v}" for k, v in server.options().items())

        def start_node(data_dir: Path) -> MeshdProcess:
            return MeshdProcess(data_dir, [f"/s3=s3://bench,{opts},sync_interval={args.sync_interval}"],
                                ["--no-default-mount", "--no-s3", "--no-webhdfs", "--memory-capacity", "256MiB",
                                 "--disk-capacity", f"{2 * args.size_mib + 1024}MiB",
                                 *(security_args(work, args.security == "on") if args.security
                                   else verify_args(work, *VERIFY_NODES[args.verify]))]).start()

        b.node = start_node(work / "node")

        mesh_mnt, rc_mnt, pt_mnt = work / "mnt-meshfs", work / "mnt-rclone", work / "mnt-passthrough"
        mountpoints += [mesh_mnt, rc_mnt, pt_mnt]
        token_args: list[str] = []
        if args.security == "on":  # meshfs presents a tenant's token, as another user's mount would
            (work / "tenant.token").write_text(BENCH_TOKEN)
            (work / "tenant.token").chmod(0o600)
            token_args = ["--token-file", str(work / "tenant.token")]
        meshfs = MeshfsProcess(mesh_mnt, str(work / "node"), ["--ttl", "1", *token_args], log=work / "meshfs.log")
        b.meshfs = meshfs

        def meshfs_fresh() -> Path:
            meshfs.stop()
            meshfs.start()
            return mesh_mnt / "s3"

        conf = work / "rclone.conf"
        conf.write_text(f"[s3r]\ntype = s3\nprovider = Other\nendpoint = {server.endpoint}\n"
                        "access_key_id = S3RVER\nsecret_access_key = S3RVER\nregion = us-east-1\n"
                        "force_path_style = true\n")
        rclone = MountProc("rclone", ["rclone", "mount", "s3r:bench", str(rc_mnt), "--config", str(conf),
                                      "--vfs-cache-mode", "full", "--cache-dir", str(work / "rclone-cache"),
                                      "--log-level", "NOTICE",
                                      *args.rclone_args.split()],
                           rc_mnt, work / "rclone.out",
                           # the environment's AWS_CA_BUNDLE makes rclone's AWS SDK refuse to start
                           # ("unsupported transport"); the endpoint is plain http anyway
                           env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"})
        mounts.append(rclone)

        def rclone_fresh() -> Path:
            rclone.stop()
            rclone.start()
            return rc_mnt

        def passthrough(ra: int) -> MountProc:
            return MountProc(f"passthrough ra={ra}", [sys.executable, str(ROOT / "bench/passthroughfs.py"),
                                                      str(data), str(pt_mnt), "--readahead-kb", str(ra)],
                             pt_mnt, work / "passthrough.log")

        local_big = data / "big.bin"
        print("results (higher is better):", flush=True)

        # -- warm-up: the first read from S3, nothing cached anywhere ----------------------------
        row = "seq first read from S3"
        b.seq(row, "meshfs", lambda: meshfs_fresh() / "big.bin")
        b.seq(row, "rclone", lambda: rclone_fresh() / "big.bin")
        ra = {"meshfs": read_ahead_kb(mesh_mnt), "rclone": read_ahead_kb(rc_mnt)}
        cached = sum(f.stat().st_size for f in (work / "rclone-cache").rglob("*") if f.is_file()
                     and "vfsMeta" not in f.parts)
        with b.node.client() as c:
            by_source = c.report().get("bytes_by_source")
        print(f"  (rclone's VFS cache now holds {cached / MiB:.0f} MiB; mesh node bytes by source: {by_source})",
              flush=True)

        # -- sequential: the mount's page cache cold (fresh mount), then re-reads ----------------
        reps = args.repeat
        pt_current: list[MountProc] = []

        def pt_stop() -> None:
            for m in pt_current:
                m.stop()
                mounts.remove(m)
            pt_current.clear()

        def pt_fresh(kb: int) -> Path:
            pt_stop()
            m = passthrough(kb)
            mounts.append(m)
            pt_current.append(m)
            m.start()
            return pt_mnt

        def local_cold() -> Path:
            drop_file_pages(local_big)
            return local_big

        def meshfs_fresh_ra() -> Path:
            p = meshfs_fresh()
            set_read_ahead_kb(mesh_mnt, 1024)
            return p / "big.bin"

        row, rrow = "seq first read", "seq re-read"
        b.seq(row, "local", local_cold, reps)
        b.seq(rrow, "local", lambda: local_big, 5)
        for kb in (0, 1024):
            who = f"passthrough-{kb or 128}K"
            b.seq(row, who, lambda kb=kb: pt_fresh(kb) / "big.bin", reps)
            ra[who] = read_ahead_kb(pt_mnt)
            b.seq(rrow, who, lambda: pt_mnt / "big.bin", 5)
        pt_stop()
        b.seq(row, "meshfs", lambda: meshfs_fresh() / "big.bin", reps)
        b.seq(rrow, "meshfs", lambda: mesh_mnt / "s3/big.bin", 5)
        assert same_bytes(mesh_mnt / "s3/big.bin", local_big, b.size), "meshfs read other bytes than the file's"
        b.seq(row, "rclone", lambda: rclone_fresh() / "big.bin", reps)
        b.seq(rrow, "rclone", lambda: rc_mnt / "big.bin", 5)
        assert same_bytes(rc_mnt / "big.bin", local_big, b.size), "rclone read other bytes than the file's"
        # meshfs with the read-ahead it asks for, written once the mount is up (see read_ahead_kb below)
        b.seq("seq first read, meshfs ra 1M", "meshfs", meshfs_fresh_ra, reps)

        # -- random 128 KiB reads, 4 threads, same offsets for everyone ------------------------
        offsets = random_offsets(b.size, args.random_reads)
        row, rrow = "random 128K x4 first", "random 128K x4 re-read"
        b.rand(row, "local", local_cold, offsets, reps)
        b.rand(rrow, "local", lambda: local_big, offsets, reps)
        b.rand(row, "passthrough-1024K", lambda: pt_fresh(1024) / "big.bin", offsets, reps)
        b.rand(rrow, "passthrough-1024K", lambda: pt_mnt / "big.bin", offsets, reps)
        pt_stop()
        b.rand(row, "meshfs", lambda: meshfs_fresh() / "big.bin", offsets, reps)
        b.rand(rrow, "meshfs", lambda: mesh_mnt / "s3/big.bin", offsets, reps)
        b.rand(row, "rclone", lambda: rclone_fresh() / "big.bin", offsets, reps)
        b.rand(rrow, "rclone", lambda: rc_mnt / "big.bin", offsets, reps)

        # -- listing and stat of the small files ------------------------------------------------
        n = len(files)

        def list_stat(who: str, root: Path, suffix: str) -> None:
            b.ops(f"list {n} {suffix}", who, lambda: listing(root, dirs), n)
            b.ops(f"stat {n} {suffix}", who, lambda: stat_all(root, files), n)

        # every cold listing starts from dropped dentries and inodes: s3rver's directory
        # too, so neither S3 client walks a tree the other one warmed in the server's kernel
        drop_dentries()
        list_stat("local", data, "cold")
        list_stat("local", data, "warm")
        p = pt_fresh(1024)
        drop_dentries()
        list_stat("passthrough-1024K", p, "cold")
        list_stat("passthrough-1024K", pt_mnt, "warm")
        pt_stop()

        # The S3 clients' cold walks are s3rver-bound and noisy (+-10% run to run): the
        # median of --cold-reps walks, meshfs and rclone alternating, each on a fresh
        # mount (meshfs: of a fresh node too, whose very first listing of these
        # directories it is), each followed by the warm walk on the same mount.
        walks: dict[tuple[str, str], list[float]] = {}

        def walk(who: str, root: Path) -> None:
            # rclone's mount check (MountProc.start lists the mountpoint: the bucket's root)
            # leaves rclone holding the root's listing (--dir-cache-time) when its walk
            # starts; meshfs's lists the mount table. The same here for both: each walk
            # starts with the bucket's root listed by the client, once, and nothing below it
            os.listdir(root)
            drop_dentries()
            ops: list[tuple[str, Callable[[Path], int]]] = [("list", lambda r: listing(r, dirs)),
                                                            ("stat", lambda r: stat_all(r, files))]
            for suffix in ("cold", "warm"):
                for op, fn in ops:
                    row = f"{op} {n} {suffix}"
                    secs, got = b.timed(row, who, lambda: root, fn, 1)
                    assert got == n, (row, who, got)
                    walks.setdefault((row, who), []).append(secs)

        for rep in range(args.cold_reps):
            if rep:  # a node that never listed these directories
                meshfs.stop()
                b.node.stop()
                b.node = start_node(work / f"node-{rep}")
                meshfs.endpoint = str(b.node.data_dir)
            walk("meshfs", meshfs_fresh())
            walk("rclone", rclone_fresh())
        for (row, who), samples in walks.items():
            secs = statistics.median(samples)
            b.record(row, who, n / secs, "ops/s", f"({secs:.2f} s" + (
                f", median of {len(samples)}: {', '.join(f'{x:.2f}' for x in samples)})" if len(samples) > 1 else ")"))
        subprocess.run([*MESHFS, "drop-cache", str(mesh_mnt)], check=True, capture_output=True)
        list_stat("meshfs", mesh_mnt / "s3", "drop-cache")

        report(b, ra)
        print(f"total time {time.perf_counter() - started:.0f} s")
        print_findings(log_findings(work, "*.log"), 20)  # meshd, meshfs, passthrough
        rc_errors = [line for line in (work / "rclone.out").read_text(errors="replace").splitlines()
                     if " ERROR " in line and "Unmounted rclone mount" not in line]
        print(f"rclone log: {len(rc_errors)} error line(s)" + "".join(f"\n  {x[:240]}" for x in rc_errors[:10]))
    finally:
        if b.meshfs is not None:
            b.meshfs.stop()
        for m in mounts:
            m.stop()
        for mp in mountpoints:
            force_unmount(mp)
        if b.node is not None:
            b.node.stop()
        if server is not None:
            server.stop()
        left = [str(mp) for mp in mountpoints if is_mounted(mp)]
        if left:
            print(f"WARNING: still mounted: {left}", file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(b: Bench, ra: dict[str, int | None]) -> None:
    who_cols = ["local", "passthrough-128K", "passthrough-1024K", "meshfs", "rclone"]
    print()
    print("kernel read-ahead of each mount (read_ahead_kb, as found after mounting): "
          + ", ".join(f"{k} {v}" for k, v in ra.items()))
    print()
    head = f"{'row':<30} {'unit':<6}" + "".join(f"{w:>18}" for w in who_cols) + f"{'meshfs/rclone':>15}"
    print(head)
    print("-" * len(head))
    for row in b.order:
        vals = b.rows[row]
        cells = "".join(f"{vals[w]:18.1f}" if w in vals else f"{'-':>18}" for w in who_cols)
        ratio = (f"{vals['meshfs'] / vals['rclone']:15.2f}" if "meshfs" in vals and "rclone" in vals
                 else f"{'-':>15}")
        print(f"{row:<30} {b.units[row]:<6}{cells}{ratio}")
    print()
    print("ratios:")
    r = b.rows
    first, reread = r["seq first read"], r["seq re-read"]
    goals: list[tuple[str, float, float]] = []
    m = first["meshfs"]
    print(f"  meshfs first seq / passthrough 128K read-ahead     {m / first['passthrough-128K']:5.2f}")
    print(f"  meshfs first seq / passthrough 1024K read-ahead    {m / first['passthrough-1024K']:5.2f}")
    m1 = r["seq first read, meshfs ra 1M"]["meshfs"]
    print(f"  meshfs first seq, read-ahead really 1024K / passthrough 1024K  "
          f"{m1 / first['passthrough-1024K']:5.2f}")
    print(f"  passthrough 1024K / 128K read-ahead                "
          f"{first['passthrough-1024K'] / first['passthrough-128K']:5.2f}")
    print(f"  meshfs re-read / local page-cache read             {reread['meshfs'] / reread['local']:5.2f}")
    print(f"  passthrough re-read / local page-cache read        "
          f"{reread['passthrough-1024K'] / reread['local']:5.2f}   (the kernel's FUSE page-cache path)")
    print(f"  meshfs re-read / passthrough re-read               "
          f"{reread['meshfs'] / reread['passthrough-1024K']:5.2f}")
    print(f"  meshfs first seq / local disk (pages dropped)      {m / first['local']:5.2f}")
    goals.append(("meshfs first seq read / passthrough (same read-ahead setting, 1024K)",
                  m / first["passthrough-1024K"], 0.8))
    goals.append(("meshfs re-read / passthrough re-read (FUSE page cache)",
                  reread["meshfs"] / reread["passthrough-1024K"], 0.8))
    for row in b.order:
        vals = r[row]
        if "meshfs" in vals and "rclone" in vals:
            extra = " (extra row)" if row == "seq first read from S3" else ""
            goals.append((f"meshfs / rclone: {row}{extra}", vals["meshfs"] / vals["rclone"], 1.0))
    print("goals:")
    for name, value, target in goals:
        ok = value >= target if target != 1.0 else value > target
        print(f"  {'PASS' if ok else 'MISS'}  {name:<62} {value:6.2f}  (goal {'>=' if target != 1.0 else '>'} "
              f"{target:g})")


if __name__ == "__main__":
    main()
