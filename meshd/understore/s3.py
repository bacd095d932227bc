"""An S3 bucket (AWS or any S3-compatible store) as an under-store: ``s3://bucket/prefix``.

Design
------
* **One botocore client per mount.** botocore clients are thread-safe, so one
  client with a connection pool of ``max_connections`` serves every request;
  retries use botocore's *standard* mode, ``max_attempts`` (default 4) attempts
  (exponential backoff on throttling, 5xx and connection errors), with
  ``connect_timeout`` (default 10 s) and ``read_timeout`` (default 60 s, per socket
  read): a mount across a link that can fail wants these small. The client is created on first use, inside a
  worker thread: loading botocore's service models takes a noticeable moment
  and must not stall the event loop (``open_understore`` is synchronous).
  Options are still validated eagerly, in the constructor.
* **Blocking calls run in threads** (``asyncio.to_thread``), including every
  ``read`` of a streamed response body, so the event loop never waits on the
  network.
* **Namespace.** Paths map to keys under the mount's prefix. S3 has no
  directories: a directory is a key prefix (``dir/``) that has objects under
  it, or an empty marker object ``dir/`` written by :meth:`S3UnderStore.mkdir`.
  S3 allows a key ``a`` *and* keys under ``a/`` at once; ``head`` and ``list``
  then report the file (what ``head`` of ``a`` returns), never both. Keys
  whose names cannot be mesh path components (empty, ``.``, ``..``) are not
  listed.
* **Versions are ETags** (quotes stripped). Reads pass ``If-Match`` with the
  version they were asked for, so S3 itself refuses (412) to serve bytes of a
  newer object, which becomes :class:`~meshd.errors.VersionChanged`.
* **Ranged reads stream**: one ``GetObject`` with ``Range`` per ``get_range``
  call, its body read in 1 MiB chunks; the object is never held in memory.
  An empty range sends a ``HeadObject`` (so a missing object or an old version
  still fail as for any other range) instead of an invalid ``Range`` header; a
  range past the end of the object (416) yields nothing.
* **Writes stream too**: ``put`` buffers at most 8 MiB. A stream that fits is
  one ``PutObject``; a longer one becomes a multipart upload of 8 MiB parts,
  aborted on any failure (including cancellation). Either way the object is
  replaced atomically: readers see the old or the new bytes, never a mix.
* **Attributes are object user metadata**, in the names s3fs-fuse and rclone use,
  so a file written by one shows right in the others: ``x-amz-meta-mode`` (the
  whole ``st_mode``, type bits too, in decimal as s3fs writes it, e.g. ``33188``;
  rclone's octal form with a leading ``0``, ``0100644``, is read too; a mode with
  permission bits only gets the type of the object), ``-uid``, ``-gid``, ``-rdev``
  (decimal), ``-mtime``, ``-atime``, ``-ctime`` (seconds since the epoch, written
  ``sec.nanoseconds``; integers, decimals and RFC 3339 are read). Extra attributes
  are ``x-amz-meta-mesh-<name>``: lower-case ASCII names only (S3 metadata names
  are case-insensitive; others: InvalidArgument), values percent-encoded as UTF-8
  (RFC 3986: bytes outside printable ASCII and ``%`` itself), since S3 metadata is
  ASCII. ``head`` returns them for every object and directory marker (``None``
  fields where absent; a prefix without a marker: mode None); ``mtime`` is
  ``x-amz-meta-mtime`` when present, else LastModified. ``list`` (ListObjectsV2
  carries no metadata) gives ``attrs=None``: not fetched. A new object gets the
  change's mode, owner and mtime and ctime now; one replacing an object keeps its
  mode, owner, atime and extra attributes, which costs a HEAD first unless the
  change carries mode, uid and gid (meshfs always sends them; then the old extra
  attributes are not carried over). ``setattr`` is a CopyObject onto itself with
  the merged metadata (MetadataDirective REPLACE, pinned to the ETag, content
  headers and other tools' metadata kept; UploadPartCopy above 5 GiB); the ETag
  (the version) of a single-part object stays the same, as its bytes do. A
  directory's attributes are its marker ``dir/``'s (created by ``setattr`` if
  missing, mode 755); the root of a whole-bucket mount has no marker: NotSupported.
* **Symlinks and special files as s3fs writes them**: a symlink is an object whose
  body is the target and whose mode is ``S_IFLNK|0777`` (``head`` reads at most
  4 KiB of the body into ``attrs.target``); ``mknod`` is an empty object with the
  FIFO/socket/device mode (and ``rdev``). No hard links (``link``: EPERM).
* **Exclusive creates** (``put(exclusive=True)``, ``symlink``, ``mknod``) are
  conditional writes, ``If-None-Match: *`` on PutObject or
  CompleteMultipartUpload (412: AlreadyExists). AWS honours it; another endpoint
  is not trusted to until it has refused one write with 412: until then a HEAD
  checks first, and an endpoint answering NotImplemented gets the HEAD only (not
  atomic). ``symlink`` and ``mknod`` always HEAD too (which also finds a directory).
  Compare-and-swap writes (``put(if_version=etag)``) send ``If-Match`` the same way
  (412: VersionChanged, 404: NotFound), after a HEAD on any endpoint but AWS's (moto
  ignores If-Match on CompleteMultipartUpload; the HEAD at least checks, not atomically).
* **copy and truncate stay inside S3**: ``copy`` is CopyObject (metadata copied,
  pinned to the version), UploadPartCopy above 5 GiB; ``truncate`` keeps the first
  bytes by UploadPartCopy (zeros uploaded for an extension) when at least 5 MiB are
  kept (S3's smallest part), else rewrites the object through the node.
* **Rename is copy + delete, not atomic** (mount option ``rename``: ``copy``, the
  default, or ``refuse``: NotSupported, as before). S3 has no rename: like s3fs,
  rclone and goofys, a file is copied server-side (with its metadata) and then
  deleted; a directory's every object (markers too) is copied under the new prefix
  and the old objects deleted only once every copy succeeded. Readers can see both
  names meanwhile; a crash in the middle leaves both copies (or the new one whole and
  part of the old), never neither: rename again, or delete the old name.
* **Kept versions** (a bucket with versioning on, ``capabilities.versions``): whether
  the bucket is versioned is asked (GetBucketVersioning) when first needed and again
  after ``VERSIONING_TTL`` seconds. A read of a kept version (``version_pin(id)``) is a
  GetObject/HeadObject with ``VersionId`` (immutable: no If-Match needed); a put
  returns the ``x-amz-version-id`` S3 gave it (``ObjectInfo.version_id``); a delete
  without an id is S3's (a delete marker); ``delete_version`` removes one version
  (DeleteObject with ``VersionId``); ``list_versions`` is ListObjectVersions in the
  order S3 sends (by key, the current version first, then newest first: botocore parses
  versions and delete markers into two lists, merged again by LastModified).
* **Errors** are translated in one place, :func:`translate_error`. Messages
  name the bucket, key and endpoint, never credentials.

Mount options (all strings): ``endpoint`` (URL; AWS when absent), ``region``
(default ``us-east-1``), ``access_key``/``secret_key``/``session_token``
(default: boto's credential chain), ``addressing_style`` (``path``,
``virtual`` or ``auto``; default ``path`` with an ``endpoint``, else
``auto``), ``anonymous`` (``true``: unsigned requests) and
``max_connections`` (default 32), ``rename`` (``copy`` or ``refuse``). Unknown options are refused, so that a
misspelt ``secret_key`` cannot silently fall back to other credentials.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import math
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

import boto3
from botocore import UNSIGNED
from botocore import handlers as botocore_handlers
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from meshd.attrs import AttrChange, Attrs, symlink_mode
from meshd.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    MeshError,
    MountError,
    NameTooLong,
    NotADirectory,
    NotFound,
    NotSupported,
    PermissionDenied,
    UnderStoreError,
    VersionChanged,
)
from meshd.understore.base import (
    Capabilities,
    ObjectInfo,
    ObjectVersion,
    Pace,
    UnderStore,
    VersionPage,
    check_options,
    finished,
    pinned_version_id,
    without_userinfo,
)
from meshd.understore.s3_listing import ListingParserFactory

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # body read size of get_range
PART = 8 << 20  # put: single-request limit and multipart part size
# Calls that change the bucket: a cancelled one is waited for (``finished``), so nothing
# the caller gave up on is still under way once it has moved on (an abort that ran before
# a part landed would leave that part, and its upload, behind on some stores).
_CHANGES = frozenset({"put_object", "complete_multipart_upload", "copy_object", "delete_object", "delete_objects",
                      "upload_part", "upload_part_copy"})

OPTIONS = frozenset({
    "endpoint", "region", "access_key", "secret_key", "session_token",
    "addressing_style", "anonymous", "max_connections", "connect_timeout", "read_timeout",
    "max_attempts", "rename",
})

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload", "NoSuchVersion"})
_DENIED = frozenset({
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
})
_PRECONDITION = frozenset({"PreconditionFailed", "412"})
# How to give a mount credentials, named by every error about missing or refused ones.
CREDENTIALS_HINT = ("give the mount the options access_key=...,secret_key=... "
                    "or the node AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment "
                    "(anonymous=true for a public bucket)")

Parts = list[dict[str, Any]]  # (inside the class, ``list`` is the method)
AttrsBox = list[Attrs]  # the attributes a write gives its object, once known


def error_code(exc: ClientError) -> tuple[str, int]:
    """``(code, http status)`` of a botocore ClientError."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate_error(exc: Exception, what: str) -> MeshError:
    """The one mapping of boto errors to the mesh's error tree.

    ``what`` names the object: its mesh path once mounted (``UnderStore.shown``), else
    ``s3://bucket/key``. Messages never carry credentials, the endpoint's URL, the
    bucket or S3's own message text (which may name them): the code and kind only.
    """
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        if code == "NoSuchBucket":
            return NotFound(f"{what}: the under-store's bucket does not exist")
        if code in _NOT_FOUND or (status == 404 and not code):
            return NotFound(f"no such object: {what}")
        if code in _DENIED or status == 403:
            return PermissionDenied(
                f"{what}: access denied by S3 ({code or status}); "
                f"check the mount's credentials and the bucket policy: {CREDENTIALS_HINT}"
            )
        if code in _PRECONDITION or status == 412:
            return VersionChanged(f"{what} changed in the under-store")
        return UnderStoreError(f"{what}: S3 error {code or status} (HTTP {status})")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermissionDenied(f"{what}: no usable S3 credentials ({type(exc).__name__}): {CREDENTIALS_HINT}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return UnderStoreError(f"{what}: the under-store is unreachable ({type(exc).__name__})")
    # botocore's texts name the endpoint URL and the bucket: the kind only
    return UnderStoreError(f"{what}: under-store request failed ({type(exc).__name__})")


_LIST_OPS = ("ListObjectsV2", "ListObjects")


def _cheaper_200_check(client: Any) -> None:
    """botocore parses every 200 response's whole XML body once more to look for an error
    inside it (S3 may send one, or a body cut short by the network, which it then retries);
    for a 1000-key listing that is a tenth of the node's CPU. A listing that ends with its
    closing tag is neither: only the others get botocore's own check."""
    original = getattr(botocore_handlers, "_handle_200_error", None)
    if original is None:
        return

    def check(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
        if operation_model.name in _LIST_OPS and response_dict and response_dict.get("status_code") == 200:
            body = response_dict.get("body") or b""
            if body.rstrip().endswith(b"</ListBucketResult>"):
                return
        original(operation_model, response_dict, **kwargs)

    events = client.meta.events
    events.unregister("before-parse.s3.*", original)
    events.register_first("before-parse.s3.*", check)


def _set_receive_buffer(client: Any, nbytes: int) -> bool:
    """Open the client's connections from now on with SO_RCVBUF ``nbytes`` (pooled ones are
    dropped). botocore has no public option for socket options: its HTTP session keeps
    the list it hands urllib3 for every new connection, and that list is extended here.
    False (and a log line) if botocore changed that."""
    http = getattr(getattr(client, "_endpoint", None), "http_session", None)
    options = getattr(http, "_socket_options", None)
    manager = getattr(http, "_manager", None)
    if not isinstance(options, list) or manager is None:
        log.warning("cannot set the receive buffer of S3 connections (botocore changed): quota'd reads "
                    "are paced but the store may send past the quota by a TCP window")
        return False
    options[:] = [o for o in options if o[:2] != (socket.SOL_SOCKET, socket.SO_RCVBUF)]
    options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes))
    manager.clear()
    return True


def _fast_timestamp(value: str) -> datetime.datetime:
    """botocore's timestamp parser, with the ISO 8601 form S3 uses in XML bodies tried first."""
    try:
        t = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return botocore_parse_timestamp(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.UTC)


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


def _mtime(value: Any) -> float:
    return float(value.timestamp()) if value is not None else 0.0


# ---------------------------------------------------------------------- attributes as user metadata
# The names s3fs-fuse and rclone use (boto's ``Metadata`` dict: lower-case, without "x-amz-meta-").
META_KEYS = ("mode", "uid", "gid", "mtime", "atime", "ctime", "rdev")
EXTRA_PREFIX = "mesh-"
# S3 sends metadata as HTTP headers: printable ASCII. Extra values are percent-encoded
# (UTF-8, RFC 3986), every byte outside printable ASCII and "%" itself, so any string
# round-trips and an ASCII value without "%" is stored as is.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
COPY_LIMIT = 5 << 30  # the largest object one CopyObject may copy
COPY_PART = 512 << 20  # UploadPartCopy part size above it
MIN_PART = 5 << 20  # S3's smallest part but the last
SYMLINK_MAX = 4096  # bytes of a symlink object's body read as its target


def _time_text(t: float) -> str:
    """Seconds since the epoch as s3fs writes them: ``sec.nanoseconds``."""
    ns = round(t * 1_000_000_000)
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _parse_time(v: str | None) -> float | None:
    if not v:
        return None
    try:
        t = float(v)
    except ValueError:
        try:  # RFC 3339, as some tools write it
            d = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (d if d.tzinfo else d.replace(tzinfo=datetime.UTC)).timestamp()
    return t if math.isfinite(t) else None


def _parse_int(v: str | None, *, octal_if_zero: bool = False) -> int | None:
    if not v:
        return None
    v = v.strip()
    try:
        if octal_if_zero and len(v) > 1 and v.startswith("0"):
            return int(v, 8)  # rclone: "0100644"
        n = int(v)  # s3fs: "33188"
    except ValueError:
        return None
    return n if n >= 0 else None


def attrs_from_metadata(meta: Mapping[str, str], *, is_dir: bool = False) -> Attrs:
    """The attributes object user metadata carries (s3fs-fuse's and rclone's names);
    ``None`` fields where a name is absent or unreadable."""
    meta = {k.lower(): v for k, v in meta.items()}
    mode = _parse_int(meta.get("mode"), octal_if_zero=True)
    if mode is not None and stat.S_IFMT(mode) == 0:  # permission bits only: s3fs adds the type
        mode |= stat.S_IFDIR if is_dir else stat.S_IFREG
    extra = {k[len(EXTRA_PREFIX):]: unquote(v) for k, v in meta.items() if k.startswith(EXTRA_PREFIX)}
    return Attrs(mode, _parse_int(meta.get("uid")), _parse_int(meta.get("gid")), _parse_time(meta.get("atime")),
                 _parse_time(meta.get("ctime")), rdev=_parse_int(meta.get("rdev")), extra=extra)


def metadata_of(attrs: Attrs, mtime: float | None, keep: Mapping[str, str] | None = None) -> dict[str, str]:
    """User metadata carrying ``attrs`` and ``mtime``, plus the names of ``keep`` this
    module does not manage (another tool's). InvalidArgument for an extra name S3
    would not keep as given (metadata names are case-insensitive)."""
    out = {k: v for k, v in (keep or {}).items()
           if k.lower() not in META_KEYS and not k.lower().startswith(EXTRA_PREFIX)}
    for name, value in (("mode", attrs.mode), ("uid", attrs.uid), ("gid", attrs.gid), ("rdev", attrs.rdev)):
        if value is not None:
            out[name] = str(value)
    for name, t in (("mtime", mtime), ("atime", attrs.atime), ("ctime", attrs.ctime)):
        if t is not None:
            out[name] = _time_text(t)
    for k, v in attrs.extra.items():
        if not k.isascii() or k != k.lower():
            raise InvalidArgument(f"extra attribute name {k!r}: s3:// stores keep lower-case ASCII names only "
                                  "(S3 metadata names are case-insensitive)")
        out[EXTRA_PREFIX + k] = quote(v, safe=_SAFE)
    return out


def _is_not_implemented(exc: ClientError) -> bool:
    code, status = error_code(exc)
    return code == "NotImplemented" or status == 501


def _new_attrs(change: AttrChange | None, old: Attrs | None, now: float, kind: int, *,
               keep_type: bool = False) -> Attrs:
    """The attributes of a new object of type ``kind`` (``keep_type``: the old one's, if
    it has one) replacing one with ``old`` (its permission bits, owner, atime and extra
    attributes kept), with ``change`` made and ctime ``now``."""
    old = old or Attrs()
    kind = stat.S_IFMT(old.mode) if keep_type and old.mode is not None and stat.S_IFMT(old.mode) else kind
    mode = kind | stat.S_IMODE(old.mode) if old.mode is not None else None
    a = Attrs(mode, old.uid, old.gid, old.atime, now, rdev=old.rdev if keep_type else None,
              target=old.target if keep_type else None, extra=dict(old.extra))
    if change is not None:
        a = change.applied(a, now)
    if a.mode is None and kind == stat.S_IFDIR:
        a = replace(a, mode=stat.S_IFDIR | 0o755)
    elif a.mode is not None and stat.S_IFMT(a.mode) == 0:
        a = replace(a, mode=kind | a.mode)
    return a


_CONTENT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")


def _content_headers(head: Mapping[str, Any]) -> dict[str, Any]:
    """The content headers of a HeadObject answer, for a copy that replaces the metadata."""
    return {k: head[k] for k in _CONTENT_HEADERS if head.get(k)}


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _truthy(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise MountError(f"s3 mount option 'anonymous' must be true or false, got {value!r}")


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    """``(bucket, key prefix)`` of ``s3://bucket[/prefix]``; MountError for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise MountError(f"expected s3://bucket[/prefix], got {uri!r}")
    if parts.query or parts.fragment:
        raise MountError(f"s3:// URI may not carry a query or fragment: {uri!r}")
    return parts.netloc, unquote(parts.path).strip("/")


def _number_option(opts: Mapping[str, str], name: str, default: float, low: float) -> float:
    """Mount option ``name`` as a number of at least ``low``; ``default`` when absent or empty."""
    raw = opts.get(name) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise MountError(f"s3 {name} must be a number, got {raw!r}") from None
    if not value >= low:
        raise MountError(f"s3 {name} must be at least {low:g}, got {raw!r}")
    return value


def _max_connections_option(opts: Mapping[str, str]) -> int:
    """Mount option ``max_connections``: a whole number of at least 1 (default 32)."""
    try:
        max_connections = int(opts.get("max_connections") or 32)
    except ValueError:
        raise MountError(
            f"s3 max_connections must be an integer, got {opts['max_connections']!r}"
        ) from None
    if max_connections < 1:
        raise MountError(f"s3 max_connections must be at least 1, got {max_connections}")
    return max_connections


@dataclass(frozen=True)
class _ClientSettings:
    """A mount's options, validated, as the arguments of its boto3 session and client."""

    endpoint: str | None
    region: str
    client_args: dict[str, Any]
    session_args: dict[str, Any]


def _client_settings(opts: Mapping[str, str]) -> _ClientSettings:
    """Validate the mount options (MountError for an unknown or malformed one) into
    the settings the client is created with on first use."""
    check_options("s3", opts, OPTIONS)
    endpoint = opts.get("endpoint") or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise MountError(f"s3 endpoint must be an http:// or https:// URL, got {endpoint!r}")
    region = opts.get("region") or "us-east-1"
    style = opts.get("addressing_style") or ("path" if endpoint else "auto")
    if style not in ("path", "virtual", "auto"):
        raise MountError(f"s3 addressing_style must be path, virtual or auto, got {style!r}")
    max_connections = _max_connections_option(opts)
    anonymous = _truthy(opts.get("anonymous", ""))
    access_key, secret_key = opts.get("access_key") or None, opts.get("secret_key") or None
    if (access_key is None) != (secret_key is None):
        raise MountError("s3 mount options access_key and secret_key go together")

    config_args: dict[str, Any] = {
        "region_name": region,
        "max_pool_connections": max_connections,
        "retries": {
            "mode": "standard", "max_attempts": int(_number_option(opts, "max_attempts", 4, 1)),
        },
        "connect_timeout": _number_option(opts, "connect_timeout", 10, 0.1),
        "read_timeout": _number_option(opts, "read_timeout", 60, 0.1),
        "s3": {"addressing_style": style},
    }
    if anonymous:
        config_args["signature_version"] = UNSIGNED
    client_args: dict[str, Any] = {
        "region_name": region,
        "endpoint_url": endpoint,
        "config": Config(**config_args),
    }
    session_args: dict[str, Any] = {}
    if access_key is not None and not anonymous:
        session_args = {
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "aws_session_token": opts.get("session_token") or None,
        }
    return _ClientSettings(endpoint, region, client_args, session_args)


KEY_MAX = 1024  # bytes of an S3 object key (UTF-8)
VERSIONING_TTL = 30.0  # seconds a bucket's versioning status is believed before it is asked again


class S3UnderStore(UnderStore):
    scheme = "s3"
    capabilities = Capabilities(rename=False, directories=False, attrs=True, symlinks=True, special=True, links=False,
                                max_size=5 << 40, versions=True)
    OPTIONS = OPTIONS

    def __init__(self, uri: str, options: Mapping[str, str]) -> None:
        super().__init__(uri, options)
        self.bucket, self.prefix = _bucket_and_prefix(uri)
        settings = _client_settings(self.options)
        self.endpoint = settings.endpoint
        self.region = settings.region
        self._client_args: dict[str, Any] = settings.client_args
        self._session_args: dict[str, Any] = settings.session_args
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._closed = False
        self._rcvbuf = 0  # SO_RCVBUF of new connections (0: the kernel's, growing)
        self.rename_mode = self.options.get("rename") or "copy"
        if self.rename_mode not in ("copy", "refuse"):
            raise MountError(f"s3 mount option rename must be copy or refuse, got {self.rename_mode!r}")
        self.capabilities = Capabilities(rename=self.rename_mode == "copy", directories=False, attrs=True,
                                         symlinks=True, special=True, links=False, max_size=5 << 40,
                                         versions=True)
        self._versioning: tuple[str, float] | None = None  # (status, when asked: monotonic)
        # Whether the endpoint honours If-None-Match: * on writes: AWS does (since 2024);
        # another endpoint is unknown (None) until it refuses a write with 412 (True) or
        # answers NotImplemented (False). Unknown or False: exclusive writes HEAD first.
        self._conditional: bool | None = None if self.endpoint else True

    # ------------------------------------------------------------------ plumbing

    @property
    def endpoint_name(self) -> str:
        """Where requests go, for messages."""
        if self.endpoint:
            return without_userinfo(self.endpoint)
        if self._client is not None:
            return without_userinfo(str(self._client.meta.endpoint_url))
        return f"AWS S3 ({self.region})"

    def _get_client(self) -> Any:
        """The botocore client, created on first use (runs in a worker thread)."""
        with self._client_lock:
            if self._closed:
                raise UnderStoreError(f"{self._shown('')}: under-store is closed")
            if self._client is None:
                session = boto3.session.Session(**self._session_args)
                # listings: botocore walks its model per element (s3_listing has a quicker walk of
                # the same model) and parses each key's LastModified with dateutil, half the CPU
                # of a 1000-key page; ISO 8601 (what S3 sends in XML bodies) parses in microseconds
                factory = ListingParserFactory()
                factory.set_parser_defaults(timestamp_parser=_fast_timestamp)
                session._session.register_component("response_parser_factory", factory)
                self._client = session.client("s3", **self._client_args)
                _cheaper_200_check(self._client)
                if self._rcvbuf:
                    _set_receive_buffer(self._client, self._rcvbuf)
            return self._client

    def limit_receive_buffer(self, nbytes: int) -> bool:
        with self._client_lock:
            if self._rcvbuf == nbytes:
                return True
            self._rcvbuf = nbytes
            return self._client is None or _set_receive_buffer(self._client, nbytes)

    def _invoke(self, op: str, kwargs: dict[str, Any]) -> Any:
        return getattr(self._get_client(), op)(Bucket=self.bucket, **kwargs)

    async def _raw(self, op: str, **kwargs: Any) -> Any:
        """Call a client operation in a thread; boto exceptions pass through. A change of
        the bucket that is cancelled ends first (:func:`~meshd.understore.base.finished`)."""
        if op in _CHANGES:
            return await finished(self._invoke, op, kwargs)
        return await asyncio.to_thread(self._invoke, op, kwargs)

    async def _call(self, op: str, what: str, **kwargs: Any) -> Any:
        """Call a client operation in a thread; errors come out translated."""
        try:
            return await self._raw(op, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise translate_error(e, what) from e

    def _key(self, path: str) -> str:
        path = path.strip("/")
        key = (f"{self.prefix}/{path}" if path else self.prefix) if self.prefix else path
        if len(key.encode()) > KEY_MAX - 1:  # one byte to spare for a directory marker's "/"
            raise NameTooLong(f"{self._shown(path)}: S3 keys are at most {KEY_MAX} bytes")
        return key

    def _dir_prefix(self, path: str) -> str:
        """Key prefix of the children of ``path`` ("" for the root of an unprefixed mount)."""
        key = self._key(path)
        return key + "/" if key else ""

    def _what(self, path: str) -> str:
        """``path`` as messages name it: its mesh path once mounted (never bucket or key)."""
        return self._shown(path.strip("/"))

    async def _dir_state(self, path: str) -> tuple[bool, bool, float, bool]:
        """``(exists, has_children, marker mtime, has a marker)`` of ``path`` as a directory."""
        prefix = self._dir_prefix(path)
        resp = await self._call("list_objects_v2", self._what(path), Prefix=prefix, MaxKeys=2)
        contents = resp.get("Contents", [])
        marker = [c for c in contents if c["Key"] == prefix]
        children = [c for c in contents if c["Key"] != prefix]
        mtime = _mtime(marker[0].get("LastModified")) if marker else 0.0
        return bool(contents), bool(children), mtime, bool(marker)

    # ------------------------------------------------------------------ operations

    async def check(self) -> None:
        try:
            await self._raw("head_bucket")
        except ClientError as e:
            code, status = error_code(e)
            if code in ("NoSuchBucket", "404") or status == 404:
                raise MountError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_name}"
                ) from e
            if code in _DENIED or status == 403:
                raise PermissionDenied(
                    f"access to bucket {self.bucket!r} at {self.endpoint_name} denied "
                    f"({code or status}): check the bucket policy and the mount's credentials: "
                    f"{CREDENTIALS_HINT}"
                ) from e
            raise translate_error(e, f"s3://{self.bucket} at {self.endpoint_name}") from e
        except EndpointConnectionError as e:
            raise UnderStoreError(f"cannot connect to S3 endpoint {self.endpoint_name} "
                                  f"({type(e).__name__})") from e
        except BotoCoreError as e:
            raise translate_error(e, f"s3://{self.bucket} at {self.endpoint_name}") from e

    async def head(self, path: str) -> ObjectInfo:
        path = path.strip("/")
        if not path:
            return await self._head_marker("", 0.0)
        try:
            resp = await self._call("head_object", self._what(path), Key=self._key(path))
        except NotFound:
            exists, _, mtime, marker = await self._dir_state(path)
            if not exists:
                raise
            if not marker:
                return ObjectInfo(path, 0, mtime, "", is_dir=True, attrs=Attrs())
            return await self._head_marker(path, mtime)
        return await self._info(path, resp)

    async def _info(self, path: str, resp: Mapping[str, Any]) -> ObjectInfo:
        """The status a HeadObject answer gives (a symlink's target read from its body)."""
        meta = resp.get("Metadata") or {}
        attrs = attrs_from_metadata(meta)
        size, etag = int(resp.get("ContentLength", 0)), _etag(resp.get("ETag"))
        if attrs.mode is not None and stat.S_ISLNK(attrs.mode):
            body = await self.read_all(path, 0, min(size, SYMLINK_MAX), etag) if size else b""
            attrs = replace(attrs, target=body.decode("utf-8", "replace"))
        mtime = _parse_time(meta.get("mtime"))
        return ObjectInfo(path, size, _mtime(resp.get("LastModified")) if mtime is None else mtime, etag,
                          attrs=attrs)

    async def _head_marker(self, path: str, mtime: float) -> ObjectInfo:
        """A directory's status, with the attributes its marker ``dir/`` carries (none
        when it has no marker: mode None). The bucket's root has none."""
        attrs = Attrs()
        key = self._dir_prefix(path)
        if key:
            try:
                resp = await self._call("head_object", self._what(path), Key=key)
            except NotFound:  # no marker (a prefix), or removed meanwhile
                pass
            else:
                meta = resp.get("Metadata") or {}
                attrs = attrs_from_metadata(meta, is_dir=True)
                mtime = _parse_time(meta.get("mtime")) or _mtime(resp.get("LastModified"))
        return ObjectInfo(path, 0, mtime, "", is_dir=True, attrs=attrs)

    async def list(self, path: str) -> list[ObjectInfo]:
        path = path.strip("/")
        prefix = self._dir_prefix(path)
        what = self._what(path)
        files: dict[str, ObjectInfo] = {}
        dirs: dict[str, ObjectInfo] = {}
        found = False
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", what, **kwargs)
            for obj in resp.get("Contents", []):
                found = True
                name = obj["Key"][len(prefix):]
                if name in ("", ".", ".."):  # "" is the directory's own marker
                    continue
                child = f"{path}/{name}" if path else name
                files[name] = ObjectInfo(
                    child, int(obj.get("Size", 0)), _mtime(obj.get("LastModified")),
                    _etag(obj.get("ETag")),
                )
            for common in resp.get("CommonPrefixes", []):
                found = True
                name = common["Prefix"][len(prefix):].rstrip("/")
                if name in ("", ".", "..") or "/" in name:
                    continue
                child = f"{path}/{name}" if path else name
                dirs[name] = ObjectInfo(child, 0, 0.0, "", is_dir=True)
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
            if not token:
                break
        if not found and path:
            try:
                await self._call("head_object", what, Key=self._key(path))
            except NotFound:
                raise NotFound(f"no such directory: {what}") from None
            raise NotADirectory(f"not a directory: {what}")
        entries = {**dirs, **files}  # a file shadows a same-named prefix, as in head()
        return sorted(entries.values(), key=lambda i: i.path)

    def get_range(
        self, path: str, start: int, end: int, version: str | None = None, *, chunk: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._stream(path, start, end, version, chunk or CHUNK)

    async def read_all(
        self, path: str, start: int, end: int, version: str | None = None
    ) -> bytes:
        """A page: one GET, its body read in one thread hop (no re-chunking, no join)."""
        parts = [c async for c in self._stream(path, start, end, version, max(end - start, 1))]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _stream(
        self, path: str, start: int, end: int, version: str | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        path = path.strip("/")
        key, what = self._key(path), self._what(path)
        start = max(start, 0)
        pinned = pinned_version_id(version)
        if pinned is not None:  # a kept version: immutable, named by its id
            if_match = {"VersionId": pinned}
        else:
            if_match = {"IfMatch": f'"{version}"'} if version else {}
        if end <= start:
            # Nothing to read, but a missing object or an old version still fail.
            await self._head_for_read(path, if_match)
            return
        try:
            resp = await self._raw(
                "get_object", Key=key, Range=f"bytes={start}-{end - 1}", **if_match
            )
        except ClientError as e:
            code, status = error_code(e)
            if code == "InvalidRange" or status == 416:
                # start is at or past the end of the object (or it is empty).
                await self._head_for_read(path, if_match)
                return
            err = translate_error(e, what)
            if pinned is not None and (status == 405 or isinstance(err, NotFound)):
                raise NotFound(f"no such version of {what}: {pinned}") from None
            if isinstance(err, NotFound) and code != "NoSuchBucket":
                exists, _, _, _ = await self._dir_state(path)
                if exists:
                    raise IsADirectory(f"is a directory: {what}") from None
            raise err from e
        except BotoCoreError as e:
            raise translate_error(e, what) from e

        body = resp["Body"]
        try:
            # A server that ignores Range answers 200 with the whole object.
            skip = 0 if resp.get("ContentRange") else start
            remaining = end - start
            while remaining > 0:
                chunk: bytes = await asyncio.to_thread(body.read, min(chunk_size, remaining))
                if not chunk:
                    break
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                if len(chunk) > remaining:
                    chunk = chunk[:remaining]
                remaining -= len(chunk)
                yield chunk
        except (ClientError, BotoCoreError) as e:
            raise translate_error(e, what) from e
        finally:
            body.close()

    async def _head_for_read(self, path: str, if_match: dict[str, str]) -> None:
        if "VersionId" in if_match:
            v = await self.head_version(path, if_match["VersionId"])
            if v.delete_marker:
                raise NotFound(f"no such version of {self._what(path)}: {v.version_id} is a delete marker")
            return
        try:
            await self._call("head_object", self._what(path), Key=self._key(path), **if_match)
        except NotFound:
            exists, _, _, _ = await self._dir_state(path)
            if exists:
                raise IsADirectory(f"is a directory: {self._what(path)}") from None
            raise

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        path = path.strip("/")
        if not path:
            raise IsADirectory(f"is a directory: {self._what(path)}")
        now = time.time()
        mtime = change.mtime if change is not None and change.mtime is not None else now
        if exclusive or if_version is not None or change is None or None not in (change.mode, change.uid, change.gid):
            # S3's own rule for a write without attributes (the S3 gateway's PUT, WebHDFS CREATE):
            # a new object, its metadata replaced; no HEAD on the write path
            return await self._put(path, chunks, _new_attrs(change, None, now, stat.S_IFREG), mtime,
                                   exclusive=exclusive, if_version=if_version)
        # A partial change (meshfs --owners mount sends no owner): the replaced file keeps the
        # rest, from one HEAD while the body comes in.
        return await self._put(path, chunks, asyncio.ensure_future(self._replacing(path, change, now)), mtime)

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        """A local file as one object: one PutObject up to 8 MiB, else a multipart upload
        with ``parallel`` parts in flight (each read from the file when its turn comes);
        the upload id goes to ``started`` before the first part. Parts grow past 8 MiB
        for files over 80 GB (S3 takes at most 10,000). Never visible until complete: a
        crash leaves an incomplete upload, which ``abort_put`` removes."""
        path = path.strip("/")
        if size <= PART or parallel <= 1:
            return await super().put_file(path, src, size, change=change, pace=pace)
        key, what = self._key(path), self._what(path)
        now = time.time()
        mtime = change.mtime if change is not None and change.mtime is not None else now
        if change is None or None not in (change.mode, change.uid, change.gid):
            attrs = _new_attrs(change, None, now, stat.S_IFREG)
        else:
            attrs = await self._replacing(path, change, now)
        part = max(PART, -(-size // 9_000 // (1 << 20)) << 20)
        count = -(-size // part)
        upload_id = await self._begin(key, what, Metadata=metadata_of(attrs, mtime))
        etags: dict[int, str] = {}
        try:
            if started is not None:
                await started(upload_id)
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                slots = asyncio.Semaphore(parallel)

                async def one(n: int) -> None:
                    async with slots:
                        off = (n - 1) * part
                        data = await asyncio.to_thread(os.pread, fd, min(part, size - off), off)
                        if len(data) != min(part, size - off):
                            raise MeshError(f"write-back spool of {what} is short at byte {off + len(data)}")
                        if pace is not None:
                            await pace(len(data))
                        r = await self._call("upload_part", what, Key=key, UploadId=upload_id, PartNumber=n,
                                             Body=data)
                        etags[n] = r["ETag"]

                tasks = [asyncio.ensure_future(one(n)) for n in range(1, count + 1)]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                os.close(fd)
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in range(1, count + 1)]
            resp = await self._call("complete_multipart_upload", what, Key=key, UploadId=upload_id,
                                    MultipartUpload={"Parts": parts})
        except BaseException:
            await self._abort(key, upload_id)
            raise
        etag = str(resp.get("ETag", "")).strip('"')
        if not etag:
            return await self.head(path)
        return ObjectInfo(path, size, mtime, etag, False, attrs)

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:
        """Abort the multipart upload ``token`` and, when an attempt began at ``since`` (its
        id may never have reached the journal), every incomplete upload of exactly this
        key. Not only those begun after ``since``: stores do not all report the time
        (moto answers a fixed date). Another writer's upload of the same key is aborted
        too and fails; its writer retries, and the later write wins anyway. An upload
        already gone is fine; a store that cannot be asked raises."""
        key, what = self._key(path), self._what(path)
        ids = {token} if token else set()
        if since:
            resp = await self._call("list_multipart_uploads", what, Prefix=key)
            ids.update(str(u["UploadId"]) for u in resp.get("Uploads", []) if u.get("Key") == key)
        for upload_id in ids:
            try:
                await self._raw("abort_multipart_upload", Key=key, UploadId=upload_id)
            except ClientError as e:
                code, status = error_code(e)
                if code != "NoSuchUpload" and status != 404:
                    raise translate_error(e, what) from e
            except BotoCoreError as e:
                raise translate_error(e, what) from e

    async def _replacing(self, path: str, change: AttrChange | None, now: float) -> Attrs:
        """The attributes of a new object replacing the one at ``path`` (if any)."""
        try:
            resp = await self._call("head_object", self._what(path), Key=self._key(path))
        except NotFound:
            return _new_attrs(change, None, now, stat.S_IFREG)
        return _new_attrs(change, attrs_from_metadata(resp.get("Metadata") or {}), now, stat.S_IFREG)

    async def _put(self, path: str, chunks: AsyncIterator[bytes], attrs: Attrs | asyncio.Future[Attrs],
                   mtime: float, *, exclusive: bool = False, strict: bool = False,
                   content: Mapping[str, Any] | None = None, if_version: str | None = None) -> ObjectInfo:
        """Write the object ``path`` with user metadata for ``attrs`` (or what the future
        gives, awaited only before the first write to S3) and ``mtime``. ``exclusive``:
        AlreadyExists if the key exists (``If-None-Match: *``, with a HEAD first where the
        endpoint is not known to honour it; ``strict``: always, which also finds a
        directory there). ``if_version``: VersionChanged unless the object's ETag is that
        (``If-Match``; NotFound if there is none), with a HEAD first on any endpoint but
        AWS's: one may ignore If-Match on CompleteMultipartUpload (moto does)."""
        pending = attrs if isinstance(attrs, asyncio.Future) else None
        final: AttrsBox = [] if pending is not None else [cast(Attrs, attrs)]
        args: dict[str, Any] = {}

        async def metadata() -> dict[str, Any]:
            if not args:
                if pending is not None:
                    final.append(await pending)
                args.update(Metadata=metadata_of(final[0], mtime), **(content or {}))
            return args

        try:
            if pending is None:
                await metadata()  # a bad extra attribute name fails before anything is sent
            if exclusive and (strict or self._conditional is not True):
                await self.check_absent(path)
            if if_version is not None and (self.endpoint or self._conditional is not True):
                await self.check_version(path, if_version)
            return await self._upload(path, chunks, metadata, final, mtime,
                                      exclusive and self._conditional is not False,
                                      if_version if self._conditional is not False else None)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            elif pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: a failed HEAD of a write that failed first is no news

    async def _upload(self, path: str, chunks: AsyncIterator[bytes],
                      metadata: Callable[[], Awaitable[dict[str, Any]]], final: AttrsBox, mtime: float,
                      absent: bool, match: str | None = None) -> ObjectInfo:
        """The write of :meth:`_put`: one PutObject, or a multipart upload above 8 MiB."""
        key, what = self._key(path), self._what(path)
        buf = bytearray()
        upload_id: str | None = None
        parts: Parts = []
        written = 0
        try:
            async for chunk in chunks:
                buf += chunk
                while len(buf) > PART:
                    if upload_id is None:
                        upload_id = await self._begin(key, what, **await metadata())
                    await self._upload_part(key, what, upload_id, parts, bytes(buf[:PART]))
                    written += PART
                    del buf[:PART]
            if upload_id is None:
                resp = await self._write(path, absent, match, "put_object", Key=key, Body=bytes(buf),
                                         **await metadata())
                size = len(buf)
            else:
                if buf or not parts:
                    await self._upload_part(key, what, upload_id, parts, bytes(buf))
                size = written + len(buf)
                buf = bytearray()
                resp = await self._write(path, absent, match, "complete_multipart_upload", Key=key,
                                         UploadId=upload_id, MultipartUpload={"Parts": parts})
                upload_id = None
        except BaseException:
            if upload_id is not None:
                await self._abort(key, upload_id)
            raise
        # The version is the ETag S3 gave *this* write, not a later HEAD's: a
        # concurrent writer may already have replaced the object.
        etag = str(resp.get("ETag", "")).strip('"')
        if not etag:
            return await self.head(path)
        return ObjectInfo(path, size, mtime, etag, False, final[0], version_id=resp.get("VersionId"))

    async def _write(self, path: str, absent: bool, match: str | None, op: str, **kwargs: Any) -> Any:
        """A PutObject or CompleteMultipartUpload; ``absent``: only if the key does not exist
        (``If-None-Match: *``; AlreadyExists if it does); ``match``: only if its ETag is
        that (``If-Match``; VersionChanged if not, NotFound if there is no object). S3's
        409 ConditionalRequestConflict (a conditional write of the key under way) is the
        same failure: the other write is the one that counts."""
        what = self._what(path)
        if not absent and match is None:
            return await self._call(op, what, **kwargs)
        cond = {"IfNoneMatch": "*"} if absent else {"IfMatch": f'"{match}"'}
        try:
            return await self._raw(op, **cond, **kwargs)
        except ClientError as e:
            code, status = error_code(e)
            if code in _PRECONDITION or status == 412 or code == "ConditionalRequestConflict":
                self._conditional = True
                if absent:
                    raise AlreadyExists(f"already exists: {what}") from None
                raise VersionChanged(f"{what} is no longer at version {match}") from None
            if not _is_not_implemented(e):
                raise translate_error(e, what) from e
            log.info("%s: the S3 endpoint does not do conditional writes (If-None-Match, If-Match); "
                     "they are checked first instead (not atomic)", self._shown(""))
            checked, self._conditional = self._conditional is not True, False
            if not checked:
                if absent:
                    await self.check_absent(path)
                elif match is not None:
                    await self.check_version(path, match)
            return await self._call(op, what, **kwargs)
        except BotoCoreError as e:
            raise translate_error(e, what) from e

    async def _upload_part(
        self, key: str, what: str, upload_id: str, parts: Parts, data: bytes
    ) -> None:
        number = len(parts) + 1
        resp = await self._call(
            "upload_part", what, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def _begin(self, key: str, what: str, **kwargs: Any) -> str:
        """CreateMultipartUpload; its upload id. A caller cancelled while the request is on
        the wire waits for it and aborts the upload it created: otherwise that upload
        would stay in the store with nobody knowing its id."""
        fut = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._invoke, "create_multipart_upload", {"Key": key, **kwargs}))
        try:
            resp = await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            if not fut.cancelled() and fut.exception() is None:
                await self._abort(key, str(fut.result()["UploadId"]))
            raise
        except (ClientError, BotoCoreError) as e:
            raise translate_error(e, what) from e
        return str(resp["UploadId"])

    async def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: a failed abort leaves an upload for the bucket's lifecycle rules."""
        try:
            await asyncio.shield(self._raw("abort_multipart_upload", Key=key, UploadId=upload_id))
        except (ClientError, BotoCoreError, asyncio.CancelledError):
            pass

    async def delete(self, path: str) -> None:
        path = path.strip("/")
        what = self._what(path)
        if path:
            try:
                await self._call("head_object", what, Key=self._key(path))
            except NotFound:
                pass
            else:
                await self._call("delete_object", what, Key=self._key(path))
                return
        exists, has_children, _, _ = await self._dir_state(path)
        if has_children:
            raise DirectoryNotEmpty(f"directory not empty: {what}")
        if exists and path:
            await self._call("delete_object", what, Key=self._dir_prefix(path))

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        path = path.strip("/")
        if not path:
            return
        what = self._what(path)
        try:
            await self._call("head_object", what, Key=self._key(path))
        except NotFound:
            pass
        else:
            raise NotADirectory(f"a file is in the way: {what}")
        marker = self._dir_prefix(path)
        if self._conditional is not True:  # an existing marker keeps its attributes
            try:
                await self._call("head_object", what, Key=marker)
            except NotFound:
                pass
            else:
                return
        now = time.time()
        attrs = _new_attrs(change, None, now, stat.S_IFDIR)
        mtime = change.mtime if change is not None and change.mtime is not None else now
        try:
            await self._write(path, self._conditional is True, None, "put_object", Key=marker, Body=b"",
                              Metadata=metadata_of(attrs, mtime))
        except AlreadyExists:
            pass

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        path = path.strip("/")
        what = self._what(path)
        if not path and not self.prefix:
            raise NotSupported(f"{what}: the root of an s3:// mount of a whole bucket cannot hold attributes "
                               "(mount a prefix, s3://bucket/prefix, to keep them in its marker)")
        for _ in range(3):  # a write racing between the HEAD and the copy: again
            try:
                resp = await self._call("head_object", what, Key=self._key(path)) if path else None
            except NotFound:
                resp = None
            if resp is None:
                return await self._setattr_dir(path, change)
            meta = resp.get("Metadata") or {}
            now = time.time()
            attrs = _new_attrs(change, attrs_from_metadata(meta), now, stat.S_IFREG, keep_type=True)
            mtime = change.mtime if change.mtime is not None else _parse_time(meta.get("mtime"))
            if mtime is None:
                mtime = _mtime(resp.get("LastModified"))  # the copy gets a new LastModified: keep the old
            new_meta = metadata_of(attrs, mtime, keep=meta)
            try:
                await self._copy(what, self._key(path), self._key(path), resp, new_meta)
            except VersionChanged:
                continue
            return await self.head(path)
        raise VersionChanged(f"{what} kept changing in the under-store while setting its attributes")

    async def _setattr_dir(self, path: str, change: AttrChange) -> ObjectInfo:
        """setattr of a directory: its marker ``dir/`` (created if missing) carries them."""
        what, marker = self._what(path), self._dir_prefix(path)
        exists, _, marker_mtime, has_marker = await self._dir_state(path)
        if not exists and path:
            raise NotFound(f"no such file or directory: {what}")
        meta: dict[str, str] = {}
        mtime: float | None = marker_mtime or None
        if has_marker:
            try:
                resp = await self._call("head_object", what, Key=marker)
            except NotFound:
                pass
            else:
                meta = resp.get("Metadata") or {}
                mtime = _parse_time(meta.get("mtime")) or _mtime(resp.get("LastModified"))
        now = time.time()
        attrs = _new_attrs(change, attrs_from_metadata(meta, is_dir=True), now, stat.S_IFDIR, keep_type=True)
        if change.mtime is not None:
            mtime = change.mtime
        await self._call("put_object", what, Key=marker, Body=b"",
                         Metadata=metadata_of(attrs, mtime if mtime is not None else now, keep=meta))
        return await self.head(path)

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        path = path.strip("/")
        if not path:
            raise AlreadyExists(f"already exists: {self._what(path)}")
        now = time.time()
        attrs = replace(_new_attrs(change, None, now, stat.S_IFLNK), mode=symlink_mode(), target=target)
        mtime = change.mtime if change is not None and change.mtime is not None else now
        return await self._put(path, _one(target.encode()), attrs, mtime, exclusive=True, strict=True)

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        path = path.strip("/")
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK, stat.S_IFREG):
            raise InvalidArgument(f"mknod makes FIFOs, sockets, device nodes and regular files, "
                                  f"not mode {mode:o}: {self._what(path)}")
        if not path:
            raise AlreadyExists(f"already exists: {self._what(path)}")
        now = time.time()
        attrs = _new_attrs(change, Attrs(mode), now, kind, keep_type=True)
        attrs = replace(attrs, rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else None)
        mtime = change.mtime if change is not None and change.mtime is not None else now
        return await self._put(path, _one(b""), attrs, mtime, exclusive=True, strict=True)

    async def _head_file(self, path: str, version: str | None) -> dict[str, Any]:
        """HeadObject of a file: IsADirectory / NotFound / VersionChanged (not ``version``)."""
        what = self._what(path)
        try:
            resp: dict[str, Any] = await self._call("head_object", what, Key=self._key(path)) if path else {}
        except NotFound:
            resp = {}
        if not resp:
            exists, _, _, _ = await self._dir_state(path)
            if exists or not path:
                raise IsADirectory(f"is a directory: {what}")
            raise NotFound(f"no such file: {what}")
        if version and _etag(resp.get("ETag")) != version:
            raise VersionChanged(f"{what} changed in the under-store")
        return resp

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        src, dst = src.strip("/"), dst.strip("/")
        if not dst:
            raise IsADirectory(f"is a directory: {self._what(dst)}")
        resp = await self._head_file(src, version)
        etag = await self._copy(self._what(src), self._key(src), self._key(dst), resp, None)
        return replace(await self._info(src, resp), path=dst, version=etag)

    async def _copy(self, what: str, src_key: str, dst_key: str, head: Mapping[str, Any],
                    metadata: dict[str, str] | None) -> str:
        """Server-side copy of the object ``src_key`` (as ``head`` describes it, pinned to
        its ETag) to ``dst_key``, with ``metadata`` (None: the source's), content headers
        kept; the new ETag. Above 5 GiB (CopyObject's limit): a multipart UploadPartCopy."""
        size, etag = int(head.get("ContentLength", 0)), _etag(head.get("ETag"))
        source = {"Bucket": self.bucket, "Key": src_key}
        if size <= COPY_LIMIT:
            args: dict[str, Any] = {"MetadataDirective": "COPY"}
            if metadata is not None:
                args = {"MetadataDirective": "REPLACE", "Metadata": metadata, **_content_headers(head)}
            resp = await self._call("copy_object", what, Key=dst_key, CopySource=source,
                                    CopySourceIfMatch=f'"{etag}"', **args)
            return _etag(resp.get("CopyObjectResult", {}).get("ETag"))
        meta = metadata if metadata is not None else dict(head.get("Metadata") or {})
        return await self._compose(what, dst_key, src_key, etag, size, 0, meta, _content_headers(head))

    async def _compose(self, what: str, dst_key: str, src_key: str, etag: str, keep: int, zeros: int,
                       meta: dict[str, str], content: Mapping[str, Any]) -> str:
        """A multipart upload at ``dst_key``: bytes [0, keep) of ``src_key`` (at ``etag``)
        copied server-side, then ``zeros`` zero bytes; the new ETag. Every part but the
        last must be at least 5 MiB: ``keep`` is 0 or at least that."""
        part = max(COPY_PART, -(-keep // 9000))
        ranges = [[s, min(s + part, keep)] for s in range(0, keep, part)]
        if zeros and len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] < MIN_PART:
            ranges[-2][1] = ranges.pop()[1]
        zpart = max(PART, -(-zeros // 1000))
        zsizes = [zpart] * (zeros // zpart) + ([zeros % zpart] if zeros % zpart else [])
        upload_id = await self._begin(dst_key, what, Metadata=meta, **content)
        source = {"Bucket": self.bucket, "Key": src_key}
        gate = asyncio.Semaphore(8)

        async def copy_part(number: int, start: int, end: int) -> dict[str, Any]:
            async with gate:
                r = await self._call("upload_part_copy", what, Key=dst_key, UploadId=upload_id, PartNumber=number,
                                     CopySource=source, CopySourceRange=f"bytes={start}-{end - 1}",
                                     CopySourceIfMatch=f'"{etag}"')
            return {"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]}

        try:
            parts: Parts = list(await asyncio.gather(*(copy_part(i + 1, s, e) for i, (s, e) in enumerate(ranges))))
            zero = b""
            for n in zsizes:
                if len(zero) != n:
                    zero = bytes(n)
                await self._upload_part(dst_key, what, upload_id, parts, zero)
            resp = await self._call("complete_multipart_upload", what, Key=dst_key, UploadId=upload_id,
                                    MultipartUpload={"Parts": parts})
        except BaseException:
            await self._abort(dst_key, upload_id)
            raise
        return _etag(resp.get("ETag"))

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        path = path.strip("/")
        what = self._what(path)
        if size < 0:
            raise InvalidArgument(f"cannot truncate {what} to a negative size ({size})")
        resp = await self._head_file(path, version)
        etag, old_size = _etag(resp.get("ETag")), int(resp.get("ContentLength", 0))
        now = time.time()
        attrs = replace(attrs_from_metadata(resp.get("Metadata") or {}), ctime=now, target=None)
        content = _content_headers(resp)
        keep = min(size, old_size)
        if keep >= MIN_PART:  # server-side: the kept bytes never leave S3
            new = await self._compose(what, self._key(path), self._key(path), etag, keep, size - keep,
                                      metadata_of(attrs, now), content)
            return ObjectInfo(path, size, now, new, False, attrs)

        async def body() -> AsyncIterator[bytes]:
            if keep:
                async for c in self.get_range(path, 0, keep, etag):
                    yield c
            left = size - keep
            while left > 0:
                n = min(left, PART)
                yield bytes(n)
                left -= n

        return await self._put(path, body(), attrs, now, content=content)

    async def rename(self, src: str, dst: str) -> None:
        src, dst = src.strip("/"), dst.strip("/")
        if self.rename_mode != "copy":
            raise NotSupported(
                "rename is not supported by s3:// under-stores: S3 has no atomic rename "
                f"(copy + delete would expose a half-done state); cannot rename {self._shown(src)} "
                f"to {self._shown(dst)} (the mount option rename=copy allows it)"
            )
        what = self._what(src)
        if not src or not dst:
            raise InvalidArgument(f"cannot rename the mount's root: {what} -> {self._what(dst)}")
        if src == dst:
            await self.head(src)
            return
        try:
            resp = await self._call("head_object", what, Key=self._key(src))
        except NotFound:
            resp = None
        if resp is not None:  # a file: copy (with its metadata), then delete
            exists, _, _, _ = await self._dir_state(dst)
            if exists:
                raise IsADirectory(f"cannot rename a file onto a directory: {self._what(dst)}")
            await self._copy(what, self._key(src), self._key(dst), resp, None)
            await self._call("delete_object", what, Key=self._key(src))
            return
        await self._rename_dir(src, dst)

    async def _rename_dir(self, src: str, dst: str) -> None:
        """Every object under ``src/`` (its marker too) copied under ``dst/``; the sources
        deleted only once every copy succeeded."""
        what = self._what(src)
        if dst.startswith(src + "/"):
            raise InvalidArgument(f"cannot move a directory into itself: {what} -> {self._what(dst)}")
        prefix = self._dir_prefix(src)
        objects: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", what, **kwargs)
            objects.extend(resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                break
        if not objects:
            raise NotFound(f"no such file or directory: {what}")
        try:
            await self._call("head_object", self._what(dst), Key=self._key(dst))
        except NotFound:
            pass
        else:
            raise NotADirectory(f"cannot rename a directory onto a file: {self._what(dst)}")
        _, has_children, _, _ = await self._dir_state(dst)
        if has_children:
            raise DirectoryNotEmpty(f"directory not empty: {self._what(dst)}")
        dst_prefix = self._dir_prefix(dst)
        gate = asyncio.Semaphore(16)

        async def one(obj: Mapping[str, Any]) -> None:
            key = str(obj["Key"])
            head: Mapping[str, Any] = {"ContentLength": obj.get("Size", 0), "ETag": obj.get("ETag")}
            async with gate:
                if int(obj.get("Size", 0)) > COPY_LIMIT:  # the multipart copy needs the metadata
                    head = await self._call("head_object", what, Key=key, IfMatch=str(obj.get("ETag")))
                await self._copy(what, key, dst_prefix + key[len(prefix):], head, None)

        await asyncio.gather(*(one(o) for o in objects))
        keys = [str(o["Key"]) for o in objects]
        for i in range(0, len(keys), 1000):
            resp = await self._call("delete_objects", what, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            if resp.get("Errors"):
                raise UnderStoreError(f"{what}: renamed to {self._what(dst)}, but S3 kept "
                                      f"{len(resp['Errors'])} of the old objects (remove them by hand)")

    # ------------------------------------------------------------------ kept versions

    async def versioning(self) -> str:
        cached = self._versioning
        if cached is not None and time.monotonic() - cached[1] < VERSIONING_TTL:
            return cached[0]
        try:
            resp = await self._raw("get_bucket_versioning")
        except ClientError as e:
            code, status_code = error_code(e)
            if not (_is_not_implemented(e) or code in _DENIED or status_code == 403):
                raise translate_error(e, self._what("")) from e
            # an endpoint without versioning, or credentials that may not ask: as before
            # versions were passed through (none kept), rather than failing every listing
            log.info("%s: the S3 bucket's versioning cannot be asked (%s): taken as never enabled",
                     self._shown(""), code or status_code)
            resp = {}
        except BotoCoreError as e:
            raise translate_error(e, self._what("")) from e
        status = str(resp.get("Status") or "")
        self._versioning = (status, time.monotonic())
        return status

    async def set_versioning(self, enabled: bool) -> None:
        status = "Enabled" if enabled else "Suspended"
        await self._call("put_bucket_versioning", self._what(""), VersioningConfiguration={"Status": status})
        self._versioning = (status, time.monotonic())

    def _version_args(self, path: str, version_id: str) -> dict[str, Any]:
        if not version_id or len(version_id) > 1024:
            raise InvalidArgument(f"bad version id {version_id!r} of {self._what(path)}")
        return {"Key": self._key(path), "VersionId": version_id}

    async def head_version(self, path: str, version_id: str) -> ObjectVersion:
        path = path.strip("/")
        what = self._what(path)
        if not path:
            raise NotFound(f"no such version of {what}: the root is no object")
        try:
            resp = await self._raw("head_object", **self._version_args(path, version_id))
        except ClientError as e:
            code, status = error_code(e)
            headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if status == 405 or code == "MethodNotAllowed":  # a delete marker has no bytes
                modified = headers.get("last-modified")
                return ObjectVersion(path, version_id, False, delete_marker=True,
                                     mtime=_mtime(botocore_parse_timestamp(modified)) if modified else 0.0)
            if code in ("InvalidArgument", "400") or status == 400:
                raise InvalidArgument(f"invalid version id {version_id!r} of {what}") from None
            err = translate_error(e, what)
            if isinstance(err, NotFound):
                raise NotFound(f"no such version of {what}: {version_id}") from None
            raise err from e
        except BotoCoreError as e:
            raise translate_error(e, what) from e
        # LastModified, as the listing of versions has it (not x-amz-meta-mtime)
        return ObjectVersion(path, str(resp.get("VersionId") or version_id), False,
                             size=int(resp.get("ContentLength", 0)), mtime=_mtime(resp.get("LastModified")),
                             etag=_etag(resp.get("ETag")))

    async def delete_version(self, path: str, version_id: str) -> ObjectVersion:
        path = path.strip("/")
        what = self._what(path)
        before = await self.head_version(path, version_id)  # not every store says it removed a marker
        resp = await self._call("delete_object", what, **self._version_args(path, version_id))
        return replace(before, delete_marker=before.delete_marker or bool(resp.get("DeleteMarker")))

    async def list_versions(self, prefix: str, *, after_path: str = "", after_version_id: str = "",
                            limit: int = 1000, delimiter: str = "") -> VersionPage:
        base = self.prefix + "/" if self.prefix else ""
        what = self._what(prefix.rsplit("/", 1)[0] if "/" in prefix else "")
        args: dict[str, Any] = {"Prefix": base + prefix.lstrip("/"), "MaxKeys": max(1, min(limit, 1000))}
        if delimiter:
            args["Delimiter"] = delimiter
        if after_path:
            args["KeyMarker"] = base + after_path.lstrip("/")
            if after_version_id:
                args["VersionIdMarker"] = after_version_id
        if len(args["Prefix"].encode()) > KEY_MAX or len(args.get("KeyMarker", "").encode()) > KEY_MAX:
            return VersionPage([], [], False)

        resp = await self._call("list_object_versions", what, **args)
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        for tag, field in (("Version", "Versions"), ("DeleteMarker", "DeleteMarkers")):
            for v in resp.get(field, []):
                found[(tag, str(v.get("Key", "")), str(v.get("VersionId", "")))] = v
        # botocore parses versions and delete markers into two lists: S3's order (by key, the
        # current version first, then newest first) is made again; ties keep versions first
        order = sorted(found, key=lambda t: (t[1].encode(), not found[t].get("IsLatest"),
                                             -_mtime(found[t].get("LastModified"))))
        out: list[ObjectVersion] = []
        for tag, key, vid in order:
            v = found[(tag, key, vid)]
            if not key.startswith(base) or key.endswith("/") or key == base:
                continue  # directory markers are no files
            mtime = _mtime(v.get("LastModified"))
            if tag == "DeleteMarker":
                out.append(ObjectVersion(key[len(base):], vid, bool(v.get("IsLatest")), True, mtime=mtime))
            else:
                out.append(ObjectVersion(key[len(base):], vid, bool(v.get("IsLatest")), size=int(v.get("Size", 0)),
                                         mtime=mtime, etag=_etag(v.get("ETag"))))
        prefixes = [str(c["Prefix"])[len(base):] for c in resp.get("CommonPrefixes", [])
                    if str(c.get("Prefix", "")).startswith(base)]
        truncated = bool(resp.get("IsTruncated"))
        next_key, next_vid = str(resp.get("NextKeyMarker") or ""), str(resp.get("NextVersionIdMarker") or "")
        if truncated and not next_key and order:  # a store that leaves the markers out: the last entry
            _, next_key, next_vid = order[-1]
        return VersionPage(out, prefixes, truncated, next_key[len(base):] if next_key.startswith(base) else "",
                           next_vid)

    async def close(self) -> None:
        with self._client_lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            await asyncio.to_thread(client.close)
