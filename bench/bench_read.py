"""Sequential read of one large file: mesh (cold, warm) vs the under-store vs local disk.

All figures come from one run on one machine, side by side, because these
machines are noisy; compare the ratios, not the absolute MB/s.

    .venv/bin/python bench/bench_read.py [--size-mib 1024] [--page-size 4MiB]

What is measured (each a single sequential stream, 1 MiB reads into a reused
buffer, bytes discarded):

* local disk      Python reading the file from local disk (kernel page cache warm)
* direct file://  the same file read through the mesh's own POSIX under-store class
* direct S3       boto3 GetObject of the same bytes from an S3 server
* mesh cold       through meshd, nothing cached, per under-store
* mesh warm       the same read again, three ways: the Python client's
                  short-circuit path (page descriptors over a Unix socket, the
                  default on the node's own machine), its HTTP path, and curl
                  against the HTTP endpoint (sendfile)
* verification    the three warm reads of the file:// mount on this node (disk
                  pages checked with CRC-32C on every serve, the default) and
                  on nodes with ``verify_window: 0`` and ``cache.verify: false``,
                  alternately;
                  ``--verify-cost-only`` runs just this part

The S3 server is s3rver (npm, file-backed: a ranged GET reads only its range),
installed on first use into bench/.s3rver. moto is not usable here: every
ranged GET copies the whole object in moto, so page-wise reads of a 1 GiB
object cost it O(pages x size).

Goals (issue 2): warm >= 0.5 x local disk; cold >= 0.9 x direct under-store.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchlib import (  # noqa: E402
    BENCH_TOKEN,
    SECURITY_LEGEND,
    VERIFY_NODES,
    security_args,
    verify_args,
    verify_cost,
)
from meshd.client.sdk import MeshClient  # noqa: E402
from meshd.understore.posix import PosixUnderStore  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402

MiB = 1 << 20
BUF = bytearray(MiB)


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def read_local(path: str) -> int:
    n = 0
    view = memoryview(BUF)
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(view):
            n += k
    return n


def read_posix_store(directory: str, name: str, size: int) -> int:
    async def run() -> int:
        store = PosixUnderStore(f"file://{directory}", {})
        n = 0
        async for chunk in store.get_range(name, 0, size):
            n += len(chunk)
        return n

    return asyncio.run(run())


def read_s3(server: S3rver, bucket: str, key: str) -> int:
    c = server.client()
    body = c.get_object(Bucket=bucket, Key=key)["Body"]
    n = 0
    while chunk := body.read(MiB):
        n += len(chunk)
    c.close()
    return n


def read_mesh(client: MeshClient, path: str) -> int:
    return sum(client.read_chunks_into(path, BUF))


class ShapedLink:
    """A network namespace holding the S3 server, behind a veth pair shaped with tbf.

    Models the product's premise: the under-store is across a line whose
    bandwidth is the bottleneck. Both directions are shaped to ``mbit``.
    """

    NS, HOST_IF, NS_IF = "meshbench-s3", "mb-host", "mb-s3"
    HOST_IP, NS_IP = "10.213.0.1", "10.213.0.2"

    def __init__(self, mbit: int) -> None:
        self.mbit = mbit

    def _sh(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True)

    def __enter__(self) -> ShapedLink:
        self.__exit__()
        tbf = ["tbf", "rate", f"{self.mbit}mbit", "burst", "2mb", "latency", "100ms"]
        self._sh("ip", "netns", "add", self.NS)
        self._sh("ip", "link", "add", self.HOST_IF, "type", "veth", "peer", "name", self.NS_IF)
        self._sh("ip", "link", "set", self.NS_IF, "netns", self.NS)
        self._sh("ip", "addr", "add", f"{self.HOST_IP}/30", "dev", self.HOST_IF)
        self._sh("ip", "link", "set", self.HOST_IF, "up")
        self._sh("ip", "netns", "exec", self.NS, "ip", "addr", "add", f"{self.NS_IP}/30", "dev", self.NS_IF)
        self._sh("ip", "netns", "exec", self.NS, "ip", "link", "set", self.NS_IF, "up")
        self._sh("ip", "netns", "exec", self.NS, "ip", "link", "set", "lo", "up")
        self._sh("tc", "qdisc", "add", "dev", self.HOST_IF, "root", *tbf)
        self._sh("ip", "netns", "exec", self.NS, "tc", "qdisc", "add", "dev", self.NS_IF, "root", *tbf)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.HOST_IF], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.NS], capture_output=True)


class S3rver:
    """s3rver (npm), a file-backed S3 server, on a free port (optionally inside a netns)."""

    def __init__(self, directory: Path, netns: str | None = None, address: str = "127.0.0.1") -> None:
        prefix = ROOT / "bench/.s3rver"
        binary = prefix / "node_modules/.bin/s3rver"
        if not binary.exists():
            subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix),
                            "s3rver@3.7.1"], check=True)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [str(binary), "-d", str(directory), "-a", address, "-p", str(self.port), "--silent"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        self.endpoint = f"http://{address}:{self.port}"
        for _ in range(200):
            try:
                self.client().list_buckets()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("s3rver did not start")

    def options(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "region": "us-east-1", "access_key": "S3RVER",
                "secret_key": "S3RVER"}

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER",
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def read_curl(url: str, token: str | None = None) -> int:
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", *auth, url],
                         check=True, capture_output=True, text=True)
    return int(out.stdout)


def warm_clients(nodes: dict[str, MeshdProcess], url: str, size: int,
                 tokens: dict[str, str | None]) -> tuple[dict[str, MeshClient], dict[str, MeshClient]]:
    """Per node, a client reading through the local socket and one over HTTP (presenting
    ``tokens[node]``); ``url`` read once through each node first (cold: fills its tiers)."""
    sc, hc = {}, {}
    for name, n in nodes.items():
        os.environ["MESH_SHORT_CIRCUIT"] = "1"
        sc[name] = MeshClient(n.endpoint, token=tokens.get(name))
        os.environ["MESH_SHORT_CIRCUIT"] = "0"
        hc[name] = MeshClient(n.endpoint, token=tokens.get(name))
        os.environ.pop("MESH_SHORT_CIRCUIT")
        assert read_mesh(sc[name], url) == size
    return sc, hc


def compare_verification(work: Path, node: MeshdProcess, store_dir: Path, flags: list[str], size: int) -> None:
    """Warm reads of /local/big.bin on ``node`` (verification on, the default) and on nodes
    with it strict and off (bench/benchlib.py VERIFY_NODES), same flags, side by side."""
    nodes = {"on": node}
    try:
        for name, (verify, window) in VERIFY_NODES.items():
            if name != "on":
                nodes[name] = MeshdProcess(work / f"node-verify-{name}", [f"/local=file://{store_dir}"],
                                           [*flags, *verify_args(work, verify, window)]).start()
        url = "/local/big.bin"
        sc, hc = warm_clients(nodes, url, size, {})
        mb = float(MiB)

        def each(fn: Callable[[str], float]) -> dict[str, Callable[[], float]]:
            return {k: (lambda k=k: fn(k)) for k in nodes}  # type: ignore[misc]

        verify_cost([
            ("warm, short-circuit (descriptors)", "MB/s", each(lambda k: read_mesh(sc[k], url) / mb)),
            ("warm, Python client over HTTP", "MB/s", each(lambda k: read_mesh(hc[k], url) / mb)),
            ("warm, curl over HTTP (sendfile)", "MB/s",
             each(lambda k: read_curl(f"{nodes[k].http}/v1/files{url}") / mb)),
        ], {k: n.proc.pid for k, n in nodes.items() if n.proc is not None})
        for c in (*sc.values(), *hc.values()):
            c.close()
    finally:
        for name, n in nodes.items():
            if name != "on":
                n.stop()


def compare_security(work: Path, store_dir: Path, flags: list[str], size: int) -> None:
    """Warm reads of /local/big.bin on a node with authentication and verification on (the
    reader a tenant presenting its token) and on one with both off, side by side."""
    nodes: dict[str, MeshdProcess] = {}
    try:
        for name in ("on", "off"):
            nodes[name] = MeshdProcess(work / f"node-security-{name}", [f"/local=file://{store_dir}"],
                                       [*flags, *security_args(work, name == "on")]).start()
        url = "/local/big.bin"
        tokens: dict[str, str | None] = {"on": BENCH_TOKEN, "off": None}
        sc, hc = warm_clients(nodes, url, size, tokens)
        mb = float(MiB)

        def curl(k: str) -> float:
            return read_curl(f"{nodes[k].http}/v1/files{url}", tokens[k]) / mb

        def each(fn: Callable[[str], float]) -> dict[str, Callable[[], float]]:
            return {k: (lambda k=k: fn(k)) for k in nodes}  # type: ignore[misc]

        offsets = [(i * 7919 * 65536) % (size - 65536) for i in range(1000)]

        def small(client: MeshClient) -> float:  # 1,000 reads of 64 KiB: a request each
            for off in offsets:
                client.cat(url, off, 65536)
            return float(len(offsets))

        verify_cost([
            ("warm, short-circuit (descriptors)", "MB/s", each(lambda k: read_mesh(sc[k], url) / mb)),
            ("warm, Python client over HTTP", "MB/s", each(lambda k: read_mesh(hc[k], url) / mb)),
            ("warm, curl over HTTP (sendfile)", "MB/s", each(curl)),
            ("1000 small reads (64 KiB), HTTP", "req/s", each(lambda k: small(hc[k]))),
            ("1000 small reads (64 KiB), short-circuit", "req/s", each(lambda k: small(sc[k]))),
        ], {k: n.proc.pid for k, n in nodes.items() if n.proc is not None},
            title="authentication and page verification", legend=SECURITY_LEGEND)
        for c in (*sc.values(), *hc.values()):
            c.close()
    finally:
        for n in nodes.values():
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--page-size", default="4MiB")
    ap.add_argument("--link-mbit", type=int, default=1600,
                    help="also measure with the S3 server behind a link shaped to this rate "
                         "(network namespace + tc tbf; needs root); 0 to skip")
    ap.add_argument("--workdir", default=str(ROOT / "bench/.work"),
                    help="where the under-store, S3 server data and cache live (a real disk: "
                         "on some machines /tmp is a much slower filesystem)")
    ap.add_argument("--verify-cost-only", action="store_true",
                    help="only the warm reads with page verification on vs off (no S3 server)")
    ap.add_argument("--security-cost-only", action="store_true",
                    help="only the warm reads with authentication and verification on vs both off")
    args = ap.parse_args()
    size = args.size_mib * MiB
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-", dir=args.workdir))
    print(f"workdir {work} ({os.cpu_count()} cores)")
    rows: list[tuple[str, float]] = []

    def record(name: str, fn: Callable[[], int], repeat: int = 1) -> float:
        """MB/s of ``fn``; fast (warm) cases take the median of ``repeat`` runs."""
        times = []
        for _ in range(repeat):
            secs, n = timed(fn)
            assert n == size, (name, n, size)
            times.append(secs)
        secs = sorted(times)[len(times) // 2]
        mbps = size / MiB / secs
        rows.append((name, mbps))
        note = f"median of {repeat}" if repeat > 1 else "one run"
        print(f"  {name:<34} {mbps:9.1f} MB/s  ({secs:.2f} s, {note})", flush=True)
        return mbps

    server = None
    node = None
    try:
        store_dir = work / "store"
        store_dir.mkdir()
        src = store_dir / "big.bin"
        print(f"writing {args.size_mib} MiB test file ...", flush=True)
        block = os.urandom(MiB)
        with open(src, "wb") as f:
            for i in range(args.size_mib):
                f.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:])
        node_flags = ["--page-size", args.page_size, "--memory-capacity", "256MiB",
                      "--disk-capacity", f"{4 * args.size_mib}MiB", "--no-default-mount"]
        if args.security_cost_only:
            compare_security(work, store_dir, node_flags, size)
            return
        if args.verify_cost_only:
            node = MeshdProcess(work / "node", [f"/local=file://{store_dir}"],
                                [*node_flags, *verify_args(work, True)]).start()
            compare_verification(work, node, store_dir, node_flags, size)
            return
        server = S3rver(work / "s3")
        s3: Any = server.client()
        s3.create_bucket(Bucket="bench")
        print("uploading to the S3 server ...", flush=True)
        s3.upload_file(str(src), "bench", "big.bin")
        s3.close()
        opts = ",".join(f"{k}={v}" for k, v in server.options().items())
        node = MeshdProcess(work / "node", [f"/local=file://{store_dir}", f"/s3=s3://bench,{opts}"],
                            [*node_flags, *verify_args(work, True)]).start()
        client = node.client()
        read_local(str(src))  # warm the kernel page cache for the baseline
        print("results (MB/s, higher is better):")
        local = record("local disk (page cache warm)", lambda: read_local(str(src)), repeat=5)
        direct_file = record("direct file:// under-store", lambda: read_posix_store(str(store_dir), "big.bin", size), repeat=5)
        direct_s3 = record("direct S3 (boto3 GetObject)", lambda: read_s3(server, "bench", "big.bin"))
        cold_file = record("mesh cold, file:// mount", lambda: read_mesh(client, "/local/big.bin"))
        cold_s3 = record("mesh cold, S3 mount", lambda: read_mesh(client, "/s3/big.bin"))
        warm = record("mesh warm (short-circuit)", lambda: read_mesh(client, "/s3/big.bin"), repeat=5)
        os.environ["MESH_SHORT_CIRCUIT"] = "0"
        http_client = node.client()
        warm_http = record("mesh warm (python client, HTTP)", lambda: read_mesh(http_client, "/s3/big.bin"), repeat=5)
        http_client.close()
        warm_curl = record("mesh warm (curl, HTTP sendfile)", lambda: read_curl(f"{node.http}/v1/files/s3/big.bin"), repeat=5)
        report = client.report()
        shaped: tuple[float, float] | None = None
        if args.link_mbit:
            with ShapedLink(args.link_mbit):
                remote = S3rver(work / "s3", netns=ShapedLink.NS, address=ShapedLink.NS_IP)
                try:
                    ropts = {**remote.options(), "nocache": "false"}
                    client.mount_add("/remote", "s3://bench", ropts)  # another endpoint: other page keys
                    print(f"  -- S3 server behind a {args.link_mbit} Mbit/s shaped link:")
                    sd = record("  direct S3 over the link", lambda: read_s3(remote, "bench", "big.bin"))
                    sm = record("  mesh cold, S3 over the link", lambda: read_mesh(client, "/remote/big.bin"))
                    shaped = (sd, sm)
                finally:
                    remote.stop()
        client.close()
        print("ratios:")
        print(f"  mesh warm / local disk          {warm / local:5.2f}   (short-circuit; goal >= 0.5)")
        print(f"  mesh warm / local disk          {warm_http / local:5.2f}   (python client over HTTP)")
        print(f"  mesh warm / local disk          {warm_curl / local:5.2f}   (curl over HTTP)")
        print(f"  mesh cold / direct S3           {cold_s3 / direct_s3:5.2f}   (goal >= 0.9)")
        print(f"  mesh cold / direct file://      {cold_file / direct_file:5.2f}")
        if shaped:
            print(f"  mesh cold / direct S3, shaped   {shaped[1] / shaped[0]:5.2f}   "
                  f"({args.link_mbit} Mbit/s link; goal >= 0.9)")
        print(f"  hit ratio {report['hit_ratio']:.2f}, bytes by source {report['bytes_by_source']}")
        os.environ.pop("MESH_SHORT_CIRCUIT", None)
        compare_verification(work, node, store_dir, node_flags, size)
        compare_security(work, store_dir, node_flags, size)
    finally:
        if node is not None:
            node.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
