"""The gateway's multipart-upload store, on real files in tmp_path."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from gateway.errors import S3Error
from gateway.multipart import HEADER_SIZE, MultipartStore, Part, Upload, multipart_etag

MiB = 1 << 20
SMALL = 1024  # min_part_size for tests that do not need 5 MiB parts


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def store(root: Path, **kw: object) -> MultipartStore:
    kw.setdefault("min_part_size", SMALL)
    kw.setdefault("fsync", False)
    return MultipartStore(str(root), **kw)  # type: ignore[arg-type]


async def feed(data: bytes, step: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(0)


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionResetError("client went away")


async def drain(stream: AsyncIterator[bytes], max_chunk: int = MiB) -> bytes:
    out = bytearray()
    async for chunk in stream:
        assert 0 < len(chunk) <= max_chunk
        out += chunk
    return bytes(out)


def s3_etag(parts: Iterable[bytes]) -> str:
    """The S3 multipart ETag computed independently of the module."""
    digests = [hashlib.md5(p).digest() for p in parts]
    return '"' + hashlib.md5(b"".join(digests)).hexdigest() + f'-{len(digests)}"'


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def error_of(aw: object) -> S3Error:
    with pytest.raises(S3Error) as ei:
        await aw  # type: ignore[misc]
    return ei.value


async def test_create_get_and_layout(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "a/b.bin", {"color": "blue"}, "application/x-thing")
    assert len(u.upload_id) == 32 and set(u.upload_id) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert await ms.get("bkt", "a/b.bin", u.upload_id) == u
    assert files(tmp_path) == {u.upload_id, f"{u.upload_id}/upload.json"}
    other = await ms.create("bkt", "a/b.bin", {}, "")
    assert other.upload_id != u.upload_id
    for bucket, key in [("", "k"), ("b", "")]:
        assert (await error_of(ms.create(bucket, key, {}, ""))).code == "InvalidArgument"


async def test_put_complete_stream_and_etag(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "obj", {}, "")
    datas = [os.urandom(3 * MiB + 17), os.urandom(SMALL), os.urandom(2 * MiB), b"tail"]
    parts: list[Part] = []
    for n, data in enumerate(datas, start=1):
        p = await ms.put_part(u, n, feed(data, step=70_001))
        assert p.number == n and p.size == len(data)
        assert p.etag == f'"{hashlib.md5(data).hexdigest()}"'
        parts.append(p)
    stream, etag, size = await ms.complete(u, [(p.number, p.etag) for p in parts])
    whole = b"".join(datas)
    assert size == len(whole)
    assert etag == s3_etag(datas)
    assert etag == multipart_etag([hashlib.md5(d).digest() for d in datas])
    got = await drain(stream)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(whole).hexdigest()
    # complete leaves the upload for the caller to finish (and may be retried)
    assert await ms.get("bkt", "obj", u.upload_id) == u
    stream, etag2, _ = await ms.complete(u, [(p.number, p.etag.strip('"')) for p in parts])
    assert etag2 == etag and await drain(stream) == whole
    await ms.finish(u)
    await ms.finish(u)  # idempotent
    assert (await error_of(ms.get("bkt", "obj", u.upload_id))).code == "NoSuchUpload"
    assert files(tmp_path) == set()


async def test_known_etag_with_default_min_part_size(tmp_path: Path) -> None:
    ms = MultipartStore(str(tmp_path))  # 5 MiB minimum, fsync on
    u = await ms.create("bkt", "k", {}, "")
    a, b = b"a" * (5 * MiB), b"b"
    pa = await ms.put_part(u, 1, feed(a, step=MiB))
    pb = await ms.put_part(u, 2, feed(b))
    assert pa.etag == '"79b281060d337b9b2b84ccf390adcf74"'
    assert pb.etag == '"92eb5ffee6ae2fec3ad71c777531578f"'
    stream, etag, size = await ms.complete(u, [(1, pa.etag), (2, pb.etag)])
    # the same value moto's S3 returns for these two parts
    assert etag == '"e5a8c5272b26fc10581a21089559b006-2"' == s3_etag([a, b])
    assert size == 5 * MiB + 1
    assert hashlib.sha256(await drain(stream)).digest() == hashlib.sha256(a + b).digest()


async def test_multipart_etag_helper() -> None:
    assert multipart_etag([hashlib.md5(b"x").digest()]) == s3_etag([b"x"])
    with pytest.raises(ValueError):
        multipart_etag([b"short"])


async def test_part_replacement(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    old = await ms.put_part(u, 1, feed(b"1" * 5000))
    new = await ms.put_part(u, 1, feed(b"2" * 3000))
    assert old.etag != new.etag
    parts, truncated = await ms.list_parts(u)
    assert [(p.number, p.etag, p.size) for p in parts] == [(1, new.etag, 3000)]
    assert not truncated
    e = await error_of(ms.complete(u, [(1, old.etag)]))
    assert (e.code, e.status) == ("InvalidPart", 400)
    stream, etag, size = await ms.complete(u, [(1, new.etag)])
    assert await drain(stream) == b"2" * 3000 and size == 3000 and etag == s3_etag([b"2" * 3000])
    assert sorted(os.listdir(tmp_path / u.upload_id)) == ["part-00001", "upload.json"]


async def test_complete_rules(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    p1 = await ms.put_part(u, 1, feed(b"x" * SMALL))
    p2 = await ms.put_part(u, 2, feed(b"y" * (SMALL - 1)))
    p3 = await ms.put_part(u, 3, feed(b"z"))

    e = await error_of(ms.complete(u, []))
    assert (e.code, e.status) == ("MalformedXML", 400)
    for order in ([(2, p2.etag), (1, p1.etag)], [(1, p1.etag), (1, p1.etag)]):
        e = await error_of(ms.complete(u, order))
        assert (e.code, e.status) == ("InvalidPartOrder", 400)
    for bad in ([(1, p2.etag)], [(1, p1.etag), (4, p3.etag)], [(1, p1.etag), (10001, p3.etag)],
                [(1, '"' + "0" * 32 + '"')]):
        e = await error_of(ms.complete(u, bad))
        assert (e.code, e.status) == ("InvalidPart", 400)
    # a small middle part
    e = await error_of(ms.complete(u, [(1, p1.etag), (2, p2.etag), (3, p3.etag)]))
    assert (e.code, e.status) == ("EntityTooSmall", 400)
    assert e.extra["PartNumber"] == "2" and e.extra["ProposedSize"] == str(SMALL - 1)
    # the last part may be small; parts may be skipped
    stream, etag, size = await ms.complete(u, [(1, p1.etag), (3, p3.etag.upper())])
    assert await drain(stream) == b"x" * SMALL + b"z"
    assert etag == s3_etag([b"x" * SMALL, b"z"]) and size == SMALL + 1
    # a single small part is a valid object
    stream, _, size = await ms.complete(u, [(2, p2.etag)])
    assert size == SMALL - 1 and await drain(stream) == b"y" * (SMALL - 1)


async def test_empty_part(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    p = await ms.put_part(u, 1, feed(b""))
    assert p.size == 0 and p.etag == f'"{hashlib.md5(b"").hexdigest()}"'
    stream, etag, size = await ms.complete(u, [(1, p.etag)])
    assert await drain(stream) == b"" and size == 0 and etag == s3_etag([b""])


async def test_part_number_limits_and_size_checks(tmp_path: Path) -> None:
    ms = store(tmp_path, max_part_size=10_000)
    u = await ms.create("bkt", "k", {}, "")
    for n in (0, -1, 10001):
        e = await error_of(ms.put_part(u, n, feed(b"x")))
        assert (e.code, e.status) == ("InvalidArgument", 400)
        assert e.message == "Part number must be an integer between 1 and 10000, inclusive"
    assert (await ms.put_part(u, 10000, feed(b"x"))).number == 10000
    e = await error_of(ms.put_part(u, 1, feed(b"x" * 10_001)))
    assert (e.code, e.status) == ("EntityTooLarge", 400)
    e = await error_of(ms.put_part(u, 1, feed(b"abc"), expected_md5=hashlib.md5(b"abd").digest()))
    assert e.code == "BadDigest"
    e = await error_of(ms.put_part(u, 1, feed(b"abc"), expected_size=4))
    assert e.code == "IncompleteBody"
    ok = await ms.put_part(u, 1, feed(b"abc"), expected_md5=hashlib.md5(b"abc").digest(),
                           expected_size=3)
    assert ok.size == 3
    assert sorted(os.listdir(tmp_path / u.upload_id)) == ["part-00001", "part-10000", "upload.json"]


async def test_unknown_upload(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    (tmp_path / "secret").mkdir()
    for bucket, key, uid in [("bkt", "k", "A" * 32), ("bkt", "k", "../secret"), ("bkt", "k", ""),
                             ("bkt", "k", "secret"), ("other", "k", u.upload_id),
                             ("bkt", "k2", u.upload_id)]:
        e = await error_of(ms.get(bucket, key, uid))
        assert (e.code, e.status) == ("NoSuchUpload", 404)
        assert e.extra["UploadId"] == uid
    await ms.put_part(u, 1, feed(b"x"))
    await ms.abort(u)
    await ms.abort(u)
    assert (await error_of(ms.get("bkt", "k", u.upload_id))).code == "NoSuchUpload"
    assert (await error_of(ms.put_part(u, 2, feed(b"x")))).code == "NoSuchUpload"
    assert (await error_of(ms.list_parts(u))).code == "NoSuchUpload"
    assert (await error_of(ms.complete(u, [(1, '"x"')]))).code == "NoSuchUpload"
    forged = Upload("../secret", "bkt", "k", 0.0, {}, "")
    assert (await error_of(ms.put_part(forged, 1, feed(b"x")))).code == "NoSuchUpload"
    assert os.listdir(tmp_path / "secret") == []


async def test_abort_while_part_is_streaming(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * 10
        started.set()
        await go_on.wait()
        yield b"b" * 10

    task = asyncio.create_task(ms.put_part(u, 1, slow()))
    await started.wait()
    await ms.abort(u)
    go_on.set()
    assert (await error_of(task)).code == "NoSuchUpload"
    assert files(tmp_path) == set()


async def test_list_parts_pagination(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    numbers = [8, 1, 5, 2, 3]
    for n in numbers:
        await ms.put_part(u, n, feed(bytes([n]) * n))
    (tmp_path / u.upload_id / ".part-00004.abc.tmp").write_bytes(b"junk")  # crash leftover
    (tmp_path / u.upload_id / "part-00006").write_bytes(b"not a part")  # no valid header
    everything, truncated = await ms.list_parts(u)
    assert [p.number for p in everything] == [1, 2, 3, 5, 8] and not truncated
    assert all(p.size == p.number and p.etag == f'"{hashlib.md5(bytes([p.number]) * p.number).hexdigest()}"'
               for p in everything)
    pages: list[list[int]] = []
    marker, truncated = 0, True
    while truncated:
        page, truncated = await ms.list_parts(u, marker=marker, max_parts=2)
        pages.append([p.number for p in page])
        marker = page[-1].number
    assert pages == [[1, 2], [3, 5], [8]]
    assert [p.number for p in (await ms.list_parts(u, marker=5))[0]] == [8]
    assert await ms.list_parts(u, marker=8) == ([], False)
    assert (await ms.list_parts(u, marker=4, max_parts=1))[1] is True
    assert (await ms.list_parts(u, marker=5, max_parts=1))[1] is False


async def test_list_uploads_prefix_and_markers(tmp_path: Path) -> None:
    ms = store(tmp_path, clock=Clock())
    made = [await ms.create(b, k, {}, "") for b, k in [
        ("bkt", "b/2"), ("bkt", "a/1"), ("bkt", "b/1"), ("bkt", "a/1"), ("other", "a/1"),
        ("bkt", "a/1"), ("bkt", "c")]]
    b2, a1x, b1, a1y, _, a1z, c = made
    uploads, truncated = await ms.list_uploads("bkt")
    assert [u.upload_id for u in uploads] == [x.upload_id for x in (a1x, a1y, a1z, b1, b2, c)]
    assert not truncated
    assert [u.key for u in (await ms.list_uploads("other"))[0]] == ["a/1"]
    assert [u.upload_id for u in (await ms.list_uploads("bkt", prefix="b/"))[0]] == [
        b1.upload_id, b2.upload_id]
    assert await ms.list_uploads("bkt", prefix="zz") == ([], False)
    # key marker alone: after every upload of that key
    assert [u.upload_id for u in (await ms.list_uploads("bkt", key_marker="a/1"))[0]] == [
        b1.upload_id, b2.upload_id, c.upload_id]
    # key and upload-id markers: after that upload
    after = (await ms.list_uploads("bkt", key_marker="a/1", upload_id_marker=a1x.upload_id))[0]
    assert [u.upload_id for u in after] == [x.upload_id for x in (a1y, a1z, b1, b2, c)]
    # an upload-id marker without a key marker is ignored
    assert len((await ms.list_uploads("bkt", upload_id_marker=b2.upload_id))[0]) == 6
    # the marker upload is gone: that key is listed again rather than skipped
    await ms.abort(a1x)
    again = (await ms.list_uploads("bkt", key_marker="a/1", upload_id_marker=a1x.upload_id))[0]
    assert [u.upload_id for u in again] == [x.upload_id for x in (a1y, a1z, b1, b2, c)]
    # pagination, as a client follows NextKeyMarker / NextUploadIdMarker
    seen: list[str] = []
    km, um, truncated = "", "", True
    while truncated:
        page, truncated = await ms.list_uploads("bkt", key_marker=km, upload_id_marker=um,
                                                max_uploads=2)
        assert len(page) <= 2
        seen += [u.upload_id for u in page]
        km, um = page[-1].key, page[-1].upload_id
    assert seen == [x.upload_id for x in (a1y, a1z, b1, b2, c)]
    page, truncated = await ms.list_uploads("bkt", prefix="b/", max_uploads=1)
    assert [u.upload_id for u in page] == [b1.upload_id] and truncated


async def test_restart_sees_uploads_and_parts(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {"owner": "me"}, "text/plain")
    p1 = await ms.put_part(u, 1, feed(b"A" * SMALL))
    p2 = await ms.put_part(u, 2, feed(b"B" * 10))
    del ms
    again = store(tmp_path)
    got = await again.get("bkt", "k", u.upload_id)
    assert got == u and got.metadata == {"owner": "me"} and got.content_type == "text/plain"
    assert (await again.list_uploads("bkt"))[0] == [u]
    parts, _ = await again.list_parts(got)
    assert [(p.number, p.etag, p.size) for p in parts] == [(1, p1.etag, SMALL), (2, p2.etag, 10)]
    stream, etag, _ = await again.complete(got, [(1, p1.etag), (2, p2.etag)])
    assert await drain(stream) == b"A" * SMALL + b"B" * 10
    assert etag == s3_etag([b"A" * SMALL, b"B" * 10])


async def test_failing_chunks_leave_nothing_and_keep_earlier_part(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    first = await ms.put_part(u, 1, feed(b"good" * 1000))
    with pytest.raises(ConnectionResetError):
        await ms.put_part(u, 1, failing(os.urandom(3 * MiB)))
    with pytest.raises(ConnectionResetError):
        await ms.put_part(u, 2, failing(b"x" * 100))
    assert sorted(os.listdir(tmp_path / u.upload_id)) == ["part-00001", "upload.json"]
    parts, _ = await ms.list_parts(u)
    assert [(p.number, p.etag, p.size) for p in parts] == [(1, first.etag, 4000)]
    stream, _, _ = await ms.complete(u, [(1, first.etag)])
    assert await drain(stream) == b"good" * 1000


async def test_cancelled_put_part_leaves_nothing(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * (256 << 10)
            started.set()
            await asyncio.sleep(0)

    task = asyncio.create_task(ms.put_part(u, 3, endless()))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(os.listdir(tmp_path / u.upload_id)) == ["upload.json"]


async def test_concurrent_parts(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    datas = {n: os.urandom(MiB + n) for n in range(1, 9)}
    parts = await asyncio.gather(*(ms.put_part(u, n, feed(d, step=50_000))
                                   for n, d in datas.items()))
    assert [p.etag for p in parts] == [f'"{hashlib.md5(d).hexdigest()}"' for d in datas.values()]
    # the same number from several writers: one of them wins, whole
    rivals = [os.urandom(2 * MiB + i) for i in range(4)]
    await asyncio.gather(*(ms.put_part(u, 9, feed(d, step=30_000)) for d in rivals))
    (p9,) = (await ms.list_parts(u, marker=8))[0]
    winner = next(d for d in rivals if f'"{hashlib.md5(d).hexdigest()}"' == p9.etag)
    assert p9.size == len(winner)
    stream, etag, _ = await ms.complete(u, [(9, p9.etag)])
    assert await drain(stream) == winner and etag == s3_etag([winner])
    assert sorted(os.listdir(tmp_path / u.upload_id)) == (
        [f"part-0000{n}" for n in range(1, 10)] + ["upload.json"])


async def test_stream_refuses_a_part_replaced_after_complete(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    p1 = await ms.put_part(u, 1, feed(b"1" * SMALL))
    p2 = await ms.put_part(u, 2, feed(b"2" * 10))
    stream, _, _ = await ms.complete(u, [(1, p1.etag), (2, p2.etag)])
    await ms.put_part(u, 2, feed(b"3" * 10))
    with pytest.raises(S3Error) as ei:
        await drain(stream)
    assert ei.value.code == "InvalidPart"


async def test_part_file_format(tmp_path: Path) -> None:
    ms = store(tmp_path)
    u = await ms.create("bkt", "k", {}, "")
    data = os.urandom(5000)
    await ms.put_part(u, 7, feed(data))
    raw = (tmp_path / u.upload_id / "part-00007").read_bytes()
    assert len(raw) == HEADER_SIZE + len(data) and raw[HEADER_SIZE:] == data
    assert raw[8:24] == hashlib.md5(data).digest()


async def test_cleanup(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    ms = store(tmp_path, clock=clock)
    old1 = await ms.create("bkt", "a", {}, "")  # 1001
    old2 = await ms.create("bkt", "b", {}, "")  # 1002
    await ms.put_part(old2, 1, feed(b"x" * 10))
    clock.t = 5000.0
    young = await ms.create("bkt", "c", {}, "")  # 5001
    await ms.put_part(young, 1, feed(b"y" * 10))
    # leftovers of crashes, all modified long ago
    (tmp_path / ".trash-gone-1234").mkdir()
    (tmp_path / ".new-half-1234").mkdir()
    broken = tmp_path / ("B" * 32)
    broken.mkdir()
    stale_tmp = tmp_path / young.upload_id / ".part-00002.dead.tmp"
    stale_tmp.write_bytes(b"partial")
    for p in (tmp_path / ".new-half-1234", broken, stale_tmp):
        os.utime(p, (2000.0, 2000.0))

    assert await ms.cleanup(older_than=3000.0) == 3  # old1, old2 and the broken directory
    assert sorted(os.listdir(tmp_path)) == [young.upload_id]
    assert sorted(os.listdir(tmp_path / young.upload_id)) == ["part-00001", "upload.json"]
    for u in (old1, old2):
        assert (await error_of(ms.get("bkt", u.key, u.upload_id))).code == "NoSuchUpload"
    assert [u.upload_id for u in (await ms.list_uploads("bkt"))[0]] == [young.upload_id]
    assert await ms.cleanup(older_than=3000.0) == 0
    assert await ms.cleanup(older_than=6000.0) == 1
    assert os.listdir(tmp_path) == []


async def test_a_completed_upload_is_remembered_for_an_hour(tmp_path: Path) -> None:
    from gateway.multipart import COMPLETED_FOR

    clock = Clock()
    ms = store(tmp_path, clock=clock)
    u = await ms.create("bkt", "k", {}, "")
    p = await ms.put_part(u, 1, feed(b"data"))
    parts = [(1, p.etag)]
    _, etag, _ = await ms.complete(u, parts)
    assert await ms.part_sizes(u, [1]) == (4,)
    await ms.finish(u, parts, etag)
    assert (await error_of(ms.get("bkt", "k", u.upload_id))).code == "NoSuchUpload"
    assert await ms.completed("bkt", "k", u.upload_id, [(1, p.etag.strip('"'))]) == etag  # quotes optional
    assert await ms.completed("bkt", "other", u.upload_id, parts) is None
    assert await ms.completed("bkt", "k", u.upload_id, [(1, '"' + "0" * 32 + '"')]) is None
    clock.t += COMPLETED_FOR
    assert await ms.completed("bkt", "k", u.upload_id, parts) is None
    aborted = await ms.create("bkt", "k", {}, "")
    await ms.abort(aborted)  # an aborted upload leaves no record
    assert await ms.completed("bkt", "k", aborted.upload_id, []) is None
