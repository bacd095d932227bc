"""S3 listings over a tree of directories, in S3's key order.

S3 lists keys in UTF-8 byte order of the whole key; a directory walk in name
order is not that order ("a-b" sorts before "a/x" because '-' < '/'). So the
walker sorts each directory's children by the key fragment they contribute:
``name`` for a file, ``name + "/"`` for a directory, and recurses depth
first: the concatenation is globally sorted.

A prefix that no key can start with lists nothing: keys are paths, so none
has an empty segment (a leading '/', or '//'), a '.' or '..' segment, or a NUL
(``objects.mesh_path`` refuses them); without this check such a prefix would
name a directory after all ('/' would list the bucket's root).

Pruning: only the directory named by the prefix (up to its last '/') is
listed first; subdirectories that cannot hold a key matching the prefix or
lying after the marker are skipped without being listed. With delimiter '/'
a subdirectory below the prefix becomes one CommonPrefix (if some file lies
below it: empty directories left by deletes are not prefixes) and is not
otherwise entered. Other delimiters work by walking and grouping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from meshd import errors as me
from meshd.core import FileStatus, MeshNode


@dataclass(frozen=True)
class Entry:
    key: str
    status: FileStatus


@dataclass
class Page:
    entries: list[Entry]
    prefixes: list[str]
    truncated: bool
    next_marker: str  # last key or prefix returned (for continuation)


def _keybytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def can_match(prefix: str) -> bool:
    """Whether some key could start with ``prefix``: its complete segments (all but the
    last, which a key may extend) are neither empty nor '.' or '..', and it has no NUL."""
    return "\x00" not in prefix and not any(s in ("", ".", "..") for s in prefix.split("/")[:-1])


async def walk(node: MeshNode, bucket: str, prefix: str, after: str,
               delimiter: str) -> AsyncIterator[Entry | str]:
    """Keys (as Entry) and, with delimiter '/', common prefixes (as str) in key order."""
    if not can_match(prefix):
        return
    base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    async for item in _walk_dir(node, bucket, base, prefix, after, delimiter == "/"):
        yield item


async def _walk_dir(node: MeshNode, bucket: str, dir_key: str, prefix: str, after: str,
                    slash: bool) -> AsyncIterator[Entry | str]:
    path = "/" + bucket + ("/" + dir_key.rstrip("/") if dir_key else "")
    try:
        children = await node.listdir(path)
    except (me.NotFound, me.NotADirectory):
        return
    frags = sorted(((c.path.rsplit("/", 1)[-1] + ("/" if c.is_dir else ""), c) for c in children),
                   key=lambda fc: _keybytes(fc[0]))
    for frag, status in frags:
        key = dir_key + frag
        if status.is_dir:
            # could this subtree hold keys with the prefix?
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if slash and key.startswith(prefix) and len(key) > len(prefix):
                # the whole directory rolls up into one CommonPrefix, if it holds a key
                # (an empty directory, left by deletes, is no prefix in S3's eyes)
                cp = prefix + key[len(prefix):].split("/", 1)[0] + "/"
                if _keybytes(cp) > _keybytes(after) and await _has_key(node, bucket, key):
                    yield cp
                continue
            # skip the subtree when every key in it sorts at or before the marker
            if after and _keybytes(after) > _keybytes(key) and not after.startswith(key):
                continue
            async for item in _walk_dir(node, bucket, key, prefix, after, slash):
                yield item
        else:
            if key.startswith(prefix) and _keybytes(key) > _keybytes(after):
                yield Entry(key, status)


async def _has_key(node: MeshNode, bucket: str, dir_key: str) -> bool:
    """Whether a directory holds any file below it (stops at the first one)."""
    try:
        children = await node.listdir("/" + bucket + "/" + dir_key.rstrip("/"))
    except (me.NotFound, me.NotADirectory):
        return False
    if any(not c.is_dir for c in children):
        return True
    for c in children:
        if await _has_key(node, bucket, dir_key + c.path.rsplit("/", 1)[-1] + "/"):
            return True
    return False


async def list_page(node: MeshNode, bucket: str, prefix: str, delimiter: str, after: str,
                    max_keys: int) -> Page:
    """One page of ListObjects: at most ``max_keys`` keys and common prefixes together."""
    entries: list[Entry] = []
    prefixes: list[str] = []
    last = ""
    if max_keys <= 0:
        return Page([], [], False, "")
    async for item in walk(node, bucket, prefix, after, delimiter):
        if isinstance(item, str):
            name = item
        else:
            name = item.key
            if delimiter and delimiter != "/":
                rest = name[len(prefix):]
                if delimiter in rest:
                    cp = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if (prefixes and prefixes[-1] == cp) or _keybytes(cp) <= _keybytes(after):
                        continue  # already returned, on this page or an earlier one
                    item, name = cp, cp
        if len(entries) + len(prefixes) >= max_keys:
            return Page(entries, prefixes, True, last)
        if isinstance(item, str):
            prefixes.append(item)
        else:
            entries.append(item)
        last = name
    return Page(entries, prefixes, False, last)
