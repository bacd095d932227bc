"""POSIX access through a pyfuse3 mount over the node core: the FUSE issue builds it here."""
