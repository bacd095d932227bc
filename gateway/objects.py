"""Object operations: Get/Head (ranges, conditionals, overrides), Put, Copy, Delete.

ETags. An object written through the gateway gets S3's ETag (the MD5 of its
bytes; for multipart, the MD5 of the parts' MD5s plus "-N"), kept with its
content type and user metadata in the node's metadata store, keyed by the
under-store version it describes. Objects written by other means get their
under-store's ETag when it is one (S3), otherwise a stable hash of their
version (mtime+size), quoted like an ETag: not an MD5, as for S3's own
encrypted objects, so clients must not verify ETags as MD5s (none of the
tested clients does).

Conditional writes (``If-None-Match: *``, ``If-Match`` on PutObject, CopyObject and,
through :func:`write_object`, CompleteMultipartUpload) are the node's exclusive and
``if_version`` writes: the condition is decided by the node at the moment of the write
(atomically where the store allows, docs/SEMANTICS.md), never checked here and then
written. An If-Match ETag is mapped to the version it describes first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from meshd import errors as me
from meshd.config import parse_write_mode
from meshd.core import FileStatus, MeshNode
from meshd.servers.streaming import stream_response

from . import acl, checksums, storageclass, tagging, xmlio
from . import headers as hdrs
from .errors import S3Error, from_mesh, invalid_argument, no_such_bucket, no_such_key

MAX_KEY_BYTES = 1024
MAX_PUT = 5 << 30  # S3's single-PUT limit
WRITE_MODE = "x-mesh-write-mode"  # our extension: back | through (docs/S3_COMPAT.md)
_S3_ETAG = re.compile(r"[0-9a-f]{32}(-\d+)?")
OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


@dataclass(frozen=True)
class ObjectAttrs:
    etag: str
    content_type: str
    metadata: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)  # content headers (gateway/headers.py)
    parts: tuple[int, ...] = ()  # a multipart object's part sizes, in order
    checksum: dict[str, str] | None = None  # checksums.stored(): alg, value, type
    stored: dict[str, Any] = field(default_factory=dict)  # all the core keeps: tags, storage class, ...


def mesh_path(bucket: str, key: str) -> str:
    """The mesh path of a key; keys that cannot name a file are refused clearly."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", 400)
    parts = key.split("/")
    body = parts[:-1] if key.endswith("/") else parts
    if "\x00" in key or any(p in ("", ".", "..") for p in body):
        raise invalid_argument(f"key {key!r} cannot be mapped to a file path (empty, '.' or '..' "
                               "segments are not supported)", ArgumentName="key")
    return "/" + bucket + "/" + key.rstrip("/")


async def attrs_of(node: MeshNode, st: FileStatus) -> ObjectAttrs:
    a = await node.object_attrs(st.path, st.version)
    guessed = mimetypes.guess_type(st.path)[0] or "application/octet-stream"
    if a is not None:
        return ObjectAttrs(a["etag"], a.get("ct") or guessed, dict(a.get("meta") or {}),
                           dict(a.get("hdrs") or {}), part_sizes(a.get("parts")), checksums.from_attrs(a), dict(a))
    v = st.version.strip('"')
    etag = f'"{v}"' if _S3_ETAG.fullmatch(v) else '"' + hashlib.md5(v.encode()).hexdigest() + '"'
    return ObjectAttrs(etag, guessed, {})


async def stored_attrs(node: MeshNode, st: FileStatus) -> dict[str, Any]:
    """The attributes the core keeps for ``st``'s version, to change some and set them back:
    those recorded, else those an object written by other means is served with."""
    a = await attrs_of(node, st)
    out = {k: v for k, v in a.stored.items() if k not in ("v", "t")}
    return out or {"etag": a.etag, "ct": a.content_type, "meta": a.metadata}


def request_attrs(headers: Mapping[str, str]) -> dict[str, Any]:
    """What a write request sets besides ETag, type and metadata: tags (``x-amz-tagging``)
    and storage class; its ACL headers must change nothing."""
    acl.check_write_acl(headers)
    tags = tagging.from_header(headers)
    return ({"tags": tags} if tags else {}) | storageclass.from_headers(headers)


def user_metadata(request: web.Request) -> dict[str, str]:
    meta = {k[len("x-amz-meta-"):].lower(): hdrs.request_text(v) for k, v in request.headers.items()
            if k.lower().startswith("x-amz-meta-")}
    if sum(len(k) + len(v.encode()) for k, v in meta.items()) > 2048:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size", 400)
    return meta


def write_mode(request: web.Request) -> bool | None:
    """The request's ``x-mesh-write-mode`` (``back``: acknowledged once on the node's
    disk; ``through``: once in the under-store); None: the mount's ``write_mode``."""
    raw = request.headers.get(WRITE_MODE)
    try:
        return parse_write_mode(raw)
    except me.InvalidArgument:
        raise invalid_argument(f"{WRITE_MODE} must be 'back' or 'through'", ArgumentName=WRITE_MODE,
                               ArgumentValue=raw or "") from None


def version_header(st: FileStatus) -> dict[str, str]:
    """``x-amz-version-id`` of a write, where the under-store kept a version of it."""
    return {"x-amz-version-id": st.version_id} if st.version_id else {}


def object_headers(st: FileStatus, a: ObjectAttrs) -> dict[str, str]:
    h = {"ETag": a.etag, "Last-Modified": xmlio.http_date(st.mtime), "Content-Type": a.content_type,
         "Accept-Ranges": "bytes"}
    for k, v in a.metadata.items():
        h["x-amz-meta-" + k] = hdrs.response_text(v)
    for k, v in a.headers.items():
        h[k] = hdrs.response_text(v)
    h.update(tagging.count_header(a.stored))
    h.update(storageclass.header(a.stored))
    return h


async def stat_object(node: MeshNode, bucket: str, key: str) -> FileStatus:
    path = mesh_path(bucket, key)
    try:
        st = await node.stat(path)
    except me.NotFound:
        await require_bucket(node, bucket)  # NoSuchBucket says more than NoSuchKey
        raise no_such_key(key) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    if st.is_dir != key.endswith("/"):  # "k/" is a folder marker: a directory; "k" a file
        raise no_such_key(key)
    return st


# ---- conditionals and ranges ------------------------------------------------

def _etags(value: str) -> list[str]:
    """The ETags of an If-Match / If-None-Match list, bare: clients send them quoted
    (RFC 7232), weak (W/) or, like minio-py, without quotes; all name the same ETag."""
    return [bare_etag(t.strip().removeprefix("W/")) for t in value.split(",") if t.strip()]


def bare_etag(etag: str) -> str:
    return etag.strip().strip('"')


def _http_time(value: str) -> float | None:
    import email.utils

    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return dt.timestamp() if dt is not None else None


def check_conditions(headers: Any, etag: str, mtime: float, prefix: str = "") -> int | None:
    """None to proceed, or 304 / 412 (RFC 7232 order, as S3 applies it)."""
    def h(name: str) -> str | None:
        v: str | None = headers.get(prefix + name)
        return v

    mtime = float(int(mtime))  # HTTP dates have second resolution
    im, ius, inm, ims = h("If-Match"), h("If-Unmodified-Since"), h("If-None-Match"), h("If-Modified-Since")
    etag = bare_etag(etag)
    if im is not None:
        if "*" not in _etags(im) and etag not in _etags(im):
            return 412
    elif ius is not None:
        t = _http_time(ius)
        if t is not None and mtime > t:
            return 412
    if inm is not None:
        if "*" in _etags(inm) or etag in _etags(inm):
            return 304
    elif ims is not None:
        t = _http_time(ims)
        if t is not None and mtime <= t:
            return 304
    return None


HUGE = 10**18  # larger than any object: what a number of more digits stands for


def digits(raw: str) -> int:
    """A string of decimal digits as an int, clipped at HUGE: a client's "999...9" of
    thousands of digits is a large number, not an internal error (Python refuses to
    convert more than 4,300 digits)."""
    raw = raw.lstrip("0") or "0"
    return HUGE if len(raw) > 18 else int(raw)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single byte range; None for no (or an ignored) Range.

    Raises InvalidRange (416) for a syntactically valid range that does not
    overlap the object. Unparsable or multi-range headers are ignored, as S3 does.
    """
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix: the last N bytes
        n = digits(last)
        if n == 0 or size == 0:
            raise _invalid_range(size)
        return max(0, size - n), size
    start = digits(first)
    end = size if last == "" else min(size, digits(last) + 1)
    if last != "" and digits(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _invalid_range(size)
    return start, end


def _invalid_range(size: int) -> S3Error:
    return S3Error("InvalidRange", "The requested range is not satisfiable", 416,
                   ActualObjectSize=str(size))


# ---- handlers ----------------------------------------------------------------

async def get_object(request: web.Request, node: MeshNode, bucket: str, key: str,
                     head: bool) -> web.StreamResponse:
    if request.query.get("versionId", "null") != "null":
        raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
    for _attempt in (0, 1):
        st = await stat_object(node, bucket, key)
        a = await attrs_of(node, st)
        cond = check_conditions(request.headers, a.etag, st.mtime)
        if cond == 304:
            return web.Response(status=304, headers={"ETag": a.etag, "Last-Modified": xmlio.http_date(st.mtime)})
        if cond == 412:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          412, Condition="If-Match" if "If-Match" in request.headers else "If-Unmodified-Since")
        headers = object_headers(st, a)
        for q, hname in OVERRIDES.items():
            if q in request.query:
                value = request.query[q]
                if any(ord(c) < 32 or ord(c) == 127 for c in value):
                    raise invalid_argument(f"{q} may not contain control characters", ArgumentName=q)
                headers[hname] = value
        start, end, status = requested_range(request, st, a, headers)
        if a.checksum is not None and (start, end) == (0, st.size) and \
                request.headers.get(checksums.MODE_HEADER, "").upper() == "ENABLED":
            headers.update(checksums.response_headers(a.checksum))  # whole object only, as S3
        if head or st.is_dir:  # a folder marker's body is empty
            hresp = web.StreamResponse(status=status, headers=headers)
            hresp.content_length = end - start
            await hresp.prepare(request)  # aiohttp sends no body for HEAD
            await hresp.write_eof()
            return hresp
        nocache = request.headers.get("x-mesh-nocache", "") in ("1", "true")
        try:
            handle = await node.open(st.path, status=st)
            stream = await handle.read(start, end - start, nocache=nocache)
        except me.MeshError as e:
            raise from_mesh(e, key) from None
        if stream.status.version != st.version:  # changed between stat and open: once more
            await stream.aclose()
            continue
        sresp = web.StreamResponse(status=status, headers=headers)
        sresp.content_length = end - start
        await stream_response(request, sresp, node, stream)
        return sresp
    raise S3Error("PreconditionFailed", "The object kept changing while it was being read", 412)


def requested_range(request: web.Request, st: FileStatus, a: ObjectAttrs,
                    headers: dict[str, str]) -> tuple[int, int, int]:
    """(start, end, status) of a GET: the whole object (200), or its Range or its part
    ``partNumber`` (206, with Content-Range). A multipart object's parts are those it was
    completed with (x-amz-mp-parts-count says how many); any other object is one part."""
    raw = request.query.get("partNumber")
    if raw is None:
        rng = parse_range(request.headers.get("Range"), st.size)
    else:
        if "Range" in request.headers:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter",
                          400)
        rng = part_range(a.parts or (st.size,), part_number(raw))
        if a.parts:
            headers["x-amz-mp-parts-count"] = str(len(a.parts))
        if rng[0] == rng[1]:
            return rng[0], rng[1], 200  # an empty part (or object) has no byte range to name
    if rng is None:
        return 0, st.size, 200
    headers["Content-Range"] = f"bytes {rng[0]}-{rng[1] - 1}/{st.size}"
    return rng[0], rng[1], 206


def part_number(raw: str) -> int:
    if not re.fullmatch(r"[0-9]+", raw) or not 1 <= digits(raw) <= 10000:
        raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive",
                               ArgumentName="partNumber", ArgumentValue=raw[:64])
    return digits(raw)


def part_sizes(recorded: Any) -> tuple[int, ...]:
    """The part sizes of a multipart object from its ``parts`` attribute: ``[size,
    checksum]`` per part (a bare size in records of older nodes)."""
    if not isinstance(recorded, list):
        return ()
    out = []
    for p in recorded:
        size = p[0] if isinstance(p, list) and p else p
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return ()
        out.append(size)
    return tuple(out)


def part_range(sizes: tuple[int, ...], number: int) -> tuple[int, int]:
    """(start, end exclusive) of part ``number`` of an object of parts of ``sizes``."""
    if number > len(sizes):
        raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", 416,
                      PartNumberRequested=str(number), ActualPartCount=str(len(sizes)))
    start = sum(sizes[:number - 1])
    return start, start + sizes[number - 1]


class _Digest:
    """Pass chunks through while computing MD5 and size; check Content-MD5 at the end."""

    def __init__(self, expected_md5_b64: str | None, limit: int) -> None:
        self.md5 = hashlib.md5()
        self.size = 0
        self.limit = limit
        self.expected: bytes | None = None
        if expected_md5_b64 is not None:
            try:
                self.expected = base64.b64decode(expected_md5_b64, validate=True)
            except (binascii.Error, ValueError):
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid", 400) from None
            if len(self.expected) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid", 400)

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for c in chunks:
            self.size += len(c)
            if self.size > self.limit:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
            self.md5.update(c)
            yield c
        if self.expected is not None and self.md5.digest() != self.expected:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", 400)

    @property
    def etag(self) -> str:
        return '"' + self.md5.hexdigest() + '"'


@dataclass(frozen=True)
class WriteCondition:
    """The precondition of a conditional write (PutObject, CompleteMultipartUpload,
    CopyObject's destination): ``If-None-Match: *`` (``absent``) or ``If-Match: etag``."""

    absent: bool = False
    etag: str | None = None  # without quotes (minio-py sends none); "*": any object


def write_condition(request: web.Request) -> WriteCondition | None:
    """The request's write condition, None for an unconditional write. S3 takes only
    ``*`` in If-None-Match on writes, and one of the two headers at a time."""
    inm, im = request.headers.get("If-None-Match"), request.headers.get("If-Match")
    if inm is None and im is None:
        return None
    if inm is not None and im is not None:
        raise S3Error("InvalidRequest", "If-Match and If-None-Match cannot both be given on a write", 400)
    if inm is not None:
        if inm.strip() != "*":
            raise S3Error("NotImplemented", "A header you provided implies functionality that is not "
                          "implemented: If-None-Match on a write takes only '*'", 501, Header="If-None-Match")
        return WriteCondition(absent=True)
    tags = _etags(im or "")
    if len(tags) != 1:
        raise invalid_argument("If-Match on a write takes one ETag", ArgumentName="If-Match",
                               ArgumentValue=im or "")
    return WriteCondition(etag=tags[0].strip('"'))


def precondition_failed(condition: str) -> S3Error:
    return S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                   412, Condition=condition)


async def expected_version(node: MeshNode, bucket: str, key: str, cond: WriteCondition) -> str:
    """The version an ``If-Match`` write may replace: the object's current one, if its ETag
    is the one given (412 if not; NoSuchKey if there is no object). The node then writes
    only while the object is still at that version: the check is the node's, at the
    moment of the write, not this one (which fails early, before the body is read)."""
    st = await stat_object(node, bucket, key)
    a = await attrs_of(node, st)
    if cond.etag != "*" and a.etag.strip('"') != cond.etag:
        raise precondition_failed("If-Match")
    return st.version


async def write_object(node: MeshNode, bucket: str, key: str, chunks: AsyncIterator[bytes],
                       content_md5: str | None, content_type: str | None,
                       metadata: dict[str, str], etag: str | None = None,
                       limit: int = MAX_PUT, writeback: bool | None = None,
                       size_hint: int = -1, cond: WriteCondition | None = None,
                       extra: Mapping[str, Any] | None = None,
                       more_attrs: Callable[[], dict[str, Any]] | None = None) -> tuple[FileStatus, str]:
    """Stream a whole object into the mesh; returns its status and S3 ETag.
    ``writeback``: the request's write mode (None: the mount's); ``size_hint``: its length;
    ``cond``: write only if it holds (412 PreconditionFailed, atomically: the node's
    exclusive and ``if_version`` writes); ``extra``: more attributes to keep with it
    (content headers ``hdrs``, parts ``parts``, tags, storage class: :func:`request_attrs`);
    ``more_attrs``: called once the data is written, more attributes still (its checksum,
    computed as the data streamed)."""
    path = mesh_path(bucket, key)
    digest = _Digest(content_md5, limit)
    exclusive = cond is not None and cond.absent
    if_version = await expected_version(node, bucket, key, cond) if cond is not None and cond.etag else None
    try:
        if key.endswith("/"):  # a "folder" marker
            async for _ in digest.wrap(chunks):
                raise invalid_argument("a key ending in '/' names a directory: its body must be empty")
            if exclusive and await _exists(node, path):
                raise precondition_failed("If-None-Match")
            await node.mkdir(path)
            st = await node.stat(path)
        else:
            st = await node.write(path, digest.wrap(chunks), exclusive=exclusive, if_version=if_version,
                                  writeback=writeback, size_hint=size_hint)
    except me.AlreadyExists as e:
        raise (precondition_failed("If-None-Match") if exclusive else from_mesh(e, key)) from None
    except me.VersionChanged as e:
        raise (precondition_failed("If-Match") if if_version is not None else from_mesh(e, key)) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    tag = etag or digest.etag
    attrs: dict[str, Any] = {
        "etag": tag, "ct": content_type or mimetypes.guess_type(path)[0] or "application/octet-stream",
        "meta": metadata, **(extra or {})}
    if more_attrs is not None:
        attrs.update(more_attrs())
    await node.set_object_attrs(st.path, st.version, attrs)
    if st.version_id:  # a kept version of the store's (gateway/versions.py): they outlive the next write
        await node.set_version_attrs(st.path, st.version_id, attrs)
    return st, tag


async def _exists(node: MeshNode, path: str) -> bool:
    try:
        await node.stat(path)
    except me.NotFound:
        return False
    return True


def checksum_attrs(cks: checksums.RequestChecksum) -> Callable[[], dict[str, Any]]:
    """``more_attrs`` of :func:`write_object` for a body checked by ``cks``."""
    def attrs() -> dict[str, Any]:
        entry = cks.stored()
        return {"cksum": entry} if entry is not None else {}
    return attrs


def checksum_elements(entry: dict[str, str] | None) -> list[Any]:
    """``<ChecksumType>`` and ``<ChecksumCRC32>`` (etc.) of a result document."""
    if entry is None:
        return []
    return [xmlio.leaf("Checksum" + entry["alg"], entry["value"]), xmlio.leaf("ChecksumType", entry["type"])]


def checksum_headers(cks: checksums.RequestChecksum) -> dict[str, str]:
    """The checksum headers of a PutObject / UploadPart response (as S3 sends them)."""
    entry = cks.stored()
    return checksums.response_headers(entry) if entry is not None else {}


async def put_object(request: web.Request, node: MeshNode, bucket: str, key: str,
                     body: AsyncIterator[bytes],
                     checksum: checksums.RequestChecksum | None = None) -> web.Response:
    cond = write_condition(request)
    length = request.headers.get("x-amz-decoded-content-length") or request.headers.get("Content-Length")
    if length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    if length is not None and length.isdigit() and digits(length) > MAX_PUT:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    mode = write_mode(request)
    extra = request_attrs(request.headers)
    await require_bucket(node, bucket)
    st, etag = await write_object(node, bucket, key, body, request.headers.get("Content-MD5"),
                                  request.headers.get("Content-Type"), user_metadata(request), writeback=mode,
                                  size_hint=digits(length) if length is not None and length.isdigit() else -1,
                                  cond=cond, extra={**extra, "hdrs": hdrs.content_headers(request.headers)},
                                  more_attrs=checksum_attrs(checksum) if checksum is not None else None)
    headers = {"ETag": etag, **version_header(st)}
    if checksum is not None:
        headers.update(checksum_headers(checksum))
    return web.Response(status=200, headers=headers)


def copy_source_version(value: str) -> str | None:
    """The ``versionId`` of an ``x-amz-copy-source`` (None: its current version)."""
    return unquote(value.split("versionId=", 1)[1]) if "versionId=" in value else None


def parse_copy_source(value: str, *, any_version: bool = False) -> tuple[str, str]:
    """Bucket and key of an ``x-amz-copy-source``; a version other than ``null`` is
    NoSuchVersion unless the caller reads versions (``any_version``)."""
    src = unquote(value.split("?", 1)[0]).lstrip("/")
    if not any_version and copy_source_version(value) not in (None, "null"):
        raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
    bucket, _, key = src.partition("/")
    if not bucket or not key:
        raise invalid_argument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                               ArgumentName="x-amz-copy-source")
    return bucket, key


async def read_source(request: web.Request, node: MeshNode, bucket: str, key: str,
                      rng: tuple[int, int] | None = None,
                      version_id: str | None = None) -> tuple[FileStatus, ObjectAttrs, _SourceChunks]:
    if version_id is not None:  # a kept version (gateway/versions.py), or null: the object itself
        from . import versions

        found = await versions.read_source(request, node, bucket, key, version_id, rng)
        if found is not None:
            return found
    for _attempt in (0, 1):
        st = await stat_object(node, bucket, key)
        a = await attrs_of(node, st)
        cond = check_conditions(request.headers, a.etag, st.mtime, prefix="x-amz-copy-source-")
        if cond is not None:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          412)
        start, end = rng if rng is not None else (0, st.size)
        try:
            handle = await node.open(st.path, status=st)
            stream = await handle.read(start, end - start)
        except me.MeshError as e:
            raise from_mesh(e, key) from None
        if stream.status.version == st.version:
            return st, a, _SourceChunks(stream)
        await stream.aclose()  # changed between stat and open: check the conditions again
    raise S3Error("PreconditionFailed", "The source object kept changing while it was being read", 412)


class _SourceChunks:
    """The bytes of an open read, as an async iterator whose ``aclose`` always
    closes the read, even when nobody started iterating (a failed copy)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._it = stream.segments

    def __aiter__(self) -> _SourceChunks:
        return self

    async def __anext__(self) -> bytes:
        seg = await self._it.__anext__()
        try:
            return bytes(seg.bytes())
        finally:
            seg.close()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def copy_object(request: web.Request, node: MeshNode, bucket: str, key: str) -> web.Response:
    sb, sk = parse_copy_source(request.headers["x-amz-copy-source"], any_version=True)
    source_version = copy_source_version(request.headers["x-amz-copy-source"])
    directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise invalid_argument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    # onto itself, unchanged: refused, except from another version (how S3 restores one) or
    # to change its storage class
    if (sb, sk) == (bucket, key) and directive == "COPY" and storageclass.HEADER not in request.headers \
            and source_version in (None, "null"):
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                      "to itself without changing the object's metadata.", 400)
    mode = write_mode(request)
    cond = write_condition(request)  # of the destination (the source's are x-amz-copy-source-if-*)
    raw_alg = request.headers.get("x-amz-checksum-algorithm")
    alg = checksums.parse_algorithm(raw_alg, "x-amz-checksum-algorithm") if raw_alg is not None else None
    acl.check_write_acl(request.headers)
    await require_bucket(node, bucket)
    mesh_path(bucket, key)  # refuse a bad destination before opening the source
    sst, a, chunks = await read_source(request, node, sb, sk, version_id=source_version)
    if directive == "COPY":
        ct, meta, kept = a.content_type, a.metadata, a.headers
    else:
        ct, meta = request.headers.get("Content-Type") or a.content_type, user_metadata(request)
        kept = hdrs.content_headers(request.headers)
    # S3 computes the copy's checksum: the algorithm asked for, else the source's, else its default
    cks = checksums.RequestChecksum(alg or (a.checksum["alg"] if a.checksum else checksums.DEFAULT))
    try:
        tags = tagging.for_copy(request.headers, a.stored)
        extra = ({"tags": tags} if tags else {}) | storageclass.from_headers(request.headers) | {"hdrs": kept}
        nst, etag = await write_object(node, bucket, key, cks.wrap(chunks), None, ct, meta, writeback=mode,
                                       size_hint=sst.size, cond=cond, extra=extra, more_attrs=checksum_attrs(cks))
    finally:
        await chunks.aclose()
    body = xmlio.document(xmlio.element("CopyObjectResult", [
        xmlio.leaf("LastModified", xmlio.iso8601(nst.mtime)), xmlio.leaf("ETag", etag),
        *checksum_elements(cks.stored())]))
    headers = version_header(nst)
    if source_version is not None:
        headers["x-amz-copy-source-version-id"] = source_version
    return web.Response(body=body, content_type="application/xml", headers=headers)


async def delete_key(node: MeshNode, bucket: str, key: str, if_match: str | None = None) -> None:
    """S3 delete: idempotent; a folder marker removes an empty directory. With ``if_match``
    (an If-Match header, or a DeleteObjects ETag) only an object whose ETag matches goes
    (``PreconditionFailed`` otherwise) and a missing one is ``NoSuchKey``, as on AWS."""
    path = mesh_path(bucket, key)
    try:
        st = await node.stat(path)
    except me.NotFound:
        st = None
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    if st is None or st.is_dir != key.endswith("/"):  # no such object ("k" names a prefix, "k/" a file)
        if if_match is not None:
            raise no_such_key(key)
        return
    if if_match is not None:
        await _check_delete_condition(node, st, if_match)
    try:
        await node.delete(path)
    except me.DirectoryNotEmpty:
        return  # deleting "dir/" while keys remain below it: S3 would just drop the marker
    except me.NotFound:
        return
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    await node.drop_object_attrs(path)


async def _check_delete_condition(node: MeshNode, st: FileStatus, if_match: str) -> None:
    tags = _etags(if_match)
    if "*" not in tags and bare_etag((await attrs_of(node, st)).etag) not in tags:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                      412, Condition="If-Match")


async def delete_object(request: web.Request, node: MeshNode, bucket: str, key: str) -> web.Response:
    await require_bucket(node, bucket)
    await delete_key(node, bucket, key, request.headers.get("If-Match"))
    return web.Response(status=204)


async def delete_objects(request: web.Request, node: MeshNode, bucket: str, body: bytes) -> web.Response:
    await require_bucket(node, bucket)
    md5 = request.headers.get("Content-MD5")
    if md5 is not None:
        try:
            if base64.b64decode(md5, validate=True) != hashlib.md5(body).digest():
                raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", 400)
        except (binascii.Error, ValueError):
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid", 400) from None
    root = xmlio.parse(body, "Delete")
    quiet = (xmlio.child_text(root, "Quiet") or "").strip().lower() == "true"
    objs = xmlio.children(root, "Object")
    if not objs or len(objs) > 1000:
        raise S3Error("MalformedXML", "a Delete request names between 1 and 1000 objects", 400)
    results = []
    for o in objs:
        key = xmlio.child_text(o, "Key")
        if key is None:
            raise S3Error("MalformedXML", "every Object needs a Key", 400)
        version_id = xmlio.child_text(o, "VersionId")
        try:
            said: list[Any] = []
            if version_id is None:
                await delete_key(node, bucket, key, xmlio.child_text(o, "ETag"))
            else:  # one version (gateway/versions.py)
                from . import versions

                said = await versions.delete_version_of(node, bucket, key, version_id)
            if not quiet:
                results.append(xmlio.element("Deleted", [xmlio.leaf("Key", key), *said]))
        except S3Error as e:
            results.append(xmlio.element("Error", [xmlio.leaf("Key", key), xmlio.leaf("Code", e.code),
                                                   xmlio.leaf("Message", e.message)]))
    return web.Response(body=xmlio.document(xmlio.element("DeleteResult", results)),
                        content_type="application/xml")


async def require_bucket(node: MeshNode, bucket: str) -> None:
    try:
        st = await node.stat("/" + bucket)
    except (me.UnderStoreError, me.NodeUnavailable):
        if any(m.path == "/" + bucket for m in node.mount_points()):
            return  # a mount point whose store does not answer now: the bucket is there (writes may go back)
        raise no_such_bucket(bucket) from None
    except me.MeshError:
        raise no_such_bucket(bucket) from None
    if not st.is_dir:
        raise no_such_bucket(bucket)
