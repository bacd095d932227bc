"""The node's core: the namespace facade (MeshNode), file handles, placement state.

This package's own namespace is the facade front ends use, and all they may import
of the node besides :mod:`meshd.errors`, :mod:`meshd.paths`, :mod:`meshd.config` and
:mod:`meshd.servers.streaming` (``[tool.importlinter]`` in pyproject.toml checks it
for ``gateway``): :class:`MeshNode` and the values its methods take and return.
Its submodules (``node``, ``handle``, ``placing``) are the node's own.
"""

from meshd.core.handle import FileHandle, ReadStream, Segment
from meshd.core.node import MeshNode, MountPoint
from meshd.core.placing import XATTR_NAMES, MeshState
from meshd.metadata.shard import FileStatus
from meshd.understore.base import ObjectVersion, VersionPage

__all__ = ["XATTR_NAMES", "FileHandle", "FileStatus", "MeshNode", "MeshState", "MountPoint", "ObjectVersion",
           "ReadStream", "Segment", "VersionPage"]
