"""Mesh paths: validation and normalisation, in one place.

A mesh path is absolute, ``/``-separated, UTF-8, with no empty, ``.`` or
``..`` components, no NUL byte, components of at most 255 bytes and at most
5,120 bytes in all (Linux's 4,096 below a mount point of up to 1,024: a
meshfs client holds us to the former under its mount points). Every front end calls :func:`normalize` on what a user sent before anything else.
"""

from __future__ import annotations

from meshd.errors import InvalidPath, NameTooLong

NAME_MAX = 255
PATH_MAX = 5120  # Linux's 4096 bytes below a mount point of up to 1024 (meshfs shows mounts in a tree)
LINK_MAX = 4095  # a symlink's target, as Linux holds it


def normalize(path: str) -> str:
    """Return the canonical form of ``path`` or raise :class:`InvalidPath`."""
    if not isinstance(path, str) or not path:
        raise InvalidPath("empty path")
    if "\x00" in path:
        raise InvalidPath(f"path contains a NUL byte: {path!r}")
    if not path.startswith("/"):
        path = "/" + path
    if len(path.encode("utf-8", "surrogatepass")) > PATH_MAX:
        raise NameTooLong(f"path longer than {PATH_MAX} bytes")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise InvalidPath(f"path may not contain '{part}' components: {path!r}")
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise NameTooLong(f"path component longer than {NAME_MAX} bytes: {part[:40]!r}...")
    return "/" + "/".join(parts)


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def join(*parts: str) -> str:
    return normalize("/".join(p.strip("/") for p in parts if p.strip("/")) or "/")


def child(directory: str, name: str) -> str:
    """``join(directory, name)`` for a normalized ``directory`` and one component ``name``:
    the same path or the same InvalidPath, without re-checking ``directory`` (a listing
    joins every entry's name to one directory)."""
    if (name and "/" not in name and "\x00" not in name and name not in (".", "..")
            and len(name) <= NAME_MAX // 4 and len(directory) + len(name) < PATH_MAX // 4):
        return directory + name if directory.endswith("/") else directory + "/" + name
    return join(directory, name)


def parent(path: str) -> str:
    parts = split(path)
    return "/" + "/".join(parts[:-1])


def basename(path: str) -> str:
    parts = split(path)
    return parts[-1] if parts else ""


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (component-wise)."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")
