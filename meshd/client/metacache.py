"""A client's metadata cache: file statuses and whole directory listings, with TTLs.

**How long.** A status is kept ``ttl`` seconds, or, on a mount whose
``sync_interval`` is longer, that long (at most ``max_ttl``): the mount's
owner has said the node itself may answer from metadata that old, so the
client adds no staleness of its own for changes made behind the mesh's back
(changes made through the mesh by *other* clients show after that time too,
as with rclone's ``--dir-cache-time``). A "not found" is kept ``ttl``. The
mount table's raw option strings (``sync_interval``, ``read_only``) are read
here (:class:`MountRules`), from the table as last fetched (again once it is
older than ``max(ttl, 5 s)``).

**What.** :class:`MetaCache` keeps ``(expires, fetched, status or None)`` per
path (``None``: not found), at most ``MAX_META`` (LRU), and whole listings
``(expires, statuses)`` per directory, at most ``MAX_LISTED`` statuses in all
(LRU). A lookup may ask for a status fetched within ``fresh_within`` seconds
whatever its TTL (an ``open`` never trusts one older than ``ttl``). The
client's own changes update or drop the entries at once (``invalidate``,
``forget_under``); ``clear`` forgets everything.
"""

from __future__ import annotations

from collections import OrderedDict

from meshd import paths
from meshd.client.base import Status

MAX_META = 100_000  # statuses kept
MAX_LISTED = 200_000  # statuses kept in cached directory listings, all directories together
Mount = tuple[str, dict[str, str]]  # (mount point, its options as the node reports them)


def _true(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


class MountRules:
    """The mount table as last seen, and what its options mean for a client's caches."""

    def __init__(self, ttl: float = 1.0, max_ttl: float = 300.0) -> None:
        self.ttl = ttl
        self.max_ttl = max(ttl, max_ttl)
        self.mounts: list[Mount] = []
        self.fetched_at = -1e9

    def due(self, now: float) -> bool:
        """The table is old enough to be fetched again."""
        return now - self.fetched_at > max(self.ttl, 5.0)

    def update(self, mounts: list[Mount], now: float) -> None:
        self.mounts, self.fetched_at = mounts, now

    def mount_of(self, path: str) -> Mount | None:
        """The mount ``path`` is in (its mount point included), from the last mount table seen."""
        best: Mount | None = None
        for mpath, options in self.mounts:
            if paths.is_within(path, mpath) and (best is None or len(mpath) > len(best[0])):
                best = (mpath, options)
        return best

    @staticmethod
    def read_only(mount: Mount) -> bool:
        return _true(mount[1].get("read_only", "false"))

    def ttl_of(self, path: str) -> float:
        """How long a status of ``path`` is kept (here and, for meshfs, in the kernel): as
        long as the node itself trusts it (the mount's ``sync_interval``; -1, "until a
        sync", counts as ``max_ttl``), at least ``ttl``, at most ``max_ttl``."""
        m = self.mount_of(path)
        if m is None:
            return self.ttl
        try:
            interval = float(m[1].get("sync_interval", "0"))
        except ValueError:
            return self.ttl
        if interval < 0:
            interval = self.max_ttl
        return max(self.ttl, min(self.max_ttl, interval))


class MetaCache:
    def __init__(self, max_statuses: int = MAX_META, max_listed: int = MAX_LISTED) -> None:
        self.max_statuses, self.max_listed = max_statuses, max_listed
        self.statuses: OrderedDict[str, tuple[float, float, Status | None]] = OrderedDict()
        self.listings: OrderedDict[str, tuple[float, list[Status]]] = OrderedDict()
        self.n_listed = 0  # statuses in self.listings

    def __len__(self) -> int:
        return len(self.statuses)

    def get(self, path: str, now: float, fresh_within: float | None = None) -> tuple[bool, Status | None]:
        """``(True, status)`` while one is kept (``None``: not found) and, if ``fresh_within``
        is given, fetched at most that long ago; else ``(False, None)``."""
        hit = self.statuses.get(path)
        if hit is not None and hit[0] > now and (fresh_within is None or now - hit[1] <= fresh_within):
            return True, hit[2]
        return False, None

    def put(self, path: str, st: Status | None, ttl: float, now: float) -> None:
        """Keep a status the node gave, or a "not found" (``None``), ``ttl`` seconds."""
        self.statuses[path] = (now + ttl, now, st)
        self.statuses.move_to_end(path)
        while len(self.statuses) > self.max_statuses:
            self.statuses.popitem(last=False)

    def listed(self, path: str) -> tuple[float, list[Status]] | None:
        """The listing kept for directory ``path`` and when it expires, expired or not."""
        return self.listings.get(path)

    def listing(self, path: str, now: float) -> list[Status] | None:
        """The listing of directory ``path`` while it is kept."""
        got = self.listings.get(path)
        if got is None or got[0] <= now:
            return None
        self.listings.move_to_end(path)
        return got[1]

    def keep_listing(self, path: str, listed: list[Status], ttl: float, now: float) -> None:
        self.unlist(path)
        self.listings[path] = (now + ttl, listed)
        self.n_listed += len(listed)
        while self.n_listed > self.max_listed and self.listings:
            _, (_, gone) = self.listings.popitem(last=False)
            self.n_listed -= len(gone)

    def unlist(self, path: str) -> None:
        got = self.listings.pop(path, None)
        if got is not None:
            self.n_listed -= len(got[1])

    def invalidate(self, path: str) -> None:
        """``path`` changed here: forget its status, its parent's, and both listings."""
        parent = paths.parent(path)
        self.statuses.pop(path, None)
        self.statuses.pop(parent, None)
        self.unlist(path)
        self.unlist(parent)

    def forget_under(self, path: str) -> None:
        """Forget every status and listing at or under ``path`` (it moved away)."""
        for p in [p for p in self.statuses if paths.is_within(p, path)]:
            self.statuses.pop(p, None)
        for p in [p for p in self.listings if paths.is_within(p, path)]:
            self.unlist(p)

    def clear(self) -> int:
        """Forget everything; returns how many statuses were kept."""
        n = len(self.statuses)
        self.statuses.clear()
        self.listings.clear()
        self.n_listed = 0
        return n


__all__ = ["MAX_LISTED", "MAX_META", "MetaCache", "Mount", "MountRules"]
