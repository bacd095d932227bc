"""The listing engine: S3 key order over a directory tree, pruning, markers, delimiters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.listing import list_page
from meshd.core import MeshNode
from tests.nodeutil import NodeBox

KEYS = ["a-b", "a/x", "a/y/z", "a0", "b", "b/c", "dir/sub/deep/f", "dir/x y", "é", "z~"]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[MeshNode]:
    store = tmp_path / "store"
    for k in KEYS:
        if k == "b":
            continue  # "b" is a directory here (it holds b/c); a file and a dir cannot share a name
        p = store / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(k.encode())
    box = NodeBox(tmp_path / "n")
    n = box.open()
    await n.mounts.add("/bkt", f"file://{store}", {})
    yield n
    await box.close()


def files() -> list[str]:
    return sorted((k for k in KEYS if k != "b"), key=lambda s: s.encode())


async def all_keys(node: MeshNode, prefix: str = "", delimiter: str = "", page: int = 1000) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    prefixes: list[str] = []
    after = ""
    while True:
        p = await list_page(node, "bkt", prefix, delimiter, after, page)
        keys += [e.key for e in p.entries]
        prefixes += p.prefixes
        if not p.truncated:
            return keys, prefixes
        assert p.next_marker > after or not after
        after = p.next_marker


async def test_flat_listing_is_in_utf8_byte_order(node: MeshNode) -> None:
    keys, prefixes = await all_keys(node)
    assert keys == files()  # "a-b" < "a/x" < "a0": not the directory walk order
    assert prefixes == []


@pytest.mark.parametrize("page", [1, 2, 3, 1000])
async def test_paging_returns_every_key_once(node: MeshNode, page: int) -> None:
    keys, _ = await all_keys(node, page=page)
    assert keys == files()


async def test_delimiter_rolls_up_directories(node: MeshNode) -> None:
    keys, prefixes = await all_keys(node, delimiter="/")
    assert keys == ["a-b", "a0", "z~", "é"]
    assert prefixes == ["a/", "b/", "dir/"]
    keys, prefixes = await all_keys(node, prefix="dir/", delimiter="/")
    assert keys == ["dir/x y"] and prefixes == ["dir/sub/"]
    for page in (1, 2):
        assert await all_keys(node, delimiter="/", page=page) == (["a-b", "a0", "z~", "é"], ["a/", "b/", "dir/"])


async def test_prefix_not_on_a_directory_boundary(node: MeshNode) -> None:
    keys, prefixes = await all_keys(node, prefix="a")
    assert keys == ["a-b", "a/x", "a/y/z", "a0"]
    keys, prefixes = await all_keys(node, prefix="a", delimiter="/")
    assert keys == ["a-b", "a0"] and prefixes == ["a/"]
    assert await all_keys(node, prefix="nothing") == ([], [])


async def test_other_delimiters_group_without_repeats(node: MeshNode) -> None:
    for page in (1, 1000):
        keys, prefixes = await all_keys(node, delimiter="-", page=page)
        assert prefixes == ["a-"]
        assert keys == [k for k in files() if k != "a-b"]


async def test_start_after_skips_whole_subtrees(node: MeshNode) -> None:
    p = await list_page(node, "bkt", "", "", "a0", 1000)
    assert [e.key for e in p.entries] == [k for k in files() if k.encode() > b"a0"]
    p = await list_page(node, "bkt", "", "", "dir/sub/deep/f", 1000)
    assert [e.key for e in p.entries] == ["dir/x y", "z~", "é"]
