"""S3's flexible checksums: CRC32, CRC32C, CRC64NVME, SHA1 and SHA256 of object data.

What S3 does, and this module with it (boto3 >= 1.36 and the aws CLI send a CRC32 with
every PutObject and UploadPart by default):

* A request names at most one algorithm: a value header ``x-amz-checksum-<alg>``, a
  trailer of an aws-chunked body declared in ``X-Amz-Trailer`` (checked by
  :mod:`gateway.sigv4`'s decoder), or only the algorithm (``x-amz-sdk-checksum-algorithm``,
  ``x-amz-checksum-algorithm``): then the gateway computes it. Two value headers, or an
  algorithm header that disagrees with the value's, are ``InvalidRequest``; a value that
  is not base64 of the algorithm's size is ``InvalidRequest`` ("Value for ... header is
  invalid."); a value that does not match the data is ``BadDigest`` ("The CRC32 you
  specified did not match the calculated checksum."), and nothing is stored.
* The checksum is kept with the object (``cksum`` in the core's object attributes:
  algorithm, base64 value, type) and returned by GetObject/HeadObject with
  ``x-amz-checksum-mode: ENABLED`` when the response is the whole object.
  An object written without one gets a CRC64NVME, as S3 adds since 2025.
* Multipart uploads have a checksum *type*: ``COMPOSITE`` (the checksum of the
  concatenated binary part checksums, then ``-<parts>``; CRC32, CRC32C, SHA1, SHA256;
  the default but for CRC64NVME) or ``FULL_OBJECT`` (the CRC of the whole object; CRC32,
  CRC32C, CRC64NVME; the default for CRC64NVME).

The CRCs: CRC-32 is zlib's; CRC-32C (Castagnoli) and CRC-64/NVME come from ``awscrt``
(the AWS common runtime, which botocore itself uses for them), hardware-accelerated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from awscrt import checksums as _crt

from .errors import S3Error

__all__ = [
    "ALGORITHMS",
    "COMPOSITE",
    "FULL_OBJECT",
    "RequestChecksum",
    "bad_digest",
    "composite",
    "decode",
    "encode",
    "header_name",
    "invalid_value",
    "new_hasher",
    "parse_algorithm",
    "upload_checksum_type",
]

ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
SIZES = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}
CRCS = frozenset({"CRC32", "CRC32C", "CRC64NVME"})
FULL_OBJECT = "FULL_OBJECT"
COMPOSITE = "COMPOSITE"
DEFAULT = "CRC64NVME"  # what S3 stores for an object uploaded without a checksum
MODE_HEADER = "x-amz-checksum-mode"
TYPE_HEADER = "x-amz-checksum-type"
_PREFIX = "x-amz-checksum-"
_BY_HEADER = {_PREFIX + a.lower(): a for a in ALGORITHMS}
# Algorithms of the latest S3 API this gateway does not compute: refused, never left unchecked
NEWER = frozenset({"SHA512", "MD5", "XXHASH64", "XXHASH3", "XXHASH128"})
_NEWER_HEADERS = {_PREFIX + a.lower(): a for a in NEWER}
_TYPE_ALGORITHMS = {FULL_OBJECT: CRCS, COMPOSITE: frozenset({"CRC32", "CRC32C", "SHA1", "SHA256"})}


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    def __init__(self, fn: Callable[[bytes, int], int], size: int) -> None:
        self._fn, self._size, self._crc = fn, size, 0

    def update(self, data: bytes, /) -> None:
        self._crc = self._fn(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(self._size, "big")


def _crc32(data: bytes, crc: int) -> int:
    return zlib.crc32(data, crc)


def _crc32c(data: bytes, crc: int) -> int:
    return _crt.crc32c(data, crc)


def _crc64nvme(data: bytes, crc: int) -> int:
    return _crt.crc64nvme(data, crc)


_FACTORIES: dict[str, Callable[[], Hasher]] = {
    "CRC32": lambda: _Crc(_crc32, 4),
    "CRC32C": lambda: _Crc(_crc32c, 4),
    "CRC64NVME": lambda: _Crc(_crc64nvme, 8),
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
}


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher of one of :data:`ALGORITHMS`."""
    return _FACTORIES[algorithm]()


def header_name(algorithm: str) -> str:
    return _PREFIX + algorithm.lower()


def algorithm_of(name: str) -> str | None:
    """The algorithm of a value header's (or trailer's) name; None for any other name."""
    return _BY_HEADER.get(name.lower())


def encode(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def invalid_value(name: str) -> S3Error:
    return S3Error("InvalidRequest", f"Value for {name} header is invalid.", 400)


def decode(algorithm: str, value: str | bytes, name: str | None = None) -> bytes:
    """The digest of a base64 checksum value; InvalidRequest unless it has the size."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    try:
        digest = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != SIZES[algorithm]:
        raise invalid_value(name or header_name(algorithm))
    return digest


def bad_digest(algorithm: str, lower: bool = False) -> S3Error:
    shown = algorithm.lower() if lower else algorithm
    return S3Error("BadDigest", f"The {shown} you specified did not match the calculated "
                   "checksum.", 400)


def unsupported(algorithm: str) -> S3Error:
    return S3Error("NotImplemented", f"The {algorithm} checksum algorithm is not supported by "
                   "this gateway: use CRC32, CRC32C, CRC64NVME, SHA1 or SHA256.", 501)


def parse_algorithm(value: str, name: str) -> str:
    """An algorithm header's value (any case) as one of :data:`ALGORITHMS`."""
    alg = value.strip().upper()
    if alg in NEWER:
        raise unsupported(alg)
    if alg not in _FACTORIES:
        raise S3Error("InvalidRequest", f"Value for {name} header is invalid.", 400)
    return alg


def composite(algorithm: str, part_digests: list[bytes]) -> str:
    """S3's COMPOSITE checksum: of the concatenated part digests, then ``-<parts>``."""
    h = new_hasher(algorithm)
    h.update(b"".join(part_digests))
    return f"{encode(h.digest())}-{len(part_digests)}"


def upload_checksum_type(algorithm: str | None, raw_type: str | None) -> str | None:
    """The checksum type of a CreateMultipartUpload (S3's defaults and rules)."""
    if raw_type is None:
        if algorithm is None:
            return None
        return FULL_OBJECT if algorithm == "CRC64NVME" else COMPOSITE
    ctype = raw_type.strip().upper()
    if ctype not in _TYPE_ALGORITHMS:
        raise S3Error("InvalidRequest", f"Value for {TYPE_HEADER} header is invalid.", 400)
    if algorithm is None:
        raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with "
                      "the x-amz-checksum-algorithm header.", 400)
    if algorithm not in _TYPE_ALGORITHMS[ctype]:
        raise S3Error("InvalidRequest", f"The {ctype} checksum type cannot be used with the "
                      f"{algorithm.lower()} checksum algorithm.", 400)
    return ctype


def stored(algorithm: str, value: str, ctype: str = FULL_OBJECT) -> dict[str, str]:
    """The ``cksum`` entry of an object's attributes."""
    return {"alg": algorithm, "value": value, "type": ctype}


def from_attrs(attrs: Mapping[str, Any] | None) -> dict[str, str] | None:
    """An object's stored checksum (``cksum``), if it has a well-formed one."""
    c = (attrs or {}).get("cksum")
    if isinstance(c, dict) and c.get("alg") in _FACTORIES and isinstance(c.get("value"), str) \
            and c.get("type") in (FULL_OBJECT, COMPOSITE):
        return {"alg": c["alg"], "value": c["value"], "type": c["type"]}
    return None


def response_headers(c: Mapping[str, str]) -> dict[str, str]:
    return {header_name(c["alg"]): c["value"], TYPE_HEADER: c["type"]}


class RequestChecksum:
    """The checksum of one request body: which algorithm, which value it must have, and
    (once the body has streamed through :meth:`wrap`) the value it has.

    ``trailer``: the value arrives as a trailer of an aws-chunked body; the decoder checks
    it and records it in :attr:`received` (name -> digest).
    """

    def __init__(self, algorithm: str | None = None, expected: bytes | None = None,
                 trailer: bool = False) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self.trailer = trailer
        self.named = algorithm is not None  # the client named it (value, trailer, header)
        self.received: dict[str, bytes] = {}
        self.digest: bytes | None = None

    @classmethod
    def of_request(cls, headers: Mapping[str, str], declared_trailer: str = "",
                   default: str | None = None) -> RequestChecksum:
        """Read a request's checksum headers (and its ``X-Amz-Trailer``)."""
        values: list[tuple[str, str, str]] = []  # (algorithm, header name, value)
        for name, value in headers.items():
            alg = algorithm_of(name)
            if alg is not None:
                values.append((alg, name.lower(), value))
            elif name.lower() in _NEWER_HEADERS:
                raise unsupported(_NEWER_HEADERS[name.lower()])
        declared = [t.strip().lower() for t in declared_trailer.split(",")]
        for t in declared:
            if t in _NEWER_HEADERS:
                raise unsupported(_NEWER_HEADERS[t])
        trailers = [a for a in map(algorithm_of, declared) if a is not None]
        if len(values) + len(trailers) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                          "Multiple checksum Types are not allowed.", 400)
        named: str | None = None
        for hname in ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"):
            raw = headers.get(hname)
            if raw is None:
                continue
            alg = parse_algorithm(raw, hname)
            if named is not None and alg != named:
                raise S3Error("InvalidRequest", f"Value for {hname} header is invalid.", 400)
            named = alg
        if values:
            alg, hname, value = values[0]
            if named is not None and named != alg:
                raise S3Error("InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header "
                              "is invalid.", 400)
            return cls(alg, decode(alg, value, hname))
        if trailers:
            if named is not None and named != trailers[0]:
                raise S3Error("InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header "
                              "is invalid.", 400)
            return cls(trailers[0], trailer=True)
        if named is not None:
            return cls(named)
        out = cls(default)
        out.named = False
        return out

    def use_default(self, algorithm: str | None) -> None:
        """Compute ``algorithm`` if the client named none (before the body streams)."""
        if self.algorithm is None:
            self.algorithm = algorithm

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass ``chunks`` through, computing the checksum; BadDigest at the end (before the
        iterator finishes: the consumer commits nothing) if it is not the expected one."""
        alg = self.algorithm
        if alg is None or self.trailer:
            async for c in chunks:
                yield c
            if alg is not None:
                self.digest = self.received.get(header_name(alg))
            return
        h = new_hasher(alg)
        async for c in chunks:
            h.update(c)
            yield c
        digest = h.digest()
        if self.expected is not None and not hmac.compare_digest(digest, self.expected):
            raise bad_digest(alg)
        self.digest = digest

    @property
    def value(self) -> str | None:
        """The base64 checksum of the body, once it has streamed through :meth:`wrap`."""
        return encode(self.digest) if self.digest is not None else None

    def stored(self) -> dict[str, str] | None:
        """The object attribute entry of this checksum (a whole object: FULL_OBJECT)."""
        if self.algorithm is None or self.digest is None:
            return None
        return stored(self.algorithm, encode(self.digest))

