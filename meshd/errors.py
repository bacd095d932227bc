"""The error tree of the mesh, and its one mapping to every protocol.

::

    MeshError                      errno       gRPC                 HTTP
    ├── NotFound                   ENOENT      NOT_FOUND            404
    ├── AlreadyExists              EEXIST      ALREADY_EXISTS       409
    ├── NotADirectory              ENOTDIR     FAILED_PRECONDITION  409
    ├── IsADirectory               EISDIR      FAILED_PRECONDITION  409
    ├── DirectoryNotEmpty          ENOTEMPTY   FAILED_PRECONDITION  409
    ├── InvalidPath                EINVAL      INVALID_ARGUMENT     400
    ├── InvalidArgument            EINVAL      INVALID_ARGUMENT     400
    ├── MountError                 EINVAL      INVALID_ARGUMENT     400
    ├── NotSupported               ENOTSUP     UNIMPLEMENTED        501
    ├── PermissionDenied           EACCES      PERMISSION_DENIED    403
    ├── VersionChanged             ESTALE      ABORTED              412
    ├── UnderStoreError            EIO         UNAVAILABLE          502
    ├── NodeUnavailable            EIO         UNAVAILABLE          503
    ├── NoSpace                    ENOSPC      RESOURCE_EXHAUSTED   507
    └── SlowDown                   EAGAIN      RESOURCE_EXHAUSTED   503

WebHDFS reports them as Hadoop's Java exceptions (:func:`hadoop_exception`):
NotFound and IsADirectory as FileNotFoundException (404), AlreadyExists as
FileAlreadyExistsException, NotADirectory as ParentNotDirectoryException,
DirectoryNotEmpty as PathIsNotEmptyDirectoryException, PermissionDenied as
AccessControlException, the rest of the IO failures as IOException (all 403,
as Hadoop's ExceptionHandler answers IOExceptions); bad input as
IllegalArgumentException and NotSupported as UnsupportedOperationException
(400).

Front ends never invent their own mapping: they call :func:`errno_of`,
:func:`grpc_code_name`, :func:`http_status` or :func:`hadoop_exception`, or
rebuild the exception on the client side with :func:`from_kind`. Under-store libraries' exceptions are
translated into this tree at the under-store boundary, nowhere else.
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class MeshError(Exception):
    """Base of every error the mesh reports on purpose."""

    errno: int = _errno.EIO
    grpc_code: str = "INTERNAL"
    http_status: int = 500

    @property
    def kind(self) -> str:
        return type(self).__name__


class NotFound(MeshError):
    errno, grpc_code, http_status = _errno.ENOENT, "NOT_FOUND", 404


class AlreadyExists(MeshError):
    errno, grpc_code, http_status = _errno.EEXIST, "ALREADY_EXISTS", 409


class NotADirectory(MeshError):
    errno, grpc_code, http_status = _errno.ENOTDIR, "FAILED_PRECONDITION", 409


class IsADirectory(MeshError):
    errno, grpc_code, http_status = _errno.EISDIR, "FAILED_PRECONDITION", 409


class DirectoryNotEmpty(MeshError):
    errno, grpc_code, http_status = _errno.ENOTEMPTY, "FAILED_PRECONDITION", 409


class InvalidPath(MeshError):
    errno, grpc_code, http_status = _errno.EINVAL, "INVALID_ARGUMENT", 400


class InvalidArgument(MeshError):
    errno, grpc_code, http_status = _errno.EINVAL, "INVALID_ARGUMENT", 400


class MountError(MeshError):
    errno, grpc_code, http_status = _errno.EINVAL, "INVALID_ARGUMENT", 400


class NotSupported(MeshError):
    errno, grpc_code, http_status = _errno.ENOTSUP, "UNIMPLEMENTED", 501


class PermissionDenied(MeshError):
    errno, grpc_code, http_status = _errno.EACCES, "PERMISSION_DENIED", 403


class NotPermitted(MeshError):
    """The operation is not permitted on this kind of file or store (EPERM): a hard link
    on a store without them, a change of owner the store's process may not make."""

    errno, grpc_code, http_status = _errno.EPERM, "PERMISSION_DENIED", 403


class NameTooLong(InvalidPath):
    errno = _errno.ENAMETOOLONG


class VersionChanged(MeshError):
    """The object changed in the under-store while it was being read."""

    errno, grpc_code, http_status = _errno.ESTALE, "ABORTED", 412


class UnderStoreError(MeshError):
    """The under-store failed or could not be reached."""

    errno, grpc_code, http_status = _errno.EIO, "UNAVAILABLE", 502


class NodeUnavailable(MeshError):
    """A mesh node (a peer, or the node a client talks to) cannot be reached."""

    errno, grpc_code, http_status = _errno.EIO, "UNAVAILABLE", 503


class NoSpace(MeshError):
    errno, grpc_code, http_status = _errno.ENOSPC, "RESOURCE_EXHAUSTED", 507


class SlowDown(MeshError):
    """A client has too many requests in flight (meshd.limits): try again shortly."""

    errno, grpc_code, http_status = _errno.EAGAIN, "RESOURCE_EXHAUSTED", 503


_KINDS: dict[str, type[MeshError]] = {
    cls.__name__: cls
    for cls in (
        MeshError, NotFound, AlreadyExists, NotADirectory, IsADirectory, DirectoryNotEmpty,
        InvalidPath, InvalidArgument, MountError, NotSupported, PermissionDenied, NotPermitted, NameTooLong,
        VersionChanged, UnderStoreError, NodeUnavailable, NoSpace, SlowDown,
    )
}


_IO = ("IOException", "java.io.IOException", 403)
_HADOOP: dict[type[MeshError], tuple[str, str, int]] = {
    NotFound: ("FileNotFoundException", "java.io.FileNotFoundException", 404),
    IsADirectory: ("FileNotFoundException", "java.io.FileNotFoundException", 404),
    AlreadyExists: ("FileAlreadyExistsException", "org.apache.hadoop.fs.FileAlreadyExistsException", 403),
    NotADirectory: ("ParentNotDirectoryException", "org.apache.hadoop.fs.ParentNotDirectoryException", 403),
    DirectoryNotEmpty: ("PathIsNotEmptyDirectoryException",
                        "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException", 403),
    PermissionDenied: ("AccessControlException", "org.apache.hadoop.security.AccessControlException", 403),
    NotPermitted: ("AccessControlException", "org.apache.hadoop.security.AccessControlException", 403),
    InvalidPath: ("IllegalArgumentException", "java.lang.IllegalArgumentException", 400),
    InvalidArgument: ("IllegalArgumentException", "java.lang.IllegalArgumentException", 400),
    MountError: ("IllegalArgumentException", "java.lang.IllegalArgumentException", 400),
    NotSupported: ("UnsupportedOperationException", "java.lang.UnsupportedOperationException", 400),
    NoSpace: ("DSQuotaExceededException", "org.apache.hadoop.hdfs.protocol.DSQuotaExceededException", 403),
    NodeUnavailable: ("RetriableException", "org.apache.hadoop.ipc.RetriableException", 403),
    SlowDown: ("RetriableException", "org.apache.hadoop.ipc.RetriableException", 503),
}


def hadoop_exception(exc: MeshError) -> tuple[str, str, int]:
    """(exception name, Java class, HTTP status) WebHDFS reports ``exc`` as."""
    for cls in type(exc).__mro__:
        if cls in _HADOOP:
            return _HADOOP[cls]
    return _IO


def from_kind(kind: str, message: str) -> MeshError:
    """Rebuild an error sent over the wire as ``(kind, message)``."""
    return _KINDS.get(kind, MeshError)(message)


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, MeshError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO


def from_oserror(exc: OSError, what: str) -> MeshError:
    """Translate an OSError raised by the local filesystem."""
    by_errno: dict[int, type[MeshError]] = {
        _errno.ENOENT: NotFound,
        _errno.EEXIST: AlreadyExists,
        _errno.ENOTDIR: NotADirectory,
        _errno.EISDIR: IsADirectory,
        _errno.ENOTEMPTY: DirectoryNotEmpty,
        _errno.EACCES: PermissionDenied,
        _errno.EPERM: NotPermitted,
        _errno.ENAMETOOLONG: NameTooLong,
        _errno.ENOSPC: NoSpace,
        _errno.EXDEV: NotSupported,
        _errno.EFBIG: InvalidArgument,  # a size past the file system's largest file
    }
    cls = by_errno.get(exc.errno or 0, UnderStoreError)
    return cls(f"{what}: {exc.strerror or type(exc).__name__}")  # str(exc) names the host file


def to_oserror(exc: MeshError) -> OSError:
    """The built-in exception Python libraries expect (FileNotFoundError, ...)."""
    return OSError(exc.errno, str(exc))


# ---- internal errors in request handlers: logged, but never a flood ---------------------

INTERNAL_TRACEBACK_EVERY = 60.0  # seconds between full tracebacks of one kind of internal error
INTERNAL_LINES_PER_SECOND = 5  # one-line reports of one kind per second; the rest are counted


class _InternalErrors:
    """Rate limits for :func:`log_internal`, per kind (exception type and the code line
    it came from): a hostile client repeating one bad request cannot fill the disk."""

    def __init__(self) -> None:
        self.traceback_at: dict[tuple[str, str, int], float] = {}
        self.window: dict[tuple[str, str, int], tuple[float, int]] = {}  # (second, lines in it)
        self.suppressed: dict[tuple[str, str, int], int] = {}


_INTERNAL = _InternalErrors()


def log_internal(logger: Any, what: str, exc: BaseException) -> None:
    """Report an internal error of a request handler: a full traceback at most once a
    minute per kind, one line otherwise (at most a few a second per kind, with a count of
    the lines left out)."""
    import time
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("?", 0)
    key = (type(exc).__name__, *where)
    now = time.monotonic()
    second, lines = _INTERNAL.window.get(key, (-1.0, 0))
    if int(now) != second:
        second, lines = int(now), 0
    if lines >= INTERNAL_LINES_PER_SECOND:
        _INTERNAL.suppressed[key] = _INTERNAL.suppressed.get(key, 0) + 1
        _INTERNAL.window[key] = (second, lines)
        return
    _INTERNAL.window[key] = (second, lines + 1)
    left_out = _INTERNAL.suppressed.pop(key, 0)
    more = f" ({left_out} more like it not logged)" if left_out else ""
    if now - _INTERNAL.traceback_at.get(key, -INTERNAL_TRACEBACK_EVERY) >= INTERNAL_TRACEBACK_EVERY:
        _INTERNAL.traceback_at[key] = now
        logger.error("internal error in %s: %s: %s%s", what, type(exc).__name__, exc, more, exc_info=exc)
    else:
        logger.error("internal error in %s: %s: %s at %s:%d%s (traceback logged at most once a minute)",
                     what, type(exc).__name__, exc, where[0], where[1], more)
