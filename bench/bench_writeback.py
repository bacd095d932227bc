"""A checkpoint written single-threaded in 1 MiB writes: write-back vs write-through vs
direct to the store vs local disk, with the under-store behind a shaped link (issue 23).

    .venv/bin/python bench/bench_writeback.py [--size 8GiB] [--link-mbit 1600] [--rows ...]

One run, side by side (these machines are noisy: compare the ratios). Every row
writes the same bytes (1 MiB blocks of random data, each stamped with its
index) from one Python thread:

* local disk       open/write/fsync/close of a file in the work directory (the
                   same disk as the node's data dir, its spool and meshfs's
                   staging directory);
* direct S3        boto3 ``upload_fileobj`` of the stream to the S3 server
                   (s3rver, file-backed) behind the shaped link: what the
                   writer gets without the mesh (boto3's default transfer:
                   8 MiB parts, 10 threads);
* meshfs through   1 MiB ``write`` calls into a ``meshfs`` mount of a
                   ``write_mode: through`` S3 mount, then fsync and close; the
                   ack (close returns) is when the store has the file;
* meshfs back      the same into a ``write_mode: back`` mount: close returns
                   once the node has the bytes on its disk (spool fsynced,
                   journal record synced);
* S3 gw through /  boto3 ``upload_fileobj`` of the stream to the node's S3
  S3 gw back       gateway (multipart, same transfer settings as direct S3),
                   into buckets on the two mounts.
* sdk-back         the Python client's ``put`` (HTTP, chunked) into the
                   write-back mount: meshfs's commit without FUSE, i.e. the
                   write-back core's ack alone (``sdk-through``: on request).

meshfs and the Python client get ``--timeout`` (default 1800 s) and boto3 a
long read timeout without retries: a write-through commit of 8 GiB is answered
only once the store has completed it, minutes later.

For the write-back rows, also the time until the store holds everything:
from the ack until ``head_object`` on the S3 server (directly, not through
the mesh) shows the full size, against the link's capacity (size / link rate);
and from the first write. Per row: the node's CPU seconds and its peak RSS
(VmHWM, reset before each row).

The S3 server runs in a network namespace behind a veth pair shaped with
tc tbf in both directions (as bench/bench_read.py; needs root). Between rows
everything a row wrote is removed (the disk needs about 3x --size free: the
staged copy, the spool, and s3rver's parts plus the object it concatenates).

Goals (issue 23, reported, not asserted): write-back >= 0.8 x local disk;
write-back >= 5 x write-through over the shaped link; time until the store
holds everything within 10 % of size / link capacity.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fuse")]

from bench.bench_read import S3rver, ShapedLink  # noqa: E402
from bench.benchlib import cpu_seconds, log_findings, print_findings  # noqa: E402
from meshd.client.sdk import MeshClient  # noqa: E402
from meshd.config import parse_size  # noqa: E402
from tests.fuse_proc import MeshfsProcess  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20
KEY = "ckpt/model.bin"
GW_KEY, GW_SECRET = "AKBENCHWRITEBACK", "bench-writeback-secret-0123"
ROWS = ("local", "direct", "fs-through", "fs-back", "gw-through", "gw-back", "sdk-back", "sdk-through")
DEFAULT_ROWS = ROWS[:-1]


class WbLink(ShapedLink):
    """bench_read's shaped link under names of its own (``n``: several runs on one machine)."""

    def __init__(self, mbit: int, n: int = 0) -> None:
        super().__init__(mbit)
        self.NS, self.HOST_IF, self.NS_IF = f"meshbench-wb{n}", f"mbwb{n}-host", f"mbwb{n}-s3"
        self.HOST_IP, self.NS_IP = f"10.213.{1 + n}.1", f"10.213.{1 + n}.2"


class Blocks:
    """The checkpoint: ``count`` blocks of 1 MiB, random bytes stamped with the block index."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.buf = bytearray(os.urandom(MiB))

    def __iter__(self) -> Any:
        for i in range(self.count):
            self.buf[:8] = i.to_bytes(8, "big")
            yield self.buf


class BlockReader(io.RawIOBase):
    """The blocks as a readable file (what boto3's upload_fileobj reads from)."""

    def __init__(self, blocks: Blocks) -> None:
        self.it = iter(blocks)
        self.rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self.rest:
            try:
                self.rest = memoryview(bytes(next(self.it)))
            except StopIteration:
                return 0
        n = min(len(b), len(self.rest))
        b[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


@dataclass
class Row:
    name: str
    write: float = 0.0  # the write calls
    fsync: float = 0.0
    close: float = 0.0
    ack: float = 0.0  # first write until the writer is told the bytes are safe
    landed: float | None = None  # ack until the store holds everything (write-back rows)
    cpu: float = 0.0  # node CPU seconds during the row (ack and upload)
    fs_cpu: float = 0.0  # meshfs's
    store_cpu: float = 0.0  # the S3 server's
    rss: int = 0  # node peak RSS during the row, bytes
    notes: list[str] = field(default_factory=list)


def file_row(name: str, path: Path, blocks: Blocks) -> Row:
    """1 MiB writes, fsync, close; each timed."""
    r = Row(name)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for b in blocks:
        os.write(fd, b)
    t1 = time.perf_counter()
    os.fsync(fd)
    t2 = time.perf_counter()
    os.close(fd)
    t3 = time.perf_counter()
    r.write, r.fsync, r.close, r.ack = t1 - t0, t2 - t1, t3 - t2, t3 - t0
    return r


def upload_row(name: str, client: Any, bucket: str, blocks: Blocks) -> Row:
    """boto3's upload_fileobj (multipart); ``write``: the parts, ``close``: CompleteMultipartUpload."""
    r = Row(name)
    marks: dict[str, float] = {}

    def mark(event_name: str, **_: Any) -> None:
        marks[event_name.split(".")[0]] = time.perf_counter()

    client.meta.events.register("before-call.s3.CompleteMultipartUpload", mark)
    client.meta.events.register("after-call.s3.CompleteMultipartUpload", mark)
    try:
        t0 = time.perf_counter()
        client.upload_fileobj(io.BufferedReader(BlockReader(blocks), MiB), bucket, KEY)
        r.ack = time.perf_counter() - t0
    finally:
        client.meta.events.unregister("before-call.s3.CompleteMultipartUpload", mark)
        client.meta.events.unregister("after-call.s3.CompleteMultipartUpload", mark)
    if "before-call" in marks and "after-call" in marks:
        r.write, r.close = marks["before-call"] - t0, marks["after-call"] - marks["before-call"]
    else:
        r.write = r.ack
    return r


def sdk_row(name: str, client: Any, path: str, blocks: Blocks) -> Row:
    """The Python client's ``put`` (HTTP, chunked) of the blocks: meshfs's commit without FUSE."""
    r = Row(name)
    t0 = time.perf_counter()
    client.put(path, (bytes(b) for b in blocks))
    r.ack = r.write = time.perf_counter() - t0
    return r


def rss_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM)
        f.write("5")


def rss_peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_landed(store: Any, bucket: str, size: int, timeout: float) -> float:
    """Seconds until the S3 server has the whole object (polled every 50 ms)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if store.head_object(Bucket=bucket, Key=KEY)["ContentLength"] == size:
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"s3://{bucket}/{KEY} not complete after {timeout:.0f} s")


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="8GiB", help="the checkpoint's size (8GiB, 2GiB, 512MiB ...)")
    ap.add_argument("--link-mbit", type=int, default=1600, help="the shaped link's rate, both ways")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                    help=f"which rows, comma-separated, of {','.join(ROWS)} (default all but sdk-through)")
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="local disk, the node's data dir (spool), meshfs staging and the S3 server's files")
    ap.add_argument("--parallel", type=int, default=4, help="writeback.parallel / writeback.parts of the node")
    ap.add_argument("--link-id", type=int, default=0, choices=range(0, 200), metavar="0..199",
                    help="names of the network namespace and veth pair (two runs at once need two)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="meshfs --timeout and the Python client's: a write-through commit waits for the store "
                         "to complete the whole upload (meshfs's default, 30 s, fails an 8 GiB one with EIO)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work directory's logs (the data goes anyway)")
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    if size % MiB:
        ap.error("--size must be a whole number of MiB")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {ROWS}")
    blocks = Blocks(size // MiB)
    link_bps = args.link_mbit * 1e6 / 8
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-writeback-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    print(f"workdir {work} ({os.cpu_count()} cores, {free / 2**30:.1f} GiB free); checkpoint {size / 2**30:.2f} GiB "
          f"in 1 MiB writes; S3 server behind a {args.link_mbit} Mbit/s link ({link_bps / 1e6:.0f} MB/s)", flush=True)
    if free < 3.2 * size:
        print(f"warning: {free / 2**30:.1f} GiB free, a write-back row may need {3 * size / 2**30:.1f} GiB", flush=True)
    results: dict[str, Row] = {}
    failed: list[str] = []
    node = fs = server = None
    with WbLink(args.link_mbit, args.link_id) as link:
        try:
            server = S3rver(work / "s3", netns=link.NS, address=link.NS_IP)
            import boto3
            from botocore.config import Config

            slow = Config(s3={"addressing_style": "path"}, read_timeout=3600, retries={"max_attempts": 1})

            def s3client(endpoint: str, key: str, secret: str) -> Any:
                # an 8 GiB CompleteMultipartUpload takes minutes (s3rver concatenates the parts; the
                # gateway streams them into the node): boto3's default 60 s read timeout and retries
                # would measure retries
                return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                                    aws_secret_access_key=secret, config=slow)

            store: Any = s3client(server.endpoint, "S3RVER", "S3RVER")
            spid = server.proc.pid  # ip netns exec execs s3rver: the same process
            for b in ("direct", "through", "back"):
                store.create_bucket(Bucket=b)
            opts = ",".join(f"{k}={v}" for k, v in server.options().items())
            (work / "node.yaml").write_text(
                "auth: {enforce: false}\n"
                f"writeback: {{budget: {max(8 << 30, size + (1 << 30))}, retain: 0, "
                f"parallel: {args.parallel}, parts: {args.parallel}}}\n")
            node = MeshdProcess(work / "node", [f"/through=s3://through,{opts}",
                                                f"/back=s3://back,{opts},write_mode=back"],
                                ["--no-default-mount", "--no-webhdfs", "--memory-capacity", "256MiB",
                                 "--disk-capacity", "1GiB", "--config", str(work / "node.yaml"),
                                 "--s3-access-key", GW_KEY, "--s3-secret-key", GW_SECRET]).start()
            assert node.proc is not None
            pid = node.proc.pid
            if any(r.startswith("fs-") for r in rows):
                (work / "staging").mkdir(mode=0o700)
                fs = MeshfsProcess(work / "mnt", node.endpoint, ["--staging-dir", str(work / "staging"),
                                                                  "--timeout", str(args.timeout)]).start()
            gw = s3client(node.endpoints["s3"], GW_KEY, GW_SECRET)

            def run(name: str, bucket: str | None, back: bool, fn: Callable[..., Row], *fn_args: Any) -> None:
                rss_reset(pid)
                c0 = cpu_seconds(pid)
                f0 = cpu_seconds(fs.pid) if fs is not None else 0.0
                s0 = cpu_seconds(spid)
                t = time.perf_counter()
                r = fn(name, *fn_args)
                if bucket is not None:
                    if back:
                        r.landed = wait_landed(store, bucket, size, timeout=20 * size / link_bps + 600)
                    else:
                        got = store.head_object(Bucket=bucket, Key=KEY)["ContentLength"]
                        assert got == size, (name, got, size)
                r.cpu, r.rss = cpu_seconds(pid) - c0, rss_peak(pid)
                r.fs_cpu = cpu_seconds(fs.pid) - f0 if fs is not None else 0.0
                r.store_cpu = cpu_seconds(spid) - s0
                results[name] = r
                mbps = size / MiB / r.ack
                more = f", fsync {r.fsync:.2f} s" if r.fsync else ""
                more += f", close/complete {r.close:.2f} s" if r.fsync or r.close else ""
                land = f"; store holds everything {r.landed:.1f} s after the ack" if r.landed is not None else ""
                print(f"  {name:<12} {mbps:8.1f} MB/s  ack {r.ack:7.2f} s (writes {r.write:.2f} s{more}){land}; "
                      f"CPU s node {r.cpu:.1f} meshfs {r.fs_cpu:.1f} S3 server {r.store_cpu:.1f}; node peak RSS {r.rss / MiB:.0f} MiB  [{time.perf_counter() - t:.0f} s]",
                      flush=True)

            def clean(bucket: str | None, path: Path | None = None) -> None:
                if path is not None:
                    path.unlink(missing_ok=True)
                if bucket is not None:
                    store.delete_object(Bucket=bucket, Key=KEY)
                spool = work / "node" / "writeback"
                for _ in range(100):  # the node's spool files go once uploaded (retain: 0)
                    if du(spool) < MiB:
                        break
                    time.sleep(0.1)

            print("rows (MB/s = size / time until the ack):", flush=True)
            for name in rows:
                free = shutil.disk_usage(work).free
                if free < 3 * size + (4 << 30):  # a full disk would break everything else on the machine
                    print(f"  {name:<12} skipped: {free / 2**30:.1f} GiB free, the row needs up to "
                          f"{3 * size / 2**30:.0f} GiB (+4 GiB spare)", flush=True)
                    continue
                try:
                    if name == "local":
                        (work / "local").mkdir(exist_ok=True)
                        run(name, None, False, file_row, work / "local/ckpt.bin", blocks)
                        clean(None, work / "local/ckpt.bin")
                    elif name == "direct":
                        run(name, "direct", False, upload_row, store, "direct", blocks)
                        clean("direct")
                    elif name.startswith("fs-"):
                        assert fs is not None
                        mode = name[3:]
                        target = fs.mountpoint / mode / KEY
                        target.parent.mkdir(parents=True, exist_ok=True)
                        run(name, mode, mode == "back", file_row, target, blocks)
                        clean(None, target)  # the mesh deletes it in the store
                    elif name.startswith("sdk-"):
                        mode = name[4:]
                        with MeshClient(node.endpoint, timeout=args.timeout) as sdk:
                            run(name, mode, mode == "back", sdk_row, sdk, f"/{mode}/{KEY}", blocks)
                            sdk.rm(f"/{mode}/{KEY}")
                        clean(None)
                    else:
                        mode = name[3:]
                        run(name, mode, mode == "back", upload_row, gw, mode, blocks)
                        assert gw is not None
                        gw.delete_object(Bucket=mode, Key=KEY)
                        clean(None)
                except Exception as e:  # the other rows still run; the row says why it has no figure
                    print(f"  {name:<12} FAILED: {type(e).__name__}: {e}", flush=True)
                    failed.append(name)
        finally:
            if fs is not None:
                fs.stop()
            if node is not None:
                node.stop()
            if server is not None:
                server.stop()
    report(results, size, link_bps, args.link_mbit)
    if failed:
        print(f"failed rows: {', '.join(failed)} (the node and meshfs logs say more: --keep-logs)")
    print_findings(log_findings(work, "*.log"), 20)
    if args.keep_logs or failed:
        for d in ("s3", "node", "local", "staging", "mnt"):
            shutil.rmtree(work / d, ignore_errors=True)
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, Row], size: int, link_bps: float, mbit: int) -> None:
    mb = size / MiB
    cap = size / link_bps
    print(f"\nsummary: {size / 2**30:.2f} GiB checkpoint, 1 MiB writes, one thread; link {mbit} Mbit/s "
          f"(size / link = {cap:.1f} s)")
    print(f"  {'row':<12} {'MB/s':>8} {'ack s':>8} {'in store s':>11} {'store/link':>11} "
          f"{'CPU s: node':>11} {'meshfs':>7} {'S3 srv':>7} {'node RSS':>9}")
    for r in results.values():
        land = total = ""
        if r.landed is not None:
            land = f"{r.ack + r.landed:11.1f}"
            total = f"{(r.ack + r.landed) / cap:11.2f}"
        elif r.name != "local":
            land = f"{r.ack:11.1f}"
            total = f"{r.ack / cap:11.2f}"
        print(f"  {r.name:<12} {mb / r.ack:8.1f} {r.ack:8.2f} {land:>11} {total:>11} {r.cpu:11.1f} "
              f"{r.fs_cpu:7.1f} {r.store_cpu:7.1f} {r.rss / MiB:7.0f}Mi")
    print("  (in store s: from the first write until the S3 server holds the whole object; "
          "store/link: that over size / link rate)")
    local = results.get("local")
    print("ratios (goals of issue 23, reported, not asserted):")
    for front in ("fs", "gw", "sdk"):
        back, thru = results.get(f"{front}-back"), results.get(f"{front}-through")
        if back is None:
            continue
        if local is not None:
            print(f"  {front + '-back / local disk':<30}{local.ack / back.ack:6.2f}   (goal >= 0.8)")
        if thru is not None:
            print(f"  {front + '-back / ' + front + '-through':<30}{thru.ack / back.ack:6.2f}   (goal >= 5)")
        if back.landed is not None:
            print(f"  {front + '-back upload / link':<30}{back.landed / cap:6.2f}   "
                  f"(ack until in store over size / link rate; goal <= 1.1)")
            print(f"  {front + '-back in store / link':<30}{(back.ack + back.landed) / cap:6.2f}   "
                  "(first write until in store over size / link rate)")
    direct = results.get("direct")
    if direct is not None:
        print(f"  {'direct S3 / link':<30}{direct.ack / cap:6.2f}   (time over size / link rate)")


if __name__ == "__main__":
    sys.exit(main())
