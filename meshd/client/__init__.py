"""The client side: :class:`MeshClient` (meshctl, meshfs, your code) and the fsspec
``mesh://`` filesystem. Needs only the base install (``pip install datamesh``)."""

from meshd.client.sdk import MeshClient, Status, find_endpoint

__all__ = ["MeshClient", "Status", "find_endpoint"]
