"""Server-side AWS Signature Version 4 verification for the S3 gateway.

Pure standard library (``hmac``, ``hashlib``, ``zlib``), no I/O, no web framework: the
gateway hands :func:`verify_request` the request line and headers exactly as received
and gets an :class:`AuthResult` back, or an :class:`~gateway.errors.S3Error`. No input
makes these functions raise anything else (malformed input is an ``S3Error`` too);
exceptions raised by the body iterator handed to the streaming helpers pass through.

The algorithm (Authorization header form)
-----------------------------------------
The client sends ``Authorization: AWS4-HMAC-SHA256 Credential=AK/yyyymmdd/region/s3/
aws4_request, SignedHeaders=h1;h2;..., Signature=<64 hex>``. The server rebuilds what the
client signed and compares:

1. *Canonical request*: ``METHOD \\n canonical URI \\n canonical query \\n canonical headers
   \\n \\n signed-header list \\n payload hash``.

   - Canonical URI: the raw path percent-decoded once and re-encoded with AWS's rules
     (``A-Za-z0-9-._~`` and ``/`` kept, everything else ``%XX`` upper case). S3 does not
     normalise the path (no ``.``/``..`` or ``//`` removal) and botocore does not
     double-encode, so botocore's ``%3D`` and another client's ``=`` give the same URI.
     If the signature does not match that form, the path exactly as sent is tried too,
     for clients that sign their request target verbatim (both forms denote the same
     key, so this accepts no request whose meaning differs from what was signed).
   - Canonical query: every ``key=value`` pair percent-decoded and re-encoded with the
     same rules (``/`` encoded too), sorted by encoded key then value; a pair without
     ``=`` gets an empty value. ``+`` is decoded as a *space*: that is how aiohttp/yarl
     (``request.query``) and ``urllib.parse.parse_qsl`` read a query, and the signature
     must bind the parameters the handlers act on; otherwise a signed ``prefix=a%2Bb``
     (meaning ``a+b``) could be replayed as ``prefix=a+b`` (meaning ``a b``). botocore
     always sends ``%20`` and ``%2B``, never a bare ``+``, so it is unaffected. The raw
     sorted query is tried as a fallback, as for the path.
   - Canonical headers: for each name in SignedHeaders (lower case, in that order),
     ``name:value`` with the value trimmed and inner whitespace runs collapsed to one
     space; repeated headers joined with ``,``. ``host`` must be signed, and every
     ``x-amz-*`` header present must be signed (as S3 requires; else AccessDenied with
     ``HeadersNotSigned``).
   - Payload hash: the ``x-amz-content-sha256`` header, required for S3: a hex SHA-256 of
     the body, ``UNSIGNED-PAYLOAD``, or one of the ``STREAMING-*`` values of aws-chunked
     bodies. The header only *claims* the hash: the gateway must check the body against
     it (:func:`check_sha256`, :func:`decode_aws_chunked`).

2. *String to sign*: ``AWS4-HMAC-SHA256 \\n yyyymmddThhmmssZ \\n date/region/s3/aws4_request
   \\n hex(sha256(canonical request))``. The time is ``x-amz-date`` (or the ``Date``
   header, RFC 1123, if there is no ``x-amz-date``); it must be within ``max_skew`` of
   the server's clock and its date must equal the credential date.

3. *Signing key*: ``HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"),
   "aws4_request")``; signature = ``hex(HMAC(key, string to sign))``, compared with
   :func:`hmac.compare_digest`. Any region string is accepted (the gateway has no
   region; the client's choice only enters the key derivation); the service must be
   ``s3``.

Presigned URLs (query form) carry the same data as ``X-Amz-Algorithm``,
``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires`` (1..604800 s),
``X-Amz-SignedHeaders`` and ``X-Amz-Signature``; the canonical query is every parameter
except ``X-Amz-Signature`` and the payload hash is ``UNSIGNED-PAYLOAD`` (or the
``x-amz-content-sha256`` header if the client signed one, as botocore does when given
one). A presigned URL is valid from ``X-Amz-Date - max_skew`` to ``X-Amz-Date +
X-Amz-Expires``.

aws-chunked bodies (:func:`decode_aws_chunked`)
-----------------------------------------------
``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`` ... ``0[;chunk-signature=<sig>]\\r\\n``,
then trailer lines ``name:value\\r\\n`` and an empty line. With
``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` every chunk (the final empty one too) is
signed: ``HMAC(key, "AWS4-HMAC-SHA256-PAYLOAD\\n" + date + "\\n" + scope + "\\n" +
previous signature + "\\n" + sha256("") + "\\n" + sha256(chunk data))``, the first
previous signature being the request's own (the *seed*). Signed trailers end with
``x-amz-trailer-signature:<sig>`` = ``HMAC(key, "AWS4-HMAC-SHA256-TRAILER\\n" + date +
"\\n" + scope + "\\n" + final chunk signature + "\\n" + sha256(trailers as "name:value\\n"
lines))``. botocore (1.43 and 1.44) never signs chunks or trailers (it only sends
``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, over https), so both are checked against the
AWS documentation's published vectors in the tests.

Trailing checksums ``x-amz-checksum-crc32``, ``-crc32c``, ``-crc64nvme``, ``-sha1`` and
``-sha256`` (base64 of the big-endian CRC / digest; :mod:`gateway.checksums`) are verified
over the decoded data (``BadDigest``). They must be declared in ``X-Amz-Trailer``
(carried in :attr:`AuthResult.trailer`), which tells the decoder which checksum to compute
while streaming; a declared trailer that does not arrive is an error. A checksum value
that is not base64 of the algorithm's size is ``InvalidRequest`` ("Value for
x-amz-checksum-crc32 header is invalid.", as S3 answers); other ``x-amz-checksum-*``
trailers (no such algorithm) are only checked to be base64.

Streaming semantics: the decoders yield data as it arrives and raise when a check
fails. A chunk's signature is checked when the chunk's last byte has arrived, and the
body checksum, trailer signature and length only at the very end; the consumer (a
streaming upload) treats an exception from the iterator as failure and commits
nothing. Data yielded is therefore not authenticated until the iterator finishes
normally.

Lenient framing, on purpose: a body that ends right after a complete trailer line
(without the final empty line) is accepted, and so is an empty line between the final
chunk and the trailers; anything else after the final empty line is an error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_to_bytes

from gateway import checksums
from gateway.errors import S3Error, access_denied, invalid_argument

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_PRESIGN_EXPIRES",
    "STREAMING_PAYLOAD",
    "STREAMING_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "UNSIGNED_PAYLOAD",
    "AuthResult",
    "check_checksum",
    "check_sha256",
    "decode_aws_chunked",
    "signing_key",
    "verify_request",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES = 604800  # one week, as S3

_PAYLOAD_KEYWORDS = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER})
_SIGNED_STREAMING = frozenset({STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER})
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                   "X-Amz-SignedHeaders", "X-Amz-Expires")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DATE8 = re.compile(r"[0-9]{8}")
_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_EXPIRES = re.compile(r"[0-9]{1,7}")
_AUTH_HEADER = re.compile(r"\s*(\S+)(?:\s+(.*))?", re.DOTALL)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_CHUNK_SIG_EXT = re.compile(rb"chunk-signature=([0-9a-fA-F]{64})")

_MAX_LINE = 4096  # one aws-chunked header or trailer line, CRLF included
_MAX_TRAILERS = 16384  # all trailer lines together

_SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you "
                       "provided. Check your key and signing method.")


@dataclass(frozen=True)
class AuthResult:
    """Who sent the request and what its body must be checked against.

    ``payload_hash`` is the ``x-amz-content-sha256`` value: a hex SHA-256 (check the body
    with :func:`check_sha256`), ``UNSIGNED-PAYLOAD`` (presigned URLs, anonymous requests
    without the header), or a ``STREAMING-*`` value (decode the body with
    :func:`decode_aws_chunked`). ``signing_key``, ``seed_signature``, ``amz_date`` and
    ``scope`` let the chunk signatures be verified; ``trailer`` is the lower-cased
    ``X-Amz-Trailer`` header (the trailers an aws-chunked body declares).
    """

    access_key: str | None  # None: anonymous request
    payload_hash: str
    signing_key: bytes = field(default=b"", repr=False)  # secret-derived: keep out of logs
    seed_signature: str = ""
    amz_date: str = ""  # yyyymmddThhmmssZ
    scope: str = ""  # date/region/s3/aws4_request
    trailer: str = ""  # X-Amz-Trailer, lower case, e.g. "x-amz-checksum-crc32"


# --------------------------------------------------------------------------- helpers


def _b(s: str) -> bytes:
    """UTF-8 bytes of a str that may carry surrogate escapes (undecodable request bytes)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _clean(s: str, limit: int = 256, newlines: bool = False) -> str:
    """A client-supplied string made safe for an error message / XML element."""
    out = "".join(c if " " <= c <= "~" or (newlines and c == "\n") else "?" for c in s[:limit])
    return out + ("..." if len(s) > limit else "")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, _b(msg), hashlib.sha256).digest()


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key of ``secret`` for ``date`` (yyyymmdd), ``region``, ``service``.
    Kept (a key is good for its day): four HMACs per request less on small GETs."""
    k = _hmac(_b("AWS4" + secret), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def _format_amz_date(dt: datetime) -> str:
    # Not strftime: it does not zero-pad years below 1000 on every platform.
    return (f"{dt.year:04d}{dt.month:02d}{dt.day:02d}"
            f"T{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z")


def _parse_amz_date(s: str) -> datetime | None:
    m = _AMZ_DATE.fullmatch(s)
    if m is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def _parse_http_date(s: str) -> datetime | None:
    try:
        dt = parsedate_to_datetime(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except Exception:  # email.utils' failure modes vary between Python versions
        return None


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _header_lists(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lower-cased name -> every value, for a plain dict or a multidict alike."""
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        out.setdefault(name.lower(), []).append(value)
    return out


def _one(hdrs: dict[str, list[str]], name: str) -> str | None:
    values = hdrs.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_argument(f"Multiple {name} headers are not allowed", ArgumentName=name)
    return values[0]


@dataclass(frozen=True)
class _Param:
    key: str  # decoded
    value: str  # decoded
    raw_key: str
    raw_value: str
    enc_key: str  # canonical (AWS URI-encoded)
    enc_value: str


def _unquote_query(s: str) -> bytes:
    return unquote_to_bytes(_b(s).replace(b"+", b" "))


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")  # AWS's unreserved characters: encoded as themselves


def _query_part(raw: str) -> tuple[str, str]:
    """(decoded, canonical) of a query key or value as sent; most are plain already."""
    if _PLAIN.fullmatch(raw):
        return raw, raw
    b = _unquote_query(raw)
    return b.decode("utf-8", "surrogateescape"), quote(b, safe="")


def _parse_query(raw_query: str) -> list[_Param]:
    params = []
    for seg in raw_query.split("&"):
        if not seg:
            continue
        raw_key, _, raw_value = seg.partition("=")
        key, enc_key = _query_part(raw_key)
        value, enc_value = _query_part(raw_value)
        params.append(_Param(key, value, raw_key, raw_value, enc_key, enc_value))
    return params


def _canonical_queries(params: Iterable[_Param]) -> list[str]:
    """The canonical query (re-encoded), then the raw sorted query if that differs."""
    ps = list(params)
    canonical = "&".join(f"{k}={v}" for k, v in sorted((p.enc_key, p.enc_value) for p in ps))
    raw = "&".join(f"{k}={v}" for k, v in sorted((p.raw_key, p.raw_value) for p in ps))
    return [canonical] if raw == canonical else [canonical, raw]


def _canonical_uris(raw_path: str) -> list[str]:
    """The canonical URI (decoded once, re-encoded), then the path as sent if that differs."""
    raw = raw_path or "/"
    canonical = quote(unquote_to_bytes(_b(raw)), safe="/")
    return [canonical] if raw == canonical else [canonical, raw]


def _check_payload_hash(value: str) -> None:
    if value in _PAYLOAD_KEYWORDS or _HEX64.fullmatch(value):
        return
    raise invalid_argument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a "
        "valid sha256 value.", ArgumentName="x-amz-content-sha256", ArgumentValue=_clean(value))


def _sigv2_unsupported() -> S3Error:
    return S3Error("InvalidRequest", "The authorization mechanism you have provided is not "
                   "supported: AWS Signature Version 2 is not supported by this gateway. "
                   "Please use AWS4-HMAC-SHA256.", 400)


def _header_malformed(detail: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed",
                   f"The authorization header is malformed; {detail}", 400)


def _query_malformed(detail: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", detail, 400)


@dataclass(frozen=True)
class _Credential:
    access_key: str
    date: str
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/aws4_request"


def _parse_credential(value: str, amz_date: str,
                      malformed: Callable[[str], S3Error]) -> _Credential:
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise malformed("the Credential is mal-formed; expecting "
                        "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    access_key, date, region, service, terminator = parts
    if not _DATE8.fullmatch(date):
        raise malformed(f"incorrect date format \"{_clean(date)}\". This date in the credential "
                        "must be in the format \"yyyyMMdd\".")
    if date != amz_date[:8]:
        raise malformed("Invalid credential date. Date is not the same as X-Amz-Date.")
    if not region:
        raise malformed("the region in the credential scope is empty.")
    if service != "s3":
        raise malformed(f"incorrect service \"{_clean(service)}\". This endpoint belongs to "
                        "\"s3\".")
    if terminator != "aws4_request":
        raise malformed(f"incorrect terminal \"{_clean(terminator)}\". This endpoint uses "
                        "\"aws4_request\".")
    return _Credential(access_key, date, region)


def _parse_signed_headers(value: str, malformed: Callable[[str], S3Error]) -> list[str]:
    names = value.split(";")
    if not all(_HEADER_NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise malformed("SignedHeaders must be a ';'-separated list of distinct lower-case "
                        "header names.")
    if "host" not in names:
        raise malformed("the host header must be signed.")
    return names


def _check_all_amz_signed(hdrs: dict[str, list[str]], signed: list[str],
                          exempt: frozenset[str] = frozenset()) -> None:
    unsigned = sorted(n for n in hdrs
                      if n.startswith("x-amz-") and n not in signed and n not in exempt)
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were "
                      "not signed", 403, HeadersNotSigned=_clean(", ".join(unsigned)))


def _secret(keys: Mapping[str, str], access_key: str) -> str:
    secret = keys.get(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist "
                      "in our records.", 403, AWSAccessKeyId=_clean(access_key))
    return secret


def _check_signature(method: str, raw_path: str, params: Iterable[_Param],
                     hdrs: dict[str, list[str]], signed: list[str], payload_hash: str,
                     amz_date: str, cred: _Credential, key: bytes, provided: str) -> None:
    lines = []
    for name in signed:
        values = hdrs.get(name, [])
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values))
    headers_block = "\n".join(lines) + "\n"
    want = provided.lower().encode("ascii")
    first: tuple[str, str] | None = None
    matched = False
    for uri in _canonical_uris(raw_path):
        for query in _canonical_queries(params):
            canonical = "\n".join([method, uri, query, headers_block, ";".join(signed),
                                   payload_hash])
            sts = "\n".join([ALGORITHM, amz_date, cred.scope,
                             hashlib.sha256(_b(canonical)).hexdigest()])
            got = hmac.new(key, _b(sts), hashlib.sha256).hexdigest().encode("ascii")
            matched |= hmac.compare_digest(got, want)
            if first is None:
                first = (canonical, sts)
    if matched:
        return
    assert first is not None
    # Like S3: what the server signed, so that clients can debug; never the secret or the
    # signature computed from it.
    raise S3Error("SignatureDoesNotMatch", _SIGNATURE_MISMATCH, 403,
                  AWSAccessKeyId=_clean(cred.access_key),
                  StringToSign=_clean(first[1], limit=1024, newlines=True),
                  SignatureProvided=provided,
                  CanonicalRequest=_clean(first[0], limit=8192, newlines=True))


# --------------------------------------------------------------------------- requests


def verify_request(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                   keys: Mapping[str, str], *, allow_anonymous: bool,
                   now: datetime | None = None,
                   max_skew: timedelta = timedelta(minutes=15)) -> AuthResult:
    """Authenticate one S3 request (SigV4 Authorization header, presigned URL or none).

    ``raw_path``/``raw_query``: the request target exactly as sent (still percent-encoded;
    the query without ``?``). ``headers``: a case-insensitive multidict (aiohttp's) or a
    plain dict. ``keys``: access key id -> secret. ``now``: the server clock (UTC;
    naive means UTC). Raises :class:`S3Error` only.
    """
    hdrs = _header_lists(headers)
    params = _parse_query(raw_query)
    query_keys = {p.key for p in params}
    presigned = any(k in query_keys for k in ("X-Amz-Algorithm", "X-Amz-Credential",
                                              "X-Amz-Signature"))
    sigv2_query = "AWSAccessKeyId" in query_keys
    trailer = ",".join(hdrs.get("x-amz-trailer", [])).strip().lower()
    if "authorization" in hdrs:
        if presigned or sigv2_query:
            raise invalid_argument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified", ArgumentName="Authorization")
        return _verify_header(method, raw_path, params, hdrs, keys, _utc(now), max_skew,
                              trailer)
    if presigned:
        return _verify_presigned(method, raw_path, params, hdrs, keys, _utc(now), max_skew,
                                 trailer)
    if sigv2_query:
        raise _sigv2_unsupported()
    if not allow_anonymous:
        raise access_denied()
    payload_hash = _one(hdrs, "x-amz-content-sha256")
    if payload_hash is None:
        payload_hash = UNSIGNED_PAYLOAD
    _check_payload_hash(payload_hash)
    if payload_hash in _SIGNED_STREAMING:
        raise S3Error("InvalidRequest", f"{payload_hash} requires a signed request", 400)
    return AuthResult(access_key=None, payload_hash=payload_hash, trailer=trailer)


def _verify_header(method: str, raw_path: str, params: list[_Param],
                   hdrs: dict[str, list[str]], keys: Mapping[str, str], now: datetime,
                   max_skew: timedelta, trailer: str) -> AuthResult:
    """Authenticate a request signed in its ``Authorization`` header."""
    fields = _parse_auth_header(_one(hdrs, "authorization") or "")
    signature = fields["Signature"]
    amz_date, when = _request_time(hdrs)
    cred = _parse_credential(fields["Credential"], amz_date, _header_malformed)
    payload_hash = _one(hdrs, "x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error("InvalidRequest",
                      "Missing required header for this request: x-amz-content-sha256", 400)
    _check_payload_hash(payload_hash)
    signed = _parse_signed_headers(fields["SignedHeaders"], _header_malformed)
    _check_all_amz_signed(hdrs, signed)
    secret = _secret(keys, cred.access_key)
    if abs(now - when) > max_skew:
        raise S3Error("RequestTimeTooSkewed", "The difference between the request time and the "
                      "current time is too large.", 403, RequestTime=_clean(amz_date),
                      ServerTime=_format_amz_date(now),
                      MaxAllowedSkewMilliseconds=str(int(max_skew.total_seconds() * 1000)))
    return _signed_result(method, raw_path, params, hdrs, signed, payload_hash, amz_date, cred,
                          secret, signature, trailer)


def _parse_auth_header(auth: str) -> dict[str, str]:
    """The Credential, SignedHeaders and Signature of an ``AWS4-HMAC-SHA256`` Authorization."""
    m = _AUTH_HEADER.fullmatch(auth)
    scheme = m.group(1) if m else ""
    if scheme == "AWS":
        raise _sigv2_unsupported()
    if scheme != ALGORITHM:
        if scheme.startswith("AWS4-"):
            raise S3Error("InvalidRequest", "The authorization mechanism you have provided is "
                          "not supported. Please use AWS4-HMAC-SHA256.", 400)
        raise invalid_argument("Unsupported Authorization Type", ArgumentName="Authorization",
                               ArgumentValue=_clean(auth))
    assert m is not None
    fields: dict[str, str] = {}
    for part in (m.group(2) or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or name not in ("Credential", "SignedHeaders", "Signature") or name in fields:
            raise _header_malformed(f"unexpected component \"{_clean(name, 64)}\"; expecting "
                                    "Credential=..., SignedHeaders=..., Signature=...")
        fields[name] = value.strip()
    for name in ("Credential", "SignedHeaders", "Signature"):
        if name not in fields:
            raise _header_malformed(f"the {name} component is missing.")
    if not _HEX64.fullmatch(fields["Signature"]):
        raise _header_malformed("the Signature must be 64 hexadecimal characters.")
    return fields


def _request_time(hdrs: dict[str, list[str]]) -> tuple[str, datetime]:
    """The signed request time: ``x-amz-date``, else the ``Date`` header; as text and parsed."""
    amz_date = _one(hdrs, "x-amz-date")
    when: datetime | None
    if amz_date is not None:
        when = _parse_amz_date(amz_date)
    else:
        date_header = _one(hdrs, "date")
        when = _parse_http_date(date_header) if date_header is not None else None
        amz_date = _format_amz_date(when) if when is not None else ""
    if when is None:
        raise access_denied("AWS authentication requires a valid Date or x-amz-date header")
    return amz_date, when


def _verify_presigned(method: str, raw_path: str, params: list[_Param],
                      hdrs: dict[str, list[str]], keys: Mapping[str, str], now: datetime,
                      max_skew: timedelta, trailer: str) -> AuthResult:
    """Authenticate a presigned URL (the signature in ``X-Amz-*`` query parameters)."""
    values = _presign_values(params)
    amz_date = values["X-Amz-Date"]
    when = _parse_amz_date(amz_date)
    if when is None:
        raise _query_malformed("X-Amz-Date must be in the ISO8601 Long Format "
                               "\"yyyyMMdd'T'HHmmss'Z'\"")
    expires = _parse_expires(values["X-Amz-Expires"])
    signature = values["X-Amz-Signature"]
    if not _HEX64.fullmatch(signature):
        raise _query_malformed("X-Amz-Signature must be 64 hexadecimal characters.")
    cred = _parse_credential(values["X-Amz-Credential"], amz_date, _credential_malformed)
    signed = _parse_signed_headers(values["X-Amz-SignedHeaders"], _query_malformed)
    # An unsigned x-amz-content-sha256 header is ignored (the payload is UNSIGNED-PAYLOAD).
    _check_all_amz_signed(hdrs, signed, exempt=frozenset({"x-amz-content-sha256"}))
    secret = _secret(keys, cred.access_key)
    _check_presign_window(now, when, expires, values["X-Amz-Expires"], max_skew)
    payload_hash = UNSIGNED_PAYLOAD
    if "x-amz-content-sha256" in signed:
        claimed = _one(hdrs, "x-amz-content-sha256")
        if claimed is not None:
            _check_payload_hash(claimed)
            payload_hash = claimed
    return _signed_result(method, raw_path, [p for p in params if p.key != "X-Amz-Signature"],
                          hdrs, signed, payload_hash, amz_date, cred, secret, signature, trailer)


def _presign_values(params: list[_Param]) -> dict[str, str]:
    """The ``X-Amz-*`` parameters of a presigned URL: each exactly once, algorithm checked."""
    values: dict[str, str] = {}
    for p in params:
        if p.key in _PRESIGN_PARAMS:
            if p.key in values:
                raise _query_malformed(f"The {p.key} query parameter may appear only once.")
            values[p.key] = p.value
    if any(name not in values for name in _PRESIGN_PARAMS):
        raise _query_malformed("Query-string authentication version 4 requires the "
                               "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, "
                               "X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_malformed("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    return values


def _parse_expires(value: str) -> int:
    """``X-Amz-Expires`` in seconds: 1 to :data:`MAX_PRESIGN_EXPIRES`."""
    if not _EXPIRES.fullmatch(value):
        raise _query_malformed("X-Amz-Expires should be a number")
    expires = int(value)
    if expires < 1:
        raise _query_malformed("X-Amz-Expires must be positive")
    if expires > MAX_PRESIGN_EXPIRES:
        raise _query_malformed("X-Amz-Expires must be less than a week (in seconds) that is "
                               "604800")
    return expires


def _credential_malformed(detail: str) -> S3Error:
    return _query_malformed(f"Error parsing the X-Amz-Credential parameter; {detail}")


def _check_presign_window(now: datetime, when: datetime, expires: int, expires_as_sent: str,
                          max_skew: timedelta) -> None:
    """A presigned URL is valid from ``when - max_skew`` to ``when + expires`` seconds."""
    if when - now > max_skew:
        raise access_denied("Request is not valid yet")
    if (now - when).total_seconds() > expires:
        extra = {"X-Amz-Expires": expires_as_sent, "ServerTime": _format_amz_date(now)}
        try:
            extra["Expires"] = _format_amz_date(when + timedelta(seconds=expires))
        except OverflowError:
            pass
        raise S3Error("AccessDenied", "Request has expired", 403, **extra)


def _signed_result(method: str, raw_path: str, params: Iterable[_Param],
                   hdrs: dict[str, list[str]], signed: list[str], payload_hash: str,
                   amz_date: str, cred: _Credential, secret: str, signature: str,
                   trailer: str) -> AuthResult:
    """Derive the signing key, check ``signature`` with it and describe the request.

    The last step of both forms (Authorization header and presigned URL), once
    every field has been parsed and the request time checked.
    """
    key = signing_key(secret, cred.date, cred.region)
    _check_signature(method, raw_path, params, hdrs, signed, payload_hash, amz_date, cred, key,
                     signature)
    return AuthResult(cred.access_key, payload_hash, key, signature.lower(), amz_date,
                      cred.scope, trailer)


# --------------------------------------------------------------------------- bodies


_VERIFIABLE: dict[str, str] = {checksums.header_name(a): a for a in checksums.ALGORITHMS}


def _b64_digest(name: str, value: bytes) -> bytes:
    alg = _VERIFIABLE.get(name)
    if alg is not None:
        return checksums.decode(alg, value, name)
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if not digest:
        raise checksums.invalid_value(name)
    return digest


def _bad_digest(name: str) -> S3Error:
    return checksums.bad_digest(name.removeprefix("x-amz-checksum-").upper())


async def check_sha256(chunks: AsyncIterator[bytes], expected_hex: str) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through; raise XAmzContentSHA256Mismatch (400) at the end if their
    SHA-256 is not ``expected_hex`` (after the last chunk has been yielded, before the
    iterator finishes: the consumer must treat the exception as failure)."""
    if not _HEX64.fullmatch(expected_hex):
        raise invalid_argument("x-amz-content-sha256 is not a sha256 value",
                               ArgumentName="x-amz-content-sha256",
                               ArgumentValue=_clean(expected_hex))
    h = hashlib.sha256()
    async for chunk in chunks:
        h.update(chunk)
        yield chunk
    computed = h.hexdigest()
    if not hmac.compare_digest(computed.encode(), expected_hex.lower().encode()):
        raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header "
                      "does not match what was computed.", 400,
                      ClientComputedContentSHA256=expected_hex.lower(),
                      S3ComputedContentSHA256=computed)


async def check_checksum(chunks: AsyncIterator[bytes], name: str,
                         expected_b64: str) -> AsyncIterator[bytes]:
    """Like :func:`check_sha256` for an ``x-amz-checksum-*`` *header* (botocore sends
    ``x-amz-checksum-crc32`` with every PutObject/UploadPart over plain http): BadDigest
    (400) at the end on mismatch. Unknown algorithms are passed through unverified.
    (The gateway itself uses :class:`gateway.checksums.RequestChecksum`, which also
    keeps the value.)"""
    name = name.lower()
    expected = _b64_digest(name, _b(expected_b64.strip()))
    alg = _VERIFIABLE.get(name)
    hasher = checksums.new_hasher(alg) if alg is not None else None
    async for chunk in chunks:
        if hasher is not None:
            hasher.update(chunk)
        yield chunk
    if hasher is not None and not hmac.compare_digest(hasher.digest(), expected):
        raise _bad_digest(name)


def _incomplete(msg: str = "The request body terminated unexpectedly") -> S3Error:
    return S3Error("IncompleteBody", msg, 400)


def _framing(msg: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {msg}", 400)


def _chunk_mismatch() -> S3Error:
    return S3Error("SignatureDoesNotMatch", "The chunk signature we calculated does not match "
                   "the signature you provided. Check your key and signing method.", 403)


_HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class _ChunkedDecoder:
    """The aws-chunked state machine: :meth:`feed` bytes in any pieces, :meth:`finish`."""

    def __init__(self, auth: AuthResult, decoded_length: int | None) -> None:
        self.signed = auth.payload_hash in _SIGNED_STREAMING
        self.trailer_mode = auth.payload_hash == STREAMING_PAYLOAD_TRAILER
        if self.signed and not (auth.signing_key and _HEX64.fullmatch(auth.seed_signature)
                                and auth.amz_date and auth.scope):
            raise S3Error("InvalidRequest", f"{auth.payload_hash} requires a signed request",
                          400)
        if decoded_length is not None and decoded_length < 0:
            raise invalid_argument("x-amz-decoded-content-length must not be negative",
                                   ArgumentName="x-amz-decoded-content-length")
        self.key = auth.signing_key
        self.prefix = f"{auth.amz_date}\n{auth.scope}\n"
        self.prev = auth.seed_signature.lower()
        self.decoded_length = decoded_length
        self.declared = [n for n in (t.strip() for t in auth.trailer.split(",")) if n]
        self.hashers = {n: checksums.new_hasher(_VERIFIABLE[n]) for n in self.declared
                        if n in _VERIFIABLE}
        self.verified: dict[str, bytes] = {}
        self.state = _HEADER
        self.line = bytearray()
        self.remaining = 0
        self.total = 0
        self.chunk_hash = hashlib.sha256()
        self.chunk_sig = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.trailer_sig: bytes | None = None
        self.trailer_bytes = 0
        self.blank_first = False  # an empty line came right after the final chunk
        self.reopened = False

    # -- input

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self.state == _DATA:
                k = min(self.remaining, n - i)
                piece = data if k == n else data[i:i + k]
                self.total += k
                self.remaining -= k
                if self.signed:
                    self.chunk_hash.update(piece)
                for h in self.hashers.values():
                    h.update(piece)
                out.append(piece)
                i += k
                if self.remaining == 0:
                    if self.signed:
                        self._verify_chunk()
                    self.state = _DATA_END
            elif self.state == _DONE:
                if self.blank_first and not self.reopened:
                    self.state, self.reopened = _TRAILER, True
                    continue
                raise _framing("data after the final chunk")
            else:
                i = self._take_line(data, i)
        return out

    def _take_line(self, data: bytes, i: int) -> int:
        room = _MAX_LINE - len(self.line)
        j = data.find(b"\n", i, i + room)
        if j < 0:
            if len(data) - i >= room:
                raise _framing("line too long")
            self.line += data[i:]
            return len(data)
        if self.line:
            self.line += data[i:j + 1]
            line = bytes(self.line)
            self.line.clear()
        else:
            line = data[i:j + 1]
        self._on_line(line)
        return j + 1

    def _on_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise _framing("line not terminated by CRLF")
        content = line[:-2]
        if self.state == _HEADER:
            self._chunk_header(content)
        elif self.state == _DATA_END:
            if content:
                raise _framing("chunk data longer than its declared size")
            self.state = _HEADER
        elif not content:  # _TRAILER: the empty line ends the body
            self.state = _DONE
            if not self.trailers and self.trailer_sig is None:
                self.blank_first = True
        else:
            self._trailer_line(content)

    def _chunk_header(self, content: bytes) -> None:
        size_part, semi, ext = content.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size_part):
            raise _framing("invalid chunk size")
        size = int(size_part, 16)
        if self.signed:
            m = _CHUNK_SIG_EXT.fullmatch(ext) if semi else None
            if m is None:
                raise _framing("missing or malformed chunk-signature")
            self.chunk_sig = m.group(1).lower()
            self.chunk_hash = hashlib.sha256()
        if self.decoded_length is not None and self.total + size > self.decoded_length:
            raise _incomplete("The body is longer than x-amz-decoded-content-length")
        if size == 0:
            if self.signed:
                self._verify_chunk()
            self.state = _TRAILER
        else:
            self.remaining = size
            self.state = _DATA

    def _trailer_line(self, content: bytes) -> None:
        self.trailer_bytes += len(content) + 2
        if self.trailer_bytes > _MAX_TRAILERS:
            raise _framing("trailers too large")
        name, colon, value = content.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if not colon or not name or self.trailer_sig is not None:
            raise _framing("malformed trailer")
        if name == b"x-amz-trailer-signature":
            if not _HEX64.fullmatch(value.decode("latin-1")):
                raise _framing("malformed x-amz-trailer-signature")
            self.trailer_sig = value.lower()
        elif any(name == n for n, _ in self.trailers):
            raise _framing("repeated trailer")
        else:
            self.trailers.append((name, value))

    # -- checks

    def _sign(self, string_to_sign: str) -> bytes:
        return hmac.new(self.key, _b(string_to_sign), hashlib.sha256).hexdigest().encode("ascii")

    def _verify_chunk(self) -> None:
        sts = (f"AWS4-HMAC-SHA256-PAYLOAD\n{self.prefix}{self.prev}\n{EMPTY_SHA256}\n"
               f"{self.chunk_hash.hexdigest()}")
        if not hmac.compare_digest(self._sign(sts), self.chunk_sig):
            raise _chunk_mismatch()
        self.prev = self.chunk_sig.decode("ascii")

    def _verify_trailer_signature(self, sig: bytes) -> None:
        for order in (self.trailers, sorted(self.trailers)):
            canonical = b"".join(n + b":" + v + b"\n" for n, v in order)
            sts = (f"AWS4-HMAC-SHA256-TRAILER\n{self.prefix}{self.prev}\n"
                   f"{hashlib.sha256(canonical).hexdigest()}")
            if hmac.compare_digest(self._sign(sts), sig):
                return
        raise S3Error("SignatureDoesNotMatch", "The trailer signature we calculated does not "
                      "match the signature you provided. Check your key and signing method.",
                      403)

    def finish(self) -> None:
        if self.line or self.state in (_HEADER, _DATA, _DATA_END):
            raise _incomplete()
        # _TRAILER here: the body ended after a complete line, without the final empty line.
        if self.decoded_length is not None and self.total != self.decoded_length:
            raise _incomplete("The body is shorter than x-amz-decoded-content-length")
        if self.trailer_sig is not None:
            if not self.signed:
                raise _framing("x-amz-trailer-signature in an unsigned body")
            self._verify_trailer_signature(self.trailer_sig)
        elif self.trailer_mode and self.trailers:
            raise _framing("missing x-amz-trailer-signature")
        received = {n.decode("latin-1"): v for n, v in self.trailers}
        for name in self.declared:
            if name not in received:
                raise _framing(f"trailer {_clean(name, 64)} declared in X-Amz-Trailer is "
                               "missing")
        for name, value in received.items():
            if not name.startswith("x-amz-checksum-"):
                continue  # other trailers: nothing to check here
            expected = _b64_digest(name, value)
            if name in _VERIFIABLE:
                hasher = self.hashers.get(name)
                if hasher is None:
                    raise _framing(f"trailer {name} was not declared in X-Amz-Trailer")
                if not hmac.compare_digest(hasher.digest(), expected):
                    raise _bad_digest(name)
                self.verified[name] = expected


async def decode_aws_chunked(body: AsyncIterator[bytes], auth: AuthResult, *,
                             decoded_length: int | None = None,
                             verified: dict[str, bytes] | None = None) -> AsyncIterator[bytes]:
    """Decode an aws-chunked body, verifying chunk and trailer signatures (signed
    ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``), declared trailing checksums and,
    if given, ``decoded_length`` (``x-amz-decoded-content-length``).

    Yields the data as it arrives (each input byte is copied at most once); raises
    :class:`S3Error` (SignatureDoesNotMatch 403, BadDigest / IncompleteBody /
    InvalidRequest 400) as soon as a check fails, at the latest after the last data has
    been yielded and before the iterator finishes. ``verified``, if given, receives the
    trailing checksums that were verified (trailer name -> digest) before it finishes.
    """
    decoder = _ChunkedDecoder(auth, decoded_length)
    async for data in body:
        if not data:
            continue
        for piece in decoder.feed(data if isinstance(data, bytes) else bytes(data)):
            yield piece
    decoder.finish()
    if verified is not None:
        verified.update(decoder.verified)
