"""Read-ahead policies: how a reader's requests become fetches from the node.

The one place where the client's read-ahead is decided and tuned, for meshfs
(the FUSE mount) and ``mesh://`` files (fsspec) alike. A policy is a
stateless object chosen by name (``get_policy("sequential")``); what it
needs to know of one open file (where the last read ended, how far ahead
pages were asked for, the bytes kept) lives in that handle's :class:`Cursor`.
New policies are registered by name, as fsspec registers its caches
(``fsspec.caching.register_cache``): ``register_policy(MyPolicy)``.

A policy answers three questions:

- ``sequential(cursor, off, end)``: is this read part of a sequential run?
- ``span(cursor, pos, end, sequential)``: the range to fetch for a read
  missing ``[pos, end)``: whole pages for a sequential reader (a descriptor or
  page received covers its whole page anyway), exactly the range for a random
  one, so nothing beyond the covering pages is fetched from the under-store;
- ``ahead(cursor, end, held)``: the pages to fetch ahead, as ``(first, last)``
  batches, each one request to the node.

**"sequential"** (meshfs's default). A read within one page of where the
previous one ended is sequential: the kernel's read-ahead sends several READs
at once, and they arrive close together, not always in order. Ahead of a
sequential reader it asks for up to ``READ_AHEAD_PAGES`` pages past the page
being read, ``READ_AHEAD_BATCH`` pages per request (a request costs the node
and the client more than a page in it does), so the reader never waits at a
page boundary; pages already held (or being fetched) are trimmed off a
batch's ends, and a batch all held is not asked for. A handle served bytes
instead of descriptors (a NoCache mount's inline pages, or a ``mesh://``
file) keeps only ``INLINE_PAGES`` of them: it reads ahead one page at a time,
``INLINE_PAGES - 1`` ahead, since reading further would fetch bytes it then
drops and asks for again.

**"none"**. Every read fetches exactly its range, nothing ahead (``mesh://``'s
default: fsspec's own ``cache_type`` does its read-ahead on top).

:func:`read_bytes` is the synchronous read path of a handle served bytes
(``mesh://`` files): with "sequential", a miss fetches the whole pages and the
page ahead in one request and keeps the pages past the read for the next ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from meshd.client.pages import Cached

READ_AHEAD_PAGES = 6  # pages asked for ahead of a sequential reader (< pages.MAX_MEMFD)
READ_AHEAD_BATCH = 4  # pages per read-ahead request to the node
INLINE_PAGES = 2  # pages of bytes a handle keeps (a handle served bytes, not descriptors)


@dataclass
class Cursor:
    """One open file's read state: its page size and (pinned) size, where its last read
    ended, the last page a read-ahead was started for, and the bytes it keeps (pages
    served inline, at most ``keep``)."""

    page_size: int
    size: int
    bytes_only: bool = False  # served bytes, never descriptors (a mesh:// file)
    keep: int = INLINE_PAGES
    next_offset: int = 0
    ahead: int = -1  # the last page index a read-ahead was started for
    inline: OrderedDict[int, Cached] = field(default_factory=OrderedDict)  # bytes, not descriptors

    @property
    def keeps_bytes(self) -> bool:
        """The handle holds bytes rather than descriptors: it keeps few pages."""
        return self.bytes_only or bool(self.inline)

    def find_inline(self, pos: int) -> Cached | None:
        c = self.inline.get(pos // self.page_size)
        if c is not None and c.start <= pos < c.end:
            self.inline.move_to_end(pos // self.page_size)
            return c
        return None

    def keep_inline(self, index: int, c: Cached) -> None:
        self.inline.pop(index, None)
        self.inline[index] = c
        while len(self.inline) > self.keep:
            self.inline.popitem(last=False)

    def close(self) -> None:
        self.inline.clear()


class ReadAhead:
    """The policy "none": every read fetches exactly its range; nothing is read ahead."""

    name: ClassVar[str] = "none"

    def sequential(self, cur: Cursor, off: int, end: int) -> bool:
        cur.next_offset = end
        return False

    def span(self, cur: Cursor, pos: int, end: int, sequential: bool) -> tuple[int, int]:
        """The range to fetch for a read missing ``[pos, end)``: its whole pages for a
        sequential reader, else exactly the range."""
        if not sequential:
            return pos, end
        ps = cur.page_size
        return (pos // ps) * ps, min(cur.size, ((end - 1) // ps + 1) * ps)

    def ahead(self, cur: Cursor, end: int, held: Callable[[int], bool]) -> Sequence[tuple[int, int]]:
        """The pages to fetch ahead of a sequential read that ended at ``end``, as
        ``(first, last)`` page batches; ``held(i)``: page ``i`` is held or on its way."""
        return ()


class Sequential(ReadAhead):
    """The policy "sequential": whole pages and pages ahead for sequential readers, exact
    ranges for random ones (module docstring)."""

    name: ClassVar[str] = "sequential"

    def __init__(self, pages: int = READ_AHEAD_PAGES, batch: int = READ_AHEAD_BATCH) -> None:
        self.pages, self.batch = pages, batch

    def sequential(self, cur: Cursor, off: int, end: int) -> bool:
        # the kernel's read-ahead sends several READs at once: they arrive close together,
        # not always in order
        seq = abs(off - cur.next_offset) <= cur.page_size
        cur.next_offset = end
        return seq

    def ahead(self, cur: Cursor, end: int, held: Callable[[int], bool]) -> Sequence[tuple[int, int]]:
        # called after every sequential read: the usual answer, nothing yet, comes first
        ps = cur.page_size
        page = (end - 1) // ps
        last = (cur.size - 1) // ps
        # a handle served bytes keeps only ``keep`` pages of them: reading further ahead
        # would fetch bytes it then drops and asks for again
        ahead, batch = (cur.keep - 1, 1) if cur.bytes_only or cur.inline else (self.pages, self.batch)
        target = min(last, page + ahead)
        if page > cur.ahead:
            cur.ahead = page
        if cur.ahead >= target or (target - cur.ahead < batch and target != last):
            return ()
        out: list[tuple[int, int]] = []
        while cur.ahead < target and (target - cur.ahead >= batch or target == last):
            lo, hi = cur.ahead + 1, min(target, cur.ahead + batch)
            cur.ahead = hi
            while lo <= hi and held(lo):
                lo += 1
            while hi >= lo and held(hi):
                hi -= 1
            if lo <= hi:
                out.append((lo, hi))
        return out


_policies: dict[str, type[ReadAhead]] = {}


def register_policy(cls: type[ReadAhead], clobber: bool = False) -> None:
    """Make ``cls`` available as ``get_policy(cls.name)`` (ValueError if the name is
    taken, unless ``clobber``)."""
    if cls.name in _policies and not clobber:
        raise ValueError(f"read-ahead policy {cls.name!r} is already registered")
    _policies[cls.name] = cls


def get_policy(name: str) -> ReadAhead:
    """A policy by name (``ValueError`` for an unknown one)."""
    cls = _policies.get(name)
    if cls is None:
        raise ValueError(f"unknown read-ahead policy {name!r} (known: {', '.join(sorted(_policies))})")
    return cls()


def policy_names() -> list[str]:
    return sorted(_policies)


register_policy(ReadAhead)
register_policy(Sequential)


def read_bytes(policy: ReadAhead, cur: Cursor, off: int, end: int, fetch: Callable[[int, int], bytes]) -> bytes:
    """``[off, end)`` of a file read by a handle served bytes (``fetch(offset, length)``
    asks the node): from the pages ``cur`` keeps, else fetched as ``policy`` says, the
    whole span and the pages ahead in one request. The fetched pages that reach past
    ``end`` are kept (at most ``cur.keep``) for the next reads."""
    end = min(end, cur.size)
    if off >= end:
        return b""
    seq = policy.sequential(cur, off, end)
    out: list[bytes] = []
    pos = off
    while pos < end:
        c = cur.find_inline(pos)
        if c is not None:
            stop = min(end, c.end)
            out.append(c.read(pos, stop))
            pos = stop
            continue
        lo, hi = policy.span(cur, pos, end, seq)
        if seq:
            for _, last in policy.ahead(cur, end, cur.inline.__contains__):
                hi = max(hi, min(cur.size, (last + 1) * cur.page_size))
        data = fetch(lo, hi - lo)
        stop = min(end, lo + len(data))
        if stop <= pos:
            break  # the file ends here (its pinned size says otherwise: the node reports it)
        out.append(data[pos - lo:stop - lo])
        _keep_past(cur, data, lo, stop)
        pos = stop
    return out[0] if len(out) == 1 else b"".join(out)


def _keep_past(cur: Cursor, data: bytes, lo: int, stop: int) -> None:
    """Keep the pages of ``data`` (fetched at ``lo``) that reach past ``stop``."""
    ps, hi = cur.page_size, lo + len(data)
    for i in range(stop // ps, (hi - 1) // ps + 1):
        start, end = max(lo, i * ps), min(hi, (i + 1) * ps)
        if end > stop and start < end:
            cur.keep_inline(i, Cached(start, end, data=data[start - lo:end - lo]))


__all__ = ["INLINE_PAGES", "READ_AHEAD_BATCH", "READ_AHEAD_PAGES", "Cursor", "ReadAhead", "Sequential",
           "get_policy", "policy_names", "read_bytes", "register_policy"]
