"""A ``file://`` store cannot be escaped: no symlink inside it leads a client outside.

Attacked as a key holder (or an anonymous WebHDFS client) would: symlinks to
an absolute path, ``..`` relative ones, chains, one in a subdirectory, one
swapped with a real directory in a loop while reads run; through the store
itself (every operation) and through every front end of a real node (S3 GET,
WebHDFS OPEN, HTTP GET and PUT, ``meshctl cat`` and ``rm``). A symlink that
stays inside the store is followed, as documented in docs/SEMANTICS.md.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshd.attrs import AttrChange
from meshd.errors import NotFound, PermissionDenied
from meshd.understore.posix import PosixUnderStore
from tests.meshd_proc import MESHCTL, MeshdProcess

SECRET = b"the machine's secret"
ESCAPES = ["etc/secret.txt", "up/secret.txt", "chain1", "sub/deep/secret.txt", "etc", "up"]


def build(tmp: Path, root: Path) -> Path:
    """``root`` with symlinks leading out to ``tmp/outside``; returns the outside dir."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir").mkdir()
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir()
    (root / "sub" / "real.txt").write_bytes(b"inside")
    os.symlink(outside, root / "etc")  # absolute
    os.symlink("../outside", root / "up")  # relative
    os.symlink("chain2", root / "chain1")  # a chain whose last link leaves
    os.symlink("../outside/secret.txt", root / "chain2")
    os.symlink("../../outside", root / "sub" / "deep")  # from a subdirectory
    os.symlink("sub/real.txt", root / "inside")  # stays inside: followed
    return outside


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[PosixUnderStore, Path]]:
    root = tmp_path / "store"
    outside = build(tmp_path, root)
    s = PosixUnderStore(f"file://{root}", {})
    yield s, outside
    await s.close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_every_operation_stays_beneath_the_root(store: tuple[PosixUnderStore, Path]) -> None:
    s, outside = store
    for path in ["etc/secret.txt", "up/secret.txt", "chain1", "sub/deep/secret.txt"]:
        if path == "chain1":  # the link itself has a status (docs/SEMANTICS.md); what it names does not
            info = await s.head(path)
            assert info.attrs is not None and info.attrs.target == "chain2" and info.version == ""
        else:
            with pytest.raises(PermissionDenied, match="outside the store"):
                await s.head(path)
        with pytest.raises(PermissionDenied):
            b"".join([c async for c in s.get_range(path, 0, 100)])
        with pytest.raises(PermissionDenied):
            await s.append(path, _chunks(b"appended"))
        if "/" in path:  # (renaming the link chain1 itself moves a link inside the store: allowed)
            with pytest.raises(PermissionDenied):
                await s.rename(path, "stolen")
    for path in ["etc", "up", "sub/deep"]:
        with pytest.raises(PermissionDenied):
            await s.list(path)
        with pytest.raises(PermissionDenied):
            await s.put(f"{path}/planted", _chunks(b"x"))
        with pytest.raises(PermissionDenied):
            await s.mkdir(f"{path}/made")
        with pytest.raises(PermissionDenied):
            await s.delete(f"{path}/secret.txt")
    with pytest.raises(PermissionDenied):
        await s.rename("sub/real.txt", "etc/real.txt")  # moving a file out
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(outside)) == ["dir", "secret.txt"]
    assert not os.path.lexists(Path(s.root) / "stolen")


async def test_attribute_link_and_node_operations_stay_beneath_the_root(
        store: tuple[PosixUnderStore, Path]) -> None:
    s, outside = store
    before = {p: os.lstat(p) for p in (outside, outside / "secret.txt", outside / "dir")}
    change = AttrChange(mode=0o777, uid=4321, gid=4321, atime=1.0, mtime=1.0, extra={"k": "v"})
    for path in ["etc/secret.txt", "up/secret.txt", "sub/deep/secret.txt", "etc/dir", "up/dir"]:
        with pytest.raises(PermissionDenied):
            await s.setattr(path, change)
    for path in ["etc/planted", "up/planted", "sub/deep/planted"]:
        with pytest.raises(PermissionDenied):
            await s.symlink(path, "/")
        with pytest.raises(PermissionDenied):
            await s.mknod(path, stat.S_IFIFO | 0o666)
        with pytest.raises(PermissionDenied):
            await s.link("sub/real.txt", path)  # a hard link planted outside
        with pytest.raises(PermissionDenied):
            await s.copy("sub/real.txt", path)
        with pytest.raises(PermissionDenied):
            await s.mkdir(path, AttrChange(mode=0o777))
    for path in ["etc/secret.txt", "up/secret.txt", "sub/deep/secret.txt"]:
        with pytest.raises(PermissionDenied):
            await s.link(path, "stolen")  # a name inside for a file outside
    for path in ["etc/secret.txt", "up/secret.txt", "chain1", "sub/deep/secret.txt"]:
        with pytest.raises(PermissionDenied):
            await s.copy(path, "stolen")
        with pytest.raises(PermissionDenied):
            await s.truncate(path, 0)
    for path in ["chain1", "up", "etc"]:  # the link itself: changed, never what it names
        info = await s.setattr(path, AttrChange(mode=0o600, uid=4321, atime=1.0, mtime=1.0))
        assert info.attrs is not None and info.attrs.target is not None and info.version == ""
    await s.link("chain1", "hard")  # a hard link to the link itself, still leading out
    with pytest.raises(PermissionDenied):
        b"".join([c async for c in s.get_range("hard", 0, 100)])
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(outside)) == ["dir", "secret.txt"]
    for p, st in before.items():
        now = os.lstat(p)
        assert (now.st_mode, now.st_uid, now.st_gid, now.st_mtime_ns, now.st_nlink, now.st_size) == (
            st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, st.st_size), p
        assert not [n for n in os.listxattr(p, follow_symlinks=False) if n.startswith("user.mesh")]
    assert not os.path.lexists(Path(s.root) / "stolen")


async def test_a_symlink_that_stays_inside_is_followed(store: tuple[PosixUnderStore, Path]) -> None:
    s, _ = store
    assert (await s.head("inside")).size == 6
    assert b"".join([c async for c in s.get_range("inside", 0, 100)]) == b"inside"
    names = [i.path for i in await s.list("")]
    assert "inside" in names and "sub" in names
    for info in await s.list(""):  # links leading out are listed as the links they are, nothing of outside
        if info.path in ("etc", "up", "chain1", "chain2"):
            assert info.attrs is not None and info.attrs.target is not None
            assert info.version == "" and not info.is_dir and info.size == len(info.attrs.target)


async def test_deleting_a_link_removes_the_link_not_what_it_names(store: tuple[PosixUnderStore, Path]) -> None:
    s, outside = store
    await s.delete("etc")
    assert not os.path.lexists(Path(s.root) / "etc")
    assert (outside / "secret.txt").read_bytes() == SECRET
    # a put over a link replaces the link with a file inside the store
    await s.put("up", _chunks(b"now a file"))
    assert (Path(s.root) / "up").read_bytes() == b"now a file" and not os.path.islink(Path(s.root) / "up")
    assert (outside / "secret.txt").read_bytes() == SECRET


async def test_a_directory_swapped_for_a_link_in_a_loop_never_leaks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = build(tmp_path, root)
    (outside / "f").write_bytes(SECRET)
    real = root / "real"
    real.mkdir()
    (real / "f").write_bytes(b"inside")
    s = PosixUnderStore(f"file://{root}", {})
    stop = threading.Event()

    def swap() -> None:  # "box" flips between the real directory and a link leading out
        link_out, link_in = root / ".out", root / ".in"
        os.symlink(outside, link_out)
        os.symlink("real", link_in)
        while not stop.is_set():
            os.replace(link_out, root / "box")
            os.symlink(outside, link_out)
            os.replace(link_in, root / "box")
            os.symlink("real", link_in)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    seen: set[bytes | str] = set()
    try:
        deadline, reads = time.monotonic() + 20, 0
        while reads < 500 or (not {b"inside", "PermissionDenied"} <= seen and time.monotonic() < deadline):
            reads += 1
            try:
                seen.add(b"".join([c async for c in s.get_range("box/f", 0, 100)]))
            except (PermissionDenied, NotFound) as e:
                seen.add(type(e).__name__)
    finally:
        stop.set()
        t.join()
        await s.close()
    assert SECRET not in seen
    assert b"inside" in seen and "PermissionDenied" in seen  # both sides of the race were hit


# ---------------------------------------------------------------- through a real node


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> tuple[MeshdProcess, Path]:
    root = tmp_path / "data-store"
    outside = build(tmp_path, root)
    n = meshd(mounts=[f"/data=file://{root}"])
    return n, outside


def _get(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_no_front_end_escapes_the_store(node: tuple[MeshdProcess, Path]) -> None:
    n, outside = node
    for path in ["etc/secret.txt", "up/secret.txt", "chain1", "sub/deep/secret.txt"]:
        status, body = _get(f"{n.endpoints['s3']}/data/{path}")
        assert status in (403, 404) and SECRET not in body, (path, status, body[:200])
        assert b"<Code>" in body  # an S3 error document
        status, body = _get(f"{n.endpoints['webhdfs']}/webhdfs/v1/data/{path}?op=OPEN&user.name=eve")
        assert status in (403, 404) and SECRET not in body, (path, status, body[:200])
        assert json.loads(body)["RemoteException"]["message"]
        status, body = _get(f"{n.http}/v1/files/data/{path}")
        assert status == 403 and SECRET not in body, (path, status, body[:200])
        r = subprocess.run([*MESHCTL, "--endpoint", n.endpoint, "cat", f"/data/{path}"], capture_output=True,
                           timeout=60)
        assert r.returncode != 0 and SECRET not in r.stdout
        assert b"outside the store" in r.stderr and b"Traceback" not in r.stderr
        r = subprocess.run([*MESHCTL, "--endpoint", n.endpoint, "rm", f"/data/{path}"], capture_output=True,
                           timeout=60)
        assert r.returncode != 0 or path in ("chain1",), (path, r.stderr)  # rm of a link removes the link
    status, _ = _get(f"{n.http}/v1/files/data/etc/planted", "PUT", b"planted")
    assert status == 403
    status, _ = _get(f"{n.endpoints['webhdfs']}/webhdfs/v1/data/up/planted?op=CREATE&user.name=eve&data=true",
                     "PUT", b"planted")
    assert status in (403, 404)
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(outside)) == ["dir", "secret.txt"]
    with n.client() as c:  # a link that stays inside still reads
        assert c.cat("/data/inside") == b"inside"



def test_the_data_directory_is_private(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> None:
    """It holds the mount table (store credentials), the pages and the local socket."""
    fresh = meshd(data_dir=tmp_path / "fresh")
    assert os.stat(fresh.data_dir).st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    n = meshd(data_dir=loose)
    assert os.stat(loose).st_mode & 0o777 == 0o700
    assert "made it 0700" in n.log.read_text()
