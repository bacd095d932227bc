"""meshfs: the mesh's namespace as a local filesystem (pyfuse3, asyncio).

Installed with the ``fuse`` extra. The package lives in the design card's
``fuse/`` folder but is imported as ``meshfs``: the name ``fuse`` is fusepy's.
"""

DROP_CACHE = b"user.mesh.drop_cache"  # setting this xattr on the mount drops every cache of it
