"""A model-based random test of the FUSE mount (hypothesis state machine).

Every step applies the same operation to a directory on the mount and to a
local directory (the model: what POSIX says), and compares what came back:
the bytes, the listing, the file type and size, or the errno. After every
step the two trees must be equal: file contents, symlink targets, permission
bits, owner and group, and the mtime of whatever had its times set explicitly
(utime to a time long past; other mtimes are "now" on both sides and not
compared). Names come from a small alphabet so that operations collide
(EEXIST, ENOTEMPTY, EISDIR, ENOTDIR, ELOOP, replacing renames). The
operations: whole-file writes, random writes into an existing file (O_RDWR,
pwrite, close), reads at any offset, mkdir, rmdir, unlink, rename, truncate to
any size, chmod, chown, utime, symlink (relative targets, dangling or not),
listing, stat. One step is not compared with the model but with the outcomes
docs/SEMANTICS.md allows: a file rewritten while a reader has it open; the
reader's later reads give the old bytes or ESTALE, never a mix (locally, POSIX
would show the new bytes). The mount's TTL is 0 for this test's own mount, so
nothing it does is hidden by a cache.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.fuse_proc import MeshfsProcess, is_mounted
from tests.meshd_proc import MeshdProcess

NAMES = st.sampled_from(["a", "b", "c", "dd"])
RANDOM = st.sampled_from(["a", "b", "a/b", "b/c", "dd", "a/b/c", "zz"])  # often missing: the error paths
CONTENT = st.binary(max_size=70_000)
TARGETS = st.sampled_from(["a", "b", "dd", "a/b", "zz", "c/x"])  # relative, never above the run's root
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o4755, 0o1777])
IDS = st.sampled_from([0, 1000, 1234])
OLD = 1_600_000_000  # explicit times are before this; every other mtime is "now"
TIMES = st.integers(1_000_000_000, OLD - 1)
_RUNS = itertools.count()
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # a shrink of this machine takes minutes


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("fuse-model")
    store = base / "store"
    store.mkdir()
    node = MeshdProcess(base / "node", [f"/m={store.as_uri()}"], ["--no-s3", "--no-webhdfs",
                                                                  "--page-size", "64KiB"]).start()
    fs = MeshfsProcess(base / "mnt", str(base / "node"), ["--ttl", "0"]).start()
    try:
        yield fs.mountpoint / "m", base / "models"
    finally:
        fs.stop()
        node.stop()
        assert not is_mounted(base / "mnt")


def outcome(fn: Callable[[Path], Any], path: Path) -> Any:
    try:
        return ("ok", fn(path))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno or 0, e.errno))


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry beneath ``root`` (symlinks not followed): (kind, bytes or target or
    None, permission bits, uid, gid, whole-second mtime)."""
    out: dict[str, tuple[Any, ...]] = {}

    def walk(d: str, rel: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                r = os.path.join(rel, e.name) if rel else e.name
                s = e.stat(follow_symlinks=False)
                attrs = (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, int(s.st_mtime))
                if stat.S_ISLNK(s.st_mode):
                    out[r] = ("link", os.readlink(e.path), *attrs)
                elif stat.S_ISDIR(s.st_mode):
                    out[r] = ("dir", None, *attrs)
                    walk(e.path, r)
                else:
                    out[r] = ("file", Path(e.path).read_bytes(), *attrs)

    walk(str(root), "")
    return out


def comparable(got: dict[str, tuple[Any, ...]], want: dict[str, tuple[Any, ...]]) -> tuple[dict[str, Any], ...]:
    """Both trees with mtimes kept only where the model's was set explicitly (and for links never)."""
    keep = {p for p, v in want.items() if v[0] != "link" and v[5] < OLD}
    return tuple({p: v[:5] + ((v[5],) if p in keep else ()) for p, v in t.items()} for t in (got, want))


def read_all(fd: int) -> bytes | str:
    """What ``fd`` reads from offset 0 to its end, or "ESTALE"."""
    out = bytearray()
    try:
        while piece := os.pread(fd, 65536, len(out)):
            out += piece
    except OSError as e:
        if e.errno != errno.ESTALE:
            raise
        return "ESTALE"
    return bytes(out)


class MountMatchesPosix(RuleBasedStateMachine):
    mount_root: Path
    model_root: Path

    @initialize()
    def fresh(self) -> None:
        n = next(_RUNS)
        self.mnt = self.mount_root / f"run{n}"
        self.model = self.model_root / f"run{n}"
        self.mnt.mkdir()
        self.model.mkdir(parents=True)

    def both(self, fn: Callable[[Path], Any], *rel: str) -> Any:
        got = outcome(lambda p: fn(p), self.mnt.joinpath(*rel))
        want = outcome(lambda p: fn(p), self.model.joinpath(*rel))
        assert got == want, f"{fn.__name__ if hasattr(fn, '__name__') else fn} {rel}: mount {got} != posix {want}"
        return got

    def two(self, fn: Callable[[Path, Path], Any], a: str, b: str) -> None:
        got = outcome(lambda _: fn(self.mnt / a, self.mnt / b), self.mnt)
        want = outcome(lambda _: fn(self.model / a, self.model / b), self.model)
        assert got == want, f"{a} -> {b}: mount {got} != posix {want}"

    def existing(self, kind: str) -> list[str]:
        """Relative paths of the model's regular files (``file``), directories (``dir``, the
        run's root as ""), symlinks (``link``) or all of them (``any``)."""
        t = tree(self.model)
        if kind == "dir":
            return ["", *sorted(p for p, v in t.items() if v[0] == "dir")]
        if kind in ("file", "link"):
            return sorted(p for p, v in t.items() if v[0] == kind)
        return sorted(t)

    def pick(self, data: st.DataObject, kind: str) -> str:
        """Mostly something that exists (so operations succeed and collide), sometimes not."""
        have = self.existing(kind)
        if have and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(have))
        return data.draw(RANDOM)

    @rule(data=st.data(), name=NAMES)
    def mkdir(self, data: st.DataObject, name: str) -> None:
        self.both(os.mkdir, self.pick(data, "dir"), name)

    def _write(self, rel: str, content: bytes, chunk: int) -> None:
        def write(p: Path) -> int:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for i in range(0, len(content), chunk):
                    os.write(fd, content[i:i + chunk])
            finally:
                os.close(fd)
            return len(content)

        self.both(write, rel)

    @rule(data=st.data(), name=NAMES, content=CONTENT, chunk=st.sampled_from([1000, 4096, 65536]))
    def write_new(self, data: st.DataObject, name: str, content: bytes, chunk: int) -> None:
        self._write(os.path.join(self.pick(data, "dir"), name), content, chunk)

    @rule(data=st.data(), content=CONTENT, chunk=st.sampled_from([1000, 65536]))
    def overwrite(self, data: st.DataObject, content: bytes, chunk: int) -> None:
        self._write(self.pick(data, "file"), content, chunk)

    @rule(data=st.data(), offset=st.integers(0, 80_000), length=st.integers(0, 80_000))
    def read(self, data: st.DataObject, offset: int, length: int) -> None:
        def read(p: Path) -> bytes:
            with open(p, "rb") as f:
                f.seek(offset)
                return f.read(length)

        self.both(read, self.pick(data, "file"))

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        self.both(os.unlink, self.pick(data, "any"))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        target = self.pick(data, "any")
        if target:
            self.both(os.rmdir, target)

    @rule(data=st.data(), name=NAMES)
    def rename(self, data: st.DataObject, name: str) -> None:
        src = self.pick(data, "any")
        dst = os.path.join(self.pick(data, "dir"), name)
        if src:
            self.two(os.rename, src, dst)

    @rule(data=st.data(), offset=st.integers(0, 80_000), content=st.binary(min_size=1, max_size=5000))
    def write_at(self, data: st.DataObject, offset: int, content: bytes) -> None:
        def pwrite(p: Path) -> int:
            fd = os.open(p, os.O_RDWR)
            try:
                return os.pwrite(fd, content, offset)
            finally:
                os.close(fd)

        self.both(pwrite, self.pick(data, "file"))

    @rule(data=st.data(), size=st.one_of(st.just(0), st.integers(0, 80_000)))
    def truncate(self, data: st.DataObject, size: int) -> None:
        self.both(lambda p: os.truncate(p, size), self.pick(data, "file"))

    @rule(data=st.data(), mode=MODES)
    def chmod(self, data: st.DataObject, mode: int) -> None:
        self.both(lambda p: os.chmod(p, mode), self.pick(data, "any"))

    @rule(data=st.data(), uid=IDS, gid=IDS)
    def chown(self, data: st.DataObject, uid: int, gid: int) -> None:
        self.both(lambda p: os.chown(p, uid, gid), self.pick(data, "any"))

    @rule(data=st.data(), atime=TIMES, mtime=TIMES)
    def utime(self, data: st.DataObject, atime: int, mtime: int) -> None:
        self.both(lambda p: os.utime(p, (atime, mtime)), self.pick(data, "any"))

    @rule(data=st.data(), name=NAMES, to=TARGETS)
    def symlink(self, data: st.DataObject, name: str, to: str) -> None:
        self.both(lambda p: os.symlink(to, p), os.path.join(self.pick(data, "dir"), name))

    @rule(data=st.data())
    def readlink(self, data: st.DataObject) -> None:
        def link(p: Path) -> tuple[str, str]:
            s = os.lstat(p)
            return ("link", os.readlink(p)) if stat.S_ISLNK(s.st_mode) else ("dir" if stat.S_ISDIR(s.st_mode) else "file", "")

        self.both(link, self.pick(data, "link"))

    @rule(data=st.data(), content=CONTENT)
    def rewrite_under_reader(self, data: st.DataObject, content: bytes) -> None:
        files = self.existing("file")
        if not files:
            return
        rel = data.draw(st.sampled_from(files))
        old = (self.model / rel).read_bytes()
        fd = os.open(self.mnt / rel, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == old[:4096]
            self._write(rel, content, 65536)
            got = read_all(fd)
            # emptied through this mount: the kernel ends every handle's file at 0 (docs/SEMANTICS.md)
            assert got in (old, "ESTALE") or (content == b"" and got == b""), (
                f"{rel}: reader of the old version ({len(old)} bytes) got {len(got)} bytes after a rewrite to "
                f"{len(content)}: old cut: {got == old[:len(content)]}, new: {got == content}")
        finally:
            os.close(fd)

    @rule(data=st.data())
    def listdir(self, data: st.DataObject) -> None:
        self.both(lambda p: sorted(os.listdir(p)), self.pick(data, "dir"))

    @rule(data=st.data())
    def stat(self, data: st.DataObject) -> None:
        def kind(p: Path) -> tuple[str, int, int]:
            s = os.stat(p)
            return ("dir", 0, 0) if os.path.isdir(p) else ("file", s.st_size, stat.S_IMODE(s.st_mode))

        self.both(kind, self.pick(data, "any"))

    @invariant()
    def same_tree(self) -> None:
        if hasattr(self, "mnt"):
            got, want = comparable(tree(self.mnt), tree(self.model))
            assert got == want

    def teardown(self) -> None:
        if hasattr(self, "mnt"):
            shutil.rmtree(self.mnt, ignore_errors=True)
            shutil.rmtree(self.model, ignore_errors=True)


def test_mount_behaves_like_posix(mounted: tuple[Path, Path]) -> None:
    mount_root, model_root = mounted
    model_root.mkdir(exist_ok=True)
    MountMatchesPosix.mount_root = mount_root
    MountMatchesPosix.model_root = model_root
    run = MountMatchesPosix.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=25, deadline=None, phases=NO_SHRINK,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    run().runTest()
