"""A model-based random test of the FUSE mount (hypothesis state machine).

Every step applies the same operation to a directory on the mount and to a
local directory (the model: what POSIX says), and compares what came back:
the bytes, the listing, the file type and size, or the errno. After every
step the two trees must be equal, file contents included. Names come from a
small alphabet so that operations collide (EEXIST, ENOTEMPTY, EISDIR,
ENOTDIR, replacing renames). The operations are the ones meshfs supports
(whole-file writes, reads at any offset, mkdir, rmdir, unlink, rename,
truncate to 0, listing, stat); the unsupported ones are tested for their
errnos in tests/test_fuse.py. The mount's TTL is 0 for this test's own mount,
so nothing it does is hidden by a cache.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.fuse_proc import MeshfsProcess, is_mounted
from tests.meshd_proc import MeshdProcess

NAMES = st.sampled_from(["a", "b", "c", "dd"])
RANDOM = st.sampled_from(["a", "b", "a/b", "b/c", "dd", "a/b/c", "zz"])  # often missing: the error paths
CONTENT = st.binary(max_size=70_000)
_RUNS = itertools.count()


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


def tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


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
        """Relative paths of the model's files (``file``), directories (``dir``, the run's
        root as "") or both (``any``)."""
        t = tree(self.model)
        if kind == "dir":
            return ["", *sorted(p for p, v in t.items() if v == "dir")]
        if kind == "file":
            return sorted(p for p, v in t.items() if v != "dir")
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

    @rule(data=st.data())
    def truncate_to_zero(self, data: st.DataObject) -> None:
        self.both(lambda p: os.truncate(p, 0), self.pick(data, "file"))

    @rule(data=st.data())
    def listdir(self, data: st.DataObject) -> None:
        self.both(lambda p: sorted(os.listdir(p)), self.pick(data, "dir"))

    @rule(data=st.data())
    def stat(self, data: st.DataObject) -> None:
        def kind(p: Path) -> tuple[str, int]:
            s = os.stat(p)
            return ("dir", 0) if os.path.isdir(p) else ("file", s.st_size)

        self.both(kind, self.pick(data, "any"))

    @invariant()
    def same_tree(self) -> None:
        if hasattr(self, "mnt"):
            assert tree(self.mnt) == tree(self.model)

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
    run.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    run().runTest()
