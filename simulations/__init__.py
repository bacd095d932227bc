"""Offline replays of the mesh's routing decisions (see simulations/README.md).

Every simulation calls the same pure functions as the daemon
(:func:`topology.router.route`), so what it predicts is what ``meshd`` decides.
"""
