"""Write-back under kill -9 and under a store outage: real processes only.

One ``meshd run`` node of a one-node cluster (real etcd: the pending registry is
there) over an ``s3://`` mount with ``write_mode: back`` on the real S3 endpoint
(tests/s3server.py, its write requests slowed so that uploads are in flight),
written through the S3 gateway (boto3, PutObject and multipart), ``meshctl cp`` and
a meshfs FUSE mount.

* Crash consistency: over several rounds (a seeded RNG picks sizes, names and
  where to kill) the node is killed with SIGKILL while writes are arriving, while
  a PutObject, a CreateMultipartUpload, an UploadPart or a CompleteMultipartUpload
  is at the store (before or after the store did it), and while the journal is
  being replayed after a restart. Then, once the node has uploaded everything:
  every acknowledged write is in the store byte-exact (the last acknowledged
  version of its key, or a later write that was in flight), no object holds bytes
  that were never written under its name, no multipart upload is left, the
  journal (RocksDB ``w:`` records, spool files) and the etcd registry are empty.
  Reads through the mesh after each restart see only whole versions.
* Store outage: with the store answering 503, writes are acknowledged until the
  write-back budget is full; the next one waits (it neither fails nor completes)
  until the store is back; then everything lands byte-exact.

``MESH_WB_ROUNDS`` (default 6: each kill point once) and ``MESH_WB_SEED`` change the crash test's rounds
and seed (``./dev soak-writeback`` runs many rounds).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from meshd.metadata.kv import RocksKV
from tests import s3server
from tests.conftest import cluster_args, wait_until
from tests.etcdproc import EtcdProcess
from tests.fuse_proc import MeshfsProcess, force_unmount
from tests.meshd_proc import MESHCTL, MeshdProcess
from tests.s3server import S3Server

MiB = 1 << 20
AK, SK = "AK", "SK"
MOUNT = "ckpt"  # the mesh path /ckpt, the gateway's bucket "ckpt"
CLUSTER = "wb"
ROUNDS = int(os.environ.get("MESH_WB_ROUNDS", "6"))
SEED = int(os.environ.get("MESH_WB_SEED", "23"))
KILL_POINTS = os.environ.get("MESH_WB_POINTS", "write put create part complete replay").split()
HOT = float(os.environ.get("MESH_WB_HOT", "0.25"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def store() -> Iterator[S3Server]:
    """A server of this module's own: its writes are slowed and it is made to fail."""
    server = s3server.start(auth=True)
    yield server
    server.stop()


def config_file(path: Path, budget: str) -> Path:
    path.write_text("writeback:\n"
                    f"  budget: {budget}\n"
                    "  parallel: 4\n"
                    "  parts: 4\n"
                    "  retain: 0\n"
                    "  retry_max: 1\n")
    return path


@dataclass
class Node:
    """The node under test, restarted on the same data directory after each kill."""

    tmp: Path
    etcd: EtcdProcess
    store: S3Server
    bucket: str
    budget: str = "512MiB"
    proc: MeshdProcess | None = None
    fuse: MeshfsProcess | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.tmp / "node"
        self.conf = config_file(self.tmp / "node.yaml", self.budget)

    def start(self, fuse: bool = False) -> MeshdProcess:
        args = [*cluster_args(self.etcd, CLUSTER, s3=True), "--config", str(self.conf), "--page-size", "1MiB",
                "--s3-access-key", AK, "--s3-secret-key", SK, "--no-default-mount"]
        self.proc = MeshdProcess(self.data_dir, [], args, command="run").start(timeout=60)
        if fuse:
            mnt = self.tmp / "mnt"
            force_unmount(mnt)
            self.fuse = MeshfsProcess(mnt, self.proc.endpoint, ["--timeout", "60"]).start()
        return self.proc

    def add_mount(self) -> None:
        assert self.proc is not None
        # two attempts per request (not 4): the outage tests wait less for each failure
        opts = {**self.store.options(), "write_mode": "back", "max_attempts": "2"}
        self.proc.ctl("mount", "add", f"/{MOUNT}", f"s3://{self.bucket}",
                      *[a for k, v in opts.items() for a in ("-o", f"{k}={v}")], check=True)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        if self.fuse is not None:
            self.fuse.kill()
            self.fuse = None

    def stop(self) -> None:
        if self.fuse is not None:
            self.fuse.stop()
            self.fuse = None
        if self.proc is not None:
            self.proc.stop()

    @property
    def spool(self) -> Path:
        return self.data_dir / "writeback"

    def gateway(self) -> Any:
        assert self.proc is not None
        return boto3.client("s3", endpoint_url=self.proc.endpoints["s3"], aws_access_key_id=AK,
                            aws_secret_access_key=SK, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=5, read_timeout=300))

    def journal_records(self) -> list[bytes]:
        """The ``w:`` records in the node's RocksDB (the node must be stopped)."""
        kv = RocksKV(str(self.data_dir / "meta"))
        try:
            return [k for k, _ in kv.scan(b"w:")]
        finally:
            kv.close()


@dataclass
class Ledger:
    """Every write attempted, in order per key: its digest and whether it was acknowledged."""

    writes: dict[str, list[list[Any]]] = field(default_factory=dict)  # key -> [[sha, acked], ...]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, key: str, digest: str) -> list[Any]:
        rec = [digest, False]
        with self.lock:
            self.writes.setdefault(key, []).append(rec)
        return rec

    def allowed_final(self, key: str) -> set[str]:
        """What the store may hold at the end: the last acknowledged version and any
        write attempted after it (in flight when the node died: absent or whole)."""
        recs = self.writes[key]
        last = max((i for i, r in enumerate(recs) if r[1]), default=-1)
        return {r[0] for r in recs[max(last, 0):]} if last >= 0 else {r[0] for r in recs}

    def must_exist(self, key: str) -> bool:
        return any(r[1] for r in self.writes[key])

    def acked(self) -> int:
        return sum(r[1] for recs in self.writes.values() for r in recs)


def pick_size(rng: random.Random, large: bool = True) -> int:
    r = rng.random()
    if r < 0.25:
        return rng.randint(0, 64)
    if r < 0.5:
        return rng.randint(1, 256 << 10)
    if r < 0.8 or not large:
        return rng.randint(1 * MiB, 5 * MiB)
    return rng.randint(8 * MiB + 1, 13 * MiB)  # the store upload is a parallel multipart upload


class Writers:
    """Three writers (S3 gateway, meshctl cp, meshfs), each writing one file after the
    other until stopped; a writer stops at its first failure (the node died)."""

    def __init__(self, node: Node, ledger: Ledger, rng: random.Random, round_no: int) -> None:
        self.node, self.ledger, self.round = node, ledger, round_no
        self.stop = threading.Event()
        self.rngs = {fe: random.Random(rng.random()) for fe in ("s3", "cp", "fuse")}
        self.threads = [threading.Thread(target=self._run, args=(fe,), daemon=True) for fe in self.rngs]
        self.errors: list[str] = []

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a writer hangs after the node was killed"

    def _run(self, fe: str) -> None:
        rng = self.rngs[fe]
        write = {"s3": self._s3, "cp": self._cp, "fuse": self._fuse}[fe]
        seq = 0
        try:
            ctx = write(None, b"")  # set up (a client), outside the ledger
        except Exception as e:
            self.errors.append(f"{fe}: setting up: {type(e).__name__}: {e}")
            return
        while not self.stop.is_set():
            # a quarter of the writes replace one of a few files again and again
            name = f"hot-{rng.randrange(3)}" if rng.random() < HOT else f"r{self.round}-{seq}"
            seq += 1
            key = f"{fe}/{name}"
            data = rng.randbytes(pick_size(rng, large=fe != "cp"))
            rec = self.ledger.attempt(key, sha(data))
            try:
                write(ctx, data, key)
            except Exception as e:
                self.errors.append(f"{key}: {type(e).__name__}: {e}"[:300])
                return
            rec[1] = True  # acknowledged

    def _s3(self, ctx: Any, data: bytes, key: str = "") -> Any:
        if ctx is None:
            from boto3.s3.transfer import TransferConfig

            return self.node.gateway(), TransferConfig(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB,
                                                       max_concurrency=2)
        import io

        client, tc = ctx
        client.upload_fileobj(io.BytesIO(data), MOUNT, key, Config=tc)  # PUT, or multipart above 6 MiB
        return None

    def _cp(self, ctx: Any, data: bytes, key: str = "") -> Any:
        if ctx is None:
            d = self.node.tmp / "cp"
            d.mkdir(exist_ok=True)
            return d
        src = ctx / "src"
        src.write_bytes(data)
        assert self.node.proc is not None
        r = subprocess.run([*MESHCTL, "--endpoint", self.node.proc.endpoint, "cp", str(src), f"mesh:/{MOUNT}/{key}"],
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.decode()[-300:])
        return None

    def _fuse(self, ctx: Any, data: bytes, key: str = "") -> Any:
        assert self.node.fuse is not None
        if ctx is None:
            base = self.node.fuse.mountpoint / MOUNT / "fuse"
            base.mkdir(parents=True, exist_ok=True)
            return base
        with open(ctx / key.removeprefix("fuse/"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return None


def wait_kill_point(store: S3Server, point: str, rng: random.Random, timeout: float = 20) -> bool:
    """Until the store handles a write request of that kind (``write``: a random moment)."""
    if point == "write":
        time.sleep(rng.uniform(0.3, 2.0))
        return True
    kinds = ("put", "create", "part", "complete") if point == "replay" else (point,)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = store.in_flight()
        if any(busy.get(k) for k in kinds):
            time.sleep(rng.uniform(0, 0.25))  # before or after the store did it (delays on both sides)
            return True
        time.sleep(0.01)
    return False


def store_objects(store: S3Server, bucket: str) -> dict[str, str]:
    """Every object in the store bucket: key -> sha256 of its bytes (directory markers aside:
    meshfs's mkdir makes one)."""
    c = store.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            if o["Key"].endswith("/") and o["Size"] == 0:
                continue
            out[o["Key"]] = sha(c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
    return out


def check_visible(node: Node, ledger: Ledger) -> None:
    """What the mesh shows (listing and bytes through the gateway): whole versions only,
    every acknowledged key present."""
    gw = node.gateway()
    listed = set()
    for page in gw.get_paginator("list_objects_v2").paginate(Bucket=MOUNT):
        for o in page.get("Contents", []):
            listed.add(o["Key"])
    assert listed <= set(ledger.writes), f"names never written: {sorted(listed - set(ledger.writes))[:10]}"
    for key in sorted(listed):
        got = sha(gw.get_object(Bucket=MOUNT, Key=key)["Body"].read())
        assert got in {r[0] for r in ledger.writes[key]}, f"{key}: the mesh serves bytes never written there"
    missing = [k for k in ledger.writes if ledger.must_exist(k) and k not in listed]
    assert not missing, f"acknowledged writes the mesh does not list: {missing[:10]}"


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, etcd: EtcdProcess, store: S3Server) -> None:
    bucket = f"wb-crash-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    node = Node(tmp_path, etcd, store, bucket)
    ledger = Ledger()
    rng = random.Random(SEED)
    points = [KILL_POINTS[i % len(KILL_POINTS)] for i in range(ROUNDS)]
    rng.shuffle(points)
    reached: list[str] = []
    try:
        node.start()
        node.add_mount()
        node.stop()
        for round_no, point in enumerate(points):
            if point == "replay":  # the node uploads what its journal holds; killed during that
                store.slow_writes(rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4))
                node.start()
                hit = wait_kill_point(store, point, rng, timeout=5)
                at = store.in_flight()
                node.kill()
            else:
                store.slow_writes(0.05, 0.05)
                node.start(fuse=True)
                check_visible(node, ledger)
                store.slow_writes(rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4))
                with Writers(node, ledger, rng, round_no):
                    hit = wait_kill_point(store, point, rng)
                    at = store.in_flight()
                    node.kill()
            reached.append(point if hit else f"{point}(missed)")
            print(f"round {round_no}: killed at {reached[-1]} (at the store: {at}), {ledger.acked()} writes acknowledged so far",
                  flush=True)
        store.slow_writes(0, 0)
        node.start()
        check_visible(node, ledger)

        def settled() -> list[str]:
            objs = store_objects(store, bucket)
            bad = [k for k in ledger.writes if (ledger.must_exist(k) or k in objs) and
                   objs.get(k) not in ledger.allowed_final(k)]
            return bad + [p.name for p in node.spool.iterdir()]

        wait_until(settled, lambda bad: not bad, 240, "acknowledged writes not (rightly) in the store, or spool "
                   "files left")
        objs = store_objects(store, bucket)
        problems = []  # all of them, not only the first
        if not set(objs) <= set(ledger.writes):
            problems.append(f"objects never written: {sorted(set(objs) - set(ledger.writes))}")
        # leftovers of dropped attempts are removed in the background: soon, not at once
        uploads = wait_until(lambda: store.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []),
                             lambda u: not u, 60, "", fail=False)
        if uploads:
            problems.append(f"multipart uploads left in the store: {[(u['Key'], u['UploadId']) for u in uploads]}")
        check_visible(node, ledger)  # the same bytes through the mesh once in the store
        registry = etcd.ctl("get", "--prefix", f"/mesh/{CLUSTER}/writeback/", "--keys-only").split()
        if registry:
            problems.append(f"pending registry entries left in etcd: {registry}")
        node.stop()
        if node.journal_records():
            problems.append(f"journal records left: {node.journal_records()}")
        by_fe = {fe: sum(r[1] for k, recs in ledger.writes.items() if k.startswith(fe + "/") for r in recs)
                  for fe in ("s3", "cp", "fuse")}
        if not all(by_fe.values()):
            problems.append(f"a front end never had a write acknowledged: {by_fe}")
        print(f"write-back crash test: {ROUNDS} rounds, seed {SEED}, kill points {reached}, "
              f"{ledger.acked()} acknowledged writes of {sum(map(len, ledger.writes.values()))} "
              f"(acknowledged by front end: {by_fe})")
        assert not problems, "\n".join(problems)
    finally:
        store.slow_writes(0, 0)
        node.kill()


def test_store_outage_fills_the_budget_then_writers_wait(tmp_path: Path, etcd: EtcdProcess,
                                                         store: S3Server) -> None:
    bucket = f"wb-outage-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    node = Node(tmp_path, etcd, store, bucket, budget="32MiB")
    rng = random.Random(SEED)
    try:
        node.start()
        node.add_mount()
        gw = node.gateway()
        store.outage(True)
        files = {f"out/f{i}": rng.randbytes(4 * MiB) for i in range(8)}  # the whole budget
        for key, data in files.items():
            gw.put_object(Bucket=MOUNT, Key=key, Body=data)  # acknowledged with the store down
        assert len([p for p in node.spool.iterdir() if not p.name.endswith(".part")]) == 8
        late = rng.randbytes(3 * MiB)
        done: list[Any] = []

        def write_late() -> None:
            try:
                done.append(node.gateway().put_object(Bucket=MOUNT, Key="out/late", Body=late))
            except Exception as e:
                done.append(e)

        t = threading.Thread(target=write_late, daemon=True)
        t.start()
        # the write arrived (its spool file is open) and waits for room in the budget
        wait_until(lambda: [p.name for p in node.spool.iterdir() if p.name.endswith(".part")], bool, 60,
                   "the ninth write never reached the node")
        t.join(3)
        assert t.is_alive() and not done, f"a write over a full budget did not wait: {done}"
        # everything still reads back through the mesh, from the node's disk
        assert sha(gw.get_object(Bucket=MOUNT, Key="out/f3")["Body"].read()) == sha(files["out/f3"])
        store.outage(False)
        t.join(240)
        assert not t.is_alive()
        assert done and isinstance(done[0], dict), f"the waiting write failed: {done}"
        files["out/late"] = late

        def landed() -> list[str]:
            objs = store_objects(store, bucket)
            return [k for k, v in files.items() if objs.get(k) != sha(v)]

        wait_until(landed, lambda bad: not bad, 240, "writes not in the store after the outage")
        wait_until(lambda: list(node.spool.iterdir()), lambda left: not left, 60, "spool files left")
        assert not store.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for key, data in files.items():
            assert sha(gw.get_object(Bucket=MOUNT, Key=key)["Body"].read()) == sha(data)
        node.stop()
        assert node.journal_records() == []
    finally:
        store.outage(False)
        node.kill()



def test_kill_during_upload_then_the_store_is_down_at_restart(tmp_path: Path, etcd: EtcdProcess,
                                                                store: S3Server) -> None:
    """The journal replays while the store answers 503: the interrupted multipart upload
    cannot be aborted then, and must still be cleared once the store is back."""
    bucket = f"wb-replay-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    node = Node(tmp_path, etcd, store, bucket)
    data = random.Random(SEED).randbytes(20 * MiB + 3)  # three parts
    try:
        node.start()
        node.add_mount()
        store.slow_writes(1.0, 0)
        node.gateway().put_object(Bucket=MOUNT, Key="big/ckpt", Body=data)  # acknowledged
        assert wait_kill_point(store, "part", random.Random(1), timeout=60)
        node.kill()  # its upload id is in the journal (UploadPart is under way)
        store.slow_writes(0, 0)
        assert store.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
        store.outage(True)
        node.start()
        wait_until(lambda: node.proc is not None and "upload of /ckpt/big/ckpt failed" in node.proc.log.read_text(), bool, 60,
                   "the node never tried the store")
        store.outage(False)
        wait_until(lambda: store_objects(store, bucket).get("big/ckpt"), lambda d: d == sha(data), 120,
                   "the write did not land after the outage")
        nothing_left(node, store, bucket)
    finally:
        store.slow_writes(0, 0)
        store.outage(False)
        node.kill()


def nothing_left(node: Node, store: S3Server, bucket: str) -> None:
    """The spool empties, and no incomplete multipart upload is left in the store."""
    wait_until(lambda: list(node.spool.iterdir()), lambda left: not left, 60, "spool files left")
    # a dropped attempt's leftovers are removed in the background: soon, not at once
    uploads = wait_until(lambda: store.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []),
                         lambda u: not u, 60, "", fail=False)
    assert not uploads, f"multipart uploads left in the store: {[(u['Key'], u['UploadId']) for u in uploads]}"


def test_a_failed_upload_replaced_by_a_newer_write_leaves_nothing(tmp_path: Path, etcd: EtcdProcess,
                                                                  store: S3Server) -> None:
    """An upload fails half-way (the store goes away during its parts, so even its abort
    fails); a newer write of the same file replaces it before the retry: once the store is
    back the newer bytes are there, and the first attempt's multipart upload is gone."""
    bucket = f"wb-replace-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    node = Node(tmp_path, etcd, store, bucket)
    rng = random.Random(SEED)
    first, second = rng.randbytes(20 * MiB + 3), rng.randbytes(9 * MiB + 1)
    try:
        node.start()
        node.add_mount()
        store.slow_writes(1.0, 0)
        gw = node.gateway()
        gw.put_object(Bucket=MOUNT, Key="big/ckpt", Body=first)  # acknowledged
        assert wait_kill_point(store, "part", random.Random(1), timeout=60)
        store.outage(True)  # the parts under way still go in; the completion and the abort fail
        wait_until(lambda: node.proc is not None and "upload of /ckpt/big/ckpt failed" in node.proc.log.read_text(),
                   bool, 60, "the upload never failed")
        gw.put_object(Bucket=MOUNT, Key="big/ckpt", Body=second)  # acknowledged: replaces the first
        store.slow_writes(0, 0)
        store.outage(False)
        wait_until(lambda: store_objects(store, bucket).get("big/ckpt"), lambda d: d == sha(second), 120,
                   "the newer write did not land")
        nothing_left(node, store, bucket)
        assert sha(gw.get_object(Bucket=MOUNT, Key="big/ckpt")["Body"].read()) == sha(second)
    finally:
        store.slow_writes(0, 0)
        store.outage(False)
        node.kill()


def test_a_registry_entry_the_writers_journal_no_longer_holds_is_removed_at_restart(
        tmp_path: Path, etcd: EtcdProcess, store: S3Server) -> None:
    """A crash can leave this node's entry in the pending registry (its removal from etcd
    failed, or had not happened) after the journal let go of it: readers would be sent to
    a version nobody holds and fail. At restart the node removes its own such entries."""
    from meshd.writeback.journal import Entry

    bucket = f"wb-ghost-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    node = Node(tmp_path, etcd, store, bucket)
    try:
        proc = node.start()
        node.add_mount()
        node_id = proc.endpoints["node_id"]
        gw = node.gateway()
        gw.put_object(Bucket=MOUNT, Key="real", Body=b"acknowledged")
        node.stop()
        ghost = Entry("ghost0001", f"/{MOUNT}/ghost", f"/{MOUNT}", "ghost", 5, time.time(), node_id, "default",
                      proc.http, time.time())
        other = Entry("other0001", f"/{MOUNT}/other", f"/{MOUNT}", "other", 5, time.time(), "another-node",
                      "default", "http://127.0.0.1:9", time.time())
        for e in (ghost, other):
            etcd.ctl("put", f"/mesh/{CLUSTER}/writeback{e.path}", e.to_json().decode())
        node.start()
        gw = node.gateway()
        wait_until(lambda: etcd.ctl("get", f"/mesh/{CLUSTER}/writeback/{MOUNT}/ghost"), lambda out: not out.strip(),
                   30, "the node's stale registry entry is still in etcd")
        keys = {o["Key"] for o in gw.list_objects_v2(Bucket=MOUNT).get("Contents", [])}
        assert "ghost" not in keys and "real" in keys
        assert gw.get_object(Bucket=MOUNT, Key="real")["Body"].read() == b"acknowledged"
        # another node's entry is that node's business (it may be alive elsewhere)
        assert etcd.ctl("get", f"/mesh/{CLUSTER}/writeback/{MOUNT}/other").strip()
    finally:
        node.kill()
        etcd.ctl("del", "--prefix", f"/mesh/{CLUSTER}/writeback/{MOUNT}/")
