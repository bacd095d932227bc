"""The node's core: the namespace facade (MeshNode), file handles, the mount table, placement state, metrics.

This package's own namespace is the facade front ends use, and all they may import
of the node besides :mod:`meshd.errors`, :mod:`meshd.paths`, :mod:`meshd.config` and
:mod:`meshd.servers.streaming` (``[tool.importlinter]`` in pyproject.toml checks it
for ``gateway``): :class:`MeshNode` and the values its methods take and return.
Its submodules (``node``, ``handle``, ``mounts``, ``placing``, ``metrics``) are the
node's own.

The names resolve on first use (PEP 562): ``mounts`` and ``metrics`` are imported
by the layers below ``node`` (the metadata shard, the page sources), so importing
``node`` here eagerly would close an import cycle through them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshd.core.handle import FileHandle, ReadStream, Segment
    from meshd.core.node import MeshNode, MountPoint
    from meshd.core.placing import XATTR_NAMES, MeshState
    from meshd.metadata.shard import FileStatus

_HOME = {
    "MeshNode": "meshd.core.node",
    "MountPoint": "meshd.core.node",
    "FileHandle": "meshd.core.handle",
    "ReadStream": "meshd.core.handle",
    "Segment": "meshd.core.handle",
    "MeshState": "meshd.core.placing",
    "XATTR_NAMES": "meshd.core.placing",
    "FileStatus": "meshd.metadata.shard",
}

__all__ = ["XATTR_NAMES", "FileHandle", "FileStatus", "MeshNode", "MeshState", "MountPoint", "ReadStream",
           "Segment"]


if not TYPE_CHECKING:  # for mypy the imports above define the names, and nothing else exists
    def __getattr__(name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value
