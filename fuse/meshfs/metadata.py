"""meshfs's statuses: the client core's metadata cache, as the mount uses it.

Statuses, whole listings and "not found" answers are kept in a
:class:`meshd.client.metacache.MetaCache` for ``ttl_of`` their path (the
mount's ``sync_interval`` when longer than ``ttl``, at most ``max_ttl``;
meshd/client/metacache.py), and the kernel is told to keep entries and
attributes as long. A file being written through this mount has the status
of what was written so far. An ``open`` asks for a status fetched within
``ttl`` (``fresh_within``), however long listings are kept.

**Listing instead of looking up.** After ``LIST_AFTER`` lookups of unknown
names in one directory on a mount whose listings are kept (``ttl_of`` above
``ttl``), the directory is listed once instead of asked name by name (one
request to the store instead of one per name, as a walk of a tree needs).
Only a directory that fits in one page (``LIST_PAGE``) is kept so; a bigger
one is not tried again.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING

from meshd import paths
from meshd.client.metacache import MetaCache, MountRules
from meshd.client.sdk import Status
from meshd.errors import MeshError, NotFound
from meshfs.node import FSError, Node

if TYPE_CHECKING:
    from meshfs.files import Staged

log = logging.getLogger(__name__)

LIST_AFTER = 4  # lookups in one directory before it is listed whole (mounts that keep listings)
LIST_PAGE = 1000


def lstat_view(st: Status) -> Status:
    """``st`` as meshfs shows it: a symlink is a link, whatever it names (the node's
    status of a link beneath its store describes the target, for data readers)."""
    a = st.attrs
    if a is None or a.target is None:
        return st
    size, mtime = len(a.target.encode()), a.mtime if a.mtime is not None else st.mtime
    if not st.is_dir and st.size == size and st.mtime == mtime:
        return st
    return Status(st.path, size, mtime, st.version, False, a)


class Metadata:
    def __init__(self, node: Node, ttl: float, max_ttl: float, writing: dict[str, Staged]) -> None:
        self.node = node
        self.ttl = ttl
        self.rules = MountRules(ttl, max_ttl)
        self.max_ttl = self.rules.max_ttl
        self.cache = MetaCache()
        self.writing = writing  # files open for writing through this mount, staged (meshfs.files)
        self._with_attrs: set[str] = set()  # mounts whose store returned attributes: they keep them
        self._lookups_in: dict[str, int] = {}  # directory -> lookups of names not known in it
        self._unlistable: set[str] = set()  # directories too big to list for a lookup

    # ---- the mount table -------------------------------------------------

    async def refresh_mounts(self) -> None:
        now = time.monotonic()
        if self.rules.due(now):
            got = await self.node.call(lambda c: [(m.path, dict(m.options)) for m in c.mounts()])
            self.rules.update(got, now)

    async def writable(self, path: str) -> None:
        """Fail early, before a write starts: EROFS on a read-only mount, EACCES outside every
        mount (the directories above the mount points are the mesh's, not the user's)."""
        await self.refresh_mounts()
        best = self.rules.mount_of(path)
        if best is None or best[0] == path:
            raise FSError(errno.EACCES, f"{path} is not inside a mount")
        if self.rules.read_only(best):
            raise FSError(errno.EROFS, f"{best[0]} is mounted read-only")

    def mount_root(self, path: str) -> str | None:
        """The mount point ``path`` is under (None above the mount points)."""
        m = self.rules.mount_of(path)
        return m[0] if m is not None else None

    def ask_attrs(self, st: Status) -> bool:
        """Whether a status without attributes (an entry of an S3 listing) is to be completed
        by asking for the file's own status: on a mount whose statuses live ``ttl`` (the
        default), yes, as any stat after ``ttl`` would; on one that keeps them longer (its
        ``sync_interval``), no: it shows the mount's defaults until the file's own status is
        fetched (a lookup, an open), as it shows other things it learned that long ago."""
        return st.attrs is None and not st.is_dir and self.rules.ttl_of(st.path) <= self.ttl \
            and self.keeps_attrs(st.path)

    def keeps_attrs(self, path: str) -> bool:
        """Whether ``path``'s store keeps attributes (it returned some before): then a
        status without them (an entry of an S3 listing) is not the whole status."""
        return self.mount_root(path) in self._with_attrs

    def _learn(self, st: Status) -> None:
        if st.attrs is not None:
            root = self.mount_root(st.path)
            if root is not None and root not in self._with_attrs:
                self._with_attrs.add(root)

    def ttl_of(self, path: str) -> float:
        """How long a status of ``path`` is kept here and in the kernel (MountRules.ttl_of)."""
        return self.rules.ttl_of(path)

    def attr_ttl(self, path: str) -> float:
        """What the kernel is told to keep ``path``'s attributes: ``ttl`` while it is being
        written (its size grows), else as long as this client keeps them."""
        return self.ttl if path in self.writing else self.rules.ttl_of(path)

    def children_ttl(self, path: str) -> float | None:
        """``ttl_of`` every entry of directory ``path`` when they share one (``path`` is inside
        a mount), else None (a directory above mount points: each entry may be one)."""
        m = self.rules.mount_of(path)
        if m is None or self.writing:
            return None
        return self.rules.ttl_of(paths.join(path, "x"))

    # ---- statuses --------------------------------------------------------

    def remember_status(self, st: Status | None, path: str, now: float | None = None) -> None:
        """Keep a status the node gave (``ttl_of`` its path), or a "not found" (``ttl``)."""
        now = time.monotonic() if now is None else now
        if st is not None and st.attrs is not None:
            self._learn(st)
            st = lstat_view(st)
        self.cache.put(path, st, self.ttl if st is None else self.rules.ttl_of(path), now)

    def keep_listing(self, path: str, listed: list[Status], now: float) -> None:
        """Keep a whole listing of ``path`` (not while a file is being written into it: the
        listing would miss it)."""
        if path not in self.writing_dirs():
            self.cache.keep_listing(path, [lstat_view(s) for s in listed], self.rules.ttl_of(path), now)

    def invalidate(self, path: str) -> None:
        """``path`` changed here: forget its status, its parent's, and both listings."""
        self.cache.invalidate(path)

    def writing_dirs(self) -> set[str]:
        return {paths.parent(p) for p in self.writing}

    def merge_writing(self, path: str, got: list[Status]) -> list[Status]:
        """A listing of ``path`` with the files being written into it."""
        staged = {p: w for p, w in self.writing.items() if paths.parent(p) == path}
        return [s for s in got if s.path not in staged] + [w.status() for w in staged.values()]

    async def status(self, path: str, fresh_within: float | None = None) -> Status:
        """The status of ``path``: from this client's cache while it is kept, or fetched
        when it is older than ``fresh_within`` seconds (if given)."""
        w = self.writing.get(path)
        if w is not None:
            return w.status()
        await self.refresh_mounts()
        now = time.monotonic()
        hit, st = self.cache.get(path, now, fresh_within)
        if hit:
            if st is None:
                raise FSError(errno.ENOENT)
            return st
        if fresh_within is None and await self._listed_parent(path, now):
            return await self.status(path)
        try:
            st = lstat_view(await self.node.call(lambda c: c.stat(path)))
        except NotFound:
            self.remember_status(None, path)
            raise FSError(errno.ENOENT) from None
        self.remember_status(st, path)
        return st

    async def maybe_status(self, path: str) -> Status | None:
        """The status, or None when nothing is at ``path``."""
        try:
            return await self.status(path)
        except FSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None

    async def _listed_parent(self, path: str, now: float) -> bool:
        """List ``path``'s directory instead of asking for ``path`` (module docstring). True
        when the listing now answers for ``path``."""
        parent = paths.parent(path)
        if parent == path or parent in self._unlistable or self.rules.ttl_of(parent) <= self.ttl:
            return False
        n = self._lookups_in.get(parent, 0) + 1
        self._lookups_in[parent] = n
        if len(self._lookups_in) > 10_000:
            self._lookups_in.clear()
        if n < LIST_AFTER:
            return False
        self._lookups_in.pop(parent, None)
        try:
            got, more = await self.node.call(lambda c: c.ls_page(parent, "", LIST_PAGE))
        except (MeshError, FSError) as e:
            log.debug("listing %s for a lookup: %s", parent, e)
            return False
        if more:
            self._unlistable.add(parent)
            if len(self._unlistable) > 10_000:
                self._unlistable.clear()
            return False
        for s in got:
            self.remember_status(s, s.path, now)
        self.keep_listing(parent, got, now)
        if path not in {s.path for s in got}:
            self.remember_status(None, path, now)
        return True


__all__ = ["LIST_AFTER", "LIST_PAGE", "Metadata"]
