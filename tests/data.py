"""Deterministic test data."""

from __future__ import annotations

import hashlib


def payload(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ per ``seed`` and per 2 KiB block (so misplaced pages show)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest() * 64
        block += 1
    return bytes(out[:n])
