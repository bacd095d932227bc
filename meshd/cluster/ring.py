"""A consistent-hash ring with virtual nodes: who owns a key in a region.

Each member is placed on a 64-bit ring at ``vnodes`` points (more for a
member with a larger ``weight``, e.g. cache capacity); a key belongs to the
first point clockwise from its hash. Adding or removing one member of N only
moves the keys that member gains or loses, about 1/N of them
(:func:`moved_fraction` measures it; ``bench/bench_cluster.py`` reports it).

``owners(key, n)`` gives the first ``n`` *distinct* members clockwise: the
owner, then the node that takes over if the owner dies. Every node and every
client builds the same ring from the same member list, so they agree on
owners without asking anyone.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping

DEFAULT_VNODES = 128


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, members: Iterable[str] | Mapping[str, float] = (), vnodes: int = DEFAULT_VNODES) -> None:
        weights = dict(members) if isinstance(members, Mapping) else {m: 1.0 for m in members}
        self.vnodes = vnodes
        self.members: tuple[str, ...] = tuple(sorted(weights))
        points: list[tuple[int, str]] = []
        top = max(weights.values(), default=1.0) or 1.0
        for m, w in weights.items():
            count = max(1, round(vnodes * (w / top if w > 0 else 1.0)))
            points.extend((hash64(f"{m}#{i}".encode()), m) for i in range(count))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def owner(self, key: bytes) -> str | None:
        if not self._hashes:
            return None
        i = bisect.bisect(self._hashes, hash64(key))
        return self._owners[i % len(self._owners)]

    def owners(self, key: bytes, n: int) -> list[str]:
        """The owner of ``key`` and its successors: up to ``n`` distinct members."""
        out: list[str] = []
        if not self._hashes or n <= 0:
            return out
        n = min(n, len(self.members))
        start = bisect.bisect(self._hashes, hash64(key))
        size = len(self._owners)
        for step in range(size):
            m = self._owners[(start + step) % size]
            if m not in out:
                out.append(m)
                if len(out) == n:
                    break
        return out


def moved_fraction(before: HashRing, after: HashRing, keys: Iterable[bytes]) -> float:
    """The fraction of ``keys`` whose owner differs between two rings."""
    total = moved = 0
    for k in keys:
        total += 1
        moved += before.owner(k) != after.owner(k)
    return moved / total if total else 0.0
