"""CORS: a bucket's rules (``?cors``), preflights (OPTIONS) and the headers of actual requests.

The configuration is bucket configuration in the core
(:meth:`meshd.core.MeshNode.bucket_config`, name ``cors``): kept in the
region's metadata shards, so every node of the region answers with the same
rules. It is readable without a credential, as it must be: a browser's
preflight carries none.

Evaluation follows S3: the first rule whose ``AllowedOrigin`` matches the
request's ``Origin`` (one ``*`` wildcard per pattern), whose ``AllowedMethod``
holds the method (a preflight's ``Access-Control-Request-Method``), and whose
``AllowedHeader`` patterns cover every header of
``Access-Control-Request-Headers`` (case-insensitive) decides. A preflight no
rule allows is ``403 AccessForbidden`` ("CORSResponse: This CORS request is not
allowed..."); an actual request no rule allows is served without CORS headers
(the browser then withholds the response from the page).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshd import errors as me
from meshd.core import MeshNode

from . import xmlio
from .errors import S3Error

log = logging.getLogger(__name__)
NAME = "cors"
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100
_NOT_ALLOWED = ("CORSResponse: This CORS request is not allowed. This is usually because the evalution of "
                "Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers "
                "are not whitelisted by the resource's CORS spec.")


def _malformed(detail: str) -> S3Error:
    return S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against our "
                   f"published schema: {detail}", 400)


def parse(body: bytes) -> list[dict[str, Any]]:
    """A CORSConfiguration document as the rules the core keeps."""
    root = xmlio.parse(body, "CORSConfiguration")
    rules = []
    for r in xmlio.children(root, "CORSRule"):
        def texts(tag: str, el: Any = r) -> list[str]:
            return [(c.text or "").strip() for c in xmlio.children(el, tag)]

        origins, methods = texts("AllowedOrigin"), texts("AllowedMethod")
        if not origins or not methods:
            raise _malformed("every CORSRule needs an AllowedOrigin and an AllowedMethod")
        for m in methods:
            if m not in METHODS:
                raise S3Error("InvalidRequest", "Found unsupported HTTP method in CORS config. "
                              f"Unsupported method is {m}", 400)
        for o in origins:
            if o.count("*") > 1:
                raise S3Error("InvalidRequest", f'AllowedOrigin "{o}" can not have more than one wildcard.', 400)
        headers = texts("AllowedHeader")
        for h in headers:
            if h.count("*") > 1:
                raise S3Error("InvalidRequest", f'AllowedHeader "{h}" can not have more than one wildcard.', 400)
        rule: dict[str, Any] = {"origins": origins, "methods": methods, "headers": headers,
                                "expose": texts("ExposeHeader")}
        rid = xmlio.child_text(r, "ID")
        if rid is not None:
            rule["id"] = rid
        age = xmlio.child_text(r, "MaxAgeSeconds")
        if age is not None:
            if not re.fullmatch(r"\s*-?[0-9]{1,9}\s*", age):
                raise _malformed("MaxAgeSeconds must be an integer")
            rule["max_age"] = int(age)
        rules.append(rule)
    if not rules:
        raise _malformed("a CORSConfiguration needs at least one CORSRule")
    if len(rules) > MAX_RULES:
        raise S3Error("InvalidRequest", f"A CORS configuration can have at most {MAX_RULES} rules", 400)
    return rules


def to_xml(rules: list[dict[str, Any]]) -> bytes:
    out = []
    for r in rules:
        kids = [xmlio.leaf("ID", r["id"])] if "id" in r else []
        kids += [xmlio.leaf("AllowedHeader", h) for h in r.get("headers", [])]
        kids += [xmlio.leaf("AllowedMethod", m) for m in r["methods"]]
        kids += [xmlio.leaf("AllowedOrigin", o) for o in r["origins"]]
        kids += [xmlio.leaf("ExposeHeader", h) for h in r.get("expose", [])]
        if "max_age" in r:
            kids.append(xmlio.leaf("MaxAgeSeconds", r["max_age"]))
        out.append(xmlio.element("CORSRule", kids))
    return xmlio.document(xmlio.element("CORSConfiguration", out))


def _match(pattern: str, value: str, fold: bool = False) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    if "*" not in pattern:
        return pattern == value
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]").replace("?", "[?]"))


def find_rule(rules: list[dict[str, Any]], origin: str, method: str,
              headers: list[str]) -> tuple[dict[str, Any], str] | None:
    """The first rule allowing the request, and the origin pattern that matched."""
    for r in rules:
        matched = next((o for o in r["origins"] if _match(o, origin)), None)
        if matched is None or method not in r["methods"]:
            continue
        if all(any(_match(p, h, fold=True) for p in r.get("headers", [])) for h in headers):
            return r, matched
    return None


def _headers(rule: dict[str, Any], matched: str, origin: str) -> dict[str, str]:
    h = {"Access-Control-Allow-Origin": "*" if matched == "*" else origin,
         "Access-Control-Allow-Methods": ", ".join(rule["methods"]),
         "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"}
    if matched != "*":
        h["Access-Control-Allow-Credentials"] = "true"
    if rule.get("expose"):
        h["Access-Control-Expose-Headers"] = ", ".join(rule["expose"])
    if "max_age" in rule:
        h["Access-Control-Max-Age"] = str(rule["max_age"])
    return h


async def rules_of(node: MeshNode, bucket: str) -> list[dict[str, Any]]:
    found = await node.bucket_config("/" + bucket, NAME)
    return list(found) if isinstance(found, list) else []


async def preflight(request: web.Request, node: MeshNode, bucket: str) -> web.Response:
    """OPTIONS: answered from the bucket's rules, whoever asks (no credential needed)."""
    origin = request.headers.get("Origin")
    method = request.headers.get("Access-Control-Request-Method")
    if not bucket:
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
    if not origin:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.", 400)
    if not method:
        raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null", 400)
    if method not in METHODS:
        raise S3Error("BadRequest", f"Invalid Access-Control-Request-Method: {method}", 400)
    rules = await rules_of(node, bucket)
    if not rules:
        raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.", 403,
                      Method=method)
    asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
    found = find_rule(rules, origin, method, asked)
    if found is None:
        raise S3Error("AccessForbidden", _NOT_ALLOWED, 403, Method=method)
    h = _headers(*found, origin)
    if asked:
        h["Access-Control-Allow-Headers"] = ", ".join(asked)
    return web.Response(status=200, headers=h)


async def actual_headers(node: MeshNode, request: web.Request, bucket: str) -> dict[str, str]:
    """The CORS headers of a request that carries an ``Origin`` (none if no rule allows it)."""
    origin = request.headers.get("Origin")
    if not origin or not bucket:
        return {}
    try:
        rules = await rules_of(node, bucket)
    except me.MeshError as e:  # the response goes out without them: the browser hides it
        log.warning("CORS rules of bucket %s unavailable: %s", bucket, e)
        return {}
    found = find_rule(rules, origin, request.method, [])
    return _headers(*found, origin) if found is not None else {}


async def handle(request: web.Request, node: MeshNode, bucket: str,
                 body: Callable[[], Awaitable[bytes]]) -> web.StreamResponse:
    """GetBucketCors, PutBucketCors, DeleteBucketCors."""
    from .objects import require_bucket

    await require_bucket(node, bucket)
    m = request.method
    if m == "GET":
        rules = await rules_of(node, bucket)
        if not rules:
            raise S3Error("NoSuchCORSConfiguration", "The CORS configuration does not exist", 404,
                          BucketName=bucket)
        return web.Response(body=to_xml(rules), content_type="application/xml")
    if m == "PUT":
        await node.set_bucket_config("/" + bucket, NAME, parse(await body()))
        return web.Response(status=200)
    if m == "DELETE":
        await node.set_bucket_config("/" + bucket, NAME, None)
        return web.Response(status=204)
    raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
