"""S3 errors: the one table from mesh errors to S3 codes, and the XML body.

Every handler raises :class:`S3Error` (or lets a :class:`meshd.errors.MeshError`
through, which :func:`from_mesh` maps); the app turns it into S3's XML error
document. Nothing else in the gateway decides a status code.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape as _escape

from meshd import errors as me

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """Text XML 1.0 can carry: characters it forbids become ``\\xNN`` / ``\\uNNNN``."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", text)


def escape(text: str) -> str:
    return _escape(xml_safe(text))


class S3Error(Exception):
    def __init__(self, code: str, message: str, status: int, **extra: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra  # extra XML elements, e.g. BucketName, Key
        self.headers: dict[str, str] = {}  # extra response headers (x-amz-delete-marker, ...)

    def to_xml(self, resource: str, request_id: str) -> bytes:
        extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self.extra.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>{extra}"
            f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()


def access_denied(msg: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", msg, 403)


def invalid_argument(msg: str, **extra: str) -> S3Error:
    return S3Error("InvalidArgument", msg, 400, **extra)


def not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by this gateway", 501)


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket)


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=key)


def from_mesh(e: me.MeshError, key: str = "") -> S3Error:
    """The mapping from the mesh's errors to S3's, in one place."""
    if isinstance(e, me.NotFound):
        return no_such_key(key)
    if isinstance(e, me.IsADirectory):
        return no_such_key(key)  # S3 has no directories: a prefix is not an object
    if isinstance(e, me.NotADirectory | me.AlreadyExists):
        return S3Error("InvalidRequest", f"{key!r} conflicts with an existing object or prefix: keys are "
                       "files in the mesh, so a key cannot be both an object and a prefix", 409)
    if isinstance(e, me.PermissionDenied | me.NotPermitted):
        return access_denied("Access Denied: the mount is read-only or the under-store refused access")
    if isinstance(e, me.InvalidPath):
        return S3Error("KeyTooLongError" if "longer" in str(e) else "InvalidArgument", str(e),
                       400)
    if isinstance(e, me.InvalidArgument | me.MountError):
        return invalid_argument(str(e))
    if isinstance(e, me.NotSupported):
        return not_implemented(str(e))
    if isinstance(e, me.VersionChanged):
        return S3Error("PreconditionFailed", "The object changed while it was being read", 412)
    # Messages below never carry the mesh error's text: it names under-store URIs
    # and host paths, which are the operator's business (they are in the node's log).
    if isinstance(e, me.NoSpace):
        return S3Error("ServiceUnavailable", "The node is out of space. Please try again later.", 503)
    if isinstance(e, me.DirectoryNotEmpty):
        return S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
    if isinstance(e, me.SlowDown):
        return S3Error("SlowDown", "Please reduce your request rate.", 503)
    if isinstance(e, me.UnderStoreError):
        return S3Error("ServiceUnavailable", "The under-store is unavailable. Please try again.", 503)
    return S3Error("InternalError", "We encountered an internal error. Please try again.", 500)
