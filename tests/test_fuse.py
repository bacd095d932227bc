"""meshfs: a real kernel FUSE mount of a real mesh node, used by real tools.

One ``meshd embedded`` serves three mounts: ``/data`` (a directory, read and
write), ``/ro`` (read-only) and ``/big`` (NoCache, holding a sparse 10 GiB
file for the memory test); ``meshfs mount`` puts the namespace at a
directory. Tools run on the mount as users run them (cp, cat, dd, find, du,
rsync, tar, sha256sum, Python, numpy.memmap, a PyTorch-style dataset read by
worker processes), and their results are checked against the files in the
under-store. The node-failure test kills and restarts its own node.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fuse_proc import MESHFS, MeshfsProcess, is_mounted
from tests.meshd_proc import MeshdProcess

MIB = 1 << 20
GIB = 1 << 30


class Env:
    def __init__(self, base: Path, node: MeshdProcess, fs: MeshfsProcess) -> None:
        self.base, self.node, self.fs = base, node, fs
        self.mnt = fs.mountpoint
        self.store = base / "store"
        self.ro = base / "rostore"
        self.big = base / "bigstore"

    def data(self, rel: str = "") -> Path:
        return self.mnt / "data" / rel if rel else self.mnt / "data"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("fuse")
    for d in ("store", "rostore", "bigstore"):
        (base / d).mkdir()
    (base / "rostore" / "fixed.txt").write_bytes(b"read only\n")
    with open(base / "bigstore" / "sparse-10g.bin", "wb") as f:
        f.truncate(10 * GIB)  # no disk blocks: zeros, read through the mesh uncached
    node = MeshdProcess(base / "node", [f"/data={(base / 'store').as_uri()}",
                                        f"/ro={(base / 'rostore').as_uri()},read_only=true",
                                        f"/big={(base / 'bigstore').as_uri()},nocache=true"],
                        ["--no-s3", "--no-webhdfs"]).start()
    fs = MeshfsProcess(base / "mnt", str(base / "node"), ["--ttl", "1"])
    try:
        fs.start()
        yield Env(base, node, fs)
    finally:
        code = fs.stop()
        node.stop()
    assert code == 0 and not is_mounted(base / "mnt")  # SIGTERM: a clean unmount


def test_namespace_and_statfs(env: Env) -> None:
    assert sorted(os.listdir(env.mnt)) == ["big", "data", "ro"]
    st = os.stat(env.mnt / "data")
    assert st.st_uid == os.getuid() and oct(st.st_mode & 0o777) == "0o755"
    sv = os.statvfs(env.mnt)
    assert sv.f_blocks > 0 and sv.f_bavail <= sv.f_blocks
    r = subprocess.run(["df", str(env.mnt)], capture_output=True, text=True)
    assert r.returncode == 0 and "meshfs" in r.stdout


def test_real_tools(env: Env) -> None:
    src = env.base / "src"
    src.mkdir(exist_ok=True)
    payload = os.urandom(9 * MIB + 77)
    (src / "blob.bin").write_bytes(payload)
    (src / "nested" / "deep").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (src / "nested" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (src / "nested" / "deep" / "x.txt").write_text("x")

    def run(*cmd: str, cwd: Path | None = None) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        return r.stdout

    # writes through the mount land in the under-store, byte for byte
    run("cp", str(src / "blob.bin"), str(env.data("blob.bin")))
    assert (env.store / "blob.bin").read_bytes() == payload
    run("rsync", "-r", f"{src}/nested/", str(env.data("rs")) + "/")
    assert sorted(p.name for p in (env.store / "rs").iterdir()) == sorted(p.name for p in (src / "nested").iterdir())
    run("tar", "-C", str(src), "-cf", str(env.base / "t.tar"), "nested")
    env.data("untar").mkdir()
    run("tar", "-C", str(env.data("untar")), "-xf", str(env.base / "t.tar"))
    assert (env.store / "untar" / "nested" / "deep" / "x.txt").read_text() == "x"
    run("dd", f"if={src / 'blob.bin'}", f"of={env.data('dd.bin')}", "bs=1M", "status=none")
    assert _sha(env.store / "dd.bin") == hashlib.sha256(payload).hexdigest()

    # reads through the mount are the under-store's bytes
    assert run("sha256sum", str(env.data("blob.bin"))).split()[0] == hashlib.sha256(payload).hexdigest()
    assert run("cat", str(env.data("rs/f3.txt"))) == "file 3\n" * 4
    r = subprocess.run(["dd", f"if={env.data('blob.bin')}", "bs=4096", "skip=100", "count=3", "status=none"],
                       capture_output=True, timeout=60)
    assert r.stdout == payload[409600:409600 + 3 * 4096]
    found = run("find", str(env.data("rs")), "-name", "*.txt").split()
    assert len(found) == 21
    du = int(run("du", "-sb", str(env.data("rs"))).split()[0])
    assert du >= sum(p.stat().st_size for p in (src / "nested").rglob("*") if p.is_file())
    copy_back = env.base / "back"
    run("cp", "-r", str(env.data("untar")), str(copy_back))
    assert (copy_back / "nested" / "f7.txt").read_text() == (src / "nested" / "f7.txt").read_text()
    run("tar", "-C", str(env.data()), "-cf", str(env.base / "t2.tar"), "rs")
    assert "rs/deep/x.txt" in run("tar", "-tf", str(env.base / "t2.tar"))


def test_python_seek_read_and_numpy_memmap(env: Env) -> None:
    arr = np.arange(3 * MIB // 8, dtype=np.int64)
    (env.store / "arr.bin").write_bytes(arr.tobytes())
    with open(env.data("arr.bin"), "rb") as f:
        f.seek(8 * 1000)
        assert np.frombuffer(f.read(80), dtype=np.int64).tolist() == list(range(1000, 1010))
        f.seek(-16, os.SEEK_END)
        assert np.frombuffer(f.read(), dtype=np.int64).tolist() == [arr[-2], arr[-1]]
        f.seek(0)
        assert f.read(8) == arr[:1].tobytes()
    m = np.memmap(env.data("arr.bin"), dtype=np.int64, mode="r")  # a cached file, mapped
    assert m.shape == arr.shape and int(m[123456]) == 123456 and int(m.sum()) == int(arr.sum())
    del m


class SmallFiles:
    """A PyTorch-style map dataset: ``__len__`` and ``__getitem__`` open one small file
    each, read by several worker processes (what DataLoader(num_workers=4) does)."""

    def __init__(self, root: str, n: int) -> None:
        self.root, self.n = root, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, str]:
        with open(os.path.join(self.root, f"{i // 100:03d}", f"sample-{i:05d}.bin"), "rb") as f:
            data = f.read()
        return i, hashlib.sha256(data).hexdigest()


def _load(args: tuple[SmallFiles, int]) -> tuple[int, str]:
    ds, i = args
    return ds[i]


def test_dataset_with_worker_processes(env: Env) -> None:
    n = 1000
    expected = {}
    for i in range(n):
        d = env.store / "ds" / f"{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(1000 + (i * 37) % 9000)
        (d / f"sample-{i:05d}.bin").write_bytes(data)
        expected[i] = hashlib.sha256(data).hexdigest()
    ds = SmallFiles(str(env.data("ds")), n)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = dict(pool.map(_load, [(ds, i) for i in range(n)], chunksize=25))
    assert got == expected


def test_large_directory_streams(env: Env) -> None:
    d = env.store / "wide"
    d.mkdir()
    names = [f"entry-{i:06d}" for i in range(12_345)]
    for name in names:
        (d / name).touch()
    seen = sorted(e.name for e in os.scandir(env.data("wide")))
    assert seen == names
    r = subprocess.run(f"ls {env.data('wide')} | wc -l", shell=True, capture_output=True, text=True)
    assert int(r.stdout) == len(names)
    assert os.stat(env.data("wide") / "entry-012000").st_size == 0


def test_in_place_writes_truncate_and_append_commit_whole_versions(env: Env) -> None:
    """Writes at any offset, O_APPEND and truncate to any size: through a staged copy,
    committed as one new version at close; a reader of the old version meanwhile sees
    the old bytes, never a mix."""
    (env.store / "exists.txt").write_bytes(b"0123456789")
    old = open(env.data("exists.txt"), "rb")  # pinned to the first version
    assert old.read(2) == b"01"
    fd = os.open(env.data("exists.txt"), os.O_RDWR)
    os.pwrite(fd, b"AB", 4)
    assert os.pread(fd, 10, 0) == b"0123AB6789"  # reads through an O_RDWR handle see the writes
    assert (env.store / "exists.txt").read_bytes() == b"0123456789"  # nothing committed before close
    os.close(fd)
    assert (env.store / "exists.txt").read_bytes() == b"0123AB6789"
    with open(env.data("exists.txt"), "ab") as f:
        f.write(b"++")
    assert (env.store / "exists.txt").read_bytes() == b"0123AB6789++"
    os.truncate(env.data("exists.txt"), 5)
    assert (env.store / "exists.txt").read_bytes() == b"0123A"
    os.truncate(env.data("exists.txt"), 8)
    assert (env.store / "exists.txt").read_bytes() == b"0123A\0\0\0"
    try:  # the old reader: the old bytes it held, or ESTALE; never new bytes cut to the old size
        rest = old.read()
        assert rest == b"23456789"[: len(rest)]
    except OSError as e:
        assert e.errno == errno.ESTALE
    old.close()
    # random writes into a new file: holes are zeros, the last close commits
    fd = os.open(env.data("seq.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"abc")
    os.pwrite(fd, b"zz", 10)
    os.ftruncate(fd, 11)
    os.close(fd)
    assert (env.store / "seq.bin").read_bytes() == b"abc" + bytes(7) + b"z"


def test_posix_errors_as_posix_has_them(env: Env) -> None:
    def errno_of(fn) -> int:  # type: ignore[no-untyped-def]
        try:
            fn()
        except OSError as e:
            return e.errno or 0
        return 0

    env.data("seq.bin").write_bytes(b"x")
    assert errno_of(lambda: os.stat(env.data("n" * 256))) == errno.ENAMETOOLONG
    # POSIX errors as POSIX has them
    assert errno_of(lambda: os.mkdir(env.data("rs"))) == errno.EEXIST
    assert errno_of(lambda: os.rmdir(env.data("rs"))) == errno.ENOTEMPTY
    assert errno_of(lambda: os.unlink(env.data("rs"))) == errno.EISDIR
    assert errno_of(lambda: os.rmdir(env.data("seq.bin"))) == errno.ENOTDIR
    assert errno_of(lambda: os.stat(env.data("nope"))) == errno.ENOENT
    assert errno_of(lambda: open(env.mnt / "ro" / "new.txt", "wb").close()) == errno.EROFS
    assert errno_of(lambda: os.unlink(env.mnt / "ro" / "fixed.txt")) == errno.EROFS
    assert errno_of(lambda: os.mkdir(env.mnt / "ro" / "d")) == errno.EROFS
    assert (env.ro / "fixed.txt").exists() and not (env.ro / "new.txt").exists()
    assert errno_of(lambda: open(env.mnt / "toplevel.txt", "wb").close()) == errno.EACCES
    assert (env.mnt / "ro" / "fixed.txt").read_bytes() == b"read only\n"


def test_rename_and_metadata_cache(env: Env) -> None:
    env.data("mv").mkdir()
    env.data("mv/a.txt").write_bytes(b"A")
    os.rename(env.data("mv/a.txt"), env.data("mv/b.txt"))
    assert not (env.store / "mv" / "a.txt").exists() and (env.store / "mv" / "b.txt").read_bytes() == b"A"
    assert os.listdir(env.data("mv")) == ["b.txt"]
    # a change made behind the mount's back shows after the TTL (1 s), or at once after drop-cache
    (env.store / "mv" / "b.txt").write_bytes(b"changed")
    time.sleep(1.2)
    assert env.data("mv/b.txt").read_bytes() == b"changed"
    (env.store / "mv" / "c.txt").write_bytes(b"new")
    r = subprocess.run([*MESHFS, "drop-cache", str(env.mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(env.data("mv"))) == ["b.txt", "c.txt"]


def test_mesh_state_as_xattrs(env: Env) -> None:
    (env.store / "x.bin").write_bytes(b"q" * 100_000)
    assert os.getxattr(env.data("x.bin"), "user.mesh.cached_bytes") == b"0"
    env.data("x.bin").read_bytes()
    assert os.getxattr(env.data("x.bin"), "user.mesh.cached_bytes") == b"100000"
    assert os.getxattr(env.data("x.bin"), "user.mesh.home_region") == b"local"
    assert "user.mesh.cached_bytes" in os.listxattr(env.data("x.bin"))


def test_memory_does_not_grow_with_bytes_read(env: Env) -> None:
    """10 GiB streamed through the mount (a NoCache mount: every byte crosses meshfs):
    meshfs's RSS at the end is within 10 % (or 20 MiB) of its RSS after the first GiB."""
    path = env.mnt / "big" / "sparse-10g.bin"
    first = None
    done = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(MIB)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            done += n
            if first is None and done >= GIB:
                first = env.fs.rss()
    last = env.fs.rss()
    assert done == 10 * GIB and first is not None
    print(f"meshfs RSS after 1 GiB {first / MIB:.1f} MiB, after 10 GiB {last / MIB:.1f} MiB")
    assert last <= max(first * 1.10, first + 20 * MIB)


def test_node_killed_during_reads_then_restarted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    data = os.urandom(8 * MIB)
    (store / "f.bin").write_bytes(data)
    node = MeshdProcess(tmp_path / "node", [f"/data={store.as_uri()}"], ["--no-s3", "--no-webhdfs"]).start()
    fs = MeshfsProcess(tmp_path / "mnt", str(tmp_path / "node"), ["--ttl", "0", "--timeout", "5"]).start()
    results: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with open(fs.mountpoint / "data" / "f.bin", "rb") as f:
                    f.seek(int.from_bytes(os.urandom(2), "big") * 100)
                    got = f.read(4096)
                results.append("ok" if got in data else "WRONG BYTES")
            except OSError as e:
                results.append(errno.errorcode.get(e.errno or 0, str(e.errno)))
            if time.monotonic() - t0 > 20:
                results.append("SLOW")
    try:
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(1.0)
        node.kill()  # SIGKILL: no goodbye
        time.sleep(3.0)
        node.start()  # new ports: meshfs reads the endpoint again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and results[-5:] != ["ok"] * 5:
            time.sleep(0.2)
        stop.set()
        t.join(30)
        assert not t.is_alive(), "a read hung"
        assert "WRONG BYTES" not in results and "SLOW" not in results
        assert set(results) <= {"ok", "EIO", "ESTALE", "ENOENT", "ETIMEDOUT"}, set(results)
        assert results[-5:] == ["ok"] * 5, results[-20:]  # recovered
        assert fs.mountpoint.joinpath("data", "f.bin").read_bytes() == data
    finally:
        stop.set()
        code = fs.stop()
        node.stop()
    assert code == 0


def test_sigterm_unmounts_cleanly(tmp_path: Path, env: Env) -> None:
    fs = MeshfsProcess(tmp_path / "mnt2", str(env.base / "node")).start()
    assert sorted(os.listdir(fs.mountpoint)) == ["big", "data", "ro"]
    assert fs.proc is not None
    fs.proc.send_signal(signal.SIGTERM)
    assert fs.proc.wait(20) == 0
    assert not is_mounted(fs.mountpoint)
    shutil.rmtree(fs.mountpoint)  # an unmounted, empty directory again


def _counter(node: MeshdProcess, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(node.endpoints["metrics"]) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_kept_listings_pinned_opens_and_shared_page_descriptors(tmp_path: Path) -> None:
    """A mount with sync_interval=300: meshfs keeps its statuses and listings that long (the
    node trusts them as long), yet an open re-checks: a file replaced through the mesh by
    another client reads new, whole, at once. Random reads from several handles share the
    page descriptors: each page is asked of the node once, not once per read."""
    store = tmp_path / "store"
    (store / "d").mkdir(parents=True)
    for i in range(5):
        (store / "d" / f"f{i}").write_bytes(b"old")
    big = os.urandom(3 * 4 * MIB + 12345)  # four 4 MiB pages, the last one short
    (store / "big.bin").write_bytes(big)
    node = MeshdProcess(tmp_path / "node", [f"/kept={store.as_uri()},sync_interval=300"],
                        ["--no-s3", "--no-webhdfs"]).start()
    fs = MeshfsProcess(tmp_path / "mnt", str(tmp_path / "node"), ["--ttl", "1"]).start()
    kept = fs.mountpoint / "kept"
    other = node.client()  # another client of the same node
    try:
        assert sorted(os.listdir(kept / "d")) == [f"f{i}" for i in range(5)]
        assert os.stat(kept / "d" / "f0").st_size == 3
        # changes made through the mesh by another client: the node knows at once ...
        other.put("/kept/d/new", b"n")
        other.put("/kept/d/f0", b"replaced, longer")
        time.sleep(1.2)  # past --ttl: only the mount's sync_interval keeps them now
        # ... this mount lists and stats what it learned (as rclone's --dir-cache-time) ...
        assert "new" not in os.listdir(kept / "d")
        assert os.stat(kept / "d" / "f0").st_size == 3
        # ... but an open re-checks and reads the new file whole (the kernel's size refreshed)
        assert (kept / "d" / "f0").read_bytes() == b"replaced, longer"
        assert os.stat(kept / "d" / "f0").st_size == len(b"replaced, longer")
        assert (kept / "d" / "new").read_bytes() == b"n"  # a name not listed is asked for
        r = subprocess.run([*MESHFS, "drop-cache", str(fs.mountpoint)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "new" in os.listdir(kept / "d")
        # this client's own changes show at once
        (kept / "d" / "mine").write_bytes(b"m")
        assert "mine" in os.listdir(kept / "d") and (store / "d" / "mine").read_bytes() == b"m"
        os.unlink(kept / "d" / "f1")
        assert "f1" not in os.listdir(kept / "d")

        # shared page descriptors: warm the node's cache, then random reads from three handles
        assert _sha(kept / "big.bin") == hashlib.sha256(big).hexdigest()
        before = _counter(node, "mesh_cache_hits_total")
        rng = np.random.default_rng(5)
        fds = [os.open(kept / "big.bin", os.O_RDONLY) for _ in range(3)]
        try:
            subprocess.run([*MESHFS, "drop-cache", str(fs.mountpoint)], check=True, capture_output=True)
            for k in range(300):
                off = int(rng.integers(0, len(big) - 4096))
                assert os.pread(fds[k % 3], 4096, off) == big[off:off + 4096]
        finally:
            for fd in fds:
                os.close(fd)
        asked = _counter(node, "mesh_cache_hits_total") - before
        assert 4 <= asked <= 8, asked  # each of the 4 pages about once (+ read-ahead), not 300 times
    finally:
        fs.stop()
        node.stop()


def test_a_tree_walk_lists_each_directory_once_and_ahead(tmp_path: Path) -> None:
    """On a mount that keeps listings: lookups in one directory turn into one listing of it,
    and once a walk opens two sibling directories in order, the next two are listed in the
    background. Every directory is listed from the under-store once: nothing extra."""
    store = tmp_path / "store"
    names = [f"d{i}" for i in range(8)]
    for d in names:
        (store / "t" / d).mkdir(parents=True)
        for j in range(3):
            (store / "t" / d / f"f{j}").write_bytes(d.encode())
    node = MeshdProcess(tmp_path / "node", [f"/kept={store.as_uri()},sync_interval=300"],
                        ["--no-s3", "--no-webhdfs"]).start()
    fs = MeshfsProcess(tmp_path / "mnt", str(tmp_path / "node"), ["--ttl", "1"]).start()
    root = fs.mountpoint / "kept" / "t"

    def lists() -> float:
        return _counter(node, 'mesh_understore_requests_total{op="list"')

    try:
        for d in names[:5]:  # lookups by name, as a walk without a listing does them
            os.stat(root / d)
        base = lists()
        assert base <= 3, base  # /, /t (once, for the lookups): not one request per name
        assert sorted(os.listdir(root / "d0")) == ["f0", "f1", "f2"]
        assert sorted(os.listdir(root / "d1")) == ["f0", "f1", "f2"]
        deadline = time.monotonic() + 10
        while lists() < base + 4 and time.monotonic() < deadline:  # d2 and d3, ahead of the walk
            time.sleep(0.05)
        assert lists() == base + 4
        walked = {d: sorted(files) for d, _, files in os.walk(root) if d != str(root)}
        assert walked == {str(root / d): ["f0", "f1", "f2"] for d in names}
        assert lists() == base + len(names)  # each directory once, none twice
        assert (root / "d7" / "f1").read_bytes() == b"d7"
    finally:
        fs.stop()
        node.stop()


def test_drop_cache_refuses_a_directory_that_is_not_a_meshfs_mount(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = subprocess.run([*MESHFS, "drop-cache", str(plain)], capture_output=True, text=True)
    assert r.returncode == 1 and "dropped" not in r.stdout
    assert f"{plain} is not a meshfs mount" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with contextlib.suppress(OSError):  # a filesystem without user xattrs has none to leave
        assert "user.mesh.drop_cache" not in os.listxattr(plain)
    r = subprocess.run([*MESHFS, "drop-cache", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 1 and "no such file or directory" in r.stderr, r.stderr


def test_drop_cache_inside_a_mount_is_accepted(env: Env) -> None:
    r = subprocess.run([*MESHFS, "drop-cache", str(env.data())], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dropped cached metadata")


def test_mount_on_a_missing_directory_says_it_does_not_exist(tmp_path: Path) -> None:
    r = subprocess.run([*MESHFS, "mount", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"{tmp_path / 'nope'}: no such directory" in r.stderr, r.stderr
    (tmp_path / "file").write_text("x")
    r = subprocess.run([*MESHFS, "mount", str(tmp_path / "file")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a directory" in r.stderr, r.stderr


def test_directories_the_store_does_not_date_show_the_mount_time(env: Env) -> None:
    """The mesh root (and S3's implicit directories) has no mtime of its own: not 1970."""
    root = os.stat(env.mnt)
    assert time.time() - 3600 < root.st_mtime <= time.time()
    with env.node.client() as c:
        assert c.stat("/").mtime == 0  # what the node says; meshfs dates it
    for e in os.scandir(env.mnt):
        assert e.stat().st_mtime > 10 * 365 * 86400, e.name
