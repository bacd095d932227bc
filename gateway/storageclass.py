"""``x-amz-storage-class`` on PutObject, CopyObject and CreateMultipartUpload.

The mesh has one storage: the under-store the key's mount names. A storage
class is therefore a label. ``STANDARD`` is the default and is not recorded
(S3 does not return the header for it either). The classes whose objects S3
serves at once (``REDUCED_REDUNDANCY``, ``STANDARD_IA``, ``ONEZONE_IA``,
``INTELLIGENT_TIERING``, ``GLACIER_IR``) are accepted and kept with the
object version as attribute ``sc``: HEAD and GET return it in
``x-amz-storage-class``, listings in ``StorageClass``. The archive classes
(``GLACIER``, ``DEEP_ARCHIVE``) are refused with ``InvalidStorageClass``:
their objects must be restored before they can be read, which the mesh would
not honour, so a client relying on that would be misled. Any other name is
``InvalidStorageClass`` too, as on S3. A copy takes the request's class
(``STANDARD`` when absent), not the source's, as S3 does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import S3Error

HEADER = "x-amz-storage-class"
STANDARD = "STANDARD"
LABELS = frozenset({"REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR"})


def from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The attribute a write request's storage class records: ``{}`` or ``{"sc": class}``."""
    raw = headers.get(HEADER)
    if raw is None or raw == STANDARD:
        return {}
    if raw in LABELS:
        return {"sc": raw}
    raise S3Error("InvalidStorageClass", "The storage class you specified is not valid"
                  + (" here: archive classes need a restore before a read, which the mesh does not do"
                     if raw in ("GLACIER", "DEEP_ARCHIVE") else ""), 400, StorageClassRequested=raw)


def of(attrs: Mapping[str, Any]) -> str:
    return str(attrs.get("sc") or STANDARD)


def header(attrs: Mapping[str, Any]) -> dict[str, str]:
    sc = attrs.get("sc")
    return {HEADER: str(sc)} if sc else {}
