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
                                     "writeback", "attrs"}
        part-00001                  a part: 32-byte header, then the part's bytes
        part-00002
        .part-00003.<rand>.tmp      a part being received (never listed)
      .new-<upload_id>-<rand>/      an upload being created (never listed)
      .trash-<upload_id>-<rand>/    an upload being deleted (never listed)

``upload_id`` is ``secrets.token_urlsafe(24)`` (32 characters of
``[A-Za-z0-9_-]``); an id from a client that does not have that shape is an
unknown upload, so it can never name a path outside ``root``.

A part file carries its own ETag: the header is ``b"S3MPART1"``, the 16-byte
MD5 digest of the data and the data's size (8 bytes, big-endian), followed by
the data. One file holding both is what makes replacement consistent: a part
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
* an upload is known only under its bucket and key (``NoSuchUpload``
  otherwise, also once it is completed or aborted);
* listings return at most 1000 entries per page; uploads are ordered by key,
  then initiation time.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from meshd import errors as me

from .errors import S3Error, from_mesh, invalid_argument

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read/write of part data
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30
MAX_PART_NUMBER = 10_000
MAX_LIST = 1000  # S3 caps max-parts and max-uploads at 1000

_MAGIC = b"S3MPART1"
_HEADER = struct.Struct(">8s16sQ")  # magic, md5 digest, data size
HEADER_SIZE = _HEADER.size  # 32

_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PART_RE = re.compile(r"part-(\d{5})")
_UPLOAD_JSON = "upload.json"
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
    # further object attributes the request set (tags, storage class), recorded at Complete
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # '"<md5hex>"'
    size: int
    last_modified: float


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


# ---- blocking helpers (run in worker threads) ------------------------------


@dataclass(frozen=True)
class _PartFile:
    part: Part
    digest: bytes


def _read_header(f: BinaryIO, path: Path, number: int) -> _PartFile | None:
    st = os.fstat(f.fileno())
    head = f.read(HEADER_SIZE)
    if len(head) == HEADER_SIZE:
        magic, digest, size = _HEADER.unpack(head)
        if magic == _MAGIC and st.st_size == HEADER_SIZE + size:
            return _PartFile(Part(number, _etag(digest), size, st.st_mtime), digest)
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
                      attrs=dict(j["attrs"]) if isinstance(j.get("attrs"), dict) else {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("multipart: ignoring unreadable upload %s: %s", d, e)
        return None


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

    def seal(self, size: int) -> tuple[bytes, float]:
        with self.lock:
            assert self.file is not None
            digest = self.md5.digest()
            self.file.seek(0)
            self.file.write(_HEADER.pack(_MAGIC, digest, size))
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

    def _dir(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not _ID_RE.fullmatch(upload_id):
            raise no_such_upload(str(upload_id))
        return self.root / upload_id

    # ---- uploads ---------------------------------------------------------

    async def create(self, bucket: str, key: str, metadata: dict[str, str],
                     content_type: str, writeback: bool | None = None,
                     attrs: dict[str, Any] | None = None) -> Upload:
        if not bucket:
            raise invalid_argument("Bucket name must not be empty")
        if not key:
            raise invalid_argument("Object key must not be empty")
        upload = Upload(upload_id=secrets.token_urlsafe(24), bucket=bucket, key=key,
                        initiated=self.clock(), metadata=dict(metadata),
                        content_type=content_type, writeback=writeback, attrs=dict(attrs or {}))
        doc = {"version": 1, "upload_id": upload.upload_id, "bucket": bucket, "key": key,
               "initiated": upload.initiated, "metadata": upload.metadata,
               "content_type": content_type, "writeback": writeback, "attrs": upload.attrs}

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
                       expected_size: int | None = None) -> Part:
        """Receive part ``number`` from ``chunks``, replacing any earlier part of that number.

        The part becomes visible only once all of it is on disk: if ``chunks``
        raises (or the coroutine is cancelled), nothing is left behind and an
        earlier part of the same number stays. ``expected_md5`` (Content-MD5)
        and ``expected_size`` (Content-Length), when given, are checked before
        the part is committed (``BadDigest``, ``IncompleteBody``).
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
            digest, mtime = await asyncio.to_thread(w.seal, size)
        except BaseException as exc:
            await _discard_part(w)
            if isinstance(exc, OSError):
                _raise_part_os_error(exc, upload.upload_id)  # e.g. aborted meanwhile
            raise
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
        """Validate the client's part list; return (object bytes, object ETag, object size).

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
        return self._stream(upload.upload_id, d, plan), etag, total

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

    async def finish(self, upload: Upload) -> None:
        """Forget a completed upload: delete its directory. Idempotent."""
        await asyncio.to_thread(self._remove, self._dir(upload.upload_id))

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
                if entry.name.startswith(".trash-"):
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
