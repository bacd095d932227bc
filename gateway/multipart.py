"""State of S3 multipart uploads, kept on the node's local disk.

The gateway accepts the parts of a multipart upload on the local disk of the
node that receives them (``DATA_DIR/multipart``) and only writes the object to
the under-store, in one streamed :meth:`meshd.core.MeshNode.write`, when the
client completes the upload. Everything here survives a gateway restart: the
state *is* the directory tree, there is nothing in memory to lose.

Layout::

    root/
      <upload_id>/                  one directory per upload in progress
        upload.json                 {"version", "upload_id", "bucket", "key",
                                     "initiated", "metadata", "content_type",
                                     "writeback", "headers", "attrs",
                                     "checksum_algorithm", "checksum_type"}
        part-00001                  a part: 72-byte header, then the part's bytes
        part-00002
        .part-00003.<rand>.tmp      a part being received (never listed)
      .new-<upload_id>-<rand>/      an upload being created (never listed)
      .trash-<upload_id>-<rand>/    an upload being deleted (never listed)
      completed/<upload_id>.json    a completed upload's result, kept COMPLETED_FOR seconds

``upload_id`` is ``secrets.token_urlsafe(24)`` (32 characters of
``[A-Za-z0-9_-]``); an id from a client that does not have that shape is an
unknown upload, so it can never name a path outside ``root``.

A part file carries its own ETag and checksum: the header is ``b"S3MPART2"``,
the 16-byte MD5 digest of the data, the data's size (8 bytes, big-endian), the
part's checksum algorithm (1 byte: 0 none, else 1 + its index in
:data:`gateway.checksums.ALGORITHMS`), its digest (32 bytes, zero-padded) and 7
bytes of padding, followed by the data. (A ``b"S3MPART1"`` file, the 32-byte
header without checksum of earlier versions, is still read.) One file holding both is what makes replacement consistent: a part
is received into a temporary file, its header written once the MD5 is known,
and the file renamed over ``part-NNNNN`` in one ``os.replace``. Two uploads of
the same part number race only at that rename: the last one wins, whole, and
no reader can see one upload's data with the other's ETag (which a sidecar
file renamed separately from the data would allow). Parts of different
numbers never touch the same file and run concurrently. A file whose header
is not valid, or whose size disagrees with its header, is not a part.

Crash safety: an upload appears under its id only by renaming a complete
``.new-*`` directory, and disappears by renaming it to ``.trash-*`` before it is
removed, so a crash never leaves a half-created or half-deleted upload
visible. Temporary names all start with a dot and are never taken for parts or
uploads; :meth:`MultipartStore.cleanup` removes them. Part data is fsynced
before the rename (``fsync=False`` turns that off, e.g. for tests), so an
acknowledged part survives a power loss too.

S3's rules, as enforced here:

* part numbers are 1..10000 (``InvalidArgument``); a part is at most
  ``max_part_size`` bytes (5 GiB, ``EntityTooLarge``);
* CompleteMultipartUpload needs at least one part (``MalformedXML``, as AWS
  answers an empty ``<CompleteMultipartUpload/>``), strictly ascending part
  numbers (``InvalidPartOrder``), parts that exist with the ETag given
  (quotes ignored, ``InvalidPart``), and every part but the last at least
  ``min_part_size`` (5 MiB, ``EntityTooSmall``);
* the object's ETag is ``"<md5 of the concatenated binary part MD5s>-<parts>"``;
* checksums (:mod:`gateway.checksums`): an upload created with
  ``x-amz-checksum-algorithm`` takes parts with a checksum of that algorithm only
  (``InvalidRequest`` otherwise, checked by the gateway), and its Complete must name
  every part's checksum (``InvalidRequest`` if missing, ``InvalidPart`` if different);
  :func:`object_checksum` makes the object's (COMPOSITE or FULL_OBJECT);
* an upload is known only under its bucket and key (``NoSuchUpload``
  otherwise, also once it is completed or aborted);
* listings return at most 1000 entries per page; uploads are ordered by key,
  then initiation time.

A completed upload leaves a record of its result (bucket, key, parts, ETag) for
``COMPLETED_FOR`` seconds (an hour), so that a client retrying a
CompleteMultipartUpload whose answer it lost gets the same answer again, as
from AWS (which keeps no upload ID for long after completion, and documents
no duration); after that, or for another part list, the upload is unknown.

Completion is two steps so that the upload stays retryable until the object is
safely written: :meth:`MultipartStore.complete` validates and returns a stream
of the object's bytes (read from the part files in 1 MiB chunks), the caller
streams it into ``MeshNode.write`` and then calls :meth:`MultipartStore.finish`.
All file I/O runs in worker threads; no part or object is ever held in memory.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from meshd import errors as me

from . import checksums
from .errors import S3Error, from_mesh, invalid_argument

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read/write of part data
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30
MAX_PART_NUMBER = 10_000
MAX_LIST = 1000  # S3 caps max-parts and max-uploads at 1000
COMPLETED_FOR = 3600.0  # seconds a completed upload's result is kept for a retried Complete

_MAGIC_V1 = b"S3MPART1"
_HEADER_V1 = struct.Struct(">8s16sQ")  # magic, md5 digest, data size
_MAGIC = b"S3MPART2"
_HEADER = struct.Struct(">8s16sQB32s7x")  # ... and checksum algorithm, checksum digest
HEADER_SIZE = _HEADER.size  # 72

_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PART_RE = re.compile(r"part-(\d{5})")
_UPLOAD_JSON = "upload.json"
_COMPLETED = "completed"  # not an upload id (too short for _ID_RE)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    metadata: dict[str, str] = field(hash=False)
    content_type: str
    writeback: bool | None = None  # x-mesh-write-mode at CreateMultipartUpload; None: the mount's
    headers: dict[str, str] = field(default_factory=dict, hash=False)  # content headers (gateway/headers.py)
    checksum_algorithm: str | None = None  # x-amz-checksum-algorithm (checksums.ALGORITHMS)
    checksum_type: str | None = None  # FULL_OBJECT | COMPOSITE (with an algorithm only)
    # further object attributes the request set (tags, storage class), recorded at Complete
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # '"<md5hex>"'
    size: int
    last_modified: float
    checksum_algorithm: str | None = None  # the part's checksum (checksums.ALGORITHMS)
    checksum: str | None = None  # its base64 value


def multipart_etag(md5_digests: list[bytes]) -> str:
    """S3's ETag of a multipart object: md5 of the parts' binary md5s, dash, part count."""
    for d in md5_digests:
        if len(d) != 16:
            raise ValueError(f"not an MD5 digest: {d!r}")
    return f'"{hashlib.md5(b"".join(md5_digests)).hexdigest()}-{len(md5_digests)}"'


def _etag(digest: bytes) -> str:
    return f'"{digest.hex()}"'


def _bare(etag: str) -> str:
    return etag.strip().strip('"').lower()


def _part_name(number: int) -> str:
    return f"part-{number:05d}"


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be "
                   "invalid, or the upload may have been aborted or completed.", 404,
                   UploadId=upload_id)


def _invalid_part(upload_id: str, number: int, etag: str) -> S3Error:
    return S3Error("InvalidPart", "One or more of the specified parts could not be found. The "
                   "part may not have been uploaded, or the specified entity tag may not match "
                   "the part's entity tag.", 400, UploadId=upload_id, PartNumber=str(number),
                   ETag=etag)


def _check_part_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or not (
            1 <= number <= MAX_PART_NUMBER):
        raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive",
                               ArgumentName="partNumber", ArgumentValue=str(number))


def _no_space(e: OSError) -> S3Error:
    return from_mesh(me.NoSpace(f"multipart store: {e.strerror or e}"))


@dataclass
class Completion:
    """What :meth:`MultipartStore.complete_parts` found: the object's bytes (a stream),
    ETag and size, and the parts it is made of."""

    stream: AsyncIterator[bytes]
    etag: str
    size: int
    parts: list[Part]


# ---- blocking helpers (run in worker threads) ------------------------------


@dataclass(frozen=True)
class _PartFile:
    part: Part
    digest: bytes


def _read_header(f: BinaryIO, path: Path, number: int) -> _PartFile | None:
    st = os.fstat(f.fileno())
    head = f.read(_HEADER_V1.size)
    if len(head) == _HEADER_V1.size:
        magic, digest, size = _HEADER_V1.unpack(head)
        if magic == _MAGIC_V1 and st.st_size == _HEADER_V1.size + size:
            return _PartFile(Part(number, _etag(digest), size, st.st_mtime), digest)
        if magic == _MAGIC:
            head += f.read(HEADER_SIZE - len(head))
        if magic == _MAGIC and len(head) == HEADER_SIZE and st.st_size == HEADER_SIZE + size:
            _, _, _, code, cdigest = _HEADER.unpack(head)
            alg = checksums.ALGORITHMS[code - 1] if 1 <= code <= len(checksums.ALGORITHMS) else None
            value = checksums.encode(cdigest[:checksums.SIZES[alg]]) if alg is not None else None
            return _PartFile(Part(number, _etag(digest), size, st.st_mtime, alg, value), digest)
    log.warning("multipart: ignoring malformed part file %s", path)
    return None


def _load_part(path: Path, number: int) -> _PartFile | None:
    try:
        with open(path, "rb") as f:
            return _read_header(f, path, number)
    except FileNotFoundError:
        return None


def _load_upload(d: Path) -> Upload | None:
    try:
        with open(d / _UPLOAD_JSON, encoding="utf-8") as f:
            j: dict[str, Any] = json.load(f)
        return Upload(upload_id=d.name, bucket=str(j["bucket"]), key=str(j["key"]),
                      initiated=float(j["initiated"]),
                      metadata={str(k): str(v) for k, v in j["metadata"].items()},
                      content_type=str(j["content_type"]),
                      writeback=j.get("writeback") if isinstance(j.get("writeback"), bool) else None,
                      headers={str(k): str(v) for k, v in (j.get("headers") or {}).items()},
                      checksum_algorithm=_known(j.get("checksum_algorithm"), checksums.ALGORITHMS),
                      checksum_type=_known(j.get("checksum_type"),
                                           (checksums.FULL_OBJECT, checksums.COMPOSITE)),
                      attrs=dict(j["attrs"]) if isinstance(j.get("attrs"), dict) else {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("multipart: ignoring unreadable upload %s: %s", d, e)
        return None


def _known(value: Any, allowed: tuple[str, ...]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(d: Path) -> None:
    for _ in range(5):  # a put_part racing with the removal may add a file; try again
        try:
            shutil.rmtree(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            continue
    shutil.rmtree(d, ignore_errors=True)


class _PartWriter:
    """One part being received into a temporary file.

    Every file operation holds ``lock``, so :meth:`discard` (run when the
    receiving coroutine fails or is cancelled, possibly while a write is still
    running in its thread) never closes the file under a write.
    """

    def __init__(self, tmp: Path, final: Path, fsync: bool) -> None:
        self.tmp, self.final, self.fsync = tmp, final, fsync
        self.lock = threading.Lock()
        self.file: BinaryIO | None = None
        self.md5 = hashlib.md5()
        self.committed = False

    def open(self) -> None:
        with self.lock:
            self.file = open(self.tmp, "xb")  # closed by seal() or discard()
            self.file.write(bytes(HEADER_SIZE))  # placeholder until the md5 is known

    def write(self, chunks: list[bytes]) -> None:
        with self.lock:
            assert self.file is not None
            for c in chunks:
                self.md5.update(c)
                self.file.write(c)

    def seal(self, size: int, checksum: tuple[str, bytes] | None = None) -> tuple[bytes, float]:
        with self.lock:
            assert self.file is not None
            digest = self.md5.digest()
            code, cdigest = 0, b""
            if checksum is not None:
                code, cdigest = checksums.ALGORITHMS.index(checksum[0]) + 1, checksum[1]
            self.file.seek(0)
            self.file.write(_HEADER.pack(_MAGIC, digest, size, code, cdigest))
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            mtime = os.fstat(self.file.fileno()).st_mtime
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.final)
            self.committed = True
            if self.fsync:
                _fsync_dir(self.final.parent)
            return digest, mtime

    def discard(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None
            if not self.committed:
                self.tmp.unlink(missing_ok=True)


def _check_part_body(w: _PartWriter, size: int, expected_md5: bytes | None,
                     expected_size: int | None) -> None:
    """Check a received part against Content-Length and Content-MD5, when the client sent them."""
    if expected_size is not None and size != expected_size:
        raise S3Error("IncompleteBody", "You did not provide the number of bytes "
                      "specified by the Content-Length HTTP header", 400)
    if expected_md5 is not None and w.md5.digest() != expected_md5:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what "
                      "we received.", 400)


async def _discard_part(w: _PartWriter) -> None:
    """Remove a part that will not be committed, even if the caller is cancelled meanwhile."""
    # In a thread, after any write still running there (the writer's lock).
    cleanup = asyncio.ensure_future(asyncio.to_thread(w.discard))
    try:
        await asyncio.shield(cleanup)
    except asyncio.CancelledError:
        pass  # cancelled again: the discard still runs to its end
    except OSError:
        log.warning("multipart: could not remove %s", w.tmp, exc_info=True)


def _raise_part_os_error(e: OSError, upload_id: str) -> None:
    """Raise the S3 error for an OSError receiving a part, if it has one.

    A missing upload directory is ``NoSuchUpload`` (never created, or aborted
    meanwhile); a full disk is the no-space error. Otherwise return: the caller
    re-raises ``e``.
    """
    if isinstance(e, FileNotFoundError):
        raise no_such_upload(upload_id) from None
    if e.errno in _NO_SPACE:
        raise _no_space(e) from e


# ---- the store ---------------------------------------------------------------


class MultipartStore:
    """Multipart uploads under ``root``; see the module docstring for layout and rules."""

    def __init__(self, root: str, *, min_part_size: int = MIN_PART_SIZE,
                 max_part_size: int = MAX_PART_SIZE, fsync: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.min_part_size = min_part_size
        self.max_part_size = max_part_size
        self.fsync = fsync
        self.clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self._swept = 0.0  # when old records of completed uploads were last removed

    def _dir(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not _ID_RE.fullmatch(upload_id):
            raise no_such_upload(str(upload_id))
        return self.root / upload_id

    # ---- uploads ---------------------------------------------------------

    async def create(self, bucket: str, key: str, metadata: dict[str, str],
                     content_type: str, writeback: bool | None = None,
                     headers: dict[str, str] | None = None,
                     checksum_algorithm: str | None = None,
                     checksum_type: str | None = None,
                     attrs: dict[str, Any] | None = None) -> Upload:
        if not bucket:
            raise invalid_argument("Bucket name must not be empty")
        if not key:
            raise invalid_argument("Object key must not be empty")
        upload = Upload(upload_id=secrets.token_urlsafe(24), bucket=bucket, key=key,
                        initiated=self.clock(), metadata=dict(metadata),
                        content_type=content_type, writeback=writeback, headers=dict(headers or {}),
                        checksum_algorithm=checksum_algorithm, checksum_type=checksum_type,
                        attrs=dict(attrs or {}))
        doc = {"version": 1, "upload_id": upload.upload_id, "bucket": bucket, "key": key,
               "initiated": upload.initiated, "metadata": upload.metadata,
               "content_type": content_type, "writeback": writeback, "headers": upload.headers,
               "checksum_algorithm": checksum_algorithm, "checksum_type": checksum_type,
               "attrs": upload.attrs}

        def make() -> None:
            new = self.root / f".new-{upload.upload_id}-{secrets.token_hex(4)}"
            new.mkdir()
            try:
                with open(new / _UPLOAD_JSON, "w", encoding="utf-8") as f:
                    json.dump(doc, f)
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
                new.rename(self.root / upload.upload_id)
                if self.fsync:
                    _fsync_dir(self.root)
            except BaseException:
                _rmtree(new)
                raise

        try:
            await asyncio.to_thread(make)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space(e) from e
            raise
        return upload

    async def get(self, bucket: str, key: str, upload_id: str) -> Upload:
        d = self._dir(upload_id)
        upload = await asyncio.to_thread(_load_upload, d)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise no_such_upload(upload_id)
        return upload

    async def list_uploads(self, bucket: str, prefix: str = "", key_marker: str = "",
                           upload_id_marker: str = "",
                           max_uploads: int = 1000) -> tuple[list[Upload], bool]:
        """Uploads of ``bucket`` under ``prefix``, ordered by (key, initiated), after the markers.

        As in S3: without ``key_marker`` the markers are ignored; with only
        ``key_marker``, listing starts after every upload of that key; with
        both, it starts after that upload. If the marker upload is gone (completed
        or aborted between pages), every upload of ``key_marker`` is listed again
        rather than risk skipping one.
        """
        if max_uploads < 0:
            raise invalid_argument("max-uploads must be a non-negative integer",
                                   ArgumentName="max-uploads", ArgumentValue=str(max_uploads))
        limit = min(max_uploads, MAX_LIST)

        def scan() -> list[Upload]:
            found = []
            with os.scandir(self.root) as it:
                for entry in it:
                    if _ID_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                        u = _load_upload(Path(entry.path))
                        if u is not None and u.bucket == bucket and u.key.startswith(prefix):
                            found.append(u)
            return found

        def order(u: Upload) -> tuple[str, float, str]:
            return (u.key, u.initiated, u.upload_id)

        uploads = sorted(await asyncio.to_thread(scan), key=order)
        if key_marker:
            after: tuple[str, float, str] | None = None
            if upload_id_marker:
                after = next((order(u) for u in uploads if u.key == key_marker
                              and u.upload_id == upload_id_marker), None)
                if after is None:
                    uploads = [u for u in uploads if u.key >= key_marker]
            if after is not None:
                uploads = [u for u in uploads if order(u) > after]
            elif not upload_id_marker:
                uploads = [u for u in uploads if u.key > key_marker]
        return uploads[:limit], len(uploads) > limit

    # ---- parts -------------------------------------------------------------

    async def put_part(self, upload: Upload, number: int, chunks: AsyncIterator[bytes], *,
                       expected_md5: bytes | None = None,
                       expected_size: int | None = None,
                       checksum: checksums.RequestChecksum | None = None) -> Part:
        """Receive part ``number`` from ``chunks``, replacing any earlier part of that number.

        The part becomes visible only once all of it is on disk: if ``chunks``
        raises (or the coroutine is cancelled), nothing is left behind and an
        earlier part of the same number stays. ``expected_md5`` (Content-MD5)
        and ``expected_size`` (Content-Length), when given, are checked before
        the part is committed (``BadDigest``, ``IncompleteBody``). ``checksum``: the
        checksum ``chunks`` were checked with (its value is kept with the part).
        """
        _check_part_number(number)
        d = self._dir(upload.upload_id)
        name = _part_name(number)
        w = _PartWriter(d / f".{name}.{secrets.token_hex(6)}.tmp", d / name, self.fsync)
        try:
            await asyncio.to_thread(w.open)
        except OSError as e:
            _raise_part_os_error(e, upload.upload_id)
            raise
        try:
            size = await self._receive_part(w, chunks)
            _check_part_body(w, size, expected_md5, expected_size)
            ck = None
            if checksum is not None and checksum.algorithm is not None and checksum.digest is not None:
                ck = (checksum.algorithm, checksum.digest)
            digest, mtime = await asyncio.to_thread(w.seal, size, ck)
        except BaseException as exc:
            await _discard_part(w)
            if isinstance(exc, OSError):
                _raise_part_os_error(exc, upload.upload_id)  # e.g. aborted meanwhile
            raise
        if ck is not None:
            return Part(number, _etag(digest), size, mtime, ck[0], checksums.encode(ck[1]))
        return Part(number, _etag(digest), size, mtime)

    async def _receive_part(self, w: _PartWriter, chunks: AsyncIterator[bytes]) -> int:
        """Write ``chunks`` to ``w`` in batches of about ``CHUNK`` bytes; return the part's size.

        ``EntityTooLarge`` as soon as the part exceeds ``max_part_size``.
        """
        size = 0
        buf: list[bytes] = []
        buffered = 0
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > self.max_part_size:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum "
                              "allowed size", 400, MaxSizeAllowed=str(self.max_part_size))
            buf.append(chunk)
            buffered += len(chunk)
            if buffered >= CHUNK:
                await asyncio.to_thread(w.write, buf)
                buf, buffered = [], 0
        if buf:
            await asyncio.to_thread(w.write, buf)
        return size

    async def list_parts(self, upload: Upload, marker: int = 0,
                         max_parts: int = 1000) -> tuple[list[Part], bool]:
        """Parts numbered above ``marker``, ascending, at most ``max_parts`` (capped at 1000)."""
        if marker < 0:
            raise invalid_argument("part-number-marker must be a non-negative integer",
                                   ArgumentName="part-number-marker", ArgumentValue=str(marker))
        if max_parts < 0:
            raise invalid_argument("max-parts must be a non-negative integer",
                                   ArgumentName="max-parts", ArgumentValue=str(max_parts))
        limit = min(max_parts, MAX_LIST)
        d = self._dir(upload.upload_id)

        def scan() -> tuple[list[Part], bool] | None:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                return None
            numbers = sorted(n for n in (_part_number(x) for x in names) if n > marker)
            parts: list[Part] = []
            for n in numbers:
                pf = _load_part(d / _part_name(n), n)
                if pf is None:
                    continue
                if len(parts) == limit:
                    return parts, True
                parts.append(pf.part)
            return parts, False

        result = await asyncio.to_thread(scan)
        if result is None:
            raise no_such_upload(upload.upload_id)
        return result

    # ---- completion ----------------------------------------------------------

    async def complete(self, upload: Upload, parts: list[tuple[int, str]]
                       ) -> tuple[AsyncIterator[bytes], str, int]:
        """:meth:`complete_parts` as (object bytes, object ETag, object size)."""
        done = await self.complete_parts(upload, parts)
        return done.stream, done.etag, done.size

    async def complete_parts(self, upload: Upload, parts: list[tuple[int, str]]) -> Completion:
        """Validate the client's part list; return the object's bytes, ETag and size, and
        its parts (with their checksums: :func:`object_checksum`).

        The stream reads the named parts in order, 1 MiB at a time. Each part
        is checked again when the stream opens it: a part replaced or an upload
        aborted since this call makes the stream raise (``InvalidPart``,
        ``NoSuchUpload``) rather than produce bytes that disagree with the ETag.
        The upload is left in place: call :meth:`finish` once the object is written.
        """
        if not parts:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                          "validate against our published schema", 400)
        for (a, _), (b, _) in itertools.pairwise(parts):
            if b <= a:
                raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                              "Parts must be ordered by part number.", 400,
                              UploadId=upload.upload_id)
        d = self._dir(upload.upload_id)

        def load() -> list[_PartFile | None] | None:
            if not (d / _UPLOAD_JSON).exists():
                return None
            return [_load_part(d / _part_name(n), n) if 1 <= n <= MAX_PART_NUMBER else None
                    for n, _ in parts]

        found = await asyncio.to_thread(load)
        if found is None:
            raise no_such_upload(upload.upload_id)
        for (n, etag), pf in zip(parts, found, strict=True):
            if pf is None or _bare(pf.part.etag) != _bare(etag):
                raise _invalid_part(upload.upload_id, n, etag)
        plan = [pf for pf in found if pf is not None]
        for pf in plan[:-1]:
            if pf.part.size < self.min_part_size:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the "
                              "minimum allowed size", 400, ProposedSize=str(pf.part.size),
                              MinSizeAllowed=str(self.min_part_size),
                              PartNumber=str(pf.part.number), ETag=pf.part.etag)
        etag = multipart_etag([pf.digest for pf in plan])
        total = sum(pf.part.size for pf in plan)
        return Completion(self._stream(upload.upload_id, d, plan), etag, total,
                          [pf.part for pf in plan])

    async def _stream(self, upload_id: str, d: Path,
                      plan: list[_PartFile]) -> AsyncIterator[bytes]:
        def open_part(pf: _PartFile) -> BinaryIO:
            path = d / _part_name(pf.part.number)
            try:
                f = open(path, "rb")  # closed by _stream()
            except FileNotFoundError:
                if not (d / _UPLOAD_JSON).exists():
                    raise no_such_upload(upload_id) from None
                raise _invalid_part(upload_id, pf.part.number, pf.part.etag) from None
            now = _read_header(f, path, pf.part.number)
            if now is None or now.digest != pf.digest or now.part.size != pf.part.size:
                f.close()
                raise _invalid_part(upload_id, pf.part.number, pf.part.etag)
            return f

        for pf in plan:
            f = await asyncio.to_thread(open_part, pf)
            try:
                remaining = pf.part.size
                while remaining > 0:
                    data = await asyncio.to_thread(f.read, min(CHUNK, remaining))
                    if not data:
                        raise S3Error("InternalError", f"part {pf.part.number} of upload "
                                      f"{upload_id} is shorter than recorded", 500)
                    remaining -= len(data)
                    yield data
            finally:
                f.close()  # a buffered file's close waits for a read still in its thread

    # ---- removal -------------------------------------------------------------

    def _remove(self, d: Path) -> bool:
        """Hide ``d`` under a ``.trash-`` name (atomically), then delete it. False if gone."""
        trash = self.root / f".trash-{d.name}-{secrets.token_hex(4)}"
        try:
            d.rename(trash)
        except FileNotFoundError:
            return False
        _rmtree(trash)
        return True

    async def finish(self, upload: Upload, parts: list[tuple[int, str]] | None = None,
                     etag: str = "") -> None:
        """Forget a completed upload: delete its directory. Idempotent. With the ``parts``
        it was completed with and its ``etag``, keep a record of the result first
        (:meth:`completed`)."""
        if parts is not None:
            record = {"bucket": upload.bucket, "key": upload.key, "etag": etag,
                      "parts": [[n, _bare(e)] for n, e in parts], "t": self.clock()}
            try:
                await asyncio.to_thread(self._record, upload.upload_id, record)
            except OSError as e:  # the object is written: only a retried Complete would miss it
                log.warning("multipart: could not record completed upload %s: %s", upload.upload_id, e)
        await asyncio.to_thread(self._remove, self._dir(upload.upload_id))

    def _record(self, upload_id: str, record: dict[str, Any]) -> None:
        done = self.root / _COMPLETED
        done.mkdir(exist_ok=True)
        tmp = done / f".{upload_id}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, done / f"{upload_id}.json")
        now = self.clock()
        if now - self._swept > 60:  # at most once a minute: a directory scan
            self._swept = now
            _sweep_completed(done, time.time() - COMPLETED_FOR)  # file times: the real clock

    async def completed(self, bucket: str, key: str, upload_id: str,
                        parts: list[tuple[int, str]]) -> str | None:
        """The ETag of ``upload_id`` if it was completed, within ``COMPLETED_FOR`` seconds,
        as ``bucket``/``key`` with these ``parts``; None otherwise."""
        self._dir(upload_id)  # an id of the right shape, or NoSuchUpload

        def load() -> dict[str, Any] | None:
            try:
                found = json.loads((self.root / _COMPLETED / f"{upload_id}.json").read_text())
                return found if isinstance(found, dict) else None
            except (OSError, ValueError):
                return None

        r = await asyncio.to_thread(load)
        t = r.get("t") if r is not None else None
        if (r is None or r.get("bucket") != bucket or r.get("key") != key
                or not isinstance(t, int | float) or t < self.clock() - COMPLETED_FOR
                or r.get("parts") != [[n, _bare(e)] for n, e in parts]):
            return None
        return str(r.get("etag", ""))

    async def part_sizes(self, upload: Upload, numbers: list[int]) -> tuple[int, ...]:
        """The sizes of parts ``numbers`` (as :meth:`complete` found them; call it after)."""
        d = self._dir(upload.upload_id)

        def load() -> tuple[int, ...]:
            found = [_load_part(d / _part_name(n), n) for n in numbers]
            return tuple(pf.part.size if pf is not None else 0 for pf in found)

        return await asyncio.to_thread(load)

    async def abort(self, upload: Upload) -> None:
        """Abort an upload: delete it and its parts (idempotent; the handler answers 204)."""
        await self.finish(upload)

    async def cleanup(self, older_than: float) -> int:
        """Remove uploads initiated before ``older_than`` (epoch seconds); return how many.

        Also removes leftovers of crashes: half-created and half-deleted upload
        directories, directories without a readable ``upload.json`` and
        temporary part files, each when last modified before ``older_than``
        (half-deleted ones always).
        """
        def sweep() -> int:
            removed = 0
            with os.scandir(self.root) as it:
                entries = list(it)
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if entry.name == _COMPLETED:
                    _sweep_completed(path, time.time() - COMPLETED_FOR)
                elif entry.name.startswith(".trash-"):
                    _rmtree(path)
                elif entry.name.startswith(".new-"):
                    if mtime < older_than:
                        _rmtree(path)
                elif _ID_RE.fullmatch(entry.name):
                    u = _load_upload(path)
                    started = u.initiated if u is not None else mtime
                    if started < older_than:
                        removed += self._remove(path)
                    else:
                        _sweep_tmp(path, older_than)
            return removed

        return await asyncio.to_thread(sweep)


def _part_number(name: str) -> int:
    """The number of a part file's name; 0 for any other name."""
    m = _PART_RE.fullmatch(name)
    n = int(m.group(1)) if m else 0
    return n if n <= MAX_PART_NUMBER else 0


def _sweep_completed(d: Path, older_than: float) -> None:
    """Remove records of completed uploads (and leftover temporaries) older than ``older_than``."""
    for name in os.listdir(d):
        p = d / name
        try:
            if p.stat().st_mtime < older_than:
                p.unlink()
        except FileNotFoundError:
            pass


def _sweep_tmp(d: Path, older_than: float) -> None:
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".part-") and name.endswith(".tmp"):
            p = d / name
            try:
                if p.stat().st_mtime < older_than:
                    p.unlink()
            except FileNotFoundError:
                pass


# ---- checksums of a completed upload ----------------------------------------


def _part_checksum_error(algorithm: str, value: str) -> S3Error:
    return invalid_argument("Invalid Base64 or multiple checksums present in request",
                            ArgumentName="Checksum", ArgumentValue=f"{algorithm}:{value[:64]};")


def _composite_value(algorithm: str, raw: str, name: str) -> tuple[bytes, int | None]:
    """The digest and part count of a COMPOSITE checksum header (``<base64>[-<parts>]``)."""
    b64, dash, count = raw.strip().partition("-")
    if dash and not (count.isdigit() and len(count) <= 5):
        raise checksums.invalid_value(name)
    return checksums.decode(algorithm, b64, name), int(count) if dash else None


def object_checksum(upload: Upload, parts: list[Part], given: list[dict[str, str]],
                    headers: Mapping[str, str]
                    ) -> tuple[dict[str, str] | None, checksums.RequestChecksum | None]:
    """The checksum of the object a CompleteMultipartUpload makes, as S3 computes it.

    ``given``: the ``<ChecksumCRC32>`` (etc.) of each ``<Part>`` of the request, checked
    against the parts' own (``InvalidPart`` if they differ; an upload created with an
    algorithm needs them for every part); ``headers``: the request's, whose
    ``x-amz-checksum-<alg>`` is the client's checksum of the whole object.

    Returns ``(entry, None)`` for a COMPOSITE checksum (the checksum of the part
    checksums, known now: a header that disagrees is ``BadDigest``), or ``(None,
    check)`` for a FULL_OBJECT one: ``check`` computes it (and compares it with the
    header's) while the object streams. An upload created without an algorithm gets
    S3's default, a full-object CRC64NVME (or the header's algorithm, if it names one).
    """
    alg = upload.checksum_algorithm
    for part, g in zip(parts, given, strict=True):
        for a, v in g.items():
            try:
                digest = checksums.decode(a, v)
            except S3Error:
                raise _part_checksum_error(a, v) from None
            if len(g) > 1:
                raise _part_checksum_error(a, v)
            if part.checksum_algorithm == a and part.checksum is not None and \
                    checksums.decode(a, part.checksum) != digest:
                raise _invalid_part(upload.upload_id, part.number, part.etag)
        if alg is not None and (alg not in g or part.checksum_algorithm != alg):
            if alg in g:  # a part stored without the upload's checksum: cannot be verified
                raise _invalid_part(upload.upload_id, part.number, part.etag)
            raise S3Error("InvalidRequest", f"The upload was created using a {alg.lower()} "
                          "checksum. The complete request must include the checksum for each "
                          f"part. It was missing for part {part.number} in the request.", 400)
    sent = [(h, name, value) for name, value in headers.items()
            if (h := checksums.algorithm_of(name)) is not None]
    if len(sent) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                      "Multiple checksum Types are not allowed.", 400)
    if sent and alg is not None and sent[0][0] != alg:
        raise checksums.invalid_value(sent[0][1].lower())
    if alg is not None and upload.checksum_type == checksums.COMPOSITE:
        digests = [checksums.decode(alg, p.checksum or "") for p in parts]
        value = checksums.composite(alg, digests)
        if sent:
            expected, count = _composite_value(alg, sent[0][2], sent[0][1].lower())
            if count not in (None, len(parts)) or \
                    checksums.encode(expected) != value.rsplit("-", 1)[0]:
                raise checksums.bad_digest(alg, lower=True)
        return checksums.stored(alg, value, checksums.COMPOSITE), None
    if sent:
        h, name, value = sent[0]
        return None, checksums.RequestChecksum(h, checksums.decode(h, value, name.lower()))
    return None, checksums.RequestChecksum(alg or checksums.DEFAULT)
