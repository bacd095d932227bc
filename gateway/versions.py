"""Object versions, passed through to an under-store that keeps them (an S3 bucket
with versioning on; docs/S3_COMPAT.md).

Where a bucket's mount keeps no versions (any other store, or an S3 bucket whose
versioning was never turned on), ``versionId=null`` names the object and any other id
is ``NoSuchVersion`` (a DELETE of one removes nothing: 204, as S3 answers for a version
that does not exist). Where it does, the store's versions are the object's:

* GetBucketVersioning says the store's status; PutBucketVersioning sets it (the under-store
  bucket's, for every mount of it: ADMIN on the mount and a writable mount; a store that
  keeps no versions: ``NotImplemented``).
* GET / HEAD / DELETE ``?versionId=`` read or remove that version (``x-amz-version-id``
  in the answer; a delete marker's: ``405 MethodNotAllowed`` for GET and HEAD, and
  ``x-amz-delete-marker: true``). A version is read through the mesh like any object, its
  pages keyed by the version (never another version's bytes), cached and fetched once.
* A DELETE without an id is the store's: on a versioned bucket, a delete marker, whose
  id the answer carries; a GET of the key is then ``404 NoSuchKey`` with
  ``x-amz-delete-marker: true``.
* ListObjectVersions lists the store's versions and delete markers (``IsLatest``,
  key and version-id markers), by key, the current one first, then newest first.
* DeleteObjects removes the version each ``<Object>`` names by ``<VersionId>``.

The ETag, content type and user metadata of a version are those the gateway recorded
when it wrote it (kept by its version id, for as long as the version is), else the
store's ETag, a content type guessed from the key and none.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd import errors as me
from meshd.core import FileStatus, MeshNode, ObjectVersion
from meshd.servers.streaming import stream_response

from . import objects, xmlio
from .errors import S3Error, from_mesh, invalid_argument, not_implemented

VERSION_ID = "x-amz-version-id"
DELETE_MARKER = "x-amz-delete-marker"
OWNER_ID = "mesh"


def no_such_version(key: str, version_id: str) -> S3Error:
    return S3Error("NoSuchVersion", "The specified version does not exist.", 404, Key=key, VersionId=version_id)


def headers_of(v: ObjectVersion) -> dict[str, str]:
    """``x-amz-version-id`` (and ``x-amz-delete-marker`` for a marker) of a version."""
    h = {VERSION_ID: v.version_id}
    if v.delete_marker:
        h[DELETE_MARKER] = "true"
    return h


async def status_of(node: MeshNode, bucket: str) -> str:
    """The bucket's versioning as its store says: Enabled, Suspended or "" (never on)."""
    try:
        return await node.versioning("/" + bucket)
    except me.MeshError as e:
        raise from_mesh(e) from None


# ---- bucket operations ----------------------------------------------------------

async def get_versioning(node: MeshNode, bucket: str) -> web.Response:
    status = await status_of(node, bucket)
    kids = [xmlio.leaf("Status", status)] if status else []
    return _xml(xmlio.element("VersioningConfiguration", kids))


async def put_versioning(node: MeshNode, bucket: str, body: bytes) -> web.Response:
    await objects.require_bucket(node, bucket)
    root = xmlio.parse(body, "VersioningConfiguration")
    status = (xmlio.child_text(root, "Status") or "").strip()
    if status not in ("Enabled", "Suspended"):
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against our "
                      "published schema: Status must be Enabled or Suspended", 400)
    if (xmlio.child_text(root, "MfaDelete") or "").strip() == "Enabled":
        raise not_implemented("MFA delete")
    try:
        await node.set_versioning("/" + bucket, status == "Enabled")
    except me.NotSupported:
        raise not_implemented(f"versioning of bucket {bucket!r}: its under-store keeps no versions (an s3:// "
                              "under-store does)") from None
    except me.MeshError as e:
        raise from_mesh(e) from None
    return web.Response(status=200)


# ---- one version ----------------------------------------------------------------

async def version_of(node: MeshNode, bucket: str, key: str, version_id: str) -> ObjectVersion | None:
    """The kept version a request names; None where ``null`` names the object itself
    (a bucket whose store keeps no versions). NoSuchVersion for any other id there."""
    path = objects.mesh_path(bucket, key)
    await objects.require_bucket(node, bucket)
    if not version_id:
        raise invalid_argument("Version id cannot be the empty string", ArgumentName="versionId",
                               ArgumentValue="")
    if not await status_of(node, bucket):
        if version_id == "null":
            return None
        raise no_such_version(key, version_id)
    if key.endswith("/"):
        raise no_such_version(key, version_id)
    try:
        return await node.stat_version(path, version_id)
    except me.NotFound:
        raise no_such_version(key, version_id) from None
    except me.InvalidArgument:
        raise invalid_argument("Invalid version id specified", ArgumentName="versionId",
                               ArgumentValue=version_id) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None


def _marker_error(request: web.Request, v: ObjectVersion) -> S3Error:
    """S3's answer to reading a delete marker: 405, saying it is one."""
    e = S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405,
                Method=request.method, ResourceType="DeleteMarker")
    e.headers.update({**headers_of(v), "Last-Modified": xmlio.http_date(v.mtime), "Allow": "DELETE"})
    return e


async def attrs_of(node: MeshNode, v: ObjectVersion) -> objects.ObjectAttrs:
    """ETag, content type and user metadata of a version: as the gateway recorded them
    when it wrote it (kept by its version id), else as recorded for its bytes (by the
    store's ETag, while it was current), else the store's ETag."""
    a = await node.version_attrs(v.path, v.version_id)
    if a is not None:
        guessed = mimetypes.guess_type(v.path)[0] or "application/octet-stream"
        return objects.ObjectAttrs(a["etag"], a.get("ct") or guessed, dict(a.get("meta") or {}))
    return await objects.attrs_of(node, FileStatus(v.path, v.size, v.mtime, v.etag, False))


async def get_object(request: web.Request, node: MeshNode, bucket: str, key: str, version_id: str,
                     head: bool) -> web.StreamResponse:
    v = await version_of(node, bucket, key, version_id)
    if v is None:
        return await objects.get_object(request, node, bucket, key, head=head)
    if v.delete_marker:
        raise _marker_error(request, v)
    a = await attrs_of(node, v)
    cond = objects.check_conditions(request.headers, a.etag, v.mtime)
    if cond == 304:
        return web.Response(status=304, headers={"ETag": a.etag, "Last-Modified": xmlio.http_date(v.mtime),
                                                 VERSION_ID: v.version_id})
    if cond == 412:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                      412, Condition="If-Match" if "If-Match" in request.headers else "If-Unmodified-Since")
    part = request.query.get("partNumber")
    if part is not None and part != "1":
        raise invalid_argument("partNumber is only supported as 1 for objects read through the mesh")
    rng = objects.parse_range(request.headers.get("Range"), v.size)
    start, end = rng if rng is not None else (0, v.size)
    st = FileStatus(v.path, v.size, v.mtime, v.pin, False)
    headers = {**objects.object_headers(st, a), VERSION_ID: v.version_id}
    for q, hname in objects.OVERRIDES.items():
        if q in request.query:
            value = request.query[q]
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise invalid_argument(f"{q} may not contain control characters", ArgumentName=q)
            headers[hname] = value
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{v.size}"
    if head:
        hresp = web.StreamResponse(status=status, headers=headers)
        hresp.content_length = end - start
        await hresp.prepare(request)
        await hresp.write_eof()
        return hresp
    nocache = request.headers.get("x-mesh-nocache", "") in ("1", "true")
    try:  # pinned to this version: pages keyed by it, never another version's bytes
        handle = await node.open(v.path, version=v.pin, size=v.size)
        stream = await handle.read(start, end - start, nocache=nocache)
    except me.NotFound:
        raise no_such_version(key, version_id) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    sresp = web.StreamResponse(status=status, headers=headers)
    sresp.content_length = end - start
    await stream_response(request, sresp, node, stream)
    return sresp


async def read_source(request: web.Request, node: MeshNode, bucket: str, key: str, version_id: str,
                      rng: tuple[int, int] | None) -> tuple[FileStatus, objects.ObjectAttrs, Any] | None:
    """The source of a copy at ``version_id`` (``x-amz-copy-source: /b/k?versionId=V``):
    its status, attributes and bytes; None where it names the current object."""
    v = await version_of(node, bucket, key, version_id)
    if v is None:
        return None
    if v.delete_marker:
        raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a "
                      "delete marker by version id.", 400)
    a = await attrs_of(node, v)
    if objects.check_conditions(request.headers, a.etag, v.mtime, prefix="x-amz-copy-source-") is not None:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
    start, end = rng if rng is not None else (0, v.size)
    try:
        handle = await node.open(v.path, version=v.pin, size=v.size)
        stream = await handle.read(start, end - start)
    except me.NotFound:
        raise no_such_version(key, version_id) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    return FileStatus(v.path, v.size, v.mtime, v.pin, False), a, objects._SourceChunks(stream)


async def source_size(node: MeshNode, bucket: str, key: str, version_id: str | None) -> int:
    """The size of a copy's source (``x-amz-copy-source``, at ``version_id`` if given)."""
    v = await version_of(node, bucket, key, version_id) if version_id is not None else None
    if v is None:
        return (await objects.stat_object(node, bucket, key)).size
    if v.delete_marker:
        raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a "
                      "delete marker by version id.", 400)
    return v.size


async def latest_of(node: MeshNode, bucket: str, key: str) -> ObjectVersion | None:
    """The current version of a key on a versioned bucket (a delete marker too); None
    when the bucket keeps no versions or the key has none."""
    if key.endswith("/") or not await status_of(node, bucket):
        return None
    path = objects.mesh_path(bucket, key)
    try:
        page = await node.versions(path, limit=1)
    except me.MeshError as e:
        raise from_mesh(e, key) from None
    found = [v for v in page.versions if v.path == path and v.is_latest]
    return found[0] if found else None


async def note_delete_marker(node: MeshNode, bucket: str, key: str, e: S3Error) -> None:
    """A NoSuchKey whose key's current version is a delete marker says so, as S3 does
    (``x-amz-delete-marker: true`` and the marker's ``x-amz-version-id``)."""
    if e.code != "NoSuchKey":
        return
    try:
        latest = await latest_of(node, bucket, key)
    except (S3Error, me.MeshError):
        return  # the 404 stands as it is
    if latest is not None and latest.delete_marker:
        e.headers.update(headers_of(latest))


async def remove_version(node: MeshNode, bucket: str, key: str, version_id: str) -> ObjectVersion:
    """Remove one version of a key, as S3 does: a version that does not exist is removed
    already (success, with its id); ``null`` where the store keeps no versions is the
    object itself; any other id there names nothing (success too)."""
    path = objects.mesh_path(bucket, key)
    await objects.require_bucket(node, bucket)
    if not version_id:
        raise invalid_argument("Version id cannot be the empty string", ArgumentName="versionId",
                               ArgumentValue="")
    if not await status_of(node, bucket):
        if version_id == "null":
            await objects.delete_key(node, bucket, key)
        return ObjectVersion(path, version_id, False)
    try:
        return await node.delete_version(path, version_id)
    except me.NotFound:
        return ObjectVersion(path, version_id, False)
    except me.InvalidArgument:
        raise invalid_argument("Invalid version id specified", ArgumentName="versionId",
                               ArgumentValue=version_id) from None
    except me.MeshError as e:
        raise from_mesh(e, key) from None


async def delete_version_of(node: MeshNode, bucket: str, key: str, version_id: str) -> list[Any]:
    """DeleteObjects' ``<Object>`` with a ``<VersionId>``: that version removed; what its
    ``<Deleted>`` says besides the key (the id, and whether it was a delete marker)."""
    gone = await remove_version(node, bucket, key, version_id)
    said = [xmlio.leaf("VersionId", version_id)]
    if gone.delete_marker:
        said += [xmlio.leaf("DeleteMarker", True), xmlio.leaf("DeleteMarkerVersionId", version_id)]
    return said


async def delete_object(request: web.Request, node: MeshNode, bucket: str, key: str) -> web.Response:
    version_id = request.query.get("versionId")
    if version_id is None:
        resp = await objects.delete_object(request, node, bucket, key)
        try:
            latest = await latest_of(node, bucket, key)  # the store's delete marker, on a versioned bucket
        except (S3Error, me.MeshError):
            return resp  # deleted all the same: only the marker's id is not known
        if latest is not None and latest.delete_marker:
            resp.headers.update(headers_of(latest))
        return resp
    gone = await remove_version(node, bucket, key, version_id)
    return web.Response(status=204, headers=headers_of(gone))


# ---- ListObjectVersions -----------------------------------------------------------

async def list_versions(request: web.Request, node: MeshNode, bucket: str, max_keys: int,
                        enc: str | None, e: Callable[[str], str]) -> web.Response:
    """ListObjectVersions of a bucket whose store keeps versions."""
    q = request.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, vid_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
    if vid_marker and not key_marker:
        raise invalid_argument("A version-id marker cannot be specified without a key marker.",
                               ArgumentName="version-id-marker", ArgumentValue=vid_marker)
    base = "/" + bucket + "/"
    if max_keys:
        try:
            page = await node.versions(base + prefix, after=base + key_marker if key_marker else "",
                                       after_version_id=vid_marker, limit=max_keys, delimiter=delimiter)
        except me.MeshError as err:
            raise from_mesh(err) from None
        found, prefixes, truncated = page.versions, page.prefixes, page.truncated
        next_key, next_vid = page.next_path, page.next_version_id
    else:
        found, prefixes, truncated, next_key, next_vid = [], [], False, "", ""
    owner = xmlio.element("Owner", [xmlio.leaf("ID", OWNER_ID), xmlio.leaf("DisplayName", OWNER_ID)])
    attrs = await asyncio.gather(*(attrs_of(node, v) for v in found if not v.delete_marker))
    etags = iter(attrs)
    items = []
    for v in found:
        common = [xmlio.leaf("Key", e(v.path[len(base):])), xmlio.leaf("VersionId", v.version_id),
                  xmlio.leaf("IsLatest", v.is_latest), xmlio.leaf("LastModified", xmlio.iso8601(v.mtime))]
        if v.delete_marker:
            items.append(xmlio.element("DeleteMarker", [*common, owner]))
        else:
            items.append(xmlio.element("Version", [*common, xmlio.leaf("ETag", next(etags).etag),
                                                   xmlio.leaf("Size", v.size),
                                                   xmlio.leaf("StorageClass", "STANDARD"), owner]))
    head = [xmlio.leaf("Name", bucket), xmlio.leaf("Prefix", e(prefix)), xmlio.leaf("KeyMarker", e(key_marker)),
            xmlio.leaf("VersionIdMarker", vid_marker), xmlio.leaf("MaxKeys", max_keys)]
    if delimiter:
        head.append(xmlio.leaf("Delimiter", e(delimiter)))
    if enc:
        head.append(xmlio.leaf("EncodingType", enc))
    head.append(xmlio.leaf("IsTruncated", truncated))
    if truncated:
        head += [xmlio.leaf("NextKeyMarker", e(next_key[len(base):] if next_key.startswith(base) else "")),
                 xmlio.leaf("NextVersionIdMarker", next_vid)]
    cps = [xmlio.element("CommonPrefixes", [xmlio.leaf("Prefix", e(p[len(base):]))]) for p in prefixes
           if p.startswith(base)]
    return _xml(xmlio.element("ListVersionsResult", head + items + cps))


def _xml(root: Any) -> web.Response:
    return web.Response(body=xmlio.document(root), content_type="application/xml")
