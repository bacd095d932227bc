"""Browser POST uploads: ``POST /bucket`` with a ``multipart/form-data`` body.

The form's fields come first, the ``file`` field last (fields after it are
ignored, as on S3). The request carries no Authorization header: the form
does, as a base64 ``policy`` document and its signature:

- SigV4: ``x-amz-algorithm`` (``AWS4-HMAC-SHA256``), ``x-amz-credential``
  (``AKID/yyyymmdd/region/s3/aws4_request``), ``x-amz-date``,
  ``x-amz-signature`` = hex HMAC-SHA256 of the policy text with the signing key
  of the credential's scope (``sigv4.signing_key``);
- SigV2: ``AWSAccessKeyId`` and ``signature`` = base64 HMAC-SHA1 of the policy
  text with the secret.

A form without a signature is an anonymous request, let in only where the
gateway lets unsigned requests in. The policy must not have expired, and its
conditions must hold: ``{"field": value}`` and ``["eq", "$field", value]``
(exact), ``["starts-with", "$field", prefix]`` (for ``Content-Type``, each
comma-separated type), ``["content-length-range", min, max]`` (checked while
the file streams: a file outside it is never committed); ``bucket`` is the
request's bucket. Every form field needs a condition, except ``policy``,
``x-amz-signature``, ``signature``, ``AWSAccessKeyId``, ``file`` and
``x-ignore-*`` fields. Failures are ``403 AccessDenied`` "Invalid according to
Policy: ...", as on S3.

The file's bytes stream from aiohttp's multipart reader into the mesh's write
(never held whole in memory). ``key`` may contain ``${filename}``, replaced by
the file's name. ``Content-Type``, ``x-amz-meta-*``, ``x-amz-storage-class``
and ``tagging`` (a Tagging XML document) fields are recorded with the object.
The answer is ``success_action_redirect`` (303 to that URL, with ``bucket``,
``key`` and ``etag`` added to its query), else ``success_action_status`` 200,
201 (a PostResponse XML document) or 204 (the default).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from meshd import auth as mauth
from meshd.core import MeshNode

from . import acl, objects, storageclass, tagging, xmlio
from .errors import S3Error, access_denied, invalid_argument
from .sigv4 import ALGORITHM, signing_key

MAX_FIELDS = 20 << 10  # the form's fields before the file, together (S3: 20 KB)
CHUNK = 1 << 20
EXEMPT = frozenset({"policy", "x-amz-signature", "signature", "awsaccesskeyid", "file"})
_CREDENTIAL = re.compile(r"([^/]+)/([0-9]{8})/([^/]+)/s3/aws4_request")
_EXPIRATION = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


def is_form_upload(request: web.Request, bucket: str, key: str) -> bool:
    return (request.method == "POST" and bool(bucket) and not key and not request.query
            and request.headers.get("Content-Type", "").lower().startswith("multipart/form-data"))


_BROKEN = (ValueError, AssertionError, KeyError, HttpProcessingError)  # what aiohttp's reader raises


def _malformed() -> S3Error:
    return S3Error("MalformedPOSTRequest", "The body of your POST request is not well-formed "
                   "multipart/form-data.", 400)


async def _chunk(part: BodyPartReader, size: int) -> bytes:
    try:
        return await part.read_chunk(size)
    except _BROKEN:
        raise _malformed() from None


def _policy_error(detail: str) -> S3Error:
    return access_denied("Invalid according to Policy: " + detail)


async def _read_field(part: BodyPartReader, budget: int) -> bytes:
    out = bytearray()
    while True:
        chunk = await _chunk(part, 4096)
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > budget:
            raise S3Error("MaxPostPreDataLengthExceeded", "Your POST request fields preceding the upload "
                          "file were too large.", 400)


def _authenticate(form: Mapping[str, str], keys: Mapping[str, str]) -> str | None:
    """The access key that signed the form's policy; None for an unsigned form."""
    policy = form.get("policy")
    if "x-amz-signature" in form or "x-amz-credential" in form:
        if form.get("x-amz-algorithm") != ALGORITHM:
            raise invalid_argument(f"POST requires x-amz-algorithm {ALGORITHM}", ArgumentName="x-amz-algorithm")
        m = _CREDENTIAL.fullmatch(form.get("x-amz-credential", ""))
        if m is None:
            raise invalid_argument("x-amz-credential must be AKID/yyyymmdd/region/s3/aws4_request",
                                   ArgumentName="x-amz-credential")
        if not form.get("x-amz-date", "").startswith(m.group(2)):
            raise invalid_argument("the date of x-amz-credential is not the date of x-amz-date",
                                   ArgumentName="x-amz-date")
        access_key = m.group(1)
        if policy is None:
            raise invalid_argument("Bucket POST must contain a field named 'policy'", ArgumentName="policy")
        secret = _secret(keys, access_key)
        key = signing_key(secret, m.group(2), m.group(3))
        expected = hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()
        given = _field(form, "x-amz-signature", "X-Amz-Signature")
    elif "signature" in form or "awsaccesskeyid" in form:
        access_key = form.get("awsaccesskeyid", "")
        if policy is None:
            raise invalid_argument("Bucket POST must contain a field named 'policy'", ArgumentName="policy")
        secret = _secret(keys, access_key)
        expected = base64.b64encode(hmac.new(secret.encode(), policy.encode(), hashlib.sha1).digest()).decode()
        given = _field(form, "signature", "Signature")
    else:
        return None
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                      "signature you provided. Check your key and signing method.", 403)
    return access_key


def _field(form: Mapping[str, str], name: str, shown: str) -> str:
    """A signature field the form must have (AWS: 400 when it is missing, not a mismatch)."""
    value = form.get(name)
    if value is None:
        raise invalid_argument(f"Bucket POST must contain a field named '{shown}'.  If it is specified, please "
                               "check the order of the fields.", ArgumentName=shown)
    return value


def _secret(keys: Mapping[str, str], access_key: str) -> str:
    secret = keys.get(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                      403)
    return secret


class Policy:
    """A POST policy document's conditions, checked against the form."""

    def __init__(self, encoded: str, now: datetime | None = None) -> None:
        try:
            doc = json.loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise invalid_argument("Invalid Policy: the policy is not base64-encoded JSON",
                                   ArgumentName="policy") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("conditions"), list) \
                or not isinstance(doc.get("expiration"), str):
            raise invalid_argument("Invalid Policy: it needs an expiration and a list of conditions",
                                   ArgumentName="policy")
        try:  # ISO 8601 in GMT, as AWS takes it ("2026-12-08T12:00:00.000Z"); a date without the T, no
            if not _EXPIRATION.fullmatch(doc["expiration"]):  # zone or with an offset is refused
                raise ValueError(doc["expiration"])
            expires = datetime.fromisoformat(doc["expiration"].replace("Z", "+00:00"))
        except ValueError:
            raise invalid_argument("Invalid Policy: Invalid 'expiration' value: "
                                   f"'{doc['expiration'][:64]}'", ArgumentName="policy") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= (now or datetime.now(UTC)):
            raise _policy_error("Policy expired.")
        self.exact: list[tuple[str, str]] = []
        self.prefix: list[tuple[str, str]] = []
        self.length: tuple[int, int] | None = None
        for c in doc["conditions"]:
            if isinstance(c, dict) and len(c) == 1:
                (name, value), = c.items()
                self.exact.append((str(name).lower().lstrip("$"), str(value)))
            elif isinstance(c, list) and len(c) == 3 and str(c[0]).lower() == "content-length-range":
                try:
                    self.length = (int(c[1]), int(c[2]))
                except (TypeError, ValueError):
                    raise invalid_argument("Invalid Policy: content-length-range needs two integers",
                                           ArgumentName="policy") from None
            elif isinstance(c, list) and len(c) == 3 and str(c[0]).lower() in ("eq", "starts-with") \
                    and isinstance(c[1], str) and c[1].startswith("$"):
                target = self.exact if str(c[0]).lower() == "eq" else self.prefix
                target.append((c[1][1:].lower(), str(c[2])))
            else:
                raise invalid_argument(f"Invalid Policy: Invalid Condition: {json.dumps(c)[:200]}",
                                       ArgumentName="policy")

    def check(self, form: Mapping[str, str]) -> None:
        for name, value in self.exact:
            if form.get(name) != value:
                raise _policy_error(f'Policy Condition failed: ["eq", "${name}", "{value}"]')
        for name, value in self.prefix:
            got = form.get(name)
            ok = got is not None and (all(t.strip().startswith(value) for t in got.split(","))
                                      if name == "content-type" else got.startswith(value))
            if not ok:
                raise _policy_error(f'Policy Condition failed: ["starts-with", "${name}", "{value}"]')
        covered = {n for n, _ in self.exact} | {n for n, _ in self.prefix}
        extra = sorted(n for n in form if n not in covered and n not in EXEMPT and n != "bucket"
                       and not n.startswith("x-ignore-"))
        if extra:
            raise _policy_error("Extra input fields: " + ", ".join(extra))


async def _file_chunks(part: BodyPartReader, length: tuple[int, int] | None) -> AsyncIterator[bytes]:
    """The file's bytes as they arrive; outside content-length-range raises before the write commits."""
    size = 0
    while True:
        chunk = await _chunk(part, CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if length is not None and size > length[1]:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400,
                          MaxSizeAllowed=str(length[1]))
        yield chunk
    if length is not None and size < length[0]:
        raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size", 400,
                      MinSizeAllowed=str(length[0]))


async def upload(request: web.Request, node: MeshNode, bucket: str, keys: Mapping[str, str],
                 principal_of: Callable[[str | None], mauth.Principal], anonymous_ok: bool) -> web.Response:
    """Handle a browser POST upload; the caller turns S3Errors into responses."""
    try:
        reader = await request.multipart()
    except _BROKEN:
        raise _malformed() from None
    form: dict[str, str] = {}
    raw_names: dict[str, str] = {}
    budget = MAX_FIELDS
    file_part: BodyPartReader | None = None
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or not part.name:
                raise _malformed()
            name = part.name.lower()
            if name == "file":
                file_part = part
                break
            value = await _read_field(part, budget)
            budget -= len(value)
            try:
                form[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_argument(f"form field {part.name!r} is not UTF-8") from None
            raw_names[name] = part.name
    except _BROKEN:
        raise _malformed() from None
    if file_part is None:
        raise invalid_argument("POST requires exactly one file upload per request.", ArgumentName="file")
    if "key" not in form:
        raise invalid_argument("Bucket POST must contain a field named 'key'.  If it is specified, "
                               "please check the order of the fields.", ArgumentName="key")
    access_key = _authenticate(form, keys)
    if access_key is None and not anonymous_ok:
        raise access_denied("Access Denied: the form carries no signature (x-amz-signature or signature)")
    checked = dict(form, bucket=bucket)
    policy = Policy(form["policy"]) if "policy" in form else None
    if policy is not None:
        policy.check(checked)
    filename = (file_part.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    key = form["key"].replace("${filename}", filename)
    if not key:
        raise invalid_argument("User key must have a length greater than 0.", ArgumentName="key")
    meta = {raw_names[n][len("x-amz-meta-"):].lower(): v for n, v in form.items() if n.startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > 2048:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size", 400)
    acl.check_write_acl({"x-amz-acl": form["acl"]} if "acl" in form else {})
    extra: dict[str, Any] = storageclass.from_headers({storageclass.HEADER: form[storageclass.HEADER]}
                                                      if storageclass.HEADER in form else {})
    if "tagging" in form:
        tags = tagging.from_xml(form["tagging"].encode())
        if tags:
            extra["tags"] = tags
    with node.access.serving(principal_of(access_key)):
        await objects.require_bucket(node, bucket)
        limit = min(policy.length[1], objects.MAX_PUT) if policy is not None and policy.length else objects.MAX_PUT
        _, etag = await objects.write_object(
            node, bucket, key, _file_chunks(file_part, policy.length if policy is not None else None),
            None, form.get("content-type") or "binary/octet-stream", meta, limit=limit, extra=extra)
    host = request.headers.get("Host", "")
    location = f"{request.scheme}://{host}/{quote(bucket)}/{quote(key)}"
    redirect = form.get("success_action_redirect") or form.get("redirect")
    if redirect:
        u = urlsplit(redirect)
        if u.scheme in ("http", "https") and u.netloc:
            query = (u.query + "&" if u.query else "") + urlencode({"bucket": bucket, "key": key, "etag": etag})
            return web.Response(status=303, headers={"Location": urlunsplit(u._replace(query=query)),
                                                     "ETag": etag})
    status = form.get("success_action_status", "204")
    if status == "201":
        doc = xmlio.element("PostResponse", [xmlio.leaf("Location", location), xmlio.leaf("Bucket", bucket),
                                             xmlio.leaf("Key", key), xmlio.leaf("ETag", etag)])
        return web.Response(status=201, body=xmlio.document(doc), content_type="application/xml",
                            headers={"ETag": etag, "Location": location})
    return web.Response(status=200 if status == "200" else 204, headers={"ETag": etag, "Location": location})
