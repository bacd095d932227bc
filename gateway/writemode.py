"""The write mode a request may ask for (our extension of both protocols): ``back``
(acknowledged once the bytes are durable on the node, uploaded to the under-store in
the background) or ``through`` (acknowledged once in the under-store). Absent: the
mount's ``write_mode``. S3 says it in the header ``x-mesh-write-mode``
(docs/S3_COMPAT.md), WebHDFS in the parameter ``writemode`` (docs/WEBHDFS_COMPAT.md)."""

from __future__ import annotations

MODES = {"back": True, "through": False}


def parse(value: str | None) -> bool | None:
    """True (back), False (through) or None (not given); ValueError for anything else."""
    if value is None or value == "":
        return None
    try:
        return MODES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"write mode must be 'back' or 'through', not {value!r}") from None
