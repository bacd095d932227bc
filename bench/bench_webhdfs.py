"""WebHDFS OPEN of a cached file against the S3 gateway and local disk, in one run.

    .venv/bin/python bench/bench_webhdfs.py [--size-mib 1024] [--repeat 11]

One ``meshd embedded`` with a ``file://`` mount of a directory holding one
random file (1 GiB by default). The file is loaded into the mesh and read once
through each gateway (so it is cached and the kernel page cache is warm), then
these contenders are measured side by side, ``curl`` as the client of every
one of them so the ratios isolate the server path:

* WebHDFS ``OPEN``, two steps as a real client does (``curl -L``: the 307 from
  the "NameNode" step, then the ``datanode=true`` Location);
* WebHDFS, the second step only (``curl`` of the ``datanode=true`` URL): the
  difference to the above is what the redirect costs;
* S3 gateway ``GET`` of the same object (path style ``/<bucket>/<key>``, the
  bucket being the mount's top-level name), on a fresh connection, and on a
  kept-alive connection that first served a tiny object (a reused loopback
  connection streams ~10 % slower here, gateway or not: the WebHDFS redirect
  therefore says ``Connection: close``, so the DataNode step, as against a
  real DataNode, gets a connection of its own);
* local disk: ``curl file://`` of the file (kernel page cache), and Python
  reading it in 1 MiB chunks.

Three shapes: the whole file in one stream; a 64 MiB range in the middle
(``offset``/``length`` against a ``Range`` header); 8 concurrent streams of 1/8
each. Every figure is the median of ``--repeat`` rounds; the order of the
contenders is reversed every other round to spread the machine's noise. The
node's CPU seconds per GiB served (from /proc) are shown for each server-side
contender.

Goal (WebHDFS issue): OPEN of a cached 1 GiB file >= 0.9 x the S3 gateway's GET.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import log_findings, print_findings  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
GOAL = 0.9  # WebHDFS / S3 gateway


def curl(url: str, *, rng: str | None = None, follow: bool = False, out: str = "/dev/null") -> tuple[int, int, str]:
    """``curl`` ``url``: (HTTP status of the last response, bytes received, redirect URL)."""
    cmd = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{redirect_url}", url]
    if rng:
        cmd[1:1] = ["-r", rng]
    if follow:
        cmd[1:1] = ["-L"]
    parts = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split(" ", 2)
    return int(parts[0]), int(parts[1]), parts[2].strip()


def fetch(url: str, expect: int, *, rng: str | None = None, follow: bool = False) -> None:
    """One timed transfer; fails loudly if it did not deliver ``expect`` bytes."""
    status, n, _ = curl(url, rng=rng, follow=follow)
    if n != expect or status not in (0, 200, 206):  # 0: file://
        raise AssertionError(f"{url} (range {rng}): status {status}, {n} bytes, expected {expect}")


def fetch_after(first: str, url: str, expect: int) -> None:
    """``url`` on a kept-alive connection that first served ``first`` (a tiny object), as
    ``curl -L`` reuses the NameNode step's connection for the DataNode step."""
    cmd = ["curl", "-sS", "-o", "/dev/null", first, "-o", "/dev/null", url, "-w", "%{http_code} %{size_download}\\n"]
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    if lines[-2:] != ["200", str(expect)]:
        raise AssertionError(f"{first} then {url}: {lines}, expected 200 and {expect} bytes")


def parallel(fns: Sequence[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(len(fns)) as pool:
        list(pool.map(lambda f: f(), fns))


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Rounds:
    """Contenders measured in rounds, the order reversed every other round."""

    def __init__(self, repeat: int, server_pid: int) -> None:
        self.repeat = repeat
        self.pid = server_pid
        self.mbps: dict[str, float] = {}

    def run(self, title: str, contenders: list[tuple[str, Callable[[], None], bool]], nbytes: int) -> None:
        """``contenders``: (name, fn, served by the node); each fn moves ``nbytes``."""
        times: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
        cpu: dict[str, float] = dict.fromkeys(times, 0.0)
        for r in range(self.repeat):
            order = contenders if r % 2 == 0 else contenders[::-1]
            for name, fn, _ in order:
                c0 = cpu_seconds(self.pid)
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                cpu[name] += cpu_seconds(self.pid) - c0
        print(f"{title} ({nbytes / MiB:g} MiB; median of {self.repeat}, MB/s, higher is better):")
        for name, _, served in contenders:
            ts = sorted(times[name])
            secs = ts[len(ts) // 2]
            mbps = nbytes / MiB / secs
            self.mbps[name] = mbps
            node_cpu = (f"node CPU {cpu[name] / (self.repeat * nbytes / GiB):5.2f} s/GiB" if served
                        else "")
            print(f"  {name:<44} {mbps:9.1f} MB/s  ({1000 * secs:8.1f} ms; "
                  f"min {nbytes / MiB / ts[-1]:7.1f}, max {nbytes / MiB / ts[0]:7.1f})  {node_cpu}",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--range-mib", type=int, default=64, help="size of the ranged read in the middle")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="where the under-store and the cache live (a real disk: "
                         "on some machines /tmp is a much slower filesystem)")
    args = ap.parse_args()
    size = args.size_mib * MiB
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-webhdfs-", dir=args.workdir))
    print(f"workdir {work} ({os.cpu_count()} cores)", flush=True)
    node = None
    try:
        store = work / "store"
        store.mkdir()
        big = store / "big.bin"
        (store / "tiny.bin").write_bytes(b"x" * 100)
        print(f"writing a {args.size_mib} MiB random file ...", flush=True)
        block = os.urandom(MiB)
        with open(big, "wb") as f:
            for i in range(args.size_mib):
                f.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:])
        node = MeshdProcess(work / "node", [f"/data=file://{store}"],
                            ["--no-default-mount", "--memory-capacity", "2GiB",
                             "--disk-capacity", f"{4 * args.size_mib}MiB"]).start()
        assert node.proc is not None
        s3_url = f"{node.endpoints['s3']}/data/big.bin"
        open_url = f"{node.endpoints['webhdfs']}/webhdfs/v1/data/big.bin?op=OPEN&user.name=bench"

        # warm: load into the mesh, then one full read through each gateway (and the page cache)
        print("warming: load into the mesh, one full S3 GET, one full WebHDFS OPEN ...", flush=True)
        t = time.perf_counter()
        with node.client() as c:
            for _ in c.load("/data"):
                pass
        fetch(s3_url, size)
        s3_tiny = f"{node.endpoints['s3']}/data/tiny.bin"
        fetch_after(s3_tiny, s3_url, size)
        fetch(open_url, size, follow=True)
        fetch(f"file://{big}", size)
        print(f"  warm in {time.perf_counter() - t:.1f} s", flush=True)

        def datanode_url(query: str = "") -> str:
            status, n, loc = curl(open_url + query)
            if status != 307 or "datanode=true" not in loc or n != 0:
                raise AssertionError(f"OPEN{query}: status {status}, {n} bytes, Location {loc!r}")
            return loc

        dn_url = datanode_url()

        # the ranged reads: same bytes from every contender (checked once, untimed)
        rlen = min(args.range_mib * MiB, size)
        roff = (size - rlen) // 2
        rq = f"&offset={roff}&length={rlen}"
        rh = f"{roff}-{roff + rlen - 1}"
        dn_range_url = datanode_url(rq)
        with open(big, "rb") as src:
            src.seek(roff)
            want = hashlib.sha256(src.read(rlen)).hexdigest()
        check = work / "range.bin"
        for what, url, rng, follow in (("WebHDFS OPEN", open_url + rq, None, True),
                                       ("WebHDFS datanode step", dn_range_url, None, False),
                                       ("S3 ranged GET", s3_url, rh, False)):
            curl(url, rng=rng, follow=follow, out=str(check))
            if hashlib.sha256(check.read_bytes()).hexdigest() != want:
                raise AssertionError(f"{what}: the bytes of range {rh} differ from the file's")
        check.unlink()

        # small requests: the 307 alone (what the redirect adds per OPEN), against an S3 HEAD
        # and against curl's own start-up (file:// of an empty file)
        empty = work / "empty"
        empty.touch()

        def s3_head() -> None:
            subprocess.run(["curl", "-sSf", "-I", "-o", "/dev/null", s3_url], check=True)

        def latency_ms(fn: Callable[[], object]) -> float:
            ts = []
            for _ in range(max(args.repeat, 20)):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return 1000 * sorted(ts)[len(ts) // 2]

        redirect_ms = latency_ms(datanode_url)
        head_ms = latency_ms(s3_head)
        curl_ms = latency_ms(lambda: fetch(f"file://{empty}", 0))

        rounds = Rounds(args.repeat, node.proc.pid)
        buf = bytearray(MiB)

        def py_local() -> None:
            n = 0
            with open(big, "rb", buffering=0) as f:
                while k := f.readinto(buf):
                    n += k
            assert n == size, n

        print(f"small requests (curl, median of {max(args.repeat, 20)}): WebHDFS OPEN 307 step alone "
              f"{redirect_ms:.1f} ms; S3 HEAD {head_ms:.1f} ms; curl start-up (empty file://) "
              f"{curl_ms:.1f} ms", flush=True)
        rounds.run("single stream, the whole file", [
            ("WebHDFS OPEN, curl -L (307 + datanode)", lambda: fetch(open_url, size, follow=True), True),
            ("WebHDFS datanode step only, curl", lambda: fetch(dn_url, size), True),
            ("S3 gateway GET, curl", lambda: fetch(s3_url, size), True),
            ("S3 gateway GET, curl, reused connection", lambda: fetch_after(s3_tiny, s3_url, size), True),
            ("local disk, curl file://", lambda: fetch(f"file://{big}", size), False),
            ("local disk, Python readinto 1 MiB", py_local, False),
        ], size)
        full = dict(rounds.mbps)

        rounds.mbps = {}
        rounds.run(f"ranged, {rlen // MiB} MiB at offset {roff // MiB} MiB", [
            ("WebHDFS OPEN offset/length, curl -L", lambda: fetch(open_url + rq, rlen, follow=True), True),
            ("WebHDFS datanode step only, curl", lambda: fetch(dn_range_url, rlen), True),
            ("S3 gateway GET Range, curl", lambda: fetch(s3_url, rlen, rng=rh), True),
            ("local disk, curl -r file://", lambda: fetch(f"file://{big}", rlen, rng=rh), False),
        ], rlen)
        ranged = dict(rounds.mbps)

        k = args.streams
        part = size // k
        parts = [(i * part, part if i < k - 1 else size - i * part) for i in range(k)]
        wh_parts = [partial(fetch, f"{open_url}&offset={o}&length={n}", n, follow=True) for o, n in parts]
        s3_parts = [partial(fetch, s3_url, n, rng=f"{o}-{o + n - 1}") for o, n in parts]
        local_parts = [partial(fetch, f"file://{big}", n, rng=f"{o}-{o + n - 1}") for o, n in parts]
        rounds.mbps = {}
        rounds.run(f"{k} concurrent streams of 1/{k} each", [
            (f"WebHDFS {k} x OPEN offset/length, curl -L", lambda: parallel(wh_parts), True),
            (f"S3 gateway {k} x GET Range, curl", lambda: parallel(s3_parts), True),
            (f"local disk {k} x curl -r file://", lambda: parallel(local_parts), False),
        ], size)
        par = dict(rounds.mbps)

        wh, wh_dn, s3, s3_reused, lc, lp = full.values()
        rwh, rwh_dn, rs3, rlc = ranged.values()
        pwh, ps3, plc = par.values()

        def ratio(label: str, x: float, goal: bool = False) -> None:
            mark = f"{x:6.3f}   (>= {GOAL}: {'PASS' if x >= GOAL else 'MISS'})" if goal else f"{x:6.2f}"
            print(f"  {label:<54} {mark}")

        print("ratios:")
        ratio("WebHDFS OPEN / S3 gateway GET, whole file (the goal)", wh / s3, goal=True)
        ratio("WebHDFS datanode step / S3 gateway GET", wh_dn / s3)
        ratio("WebHDFS OPEN / datanode step (the redirect's cost)", wh / wh_dn)
        ratio("WebHDFS OPEN / S3 GET on a reused connection", wh / s3_reused)
        ratio("S3 GET reused connection / fresh connection", s3_reused / s3)
        ratio("WebHDFS OPEN / local curl file://", wh / lc)
        ratio("S3 gateway GET / local curl file://", s3 / lc)
        ratio("WebHDFS OPEN / local Python readinto", wh / lp)
        ratio("ranged: WebHDFS OPEN / S3 GET Range", rwh / rs3, goal=True)
        ratio("ranged: WebHDFS datanode step / S3 GET Range", rwh_dn / rs3)
        ratio("ranged: WebHDFS OPEN / local curl -r", rwh / rlc)
        ratio("ranged: S3 GET Range / local curl -r", rs3 / rlc)
        ratio(f"{k} streams: WebHDFS OPEN / S3 GET Range", pwh / ps3, goal=True)
        ratio(f"{k} streams: WebHDFS OPEN / local curl -r", pwh / plc)
        ratio(f"{k} streams: S3 GET Range / local curl -r", ps3 / plc)
        # the anonymous-S3 warning is expected here (no keys configured): left out
        findings = [x for x in log_findings(work, "*.log") if "accepts ANONYMOUS requests" not in x]
        print_findings(findings, 20)
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
