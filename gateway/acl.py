"""ACLs, bucket policies and their relatives, answered from the mesh's access rules.

The mesh decides access one way: the principals and tenant rules of
``meshd.auth`` (the node's access file; THREAT_MODEL.md). S3's own access
documents are answered as views of those rules and cannot change them:

- **GetBucketAcl / GetObjectAcl**: an AccessControlPolicy whose owner is the
  caller (its tenant; ``mesh`` for operators) and whose grants are what the
  caller's level at the path allows: ``admin`` (and operators) FULL_CONTROL;
  ``write`` READ, WRITE and READ_ACP; ``read`` READ and READ_ACP. When
  unsigned requests are let in (``s3.allow_anonymous``), the AllUsers group
  gets READ / WRITE as the anonymous principal's level allows. A caller that
  sees nothing at the path gets AccessDenied.
- **PutBucketAcl / PutObjectAcl**: like an S3 bucket whose ObjectOwnership is
  ``BucketOwnerEnforced`` (ACLs disabled, S3's default for new buckets): the
  canned ACL ``private`` (and ``bucket-owner-full-control``), or a body granting
  only the owner FULL_CONTROL, are accepted and change nothing; anything else is
  ``400 AccessControlListNotSupported`` naming the access file. The same holds
  for the ``x-amz-acl`` / ``x-amz-grant-*`` headers of a write (and a POST
  form's ``acl`` field): ``public-read`` is refused, never silently ignored.
- **GetBucketOwnershipControls**: ``BucketOwnerEnforced``.
- **GetBucketPolicy**: ``NoSuchBucketPolicy`` (there is no policy document:
  rules of other tenants are not shown to a tenant). **PutBucketPolicy**:
  ``AccessDenied`` naming the access file. **DeleteBucketPolicy**: 204 (there
  is none).
- **GetBucketPolicyStatus**: ``IsPublic`` true exactly when an unsigned request
  may read the bucket. **GetPublicAccessBlock**: all four settings true unless
  unsigned requests may read the bucket (then all false).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from meshd import auth as mauth
from meshd.config import S3Config
from meshd.core import MeshNode

from . import xmlio
from .errors import S3Error, access_denied

OWNER_ID = "mesh"
SUBRESOURCES = frozenset({"acl", "policy", "policyStatus", "publicAccessBlock", "ownershipControls"})
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
CANNED_OK = frozenset({"private", "bucket-owner-full-control"})
_SEE_ACCESS = ("access is decided by the tenants' rules of the node's access file (`meshd --access FILE`; "
               "see THREAT_MODEL.md)")


def owner_of(p: mauth.Principal) -> str:
    return p.tenant if p.kind == "tenant" else OWNER_ID


def permissions(level: int, owner: bool) -> list[str]:
    if owner or level >= mauth.ADMIN:
        return ["FULL_CONTROL"]
    out = []
    if level >= mauth.READ:
        out.append("READ")
    if level >= mauth.WRITE:
        out.append("WRITE")
    if level >= mauth.READ:
        out.append("READ_ACP")
    return out


def anonymous_level(node: MeshNode, cfg: S3Config, path: str) -> int:
    """What an unsigned request may do at ``path`` (gateway.app.Gateway.principal)."""
    if not cfg.allow_anonymous:
        return mauth.NONE
    access = node.access
    p = mauth.Principal("tenant", "anonymous", "anonymous") if access.tenants.get("anonymous") \
        else mauth.Principal("operator", "anonymous (s3.allow_anonymous)")
    return access.level(p, path)


def _grant(grantee: Any, permission: str) -> Any:
    return xmlio.element("Grant", [grantee, xmlio.leaf("Permission", permission)])


def _user(name: str) -> Any:
    return xmlio.element("Grantee", [xmlio.leaf("ID", name), xmlio.leaf("DisplayName", name)],
                         **{"xmlns:xsi": _XSI, "xsi:type": "CanonicalUser"})


def _group(uri: str) -> Any:
    return xmlio.element("Grantee", [xmlio.leaf("URI", uri)], **{"xmlns:xsi": _XSI, "xsi:type": "Group"})


def policy_document(node: MeshNode, cfg: S3Config, path: str) -> bytes:
    p = mauth.current()
    access = node.access
    level = access.level(p, path)
    if level < mauth.READ and not access.sees(path):
        access.check(mauth.READ, path)
    owner = owner_of(p)
    grants = [_grant(_user(owner), perm) for perm in permissions(level, p.trusted)]
    anon = anonymous_level(node, cfg, path)
    grants += [_grant(_group(ALL_USERS), perm) for perm in ("READ", "WRITE")
               if anon >= (mauth.READ if perm == "READ" else mauth.WRITE)]
    return xmlio.document(xmlio.element("AccessControlPolicy", [
        xmlio.element("Owner", [xmlio.leaf("ID", owner), xmlio.leaf("DisplayName", owner)]),
        xmlio.element("AccessControlList", grants)]))


def _not_supported() -> S3Error:
    return S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs: " + _SEE_ACCESS, 400)


def check_write_acl(headers: Mapping[str, str]) -> None:
    """A write's ``x-amz-acl`` / ``x-amz-grant-*`` (PutObject, CopyObject, CreateMultipartUpload,
    a POST form's ``acl``): as on an S3 bucket with ACLs disabled, only ``private`` and
    ``bucket-owner-full-control`` (which change nothing) pass."""
    canned = headers.get("x-amz-acl")
    if (canned is not None and canned not in CANNED_OK) or any(h.lower().startswith("x-amz-grant-")
                                                                for h in headers):
        raise _not_supported()


def check_bucket_acl(headers: Mapping[str, str]) -> None:
    """CreateBucket's ``x-amz-acl`` / ``x-amz-grant-*``: a new S3 bucket has ACLs disabled
    (BucketOwnerEnforced), so anything but ``private`` is refused, with AWS's code for it."""
    canned = headers.get("x-amz-acl")
    if (canned is not None and canned not in CANNED_OK) or any(h.lower().startswith("x-amz-grant-")
                                                                for h in headers):
        raise S3Error("InvalidBucketAclWithObjectOwnership", "Bucket cannot have ACLs set with ObjectOwnership's "
                      "BucketOwnerEnforced setting: " + _SEE_ACCESS, 400)


def check_put_acl(request: web.Request, body: bytes) -> None:
    """PutBucketAcl / PutObjectAcl: only what changes nothing (``private``) is accepted."""
    canned = request.headers.get("x-amz-acl")
    grants = [h for h in request.headers if h.lower().startswith("x-amz-grant-")]
    if grants:
        raise _not_supported()
    if canned is not None:
        if canned not in CANNED_OK or body.strip():
            raise _not_supported()
        return
    if not body.strip():
        raise S3Error("MissingSecurityHeader", "Your request was missing a required header", 400,
                      MissingHeaderName="x-amz-acl")
    root = xmlio.parse(body, "AccessControlPolicy")
    owner_el = xmlio.children(root, "Owner")
    owner = xmlio.child_text(owner_el[0], "ID") if owner_el else None
    lists = xmlio.children(root, "AccessControlList")
    grants_el = xmlio.children(lists[0], "Grant") if lists else []
    for g in grants_el:
        grantee = xmlio.children(g, "Grantee")
        gid = xmlio.child_text(grantee[0], "ID") if grantee else None
        if (xmlio.child_text(g, "Permission") or "").strip() != "FULL_CONTROL" or gid is None \
                or gid.strip() != (owner or "").strip():
            raise _not_supported()
    if owner is None or owner.strip() != owner_of(mauth.current()):
        raise _not_supported()


def _xml(root: Any) -> web.Response:
    return web.Response(body=xmlio.document(root), content_type="application/xml")


async def handle(request: web.Request, node: MeshNode, cfg: S3Config, bucket: str, key: str,
                 body: Callable[[], Awaitable[bytes]]) -> web.StreamResponse:
    from . import objects

    q, m = request.query, request.method
    path = "/" + bucket
    if key:
        if "acl" not in q:
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
        if q.get("versionId", "null") != "null":
            raise S3Error("NoSuchVersion", "The specified version does not exist.", 404)
        path = (await objects.stat_object(node, bucket, key)).path
    else:
        await objects.require_bucket(node, bucket)
    if "acl" in q:
        if m == "GET":
            return web.Response(body=policy_document(node, cfg, path), content_type="application/xml")
        if m == "PUT":
            check_put_acl(request, await body())
            node.access.check(mauth.WRITE, path)  # as S3: changing an ACL needs more than reading it
            return web.Response(status=200)
    elif "policy" in q:
        if m == "GET":
            raise S3Error("NoSuchBucketPolicy", "The bucket policy does not exist: " + _SEE_ACCESS, 404,
                          BucketName=bucket)
        if m == "PUT":
            raise access_denied("Bucket policies are not kept by this gateway: " + _SEE_ACCESS)
        if m == "DELETE":
            return web.Response(status=204)
    elif "policyStatus" in q and m == "GET":
        public = anonymous_level(node, cfg, path) >= mauth.READ
        return _xml(xmlio.element("PolicyStatus", [xmlio.leaf("IsPublic", public)]))
    elif "publicAccessBlock" in q:
        if m == "GET":
            blocked = anonymous_level(node, cfg, path) < mauth.READ
            return _xml(xmlio.element("PublicAccessBlockConfiguration", [
                xmlio.leaf(n, blocked) for n in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                                 "RestrictPublicBuckets")]))
        if m in ("PUT", "DELETE"):
            raise access_denied("Public access is not configured per bucket: " + _SEE_ACCESS
                                + " and s3.allow_anonymous")
    elif "ownershipControls" in q:
        if m == "GET":
            return _xml(xmlio.element("OwnershipControls", [xmlio.element("Rule", [
                xmlio.leaf("ObjectOwnership", "BucketOwnerEnforced")])]))
        if m in ("PUT", "DELETE"):
            raise access_denied("Object ownership is fixed (BucketOwnerEnforced): " + _SEE_ACCESS)
    raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
