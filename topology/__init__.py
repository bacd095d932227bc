"""Topology file, graph and the pure routing/placement functions.

``topology.model`` reads and checks the operators' topology file (docs/TOPOLOGY.md)
into a :class:`Topology`; ``topology.show`` draws it (text or image);
``topology.cli`` is ``meshctl topology validate|show``.
"""

from . import model
from .model import *  # noqa: F403 - the facade re-exports the model's public names

__all__ = model.__all__
