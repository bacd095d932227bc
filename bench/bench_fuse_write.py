"""Writes through meshfs against local disk: big sequential files, small files, in-place updates.

    .venv/bin/python bench/bench_fuse_write.py [--size-mib 1024] [--files 2000] [--store file|s3]

One run, side by side (these machines are noisy: compare the ratios):

* local      the same operations on a directory of local disk;
* meshfs     a ``meshfs mount`` of a ``meshd embedded`` node whose mount is a
             ``file://`` directory on the same disk (``--store s3``: a bucket of
             the tests' moto S3 server), so the ratio is the mesh's own cost.

Rows: ``dd`` of ``--size-mib`` MiB with ``conv=fsync`` (1 MiB blocks; the
time includes the commit: meshfs stages the file on local disk and uploads
it whole at fsync, docs/SEMANTICS.md); ``--files`` files of 4-64 KiB copied
in (``cp -r``); 200 in-place updates of 4 KiB at random offsets of a 64 MiB
file, each open/pwrite/close (every close commits a new version: the cost of
POSIX semantics over whole-object stores).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fuse")]

from tests.fuse_proc import MeshfsProcess  # noqa: E402
from tests.meshd_proc import MeshdProcess  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rows(target: Path, src: Path, size_mib: int) -> dict[str, float]:
    out: dict[str, float] = {}
    big = target / "big.bin"
    out["dd 1 MiB blocks, conv=fsync (MB/s)"] = size_mib * 1.048576 / timed(lambda: subprocess.run(
        ["dd", "if=/dev/zero", f"of={big}", "bs=1M", f"count={size_mib}", "conv=fsync", "status=none"], check=True))
    n = sum(1 for _ in src.iterdir())
    out["cp -r small files (files/s)"] = n / timed(lambda: subprocess.run(["cp", "-r", str(src), str(target / "small")],
                                                                       check=True))
    upd = target / "upd.bin"
    rnd = random.Random(7)
    offsets = [rnd.randrange(0, (64 << 20) - 4096) & ~4095 for _ in range(200)]

    def updates() -> None:
        for off in offsets:
            fd = os.open(upd, os.O_WRONLY)
            os.pwrite(fd, b"u" * 4096, off)
            os.close(fd)

    try:
        upd.write_bytes(bytes(64 << 20))
        out["in-place 4 KiB update of a 64 MiB file (updates/s)"] = len(offsets) / timed(updates)
    except OSError as e:  # a meshfs before in-place writes (ENOTSUP)
        print(f"in-place updates: {e}", file=sys.stderr)
        out["in-place 4 KiB update of a 64 MiB file (updates/s)"] = float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--store", choices=("file", "s3"), default="file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fuse-write-", dir="/var/tmp"))
    try:
        src = work / "src"
        src.mkdir()
        rnd = random.Random(1)
        for i in range(args.files):
            (src / f"f{i:05d}").write_bytes(os.urandom(rnd.randrange(4 << 10, 64 << 10)))
        local = work / "local"
        local.mkdir()
        got = {"local": rows(local, src, args.size_mib)}
        store, s3 = work / "store", None
        store.mkdir()
        mounts = [f"/data={store.as_uri()}"] if args.store == "file" else []
        node = MeshdProcess(work / "node", mounts, ["--no-s3", "--no-webhdfs"]).start()
        try:
            if args.store == "s3":
                from tests.s3server import start
                s3 = start()
                s3.client().create_bucket(Bucket="bench")
                opts = [a for k, v in s3.options().items() for a in ("-o", f"{k}={v}")]
                node.ctl("mount", "add", "/data", "s3://bench", *opts, check=True)
            fs = MeshfsProcess(work / "mnt", node.endpoint).start()
            try:
                got["meshfs"] = rows(fs.mountpoint / "data", src, args.size_mib)
            finally:
                fs.stop()
        finally:
            node.stop()
            if s3 is not None:
                s3.stop()
        print(f"writes, {args.size_mib} MiB / {args.files} small files, store {args.store}://")
        print(f"{'row':58} {'local':>10} {'meshfs':>10} {'ratio':>7}")
        for row, v in got["local"].items():
            m = got["meshfs"][row]
            print(f"{row:58} {v:10.1f} {m:10.1f} {m / v:7.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
