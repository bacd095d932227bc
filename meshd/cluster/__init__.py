"""A region's cache cluster: membership in etcd, the hash ring, calls to peers."""
