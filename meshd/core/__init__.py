"""The node's core: the namespace facade (MeshNode), file handles, the mount table, placement state, metrics."""
