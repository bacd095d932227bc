"""The ``file://`` store keeps every attribute in the real file (docs/SEMANTICS.md).

Unit level, on real files in ``tmp_path``: statuses from ``lstat`` (mode with its
type bits, owner, times, links, device numbers, symlink targets, extra attributes
as ``user.mesh.x.*`` xattrs), ``setattr``, what ``put`` keeps and sets, exclusive
creates, hard links rewritten in place, symlinks, special files, local copies and
in-place truncation. The tests run as whoever runs the suite: chown to another
owner is asserted as done (root) or refused with NotPermitted (anyone else).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.attrs import AttrChange
from meshd.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    PermissionDenied,
    VersionChanged,
)
from meshd.understore.posix import TMP_PREFIX, PosixUnderStore

ROOT = os.geteuid() == 0
T = 1_700_000_000.123456  # a time with sub-microsecond digits a float still carries
UMASK = os.umask(0)
os.umask(UMASK)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PosixUnderStore]:
    root = tmp_path / "root"
    root.mkdir()
    s = PosixUnderStore(root.as_uri(), {})
    yield s
    await s.close()


class Boom(Exception):
    pass


def at(s: PosixUnderStore, rel: str) -> Path:
    return Path(s.root) / rel


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def read(s: PosixUnderStore, path: str) -> bytes:
    return b"".join([c async for c in s.get_range(path, 0, 1 << 30)])


def no_tmp_left(s: PosixUnderStore) -> bool:
    return not [n for _, _, files in os.walk(s.root) for n in files if n.startswith(TMP_PREFIX)]


# ---------------------------------------------------------------- statuses


async def test_capabilities(store: PosixUnderStore) -> None:
    c = store.capabilities
    assert c.attrs and c.symlinks and c.links and c.special and c.rename and c.directories and c.append


async def test_head_and_list_return_the_files_attributes(store: PosixUnderStore) -> None:
    p = at(store, "d/f")
    p.parent.mkdir()
    p.write_bytes(b"hello")
    os.chmod(p, 0o4751)
    os.setxattr(p, "user.mesh.x.replication", b"3")
    os.setxattr(p, "user.other", b"not the mesh's")
    os.utime(p, ns=(1_600_000_000_111_111_111, 1_650_000_000_222_222_222))
    st = os.lstat(p)
    info = await store.head("d/f")
    a = info.attrs
    assert a is not None
    assert (a.mode, a.uid, a.gid, a.nlink, a.ino, a.rdev, a.target) == (
        stat.S_IFREG | 0o4751, st.st_uid, st.st_gid, 1, st.st_ino, 0, None)
    assert a.atime == pytest.approx(1_600_000_000.111111111, abs=1e-6)
    assert a.ctime == pytest.approx(st.st_ctime_ns / 1e9, abs=1e-6)
    assert info.mtime == pytest.approx(1_650_000_000.222222222, abs=1e-6)
    assert dict(a.extra) == {"replication": "3"}  # only the mesh's own names
    assert info.size == 5 and not info.is_dir and info.version
    listed = {i.path: i for i in await store.list("d")}
    assert listed["d/f"] == info
    d = await store.head("d")
    assert d.is_dir and d.attrs is not None and stat.S_ISDIR(d.attrs.mode or 0)
    root = await store.head("")
    assert root.is_dir and root.attrs is not None and root.attrs.ino == os.stat(store.root).st_ino


async def test_symlink_statuses(store: PosixUnderStore, tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    at(store, "f").write_bytes(b"twelve bytes")
    at(store, "dir").mkdir()
    os.symlink("f", at(store, "to_file"))
    os.symlink("dir", at(store, "to_dir"))
    os.symlink("nowhere", at(store, "dangling"))
    os.symlink(str(tmp_path / "outside"), at(store, "escaping"))
    os.symlink("loop", at(store, "loop"))
    f = await store.head("f")
    # beneath the root: data of what it names, attributes of the link
    link = await store.head("to_file")
    assert (link.size, link.version, link.is_dir, link.mtime) == (f.size, f.version, False, f.mtime)
    assert link.attrs is not None and link.attrs.target == "f" and link.attrs.mode == stat.S_IFLNK | 0o777
    assert link.attrs.ino == os.lstat(at(store, "to_file")).st_ino != (f.attrs and f.attrs.ino)
    assert await read(store, "to_file") == b"twelve bytes"
    d = await store.head("to_dir")
    assert d.is_dir and d.version == "" and d.attrs is not None and d.attrs.target == "dir"
    # dangling, leading out, a loop: the link itself, listed, unreadable
    for name, target in [("dangling", "nowhere"), ("escaping", str(tmp_path / "outside")), ("loop", "loop")]:
        info = await store.head(name)
        assert info.attrs is not None and info.attrs.target == target
        assert (info.size, info.version, info.is_dir) == (len(target.encode()), "", False)
    listed = {i.path: i for i in await store.list("")}
    assert set(listed) == {"f", "dir", "to_file", "to_dir", "dangling", "escaping", "loop"}
    assert listed["escaping"] == await store.head("escaping")
    with pytest.raises(NotFound):
        await read(store, "dangling")
    with pytest.raises(PermissionDenied):
        await read(store, "escaping")
    with pytest.raises(NotFound, match="symlink loop"):
        await read(store, "loop")


async def test_special_files_have_a_status_but_no_bytes(store: PosixUnderStore) -> None:
    os.mkfifo(at(store, "fifo"), 0o640)
    info = await store.head("fifo")
    assert (info.size, info.is_dir) == (0, False) and info.version
    assert info.attrs is not None and stat.S_ISFIFO(info.attrs.mode or 0) and info.attrs.is_special
    # a FIFO opened for reading would block until a writer comes: refused before any open
    with pytest.raises(NotSupported, match="not a regular file"):
        await read(store, "fifo")
    with pytest.raises(NotSupported):
        await store.read_all("fifo", 0, 10)
    with pytest.raises(NotSupported):
        await store.append("fifo", chunks(b"x"))
    with pytest.raises(NotSupported):
        await store.truncate("fifo", 0)
    with pytest.raises(NotSupported):
        await store.copy("fifo", "copied")
    os.symlink("fifo", at(store, "to_fifo"))  # through a link too
    with pytest.raises(NotSupported):
        await read(store, "to_fifo")
    assert [i.path for i in await store.list("")] == ["fifo", "to_fifo"]


# ---------------------------------------------------------------- setattr


async def test_setattr_mode_owner_times_extra(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"x")
    before = os.stat(p)
    info = await store.setattr("f", AttrChange(mode=0o640, atime=T, extra={"acl": "user::rw-", "k": "v"}))
    st = os.stat(p)
    assert st.st_mode == stat.S_IFREG | 0o640 and info.attrs is not None and info.attrs.mode == st.st_mode
    assert st.st_atime_ns == round(T * 1e9) and st.st_mtime_ns == before.st_mtime_ns  # mtime kept
    assert os.getxattr(p, "user.mesh.x.acl") == b"user::rw-" and dict(info.attrs.extra) == {"acl": "user::rw-",
                                                                                              "k": "v"}
    info = await store.setattr("f", AttrChange(mtime=T + 1, extra={"k": None, "gone": None}))
    st = os.stat(p)
    assert st.st_mtime_ns == round((T + 1) * 1e9) and st.st_atime_ns == round(T * 1e9)  # atime kept
    assert info.mtime == pytest.approx(T + 1) and info.attrs is not None and dict(info.attrs.extra) == {
        "acl": "user::rw-"}
    assert info == await store.head("f")
    if ROOT:
        info = await store.setattr("f", AttrChange(uid=1234, gid=5678))
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 5678)
        assert info.attrs is not None and (info.attrs.uid, info.attrs.gid) == (1234, 5678)
        info = await store.setattr("f", AttrChange(gid=42))  # -1: the uid unchanged
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 42)
    else:
        with pytest.raises(NotPermitted):
            await store.setattr("f", AttrChange(uid=0))
    d = await store.setattr("", AttrChange(mode=0o751))  # the root itself
    assert os.stat(store.root).st_mode & 0o7777 == 0o751 and d.is_dir
    with pytest.raises(NotFound):
        await store.setattr("missing", AttrChange(mode=0o600))


async def test_setattr_of_a_symlink_changes_the_link_not_its_target(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"x")
    os.chmod(p, 0o600)
    os.symlink("f", at(store, "l"))
    target_before = os.stat(p)
    info = await store.setattr("l", AttrChange(mode=0o644, atime=T, mtime=T))
    assert info.attrs is not None and info.attrs.target == "f" and info.attrs.mode == stat.S_IFLNK | 0o777
    assert os.lstat(at(store, "l")).st_mtime_ns == round(T * 1e9)
    after = os.stat(p)
    assert (after.st_mode, after.st_mtime_ns, after.st_atime_ns) == (
        target_before.st_mode, target_before.st_mtime_ns, target_before.st_atime_ns)
    if ROOT:
        await store.setattr("l", AttrChange(uid=4321))
        assert os.lstat(at(store, "l")).st_uid == 4321 and os.stat(p).st_uid == target_before.st_uid
    with pytest.raises(NotPermitted, match="symlinks or special files"):
        await store.setattr("l", AttrChange(extra={"k": "v"}))


def _immutable(path: Path) -> None:
    """chattr +i (root only): every change of the file then fails with EPERM."""
    FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x40086602, 0x10
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_IMMUTABLE_FL))
    finally:
        os.close(fd)


def _mutable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", 0))
    finally:
        os.close(fd)


async def test_eperm_is_not_permitted(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"x")
    if not ROOT:  # anyone else may not give a file away
        with pytest.raises(NotPermitted):
            await store.setattr("f", AttrChange(uid=0))
        return
    _immutable(p)
    try:
        with pytest.raises(NotPermitted):
            await store.setattr("f", AttrChange(mode=0o600))
        with pytest.raises(NotPermitted):
            await store.link("f", "hard")
    finally:
        _mutable(p)


# ---------------------------------------------------------------- put


async def test_put_new_file_mode_and_change(store: PosixUnderStore) -> None:
    info = await store.put("a", chunks(b"a"))
    assert os.stat(at(store, "a")).st_mode == stat.S_IFREG | (0o666 & ~UMASK)
    assert info.attrs is not None and info.attrs.mode == stat.S_IFREG | (0o666 & ~UMASK)
    change = AttrChange(mode=0o2750, atime=T, mtime=T + 5, extra={"r": "2"})
    if ROOT:
        change = AttrChange(0o2750, 1000, 2000, T, T + 5, {"r": "2"})
    info = await store.put("b", chunks(b"bb"), change=change)
    st = os.stat(at(store, "b"))
    assert st.st_mode == stat.S_IFREG | 0o2750 and st.st_mtime_ns == round((T + 5) * 1e9)
    assert st.st_atime_ns == round(T * 1e9) and os.getxattr(at(store, "b"), "user.mesh.x.r") == b"2"
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1000, 2000)
    assert info == await store.head("b")  # the status returned is the file's, attributes included
    assert no_tmp_left(store)


async def test_put_replacing_keeps_mode_owner_and_user_xattrs(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"old")
    if ROOT:
        os.chown(p, 1234, 5678)
    os.chmod(p, 0o4711)  # (after the chown, which clears setuid)
    os.setxattr(p, "user.mesh.x.k", b"v")
    os.setxattr(p, "user.app", b"kept")
    old_ino = os.stat(p).st_ino
    info = await store.put("f", chunks(b"new ", b"bytes"))
    st = os.stat(p)
    assert p.read_bytes() == b"new bytes" and st.st_ino != old_ino  # a new file, renamed into place
    assert st.st_mode == stat.S_IFREG | 0o4711 and os.getxattr(p, "user.app") == b"kept"
    assert info.attrs is not None and dict(info.attrs.extra) == {"k": "v"}
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    # a change wins over what is kept
    await store.put("f", chunks(b"x"), change=AttrChange(mode=0o600, extra={"k": None}))
    assert os.stat(p).st_mode & 0o7777 == 0o600 and "user.mesh.x.k" not in os.listxattr(p)
    assert os.getxattr(p, "user.app") == b"kept"


async def test_put_over_a_directory_or_a_symlink(store: PosixUnderStore) -> None:
    at(store, "d").mkdir()
    with pytest.raises(IsADirectory):
        await store.put("d", chunks(b"x"))
    at(store, "t").write_bytes(b"target")
    os.chmod(at(store, "t"), 0o600)
    os.symlink("t", at(store, "l"))
    await store.put("l", chunks(b"file now"))  # replaces the link with a file, not its target
    assert not os.path.islink(at(store, "l")) and at(store, "t").read_bytes() == b"target"
    assert os.stat(at(store, "l")).st_mode & 0o7777 == 0o666 & ~UMASK


async def test_put_to_a_hard_linked_file_rewrites_it_in_place(store: PosixUnderStore) -> None:
    a, b = at(store, "a"), at(store, "sub/b")
    a.write_bytes(b"the old contents, longer")
    os.chmod(a, 0o640)
    b.parent.mkdir()
    os.link(a, b)
    ino = os.stat(a).st_ino
    info = await store.put("sub/b", chunks(b"new"), change=AttrChange(mtime=T))
    assert info == await store.head("sub/b") and info.attrs is not None and info.attrs.nlink == 2
    assert a.read_bytes() == b.read_bytes() == b"new"  # every name sees the one file
    st = os.stat(a)
    assert st.st_ino == ino and st.st_nlink == 2 and st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == round(T * 1e9)
    assert no_tmp_left(store)

    # same size, same mtime given: still a new version (no stale page can match it)
    v1 = (await store.put("a", chunks(b"one"), change=AttrChange(mtime=T))).version
    v2 = (await store.put("a", chunks(b"two"), change=AttrChange(mtime=T))).version
    assert v1 != v2 and v2 == (await store.head("sub/b")).version and b.read_bytes() == b"two"

    async def broken() -> AsyncIterator[bytes]:
        yield b"half"
        raise Boom("client went away")

    with pytest.raises(Boom):
        await store.put("a", broken())
    assert b.read_bytes() == b"two" and no_tmp_left(store)  # the body never reached the file


async def test_exclusive_put(store: PosixUnderStore) -> None:
    await store.put("f", chunks(b"first"), exclusive=True)
    with pytest.raises(AlreadyExists):
        await store.put("f", chunks(b"second"), exclusive=True)
    os.symlink("nowhere", at(store, "dangling"))
    with pytest.raises(AlreadyExists):  # a dangling link is something too
        await store.put("dangling", chunks(b"x"), exclusive=True)
    assert at(store, "f").read_bytes() == b"first" and os.path.islink(at(store, "dangling"))
    assert no_tmp_left(store)


async def test_two_racing_exclusive_puts_exactly_one_wins(store: PosixUnderStore) -> None:
    go, both = asyncio.Event(), asyncio.Event()
    started = 0

    async def body(data: bytes) -> AsyncIterator[bytes]:
        nonlocal started
        started += 1  # both puts found nothing at the path before either wrote
        if started == 2:
            both.set()
        await go.wait()
        yield data

    tasks = [asyncio.create_task(store.put("f", body(d), exclusive=True)) for d in (b"one", b"two")]
    await both.wait()
    go.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], AlreadyExists)
    winner = b"one" if results[0] is won[0] else b"two"
    assert at(store, "f").read_bytes() == winner and os.stat(at(store, "f")).st_nlink == 1
    assert no_tmp_left(store)


# ---------------------------------------------------------------- mkdir, symlink, mknod


async def test_mkdir_with_a_mode_owner_and_times(store: PosixUnderStore) -> None:
    await store.mkdir("a/b/c", AttrChange(mode=0o707, mtime=T, uid=77 if ROOT else None))
    st = os.stat(at(store, "a/b/c"))
    assert st.st_mode == stat.S_IFDIR | 0o707 and st.st_mtime_ns == round(T * 1e9)  # not cut by the umask
    assert os.stat(at(store, "a")).st_mode & 0o777 == 0o777 & ~UMASK  # parents: the default
    if ROOT:
        assert st.st_uid == 77
    await store.mkdir("a/b/c", AttrChange(mode=0o700))  # existing: not an error, not changed
    assert os.stat(at(store, "a/b/c")).st_mode & 0o7777 == 0o707


async def test_symlink(store: PosixUnderStore) -> None:
    info = await store.symlink("d/l", "../t", AttrChange(mtime=T, uid=99 if ROOT else None))
    assert os.readlink(at(store, "d/l")) == "../t"
    assert info.attrs is not None and info.attrs.target == "../t" and info.version == "" and info.size == 4
    assert os.lstat(at(store, "d/l")).st_mtime_ns == round(T * 1e9)
    if ROOT:
        assert os.lstat(at(store, "d/l")).st_uid == 99
    at(store, "t").write_bytes(b"now there")
    assert (await store.head("d/l")).size == 9  # followed now that it names a file beneath
    for name in ("d/l", "t", "d"):
        with pytest.raises(AlreadyExists):
            await store.symlink(name, "x")
    with pytest.raises(InvalidArgument):
        await store.symlink("nul", "a\x00b")
    with pytest.raises(NotPermitted):
        await store.symlink("x", "t", AttrChange(extra={"k": "v"}))
    assert not os.path.lexists(at(store, "x")) and not os.path.lexists(at(store, "nul"))


async def test_mknod(store: PosixUnderStore) -> None:
    info = await store.mknod("p", stat.S_IFIFO | 0o622)
    st = os.lstat(at(store, "p"))
    assert st.st_mode == stat.S_IFIFO | 0o622 and info.attrs is not None and info.attrs.mode == st.st_mode
    with pytest.raises(AlreadyExists):
        await store.mknod("p", stat.S_IFIFO | 0o600)
    await store.mknod("s", stat.S_IFSOCK | 0o600)
    assert stat.S_ISSOCK(os.lstat(at(store, "s")).st_mode)
    for mode in (stat.S_IFREG | 0o600, stat.S_IFDIR | 0o700, stat.S_IFLNK | 0o777, 0o600):
        with pytest.raises(InvalidArgument):
            await store.mknod("bad", mode)
    null = os.makedev(1, 3)
    if ROOT:
        info = await store.mknod("null", stat.S_IFCHR | 0o666, null)
        assert info.attrs is not None and info.attrs.rdev == null and stat.S_ISCHR(info.attrs.mode or 0)
        assert info.size == 0 and not info.is_dir and info.version
        with pytest.raises(NotSupported):  # a device node is never opened
            await read(store, "null")
    else:
        with pytest.raises(NotPermitted):
            await store.mknod("null", stat.S_IFCHR | 0o666, null)


# ---------------------------------------------------------------- link, copy, truncate


async def test_link(store: PosixUnderStore) -> None:
    at(store, "f").write_bytes(b"data")
    info = await store.link("f", "dir/g")
    assert info.path == "dir/g" and info.attrs is not None and info.attrs.nlink == 2
    assert os.stat(at(store, "f")).st_ino == os.stat(at(store, "dir/g")).st_ino
    assert info.version == (await store.head("f")).version
    with pytest.raises(AlreadyExists):
        await store.link("f", "dir/g")
    with pytest.raises(NotFound):
        await store.link("missing", "h")
    with pytest.raises(NotPermitted):  # Linux links no directories
        await store.link("dir", "dir2")
    os.symlink("f", at(store, "l"))
    await store.link("l", "l2")  # the link itself, never followed
    assert os.path.islink(at(store, "l2")) and os.lstat(at(store, "l2")).st_nlink == 2


async def test_copy(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"copy me" * 1000)
    os.chmod(p, 0o640)
    if ROOT:
        os.chown(p, 11, 22)
    os.setxattr(p, "user.mesh.x.k", b"v")
    os.utime(p, ns=(round(T * 1e9), round((T + 1) * 1e9)))
    src = await store.head("f")
    info = await store.copy("f", "d/g", src.version)
    assert info == await store.head("d/g")
    g = at(store, "d/g")
    st = os.stat(g)
    assert st.st_mode == stat.S_IFREG | 0o640 and st.st_mtime_ns == round((T + 1) * 1e9)
    assert st.st_atime_ns == round(T * 1e9)
    assert g.read_bytes() == p.read_bytes() and st.st_ino != os.stat(p).st_ino
    assert os.getxattr(g, "user.mesh.x.k") == b"v"
    if ROOT:
        assert (st.st_uid, st.st_gid) == (11, 22)
    p.write_bytes(b"changed")
    with pytest.raises(VersionChanged):
        await store.copy("f", "h", src.version)
    assert not os.path.lexists(at(store, "h"))
    with pytest.raises(IsADirectory):
        await store.copy("d", "h")
    with pytest.raises(IsADirectory):
        await store.copy("f", "d")
    with pytest.raises(NotFound):
        await store.copy("missing", "h")
    assert no_tmp_left(store)


async def test_truncate_in_place(store: PosixUnderStore) -> None:
    p = at(store, "f")
    p.write_bytes(b"0123456789")
    os.link(p, at(store, "g"))
    ino = os.stat(p).st_ino
    v = (await store.head("f")).version
    info = await store.truncate("f", 4, v)
    assert p.read_bytes() == b"0123" and at(store, "g").read_bytes() == b"0123"
    assert info.size == 4 and info.version != v and os.stat(p).st_ino == ino
    info = await store.truncate("g", 8)
    assert p.read_bytes() == b"0123\0\0\0\0" and info.size == 8
    with pytest.raises(VersionChanged):
        await store.truncate("f", 0, v)
    assert p.read_bytes() == b"0123\0\0\0\0"
    at(store, "d").mkdir()
    with pytest.raises(IsADirectory):
        await store.truncate("d", 0)
    with pytest.raises(NotFound):
        await store.truncate("missing", 0)
    with pytest.raises(InvalidArgument):
        await store.truncate("f", -1)


async def test_paths_longer_than_a_system_call_takes_work_and_stay_beneath(store: PosixUnderStore,
                                                                            tmp_path: Path) -> None:
    """A mesh path may be longer than PATH_MAX below the store root (pjdfstest's PATH_MAX-1
    paths under a meshfs mount point): opened a stretch at a time, still beneath the root."""
    s = store
    parts = ["d" * 250 + str(i) for i in range(20)]  # about 5,000 bytes
    rel = "/".join(parts)
    await s.mkdir(rel)
    info = await s.put(rel + "/f", chunks(b"deep"))
    assert info.size == 4
    assert await s.read_all(rel + "/f", 0, 4) == b"deep"
    assert (await s.head(rel + "/f")).attrs is not None
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink("../" * 21 + "outside", _long_join(s.root, rel, "up"))  # climbs to tmp_path/outside
    with pytest.raises((PermissionDenied, NotFound)):
        await s.read_all(rel + "/up", 0, 6)
    await s.delete(rel + "/f")


def _long_join(root: str, rel: str, name: str) -> str:
    """A place for a symlink under a path too long to name in one call: made through a
    descriptor of its directory, given back as the /proc path of that descriptor."""
    fd = os.open(root, os.O_PATH)
    for p in rel.split("/"):
        nxt = os.open(p, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    _KEEP.append(fd)
    return f"/proc/self/fd/{fd}/{name}"


_KEEP: list[int] = []


async def test_rewriting_a_file_leaves_its_directorys_times(store: PosixUnderStore) -> None:
    """A rewrite (temp file, rename) changes the directory no more than an in-place write:
    its mtime stays; creating a name does change it."""
    await store.mkdir("d")
    await store.put("d/f", chunks(b"one"))
    os.utime(at(store, "d"), ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    await store.put("d/f", chunks(b"two"))
    assert os.stat(at(store, "d")).st_mtime_ns == 1_000_000_000_000_000_000
    await store.put("d/g", chunks(b"new"))
    assert os.stat(at(store, "d")).st_mtime_ns > 1_000_000_000_000_000_000
