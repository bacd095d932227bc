"""Under-store implementations, looked up by URI scheme.

Backends are imported lazily by scheme, so a node that mounts only local
directories never imports boto3. A new backend is one module
with an :class:`UnderStore` subclass and one line in ``_BACKENDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from meshd.errors import MountError
from meshd.understore.base import Capabilities, ObjectInfo, UnderStore

__all__ = ["Capabilities", "ObjectInfo", "UnderStore", "open_understore", "options_of", "schemes"]

_BACKENDS: dict[str, str] = {
    "file": "meshd.understore.posix:PosixUnderStore",
    "s3": "meshd.understore.s3:S3UnderStore",
    "hdfs": "meshd.understore.hdfs:HdfsUnderStore",        # WebHDFS REST: hdfs://namenode/path
    "webhdfs": "meshd.understore.hdfs:HdfsUnderStore",     # Hadoop's name for the same API
    "swebhdfs": "meshd.understore.hdfs:HdfsUnderStore",
}


def schemes() -> list[str]:
    return sorted(_BACKENDS)


def _backend(uri: str) -> type[UnderStore]:
    scheme = urlsplit(uri).scheme
    if not scheme:
        raise MountError(f"under-store URI has no scheme: {uri!r} (expected one of {schemes()})")
    target = _BACKENDS.get(scheme)
    if target is None:
        raise MountError(f"unknown under-store scheme {scheme!r} in {uri!r}; supported: {', '.join(schemes())}")
    module_name, cls_name = target.split(":")
    cls: type[UnderStore] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def options_of(uri: str) -> frozenset[str]:
    """The mount options the under-store of ``uri`` takes (MountError for an unknown scheme)."""
    return _backend(uri).OPTIONS


def open_understore(uri: str, options: Mapping[str, str] | None = None) -> UnderStore:
    store: UnderStore = _backend(uri)(uri, dict(options or {}))
    return store
