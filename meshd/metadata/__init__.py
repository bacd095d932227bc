"""File statuses and listings: this node's RocksDB shard, and the routing of keys to their owners."""
