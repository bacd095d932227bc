"""meshfs's directory handles: listings streamed a page at a time, kept whole, read ahead.

**Streaming.** ``entries`` lists a page of ``LIST_PAGE`` entries at a time as
the kernel asks for them: huge directories list without being held whole. A
directory read whole from the start is kept (``ttl_of`` it, ``MAX_LISTED``
statuses in all) and the next ``opendir`` lists it from memory. A file being
written through this mount is listed (and such a listing is not kept).

**Directory read-ahead.** A tree walk (find, du, rsync, os.walk, a dataset
scan) opens the directories of a listed parent one after another, in listing
order, and waits for each listing: on a mount that keeps listings, once two
siblings were opened in that order, the next ``DIRS_AHEAD`` sibling
directories are listed in the background.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

from meshd import paths
from meshd.client.metacache import MAX_LISTED
from meshd.client.sdk import MeshClient, Status
from meshfs.metadata import LIST_PAGE, Metadata, lstat_view
from meshfs.node import Node

log = logging.getLogger(__name__)

DIRS_AHEAD = 2  # sibling directories listed ahead of a tree walk (mounts that keep listings)
Entry = tuple[int, Status]  # (entry id, status), the ids consecutive


@dataclass
class DirHandle:
    path: str
    page: list[Entry]
    more: bool  # the node has entries after this page
    seen: list[Status] | None  # everything listed so far, from the start (for the listing cache)


def _ls_page(c: MeshClient, path: str, after: str) -> tuple[list[Status], bool]:
    return c.ls_page(path, after, LIST_PAGE)


class Directories:
    def __init__(self, node: Node, meta: Metadata) -> None:
        self.node, self.meta = node, meta
        self.handles: dict[int, DirHandle] = {}
        self._ahead: dict[str, asyncio.Task[None]] = {}  # directory read-ahead in flight
        self._sibling_order: dict[str, tuple[list[Status], dict[str, int]]] = {}
        self._last_opened: dict[str, int] = {}  # parent -> index of the child directory opened last

    async def open(self, fh: int, path: str) -> None:
        """A handle ``fh`` on directory ``path``: its kept listing, or one to stream."""
        self._walking(path)
        pending = self._ahead.get(path)
        if pending is not None:  # listed ahead of a walk: it is arriving
            try:
                await asyncio.shield(pending)
            except Exception:  # listed here instead
                pass
        listed = self.meta.cache.listing(path, time.monotonic())
        if listed is not None and path not in self.meta.writing_dirs():
            self.handles[fh] = DirHandle(path, list(enumerate(listed, 1)), False, None)
        else:
            self.handles[fh] = DirHandle(path, [], True, [])

    def path_of(self, fh: int) -> str:
        return self.handles[fh].path

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def _walking(self, path: str) -> None:
        """Directory read-ahead (module docstring): ``path`` is being opened."""
        parent = paths.parent(path)
        listed = self.meta.cache.listed(parent)
        if parent == path or listed is None or self.meta.ttl_of(parent) <= self.meta.ttl:
            return
        order = self._sibling_order.get(parent)
        if order is None or order[0] is not listed[1]:
            order = (listed[1], {st.path: i for i, st in enumerate(listed[1]) if st.is_dir})
            self._sibling_order[parent] = order
            if len(self._sibling_order) > 64:
                self._sibling_order.pop(next(iter(self._sibling_order)))
        i = order[1].get(path)
        if i is None:
            return
        last = self._last_opened.get(parent)
        self._last_opened[parent] = i
        if len(self._last_opened) > 1000:
            self._last_opened.clear()
        if last is None or not 0 < i - last <= 2:
            return
        self._list_siblings(order[0][i + 1:])

    def _list_siblings(self, after: list[Status]) -> None:
        """List the next ``DIRS_AHEAD`` directories of ``after`` in the background (those
        not kept or in flight already)."""
        queued = 0
        now = time.monotonic()
        for st in after:
            if queued == DIRS_AHEAD:
                break
            if not st.is_dir:
                continue
            queued += 1
            got = self.meta.cache.listed(st.path)
            if st.path in self._ahead or (got is not None and got[0] > now):
                continue
            task = asyncio.ensure_future(self._list_ahead(st.path))
            self._ahead[st.path] = task
            task.add_done_callback(functools.partial(self._ahead_done, st.path))

    def _ahead_done(self, path: str, task: asyncio.Task[None]) -> None:
        self._ahead.pop(path, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("listing %s ahead of a walk: %s", path, task.exception())

    async def _list_ahead(self, path: str) -> None:
        now = time.monotonic()
        seen: list[Status] = []
        after = ""
        while True:
            got, more = await self.node.call(functools.partial(_ls_page, path=path, after=after))
            seen.extend(got)
            if not more:
                break
            if len(seen) > MAX_LISTED // 4 or not got:
                return  # too big to keep: it streams when it is opened
            after = got[-1].path.rsplit("/", 1)[-1]
        for st in seen:
            self.meta.remember_status(st, st.path, now)
        self.meta.keep_listing(path, seen, now)

    async def entries(self, fh: int, start: int) -> list[Entry]:
        """Entries ``(id, status)`` after id ``start`` (0: from the beginning), one page of
        the directory at a time as the kernel asks for them (module docstring)."""
        d = self.handles[fh]
        page = d.page
        if page and page[0][0] - 1 <= start < page[-1][0]:
            return [e for e in page if e[0] > start]
        if page and start >= page[-1][0]:
            if not d.more:
                return []
            after, first_id = page[-1][1].path.rsplit("/", 1)[-1], page[-1][0] + 1
        else:  # the beginning, or a seek back before this page: list from the start
            after, first_id = "", 1
            if d.seen is not None:
                d.seen = []
        await self._next_page(d, after, first_id)
        if not d.page:
            return []
        if start >= d.page[-1][0]:
            return await self.entries(fh, start)
        return [e for e in d.page if e[0] > start]

    async def _next_page(self, d: DirHandle, after: str, first_id: int) -> None:
        """The page of ``d``'s directory after the name ``after``, its first id ``first_id``;
        the whole listing is kept once read from the start to the end."""
        path = d.path
        now = time.monotonic()
        got, more = await self.node.call(lambda c: c.ls_page(path, after, LIST_PAGE))
        got = [lstat_view(s) for s in got]
        if not after and path in self.meta.writing_dirs():
            got = sorted(self.meta.merge_writing(path, got), key=lambda s: s.path.rsplit("/", 1)[-1].encode())
            d.seen = None  # not the node's listing: not for the cache
        for s in got:
            self.meta.remember_status(s, s.path, now)
        d.page, d.more = [(first_id + i, s) for i, s in enumerate(got)], more
        if d.seen is not None:
            d.seen.extend(got)
            if len(d.seen) > MAX_LISTED // 4:
                d.seen = None  # too big to keep: it streams every time
            elif not more:
                self.meta.keep_listing(path, d.seen, now)
                d.seen = None

    def cancel(self) -> None:
        for task in self._ahead.values():
            task.cancel()


__all__ = ["DIRS_AHEAD", "DirHandle", "Directories", "Entry"]
