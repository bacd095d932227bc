"""The S3 gateway on warm (cached) data: big-object GETs and many small GETs.

    .venv/bin/python bench/bench_s3.py [--size-mib 1024] [--small 10000]

Side by side, in one run:

* single stream: ``curl`` GET of a cached 1 GiB object through the gateway,
  against ``curl file://`` of the same file from the kernel page cache (the
  same client program, so the ratio isolates the server path), and against
  Python reading it from local disk;
* 8 streams: 8 concurrent ``curl`` ranged GETs (1/8 each) against 8
  concurrent ``curl -r`` of the local file;
* small objects: GETs of 64 KiB cached objects with 16 keep-alive
  connections (aiohttp client): requests/s, p50 and p99 latency, against
  reading the same files from local disk in 16 threads.

Then page verification (issue 20): the 1-stream GET and the small GETs on this
node (checks on, the default) and on nodes with ``verify_window: 0`` and
``cache.verify: false``, alternately, each with a 64 MiB memory tier so that
the small objects come from the disk tier too (``--verify-cost-only``: just that).

Goal (issue 3): single-stream warm GET >= 0.7 x reading the file from the page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import (  # noqa: E402
    BENCH_KEY,
    BENCH_SECRET,
    SECURITY_LEGEND,
    VERIFY_NODES,
    security_args,
    verify_args,
    verify_cost,
)
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20


def curl(url: str, rng: str | None = None) -> int:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url]
    if rng:
        cmd[1:1] = ["-r", rng]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


CEILING_SERVER = """
import sys
from aiohttp import web
async def get(request):
    return web.FileResponse(sys.argv[1])
app = web.Application()
app.router.add_get("/f", get)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_time(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def parallel(fns: list) -> None:  # type: ignore[type-arg]
    with ThreadPoolExecutor(len(fns)) as pool:
        list(pool.map(lambda f: f(), fns))


async def small_gets(base: str, keys: list[str], conns: int, urls: dict[str, str] | None = None) -> list[float]:
    """GET each key with ``conns`` connections; ``urls``: a (presigned) URL per key instead
    of ``base/key``. The latencies."""
    import aiohttp
    from yarl import URL

    lat: list[float] = []
    queue = list(keys)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:
        async def worker() -> None:
            while queue:
                key = queue.pop()
                t = time.perf_counter()
                target = URL(urls[key], encoded=True) if urls else f"{base}/{key}"
                async with session.get(target) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*[worker() for _ in range(conns)])
    return lat


def loaded_node(data_dir: Path, store: Path, size: int, args: list[str]) -> MeshdProcess:
    """A node over ``store`` with a 64 MiB memory tier (small objects come from disk too),
    everything loaded."""
    n = MeshdProcess(data_dir, [f"/data=file://{store}"], ["--no-default-mount", "--memory-capacity", "64MiB",
                                                          "--disk-capacity", f"{4 * size // MiB}MiB", *args]).start()
    with n.client() as c:
        for _ in c.load("/data"):
            pass
    return n


def compare_verification(work: Path, store: Path, size: int, small_keys: list[str]) -> None:
    """The 1-stream GET and the small GETs with page verification on, strict and off."""
    nodes: dict[str, MeshdProcess] = {}
    try:
        for name, (verify, window) in VERIFY_NODES.items():
            nodes[name] = n = loaded_node(work / f"node-verify-{name}", store, size, verify_args(work, verify, window))
            asyncio.run(small_gets(f"{n.endpoints['s3']}/data", small_keys, 16))  # metadata warm
        sample = small_keys[:2000]

        def big(k: str) -> float:
            return curl(f"{nodes[k].endpoints['s3']}/data/big.bin") / MiB

        def small(k: str) -> float:
            return len(asyncio.run(small_gets(f"{nodes[k].endpoints['s3']}/data", list(sample), 16)))

        verify_cost([
            ("gateway GET, curl, 1 stream", "MB/s", {k: (lambda k=k: big(k)) for k in nodes}),
            (f"{len(sample)} small GETs (64 KiB), 16 conns", "req/s", {k: (lambda k=k: small(k)) for k in nodes}),
        ], {k: n.proc.pid for k, n in nodes.items() if n.proc is not None})
    finally:
        for n in nodes.values():
            n.stop()


def compare_security(work: Path, store: Path, size: int, small_keys: list[str]) -> None:
    """The 1-stream GET and the small GETs on a node with authentication and verification on
    (a tenant's S3 key: SigV4 presigned URLs, made before the clock starts, so the node's
    check is measured, not the client's signing), on nodes with each alone, and on one with
    both off (unsigned)."""
    import boto3
    from botocore.config import Config

    nodes: dict[str, MeshdProcess] = {}
    variants = {"on": (True, True), "auth": (True, False), "verify": (False, True), "off": (False, False)}
    try:
        for name, (authn, verify) in variants.items():
            nodes[name] = loaded_node(work / f"node-security-{name}", store, size, security_args(work, authn, verify))
        sample = small_keys[:2000]

        def presign(n: MeshdProcess) -> dict[str, str]:  # the host is signed: one set per node
            s3 = boto3.client("s3", endpoint_url=n.endpoints["s3"], aws_access_key_id=BENCH_KEY,
                              aws_secret_access_key=BENCH_SECRET, region_name="us-east-1",
                              config=Config(signature_version="s3v4"))
            return {k: s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": k},
                                                 ExpiresIn=3600) for k in [*sample, "big.bin"]}

        signed = {k: presign(n) if variants[k][0] else None for k, n in nodes.items()}
        for k, n in nodes.items():  # metadata warm
            asyncio.run(small_gets(f"{n.endpoints['s3']}/data", list(sample), 16, signed[k]))

        def big(k: str) -> float:
            p = signed[k]
            return curl(p["big.bin"] if p else f"{nodes[k].endpoints['s3']}/data/big.bin") / MiB

        def small(k: str) -> float:
            return len(asyncio.run(small_gets(f"{nodes[k].endpoints['s3']}/data", list(sample), 16, signed[k])))

        verify_cost([
            ("gateway GET, curl, 1 stream", "MB/s", {k: (lambda k=k: big(k)) for k in nodes}),
            (f"{len(sample)} small GETs (64 KiB), 16 conns", "req/s", {k: (lambda k=k: small(k)) for k in nodes}),
        ], {k: n.proc.pid for k, n in nodes.items() if n.proc is not None},
            title="authentication and page verification", legend=SECURITY_LEGEND)
    finally:
        for n in nodes.values():
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=10000)
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"))
    ap.add_argument("--verify-cost-only", action="store_true", help="only page verification on vs off")
    ap.add_argument("--security-cost-only", action="store_true",
                    help="only authentication and page verification on vs both off")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-s3-", dir=args.workdir))
    size = args.size_mib * MiB
    node = None
    try:
        store = work / "store"
        (store / "small").mkdir(parents=True)
        big = store / "big.bin"
        block = os.urandom(MiB)
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(block)
        small_keys = []
        for i in range(args.small):
            (store / "small" / f"{i:05d}.bin").write_bytes(block[: 64 << 10])
            small_keys.append(f"small/{i:05d}.bin")
        if args.verify_cost_only:
            compare_verification(work, store, size, small_keys)
            return
        if args.security_cost_only:
            compare_security(work, store, size, small_keys)
            return
        node = MeshdProcess(work / "node", [f"/data=file://{store}"],
                            ["--no-default-mount", "--memory-capacity", "2GiB",
                             "--disk-capacity", f"{4 * args.size_mib}MiB"]).start()
        s3 = node.endpoints["s3"]
        with node.client() as c:
            for _ in c.load("/data"):
                pass
        url = f"{s3}/data/big.bin"
        assert curl(url) == size and curl(f"file://{big}") == size
        print(f"workdir {work}; results (higher is better):")

        def report(name: str, secs: float, nbytes: int) -> float:
            mbps = nbytes / MiB / secs
            print(f"  {name:<46} {mbps:9.1f} MB/s  ({secs:.3f} s, median of 5)")
            return mbps

        buf = bytearray(MiB)

        def py_local() -> None:
            with open(big, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

        local_py = report("local disk, Python readinto", median_time(py_local), size)
        local_curl = report("local disk, curl file://", median_time(lambda: curl(f"file://{big}")), size)
        port = free_port()
        ceiling_proc = subprocess.Popen([sys.executable, "-c", CEILING_SERVER, str(big), str(port)])
        try:
            for _ in range(100):
                try:
                    curl(f"http://127.0.0.1:{port}/f", "0-0")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.05)
            ceiling = report("bare aiohttp FileResponse (sendfile), curl",
                             median_time(lambda: curl(f"http://127.0.0.1:{port}/f")), size)
        finally:
            ceiling_proc.terminate()
            ceiling_proc.wait()
        gw = report("gateway GET, curl, 1 stream", median_time(lambda: curl(url)), size)
        part = size // 8
        ranges = [f"{i * part}-{(i + 1) * part - 1}" for i in range(8)]
        local8 = report("local disk, curl file:// -r, 8 streams",
                        median_time(lambda: parallel([lambda r=r: curl(f"file://{big}", r) for r in ranges])),
                        size)
        gw8 = report("gateway GET, curl Range, 8 streams",
                     median_time(lambda: parallel([lambda r=r: curl(url, r) for r in ranges])), size)

        # small objects: warm the gateway's metadata, then measure
        asyncio.run(small_gets(f"{s3}/data", small_keys[:200], 16))
        t = time.perf_counter()
        lat = asyncio.run(small_gets(f"{s3}/data", small_keys, 16))
        el = time.perf_counter() - t
        lat.sort()

        def read_small(k: str) -> None:
            with open(store / k, "rb") as f:
                f.read()

        t = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(read_small, small_keys))
        el_local = time.perf_counter() - t
        print(f"  {args.small} GETs of 64 KiB, 16 connections: {len(lat) / el:8.0f} req/s, "
              f"p50 {1000 * statistics.median(lat):.2f} ms, p99 {1000 * lat[int(0.99 * len(lat))]:.2f} ms")
        print(f"  the same files read from local disk, 16 threads: {len(small_keys) / el_local:8.0f} files/s")
        print("ratios:")
        print(f"  gateway 1 stream / local curl file://      {gw / local_curl:5.2f}   (goal >= 0.7)")
        print(f"  gateway 1 stream / local Python readinto   {gw / local_py:5.2f}")
        print(f"  bare aiohttp sendfile / local curl file:// {ceiling / local_curl:5.2f}   (the ceiling of an "
              "asyncio server here)")
        print(f"  gateway 1 stream / bare aiohttp sendfile   {gw / ceiling:5.2f}")
        print(f"  gateway 8 streams / local 8 streams        {gw8 / local8:5.2f}")
        print(f"  small GETs / local small reads             {(len(lat) / el) / (len(small_keys) / el_local):5.2f}")
        node.stop()
        node = None
        compare_verification(work, store, size, small_keys)
        compare_security(work, store, size, small_keys)
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
