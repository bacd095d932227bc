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
* **No rename**: S3 has no atomic rename; copy + delete would expose a state
  where both or neither exist, so ``rename`` raises NotSupported.
* **Errors** are translated in one place, :func:`translate_error`. Messages
  name the bucket, key and endpoint, never credentials.

Mount options (all strings): ``endpoint`` (URL; AWS when absent), ``region``
(default ``us-east-1``), ``access_key``/``secret_key``/``session_token``
(default: boto's credential chain), ``addressing_style`` (``path``,
``virtual`` or ``auto``; default ``path`` with an ``endpoint``, else
``auto``), ``anonymous`` (``true``: unsigned requests) and
``max_connections`` (default 32). Unknown options are refused, so that a
misspelt ``secret_key`` cannot silently fall back to other credentials.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

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

from meshd.attrs import AttrChange
from meshd.errors import (
    DirectoryNotEmpty,
    IsADirectory,
    MeshError,
    MountError,
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
    UnderStore,
    check_options,
    without_userinfo,
)
from meshd.understore.s3_listing import ListingParserFactory

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # body read size of get_range
PART = 8 << 20  # put: single-request limit and multipart part size

OPTIONS = frozenset({
    "endpoint", "region", "access_key", "secret_key", "session_token",
    "addressing_style", "anonymous", "max_connections", "connect_timeout", "read_timeout",
    "max_attempts",
})

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
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


class S3UnderStore(UnderStore):
    scheme = "s3"
    capabilities = Capabilities(rename=False, directories=False)
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
        """Call a client operation in a thread; boto exceptions pass through."""
        return await asyncio.to_thread(self._invoke, op, kwargs)

    async def _call(self, op: str, what: str, **kwargs: Any) -> Any:
        """Call a client operation in a thread; errors come out translated."""
        try:
            return await self._raw(op, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise translate_error(e, what) from e

    def _key(self, path: str) -> str:
        path = path.strip("/")
        if self.prefix:
            return f"{self.prefix}/{path}" if path else self.prefix
        return path

    def _dir_prefix(self, path: str) -> str:
        """Key prefix of the children of ``path`` ("" for the root of an unprefixed mount)."""
        key = self._key(path)
        return key + "/" if key else ""

    def _what(self, path: str) -> str:
        """``path`` as messages name it: its mesh path once mounted (never bucket or key)."""
        return self._shown(path.strip("/"))

    async def _dir_state(self, path: str) -> tuple[bool, bool, float]:
        """``(exists, has_children, marker mtime)`` of ``path`` as a directory."""
        prefix = self._dir_prefix(path)
        resp = await self._call("list_objects_v2", self._what(path), Prefix=prefix, MaxKeys=2)
        contents = resp.get("Contents", [])
        marker = [c for c in contents if c["Key"] == prefix]
        children = [c for c in contents if c["Key"] != prefix]
        mtime = _mtime(marker[0].get("LastModified")) if marker else 0.0
        return bool(contents), bool(children), mtime

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
            return ObjectInfo("", 0, 0.0, "", is_dir=True)
        try:
            resp = await self._call("head_object", self._what(path), Key=self._key(path))
        except NotFound:
            exists, _, mtime = await self._dir_state(path)
            if exists:
                return ObjectInfo(path, 0, mtime, "", is_dir=True)
            raise
        return ObjectInfo(
            path, int(resp.get("ContentLength", 0)), _mtime(resp.get("LastModified")),
            _etag(resp.get("ETag")),
        )

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
            if isinstance(err, NotFound) and code != "NoSuchBucket":
                exists, _, _ = await self._dir_state(path)
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
        try:
            await self._call("head_object", self._what(path), Key=self._key(path), **if_match)
        except NotFound:
            exists, _, _ = await self._dir_state(path)
            if exists:
                raise IsADirectory(f"is a directory: {self._what(path)}") from None
            raise

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False) -> ObjectInfo:
        if exclusive:
            await self.check_absent(path)
        path = path.strip("/")
        if not path:
            raise IsADirectory(f"is a directory: {self._what(path)}")
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
                        resp = await self._call("create_multipart_upload", what, Key=key)
                        upload_id = str(resp["UploadId"])
                    await self._upload_part(key, what, upload_id, parts, bytes(buf[:PART]))
                    written += PART
                    del buf[:PART]
            if upload_id is None:
                resp = await self._call("put_object", what, Key=key, Body=bytes(buf))
                size = len(buf)
            else:
                if buf or not parts:
                    await self._upload_part(key, what, upload_id, parts, bytes(buf))
                size = written + len(buf)
                buf = bytearray()
                resp = await self._call(
                    "complete_multipart_upload", what, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
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
        return ObjectInfo(path, size, time.time(), etag, False)

    async def _upload_part(
        self, key: str, what: str, upload_id: str, parts: Parts, data: bytes
    ) -> None:
        number = len(parts) + 1
        resp = await self._call(
            "upload_part", what, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})

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
        exists, has_children, _ = await self._dir_state(path)
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
        await self._call("put_object", what, Key=self._dir_prefix(path), Body=b"")

    async def rename(self, src: str, dst: str) -> None:
        raise NotSupported(
            "rename is not supported by s3:// under-stores: S3 has no atomic rename "
            f"(copy + delete would expose a half-done state); cannot rename {self._shown(src)} "
            f"to {self._shown(dst)}"
        )

    async def close(self) -> None:
        with self._client_lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            await asyncio.to_thread(client.close)
