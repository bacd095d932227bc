"""Header values an object keeps: its standard content headers and user metadata text.

Content headers. A PutObject, a CopyObject with ``x-amz-metadata-directive:
REPLACE`` and a CreateMultipartUpload may send ``Cache-Control``,
``Content-Disposition``, ``Content-Encoding``, ``Content-Language`` and
``Expires``; S3 keeps them with the object and returns them on GET and HEAD
(where ``response-*`` query parameters override them). They are kept in the
object's attributes (``hdrs``), as sent, except that ``aws-chunked``, which
names the request's framing and not the object's, is dropped from
``Content-Encoding`` (AWS does the same).

Non-ASCII text. HTTP header values are bytes; S3 reads them as ISO-8859-1 and,
when a value it returns holds any non-US-ASCII character, encodes it as an
RFC 2047 encoded word of its UTF-8 (``=?UTF-8?B?...?=``), while US-ASCII values
come back as sent. So a value a client encoded itself as RFC 2047 (the way to
carry Unicode; boto3 and minio-py refuse non-ASCII metadata outright) comes back
exactly as sent, and raw non-ASCII bytes come back as AWS returns them (UTF-8
bytes sent raw are "double encoded", as the S3 User Guide's example shows).
aiohttp decodes header bytes as UTF-8 with surrogate escapes, so the bytes
are recovered first.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

CONTENT_HEADERS = ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires")


def request_text(value: str) -> str:
    """A request header's value as S3 reads it: each byte sent is one ISO-8859-1 character."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def response_text(value: str) -> str:
    """A kept value as S3 returns it: US-ASCII as is, anything else as an RFC 2047 word."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode() + "?="


def content_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The content headers of a request that S3 keeps with the object it writes."""
    kept = {}
    for name in CONTENT_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "Content-Encoding":
            value = ",".join(t.strip() for t in value.split(",")
                             if t.strip() and t.strip().lower() != "aws-chunked")
            if not value:
                continue
        kept[name] = request_text(value)
    return kept
