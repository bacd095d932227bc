"""The S3 gateway's aiohttp application: addressing, auth, dispatch, errors.

Buckets are the namespace's top-level entries: each top-level mount (or the
first component of a deeper mount) is a bucket; with a mount at ``/``, the
top-level directories of that mount are buckets and CreateBucket/DeleteBucket
make and remove them. Keys map 1:1 to paths below the bucket.

Every request: parse bucket and key (path style ``/bucket/key`` or virtual
hosted ``bucket.<domain>/key``), verify SigV4 (headers or presigned query;
``sigv4.py``), dispatch on method + sub-resource, and turn any error into
S3's XML error document here, in one place (a HEAD gets the status only).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import HttpVersion11, web

from meshd import auth as mauth
from meshd import errors as me
from meshd.auth.http import connection_principal
from meshd.config import S3Config
from meshd.core import MeshNode
from meshd.servers.guard import BAD_REQUEST, REFUSE

from . import (
    acl,
    attributes,
    buckets,
    checksums,
    cors,
    listing,
    objects,
    post,
    storageclass,
    tagging,
    versions,
    xmlio,
)
from . import headers as hdrs
from .errors import (
    S3Error,
    access_denied,
    from_mesh,
    invalid_argument,
    not_implemented,
)
from .multipart import MultipartStore, Part, Upload, object_checksum
from .sigv2 import is_sigv2_query, verify_presigned_v2
from .sigv4 import AuthResult, check_sha256, decode_aws_chunked, verify_request

log = logging.getLogger(__name__)
OWNER_ID = "mesh"
UNSUPPORTED = {
    "lifecycle", "website", "replication", "encryption",
    "notification", "logging", "object-lock", "retention", "legal-hold", "torrent", "restore",
    "select", "accelerate", "analytics", "inventory", "metrics", "intelligent-tiering",
    "requestPayment",
}
READ_CHUNK = 1 << 20


class _Keys(Mapping[str, str]):
    """Every S3 key the node knows, looked up when a request names one: the config's and
    the node's own (operators), and the tenants' of the access file (as reloaded)."""

    def __init__(self, access: Callable[[], mauth.Access]) -> None:
        self._access = access

    def __getitem__(self, key: str) -> str:
        found = self._access().s3_key(key)
        if found is None:
            raise KeyError(key)
        return found[0]

    def __iter__(self) -> Iterator[str]:
        return iter(())  # never enumerated: keys are only looked up

    def __len__(self) -> int:
        return 0


class Gateway:
    def __init__(self, node: MeshNode, cfg: S3Config, uploads: MultipartStore) -> None:
        self.node = node
        self.cfg = cfg
        self.uploads = uploads
        self.keys = _Keys(lambda: node.access)

    def principal(self, request: web.Request, result: AuthResult) -> mauth.Principal:
        """Who a request authenticated by ``result`` acts as."""
        if result.access_key is not None:
            found = self.node.access.s3_key(result.access_key)
            assert found is not None  # the signature was checked with its secret
            return found[1]
        if self.cfg.allow_anonymous:
            tenant = self.node.access.tenants.get("anonymous")
            return mauth.Principal("tenant", "anonymous", "anonymous") if tenant else \
                mauth.Principal("operator", "anonymous (s3.allow_anonymous)")
        # the node's own user or a client certificate's holder, with no key configured (anonymous_ok)
        return connection_principal(request, self.node.access)

    def anonymous_ok(self, request: web.Request) -> bool:
        """Unsigned requests: where the operator allows them (``allow_anonymous: true``),
        or, while no S3 key is configured at all, from the node's own user on this machine
        (a first try needs no keys; anyone else signs with DATA_DIR/credentials.json's), or
        from the holder of a client certificate of the cluster's CA (mutual TLS)."""
        access = self.node.access
        if self.cfg.allow_anonymous is not None or not access.enforce:
            return bool(self.cfg.allow_anonymous) or not access.enforce
        configured = bool(self.cfg.access_keys) or any(t.s3_keys for t in access.tenants.values())
        return not configured and connection_principal(request, access).kind != "anonymous"

    # ---- request parsing ---------------------------------------------------

    def address(self, request: web.Request) -> tuple[str, str]:
        raw_path = request.raw_path.split("?", 1)[0]
        try:
            path = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI: the path is not valid UTF-8",
                          400) from None
        host = request.headers.get("Host", "").rsplit(":", 1)[0].lower()
        for domain in self.cfg.domains:
            if host.endswith("." + domain):
                return host[: -len(domain) - 1], path[1:]
        bucket, _, key = path[1:].partition("/")
        return bucket, key

    def authenticate(self, request: web.Request, bucket: str) -> AuthResult:
        raw_path, _, raw_query = request.raw_path.partition("?")
        if is_sigv2_query(raw_query):
            host = request.headers.get("Host", "").rsplit(":", 1)[0].lower()
            virtual = any(host.endswith("." + d) for d in self.cfg.domains)
            resource = ("/" + quote(bucket, safe="") + raw_path) if virtual else raw_path
            return verify_presigned_v2(request.method, resource, raw_query, request.headers, self.keys)
        return verify_request(request.method, raw_path, raw_query, request.headers, self.keys,
                              allow_anonymous=self.anonymous_ok(request))

    def body(self, request: web.Request, auth: AuthResult,
             cks: checksums.RequestChecksum | None = None) -> AsyncIterator[bytes]:
        """The request body as the object's bytes: aws-chunked decoded, and checked
        (payload SHA-256, x-amz-checksum-* header or trailer) as it streams; a mismatch
        raises at the end, before the under-store write commits. ``cks``: the request's
        checksum (read from its headers if not given), computed as the body streams."""
        if cks is None:
            cks = checksums.RequestChecksum.of_request(request.headers, auth.trailer)
        raw: AsyncIterator[bytes] = request.content.iter_chunked(READ_CHUNK)
        ph = auth.payload_hash
        if ph.startswith("STREAMING-"):
            decoded = request.headers.get("x-amz-decoded-content-length", "")
            length = int(decoded) if re.fullmatch(r"[0-9]{1,19}", decoded) else None
            raw = decode_aws_chunked(raw, auth, decoded_length=length, verified=cks.received)
        else:
            if cks.trailer:
                raise S3Error("InvalidRequest", "x-amz-trailer is only allowed with an aws-chunked "
                              "body (x-amz-content-sha256: STREAMING-...)", 400)
            if len(ph) == 64:
                raw = check_sha256(raw, ph)
        return cks.wrap(raw)

    async def small_body(self, request: web.Request, auth: AuthResult,
                         cks: checksums.RequestChecksum | None = None) -> bytes:
        out = bytearray()
        async for c in self.body(request, auth, cks):
            out += c
            if len(out) > xmlio.MAX_BODY:
                raise S3Error("MalformedXML", "The XML body is too large", 400)
        return bytes(out)

    # ---- dispatch ----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8)
        request["request_id"] = request_id
        bucket = key = ""
        try:
            bucket, key = self.address(request)
            request["bucket"] = bucket  # for the CORS headers (stamp)
            if request.method == "OPTIONS":  # a CORS preflight: browsers send no credential
                with self.node.access.serving(mauth.ANONYMOUS):
                    return await cors.preflight(request, self.node, bucket)
            if post.is_form_upload(request, bucket, key):  # signed by its form, not its headers
                return await post.upload(request, self.node, bucket, self.keys,
                                         lambda ak: self.principal(request, AuthResult(ak, "UNSIGNED-PAYLOAD")),
                                         self.anonymous_ok(request))
            auth = self.authenticate(request, bucket)
            with self.node.access.serving(self.principal(request, auth)):
                resp = await self.dispatch(request, auth, bucket, key)
        except S3Error as e:
            if "streaming" in request:
                return self._abort(request)
            resp = self.error(request, e, bucket, key, request_id)
        except me.MeshError as e:
            if not isinstance(e, me.NotFound | me.InvalidPath):
                log.warning("S3 %s %s (request %s): %s: %s", request.method, request.path, request_id,
                            e.kind, e)  # the client gets S3's words; the operator gets ours
            if "streaming" in request:
                return self._abort(request)
            resp = self.error(request, from_mesh(e, key), bucket, key, request_id)
        except (ConnectionResetError, web.HTTPException):
            raise
        except Exception as e:
            me.log_internal(log, f"S3 request {request.method} {request.path}", e)
            if "streaming" in request:
                return self._abort(request)
            resp = self.error(request, S3Error("InternalError", "We encountered an internal error. "
                                               "Please try again.", 500), bucket, key, request_id)
        return resp

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        """A response already started: a second one would land inside the body.
        Cut the connection; the client sees a short body and retries."""
        if request.transport is not None:
            request.transport.abort()
        resp: web.StreamResponse = request["streaming"]
        return resp

    def error(self, request: web.Request, e: S3Error, bucket: str, key: str, request_id: str) -> web.Response:
        resource = "/" + bucket + ("/" + key if key else "")
        if request.method == "HEAD":
            return web.Response(status=e.status, headers={**e.headers, "x-amz-error-code": e.code})
        return web.Response(status=e.status, headers=e.headers, body=e.to_xml(resource, request_id),
                            content_type="application/xml")

    async def dispatch(self, request: web.Request, auth: AuthResult, bucket: str, key: str) -> web.StreamResponse:
        m, q = request.method, request.query
        sub = UNSUPPORTED.intersection(q)
        if sub:
            raise not_implemented(f"the ?{sorted(sub)[0]} sub-resource")
        if not bucket:
            if m == "GET":
                return await self.list_buckets(request)
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)

        async def body() -> bytes:
            return await self.small_body(request, auth)

        if "tagging" in q:
            return await tagging.handle(request, self.node, bucket, key, body)
        if not key and "cors" in q:
            return await cors.handle(request, self.node, bucket, body)
        if "acl" in q or (not key and acl.SUBRESOURCES.intersection(q)):
            return await acl.handle(request, self.node, self.cfg, bucket, key, body)
        if not key:
            return await self.bucket_op(request, auth, bucket)
        node = self.node
        if m in ("GET", "HEAD"):
            if "uploadId" in q:
                return await self.list_parts(request, bucket, key)
            if "attributes" in q and m == "GET":
                return await attributes.get_object_attributes(request, node, bucket, key)
            if "versionId" in q:
                return await versions.get_object(request, node, bucket, key, q["versionId"], head=(m == "HEAD"))
            try:
                return await objects.get_object(request, node, bucket, key, head=(m == "HEAD"))
            except S3Error as e:
                await versions.note_delete_marker(node, bucket, key, e)
                raise
        if m == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return await self.upload_part(request, auth, bucket, key)
            if "x-amz-copy-source" in request.headers:
                return await objects.copy_object(request, node, bucket, key)
            cks = checksums.RequestChecksum.of_request(request.headers, auth.trailer, checksums.DEFAULT)
            return await objects.put_object(request, node, bucket, key, self.body(request, auth, cks), cks)
        if m == "DELETE":
            if "uploadId" in q:
                upload = await self.uploads.get(bucket, key, q["uploadId"])
                await self.uploads.abort(upload)
                return web.Response(status=204)
            return await versions.delete_object(request, node, bucket, key)
        if m == "POST":
            if "uploads" in q:
                return await self.create_upload(request, bucket, key)
            if "uploadId" in q:
                return await self.complete_upload(request, auth, bucket, key)
            raise not_implemented("this POST operation")
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)

    # ---- buckets -----------------------------------------------------------

    async def list_buckets(self, request: web.Request) -> web.Response:
        q = request.query
        entries = {e.path.strip("/"): e for e in await self.node.listdir("/") if e.is_dir}
        page = buckets.page_of_buckets(list(entries), q.get("max-buckets"), q.get("prefix", ""),
                                       q.get("continuation-token"))
        start = time.time()
        items = [xmlio.element("Bucket", [xmlio.leaf("Name", name),
                                          xmlio.leaf("CreationDate", xmlio.iso8601(entries[name].mtime or start))])
                 for name in page.names]
        tail = [] if page.next_token is None else [xmlio.leaf("ContinuationToken", page.next_token)]
        if "prefix" in q:
            tail.append(xmlio.leaf("Prefix", q["prefix"]))
        doc = xmlio.element("ListAllMyBucketsResult", [
            xmlio.element("Owner", [xmlio.leaf("ID", OWNER_ID), xmlio.leaf("DisplayName", OWNER_ID)]),
            xmlio.element("Buckets", items), *tail])
        return _xml(doc)

    def _root_mount_writable(self) -> bool:
        return any(m.path == "/" and not m.read_only for m in self.node.mount_points())

    async def bucket_op(self, request: web.Request, auth: AuthResult, bucket: str) -> web.StreamResponse:
        m, q = request.method, request.query
        if m == "PUT":
            if "versioning" in q:
                return await versions.put_versioning(self.node, bucket, await self.small_body(request, auth))
            if q:
                raise not_implemented(f"PUT ?{next(iter(q))} on buckets")
            return await self.create_bucket(bucket, await self.small_body(request, auth), request.headers)
        if m == "DELETE":
            return await self.delete_bucket(bucket)
        if m == "POST" and "delete" in q:
            return await objects.delete_objects(request, self.node, bucket, await self.small_body(request, auth))
        await objects.require_bucket(self.node, bucket)
        if m == "HEAD":
            return web.Response(status=200, headers={"x-amz-bucket-region": "us-east-1"})
        if m != "GET":
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
        if "location" in q:
            return _xml(xmlio.element("LocationConstraint"))
        if "versioning" in q:
            return await versions.get_versioning(self.node, bucket)
        if "uploads" in q:
            return await self.list_uploads(request, bucket)
        if "versions" in q:
            return await self.list_versions(request, bucket)
        return await self.list_objects(request, bucket, v2=q.get("list-type") == "2")

    async def create_bucket(self, bucket: str, body: bytes = b"",
                            headers: Mapping[str, str] | None = None) -> web.Response:
        """CreateBucket. The gateway is one region, us-east-1 (GetBucketLocation, HeadBucket):
        re-creating a bucket you already own answers 200, as AWS's us-east-1 does (every other
        AWS region answers 409 BucketAlreadyOwnedByYou, which a LocationConstraint naming
        another region gets here too)."""
        buckets.check_bucket_name(bucket)
        acl.check_bucket_acl(headers or {})
        constraint = ""
        if body.strip():
            root = xmlio.parse(body, "CreateBucketConfiguration")
            constraint = (xmlio.child_text(root, "LocationConstraint") or "").strip()
        try:
            st = await self.node.stat("/" + bucket)
            if st.is_dir:
                if constraint in ("", "us-east-1"):
                    return web.Response(status=200, headers={"Location": "/" + bucket})
                raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                              "succeeded and you already own it.", 409, BucketName=bucket)
        except me.NotFound:
            pass
        if not self._root_mount_writable():
            raise access_denied("buckets are the mesh's top-level mounts: add one with "
                                "`meshctl mount add /NAME URI` (CreateBucket only works under a writable "
                                "mount at /)")
        await self.node.mkdir("/" + bucket)
        return web.Response(status=200, headers={"Location": "/" + bucket})

    async def delete_bucket(self, bucket: str) -> web.Response:
        await objects.require_bucket(self.node, bucket)
        if not self._root_mount_writable() or not self.node.inside_mount("/" + bucket):
            raise access_denied("this bucket is a mount: remove it with `meshctl mount rm /" + bucket + "`")
        try:  # never unlinks a file: a cached listing may be stale, the under-store is asked
            await self.node.remove_empty_dirs("/" + bucket)
        except me.DirectoryNotEmpty:
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409,
                          BucketName=bucket) from None
        try:  # its configuration (CORS, tags) goes with it, as on S3
            await self.node.drop_object_attrs("/" + bucket)
        except me.MeshError as e:
            log.warning("bucket %s deleted, its configuration not: %s", bucket, e)
        return web.Response(status=204)

    # ---- listings ----------------------------------------------------------

    def _max_keys(self, request: web.Request, name: str = "max-keys") -> int:
        raw = request.query.get(name, "1000")
        if not raw.isdigit():
            raise invalid_argument(f"{name} must be a non-negative integer", ArgumentName=name)
        return min(objects.digits(raw), 1000)

    async def list_objects(self, request: web.Request, bucket: str, v2: bool) -> web.Response:
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        enc, e = _key_encoder(request)
        max_keys = self._max_keys(request)
        if v2:
            token = q.get("continuation-token")
            after = buckets.after_token(token) if token is not None else q.get("start-after", "")
        else:
            after = q.get("marker", "")
        page = await listing.list_page(self.node, bucket, prefix, delimiter, after, max_keys)
        owner = xmlio.element("Owner", [xmlio.leaf("ID", OWNER_ID), xmlio.leaf("DisplayName", OWNER_ID)])
        contents = []
        attrs = await asyncio.gather(*(objects.attrs_of(self.node, ent.status) for ent in page.entries))
        for ent, a in zip(page.entries, attrs, strict=True):
            kids = [xmlio.leaf("Key", e(ent.key)), xmlio.leaf("LastModified", xmlio.iso8601(ent.status.mtime)),
                    xmlio.leaf("ETag", a.etag), xmlio.leaf("Size", ent.status.size),
                    xmlio.leaf("StorageClass", storageclass.of(a.stored)), *_listed_checksum(a)]
            if not v2 or q.get("fetch-owner") == "true":
                kids.append(owner)
            contents.append(xmlio.element("Contents", kids))
        head = [xmlio.leaf("Name", bucket), xmlio.leaf("Prefix", e(prefix))]
        if v2:
            head += [xmlio.leaf("KeyCount", len(page.entries) + len(page.prefixes)),
                     xmlio.leaf("MaxKeys", max_keys)]
            if "continuation-token" in q:
                head.append(xmlio.leaf("ContinuationToken", q["continuation-token"]))
            if "start-after" in q:
                head.append(xmlio.leaf("StartAfter", e(q["start-after"])))
            if page.truncated:
                head.append(xmlio.leaf("NextContinuationToken", buckets.continuation_token(page.next_marker)))
        else:
            head += [xmlio.leaf("Marker", e(after)), xmlio.leaf("MaxKeys", max_keys)]
            if page.truncated and delimiter:
                head.append(xmlio.leaf("NextMarker", e(page.next_marker)))
        if delimiter:
            head.append(xmlio.leaf("Delimiter", e(delimiter)))
        if enc:
            head.append(xmlio.leaf("EncodingType", enc))
        head.append(xmlio.leaf("IsTruncated", page.truncated))
        cps = [xmlio.element("CommonPrefixes", [xmlio.leaf("Prefix", e(p))]) for p in page.prefixes]
        return _xml(xmlio.element("ListBucketResult", head + contents + cps))

    async def list_versions(self, request: web.Request, bucket: str) -> web.Response:
        """ListObjectVersions: the store's versions where it keeps them (gateway/versions.py),
        else every key once, as version ``null``."""
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        enc, e = _key_encoder(request)
        max_keys = self._max_keys(request)
        if await versions.status_of(self.node, bucket):
            return await versions.list_versions(request, self.node, bucket, max_keys, enc, e)
        page = await listing.list_page(self.node, bucket, prefix, delimiter, q.get("key-marker", ""), max_keys)
        owner = xmlio.element("Owner", [xmlio.leaf("ID", OWNER_ID), xmlio.leaf("DisplayName", OWNER_ID)])
        items = []
        attrs = await asyncio.gather(*(objects.attrs_of(self.node, ent.status) for ent in page.entries))
        for ent, a in zip(page.entries, attrs, strict=True):
            items.append(xmlio.element("Version", [
                xmlio.leaf("Key", e(ent.key)), xmlio.leaf("VersionId", "null"), xmlio.leaf("IsLatest", True),
                xmlio.leaf("LastModified", xmlio.iso8601(ent.status.mtime)), xmlio.leaf("ETag", a.etag),
                xmlio.leaf("Size", ent.status.size), xmlio.leaf("StorageClass", storageclass.of(a.stored)), owner,
                *_listed_checksum(a)]))
        head = [xmlio.leaf("Name", bucket), xmlio.leaf("Prefix", e(prefix)),
                xmlio.leaf("KeyMarker", e(q.get("key-marker", ""))),
                xmlio.leaf("VersionIdMarker", q.get("version-id-marker", "")), xmlio.leaf("MaxKeys", max_keys)]
        if delimiter:
            head.append(xmlio.leaf("Delimiter", e(delimiter)))
        if enc:
            head.append(xmlio.leaf("EncodingType", enc))
        head.append(xmlio.leaf("IsTruncated", page.truncated))
        if page.truncated:
            head += [xmlio.leaf("NextKeyMarker", e(page.next_marker)), xmlio.leaf("NextVersionIdMarker", "null")]
        cps = [xmlio.element("CommonPrefixes", [xmlio.leaf("Prefix", e(p))]) for p in page.prefixes]
        return _xml(xmlio.element("ListVersionsResult", head + items + cps))

    # ---- multipart ---------------------------------------------------------

    async def create_upload(self, request: web.Request, bucket: str, key: str) -> web.Response:
        mode = objects.write_mode(request)
        raw_alg = request.headers.get("x-amz-checksum-algorithm")
        alg = checksums.parse_algorithm(raw_alg, "x-amz-checksum-algorithm") if raw_alg is not None else None
        ctype = checksums.upload_checksum_type(alg, request.headers.get(checksums.TYPE_HEADER))
        await objects.require_bucket(self.node, bucket)
        objects.mesh_path(bucket, key)
        extra = objects.request_attrs(request.headers)
        up = await self.uploads.create(bucket, key, objects.user_metadata(request),
                                       request.headers.get("Content-Type", ""), writeback=mode,
                                       headers=hdrs.content_headers(request.headers),
                                       checksum_algorithm=alg, checksum_type=ctype, attrs=extra)
        resp = _xml(xmlio.element("InitiateMultipartUploadResult", [
            xmlio.leaf("Bucket", bucket), xmlio.leaf("Key", key), xmlio.leaf("UploadId", up.upload_id)]))
        if alg is not None and ctype is not None:
            resp.headers["x-amz-checksum-algorithm"] = alg
            resp.headers[checksums.TYPE_HEADER] = ctype
        return resp

    def _part_number(self, request: web.Request) -> int:
        raw = request.query.get("partNumber", "")
        if not raw.isdigit() or not 1 <= objects.digits(raw) <= 10000:
            raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive",
                                   ArgumentName="partNumber")
        return objects.digits(raw)

    async def upload_part(self, request: web.Request, auth: AuthResult, bucket: str, key: str) -> web.Response:
        if "uploadId" not in request.query or "partNumber" not in request.query:
            raise invalid_argument("UploadPart needs both partNumber and uploadId")
        upload = await self.uploads.get(bucket, key, request.query["uploadId"])
        number = self._part_number(request)
        source = request.headers.get("x-amz-copy-source")
        if source is None:
            cks = checksums.RequestChecksum.of_request(request.headers, auth.trailer)
            if upload.checksum_algorithm is not None and cks.algorithm != upload.checksum_algorithm:
                raise S3Error("InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: "
                              f"{upload.checksum_algorithm.lower()}, actual checksum Type: "
                              f"{(cks.algorithm or 'null').lower()}", 400)
            digest = objects._Digest(request.headers.get("Content-MD5"), objects.MAX_PUT)
            part = await self.uploads.put_part(upload, number, digest.wrap(self.body(request, auth, cks)),
                                               checksum=cks)
            headers = {"ETag": part.etag}
            if part.checksum_algorithm is not None and part.checksum is not None:
                headers[checksums.header_name(part.checksum_algorithm)] = part.checksum
            return web.Response(status=200, headers=headers)
        sb, sk = objects.parse_copy_source(source, any_version=True)
        source_version = objects.copy_source_version(source)
        rng = None
        raw_range = request.headers.get("x-amz-copy-source-range")
        size = await versions.source_size(self.node, sb, sk, source_version)
        if raw_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", raw_range.strip())
            if not m or objects.digits(m.group(1)) > objects.digits(m.group(2)):
                raise invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last "
                                       "where first and last are the zero-based offsets of the first and last "
                                       "bytes to copy",
                                       ArgumentName="x-amz-copy-source-range")
            if objects.digits(m.group(2)) >= size:  # past the source's end: AWS's 416
                raise S3Error("InvalidRange", "The requested range is not satisfiable", 416,
                              RangeRequested=raw_range.strip()[:100], ActualObjectSize=str(size))
            rng = (objects.digits(m.group(1)), objects.digits(m.group(2)) + 1)
        _, _, chunks = await objects.read_source(request, self.node, sb, sk, rng, version_id=source_version)
        cks = checksums.RequestChecksum(upload.checksum_algorithm)  # S3 computes the upload's checksum
        try:
            part = await self.uploads.put_part(upload, number, cks.wrap(chunks), checksum=cks)
        finally:
            await chunks.aclose()
        return _xml(xmlio.element("CopyPartResult", [
            xmlio.leaf("LastModified", xmlio.iso8601(part.last_modified)), xmlio.leaf("ETag", part.etag),
            *_part_checksum(part)]))

    async def complete_upload(self, request: web.Request, auth: AuthResult, bucket: str, key: str) -> web.Response:
        cond = objects.write_condition(request)  # checked when the object is written: a failed one
        upload_id = request.query["uploadId"]  # leaves the upload
        # x-amz-checksum-* headers of a Complete are the whole object's checksum, not its body's
        body = await self.small_body(request, auth, checksums.RequestChecksum())
        try:
            upload = await self.uploads.get(bucket, key, upload_id)
        except S3Error as e:  # completed already? A retry with the same parts gets the same answer
            if e.code != "NoSuchUpload":
                raise
            try:
                done_before = await self.uploads.completed(bucket, key, upload_id, _complete_parts(body))
            except S3Error:
                raise e from None
            if done_before is None:
                raise
            return _completed_xml(bucket, key, done_before)
        root = xmlio.parse(body, "CompleteMultipartUpload")
        parts = _complete_parts(body)
        given: list[dict[str, str]] = []
        for p in xmlio.children(root, "Part"):
            given.append({a: v.strip() for a in checksums.ALGORITHMS
                          if (v := xmlio.child_text(p, "Checksum" + a)) is not None})
        done = await self.uploads.complete_parts(upload, parts)
        entry, check = object_checksum(upload, done.parts, given, request.headers)
        stream = check.wrap(done.stream) if check is not None else done.stream
        part_list = [[p.size, p.checksum if upload.checksum_algorithm is not None else None]
                     for p in done.parts]

        def more_attrs() -> dict[str, Any]:
            nonlocal entry
            if entry is None and check is not None:
                entry = check.stored()
            return {"cksum": entry} if entry is not None else {}

        st, _ = await objects.write_object(self.node, bucket, key, stream, None, upload.content_type or None,
                                           upload.metadata, etag=done.etag, limit=1 << 62,
                                           writeback=upload.writeback, size_hint=done.size, cond=cond,
                                           extra={**upload.attrs, "hdrs": upload.headers, "parts": part_list},
                                           more_attrs=more_attrs)
        await self.uploads.finish(upload, parts, done.etag)
        resp = _completed_xml(bucket, key, done.etag, objects.checksum_elements(entry))
        resp.headers.update(objects.version_header(st))
        return resp

    async def list_parts(self, request: web.Request, bucket: str, key: str) -> web.Response:
        upload = await self.uploads.get(bucket, key, request.query["uploadId"])
        marker_raw = request.query.get("part-number-marker", "0")
        marker = objects.digits(marker_raw) if marker_raw.isdigit() else 0
        max_parts = self._max_keys(request, "max-parts")
        parts, truncated = await self.uploads.list_parts(upload, marker, max_parts)
        items = [xmlio.element("Part", [xmlio.leaf("PartNumber", p.number),
                                        xmlio.leaf("LastModified", xmlio.iso8601(p.last_modified)),
                                        xmlio.leaf("ETag", p.etag), xmlio.leaf("Size", p.size),
                                        *_part_checksum(p)]) for p in parts]
        head = [xmlio.leaf("Bucket", bucket), xmlio.leaf("Key", key), xmlio.leaf("UploadId", upload.upload_id),
                xmlio.leaf("PartNumberMarker", marker), xmlio.leaf("MaxParts", max_parts),
                xmlio.leaf("IsTruncated", truncated), xmlio.leaf("StorageClass", "STANDARD")]
        if truncated and parts:
            head.append(xmlio.leaf("NextPartNumberMarker", parts[-1].number))
        head += _upload_checksum(upload)
        return _xml(xmlio.element("ListPartsResult", head + items))

    async def list_uploads(self, request: web.Request, bucket: str) -> web.Response:
        q = request.query
        max_uploads = self._max_keys(request, "max-uploads")
        ups, truncated = await self.uploads.list_uploads(bucket, q.get("prefix", ""), q.get("key-marker", ""),
                                                         q.get("upload-id-marker", ""), max_uploads)
        items = [_upload_xml(u) for u in ups]
        head = [xmlio.leaf("Bucket", bucket), xmlio.leaf("KeyMarker", q.get("key-marker", "")),
                xmlio.leaf("UploadIdMarker", q.get("upload-id-marker", "")),
                xmlio.leaf("Prefix", q.get("prefix", "")), xmlio.leaf("MaxUploads", max_uploads),
                xmlio.leaf("IsTruncated", truncated)]
        if truncated and ups:
            head += [xmlio.leaf("NextKeyMarker", ups[-1].key), xmlio.leaf("NextUploadIdMarker", ups[-1].upload_id)]
        return _xml(xmlio.element("ListMultipartUploadsResult", head + items))


def _complete_parts(body: bytes) -> list[tuple[int, str]]:
    """The (part number, ETag) list of a CompleteMultipartUpload body."""
    root = xmlio.parse(body, "CompleteMultipartUpload")
    parts = []
    for p in xmlio.children(root, "Part"):
        num, etag = xmlio.child_text(p, "PartNumber"), xmlio.child_text(p, "ETag")
        if num is None or etag is None or not num.strip().isdigit():
            raise S3Error("MalformedXML", "every Part needs a PartNumber and an ETag", 400)
        parts.append((objects.digits(num.strip()), etag.strip()))
    return parts


def _completed_xml(bucket: str, key: str, etag: str, more: list[Any] | None = None) -> web.Response:
    return _xml(xmlio.element("CompleteMultipartUploadResult", [
        xmlio.leaf("Location", f"/{bucket}/{key}"), xmlio.leaf("Bucket", bucket), xmlio.leaf("Key", key),
        xmlio.leaf("ETag", etag), *(more or [])]))


def _key_encoder(request: web.Request) -> tuple[str | None, Callable[[str], str]]:
    """``encoding-type=url``: keys and prefixes in a listing are percent-encoded."""
    enc = request.query.get("encoding-type")
    if enc not in (None, "url"):
        raise invalid_argument("Invalid Encoding Method specified in Request", ArgumentName="encoding-type")
    if enc == "url":
        return enc, lambda s: quote(s, safe="/")
    return enc, lambda s: s


def _upload_xml(u: Upload) -> Any:
    return xmlio.element("Upload", [xmlio.leaf("Key", u.key), xmlio.leaf("UploadId", u.upload_id),
                                    xmlio.leaf("Initiated", xmlio.iso8601(u.initiated)),
                                    xmlio.leaf("StorageClass", "STANDARD"), *_upload_checksum(u)])


def _listed_checksum(a: objects.ObjectAttrs) -> list[Any]:
    """``<ChecksumAlgorithm>`` and ``<ChecksumType>`` of a listed object that has a checksum."""
    if a.checksum is None:
        return []
    return [xmlio.leaf("ChecksumAlgorithm", a.checksum["alg"]), xmlio.leaf("ChecksumType", a.checksum["type"])]


def _upload_checksum(u: Upload) -> list[Any]:
    """``<ChecksumAlgorithm>`` and ``<ChecksumType>`` of an upload created with an algorithm."""
    if u.checksum_algorithm is None or u.checksum_type is None:
        return []
    return [xmlio.leaf("ChecksumAlgorithm", u.checksum_algorithm), xmlio.leaf("ChecksumType", u.checksum_type)]


def _part_checksum(p: Part) -> list[Any]:
    """``<ChecksumCRC32>`` (etc.) of a part that has a checksum."""
    if p.checksum_algorithm is None or p.checksum is None:
        return []
    return [xmlio.leaf("Checksum" + p.checksum_algorithm, p.checksum)]


def _xml(root: Any) -> web.Response:
    return web.Response(body=xmlio.document(root), content_type="application/xml")


def bad_request(status: int, reason: str) -> web.Response:
    """S3's answer to a request head aiohttp's parser refused (meshd.servers.guard):
    a bad Content-Length (``-1``, not a number) is InvalidArgument, anything else
    InvalidRequest; in S3's XML, never aiohttp's text."""
    request_id = secrets.token_hex(8)
    if "content-length" in reason.lower():
        e = invalid_argument("The Content-Length header must be a non-negative decimal integer",
                             ArgumentName="Content-Length")
    else:
        e = S3Error("InvalidRequest", f"The request could not be parsed: {reason[:200]}", status)
    return web.Response(status=e.status, body=e.to_xml("", request_id), content_type="application/xml",
                        headers={"x-amz-request-id": request_id, "Server": "datamesh"})


def make_app(node: MeshNode, cfg: S3Config, uploads: MultipartStore) -> web.Application:
    gw = Gateway(node, cfg, uploads)
    # auto_decompress off: a PUT with Content-Encoding: gzip stores the bytes as sent (S3 keeps
    # the header as the object's), and its x-amz-content-sha256 is of those bytes
    app = web.Application(client_max_size=0, handler_args={"auto_decompress": False})

    async def handler(request: web.Request) -> web.StreamResponse:
        return await gw.handle(request)

    async def expect(request: web.Request) -> web.StreamResponse | None:
        """Answer 100-continue once the request's signature holds (as S3: a client whose
        request is refused gets the error at once and never sends the body); ignore other
        Expect values (aiohttp would send a bare 417)."""
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            bucket = key = ""
            form = request.method == "POST" and request.content_type == "multipart/form-data"
            try:
                bucket, key = gw.address(request)
                if not form:  # a browser POST upload is signed inside its form, read later
                    gw.authenticate(request, bucket)
            except S3Error as e:
                request["request_id"] = secrets.token_hex(8)
                resp = gw.error(request, e, bucket, key, request["request_id"])
                resp.force_close()  # the body the client may still send is not read
                return resp
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-amz-request-id", request.get("request_id", ""))
        response.headers.setdefault("Server", "datamesh")
        if "Origin" in request.headers and request.method != "OPTIONS" and request.get("bucket"):
            response.headers.update(await cors.actual_headers(gw.node, request, request["bucket"]))

    def refuse(request: web.Request, e: me.SlowDown) -> web.StreamResponse:
        """Over the client's requests in flight (meshd.servers.guard): S3's SlowDown."""
        request["request_id"] = secrets.token_hex(8)
        return gw.error(request, from_mesh(e), "", "", request["request_id"])

    handler_fn: Callable[[web.Request], Awaitable[web.StreamResponse]] = handler
    # [\s\S]: keys may contain line breaks, which '.' would not match
    app.router.add_route("*", "/{tail:[\\s\\S]*}", handler_fn, expect_handler=expect)
    app.on_response_prepare.append(stamp)
    app[REFUSE] = refuse
    app[BAD_REQUEST] = bad_request
    return app


__all__ = ["Gateway", "make_app"]
