"""A whole multi-region mesh on one machine, for the tests and the benchmark.

Three regions (network namespaces from :mod:`tests.netns`) joined by veth
links shaped with tbf to the capacities of ``examples/topology.yaml``:

* ``region-a``: etcd (``10.77.1.1:2379``), the S3 server (moto,
  ``10.77.1.1:5000``, the home of store ``datasets``) and meshd nodes;
* ``region-b``, ``region-c``: meshd nodes.

Every meshd binds to its region's address; the example topology is applied
to etcd before the nodes start. Readers and meshctl run *inside* a region
(``ip netns exec``), as a job on a GPU node of that region would.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.meshd_proc import MESHCTL, MeshdProcess, secrets_key_file
from tests.netns import Regions, cleanup_leftovers

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "topology.yaml"
REGIONS = ("region-a", "region-b", "region-c")
CLUSTER = "mr"
S3_PORT = 5000
ETCD_PORT = 2379
BUCKET = "datasets"

_UPLOAD = r"""
import random, sys, boto3
from boto3.s3.transfer import TransferConfig
url, bucket, key, seed, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except Exception:
    pass
rng, step = random.Random(seed), 16 << 20  # randbytes takes at most 256 MiB at once
data = b"".join(rng.randbytes(min(step, size - i)) for i in range(0, size, step))
s3.put_object(Bucket=bucket, Key=key, Body=data)
"""


_DIGEST = r"""
import hashlib, sys, boto3
url, bucket, key = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1")
try:
    print(hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest())
except s3.exceptions.NoSuchKey:
    print("absent")
"""


def content(seed: int, size: int) -> bytes:
    """The bytes ``put`` uploads (the same draws, 16 MiB at a time)."""
    rng, step = random.Random(seed), 16 << 20
    return b"".join(rng.randbytes(min(step, size - i)) for i in range(0, size, step))


def sha256_of(seed: int, size: int) -> str:
    return hashlib.sha256(content(seed, size)).hexdigest()


def rate_bits(value: float) -> float:
    return value * 8


class MultiRegion:
    """The environment; ``close()`` stops everything and removes the namespaces."""

    def __init__(self, workdir: Path, nodes: dict[str, int] | None = None,
                 topology: str | None = None, quota_overrides: dict[tuple[str, str], str] | None = None,
                 mount_options: dict[str, str] | None = None, node_args: list[str] | None = None) -> None:
        """``mount_options``: extra options of the ``/datasets`` mount (e.g. ``sync_interval``);
        ``node_args``: extra ``meshd run`` flags of every node."""
        cleanup_leftovers()
        self.mount_options = dict(mount_options or {})
        self.node_args = list(node_args or [])
        self.workdir = Path(workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)  # no cache survives from an earlier run
        self.workdir.mkdir(parents=True)
        self.topology_text = topology or self.example(quota_overrides)
        topo = yaml.safe_load(self.topology_text)
        from topology.model import parse

        parsed = parse(self.topology_text, "test topology")
        links: dict[tuple[str, str], float | None] = {}
        for (a, b), link in parsed.links.items():
            if (b, a) not in links:
                links[(a, b)] = link.capacity * 8
        self.net = Regions(list(REGIONS), links)
        self.nodes: dict[str, list[MeshdProcess]] = {r: [] for r in REGIONS}
        self.seeds: dict[str, tuple[int, int]] = {}
        self._topo_raw = topo
        try:
            self._start(nodes or {"region-a": 1, "region-b": 2, "region-c": 1})
        except BaseException:
            self.close()
            raise

    @staticmethod
    def example(quota_overrides: dict[tuple[str, str], str] | None = None) -> str:
        text = EXAMPLE.read_text()
        if not quota_overrides:
            return text
        raw = yaml.safe_load(text)
        for link in raw["links"]:
            pair = tuple(link.get("between") or (link.get("from"), link.get("to")))
            for key, quota in quota_overrides.items():
                if set(key) == set(pair):
                    link["quota"] = quota
        return yaml.safe_dump(raw, sort_keys=False)

    # ---- start-up ------------------------------------------------------------------

    def address(self, region: str) -> str:
        return self.net.address(region)

    @property
    def etcd_url(self) -> str:
        return f"http://{self.address('region-a')}:{ETCD_PORT}"

    @property
    def s3_url(self) -> str:
        return f"http://{self.address('region-a')}:{S3_PORT}"

    def _start(self, nodes: dict[str, int]) -> None:
        a = self.address("region-a")
        etcd_dir = self.workdir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)
        exe = shutil.which("etcd") or "/usr/bin/etcd"
        client, peer = f"http://{a}:{ETCD_PORT}", f"http://{a}:2380"
        self._etcd_log = open(self.workdir / "etcd.log", "ab")
        self.net.popen("region-a", [exe, "--name", "mr", "--data-dir", str(etcd_dir),
                                    "--listen-client-urls", client, "--advertise-client-urls", client,
                                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                    "--initial-cluster", f"mr={peer}", "--log-level", "warn"],
                       stdout=self._etcd_log, stderr=subprocess.STDOUT)
        self._s3_log = open(self.workdir / "s3.log", "ab")
        self.net.popen("region-a", [sys.executable, str(ROOT / "tests" / "s3server.py"), "--host", a,
                                    "--port", str(S3_PORT)], stdout=self._s3_log, stderr=subprocess.STDOUT)
        self._wait_http(f"{client}/health", "etcd")
        self._wait_http(f"{self.s3_url}/_mesh_counters", "the S3 server")
        self.apply_topology(self.topology_text)
        for region in REGIONS:
            for _ in range(nodes.get(region, 0)):
                self.add_node(region)
        for region in REGIONS:
            self.wait_members(region)
        first = self.nodes["region-a"][0]
        first.ctl("mount", "add", "/datasets", f"s3://{BUCKET}", "-o", f"endpoint={self.s3_url}",
                  "-o", "access_key=test", "-o", "secret_key=test", "-o", "connect_timeout=2",
                  "-o", "read_timeout=5", "-o", "max_attempts=2",
                  *(x for k, v in self.mount_options.items() for x in ("-o", f"{k}={v}")), "--no-check", check=True)

    def _wait_http(self, url: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = self.net.run("region-a", ["curl", "-sf", "-o", "/dev/null", url], check=False, timeout=10)
            if r.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{what} did not start ({url})"
            time.sleep(0.2)

    def add_node(self, region: str) -> MeshdProcess:
        n = sum(len(v) for v in self.nodes.values())
        d = self.workdir / f"{region}-{n}"
        addr = self.address(region)
        p = MeshdProcess(d, [], ["--etcd", self.etcd_url, "--cluster", CLUSTER, "--region", region,
                                 "--host", addr, "--advertise-host", addr, "--lease-ttl", "3",
                                 "--no-s3", "--log-level", "INFO", "--memory-capacity", "256MiB",
                                 "--disk-capacity", "4GiB",
                                 "--secrets-key-file", str(secrets_key_file(self.workdir)), *self.node_args],
                         command="run", prefix=["ip", "netns", "exec", self.net.ns(region)])
        p.start(timeout=60)
        self.nodes[region].append(p)
        return p

    def wait_members(self, region: str, timeout: float = 30) -> None:
        want = len(self.nodes[region])
        deadline = time.monotonic() + timeout
        while True:
            counts = []
            for p in self.nodes[region]:
                members = self.report(p).get("cluster", {}).get("members", [])
                counts.append(sum(m["state"] in ("self", "up") for m in members))
            if all(c == want for c in counts):
                return
            assert time.monotonic() < deadline, f"{region}: members never converged to {want}: {counts}"
            time.sleep(0.2)

    # ---- operations ------------------------------------------------------------------

    def apply_topology(self, text: str) -> None:
        path = self.workdir / f"topology-{time.monotonic_ns()}.yaml"
        path.write_text(text)
        r = self.net.run("region-a", [*MESHCTL, "topology", "apply", str(path), "--etcd", self.etcd_url,
                                      "--cluster", CLUSTER], check=False, timeout=60)
        assert r.returncode == 0, r.stderr

    def ctl(self, region: str, *args: str, node: int = 0, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        p = self.nodes[region][node]
        r = self.net.run(region, [*MESHCTL, "--endpoint", str(p.data_dir), *args], check=False, timeout=timeout)
        if check:
            assert r.returncode == 0, f"meshctl {' '.join(args)} in {region}: {r.stderr}"
        return r

    def report(self, p: MeshdProcess) -> dict[str, Any]:
        region = next(r for r, ps in self.nodes.items() if p in ps)
        r = self.net.run(region, [*MESHCTL, "--endpoint", str(p.data_dir), "report", "--json"], check=False,
                         timeout=60)
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def put(self, key: str, seed: int, size: int) -> str:
        """Upload deterministic bytes to the S3 server (in region-a); returns their SHA-256."""
        self.net.run("region-a", [sys.executable, "-c", _UPLOAD, self.s3_url, BUCKET, key, str(seed), str(size)],
                     timeout=300)
        self.seeds[key] = (seed, size)
        return sha256_of(seed, size)

    def store_counters(self) -> dict[str, Any]:
        """The S3 server's counters (tests/s3server.py)."""
        out = self.net.run("region-a", ["curl", "-sf", f"{self.s3_url}/_mesh_counters"], timeout=30).stdout
        counters: dict[str, Any] = json.loads(out)
        return counters

    def reset_store_counters(self) -> None:
        self.net.run("region-a", ["curl", "-sf", "-X", "POST", f"{self.s3_url}/_mesh_counters/reset"], timeout=30)

    def slow_store(self, delay: float = 0.0, rate: float = 0.0) -> None:
        """Every GET object waits ``delay`` s before its first byte; the store sends object
        bytes at ``rate`` B/s at most, all GETs together (0, 0: full speed)."""
        body = json.dumps({"delay": delay, "rate": rate})
        self.net.run("region-a", ["curl", "-sf", "-X", "POST", "-d", body, f"{self.s3_url}/_mesh_counters/config"],
                     timeout=30)

    def store_config(self, **conf: Any) -> None:
        """Change the S3 server's behaviour (tests/s3server.py: ``write_delay``, ``hold``,
        ``fail``...)."""
        self.net.run("region-a", ["curl", "-sf", "-X", "POST", "-d", json.dumps(conf),
                                  f"{self.s3_url}/_mesh_counters/config"], timeout=30)

    def store_digest(self, key: str) -> str | None:
        """SHA-256 of ``key`` in the S3 server's bucket, read directly with boto3 (None: no
        such object)."""
        r = self.net.run("region-a", [sys.executable, "-c", _DIGEST, self.s3_url, BUCKET, key], timeout=60)
        out = r.stdout.strip()
        return None if out == "absent" else out

    def read(self, region: str, paths: list[str], readers: int, timeout: float = 600,
             direct: bool = False, read_timeout: float = 60, one_client: bool = False) -> dict[str, Any]:
        """``readers`` concurrent readers in ``region`` (spread over its nodes), each reading
        every path whole; the reader script's JSON result. ``one_client``: each reader
        opens its client once for all paths (default: one client per path)."""
        endpoints = ",".join(str(p.data_dir) for p in self.nodes[region])
        argv = [sys.executable, "-m", "tests.mr_reader", "--readers", str(readers), "--timeout", str(read_timeout)]
        argv += ["--direct", self.s3_url] if direct else ["--endpoint", endpoints]
        if one_client:
            argv.append("--one-client")
        r = self.net.run(region, [*argv, *paths], timeout=timeout, cwd=str(ROOT))
        result: dict[str, Any] = json.loads(r.stdout)
        return result

    def popen_read(self, region: str, paths: list[str], readers: int, read_timeout: float = 60,
                   nodes: list[MeshdProcess] | None = None) -> subprocess.Popen[str]:
        endpoints = ",".join(str(p.data_dir) for p in (nodes or self.nodes[region]))
        argv = [sys.executable, "-m", "tests.mr_reader", "--readers", str(readers), "--timeout", str(read_timeout),
                "--endpoint", endpoints, *paths]
        return self.net.popen(region, argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def rx(self, region: str, peer: str) -> int:
        """Bytes received by ``region`` over its link from ``peer``: the kernel's interface
        counter. veth keeps its default offloads (GSO), so a 64 KiB super-packet counts its
        headers once: the counter is the payload plus ~0.1 %, while tbf shapes (and
        ``wire``) the frames as a 1500-MTU line carries them, 4.6 % more."""
        return int(self.net.counters(region, peer)["rx_bytes"])

    def wire(self, src: str, dst: str) -> int:
        """Frame bytes tbf sent from ``src`` toward ``dst`` (each 1500-byte frame's headers)."""
        return int(self.net.qdisc_stats(src, dst)["bytes"])

    def close(self) -> None:
        for ps in self.nodes.values():
            for p in ps:
                p.stop()
        self.net.close()
        for f in (getattr(self, "_etcd_log", None), getattr(self, "_s3_log", None)):
            if f is not None:
                f.close()
