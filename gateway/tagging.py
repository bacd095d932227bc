"""Object and bucket tagging: ``?tagging`` and the ``x-amz-tagging`` header.

An object's tags are one of its attributes in the core (``tags`` beside the
ETag, content type and user metadata of :func:`gateway.objects.write_object`),
kept per path and version: they describe the bytes they were set on, and a
tagging change leaves the object's bytes, ETag and version alone. A rewrite of
the object starts with the tags of its own request (none unless it sent
``x-amz-tagging``), as on S3. A bucket's tags are bucket configuration
(:meth:`meshd.core.MeshNode.bucket_config`, name ``tags``).

S3's limits: at most 10 tags on an object (50 on a bucket); keys of 1-128 and
values of 0-256 Unicode characters, of letters, digits, spaces and ``_ . : / =
+ - @``; no two tags with one key; no key starting with ``aws:``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from meshd import errors as me
from meshd.core import MeshNode

from . import xmlio
from .errors import S3Error, from_mesh, invalid_argument

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY, MAX_VALUE = 128, 256
_EXTRA = set("_.:/=+-@")
HEADER = "x-amz-tagging"
DIRECTIVE = "x-amz-tagging-directive"


def _allowed(text: str) -> bool:
    return all(c in _EXTRA or unicodedata.category(c)[0] in "LNZ" for c in text)


def _invalid(msg: str) -> S3Error:
    return S3Error("InvalidTag", msg, 400)


def validate(pairs: list[tuple[str, str]], limit: int = MAX_OBJECT_TAGS) -> dict[str, str]:
    """S3's rules for a tag set, as an ordered dict."""
    if len(pairs) > limit:
        what = "Object" if limit == MAX_OBJECT_TAGS else "Bucket"
        raise S3Error("BadRequest", f"{what} tags cannot be greater than {limit}", 400)
    tags: dict[str, str] = {}
    for k, v in pairs:
        if k in tags:
            raise _invalid("Cannot provide multiple Tags with the same key")
        if not 1 <= len(k) <= MAX_KEY or not _allowed(k):
            raise _invalid("The TagKey you have provided is invalid")
        if len(v) > MAX_VALUE or not _allowed(v):
            raise _invalid("The TagValue you have provided is invalid")
        if k.lower().startswith("aws:"):
            raise _invalid("Your TagKey cannot be prefixed with aws:")
        tags[k] = v
    return tags


def from_header(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The tags of an ``x-amz-tagging`` header (URL query encoded); None without one."""
    raw = headers.get(HEADER)
    if raw is None:
        return None
    try:
        # "k1=v1&k2": k2's value is empty, as S3 reads it
        pairs = parse_qsl(raw, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise invalid_argument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL "
                               "query parameters without tag name duplicates.", ArgumentName=HEADER,
                               ArgumentValue=raw) from None
    return validate(pairs)


def from_xml(body: bytes, limit: int = MAX_OBJECT_TAGS) -> dict[str, str]:
    root = xmlio.parse(body, "Tagging")
    sets = xmlio.children(root, "TagSet")
    if len(sets) != 1:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate "
                      "against our published schema: Tagging needs one TagSet", 400)
    pairs = []
    for t in xmlio.children(sets[0], "Tag"):
        k, v = xmlio.child_text(t, "Key"), xmlio.child_text(t, "Value")
        if k is None or v is None:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate "
                          "against our published schema: every Tag needs a Key and a Value", 400)
        pairs.append((k, v))
    return validate(pairs, limit)


def to_xml(tags: Mapping[str, str]) -> web.Response:
    doc = xmlio.element("Tagging", [xmlio.element("TagSet", [
        xmlio.element("Tag", [xmlio.leaf("Key", k), xmlio.leaf("Value", v)]) for k, v in tags.items()])])
    return web.Response(body=xmlio.document(doc), content_type="application/xml")


def count_header(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``x-amz-tagging-count`` of GET/HEAD: only when the object has tags, as S3."""
    tags = attrs.get("tags") or {}
    return {"x-amz-tagging-count": str(len(tags))} if tags else {}


def for_copy(headers: Mapping[str, str], source_attrs: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a copy: the source's (``COPY``, the default) or the request's (``REPLACE``)."""
    directive = headers.get(DIRECTIVE, "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise invalid_argument("Unknown tagging directive.", ArgumentName=DIRECTIVE,
                               ArgumentValue=headers.get(DIRECTIVE, ""))
    if directive == "COPY":
        return dict(source_attrs.get("tags") or {})
    return from_header(headers) or {}


# ---- ?tagging -----------------------------------------------------------------

async def handle(request: web.Request, node: MeshNode, bucket: str, key: str,
                 body: Callable[[], Awaitable[bytes]]) -> web.StreamResponse:
    if not key:
        return await _bucket(request, node, bucket, body)
    from . import objects  # objects imports this module for its headers

    if request.query.get("versionId", "null") != "null":
        raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
    m = request.method
    if m not in ("GET", "PUT", "DELETE"):
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
    new = from_xml(await body()) if m == "PUT" else {}
    st = await objects.stat_object(node, bucket, key)
    try:
        if m == "GET":
            found = await node.object_attrs(st.path, st.version)
            return to_xml((found or {}).get("tags") or {})
        attrs = await objects.stored_attrs(node, st)
        attrs["tags"] = new
        await node.set_object_attrs(st.path, st.version, attrs)
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    return web.Response(status=200 if m == "PUT" else 204)


async def _bucket(request: web.Request, node: MeshNode, bucket: str,
                  body: Callable[[], Awaitable[bytes]]) -> web.StreamResponse:
    from . import objects

    await objects.require_bucket(node, bucket)
    m = request.method
    if m == "GET":
        tags = await node.bucket_config("/" + bucket, "tags")
        if not tags:
            raise S3Error("NoSuchTagSet", "The TagSet does not exist", 404, BucketName=bucket)
        return to_xml(tags)
    if m == "PUT":
        tags = from_xml(await body(), MAX_BUCKET_TAGS)
        await node.set_bucket_config("/" + bucket, "tags", tags or None)
        return web.Response(status=204)
    if m == "DELETE":
        await node.set_bucket_config("/" + bucket, "tags", None)
        return web.Response(status=204)
    raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
