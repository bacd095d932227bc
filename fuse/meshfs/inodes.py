"""meshfs's inodes: a number per path, held while the kernel holds a reference.

A path gets an inode number the first time the kernel sees it (lookup,
create, mkdir, readdir) and keeps it while the kernel holds a reference
(``forget`` releases it); a rename moves the path, the inode stays. Per
inode, meshfs also remembers the version the file had at its last open (the
kernel may keep the file's cached pages while it is unchanged: ``keep_cache``)
and the version of the attributes the kernel was last given (an open that
pins another has the kernel drop them).

**Hard links.** A file with more than one name in its store (``attrs.nlink``
above 1, ``attrs.ino`` its identity there) has ONE inode for all its names, as
the kernel expects: a change through one name shows through every other.
**Unlinked inodes.** A name unlinked while the kernel still holds its inode
(an open file) leaves an *orphan*: its last status, shown with ``nlink`` 0,
for as long as the kernel holds it; the path may meanwhile name a new file.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from meshd import paths
from meshd.attrs import Attrs
from meshd.client.sdk import Status
from meshfs.node import FSError

ROOT = 1


@dataclass
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    version: str
    ttl: float = 1.0  # how long the kernel may keep it (entry and attribute timeout)
    attrs: Attrs | None = None  # mode, owner, times, links as the store keeps them (None: defaults)
    attr_ttl: float | None = None  # the attributes' own timeout, when shorter than ``ttl``


class Inodes:
    def __init__(self) -> None:
        self.paths: dict[int, str] = {ROOT: "/"}
        self.by_path: dict[str, int] = {"/": ROOT}
        self.lookups: dict[int, int] = {ROOT: 1}  # the kernel's references
        self.versions: dict[int, str] = {}  # the version each inode had at its last open (keep_cache)
        self.told: dict[int, str] = {}  # the version of each inode's attributes the kernel was last given
        self.by_key: dict[tuple[str, int], int] = {}  # (mount, the store's inode) -> inode, hard-linked files
        self.key_of: dict[int, tuple[str, int]] = {}
        self.orphans: dict[int, Status] = {}  # unlinked while the kernel holds them: the last status
        self._next = ROOT + 1

    def path_of(self, ino: int) -> str:
        p = self.paths.get(ino)
        if p is None:
            raise FSError(errno.ESTALE, f"inode {ino} is gone")
        return p

    def child(self, parent: int, name: bytes) -> str:
        try:
            n = name.decode()
        except UnicodeDecodeError:
            raise FSError(errno.EINVAL, "file names must be UTF-8") from None
        if n in ("", ".", "..") or "/" in n or "\0" in n:
            raise FSError(errno.EINVAL, f"bad name {n!r}")
        if len(name) > paths.NAME_MAX:
            raise FSError(errno.ENAMETOOLONG)
        return paths.join(self.path_of(parent), n)

    def ino(self, path: str) -> int:
        ino = self.by_path.get(path)
        if ino is None:
            ino = self._next
            self._next += 1
            self.by_path[path], self.paths[ino] = ino, path
            self.lookups[ino] = 0
        return ino

    def remember(self, path: str) -> int:
        """The kernel now holds one more reference to ``path``'s inode."""
        ino = self.ino(path)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return ino

    def bind(self, path: str, st: Status, mount: str | None) -> int:
        """The inode of ``path`` now that its status is ``st``: a hard-linked file's one
        inode for all its names (module docstring), else the path's."""
        a = st.attrs
        if a is None or a.ino is None or mount is None or (a.nlink or 1) < 2 or st.is_dir:
            return self.ino(path)
        key = (mount, a.ino)
        ino = self.by_key.get(key)
        if ino is None or ino not in self.paths:
            ino = self.by_path.get(path) or self.ino(path)
            old = self.key_of.pop(ino, None)
            if old is not None:
                self.by_key.pop(old, None)
            self.by_key[key], self.key_of[ino] = ino, key
        self.by_path[path] = ino
        self.paths.setdefault(ino, path)
        return ino

    def names_of(self, ino: int) -> list[str]:
        """Every name of ``ino`` this mount knows (a hard-linked file has several)."""
        return [p for p, i in self.by_path.items() if i == ino]

    def linked(self, ino: int, path: str) -> None:
        """``path`` is a new name of ``ino`` (link)."""
        self.by_path[path] = ino

    def unlinked(self, path: str, last: Status | None) -> int | None:
        """``path`` is gone: its inode keeps another name it has, else becomes an orphan
        (``last``: its status, shown with nlink 0) while the kernel holds it."""
        ino = self.by_path.pop(path, None)
        if ino is None:
            return None
        if self.paths.get(ino) == path:
            other = next((p for p, i in self.by_path.items() if i == ino), None) if ino in self.key_of else None
            if other is not None:
                self.paths[ino] = other
            elif last is not None and self.lookups.get(ino, 0) > 0:
                self.orphans[ino] = last
        return ino

    def forget(self, ino: int, n: int) -> bool:
        """The kernel dropped ``n`` references; True when the inode is gone."""
        if ino == ROOT:
            return False
        left = self.lookups.get(ino, 0) - n
        if left > 0:
            self.lookups[ino] = left
            return False
        self.lookups.pop(ino, None)
        path = self.paths.pop(ino, None)
        if path is not None and self.by_path.get(path) == ino:
            del self.by_path[path]
        if ino in self.key_of:
            self.by_key.pop(self.key_of.pop(ino), None)
            for p in [p for p, i in self.by_path.items() if i == ino]:
                del self.by_path[p]
        self.orphans.pop(ino, None)
        self.versions.pop(ino, None)
        self.told.pop(ino, None)
        return True

    def moved(self, src: str, dst: str) -> None:
        """A rename: every known path under ``src`` now lives under ``dst``."""
        for path in [p for p in self.by_path if paths.is_within(p, src)]:
            ino = self.by_path.pop(path)
            new = dst + path[len(src):]
            old_ino = self.by_path.get(new)
            if old_ino is not None and old_ino != ino and self.paths.get(old_ino) == new:
                self.paths.pop(old_ino, None)  # the replaced file's inode: the kernel drops it
            self.by_path[new] = ino
            if self.paths.get(ino) in (None, path):
                self.paths[ino] = new

    def opened(self, ino: int, version: str) -> tuple[bool, bool]:
        """``ino`` was opened at ``version``: whether the kernel may keep its cached pages
        (the version is the one of its last open), and whether the attributes the kernel
        holds are stale (it was told another version)."""
        keep = self.versions.get(ino) == version
        self.versions[ino] = version
        stale = self.told.get(ino, version) != version
        self.told[ino] = version
        return keep, stale


__all__ = ["ROOT", "Attr", "Inodes"]
