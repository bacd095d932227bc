"""Object operations: Get/Head (ranges, conditionals, overrides), Put, Copy, Delete.

ETags. An object written through the gateway gets S3's ETag (the MD5 of its
bytes; for multipart, the MD5 of the parts' MD5s plus "-N"), kept with its
content type and user metadata in the node's metadata store, keyed by the
under-store version it describes. Objects written by other means get their
under-store's ETag when it is one (S3), otherwise a stable hash of their
version (mtime+size), quoted like an ETag: not an MD5, as for S3's own
encrypted objects, so clients must not verify ETags as MD5s (none of the
tested clients does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from meshd import errors as me
from meshd.config import parse_write_mode
from meshd.core import FileStatus, MeshNode
from meshd.servers.streaming import stream_response

from . import xmlio
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
        return ObjectAttrs(a["etag"], a.get("ct") or guessed, dict(a.get("meta") or {}))
    v = st.version.strip('"')
    etag = f'"{v}"' if _S3_ETAG.fullmatch(v) else '"' + hashlib.md5(v.encode()).hexdigest() + '"'
    return ObjectAttrs(etag, guessed, {})


def user_metadata(request: web.Request) -> dict[str, str]:
    meta = {k[len("x-amz-meta-"):].lower(): v for k, v in request.headers.items()
            if k.lower().startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > 2048:
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
        h["x-amz-meta-" + k] = v
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
    if st.is_dir or key.endswith("/"):
        raise no_such_key(key)
    return st


# ---- conditionals and ranges ------------------------------------------------

def _etags(value: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in value.split(",") if t.strip()]


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
        part = request.query.get("partNumber")
        if part is not None and part != "1":
            raise invalid_argument("partNumber is only supported as 1 for objects read through the mesh")
        rng = parse_range(request.headers.get("Range"), st.size)
        start, end = rng if rng is not None else (0, st.size)
        headers = object_headers(st, a)
        for q, hname in OVERRIDES.items():
            if q in request.query:
                value = request.query[q]
                if any(ord(c) < 32 or ord(c) == 127 for c in value):
                    raise invalid_argument(f"{q} may not contain control characters", ArgumentName=q)
                headers[hname] = value
        status = 200
        if rng is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{st.size}"
        if head:
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


async def write_object(node: MeshNode, bucket: str, key: str, chunks: AsyncIterator[bytes],
                       content_md5: str | None, content_type: str | None,
                       metadata: dict[str, str], etag: str | None = None,
                       limit: int = MAX_PUT, writeback: bool | None = None,
                       size_hint: int = -1) -> tuple[FileStatus, str]:
    """Stream a whole object into the mesh; returns its status and S3 ETag.
    ``writeback``: the request's write mode (None: the mount's); ``size_hint``: its length."""
    path = mesh_path(bucket, key)
    digest = _Digest(content_md5, limit)
    try:
        if key.endswith("/"):  # a "folder" marker
            async for _ in digest.wrap(chunks):
                raise invalid_argument("a key ending in '/' names a directory: its body must be empty")
            await node.mkdir(path)
            st = await node.stat(path)
            return st, digest.etag
        st = await node.write(path, digest.wrap(chunks), writeback=writeback, size_hint=size_hint)
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    tag = etag or digest.etag
    attrs = {"etag": tag, "ct": content_type or mimetypes.guess_type(path)[0] or "application/octet-stream",
             "meta": metadata}
    await node.set_object_attrs(st.path, st.version, attrs)
    if st.version_id:  # a kept version of the store's (gateway/versions.py): they outlive the next write
        await node.set_version_attrs(st.path, st.version_id, attrs)
    return st, tag


async def put_object(request: web.Request, node: MeshNode, bucket: str, key: str,
                     body: AsyncIterator[bytes]) -> web.Response:
    length = request.headers.get("x-amz-decoded-content-length") or request.headers.get("Content-Length")
    if length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    if length is not None and length.isdigit() and digits(length) > MAX_PUT:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    mode = write_mode(request)
    await require_bucket(node, bucket)
    st, etag = await write_object(node, bucket, key, body, request.headers.get("Content-MD5"),
                                  request.headers.get("Content-Type"), user_metadata(request), writeback=mode,
                                  size_hint=digits(length) if length is not None and length.isdigit() else -1)
    return web.Response(status=200, headers={"ETag": etag, **version_header(st)})


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
    # onto itself, unchanged: refused, except from another version (how S3 restores one)
    if (sb, sk) == (bucket, key) and directive == "COPY" and source_version in (None, "null"):
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                      "to itself without changing the object's metadata.", 400)
    mode = write_mode(request)
    await require_bucket(node, bucket)
    mesh_path(bucket, key)  # refuse a bad destination before opening the source
    sst, a, chunks = await read_source(request, node, sb, sk, version_id=source_version)
    if directive == "COPY":
        ct, meta = a.content_type, a.metadata
    else:
        ct, meta = request.headers.get("Content-Type") or a.content_type, user_metadata(request)
    try:
        nst, etag = await write_object(node, bucket, key, chunks, None, ct, meta, writeback=mode,
                                       size_hint=sst.size)
    finally:
        await chunks.aclose()
    body = xmlio.document(xmlio.element("CopyObjectResult", [
        xmlio.leaf("LastModified", xmlio.iso8601(nst.mtime)), xmlio.leaf("ETag", etag)]))
    headers = version_header(nst)
    if source_version is not None:
        headers["x-amz-copy-source-version-id"] = source_version
    return web.Response(body=body, content_type="application/xml", headers=headers)


async def delete_key(node: MeshNode, bucket: str, key: str) -> None:
    """S3 delete: idempotent; a folder marker removes an empty directory."""
    path = mesh_path(bucket, key)
    try:
        st = await node.stat(path)
    except me.NotFound:
        return
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    if st.is_dir and not key.endswith("/"):
        return  # a prefix, not an object
    try:
        await node.delete(path)
    except me.DirectoryNotEmpty:
        return  # deleting "dir/" while keys remain below it: S3 would just drop the marker
    except me.NotFound:
        return
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    await node.drop_object_attrs(path)


async def delete_object(node: MeshNode, bucket: str, key: str) -> web.Response:
    await require_bucket(node, bucket)
    await delete_key(node, bucket, key)
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
                await delete_key(node, bucket, key)
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
