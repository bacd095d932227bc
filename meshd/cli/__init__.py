"""Command lines: meshd, meshctl, meshctl place."""
