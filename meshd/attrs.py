"""File attributes the mesh keeps with the data: mode, owner, times, links (docs/SEMANTICS.md).

Under everything (stdlib only): the under-stores return them (``ObjectInfo.attrs``),
the metadata shards keep them (``FileStatus.attrs``), the metadata wire carries
them, and the clients (meshfs, ``mesh://``, WebHDFS) show them.

An under-store keeps them in its own terms: a ``file://`` store in the real file
(``lstat``, ``chmod``, ``chown``, ``utime``, symlinks, device nodes, hard links),
an ``s3://`` store in object user metadata as s3fs-fuse and rclone write it
(``x-amz-meta-mode``, ``-uid``, ``-gid``, ``-mtime``, ``-atime``, ``-ctime``),
an ``hdfs://`` store through SETPERMISSION / SETOWNER / SETTIMES. A store that
keeps none returns ``attrs=None`` and clients show their defaults.

``Attrs.mode`` is a whole ``st_mode``: the file type bits too (``S_IFLNK`` for a
symlink, whose ``target`` is set; ``S_IFIFO``, ``S_IFCHR``, ``S_IFBLK``,
``S_IFSOCK`` for special files, whose ``rdev`` is set). ``extra`` carries what
a front end keeps beside (WebHDFS replication and ACL entries), as short
strings under short names.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# Linux's own limits, which the mesh's paths follow (paths.NAME_MAX is the same)
EXTRA_MAX = 16  # extra attributes per file
EXTRA_VALUE_MAX = 1024  # bytes of one extra attribute's value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


CREATE_MODE = 0o666 & ~_umask()  # the mode a plain create gives a file (the process's umask at start)


@dataclass(frozen=True, slots=True)
class Attrs:
    """What a store keeps of a file beyond its bytes; ``None`` fields: not kept."""

    mode: int | None = None  # st_mode: type and permission bits
    uid: int | None = None
    gid: int | None = None
    atime: float | None = None
    ctime: float | None = None
    nlink: int | None = None
    ino: int | None = None  # the store's identity of the file (hard links share it)
    rdev: int | None = None  # device number of a character or block special file
    target: str | None = None  # the target of a symlink
    extra: Mapping[str, str] = field(default_factory=dict)
    mtime: float | None = None  # the entry's own mtime where the status's describes another (a followed link)

    @property
    def is_symlink(self) -> bool:
        return self.target is not None or (self.mode is not None and stat.S_ISLNK(self.mode))

    @property
    def is_special(self) -> bool:
        """A FIFO, socket or device node (no bytes to read)."""
        m = self.mode
        return m is not None and (stat.S_ISFIFO(m) or stat.S_ISCHR(m) or stat.S_ISBLK(m) or stat.S_ISSOCK(m))

    def to_wire(self) -> list[Any]:
        w = [self.mode, self.uid, self.gid, self.atime, self.ctime, self.nlink, self.ino, self.rdev,
             self.target, dict(self.extra) if self.extra else None]
        if self.mtime is not None:
            w.append(self.mtime)
        return w

    @classmethod
    def from_wire(cls, w: Any) -> Attrs | None:
        """``None`` for ``None``; the attributes of a list written by :meth:`to_wire`
        (a shorter list, from an older writer, leaves the rest unknown)."""
        if w is None:
            return None
        if not isinstance(w, list):
            raise ValueError("attributes must be a list")
        w = list(w) + [None] * (11 - len(w))
        mode, uid, gid, atime, ctime, nlink, ino, rdev, target, extra, mtime = w[:11]
        return cls(_int(mode), _int(uid), _int(gid), _num(atime), _num(ctime), _int(nlink), _int(ino), _int(rdev),
                   None if target is None else str(target),
                   {str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else {}, _num(mtime))


@dataclass(frozen=True, slots=True)
class AttrChange:
    """A change of attributes (chmod, chown, utimes, extra); ``None``: leave as is.
    ``mode`` is permission bits only (``0o7777``); times are seconds since the epoch
    (the caller resolves "now"). ``extra`` maps a name to its new value, or ``None``
    to remove it."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime: float | None = None
    mtime: float | None = None
    extra: Mapping[str, str | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.mode, self.uid, self.gid, self.atime, self.mtime)) or bool(self.extra)

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: v for k, v in (("m", self.mode), ("u", self.uid), ("g", self.gid),
                                                ("a", self.atime), ("t", self.mtime)) if v is not None}
        if self.extra:
            d["x"] = dict(self.extra)
        return d

    @classmethod
    def from_wire(cls, d: Any) -> AttrChange:
        """The change a client sent; ValueError naming what is wrong."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError("an attribute change must be an object")
        unknown = set(d) - {"m", "u", "g", "a", "t", "x"}
        if unknown:
            raise ValueError(f"unknown attribute change keys: {sorted(unknown)}")
        mode = _int(d.get("m"))
        if mode is not None and not 0 <= mode <= 0o7777:
            raise ValueError(f"mode {mode:o} is not a permission mode (0-7777 octal)")
        uid, gid = _int(d.get("u")), _int(d.get("g"))
        for name, v in (("uid", uid), ("gid", gid)):
            if v is not None and not 0 <= v < (1 << 32) - 1:
                raise ValueError(f"{name} {v} is out of range")
        extra = d.get("x") or {}
        if not isinstance(extra, dict) or len(extra) > EXTRA_MAX:
            raise ValueError(f"extra attributes must be an object of at most {EXTRA_MAX} names")
        for k, v in extra.items():
            if not isinstance(k, str) or not k or len(k) > 64 or not k.replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"bad extra attribute name {k!r}")
            if v is not None and (not isinstance(v, str) or len(v.encode()) > EXTRA_VALUE_MAX):
                raise ValueError(f"extra attribute {k!r} must be a string of at most {EXTRA_VALUE_MAX} bytes")
        return cls(mode, uid, gid, _num(d.get("a")), _num(d.get("t")), dict(extra))

    def applied(self, a: Attrs | None, now: float) -> Attrs:
        """``a`` with this change made (ctime set to ``now``), for stores that keep
        attributes as data (object metadata)."""
        a = a or Attrs()
        mode = a.mode
        if self.mode is not None:
            mode = (stat.S_IFMT(mode) if mode is not None else 0) | self.mode
        extra = dict(a.extra)
        for k, v in self.extra.items():
            if v is None:
                extra.pop(k, None)
            else:
                extra[k] = v
        return Attrs(mode, self.uid if self.uid is not None else a.uid, self.gid if self.gid is not None else a.gid,
                     self.atime if self.atime is not None else a.atime, now, a.nlink, a.ino, a.rdev, a.target, extra)


def _int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{v!r} is not a time")
    return float(v)


# ---- owners: HDFS speaks names, the stores keep numbers (WebHDFS and hdfs:// stores) -------


@lru_cache(maxsize=1024)
def uid_of(name: str) -> int | None:
    """The local uid of user ``name``, None when this machine does not know it."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):
        return None


@lru_cache(maxsize=1024)
def gid_of(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        return None


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The local name of ``uid``, else the number itself."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, ValueError, OverflowError):
        return str(uid)


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, ValueError, OverflowError):
        return str(gid)


def symlink_mode() -> int:
    return stat.S_IFLNK | 0o777


__all__ = ["EXTRA_MAX", "EXTRA_VALUE_MAX", "AttrChange", "Attrs", "gid_of", "group_name", "symlink_mode", "uid_of",
           "user_name"]
