"""A page corrupted on the cache disk while the node runs is never served (issue 20).

Each case starts a real ``meshd embedded`` over a ``file://`` store with 256 KiB pages
(the size from which senders prefer the page file: sendfile, descriptors), reads a
9-page file so that its pages land on the disk tier, then corrupts page files in place
while the node runs (page 1: one byte flipped; page 4: truncated), and reads the file
through one front end: HTTP ``/v1/files`` (sendfile), gRPC, S3 (boto3, whole and ranged),
WebHDFS, the SDK (short-circuit descriptors, and HTTP), ``mesh://`` (fsspec), the peer
page endpoint ``/v1/pages`` and meshfs (a real FUSE mount, which keeps page descriptors).
Every read must return the right bytes. With the memory tier tiny (no page fits) every
page comes from disk, so the node must also have detected the corruption (counted in
``mesh_cache_corrupt_pages_total``, one log line each) and written good page files back.
With the default (large) memory tier the same reads must still be right (pages in memory
are served from memory; where a sender prefers the page file, the file is checked).

Also unit tests of the page store (meshd/cache/pages.py) with ``verify`` on and off.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import grpc
import pytest
from hdfs import InsecureClient

from meshd.cache.pages import PageCache, PageKey, checksum
from meshd.client.sdk import MeshClient
from meshd.config import from_dict
from meshd.errors import InvalidArgument
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from tests.data import payload
from tests.fuse_proc import MeshfsProcess
from tests.meshd_proc import MeshdProcess
from tests.test_metrics import scrape
from tests.test_s3_gateway import AK, SK, s3client

KiB = 1 << 10
PS = 256 * KiB
SIZE = 8 * PS + 1000  # 9 pages, the last one short
FLIPPED, TRUNCATED = 1, 4
BUCKET, KEY = "data", "f.bin"
MESH_PATH = f"/{BUCKET}/{KEY}"
DATA = payload(SIZE, seed=20)


# ----------------------------------------------------------------------------- the page files


def page_files(node: MeshdProcess) -> dict[int, Path]:
    """The completed page files of the disk tier, by page index."""
    out = {}
    for p in (node.data_dir / "pages").rglob("*_*_*_*"):
        if p.is_file() and not p.name.endswith(".tmp"):
            out[int(p.name.split("_")[1])] = p
    return out


def expected_len(index: int) -> int:
    return min(PS, SIZE - index * PS)


def wait_good_pages(node: MeshdProcess, timeout: float = 30) -> dict[int, Path]:
    """Wait until every page has a whole, correct page file (the disk tier is written behind)."""
    deadline = time.monotonic() + timeout
    while True:
        files = page_files(node)
        good = {i: p for i, p in files.items() if _good(p, i)}
        if len(good) == (SIZE + PS - 1) // PS:
            return good
        if time.monotonic() > deadline:
            raise AssertionError(f"page files not all good after {timeout} s: {sorted(good)} of {sorted(files)}")
        time.sleep(0.05)


def _good(p: Path, index: int) -> bool:
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return False
    want = DATA[index * PS:index * PS + expected_len(index)]
    return raw == want and p.name.split("_")[2] == f"c{checksum(want):08x}"


def corrupt(node: MeshdProcess) -> None:
    """Flip one byte of page FLIPPED's file and truncate page TRUNCATED's, in place."""
    files = wait_good_pages(node)
    for index in (FLIPPED, TRUNCATED):
        os.chmod(files[index], 0o644)  # page files are read-only (root would not need this)
    with open(files[FLIPPED], "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0x5A]))
    os.truncate(files[TRUNCATED], 777)


def detections(node: MeshdProcess) -> int:
    return int(scrape(node)("mesh_cache_corrupt_pages_total"))


def log_lines(node: MeshdProcess) -> int:
    return node.log.read_text(errors="replace").count("corrupt cache page")


# ----------------------------------------------------------------------------- readers


def read_http(node: MeshdProcess) -> bytes:
    with urllib.request.urlopen(f"{node.http}/v1/files{MESH_PATH}", timeout=60) as r:
        return bytes(r.read())


def read_grpc(node: MeshdProcess) -> bytes:
    channel = grpc.insecure_channel(node.endpoint)
    try:
        stub = pb_grpc.MeshStub(channel)
        return b"".join(m.data for m in stub.Read(pb.ReadRequest(path=MESH_PATH, offset=0, length=-1)))
    finally:
        channel.close()


def read_s3(node: MeshdProcess) -> bytes:
    s3 = s3client(node.endpoints["s3"])
    try:
        return bytes(s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())
    finally:
        s3.close()


def read_s3_ranges(node: MeshdProcess) -> bytes:
    """Small ranged GETs (inside the corrupt pages), put back together over the whole file."""
    s3 = s3client(node.endpoints["s3"])
    out = bytearray(DATA)
    try:
        for index in (FLIPPED, TRUNCATED):
            lo, hi = index * PS + 900, index * PS + 1900  # covers the flipped byte and the cut
            body = s3.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={lo}-{hi - 1}")["Body"].read()
            out[lo:hi] = body
        return bytes(out)
    finally:
        s3.close()


def read_webhdfs(node: MeshdProcess) -> bytes:
    client = InsecureClient(node.endpoints["webhdfs"], user="alice")
    with client.read(MESH_PATH) as reader:
        return bytes(reader.read())


def read_sdk_short_circuit(node: MeshdProcess) -> bytes:
    os.environ["MESH_SHORT_CIRCUIT"] = "1"
    with MeshClient(node.endpoint) as client:
        assert client._sc() is not None, "the short-circuit socket is not in use"
        return client.cat(MESH_PATH)


def read_sdk_http(node: MeshdProcess) -> bytes:
    os.environ["MESH_SHORT_CIRCUIT"] = "0"
    with MeshClient(node.endpoint) as client:
        return client.cat(MESH_PATH)


def read_fsspec(node: MeshdProcess) -> bytes:
    fs = fsspec.filesystem("mesh", endpoint=node.endpoint, skip_instance_cache=True)
    return bytes(fs.cat_file(MESH_PATH))


def read_peer_pages(node: MeshdProcess) -> bytes:
    """What a peer asking this node as the pages' owner gets (GET /v1/pages)."""
    with MeshClient(node.endpoint) as client:
        st = client.stat(MESH_PATH)
    url = urlsplit(node.http)
    out = bytearray()
    for index in range((SIZE + PS - 1) // PS):
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        try:
            conn.request("GET", f"/v1/pages{MESH_PATH}?index={index}&size={st.size}"
                                f"&version={urllib.request.quote(st.version)}")
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()[:300]
            out += resp.read()
        finally:
            conn.close()
    return bytes(out)


READERS: dict[str, Callable[[MeshdProcess], bytes]] = {
    "http-sendfile": read_http,
    "grpc": read_grpc,
    "s3": read_s3,
    "s3-ranges": read_s3_ranges,
    "webhdfs": read_webhdfs,
    "sdk-short-circuit": read_sdk_short_circuit,
    "sdk-http": read_sdk_http,
    "fsspec": read_fsspec,
    "peer-pages": read_peer_pages,
}

MEMORY = {"large": [], "tiny": ["--memory-capacity", "4KiB"]}  # tiny: no page fits, all from disk


@pytest.fixture
def node_for(meshd: Callable[..., MeshdProcess], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Callable[[str], MeshdProcess]:
    monkeypatch.setenv("MESH_SHORT_CIRCUIT", "1")  # the readers set it; restored after the test

    def start(memory: str) -> MeshdProcess:
        store = tmp_path / "store"
        store.mkdir()
        (store / KEY).write_bytes(DATA)
        node = meshd([f"/{BUCKET}={store.as_uri()}"],
                     ["--page-size", "256KiB", "--s3-access-key", AK, "--s3-secret-key", SK,
                      *MEMORY[memory]])
        with MeshClient(node.endpoint) as client:
            assert client.cat(MESH_PATH) == DATA
        wait_good_pages(node)
        # served from the disk tier once (sendfile prefers the page file even when memory
        # holds the page): each page file has passed a check before it is corrupted
        before = scrape(node)("mesh_read_bytes_total", source="disk")
        assert read_http(node) == DATA
        from_disk = scrape(node)("mesh_read_bytes_total", source="disk") - before
        assert from_disk >= 8 * PS or memory == "large"  # the short last page fits a tiny memory tier
        assert scrape(node)("mesh_cache_verified_bytes_total") >= 8 * PS  # hashed when first served
        return node

    return start


@pytest.mark.parametrize("memory", list(MEMORY))
@pytest.mark.parametrize("front", list(READERS))
def test_a_page_corrupted_on_disk_is_never_served(node_for: Callable[[str], MeshdProcess],
                                                  front: str, memory: str) -> None:
    node = node_for(memory)
    corrupt(node)
    before = detections(node)
    got = READERS[front](node)
    assert len(got) == len(DATA)
    assert got == DATA, f"wrong bytes at offset {next(i for i in range(len(DATA)) if got[i] != DATA[i])}"
    if memory == "tiny":  # every page came from disk: the corruption was found, and repaired
        found = detections(node) - before
        assert found >= (1 if front == "s3-ranges" else 2), f"{found} corrupt pages detected"
        wait_good_pages(node)
        assert READERS[front](node) == DATA
    assert log_lines(node) == detections(node)  # one log line per detection


@pytest.mark.parametrize("memory", list(MEMORY))
def test_meshfs_never_reads_a_page_corrupted_after_it_got_the_descriptor(
        node_for: Callable[[str], MeshdProcess], tmp_path: Path, memory: str) -> None:
    """meshfs keeps page descriptors across reads; a page file written in place after it got
    one is dropped (its stat changed) and the node asked again."""
    node = node_for(memory)
    mnt = MeshfsProcess(tmp_path / "mnt", str(node.data_dir), ["--ttl", "1"]).start()
    try:
        path = mnt.mountpoint / BUCKET / KEY
        assert path.read_bytes() == DATA  # the mount now holds the page descriptors
        corrupt(node)
        before = detections(node)
        with open(path, "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # past the kernel's cache
            got = bytearray()
            while chunk := f.read(64 * KiB):
                got += chunk
        assert bytes(got) == DATA
        if memory == "tiny":
            assert detections(node) - before >= 2
        # and a fresh mount, whose first descriptors come after the corruption
        mnt.stop()
        if memory == "tiny":
            wait_good_pages(node)
        corrupt(node)
        mnt = MeshfsProcess(tmp_path / "mnt", str(node.data_dir), ["--ttl", "1"]).start()
        assert path.read_bytes() == DATA
    finally:
        mnt.stop()


# ----------------------------------------------------------------------------- the page store


def _file(cache: PageCache, key: PageKey) -> Path:
    entry = cache.disk.lookup(key)
    assert entry is not None
    return Path(cache.disk._path(key, entry))


def _serve(cache: PageCache, key: PageKey) -> bytes | None:
    async def go() -> bytes | None:
        page = await cache.get(key)
        if page is None:
            return None
        try:
            return os.pread(page.file.fileno(), 10_000, 0)  # type: ignore[union-attr]
        finally:
            page.close()  # type: ignore[union-attr]

    return asyncio.run(go())


def _put(cache: PageCache, key: PageKey, data: bytes) -> None:
    async def go() -> None:
        await cache.put(key, data)
        await cache.drain()

    asyncio.run(go())


@pytest.mark.parametrize("verify,window", [(True, 0.0), (True, 10.0), (False, 0.0)])
def test_the_page_store_checks_every_serve(tmp_path: Path, verify: bool, window: float) -> None:
    """A page file written in place or truncated is found at the next serve, whatever the
    window (its fstat changed), and is a miss."""
    cache = PageCache(str(tmp_path / "pages"), 4096, 0, 1 << 20, verify=verify, verify_window=window)
    key, data = PageKey("f" * 32, "v" * 16, 0), os.urandom(3000)
    _put(cache, key, data)
    path = _file(cache, key)
    assert path.name == f"{'v' * 16}_0_c{checksum(data):08x}_3000"
    assert path.stat().st_mode & 0o777 == 0o444  # never written again
    assert _serve(cache, key) == data
    assert _serve(cache, key) == data  # served again: checked again (verify) or unchanged (stat)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # in place, as a bug or an attacker would
        f.write(b"\0" * 10)
    assert _serve(cache, key) is None  # a miss: the caller fetches it again
    assert cache.disk.corrupt_pages == 1 and cache.disk.lookup(key) is None and not path.exists()
    _put(cache, key, data)
    assert _serve(cache, key) == data
    os.truncate(_file(cache, key), 100)
    assert _serve(cache, key) is None and cache.disk.corrupt_pages == 2


@pytest.mark.parametrize("verify,window", [(True, 0.0), (True, 60.0), (False, 0.0)])
def test_a_change_that_keeps_the_file_stat(tmp_path: Path, verify: bool, window: float) -> None:
    """What media corruption under the page cache looks like: other bytes, the same fstat.
    With verify on it is found at the first serve past the window; with it off, never."""
    cache = PageCache(str(tmp_path / "pages"), 4096, 0, 1 << 20, verify=verify, verify_window=window)
    key, data = PageKey("a" * 32, "b" * 16, 7), os.urandom(4096)
    _put(cache, key, data)
    path = _file(cache, key)
    assert _serve(cache, key) == data
    entry = cache.disk.lookup(key)
    assert entry is not None and entry.stamp is not None
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 8)
    st = path.stat()
    entry.stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # as if the stat had not changed
    if verify and window == 0:
        assert _serve(cache, key) is None
        return
    assert _serve(cache, key) is not None  # within the window (or verify off): not hashed again
    entry.checked -= window + 1
    assert (_serve(cache, key) is None) == verify


def test_pages_of_the_crc32_format_are_misses_after_an_upgrade(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    old = root / "ab" / ("ab" + "0" * 30)
    old.mkdir(parents=True)
    (old / f"{'v' * 16}_0_1234abcd_4096").write_bytes(b"x" * 4096)  # zlib CRC32, no 'c'
    cache = PageCache(str(root), 4096, 0, 1 << 20)
    assert cache.disk.stats.pages == 0 and not any(old.iterdir())


def test_the_config_keys() -> None:
    assert from_dict({}).cache.verify is True and from_dict({}).cache.verify_window == 10.0
    c = from_dict({"cache": {"verify": "false", "verify_window": 0}}).cache
    assert c.verify is False and c.verify_window == 0.0
    for bad in ({"verify": "maybe"}, {"verify_window": -1}, {"verify_window": "nan"}):
        with pytest.raises(InvalidArgument, match=r"cache\.verify"):
            from_dict({"cache": bad})
