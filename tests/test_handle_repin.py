"""FileHandle re-pinning before the first byte (meshd/core/handle.py), with in-memory
doubles of the page sources: the version a stat finds and the version a page fetch
finds can differ, as when a file is rewritten in a burst or a write-back version
switches to the store's while a reader opens it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from meshd.core.handle import REPINS, FileHandle, pin
from meshd.errors import VersionChanged
from meshd.metadata.shard import FileStatus

PAGE = 4096


class Sources:
    """Page fetches fail with VersionChanged for the versions in ``stale``."""

    def __init__(self, stale: set[str]) -> None:
        self.stale = stale
        self.asked: list[str] = []
        self.cache = SimpleNamespace(page_range=lambda start, end: range(start // PAGE, -(-end // PAGE)),
                                     page_size=PAGE)

    async def get(self, f: Any, index: int) -> Any:
        self.asked.append(f.status.version)
        if f.status.version in self.stale:
            raise VersionChanged(f"{f.status.version} is gone")
        return SimpleNamespace(page=b"x" * PAGE)


def handle(sources: Sources, versions: list[str], first: str) -> tuple[FileHandle, list[str]]:
    target = SimpleNamespace(path="/m/f", rel="f", mount=SimpleNamespace(identity="file:///m", nocache=False))
    stats: list[str] = []

    async def restat(t: Any) -> FileStatus:
        v = versions.pop(0)
        stats.append(v)
        return FileStatus("/m/f", PAGE, 1.0, v, False)

    readahead = SimpleNamespace(on_read=lambda *a: 0, in_read_window=lambda: 1)
    return FileHandle(sources, readahead, pin(target, FileStatus("/m/f", PAGE, 1.0, first, False)),  # type: ignore[arg-type]
                      restat=restat), stats


def test_a_handle_follows_a_burst_of_changes_before_its_first_byte() -> None:
    src = Sources({"v1", "v2"})
    h, stats = handle(src, ["v2", "v3"], "v1")
    stream = asyncio.run(h.read(0, PAGE))
    assert stream.status.version == "v3" and src.asked == ["v1", "v2", "v3"] and stats == ["v2", "v3"]


def test_a_stat_that_finds_the_version_that_failed_ends_the_read() -> None:
    src = Sources({"wb:n:1"})
    h, stats = handle(src, ["wb:n:1", "s3etag"], "wb:n:1")  # a stale status: no new version to try
    with pytest.raises(VersionChanged):
        asyncio.run(h.read(0, PAGE))
    assert stats == ["wb:n:1"]


def test_a_handle_tries_at_most_REPINS_versions() -> None:
    versions = [f"v{i}" for i in range(REPINS + 3)]
    src = Sources(set(versions))
    h, _ = handle(src, versions[1:], versions[0])
    with pytest.raises(VersionChanged):
        asyncio.run(h.read(0, PAGE))
    assert src.asked == versions[:REPINS]


def test_a_handle_opened_with_a_named_version_never_repins() -> None:
    src = Sources({"v1"})
    h, stats = handle(src, ["v2"], "v1")
    h._restat = None  # what open(version=...) gives
    with pytest.raises(VersionChanged):
        asyncio.run(h.read(0, PAGE))
    assert stats == [] and src.asked == ["v1"]
