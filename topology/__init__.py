"""Topology file, graph and the pure routing/placement functions: the multi-region issue builds it here."""
