"""meshd: the cache node of the data mesh.

Layers, bottom up (see ARCHITECTURE.md):

- ``understore``: where data really lives (POSIX dir, S3 endpoint), one async
  interface, idempotent operations.
- ``kv`` / ``metadata`` / ``mounts``: the RocksDB-backed metadata shard and the
  mount table.
- ``pages``: the page cache (memory tier, disk tier, single-flight).
- ``node``: the filesystem core that every front end uses.
- ``service`` / ``http_api`` / ``daemon``: the node's RPC and data endpoints and
  the one place that wires objects together.
- ``client`` / ``fsspec_mesh`` / ``cli_meshctl``: what users run.
"""

__version__ = "0.1.0"
