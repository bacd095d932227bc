"""AWS Signature Version 2, presigned query strings only.

boto3 still makes SigV2 presigned URLs by default for S3 in us-east-1
(``?AWSAccessKeyId=..&Signature=..&Expires=..``), so "an unmodified client"
includes them. Everything else is SigV4 (``sigv4.py``); SigV2 *headers* are
refused there.

String to sign::

    METHOD \\n Content-MD5 \\n Content-Type \\n Expires \\n
    CanonicalizedAmzHeaders CanonicalizedResource

where the resource is ``/bucket/key`` as sent (path style; for virtual-hosted
requests the bucket is put in front) plus the sub-resources that S3 signs,
sorted. Signature = base64(HMAC-SHA1(secret, string to sign)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl

from .errors import S3Error, access_denied
from .sigv4 import AuthResult

SIGNED_SUBRESOURCES = {
    "acl", "delete", "lifecycle", "location", "logging", "notification", "partNumber", "policy",
    "requestPayment", "torrent", "uploadId", "uploads", "versionId", "versioning", "versions",
    "website", "cors", "tagging", "restore", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "response-content-language", "response-content-type",
    "response-expires",
}


def is_sigv2_query(raw_query: str) -> bool:
    return "Signature=" in raw_query and "AWSAccessKeyId=" in raw_query and "X-Amz-" not in raw_query


def verify_presigned_v2(method: str, resource_path: str, raw_query: str, headers: Mapping[str, str],
                        keys: Mapping[str, str], now: float | None = None) -> AuthResult:
    """``resource_path``: ``/bucket/key`` exactly as percent-encoded on the wire."""
    params = parse_qsl(raw_query, keep_blank_values=True)
    q = dict(params)
    access_key, signature, expires = q.get("AWSAccessKeyId", ""), q.get("Signature", ""), q.get("Expires", "")
    if not expires.isdigit():
        raise access_denied("Query-string authentication requires the Signature, Expires and "
                            "AWSAccessKeyId parameters")
    if int(expires) < (now if now is not None else time.time()):
        raise access_denied("Request has expired")
    secret = keys.get(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                      403)
    lower = {k.lower(): v for k, v in headers.items()}
    amz = "".join(f"{k}:{v.strip()}\n" for k, v in sorted(lower.items()) if k.startswith("x-amz-"))
    subs = sorted((k, v) for k, v in params if k in SIGNED_SUBRESOURCES)
    resource = resource_path
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v != "" else k for k, v in subs)
    to_sign = "\n".join([method, lower.get("content-md5", ""), lower.get("content-type", ""), expires,
                         amz + resource])
    expected = base64.b64encode(hmac.new(secret.encode(), to_sign.encode("utf-8"), hashlib.sha1).digest())
    if not hmac.compare_digest(expected, signature.encode()):
        raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                      "signature you provided. Check your key and signing method.", 403)
    return AuthResult(access_key=access_key, payload_hash="UNSIGNED-PAYLOAD")
