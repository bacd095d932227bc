"""GetObjectAttributes (``GET /bucket/key?attributes``): what HeadObject says and more,
in one XML document: the ETag, the checksum, the parts of a multipart object (with
their sizes and checksums, paged), the storage class and the size.

``x-amz-object-attributes`` lists what to return (``ETag``, ``Checksum``,
``ObjectParts``, ``StorageClass``, ``ObjectSize``; missing, empty or another name is
``InvalidArgument``, as S3 answers); ``x-amz-max-parts`` (at most 1000) and
``x-amz-part-number-marker`` page the parts. An element is left out when the object
has no such thing (no checksum recorded, not a multipart object), as S3 does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd.core import MeshNode

from . import objects, xmlio
from .errors import S3Error, invalid_argument

NAMES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
HEADER = "x-amz-object-attributes"
MAX_PARTS = 1000


def _wanted(request: web.Request) -> set[str]:
    names = {n.strip() for v in request.headers.getall(HEADER, []) for n in v.split(",")}
    names.discard("")
    if not names:
        raise invalid_argument("The x-amz-object-attributes header specifying the attributes to "
                               "be retrieved is either missing or empty", ArgumentName=HEADER)
    if not names <= set(NAMES):
        raise invalid_argument("Invalid attribute name specified.", ArgumentName=HEADER,
                               ArgumentValue=",".join(sorted(names - set(NAMES)))[:256])
    return names


def _number(request: web.Request, name: str, default: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if not raw.isdigit():
        raise invalid_argument(f"{name} must be a non-negative integer", ArgumentName=name,
                               ArgumentValue=raw[:64])
    return objects.digits(raw)


def _parts(recorded: Any, marker: int, max_parts: int, alg: str | None) -> Any:
    """``<ObjectParts>`` of a multipart object's recorded parts ([size, checksum] each;
    the checksums are of ``alg``, the upload's algorithm)."""
    if not isinstance(recorded, list) or not recorded:
        return None
    items = []
    shown = [(n, p) for n, p in enumerate(recorded, 1) if n > marker]
    page, truncated = shown[:max_parts], len(shown) > max_parts
    for n, p in page:
        size, value = (p[0], p[1]) if isinstance(p, list) and len(p) == 2 else (0, None)
        kids = [xmlio.leaf("PartNumber", n), xmlio.leaf("Size", size)]
        if isinstance(value, str) and alg is not None:
            kids.append(xmlio.leaf("Checksum" + alg, value))
        items.append(xmlio.element("Part", kids))
    head = [xmlio.leaf("PartsCount", len(recorded)), xmlio.leaf("PartNumberMarker", marker),
            xmlio.leaf("MaxParts", max_parts), xmlio.leaf("IsTruncated", truncated)]
    if truncated and page:
        head.append(xmlio.leaf("NextPartNumberMarker", page[-1][0]))
    return xmlio.element("ObjectParts", head + items)


async def get_object_attributes(request: web.Request, node: MeshNode, bucket: str,
                                key: str) -> web.Response:
    if request.query.get("versionId", "null") != "null":
        raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
    wanted = _wanted(request)
    max_parts = min(_number(request, "x-amz-max-parts", MAX_PARTS), MAX_PARTS)
    marker = _number(request, "x-amz-part-number-marker", 0)
    st = await objects.stat_object(node, bucket, key)
    a = await objects.attrs_of(node, st)
    kids: list[Any] = []
    if "ETag" in wanted:
        kids.append(xmlio.leaf("ETag", a.etag.strip('"')))
    if "Checksum" in wanted and a.checksum is not None:
        kids.append(xmlio.element("Checksum", objects.checksum_elements(a.checksum)))
    if "ObjectParts" in wanted:
        recorded = (await node.object_attrs(st.path, st.version) or {}).get("parts")
        parts = _parts(recorded, marker, max_parts,
                       a.checksum["alg"] if a.checksum is not None else None)
        if parts is not None:
            kids.append(parts)
    if "StorageClass" in wanted:
        kids.append(xmlio.leaf("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        kids.append(xmlio.leaf("ObjectSize", st.size))
    resp = web.Response(body=xmlio.document(xmlio.element("GetObjectAttributesResponse", kids)),
                        content_type="application/xml")
    resp.headers["Last-Modified"] = xmlio.http_date(st.mtime)
    return resp

