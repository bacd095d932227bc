"""Regions joined into one mesh: topology, routing between regions, link quotas."""
